<?php
// The worker of examples/05-task-progress/: takes jobs from Redis (BLPOP tasks:jobs), runs
// each task and PUBLISHes its status to ws:fid:{fid} — exactly what a Swoole + Redis backend
// publishes; only `fid` is now ringcast's connection id. ringcast ([[redis_input]] ws:fid:*)
// pushes each status to that connection:
//   PUBLISH ws:fid:FID {"id":"12345","status":"running"}
//   PUBLISH ws:fid:FID {"id":"12345","status":"done"}
// The page closes its socket once every task is done. For a client that does not, the worker
// ends the connection itself CLOSE_AFTER_MS after the job's last status (control `disconnect`,
// code 1000 "all tasks done"). It waits because the statuses travel through Redis and the
// disconnect through the control socket: two paths with no order between them, and a
// disconnect that overtook the last status would lose it.
//
// usage: php worker.php      (RINGCAST_CONTROL: the control socket, see ringcast.php)
// Environment: REDIS_HOST (default 127.0.0.1), REDIS_PORT (default 6379),
//              TASK_MS (time a task takes, default 300), CLOSE_AFTER_MS (default 2000)
// Needs the Redis extension (Debian: apt-get install php-redis). Run as many as you like:
// each job goes to one worker. Log on stderr; "ready" once it waits for jobs.
require __DIR__ . '/ringcast.php';

$task_us = (int) (getenv('TASK_MS') ?: 300) * 1000;
$close_after_s = (int) (getenv('CLOSE_AFTER_MS') ?: 2000) / 1000;

function say(string $text): void
{
    fwrite(STDERR, gmdate('Y-m-d\TH:i:s\Z') . " [worker] $text\n");
}

if (!extension_loaded('redis')) {
    say('the PHP Redis extension is missing: apt-get install php-redis (or pecl install redis)');
    exit(2);
}
try {
    $redis = new Redis();
    $redis->connect(getenv('REDIS_HOST') ?: '127.0.0.1', (int) (getenv('REDIS_PORT') ?: 6379), 5);
    // BLPOP below waits up to 1 s: the read timeout must be longer.
    $redis->setOption(Redis::OPT_READ_TIMEOUT, 10);
} catch (Throwable $e) {
    say($e->getMessage());
    exit(2);
}

/** Connections to close, fid => when (unix seconds). */
$closing = [];

function close_due(array &$closing): void
{
    $now = microtime(true);
    foreach ($closing as $fid => $when) {
        if ($when > $now) {
            continue;
        }
        unset($closing[$fid]);
        try {
            ringcast_call('disconnect', ['conn' => $fid, 'code' => 1000, 'reason' => 'all tasks done']);
            say("conn $fid: closed");
        } catch (RuntimeException $e) {
            // no_such_conn: the page closed it itself, as it should.
            say("conn $fid: " . $e->getMessage());
        }
    }
}

say('ready: waiting for jobs on tasks:jobs');
for (;;) {
    close_due($closing);
    try {
        $job = $redis->blPop(['tasks:jobs'], 1);
    } catch (Throwable $e) {
        say('Redis: ' . $e->getMessage());
        exit(1);
    }
    if (!$job) {
        continue;
    }
    $data = json_decode($job[1], true);
    $fid = $data['fid'] ?? null;
    if (!is_int($fid) || !is_array($data['tasks'] ?? null)) {
        say('bad job: ' . $job[1]);
        continue;
    }
    foreach ($data['tasks'] as $task) {
        $redis->publish("ws:fid:$fid", json_encode(['id' => $task, 'status' => 'running']));
        usleep($task_us); // the work itself
        $redis->publish("ws:fid:$fid", json_encode(['id' => $task, 'status' => 'done']));
    }
    say("conn $fid: " . count($data['tasks']) . ' tasks done');
    $closing[$fid] = microtime(true) + $close_after_s;
}
