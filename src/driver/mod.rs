//! Drivers: the thin loops that run an [`Engine`](crate::engine::Engine) over a kernel
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

use crate::xshard::Doorbell;
use std::os::fd::OwnedFd;
use std::sync::Arc;
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
