//! ringcast's JSON client protocol as a `format=json` client sees it (docs/protocol.md): the
//! envelopes it receives, read from a message's first bytes (`ws::WIDE_PREFIX_MAX`), and the
//! URL and the command that resume a channel from an offset (`since`).
//!
//! Written for this tool, like `ws`: the server's own code is not used, so a change in what the
//! server writes shows up here as unparsable messages instead of being absorbed. Only the fields
//! a scenario needs are read, by name: from the part before `"data":` of a message, before
//! `"info":` of join/leave news (a channel name or a plain user id cannot hold a `"`, so a key
//! cannot be faked by one). A number must be followed by
//! another byte inside the prefix, so a value cut by the prefix's end is never taken for a
//! smaller one.

/// What a JSON-format connection received, as far as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope<'a> {
    /// `{"op":"message","channel":C,"offset":N,"data":...}`: the channel, its offset, and the
    /// first bytes of the data (of a JSON string, its opening quote included).
    Message {
        /// The channel's name as written (no escapes: names are `[A-Za-z0-9_.:@/-]`).
        channel: &'a [u8],
        /// The message's offset in its channel.
        offset: u64,
        /// The data's first bytes.
        data: &'a [u8],
    },
    /// `{"op":"subscribed","channel":C,"offset":N,"epoch":E[,"recovered":B]}`.
    Subscribed {
        /// The channel's name as written.
        channel: &'a [u8],
        /// The last offset published before the subscription took effect.
        offset: u64,
        /// The channel's epoch.
        epoch: u64,
        /// Present when the subscribe asked for `since`.
        recovered: Option<bool>,
    },
    /// `{"op":"welcome","conn":ID}`, with the id when it could be read.
    Welcome {
        /// The connection's id, as the server's event stream and control methods name it.
        conn: Option<u64>,
    },
    /// `{"op":"join"|"leave","channel":C,"user":U,"info":I}`: presence news on a namespace with
    /// `join_leave` (docs/protocol.md, "Server → client").
    Presence {
        /// `join` (true) or `leave`.
        join: bool,
        /// The channel's name as written.
        channel: &'a [u8],
        /// The user's id as written (a JSON string without escapes).
        user: &'a [u8],
    },
    /// `{"op":"error",...}`.
    Error,
    /// Another op (`pong`, `push`, `unsubscribed`, ...).
    Other,
    /// Not a ringcast envelope, or cut before the fields it must have.
    Unparsable,
}

/// Where each `"` of `s` is, in order. Every pattern looked for starts with one, and an
/// envelope's head has a dozen of them in fifty bytes, so stepping from quote to quote compares
/// a dozen places instead of every byte (the `fanout` engine reads every message through here).
fn quotes(s: &[u8]) -> impl Iterator<Item = usize> + '_ {
    s.iter()
        .enumerate()
        .filter_map(|(at, &b)| (b == b'"').then_some(at))
}

/// Where `needle` (which starts with `"`) first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    debug_assert_eq!(needle.first(), Some(&b'"'));
    quotes(haystack).find(|&at| haystack[at..].starts_with(needle))
}

/// The bytes after the first `"key":` in `s`, if the key is there. Matched in place, without
/// building the pattern.
fn value<'a>(s: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let key = key.as_bytes();
    quotes(s).find_map(|at| {
        let rest = s[at + 1..].strip_prefix(key)?;
        rest.strip_prefix(b"\":")
    })
}

/// A message in the shape the server writes it, `,"channel":"C","offset":N,"data":` after the
/// op (src/wire/envelope.rs): read front to back with no search. `None` when the fields are in
/// another order or cut, and the general reading decides. Where this reads a message, the
/// general reading gives the same one: a channel name holds no `"`, so no key can be found
/// inside it.
fn canonical_message(fields: &[u8]) -> Option<Envelope<'_>> {
    let rest = fields.strip_prefix(b",\"channel\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let channel = &rest[..end];
    if channel.contains(&b'\\') {
        return None;
    }
    let rest = rest[end + 1..].strip_prefix(b",\"offset\":")?;
    let offset = number(rest)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let data = rest[digits..].strip_prefix(b",\"data\":")?;
    Some(Envelope::Message {
        channel,
        offset,
        data,
    })
}

/// A non-negative integer at the start of `s`, followed by at least one more byte.
fn number(s: &[u8]) -> Option<u64> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits == s.len() {
        return None;
    }
    let mut v = 0u64;
    for &b in &s[..digits] {
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// A JSON string without escapes at the start of `s`, without its quotes.
fn plain_string(s: &[u8]) -> Option<&[u8]> {
    let rest = s.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let inner = &rest[..end];
    (!inner.contains(&b'\\')).then_some(inner)
}

/// A message's fields in any order: the channel and the offset are looked for by name in the
/// part before the first `"data":`.
fn message(fields: &[u8]) -> Envelope<'_> {
    let Some(data_at) = find(fields, b"\"data\":") else {
        return Envelope::Unparsable;
    };
    let head = &fields[..data_at];
    let data = &fields[data_at + b"\"data\":".len()..];
    match (
        value(head, "channel").and_then(plain_string),
        value(head, "offset").and_then(number),
    ) {
        (Some(channel), Some(offset)) => Envelope::Message {
            channel,
            offset,
            data,
        },
        _ => Envelope::Unparsable,
    }
}

/// Reads the envelope at the start of a message (`prefix`: its first bytes).
pub fn parse(prefix: &[u8]) -> Envelope<'_> {
    let Some(rest) = prefix.strip_prefix(b"{\"op\":\"") else {
        return Envelope::Unparsable;
    };
    let Some(op_end) = rest.iter().position(|&b| b == b'"') else {
        return Envelope::Unparsable;
    };
    let (op, fields) = (&rest[..op_end], &rest[op_end + 1..]);
    match op {
        b"message" => canonical_message(fields).unwrap_or_else(|| message(fields)),
        b"subscribed" => {
            let recovered = match value(fields, "recovered") {
                None => None,
                Some(v) if v.starts_with(b"true") => Some(true),
                Some(v) if v.starts_with(b"false") => Some(false),
                Some(_) => return Envelope::Unparsable,
            };
            match (
                value(fields, "channel").and_then(plain_string),
                value(fields, "offset").and_then(number),
                value(fields, "epoch").and_then(number),
            ) {
                (Some(channel), Some(offset), Some(epoch)) => Envelope::Subscribed {
                    channel,
                    offset,
                    epoch,
                    recovered,
                },
                _ => Envelope::Unparsable,
            }
        }
        b"welcome" => Envelope::Welcome {
            conn: value(fields, "conn").and_then(number),
        },
        b"join" | b"leave" => {
            // `info` comes last and may hold anything: the keys are looked for before it.
            let head = find(fields, b"\"info\":").map_or(fields, |at| &fields[..at]);
            match (
                value(head, "channel").and_then(plain_string),
                value(head, "user").and_then(plain_string),
            ) {
                (Some(channel), Some(user)) => Envelope::Presence {
                    join: op == b"join",
                    channel,
                    user,
                },
                _ => Envelope::Unparsable,
            }
        }
        b"error" => Envelope::Error,
        _ => Envelope::Other,
    }
}

/// Where a client's view of a channel ends: the last offset it received and its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since {
    /// The last offset received.
    pub offset: u64,
    /// The epoch of that offset.
    pub epoch: u64,
}

/// The path and query of a `/ws` connection on `base` (a path with an optional query, as in
/// `--url`): the base's own parameters are kept except `channel`, `format` and `since`, then
/// `channel=C` (if any), `format=raw` (if `raw`) and `since=OFFSET:EPOCH:C` (if any; it needs
/// the channel). Channel names are `[A-Za-z0-9_.:@/-]`, all allowed in a query as they are.
pub fn ws_path(base: &str, channel: Option<&str>, raw: bool, since: Option<Since>) -> String {
    let (path, query) = base.split_once('?').unwrap_or((base, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter(|kv| {
            let key = kv.split('=').next().unwrap_or("");
            !matches!(key, "channel" | "format" | "since")
        })
        .map(str::to_string)
        .collect();
    if let Some(c) = channel {
        params.push(format!("channel={c}"));
        if let Some(s) = since {
            params.push(format!("since={}:{}:{c}", s.offset, s.epoch));
        }
    }
    if raw {
        params.push("format=raw".into());
    }
    if params.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", params.join("&"))
    }
}

/// `{"op":"subscribe","channel":C}`, with `"since":{"offset":N,"epoch":E}` when resuming.
pub fn subscribe_command(channel: &str, since: Option<Since>) -> String {
    let channel = serde_json::to_string(channel).expect("a str always serialises");
    match since {
        Some(s) => format!(
            "{{\"op\":\"subscribe\",\"channel\":{channel},\"since\":{{\"offset\":{},\"epoch\":{}}}}}",
            s.offset, s.epoch
        ),
        None => format!("{{\"op\":\"subscribe\",\"channel\":{channel}}}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_envelope() {
        let stamp = crate::payload::Stamp {
            stream: 0,
            seq: 1,
            sent_ns: 0xabc,
        };
        let mut payload = Vec::new();
        crate::payload::encode(stamp, 64, &mut payload);
        let mut m =
            b"{\"op\":\"message\",\"channel\":\"hist:bench\",\"offset\":1234,\"data\":\"".to_vec();
        m.extend_from_slice(&payload);
        m.extend_from_slice(b"\"}");
        let data_at = find(&m, b"\"data\":").unwrap() + 7;
        assert_eq!(
            parse(&m),
            Envelope::Message {
                channel: b"hist:bench",
                offset: 1234,
                data: &m[data_at..],
            }
        );
        // The payload's header reads through the JSON string's opening quote, and fits a wide
        // prefix.
        let prefix = &m[..crate::ws::WIDE_PREFIX_MAX.min(m.len())];
        let Envelope::Message { data, .. } = parse(prefix) else {
            panic!("a message");
        };
        assert_eq!(crate::payload::decode(data), Some(stamp));
        // The longest channel name (128) and a 20-digit offset still leave the whole header in
        // a wide prefix.
        let long = "x".repeat(128);
        let mut m = format!(
            "{{\"op\":\"message\",\"channel\":\"{long}\",\"offset\":{},\"data\":\"",
            u64::MAX
        )
        .into_bytes();
        m.extend_from_slice(&payload);
        let Envelope::Message { offset, data, .. } = parse(&m[..crate::ws::WIDE_PREFIX_MAX]) else {
            panic!("a message");
        };
        assert_eq!(offset, u64::MAX);
        assert_eq!(crate::payload::decode(data), Some(stamp));
        // A channel name may hold ':' (and the key order is not assumed).
        let reordered =
            b"{\"op\":\"message\",\"offset\":7,\"channel\":\"a:b:c\",\"data\":{\"x\":1}}";
        assert!(matches!(
            parse(reordered),
            Envelope::Message {
                channel: b"a:b:c",
                offset: 7,
                ..
            }
        ));
    }

    #[test]
    fn the_shape_the_server_writes_reads_as_the_general_reading_does() {
        let mut messages: Vec<Vec<u8>> = vec![
            b"{\"op\":\"message\",\"channel\":\"bench\",\"offset\":1234,\"data\":\"x\"}".to_vec(),
            b"{\"op\":\"message\",\"channel\":\"data\",\"offset\":0,\"data\":{\"a\":1}}".to_vec(),
            b"{\"op\":\"message\",\"channel\":\"offset\",\"offset\":9,\"data\":7}".to_vec(),
            // Not the shape: the general reading decides (an escape in the name is refused by
            // both; keys in another order or spaced are read by name).
            b"{\"op\":\"message\",\"channel\":\"a\\b\",\"offset\":1,\"data\":1}".to_vec(),
            b"{\"op\":\"message\",\"offset\":1,\"channel\":\"c\",\"data\":1}".to_vec(),
            b"{\"op\":\"message\",\"channel\":\"c\", \"offset\":1,\"data\":1}".to_vec(),
            b"{\"op\":\"message\",\"channel\":\"c\",\"offset\":-1,\"data\":1}".to_vec(),
        ];
        let mut long = b"{\"op\":\"message\",\"channel\":\"".to_vec();
        long.extend_from_slice("y".repeat(128).as_bytes());
        long.extend_from_slice(format!("\",\"offset\":{},\"data\":\"z\"}}", u64::MAX).as_bytes());
        messages.push(long);
        let op = b"{\"op\":\"message\"".len();
        let mut fast = 0;
        for m in &messages {
            // Every cut, as a prefix of a longer message would be.
            for cut in op..=m.len() {
                let fields = &m[op..cut];
                let general = message(fields);
                if let Some(read) = canonical_message(fields) {
                    assert_eq!(read, general, "{:?}", String::from_utf8_lossy(fields));
                    fast += 1;
                }
                assert_eq!(parse(&m[..cut]), general);
            }
        }
        // The fast path did read the canonical ones (each from the cut after `"data":` on).
        assert!(fast >= 3, "{fast}");
        assert_eq!(canonical_message(&messages[4][op..]), None);
        assert_eq!(canonical_message(&messages[3][op..]), None);
        assert_eq!(parse(&messages[3]), Envelope::Unparsable);
        assert!(matches!(
            parse(&messages[4]),
            Envelope::Message {
                channel: b"c",
                offset: 1,
                ..
            }
        ));
    }

    #[test]
    fn keys_are_found_in_place() {
        assert_eq!(value(b"{\"a\":1,\"offset\":2}", "offset"), Some(&b"2}"[..]));
        assert_eq!(value(b"\"offset\":", "offset"), Some(&b""[..]));
        assert_eq!(value(b"\"offset\"", "offset"), None);
        assert_eq!(value(b"\"offset\" :1", "offset"), None);
        // A longer key that ends like the one looked for is not it.
        assert_eq!(
            value(b"{\"xoffset\":1,\"offset\":2}", "offset"),
            Some(&b"2}"[..])
        );
        assert_eq!(value(b"", "offset"), None);
    }

    #[test]
    fn cut_or_malformed_envelopes_are_unparsable() {
        let m = b"{\"op\":\"message\",\"channel\":\"c\",\"offset\":1234,\"data\":\"x\"}";
        // Cut inside the offset: 123 must not be read for 1234; cut before "data": no message.
        let cut = m.windows(4).position(|w| w == b"1234").unwrap() + 3;
        assert_eq!(parse(&m[..cut]), Envelope::Unparsable);
        assert_eq!(parse(&m[..cut + 2]), Envelope::Unparsable);
        assert_eq!(parse(b"0000000000000000"), Envelope::Unparsable);
        assert_eq!(parse(b"{\"op\":\"mess"), Envelope::Unparsable);
        assert_eq!(
            parse(b"{\"op\":\"message\",\"channel\":\"c\",\"offset\":-1,\"data\":1}"),
            Envelope::Unparsable
        );
        assert_eq!(
            parse(
                b"{\"op\":\"message\",\"channel\":\"c\",\"offset\":99999999999999999999999,\"data\":1}"
            ),
            Envelope::Unparsable
        );
        // An offset-like text inside the data is not read as the offset.
        assert_eq!(
            parse(b"{\"op\":\"message\",\"channel\":\"c\",\"data\":\"\\\"offset\\\":5,\"}"),
            Envelope::Unparsable
        );
        assert_eq!(
            parse(b"{\"op\":\"subscribed\",\"channel\":\"c\",\"offset\":3,\"epoch\":9,\"recovered\":maybe}"),
            Envelope::Unparsable
        );
    }

    #[test]
    fn subscribed_and_other_replies() {
        assert_eq!(
            parse(b"{\"op\":\"subscribed\",\"channel\":\"hist:bench\",\"offset\":0,\"epoch\":1732363200001}"),
            Envelope::Subscribed {
                channel: b"hist:bench",
                offset: 0,
                epoch: 1_732_363_200_001,
                recovered: None,
            }
        );
        assert_eq!(
            parse(b"{\"op\":\"subscribed\",\"channel\":\"c\",\"offset\":42,\"epoch\":5,\"recovered\":true}"),
            Envelope::Subscribed {
                channel: b"c",
                offset: 42,
                epoch: 5,
                recovered: Some(true),
            }
        );
        assert!(matches!(
            parse(b"{\"op\":\"subscribed\",\"channel\":\"c\",\"offset\":42,\"epoch\":5,\"recovered\":false,\"id\":1}"),
            Envelope::Subscribed {
                recovered: Some(false),
                ..
            }
        ));
        assert_eq!(
            parse(b"{\"op\":\"welcome\",\"conn\":17}"),
            Envelope::Welcome { conn: Some(17) }
        );
        // An id cut by the prefix's end is not read as a smaller one.
        assert_eq!(
            parse(b"{\"op\":\"welcome\",\"conn\":12884901890"),
            Envelope::Welcome { conn: None }
        );
        assert_eq!(
            parse(b"{\"op\":\"error\",\"code\":\"bad_channel\",\"message\":\"x\"}"),
            Envelope::Error
        );
        assert_eq!(parse(b"{\"op\":\"pong\"}"), Envelope::Other);
    }

    #[test]
    fn presence_news() {
        assert_eq!(
            parse(b"{\"op\":\"join\",\"channel\":\"room:bench\",\"user\":\"u17\",\"info\":null}"),
            Envelope::Presence {
                join: true,
                channel: b"room:bench",
                user: b"u17",
            }
        );
        assert_eq!(
            parse(b"{\"op\":\"leave\",\"channel\":\"room:bench\",\"user\":\"u17\",\"info\":{\"n\":1}}"),
            Envelope::Presence {
                join: false,
                channel: b"room:bench",
                user: b"u17",
            }
        );
        // A "user" key inside the info is not taken for the user.
        assert_eq!(
            parse(b"{\"op\":\"join\",\"channel\":\"c\",\"info\":{\"user\":\"x\"}}"),
            Envelope::Unparsable
        );
        // A user with an escape, or cut before its closing quote, is not read.
        assert_eq!(
            parse(b"{\"op\":\"join\",\"channel\":\"c\",\"user\":\"a\\\"b\",\"info\":null}"),
            Envelope::Unparsable
        );
        assert_eq!(
            parse(b"{\"op\":\"join\",\"channel\":\"c\",\"user\":\"u1"),
            Envelope::Unparsable
        );
    }

    #[test]
    fn urls_and_commands() {
        let since = Some(Since {
            offset: 17,
            epoch: 99,
        });
        assert_eq!(
            ws_path("/ws", Some("hist:bench"), true, None),
            "/ws?channel=hist:bench&format=raw"
        );
        assert_eq!(
            ws_path("/ws", Some("hist:bench"), false, since),
            "/ws?channel=hist:bench&since=17:99:hist:bench"
        );
        // The URL's own parameters stay, its channel, format and since are replaced.
        assert_eq!(
            ws_path(
                "/ws?token=abc&channel=x&format=raw&since=1:2:x",
                Some("c"),
                false,
                since
            ),
            "/ws?token=abc&channel=c&since=17:99:c"
        );
        assert_eq!(ws_path("/ws?format=raw", None, false, None), "/ws");
        assert_eq!(
            ws_path("/ws", None, false, since),
            "/ws",
            "since needs a channel"
        );
        assert_eq!(
            subscribe_command("hist:bench", since),
            "{\"op\":\"subscribe\",\"channel\":\"hist:bench\",\"since\":{\"offset\":17,\"epoch\":99}}"
        );
        assert_eq!(
            subscribe_command("c", None),
            "{\"op\":\"subscribe\",\"channel\":\"c\"}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&subscribe_command("a\"b", since)).expect("valid JSON");
        assert_eq!(v["channel"], "a\"b");
        assert_eq!(v["since"]["epoch"], 99);
    }
}
