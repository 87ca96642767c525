<?php
// Mint a connection token for trying the event consumer (in your application, your login
// endpoint does this; see examples/01-login-timeout/login.php).
//
// usage: RINGCAST_HS256_SECRET=... php token.php USER [TTL_S]
//   prints an HS256 token for USER, valid TTL_S seconds (default 3600), that subscribes to
//   chat:lobby at connect. Connect with ws://HOST:9080/ws?token=TOKEN (or send
//   {"op":"auth","token":TOKEN} first), then send {"op":"send","data":{"text":"hi","ref":1}}.
require __DIR__ . '/ringcast.php';

if ($argc < 2 || $argc > 3 || !preg_match('/^[A-Za-z0-9_.@-]{1,64}$/', $argv[1])
    || ($argc === 3 && !preg_match('/^[0-9]{1,9}$/', $argv[2]))) {
    fwrite(STDERR, "usage: php token.php USER [TTL_S]\n");
    exit(2);
}
try {
    echo ringcast_token([
        'sub' => $argv[1],
        'exp' => time() + (int)($argv[2] ?? 3600),
        'channels' => ['chat:lobby'],
    ]), "\n";
} catch (Throwable $e) {
    fwrite(STDERR, 'token.php: ' . $e->getMessage() . "\n");
    exit(2);
}
