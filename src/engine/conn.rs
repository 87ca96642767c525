//! The connection table: one slab entry per connection (lifecycle, decoder, outbound queue) with
//! rarely used per-connection data in one boxed extension instead of side maps keyed by slot.
//!
//! Plain data: a connection names its socket only by the driver's opaque [`Sock`].
//! Invariant: a slot's generation changes on every insert, so a [`Token`] of a freed connection
//! never matches its slot's next occupant.

use super::control::ControlState;
use super::io::{PeerAddr, Sock, Token};
use super::outbound::Outbound;
use crate::channel::local::Membership;
use crate::proto::decoder::Decoder;
use slab::Slab;
use std::collections::VecDeque;

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
    Echo {
        /// permessage-deflate: see `Push::deflate`.
        deflate: u8,
    },
    /// `/ws`: channels and pushes; `raw` delivers payloads without the JSON envelope.
    Push {
        /// `format=raw` was requested.
        raw: bool,
        /// permessage-deflate (RFC 7692) was agreed in the handshake: the largest server window
        /// the client accepts, in bits (9-15); 0: not agreed. Published messages come compressed
        /// (the owner's `Frames`) where they fit that window, and the client may send compressed
        /// commands.
        deflate: u8,
    },
    /// A backend on the control socket (newline-delimited JSON, no WebSocket).
    Control,
    /// `/app/{key}`: a Pusher Channels client of app `app` (its index in `[[pusher.apps]]`;
    /// `REFUSED_APP` while a refused one gets its error and close).
    Pusher {
        /// The app's index.
        app: u16,
    },
}

/// The app index of a Pusher connection that is being refused (unknown key, old protocol,
/// origin, quota): it counts against no app.
pub const REFUSED_APP: u16 = u16::MAX;

impl Endpoint {
    /// Whether permessage-deflate was agreed (kept here, not in a flag bit, so `Conn` does not
    /// grow: the flag byte is full).
    pub fn deflate(self) -> bool {
        self.deflate_window_bits() != 0
    }

    /// The server window agreed for permessage-deflate, in bits; 0: not agreed.
    pub fn deflate_window_bits(self) -> u8 {
        match self {
            Endpoint::Echo { deflate } | Endpoint::Push { deflate, .. } => deflate,
            Endpoint::None | Endpoint::Control | Endpoint::Pusher { .. } => 0,
        }
    }

    /// Whether the client reads raw payloads rather than the JSON envelope.
    pub fn raw(self) -> bool {
        matches!(self, Endpoint::Push { raw: true, .. })
    }
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
/// The connection reads, but owes more than `outbound_bytes_max` (the publisher is faster than
/// it): it holds its shard congested until it is back under half its limit.
pub const LAGGING: u8 = 1 << 7;

/// What few connections need, allocated only for them (an idle `/ws` connection has none).
#[derive(Debug, Default)]
pub struct Ext {
    /// A control connection's line splitter and pending replies.
    pub control: Option<ControlState>,
    /// Commands of a `/ws` client held while one of its subscriptions waits for its owner.
    pub deferred: VecDeque<Vec<u8>>,
    /// The peer's address (kept only while `conns_per_ip_max` is on).
    pub peer: Option<PeerAddr>,
    /// Bytes of an upgrade request that did not arrive in one read.
    pub head: Vec<u8>,
    /// Tick when the connection was last flagged `LAGGING`.
    pub lagging_since: u32,
    /// Local channels whose live messages wait for a recovery's replay (subscribe with
    /// `since`): delivered after it, so nothing is missed or doubled at the seam.
    pub recovering: Vec<crate::channel::local::LocalId>,
    /// The latest message of each conflating channel that did not fit the queue, sent when it
    /// drains (one frame per channel at most).
    pub conflated: Vec<(crate::channel::local::LocalId, bytes::Bytes)>,
    /// Who the connection is (a token, or `bind_user`); `None`: anonymous.
    pub identity: Option<super::identity::Identity>,
    /// A Pusher connection's presence memberships: the user its `channel_data` named in each
    /// presence channel it subscribes to (one per subscription, so bounded by
    /// `channels_per_conn_max`).
    pub pusher_members: Vec<PusherMember>,
    /// The user a Pusher connection signed in as (`pusher:signin`).
    pub pusher_user: Option<std::sync::Arc<str>>,
    /// A Pusher connection's client-event bucket: events it may still send
    /// (`pusher_client_events_per_s`).
    pub client_event_tokens: u32,
    /// The tick of the bucket's last refill; `None` before the first client event.
    pub client_event_tick: Option<u32>,
}

/// The member a Pusher connection is in one presence channel.
#[derive(Debug, Clone)]
pub struct PusherMember {
    /// The internal channel name.
    pub channel: std::sync::Arc<str>,
    /// `user_id`.
    pub user: std::sync::Arc<str>,
    /// `user_info` (JSON text).
    pub info: Option<std::sync::Arc<str>>,
}

impl Ext {
    /// Whether nothing is held (the box can go).
    pub fn is_empty(&self) -> bool {
        self.control.is_none()
            && self.deferred.is_empty()
            && self.peer.is_none()
            && self.head.is_empty()
            && self.identity.is_none()
            && self.pusher_members.is_empty()
            && self.pusher_user.is_none()
    }
}

/// A connection.
#[derive(Debug)]
pub struct Conn {
    /// The driver's socket.
    pub sock: Sock,
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
    /// Tick when the outbound queue last made progress (a send took bytes, or the queue became
    /// non-empty): a connection owing bytes with an old tick is not reading.
    pub progress_tick: u32,
    /// Messages the client may still send before the next refill (burst ≤ 255).
    pub tokens: u8,
    /// Subscriptions of this connection waiting for their channel owner's answer; while above
    /// zero, the client's commands are deferred so replies keep their order.
    pub awaiting: u8,
    /// Frame decoder (no heap when idle).
    pub decoder: Decoder,
    /// Frames waiting to be sent.
    pub out: Outbound,
    /// Channels this connection subscribes to (no heap while it has none).
    pub subs: Vec<Membership>,
    /// Rarely used data (control state, deferred commands, peer address).
    pub ext: Option<Box<Ext>>,
}

impl Conn {
    /// A freshly accepted connection.
    pub fn new(sock: Sock, generation: u32, now_tick: u32) -> Conn {
        Conn {
            sock,
            generation,
            state: State::Handshaking,
            endpoint: Endpoint::None,
            flags: 0,
            close_code: 0,
            last_rx_tick: now_tick,
            bucket_tick: now_tick,
            progress_tick: now_tick,
            tokens: u8::MAX,
            awaiting: 0,
            decoder: Decoder::default(),
            out: Outbound::default(),
            subs: Vec::new(),
            ext: None,
        }
    }

    /// The extension, allocated on first use.
    pub fn ext_mut(&mut self) -> &mut Ext {
        self.ext.get_or_insert_with(Box::default)
    }

    /// The control state, for a control connection.
    pub fn control(&mut self) -> Option<&mut ControlState> {
        self.ext.as_mut().and_then(|e| e.control.as_mut())
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

/// The slab of connections and the generation counter.
#[derive(Debug)]
pub struct ConnTable {
    slab: Slab<Conn>,
    next_generation: u32,
}

impl ConnTable {
    /// A table with room reserved for `capacity` connections (address space; untouched pages
    /// cost no memory).
    pub fn with_capacity(capacity: usize) -> ConnTable {
        ConnTable {
            slab: Slab::with_capacity(capacity),
            next_generation: 0,
        }
    }

    /// Starts the generations at `first` (clustered nodes start each shard at a different
    /// point, so the ids of two nodes rarely coincide; see docs/cluster.md, "Redis input").
    pub fn seed_generation(&mut self, first: u32) {
        self.next_generation = first & ((1 << crate::id::GEN_BITS) - 1);
    }

    /// Inserts a fresh connection on `sock` with the next generation; returns its slot.
    pub fn insert(&mut self, sock: Sock, now_tick: u32) -> usize {
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & ((1 << crate::id::GEN_BITS) - 1);
        self.slab.insert(Conn::new(sock, generation, now_tick))
    }

    /// The connection `token` names, if it is still the slot's occupant.
    pub fn live(&mut self, token: Token) -> Option<&mut Conn> {
        self.slab
            .get_mut(token.slot as usize)
            .filter(|c| c.generation == token.generation)
    }

    /// The token of the connection in `slot`.
    pub fn token(&self, slot: usize) -> Token {
        Token {
            slot: slot as u32,
            generation: self.slab[slot].generation,
        }
    }

    /// The connection in `slot`, if any.
    pub fn get(&self, slot: usize) -> Option<&Conn> {
        self.slab.get(slot)
    }

    /// The connection in `slot`, if any.
    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Conn> {
        self.slab.get_mut(slot)
    }

    /// Whether `slot` is occupied.
    pub fn contains(&self, slot: usize) -> bool {
        self.slab.contains(slot)
    }

    /// Removes and returns the connection in `slot`.
    pub fn remove(&mut self, slot: usize) -> Conn {
        self.slab.remove(slot)
    }

    /// Connections in use.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Whether no connection is in use.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Every connection with its slot.
    pub fn iter(&self) -> slab::Iter<'_, Conn> {
        self.slab.iter()
    }
}

impl std::ops::Index<usize> for ConnTable {
    type Output = Conn;
    fn index(&self, slot: usize) -> &Conn {
        &self.slab[slot]
    }
}

impl std::ops::IndexMut<usize> for ConnTable {
    fn index_mut(&mut self, slot: usize) -> &mut Conn {
        &mut self.slab[slot]
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
        assert!(size <= 128, "connection state is {size} bytes");
        let conn = Conn::new(Sock(3), 1, 0);
        assert_eq!(conn.decoder.heap_bytes(), 0);
        assert!(conn.ext.is_none());
        assert_eq!(conn.out.heap_bytes(), 0);
        assert_eq!(conn.subs.capacity(), 0);
    }
}
