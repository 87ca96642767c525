//! RESP2, sans-IO: commands out (arrays of bulk strings), replies in.
//!
//! Owns the byte format and its bounds, nothing else: no socket, no clock. The decoder takes
//! the bytes read so far (`BytesMut`) and returns complete replies; "need more bytes" is the
//! normal `Ok(None)`. A reply is first scanned without allocating (its length, every header
//! checked), then split off the buffer and built with its strings lent from that one frame
//! (`Bytes` slices, no copy), so what an announced length or count makes the decoder allocate
//! is bounded by the bytes that actually arrived.
//!
//! Bounds (Redis is network input): a reply of more than `bytes_max` bytes, or one still
//! incomplete past that, is `TooLarge`; arrays nest at most [`DEPTH_MAX`] deep. Anything that
//! is not RESP2 is an error, never a panic; the caller drops the connection.

use bytes::{Bytes, BytesMut};
use std::io::Write;

/// Deepest array nesting accepted (Redis answers our commands with at most 3 levels).
pub const DEPTH_MAX: usize = 8;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(Bytes),
    /// `-ERR ...`: the message.
    Error(Bytes),
    /// `:42`
    Integer(i64),
    /// `$3\r\nabc`
    Bulk(Bytes),
    /// `$-1` or `*-1`.
    Nil,
    /// `*N` and its elements.
    Array(Vec<Reply>),
}

/// Why bytes are not a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespError {
    /// Past `bytes_max`.
    TooLarge,
    /// Arrays nested deeper than [`DEPTH_MAX`].
    TooDeep,
    /// A first byte that is no RESP2 type.
    BadType(u8),
    /// A length or integer that is not a decimal i64, or a negative length other than -1.
    BadNumber,
    /// A bulk string not followed by CRLF.
    BadTerminator,
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespError::TooLarge => f.write_str("reply larger than buffer_bytes_max"),
            RespError::TooDeep => f.write_str("reply nested too deep"),
            RespError::BadType(b) => write!(f, "unknown reply type byte 0x{b:02x}"),
            RespError::BadNumber => f.write_str("bad length or integer"),
            RespError::BadTerminator => f.write_str("bulk string without its CRLF"),
        }
    }
}

/// Appends one command (an array of bulk strings) to `out`.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        let _ = write!(out, "${}\r\n", arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// The line starting at `pos` (without its CRLF) and the position after it; `None` until the
/// CRLF has arrived.
fn line(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(pos..)?;
    let at = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..at], pos + at + 2))
}

fn number(text: &[u8]) -> Result<i64, RespError> {
    if text.is_empty() || text.len() > 20 {
        return Err(RespError::BadNumber);
    }
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or(RespError::BadNumber)
}

/// A length: -1 (nil) or 0..=`max`.
fn length(text: &[u8], max: usize) -> Result<Option<usize>, RespError> {
    match number(text)? {
        -1 => Ok(None),
        n if n < 0 => Err(RespError::BadNumber),
        n if n as u64 > max as u64 => Err(RespError::TooLarge),
        n => Ok(Some(n as usize)),
    }
}

/// The end of the reply starting at `pos`, checking every header; `None`: incomplete.
fn scan(buf: &[u8], pos: usize, max: usize, depth: usize) -> Result<Option<usize>, RespError> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    if !matches!(kind, b'+' | b'-' | b':' | b'$' | b'*') {
        return Err(RespError::BadType(kind));
    }
    let Some((text, next)) = line(buf, pos + 1) else {
        return Ok(None);
    };
    match kind {
        b'+' | b'-' => Ok(Some(next)),
        b':' => number(text).map(|_| Some(next)),
        b'$' => {
            let Some(n) = length(text, max)? else {
                return Ok(Some(next));
            };
            let end = next + n + 2;
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(RespError::BadTerminator);
            }
            Ok(Some(end))
        }
        _ => {
            let Some(n) = length(text, max)? else {
                return Ok(Some(next));
            };
            if depth >= DEPTH_MAX {
                return Err(RespError::TooDeep);
            }
            let mut at = next;
            for _ in 0..n {
                match scan(buf, at, max, depth + 1)? {
                    Some(end) => at = end,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
    }
}

/// Builds the reply at `pos` of a frame `scan` accepted whole.
fn build(frame: &Bytes, pos: usize) -> Result<(Reply, usize), RespError> {
    let kind = *frame.get(pos).ok_or(RespError::BadTerminator)?;
    let (text, next) = line(frame, pos + 1).ok_or(RespError::BadTerminator)?;
    let text_range = pos + 1..pos + 1 + text.len();
    match kind {
        b'+' => Ok((Reply::Simple(frame.slice(text_range)), next)),
        b'-' => Ok((Reply::Error(frame.slice(text_range)), next)),
        b':' => Ok((Reply::Integer(number(text)?), next)),
        b'$' => match length(text, usize::MAX)? {
            None => Ok((Reply::Nil, next)),
            Some(n) => {
                let end = next.checked_add(n).ok_or(RespError::TooLarge)?;
                if frame.len() < end + 2 {
                    return Err(RespError::BadTerminator);
                }
                Ok((Reply::Bulk(frame.slice(next..end)), end + 2))
            }
        },
        b'*' => match length(text, usize::MAX)? {
            None => Ok((Reply::Nil, next)),
            Some(n) => {
                // `n` elements were all present in the scanned frame, so `n` is bounded by
                // the frame's length (each element takes at least 3 bytes).
                let mut items = Vec::with_capacity(n.min(frame.len() / 3));
                let mut at = next;
                for _ in 0..n {
                    let (item, end) = build(frame, at)?;
                    items.push(item);
                    at = end;
                }
                Ok((Reply::Array(items), at))
            }
        },
        other => Err(RespError::BadType(other)),
    }
}

/// Takes complete replies off the front of a read buffer.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    /// Largest reply accepted.
    pub bytes_max: usize,
}

impl Decoder {
    /// The next complete reply in `buf` (removed from it), `None` until one has arrived.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Reply>, RespError> {
        match scan(buf, 0, self.bytes_max, 0)? {
            None if buf.len() > self.bytes_max => Err(RespError::TooLarge),
            None => Ok(None),
            Some(len) if len > self.bytes_max => Err(RespError::TooLarge),
            Some(len) => {
                let frame = buf.split_to(len).freeze();
                build(&frame, 0).map(|(reply, _)| Some(reply))
            }
        }
    }
}

impl Reply {
    /// The bytes of a simple string, bulk string or error.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Reply::Simple(b) | Reply::Bulk(b) | Reply::Error(b) => Some(b),
            _ => None,
        }
    }

    /// A decimal number in an integer or a string reply.
    pub fn to_u64(&self) -> Option<u64> {
        match self {
            Reply::Integer(n) => u64::try_from(*n).ok(),
            Reply::Bulk(b) | Reply::Simple(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The server's side, for tests: a reply's bytes.
    fn encode(reply: &Reply, out: &mut Vec<u8>) {
        match reply {
            Reply::Simple(s) => {
                out.push(b'+');
                out.extend_from_slice(s);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Error(s) => {
                out.push(b'-');
                out.extend_from_slice(s);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Integer(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Reply::Bulk(b) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for item in items {
                    encode(item, out);
                }
            }
        }
    }

    fn decode_all(input: &[u8], splits: &[usize], max: usize) -> Result<Vec<Reply>, RespError> {
        let decoder = Decoder { bytes_max: max };
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut from = 0;
        for &at in splits.iter().chain(std::iter::once(&input.len())) {
            buf.extend_from_slice(&input[from..at.max(from)]);
            from = at.max(from);
            while let Some(reply) = decoder.decode(&mut buf)? {
                out.push(reply);
            }
        }
        Ok(out)
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn commands_and_replies() {
        let mut out = Vec::new();
        command(&mut out, &[b"PUBLISH", b"ch", b"a\r\nb"]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n");
        let input = b"+OK\r\n-NOSCRIPT No matching script\r\n:-7\r\n$0\r\n\r\n$-1\r\n*-1\r\n\
                      *3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\n\x00\r\n\r\n";
        let want = vec![
            Reply::Simple(b("OK")),
            Reply::Error(b("NOSCRIPT No matching script")),
            Reply::Integer(-7),
            Reply::Bulk(Bytes::new()),
            Reply::Nil,
            Reply::Nil,
            Reply::Array(vec![
                Reply::Bulk(b("message")),
                Reply::Bulk(b("ch")),
                Reply::Bulk(Bytes::from_static(b"\x00\r\n")),
            ]),
        ];
        // Every split point gives the same replies.
        for at in 0..=input.len() {
            assert_eq!(
                decode_all(input, &[at], 1024),
                Ok(want.clone()),
                "split {at}"
            );
        }
    }

    #[test]
    fn bounds_and_garbage() {
        let max = 64;
        assert_eq!(decode_all(b"$65\r\n", &[], max), Err(RespError::TooLarge));
        assert_eq!(
            decode_all(&[b'+'; 100], &[], max),
            Err(RespError::TooLarge),
            "an endless line"
        );
        assert_eq!(
            decode_all(b"*1000000000\r\n", &[], max),
            Err(RespError::TooLarge)
        );
        assert_eq!(
            decode_all(b"*30\r\n:1\r\n", &[], max),
            Ok(vec![]),
            "a count within the bound waits for its elements"
        );
        let deep = "*1\r\n".repeat(DEPTH_MAX + 1) + ":1\r\n";
        assert_eq!(
            decode_all(deep.as_bytes(), &[], max),
            Err(RespError::TooDeep)
        );
        assert_eq!(
            decode_all(b"?x\r\n", &[], max),
            Err(RespError::BadType(b'?'))
        );
        assert_eq!(decode_all(b"$-2\r\n", &[], max), Err(RespError::BadNumber));
        assert_eq!(decode_all(b":1x\r\n", &[], max), Err(RespError::BadNumber));
        assert_eq!(
            decode_all(b"$1\r\nab\r\n", &[], max),
            Err(RespError::BadTerminator)
        );
    }

    fn reply() -> impl Strategy<Value = Reply> {
        let leaf = prop_oneof![
            "[a-zA-Z0-9 ]{0,12}".prop_map(|s| Reply::Simple(b(&s))),
            "[a-zA-Z0-9 ]{0,12}".prop_map(|s| Reply::Error(b(&s))),
            any::<i64>().prop_map(Reply::Integer),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| Reply::Bulk(v.into())),
            Just(Reply::Nil),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            proptest::collection::vec(inner, 0..6).prop_map(Reply::Array)
        })
    }

    proptest! {
        #[test]
        fn any_reply_stream_decodes_the_same_at_any_splits(
            replies in proptest::collection::vec(reply(), 1..6),
            mut splits in proptest::collection::vec(any::<usize>(), 0..4),
        ) {
            let mut input = Vec::new();
            for r in &replies {
                encode(r, &mut input);
            }
            for s in splits.iter_mut() {
                *s %= input.len() + 1;
            }
            splits.sort_unstable();
            prop_assert_eq!(decode_all(&input, &splits, 1 << 20), Ok(replies));
        }

        #[test]
        fn garbage_never_panics(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_all(&input, &[input.len() / 2], 128);
        }
    }
}
