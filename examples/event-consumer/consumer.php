<?php
// A ringcast event consumer: a long-running PHP worker that receives what clients send with
// {"op":"send","data":...} and answers them, like a Workerman/GatewayWorker business worker.
//
// usage: RINGCAST_CONTROL=unix:/tmp/ringcast.sock php consumer.php
//
// It opens one control connection, asks for the event stream
//   {"method":"events","types":["message","connect","close"],"group":"workers"}
// and then reads one JSON line at a time: events ({"event":...}) and the replies to its own
// requests ({"id":...}), interleaved. For each `message` event from a logged-in user
// (data {"text":"...","room":"lobby","ref":"..."}) it
//   1. appends the message to MESSAGES_FILE (JSON lines, under an exclusive lock, so that any
//      number of workers can share the file),
//   2. publishes it to the room's channel chat:ROOM with the sender's user id (clients cannot
//      publish there themselves, so nobody can speak under another name),
//   3. answers every tab of the sender with send_user: {"ack":REF,"room":ROOM,"worker":NAME}.
// A message from a connection without a user is refused with `send` to that connection only.
//
// Run as many workers as you like with the same group: ringcast gives each client connection
// to one of them (all its events, in order, to the same worker while the group stays the same)
// and hands a stopped worker's connections to the others. Without any consumer a client's send
// gets the error `no_consumer`. Run it under a supervisor (systemd Restart=always): it exits
// with status 1 when the server goes away, 2 on a configuration problem.
//
// Environment: RINGCAST_CONTROL, RINGCAST_CONTROL_TOKEN (see ringcast.php);
//   MESSAGES_FILE   where messages are stored (default messages.jsonl beside this script)
//   CONSUMER_GROUP  the group name (default workers)
//   WORKER_NAME     this worker's name in the log and the acks (default HOST:PID)
// Log: one line per event on stderr; "ready" once the stream is on.
require __DIR__ . '/ringcast.php';

$worker = getenv('WORKER_NAME') ?: gethostname() . ':' . getmypid();
$group = getenv('CONSUMER_GROUP') ?: 'workers';
$file = getenv('MESSAGES_FILE') ?: __DIR__ . '/messages.jsonl';
const TEXT_BYTES_MAX = 2000;

function say(string $text): void
{
    global $worker;
    fwrite(STDERR, gmdate('Y-m-d\TH:i:s\Z') . " [$worker] $text\n");
}

// Requests go out with an id; their replies come back between the events, in request order.
$next_id = 0;
function request($socket, array $request): void
{
    global $next_id;
    $request['id'] = ++$next_id;
    $line = json_encode($request, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR) . "\n";
    if (fwrite($socket, $line) !== strlen($line)) {
        say('the control connection broke');
        exit(1);
    }
}

function on_message($socket, array $event): void
{
    global $worker, $file;
    $conn = $event['conn'];
    $user = $event['user'];
    $data = $event['data'];
    $ref = is_array($data) && is_scalar($data['ref'] ?? null) ? $data['ref'] : null;
    if ($user === null) {
        // Anonymous connection: answer that connection only.
        request($socket, ['method' => 'send', 'conn' => $conn,
            'data' => ['error' => 'log in to chat', 'ref' => $ref]]);
        return;
    }
    $text = is_array($data) ? ($data['text'] ?? null) : null;
    $room = is_array($data) ? ($data['room'] ?? 'lobby') : 'lobby';
    if (!is_string($text) || $text === '' || strlen($text) > TEXT_BYTES_MAX
        || !is_string($room) || !preg_match('/^[a-z0-9_-]{1,64}$/', $room)) {
        request($socket, ['method' => 'send_user', 'user' => $user, 'data' => ['error' =>
            'send {"text":"1-' . TEXT_BYTES_MAX . ' bytes","room":"a-z0-9_-","ref":ANY}', 'ref' => $ref]]);
        return;
    }
    $record = ['time' => gmdate('Y-m-d\TH:i:s\Z'), 'user' => $user, 'conn' => $conn,
        'room' => $room, 'text' => $text, 'worker' => $worker];
    $line = json_encode($record, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE) . "\n";
    // Store first, then tell: what the room sees has been stored.
    if (file_put_contents($file, $line, FILE_APPEND | LOCK_EX) !== strlen($line)) {
        say("cannot append to $file");
        request($socket, ['method' => 'send_user', 'user' => $user,
            'data' => ['error' => 'not stored, try again', 'ref' => $ref]]);
        return;
    }
    request($socket, ['method' => 'publish', 'channel' => "chat:$room",
        'data' => ['user' => $user, 'text' => $text, 'time' => $record['time']]]);
    request($socket, ['method' => 'send_user', 'user' => $user,
        'data' => ['ack' => $ref, 'room' => $room, 'worker' => $worker]]);
    say("message conn=$conn user=$user room=$room: " . json_encode($text, JSON_UNESCAPED_UNICODE));
}

try {
    $socket = ringcast_connect();
} catch (Throwable $e) {
    say($e->getMessage());
    exit(2);
}
request($socket, ['method' => 'events', 'types' => ['message', 'connect', 'close'], 'group' => $group]);
$events_id = $next_id;
// An idle stream is normal: wake up now and then, and stop only when the server closes.
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
        say('not a JSON object: ' . rtrim($line));
        continue;
    }
    if (isset($msg['id'])) {
        // A reply. The `events` reply says the stream is on; any other reply matters only if
        // it is an error (e.g. send_user to a user who just left, or `overloaded`).
        if (isset($msg['error'])) {
            say("request {$msg['id']} failed: " . json_encode($msg['error'], JSON_UNESCAPED_SLASHES));
            if ($msg['id'] === $events_id) {
                exit(2);
            }
        } elseif ($msg['id'] === $events_id) {
            say("ready: message, connect and close events of group $group");
        }
        continue;
    }
    $conn = $msg['conn'] ?? '-';
    $user = $msg['user'] ?? '-';
    switch ($msg['event'] ?? '') {
        case 'message':
            on_message($socket, $msg);
            break;
        case 'connect':
            say("connect conn=$conn user=$user from {$msg['remote']} origin " . json_encode($msg['origin']));
            break;
        case 'close':
            say("close conn=$conn user=$user code={$msg['code']}");
            break;
        case 'gap':
            // This worker fell behind and ringcast dropped events for it (never waits for it).
            say("missed {$msg['dropped']} events");
            break;
        default:
            break;
    }
}
