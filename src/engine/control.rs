//! Control connections on a shard: bounded line splitting, requests, and replies in request
//! order even when parts of a reply come from other shards (docs/control.md).
//!
//! Each request that expects a reply takes the next sequence number and a `Pending` entry. Parts
//! arrive as `XMsg::Reply` (or at once, for local work); an entry is complete when all its parts
//! are in, and complete entries at the front of the queue are written out, so replies keep
//! request order.

use super::Engine;
use super::conn::{Endpoint, State};
use super::io::{Intent, Sock};
use super::limits_ticks;
use super::outbound::Enqueue;
use super::xmsg::{Body, ConnAction, Part, Query, ReplyTo, UserOp, UserQuery, XMsg};
use crate::channel::{self, ChannelError};
use crate::control::{self, LineSplitter, Method, Payload};
use crate::id::ConnId;
use crate::wire::ErrorCode;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A sequenced position of a channel: offset and epoch (`None` until the owner answers).
type Position = Option<(u64, u64)>;

/// What a pending reply accumulates.
#[derive(Debug)]
pub(super) enum Acc {
    /// One publish: offset and epoch.
    Publish(Position),
    /// One publish with a delivery report: offset and epoch, connections reached, slow ones,
    /// shards that reported, shards the delivery could not reach.
    Report {
        /// Offset and epoch.
        position: Position,
        /// Connections the frame was queued to.
        delivered: u64,
        /// Connections skipped or closed as slow consumers.
        slow: u64,
        /// Shards that reported.
        shards: u32,
        /// Shards whose delivery was refused (their queues were full).
        refused: u32,
    },
    /// A broadcast to channels: one result per channel, in request order.
    Broadcast(Vec<(Arc<str>, Position)>),
    /// `{}` when done.
    Done,
    /// Presence: connection ids, and the owner's users fragment.
    Conns {
        /// Ids gathered so far (each shard sends at most `limit + 1`).
        ids: Vec<u64>,
        /// Page size.
        limit: usize,
        /// `"users":{..},"users_next":..,"anonymous":N` from the channel's owner.
        users: Option<String>,
    },
    /// `users` (a page, with `next`) or `online` (every asked user, 0 when offline).
    Users {
        /// Users with their connection counts.
        map: BTreeMap<Arc<str>, u64>,
        /// Page size (`users`), or `None` for `online`.
        limit: Option<usize>,
        /// Clustered `online`: the nodes holding each user, once the broker answered (`None`
        /// inside: it could not); `None`: not asked.
        nodes: Option<Option<BTreeMap<Arc<str>, u64>>>,
    },
    /// Channels: summed counts.
    Channels {
        /// Names with their summed counts (each shard sends at most `limit + 1` names).
        map: BTreeMap<Arc<str>, u64>,
        /// Page size.
        limit: usize,
    },
    /// A broadcast to every connection: connections reached.
    Count(u64),
    /// A result computed at once.
    Ready(String),
    /// A result rendered by the shard that had it.
    Json(Option<String>),
    /// A complete HTTP response (an HTTP connection's answer that needs no executor).
    Raw(Vec<u8>),
    /// A fixed result, once every part (publishes, for the Pusher API's events) arrived.
    Fixed(&'static str),
    /// Pusher channels from their owners (the Pusher API's channel queries).
    PusherChannels {
        /// Internal names with connections and users.
        map: BTreeMap<Arc<str>, (u64, u64)>,
        /// Which counts to show.
        info: super::pusher::Info,
        /// The answer's shape.
        shape: super::pusher::Shape,
    },
    /// `POST /apps/{id}/batch_events` with `info` on some items: `{"batch":[{..},..]}`, one
    /// object per item with the counts its `info` asked for (of its channel, after its publish).
    PusherBatch {
        /// Internal names with connections and users, from their owners.
        map: BTreeMap<Arc<str>, (u64, u64)>,
        /// Per item, in order: its channel (internal name) and what it asked for.
        items: Vec<(Arc<str>, super::pusher::Info)>,
    },
}

impl Acc {
    /// `text` once every part arrived.
    pub(super) fn fixed(text: &'static str) -> Acc {
        Acc::Fixed(text)
    }

    /// Pusher channel counts, rendered as the Pusher API answers.
    pub(super) fn pusher_channels(info: super::pusher::Info, shape: super::pusher::Shape) -> Acc {
        Acc::PusherChannels {
            map: BTreeMap::new(),
            info,
            shape,
        }
    }

    /// A Pusher trigger's answer with `info`: the counts of every channel it went to (0 for
    /// one its owner has nobody in).
    pub(super) fn pusher_trigger(info: super::pusher::Info, channels: &[Arc<str>]) -> Acc {
        Acc::PusherChannels {
            map: channels.iter().map(|c| (c.clone(), (0, 0))).collect(),
            info,
            shape: super::pusher::Shape::Trigger,
        }
    }

    /// A batch's answer with per-item `info` (see `Acc::PusherBatch`).
    pub(super) fn pusher_batch(items: Vec<(Arc<str>, super::pusher::Info)>) -> Acc {
        Acc::PusherBatch {
            map: BTreeMap::new(),
            items,
        }
    }

    /// A JSON result rendered by the shard that has it.
    pub(super) fn json() -> Acc {
        Acc::Json(None)
    }
}

#[derive(Debug)]
struct Pending {
    id: Option<Box<str>>,
    remaining: u32,
    acc: Acc,
    error: Option<(ErrorCode, String)>,
    /// A request later requests on this connection wait for (see `ControlState::barriers`).
    barrier: bool,
}

/// The process-wide count of authenticated control connections, shared by every shard's engine:
/// a listener's connections may all be accepted by one shard, so the limit is applied to the
/// process, not per shard (docs/control.md). Unauthenticated ones are counted per shard instead
/// (`Engine::unauthed_open`), so that a shard can always evict one of its own to make room.
/// Touched once per control connection open, auth and close.
#[derive(Debug, Default)]
pub struct ControlGate {
    /// Authenticated control connections (every one, without a token).
    pub authed: AtomicUsize,
}

impl ControlGate {
    /// Takes a place in `counter` if it holds fewer than `max`.
    fn enter(counter: &AtomicUsize, max: usize) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }
}

/// Which count of the gate a control connection holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// None (refused after auth, or already released).
    #[default]
    Nothing,
    /// An unauthenticated place.
    Unauthed,
    /// An authenticated place.
    Authed,
}

/// Per-connection control state (in the connection's extension).
#[derive(Debug, Default)]
pub struct ControlState {
    lines: LineSplitter,
    authed: bool,
    counted: Counted,
    /// Sequence number of `pending[0]`.
    front_seq: u64,
    pending: VecDeque<Pending>,
    /// Whether a non-blank byte arrived yet (the first one must open a JSON object).
    seen_input: bool,
    /// The connection has published (publish, broadcast, send): backpressure pauses it.
    pub(super) publisher: bool,
    /// Its input is paused (backpressure); bytes still on their way are held in `held`.
    pub(super) paused: bool,
    /// Input received while paused, handled on resume (bounded by what was in flight when the
    /// pause began: a driver stops reading at once).
    pub(super) held: Vec<u8>,
    /// The event types this connection consumes (`events`; 0: not a consumer).
    pub(super) event_types: u8,
    /// Events dropped for it since the last one it got (told as a `gap` line).
    pub(super) events_dropped: u64,
    /// Requests that change what later ones see (`subscribe`, `unsubscribe`, `bind_user`,
    /// `unbind_user`) still waiting for their reply: while above zero, the following lines wait
    /// unread (in `held`), so "join the group, then publish to it" works pipelined.
    pub(super) barriers: u32,
    /// Input is paused for a barrier (not for backpressure).
    pub(super) barrier_paused: bool,
    /// An HTTP connection (`[http] listen`): replies go out as HTTP responses.
    pub(super) is_http: bool,
    /// Its receive buffer (`None` once it stopped taking requests).
    pub(super) http: Option<Vec<u8>>,
}

/// Input a paused control connection may hold (what was on its way when reading stopped).
const HELD_INPUT_MAX: usize = 1 << 20;

/// Congestion flags, one per shard, shared by every shard's engine: a shard over its high
/// watermark sets its flag, and every shard stops reading its publishing control connections
/// while any flag is set (the publisher may sit on another shard than the subscribers it
/// floods). One relaxed load per check; set and cleared with hysteresis, so rarely written.
#[derive(Debug)]
pub struct Congestion {
    flags: Vec<AtomicBool>,
}

impl Congestion {
    /// Flags for `shards` shards, all clear.
    pub fn new(shards: usize) -> Congestion {
        Congestion {
            flags: (0..shards).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Sets or clears shard `index`'s flag.
    pub fn set(&self, index: usize, on: bool) {
        if let Some(flag) = self.flags.get(index) {
            flag.store(on, Ordering::Release);
        }
    }

    /// Whether any shard is over its watermark.
    pub fn any(&self) -> bool {
        self.flags.iter().any(|f| f.load(Ordering::Acquire))
    }
}

impl ControlState {
    /// Whether replies are still owed.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// A new control connection; `authed` when no token is configured.
    pub fn new(authed: bool) -> ControlState {
        ControlState {
            authed,
            ..ControlState::default()
        }
    }

    /// Whether the connection authenticated (always, without a token).
    pub fn is_authed(&self) -> bool {
        self.authed
    }

    /// Whether the connection consumes the event stream.
    pub fn is_consumer(&self) -> bool {
        self.event_types != 0
    }
}

/// `{"name":N,...}`, names in byte order.
fn counts<'a>(out: &mut String, entries: impl Iterator<Item = (&'a Arc<str>, &'a u64)>) {
    out.push('{');
    for (i, (name, n)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}:{n}", serde_json::Value::from(&**name));
    }
    out.push('}');
}

fn result_of(p: &Pending) -> String {
    let mut out = String::new();
    match &p.acc {
        Acc::Publish(pos) => {
            let (offset, epoch) = pos.unwrap_or((0, 0));
            // Clustered, broker down: delivered to this node's subscribers only.
            let local = if epoch & super::cluster::LOCAL_EPOCH_BIT != 0 {
                ",\"local_only\":true"
            } else {
                ""
            };
            let _ = write!(out, "{{\"offset\":{offset},\"epoch\":{epoch}{local}}}");
        }
        Acc::Report {
            position,
            delivered,
            slow,
            shards,
            refused,
        } => {
            let (offset, epoch) = position.unwrap_or((0, 0));
            let _ = write!(
                out,
                "{{\"offset\":{offset},\"epoch\":{epoch},\"delivered\":{delivered},\"slow\":{slow},\
                 \"shards\":{shards},\"refused_shards\":{refused}}}"
            );
        }
        Acc::Broadcast(results) => {
            out.push_str("{\"results\":[");
            for (i, (channel, pos)) in results.iter().enumerate() {
                let (offset, epoch) = pos.unwrap_or((0, 0));
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(
                    out,
                    "{{\"channel\":\"{channel}\",\"offset\":{offset},\"epoch\":{epoch}}}"
                );
            }
            out.push_str("]}");
        }
        Acc::Done => out.push_str("{}"),
        Acc::Users {
            map,
            limit: None,
            nodes,
        } => {
            out.push_str("{\"users\":");
            counts(&mut out, map.iter());
            match nodes {
                None => {}
                Some(None) => out.push_str(",\"nodes\":null"),
                Some(Some(nodes)) => {
                    out.push_str(",\"nodes\":");
                    counts(&mut out, nodes.iter());
                }
            }
            out.push('}');
        }
        Acc::Users {
            map,
            limit: Some(limit),
            ..
        } => {
            out.push_str("{\"users\":");
            counts(&mut out, map.iter().take(*limit));
            match map.keys().nth(*limit).and(map.keys().nth(*limit - 1)) {
                Some(last) => {
                    let _ = write!(out, ",\"next\":{}}}", serde_json::Value::from(&**last));
                }
                None => out.push_str(",\"next\":null}"),
            }
        }
        Acc::Conns { ids, limit, users } => {
            let mut ids = ids.clone();
            ids.sort_unstable();
            let next = (ids.len() > *limit).then(|| ids[*limit - 1]);
            ids.truncate(*limit);
            out.push_str("{\"conns\":[");
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{id}");
            }
            match next {
                Some(next) => {
                    let _ = write!(out, "],\"next\":{next}");
                }
                None => out.push_str("],\"next\":null"),
            }
            if let Some(users) = users {
                out.push(',');
                out.push_str(users);
            }
            out.push('}');
        }
        Acc::Channels { map, limit } => {
            out.push_str("{\"channels\":{");
            for (i, (name, n)) in map.iter().take(*limit).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // Channel names never need JSON escaping (`channel::validate_name`).
                let _ = write!(out, "\"{name}\":{n}");
            }
            match map.keys().nth(*limit).and(map.keys().nth(*limit - 1)) {
                Some(last) => {
                    let _ = write!(out, "}},\"next\":\"{last}\"}}");
                }
                None => out.push_str("},\"next\":null}"),
            }
        }
        Acc::Count(n) => {
            let _ = write!(out, "{{\"connections\":{n}}}");
        }
        Acc::Ready(text) => out.push_str(text),
        Acc::Fixed(text) => out.push_str(text),
        Acc::PusherChannels { map, info, shape } => {
            out.push_str(&super::pusher::render_channels(map, *info, *shape))
        }
        Acc::PusherBatch { map, items } => out.push_str(&super::pusher::render_batch(map, items)),
        Acc::Raw(_) => {}
        Acc::Json(text) => out.push_str(text.as_deref().unwrap_or("{}")),
    }
    out
}

fn body_of(payload: Payload) -> Body {
    match payload {
        Payload::Json(text) => Body::Json(Bytes::from(text)),
        Payload::Text(text) => Body::Text(Bytes::from(text)),
        Payload::Binary(bytes) => Body::Binary(Bytes::from(bytes)),
    }
}

impl Engine {
    /// A control connection was accepted.
    pub(super) fn open_control(&mut self, sock: Sock, is_http: bool) {
        let limits = &self.config.limits;
        // HTTP requests carry their token each (`[http] token`), checked per request.
        let authed = is_http || self.config.control.token.is_none();
        let counted = if authed {
            let max = limits.control_conns_per_shard_max * self.shards;
            ControlGate::enter(&self.control_gate.authed, max).then_some(Counted::Authed)
        } else {
            // Per shard, so that the accepting shard can always make room itself: at its share
            // it has a waiting connection of its own to evict.
            let max = limits.control_unauthed_max.div_ceil(self.shards).max(1);
            if self.unauthed_open >= max {
                self.evict_oldest_unauthed();
            }
            (self.unauthed_open < max).then_some(Counted::Unauthed)
        };
        let Some(counted) = counted else {
            self.counters.control_refusals += 1;
            self.intents.push(Intent::Refuse {
                sock,
                response: bytes::Bytes::new(),
            });
            return;
        };
        let slot = self.conns.insert(sock, self.now_tick);
        if counted == Counted::Unauthed {
            self.unauthed_open += 1;
        }
        let mut state = ControlState::new(authed);
        state.counted = counted;
        if is_http {
            state.is_http = true;
            state.http = Some(Vec::new());
            self.counters.http_conns += 1;
        }
        let conn = &mut self.conns[slot];
        conn.endpoint = Endpoint::Control;
        conn.state = State::Open;
        conn.ext_mut().control = Some(state);
        self.control_open += 1;
        self.counters.control_conns += 1;
        let token = self.conns.token(slot);
        if !authed {
            // Tokens of connections that authenticated or closed stay until the front reaches
            // them; past twice the shard's share, drop them all at once, so the list stays
            // bounded by the connections really waiting.
            let share = self
                .config
                .limits
                .control_unauthed_max
                .div_ceil(self.shards)
                .max(1);
            if self.unauthed_order.len() >= 2 * share {
                let conns = &mut self.conns;
                self.unauthed_order.retain(|t| {
                    conns
                        .live(*t)
                        .and_then(|c| c.control())
                        .is_some_and(|s| !s.authed)
                });
            }
            self.unauthed_order.push_back(token);
            let ticks = limits_ticks(self.config.limits.control_auth_timeout_ms);
            self.wheel.insert(slot, self.now_tick + ticks);
        } else {
            self.arm_control_idle(slot);
        }
        self.intents.push(Intent::Read { token, sock });
    }

    /// Arms the idle deadline of an authenticated control connection, if one is configured.
    fn arm_control_idle(&mut self, slot: usize) {
        match self.control_idle_ms(slot) {
            0 => self.wheel.remove(slot),
            ms => {
                let last = self.conns[slot].last_rx_tick;
                self.wheel.insert(slot, last + limits_ticks(ms));
            }
        }
    }

    /// The idle limit of a control (or HTTP) connection, in ms (0: none).
    fn control_idle_ms(&mut self, slot: usize) -> u64 {
        let limits = &self.config.limits;
        let is_http = self.conns[slot].control().is_some_and(|s| s.is_http);
        if is_http {
            limits.http_idle_timeout_ms
        } else {
            limits.control_idle_timeout_ms
        }
    }

    /// Closes this shard's oldest connection still owing its `auth`; whether there was one.
    fn evict_oldest_unauthed(&mut self) -> bool {
        while let Some(token) = self.unauthed_order.pop_front() {
            let slot = token.slot as usize;
            let waiting = self
                .conns
                .live(token)
                .and_then(|c| c.control())
                .is_some_and(|s| !s.authed);
            if waiting {
                self.counters.control_unauthed_evictions += 1;
                self.free(slot, 0);
                return true;
            }
        }
        false
    }

    /// A control connection's deadline: its `auth` (with a token) or its idle time.
    pub(super) fn control_deadline(&mut self, slot: usize) {
        let authed = self.conns[slot].control().is_some_and(|s| s.authed);
        if !authed {
            self.counters.control_auth_timeouts += 1;
            let ms = self.config.limits.control_auth_timeout_ms;
            let why = format!("no auth within {ms} ms (control_auth_timeout_ms)");
            self.reply_now(slot, None, Err((ErrorCode::Unauthorized, why)));
            self.flush_replies(slot);
            return self.close_after_flush(slot);
        }
        let idle = limits_ticks(self.control_idle_ms(slot));
        if idle == 0 {
            return;
        }
        let silent = self.now_tick.wrapping_sub(self.conns[slot].last_rx_tick);
        if silent >= idle {
            self.counters.control_idle_timeouts += 1;
            return self.close_after_flush(slot);
        }
        self.arm_control_idle(slot);
    }

    /// Gives the connection's place in the gate back (it is being freed).
    pub(super) fn release_control(&mut self, state: &ControlState) {
        match state.counted {
            Counted::Authed => self.control_gate.authed.fetch_sub(1, Ordering::AcqRel),
            Counted::Unauthed => {
                self.unauthed_open -= 1;
                0
            }
            Counted::Nothing => 0,
        };
    }

    /// Marks a control connection as a publisher; pauses it at once if publishers are paused.
    pub(super) fn mark_publisher(&mut self, slot: usize) {
        let Some(state) = self.conns[slot].control() else {
            return;
        };
        state.publisher = true;
        if self.publishers_paused {
            self.pause_control(slot);
        }
    }

    /// Stops or resumes reading every publishing control connection of this shard.
    pub(super) fn set_publishers_paused(&mut self, pause: bool) {
        self.publishers_paused = pause;
        let slots: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.endpoint == Endpoint::Control && c.state == State::Open)
            .map(|(slot, _)| slot)
            .collect();
        for slot in slots {
            let token = self.conns.token(slot);
            let sock = self.conns[slot].sock;
            let Some(state) = self.conns[slot].control() else {
                continue;
            };
            if pause && state.publisher {
                self.pause_control(slot);
            } else if !pause && state.paused && !state.barrier_paused {
                state.paused = false;
                let held = std::mem::take(&mut state.held);
                let is_http = state.is_http;
                self.intents.push(Intent::ResumeRead { token, sock });
                if is_http {
                    // Requests still in its buffer run now.
                    self.on_http_bytes(slot, &[]);
                    if self.conns.contains(slot) {
                        self.flush_replies(slot);
                        self.mark_dirty(slot);
                    }
                } else if !held.is_empty() {
                    self.on_control_bytes(slot, &held);
                    if self.conns.contains(slot) {
                        self.mark_dirty(slot);
                    }
                }
            }
        }
    }

    /// Whether this publishing connection must stop before its next line: this shard is over
    /// its high watermark, or another shard said so.
    pub(super) fn publisher_must_wait(&mut self, slot: usize) -> bool {
        let publisher = self.conns[slot].control().is_some_and(|s| s.publisher);
        publisher
            && (self.owed.total() > self.high_watermark()
                || self.lagging > 0
                || self.congested
                || self.congestion.any())
    }

    /// Pauses a publishing connection in the middle of a read: `rest` (everything after the
    /// last line handled) waits in `held`, and the line splitter starts clean from it on resume.
    fn pause_with_input(&mut self, slot: usize, rest: &[u8]) {
        let Some(state) = self.conns[slot].control() else {
            return;
        };
        // Input is handled only while not paused, so nothing is held yet.
        debug_assert!(state.held.is_empty());
        state.lines.reset();
        state.held = rest.to_vec();
        self.pause_publisher(slot);
    }

    /// Pauses a publisher for backpressure (an HTTP connection's unparsed requests stay in its
    /// own buffer; a control connection's rest of input in `held`).
    pub(super) fn pause_publisher(&mut self, slot: usize) {
        self.pause_control(slot);
        self.publishers_paused = true;
    }

    /// Input for a paused control connection: kept for when it resumes. Returns false when the
    /// connection is not paused (the caller handles the bytes now).
    pub(super) fn hold_control_input(&mut self, slot: usize, data: &[u8]) -> bool {
        match self.conns[slot].control() {
            // An HTTP connection keeps what arrives in its own request buffer (bounded there).
            Some(state) if state.is_http => false,
            // Drivers stop reading at once; what still arrives was already on its way (a
            // few receive buffers). Past HELD_INPUT_MAX the input is handled now rather than
            // held without a bound: backpressure yields, the other bounds still hold.
            Some(state) if state.paused && state.held.len() + data.len() <= HELD_INPUT_MAX => {
                state.held.extend_from_slice(data);
                true
            }
            Some(state) if state.paused => {
                self.counters.publisher_pause_overruns += 1;
                false
            }
            _ => false,
        }
    }

    /// Entries of the list of connections owing their `auth` (stale ones included).
    #[cfg(test)]
    pub(crate) fn unauthed_order_len(&self) -> usize {
        self.unauthed_order.len()
    }

    /// Stops reading a control connection (backpressure), once.
    fn pause_control(&mut self, slot: usize) {
        let token = self.conns.token(slot);
        let sock = self.conns[slot].sock;
        let Some(state) = self.conns[slot].control() else {
            return;
        };
        if !state.paused {
            state.paused = true;
            self.counters.publisher_pauses += 1;
            self.intents.push(Intent::PauseRead { token, sock });
        }
    }

    /// The backend half-closed: a last request without its newline is still a request.
    pub(super) fn on_control_eof(&mut self, slot: usize) {
        if self.conns[slot]
            .control()
            .is_some_and(|s| s.barrier_paused || s.is_http)
        {
            // `release_barrier` finishes it; an HTTP request cut short is not a request.
            return;
        }
        let held = match self.conns[slot].control() {
            Some(state) => {
                state.paused = false;
                std::mem::take(&mut state.held)
            }
            None => Vec::new(),
        };
        if !held.is_empty() {
            self.on_control_bytes(slot, &held);
            if !self.conns.contains(slot) {
                return;
            }
        }
        let partial = self.conns[slot]
            .control()
            .is_some_and(|s| s.lines.buffered() > 0);
        if partial {
            self.on_control_bytes(slot, b"\n");
        }
    }

    /// Bytes from a control connection: split into lines (copied into one arena per read, so
    /// handlers may borrow the shard), then handle each.
    pub(super) fn on_control_bytes(&mut self, slot: usize, data: &[u8]) {
        if self.conns[slot].state != State::Open {
            return;
        }
        let Some(state) = self.conns[slot].control() else {
            return;
        };
        if state.is_http {
            self.on_http_bytes(slot, data);
            if self.conns.contains(slot) {
                self.flush_replies(slot);
            }
            return;
        }
        if !state.seen_input {
            state.seen_input = true;
            // The protocol is JSON objects, one per line. A client whose first byte is anything
            // else is not a backend: an HTTP request a web page sent to a loopback port
            // (`POST / HTTP/1.1`), a TLS ClientHello, a Redis or SSH client. Nothing it sent
            // may run, and it gets no answer it could learn from.
            let first = data.iter().find(|b| !b.is_ascii_whitespace());
            if first.is_some_and(|&b| b != b'{') {
                self.counters.control_foreign += 1;
                if !self.foreign_logged {
                    self.foreign_logged = true;
                    let head: String = data
                        .iter()
                        .take(16)
                        .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
                        .collect();
                    eprintln!(
                        "shard {}: closed a control connection that does not speak the control \
                         protocol (first bytes {head:?}); counted as control_foreign, logged once",
                        self.index
                    );
                }
                let code = self.conns[slot].close_code;
                return self.free(slot, code);
            }
            if first.is_none() {
                state.seen_input = false;
            }
        }
        let max = self.config.limits.control_line_bytes_max;
        let mut arena = std::mem::take(&mut self.line_arena);
        let mut ranges: Vec<(Option<Range<usize>>, Option<usize>)> =
            std::mem::take(&mut self.line_ranges);
        // The start of this read is a clean place to stop only if no line began before it.
        let clean_start = state.lines.buffered() == 0;
        state
            .lines
            .feed_with_ends(data, max, &mut |line, end| match line {
                Ok(bytes) => {
                    let start = arena.len();
                    arena.extend_from_slice(bytes);
                    ranges.push((Some(start..arena.len()), end));
                }
                Err(_) => ranges.push((None, end)),
            });
        let mut previous_end = clean_start.then_some(0);
        for (range, end) in ranges.drain(..) {
            if self.conns.get(slot).is_none_or(|c| c.state != State::Open) {
                break;
            }
            // Backpressure between two lines: a publisher's remaining input waits, unread, for
            // the shards to catch up (the requests already handled stay answered in order).
            if let Some(from) = previous_end {
                if self.publisher_must_wait(slot) {
                    self.pause_with_input(slot, &data[from..]);
                    break;
                }
                if self.conns[slot].control().is_some_and(|s| s.barriers > 0) {
                    self.hold_for_barrier(slot, &data[from..]);
                    break;
                }
            }
            previous_end = end;
            match range {
                // Blank (or whitespace-only) lines are allowed between requests.
                Some(range) if arena[range.clone()].iter().all(u8::is_ascii_whitespace) => {}
                Some(range) => self.on_control_line(slot, &arena[range]),
                None => {
                    self.counters.control_errors += 1;
                    let max = self.config.limits.control_line_bytes_max;
                    self.reply_now(
                        slot,
                        None,
                        Err((
                            ErrorCode::LineTooLong,
                            format!("a request line is limited to {max} bytes"),
                        )),
                    );
                }
            }
        }
        ranges.clear();
        arena.clear();
        if arena.capacity() > 64 * 1024 {
            arena = Vec::new();
        }
        self.line_arena = arena;
        self.line_ranges = ranges;
        if self.conns.contains(slot) {
            self.flush_replies(slot);
        }
    }

    fn on_control_line(&mut self, slot: usize, line: &[u8]) {
        self.counters.control_requests += 1;
        let authed = self.conns[slot].control().is_some_and(|s| s.authed);
        let request = match control::parse(line) {
            Ok(request) => request,
            Err(e) => {
                self.counters.control_errors += 1;
                if !authed {
                    // Before `auth`, anything but a valid `auth` ends the connection.
                    self.reply_now(slot, e.id, Err((e.code, e.message)));
                    return self.close_after_flush(slot);
                }
                if !e.noreply {
                    self.reply_now(slot, e.id, Err((e.code, e.message)));
                }
                return;
            }
        };
        let (id, noreply) = (request.id, request.noreply);
        if !authed {
            let token_ok = matches!(&request.method, Method::Auth(t) if Some(t) == self.config.control.token.as_ref());
            if token_ok {
                let max = self.config.limits.control_conns_per_shard_max * self.shards;
                let admitted = ControlGate::enter(&self.control_gate.authed, max);
                if let Some(state) = self.conns[slot].control() {
                    if state.counted == Counted::Unauthed {
                        self.unauthed_open -= 1;
                    }
                    state.counted = if admitted {
                        Counted::Authed
                    } else {
                        Counted::Nothing
                    };
                    state.authed = admitted;
                }
                if !admitted {
                    self.counters.control_refusals += 1;
                    let max = self.config.limits.control_conns_per_shard_max;
                    let why = format!(
                        "the server has its {max} control connections per shard \
                         (control_conns_per_shard_max); closing"
                    );
                    self.reply_now(slot, id, Err((ErrorCode::LimitExceeded, why)));
                    return self.close_after_flush(slot);
                }
                self.arm_control_idle(slot);
                return self.reply_now(slot, id, Ok("{}".to_string()));
            }
            self.counters.control_errors += 1;
            let unauthorized_message = match request.method {
                Method::Auth(_) => "wrong token",
                _ => "send {\"method\":\"auth\",\"token\":...} first",
            };
            self.reply_now(
                slot,
                id,
                Err((ErrorCode::Unauthorized, unauthorized_message.to_string())),
            );
            // Refuse the rest of the stream: close once the reply is out.
            return self.close_after_flush(slot);
        }
        let barrier = !noreply
            && matches!(
                &request.method,
                Method::Subscribe(..)
                    | Method::Unsubscribe(..)
                    | Method::BindUser(..)
                    | Method::UnbindUser(..)
            );
        let pending_before = self.conns[slot].control().map_or(0, |s| s.pending.len());
        self.execute(slot, request.method, id, noreply);
        if barrier {
            if let Some(state) = self.conns.get_mut(slot).and_then(|c| c.control()) {
                if state.pending.len() > pending_before {
                    if let Some(p) = state.pending.back_mut().filter(|p| p.remaining > 0) {
                        p.barrier = true;
                        state.barriers += 1;
                    }
                }
            }
        }
    }

    /// Runs one parsed, authorised request (the one executor of the control socket and the
    /// HTTP API).
    pub(super) fn execute(&mut self, slot: usize, method: Method, id: Option<&str>, noreply: bool) {
        self.counters.request(method.index());
        let name_max = self.config.limits.channel_name_bytes_max;
        let bad_name = |name: &str| {
            channel::validate_name(name, name_max)
                .err()
                .map(|_: ChannelError| {
                    let why = format!(
                        "channel names are 1 to {name_max} characters of [A-Za-z0-9_.:@/-]"
                    );
                    (ErrorCode::BadParams, why)
                })
        };
        if matches!(
            method,
            Method::Publish(..) | Method::Broadcast(..) | Method::Send(..)
        ) {
            self.mark_publisher(slot);
        }
        match method {
            Method::Auth(_) => self.reply_now(slot, id, Ok("{}".to_string())),
            Method::Publish(name, payload, report, key) => {
                if let Some(err) = bad_name(&name) {
                    return self.fail_request(slot, id, noreply, err);
                }
                let channel: Arc<str> = Arc::from(name.as_str());
                let owner = channel::owner_of(&channel, self.shards);
                let report = report && !noreply;
                let acc = if report {
                    Acc::Report {
                        position: None,
                        delivered: 0,
                        slow: 0,
                        shards: 0,
                        refused: 0,
                    }
                } else {
                    Acc::Publish(None)
                };
                let reply = if noreply {
                    None
                } else {
                    self.await_parts(slot, id, 1, acc).map(|to| (to, 0))
                };
                if !noreply && reply.is_none() {
                    return;
                }
                self.send_x(
                    owner,
                    XMsg::Publish {
                        channel,
                        body: body_of(payload),
                        reply,
                        report,
                        key: key.map(String::into_boxed_str),
                    },
                );
            }
            Method::Broadcast(Some(names), payload) => {
                if let Some(err) = names.iter().find_map(|n| bad_name(n)) {
                    return self.fail_request(slot, id, noreply, err);
                }
                if names.is_empty() {
                    return self.reply_now(slot, id, Ok("{\"results\":[]}".to_string()));
                }
                let channels: Vec<Arc<str>> = names.iter().map(|n| Arc::from(n.as_str())).collect();
                let body = body_of(payload);
                let to = if noreply {
                    None
                } else {
                    let acc = Acc::Broadcast(channels.iter().map(|c| (c.clone(), None)).collect());
                    match self.await_parts(slot, id, channels.len() as u32, acc) {
                        Some(to) => Some(to),
                        None => return,
                    }
                };
                for (index, channel) in channels.into_iter().enumerate() {
                    let owner = channel::owner_of(&channel, self.shards);
                    let reply = to.map(|to| (to, index as u32));
                    self.send_x(
                        owner,
                        XMsg::Publish {
                            channel,
                            body: body.clone(),
                            reply,
                            report: false,
                            key: None,
                        },
                    );
                }
            }
            Method::Broadcast(None, payload) => {
                let (envelope, raw) = crate::wire::encode_push(&body_of(payload));
                let to = if noreply {
                    None
                } else {
                    match self.await_parts(slot, id, self.shards as u32, Acc::Count(0)) {
                        Some(to) => Some(to),
                        None => return,
                    }
                };
                for shard in 0..self.shards {
                    let msg = XMsg::PushAll {
                        envelope: envelope.clone(),
                        raw: raw.clone(),
                        reply: to,
                    };
                    self.send_x(shard, msg);
                }
            }
            Method::Send(conn, payload) => {
                self.request_for_conn(slot, id, noreply, conn, ConnAction::Send(body_of(payload)))
            }
            Method::Subscribe(conn, name) => {
                if let Some(err) = bad_name(&name) {
                    return self.fail_request(slot, id, noreply, err);
                }
                self.request_for_conn(
                    slot,
                    id,
                    noreply,
                    conn,
                    ConnAction::Subscribe(Arc::from(name.as_str())),
                );
            }
            Method::Unsubscribe(conn, name) => {
                if let Some(err) = bad_name(&name) {
                    return self.fail_request(slot, id, noreply, err);
                }
                self.request_for_conn(
                    slot,
                    id,
                    noreply,
                    conn,
                    ConnAction::Unsubscribe(Arc::from(name.as_str())),
                );
            }
            Method::Disconnect(conn, code, reason) => self.request_for_conn(
                slot,
                id,
                noreply,
                conn,
                ConnAction::Disconnect(code, reason),
            ),
            Method::Presence {
                channel: name,
                after,
                user_after,
                limit,
            } => {
                if let Some(err) = bad_name(&name) {
                    return self.fail_request(slot, id, noreply, err);
                }
                if noreply {
                    return;
                }
                let channel: Arc<str> = Arc::from(name.as_str());
                if let Some(to) = self.await_parts(
                    slot,
                    id,
                    self.shards as u32 + 1,
                    Acc::Conns {
                        ids: Vec::new(),
                        limit,
                        users: None,
                    },
                ) {
                    let owner = channel::owner_of(&channel, self.shards);
                    self.send_x(
                        owner,
                        XMsg::PresenceAsk {
                            channel: channel.clone(),
                            stats: false,
                            after: user_after.map(|u| Arc::from(u.as_str())),
                            limit,
                            reply: to,
                        },
                    );
                    for shard in 0..self.shards {
                        self.send_x(
                            shard,
                            XMsg::Query {
                                query: Query::Presence {
                                    channel: channel.clone(),
                                    after,
                                    limit,
                                },
                                reply: to,
                            },
                        );
                    }
                }
            }
            Method::Channels { after, limit } => {
                if noreply {
                    return;
                }
                let acc = Acc::Channels {
                    map: BTreeMap::new(),
                    limit,
                };
                let after: Option<Arc<str>> = after.map(|a| Arc::from(a.as_str()));
                if let Some(to) = self.await_parts(slot, id, self.shards as u32, acc) {
                    for shard in 0..self.shards {
                        self.send_x(
                            shard,
                            XMsg::Query {
                                query: Query::Channels {
                                    after: after.clone(),
                                    limit,
                                },
                                reply: to,
                            },
                        );
                    }
                }
            }
            Method::History {
                channel: name,
                limit,
                since,
            } => {
                if let Some(err) = bad_name(&name) {
                    return self.fail_request(slot, id, noreply, err);
                }
                if noreply {
                    return;
                }
                let channel: Arc<str> = Arc::from(name.as_str());
                let owner = channel::owner_of(&channel, self.shards);
                if let Some(to) = self.await_parts(slot, id, 1, Acc::Json(None)) {
                    self.send_x(
                        owner,
                        XMsg::History {
                            channel,
                            limit,
                            since,
                            reply: to,
                        },
                    );
                }
            }
            Method::PresenceStats(name) => {
                if let Some(err) = bad_name(&name) {
                    return self.fail_request(slot, id, noreply, err);
                }
                if noreply {
                    return;
                }
                let channel: Arc<str> = Arc::from(name.as_str());
                let owner = channel::owner_of(&channel, self.shards);
                if let Some(to) = self.await_parts(slot, id, 1, Acc::Json(None)) {
                    self.send_x(
                        owner,
                        XMsg::PresenceAsk {
                            channel,
                            stats: true,
                            after: None,
                            limit: 0,
                            reply: to,
                        },
                    );
                }
            }
            Method::BindUser(conn, user, info) => {
                let target = ConnId::from_u64(conn).filter(|c| c.shard() < self.shards);
                let Some(target) = target else {
                    let why = format!("no connection {conn}");
                    return self.fail_request(slot, id, noreply, (ErrorCode::NoSuchConn, why));
                };
                let reply = if noreply {
                    None
                } else {
                    match self.await_parts(slot, id, 1, Acc::Done) {
                        Some(to) => Some(to),
                        None => return,
                    }
                };
                let user: Arc<str> = Arc::from(user.as_str());
                let owner = channel::owner_of(&user, self.shards);
                let info = info.map(|i| Arc::from(i.as_str()));
                let msg = XMsg::UserBind {
                    user,
                    conn: target,
                    reply,
                    from_control: Some(info),
                };
                self.send_x(owner, msg);
            }
            Method::UnbindUser(conn) => {
                self.request_for_conn(slot, id, noreply, conn, ConnAction::Bind(None, None))
            }
            Method::SendUser(user, payload) => {
                self.user_request(slot, id, noreply, user, UserOp::Send(body_of(payload)))
            }
            Method::DisconnectUser(user, code, reason) => {
                self.user_request(slot, id, noreply, user, UserOp::Disconnect(code, reason))
            }
            Method::UserConns(user) => {
                if !noreply {
                    self.user_request(slot, id, noreply, user, UserOp::Conns)
                }
            }
            Method::Online(users) => {
                if noreply {
                    return;
                }
                let users: Vec<Arc<str>> = users.iter().map(|u| Arc::from(u.as_str())).collect();
                // Every asked user is in the answer, 0 when no shard holds it.
                let map = users.iter().map(|u| (u.clone(), 0)).collect();
                // Clustered: the broker says how many nodes hold each user (one more part).
                let clustered = self.cluster.is_some();
                let nodes = clustered.then_some(None);
                let acc = Acc::Users {
                    map,
                    limit: None,
                    nodes,
                };
                let parts = self.shards as u32 + u32::from(clustered);
                if let Some(to) = self.await_parts(slot, id, parts, acc) {
                    if clustered {
                        self.cluster_user_nodes(users.clone(), to);
                    }
                    for shard in 0..self.shards {
                        let mine: Vec<Arc<str>> = users
                            .iter()
                            .filter(|u| channel::owner_of(u, self.shards) == shard)
                            .cloned()
                            .collect();
                        let query = UserQuery::Online(mine);
                        self.send_x(shard, XMsg::UserQuery { query, reply: to });
                    }
                }
            }
            Method::Users { after, limit } => {
                if noreply {
                    return;
                }
                let acc = Acc::Users {
                    map: BTreeMap::new(),
                    limit: Some(limit),
                    nodes: None,
                };
                let after: Option<Arc<str>> = after.map(|a| Arc::from(a.as_str()));
                if let Some(to) = self.await_parts(slot, id, self.shards as u32, acc) {
                    for shard in 0..self.shards {
                        let query = UserQuery::List {
                            after: after.clone(),
                            limit,
                        };
                        self.send_x(shard, XMsg::UserQuery { query, reply: to });
                    }
                }
            }
            Method::Events { types, group } => {
                let mask = match super::events::Kind::mask_of(types.iter().map(String::as_str)) {
                    Ok(mask) => mask,
                    Err(why) => {
                        return self.fail_request(slot, id, noreply, (ErrorCode::BadParams, why));
                    }
                };
                let already = self.conns[slot].control().is_some_and(|s| s.is_consumer());
                if already {
                    let why = "this connection consumes events already".to_string();
                    return self.fail_request(slot, id, noreply, (ErrorCode::BadParams, why));
                }
                if let Some(state) = self.conns[slot].control() {
                    state.event_types = mask;
                }
                self.counters.event_consumers += 1;
                let reply = if noreply {
                    None
                } else {
                    match self.await_parts(slot, id, self.shards as u32, Acc::Done) {
                        Some(to) => Some(to),
                        None => return,
                    }
                };
                let generation = self.conns[slot].generation;
                let group = group.map(|g| Arc::from(g.as_str()));
                self.announce_consumer(slot, generation, group, Some(mask), reply);
            }
            Method::Reload => {
                self.request_reload();
                if !noreply {
                    let text = "{\"requested\":true}".to_string();
                    self.reply_now(slot, id, Ok(text));
                }
            }
            Method::Drain(over_ms) => {
                self.request_drain(over_ms);
                if !noreply {
                    let text = format!("{{\"draining\":true,\"over_ms\":{over_ms}}}");
                    self.reply_now(slot, id, Ok(text));
                }
            }
            Method::Stats => {
                if !noreply {
                    let text = self.stats_json();
                    self.reply_now(slot, id, Ok(text));
                }
            }
            Method::Info => {
                if !noreply {
                    let text = self.info_json();
                    self.reply_now(slot, id, Ok(text));
                }
            }
        }
    }

    fn fail_request(
        &mut self,
        slot: usize,
        id: Option<&str>,
        noreply: bool,
        err: (ErrorCode, String),
    ) {
        self.counters.control_errors += 1;
        if !noreply {
            self.reply_now(slot, id, Err(err));
        }
    }

    /// A request for every connection of `user`, answered by the user's owner.
    fn user_request(
        &mut self,
        slot: usize,
        id: Option<&str>,
        noreply: bool,
        user: String,
        op: UserOp,
    ) {
        let user: Arc<str> = Arc::from(user.as_str());
        let owner = channel::owner_of(&user, self.shards);
        let reply = if noreply {
            None
        } else {
            match self.await_parts(slot, id, 1, Acc::Json(None)) {
                Some(to) => Some(to),
                None => return,
            }
        };
        if matches!(op, UserOp::Send(_)) {
            self.mark_publisher(slot);
        }
        let here = false;
        self.send_x(
            owner,
            XMsg::UserOp {
                user,
                op,
                reply,
                here,
            },
        );
    }

    fn request_for_conn(
        &mut self,
        slot: usize,
        id: Option<&str>,
        noreply: bool,
        raw: u64,
        action: ConnAction,
    ) {
        let target = ConnId::from_u64(raw).filter(|c| {
            c.shard() < self.shards && (c.node() == self.node || self.cluster.is_some())
        });
        let Some(conn) = target else {
            return self.fail_request(
                slot,
                id,
                noreply,
                (ErrorCode::NoSuchConn, format!("no connection {raw}")),
            );
        };
        let remote = self.is_remote_conn(conn);
        // Another node's connection is answered with where it went (`{"node":N,..}`).
        let acc = if remote { Acc::Json(None) } else { Acc::Done };
        let reply = if noreply {
            None
        } else {
            match self.await_parts(slot, id, 1, acc) {
                Some(to) => Some(to),
                None => return,
            }
        };
        if remote {
            return self.cluster_conn_op(conn, action, reply);
        }
        self.send_x(
            conn.shard(),
            XMsg::ToConn {
                conn,
                action,
                reply,
            },
        );
    }

    /// Adds a pending reply expecting `parts` parts; `None` (and the connection closed) when the
    /// connection already has `control_pending_max` replies pending.
    pub(super) fn await_parts(
        &mut self,
        slot: usize,
        id: Option<&str>,
        parts: u32,
        acc: Acc,
    ) -> Option<ReplyTo> {
        let max = self.config.limits.control_pending_max;
        let generation = self.conns[slot].generation;
        let state = self.conns[slot].control()?;
        if state.pending.len() >= max {
            self.overloaded(slot, id);
            return None;
        }
        let seq = state.front_seq + state.pending.len() as u64;
        state.pending.push_back(Pending {
            id: id.map(Box::from),
            remaining: parts,
            acc,
            error: None,
            barrier: false,
        });
        Some(ReplyTo {
            shard: self.index as u16,
            slot: slot as u32,
            generation,
            seq,
        })
    }

    /// A complete HTTP response, queued behind the pending replies.
    pub(super) fn reply_raw(&mut self, slot: usize, response: Vec<u8>) {
        let max = self.config.limits.control_pending_max;
        let Some(state) = self.conns[slot].control() else {
            return;
        };
        if state.pending.len() >= max {
            return self.overloaded(slot, None);
        }
        state.pending.push_back(Pending {
            id: None,
            remaining: 0,
            acc: Acc::Raw(response),
            error: None,
            barrier: false,
        });
    }

    /// A reply known at once; still queued behind earlier pending replies.
    fn reply_now(
        &mut self,
        slot: usize,
        id: Option<&str>,
        result: Result<String, (ErrorCode, String)>,
    ) {
        let max = self.config.limits.control_pending_max;
        let Some(state) = self.conns[slot].control() else {
            return;
        };
        if state.pending.len() >= max {
            // Immediate replies count against the same bound as the others: a backend that
            // pipelines `stats` without reading its answers is stopped like any other.
            return self.overloaded(slot, id);
        }
        let (acc, error) = match result {
            Ok(text) => (Acc::Ready(text), None),
            Err(e) => (Acc::Done, Some(e)),
        };
        state.pending.push_back(Pending {
            id: id.map(Box::from),
            remaining: 0,
            acc,
            error,
            barrier: false,
        });
    }

    /// The connection has `control_pending_max` replies owed: its last answer is a
    /// `limit_exceeded` error (queued behind the owed ones, past the bound by exactly one), then
    /// it is closed once its replies are out; counted as `control_overloads`.
    fn overloaded(&mut self, slot: usize, id: Option<&str>) {
        self.counters.control_overloads += 1;
        let max = self.config.limits.control_pending_max;
        if let Some(state) = self.conns[slot].control() {
            state.pending.push_back(Pending {
                id: id.map(Box::from),
                remaining: 0,
                acc: Acc::Done,
                barrier: false,
                error: Some((
                    ErrorCode::LimitExceeded,
                    format!(
                        "{max} replies are owed on this connection (control_pending_max); read \
                         them before sending more. Closing."
                    ),
                )),
            });
        }
        self.close_after_flush(slot);
    }

    /// A part of a reply arrived for one of this shard's control connections.
    pub(super) fn on_reply(&mut self, to: ReplyTo, part: Part) {
        let slot = to.slot as usize;
        let alive = self
            .conns
            .get(slot)
            .is_some_and(|c| c.generation == to.generation && c.endpoint == Endpoint::Control);
        if !alive {
            return;
        }
        let Some(state) = self.conns[slot].control() else {
            return;
        };
        let Some(index) = to.seq.checked_sub(state.front_seq) else {
            return;
        };
        let Some(p) = state.pending.get_mut(index as usize) else {
            return;
        };
        debug_assert!(p.remaining > 0);
        p.remaining = p.remaining.saturating_sub(1);
        match (part, &mut p.acc) {
            (Part::Published { offset, epoch, .. }, Acc::Publish(pos)) => {
                *pos = Some((offset, epoch))
            }
            (
                Part::Published {
                    offset,
                    epoch,
                    more,
                    ..
                },
                Acc::Report { position, .. },
            ) => {
                *position = Some((offset, epoch));
                // One report follows from every shard the owner delivered to.
                p.remaining += more;
            }
            (
                Part::Delivered {
                    delivered: d,
                    slow: k,
                    refused: r,
                },
                Acc::Report {
                    delivered,
                    slow,
                    shards,
                    refused,
                    ..
                },
            ) => {
                *delivered += d;
                *slow += k;
                *shards += 1;
                *refused += u32::from(r);
            }
            (
                Part::Published {
                    index,
                    offset,
                    epoch,
                    ..
                },
                Acc::Broadcast(results),
            ) => {
                if let Some(r) = results.get_mut(index as usize) {
                    r.1 = Some((offset, epoch));
                }
            }
            (Part::Failed(code, message), _) => p.error = Some((code, message)),
            (Part::Conns(ids), Acc::Conns { ids: all, .. }) => all.extend(ids),
            (Part::Json(text), Acc::Conns { users, .. }) => *users = Some(text),
            (Part::Channels(list), Acc::Users { map, .. }) => {
                for (name, n) in list {
                    *map.entry(name).or_insert(0) += n;
                }
            }
            (Part::Nodes(list), Acc::Users { nodes, .. }) => {
                *nodes = Some(list.map(|l| l.into_iter().collect()));
            }
            (Part::Channels(list), Acc::Channels { map, .. }) => {
                for (name, n) in list {
                    *map.entry(name).or_insert(0) += n;
                }
            }
            (Part::Count(n), Acc::Count(total)) => *total += n,
            (
                Part::Published { .. },
                Acc::Fixed(_) | Acc::PusherChannels { .. } | Acc::PusherBatch { .. },
            ) => {}
            (
                Part::PusherChannels(list),
                Acc::PusherChannels { map, .. } | Acc::PusherBatch { map, .. },
            ) => {
                for (name, conns, users) in list {
                    map.insert(name, (conns, users));
                }
            }
            (Part::Json(text), Acc::Json(slot_text)) => *slot_text = Some(text),
            (Part::Done, _) => {}
            (part, acc) => debug_assert!(false, "reply part {part:?} does not fit {acc:?}"),
        }
        let released = p.remaining == 0 && std::mem::take(&mut p.barrier);
        if index == 0 {
            self.flush_replies(slot);
        }
        if released && self.conns.contains(slot) {
            self.release_barrier(slot);
        }
    }

    /// Stops reading a control connection until its pending barrier requests are answered;
    /// `rest` (the input after the barrier's line) waits in `held`.
    fn hold_for_barrier(&mut self, slot: usize, rest: &[u8]) {
        let token = self.conns.token(slot);
        let sock = self.conns[slot].sock;
        let Some(state) = self.conns[slot].control() else {
            return;
        };
        debug_assert!(state.held.is_empty());
        state.lines.reset();
        state.held = rest.to_vec();
        state.barrier_paused = true;
        if !state.paused {
            state.paused = true;
            self.intents.push(Intent::PauseRead { token, sock });
        }
    }

    /// A barrier request was answered: when none is left, the held input runs (unless
    /// backpressure holds the connection too, whose resume will run it).
    fn release_barrier(&mut self, slot: usize) {
        let token = self.conns.token(slot);
        let sock = self.conns[slot].sock;
        let publishers_paused = self.publishers_paused;
        let Some(state) = self.conns[slot].control() else {
            return;
        };
        state.barriers = state.barriers.saturating_sub(1);
        if state.barriers > 0 || !state.barrier_paused {
            return;
        }
        state.barrier_paused = false;
        if publishers_paused && state.publisher {
            return; // still paused, for backpressure now
        }
        state.paused = false;
        let held = std::mem::take(&mut state.held);
        let eof = self.conns[slot].flags & super::conn::PEER_EOF != 0;
        // Even after EOF: a driver that stopped reading must deliver the sends' completions
        // and the peer's reset as before (a second EOF is ignored).
        self.intents.push(Intent::ResumeRead { token, sock });
        if !held.is_empty() {
            self.on_control_bytes(slot, &held);
        }
        if eof && self.conns.contains(slot) && self.conns[slot].state == State::Open {
            // The backend half-closed while its input waited: finish as EOF would have.
            self.on_control_eof(slot);
            if self.conns.contains(slot) {
                self.close_after_flush(slot);
            }
        } else if self.conns.contains(slot) {
            self.mark_dirty(slot);
        }
    }

    /// Writes out the complete replies at the front of the queue.
    pub(super) fn flush_replies(&mut self, slot: usize) {
        let limit = self.config.limits.outbound_bytes_max;
        let conn = &mut self.conns[slot];
        let Some(state) = conn.ext.as_mut().and_then(|e| e.control.as_mut()) else {
            return;
        };
        let mut wrote = false;
        let mut overflow = false;
        while state.pending.front().is_some_and(|p| p.remaining == 0) {
            let Some(p) = state.pending.pop_front() else {
                break;
            };
            state.front_seq += 1;
            if let Some((code, _)) = &p.error {
                let index = ErrorCode::ALL.iter().position(|c| c == code).unwrap_or(0);
                self.counters.error_reply(index as u16);
            }
            let line = if state.is_http {
                let keep_alive = state.http.is_some();
                match (&p.acc, &p.error) {
                    (Acc::Raw(bytes), _) => bytes.clone(),
                    (_, Some((code, message))) => crate::http::response::error_json(
                        super::http::status_of(*code),
                        code.as_str(),
                        message,
                        keep_alive,
                        &[],
                    ),
                    (_, None) => crate::http::response::response(
                        200,
                        "application/json",
                        result_of(&p).as_bytes(),
                        keep_alive,
                        &[crate::http::response::NO_STORE],
                    ),
                }
            } else {
                match &p.error {
                    Some((code, message)) => control::reply_error(p.id.as_deref(), *code, message),
                    None => control::reply_ok(p.id.as_deref(), &result_of(&p)),
                }
                .into_bytes()
            };
            if conn.out.push(Bytes::from(line), limit, &mut self.owed) == Enqueue::SlowConsumer {
                overflow = true;
                break;
            }
            wrote = true;
        }
        if overflow {
            // A backend that does not read its replies: the replies it has not read are
            // dropped, and the last line it gets says why (exempt from the limit, like a close
            // frame), then EOF. Counted as a control overload, not as a WebSocket slow consumer.
            self.counters.control_overloads += 1;
            let max = self.config.limits.outbound_bytes_max;
            let line = control::reply_error(
                None,
                ErrorCode::LimitExceeded,
                &format!(
                    "more than {max} bytes of replies are unread (outbound_bytes_max); closing"
                ),
            );
            state.pending.clear();
            conn.out.discard_queued(&mut self.owed);
            conn.out.push_control(Bytes::from(line), &mut self.owed);
            return self.close_after_flush(slot);
        }
        if wrote {
            self.mark_dirty(slot);
        }
    }

    /// Acts on a connection of this shard for the control socket.
    pub(super) fn on_to_conn(&mut self, conn: ConnId, action: ConnAction, reply: Option<ReplyTo>) {
        let slot = conn.slot();
        let alive = self.conns.get(slot).is_some_and(|c| {
            c.generation == conn.generation()
                && matches!(c.endpoint, Endpoint::Push { .. })
                && c.state == State::Open
        });
        if !alive {
            self.bind_missed(conn, &action);
        }
        let part = if !alive {
            Part::Failed(
                ErrorCode::NoSuchConn,
                format!("connection {} is not open", conn.get()),
            )
        } else {
            match action {
                ConnAction::Send(body) => {
                    let (envelope, raw) = crate::wire::encode_push(&body);
                    let frame =
                        if matches!(self.conns[slot].endpoint, Endpoint::Push { raw: true, .. }) {
                            raw
                        } else {
                            envelope
                        };
                    self.queue_data(slot, frame);
                    Part::Done
                }
                ConnAction::Subscribe(name) => match self.subscribe(slot, &name, None) {
                    Ok(()) => {
                        // Answered once the owner registered this shard's interest, so a
                        // publish the backend sends after the reply reaches this subscriber.
                        let pending = self.local.find(&name).is_some_and(|l| {
                            self.local.get(l).sync != crate::channel::local::Sync::Active
                        });
                        if let (true, Some(to)) = (pending, reply) {
                            self.subscribe_waiters.entry(name).or_default().push(to);
                            return;
                        }
                        Part::Done
                    }
                    Err(e) => Part::Failed(
                        e.code(),
                        e.message(self.config.limits.channel_name_bytes_max),
                    ),
                },
                ConnAction::Unsubscribe(name) => match self.unsubscribe(slot, &name, None) {
                    Ok(()) => Part::Done,
                    Err(e) => Part::Failed(
                        e.code(),
                        e.message(self.config.limits.channel_name_bytes_max),
                    ),
                },
                ConnAction::Disconnect(code, reason) => {
                    self.start_close_with(slot, code, &reason);
                    Part::Done
                }
                ConnAction::Bind(user, info) => {
                    // The owner's verdict (or, unbinding, this shard) answers the request.
                    self.bind_conn(slot, user, info, reply);
                    return;
                }
            }
        };
        if let Some(to) = reply {
            self.send_x(to.shard as usize, XMsg::Reply { to, part });
        }
    }

    /// Answers a question about this shard's channels.
    pub(super) fn on_query(&mut self, query: Query, reply: ReplyTo) {
        let part = match query {
            Query::Presence {
                channel,
                after,
                limit,
            } => {
                // This shard's smallest `limit + 1` ids above the cursor: with every shard's, the
                // asker has the page and knows whether another follows.
                let mut ids: Vec<u64> = match self.local.find(&channel) {
                    Some(local) => self
                        .local
                        .get(local)
                        .subscribers
                        .iter()
                        .map(|&s| {
                            ConnId::at(
                                self.node,
                                self.index,
                                s as usize,
                                self.conns[s as usize].generation,
                            )
                            .get()
                        })
                        .filter(|&id| after.is_none_or(|a| id > a))
                        .collect(),
                    None => Vec::new(),
                };
                ids.sort_unstable();
                ids.truncate(limit + 1);
                Part::Conns(ids)
            }
            Query::Channels { after, limit } => {
                // Each shard sends its first `limit + 1` names after the cursor; a name on the
                // page is then complete: a shard that cut it off sent `limit + 1` smaller names.
                let mut list: Vec<(Arc<str>, u64)> = self
                    .local
                    .iter()
                    .filter(|c| !c.subscribers.is_empty())
                    .filter(|c| after.as_deref().is_none_or(|a| &*c.name > a))
                    .map(|c| (c.name.clone(), c.subscribers.len() as u64))
                    .collect();
                list.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                list.truncate(limit + 1);
                Part::Channels(list)
            }
            query @ (Query::PusherChannels { .. }
            | Query::PusherUsers { .. }
            | Query::PusherTerminate { .. }) => super::pusher::answer(self, query),
        };
        self.send_x(reply.shard as usize, XMsg::Reply { to: reply, part });
    }

    /// Pushes to every open `/ws` connection of this shard.
    pub(super) fn on_push_all(&mut self, envelope: &Bytes, raw: &Bytes, reply: Option<ReplyTo>) {
        let targets: Vec<(usize, bool)> = self
            .conns
            .iter()
            .filter_map(|(slot, c)| match c.endpoint {
                Endpoint::Push { raw, .. } if c.state == State::Open => Some((slot, raw)),
                _ => None,
            })
            .collect();
        for &(slot, is_raw) in &targets {
            self.queue_data(
                slot,
                if is_raw {
                    raw.clone()
                } else {
                    envelope.clone()
                },
            );
        }
        if let Some(to) = reply {
            self.send_x(
                to.shard as usize,
                XMsg::Reply {
                    to,
                    part: Part::Count(targets.len() as u64),
                },
            );
        }
    }

    fn stats_json(&self) -> String {
        let shards: Vec<crate::stats::Counters> =
            self.all_published.iter().map(|p| p.read()).collect();
        let mut total = crate::stats::Counters::default();
        for c in &shards {
            total.add(c);
        }
        serde_json::json!({ "total": total, "shards": shards }).to_string()
    }

    fn info_json(&self) -> String {
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "shards": self.shards,
            "uptime_ms": self.now_ms,
            "limits": self.config.limits,
        })
        .to_string()
    }
}
