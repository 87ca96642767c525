<?php
// Publish one message to a ringcast channel through the control socket (docs/control.md).
//
// usage: RINGCAST_CONTROL=unix:/tmp/ringcast.sock php publish.php CHANNEL MESSAGE
//
// Plain PHP CLI (7.1 or newer), no extension: stream_socket_client and json_encode. The address
// is unix:PATH or tcp:HOST:PORT (default unix:/tmp/ringcast.sock); set RINGCAST_CONTROL_TOKEN
// when the server has a token. Prints the reply line; exit status 0 published, 1 error reply,
// 2 usage or connection problem.

if ($argc !== 3) {
    fwrite(STDERR, "usage: php publish.php CHANNEL MESSAGE\n");
    exit(2);
}
[, $channel, $message] = $argv;
$address = getenv('RINGCAST_CONTROL') ?: 'unix:/tmp/ringcast.sock';
$token = getenv('RINGCAST_CONTROL_TOKEN');

// PHP spells the addresses unix:///tmp/ringcast.sock and tcp://127.0.0.1:9081.
if (strncmp($address, 'unix:', 5) === 0) {
    $remote = 'unix://' . substr($address, 5);
} elseif (strncmp($address, 'tcp:', 4) === 0) {
    $remote = 'tcp://' . substr($address, 4);
} else {
    fwrite(STDERR, "publish.php: RINGCAST_CONTROL must be unix:PATH or tcp:HOST:PORT\n");
    exit(2);
}
$socket = @stream_socket_client($remote, $errno, $errstr, 10);
if ($socket === false) {
    fwrite(STDERR, "publish.php: cannot connect to $address: $errstr\n");
    exit(2);
}
stream_set_timeout($socket, 10); // seconds to wait for a reply

// One JSON object per line. "text" is delivered as is; use "data" for any JSON value.
$requests = [['id' => 1, 'method' => 'publish', 'channel' => $channel, 'text' => $message]];
if ($token !== false && $token !== '') {
    array_unshift($requests, ['method' => 'auth', 'token' => $token]);
}
$lines = '';
foreach ($requests as $request) {
    $json = json_encode($request);
    if ($json === false) { // e.g. a message that is not valid UTF-8
        fwrite(STDERR, 'publish.php: ' . json_last_error_msg() . "\n");
        exit(2);
    }
    $lines .= $json . "\n";
}
fwrite($socket, $lines);

// One reply line per request, in order: {"id":1,"result":{"offset":N,"epoch":E}}
// or {"id":1,"error":{"code":"...","message":"..."}}.
foreach ($requests as $request) {
    $line = fgets($socket);
    if ($line === false) {
        $timedOut = stream_get_meta_data($socket)['timed_out'];
        $why = $timedOut ? 'no reply within 10 s' : 'the server closed the connection';
        fwrite(STDERR, "publish.php: $address: $why\n");
        exit(2);
    }
    $reply = json_decode($line, true);
    if (isset($reply['error'])) {
        break;
    }
}
fclose($socket);
echo $line;
exit(isset($reply['error']) ? 1 : 0);
