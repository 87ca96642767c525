<?php
// Who is in a room now: the page's initial list (join/leave news keep it current afterwards).
//
//   GET online.php?room=lobby  ->  {"channel":"online:lobby",
//                                   "users":{"alice":{"name":"Alice","conns":2},...}}
// Only for a logged-in session (login.php). Asks ringcast's control socket for `presence` of
// the channel: its users with their connection counts and the `info` of their tokens.
// Environment: RINGCAST_CONTROL (default unix:/tmp/ringcast.sock, see ringcast.php).
require __DIR__ . '/ringcast.php';

header('Content-Type: application/json');
header('Cache-Control: no-store');

function answer(int $status, array $body): void
{
    http_response_code($status);
    echo json_encode($body, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE), "\n";
    exit;
}

session_start();
if (!isset($_SESSION['user'])) {
    answer(401, ['error' => 'not logged in']);
}
session_write_close(); // do not hold the session's lock while ringcast answers
$room = (string)($_GET['room'] ?? 'lobby');
if (!preg_match('/^[a-z0-9_-]{1,64}$/', $room)) {
    answer(400, ['error' => 'room: 1-64 characters a-z 0-9 _ -']);
}
$channel = "online:$room";
$users = [];
try {
    // Users come in pages (by user id); `users_next` is the cursor of the next one. At most
    // 10 pages of 1000 here: a bigger room wants counts (`presence_stats`), not a list.
    $cursor = null;
    for ($page = 0; $page < 10; $page++) {
        $params = ['channel' => $channel, 'limit' => 1000];
        if ($cursor !== null) {
            $params['user_cursor'] = $cursor;
        }
        $result = ringcast_call('presence', $params);
        foreach ($result['users'] as $id => $entry) {
            $info = $entry['info'];
            $users[(string)$id] = [
                'name' => is_array($info) && is_string($info['name'] ?? null) ? $info['name'] : (string)$id,
                'conns' => $entry['conns'],
            ];
        }
        $cursor = $result['users_next'];
        if ($cursor === null) {
            break;
        }
    }
} catch (Throwable $e) {
    error_log('online.php: ' . $e->getMessage());
    answer(502, ['error' => 'ringcast is not answering (see the server log)']);
}
answer(200, ['channel' => $channel, 'users' => (object)$users]);
