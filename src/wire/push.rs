//! Payloads encoded once, in both client formats: the JSON envelope (`{"op":"message",...}` or
//! `{"op":"push",...}`) and the raw payload, each a complete server frame in one `Bytes` that
//! every recipient's queue shares.

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
