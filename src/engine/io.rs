//! The contract between the engine and a driver (the only seam between connection logic and the
//! kernel).
//!
//! **Events in** are calls on [`Engine`](super::Engine), each with the driver's own names for
//! things (a [`Sock`] for a socket, a [`Token`] for a connection it was told about):
//! - [`on_accept`](super::Engine::on_accept): a listener produced a socket;
//! - [`on_bytes`](super::Engine::on_bytes): bytes were received on a connection (the engine may
//!   unmask them in place; the driver owns the buffer again when the call returns);
//! - [`on_eof`](super::Engine::on_eof) / [`on_error`](super::Engine::on_error): the peer's FIN, or
//!   a socket error;
//! - [`on_sent`](super::Engine::on_sent): a send submitted through [`Transmit`] completed;
//! - [`tick`](super::Engine::tick): time passed (`now_ms` from the driver's clock: the engine
//!   never reads a clock, so the in-memory driver controls time exactly);
//! - [`drain_inbox`](super::Engine::drain_inbox): the cross-shard rings may hold messages.
//!
//! **Intents out**: after any call, the driver takes [`Intent`]s with
//! [`take_intents`](super::Engine::take_intents) and carries them out in order. Sends are not
//! intents: once per loop turn the driver calls [`flush`](super::Engine::flush) with its
//! [`Transmit`], and the engine hands it one batch of frames per connection with output.
//!
//! Rules both sides keep:
//! 1. At most one send per connection is in flight; its frames belong to the driver from
//!    `Transmit::submit` until the driver reports it with `on_sent` (the kernel may be reading
//!    them), even if the connection is closed meanwhile.
//! 2. A `Token` names a slot and its generation; an event for a token whose generation no longer
//!    matches is for a connection that is gone: the engine counts it stale and ignores it.
//! 3. `Intent::Close` is the last intent for a socket; after it the driver must not report
//!    events for that connection's token (a late completion is stale anyway, by rule 2).
//! 4. Intents are carried out in the order given (a `Close` of an old socket precedes the `Read`
//!    of a new connection that reuses its slot).

use super::outbound::Batch;
use bytes::Bytes;

/// A driver's handle for a socket (the file descriptor, for the Linux drivers); opaque to the
/// engine, which only hands it back in intents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sock(pub i32);

/// A connection as the driver names it back to the engine: slot and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token {
    /// Slab slot.
    pub slot: u32,
    /// Generation of the slot when the connection was accepted.
    pub generation: u32,
}

/// Which listener accepted a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The WebSocket listener.
    WebSocket,
    /// A control socket listener (index in the configured list).
    Control(usize),
}

/// A peer's IP address, IPv4 as IPv4-mapped IPv6, as plain data (the engine does no networking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub u128);

/// Something the engine needs the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Start delivering this socket's input with `on_bytes(token, ..)`, and its FIN or errors.
    Read {
        /// The connection.
        token: Token,
        /// Its socket.
        sock: Sock,
    },
    /// A socket that got no slot: write `response` if it fits at once (best effort), then close.
    Refuse {
        /// The socket.
        sock: Sock,
        /// A short HTTP response (empty: close only).
        response: Bytes,
    },
    /// Everything owed is sent: half-close (FIN), keep reading until the peer's FIN.
    ShutdownWrite {
        /// The socket.
        sock: Sock,
    },
    /// The connection is gone: shut the socket down both ways and close it. A send in flight
    /// completes later and is reported as usual (the engine counts it stale).
    Close {
        /// The connection (its slot is free for the next one after this intent).
        token: Token,
        /// The socket.
        sock: Sock,
    },
    /// Stop delivering this socket's input (publisher backpressure): bytes already on their way
    /// may still be reported; the rest stays in the socket until `ResumeRead`.
    PauseRead {
        /// The connection.
        token: Token,
        /// Its socket.
        sock: Sock,
    },
    /// Deliver this socket's input again (bytes may already be waiting in it).
    ResumeRead {
        /// The connection.
        token: Token,
        /// Its socket.
        sock: Sock,
    },
    /// Stop accepting on every listener (graceful shutdown has begun).
    StopAccepting,
    /// Stop accepting WebSocket connections only (a drain: the control socket and HTTP, whose
    /// `/readyz` now answers 503, stay open until the shutdown at the drain's end).
    StopAcceptingWebSockets,
}

/// How a send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    /// The kernel took this many bytes (at least one) from the front of the batch.
    Sent(usize),
    /// The socket failed (reset, broken pipe): the connection ends.
    Failed,
}

/// The driver's side of a flush: send buffers and their submission.
pub trait Transmit {
    /// A free send buffer (its index and an empty batch to fill), or `None` when every send
    /// buffer is in flight (the connection is retried next turn).
    fn reserve(&mut self) -> Option<(usize, &mut Batch)>;
    /// Sends the batch now in buffer `index` on `sock`, as one vectored send of its
    /// [`chunks`](Batch::chunks); the driver reports the outcome with
    /// `Engine::on_sent(token, batch, result)`.
    fn submit(&mut self, index: usize, token: Token, sock: Sock);
    /// Calls `f` on every shared frame in flight and returns the heap bytes the send buffers
    /// hold of their own (handle vectors, copied bytes): what the engine's shard-wide bound
    /// measures beside its own queues.
    fn in_flight(&self, f: &mut dyn FnMut(&Bytes)) -> usize;
}
