<?php
// A worker of examples/03-group-chat/: the business logic of a Workerman + Channel group chat,
// with ringcast holding the connections. Run two (or more) with the same group: ringcast gives
// each page's events to one of them, and a thread's members may sit on any shard and behind
// any worker — there is no Channel server to relay between processes, and no map of groups to
// connections to clean up on close: ringcast drops a closed connection from its threads.
//
// usage: php worker.php      (RINGCAST_CONTROL: the control socket, see ringcast.php)
// Environment: GROUP_CHAT_DATA (see db.php), CONSUMER_GROUP (default chat),
//              WORKER_NAME (default HOST:PID)
//
// Pages send {"op":"send","data":REQUEST}; REQUEST is
//   {"action":"join","thread_id":T,"class_id":C}
//   {"action":"send","thread_id":T,"class_id":C,"text":"..."}
// and get an answer with the original's numeric codes, as a push to that connection:
//   {"op":"join","thread":T,"status":true,"code":100,"worker":W}   joined (control `subscribe`)
//   {"op":"send","status":true,"code":105,"id":N,"worker":W}      stored as message N, published
//   {"op":...,"status":false,"code":E,"msg":"..."}          refused:
//     101 unknown action, 102 no such thread in the class, 103 no such class,
//     104 missing or malformed fields, 106 not in that thread (join first),
//     107 the user is not in the class, 108 text empty or over 2,000 characters
// A stored message reaches every member of the thread as {"op":"message","channel":
// "thread:T","offset":O,"data":{"id":N,"thread_id":T,"class_id":C,"speaker":U,
// "speaker_name":"...","text":"...","time":"..."}}, in one order for all of them. Who speaks
// comes from ringcast (the connection's token), never from the request.
// Log on stderr; "ready" once the event stream is on. Exits 1 when the server goes away (run
// it under a supervisor), 2 on a configuration problem.
require __DIR__ . '/ringcast.php';
require __DIR__ . '/db.php';

const TEXT_CHARS_MAX = 2000;
$worker = getenv('WORKER_NAME') ?: gethostname() . ':' . getmypid();
$group = getenv('CONSUMER_GROUP') ?: 'chat';

function say(string $text): void
{
    global $worker;
    fwrite(STDERR, gmdate('Y-m-d\TH:i:s\Z') . " [$worker] $text\n");
}

$next_id = 0;
/** Writes a request; its reply comes back between the events, in request order. */
function request($socket, array $request): int
{
    global $next_id;
    $request['id'] = ++$next_id;
    $line = json_encode($request, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR) . "\n";
    if (fwrite($socket, $line) !== strlen($line)) {
        say('the control connection broke');
        exit(1);
    }
    return $next_id;
}

function answer($socket, int $conn, array $data): void
{
    request($socket, ['method' => 'send', 'conn' => $conn, 'data' => $data]);
}

function refuse($socket, int $conn, string $op, int $code, string $msg): void
{
    answer($socket, $conn, ['op' => $op, 'status' => false, 'code' => $code, 'msg' => $msg]);
}

/** Threads each connection of this worker has joined (ringcast keeps the memberships; this is
 * only for code 106), forgotten on the connection's `close` event. */
$joined = [];
/** Joins waiting for ringcast's reply to their `subscribe`: request id => [conn, thread]. */
$joining = [];
/** Events of connections with a join in flight, held until its reply (a page may send a
 * message right behind its join): conn => [event, ...], in arrival order. */
$held = [];

function on_message($socket, array $event)
{
    global $joined, $joining, $held, $worker;
    $conn = $event['conn'];
    $user = $event['user'];
    $req = $event['data'];
    $action = is_array($req) ? ($req['action'] ?? null) : null;
    $op = $action === 'join' ? 'join' : 'send';
    $thread_id = is_array($req) ? ($req['thread_id'] ?? null) : null;
    $class_id = is_array($req) ? ($req['class_id'] ?? null) : null;
    if (!is_string($action) || !is_int($thread_id) || !is_int($class_id) || $user === null) {
        return refuse($socket, $conn, $op, 104, 'Illegal request');
    }
    $db = db_load();
    $class = db_find($db['classes'], $class_id);
    if ($class === null) {
        return refuse($socket, $conn, $op, 103, 'Class does not exist');
    }
    $thread = db_find($db['threads'], $thread_id);
    if ($thread === null || $thread['class_id'] !== $class_id) {
        return refuse($socket, $conn, $op, 102, 'Thread does not exist');
    }
    $speaker = db_user($db, (int) $user);
    if ($speaker === null || !in_array($class_id, $speaker['classes'], true)) {
        return refuse($socket, $conn, $op, 107, 'User does not exist or not in the class');
    }
    switch ($action) {
        case 'join':
            // The server-side join; the answer waits for ringcast's reply (see the main loop).
            $id = request($socket, ['method' => 'subscribe', 'conn' => $conn, 'channel' => "thread:$thread_id"]);
            $joining[$id] = [$conn, $thread_id];
            $held[$conn] = $held[$conn] ?? [];
            return;
        case 'send':
            if (!isset($joined[$conn][$thread_id])) {
                return refuse($socket, $conn, 'send', 106, 'Join the thread first');
            }
            $text = $req['text'] ?? null;
            // Characters, not bytes (core PCRE, no mbstring needed); the text is UTF-8 (ringcast checked).
            if (!is_string($text) || trim($text) === ''
                || preg_match('/^.{1,' . TEXT_CHARS_MAX . '}$/su', $text) !== 1) {
                return refuse($socket, $conn, 'send', 108, 'Illegal request: text of 1-' . TEXT_CHARS_MAX . ' characters');
            }
            // Store first, then tell the thread: what members see has been stored.
            $record = db_store_message(['thread_id' => $thread_id, 'class_id' => $class_id,
                'speaker' => $speaker['id'], 'speaker_name' => $speaker['name'], 'text' => $text,
                'time' => gmdate('Y-m-d\TH:i:s\Z')]);
            request($socket, ['method' => 'publish', 'channel' => "thread:$thread_id", 'data' => $record]);
            answer($socket, $conn, ['op' => 'send', 'status' => true, 'code' => 105, 'id' => $record['id'],
                'worker' => $worker]);
            say("message {$record['id']} from user $user (conn $conn) to thread $thread_id");
            return;
        default:
            return refuse($socket, $conn, 'send', 101, 'Illegal request: unknown action');
    }
}

function on_reply($socket, array $reply): void
{
    global $joined, $joining, $held, $worker;
    $id = $reply['id'];
    if (isset($joining[$id])) {
        [$conn, $thread_id] = $joining[$id];
        unset($joining[$id]);
        $code = $reply['error']['code'] ?? null;
        if ($code === null || $code === 'already_subscribed') {
            $joined[$conn][$thread_id] = true;
            answer($socket, $conn, ['op' => 'join', 'thread' => $thread_id, 'status' => true, 'code' => 100,
                'worker' => $worker]);
        } elseif ($code !== 'no_such_conn') {
            // e.g. limit_exceeded: the connection is in channels_per_conn_max channels already.
            refuse($socket, $conn, 'join', 104, "Illegal request: $code");
        }
        // The connection's held events, in order, until one of them is a join again.
        $events = $held[$conn] ?? [];
        unset($held[$conn]);
        while ($events && !isset($held[$conn])) {
            handle($socket, array_shift($events));
        }
        if ($events) {
            array_push($held[$conn], ...$events);
        }
        return;
    }
    if (isset($reply['error']) && ($reply['error']['code'] ?? '') !== 'no_such_conn') {
        say("request $id failed: " . json_encode($reply['error'], JSON_UNESCAPED_SLASHES));
    }
}

function handle($socket, array $msg): void
{
    global $joined;
    switch ($msg['event'] ?? '') {
        case 'message':
            try {
                on_message($socket, $msg);
            } catch (RuntimeException $e) {
                say($e->getMessage());
                refuse($socket, $msg['conn'], 'send', 104, 'Not stored, try again');
            }
            break;
        case 'close':
            $threads = array_keys($joined[$msg['conn']] ?? []);
            unset($joined[$msg['conn']]);
            say("close conn={$msg['conn']} code={$msg['code']}: left threads [" . implode(',', $threads) . ']');
            break;
        case 'gap':
            say("missed {$msg['dropped']} events");
            break;
    }
}

try {
    db_load();
    $socket = ringcast_connect();
} catch (Throwable $e) {
    say($e->getMessage());
    exit(2);
}
$events_id = request($socket, ['method' => 'events', 'types' => ['message', 'close'], 'group' => $group]);
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
        if ($msg['id'] === $events_id) {
            if (isset($msg['error'])) {
                say('events refused: ' . json_encode($msg['error']));
                exit(2);
            }
            say("ready: message and close events of group $group");
            continue;
        }
        on_reply($socket, $msg);
        continue;
    }
    if (isset($msg['conn'], $held[$msg['conn']])) {
        $held[$msg['conn']][] = $msg;
        continue;
    }
    handle($socket, $msg);
}
