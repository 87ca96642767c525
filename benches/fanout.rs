//! Encode-once fan-out: one published message encoded into `Bytes` once, its handle cloned into
//! N outbound queues, then each queue drained as the flush phase would (no syscalls). Measures
//! the user-space cost per subscriber of the delivery path.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringcast::engine::outbound::Outbound;
use ringcast::wire::Body;
use ringcast::wire::encode_message;
use std::hint::black_box;

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout_encode_once");
    for subscribers in [100usize, 1_000, 10_000] {
        let mut queues: Vec<Outbound> = (0..subscribers).map(|_| Outbound::default()).collect();
        let mut batch = Vec::with_capacity(64);
        let mut total = 0usize;
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
                        let _ = q.push(envelope.clone(), 1 << 20, &mut total);
                    }
                    for q in &mut queues {
                        q.take_batch(64, &mut batch);
                        let sent: usize = batch.iter().map(|f| f.len()).sum();
                        q.complete(&mut batch, black_box(sent), &mut total);
                    }
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
