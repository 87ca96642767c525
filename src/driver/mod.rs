//! Drivers: the thin loops that run an [`Engine`] over a kernel
//! interface. Only this module (and `xshard`'s doorbell) talks to the kernel.
//!
//! - [`uring`]: io_uring — multishot accept, multishot receive into a provided-buffer ring,
//!   one vectored `SENDMSG` per connection per turn (Linux 6.1+);
//! - [`epoll`]: readiness — non-blocking sockets, one shared receive buffer per shard, one
//!   `writev` per connection per turn; for hosts and containers where io_uring is blocked;
//! - [`memory`]: no kernel at all — sockets are byte queues and time is a number, so tests of
//!   the engine are deterministic;
//! - [`socket`]: listeners and the socket calls both Linux drivers share.
//!
//! Every driver loop turn has the same phases: cross-shard inbox → outboxes (ring doorbells) →
//! flush (sends) → wait for I/O or the next tick → complete (events into the engine, intents out)
//! → tick. The doorbell protocol (drain, mark sleeping, drain again, then wait) is the same.

pub mod epoll;
pub mod memory;
pub mod socket;
pub mod uring;

use crate::engine::Engine;
use crate::engine::io::{SendResult, Sock, Token, Transmit};
use crate::engine::outbound::Batch;
use crate::xshard::Doorbell;
use bytes::Bytes;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// A monotonic clock in µs shared by every shard (one origin for the process), so a timestamp
/// taken on one shard can be compared on another (the delivery-latency sample).
pub fn monotonic_us() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
}
use std::sync::atomic::AtomicBool;

/// Input bytes handled per loop turn before the shard flushes what they produced: a backend
/// pipelining megabytes of publishes then produces bounded bursts per turn, which subscribers'
/// queues absorb, instead of one burst as large as everything the kernel had buffered.
pub const RECV_BYTES_PER_TURN: usize = 256 * 1024;

/// What a Linux driver gets from the server besides its engine: sockets, doorbells, the stop
/// flag.
pub struct ShardIo {
    /// This shard's `SO_REUSEPORT` WebSocket listener.
    pub listener: OwnedFd,
    /// This shard's duplicates of the control listeners.
    pub control_listeners: Vec<OwnedFd>,
    /// Every shard's doorbell, by shard index (this shard waits on its own, rings the others').
    pub bells: Vec<Arc<Doorbell>>,
    /// Set to start a graceful shutdown; polled once per loop turn.
    pub stop: Arc<AtomicBool>,
}

/// A send handed to the kernel: the frames (and whatever the driver's system call points at,
/// `X`) belong to the slot until the send completes. Boxed in the pool, so the kernel's pointers
/// into a slot stay valid when the pool grows.
pub struct SendSlot<X> {
    /// The connection.
    pub token: Token,
    /// Its socket.
    pub sock: Sock,
    /// The batch being sent.
    pub frames: Batch,
    /// The driver's own per-send data (iovecs, `msghdr`).
    pub extra: X,
}

/// The send slots of one shard, created on demand up to `sends_in_flight_max`; both Linux
/// drivers' `Transmit`.
pub struct SendPool<X> {
    // Boxed on purpose: see `SendSlot`.
    #[allow(clippy::vec_box)]
    slots: Vec<Box<SendSlot<X>>>,
    free: Vec<u16>,
    max: usize,
    initial_frames: usize,
    /// Slots filled during a flush, for the driver to send after it.
    pub submitted: Vec<u16>,
}

impl<X: Default> SendPool<X> {
    /// A pool of at most `max` slots, each starting with room for `initial_frames` frames
    /// (most sends carry a frame or two; a slot grows only for a connection with a backlog).
    pub fn new(max: usize, initial_frames: usize) -> SendPool<X> {
        SendPool {
            slots: Vec::new(),
            free: Vec::new(),
            max,
            initial_frames,
            submitted: Vec::new(),
        }
    }

    /// Slot `index` (a submitted one).
    pub fn slot(&mut self, index: u16) -> &mut SendSlot<X> {
        &mut self.slots[index as usize]
    }

    /// Reports the send of slot `index` to the engine and frees the slot.
    pub fn complete(&mut self, index: u16, engine: &mut Engine, result: SendResult) {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        let mut frames = std::mem::take(&mut slot.frames);
        engine.on_sent(slot.token, &mut frames, result);
        // Empty again, keeping a small buffer's capacity for the next send.
        frames.clear();
        slot.frames = frames;
        self.free.push(index);
    }
}

impl<X: Default> Transmit for SendPool<X> {
    fn reserve(&mut self) -> Option<(usize, &mut Batch)> {
        let index = match self.free.pop() {
            Some(index) => index as usize,
            None if self.slots.len() < self.max => {
                self.slots.push(Box::new(SendSlot {
                    token: Token {
                        slot: 0,
                        generation: 0,
                    },
                    sock: Sock(-1),
                    frames: Batch::with_capacity(self.initial_frames),
                    extra: X::default(),
                }));
                self.slots.len() - 1
            }
            None => return None,
        };
        let slot = &mut self.slots[index];
        debug_assert!(slot.frames.is_empty());
        Some((index, &mut slot.frames))
    }

    fn submit(&mut self, index: usize, token: Token, sock: Sock) {
        let slot = &mut self.slots[index];
        slot.token = token;
        slot.sock = sock;
        self.submitted.push(index as u16);
    }

    fn in_flight(&self, f: &mut dyn FnMut(&Bytes)) -> usize {
        let mut handles = 0;
        for slot in &self.slots {
            handles += slot.frames.heap_bytes();
            slot.frames.frames.iter().for_each(&mut *f);
        }
        handles
    }
}

/// Gives memory back to the kernel after a burst: once the bytes a shard owed its connections
/// have passed `TRIM_AFTER_BYTES` and fallen back under a sixteenth of their peak, the driver
/// asks the allocator to release its free pages (`malloc_trim`, glibc) — `TRIMS_PER_BURST`
/// times, `TRIM_EVERY_MS` apart, since what a burst leaves behind (overflow queues, closed
/// connections) is freed over the following seconds. Without it, the heap a flood grew (millions
/// of small frames freed in no particular order) stays resident long after the flood ends. A
/// trim walks the heap on the shard's thread (milliseconds), which only happens after a burst.
pub struct Trimmer {
    peak_bytes: usize,
    trims_left: u8,
    last_ms: u64,
}

/// Owed bytes a burst must reach before its end is worth a trim.
pub const TRIM_AFTER_BYTES: usize = 32 << 20;
/// Fewest milliseconds between two trims.
pub const TRIM_EVERY_MS: u64 = 1000;
/// Trims after the end of one burst.
pub const TRIMS_PER_BURST: u8 = 3;

impl Trimmer {
    /// A trimmer that has seen no burst.
    pub fn new() -> Trimmer {
        Trimmer {
            peak_bytes: 0,
            trims_left: 0,
            last_ms: 0,
        }
    }

    /// Called once per loop turn with the shard's owed bytes; trims when a burst is over.
    /// Returns whether it trimmed.
    pub fn tick(&mut self, owed_bytes: usize, now_ms: u64) -> bool {
        self.peak_bytes = self.peak_bytes.max(owed_bytes);
        if self.peak_bytes >= TRIM_AFTER_BYTES && owed_bytes <= self.peak_bytes / 16 {
            // A burst ended: trim now and twice more as the rest of it is freed.
            self.peak_bytes = owed_bytes;
            self.trims_left = TRIMS_PER_BURST;
        }
        if self.trims_left == 0 || now_ms.saturating_sub(self.last_ms) < TRIM_EVERY_MS {
            return false;
        }
        self.trims_left -= 1;
        self.last_ms = now_ms;
        release_free_memory();
        true
    }
}

impl Default for Trimmer {
    fn default() -> Self {
        Trimmer::new()
    }
}

/// Returns the allocator's free pages to the kernel (every arena).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and shrinks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_after_a_burst_then_stops() {
        let mut t = Trimmer::new();
        assert!(!t.tick(TRIM_AFTER_BYTES / 2, 0), "no burst yet");
        assert!(!t.tick(0, 5_000), "small ups and downs are no burst");
        assert!(
            !t.tick(TRIM_AFTER_BYTES * 2, 6_000),
            "a burst is not over while it lasts"
        );
        let trims: usize = (0..100).map(|i| t.tick(0, 7_000 + i * 100) as usize).sum();
        assert_eq!(
            trims, TRIMS_PER_BURST as usize,
            "three trims, a second apart"
        );
        assert!(!t.tick(0, 60_000), "then none until the next burst");
    }
}
