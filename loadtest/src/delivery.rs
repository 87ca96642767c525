//! How a subscriber's messages carry the benchmark payload, for the scenarios on the `fanout`
//! engine: as a raw frame (the message is the payload: ringcast's `format=raw`, or a peer
//! server that forwards what was published) or inside ringcast's JSON envelope, the `/ws`
//! default (`{"op":"message","channel":C,"offset":N,"data":"PAYLOAD"}`, docs/protocol.md).
//!
//! Owns the per-connection format: known from the URL when its query names one (`format=raw`
//! or `format=json`: the server honours it), otherwise settled by the connection's first
//! message. A JSON-format ringcast connection always starts with an envelope (`welcome`), and
//! a benchmark payload starts with a hex digit (or the `"` of a JSON string), never `{`, so
//! the first message tells the two apart.
//!
//! Reading a message allocates nothing and copies nothing: the envelope is read in place from
//! the reader's prefix (`envelope::parse`), and what is returned borrows from it. The payloads
//! the scenarios publish are ASCII hex and dots (`payload`), which a JSON string holds without
//! escapes, so the payload's header follows the envelope's `"data":"` as it was published.

use crate::envelope::{self, Envelope};

/// How one connection's messages arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Not known yet: the URL named no format and nothing has arrived.
    #[default]
    Undetected,
    /// Each message is a payload as published.
    Raw,
    /// Each message is a ringcast JSON envelope or reply.
    Envelope,
    /// Each message is a Pusher protocol message (`/app/{key}`).
    Pusher,
}

impl Format {
    /// What a URL path's query asks the server for: `format=raw` or `format=json` (the last one
    /// wins, as a query parameter read once would); `Undetected` when it names none.
    pub fn of_path(path: &str) -> Format {
        if path.starts_with("/app/") {
            return Format::Pusher;
        }
        let query = path.split_once('?').map_or("", |(_, q)| q);
        query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("format="))
            .fold(Format::Undetected, |_, v| match v {
                "raw" => Format::Raw,
                "json" => Format::Envelope,
                _ => Format::Undetected,
            })
    }

    /// The format a connection's first message shows.
    pub fn detect(first: &[u8]) -> Format {
        if first.starts_with(b"{\"op\":\"") {
            Format::Envelope
        } else if first.starts_with(b"{\"event\":\"") {
            Format::Pusher
        } else {
            Format::Raw
        }
    }

    /// Short name for the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Format::Undetected => "undetected",
            Format::Raw => "raw",
            Format::Envelope => "envelope",
            Format::Pusher => "pusher",
        }
    }

    /// Name for the printed report.
    pub fn label(self) -> &'static str {
        match self {
            Format::Undetected => "undetected",
            Format::Raw => "raw",
            Format::Envelope => "envelope (json)",
            Format::Pusher => "pusher",
        }
    }
}

/// What one received message is to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery<'a> {
    /// A publish: the first bytes of its payload (of an envelope's JSON string, its opening
    /// quote included, which `payload::decode` skips).
    Payload(&'a [u8]),
    /// `{"op":"subscribed","channel":C,...}`: the channel as written.
    Subscribed(&'a [u8]),
    /// `{"op":"error",...}`.
    Error,
    /// Another envelope (`welcome`, `pong`, presence news, a `push`): not a publish.
    Other,
    /// An envelope that could not be read.
    Unparsable,
}

/// Reads one message from its first bytes, on a connection whose format is `format`; an
/// undetected format is settled by this message.
pub fn read<'a>(format: &mut Format, prefix: &'a [u8]) -> Delivery<'a> {
    if *format == Format::Undetected {
        *format = Format::detect(prefix);
    }
    if *format == Format::Raw {
        return Delivery::Payload(prefix);
    }
    if *format == Format::Pusher {
        return match crate::pusher::parse(prefix) {
            crate::pusher::Message::Event { data, .. } => Delivery::Payload(data),
            crate::pusher::Message::Subscribed { channel } => Delivery::Subscribed(channel),
            crate::pusher::Message::Error => Delivery::Error,
            crate::pusher::Message::Other => Delivery::Other,
            crate::pusher::Message::Unparsable => Delivery::Unparsable,
        };
    }
    match envelope::parse(prefix) {
        Envelope::Message { data, .. } => Delivery::Payload(data),
        Envelope::Subscribed { channel, .. } => Delivery::Subscribed(channel),
        Envelope::Error => Delivery::Error,
        Envelope::Unparsable => Delivery::Unparsable,
        Envelope::Welcome { .. } | Envelope::Presence { .. } | Envelope::Other => Delivery::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{self, Stamp};

    fn stamped(seq: u64) -> (Stamp, Vec<u8>) {
        let stamp = Stamp {
            stream: 3,
            seq,
            sent_ns: 0x1234_5678,
        };
        let mut p = Vec::new();
        payload::encode(stamp, 64, &mut p);
        (stamp, p)
    }

    fn message(channel: &str, offset: u64, payload: &[u8]) -> Vec<u8> {
        let mut m = format!(
            "{{\"op\":\"message\",\"channel\":\"{channel}\",\"offset\":{offset},\"data\":\""
        )
        .into_bytes();
        m.extend_from_slice(payload);
        m.extend_from_slice(b"\"}");
        m
    }

    #[test]
    fn the_url_names_the_format_or_leaves_it_to_the_first_message() {
        assert_eq!(Format::of_path("/ws?channel=a&format=raw"), Format::Raw);
        assert_eq!(
            Format::of_path("/ws?format=json&channel=a"),
            Format::Envelope
        );
        assert_eq!(
            Format::of_path("/ws?format=raw&format=json"),
            Format::Envelope
        );
        assert_eq!(Format::of_path("/ws?channel=a"), Format::Undetected);
        assert_eq!(Format::of_path("/ws"), Format::Undetected);
        assert_eq!(Format::of_path("/ws?xformat=raw"), Format::Undetected);
        assert_eq!(Format::of_path("/ws?format=pusher"), Format::Undetected);
    }

    #[test]
    fn the_first_message_settles_an_undetected_format() {
        let (stamp, p) = stamped(9);
        // ringcast's JSON format starts with its welcome.
        let mut f = Format::Undetected;
        assert_eq!(
            read(&mut f, b"{\"op\":\"welcome\",\"conn\":17}"),
            Delivery::Other
        );
        assert_eq!(f, Format::Envelope);
        let m = message("bench", 4, &p);
        let Delivery::Payload(data) = read(&mut f, &m) else {
            panic!("a publish");
        };
        assert_eq!(payload::decode(data), Some(stamp));
        // A raw connection's first message is a payload, and stays one.
        let mut f = Format::Undetected;
        assert_eq!(read(&mut f, &p), Delivery::Payload(&p[..]));
        assert_eq!(f, Format::Raw);
        assert_eq!(payload::decode(&p), Some(stamp));
        // Even a payload published as a JSON string (a raw subscriber gets it quoted).
        let quoted = [&b"\""[..], &p].concat();
        let mut f = Format::Undetected;
        assert_eq!(read(&mut f, &quoted), Delivery::Payload(&quoted[..]));
        assert_eq!(f, Format::Raw);
        // Once raw, an envelope-looking message is not taken for one: the server said raw.
        assert_eq!(read(&mut f, &m), Delivery::Payload(&m[..]));
        assert_eq!(payload::decode(&m), None);
    }

    #[test]
    fn envelopes_other_than_messages() {
        let mut f = Format::Envelope;
        assert_eq!(
            read(
                &mut f,
                b"{\"op\":\"subscribed\",\"channel\":\"bench:x\",\"offset\":0,\"epoch\":5}"
            ),
            Delivery::Subscribed(b"bench:x")
        );
        assert_eq!(
            read(
                &mut f,
                b"{\"op\":\"error\",\"code\":\"forbidden\",\"message\":\"x\"}"
            ),
            Delivery::Error
        );
        assert_eq!(read(&mut f, b"{\"op\":\"pong\"}"), Delivery::Other);
        assert_eq!(
            read(&mut f, b"{\"op\":\"message\",\"chan"),
            Delivery::Unparsable
        );
        // A raw payload on an envelope connection is not a publish.
        let (_, p) = stamped(1);
        assert_eq!(read(&mut f, &p), Delivery::Unparsable);
    }

    #[test]
    fn the_payload_header_fits_the_wide_prefix_of_an_envelope() {
        let (stamp, p) = stamped(u64::MAX >> 4);
        // The longest channel name (128 characters) and a 20-digit offset.
        let m = message(&"c".repeat(128), u64::MAX, &p);
        let prefix = &m[..crate::ws::WIDE_PREFIX_MAX];
        let mut f = Format::Undetected;
        let Delivery::Payload(data) = read(&mut f, prefix) else {
            panic!("a publish");
        };
        assert_eq!(f, Format::Envelope);
        assert_eq!(payload::decode(data), Some(stamp));
        // A narrow reader's prefix cuts the envelope before the payload's header.
        let mut f = Format::Undetected;
        let narrow = &message("bench", 1, &p)[..crate::ws::PREFIX_MAX];
        assert!(!matches!(
            read(&mut f, narrow),
            Delivery::Payload(d) if payload::decode(d).is_some()
        ));
    }
}
