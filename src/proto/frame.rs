//! Frame opcodes and the server frame encoder: a server frame is unmasked, so header and payload
//! are written once into one `Bytes` and that handle is cloned to every recipient.
//!
//! Owns: the wire layout of a frame header (RFC 6455 §5.2) on the sending side, and the opcode
//! numbering shared with the decoder.
//! Invariants: every header uses the minimal length encoding (§5.2 "the minimal number of bytes
//! MUST be used"); `encode` allocates once and its result is exactly header + payload; a close
//! frame's payload never passes 125 bytes (§5.5).

use bytes::Bytes;

use super::mask::apply_mask;

/// Frame opcodes of RFC 6455 §5.2 (the reserved ones are decoder errors, never values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0
    Continuation,
    /// 0x1
    Text,
    /// 0x2
    Binary,
    /// 0x8
    Close,
    /// 0x9
    Ping,
    /// 0xA
    Pong,
}

impl OpCode {
    /// The 4-bit opcode value as sent on the wire.
    pub fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Control frames (close, ping, pong) have the high bit of the opcode set (§5.5).
    pub fn is_control(self) -> bool {
        self.bits() & 0x8 != 0
    }
}

/// The opcode for a 4-bit value, or `None` for the reserved values 0x3-0x7 and 0xB-0xF (§5.2)
/// and anything wider than 4 bits.
pub fn opcode_from_u8(bits: u8) -> Option<OpCode> {
    match bits {
        0x0 => Some(OpCode::Continuation),
        0x1 => Some(OpCode::Text),
        0x2 => Some(OpCode::Binary),
        0x8 => Some(OpCode::Close),
        0x9 => Some(OpCode::Ping),
        0xA => Some(OpCode::Pong),
        _ => None,
    }
}

/// Largest header of a server frame: 2 bytes + 8 bytes of extended length.
pub const SERVER_HEADER_MAX: usize = 10;

/// Largest header of a client frame: a server header plus the 4-byte masking key (§5.2).
pub const CLIENT_HEADER_MAX: usize = SERVER_HEADER_MAX + 4;

/// Largest payload of a control frame (§5.5).
pub const CONTROL_PAYLOAD_MAX: usize = 125;

/// Largest close reason: the control payload limit minus the 2-byte status code (§5.5.1).
pub const CLOSE_REASON_MAX: usize = CONTROL_PAYLOAD_MAX - 2;

/// The FIN bit of the first header byte (§5.2).
const FIN: u8 = 0x80;

/// The MASK bit of the second header byte (§5.2).
const MASKED: u8 = 0x80;

/// Writes the second header byte's 7-bit length field (with `mask_bit` ORed in) and the extended
/// length that follows it into `out[1..]`; returns the header length so far (2, 4 or 10).
fn write_length(payload_len: usize, mask_bit: u8, out: &mut [u8]) -> usize {
    // §5.2: 0-125 fit the 7-bit field; 126 announces a 16-bit length, 127 a 64-bit one, always
    // in network byte order, always the shortest form.
    match payload_len {
        0..=125 => {
            out[1] = mask_bit | payload_len as u8;
            2
        }
        126..=0xFFFF => {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        }
        _ => {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        }
    }
}

/// Writes the header of an unmasked, FIN server frame into `out`; returns its length.
pub fn write_header(
    opcode: OpCode,
    payload_len: usize,
    out: &mut [u8; SERVER_HEADER_MAX],
) -> usize {
    out[0] = FIN | opcode.bits();
    write_length(payload_len, 0, out)
}

/// One unmasked FIN frame (header + payload) in one buffer.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut header = [0u8; SERVER_HEADER_MAX];
    let header_len = write_header(opcode, payload.len(), &mut header);
    // Exact capacity, so `Bytes::from` takes the allocation over without reallocating.
    let mut frame = Vec::with_capacity(header_len + payload.len());
    frame.extend_from_slice(&header[..header_len]);
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// The RSV1 bit of the first header byte: RFC 7692 §6 names it the "Per-Message Compressed" bit,
/// set on the first frame of a compressed message only.
pub const RSV1: u8 = 0x40;

/// One unmasked FIN frame with RSV1 set around an already compressed payload (RFC 7692 §6.1: a
/// compressed message, here always in one frame).
pub fn encode_compressed(opcode: OpCode, compressed: &[u8]) -> Bytes {
    assert!(
        !opcode.is_control(),
        "RFC 7692 §6.1: control frames are never compressed"
    );
    let mut header = [0u8; SERVER_HEADER_MAX];
    let header_len = write_header(opcode, compressed.len(), &mut header);
    header[0] |= RSV1;
    let mut frame = Vec::with_capacity(header_len + compressed.len());
    frame.extend_from_slice(&header[..header_len]);
    frame.extend_from_slice(compressed);
    Bytes::from(frame)
}

/// The payload of a frame made by `encode` (unmasked, one frame): what follows its header.
/// Used to show kept messages as JSON without decoding them again.
pub fn server_payload(frame: &[u8]) -> &[u8] {
    let header_len = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(header_len..).unwrap_or(&[])
}

/// The longest prefix of `reason` that fits a close frame, cut on a char boundary so the payload
/// stays valid UTF-8 (§5.5.1 requires the reason to be UTF-8).
fn close_reason_prefix(reason: &str) -> &str {
    let mut end = reason.len().min(CLOSE_REASON_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// A close frame carrying `code` and `reason` (the reason is cut to fit 125 bytes on a char
/// boundary).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let reason = close_reason_prefix(reason);
    let mut payload = [0u8; CONTROL_PAYLOAD_MAX];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
    encode(OpCode::Close, &payload[..2 + reason.len()])
}

/// A masked client frame, for tests and the load generator.
pub fn encode_client(opcode: OpCode, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut header = [0u8; CLIENT_HEADER_MAX];
    header[0] = if fin { FIN } else { 0 } | opcode.bits();
    let len_end = write_length(payload.len(), MASKED, &mut header);
    header[len_end..len_end + 4].copy_from_slice(&mask);
    let header_len = len_end + 4;
    let mut frame = Vec::with_capacity(header_len + payload.len());
    frame.extend_from_slice(&header[..header_len]);
    frame.extend_from_slice(payload);
    apply_mask(&mut frame[header_len..], mask, 0);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_payload_skips_each_header_size() {
        for len in [0usize, 5, 125, 126, 200, 65_535, 65_536, 70_000] {
            let payload = vec![b'a'; len];
            assert_eq!(
                server_payload(&encode(OpCode::Text, &payload)),
                &payload[..]
            );
        }
        assert!(server_payload(&[]).is_empty());
        assert!(
            server_payload(&[0x81, 126]).is_empty(),
            "a cut header yields nothing"
        );
    }

    #[test]
    fn opcode_round_trip() {
        for bits in 0..=255u8 {
            match opcode_from_u8(bits) {
                Some(op) => assert_eq!(op.bits(), bits),
                None => assert!(matches!(bits, 0x3..=0x7 | 0xB..), "{bits:#x}"),
            }
        }
        assert!(OpCode::Ping.is_control());
        assert!(!OpCode::Continuation.is_control());
    }

    #[test]
    fn header_lengths_use_the_minimal_form() {
        let mut out = [0u8; SERVER_HEADER_MAX];
        assert_eq!(write_header(OpCode::Text, 0, &mut out), 2);
        assert_eq!(out[..2], [0x81, 0]);
        assert_eq!(write_header(OpCode::Binary, 125, &mut out), 2);
        assert_eq!(out[..2], [0x82, 125]);
        assert_eq!(write_header(OpCode::Binary, 126, &mut out), 4);
        assert_eq!(out[..4], [0x82, 126, 0, 126]);
        assert_eq!(write_header(OpCode::Binary, 65535, &mut out), 4);
        assert_eq!(out[..4], [0x82, 126, 0xff, 0xff]);
        assert_eq!(write_header(OpCode::Binary, 65536, &mut out), 10);
        assert_eq!(out[..10], [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn rfc_examples() {
        // §5.7: a single-frame unmasked text message "Hello".
        assert_eq!(&encode(OpCode::Text, b"Hello")[..], b"\x81\x05Hello");
        // §5.7: a single-frame masked text message "Hello".
        assert_eq!(
            encode_client(OpCode::Text, true, b"Hello", [0x37, 0xfa, 0x21, 0x3d]),
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
        // §5.7: the first fragment of an unmasked text message.
        let first = encode_client(OpCode::Text, false, b"Hel", [0; 4]);
        assert_eq!(first[..2], [0x01, 0x83]);
        // §5.7: a 256-byte binary message in a single unmasked frame.
        let big = encode(OpCode::Binary, &[0u8; 256]);
        assert_eq!(big[..4], [0x82, 0x7e, 0x01, 0x00]);
        assert_eq!(big.len(), 4 + 256);
        let huge = encode(OpCode::Binary, &vec![0u8; 65536]);
        assert_eq!(huge[..10], [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn encode_is_exactly_header_and_payload() {
        for len in [0, 1, 125, 126, 65535, 65536] {
            let payload = vec![7u8; len];
            let frame = encode(OpCode::Binary, &payload);
            let mut header = [0u8; SERVER_HEADER_MAX];
            let header_len = write_header(OpCode::Binary, len, &mut header);
            assert_eq!(frame.len(), header_len + len);
            assert_eq!(frame[..header_len], header[..header_len]);
            assert_eq!(frame[header_len..], payload[..]);
        }
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let frame = encode_close(1000, "bye");
        assert_eq!(&frame[..], b"\x88\x05\x03\xe8bye");
        // 122 ASCII bytes then a 2-byte char: it would end at byte 124 > 123, so it is dropped.
        let reason = format!("{}é", "a".repeat(122));
        let frame = encode_close(1001, &reason);
        assert_eq!(frame[1] as usize, 2 + 122);
        assert_eq!(&frame[4..], "a".repeat(122).as_bytes());
        // A long multi-byte reason never passes 125 payload bytes and stays UTF-8.
        let reason = "€".repeat(100);
        let frame = encode_close(4001, &reason);
        let payload_len = frame[1] as usize;
        assert!(payload_len <= CONTROL_PAYLOAD_MAX);
        assert_eq!(frame.len(), 2 + payload_len);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
        assert_eq!(payload_len, 2 + 123);
        let frame = encode_close(1000, "");
        assert_eq!(&frame[..], b"\x88\x02\x03\xe8");
    }
}
