//! Frame opcodes and the server frame encoder: a server frame is unmasked, so header and payload
//! are written once into one `Bytes` and that handle is cloned to every recipient.

use bytes::Bytes;

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

/// Largest header of a server frame: 2 bytes + 8 bytes of extended length.
pub const SERVER_HEADER_MAX: usize = 10;

/// Writes the header of an unmasked, FIN server frame into `out`; returns its length.
pub fn write_header(opcode: OpCode, payload_len: usize, out: &mut [u8; SERVER_HEADER_MAX]) -> usize {
    todo!("{opcode:?}{payload_len}{out:?}")
}

/// One unmasked FIN frame (header + payload) in one buffer.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    todo!("{opcode:?}{payload:?}")
}

/// A close frame carrying `code` and `reason` (the reason is cut to fit 125 bytes on a char boundary).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    todo!("{code}{reason}")
}

/// A masked client frame, for tests and the load generator.
pub fn encode_client(opcode: OpCode, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    todo!("{opcode:?}{fin}{payload:?}{mask:?}")
}
