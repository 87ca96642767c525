<?php
// The login endpoint of the login-timeout example: a (demo) login that answers with a ringcast
// connection token which expires when the login does.
//
//   POST login.php   user=alice   ->  {"user":"alice","token":"eyJ...","exp":1796122563}
//
// The page (index.html) calls it on "log in" and on "log in again". The token's `exp` is the
// end of the login: ringcast then tells every tab of the user {"op":"expired"} and closes those
// that do not send a fresh token within [limits] token_refresh_grace_ms (close code 4005).
// Environment: RINGCAST_HS256_SECRET (required, see ringcast.php), LOGIN_TTL_S (how long a login
// lasts, seconds; default 900).
require __DIR__ . '/ringcast.php';

header('Content-Type: application/json');
header('Cache-Control: no-store');

function answer(int $status, array $body): void
{
    http_response_code($status);
    echo json_encode($body, JSON_UNESCAPED_SLASHES), "\n";
    exit;
}

if (($_SERVER['REQUEST_METHOD'] ?? '') !== 'POST') {
    header('Allow: POST');
    answer(405, ['error' => 'POST user=NAME']);
}
$user = strtolower(trim((string)($_POST['user'] ?? '')));
if (!preg_match('/^[a-z0-9_-]{1,64}$/', $user)) {
    answer(400, ['error' => 'user: 1-64 characters a-z 0-9 _ -']);
}

// Your login check goes here: a password, your SSO, the session you already have. This demo
// lets anyone in under any name.

$ttl = (int)(getenv('LOGIN_TTL_S') ?: 900);
$exp = time() + max(1, $ttl);
try {
    // `lt:USER` is this user's own channel (namespace `lt`, subscribe = "owner" in
    // ringcast.toml): subscribed at connect; publish to it for this user's notifications.
    $token = ringcast_token(['sub' => $user, 'exp' => $exp, 'channels' => ["lt:$user"]]);
} catch (Throwable $e) {
    error_log('login.php: ' . $e->getMessage());
    answer(500, ['error' => 'cannot issue a token (see the server log)']);
}
answer(200, ['user' => $user, 'token' => $token, 'exp' => $exp]);
