<?php
// The login of the online-users example: a PHP session, and a ringcast connection token for it.
//
//   POST login.php  name=Alice&room=lobby  log in (a demo: any name, no password) and get a token
//   GET  login.php?room=lobby              a fresh token for the session's user (another tab,
//                                          a reconnect, a refresh before the token expires);
//                                          401 when nobody is logged in
// Both answer {"user":"alice","name":"Alice","room":"lobby","channel":"online:lobby",
//              "token":"eyJ...","exp":1796122563}.
// The token lists the room's channel (`channels`: subscribed at connect; namespace `online` has
// subscribe = "claim", so this is the only room the connection may join) and carries the
// display name in `info`, which ringcast shows to the others in presence and join/leave news.
// Environment: RINGCAST_HS256_SECRET (required, see ringcast.php), ONLINE_TTL_S (token
// lifetime, seconds; default 3600 — the page refreshes the token when ringcast says it expired).
require __DIR__ . '/ringcast.php';

header('Content-Type: application/json');
header('Cache-Control: no-store');

function answer(int $status, array $body): void
{
    http_response_code($status);
    echo json_encode($body, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE), "\n";
    exit;
}

$room = (string)($_REQUEST['room'] ?? 'lobby');
if (!preg_match('/^[a-z0-9_-]{1,64}$/', $room)) {
    answer(400, ['error' => 'room: 1-64 characters a-z 0-9 _ -']);
}
session_start();
$method = $_SERVER['REQUEST_METHOD'] ?? 'GET';
if ($method === 'POST') {
    // Your login check goes here (password, SSO). This demo lets anyone in under any name and
    // derives the user id from it; use your account id instead.
    $name = trim((string)($_POST['name'] ?? ''));
    $user = trim(preg_replace('/[^a-z0-9]+/', '-', strtolower($name)), '-');
    // /u: the name must be UTF-8; 1-40 characters, not bytes (core PCRE, no mbstring needed).
    if ($user === '' || strlen($user) > 64 || !preg_match('/^[^\x00-\x1f]{1,40}$/u', $name)) {
        answer(400, ['error' => 'name: 1-40 characters, with letters or digits']);
    }
    session_regenerate_id(true);
    $_SESSION['user'] = $user;
    $_SESSION['name'] = $name;
} elseif ($method !== 'GET') {
    header('Allow: GET, POST');
    answer(405, ['error' => 'GET or POST']);
} elseif (!isset($_SESSION['user'])) {
    answer(401, ['error' => 'not logged in']);
}
$user = $_SESSION['user'];
$name = $_SESSION['name'];
session_write_close();

$exp = time() + max(1, (int)(getenv('ONLINE_TTL_S') ?: 3600));
try {
    $token = ringcast_token([
        'sub' => $user,
        'exp' => $exp,
        'channels' => ["online:$room"],
        'info' => ['name' => $name],
    ]);
} catch (Throwable $e) {
    error_log('login.php: ' . $e->getMessage());
    answer(500, ['error' => 'cannot issue a token (see the server log)']);
}
answer(200, ['user' => $user, 'name' => $name, 'room' => $room, 'channel' => "online:$room",
    'token' => $token, 'exp' => $exp]);
