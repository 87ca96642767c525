<?php
// End a user's session from the backend, in every tab at once, before the login times out.
//
// usage: RINGCAST_CONTROL=unix:/tmp/ringcast.sock php logout.php USER push|disconnect
//   push        send_user: {"code":401,"message":"login timed out"} to every connection of USER;
//               the page shows "log in again" and closes its connection itself
//   disconnect  disconnect_user: ringcast closes every connection of USER with code 4401,
//               reason "logged out"; the page shows "log in again" and does not reconnect
// Prints the result ({"connections":N}: how many connections it reached); exit status 0 done,
// 1 error reply, 2 usage or connection problem. In a web backend, call ringcast_call() the same
// way from your logout or "revoke session" handler.
//
// Either way the tabs' tokens stay valid until their `exp`: a client that kept one could
// connect again until then. Keep logins short (LOGIN_TTL_S of login.php) and refuse a revoked
// user at login, or use `disconnect` again when it comes back (the `connect` event of
// examples/event-consumer/ tells you).
require __DIR__ . '/ringcast.php';

// Close code for "logged out by the backend": any of 4000-4999 that ringcast does not use
// itself (4001-4007); the page treats it like 4005 (token expired).
const LOGGED_OUT_CODE = 4401;

if ($argc !== 3 || !in_array($argv[2], ['push', 'disconnect'], true)) {
    fwrite(STDERR, "usage: php logout.php USER push|disconnect\n");
    exit(2);
}
[, $user, $how] = $argv;
if ($how === 'push') {
    $request = ['method' => 'send_user', 'user' => $user,
        'data' => ['code' => 401, 'message' => 'login timed out']];
} else {
    $request = ['method' => 'disconnect_user', 'user' => $user,
        'code' => LOGGED_OUT_CODE, 'reason' => 'logged out'];
}
try {
    $reply = ringcast_control([$request])[0];
} catch (Throwable $e) {
    fwrite(STDERR, 'logout.php: ' . $e->getMessage() . "\n");
    exit(2);
}
if (!isset($reply['result'])) {
    fwrite(STDERR, 'logout.php: ' . json_encode($reply) . "\n");
    exit(1);
}
echo json_encode($reply['result']), "\n";
