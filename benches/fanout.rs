//! Encode-once fan-out: one published message encoded into `Bytes` once, then queued to N
//! subscribers' outbound queues, then each queue drained as the flush phase would (its batch
//! taken, its iovecs built, the send completed; no syscalls). Measures the user-space cost per
//! subscriber of the delivery path.
//!
//! `queue_copy_vs_share` measures the two ways a queue can hold a shared frame — copied into the
//! connection's buffer, or by handle (an atomic increment and decrement, a 32-byte handle, one
//! iovec per frame) — at each frame size, with 10,000 subscribers and 4 frames per loop turn:
//! where the copy stops being cheaper is `engine::outbound::COPY_FRAME_BYTES_MAX`.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringcast::engine::outbound::{Batch, Outbound, Owed};
use ringcast::wire::Body;
use ringcast::wire::encode_message;
use std::hint::black_box;

/// Drains every queue as a flush and its completions would, building the iovecs the driver
/// would hand the kernel.
fn drain(
    queues: &mut [Outbound],
    batch: &mut Batch,
    iov: &mut Vec<(usize, usize)>,
    owed: &mut Owed,
) {
    for q in queues {
        q.take_batch(64, batch, owed);
        iov.clear();
        iov.extend(batch.chunks().map(|c| (c.as_ptr() as usize, c.len())));
        let sent: usize = iov.iter().map(|&(_, len)| len).sum();
        q.complete(batch, black_box(sent), owed);
        batch.clear();
    }
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout_encode_once");
    for subscribers in [100usize, 1_000, 10_000] {
        let mut queues: Vec<Outbound> = (0..subscribers).map(|_| Outbound::default()).collect();
        let mut batch = Batch::with_capacity(64);
        let mut iov = Vec::with_capacity(64);
        let mut owed = Owed::default();
        let payload = Bytes::from(vec![b'x'; 64]);
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::new("deliver_and_drain", subscribers),
            &subscribers,
            |b, _| {
                let mut offset = 0u64;
                b.iter(|| {
                    offset += 1;
                    let (envelope, _raw) =
                        encode_message("bench:x", offset, &Body::Text(payload.clone()));
                    for q in &mut queues {
                        let _ = q.push_shared(&envelope, 1 << 20, &mut owed);
                    }
                    drain(&mut queues, &mut batch, &mut iov, &mut owed);
                });
            },
        );
    }
    group.finish();
}

fn copy_vs_share(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 10_000;
    const FRAMES_PER_TURN: usize = 4;
    let mut group = c.benchmark_group("queue_copy_vs_share");
    group.sample_size(20);
    for size in [16usize, 64, 256, 384, 512, 768, 1024, 2048, 4096] {
        let frames: Vec<Bytes> = (0..FRAMES_PER_TURN)
            .map(|i| Bytes::from(vec![b'a' + i as u8; size]))
            .collect();
        group.throughput(Throughput::Elements((SUBSCRIBERS * FRAMES_PER_TURN) as u64));
        for (mode, copy_max) in [("copy", usize::MAX), ("share", 0)] {
            let mut queues: Vec<Outbound> = (0..SUBSCRIBERS).map(|_| Outbound::default()).collect();
            let mut batch = Batch::with_capacity(64);
            let mut iov = Vec::with_capacity(64);
            let mut owed = Owed::default();
            group.bench_with_input(BenchmarkId::new(mode, size), &size, |b, _| {
                b.iter(|| {
                    for f in &frames {
                        for q in &mut queues {
                            let _ = q.push_shared_with(f, copy_max, 1 << 24, &mut owed);
                        }
                    }
                    drain(&mut queues, &mut batch, &mut iov, &mut owed);
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, fanout, copy_vs_share);
criterion_main!(benches);
