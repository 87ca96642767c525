//! Fuzzes `http::parse` the way a keep-alive connection drives it. Input: 1 byte of
//! configuration, then the client byte stream. Configuration bits 0-1 pick the limits (small
//! ones mostly, so that every limit is reached), bits 2-7 seed the read sizes.
//!
//! Checks beyond "no panic": `consumed` lies within the buffer and the limits, `Ok(None)` only
//! below the buffer bound `head_bytes_max + body_bytes_max`, every error has its response, and
//! feeding the stream whole and in pieces gives the same requests and the same error (the
//! parser is incremental). The checks live in `ringcast::http::fuzz`, which the seeded run inside
//! `cargo test` (`src/http/tests.rs`) uses too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringcast::http::fuzz::check(data);
});
