<?php
// ringcast helpers for a PHP backend: plain PHP 7.4 or newer, core functions only (hash_hmac,
// json_encode, stream_socket_client). The same file is in every example directory; copy it once.
//
//   ringcast_token($claims)              a connection token (HS256 JWT) for ws://HOST/ws
//   ringcast_call($method, $params)      one control request; its result, or an exception
//   ringcast_control($requests)          several requests pipelined; one reply each, in order
//   ringcast_connect()                   a control connection of your own (the event stream)
//
// Configuration, from the environment:
//   RINGCAST_HS256_SECRET   the [auth] hs256_secret of the server's ringcast.toml (32+ bytes)
//   RINGCAST_CONTROL        the control socket: unix:PATH or tcp:HOST:PORT
//                           (default unix:/tmp/ringcast.sock, what `ringcast serve` opens)
//   RINGCAST_CONTROL_TOKEN  the [control] token, when the server has one

/** base64url without padding, as JWTs spell it. */
function ringcast_b64url(string $bytes): string
{
    return rtrim(strtr(base64_encode($bytes), '+/', '-_'), '=');
}

/**
 * A connection token signed with the server's HS256 secret. Claims ringcast reads:
 *   sub       the user id (string)
 *   exp       expiry, unix seconds: the server sends {"op":"expired"} then, and closes the
 *             connection with 4005 unless it refreshes within [limits] token_refresh_grace_ms
 *   channels  channels subscribed at connect (and the only ones of a `subscribe = "claim"`
 *             namespace the connection may join)
 *   info      any JSON value, shown to others in presence and join/leave news
 */
function ringcast_token(array $claims, ?string $secret = null): string
{
    $secret = $secret ?? getenv('RINGCAST_HS256_SECRET');
    if (!is_string($secret) || strlen($secret) < 32) {
        throw new RuntimeException(
            'set RINGCAST_HS256_SECRET to the [auth] hs256_secret of ringcast.toml (32 bytes or more)'
        );
    }
    $header = ringcast_b64url('{"alg":"HS256","typ":"JWT"}');
    $payload = ringcast_b64url(json_encode($claims, JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR));
    $signature = ringcast_b64url(hash_hmac('sha256', "$header.$payload", $secret, true));
    return "$header.$payload.$signature";
}

/** A control connection (authenticated when RINGCAST_CONTROL_TOKEN is set). */
function ringcast_connect(int $timeout_s = 10)
{
    $address = getenv('RINGCAST_CONTROL') ?: 'unix:/tmp/ringcast.sock';
    // PHP spells the addresses unix:///tmp/ringcast.sock and tcp://127.0.0.1:9081.
    if (strncmp($address, 'unix:', 5) === 0) {
        $remote = 'unix://' . substr($address, 5);
    } elseif (strncmp($address, 'tcp:', 4) === 0) {
        $remote = 'tcp://' . substr($address, 4);
    } else {
        throw new RuntimeException("RINGCAST_CONTROL must be unix:PATH or tcp:HOST:PORT, got $address");
    }
    $socket = @stream_socket_client($remote, $errno, $errstr, $timeout_s);
    if ($socket === false) {
        throw new RuntimeException("cannot connect to the ringcast control socket $address: $errstr");
    }
    stream_set_timeout($socket, $timeout_s);
    $token = getenv('RINGCAST_CONTROL_TOKEN');
    if (is_string($token) && $token !== '') {
        $reply = ringcast_exchange($socket, [['method' => 'auth', 'token' => $token]])[0];
        if (!isset($reply['result'])) {
            throw new RuntimeException('control auth refused: ' . json_encode($reply['error'] ?? $reply));
        }
    }
    return $socket;
}

/** Writes the requests as JSON lines, reads one reply line per request. */
function ringcast_exchange($socket, array $requests): array
{
    $lines = '';
    foreach ($requests as $request) {
        $lines .= json_encode($request, JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR) . "\n";
    }
    if (fwrite($socket, $lines) !== strlen($lines)) {
        throw new RuntimeException('control socket: write failed');
    }
    $replies = [];
    foreach ($requests as $_) {
        $line = fgets($socket);
        if ($line === false) {
            $why = stream_get_meta_data($socket)['timed_out'] ? 'no reply in time' : 'connection closed';
            throw new RuntimeException("control socket: $why");
        }
        $replies[] = json_decode($line, true, 512, JSON_THROW_ON_ERROR);
    }
    return $replies;
}

/** Several requests on one connection; the replies in request order ({"result"} or {"error"}). */
function ringcast_control(array $requests): array
{
    $socket = ringcast_connect();
    try {
        return ringcast_exchange($socket, $requests);
    } finally {
        fclose($socket);
    }
}

/** One request: its result, or a RuntimeException with the error's code and message. */
function ringcast_call(string $method, array $params = []): array
{
    $reply = ringcast_control([['method' => $method] + $params])[0];
    if (!isset($reply['result'])) {
        $error = $reply['error'] ?? ['code' => 'bad_reply', 'message' => json_encode($reply)];
        throw new RuntimeException("ringcast $method: {$error['code']}: {$error['message']}");
    }
    return $reply['result'];
}
