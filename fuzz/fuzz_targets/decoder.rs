//! Fuzzes `Decoder::feed`. Input: 1 byte of configuration, then the client byte stream.
//! Configuration bits 0-1 pick the limits, bits 2-7 seed the read sizes.
//!
//! Checks beyond "no panic": feeding the stream whole and in pieces yields the same messages and
//! the same error (the decoder is incremental), the heap stays within the limit, and an idle
//! decoder holds no heap.
#![no_main]

use std::ops::ControlFlow;

use libfuzzer_sys::fuzz_target;
use ringcast::proto::decoder::{Decoder, DecoderLimits, Message, ProtocolError};

const LIMITS: [DecoderLimits; 4] = [
    DecoderLimits {
        message_bytes_max: 1 << 20,
        fragments_max: 64,
        deflate: false,
    },
    DecoderLimits {
        message_bytes_max: 100,
        fragments_max: 2,
        deflate: false,
    },
    DecoderLimits {
        message_bytes_max: 0,
        fragments_max: 1,
        deflate: false,
    },
    DecoderLimits {
        message_bytes_max: 65_536,
        fragments_max: 1_000,
        deflate: false,
    },
];

/// A delivered message, owned: its kind byte and its bytes (close: code then reason).
type Owned = (u8, Vec<u8>);

fn own(message: Message<'_>) -> Owned {
    match message {
        Message::Text(t) => {
            assert!(std::str::from_utf8(t).is_ok());
            (1, t.to_vec())
        }
        Message::Binary(b) => (2, b.to_vec()),
        Message::Ping(p) => (9, p.to_vec()),
        Message::Pong(p) => (10, p.to_vec()),
        Message::Compressed { text, payload } => (if text { 0x41 } else { 0x42 }, payload.to_vec()),
        Message::Close { code, reason } => {
            let mut bytes = code.map(u16::to_be_bytes).unwrap_or_default().to_vec();
            bytes.extend(reason.as_bytes());
            (8, bytes)
        }
    }
}

fn run(
    stream: &[u8],
    limits: &DecoderLimits,
    mut seed: u32,
) -> (Vec<Owned>, Option<ProtocolError>) {
    let mut decoder = Decoder::default();
    let mut messages = Vec::new();
    let mut rest = stream;
    loop {
        // Read sizes from a tiny xorshift; seed 0 means "all at once".
        let take = if seed == 0 {
            rest.len()
        } else {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (1 + seed as usize % 97).min(rest.len())
        };
        let (piece, tail) = rest.split_at(take);
        rest = tail;
        let result = decoder.feed(&mut piece.to_vec(), limits, &mut |m| {
            let close = matches!(m, Message::Close { .. });
            messages.push(own(m));
            if close {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert!(decoder.heap_bytes() <= limits.message_bytes_max + 125);
        if decoder.is_idle() {
            assert_eq!(decoder.heap_bytes(), 0);
        }
        if let Err(error) = result {
            return (messages, Some(error));
        }
        if rest.is_empty() {
            return (messages, None);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, stream)) = data.split_first() else {
        return;
    };
    let limits = LIMITS[usize::from(config & 3)];
    let whole = run(stream, &limits, 0);
    let pieces = run(stream, &limits, u32::from(config >> 2) | 0x100);
    assert_eq!(whole, pieces);
});
