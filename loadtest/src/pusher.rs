//! The Pusher Channels protocol as this tool speaks it (pusher-js's side, protocol 7): the
//! messages a subscriber reads from a message's first bytes, its subscribe command, and the
//! signature of an HTTP API publish as the Pusher server SDKs sign it.
//!
//! Written for this tool, like `envelope`: the server's own code is not used. A server message
//! is `{"event":NAME,"channel":C,"data":...}` (pusher-js reads `event`, `channel`, `data`); an
//! app event's `data` is a JSON string whose first bytes, after its opening quote, are the
//! payload's header as it was published (payloads hold no characters JSON escapes).

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

/// What a Pusher connection received, as far as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// An app event: its channel, and the first bytes of its `data` (its opening quote
    /// included).
    Event {
        /// The channel's name as written.
        channel: &'a [u8],
        /// The data's first bytes.
        data: &'a [u8],
    },
    /// `pusher_internal:subscription_succeeded` for a channel.
    Subscribed {
        /// The channel's name as written.
        channel: &'a [u8],
    },
    /// `pusher:error`.
    Error,
    /// Another protocol message (`pusher:connection_established`, `pusher:pong`, members).
    Other,
    /// Not a Pusher message, or cut before its fields.
    Unparsable,
}

/// A JSON string at the start of `s` without escapes: its contents and the rest after it.
fn plain_string(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = s.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    (rest[end] == b'"').then(|| (&rest[..end], &rest[end + 1..]))
}

/// Reads a message from its first bytes.
pub fn parse(prefix: &[u8]) -> Message<'_> {
    let Some(rest) = prefix.strip_prefix(b"{\"event\":") else {
        return Message::Unparsable;
    };
    let Some((event, rest)) = plain_string(rest) else {
        return Message::Unparsable;
    };
    if event == b"pusher:error" {
        return Message::Error;
    }
    let channel = rest.strip_prefix(b",\"channel\":").and_then(plain_string);
    if event == b"pusher_internal:subscription_succeeded" {
        return match channel {
            Some((channel, _)) => Message::Subscribed { channel },
            None => Message::Unparsable,
        };
    }
    if event.starts_with(b"pusher:") || event.starts_with(b"pusher_internal:") {
        return Message::Other;
    }
    match channel.and_then(|(c, rest)| Some((c, rest.strip_prefix(b",\"data\":")?))) {
        Some((channel, data)) => Message::Event { channel, data },
        None => Message::Unparsable,
    }
}

/// `{"event":"pusher:subscribe","data":{"channel":C}}` (public channels: no authorization).
pub fn subscribe_command(channel: &str) -> String {
    format!(
        "{{\"event\":\"pusher:subscribe\",\"data\":{{\"channel\":{}}}}}",
        serde_json::Value::from(channel)
    )
}

/// The body of an HTTP API publish of `payload` (JSON-escaped) as event `name` on `channel`.
pub fn event_body(name: &str, channel: &str, payload: &[u8]) -> Vec<u8> {
    let data = String::from_utf8_lossy(payload);
    format!(
        "{{\"name\":{},\"channel\":{},\"data\":{}}}",
        serde_json::Value::from(name),
        serde_json::Value::from(channel),
        serde_json::Value::from(data.as_ref())
    )
    .into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The query string of a signed `POST path` with `body` (Pusher HTTP API, auth_version 1.0):
/// `auth_key`, `auth_timestamp`, `auth_version`, `body_md5` in key order, then
/// `auth_signature` = hex(HMAC-SHA256(secret, "POST\nPATH\nQUERY")).
pub fn signed_query(key: &str, secret: &str, path: &str, body: &[u8], now_s: u64) -> String {
    let md5 = hex(&Md5::digest(body));
    let query = format!("auth_key={key}&auth_timestamp={now_s}&auth_version=1.0&body_md5={md5}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .expect("invariant: HMAC takes keys of any length");
    mac.update(format!("POST\n{path}\n{query}").as_bytes());
    format!(
        "{query}&auth_signature={}",
        hex(&mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_from_their_first_bytes() {
        let ev = br#"{"event":"bench","channel":"bench","data":"AAAA-header"}"#;
        assert_eq!(
            parse(ev),
            Message::Event {
                channel: b"bench",
                data: br#""AAAA-header"}"#
            }
        );
        let sub =
            br#"{"event":"pusher_internal:subscription_succeeded","channel":"bench","data":"{}"}"#;
        assert_eq!(parse(sub), Message::Subscribed { channel: b"bench" });
        let hello =
            br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\"}"}"#;
        assert_eq!(parse(hello), Message::Other);
        assert_eq!(
            parse(br#"{"event":"pusher:error","data":{"code":4300}}"#),
            Message::Error
        );
        assert_eq!(parse(b"{\"op\":\"welcome\"}"), Message::Unparsable);
        assert_eq!(
            parse(br#"{"event":"bench","chan"#),
            Message::Unparsable,
            "cut"
        );
    }

    #[test]
    fn the_signature_is_pushers_documented_example() {
        // Pusher's HTTP API reference: key 278d425bdf160c739803, secret 7ad3773142a6692b25b8,
        // POST /apps/3/events at timestamp 1353088179 with this body.
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let q = signed_query(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "/apps/3/events",
            body,
            1353088179,
        );
        assert!(
            q.contains("body_md5=ec365a775a4cd0599faeb73354201b6f"),
            "{q}"
        );
        assert!(
            q.ends_with(
                "auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
            ),
            "{q}"
        );
    }

    #[test]
    fn bodies_escape_the_payload() {
        let b = event_body("bench", "c", b"a\"b");
        assert_eq!(b, br#"{"name":"bench","channel":"c","data":"a\"b"}"#);
    }
}
