//! Fuzzes `http::parse` the way a keep-alive connection drives it. Input: 1 byte of
//! configuration, then the client byte stream. Configuration bits 0-1 pick the limits (small
//! ones mostly, so that every limit is reached), bits 2-7 seed the read sizes.
//!
//! Checks beyond "no panic": `consumed` lies within the buffer and the limits, `Ok(None)` only
//! below the buffer bound `head_bytes_max + body_bytes_max`, every error has its response, and
//! feeding the stream whole and in pieces gives the same requests and the same error (the
//! parser is incremental). `src/http/tests.rs` runs the same checks on the seeds inside
//! `cargo test`; keep the two in step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::http::{HttpError, HttpLimits, Request, continue_expected, parse};

const LIMITS: [HttpLimits; 4] = [
    HttpLimits {
        head_bytes_max: 8 * 1024,
        headers_max: 64,
        body_bytes_max: 1024 * 1024,
    },
    HttpLimits {
        head_bytes_max: 64,
        headers_max: 4,
        body_bytes_max: 16,
    },
    HttpLimits {
        head_bytes_max: 256,
        headers_max: 8,
        body_bytes_max: 0,
    },
    HttpLimits {
        head_bytes_max: 1024,
        headers_max: 32,
        body_bytes_max: 4096,
    },
];

/// A connection's requests, the error that ended it (if one did), and the bytes left when it
/// is still open at the end.
type Outcome = (Vec<Request>, Option<HttpError>, Option<usize>);

fn run(stream: &[u8], limits: &HttpLimits, mut seed: u32) -> Outcome {
    let mut buf = Vec::new();
    let mut requests = Vec::new();
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
        buf.extend_from_slice(piece);
        loop {
            let _ = continue_expected(&buf, limits);
            match parse(&buf, limits) {
                Ok(Some((request, consumed))) => {
                    assert!(consumed > 0 && consumed <= buf.len());
                    assert!(consumed <= limits.head_bytes_max + limits.body_bytes_max);
                    assert!(request.body.len() <= limits.body_bytes_max);
                    assert!(request.path.len() + request.query.len() < limits.head_bytes_max);
                    buf.drain(..consumed);
                    let last = !request.keep_alive;
                    requests.push(request);
                    if last {
                        return (requests, None, None);
                    }
                }
                Ok(None) => {
                    assert!(buf.len() < limits.head_bytes_max + limits.body_bytes_max);
                    break;
                }
                Err(error) => {
                    let response = error.response();
                    let status = format!("HTTP/1.1 {} ", error.status());
                    assert!(response.starts_with(status.as_bytes()));
                    assert!(response.len() <= HttpError::RESPONSE_BYTES_MAX);
                    return (requests, Some(error), None);
                }
            }
        }
        if rest.is_empty() {
            return (requests, None, Some(buf.len()));
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
