<?php
// The intake of examples/05-task-progress/: takes the task lists pages send with
// {"op":"send","data":{"tasks":["12345",...]}} from ringcast's event stream and queues each
// list as one job in Redis (RPUSH tasks:jobs), for worker.php. It answers the page at once
// with {"accepted":N} (control `send` to the connection), or {"error":...} for a bad list.
//
// usage: php intake.php      (RINGCAST_CONTROL: the control socket, see ringcast.php)
// Environment: REDIS_HOST (default 127.0.0.1), REDIS_PORT (default 6379),
//              TASKS_MAX (tasks in one list, default 50)
// Needs the Redis extension (Debian: apt-get install php-redis). Log on stderr; "ready" once
// the event stream is on. Exits 1 when the server or Redis goes away (run it under a
// supervisor), 2 on a configuration problem.
require __DIR__ . '/ringcast.php';

$tasks_max = (int) (getenv('TASKS_MAX') ?: 50);

function say(string $text): void
{
    fwrite(STDERR, gmdate('Y-m-d\TH:i:s\Z') . " [intake] $text\n");
}

if (!extension_loaded('redis')) {
    say('the PHP Redis extension is missing: apt-get install php-redis (or pecl install redis)');
    exit(2);
}
try {
    $redis = new Redis();
    $redis->connect(getenv('REDIS_HOST') ?: '127.0.0.1', (int) (getenv('REDIS_PORT') ?: 6379), 5);
    $socket = ringcast_connect();
} catch (Throwable $e) {
    say($e->getMessage());
    exit(2);
}

$next_id = 0;
function request($socket, array $request): void
{
    global $next_id;
    $request['id'] = ++$next_id;
    $line = json_encode($request, JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR) . "\n";
    if (fwrite($socket, $line) !== strlen($line)) {
        say('the control connection broke');
        exit(1);
    }
}

// Only the `message` events, in group `intake`: run several intakes and ringcast shares the
// pages among them.
request($socket, ['method' => 'events', 'types' => ['message'], 'group' => 'intake']);
$events_id = $next_id;
stream_set_timeout($socket, 300);
for (;;) {
    $line = fgets($socket);
    if ($line === false) {
        if (stream_get_meta_data($socket)['timed_out'] && !feof($socket)) {
            continue;
        }
        say('the server closed the control connection');
        exit(1);
    }
    $msg = json_decode($line, true);
    if (!is_array($msg)) {
        continue;
    }
    if (isset($msg['id'])) {
        if (isset($msg['error'])) {
            say("request {$msg['id']} failed: " . json_encode($msg['error']));
            if ($msg['id'] === $events_id) {
                exit(2);
            }
        } elseif ($msg['id'] === $events_id) {
            say('ready: task lists of group intake');
        }
        continue;
    }
    if (($msg['event'] ?? '') !== 'message') {
        continue;
    }
    $conn = $msg['conn'];
    $tasks = $msg['data']['tasks'] ?? null;
    $valid = is_array($tasks) && count($tasks) >= 1 && count($tasks) <= $tasks_max;
    foreach ($valid ? $tasks : [] as $task) {
        $valid = $valid && is_string($task) && preg_match('/^[0-9]{1,10}$/', $task) === 1;
    }
    if (!$valid) {
        request($socket, ['method' => 'send', 'conn' => $conn,
            'data' => ['error' => "send {\"tasks\":[\"ID\",...]}: 1-$tasks_max ids of 1-10 digits"]]);
        continue;
    }
    try {
        $redis->rPush('tasks:jobs', json_encode(['fid' => $conn, 'tasks' => array_values($tasks)]));
    } catch (Throwable $e) {
        say('Redis: ' . $e->getMessage());
        exit(1);
    }
    request($socket, ['method' => 'send', 'conn' => $conn, 'data' => ['accepted' => count($tasks)]]);
    say("conn $conn: queued " . count($tasks) . ' tasks');
}
