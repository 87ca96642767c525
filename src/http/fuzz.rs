//! The checks of the HTTP fuzz target, shared by `fuzz/fuzz_targets/http.rs` and the seeded run
//! inside `cargo test` (`tests.rs`), so the two cannot drift apart. Not part of the server's
//! behaviour: it drives [`parse`](super::parse) the way a keep-alive connection does and
//! asserts its invariants (`consumed` within the buffer and the limits, `Ok(None)` only below
//! `head_bytes_max + body_bytes_max`, every error with its response, the same outcome whole and
//! in pieces). A failed assertion is the finding.

use super::{HttpError, HttpLimits, Request, continue_expected, parse};

/// The fuzz target's limits, picked by bits 0-1 of its first byte.
pub const LIMITS: [HttpLimits; 4] = [
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

/// What a connection makes of a stream: its requests, the error that ended it (if one did),
/// and the bytes left in the buffer when it is still open at the end (how many bytes had
/// arrived when it closed depends on the reads).
pub type Outcome = (Vec<Request>, Option<HttpError>, Option<usize>);

/// Feeds `stream` the way a connection does: append a read, parse and drain until more bytes
/// are needed; stop at an error or after a request without keep-alive. Read sizes come from a
/// tiny xorshift; seed 0 means "all at once".
pub fn run(stream: &[u8], limits: &HttpLimits, mut seed: u32) -> Outcome {
    let mut buf = Vec::new();
    let mut requests = Vec::new();
    let mut rest = stream;
    loop {
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
                    // The caller's buffer bound: an answer comes before it is reached.
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

/// One fuzz input: 1 byte of configuration (bits 0-1 the limits, bits 2-7 the read sizes),
/// then the stream. Fed whole and in pieces, it gives the same outcome.
pub fn check(data: &[u8]) -> Outcome {
    let Some((&config, stream)) = data.split_first() else {
        return (Vec::new(), None, Some(0));
    };
    let limits = LIMITS[usize::from(config & 3)];
    let whole = run(stream, &limits, 0);
    let pieces = run(stream, &limits, u32::from(config >> 2) | 0x100);
    assert_eq!(whole, pieces, "{stream:?}");
    whole
}
