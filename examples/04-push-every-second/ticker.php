<?php
// An internal PHP client that pushes a message to every connected page once a second: the
// Swoole "push every second" lecture, with ringcast holding the connections. There is no list
// of connections to keep in shared memory or Redis: ringcast knows them all, on every shard.
//
// usage: php ticker.php        (RINGCAST_CONTROL: the control socket, see ringcast.php)
// Environment:
//   TICK_INTERVAL_MS  time between pushes (default 1000)
//   TICKS             stop after this many pushes (default 0: never)
// Log: one line per push on stderr: "push N: C connections".
//
// One control connection, one `broadcast` per tick: {"method":"broadcast","data":{...}}
// reaches every open /ws connection ({"op":"push","data":{...}}) and answers
// {"connections":C}. Ticks are on a fixed schedule (no drift from the time a push takes); a
// tick that is more than one interval late is skipped, not sent in a burst. If the server goes
// away (restart, deploy), the ticker reconnects with a back-off and carries on counting.
require __DIR__ . '/ringcast.php';

$interval_s = max(1, (int) (getenv('TICK_INTERVAL_MS') ?: 1000)) / 1000;
$ticks = max(0, (int) (getenv('TICKS') ?: 0));

function say(string $text): void
{
    fwrite(STDERR, gmdate('Y-m-d\TH:i:s\Z') . " [ticker] $text\n");
}

/** A control connection; retries with a back-off (0.5 s doubling to 10 s) while the server is away. */
function connect_retrying()
{
    $delay_s = 0.5;
    for (;;) {
        try {
            return ringcast_connect();
        } catch (RuntimeException $e) {
            say($e->getMessage() . "; retrying in {$delay_s}s");
            usleep((int) ($delay_s * 1e6));
            $delay_s = min(10, $delay_s * 2);
        }
    }
}

$socket = connect_retrying();
say('connected');
$n = 0;
$next = microtime(true);
while ($ticks === 0 || $n < $ticks) {
    $n++;
    $push = ['n' => $n, 'time' => gmdate('H:i:s'), 'text' => "push number $n"];
    try {
        $reply = ringcast_exchange($socket, [['method' => 'broadcast', 'data' => $push]])[0];
        if (isset($reply['result'])) {
            say("push $n: {$reply['result']['connections']} connections");
        } else {
            say("push $n refused: " . json_encode($reply['error']));
        }
    } catch (RuntimeException $e) {
        say("push $n failed ({$e->getMessage()}); reconnecting");
        fclose($socket);
        $socket = connect_retrying();
        say('connected again');
    }
    $next += $interval_s;
    $now = microtime(true);
    if ($now - $next > $interval_s) {
        $next = $now; // more than a tick late (the server was away): start a new schedule
    } elseif ($next > $now) {
        usleep((int) (($next - $now) * 1e6));
    }
}
