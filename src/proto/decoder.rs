//! The client frame decoder (RFC 6455 §5): incremental, unmasks in place, validates text as it
//! arrives, enforces the message size and fragment-count limits.
//!
//! Owns: the per-connection state between two reads — a partial frame header, the payload of a
//! frame or message cut by the end of a read, and the fragmented message being assembled.
//!
//! How bytes flow. The caller's read buffer is unmasked in place. A whole unfragmented frame or a
//! whole control frame inside one read is handed to the sink as a slice of that buffer, with no
//! copy: the common case for a push tier, whose clients send small messages. Anything else (a
//! frame cut by the end of a read, the fragments of a fragmented message) is copied into one
//! `Vec<u8>` owned by the decoder. A control frame that arrives in pieces in the middle of a
//! fragmented message is appended after the message bytes in the same `Vec` and cut off again
//! once delivered (§5.4 allows control frames between fragments).
//!
//! Invariants:
//! - Idle (between messages, no partial payload), the decoder owns no heap memory:
//!   `heap_bytes() == 0` after every `feed` that leaves no message or payload in progress.
//! - The `Vec`'s capacity never passes `message_bytes_max` plus one control payload (≤ 125
//!   bytes): no allocation is sized from an announced length beyond that limit, and a frame's
//!   first reservation is at most `RESERVE_BYTES_MAX`, whatever length its header announces.
//! - A compressed message (RSV1, only with `DecoderLimits::deflate`) is stored as it comes and
//!   handed over as `Message::Compressed`: its size limit applies to the compressed bytes here,
//!   and the caller inflates it within the same limit and validates its text (RFC 7692 §6).
//! - While a text message is assembled, every byte in the `Vec` except the last `utf8_pending`
//!   (≤ 3) is known to be valid UTF-8, so invalid text fails in the read that carries it (§8.1).
//! - Feeding a stream whole or cut at any byte positions yields the same messages and the same
//!   error (tested below).
//! - After an error every later `feed` returns that error; after the sink breaks, later calls
//!   do nothing. No input makes it panic.

use std::ops::ControlFlow;

use super::close;
use super::frame::{CLIENT_HEADER_MAX, CONTROL_PAYLOAD_MAX, OpCode, opcode_from_u8};
use super::mask::apply_mask;
use super::utf8::validate_partial;

/// Limits the decoder enforces (copied from the endpoint's `Limits`).
#[derive(Debug, Clone, Copy)]
pub struct DecoderLimits {
    /// Largest message (sum of its fragments' payloads); above it: close 1009.
    pub message_bytes_max: usize,
    /// Most frames one fragmented message may have; above it: close 1009.
    pub fragments_max: u32,
    /// permessage-deflate was negotiated: RSV1 on a message's first frame marks it compressed
    /// (RFC 7692 §6) and the message is handed over as `Message::Compressed`.
    pub deflate: bool,
}

/// A complete message or control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message, already validated as UTF-8.
    Text(&'a [u8]),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping with its payload (≤ 125 bytes).
    Ping(&'a [u8]),
    /// A pong with its payload (≤ 125 bytes).
    Pong(&'a [u8]),
    /// A compressed message (RSV1 on its first frame, RFC 7692 §6), not yet inflated: its
    /// frames' payloads concatenated. The caller inflates it (bounded) and, for text, validates
    /// the UTF-8 of the result (§8.1 applies to the inflated data).
    Compressed {
        /// A text message (else binary).
        text: bool,
        /// The compressed bytes, without the `00 00 ff ff` tail (RFC 7692 §7.2.2).
        payload: &'a [u8],
    },
    /// A close frame: code (None when the payload was empty) and UTF-8 reason.
    Close {
        /// The status code, validated with `close::is_valid_on_wire`.
        code: Option<u16>,
        /// The reason text.
        reason: &'a str,
    },
}

/// A protocol violation; the connection must be closed with `close_code()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// A client frame without the mask bit (§5.1).
    Unmasked,
    /// RSV1, RSV2 or RSV3 set, but no extension was negotiated (§5.2); or RSV1 on a control
    /// frame or a continuation frame with permessage-deflate (RFC 7692 §6.1).
    ReservedBits,
    /// Opcode 0x3-0x7 or 0xB-0xF (§5.2).
    ReservedOpcode,
    /// A control frame with a payload over 125 bytes (§5.5).
    ControlTooLong,
    /// A control frame without FIN (§5.5: control frames must not be fragmented).
    FragmentedControl,
    /// A continuation frame with no fragmented message in progress (§5.4).
    UnexpectedContinuation,
    /// A text or binary frame while a fragmented message waits for its continuation (§5.4).
    ExpectedContinuation,
    /// A 64-bit payload length with its most significant bit set (§5.2).
    LengthTopBit,
    /// A close frame with a 1-byte payload: a status code needs 2 bytes (§5.5.1).
    CloseTooShort,
    /// A close code that must not appear on the wire (§7.4, `close::is_valid_on_wire`).
    InvalidCloseCode,
    /// A close reason that is not UTF-8 (§5.5.1).
    InvalidCloseReason,
    /// A text message that is not UTF-8 (§8.1).
    InvalidUtf8,
    /// The message would pass `message_bytes_max`.
    MessageTooBig,
    /// The message would have more than `fragments_max` frames.
    TooManyFragments,
}

impl ProtocolError {
    /// The close code to send (1002, 1007 or 1009).
    pub fn close_code(self) -> u16 {
        match self {
            ProtocolError::Unmasked
            | ProtocolError::ReservedBits
            | ProtocolError::ReservedOpcode
            | ProtocolError::ControlTooLong
            | ProtocolError::FragmentedControl
            | ProtocolError::UnexpectedContinuation
            | ProtocolError::ExpectedContinuation
            | ProtocolError::LengthTopBit
            | ProtocolError::CloseTooShort
            | ProtocolError::InvalidCloseCode => close::PROTOCOL_ERROR,
            // §7.4.1: 1007 for "data within a message that was not consistent with the type of
            // the message (e.g., non-UTF-8 data within a text message)".
            ProtocolError::InvalidCloseReason | ProtocolError::InvalidUtf8 => {
                close::INVALID_PAYLOAD
            }
            ProtocolError::MessageTooBig | ProtocolError::TooManyFragments => {
                close::MESSAGE_TOO_BIG
            }
        }
    }

    /// A short reason for logs and the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            ProtocolError::Unmasked => "client frame not masked",
            ProtocolError::ReservedBits => "reserved bits set",
            ProtocolError::ReservedOpcode => "reserved opcode",
            ProtocolError::ControlTooLong => "control frame over 125 bytes",
            ProtocolError::FragmentedControl => "fragmented control frame",
            ProtocolError::UnexpectedContinuation => "continuation without a message",
            ProtocolError::ExpectedContinuation => "new message inside a fragmented one",
            ProtocolError::LengthTopBit => "payload length top bit set",
            ProtocolError::CloseTooShort => "close payload of 1 byte",
            ProtocolError::InvalidCloseCode => "invalid close code",
            ProtocolError::InvalidCloseReason => "close reason not UTF-8",
            ProtocolError::InvalidUtf8 => "text not UTF-8",
            ProtocolError::MessageTooBig => "message too big",
            ProtocolError::TooManyFragments => "too many fragments",
        }
    }
}

/// Largest single reservation for a frame that arrives in pieces: a header may announce up to
/// `message_bytes_max` bytes that never come, so memory grows with the bytes that do arrive.
const RESERVE_BYTES_MAX: usize = 1 << 20;

/// Above this capacity the assembly buffer is freed as soon as its message is delivered, so one
/// large message does not pin its memory for the life of the connection.
const KEEP_BYTES_MAX: usize = 64 << 10;

/// The data message being assembled from frames that did not fit one read or one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Assembly {
    /// No data message in progress.
    Idle,
    /// A text message: its bytes are validated as they arrive.
    Text,
    /// A binary message.
    Binary,
    /// A compressed message (RFC 7692 §6): its bytes are stored as they come, unvalidated.
    Compressed {
        /// Text once inflated (else binary).
        text: bool,
    },
}

/// The kinds of control frame (§5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Close,
    Ping,
    Pong,
}

/// What the frame whose payload is being read is, once its header is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameKind {
    /// A data frame (text, binary or continuation) that is not the last of its message.
    Data,
    /// The last data frame of its message (FIN set).
    DataFin,
    /// A control frame; always FIN (§5.5).
    Control(Control),
}

/// Where the decoder is inside the current frame.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Reading a header; `bytes[..len]` hold the part that arrived in earlier reads.
    Header {
        len: u8,
        bytes: [u8; CLIENT_HEADER_MAX],
    },
    /// Reading a payload that did not fit in one read; its bytes go to `Decoder::buf`.
    Payload {
        /// Payload bytes still to come.
        remaining: u64,
        /// The masking key, rotated so that its byte 0 applies to the next payload byte.
        mask: [u8; 4],
        kind: FrameKind,
        /// For a control frame, its whole payload length (its bytes are the tail of `buf`).
        control_len: u8,
    },
}

const EMPTY_HEADER: Phase = Phase::Header {
    len: 0,
    bytes: [0; CLIENT_HEADER_MAX],
};

/// Whether the decoder may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Open,
    /// The sink returned `Break`; the rest of the stream is ignored.
    Stopped,
    /// A protocol error; every later call returns it again.
    Failed(ProtocolError),
}

/// A parsed frame header (§5.2).
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    /// RSV1: with permessage-deflate, "Per-Message Compressed" (RFC 7692 §6).
    rsv1: bool,
    opcode: OpCode,
    mask: [u8; 4],
    payload_len: u64,
    /// Bytes of the header itself: 6, 8 or 14 (a client frame always carries a masking key).
    len: usize,
}

/// Parses a client frame header from the start of `bytes`; `Ok(None)` when more bytes are needed.
///
/// Each check runs as soon as the bytes it needs are present, in a fixed order, so a prefix of a
/// header never yields an error that the whole header would not (the split property relies on it).
fn parse_header(bytes: &[u8], deflate: bool) -> Result<Option<Header>, ProtocolError> {
    let Some(&[b0, b1]) = bytes.first_chunk::<2>() else {
        return Ok(None);
    };
    // §5.2: "MUST be 0 unless an extension is negotiated"; the only one we negotiate,
    // permessage-deflate, defines RSV1 (RFC 7692 §6) and leaves RSV2 and RSV3 reserved.
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (rsv1 && !deflate) {
        return Err(ProtocolError::ReservedBits);
    }
    let opcode = opcode_from_u8(b0 & 0x0F).ok_or(ProtocolError::ReservedOpcode)?;
    // RFC 7692 §6.1: "An endpoint MUST NOT set the "Per-Message Compressed" bit of control
    // frames and non-first fragments of a data message. An endpoint receiving such a frame MUST
    // _Fail the WebSocket Connection_."
    if rsv1 && (opcode == OpCode::Continuation || opcode.is_control()) {
        return Err(ProtocolError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    // §5.1: "The server MUST close the connection upon receiving a frame that is not masked."
    if b1 & 0x80 == 0 {
        return Err(ProtocolError::Unmasked);
    }
    let len7 = b1 & 0x7F;
    if opcode.is_control() {
        // §5.5: "All control frames MUST have a payload length of 125 bytes or less and MUST NOT
        // be fragmented."
        if !fin {
            return Err(ProtocolError::FragmentedControl);
        }
        if usize::from(len7) > CONTROL_PAYLOAD_MAX {
            return Err(ProtocolError::ControlTooLong);
        }
    }
    let extended = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    // §5.2: "the most significant bit MUST be 0" in the 64-bit form; checked on its first byte.
    if extended == 8 && bytes.get(2).is_some_and(|b| b & 0x80 != 0) {
        return Err(ProtocolError::LengthTopBit);
    }
    let len = 2 + extended + 4;
    if bytes.len() < len {
        return Ok(None);
    }
    // A non-minimal length encoding (e.g. 5 in the 16-bit form) is accepted: §5.2's "MUST use the
    // minimal number of bytes" binds the sender and rejecting it protects nothing.
    let payload_len = match extended {
        0 => u64::from(len7),
        2 => u64::from(u16::from_be_bytes([bytes[2], bytes[3]])),
        _ => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&bytes[2..10]);
            u64::from_be_bytes(be)
        }
    };
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&bytes[len - 4..len]);
    Ok(Some(Header {
        fin,
        rsv1,
        opcode,
        mask,
        payload_len,
        len,
    }))
}

/// Validates a complete control frame's payload and hands it to the sink.
fn deliver_control(
    control: Control,
    payload: &[u8],
    sink: &mut dyn FnMut(Message<'_>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, ProtocolError> {
    let message = match control {
        Control::Ping => Message::Ping(payload),
        Control::Pong => Message::Pong(payload),
        Control::Close => match payload {
            // §5.5.1: the body is optional; without it the status is "no status" (1005).
            [] => Message::Close {
                code: None,
                reason: "",
            },
            [_] => return Err(ProtocolError::CloseTooShort),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !close::is_valid_on_wire(code) {
                    return Err(ProtocolError::InvalidCloseCode);
                }
                let reason =
                    std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidCloseReason)?;
                Message::Close {
                    code: Some(code),
                    reason,
                }
            }
        },
    };
    Ok(sink(message))
}

/// Per-connection decoder state. Idle, it owns no heap memory.
#[derive(Debug)]
pub struct Decoder {
    /// Assembly buffer: the message being assembled, then possibly a control payload in pieces.
    buf: Vec<u8>,
    phase: Phase,
    /// Frames of the message being assembled so far.
    fragments: u32,
    assembly: Assembly,
    /// Bytes at the end of the message in `buf` that start a code point not yet complete (0..=3).
    utf8_pending: u8,
    status: Status,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            buf: Vec::new(),
            phase: EMPTY_HEADER,
            fragments: 0,
            assembly: Assembly::Idle,
            utf8_pending: 0,
            status: Status::Open,
        }
    }
}

impl Decoder {
    /// Decodes `input` (unmasking it in place), calling `sink` for each complete message or
    /// control frame. `sink` returns `Break` to stop (after a close frame): the rest is dropped.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        limits: &DecoderLimits,
        sink: &mut dyn FnMut(Message<'_>) -> ControlFlow<()>,
    ) -> Result<(), ProtocolError> {
        match self.status {
            Status::Open => {}
            Status::Stopped => return Ok(()),
            Status::Failed(error) => return Err(error),
        }
        match self.decode(input, limits, sink) {
            Ok(ControlFlow::Continue(())) => {
                // Idle means no heap: whatever is not holding bytes goes back to the allocator.
                if self.buf.is_empty() {
                    self.buf = Vec::new();
                }
                Ok(())
            }
            Ok(ControlFlow::Break(())) => {
                self.status = Status::Stopped;
                self.release();
                Ok(())
            }
            Err(error) => {
                self.status = Status::Failed(error);
                self.release();
                Err(error)
            }
        }
    }

    /// Heap bytes held for a partial frame or message.
    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// Whether the stream is between messages: no partial header or payload, no fragmented
    /// message in progress. An idle decoder holds no heap (`heap_bytes() == 0`). A connection
    /// may use it to tell a clean end of stream from one cut inside a message.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Header { len: 0, .. }) && self.assembly == Assembly::Idle
    }

    /// Drops all partial state; the decoder is done.
    fn release(&mut self) {
        self.buf = Vec::new();
        self.phase = EMPTY_HEADER;
        self.assembly = Assembly::Idle;
        self.fragments = 0;
        self.utf8_pending = 0;
    }

    fn decode(
        &mut self,
        input: &mut [u8],
        limits: &DecoderLimits,
        sink: &mut dyn FnMut(Message<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, ProtocolError> {
        let mut pos = 0;
        loop {
            let flow = match self.phase {
                Phase::Header { len, mut bytes } => {
                    let held = usize::from(len);
                    let header = if held == 0 {
                        // Common case: the header is parsed where it lies in the read buffer.
                        match parse_header(&input[pos..], limits.deflate)? {
                            Some(header) => {
                                pos += header.len;
                                header
                            }
                            None => {
                                // An incomplete header is shorter than CLIENT_HEADER_MAX.
                                let rest = &input[pos..];
                                bytes[..rest.len()].copy_from_slice(rest);
                                self.phase = Phase::Header {
                                    len: rest.len() as u8,
                                    bytes,
                                };
                                return Ok(ControlFlow::Continue(()));
                            }
                        }
                    } else {
                        // The header began in an earlier read: top it up from this one.
                        let take = (CLIENT_HEADER_MAX - held).min(input.len() - pos);
                        bytes[held..held + take].copy_from_slice(&input[pos..pos + take]);
                        match parse_header(&bytes[..held + take], limits.deflate)? {
                            Some(header) => {
                                pos += header.len - held;
                                header
                            }
                            None => {
                                // Not complete, so `take` was all that was left of the input.
                                self.phase = Phase::Header {
                                    len: (held + take) as u8,
                                    bytes,
                                };
                                return Ok(ControlFlow::Continue(()));
                            }
                        }
                    };
                    self.phase = EMPTY_HEADER;
                    self.begin_frame(header, input, &mut pos, limits, sink)?
                }
                Phase::Payload {
                    remaining,
                    mask,
                    kind,
                    control_len,
                } => {
                    let available = input.len() - pos;
                    // `take` ≤ `available`, so the conversion back to usize is lossless.
                    let take = remaining.min(available as u64) as usize;
                    let remaining = remaining - take as u64;
                    let mut mask = mask;
                    if take > 0 {
                        let chunk = &mut input[pos..pos + take];
                        apply_mask(chunk, mask, 0);
                        mask.rotate_left(take % 4);
                        pos += take;
                        self.append(kind, chunk, take as u64 + remaining)?;
                    }
                    if remaining > 0 {
                        // Every byte of the input was used; wait for the next read.
                        self.phase = Phase::Payload {
                            remaining,
                            mask,
                            kind,
                            control_len,
                        };
                        return Ok(ControlFlow::Continue(()));
                    }
                    self.phase = EMPTY_HEADER;
                    self.end_frame(kind, usize::from(control_len), sink)?
                }
            };
            if flow.is_break() {
                return Ok(flow);
            }
        }
    }

    /// Checks a parsed header against the state, then delivers the frame straight from `input`
    /// when it is all there, or enters the payload phase.
    fn begin_frame(
        &mut self,
        header: Header,
        input: &mut [u8],
        pos: &mut usize,
        limits: &DecoderLimits,
        sink: &mut dyn FnMut(Message<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, ProtocolError> {
        let available = (input.len() - *pos) as u64;
        let whole = header.payload_len <= available;
        let kind = match header.opcode {
            OpCode::Close => FrameKind::Control(Control::Close),
            OpCode::Ping => FrameKind::Control(Control::Ping),
            OpCode::Pong => FrameKind::Control(Control::Pong),
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                self.begin_data_frame(&header, limits)?;
                if header.fin {
                    FrameKind::DataFin
                } else {
                    FrameKind::Data
                }
            }
        };
        let unfragmented = kind == FrameKind::DataFin && header.opcode != OpCode::Continuation;
        let control = matches!(kind, FrameKind::Control(_));
        if whole && (unfragmented || control) {
            // Fast path: the payload is in this read and needs no assembly; unmask it where it
            // lies and lend it to the sink. `payload_len` ≤ `available`, so it fits a usize.
            let len = header.payload_len as usize;
            let payload = &mut input[*pos..*pos + len];
            *pos += len;
            apply_mask(payload, header.mask, 0);
            let payload = &*payload;
            if let FrameKind::Control(control) = kind {
                return deliver_control(control, payload, sink);
            }
            let message = match self.assembly {
                Assembly::Text => {
                    std::str::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?;
                    Message::Text(payload)
                }
                Assembly::Compressed { text } => Message::Compressed { text, payload },
                Assembly::Binary | Assembly::Idle => Message::Binary(payload),
            };
            self.assembly = Assembly::Idle;
            self.fragments = 0;
            return Ok(sink(message));
        }
        // §5.5 bounds a control payload by 125, and parse_header checked it.
        let control_len = if control { header.payload_len as u8 } else { 0 };
        self.phase = Phase::Payload {
            remaining: header.payload_len,
            mask: header.mask,
            kind,
            control_len,
        };
        Ok(ControlFlow::Continue(()))
    }

    /// The message-level checks of a data frame's header (§5.4 and the limits): sets `assembly`.
    fn begin_data_frame(
        &mut self,
        header: &Header,
        limits: &DecoderLimits,
    ) -> Result<(), ProtocolError> {
        match (header.opcode, self.assembly) {
            (OpCode::Continuation, Assembly::Idle) => {
                return Err(ProtocolError::UnexpectedContinuation);
            }
            (
                OpCode::Text | OpCode::Binary,
                Assembly::Text | Assembly::Binary | Assembly::Compressed { .. },
            ) => {
                return Err(ProtocolError::ExpectedContinuation);
            }
            _ => {}
        }
        if self.fragments >= limits.fragments_max {
            return Err(ProtocolError::TooManyFragments);
        }
        // Between frames `buf` holds only the message so far. The sum is checked from the
        // header, before any byte of the payload is stored, so a header announcing 2^63 bytes
        // fails here without allocating.
        let assembled = self.buf.len() as u64;
        let room = (limits.message_bytes_max as u64).saturating_sub(assembled);
        if header.payload_len > room {
            return Err(ProtocolError::MessageTooBig);
        }
        self.fragments += 1;
        match (header.opcode, header.rsv1) {
            (OpCode::Text, false) => self.assembly = Assembly::Text,
            (OpCode::Binary, false) => self.assembly = Assembly::Binary,
            (OpCode::Text, true) => self.assembly = Assembly::Compressed { text: true },
            (OpCode::Binary, true) => self.assembly = Assembly::Compressed { text: false },
            _ => {}
        }
        Ok(())
    }

    /// Stores unmasked payload bytes of a frame read in pieces; `left` counts `chunk` plus the
    /// bytes of the frame still to come. Text is validated here, as it arrives (§8.1 fail fast).
    fn append(&mut self, kind: FrameKind, chunk: &[u8], left: u64) -> Result<(), ProtocolError> {
        let start = self.buf.len();
        if start + chunk.len() > self.buf.capacity() {
            // Grow geometrically (amortised O(1) per byte), but reserve at first no more than
            // RESERVE_BYTES_MAX ahead of the bytes (the header's length is a claim, the bytes are
            // facts) and never past the end of this frame, which the header check bounded by the
            // limit: so the capacity never passes `message_bytes_max` + one control payload.
            let left = usize::try_from(left).unwrap_or(usize::MAX);
            let frame_end = start.saturating_add(left);
            let ahead = start + left.min(RESERVE_BYTES_MAX);
            let target = (self.buf.capacity().saturating_mul(2))
                .max(ahead)
                .min(frame_end)
                .max(start + chunk.len());
            self.buf.reserve_exact(target - start);
        }
        self.buf.extend_from_slice(chunk);
        let data = matches!(kind, FrameKind::Data | FrameKind::DataFin);
        if data && self.assembly == Assembly::Text {
            // Re-validate from the start of the incomplete code point the last piece ended with,
            // so a code point cut between reads or fragments is checked whole.
            let from = start - usize::from(self.utf8_pending);
            let tail =
                validate_partial(&self.buf[from..]).map_err(|_| ProtocolError::InvalidUtf8)?;
            // `validate_partial` returns at most 3.
            self.utf8_pending = tail as u8;
        }
        Ok(())
    }

    /// A frame's payload is complete in `buf`: deliver what it completes.
    fn end_frame(
        &mut self,
        kind: FrameKind,
        control_len: usize,
        sink: &mut dyn FnMut(Message<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, ProtocolError> {
        match kind {
            FrameKind::Data => Ok(ControlFlow::Continue(())),
            FrameKind::DataFin => {
                // §8.1: a text message that ends inside a code point is not UTF-8.
                if self.utf8_pending != 0 {
                    return Err(ProtocolError::InvalidUtf8);
                }
                let message = match self.assembly {
                    Assembly::Text => Message::Text(&self.buf),
                    Assembly::Compressed { text } => Message::Compressed {
                        text,
                        payload: &self.buf,
                    },
                    Assembly::Binary | Assembly::Idle => Message::Binary(&self.buf),
                };
                let flow = sink(message);
                self.assembly = Assembly::Idle;
                self.fragments = 0;
                self.buf.clear();
                if self.buf.capacity() > KEEP_BYTES_MAX {
                    self.buf = Vec::new();
                }
                Ok(flow)
            }
            FrameKind::Control(control) => {
                // The control payload is the tail of `buf`, after any message being assembled.
                let start = self.buf.len() - control_len;
                let flow = deliver_control(control, &self.buf[start..], sink);
                self.buf.truncate(start);
                flow
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::encode_client;
    use proptest::prelude::*;

    const LIMITS: DecoderLimits = DecoderLimits {
        message_bytes_max: 1 << 20,
        fragments_max: 64,
        deflate: false,
    };

    /// A delivered message, owned, so tests can collect them.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Compressed(bool, Vec<u8>),
        Close(Option<u16>, String),
    }

    fn own(message: Message<'_>) -> Owned {
        match message {
            Message::Text(t) => Owned::Text(String::from_utf8(t.to_vec()).expect("validated")),
            Message::Binary(b) => Owned::Binary(b.to_vec()),
            Message::Ping(p) => Owned::Ping(p.to_vec()),
            Message::Pong(p) => Owned::Pong(p.to_vec()),
            Message::Compressed { text, payload } => Owned::Compressed(text, payload.to_vec()),
            Message::Close { code, reason } => Owned::Close(code, reason.to_owned()),
        }
    }

    /// What a stream decodes to: the messages, then the error that ended it, if any.
    type Outcome = (Vec<Owned>, Option<ProtocolError>);

    /// Feeds `stream` cut at `cuts` (sorted positions), each piece in a fresh buffer as a read
    /// would deliver it. The sink stops after a close frame, as a connection would. Checks the
    /// memory invariants after every piece.
    fn run(stream: &[u8], cuts: &[usize], limits: &DecoderLimits) -> Outcome {
        let mut decoder = Decoder::default();
        let mut messages = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
            let end = end.clamp(start, stream.len());
            let mut piece = stream[start..end].to_vec();
            start = end;
            let result = decoder.feed(&mut piece, limits, &mut |m| {
                let stop = matches!(m, Message::Close { .. });
                messages.push(own(m));
                if stop {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            assert!(decoder.heap_bytes() <= limits.message_bytes_max + CONTROL_PAYLOAD_MAX);
            if decoder.is_idle() {
                assert_eq!(decoder.heap_bytes(), 0, "idle decoder holds heap");
            }
            if let Err(error) = result {
                assert_eq!(decoder.heap_bytes(), 0);
                // The error sticks.
                assert_eq!(
                    decoder.feed(&mut [0x81, 0x80, 0, 0, 0, 0], limits, &mut |_| {
                        panic!("no message after an error")
                    }),
                    Err(error)
                );
                return (messages, Some(error));
            }
        }
        (messages, None)
    }

    fn whole(stream: &[u8]) -> Outcome {
        run(stream, &[], &LIMITS)
    }

    fn frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        encode_client(opcode, fin, payload, [0x37, 0xfa, 0x21, 0x3d])
    }

    fn text(s: &str) -> Owned {
        Owned::Text(s.to_owned())
    }

    fn error(stream: &[u8]) -> Option<ProtocolError> {
        whole(stream).1
    }

    #[test]
    fn idle_decoder_is_small_and_owns_no_heap() {
        // 24 (Vec) + 16 (phase: header bytes or payload state) + 4 (fragments) + 3 flags.
        assert!(
            std::mem::size_of::<Decoder>() <= 48,
            "{}",
            std::mem::size_of::<Decoder>()
        );
        let decoder = Decoder::default();
        assert_eq!(decoder.heap_bytes(), 0);
        assert!(decoder.is_idle());
    }

    #[test]
    fn rfc_examples() {
        // §5.7: a single-frame masked text message.
        let stream = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(whole(&stream), (vec![text("Hello")], None));
        // §5.7: a fragmented text message with a ping between the fragments.
        let mut stream = frame(OpCode::Text, false, b"Hel");
        stream.extend(frame(OpCode::Ping, true, b"Hello"));
        stream.extend(frame(OpCode::Continuation, true, b"lo"));
        assert_eq!(
            whole(&stream),
            (vec![Owned::Ping(b"Hello".to_vec()), text("Hello")], None)
        );
    }

    #[test]
    fn whole_frame_is_lent_from_the_input() {
        let mut stream = frame(OpCode::Binary, true, b"abc");
        let input_range = stream.as_ptr_range();
        let mut decoder = Decoder::default();
        let mut seen = false;
        decoder
            .feed(&mut stream, &LIMITS, &mut |m| {
                let Message::Binary(payload) = m else {
                    panic!("{m:?}")
                };
                assert!(
                    input_range.contains(&payload.as_ptr()),
                    "payload was copied"
                );
                seen = true;
                ControlFlow::Continue(())
            })
            .unwrap();
        assert!(seen);
        assert_eq!(decoder.heap_bytes(), 0);
    }

    #[test]
    fn byte_at_a_time() {
        let mut stream = frame(OpCode::Text, false, "κό".as_bytes());
        stream.extend(frame(OpCode::Pong, true, b"p"));
        stream.extend(frame(OpCode::Continuation, true, "σμε".as_bytes()));
        stream.extend(frame(OpCode::Binary, true, &[9; 300]));
        stream.extend(frame(OpCode::Close, true, b"\x03\xe8bye"));
        let cuts: Vec<usize> = (1..stream.len()).collect();
        let expected = vec![
            Owned::Pong(b"p".to_vec()),
            text("κόσμε"),
            Owned::Binary(vec![9; 300]),
            Owned::Close(Some(1000), "bye".into()),
        ];
        assert_eq!(run(&stream, &cuts, &LIMITS), (expected.clone(), None));
        assert_eq!(whole(&stream), (expected, None));
    }

    #[test]
    fn close_frames() {
        let close = |payload: &[u8]| whole(&frame(OpCode::Close, true, payload));
        assert_eq!(close(b""), (vec![Owned::Close(None, String::new())], None));
        assert_eq!(
            close(b"\x03\xe8"),
            (vec![Owned::Close(Some(1000), String::new())], None)
        );
        assert_eq!(
            close(b"\x0f\xa0hi"),
            (vec![Owned::Close(Some(4000), "hi".into())], None)
        );
        assert_eq!(close(b"\x03"), (vec![], Some(ProtocolError::CloseTooShort)));
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let payload = code.to_be_bytes();
            assert_eq!(
                close(&payload),
                (vec![], Some(ProtocolError::InvalidCloseCode)),
                "{code}"
            );
        }
        assert_eq!(
            close(b"\x03\xe8\xff"),
            (vec![], Some(ProtocolError::InvalidCloseReason))
        );
        // Autobahn 7.5.1: a reason with an invalid sequence in the middle.
        let mut payload = vec![0x03, 0xe8];
        payload.extend([
            0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed,
        ]);
        payload.extend([0xa0, 0x80, 0x65, 0x64, 0x69, 0x74, 0x65, 0x64]);
        assert_eq!(
            close(&payload),
            (vec![], Some(ProtocolError::InvalidCloseReason))
        );
        // A close frame in pieces, in the middle of a fragmented message.
        let mut stream = frame(OpCode::Binary, false, b"ab");
        stream.extend(frame(OpCode::Close, true, b"\x03\xe9gone"));
        let cuts: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(
            run(&stream, &cuts, &LIMITS),
            (vec![Owned::Close(Some(1001), "gone".into())], None)
        );
    }

    #[test]
    fn header_errors() {
        use ProtocolError::*;
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            (vec![0x81, 0x05, b'H', b'e', b'l', b'l', b'o'], Unmasked),
            (vec![0xC1, 0x80, 0, 0, 0, 0], ReservedBits),
            (vec![0xA1, 0x80, 0, 0, 0, 0], ReservedBits),
            (vec![0x91, 0x80, 0, 0, 0, 0], ReservedBits),
            (vec![0x83, 0x80, 0, 0, 0, 0], ReservedOpcode),
            (vec![0x87, 0x80, 0, 0, 0, 0], ReservedOpcode),
            (vec![0x8B, 0x80, 0, 0, 0, 0], ReservedOpcode),
            (vec![0x8F, 0x80, 0, 0, 0, 0], ReservedOpcode),
            (vec![0x89, 0xFE, 0, 126], ControlTooLong),
            (vec![0x09, 0x80, 0, 0, 0, 0], FragmentedControl),
            (vec![0x08, 0x80, 0, 0, 0, 0], FragmentedControl),
            (vec![0x80, 0x80, 0, 0, 0, 0], UnexpectedContinuation),
            (
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                LengthTopBit,
            ),
            // Length 2^63 - 1: refused from the header, before any allocation.
            (
                vec![
                    0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0,
                ],
                MessageTooBig,
            ),
        ];
        for (stream, expected) in cases {
            assert_eq!(error(&stream), Some(expected), "{stream:x?}");
            let code = expected.close_code();
            let want = if expected == MessageTooBig {
                1009
            } else {
                1002
            };
            assert_eq!(code, want);
        }
        // The top-bit check needs only the first length byte.
        assert_eq!(error(&[0x82, 0xFF, 0x80]), Some(LengthTopBit));
        // The header errors show with two bytes, before the rest of the header.
        assert_eq!(error(&[0x81, 0x05]), Some(Unmasked));
        assert_eq!(error(&[0x81]), None);
    }

    #[test]
    fn fragmentation_errors() {
        let mut stream = frame(OpCode::Text, false, b"a");
        stream.extend(frame(OpCode::Text, true, b"b"));
        assert_eq!(error(&stream), Some(ProtocolError::ExpectedContinuation));
        let mut stream = frame(OpCode::Binary, false, b"a");
        stream.extend(frame(OpCode::Text, true, b"b"));
        assert_eq!(error(&stream), Some(ProtocolError::ExpectedContinuation));
        let mut stream = frame(OpCode::Text, true, b"a");
        stream.extend(frame(OpCode::Continuation, true, b"b"));
        assert_eq!(
            whole(&stream),
            (vec![text("a")], Some(ProtocolError::UnexpectedContinuation))
        );
    }

    /// A frame with RSV1 set (RFC 7692 §6: "Per-Message Compressed").
    fn frame_rsv1(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = frame(opcode, fin, payload);
        f[0] |= 0x40;
        f
    }

    #[test]
    fn compressed_messages_with_permessage_deflate() {
        let deflate = DecoderLimits {
            deflate: true,
            ..LIMITS
        };
        // RSV1 without the extension is still refused (§5.2).
        let one = frame_rsv1(OpCode::Text, true, &[0xff, 0xfe]);
        assert_eq!(error(&one), Some(ProtocolError::ReservedBits));
        // With it, the bytes are handed over as they are: not UTF-8-checked, not inflated here.
        assert_eq!(
            run(&one, &[], &deflate),
            (vec![Owned::Compressed(true, vec![0xff, 0xfe])], None)
        );
        // Fragmented: RSV1 on the first frame only; a ping between fragments; every split point
        // gives the same result.
        let mut stream = frame_rsv1(OpCode::Binary, false, b"ab");
        stream.extend(frame(OpCode::Ping, true, b"p"));
        stream.extend(frame(OpCode::Continuation, true, b"cd"));
        stream.extend(frame(OpCode::Text, true, b"plain"));
        let want = (
            vec![
                Owned::Ping(b"p".to_vec()),
                Owned::Compressed(false, b"abcd".to_vec()),
                text("plain"),
            ],
            None,
        );
        for cut in 0..=stream.len() {
            assert_eq!(run(&stream, &[cut], &deflate), want, "cut at {cut}");
        }
        // RFC 7692 §6.1: never on a continuation or a control frame; RSV2 and RSV3 stay reserved.
        let mut stream = frame_rsv1(OpCode::Text, false, b"a");
        stream.extend(frame_rsv1(OpCode::Continuation, true, b"b"));
        assert_eq!(
            run(&stream, &[], &deflate).1,
            Some(ProtocolError::ReservedBits)
        );
        let ping = frame_rsv1(OpCode::Ping, true, b"");
        assert_eq!(
            run(&ping, &[], &deflate).1,
            Some(ProtocolError::ReservedBits)
        );
        let mut rsv2 = frame(OpCode::Text, true, b"a");
        rsv2[0] |= 0x20;
        assert_eq!(
            run(&rsv2, &[], &deflate).1,
            Some(ProtocolError::ReservedBits)
        );
        // The compressed size counts against the message limit like any other.
        let small = DecoderLimits {
            message_bytes_max: 3,
            ..deflate
        };
        let big = frame_rsv1(OpCode::Text, true, b"abcd");
        assert_eq!(run(&big, &[], &small).1, Some(ProtocolError::MessageTooBig));
    }

    #[test]
    fn limits() {
        let limits = DecoderLimits {
            message_bytes_max: 10,
            fragments_max: 3,
            deflate: false,
        };
        let ok = frame(OpCode::Binary, true, &[1; 10]);
        assert_eq!(
            run(&ok, &[], &limits),
            (vec![Owned::Binary(vec![1; 10])], None)
        );
        let big = frame(OpCode::Binary, true, &[1; 11]);
        assert_eq!(
            run(&big, &[], &limits).1,
            Some(ProtocolError::MessageTooBig)
        );
        // The sum of the fragments counts, and it is checked at the header of the last one.
        let mut stream = frame(OpCode::Text, false, b"12345");
        stream.extend(frame(OpCode::Continuation, false, b"123"));
        let header_at = stream.len();
        stream.extend(frame(OpCode::Continuation, true, b"123"));
        assert_eq!(
            run(&stream, &[header_at + 6], &limits).1,
            Some(ProtocolError::MessageTooBig)
        );
        // Three frames pass, four do not.
        let mut stream = frame(OpCode::Text, false, b"a");
        stream.extend(frame(OpCode::Continuation, false, b"b"));
        stream.extend(frame(OpCode::Continuation, true, b"c"));
        assert_eq!(run(&stream, &[], &limits), (vec![text("abc")], None));
        let mut stream = frame(OpCode::Text, false, b"a");
        stream.extend(frame(OpCode::Continuation, false, b""));
        stream.extend(frame(OpCode::Continuation, false, b""));
        stream.extend(frame(OpCode::Continuation, true, b""));
        assert_eq!(
            run(&stream, &[], &limits).1,
            Some(ProtocolError::TooManyFragments)
        );
        // Control frames do not count as fragments.
        let mut stream = frame(OpCode::Text, false, b"a");
        for _ in 0..5 {
            stream.extend(frame(OpCode::Ping, true, b""));
        }
        stream.extend(frame(OpCode::Continuation, true, b"b"));
        assert_eq!(run(&stream, &[], &limits).0.len(), 6);
        assert_eq!(ProtocolError::TooManyFragments.close_code(), 1009);
    }

    #[test]
    fn invalid_text_fails_in_the_read_that_carries_it() {
        // Autobahn 6.4.*: the first fragment is valid, the second carries F4 90 80 80; the
        // error must come before the third fragment (never sent here) arrives.
        let mut stream = frame(OpCode::Text, false, "κόσμε".as_bytes());
        stream.extend(frame(
            OpCode::Continuation,
            false,
            &[0xf4, 0x90, 0x80, 0x80],
        ));
        assert_eq!(error(&stream), Some(ProtocolError::InvalidUtf8));
        // Inside one frame that arrives in pieces, the piece with the bad byte fails.
        let mut payload = vec![b'a'; 1000];
        payload[500] = 0xff;
        let stream = frame(OpCode::Text, true, &payload);
        let mut decoder = Decoder::default();
        let mut sink = |m: Message<'_>| panic!("{m:?}");
        let (first, rest) = stream.split_at(400);
        assert_eq!(
            decoder.feed(&mut first.to_vec(), &LIMITS, &mut sink),
            Ok(())
        );
        let (second, _) = rest.split_at(200);
        assert_eq!(
            decoder.feed(&mut second.to_vec(), &LIMITS, &mut sink),
            Err(ProtocolError::InvalidUtf8)
        );
        // A text message ending inside a code point.
        let stream = frame(OpCode::Text, true, &[b'a', 0xe2, 0x82]);
        assert_eq!(error(&stream), Some(ProtocolError::InvalidUtf8));
        let mut stream = frame(OpCode::Text, false, &[0xe2, 0x82]);
        stream.extend(frame(OpCode::Continuation, true, &[]));
        assert_eq!(error(&stream), Some(ProtocolError::InvalidUtf8));
        // Binary is not validated.
        let stream = frame(OpCode::Binary, true, &[0xff]);
        assert_eq!(whole(&stream), (vec![Owned::Binary(vec![0xff])], None));
        assert_eq!(ProtocolError::InvalidUtf8.close_code(), 1007);
        assert_eq!(ProtocolError::InvalidCloseReason.close_code(), 1007);
    }

    #[test]
    fn memory_is_released() {
        // A large message in pieces: its buffer is freed once delivered.
        let payload = vec![7u8; 200_000];
        let stream = frame(OpCode::Binary, true, &payload);
        let mut decoder = Decoder::default();
        let mut delivered = 0;
        let mut in_progress_heap = 0;
        for piece in stream.chunks(4096) {
            decoder
                .feed(&mut piece.to_vec(), &LIMITS, &mut |m| {
                    assert_eq!(m, Message::Binary(&payload));
                    delivered += 1;
                    ControlFlow::Continue(())
                })
                .unwrap();
            in_progress_heap = in_progress_heap.max(decoder.heap_bytes());
        }
        assert_eq!(delivered, 1);
        assert!(in_progress_heap >= payload.len());
        assert!(in_progress_heap <= payload.len() + CONTROL_PAYLOAD_MAX);
        assert_eq!(decoder.heap_bytes(), 0);
        // A header announcing the whole limit, then a few bytes: the reservation stays bounded.
        let limits = DecoderLimits {
            message_bytes_max: 64 << 20,
            fragments_max: 4,
            deflate: false,
        };
        let mut header = vec![0x82, 0xFF];
        header.extend((64u64 << 20).to_be_bytes());
        header.extend([1, 2, 3, 4, 0, 0]);
        let mut decoder = Decoder::default();
        decoder
            .feed(&mut header, &limits, &mut |_| ControlFlow::Continue(()))
            .unwrap();
        assert!(decoder.heap_bytes() <= RESERVE_BYTES_MAX);
        assert!(!decoder.is_idle());
        // A partial header alone holds no heap either.
        let mut decoder = Decoder::default();
        decoder
            .feed(&mut [0x81, 0x85, 1], &LIMITS, &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(decoder.heap_bytes(), 0);
        assert!(!decoder.is_idle());
    }

    #[test]
    fn break_stops_everything() {
        let mut stream = frame(OpCode::Ping, true, b"1");
        stream.extend(frame(OpCode::Ping, true, b"2"));
        stream.extend([0xff, 0xff]);
        let mut decoder = Decoder::default();
        let mut seen = 0;
        let mut sink = |_: Message<'_>| {
            seen += 1;
            ControlFlow::Break(())
        };
        assert_eq!(
            decoder.feed(&mut stream.clone(), &LIMITS, &mut sink),
            Ok(())
        );
        assert_eq!(decoder.feed(&mut stream, &LIMITS, &mut sink), Ok(()));
        assert_eq!(seen, 1);
        assert_eq!(decoder.heap_bytes(), 0);
    }

    /// One item of a valid client stream.
    #[derive(Debug, Clone)]
    enum Item {
        /// A data message cut into fragments at `cuts`, with a ping after fragment `ping_after`.
        Data {
            text: bool,
            payload: Vec<u8>,
            cuts: Vec<usize>,
            ping_after: Option<usize>,
        },
        /// A ping or pong.
        Control { ping: bool, payload: Vec<u8> },
        /// A close frame with a valid code and reason.
        Close { code: u16, reason: String },
    }

    fn payload_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            8 => proptest::collection::vec(any::<u8>(), 0..140),
            1 => proptest::collection::vec(any::<u8>(), 126..1000),
            1 => (65_530usize..65_600).prop_map(|n| vec![0x5a; n]),
        ]
    }

    fn item_strategy() -> impl Strategy<Value = Item> {
        prop_oneof![
            6 => (
                any::<bool>(),
                payload_strategy(),
                any::<String>(),
                proptest::collection::vec(any::<usize>(), 0..4),
                proptest::option::of(any::<usize>()),
            )
                .prop_map(|(text, bytes, s, cuts, ping_after)| {
                    let payload = if text {
                        s.repeat(1 + bytes.len() / 64).into_bytes()
                    } else {
                        bytes
                    };
                    let mut cuts: Vec<usize> =
                        cuts.into_iter().map(|c| c % (payload.len() + 1)).collect();
                    cuts.sort_unstable();
                    Item::Data { text, payload, cuts, ping_after }
                }),
            2 => (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..=125))
                .prop_map(|(ping, payload)| Item::Control { ping, payload }),
            1 => (
                prop_oneof![Just(1000u16), Just(1001), Just(1011), 3000u16..5000],
                "[a-zé€]{0,20}",
            )
                .prop_map(|(code, reason)| Item::Close { code, reason }),
        ]
    }

    /// Encodes the items with the given masks; returns the stream and what it must decode to.
    fn encode_items(items: &[Item], masks: &[[u8; 4]]) -> (Vec<u8>, Vec<Owned>) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        let mut mask = masks.iter().copied().cycle();
        let mut next_mask = || mask.next().unwrap_or([0; 4]);
        for item in items {
            match item {
                Item::Data {
                    text,
                    payload,
                    cuts,
                    ping_after,
                } => {
                    let mut bounds = vec![0];
                    bounds.extend(cuts.iter().copied());
                    bounds.push(payload.len());
                    let pieces = bounds.len() - 1;
                    for i in 0..pieces {
                        let opcode = match (i, text) {
                            (0, true) => OpCode::Text,
                            (0, false) => OpCode::Binary,
                            _ => OpCode::Continuation,
                        };
                        let fragment = &payload[bounds[i]..bounds[i + 1]];
                        stream.extend(encode_client(
                            opcode,
                            i + 1 == pieces,
                            fragment,
                            next_mask(),
                        ));
                        if ping_after.map(|p| p % pieces) == Some(i) && i + 1 < pieces {
                            stream.extend(encode_client(
                                OpCode::Ping,
                                true,
                                b"between",
                                next_mask(),
                            ));
                            expected.push(Owned::Ping(b"between".to_vec()));
                        }
                    }
                    expected.push(if *text {
                        Owned::Text(String::from_utf8(payload.clone()).expect("text payload"))
                    } else {
                        Owned::Binary(payload.clone())
                    });
                }
                Item::Control { ping, payload } => {
                    let opcode = if *ping { OpCode::Ping } else { OpCode::Pong };
                    stream.extend(encode_client(opcode, true, payload, next_mask()));
                    expected.push(if *ping {
                        Owned::Ping(payload.clone())
                    } else {
                        Owned::Pong(payload.clone())
                    });
                }
                Item::Close { code, reason } => {
                    let mut payload = code.to_be_bytes().to_vec();
                    payload.extend(reason.as_bytes());
                    stream.extend(encode_client(OpCode::Close, true, &payload, next_mask()));
                    expected.push(Owned::Close(Some(*code), reason.clone()));
                }
            }
        }
        // The sink stops at the first close: nothing after it is delivered.
        if let Some(at) = expected.iter().position(|m| matches!(m, Owned::Close(..))) {
            expected.truncate(at + 1);
        }
        (stream, expected)
    }

    fn cuts_strategy() -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::vec(any::<usize>(), 0..12)
    }

    fn scale_cuts(cuts: &[usize], len: usize) -> Vec<usize> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn prop_round_trip_in_random_chunks(
            items in proptest::collection::vec(item_strategy(), 0..6),
            masks in proptest::collection::vec(any::<[u8; 4]>(), 1..4),
            cuts in cuts_strategy(),
        ) {
            let (stream, expected) = encode_items(&items, &masks);
            prop_assert_eq!(whole(&stream), (expected.clone(), None));
            let cuts = scale_cuts(&cuts, stream.len());
            prop_assert_eq!(run(&stream, &cuts, &LIMITS), (expected, None));
        }

        #[test]
        fn prop_every_split_point(
            items in proptest::collection::vec(item_strategy(), 1..4),
            masks in proptest::collection::vec(any::<[u8; 4]>(), 1..4),
        ) {
            let (stream, expected) = encode_items(&items, &masks);
            prop_assume!(stream.len() < 2000);
            for at in 0..=stream.len() {
                let outcome = run(&stream, &[at], &LIMITS);
                prop_assert_eq!(outcome, (expected.clone(), None), "split at {}", at);
            }
        }

        #[test]
        fn prop_mutated_streams_split_the_same(
            items in proptest::collection::vec(item_strategy(), 1..4),
            masks in proptest::collection::vec(any::<[u8; 4]>(), 1..4),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cuts in cuts_strategy(),
            small in any::<bool>(),
        ) {
            let (mut stream, _) = encode_items(&items, &masks);
            prop_assume!(!stream.is_empty());
            for (at, xor) in flips {
                let len = stream.len();
                stream[at % len] ^= xor;
            }
            let limits = if small {
                DecoderLimits { message_bytes_max: 100, fragments_max: 2, deflate: false }
            } else {
                LIMITS
            };
            let reference = run(&stream, &[], &limits);
            let cuts = scale_cuts(&cuts, stream.len());
            prop_assert_eq!(run(&stream, &cuts, &limits), reference.clone());
            if stream.len() < 600 {
                for at in 0..=stream.len() {
                    let outcome = run(&stream, &[at], &limits);
                    prop_assert_eq!(outcome, reference.clone(), "split at {}", at);
                }
            }
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(
            stream in proptest::collection::vec(any::<u8>(), 0..512),
            cuts in cuts_strategy(),
            message_bytes_max in 0usize..300,
            fragments_max in 0u32..4,
        ) {
            let limits = DecoderLimits { message_bytes_max, fragments_max, deflate: false };
            let reference = run(&stream, &[], &limits);
            let cuts = scale_cuts(&cuts, stream.len());
            prop_assert_eq!(run(&stream, &cuts, &limits), reference);
        }
    }
}
