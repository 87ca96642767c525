<?php
// examples/03-group-chat/db.php: the JSON file database of the example. db.json holds the
// classes, threads and users (read only here); messages.jsonl gets one line per message, with
// an id from messages.seq, both under one exclusive lock so that any number of workers can
// share them. Swap this file for your database.
// GROUP_CHAT_DATA: the directory of these files (default data/ beside this script).

function db_dir(): string
{
    return getenv('GROUP_CHAT_DATA') ?: __DIR__ . '/data';
}

function db_load(): array
{
    $text = file_get_contents(db_dir() . '/db.json');
    $db = $text === false ? null : json_decode($text, true);
    if (!is_array($db)) {
        throw new RuntimeException('cannot read ' . db_dir() . '/db.json');
    }
    return $db;
}

function db_find(array $rows, int $id): ?array
{
    foreach ($rows as $row) {
        if ($row['id'] === $id) {
            return $row;
        }
    }
    return null;
}

function db_user(array $db, int $id): ?array
{
    return db_find($db['users'], $id);
}

/** Appends a message, giving it the next id; returns the stored record. */
function db_store_message(array $message): array
{
    $dir = db_dir();
    $lock = fopen("$dir/messages.lock", 'c');
    if ($lock === false || !flock($lock, LOCK_EX)) {
        throw new RuntimeException("cannot lock $dir/messages.lock");
    }
    try {
        $seq = (int) @file_get_contents("$dir/messages.seq") + 1;
        $record = ['id' => $seq] + $message;
        $line = json_encode($record, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE) . "\n";
        if (file_put_contents("$dir/messages.jsonl", $line, FILE_APPEND) !== strlen($line)
            || file_put_contents("$dir/messages.seq", (string) $seq) === false) {
            throw new RuntimeException("cannot write to $dir");
        }
        return $record;
    } finally {
        flock($lock, LOCK_UN);
        fclose($lock);
    }
}
