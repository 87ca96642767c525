//! Cross-shard messaging: one bounded lock-free SPSC ring per ordered pair of shards, an eventfd
//! doorbell per receiving shard, and a bounded local overflow queue per sender and destination.
//!
//! This module knows nothing about WebSocket: it moves values of any `T` between threads.
//!
//! Doorbell protocol (no lost wake-up): the receiver drains its rings, marks itself sleeping,
//! drains again, and only then blocks on its eventfd. A sender pushes, then rings only a
//! receiver marked sleeping. Both sides order "data, then flag" with SeqCst fences, so either
//! the sender sees the flag and rings, or the receiver's second drain sees the data.
//!
//! Overflow: a full ring never blocks a shard. The message goes to the sender's local overflow
//! queue (counted), which is retried each loop turn before any newer message, so order is kept.
//! When the overflow queue is full too, `send` refuses the message (counted) and the caller
//! decides; `send_unbounded` queues it anyway, for messages the caller must never lose and whose
//! number is bounded by other means.
//!
//! The rings are plain memory; only the doorbell makes a system call (an eventfd write), and it
//! is rung by the driver, never by the code that sends: `Outbox::flush` says when to ring.

use rtrb::{Consumer, Producer, PushError, RingBuffer};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};

/// A shard's wake-up: an eventfd plus the "I am about to sleep" flag.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
    sleeping: AtomicBool,
}

impl Doorbell {
    /// A new doorbell. The eventfd is blocking: io_uring waits on it with a read that completes
    /// when the counter is non-zero.
    pub fn new() -> io::Result<Doorbell> {
        // SAFETY: plain eventfd(2); the fd is owned at once.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Doorbell {
            // SAFETY: a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(false),
        })
    }

    /// The eventfd the receiver waits on.
    pub fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Receiver: about to sleep (call, then drain once more before blocking).
    pub fn set_sleeping(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Receiver: awake again.
    pub fn set_awake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Sender: wakes the receiver if it sleeps. Returns whether it rang.
    pub fn ring(&self) -> bool {
        fence(Ordering::SeqCst);
        if !self.sleeping.load(Ordering::SeqCst) {
            return false;
        }
        self.sleeping.store(false, Ordering::Relaxed);
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd; EAGAIN (counter saturated) still wakes.
        unsafe {
            libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
        true
    }
}

/// What happened to a message handed to an `Outbox`.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent<T> {
    /// In the ring.
    Ring,
    /// In the local overflow queue (the ring was full); it will be retried.
    Overflow,
    /// Refused: ring and overflow queue are both full. The message comes back.
    Refused(T),
}

/// The sending end towards one destination shard.
pub struct Outbox<T> {
    producer: Producer<T>,
    overflow: VecDeque<T>,
    overflow_max: usize,
    pushed_since_ring: bool,
    /// Messages that went to the overflow queue.
    pub overflowed: u64,
    /// Messages refused because the overflow queue was full.
    pub refused: u64,
}

impl<T> Outbox<T> {
    /// Sends `msg`, never blocking.
    pub fn send(&mut self, msg: T) -> Sent<T> {
        let msg = if self.overflow.is_empty() {
            match self.producer.push(msg) {
                Ok(()) => {
                    self.pushed_since_ring = true;
                    return Sent::Ring;
                }
                Err(PushError::Full(msg)) => msg,
            }
        } else {
            msg
        };
        if self.overflow.len() >= self.overflow_max {
            self.refused += 1;
            return Sent::Refused(msg);
        }
        self.overflowed += 1;
        self.overflow.push_back(msg);
        Sent::Overflow
    }

    /// Sends `msg`, never blocking and never refusing: past `overflow_max` the overflow queue
    /// still takes it, in order behind everything queued before it.
    pub fn send_unbounded(&mut self, msg: T) -> Sent<T> {
        if self.overflow.is_empty() {
            match self.producer.push(msg) {
                Ok(()) => {
                    self.pushed_since_ring = true;
                    Sent::Ring
                }
                Err(PushError::Full(msg)) => {
                    self.overflowed += 1;
                    self.overflow.push_back(msg);
                    Sent::Overflow
                }
            }
        } else {
            self.overflowed += 1;
            self.overflow.push_back(msg);
            Sent::Overflow
        }
    }

    /// Moves overflowed messages into the ring while it has room; returns whether anything was
    /// pushed since the last call (the receiver's doorbell must then be rung). Once per turn.
    pub fn flush(&mut self) -> bool {
        while let Some(msg) = self.overflow.pop_front() {
            match self.producer.push(msg) {
                Ok(()) => self.pushed_since_ring = true,
                Err(PushError::Full(msg)) => {
                    self.overflow.push_front(msg);
                    break;
                }
            }
        }
        std::mem::take(&mut self.pushed_since_ring)
    }

    /// Messages waiting in the overflow queue.
    pub fn overflow_len(&self) -> usize {
        self.overflow.len()
    }
}

/// The receiving end of a shard: one consumer per other shard.
pub struct Inbox<T> {
    consumers: Vec<Consumer<T>>,
    /// The ring served first by the next `drain` (rotates, so no ring is always first).
    next: usize,
}

/// Messages taken from one ring before the next ring's turn, within one drain.
pub const DRAIN_QUANTUM: usize = 64;

impl<T> Inbox<T> {
    /// Pops up to `budget` messages, round-robin over the rings in turns of at most
    /// `DRAIN_QUANTUM`, starting one ring further each call: a ring that is always full cannot
    /// starve the others. Calls `f` on each message (per ring, in order); returns how many.
    pub fn drain(&mut self, budget: usize, mut f: impl FnMut(T)) -> usize {
        let n = self.consumers.len();
        if n == 0 {
            return 0;
        }
        let start = self.next % n;
        self.next = (start + 1) % n;
        let mut taken = 0;
        loop {
            let mut progress = false;
            for k in 0..n {
                let consumer = &mut self.consumers[(start + k) % n];
                let mut turn = 0;
                while taken < budget && turn < DRAIN_QUANTUM {
                    match consumer.pop() {
                        Ok(msg) => {
                            taken += 1;
                            turn += 1;
                            f(msg);
                        }
                        Err(_) => break,
                    }
                }
                progress |= turn > 0;
            }
            if !progress || taken >= budget {
                return taken;
            }
        }
    }

    /// Whether any ring holds a message.
    pub fn is_empty(&self) -> bool {
        self.consumers.iter().all(|c| c.is_empty())
    }
}

/// A single bounded SPSC ring from one producer thread to one shard (the broker bridge's
/// events): unlike an [`Outbox`] it has no overflow queue, so a full ring refuses the message
/// and counts it in `dropped`, which both ends share.
pub fn lane<T>(capacity: usize) -> (LaneTx<T>, LaneRx<T>) {
    assert!(capacity > 0);
    let (producer, consumer) = RingBuffer::new(capacity);
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    (
        LaneTx {
            producer,
            dropped: dropped.clone(),
        },
        LaneRx { consumer, dropped },
    )
}

/// The producing end of a [`lane`].
pub struct LaneTx<T> {
    producer: Producer<T>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl<T> LaneTx<T> {
    /// Pushes `msg`, never blocking; a full ring drops it (counted). Returns whether it went in.
    pub fn push(&mut self, msg: T) -> bool {
        match self.producer.push(msg) {
            Ok(()) => true,
            Err(PushError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// The consuming end of a [`lane`].
pub struct LaneRx<T> {
    consumer: Consumer<T>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl<T> LaneRx<T> {
    /// Pops up to `budget` messages, calling `f` on each in order; returns how many.
    pub fn drain(&mut self, budget: usize, mut f: impl FnMut(T)) -> usize {
        let mut taken = 0;
        while taken < budget {
            match self.consumer.pop() {
                Ok(msg) => {
                    taken += 1;
                    f(msg);
                }
                Err(_) => break,
            }
        }
        taken
    }

    /// Messages the producer dropped because the ring was full, since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One shard's ends of the mesh: an outbox per destination (`None` for itself) and its inbox.
pub struct Endpoints<T> {
    /// Outboxes indexed by destination shard.
    pub outboxes: Vec<Option<Outbox<T>>>,
    /// This shard's inbox.
    pub inbox: Inbox<T>,
}

/// One doorbell per shard (the driver of shard `i` waits on `bells[i]` and rings the others').
pub fn doorbells(shards: usize) -> io::Result<Vec<Arc<Doorbell>>> {
    (0..shards).map(|_| Doorbell::new().map(Arc::new)).collect()
}

/// Builds the full mesh for `shards` shards: `shards * (shards - 1)` rings of `capacity`.
/// Plain memory, no system call.
pub fn mesh<T>(shards: usize, capacity: usize, overflow_max: usize) -> Vec<Endpoints<T>> {
    let mut outboxes: Vec<Vec<Option<Outbox<T>>>> = (0..shards)
        .map(|_| (0..shards).map(|_| None).collect())
        .collect();
    let mut consumers: Vec<Vec<Consumer<T>>> = (0..shards).map(|_| Vec::new()).collect();
    #[allow(clippy::needless_range_loop)] // both indexes address two tables
    for from in 0..shards {
        for to in 0..shards {
            if from == to {
                continue;
            }
            let (producer, consumer) = RingBuffer::new(capacity);
            outboxes[from][to] = Some(Outbox {
                producer,
                overflow: VecDeque::new(),
                overflow_max,
                pushed_since_ring: false,
                overflowed: 0,
                refused: 0,
            });
            consumers[to].push(consumer);
        }
    }
    outboxes
        .into_iter()
        .zip(consumers)
        .map(|(outboxes, consumers)| Endpoints {
            outboxes,
            inbox: Inbox { consumers, next: 0 },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_lane_drops_and_counts() {
        let (mut tx, mut rx) = lane::<u32>(2);
        assert!(tx.push(1));
        assert!(tx.push(2));
        assert!(!tx.push(3));
        assert_eq!(rx.dropped(), 1);
        let mut got = Vec::new();
        assert_eq!(rx.drain(1, |m| got.push(m)), 1);
        assert!(tx.push(4));
        rx.drain(10, |m| got.push(m));
        assert_eq!(got, vec![1, 2, 4]);
    }

    #[test]
    fn overflow_keeps_order_and_refuses_past_its_bound() {
        let mut ends = mesh::<u32>(2, 2, 2);
        let mut b = ends.pop().unwrap();
        let mut a = ends.pop().unwrap();
        let out = a.outboxes[1].as_mut().unwrap();
        assert_eq!(out.send(1), Sent::Ring);
        assert_eq!(out.send(2), Sent::Ring);
        assert_eq!(out.send(3), Sent::Overflow);
        assert_eq!(out.send(4), Sent::Overflow);
        assert_eq!(out.send(5), Sent::Refused(5));
        let mut got = Vec::new();
        b.inbox.drain(1, |m| got.push(m));
        out.flush(); // 3 moves into the freed slot
        assert_eq!(
            out.send(6),
            Sent::Overflow,
            "must queue behind 4 to keep order"
        );
        b.inbox.drain(100, |m| got.push(m));
        out.flush();
        b.inbox.drain(100, |m| got.push(m));
        out.flush();
        b.inbox.drain(100, |m| got.push(m));
        assert_eq!(got, vec![1, 2, 3, 4, 6]);
        assert_eq!((out.overflowed, out.refused), (3, 1));
    }

    #[test]
    fn unbounded_sends_pass_the_bound_in_order() {
        let mut ends = mesh::<u32>(2, 1, 1);
        let mut b = ends.pop().unwrap();
        let mut a = ends.pop().unwrap();
        let out = a.outboxes[1].as_mut().unwrap();
        assert_eq!(out.send(1), Sent::Ring);
        assert_eq!(out.send(2), Sent::Overflow);
        assert_eq!(out.send(3), Sent::Refused(3));
        assert_eq!(out.send_unbounded(4), Sent::Overflow);
        assert_eq!(out.send_unbounded(5), Sent::Overflow);
        let mut got = Vec::new();
        for _ in 0..5 {
            b.inbox.drain(100, |m| got.push(m));
            out.flush();
        }
        assert_eq!(got, vec![1, 2, 4, 5]);
    }

    #[test]
    fn drain_is_round_robin_over_rings() {
        // Shard 0 receives from 1, 2 and 3; ring 1 is far fuller than the others.
        let mut ends = mesh::<(usize, usize)>(4, 1024, 0);
        for (from, count) in [(1, 1000), (2, 10), (3, 10)] {
            let out = ends[from].outboxes[0].as_mut().unwrap();
            for i in 0..count {
                assert_eq!(out.send((from, i)), Sent::Ring);
            }
        }
        let mut got = Vec::new();
        ends[0].inbox.drain(3 * DRAIN_QUANTUM, |m| got.push(m));
        let from = |r: usize| got.iter().filter(|m| m.0 == r).count();
        assert_eq!(
            (from(2), from(3)),
            (10, 10),
            "small rings are served in the same drain"
        );
        assert_eq!(from(1), 3 * DRAIN_QUANTUM - 20);
        // Order within a ring is kept.
        let ones: Vec<usize> = got.iter().filter(|m| m.0 == 1).map(|m| m.1).collect();
        assert!(ones.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[test]
    fn doorbell_rings_only_a_sleeping_receiver() {
        let mut ends = mesh::<u8>(2, 8, 8);
        let bells = doorbells(2).unwrap();
        let bell = bells[1].clone();
        let out = ends[0].outboxes[1].as_mut().unwrap();
        out.send(1);
        assert!(out.flush(), "a push since the last flush asks for a ring");
        assert!(!bell.ring(), "an awake receiver must not be rung");
        assert!(!readable(bell.fd()));
        bell.set_sleeping();
        out.send(2);
        assert!(out.flush());
        assert!(bell.ring());
        assert!(readable(bell.fd()), "a sleeping receiver must be rung");
        assert!(!out.flush(), "nothing new: no ring");
    }

    fn readable(fd: i32) -> bool {
        let mut fds = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one valid fd without waiting.
        unsafe { libc::poll(&mut fds, 1, 0) == 1 }
    }

    /// Two threads, one ring each way, many messages: nothing lost, nothing reordered, no
    /// lost wake-up. Run with `cargo test --release -- --ignored xshard`.
    #[test]
    #[ignore]
    fn xshard_stress_no_loss_no_reorder() {
        const N: u64 = 5_000_000;
        let mut ends = mesh::<u64>(2, 1024, 1 << 16);
        let mut b = ends.pop().unwrap();
        let mut a = ends.pop().unwrap();
        let bells = doorbells(2).unwrap();
        let bell_b = bells[1].clone();
        let producer = std::thread::spawn(move || {
            let out = a.outboxes[1].as_mut().unwrap();
            let mut next = 0;
            while next < N {
                match out.send(next) {
                    Sent::Ring | Sent::Overflow => next += 1,
                    Sent::Refused(_) => {
                        if out.flush() {
                            bell_b.ring();
                        }
                    }
                }
                if next % 64 == 0 && out.flush() {
                    bell_b.ring();
                }
            }
            while out.overflow_len() > 0 {
                if out.flush() {
                    bell_b.ring();
                }
            }
            if out.flush() {
                bell_b.ring();
            }
        });
        let mut expected = 0u64;
        let bell = bells[1].clone();
        while expected < N {
            let mut taken = b.inbox.drain(4096, |m| {
                assert_eq!(m, expected);
                expected += 1;
            });
            if taken == 0 {
                bell.set_sleeping();
                taken = b.inbox.drain(4096, |m| {
                    assert_eq!(m, expected);
                    expected += 1;
                });
                if taken == 0 {
                    let mut fds = libc::pollfd {
                        fd: bell.fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: polling one valid fd; a 1 s timeout turns a lost wake-up into a
                    // visible stall instead of a hang.
                    let ready = unsafe { libc::poll(&mut fds, 1, 1000) };
                    assert_eq!(ready, 1, "lost wake-up at message {expected}");
                    let mut counter = 0u64;
                    // SAFETY: reading our eventfd.
                    unsafe { libc::read(bell.fd(), (&mut counter as *mut u64).cast(), 8) };
                }
                bell.set_awake();
            }
        }
        producer.join().unwrap();
    }
}
