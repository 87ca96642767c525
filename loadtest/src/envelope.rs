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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The bytes after the first `"key":` in `s`, if the key is there. Matched in place, without
/// building the pattern: the `fanout` engine reads every message it receives through here.
fn value<'a>(s: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let key = key.as_bytes();
    let pattern_len = key.len() + 3;
    (0..s.len().checked_sub(pattern_len)? + 1).find_map(|at| {
        let w = &s[at..at + pattern_len];
        (w[0] == b'"' && &w[1..=key.len()] == key && &w[key.len() + 1..] == b"\":")
            .then(|| &s[at + pattern_len..])
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
        b"message" => {
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
        let cut = find(m, b"1234").unwrap() + 3;
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
