//! The engine: a shard's connection logic with no ring, no socket and no clock. One `Engine` per
//! shard owns the connection table, the outbound queues and their bounds, the channel index and
//! the owner's sequencing, the control connections, the timing wheel and the shard's ends of the
//! cross-shard rings. A driver (`crate::driver`: io_uring, epoll, or the in-memory one of the
//! tests) feeds it events and carries out its intents; the contract is written in [`io`].
//!
//! Modules (each owns one concern; all are `impl Engine` blocks over the fields below):
//! - [`conn`]: the connection table and per-connection state;
//! - [`lifecycle`]: handshake, frames, close handshake, heartbeats, failures;
//! - [`outbound`]: one connection's queue of frames and its byte limit;
//! - [`pubsub`]: `/ws` commands, subscriptions, the owner's sequencing, delivery;
//! - [`control`]: control connections, requests, replies in order;
//! - [`identity`]: connection tokens, users, token expiry, namespace access rules;
//! - [`users`]: the user registry at each user's owner shard, and user addressing;
//! - [`presence`]: presence by user at each channel's owner, join/leave news;
//! - [`pusher`]: the Pusher Channels endpoint (`/app/{key}`, `/apps/{id}/...`) on the same
//!   channels, presence and fan-out, for the apps of `[[pusher.apps]]`;
//! - [`events`]: the backend event stream (consumers, groups, per-shard sequences);
//! - [`http`]: HTTP connections: metrics, health, the dashboard, the HTTP API on the control
//!   executor;
//! - [`cluster`]: clustered channels through the broker seam (`[cluster]` only): interest,
//!   publishes and deliveries at each channel's owner, `[[redis_input]]`;
//! - [`xmsg`]: the messages between shards, and which of them may be refused;
//! - [`io`]: the driver contract.
//!
//! Invariants: at most one send in flight per connection (`SENDING`); `owed.total()` is the sum
//! of every queue's `owed_bytes`; `inbound_bytes` is the sum of the decoders' `heap_bytes`;
//! `handshaking` counts the connections in `State::Handshaking`. A network event never panics:
//! bad input is an operating error answered on its own connection.

pub mod cluster;
pub mod conn;
pub mod control;
pub mod events;
pub mod http;
pub mod identity;
pub mod io;
pub mod lifecycle;
pub mod outbound;
pub mod presence;
pub mod pubsub;
pub mod pusher;
pub mod users;
pub mod webhooks;
pub mod xmsg;

#[cfg(test)]
mod tests;

use crate::channel::local::LocalChannels;
use crate::channel::owner::OwnedChannels;
use crate::config::{Config, Limits};
use crate::proto::close;
use crate::proto::decoder::DecoderLimits;
use crate::proto::handshake::Rejection;
use crate::stats::{Counters, Published};
use crate::timer::Wheel;
use crate::xshard::{Endpoints, Inbox, Outbox};
use bytes::Bytes;
use conn::{
    ConnTable, DIRTY, Endpoint, FIN_AFTER_FLUSH, LAGGING, PEER_EOF, SENDING, State,
    TRIM_WHEN_DRAINED,
};
use io::{Intent, Listener, PeerAddr, SendResult, Sock, Token, Transmit};
use outbound::{Batch, Owed};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use xmsg::XMsg;

/// Milliseconds per wheel tick.
pub const TICK_MS: u64 = 10;
/// Buckets of the timing wheel: 4096 × 10 ms ≈ 41 s per revolution, longer than the default
/// heartbeat, so common deadlines are visited once.
pub const WHEEL_BUCKETS: usize = 4096;
/// Ticks between two snapshots of the counters.
const PUBLISH_EVERY_TICKS: u32 = 10;
/// A connection that makes progress may owe this many times `outbound_bytes_max` before it
/// counts as a slow consumer: it reads, the publisher is faster, and its shard is congested
/// (publishers paused) until it is back under half its limit, so this bounds only what was
/// already on its way.
pub const LAGGING_FACTOR: usize = 4;
/// One publish in this many carries a timestamp for the delivery-latency histogram.
pub const LATENCY_SAMPLE_EVERY: u32 = 64;

pub(crate) fn limits_ticks(ms: u64) -> u32 {
    ms.div_ceil(TICK_MS).min(u32::MAX as u64 / 2) as u32
}

/// Puts `conn` (at `slot`), which now owes bytes, on the `dirty` list for the next flush unless
/// it is there already or has a send in flight (its completion flushes it). A field-level
/// function, so the fan-out loop can call it while it holds the connection.
pub(crate) fn queue_flush(conn: &mut conn::Conn, slot: u32, now: u32, dirty: &mut Vec<u32>) {
    if conn.flags & (DIRTY | SENDING) == 0 {
        // Idle until now: its wait for the client starts here (see `stalled_consumers`).
        conn.progress_tick = now;
        conn.flags |= DIRTY;
        dirty.push(slot);
    }
}

/// The limit a frame of `frame_len` bytes is held to on `conn`: `limit`, or LAGGING_FACTOR
/// times it for a reader that makes progress (it took bytes within `stall` ticks) but is over
/// it — the publisher is faster, not the reader slow; the connection is flagged `LAGGING` and
/// keeps its shard congested (counted in `lagging`) until it is back under half its limit.
/// One policy for every path that queues data (deliveries, pushes, replies).
pub(crate) fn data_limit(
    conn: &mut conn::Conn,
    frame_len: usize,
    limit: usize,
    now: u32,
    stall: u32,
    lagging: &mut u32,
) -> usize {
    let over = conn.out.owed_bytes() + frame_len + outbound::FRAME_OVERHEAD > limit;
    if !over || now.wrapping_sub(conn.progress_tick) >= stall {
        return limit;
    }
    if conn.flags & LAGGING == 0 {
        conn.flags |= LAGGING;
        conn.ext_mut().lagging_since = now;
        *lagging += 1;
    }
    limit * LAGGING_FACTOR
}

/// A publish's idempotency key, scoped to its channel.
pub(crate) type IdempotencyKey = (Arc<str>, Box<str>);

/// Everything an engine needs from the server at start.
pub struct EngineSetup {
    /// Shard index.
    pub index: usize,
    /// Number of shards.
    pub shards: usize,
    /// The configuration.
    pub config: Arc<Config>,
    /// Where the shard publishes its counters.
    pub published: Arc<Published>,
    /// Every shard's published counters (for the control socket's `stats`).
    pub all_published: Arc<Vec<Arc<Published>>>,
    /// Makes channel epochs differ between runs (start time in ms).
    pub epoch_base: u64,
    /// This shard's ends of the cross-shard rings.
    pub mesh: Endpoints<XMsg>,
    /// The process-wide count of control connections (one for all shards).
    pub control_gate: Arc<control::ControlGate>,
    /// Every shard's congestion flag (one for all shards).
    pub congestion: Arc<control::Congestion>,
    /// The key connection tokens are verified with (none: tokens are refused).
    pub verifier: Option<Arc<crate::auth::Verifier>>,
    /// The wall clock at the driver's time 0, in ms since the UNIX epoch.
    pub wall_base_ms: u64,
    /// Which control listener index is the HTTP listener, if any.
    pub http_listener: Option<usize>,
    /// A drain asked for the whole process: its window in ms (0: none), set by the control
    /// socket's `drain` on any shard or by the server on SIGUSR1; every shard reads it each tick.
    pub drain: Arc<std::sync::atomic::AtomicU64>,
    /// The reloadable configuration (the same for every shard).
    pub live: Arc<LiveConfig>,
    /// The Pusher webhook sender's queue (none: no app has a webhook).
    pub webhooks: Option<crate::webhook::WebhookHandle>,
    /// With `[cluster]`: the broker's handle and this shard's events (none: one node).
    pub cluster: Option<cluster::ClusterSetup>,
}

/// The configuration every shard runs with, replaceable while they run (a reload): the server
/// stores a new one and bumps `generation`; each shard looks at `generation` every few ticks (a
/// relaxed load) and takes the new one with `try_lock`, so a shard never waits for it.
#[derive(Debug)]
pub struct LiveConfig {
    /// Bumped once per reload that changed something.
    pub generation: std::sync::atomic::AtomicU64,
    /// The configuration and its token verifier.
    pub current: std::sync::Mutex<(Arc<Config>, Option<Arc<crate::auth::Verifier>>)>,
    /// A control `reload` asked the server to read its config file again.
    pub requested: std::sync::atomic::AtomicBool,
}

impl LiveConfig {
    /// A cell holding the start-up configuration.
    pub fn new(config: Arc<Config>, verifier: Option<Arc<crate::auth::Verifier>>) -> LiveConfig {
        LiveConfig {
            generation: std::sync::atomic::AtomicU64::new(0),
            current: std::sync::Mutex::new((config, verifier)),
            requested: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// A drain in progress: WebSocket connections closed with 1012 spread over the window, then
/// the shutdown (docs/operations.md, "Rolling restarts").
#[derive(Debug)]
struct Drain {
    start_tick: u32,
    window_ticks: u32,
    /// The connections to close, in the order they will be (most recently accepted last).
    queue: Vec<Token>,
    /// How many the queue held at the start.
    initial: usize,
}

thread_local! {
    /// The connection whose event the shard is handling, for the panic report.
    static CURRENT_CONN: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// The id of the connection this shard thread was handling, if any (read by the panic hook:
/// a panic in a shard is a bug, and its report names the connection involved).
pub fn current_conn() -> Option<u64> {
    CURRENT_CONN.with(|c| c.get())
}

/// A shard's connection logic.
pub struct Engine {
    config: Arc<Config>,
    /// This node's number in connection ids (`[cluster] node_id`; 0 without a cluster).
    node: u8,
    index: usize,
    shards: usize,
    // Connections and what bounds them.
    conns: ConnTable,
    /// Bytes owed to all connections of this shard (queued or in flight), bounded by
    /// `shard_outbound_bytes_max`.
    owed: Owed,
    /// While the real figure is under the limit, the running total at which to measure again.
    shed_recheck_at: usize,
    /// Bytes of partly received messages held by decoders, bounded by `shard_inbound_bytes_max`.
    inbound_bytes: usize,
    /// Connections in the handshaking state, bounded by `handshakes_per_shard_max`.
    handshaking: usize,
    /// Open control connections on this shard.
    control_open: usize,
    /// The process-wide control connection count.
    control_gate: Arc<control::ControlGate>,
    /// Every shard's congestion flag.
    congestion: Arc<control::Congestion>,
    /// Whether this shard is over its high watermark (its flag is set).
    congested: bool,
    /// Whether this shard's publishing control connections are paused (some shard is congested).
    publishers_paused: bool,
    /// `outbound_stall_ms` in ticks.
    stall_ticks: u32,
    /// Connections flagged `LAGGING` (they keep the shard congested).
    lagging: u32,
    /// Idempotency keys of recent publishes to channels this shard owns, with their position,
    /// and the keys in the order they arrived (with their tick) for the window and the bound.
    idempotency: HashMap<IdempotencyKey, (u64, u64)>,
    idempotency_order: VecDeque<(u32, IdempotencyKey)>,
    /// Which page origins may connect (`allowed_origins`).
    origins: crate::auth::OriginPolicy,
    /// The key connection tokens are verified with (`[auth]`; none: tokens are refused).
    verifier: Option<Arc<crate::auth::Verifier>>,
    /// The wall clock at the driver's time 0, in ms since the UNIX epoch (tokens' `exp`).
    wall_base_ms: u64,
    /// The reloadable configuration, and the generation this shard runs.
    live: Arc<LiveConfig>,
    config_generation: u64,
    /// The drivers' shared µs clock at this turn (delivery-latency samples only).
    now_us: u64,
    /// Publishes sequenced here, for sampling one in `LATENCY_SAMPLE_EVERY`.
    sequenced: u32,
    /// The process-wide drain request.
    drain_req: Arc<std::sync::atomic::AtomicU64>,
    /// This shard's drain, once begun.
    draining: Option<Drain>,
    /// Control `subscribe` requests waiting for their channel owner's acknowledgement.
    subscribe_waiters: HashMap<Arc<str>, Vec<xmsg::ReplyTo>>,
    /// Which control listener index is the HTTP listener.
    http_listener: Option<usize>,
    /// Users this shard owns, with their connections.
    users: users::Registry,
    /// Presence of the channels this shard owns, by user.
    presence: HashMap<Arc<str>, crate::channel::presence::ChannelPresence>,
    /// Every event-stream consumer, as this shard routes to them.
    consumers: events::Consumers,
    /// This shard's control connections still owing their `auth`, bounded by
    /// ceil(`control_unauthed_max` / shards).
    unauthed_open: usize,
    /// This shard's unauthenticated control connections, oldest first (may hold stale tokens).
    unauthed_order: VecDeque<Token>,
    /// Connections per client address (only with `conns_per_ip_max`).
    per_ip: HashMap<PeerAddr, u32>,
    dirty: Vec<u32>,
    dirty_next: Vec<u32>,
    // Channels.
    local: LocalChannels,
    owned: OwnedChannels,
    slow_scratch: Vec<u32>,
    /// Scratch of `drain_inbox`'s runs of deliveries (`pubsub::RunItem`), their replies and
    /// counts; empty between uses.
    run_scratch: Vec<pubsub::RunItem>,
    run_replies: Vec<XMsg>,
    run_counts: Vec<(u64, u64)>,
    // permessage-deflate (with `config.deflate`): one compressor for the messages this shard
    // sequences, one inflater for its clients' messages, each reset per message.
    compressor: Option<Box<crate::proto::deflate::Compressor>>,
    inflater: Option<Box<crate::proto::deflate::Inflater>>,
    /// The compressor's output buffer, reused (capacity: the largest message compressed).
    deflate_scratch: Vec<u8>,
    /// `/echo`'s compressor for a client that limited the server window (its bits), made when
    /// such a client's echo does not fit that window.
    echo_narrow: Option<(u8, Box<crate::proto::deflate::Compressor>)>,
    /// The inflater's output: one client message at a time (≤ its endpoint's message limit).
    inflated: Vec<u8>,
    /// Clustered channels (`[cluster]`); none on a single node.
    cluster: Option<Box<cluster::Cluster>>,
    /// The Pusher apps (`[[pusher.apps]]`); none without apps, so `/app/` and `/apps/` are
    /// unknown paths and nothing of Pusher runs.
    pusher: Option<Box<pusher::PusherApps>>,
    /// The Pusher webhook sender's queue; none without a webhook.
    webhooks: Option<crate::webhook::WebhookHandle>,
    /// The owner's channels reported `channel_occupied` and not yet vacated (webhooks only;
    /// bounded by the channels it owns).
    hook_occupied: std::collections::HashSet<Arc<str>>,
    // Cross-shard rings.
    outboxes: Vec<Option<Outbox<XMsg>>>,
    inbox: Inbox<XMsg>,
    self_queue: VecDeque<XMsg>,
    /// Cross-shard messages taken from the rings and not handled yet (handling stops while the
    /// shard is over its high watermark; the rest waits here, in order).
    xbatch: VecDeque<XMsg>,
    // Control connections.
    line_arena: Vec<u8>,
    line_ranges: Vec<(Option<std::ops::Range<usize>>, Option<usize>)>,
    all_published: Arc<Vec<Arc<Published>>>,
    /// Whether a foreign-protocol control connection was logged (once per shard).
    foreign_logged: bool,
    // Time.
    wheel: Wheel,
    fired: Vec<usize>,
    now_tick: u32,
    now_ms: u64,
    last_publish_tick: u32,
    shutting_down: Option<u32>,
    counters: Counters,
    published: Arc<Published>,
    intents: Vec<Intent>,
    ws_limits: DecoderLimits,
    echo_limits: DecoderLimits,
}

impl Engine {
    /// An engine with no connections, at time 0.
    pub fn new(setup: EngineSetup) -> Engine {
        let limits = &setup.config.limits;
        let mut wheel = Wheel::new(WHEEL_BUCKETS, 0);
        wheel.reserve_keys(crate::budget::wheel_keys(limits));
        let mut conns = ConnTable::with_capacity(limits.conns_per_shard_max);
        if setup.cluster.is_some() {
            // Start each run's generations elsewhere, so an id a backend kept from a node's
            // earlier run rarely names a connection of this one.
            let seed = setup
                .epoch_base
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(17 + setup.index as u32);
            conns.seed_generation((seed >> 20) as u32);
        }
        let node = match setup.cluster.is_some() {
            true => setup.config.cluster.node_id(),
            false => 0,
        };
        let mut engine = Engine {
            node,
            index: setup.index,
            shards: setup.shards,
            conns,
            owed: Owed::default(),
            shed_recheck_at: 0,
            inbound_bytes: 0,
            handshaking: 0,
            control_open: 0,
            control_gate: setup.control_gate,
            congestion: setup.congestion,
            congested: false,
            publishers_paused: false,
            stall_ticks: limits_ticks(limits.outbound_stall_ms).max(1),
            lagging: 0,
            idempotency: HashMap::new(),
            idempotency_order: VecDeque::new(),
            // Validated by `Server::start` before any engine is built; a bad list here would
            // only leave every origin allowed, never panic.
            origins: crate::auth::OriginPolicy::parse(&setup.config.allowed_origins)
                .unwrap_or_default(),
            verifier: setup.verifier,
            wall_base_ms: setup.wall_base_ms,
            http_listener: setup.http_listener,
            subscribe_waiters: HashMap::new(),
            drain_req: setup.drain,
            now_us: 0,
            sequenced: 0,
            live: setup.live,
            config_generation: 0,
            draining: None,
            users: users::Registry::default(),
            presence: HashMap::new(),
            consumers: events::Consumers::default(),
            unauthed_open: 0,
            unauthed_order: VecDeque::new(),
            per_ip: HashMap::new(),
            dirty: Vec::new(),
            dirty_next: Vec::new(),
            local: LocalChannels::default(),
            owned: OwnedChannels::new(setup.epoch_base, limits.channels_per_shard_max),
            slow_scratch: Vec::new(),
            run_scratch: Vec::new(),
            run_replies: Vec::new(),
            run_counts: Vec::new(),
            compressor: setup.config.deflate.then(Box::default),
            inflater: setup.config.deflate.then(Box::default),
            deflate_scratch: Vec::new(),
            inflated: Vec::new(),
            echo_narrow: None,
            cluster: setup.cluster.map(|c| {
                // Node-local epochs (publishes while the broker is down) must differ between
                // nodes and runs: seeded like the generations above.
                let seed = setup.epoch_base.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    ^ (setup.index as u64).wrapping_mul(0xff51_afd7_ed55_8ccd);
                Box::new(cluster::Cluster::new(c, seed))
            }),
            pusher: pusher::PusherApps::new(&setup.config.pusher).map(Box::new),
            webhooks: setup.webhooks,
            hook_occupied: std::collections::HashSet::new(),
            outboxes: setup.mesh.outboxes,
            inbox: setup.mesh.inbox,
            self_queue: VecDeque::new(),
            xbatch: VecDeque::new(),
            line_arena: Vec::new(),
            line_ranges: Vec::new(),
            all_published: setup.all_published,
            foreign_logged: false,
            wheel,
            fired: Vec::new(),
            now_tick: 0,
            now_ms: 0,
            last_publish_tick: 0,
            shutting_down: None,
            counters: Counters::default(),
            published: setup.published,
            intents: Vec::new(),
            ws_limits: DecoderLimits {
                message_bytes_max: limits.message_bytes_max,
                fragments_max: limits.fragments_per_message_max,
                deflate: false,
            },
            echo_limits: DecoderLimits {
                message_bytes_max: limits.echo_message_bytes_max,
                fragments_max: limits.echo_fragments_per_message_max,
                deflate: false,
            },
            config: setup.config,
        };
        engine.subscribe_inputs();
        engine
    }

    fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// This shard's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Heap bytes the engine allocated at start (the wheel), for the budget check.
    pub fn preallocated_bytes(&self) -> usize {
        self.wheel.heap_bytes()
    }

    /// Counters a driver bumps for its own events (receives re-armed, for instance).
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// The counters as they are now.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Whether the driver should pass the peer's address with `on_accept` (a `getpeername` per
    /// accept is paid only when the per-address limit is on).
    pub fn wants_peer_addr(&self) -> bool {
        self.config.limits.conns_per_ip_max > 0 || self.wants_event(events::Kind::Connect)
    }

    /// Moves the intents produced so far into `out` (in order).
    pub fn take_intents(&mut self, out: &mut Vec<Intent>) {
        out.append(&mut self.intents);
    }

    /// Whether intents wait to be taken.
    pub fn has_intents(&self) -> bool {
        !self.intents.is_empty()
    }

    /// The socket of `token` if it still names a live connection (a driver re-arms a receive
    /// only then).
    pub fn live_sock(&self, token: Token) -> Option<Sock> {
        self.conns
            .get(token.slot as usize)
            .filter(|c| c.generation == token.generation)
            .map(|c| c.sock)
    }

    fn note_conn(&self, token: Token) {
        let id =
            crate::id::ConnId::at(self.node, self.index, token.slot as usize, token.generation)
                .get();
        CURRENT_CONN.with(|c| c.set(Some(id)));
    }

    /// A listener produced a socket. `peer` is needed only when `wants_peer_addr`.
    pub fn on_accept(&mut self, listener: Listener, sock: Sock, peer: Option<PeerAddr>) {
        CURRENT_CONN.with(|c| c.set(None));
        if let Listener::Control(index) = listener {
            if self.shutting_down.is_some() || self.conns.len() >= self.limits().conns_per_shard_max
            {
                self.counters.control_refusals += 1;
                self.intents.push(Intent::Refuse {
                    sock,
                    response: Bytes::new(),
                });
                return;
            }
            let is_http = Some(index) == self.http_listener;
            return self.open_control(sock, is_http);
        }
        self.counters.accepted += 1;
        let full = self.conns.len() >= self.limits().conns_per_shard_max
            || self.handshaking >= self.limits().handshakes_per_shard_max;
        if full || self.shutting_down.is_some() {
            self.counters.conn_limit_refusals += 1;
            return self.refuse(sock, Rejection::Unavailable);
        }
        let peer = match self.config.limits.conns_per_ip_max {
            // Kept only until the upgrade, for the event stream's `connect`.
            0 => peer.filter(|_| self.wants_event(events::Kind::Connect)),
            max => {
                let per_shard = max.div_ceil(self.shards) as u32;
                if let Some(peer) = peer {
                    if self.per_ip.get(&peer).copied().unwrap_or(0) >= per_shard {
                        return self.refuse(sock, Rejection::TooManyRequests);
                    }
                }
                peer
            }
        };
        let slot = self.conns.insert(sock, self.now_tick);
        self.handshaking += 1;
        if let Some(peer) = peer {
            *self.per_ip.entry(peer).or_insert(0) += 1;
            self.conns[slot].ext_mut().peer = Some(peer);
        }
        let deadline = self.now_tick + limits_ticks(self.limits().handshake_timeout_ms);
        self.wheel.insert(slot, deadline);
        let token = self.conns.token(slot);
        self.intents.push(Intent::Read { token, sock });
    }

    /// Answers a socket that gets no slot: a short response, then close.
    fn refuse(&mut self, sock: Sock, rejection: Rejection) {
        self.counters.rejected(rejection.status());
        self.intents.push(Intent::Refuse {
            sock,
            response: rejection.response(),
        });
    }

    /// Bytes arrived on `token`'s socket. The engine may rewrite them (unmasking in place).
    pub fn on_bytes(&mut self, token: Token, data: &mut [u8]) {
        let slot = token.slot as usize;
        let now = self.now_tick;
        let Some(conn) = self.conns.live(token) else {
            self.counters.stale_completions += 1;
            return;
        };
        conn.last_rx_tick = now;
        let state = conn.state;
        let endpoint = conn.endpoint;
        self.note_conn(token);
        self.counters.bytes_in += data.len() as u64;
        if endpoint == Endpoint::Control {
            if self.hold_control_input(slot, data) {
                return;
            }
            self.on_control_bytes(slot, data);
            if self.conns.contains(slot) {
                self.mark_dirty(slot);
            }
            return;
        }
        match state {
            State::Handshaking => self.on_head_bytes(slot, data),
            State::Open | State::Closing => {
                if self.conns[slot].reads_frames() {
                    self.decode(slot, data);
                }
            }
            State::Draining => {}
        }
        if self.conns.contains(slot) {
            self.mark_dirty(slot);
        }
    }

    /// The peer's FIN arrived on `token`'s socket.
    pub fn on_eof(&mut self, token: Token) {
        let slot = token.slot as usize;
        let Some(conn) = self.conns.live(token) else {
            self.counters.stale_completions += 1;
            return;
        };
        if conn.flags & PEER_EOF != 0 {
            return; // reported once already (a readiness driver may see the FIN again)
        }
        if conn.endpoint == Endpoint::Control {
            // A backend may half-close after writing its requests (`echo ... | socat`): a last
            // request without its newline is still served, its replies still go out, then the
            // connection is freed.
            conn.flags |= PEER_EOF;
            if conn.control().is_some_and(|s| s.barrier_paused) {
                // Its last requests wait for an earlier one; the barrier's release ends it.
                return;
            }
            self.on_control_eof(slot);
            if self.conns.contains(slot) {
                self.close_after_flush(slot);
            }
            return;
        }
        // The connection ends with the code of its close handshake if one started, else as
        // abnormal (1006).
        let code = conn.close_code;
        self.free(slot, code);
    }

    /// The socket of `token` failed.
    pub fn on_error(&mut self, token: Token) {
        let Some(conn) = self.conns.live(token) else {
            self.counters.stale_completions += 1;
            return;
        };
        let code = conn.close_code;
        self.free(token.slot as usize, code);
    }

    /// A send submitted through `Transmit` completed; `frames` is its batch, which the engine
    /// takes back (what was not sent returns to the front of the queue) and leaves empty.
    pub fn on_sent(&mut self, token: Token, frames: &mut Batch, result: SendResult) {
        self.counters.sends += 1;
        let slot = token.slot as usize;
        let Some(conn) = self.conns.live(token) else {
            frames.clear();
            self.counters.stale_completions += 1;
            return;
        };
        assert!(
            conn.flags & SENDING != 0,
            "a send completed that was not in flight"
        );
        conn.flags &= !SENDING;
        let sent = match result {
            SendResult::Sent(n) if n > 0 => n,
            _ => {
                frames.clear();
                let code = conn.close_code;
                self.note_conn(token);
                self.free(slot, code);
                return;
            }
        };
        self.counters.bytes_out += sent as u64;
        conn.progress_tick = self.now_tick;
        conn.out.complete(frames, sent, &mut self.owed);
        if conn.flags & LAGGING != 0
            && conn.out.owed_bytes() <= self.config.limits.outbound_bytes_max / 2
        {
            conn.flags &= !LAGGING;
            self.lagging -= 1;
        }
        let half = self.config.limits.outbound_bytes_max / 2;
        if conn.out.owed_bytes() <= half
            && conn.ext.as_ref().is_some_and(|e| !e.conflated.is_empty())
        {
            // The queue drained: the held latest values go out now.
            let held = std::mem::take(&mut conn.ext_mut().conflated);
            for (_, frame) in held {
                conn.out.push_control(frame, &mut self.owed);
                self.counters.frames_out += 1;
            }
        }
        if conn.flags & TRIM_WHEN_DRAINED != 0 && conn.out.release_if_empty() {
            conn.flags &= !TRIM_WHEN_DRAINED;
        }
        debug_assert!(frames.is_empty());
        self.mark_dirty(slot);
    }

    /// The drivers' shared µs clock (`driver::monotonic_us`), set once per loop turn before
    /// `tick`; read only to stamp and measure sampled deliveries.
    pub fn set_clock_us(&mut self, now_us: u64) {
        self.now_us = now_us;
    }

    /// Time passed: `now_ms` on the driver's clock (milliseconds since the shard started).
    /// Fires due deadlines and publishes the counters every few ticks.
    pub fn tick(&mut self, now_ms: u64) {
        CURRENT_CONN.with(|c| c.set(None));
        debug_assert!(now_ms >= self.now_ms, "time went backwards");
        self.now_ms = now_ms.max(self.now_ms);
        self.now_tick = (self.now_ms / TICK_MS) as u32;
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(self.now_tick, &mut fired);
        for &slot in &fired {
            let Some(conn) = self.conns.get(slot) else {
                continue;
            };
            match conn.state {
                State::Handshaking => {
                    self.counters.handshake_timeouts += 1;
                    self.free(slot, 0);
                }
                State::Open if conn.endpoint == Endpoint::Control => self.control_deadline(slot),
                State::Open if matches!(conn.endpoint, Endpoint::Pusher { .. }) => {
                    self.pusher_deadline(slot)
                }
                State::Open => self.on_open_deadline(slot),
                State::Closing | State::Draining => {
                    let code = conn.close_code;
                    self.free(slot, code);
                }
            }
        }
        fired.clear();
        self.fired = fired;
        self.drain_step();
        self.update_backpressure();
        if self.now_tick.wrapping_sub(self.last_publish_tick) >= PUBLISH_EVERY_TICKS {
            self.last_publish_tick = self.now_tick;
            self.publish_counters();
            self.take_reloaded_config();
        }
    }

    /// Publishes a snapshot of the counters (for `stats` and the server's totals).
    pub fn publish_counters(&mut self) {
        self.counters.open = self.conns.len() as u64;
        self.counters.queued_bytes = self.owed.total() as u64;
        self.counters.users_online = self.users.len() as u64;
        self.counters.history_bytes = self.owned.history_bytes() as u64;
        self.counters.control_open = self.control_open as u64;
        self.cluster_gauges();
        self.webhook_gauges();
        self.published.publish(&self.counters);
    }

    /// Bytes owed to this shard's connections (queued or in flight).
    pub fn queued_bytes(&self) -> usize {
        self.owed.total()
    }

    /// Connections in use (WebSocket and control).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// A reload stored a new configuration: run with it (what it may change live was merged by
    /// `config::reload`; the rest of it equals the running one).
    fn take_reloaded_config(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let generation = self.live.generation.load(Relaxed);
        if generation == self.config_generation {
            return;
        }
        let Ok(current) = self.live.current.try_lock() else {
            return; // the server is storing it right now; next time
        };
        let (config, verifier) = current.clone();
        drop(current);
        self.config_generation = generation;
        self.origins =
            crate::auth::OriginPolicy::parse(&config.allowed_origins).unwrap_or_default();
        self.verifier = verifier;
        self.stall_ticks = limits_ticks(config.limits.outbound_stall_ms).max(1);
        self.config = config;
        self.counters.config_reloads += 1;
    }

    /// Asks the server to read its config file again (control `reload`).
    pub(crate) fn request_reload(&self) {
        self.live
            .requested
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Asks every shard to drain over `window_ms` (each begins on its next tick).
    pub(crate) fn request_drain(&self, window_ms: u64) {
        self.drain_req
            .store(window_ms.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this shard drains or shuts down (`/readyz` answers 503).
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.is_some() || self.shutting_down.is_some()
    }

    /// One tick of a drain: begin it when asked; close the share of WebSocket connections the
    /// elapsed part of the window calls for (1012: the service restarts, reconnect — elsewhere,
    /// since this shard stopped accepting); at the window's end, shut down.
    fn drain_step(&mut self) {
        if self.draining.is_none() {
            let ms = self.drain_req.load(std::sync::atomic::Ordering::Relaxed);
            if ms == 0 || self.shutting_down.is_some() {
                return;
            }
            let queue: Vec<Token> = self
                .conns
                .iter()
                .filter(|(_, c)| {
                    matches!(c.endpoint, Endpoint::Push { .. } | Endpoint::Pusher { .. })
                })
                .map(|(slot, _)| self.conns.token(slot))
                .collect();
            self.counters.drains += 1;
            self.intents.push(Intent::StopAcceptingWebSockets);
            self.draining = Some(Drain {
                start_tick: self.now_tick,
                window_ticks: limits_ticks(ms).max(1),
                initial: queue.len(),
                queue,
            });
        }
        let Some(drain) = self.draining.as_mut() else {
            return;
        };
        if self.shutting_down.is_some() {
            return;
        }
        let elapsed = self.now_tick.wrapping_sub(drain.start_tick);
        if elapsed >= drain.window_ticks {
            return self.begin_shutdown();
        }
        let due =
            (drain.initial as u64 * u64::from(elapsed)).div_ceil(u64::from(drain.window_ticks));
        let closed = (drain.initial - drain.queue.len()) as u64;
        let mut close = Vec::new();
        for _ in closed..due {
            match drain.queue.pop() {
                Some(token) => close.push(token),
                None => break,
            }
        }
        for token in close {
            if self
                .conns
                .live(token)
                .is_some_and(|c| c.state == State::Open)
            {
                self.counters.drained += 1;
                let slot = token.slot as usize;
                // 1012 for /ws clients; a Pusher client gets 4100, back off then reconnect.
                let code = self.pusher_close_code(slot, close::SERVICE_RESTART);
                self.start_close_with(slot, code, "reconnect");
            }
        }
    }

    /// Whether a graceful shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.is_some()
    }

    /// Whether the shutdown is complete: every connection is gone, or its deadline passed.
    pub fn is_done(&self) -> bool {
        match self.shutting_down {
            None => false,
            Some(deadline) => {
                self.conns.is_empty() || self.now_tick.wrapping_sub(deadline) as i32 >= 0
            }
        }
    }

    pub(crate) fn mark_dirty(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if conn.flags & (DIRTY | SENDING) == 0 && conn.out.has_queued() {
            queue_flush(conn, slot as u32, self.now_tick, &mut self.dirty);
        } else if conn.flags & (SENDING | DIRTY) == 0 && conn.flags & FIN_AFTER_FLUSH != 0 {
            // A control connection finishes only when its last pending reply is out.
            let replies_pending = conn.control().is_some_and(|s| s.has_pending());
            if !replies_pending {
                self.send_fin(slot);
            }
        }
    }

    /// Everything is sent: half-close, then wait for the peer's FIN (lingering close, so our
    /// last frames are not destroyed by a reset).
    fn send_fin(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if conn.state == State::Draining {
            return;
        }
        if conn.flags & PEER_EOF != 0 {
            // Both directions are done.
            let code = conn.close_code;
            return self.free(slot, code);
        }
        conn.state = State::Draining;
        let sock = conn.sock;
        self.intents.push(Intent::ShutdownWrite { sock });
        self.arm_close_deadline(slot);
    }

    /// The owed bytes above which this shard is congested: `shard_outbound_high_bytes`, or a
    /// quarter of what the WebSocket connections may owe in all if lower, but never less than
    /// four connections' worth (one client that stops reading owes at most its own limit, and
    /// must not pause every publisher of a small shard).
    pub(crate) fn high_watermark(&self) -> usize {
        let limits = &self.config.limits;
        let ws_conns = self.conns.len().saturating_sub(self.control_open).max(1);
        let per_conn = limits.outbound_bytes_max;
        limits
            .shard_outbound_high_bytes
            .min((ws_conns.saturating_mul(per_conn) / 4).max(per_conn.saturating_mul(4)))
            .max(1)
    }

    /// Publisher backpressure (once per turn): sets or clears this shard's congestion flag
    /// with hysteresis, pauses or resumes this shard's publishers as any shard is congested,
    /// and, while this shard is congested, closes connections that owe bytes and took none for
    /// `outbound_stall_ms` (they do not read; they must not hold every publisher back).
    fn update_backpressure(&mut self) {
        let high = self.high_watermark();
        if !self.congested && (self.owed.total() > high || self.lagging > 0) {
            self.congested = true;
            self.counters.backpressure_episodes += 1;
            self.congestion.set(self.index, true);
        } else if self.congested && self.owed.total() <= high / 4 && self.lagging == 0 {
            self.congested = false;
            self.congestion.set(self.index, false);
        }
        let any = self.congested || self.congestion.any();
        if any != self.publishers_paused {
            self.set_publishers_paused(any);
        }
        if self.congested && self.now_tick % PUBLISH_EVERY_TICKS == 0 {
            let stall = self.stall_ticks;
            let now = self.now_tick;
            // A lagging reader may hold publishers back for twice the stall time at most: one
            // that reads a byte a second must not pause every backend for days.
            let lag_max = stall.saturating_mul(2);
            let stalled: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, c)| c.endpoint != Endpoint::Control && c.state == State::Open)
                .filter(|(_, c)| c.out.owed_bytes() > 0)
                .filter(|(_, c)| {
                    let lagging_too_long = c.flags & LAGGING != 0
                        && c.ext
                            .as_ref()
                            .is_some_and(|e| now.wrapping_sub(e.lagging_since) >= lag_max);
                    now.wrapping_sub(c.progress_tick) >= stall || lagging_too_long
                })
                .map(|(slot, _)| slot)
                .collect();
            for slot in stalled {
                self.counters.stalled_consumers += 1;
                self.slow_consumer(slot);
            }
        }
    }

    /// Enforces `shard_outbound_bytes_max`: drops the connections with the largest queues as
    /// slow consumers until the shard is back under 7/8 of the limit. A scan of the slab, but
    /// only when the limit is passed, which a healthy shard never does.
    fn shed_largest_queues(&mut self, tx: &impl Transmit) {
        let max = self.config.limits.shard_outbound_bytes_max;
        if self.owed.total() <= max {
            self.shed_recheck_at = 0;
            return;
        }
        if self.owed.total() <= self.shed_recheck_at {
            return;
        }
        // The running total counts a frame shared by N queues N times (cheap to keep). Before
        // dropping anyone, measure what the queues really hold; while that is under the limit,
        // look again only after the running total grows by another eighth of it.
        let real = self.real_queued_bytes(tx);
        if real <= max {
            self.shed_recheck_at = self.owed.total() + max / 8;
            return;
        }
        self.shed_recheck_at = 0;
        // Shed until the running total is back under 7/8 of the limit, scaled by how much it
        // overstates the real figure.
        let target =
            ((max / 8 * 7) as u128 * self.owed.total() as u128 / real.max(1) as u128) as usize;
        let mut by_size: Vec<(usize, usize)> = self
            .conns
            .iter()
            .map(|(slot, c)| (c.out.owed_bytes(), slot))
            .filter(|&(owed, _)| owed > 0)
            .collect();
        by_size.sort_unstable_by(|a, b| b.cmp(a));
        for (_, slot) in by_size {
            if self.owed.total() <= target {
                break;
            }
            self.counters.shard_outbound_overflows += 1;
            self.counters.slow_consumers += 1;
            self.free(slot, close::SLOW_CONSUMER);
        }
    }

    /// What the outbound queues really hold: their rings of handles (by capacity), and each
    /// distinct payload once (frames shared by many queues point at the same bytes). A scan of
    /// every queue and send in flight, done only when the running total passes its limit.
    fn real_queued_bytes(&self, tx: &impl Transmit) -> usize {
        let mut seen = std::collections::HashSet::new();
        let mut payloads = 0usize;
        let mut count = |frame: &Bytes| {
            if seen.insert(frame.as_ptr() as usize) {
                payloads += frame.len();
            }
        };
        let mut handles = 0usize;
        for (_, conn) in self.conns.iter() {
            handles += conn.out.heap_bytes();
            conn.out.for_each_queued(&mut count);
        }
        handles += tx.in_flight(&mut count);
        handles + payloads
    }

    /// The flush phase of a loop turn: every connection with queued frames and no send in
    /// flight gets one batch (up to `send_iovecs_max` frames) handed to `tx`.
    pub fn flush(&mut self, tx: &mut impl Transmit) {
        // Every turn, not only every tick: a pipelining publisher must be stopped before the
        // queues it fills reach their per-connection limits.
        self.update_backpressure();
        self.shed_largest_queues(tx);
        std::mem::swap(&mut self.dirty, &mut self.dirty_next);
        let mut list = std::mem::take(&mut self.dirty_next);
        let iov_max = self.config.limits.send_iovecs_max;
        for &slot in &list {
            let slot = slot as usize;
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            if conn.flags & DIRTY == 0 {
                continue; // a stale entry: the slot was freed and reused
            }
            conn.flags &= !DIRTY;
            if conn.flags & SENDING != 0 || !conn.out.has_queued() {
                continue;
            }
            let Some((index, frames)) = tx.reserve() else {
                // Every send buffer is in flight: try again next turn.
                conn.flags |= DIRTY;
                self.dirty.push(slot as u32);
                continue;
            };
            self.counters
                .send_queue_64b
                .observe(conn.out.owed_bytes().div_ceil(64) as u64);
            conn.out.take_batch(iov_max, frames, &mut self.owed);
            conn.flags |= SENDING;
            let token = Token {
                slot: slot as u32,
                generation: conn.generation,
            };
            tx.submit(index, token, conn.sock);
        }
        list.clear();
        self.dirty_next = list;
    }

    /// Frees a connection now: its slot, its timer, its socket (by `Intent::Close`). A send
    /// still in flight keeps its frames in the driver; its completion will be counted stale.
    pub(crate) fn free(&mut self, slot: usize, code: u16) {
        if self.conns[slot].state == State::Handshaking {
            self.handshaking -= 1;
        }
        self.leave_all(slot);
        if let Endpoint::Pusher { app } = self.conns[slot].endpoint {
            self.pusher_closed(app);
        }
        let is_push = matches!(self.conns[slot].endpoint, Endpoint::Push { .. });
        if is_push {
            if let Some(user) = self.user_of(slot) {
                self.unregister_user(slot, user);
            }
            self.emit_close(slot, code);
        }
        let token = self.conns.token(slot);
        let mut conn = self.conns.remove(slot);
        if conn.flags & LAGGING != 0 {
            self.lagging -= 1;
        }
        if let Some(ext) = conn.ext.take() {
            if let Some(state) = &ext.control {
                self.control_open -= 1;
                self.release_control(state);
                if state.is_consumer() {
                    self.announce_consumer(slot, conn.generation, None, None, None);
                }
            }
            if let Some(peer) = ext.peer {
                if let Some(n) = self.per_ip.get_mut(&peer) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_ip.remove(&peer);
                    }
                }
            }
        }
        conn.out.clear(&mut self.owed);
        self.inbound_bytes -= conn.decoder.heap_bytes().min(self.inbound_bytes);
        self.wheel.remove(slot);
        if code != 0 {
            self.counters.closed(code);
        }
        self.intents.push(Intent::Close {
            token,
            sock: conn.sock,
        });
    }

    /// Starts a graceful shutdown: stop accepting, close every WebSocket with 1001 behind what is
    /// queued, answer what control connections already asked, all within `shutdown_timeout_ms`.
    pub fn begin_shutdown(&mut self) {
        if self.shutting_down.is_some() {
            return;
        }
        let timeout = limits_ticks(self.config.limits.shutdown_timeout_ms);
        self.shutting_down = Some(self.now_tick + timeout);
        self.intents.push(Intent::StopAccepting);
        let slots: Vec<usize> = self.conns.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            if !self.conns.contains(slot) {
                continue;
            }
            if self.conns[slot].endpoint == Endpoint::Control {
                // Replies to requests already read still go out; then EOF.
                self.close_after_flush(slot);
                self.wheel.insert(slot, self.now_tick + timeout);
                continue;
            }
            match self.conns[slot].state {
                State::Handshaking => self.free(slot, 0),
                State::Open => {
                    let code = self.pusher_close_code(slot, close::GOING_AWAY);
                    self.start_close(slot, code);
                    // Shutdown has its own deadline; the close deadline must not cut it short.
                    self.wheel.insert(slot, self.now_tick + timeout);
                }
                State::Closing | State::Draining => {}
            }
        }
    }
}
