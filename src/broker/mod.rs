//! Where channels live beyond one host: the seam between the shards and a broker bridge.
//!
//! Owns the types that cross the seam and nothing else: [`BrokerCommand`] (shards → bridge),
//! [`BrokerEvent`] (bridge → shards), the [`BrokerSink`] the bridge delivers events into, the
//! bounded command queue behind [`BrokerHandle`], and the bridge's counters ([`BrokerStats`]).
//! The one bridge today is [`redis`]; [`config`] holds its `[cluster]` settings; [`route`] carries
//! events to the shards (the server's sink).
//!
//! The seam, as the integration drives it:
//!
//! - **Commands** enter a bounded queue with [`BrokerHandle::try_send`], which never blocks: a
//!   full queue is refused and counted (`queue_overflows`), a `Publish` or `History` while the
//!   broker is down is refused at once (`publish_errors` for publishes), and the command comes
//!   back in the error so the caller can answer its request (a publish maps to
//!   `cluster_publish_errors`). `Subscribe`/`Unsubscribe` refused for a full queue must be kept
//!   by the caller and sent again on a later turn: their number is bounded by the channels, and
//!   the bridge's subscription set must follow the caller's interest exactly. After a batch of
//!   sends, [`BrokerHandle::ring`] wakes the bridge if it sleeps (one eventfd write; the xshard
//!   doorbell protocol, so no wake-up is lost).
//! - **Interest**: the caller reference-counts local interest and sends `Subscribe` on a
//!   channel's first local subscriber and `Unsubscribe` after its last one. The bridge keeps the
//!   set and resubscribes all of it after a reconnect.
//! - **Delivery**: every node, the publishing one included, delivers a channel's messages from
//!   [`BrokerEvent::Message`], never from its own publish: each node then sees each message
//!   once, in the broker's one order, with the offset and epoch the broker assigned. A publish
//!   is answered by [`BrokerEvent::Published`] with its offset (or the error).
//! - **Recovery**: [`BrokerCommand::History`] answers the channel's position and, when the
//!   caller's `since` is still kept in the same epoch, the messages after it; without `since`,
//!   a channel the broker does not know gets its epoch then (offset 0), so subscribers learn
//!   the epoch their first messages will carry. A history read is
//!   executed only after every earlier `Subscribe` of this bridge is active at the broker, so a
//!   `Subscribe` then a `History` for the same channel leave no gap: every message with an
//!   offset above the reply's position arrives as a `Message` (possibly before the reply: the
//!   caller holds those back until the reply, and drops offsets it already has).
//! - **Faults**: [`BrokerEvent::Down`] once when the broker is lost (requests in flight fail
//!   with [`BrokerError::Down`]; their outcome is unknown, the bridge never retries a publish);
//!   then, after the bridge has reconnected by itself and resubscribed, one
//!   [`BrokerEvent::Resync`] per subscribed channel whose position moved meanwhile (messages
//!   missed, or a new epoch because the broker lost the channel) and [`BrokerEvent::Up`].
//!
//! - **Users**: the node holding a user's connections subscribes the user (`UserSubscribe` on
//!   its first connection, `UserUnsubscribe` after its last); `UserSend` reaches every node
//!   that holds the user, the sending one included, as [`BrokerEvent::User`] (so each acts on
//!   its own connections, in the broker's one order), and is answered with the number of
//!   nodes. Nothing is kept: a node that is cut off misses what was sent meanwhile.
//!
//! - **Presence**: a channel's owner shard reports each change of the node's presence in it
//!   (`PresenceSet`); the bridge keeps the node's presence, writes it under the node's lease
//!   (renewed while the node lives, so a dead node's entries go after the lease), writes it all
//!   again after a reconnect, and answers `PresenceRead` from every live node's entries. Join and
//!   leave news are decided at the broker across nodes and arrive as
//!   [`BrokerEvent::PresenceNews`] on every node with subscribers.
//!
//! This module is plain data plus the queue: no sockets, no threads, no clock. The engine may
//! use it; only `broker::redis` does I/O (a tidy test holds both).

use crate::xshard::Doorbell;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

pub mod config;
pub mod redis;
pub mod route;

/// A channel's place in its sequence: the last offset assigned and the epoch that identifies
/// this incarnation of the sequence. `(0, 0)`: the broker does not know the channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// The last offset assigned (0: none).
    pub offset: u64,
    /// The sequence's epoch (0: no sequence).
    pub epoch: u64,
}

/// How much history a publish keeps (the channel's namespace settings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    /// Messages the channel keeps (0: none; clamped to `[cluster] history_size_max`).
    pub size: u32,
    /// Seconds the kept messages live after the channel's last publish (0: the cluster's
    /// `key_ttl_s`).
    pub ttl_s: u64,
}

/// A request from a shard to the bridge.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerCommand {
    /// The node has its first local subscriber of `channel`.
    Subscribe {
        /// A valid channel name (`channel::validate_name`).
        channel: Arc<str>,
    },
    /// The node's last local subscriber of `channel` left.
    Unsubscribe {
        /// The channel.
        channel: Arc<str>,
    },
    /// Receive every broker message whose broker channel matches `pattern` (glob syntax, not
    /// prefixed: e.g. `ws:fid:*`), as [`BrokerEvent::Pattern`], payload as published.
    PatternSubscribe {
        /// The pattern.
        pattern: Arc<str>,
    },
    /// Stop receiving `pattern`.
    PatternUnsubscribe {
        /// The pattern.
        pattern: Arc<str>,
    },
    /// Sequence and deliver a message: answered by [`BrokerEvent::Published`].
    Publish {
        /// The channel.
        channel: Arc<str>,
        /// The payload, as subscribers receive it.
        payload: Bytes,
        /// History to keep.
        keep: Keep,
        /// The caller's token, returned in the answer (e.g. shard, request).
        token: u64,
    },
    /// The node holds its first connection of `user`: receive what any node sends the user
    /// ([`BrokerEvent::User`]).
    UserSubscribe {
        /// The user id (1-128 bytes, no control characters).
        user: Arc<str>,
    },
    /// The node's last connection of `user` went.
    UserUnsubscribe {
        /// The user id.
        user: Arc<str>,
    },
    /// Hand `payload` to every node that holds connections of `user`, this one included
    /// (each gets it as [`BrokerEvent::User`]): answered by [`BrokerEvent::UserSent`] with the
    /// number of nodes that got it. Executed only after every earlier subscription of this
    /// bridge is active (so a node that just subscribed the user is among them).
    UserSend {
        /// The user id.
        user: Arc<str>,
        /// What the nodes act on (the integration's encoding; the bridge passes it as is).
        payload: Bytes,
        /// The caller's token, returned in the answer.
        token: u64,
    },
    /// How many nodes hold connections of each of `users` (the subscribers of each user's
    /// channel): answered by [`BrokerEvent::UserNodes`], in the same order.
    UserNodes {
        /// The user ids (at most 5,000: `online`'s bound).
        users: Vec<Arc<str>>,
        /// The caller's token, returned in the answer.
        token: u64,
    },
    /// This node's presence in `channel` changed (at the channel's owner shard): `user` now
    /// holds `conns` of the node's connections in it (0: none; `None`: an anonymous
    /// connection came or went), and the node holds `node_conns` connections in it,
    /// `node_anon` of them anonymous (both 0: the node left the channel). The bridge keeps the
    /// node's presence and writes it under the node's lease; with `news`, the broker announces
    /// a user's first connection on any node and its last on all of them
    /// ([`BrokerEvent::PresenceNews`], to every node with subscribers).
    PresenceSet {
        /// The channel.
        channel: Arc<str>,
        /// The user whose count changed, with its `info` (raw JSON) when it joined.
        user: Option<(Arc<str>, Option<Arc<str>>)>,
        /// The user's connections in the channel on this node now.
        conns: u32,
        /// The node's connections in the channel now.
        node_conns: u64,
        /// Of those, anonymous.
        node_anon: u64,
        /// Whether the channel's namespace has `join_leave` news.
        news: bool,
    },
    /// Hand `payload` to node `node` (its number in connection ids): answered by
    /// [`BrokerEvent::NodeSent`] with the number of receivers (0: no such node is connected to
    /// the broker). The node gets it as [`BrokerEvent::NodeMessage`].
    NodeSend {
        /// The node's number.
        node: u8,
        /// What the node acts on (the integration's encoding; the bridge passes it as is).
        payload: Bytes,
        /// The caller's token, returned in the answer.
        token: u64,
    },
    /// The channel's presence on every live node: answered by [`BrokerEvent::PresenceReply`].
    PresenceRead {
        /// The channel.
        channel: Arc<str>,
        /// `None`: counts only (`presence_stats`); `Some((after, limit))`: a page of users in
        /// byte order after `after`, at most `limit`.
        page: Option<(Option<Arc<str>>, usize)>,
        /// Whether the channel's namespace has `join_leave` news: the read removes dead
        /// nodes' entries first, and their users' leave news go out with it.
        news: bool,
        /// The caller's token, returned in the answer.
        token: u64,
    },
    /// The channel's position and its newest kept messages (at most `limit`): answered by
    /// [`BrokerEvent::HistoryTail`].
    HistoryTail {
        /// The channel.
        channel: Arc<str>,
        /// At most this many messages.
        limit: usize,
        /// The caller's token, returned in the answer.
        token: u64,
    },
    /// The channel's position and, with `since`, the messages after it: answered by
    /// [`BrokerEvent::HistoryReply`].
    History {
        /// The channel.
        channel: Arc<str>,
        /// The position the caller saw last (`None`: only the current position, the channel's
        /// epoch started if it has none).
        since: Option<Position>,
        /// The caller's token, returned in the answer.
        token: u64,
    },
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerError {
    /// The broker is unreachable (or was lost while the request was in flight: its outcome is
    /// unknown).
    Down,
    /// The broker refused the request (e.g. out of memory); its message.
    Rejected(String),
    /// The payload would not fit the bridge's buffers (`[cluster] buffer_bytes_max`, less
    /// 1 KiB for the framing); it was not sent.
    TooLarge,
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerError::Down => f.write_str("the broker is down"),
            BrokerError::Rejected(why) => write!(f, "the broker refused: {why}"),
            BrokerError::TooLarge => f.write_str("larger than the broker's buffer_bytes_max"),
        }
    }
}

/// Why the bridge lost the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownCause {
    /// No address accepted a connection (or the handshake failed): the error.
    Connect(String),
    /// The broker closed a connection.
    Closed,
    /// A read or write failed: the error.
    Io(String),
    /// The broker sent what the bridge cannot parse or did not expect.
    Protocol(String),
    /// A request went unanswered for `[cluster] timeout_ms`.
    Timeout,
}

impl std::fmt::Display for DownCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownCause::Connect(e) => write!(f, "cannot connect: {e}"),
            DownCause::Closed => f.write_str("connection closed by the broker"),
            DownCause::Io(e) => write!(f, "i/o error: {e}"),
            DownCause::Protocol(e) => write!(f, "protocol error: {e}"),
            DownCause::Timeout => f.write_str("no answer within timeout_ms"),
        }
    }
}

/// What a history read found.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    /// The channel's position when the broker read it.
    pub position: Position,
    /// The messages after `since`, oldest first, offsets `since + 1 ..= position.offset`; `None`
    /// when not all of them are kept in the same epoch (the epoch differs, the history was
    /// trimmed or expired, or no `since` was asked).
    pub replay: Option<Vec<(u64, Bytes)>>,
}

/// A channel's newest kept messages, as the broker answered a `HistoryTail`.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    /// The channel's position when they were read.
    pub position: Position,
    /// Older kept messages were left out (the bridge's byte bound).
    pub truncated: bool,
    /// The messages, oldest first: (offset, payload).
    pub messages: Vec<(u64, Bytes)>,
}

/// A channel's presence across the live nodes, as the broker answered a `PresenceRead`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceView {
    /// Distinct users.
    pub users: u64,
    /// Connections (users' and anonymous), summed over the nodes.
    pub conns: u64,
    /// Anonymous connections.
    pub anonymous: u64,
    /// The asked page: each user with its connections on all nodes and its `info` (raw JSON).
    pub page: Vec<(String, u64, Option<String>)>,
    /// Whether users follow the page.
    pub more: bool,
}

/// What the bridge tells the shards.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerEvent {
    /// A message of a subscribed channel, in the channel's order.
    Message {
        /// The channel (the handle the `Subscribe` carried).
        channel: Arc<str>,
        /// Its offset, assigned by the broker.
        offset: u64,
        /// The channel's epoch.
        epoch: u64,
        /// The payload.
        payload: Bytes,
    },
    /// A message on a broker channel matching a pattern subscription.
    Pattern {
        /// The pattern it matched (the handle the `PatternSubscribe` carried).
        pattern: Arc<str>,
        /// The broker channel it was published on (any bytes).
        channel: Bytes,
        /// The payload as published.
        payload: Bytes,
    },
    /// The answer to a `Publish`.
    Published {
        /// The publish's token.
        token: u64,
        /// The offset and epoch it got.
        result: Result<Position, BrokerError>,
    },
    /// The answer to a `History`.
    HistoryReply {
        /// The request's token.
        token: u64,
        /// The channel.
        channel: Arc<str>,
        /// What was found.
        result: Result<Recovered, BrokerError>,
    },
    /// The answer to a `HistoryTail`.
    HistoryTail {
        /// The request's token.
        token: u64,
        /// The position, whether older kept messages were left out (the bridge's byte
        /// bound), and the messages, oldest first.
        result: Result<Kept, BrokerError>,
    },
    /// What a node sent (`UserSend`) to a user this node subscribed.
    User {
        /// The user id (the handle the `UserSubscribe` carried).
        user: Arc<str>,
        /// The payload, as sent.
        payload: Bytes,
    },
    /// The answer to a `UserSend`.
    UserSent {
        /// The request's token.
        token: u64,
        /// How many nodes received it (this one included, when it holds the user).
        result: Result<u64, BrokerError>,
    },
    /// The answer to a `UserNodes`.
    UserNodes {
        /// The request's token.
        token: u64,
        /// The node counts, one per asked user, in the asked order.
        result: Result<Vec<u64>, BrokerError>,
    },
    /// A user's first connection in `channel` on any node (`joined`), or its last on all of
    /// them left (or went with its node's lease): the channel's `join_leave` news, in the
    /// channel's order with its messages.
    PresenceNews {
        /// The channel (the handle the `Subscribe` carried).
        channel: Arc<str>,
        /// Joined or left.
        joined: bool,
        /// The user.
        user: Arc<str>,
        /// The user's `info` (raw JSON), when it has one.
        info: Option<Arc<str>>,
    },
    /// What another node sent this node (`NodeSend`), for one of its connections.
    NodeMessage {
        /// The payload, as sent.
        payload: Bytes,
    },
    /// The answer to a `NodeSend`.
    NodeSent {
        /// The request's token.
        token: u64,
        /// How many nodes received it (0 or 1).
        result: Result<u64, BrokerError>,
    },
    /// The answer to a `PresenceRead`.
    PresenceReply {
        /// The request's token.
        token: u64,
        /// The presence on every live node.
        result: Result<PresenceView, BrokerError>,
    },
    /// The subscription set is full (`[cluster] channels_max`): this `Subscribe` was not
    /// recorded and nothing of the channel will arrive.
    SubscribeRefused {
        /// The channel.
        channel: Arc<str>,
    },
    /// After a reconnect: a subscribed channel's position differs from the last one this bridge
    /// saw (messages were published while it was down, or the epoch changed because the broker
    /// lost the channel). Sent before the `Up` that ends the resubscription.
    Resync {
        /// The channel.
        channel: Arc<str>,
        /// The last position the bridge saw (from messages and history replies).
        before: Position,
        /// The position now.
        now: Position,
    },
    /// Connected (first time, or again after `Down`), every subscription active again.
    Up {
        /// Channels resubscribed.
        resubscribed: usize,
        /// Patterns resubscribed.
        patterns: usize,
        /// `Resync` events sent before this one.
        moved: usize,
        /// Of those, channels whose epoch changed.
        epochs_bumped: usize,
    },
    /// The broker was lost (sent once per loss; the bridge retries by itself).
    Down {
        /// Why.
        cause: DownCause,
    },
}

/// Where the bridge delivers events; the integration implements it by pushing into a bounded
/// ring towards the shards. Called on the bridge's thread; must not block.
pub trait BrokerSink: Send + 'static {
    /// One event. An implementation that must drop one (its ring and overflow full) counts it;
    /// the shards see the gap in the channel's offsets.
    fn deliver(&mut self, event: BrokerEvent);
    /// Called after each batch of deliveries (one bridge loop turn): ring doorbells here.
    fn flush(&mut self) {}
}

impl<F: FnMut(BrokerEvent) + Send + 'static> BrokerSink for F {
    fn deliver(&mut self, event: BrokerEvent) {
        self(event)
    }
}

/// The bridge's counters, shared with the handles (read them with [`BrokerStats::snapshot`]).
#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Connections re-established after a loss.
    pub reconnects: AtomicU64,
    /// Publishes that failed: refused while down or for a full queue, lost in flight, or
    /// rejected by the broker.
    pub publish_errors: AtomicU64,
    /// Messages received from the broker and delivered (channels and patterns).
    pub messages_in: AtomicU64,
    /// Publishes the broker sequenced.
    pub messages_out: AtomicU64,
    /// Broker messages on a subscribed channel that did not parse (dropped).
    pub malformed_in: AtomicU64,
    /// Commands refused because the queue was full.
    pub queue_overflows: AtomicU64,
    /// Subscriptions refused because the set was full.
    pub subscribe_refusals: AtomicU64,
    /// Connects that found another live node holding this node's `node_id`.
    pub node_id_conflicts: AtomicU64,
}

/// A copy of [`BrokerStats`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[allow(missing_docs)]
pub struct BrokerCounters {
    pub reconnects: u64,
    pub publish_errors: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub malformed_in: u64,
    pub queue_overflows: u64,
    pub subscribe_refusals: u64,
    pub node_id_conflicts: u64,
}

impl BrokerStats {
    /// The counters now.
    pub fn snapshot(&self) -> BrokerCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BrokerCounters {
            reconnects: get(&self.reconnects),
            publish_errors: get(&self.publish_errors),
            messages_in: get(&self.messages_in),
            messages_out: get(&self.messages_out),
            malformed_in: get(&self.malformed_in),
            queue_overflows: get(&self.queue_overflows),
            subscribe_refusals: get(&self.subscribe_refusals),
            node_id_conflicts: get(&self.node_id_conflicts),
        }
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the handles and the bridge share.
#[derive(Debug)]
pub struct Shared {
    /// Counters.
    pub stats: BrokerStats,
    /// Bytes of the commands in the queue ([`BrokerCommand::queued_bytes`]): added by the
    /// handles, released by the bridge as it takes them.
    queued_bytes: AtomicUsize,
    /// The queue's byte bound (`[cluster] queue_bytes_max`).
    queue_bytes_max: usize,
    /// Whether the broker is up (set by the bridge; publishes are refused at once while not).
    up: AtomicBool,
    /// Set to stop the bridge.
    stop: AtomicBool,
    /// Wakes the bridge.
    doorbell: Doorbell,
}

impl Shared {
    /// Whether the bridge was asked to stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    /// Asks the bridge to stop and wakes it.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.doorbell.ring();
    }
    /// The bridge's doorbell.
    pub fn doorbell(&self) -> &Doorbell {
        &self.doorbell
    }
    /// Records whether the broker is up (the bridge's side).
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
    /// The bridge took `command` from the queue: its bytes leave the bound.
    pub fn taken(&self, command: &BrokerCommand) {
        self.queued_bytes
            .fetch_sub(command.queued_bytes(), Ordering::Relaxed);
    }
    /// Bytes in the queue now.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }
}

impl BrokerCommand {
    /// What the command holds in the queue, for `queue_bytes_max`: its payload and names.
    pub fn queued_bytes(&self) -> usize {
        match self {
            BrokerCommand::Subscribe { channel } | BrokerCommand::Unsubscribe { channel } => {
                channel.len()
            }
            BrokerCommand::PatternSubscribe { pattern }
            | BrokerCommand::PatternUnsubscribe { pattern } => pattern.len(),
            BrokerCommand::UserSubscribe { user } | BrokerCommand::UserUnsubscribe { user } => {
                user.len()
            }
            BrokerCommand::UserSend { user, payload, .. } => user.len() + payload.len(),
            BrokerCommand::NodeSend { payload, .. } => payload.len(),
            BrokerCommand::UserNodes { users, .. } => users.iter().map(|u| u.len()).sum(),
            BrokerCommand::Publish {
                channel, payload, ..
            } => channel.len() + payload.len(),
            BrokerCommand::History { channel, .. } | BrokerCommand::HistoryTail { channel, .. } => {
                channel.len()
            }
            BrokerCommand::PresenceSet { channel, user, .. } => {
                let user = user.as_ref().map_or(0, |(u, info)| {
                    u.len() + info.as_ref().map_or(0, |i| i.len())
                });
                channel.len() + user
            }
            BrokerCommand::PresenceRead { channel, page, .. } => {
                let after = page.as_ref().and_then(|(a, _)| a.as_ref());
                channel.len() + after.map_or(0, |a| a.len())
            }
        }
    }
}

/// Why [`BrokerHandle::try_send`] refused a command; the command comes back.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// The queue is full (counted: `queue_overflows`).
    Full(BrokerCommand),
    /// A `Publish`, `History` or `UserSend` while the broker is down (a publish is counted:
    /// `publish_errors`).
    Down(BrokerCommand),
    /// The bridge has stopped.
    Stopped(BrokerCommand),
}

/// The shards' end of the command queue: cheap to clone (one per shard).
#[derive(Debug, Clone)]
pub struct BrokerHandle {
    tx: SyncSender<BrokerCommand>,
    shared: Arc<Shared>,
}

/// A bounded command queue of `capacity` commands and `bytes_max` bytes
/// ([`BrokerCommand::queued_bytes`]): the handle and the bridge's end. The bridge calls
/// [`Shared::taken`] for each command it receives.
pub fn queue(
    capacity: usize,
    bytes_max: usize,
) -> std::io::Result<(BrokerHandle, Receiver<BrokerCommand>)> {
    assert!(capacity > 0);
    let (tx, rx) = sync_channel(capacity);
    let shared = Arc::new(Shared {
        stats: BrokerStats::default(),
        queued_bytes: AtomicUsize::new(0),
        queue_bytes_max: bytes_max,
        up: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        doorbell: Doorbell::new()?,
    });
    Ok((BrokerHandle { tx, shared }, rx))
}

impl BrokerHandle {
    /// Queues a command without blocking (see the module's header for what each refusal means).
    /// Does not wake the bridge: call [`BrokerHandle::ring`] after a batch.
    pub fn try_send(&self, command: BrokerCommand) -> Result<(), Refused> {
        let needs_broker = matches!(
            command,
            BrokerCommand::Publish { .. }
                | BrokerCommand::History { .. }
                | BrokerCommand::UserSend { .. }
                | BrokerCommand::UserNodes { .. }
                | BrokerCommand::PresenceRead { .. }
                | BrokerCommand::NodeSend { .. }
                | BrokerCommand::HistoryTail { .. }
        );
        if needs_broker && !self.is_up() {
            if matches!(command, BrokerCommand::Publish { .. }) {
                BrokerStats::count(&self.shared.stats.publish_errors);
            }
            return Err(Refused::Down(command));
        }
        let size = command.queued_bytes();
        let before = self.shared.queued_bytes.fetch_add(size, Ordering::Relaxed);
        let full = |command: BrokerCommand| {
            self.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            BrokerStats::count(&self.shared.stats.queue_overflows);
            if matches!(command, BrokerCommand::Publish { .. }) {
                BrokerStats::count(&self.shared.stats.publish_errors);
            }
            Err(Refused::Full(command))
        };
        // An empty queue takes any one command, so a payload near the bound still passes.
        if before > 0 && before + size > self.shared.queue_bytes_max {
            return full(command);
        }
        match self.tx.try_send(command) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(command)) => full(command),
            Err(TrySendError::Disconnected(command)) => {
                self.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                Err(Refused::Stopped(command))
            }
        }
    }

    /// Wakes the bridge if it sleeps (an eventfd write only then).
    pub fn ring(&self) {
        self.shared.doorbell.ring();
    }

    /// Whether the broker is up, as the bridge last saw it.
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::SeqCst)
    }

    /// The bridge's counters.
    pub fn stats(&self) -> BrokerCounters {
        self.shared.stats.snapshot()
    }

    /// What the handles and the bridge share.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(token: u64) -> BrokerCommand {
        BrokerCommand::Publish {
            channel: Arc::from("news"),
            payload: Bytes::from_static(b"x"),
            keep: Keep::default(),
            token,
        }
    }

    #[test]
    fn a_full_queue_refuses_and_counts_without_blocking() {
        let (handle, rx) = queue(2, 1 << 20).unwrap();
        handle.shared().set_up(true);
        assert_eq!(handle.try_send(publish(1)), Ok(()));
        assert_eq!(handle.try_send(publish(2)), Ok(()));
        assert_eq!(handle.try_send(publish(3)), Err(Refused::Full(publish(3))));
        let sub = BrokerCommand::Subscribe {
            channel: Arc::from("a"),
        };
        assert_eq!(handle.try_send(sub.clone()), Err(Refused::Full(sub)));
        let stats = handle.stats();
        assert_eq!(stats.queue_overflows, 2);
        assert_eq!(
            stats.publish_errors, 1,
            "the refused publish, not the subscribe"
        );
        assert_eq!(rx.try_recv().unwrap(), publish(1));
        assert_eq!(handle.try_send(publish(4)), Ok(()), "room again");
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let (handle, rx) = queue(100, 1 << 20).unwrap();
        handle.shared().set_up(true);
        let big = |token| BrokerCommand::Publish {
            channel: Arc::from("n"),
            payload: Bytes::from(vec![0u8; 600 << 10]),
            keep: Keep::default(),
            token,
        };
        assert_eq!(handle.try_send(big(1)), Ok(()));
        assert_eq!(handle.shared().queued_bytes(), (600 << 10) + 1);
        assert_eq!(handle.try_send(big(2)), Err(Refused::Full(big(2))));
        assert_eq!(handle.stats().queue_overflows, 1);
        assert_eq!(handle.stats().publish_errors, 1);
        assert_eq!(
            handle.shared().queued_bytes(),
            (600 << 10) + 1,
            "the refusal is undone"
        );
        let taken = rx.try_recv().unwrap();
        handle.shared().taken(&taken);
        assert_eq!(handle.shared().queued_bytes(), 0);
        // An empty queue takes one command whatever its size.
        let huge = BrokerCommand::Publish {
            channel: Arc::from("n"),
            payload: Bytes::from(vec![0u8; 2 << 20]),
            keep: Keep::default(),
            token: 3,
        };
        assert_eq!(handle.try_send(huge), Ok(()));
        assert!(matches!(handle.try_send(big(4)), Err(Refused::Full(_))));
    }

    #[test]
    fn publishes_while_down_fail_fast_and_interest_still_queues() {
        let (handle, rx) = queue(8, 1 << 20).unwrap();
        assert_eq!(handle.try_send(publish(1)), Err(Refused::Down(publish(1))));
        let history = BrokerCommand::History {
            channel: Arc::from("a"),
            since: None,
            token: 2,
        };
        assert_eq!(
            handle.try_send(history.clone()),
            Err(Refused::Down(history))
        );
        let sub = BrokerCommand::Subscribe {
            channel: Arc::from("a"),
        };
        assert_eq!(handle.try_send(sub.clone()), Ok(()));
        assert_eq!(rx.try_recv().unwrap(), sub);
        assert_eq!(handle.stats().publish_errors, 1);
        drop(rx);
        handle.shared().set_up(true);
        assert!(matches!(
            handle.try_send(publish(3)),
            Err(Refused::Stopped(_))
        ));
    }
}
