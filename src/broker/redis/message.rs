//! The pub/sub message the publish script sends on a channel's broker channel: a version byte,
//! then the offset and the epoch as big-endian u64, then the payload as is (binary-safe; its
//! length is the rest of the message).
//!
//! ```text
//! byte 0       VERSION (1)
//! bytes 1..9   offset, u64 big-endian, ≥ 1
//! bytes 9..17  epoch, u64 big-endian, ≥ 1
//! bytes 17..   payload
//! ```
//!
//! The script writes it with Lua's `struct.pack('>BI8I8', ...)`; Lua numbers are doubles, so
//! offsets and epochs stay below 2^53 (epochs are microseconds of the Redis clock, ≈2^51 now).
//! The presence scripts send a second kind on the same broker channel, so that news keep the
//! channel's order with its messages: [`NEWS`], then `J` (joined) or `L` (left), the user id,
//! a zero byte, and the user's `info` (raw JSON, empty for none). User ids hold no control
//! characters, so the zero byte ends them.
//!
//! Anyone may `PUBLISH` on a broker channel: [`decode`] refuses what is not this format, never
//! panics, and the bridge counts the refusal (`malformed_in`).

use bytes::Bytes;

/// The format version this bridge writes and reads.
pub const VERSION: u8 = 1;

/// The first byte of a presence news message.
pub const NEWS: u8 = 2;

/// A presence news message: (joined, user, info).
pub fn decode_news(message: &[u8]) -> Option<(bool, &str, Option<&str>)> {
    let (&kind, rest) = message.strip_prefix(&[NEWS])?.split_first()?;
    let joined = match kind {
        b'J' => true,
        b'L' => false,
        _ => return None,
    };
    let zero = rest.iter().position(|&b| b == 0)?;
    let user = std::str::from_utf8(&rest[..zero]).ok()?;
    let info = std::str::from_utf8(&rest[zero + 1..]).ok()?;
    let valid_user = !user.is_empty() && user.len() <= 128 && !user.chars().any(char::is_control);
    let info = (!info.is_empty()).then_some(info);
    let valid_info = info.is_none_or(|i| serde_json::from_str::<serde::de::IgnoredAny>(i).is_ok());
    (valid_user && valid_info).then_some((joined, user, info))
}

/// Bytes before the payload.
pub const HEADER_BYTES: usize = 17;

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its offset in the channel.
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: u64,
    /// The payload (lent from the received bytes).
    pub payload: Bytes,
}

/// Why a broker message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than the header.
    Short,
    /// Another version (the byte).
    Version(u8),
    /// Offset or epoch 0.
    Zero,
}

/// Encodes a message (the script's format; used by tests and any publisher written in Rust).
pub fn encode(offset: u64, epoch: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.push(VERSION);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decodes a message received from the broker.
pub fn decode(message: &Bytes) -> Result<Message, Malformed> {
    if message.len() < HEADER_BYTES {
        return Err(Malformed::Short);
    }
    if message[0] != VERSION {
        return Err(Malformed::Version(message[0]));
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&message[at..at + 8]);
        u64::from_be_bytes(w)
    };
    let (offset, epoch) = (word(1), word(9));
    if offset == 0 || epoch == 0 {
        return Err(Malformed::Zero);
    }
    Ok(Message {
        offset,
        epoch,
        payload: message.slice(HEADER_BYTES..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_what_is_not_a_message() {
        let ok = Bytes::from(encode(7, 9, b"hi"));
        assert_eq!(
            decode(&ok),
            Ok(Message {
                offset: 7,
                epoch: 9,
                payload: Bytes::from_static(b"hi")
            })
        );
        assert_eq!(decode(&Bytes::new()), Err(Malformed::Short));
        assert_eq!(decode(&Bytes::from_static(b"hello")), Err(Malformed::Short));
        let mut v2 = encode(7, 9, b"");
        v2[0] = 2;
        assert_eq!(decode(&Bytes::from(v2)), Err(Malformed::Version(2)));
        assert_eq!(
            decode(&Bytes::from(encode(0, 9, b""))),
            Err(Malformed::Zero)
        );
        assert_eq!(
            decode(&Bytes::from(encode(1, 0, b""))),
            Err(Malformed::Zero)
        );
        assert_eq!(decode(&Bytes::from(encode(1, 1, b""))).unwrap().payload, "");
    }

    proptest! {
        #[test]
        fn round_trip(offset in 1u64.., epoch in 1u64.., payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let m = decode(&Bytes::from(encode(offset, epoch, &payload))).unwrap();
            prop_assert_eq!((m.offset, m.epoch, &m.payload[..]), (offset, epoch, &payload[..]));
        }

        #[test]
        fn any_bytes_decode_or_refuse(input in proptest::collection::vec(any::<u8>(), 0..40)) {
            let input = Bytes::from(input);
            if let Ok(m) = decode(&input) {
                prop_assert_eq!(encode(m.offset, m.epoch, &m.payload), input.to_vec());
            }
        }
    }

    #[test]
    fn news_decode_and_refuse() {
        assert_eq!(
            decode_news(b"\x02Jalice\0{\"n\":1}"),
            Some((true, "alice", Some("{\"n\":1}")))
        );
        assert_eq!(decode_news(b"\x02Lbob\0"), Some((false, "bob", None)));
        for bad in [
            &b""[..],
            b"\x02",
            b"\x02Xa\0",
            b"\x02Ja",
            b"\x02J\0",
            b"\x02Ja\x01b\0",
            b"\x02Ja\0{not json",
            b"\x01Ja\0",
        ] {
            assert_eq!(decode_news(bad), None, "{bad:?}");
        }
    }
}
