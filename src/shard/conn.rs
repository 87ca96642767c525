//! One connection's state: lifecycle, decoder, outbound queue. Plain data with no ring types, so
//! a readiness-based driver could drive the same state machine.

use super::outbound::Outbound;
use crate::channel::local::Membership;
use crate::proto::decoder::Decoder;

/// Where a connection is in its life. Each state has a deadline in the shard's timing wheel,
/// except `Open` on endpoints without heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Accepted, reading the HTTP upgrade request (deadline: `handshake_timeout_ms`).
    Handshaking,
    /// WebSocket open (deadline: the next heartbeat, on `/ws`).
    Open,
    /// A close frame or an HTTP error response is queued; input is read only to find the peer's
    /// close frame (deadline: `close_timeout_ms`).
    Closing,
    /// Everything was sent and our FIN is out; waiting for the peer's FIN (same deadline).
    Draining,
}

/// Which service the connection asked for in its upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Not yet known (handshaking).
    None,
    /// `/echo`: every message comes back; no heartbeats.
    Echo,
    /// `/ws`: channels and pushes; `raw` delivers payloads without the JSON envelope.
    Push {
        /// `format=raw` was requested.
        raw: bool,
    },
    /// A backend on the control socket (newline-delimited JSON, no WebSocket).
    Control,
}

/// A send for this connection is in flight (at most one).
pub const SENDING: u8 = 1 << 0;
/// The slot is in the shard's flush list.
pub const DIRTY: u8 = 1 << 1;
/// Our close frame is queued or sent.
pub const CLOSE_SENT: u8 = 1 << 2;
/// The peer's close frame arrived.
pub const CLOSE_RECEIVED: u8 = 1 << 3;
/// Send FIN once the queue is empty.
pub const FIN_AFTER_FLUSH: u8 = 1 << 4;
/// Release the outbound queue's handle ring once it drains (after the handshake and after each
/// heartbeat), so an idle connection returns to owning no heap memory without the fan-out path
/// ever allocating per message.
pub const TRIM_WHEN_DRAINED: u8 = 1 << 5;
/// The peer's FIN arrived (a control client that half-closed after its requests): free the
/// connection as soon as our own FIN would go out.
pub const PEER_EOF: u8 = 1 << 6;

/// A connection.
#[derive(Debug)]
pub struct Conn {
    /// The socket.
    pub fd: i32,
    /// Generation of the slot at accept (see `id::ConnId`).
    pub generation: u32,
    /// Lifecycle state.
    pub state: State,
    /// Service.
    pub endpoint: Endpoint,
    /// Flag bits (`SENDING`, `DIRTY`, ...).
    pub flags: u8,
    /// The close code this connection will be counted under when freed (0: it never became a
    /// WebSocket, e.g. a refused handshake).
    pub close_code: u16,
    /// Tick of the last bytes received (heartbeat).
    pub last_rx_tick: u32,
    /// Tick of the last refill of the message token bucket.
    pub bucket_tick: u32,
    /// Messages the client may still send before the next refill (burst ≤ 255).
    pub tokens: u8,
    /// Subscriptions of this connection waiting for their channel owner's answer; while above
    /// zero, the client's commands are deferred so replies keep their order.
    pub awaiting: u8,
    /// Frame decoder (no heap when idle).
    pub decoder: Decoder,
    /// Bytes of the upgrade request so far; empty and unallocated once open.
    pub head: Vec<u8>,
    /// Frames waiting to be sent.
    pub out: Outbound,
    /// Channels this connection subscribes to (no heap while it has none).
    pub subs: Vec<Membership>,
}

impl Conn {
    /// A freshly accepted connection.
    pub fn new(fd: i32, generation: u32, now_tick: u32) -> Conn {
        Conn {
            fd,
            generation,
            state: State::Handshaking,
            endpoint: Endpoint::None,
            flags: 0,
            close_code: 0,
            last_rx_tick: now_tick,
            bucket_tick: now_tick,
            tokens: u8::MAX,
            awaiting: 0,
            decoder: Decoder::default(),
            head: Vec::new(),
            out: Outbound::default(),
            subs: Vec::new(),
        }
    }

    /// Whether a flag is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Whether input should still be decoded (false once the peer's close arrived or we failed
    /// the connection).
    pub fn reads_frames(&self) -> bool {
        match self.state {
            State::Open => true,
            State::Closing => !self.has(CLOSE_RECEIVED) && !self.has(FIN_AFTER_FLUSH),
            State::Handshaking | State::Draining => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection's user-space cost is its slab entry (this struct plus the slab's tag)
    /// plus its timer link; it owns no heap memory while idle. The project's budget is ≤ 200
    /// bytes of user space per idle connection, so the entry must stay well inside it.
    #[test]
    fn idle_connection_is_small_and_owns_no_heap() {
        // A slab entry is the value plus the enum tag of a vacant/occupied slot.
        let size = std::mem::size_of::<Option<Conn>>();
        println!(
            "Conn: {} bytes, Decoder: {} bytes",
            size,
            std::mem::size_of::<Decoder>()
        );
        assert!(size <= 160, "connection state is {size} bytes");
        let conn = Conn::new(3, 1, 0);
        assert_eq!(conn.decoder.heap_bytes(), 0);
        assert_eq!(conn.head.capacity(), 0);
        assert_eq!(conn.out.heap_bytes(), 0);
        assert_eq!(conn.subs.capacity(), 0);
    }
}
