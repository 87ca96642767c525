<?php
// examples/03-group-chat/login.php: POST user=ID -> {"token":T,"user":{...}} for a user of
// data/db.json (a demo login: put your own check here). The token names the user (`sub`, the
// id as a string) and shows their name to others (`info`); it lists no channels, so only a
// worker can put the connection into a thread.
require __DIR__ . '/ringcast.php';
require __DIR__ . '/db.php';

header('Content-Type: application/json');
$id = filter_input(INPUT_POST, 'user', FILTER_VALIDATE_INT);
$user = $id === false || $id === null ? null : db_user(db_load(), $id);
if ($user === null) {
    http_response_code(403);
    echo json_encode(['error' => 'no such user']);
    exit;
}
echo json_encode([
    'token' => ringcast_token(['sub' => (string) $user['id'], 'info' => ['name' => $user['name']],
        'exp' => time() + 3600]),
    'user' => $user,
]);
