//! The client frame decoder (RFC 6455 §5): incremental, unmasks in place, validates text as it
//! arrives, enforces the message size and fragment-count limits.

use std::ops::ControlFlow;

/// Limits the decoder enforces (copied from the endpoint's `Limits`).
#[derive(Debug, Clone, Copy)]
pub struct DecoderLimits {
    /// Largest message (sum of its fragments' payloads); above it: close 1009.
    pub message_bytes_max: usize,
    /// Most frames one fragmented message may have; above it: close 1009.
    pub fragments_max: u32,
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
}

impl ProtocolError {
    /// The close code to send (1002, 1007 or 1009).
    pub fn close_code(self) -> u16 {
        todo!()
    }
}

/// Per-connection decoder state. Idle, it owns no heap memory.
#[derive(Debug, Default)]
pub struct Decoder {}

impl Decoder {
    /// Decodes `input` (unmasking it in place), calling `sink` for each complete message or
    /// control frame. `sink` returns `Break` to stop (after a close frame): the rest is dropped.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        limits: &DecoderLimits,
        sink: &mut dyn FnMut(Message<'_>) -> ControlFlow<()>,
    ) -> Result<(), ProtocolError> {
        todo!("{input:?}{limits:?}{}", sink as *const _ as *const u8 as usize)
    }

    /// Heap bytes held for a partial frame or message.
    pub fn heap_bytes(&self) -> usize {
        todo!()
    }
}
