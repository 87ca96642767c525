//! Messages between shards. Payloads travel as `Bytes` (a refcount), names as `Arc<str>`.
//!
//! Two planes: control-plane messages (interest, withdrawals, acknowledgements, queries, reply
//! parts, actions on a connection other than a push) are never refused — each is bounded by
//! what produces it (channels per shard, pending replies per control connection); data-plane
//! messages (publishes, deliveries, pushes) obey `xshard_overflow_max`, and a refused one has a
//! defined, counted outcome (see `Engine::on_refused`).

use crate::id::ConnId;
pub use crate::wire::Body;
use crate::wire::ErrorCode;
use bytes::Bytes;
use std::sync::Arc;

/// Where a reply part goes: a control connection on some shard, and the request's sequence
/// number on that connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    /// The shard of the control connection.
    pub shard: u16,
    /// Its slot.
    pub slot: u32,
    /// Its generation (a reply for a closed connection is dropped).
    pub generation: u32,
    /// The request's sequence number on that connection.
    pub seq: u64,
}

/// What the control socket asks a connection's shard to do.
#[derive(Debug)]
pub enum ConnAction {
    /// Push a payload to the connection.
    Send(Body),
    /// Server-side subscribe.
    Subscribe(Arc<str>),
    /// Server-side unsubscribe.
    Unsubscribe(Arc<str>),
    /// Close with a code and reason.
    Disconnect(u16, String),
    /// Give the connection a user (with its `info`), or none (`bind_user`, `unbind_user`).
    Bind(Option<Arc<str>>, Option<Arc<str>>),
}

/// What the control socket asks a user's owner to do to all of the user's connections.
#[derive(Debug)]
pub enum UserOp {
    /// Push a payload to each (`send_user`).
    Send(Body),
    /// Close each (`disconnect_user`).
    Disconnect(u16, String),
    /// List them (`user_conns`).
    Conns,
}

/// A question about users, for every shard (each answers for the users it owns).
#[derive(Debug)]
pub enum UserQuery {
    /// Connection counts of these users (`online`).
    Online(Vec<Arc<str>>),
    /// Users after `after`, the first `limit + 1` names (`users`).
    List {
        /// The cursor.
        after: Option<Arc<str>>,
        /// Page size.
        limit: usize,
    },
}

/// A question for every shard.
#[derive(Debug)]
pub enum Query {
    /// Connection ids subscribed to a channel, above `after`: the smallest `limit + 1`.
    Presence {
        /// The channel.
        channel: Arc<str>,
        /// The cursor.
        after: Option<u64>,
        /// Page size.
        limit: usize,
    },
    /// Local channels with subscriber counts, after `after`: the first `limit + 1` names.
    Channels {
        /// The cursor.
        after: Option<Arc<str>>,
        /// Page size.
        limit: usize,
    },
    /// The Pusher channels this shard owns whose internal name starts with `prefix` (is it,
    /// with `exact`), with their connections and users (`GET /apps/{id}/channels`).
    PusherChannels {
        /// The internal prefix (or name).
        prefix: Arc<str>,
        /// The name must equal `prefix`.
        exact: bool,
    },
    /// Close every connection subscribed here to this (a user's `#server-to-user-` channel:
    /// `terminate_connections`).
    PusherTerminate {
        /// The internal channel name.
        channel: Arc<str>,
    },
    /// To a presence channel's owner: its first `limit` users (`GET .../users`).
    PusherUsers {
        /// The internal channel name.
        channel: Arc<str>,
        /// At most this many users.
        limit: usize,
    },
}

/// A Pusher cache channel's last event, as its owner answers a new subscriber.
#[derive(Debug)]
pub enum Cached {
    /// The event's frame, to send.
    Frame(bytes::Bytes),
    /// The last event came after the subscription began: the subscriber had it live.
    Live,
    /// No event is kept: `pusher:cache_miss`.
    Miss,
}

/// One shard's part of a reply.
#[derive(Debug)]
pub enum Part {
    /// A publish was sequenced (offset 0: nobody subscribes). `index` is the channel's position
    /// in a broadcast.
    Published {
        /// Position in the request's channel list.
        index: u32,
        /// The offset.
        offset: u64,
        /// The epoch.
        epoch: u64,
        /// Further parts to expect (one per delivering shard, for a publish with `report`).
        more: u32,
    },
    /// One shard's delivery counts for a publish with `report`.
    Delivered {
        /// Connections the frame was queued to.
        delivered: u64,
        /// Connections skipped or closed as slow consumers.
        slow: u64,
        /// Whether the delivery never reached this shard (its queues were full).
        refused: bool,
    },
    /// Done, nothing to report.
    Done,
    /// Failed with a stable code.
    Failed(ErrorCode, String),
    /// Connection ids.
    Conns(Vec<u64>),
    /// Channel names and local subscriber counts.
    Channels(Vec<(Arc<str>, u64)>),
    /// A count (connections reached by a broadcast).
    Count(u64),
    /// A complete JSON result, rendered by the shard that had the answer.
    Json(String),
    /// Clustered `online`: how many nodes hold each user (`None`: the broker could not say).
    Nodes(Option<Vec<(Arc<str>, u64)>>),
    /// Pusher channels an owner has: internal name, connections, users.
    PusherChannels(Vec<(Arc<str>, u64, u64)>),
}

/// A message on a cross-shard ring.
#[derive(Debug)]
pub enum XMsg {
    /// To the owner: sequence and fan out.
    Publish {
        /// Channel name.
        channel: Arc<str>,
        /// Payload.
        body: Body,
        /// Where to report the offset, and the channel's index in a broadcast.
        reply: Option<(ReplyTo, u32)>,
        /// Whether every delivering shard reports its counts to `reply` too.
        report: bool,
        /// A retry of a publish with this key within the window is not delivered again.
        key: Option<Box<str>>,
    },
    /// To a connection's shard: act on it.
    ToConn {
        /// The connection.
        conn: ConnId,
        /// What to do.
        action: ConnAction,
        /// Where to report the outcome.
        reply: Option<ReplyTo>,
    },
    /// To every shard: answer a question.
    Query {
        /// The question.
        query: Query,
        /// Where to answer.
        reply: ReplyTo,
    },
    /// To every shard: push to every open `/ws` connection (frames encoded once by the sender).
    PushAll {
        /// Frame for envelope clients.
        envelope: Bytes,
        /// Frame for raw clients.
        raw: Bytes,
        /// Where to report the count.
        reply: Option<ReplyTo>,
    },
    /// A reply part for a control connection of this shard.
    Reply {
        /// The request.
        to: ReplyTo,
        /// The part.
        part: Part,
    },
    /// To the owner: `shard` has its first local subscriber.
    Interest {
        /// Channel name.
        channel: Arc<str>,
        /// The interested shard.
        shard: u16,
    },
    /// To the owner: `shard` has no local subscriber left.
    Withdraw {
        /// Channel name.
        channel: Arc<str>,
        /// The shard.
        shard: u16,
    },
    /// From the owner: interest registered; later offsets will come. `None`: the owner is full.
    Ack {
        /// Channel name.
        channel: Arc<str>,
        /// Last offset and epoch, or `None` when refused.
        position: Option<(u64, u64)>,
    },
    /// Clustered, from the owner to a shard with subscribers: the broker moved the channel's
    /// position (a new epoch, or messages this node missed while the broker was away); later
    /// offsets follow it.
    Position {
        /// Channel name.
        channel: Arc<str>,
        /// Last offset and epoch.
        position: (u64, u64),
    },
    /// To the owner: what did a client that saw `since` (offset, epoch) miss?
    Recover {
        /// Channel name.
        channel: Arc<str>,
        /// The client's last offset and its epoch.
        since: (u64, u64),
        /// The connection's shard.
        shard: u16,
        /// Its slot.
        slot: u32,
        /// Its generation.
        generation: u32,
        /// The subscribe's id, echoed in `subscribed`.
        id: Option<Box<str>>,
    },
    /// From the owner, in order with its deliveries: the channel's position and, when every
    /// missed message is kept, those messages (else `None`: the client must reload).
    Recovered {
        /// Channel name.
        channel: Arc<str>,
        /// The connection's slot.
        slot: u32,
        /// Its generation.
        generation: u32,
        /// The subscribe's id.
        id: Option<Box<str>>,
        /// The channel's last offset and epoch.
        position: (u64, u64),
        /// The missed messages, oldest first.
        replay: Option<Vec<crate::channel::history::Entry>>,
    },
    /// To the owner: a channel's kept messages, for the control socket's `history`.
    History {
        /// Channel name.
        channel: Arc<str>,
        /// At most this many.
        limit: usize,
        /// Only after this offset, in this epoch.
        since: Option<(u64, u64)>,
        /// Where to answer.
        reply: ReplyTo,
    },
    /// To the owner: a `/ws` client's `history`.
    ClientHistory {
        /// Channel name.
        channel: Arc<str>,
        /// At most this many.
        limit: usize,
        /// The client's shard, slot and generation.
        shard: u16,
        /// Its slot.
        slot: u32,
        /// Its generation.
        generation: u32,
        /// The command's id.
        id: Option<Box<str>>,
    },
    /// From the owner: the answer to a client's `history` (the owner's JSON rendering).
    ClientHistoryReply {
        /// Channel name.
        channel: Arc<str>,
        /// The client's slot.
        slot: u32,
        /// Its generation.
        generation: u32,
        /// The command's id.
        id: Option<Box<str>>,
        /// `{"offset":..,"epoch":..,"messages":[..]}`.
        body: String,
    },
    /// To the user's owner: `conn` is one of `user`'s connections.
    UserBind {
        /// The user.
        user: Arc<str>,
        /// The connection.
        conn: ConnId,
        /// The `bind_user` request waiting for the verdict.
        reply: Option<ReplyTo>,
        /// Sent by the control socket's shard (`bind_user`): once registered, the owner tells
        /// the connection's shard (`ToConn` `Bind` with `info`), which answers `reply`. Else it
        /// came from the connection's shard (a token): a refusal closes the connection.
        from_control: Option<Option<Arc<str>>>,
    },
    /// To the user's owner: `conn` is no longer one of `user`'s connections.
    UserUnbind {
        /// The user.
        user: Arc<str>,
        /// The connection.
        conn: ConnId,
    },
    /// From the user's owner: the user holds `conns_per_user_max` connections already.
    UserRefused {
        /// The user.
        user: Arc<str>,
        /// The connection (closed with 4007).
        conn: ConnId,
    },
    /// To the user's owner: act on every connection of the user.
    UserOp {
        /// The user.
        user: Arc<str>,
        /// What to do.
        op: UserOp,
        /// Where to answer.
        reply: Option<ReplyTo>,
        /// Act on this node's connections only (what came from the broker or a Redis input);
        /// false: a backend's request, which in cluster mode goes to every node holding the
        /// user.
        here: bool,
    },
    /// To every shard: a question about the users it owns.
    UserQuery {
        /// The question.
        query: UserQuery,
        /// Where to answer.
        reply: ReplyTo,
    },
    /// To the channel's owner: a connection joined or left it (presence).
    Presence {
        /// Channel name.
        channel: Arc<str>,
        /// The connection's user (`None`: anonymous).
        user: Option<Arc<str>>,
        /// The user's info (joins only).
        info: Option<Arc<str>>,
        /// Joined, or left.
        join: bool,
    },
    /// To the channel's owner: who is in it (`presence`), or how many (`presence_stats`).
    PresenceAsk {
        /// Channel name.
        channel: Arc<str>,
        /// Counts only.
        stats: bool,
        /// Users after this one.
        after: Option<Arc<str>>,
        /// At most this many users.
        limit: usize,
        /// Where to answer.
        reply: ReplyTo,
    },
    /// From the channel's owner: a join/leave news frame for envelope-format subscribers.
    Notify {
        /// Channel name.
        channel: Arc<str>,
        /// The `{"op":"join"|"leave",...}` text frame (for a Pusher presence channel, its
        /// `member_added`/`member_removed`).
        frame: Bytes,
        /// A Pusher `member_added` is not sent to the connections of the user it announces
        /// (their `subscription_succeeded` lists it).
        skip_user: Option<Arc<str>>,
    },
    /// To a Pusher presence channel's owner: the members for a connection's
    /// `subscription_succeeded` (sent after the connection's own join, on the same ring, so
    /// the answer includes it).
    PusherMembers {
        /// Internal channel name.
        channel: Arc<str>,
        /// The asking connection's shard, slot and generation.
        shard: u16,
        /// Slot.
        slot: u32,
        /// Generation.
        generation: u32,
        /// The channel's offset when the subscription began (for a cache channel's replay).
        since: u64,
        /// The asking connection's own user: always in the list (pusher-js finds `me` there).
        user: Option<Arc<str>>,
    },
    /// The owner's answer to `PusherMembers`: the presence data.
    PusherMembersReply {
        /// Internal channel name.
        channel: Arc<str>,
        /// Slot.
        slot: u32,
        /// Generation.
        generation: u32,
        /// As asked.
        since: u64,
        /// `{"presence":{...}}`.
        data: String,
    },
    /// To a Pusher cache channel's owner: its last event for a new subscriber.
    PusherCache {
        /// Internal channel name.
        channel: Arc<str>,
        /// The asking connection's shard.
        shard: u16,
        /// Slot.
        slot: u32,
        /// Generation.
        generation: u32,
        /// The channel's offset when the subscription began: a later event reached the
        /// subscriber live.
        since: u64,
    },
    /// The owner's answer to `PusherCache`.
    PusherCacheReply {
        /// Internal channel name.
        channel: Arc<str>,
        /// Slot.
        slot: u32,
        /// Generation.
        generation: u32,
        /// What to send.
        cached: Cached,
    },
    /// To every shard: an event-stream consumer joined (`types`) or left (`None`).
    Consumer {
        /// Its group (`None`: alone).
        group: Option<Arc<str>>,
        /// The control connection.
        addr: super::events::MemberAddr,
        /// The event types it wants, or `None` when it left.
        types: Option<u8>,
        /// The `events` request, answered once every shard knows the member.
        reply: Option<ReplyTo>,
    },
    /// To a consumer's shard: one event line.
    Event {
        /// The consumer.
        to: super::events::MemberAddr,
        /// The NDJSON line.
        line: Bytes,
        /// Events for this consumer the sender's ring refused before this one.
        missed: u32,
    },
    /// From the owner: one sequenced message, encoded once in both formats (and compressed once
    /// for permessage-deflate clients), shared by every shard and the history.
    Deliver {
        /// Channel name.
        channel: Arc<str>,
        /// Its offset.
        offset: u64,
        /// Its frames.
        frames: Arc<crate::wire::Frames>,
        /// Where to report this shard's delivery counts (a publish with `report`).
        report: Option<Box<ReplyTo>>,
        /// When the owner took the publish (`driver::monotonic_us`), for a sampled one; 0: not
        /// sampled.
        stamp_us: u64,
    },
}

impl XMsg {
    /// Whether this message is data-plane (may be refused when the destination is overloaded).
    pub fn may_be_refused(&self) -> bool {
        match self {
            XMsg::Publish { .. }
            | XMsg::Deliver { .. }
            | XMsg::PushAll { .. }
            | XMsg::UserOp { .. }
            | XMsg::Notify { .. }
            | XMsg::Event { .. } => true,
            XMsg::ToConn { action, .. } => matches!(action, ConnAction::Send(_)),
            XMsg::Query { .. }
            | XMsg::Reply { .. }
            | XMsg::Interest { .. }
            | XMsg::Withdraw { .. }
            | XMsg::Recover { .. }
            | XMsg::History { .. }
            | XMsg::ClientHistory { .. }
            | XMsg::ClientHistoryReply { .. }
            | XMsg::Recovered { .. }
            | XMsg::Ack { .. }
            | XMsg::Position { .. }
            | XMsg::UserBind { .. }
            | XMsg::UserUnbind { .. }
            | XMsg::UserRefused { .. }
            | XMsg::UserQuery { .. }
            | XMsg::Presence { .. }
            | XMsg::PresenceAsk { .. }
            | XMsg::PusherMembers { .. }
            | XMsg::PusherMembersReply { .. }
            | XMsg::PusherCache { .. }
            | XMsg::PusherCacheReply { .. }
            | XMsg::Consumer { .. } => false,
        }
    }
}
