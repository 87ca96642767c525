//! Fuzzes the control protocol: the bounded line splitter and the request parser. Input: 1 byte
//! choosing the line limit (16..=4111 bytes), then the stream.
//!
//! Checks beyond "no panic": feeding the stream in two pieces gives the same lines as feeding it
//! whole, every line handed out respects the limit, and every refusal has a stable code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::control::{LineSplitter, parse};

fn lines(chunks: &[&[u8]], max: usize) -> Vec<Option<Vec<u8>>> {
    let mut splitter = LineSplitter::default();
    let mut out = Vec::new();
    for chunk in chunks {
        splitter.feed(chunk, max, &mut |line| out.push(line.ok().map(<[u8]>::to_vec)));
        assert!(splitter.buffered() <= max);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, stream)) = data.split_first() else { return };
    let max = 16 + usize::from(m) * 16;
    let whole = lines(&[stream], max);
    let cut = stream.len() / 2;
    assert_eq!(lines(&[&stream[..cut], &stream[cut..]], max), whole);
    for line in whole.into_iter().flatten() {
        assert!(line.len() <= max);
        match parse(&line) {
            Ok(request) => assert!(request.id.is_none_or(|id| id.len() <= 64)),
            Err(e) => assert!(matches!(e.code.as_str(), "bad_json" | "unknown_method" | "bad_params")),
        }
    }
});
