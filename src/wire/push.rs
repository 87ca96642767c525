//! Payloads encoded once, in both client formats: the JSON envelope (`{"op":"message",...}` or
//! `{"op":"push",...}`) and the raw payload, each a complete server frame in one `Bytes` that
//! every recipient's queue shares, and once more compressed (RFC 7692) for the recipients that
//! negotiated permessage-deflate ([`Frames`]).

use crate::proto::deflate::Compressor;
use crate::proto::frame::{self, OpCode};
use crate::wire::envelope;
use base64::Engine;
use bytes::Bytes;

/// A published payload as the publisher gave it.
#[derive(Debug, Clone)]
pub enum Body {
    /// A JSON value (its text): raw subscribers get it as a text frame, envelopes embed it as
    /// `"data":VALUE`.
    Json(Bytes),
    /// A string: raw subscribers get it as a text frame, envelopes as `"data":"..."`.
    Text(Bytes),
    /// Bytes: raw subscribers get a binary frame, envelopes `"b64":"..."`.
    Binary(Bytes),
    /// A Pusher event on an app's internal channel, written once by the publisher
    /// (`wire::pusher::event`): its subscribers are Pusher connections only, which get this text
    /// as it is. `exclude` is the sender's connection id (the API's `socket_id`), skipped.
    Pusher {
        /// The whole `{"event":..,"channel":..,"data":..}` text.
        text: Bytes,
        /// The connection that must not get it.
        exclude: Option<u64>,
    },
}

/// The first byte of a clustered message's payload in the broker: which [`Body`] follows.
pub mod broker_kind {
    /// JSON text.
    pub const JSON: u8 = b'j';
    /// A string (UTF-8).
    pub const TEXT: u8 = b't';
    /// Bytes.
    pub const BINARY: u8 = b'b';
    /// A Pusher event's text.
    pub const PUSHER: u8 = b'p';
    /// A Pusher event that skips one connection: its id (8 bytes, big-endian), then the text.
    /// Every node skips the connection of that id; ids of two nodes rarely coincide (each
    /// node starts its generations elsewhere, docs/cluster.md), and a coincidence costs one
    /// connection elsewhere one event.
    pub const PUSHER_EXCLUDING: u8 = b'P';
}

impl Body {
    /// The payload as it crosses the broker (docs/cluster.md, "The payload across Redis"): one
    /// kind byte, then the body's bytes as they are. Every node decodes the same body and
    /// encodes the same envelope from it.
    pub fn to_broker(&self) -> Bytes {
        let (kind, bytes) = match self {
            Body::Json(b) => (broker_kind::JSON, b),
            Body::Text(b) => (broker_kind::TEXT, b),
            Body::Binary(b) => (broker_kind::BINARY, b),
            Body::Pusher {
                text,
                exclude: Some(id),
            } => {
                let mut out = Vec::with_capacity(9 + text.len());
                out.push(broker_kind::PUSHER_EXCLUDING);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(text);
                return Bytes::from(out);
            }
            Body::Pusher {
                text,
                exclude: None,
            } => (broker_kind::PUSHER, text),
        };
        let mut out = Vec::with_capacity(1 + bytes.len());
        out.push(kind);
        out.extend_from_slice(bytes);
        Bytes::from(out)
    }

    /// The body of a broker payload; `None` when it does not decode (an unknown kind, a text
    /// that is not UTF-8, JSON that does not parse: anyone may `PUBLISH` on the broker, and a
    /// text frame must be UTF-8, RFC 6455 §5.6).
    pub fn from_broker(payload: &Bytes) -> Option<Body> {
        let (&kind, rest) = payload.split_first()?;
        let bytes = payload.slice(1..);
        match kind {
            broker_kind::JSON => {
                serde_json::from_slice::<serde::de::IgnoredAny>(rest).ok()?;
                Some(Body::Json(bytes))
            }
            broker_kind::TEXT => std::str::from_utf8(rest).ok().map(|_| Body::Text(bytes)),
            broker_kind::BINARY => Some(Body::Binary(bytes)),
            broker_kind::PUSHER => {
                serde_json::from_slice::<serde::de::IgnoredAny>(rest).ok()?;
                Some(Body::Pusher {
                    text: bytes,
                    exclude: None,
                })
            }
            broker_kind::PUSHER_EXCLUDING => {
                let id = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
                serde_json::from_slice::<serde::de::IgnoredAny>(&rest[8..]).ok()?;
                Some(Body::Pusher {
                    text: payload.slice(9..),
                    exclude: Some(id),
                })
            }
            _ => None,
        }
    }

    /// A payload an application published on the broker itself (`[[redis_input]]`): JSON when
    /// it parses as JSON, else a string when it is UTF-8, else bytes.
    pub fn from_foreign(payload: Bytes) -> Body {
        if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_ok() {
            Body::Json(payload)
        } else if std::str::from_utf8(&payload).is_ok() {
            Body::Text(payload)
        } else {
            Body::Binary(payload)
        }
    }
}

/// One published message, encoded once per client format: the plain frames every client can
/// read, and their compressed versions (RSV1 set, RFC 7692 §6) for permessage-deflate clients.
/// An empty compressed frame means there is none (deflate off, payload below
/// `deflate_min_bytes`, or compression did not make it smaller): those clients get the plain one,
/// as RSV1 marks compression per message.
#[derive(Debug, Clone, Default)]
pub struct Frames {
    /// The `{"op":"message",...}` text frame.
    pub envelope: Bytes,
    /// The payload as a text or binary frame.
    pub raw: Bytes,
    /// `envelope` compressed, or empty.
    pub envelope_z: Bytes,
    /// `raw` compressed, or empty.
    pub raw_z: Bytes,
    /// A connection that must not get this message (a Pusher event's `socket_id`); `None` for
    /// every `/ws` message.
    pub exclude: Option<u64>,
}

/// What compressing a message's frames did (for the counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compressed {
    /// Frames compressed (0, 1 or 2).
    pub frames: u64,
    /// Payload bytes the compressed frames save over the plain ones.
    pub bytes_saved: u64,
}

impl Frames {
    /// The plain frames of one message.
    pub fn plain(envelope: Bytes, raw: Bytes) -> Frames {
        Frames {
            envelope,
            raw,
            ..Frames::default()
        }
    }

    /// The frame for a client of this format that agreed permessage-deflate with this server
    /// window (bits; 0: not agreed). A compressed frame goes only where its back-references
    /// stay within the client's window (`deflate::fits_window`).
    pub fn pick(&self, raw: bool, deflate_window_bits: u8) -> &Bytes {
        let (plain, compressed) = if raw {
            (&self.raw, &self.raw_z)
        } else {
            (&self.envelope, &self.envelope_z)
        };
        let fits = || {
            let payload_len = frame::server_payload(plain).len();
            crate::proto::deflate::fits_window(payload_len, deflate_window_bits)
        };
        if deflate_window_bits != 0 && !compressed.is_empty() && fits() {
            compressed
        } else {
            plain
        }
    }

    /// Bytes the frames hold (for history's budget).
    pub fn len(&self) -> usize {
        self.envelope.len() + self.raw.len() + self.envelope_z.len() + self.raw_z.len()
    }

    /// Whether no frame holds a byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds the compressed versions of both frames whose payload has at least `min_bytes`,
    /// keeping only those that come out smaller. `scratch` is the caller's buffer, reused.
    pub fn compress(
        &mut self,
        compressor: &mut Compressor,
        min_bytes: usize,
        scratch: &mut Vec<u8>,
    ) -> Compressed {
        let mut done = Compressed::default();
        for (plain, compressed) in [
            (&self.envelope, &mut self.envelope_z),
            (&self.raw, &mut self.raw_z),
        ] {
            let payload = frame::server_payload(plain);
            if plain.is_empty() || payload.len() < min_bytes.max(1) {
                continue;
            }
            // The plain frame's opcode: text or binary (RFC 7692 §6: RSV1 on a data frame).
            let op = frame::opcode_from_u8(plain[0] & 0x0f).unwrap_or(OpCode::Binary);
            scratch.clear();
            compressor.compress(payload, scratch);
            if scratch.len() >= payload.len() {
                continue;
            }
            *compressed = frame::encode_compressed(op, scratch);
            done.frames += 1;
            done.bytes_saved += (payload.len() - scratch.len()) as u64;
        }
        done
    }
}

/// Encodes a direct push (control `send`, or `broadcast` to every connection) once in both
/// formats: `{"op":"push","data":...}` (or `"b64"`) for envelope clients, the payload for raw ones.
pub fn encode_push(body: &Body) -> (Bytes, Bytes) {
    let (raw, data) = match body {
        Body::Json(b) => (
            frame::encode(OpCode::Text, b),
            String::from_utf8_lossy(b).into_owned(),
        ),
        Body::Text(b) => (
            frame::encode(OpCode::Text, b),
            serde_json::Value::from(String::from_utf8_lossy(b).as_ref()).to_string(),
        ),
        Body::Binary(b) => (frame::encode(OpCode::Binary, b), String::new()),
        Body::Pusher { text, .. } => {
            let frame = frame::encode(OpCode::Text, text);
            return (frame.clone(), frame);
        }
    };
    let text = match body {
        Body::Binary(b) => format!(
            "{{\"op\":\"push\",\"b64\":\"{}\"}}",
            base64::engine::general_purpose::STANDARD.encode(b)
        ),
        _ => format!("{{\"op\":\"push\",\"data\":{data}}}"),
    };
    (frame::encode(OpCode::Text, text.as_bytes()), raw)
}

/// Encodes a published message once in both formats: the JSON envelope and the raw payload.
pub fn encode_message(channel: &str, offset: u64, body: &Body) -> (Bytes, Bytes) {
    let (raw, data_len) = match body {
        Body::Json(b) | Body::Text(b) => (frame::encode(OpCode::Text, b), b.len()),
        Body::Binary(b) => (frame::encode(OpCode::Binary, b), b.len() * 4 / 3 + 4),
        Body::Pusher { text, .. } => {
            // Pusher connections read only this one format: both handles share the frame.
            let frame = frame::encode(OpCode::Text, text);
            return (frame.clone(), frame);
        }
    };
    let mut text = Vec::with_capacity(64 + channel.len() + data_len + data_len / 8);
    envelope::message_prefix(&mut text, channel, offset);
    match body {
        Body::Json(b) => {
            text.extend_from_slice(b"\"data\":");
            text.extend_from_slice(b);
        }
        Body::Text(b) => {
            text.extend_from_slice(b"\"data\":");
            let s = String::from_utf8_lossy(b);
            text.extend_from_slice(serde_json::Value::from(s.as_ref()).to_string().as_bytes());
        }
        Body::Pusher { .. } => {}
        Body::Binary(b) => {
            text.extend_from_slice(b"\"b64\":\"");
            text.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(b)
                    .as_bytes(),
            );
            text.push(b'"');
        }
    }
    text.push(b'}');
    (frame::encode(OpCode::Text, &text), raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_cross_the_broker_with_their_kind() {
        let cases = [
            Body::Json(Bytes::from_static(b"{\"a\":1}")),
            Body::Text(Bytes::from_static("h\u{e9}".as_bytes())),
            Body::Binary(Bytes::from_static(&[0, 0xff])),
        ];
        for body in cases {
            let back = Body::from_broker(&body.to_broker()).expect("decodes");
            assert_eq!(encode_message("c", 1, &back), encode_message("c", 1, &body));
        }
        for exclude in [None, Some(0u64), Some(u64::MAX >> 11)] {
            let body = Body::Pusher {
                text: Bytes::from_static(br#"{"event":"e","channel":"c","data":"x"}"#),
                exclude,
            };
            match Body::from_broker(&body.to_broker()) {
                Some(Body::Pusher { text, exclude: e }) => {
                    assert_eq!(&text[..], br#"{"event":"e","channel":"c","data":"x"}"#);
                    assert_eq!(e, exclude);
                }
                other => panic!("{other:?}"),
            }
        }
        for bad in [
            &b""[..],
            b"x123",
            b"j{",
            b"t\xff",
            b"p{",
            b"P1234567",
            b"P12345678{",
        ] {
            assert!(
                Body::from_broker(&Bytes::copy_from_slice(bad)).is_none(),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Body::from_foreign(Bytes::from_static(b"[1]")),
            Body::Json(_)
        ));
        assert!(matches!(
            Body::from_foreign(Bytes::from_static(b"hi")),
            Body::Text(_)
        ));
        assert!(matches!(
            Body::from_foreign(Bytes::from_static(b"\xff")),
            Body::Binary(_)
        ));
    }

    #[test]
    fn frames_compress_once_per_format() {
        let data = Bytes::from(format!("{{\"text\":\"{}\"}}", "hello ".repeat(100)));
        let (envelope, raw) = encode_message("news", 3, &Body::Json(data.clone()));
        let mut frames = Frames::plain(envelope.clone(), raw.clone());
        let mut compressor = Compressor::default();
        let mut scratch = Vec::new();
        let done = frames.compress(&mut compressor, 256, &mut scratch);
        assert_eq!(done.frames, 2);
        assert!(done.bytes_saved > 1000, "{done:?}");
        assert_eq!(frames.pick(false, 0), &envelope);
        assert_eq!(frames.pick(true, 0), &raw);
        let mut inflater = crate::proto::deflate::Inflater::default();
        for (raw_format, plain) in [(false, &envelope), (true, &raw)] {
            let z = frames.pick(raw_format, 15);
            // FIN, RSV1, text.
            assert_eq!(z[0], 0xc1);
            let mut out = Vec::new();
            inflater
                .inflate(frame::server_payload(z), 1 << 20, &mut out)
                .unwrap();
            assert_eq!(out, frame::server_payload(plain));
        }
        // A client that limited the server window to 512 bytes gets the plain ~600-byte raw frame.
        assert_eq!(frames.pick(true, 9), &raw);
        assert_eq!(frames.pick(true, 10)[0], 0xc1);
        // Below the threshold, or not smaller: the plain frames serve everyone.
        let (envelope, raw) = encode_message("n", 1, &Body::Text(Bytes::from_static(b"short")));
        let mut frames = Frames::plain(envelope.clone(), raw);
        assert_eq!(
            frames.compress(&mut compressor, 256, &mut scratch).frames,
            0
        );
        // "short" takes 7 bytes compressed: the raw frame stays plain.
        assert!(frames.compress(&mut compressor, 0, &mut scratch).frames <= 1);
        assert_eq!(frames.pick(true, 15)[0], 0x81);
    }

    #[test]
    fn both_formats_encode_once() {
        let (env, raw) = encode_message("news", 7, &Body::Json(Bytes::from_static(b"{\"a\":1}")));
        assert_eq!(&raw[..], b"\x81\x07{\"a\":1}");
        let v: serde_json::Value = serde_json::from_slice(&env[2..]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op":"message","channel":"news","offset":7,"data":{"a":1}})
        );
        let (env, raw) = encode_message("n", 1, &Body::Text(Bytes::from_static(b"hi \"you\"")));
        assert_eq!(&raw[2..], b"hi \"you\"");
        let v: serde_json::Value = serde_json::from_slice(&env[2..]).unwrap();
        assert_eq!(v["data"], "hi \"you\"");
        let (env, raw) = encode_message("n", 2, &Body::Binary(Bytes::from_static(&[0, 255])));
        assert_eq!(raw[0], 0x82);
        let v: serde_json::Value = serde_json::from_slice(&env[2..]).unwrap();
        assert_eq!(v["b64"], "AP8=");
    }
}
