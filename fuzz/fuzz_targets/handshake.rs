//! Fuzzes `handshake::parse`. Input: 2 bytes of `head_bytes_max` (big-endian), then the buffer.
//!
//! Checks beyond "no panic": the answer for any prefix is either "need more" or the answer for
//! the whole buffer (the parser is incremental), a parsed head lies within the buffer and the
//! limit, and every response can be built.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::proto::handshake::{self, Request};

fuzz_target!(|data: &[u8]| {
    let Some((max, buf)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = usize::from(u16::from_be_bytes(*max));
    let whole = handshake::parse(buf, max);
    match &whole {
        Ok(Some(Request {
            head_len,
            accept,
            protocols,
            ..
        })) => {
            assert!(*head_len <= buf.len() && *head_len <= max);
            assert_eq!(handshake::parse(&buf[..*head_len], max), whole);
            let response = handshake::response_101(accept, protocols.first().map(String::as_str), None);
            assert!(response.ends_with(b"\r\n\r\n"));
        }
        Ok(None) => assert!(buf.len() < max),
        Err(rejection) => assert!(!rejection.response().is_empty()),
    }
    // A handful of prefixes, spread over the buffer, rather than all of them: O(n) per input.
    let step = buf.len() / 8 + 1;
    for end in (0..buf.len()).step_by(step) {
        let prefix = handshake::parse(&buf[..end], max);
        assert!(
            prefix == Ok(None) || prefix == whole,
            "prefix {end}: {prefix:?} vs {whole:?}"
        );
    }
});
