//! Benchmarks of the sans-IO protocol code: handshake parsing, frame decoding by payload size
//! (whole in one read, and cut in two so the copying path runs), and unmasking word-at-a-time
//! against the byte-at-a-time loop of RFC 6455 §5.3. Compare the variants as ratios within one
//! run; absolute figures depend on the machine.

use std::hint::black_box;
use std::ops::ControlFlow;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringcast::proto::decoder::{Decoder, DecoderLimits, Message};
use ringcast::proto::frame::{OpCode, encode_client};
use ringcast::proto::handshake;
use ringcast::proto::mask::apply_mask;

const SIZES: [usize; 4] = [16, 125, 1024, 64 * 1024];

const LIMITS: DecoderLimits = DecoderLimits {
    message_bytes_max: 1 << 20,
    fragments_max: 64,
    deflate: false,
};

/// The example request of RFC 6455 §1.2.
const RFC_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\n\
Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

/// What a current desktop browser sends: more headers, a long User-Agent and cookies.
const BROWSER_REQUEST: &[u8] = b"GET /ws?channels=news,sport&token=abcdef0123456789 HTTP/1.1\r\n\
Host: push.example.com\r\nConnection: Upgrade\r\nPragma: no-cache\r\n\
Cache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 \
(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\nUpgrade: websocket\r\n\
Origin: https://www.example.com\r\nSec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-GB,en;q=0.9,de;q=0.8\r\n\
Cookie: session=0123456789abcdef0123456789abcdef; theme=dark; consent=yes\r\n\
Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

fn handshake_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake_parse");
    for (name, request) in [("rfc", RFC_REQUEST), ("browser", BROWSER_REQUEST)] {
        assert!(matches!(handshake::parse(request, 8192), Ok(Some(_))));
        group.throughput(Throughput::Bytes(request.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), request, |b, request| {
            b.iter(|| handshake::parse(black_box(request), 8192))
        });
    }
    group.finish();
}

/// Decodes `frame` in two reads cut at `split`; returns the payload bytes delivered.
fn decode(decoder: &mut Decoder, frame: &mut [u8], split: usize) -> usize {
    let mut delivered = 0;
    let mut sink = |m: Message<'_>| {
        if let Message::Binary(payload) = m {
            delivered += black_box(payload).len();
        }
        ControlFlow::Continue(())
    };
    let (first, second) = frame.split_at_mut(split);
    let outcome = decoder.feed(first, &LIMITS, &mut sink);
    let outcome = outcome.and_then(|()| decoder.feed(second, &LIMITS, &mut sink));
    assert_eq!(outcome, Ok(()));
    delivered
}

fn frame_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_decode");
    for size in SIZES {
        // A binary frame decoded again and again from the same buffer: unmasking in place twice
        // restores it, and a binary payload needs no particular content, so no copy per run.
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut frame = encode_client(OpCode::Binary, true, &payload, [0x37, 0xfa, 0x21, 0x3d]);
        let frame_len = frame.len();
        let header_len = frame_len - size;
        group.throughput(Throughput::Bytes(size as u64));
        // Whole: the frame is in one read and lent to the sink without a copy.
        group.bench_function(BenchmarkId::new("whole", size), |b| {
            let mut decoder = Decoder::default();
            b.iter(|| decode(&mut decoder, black_box(&mut frame), frame_len))
        });
        // Split: the read ends in the middle of the payload, so the payload is assembled.
        group.bench_function(BenchmarkId::new("split", size), |b| {
            let mut decoder = Decoder::default();
            b.iter(|| decode(&mut decoder, black_box(&mut frame), header_len + size / 2))
        });
    }
    group.finish();
}

/// The literal §5.3 loop, the baseline for `apply_mask`.
fn naive_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= mask[(offset + i) % 4];
    }
}

fn unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    for size in SIZES {
        let mut buf = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("word", size), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), black_box(mask), black_box(1)))
        });
        group.bench_function(BenchmarkId::new("naive", size), |b| {
            b.iter(|| naive_mask(black_box(&mut buf), black_box(mask), black_box(1)))
        });
    }
    group.finish();
}

/// permessage-deflate's cost per message at the owner (once per message, whatever the number of
/// subscribers): the 2,119-byte JSON document of the Chromium check and its first 1,024 bytes
/// closed into a JSON document of that size, compressed as `wire::Frames` does.
fn deflate_compress(c: &mut Criterion) {
    let doc = include_str!("../tests/conformance/lib/deflate-push.json").trim();
    // A 1 KiB JSON document from the same events: cut after an event, closed, padded to 1,024.
    let cut = doc[..1000]
        .rfind("},")
        .expect("the fixture holds several events")
        + 1;
    let mut kib = format!("{}]}}", &doc[..cut]);
    while kib.len() < 1024 {
        kib.insert(kib.len() - 2, ' ');
    }
    let mut group = c.benchmark_group("deflate_compress");
    let mut z = ringcast::proto::deflate::Compressor::default();
    let mut out = Vec::with_capacity(4096);
    for (name, payload) in [("json_1kib", kib.as_bytes()), ("json_2kib", doc.as_bytes())] {
        out.clear();
        z.compress(payload, &mut out);
        eprintln!("{name}: {} -> {} bytes", payload.len(), out.len());
        group.throughput(Throughput::Bytes(payload.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                z.compress(std::hint::black_box(payload), &mut out);
                out.len()
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    handshake_parse,
    frame_decode,
    unmask,
    deflate_compress
);
criterion_main!(benches);
