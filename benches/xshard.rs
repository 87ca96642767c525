//! Cross-shard rings: push/pop throughput on one thread, and the doorbell round trip between two
//! threads (send, the receiver wakes from its eventfd, answers, the sender wakes from its own).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringcast::xshard::{Sent, doorbells, mesh};
use std::hint::black_box;

fn wait_readable(fd: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polling one valid fd.
    unsafe { libc::poll(&mut p, 1, 1000) };
    let mut counter = 0u64;
    // SAFETY: reading our own eventfd after poll said it is readable.
    unsafe { libc::read(fd, (&mut counter as *mut u64).cast(), 8) };
}

fn push_pop(c: &mut Criterion) {
    let mut group = c.benchmark_group("xshard_ring");
    for batch in [1usize, 64, 1024] {
        let mut ends = mesh::<u64>(2, 4096, 0);
        let mut b_end = ends.pop().unwrap();
        let mut a_end = ends.pop().unwrap();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("push_then_drain", batch),
            &batch,
            |b, &batch| {
                let out = a_end.outboxes[1].as_mut().unwrap();
                b.iter(|| {
                    for i in 0..batch as u64 {
                        assert!(matches!(out.send(i), Sent::Ring));
                    }
                    let mut sum = 0;
                    b_end.inbox.drain(batch, |m| sum += m);
                    black_box(sum)
                });
            },
        );
    }
    group.finish();
}

fn doorbell_round_trip(c: &mut Criterion) {
    let mut ends = mesh::<u64>(2, 1024, 0);
    let mut b_end = ends.pop().unwrap();
    let mut a_end = ends.pop().unwrap();
    let bells = doorbells(2).unwrap();
    let (bell_a, bell_b) = (bells[0].clone(), bells[1].clone());
    let bell_a2 = bell_a.clone();
    let bell_b_echo = bell_b.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    // The echo side: sleep on its doorbell, answer every message.
    let echo = std::thread::spawn(move || {
        let bell = bell_b_echo;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let mut got = Vec::new();
            if b_end.inbox.drain(64, |m| got.push(m)) == 0 {
                bell.set_sleeping();
                if b_end.inbox.drain(64, |m| got.push(m)) == 0 {
                    wait_readable(bell.fd());
                }
                bell.set_awake();
            }
            let out = b_end.outboxes[0].as_mut().unwrap();
            for m in got {
                out.send(m);
            }
            if out.flush() {
                bell_a2.ring();
            }
        }
    });
    let bell = bell_a.clone();
    c.bench_function("xshard_doorbell_round_trip", |b| {
        b.iter(|| {
            let out = a_end.outboxes[1].as_mut().unwrap();
            out.send(7);
            if out.flush() {
                bell_b.ring();
            }
            loop {
                let mut n = a_end.inbox.drain(1, |m| assert_eq!(m, 7));
                if n == 0 {
                    bell.set_sleeping();
                    n = a_end.inbox.drain(1, |m| assert_eq!(m, 7));
                    if n == 0 {
                        wait_readable(bell.fd());
                    }
                    bell.set_awake();
                }
                if n > 0 {
                    break;
                }
            }
        });
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let out = a_end.outboxes[1].as_mut().unwrap();
    out.send(0);
    out.flush();
    bells[1].set_sleeping();
    bells[1].ring();
    echo.join().unwrap();
}

criterion_group!(benches, push_pop, doorbell_round_trip);
criterion_main!(benches);
