//! Clustered channels (`[cluster]`, docs/cluster.md): the owner shard of a channel is this
//! node's one point of contact with the broker for it. It subscribes the broker when the node's
//! first shard shows interest and unsubscribes after the last one leaves; it sends publishes to
//! the broker instead of sequencing them; it delivers the broker's messages (every node, the
//! publishing one included) through the same encode-once fan-out as a local publish, with the
//! broker's offsets and epochs. The shards without the channel see no difference: they get
//! `Ack`, `Deliver` and `Recovered` as on one node.
//!
//! Owns the broker handle, this shard's ring of broker events, the commands waiting for room in
//! the broker's queue, and per owned channel its synchronisation state: after a `Subscribe`, a
//! `History` read gives the position the waiting shards are acknowledged with; messages that
//! arrive before it are held, and those at or below it dropped. Nothing here runs unless
//! `[cluster] redis` is set (`Engine::cluster` is `None`).
//!
//! Invariant: in cluster mode a channel has an `owned` entry exactly when it has a `channels`
//! entry here (so the local history of a channel always holds broker messages without a gap
//! up to its position, or is cleared).
//!
//! What comes from the broker is untrusted input: payloads, pattern channels and suffixes are
//! bounded and validated, counted and dropped when bad, never a panic.

use super::Engine;
use super::xmsg::{Body, ConnAction, Part, ReplyTo, UserOp, XMsg};
use crate::broker::config::InputTarget;
use crate::broker::route::token;
use crate::broker::{
    BrokerCommand, BrokerError, BrokerEvent, BrokerHandle, Keep, Position, Recovered, Refused,
};
use crate::channel;
use crate::channel::history::Entry;
use crate::wire::{ErrorCode, Frames, encode_message};
use crate::xshard::LaneRx;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

mod conns;
mod history;
mod presence;

pub use history::HistoryAsker;
mod users;

/// Broker events handled per loop turn.
pub const EVENTS_PER_TURN: usize = 4096;
/// Messages held per channel while its position is read; more are dropped (an offset gap).
pub const HELD_MAX: usize = 65_536;
/// How long a request waits for the bridge's answer beyond `[cluster] timeout_ms` × 4: the
/// bridge answers every request it took within its timeout (it fails what Redis did not answer),
/// so an answer later than this was dropped at a full event ring (`cluster_events_dropped`);
/// the request is failed here instead of waiting for ever (and its entry freed).
pub const ANSWER_SLACK_MS: u64 = 10_000;
/// Set in every node-local epoch: what a channel's owner sequences by itself while the broker
/// is down. The broker's epochs (its clock in microseconds) stay below 2^52 until the year 2112,
/// so a node-local epoch never equals one of them, and recovering across it answers
/// `recovered:false`.
pub const LOCAL_EPOCH_BIT: u64 = 1 << 52;
/// Longest `[[redis_input]]` suffix, in bytes.
pub const INPUT_SUFFIX_BYTES_MAX: usize = 256;

/// What the server gives a shard in cluster mode.
pub struct ClusterSetup {
    /// Commands to the bridge.
    pub handle: BrokerHandle,
    /// This shard's events from the bridge.
    pub events: LaneRx<BrokerEvent>,
}

/// A publish sent to the broker, waiting for its answer.
struct PendingPublish {
    /// When it is failed if no answer came (`answer_due_ms`).
    due_ms: u64,
    reply: Option<(ReplyTo, u32)>,
    channel: Arc<str>,
    key: Option<Box<str>>,
}

/// An owned channel whose position is being read.
struct Syncing {
    token: u64,
    /// Messages that arrived before the position: (offset, epoch, payload).
    held: Vec<(u64, u64, Bytes)>,
    /// Shards waiting for their acknowledgement.
    acks: Vec<u16>,
    /// Recoveries waiting for the position.
    recovers: Vec<XMsg>,
    /// A catch-up: the read fetches the messages this node missed (a gap in a live channel,
    /// published while it was cut off), delivered before the held ones.
    catch_up: bool,
}

/// A recovery read from the broker's history, waiting for its answer.
struct PendingRecover {
    /// When it is failed if no answer came (`answer_due_ms`).
    due_ms: u64,
    channel: Arc<str>,
    since: (u64, u64),
    shard: u16,
    slot: u32,
    generation: u32,
    id: Option<Box<str>>,
}

/// The messages an owner delivered since the first of a channel's broker recoveries in flight
/// was sent: the broker's answer may end before them.
#[derive(Default)]
struct Tail {
    /// Recoveries in flight for the channel.
    readers: usize,
    entries: Vec<Entry>,
    /// More than `HELD_MAX` messages came meanwhile: those recoveries fail.
    overflowed: bool,
}

/// A shard's cluster state.
pub struct Cluster {
    handle: BrokerHandle,
    events: LaneRx<BrokerEvent>,
    /// Interest and history commands in order, waiting for room in the broker's queue.
    outbox: VecDeque<BrokerCommand>,
    /// Owned channels with interest on this node; `Some` while the position is read.
    channels: HashMap<Arc<str>, Option<Syncing>>,
    publishes: HashMap<u64, PendingPublish>,
    /// History reads in flight, by token: the channel and when the read is failed if no answer
    /// came.
    reads: HashMap<u64, (Arc<str>, u64)>,
    /// Recoveries read from the broker, by token.
    recoveries: HashMap<u64, PendingRecover>,
    /// Position reads for live channels whose position is unknown, by token.
    refreshes: HashMap<u64, (Arc<str>, u64)>,
    tails: HashMap<Arc<str>, Tail>,
    /// `send_user` / `disconnect_user` requests sent to the broker, by token.
    user_sends: HashMap<u64, users::PendingUserSend>,
    /// Clustered `online` node counts asked of the broker, by token: the reply they complete,
    /// the users asked, and the deadline.
    user_nodes: HashMap<u64, (ReplyTo, Vec<Arc<str>>, u64)>,
    /// Presence reads asked of the broker, by token.
    presence_reads: HashMap<u64, presence::PendingPresenceRead>,
    /// `history` requests read from the broker, by token.
    history_asks: HashMap<u64, history::PendingHistory>,
    /// Requests for other nodes' connections sent through the broker, by token: the reply
    /// waiting, the node, and the deadline.
    conn_ops: HashMap<u64, (Option<ReplyTo>, u8, u64)>,
    /// When the maps above are next swept for requests past their deadline (once a second:
    /// the sweep is O(requests waiting), and only unanswered requests are in them).
    next_sweep_ms: u64,
    /// Broker events of one turn (kept for its capacity).
    scratch: Vec<BrokerEvent>,
    next_seq: u64,
    /// The broker was lost at least once and not yet back.
    down: bool,
    /// Live channels this owner sequences by itself while the broker is down (each on a
    /// node-local epoch), with the broker's position they left: back to it when the broker
    /// returns, and what was published there meanwhile is caught up.
    local: HashMap<Arc<str>, (u64, u64)>,
    /// Live channels whose position was read after it was unknown (offset 0 there means "not
    /// known", not "nothing delivered"): their next message starts the sequence, no catch-up.
    fresh: std::collections::HashSet<Arc<str>>,
    /// Where this shard's node-local epochs start, and how many it made.
    local_seed: u64,
    local_epochs: u64,
    /// Commands were queued since the bridge was last woken.
    ring: bool,
}

impl Cluster {
    /// A new request token naming `shard` (this one) as the waiting shard.
    fn next_token(&mut self, shard: usize) -> u64 {
        self.next_seq += 1;
        token(shard, self.next_seq)
    }

    /// The state for a shard; `local_seed` makes its node-local epochs differ from other
    /// nodes' and runs'.
    pub fn new(setup: ClusterSetup, local_seed: u64) -> Cluster {
        Cluster {
            handle: setup.handle,
            events: setup.events,
            outbox: VecDeque::new(),
            channels: HashMap::new(),
            publishes: HashMap::new(),
            reads: HashMap::new(),
            recoveries: HashMap::new(),
            refreshes: HashMap::new(),
            tails: HashMap::new(),
            user_sends: HashMap::new(),
            user_nodes: HashMap::new(),
            presence_reads: HashMap::new(),
            conn_ops: HashMap::new(),
            history_asks: HashMap::new(),
            next_sweep_ms: 0,
            scratch: Vec::new(),
            next_seq: 0,
            down: false,
            local: HashMap::new(),
            fresh: std::collections::HashSet::new(),
            local_seed,
            local_epochs: 0,
            ring: false,
        }
    }
}

/// The tokens of the requests in `map` whose deadline (`due`) is at or before `now_ms`.
fn overdue<V>(map: &HashMap<u64, V>, now_ms: u64, due: impl Fn(&V) -> u64) -> Vec<u64> {
    (map.iter())
        .filter(|(_, v)| due(v) <= now_ms)
        .map(|(&t, _)| t)
        .collect()
}

fn failure(e: &BrokerError) -> Part {
    match e {
        BrokerError::TooLarge => Part::Failed(
            ErrorCode::LimitExceeded,
            "the payload is too large for the cluster's broker (buffer_bytes_max)".to_string(),
        ),
        BrokerError::Down => Part::Failed(
            ErrorCode::ClusterUnavailable,
            "the cluster's broker is unreachable (or was lost with this request in flight: its \
             outcome is unknown); retry later"
                .to_string(),
        ),
        BrokerError::Rejected(why) => Part::Failed(
            ErrorCode::ClusterUnavailable,
            format!("the cluster's broker refused the request: {why}"),
        ),
    }
}

impl Engine {
    /// Whether a cross-shard message is taken by the cluster logic (which then handled it).
    /// Without `[cluster]` it returns the message at once.
    pub(super) fn cluster_intercept(&mut self, msg: XMsg) -> Option<XMsg> {
        if self.cluster.is_none() {
            return Some(msg);
        }
        match msg {
            XMsg::Publish {
                channel,
                body,
                reply,
                key,
                ..
            } => self.cluster_publish(channel, body, reply, key),
            XMsg::Interest { channel, shard } => self.cluster_interest(channel, shard),
            // A backend's send or disconnect for a user goes to every node holding the user.
            XMsg::UserOp {
                user,
                op: op @ (UserOp::Send(_) | UserOp::Disconnect(..)),
                reply,
                here: false,
            } => self.cluster_user_op(user, op, reply),
            XMsg::Withdraw { channel, shard } => self.cluster_withdraw(&channel, shard),
            XMsg::Recover {
                ref channel, since, ..
            } => {
                let cluster = self.cluster.as_mut()?;
                match cluster.channels.get_mut(channel) {
                    Some(Some(sync)) => sync.recovers.push(msg),
                    Some(None) => {
                        if !self.wants_broker_recovery(channel, since) {
                            return Some(msg);
                        }
                        self.recover_from_broker(msg);
                    }
                    None => return Some(msg),
                }
            }
            other => return Some(other),
        }
        None
    }

    fn cluster_publish(
        &mut self,
        channel: Arc<str>,
        body: Body,
        reply: Option<(ReplyTo, u32)>,
        key: Option<Box<str>>,
    ) {
        if let Some(key) = &key {
            if let Some((offset, epoch)) = self.seen_key(&channel, key) {
                self.counters.publish_retries += 1;
                return self.answer_publish(reply, Ok(Position { offset, epoch }));
            }
        }
        let keep = self
            .history_policy(&channel)
            .map_or(Keep::default(), |(size, ttl_ms)| Keep {
                size: size.min(u32::MAX as usize) as u32,
                ttl_s: ttl_ms / 1000,
            });
        let index = self.index;
        let due = self.answer_due_ms();
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let token = cluster.next_token(index);
        let command = BrokerCommand::Publish {
            channel: channel.clone(),
            payload: body.to_broker(),
            keep,
            token,
        };
        match cluster.handle.try_send(command) {
            Ok(()) => {
                cluster.ring = true;
                let pending = PendingPublish {
                    due_ms: due,
                    reply,
                    channel,
                    key,
                };
                cluster.publishes.insert(token, pending);
            }
            Err(Refused::Full(_)) => {
                let why = BrokerError::Rejected("its queue is full (queue_capacity)".to_string());
                self.counters.cluster_publish_errors += 1;
                self.answer_publish(reply, Err(why));
            }
            Err(Refused::Down(BrokerCommand::Publish { .. })) => {
                self.publish_locally(channel, body, reply, key);
            }
            Err(Refused::Down(_) | Refused::Stopped(_)) => {
                self.counters.cluster_publish_errors += 1;
                self.answer_publish(reply, Err(BrokerError::Down));
            }
        }
    }

    /// The broker is down: a channel with subscribers on this node still gets the publish
    /// here, sequenced by this owner on a node-local epoch (its offsets go on from the last
    /// one; recovering across the change answers `recovered:false`), and the reply says
    /// `local_only`. Other nodes miss it. A channel without subscribers here (or whose position
    /// is still being read) is refused, `cluster_unavailable`, as before.
    fn publish_locally(
        &mut self,
        channel: Arc<str>,
        body: Body,
        reply: Option<(ReplyTo, u32)>,
        key: Option<Box<str>>,
    ) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        if !matches!(cluster.channels.get(&channel), Some(None)) {
            self.counters.cluster_publish_errors += 1;
            return self.answer_publish(reply, Err(BrokerError::Down));
        }
        if !cluster.local.contains_key(&channel) {
            let left = self
                .owned
                .get(&channel)
                .map_or((0, 0), |o| (o.offset, o.epoch));
            cluster.local.insert(channel.clone(), left);
            cluster.local_epochs += 1;
            let mixed = (cluster.local_seed
                ^ cluster.local_epochs.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .rotate_left(29);
            let epoch = LOCAL_EPOCH_BIT | (mixed & (LOCAL_EPOCH_BIT - 1));
            let offset = self.owned.get(&channel).map_or(0, |o| o.offset);
            self.move_position(&channel, offset, epoch);
        }
        self.counters.cluster_publish_local += 1;
        let position = self.sequence(channel.clone(), body, reply, false);
        if let Some(key) = key {
            self.remember_key(&channel, key, position);
        }
    }

    fn answer_publish(
        &mut self,
        reply: Option<(ReplyTo, u32)>,
        result: Result<Position, BrokerError>,
    ) {
        let Some((to, index)) = reply else {
            return;
        };
        let part = match result {
            Ok(p) => Part::Published {
                index,
                offset: p.offset,
                epoch: p.epoch,
                more: 0,
            },
            Err(e) => failure(&e),
        };
        self.send_x(to.shard as usize, XMsg::Reply { to, part });
    }

    fn cluster_interest(&mut self, channel: Arc<str>, shard: u16) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let known = cluster.channels.contains_key(&channel);
        if !known {
            // Left over from before (cannot be, by the invariant; harmless to clear).
            self.owned.remove(&channel);
        }
        let Some(position) = self.interest_hooked(&channel, shard as usize) else {
            return self.send_x(
                shard as usize,
                XMsg::Ack {
                    channel,
                    position: None,
                },
            );
        };
        let index = self.index;
        let due = self.answer_due_ms();
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        match cluster.channels.get_mut(&channel) {
            Some(Some(sync)) => sync.acks.push(shard),
            Some(None) => self.send_x(
                shard as usize,
                XMsg::Ack {
                    channel,
                    position: Some(position),
                },
            ),
            None => {
                // The node's first interest: subscribe, then read the position (the bridge runs
                // the read after the subscription is active, so no message falls between).
                let token = cluster.next_token(index);
                cluster.channels.insert(
                    channel.clone(),
                    Some(Syncing {
                        token,
                        held: Vec::new(),
                        acks: vec![shard],
                        recovers: Vec::new(),
                        catch_up: false,
                    }),
                );
                cluster.reads.insert(token, (channel.clone(), due));
                cluster.outbox.push_back(BrokerCommand::Subscribe {
                    channel: channel.clone(),
                });
                cluster.outbox.push_back(BrokerCommand::History {
                    channel: channel.clone(),
                    since: None,
                    token,
                });
                // Unknown until the broker answers.
                self.owned.set_position(&channel, 0, 0);
            }
        }
    }

    fn cluster_withdraw(&mut self, channel: &Arc<str>, shard: u16) {
        self.withdraw_hooked(channel, shard as usize);
        if self
            .owned
            .get(channel)
            .is_some_and(|o| !o.shards.is_empty())
        {
            return;
        }
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let Some(state) = cluster.channels.remove(channel) else {
            return;
        };
        cluster.fresh.remove(channel);
        cluster.local.remove(channel);
        cluster.outbox.push_back(BrokerCommand::Unsubscribe {
            channel: channel.clone(),
        });
        self.owned.remove(channel);
        if let Some(sync) = state {
            self.refuse_recovers(sync.recovers);
        }
    }

    /// Whether a recovery should read the broker's history: the namespace keeps history, the
    /// client's epoch is the channel's, it missed messages, and the local history (which starts
    /// at this node's first subscriber) does not hold all of them.
    fn wants_broker_recovery(&self, channel: &str, since: (u64, u64)) -> bool {
        self.history_policy(channel).is_some()
            && self
                .owned
                .get(channel)
                .is_some_and(|o| o.epoch != 0 && o.epoch == since.1 && since.0 < o.offset)
            && self
                .owned
                .recover(channel, since.0, since.1)
                .replay
                .is_none()
    }

    /// Asks the broker for what a recovering client missed; the answer completes it with what
    /// this owner delivered meanwhile (`Tail`).
    fn recover_from_broker(&mut self, msg: XMsg) {
        let XMsg::Recover {
            channel,
            since,
            shard,
            slot,
            generation,
            id,
        } = msg
        else {
            return;
        };
        let index = self.index;
        let due = self.answer_due_ms();
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let token = cluster.next_token(index);
        let command = BrokerCommand::History {
            channel: channel.clone(),
            since: Some(Position {
                offset: since.0,
                epoch: since.1,
            }),
            token,
        };
        let pending = PendingRecover {
            due_ms: due,
            channel: channel.clone(),
            since,
            shard,
            slot,
            generation,
            id,
        };
        if cluster.handle.try_send(command).is_ok() {
            cluster.ring = true;
            cluster.tails.entry(channel).or_default().readers += 1;
            cluster.recoveries.insert(token, pending);
        } else {
            self.answer_recover(pending, None);
        }
    }

    /// The broker's answer to a recovery: its messages up to what this owner delivered, then
    /// those delivered since the request; recovered only if together they leave no gap.
    fn on_recover_reply(
        &mut self,
        pending: PendingRecover,
        result: Result<Recovered, BrokerError>,
    ) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let (tail, overflowed) = match cluster.tails.get_mut(&pending.channel) {
            Some(tail) => {
                tail.readers -= 1;
                let overflowed = tail.overflowed;
                if tail.readers == 0 {
                    let taken = std::mem::take(&mut tail.entries);
                    cluster.tails.remove(&pending.channel);
                    (taken, overflowed)
                } else {
                    (tail.entries.clone(), overflowed)
                }
            }
            None => (Vec::new(), true),
        };
        let (last, epoch) = self
            .owned
            .get(&pending.channel)
            .map_or((0, 0), |o| (o.offset, o.epoch));
        let now = self.now_ms;
        let channel = pending.channel.clone();
        let since = pending.since;
        let replay = (|| {
            let recovered = result.ok().filter(|_| !overflowed)?;
            if recovered.position.epoch != epoch || since.1 != epoch {
                return None;
            }
            let mut out = Vec::new();
            let mut next = since.0 + 1;
            for (offset, payload) in recovered.replay? {
                if offset > last {
                    break;
                }
                if offset != next {
                    return None;
                }
                let body = Body::from_broker(&payload)?;
                let (envelope, raw) = encode_message(&channel, offset, &body);
                let frames = Arc::new(Frames::plain(envelope, raw));
                out.push(Entry {
                    offset,
                    at_ms: now,
                    frames,
                });
                next += 1;
            }
            for entry in tail {
                if entry.offset < next {
                    continue;
                }
                if entry.offset != next || entry.offset > last {
                    break;
                }
                out.push(entry);
                next += 1;
            }
            (next == last + 1).then_some(out)
        })();
        self.answer_recover(pending, replay);
    }

    /// Sends a recovery's answer with the channel's position here.
    fn answer_recover(&mut self, pending: PendingRecover, replay: Option<Vec<Entry>>) {
        let position = self
            .owned
            .get(&pending.channel)
            .map_or((0, 0), |o| (o.offset, o.epoch));
        let msg = XMsg::Recovered {
            channel: pending.channel,
            slot: pending.slot,
            generation: pending.generation,
            id: pending.id,
            position,
            replay,
        };
        self.send_x(pending.shard as usize, msg);
    }

    /// Answers recoveries whose channel went away meanwhile: nothing recovered.
    fn refuse_recovers(&mut self, recovers: Vec<XMsg>) {
        for msg in recovers {
            if let XMsg::Recover {
                channel,
                shard,
                slot,
                generation,
                id,
                ..
            } = msg
            {
                let reply = XMsg::Recovered {
                    channel,
                    slot,
                    generation,
                    id,
                    position: (0, 0),
                    replay: None,
                };
                self.send_x(shard as usize, reply);
            }
        }
    }

    /// The position of a channel being synchronised is known (or cannot be: `None`, the broker
    /// is down, and the shards are acknowledged with (0, 0), "unknown"; the first message
    /// sets it): acknowledge the waiting shards, deliver the held messages above it, run the
    /// held recoveries.
    fn finish_sync(&mut self, channel: &Arc<str>, read: Option<Recovered>) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let Some(slot) = cluster.channels.get_mut(channel) else {
            return;
        };
        let Some(sync) = slot.take() else {
            return;
        };
        cluster.reads.remove(&sync.token);
        if sync.catch_up {
            return self.finish_catch_up(channel, sync, read);
        }
        let position = read.map(|r| r.position).unwrap_or_default();
        self.owned
            .set_position(channel, position.offset, position.epoch);
        for shard in sync.acks {
            let msg = XMsg::Ack {
                channel: channel.clone(),
                position: Some((position.offset, position.epoch)),
            };
            self.send_x(shard as usize, msg);
        }
        for (offset, epoch, payload) in sync.held {
            self.accept_remote(channel, offset, epoch, &payload, true);
        }
        for msg in sync.recovers {
            self.handle_x(msg);
        }
    }

    /// A live channel's next message leaves a gap (`offset` after `last`, in `epoch`): when the
    /// namespace keeps history, hold it and read what was missed from the broker, to deliver
    /// that first (`finish_catch_up`). False when there is nothing to read it from.
    fn start_catch_up(
        &mut self,
        channel: &Arc<str>,
        (last, epoch): (u64, u64),
        message: Option<(u64, u64, Bytes)>,
    ) -> bool {
        if self.history_policy(channel).is_none() {
            return false;
        }
        let index = self.index;
        let due = self.answer_due_ms();
        let Some(cluster) = self.cluster.as_mut() else {
            return false;
        };
        let token = cluster.next_token(index);
        let sync = Syncing {
            token,
            held: message.into_iter().collect(),
            acks: Vec::new(),
            recovers: Vec::new(),
            catch_up: true,
        };
        cluster.channels.insert(channel.clone(), Some(sync));
        cluster.reads.insert(token, (channel.clone(), due));
        cluster.outbox.push_back(BrokerCommand::History {
            channel: channel.clone(),
            since: Some(Position {
                offset: last,
                epoch,
            }),
            token,
        });
        self.counters.cluster_catch_ups += 1;
        true
    }

    /// The missed messages arrived (or cannot be had: then the gap stays, as without history):
    /// delivered in order, then the shards that asked meanwhile are acknowledged, then the
    /// messages held meanwhile follow.
    fn finish_catch_up(&mut self, channel: &Arc<str>, sync: Syncing, read: Option<Recovered>) {
        let epoch = self.owned.get(channel).map_or(0, |o| o.epoch);
        match read.and_then(|r| r.replay) {
            Some(replay) => {
                for (offset, payload) in replay {
                    self.accept_remote(channel, offset, epoch, &payload, true);
                }
            }
            None => self.counters.cluster_catch_ups_failed += 1,
        }
        let position = self
            .owned
            .get(channel)
            .map_or((0, 0), |o| (o.offset, o.epoch));
        for shard in sync.acks {
            let msg = XMsg::Ack {
                channel: channel.clone(),
                position: Some(position),
            };
            self.send_x(shard as usize, msg);
        }
        for (offset, epoch, payload) in sync.held {
            self.accept_remote(channel, offset, epoch, &payload, true);
        }
        for msg in sync.recovers {
            self.handle_x(msg);
        }
    }

    /// One broker message for a live channel: dropped when already delivered (or of an older
    /// epoch, for messages held before the position was read), else fanned out.
    fn accept_remote(
        &mut self,
        channel: &Arc<str>,
        offset: u64,
        epoch: u64,
        payload: &Bytes,
        held: bool,
    ) {
        let Some(owned) = self.owned.get(channel) else {
            return;
        };
        let (last, current) = (owned.offset, owned.epoch);
        let kept_last = owned.history.last_offset();
        // A gap in a live channel (this node was cut off while others published): fetch what
        // was missed first, when the broker keeps it. Not for held messages (a catch-up or a
        // position read is delivering them) and not while the position is unknown (epoch 0:
        // where the subscribers' sequence starts is not known).
        // Empty but for the few channels just read after a reconnect: no lookup per message.
        let fresh = self
            .cluster
            .as_mut()
            .is_some_and(|c| !c.fresh.is_empty() && c.fresh.remove(channel));
        let on_broker = current != 0 && current & LOCAL_EPOCH_BIT == 0 && !fresh;
        let gap = on_broker && offset > 1 && (epoch != current || offset > last + 1);
        if gap && !held {
            let from = if epoch == current { last } else { 0 };
            if epoch != current {
                self.counters.cluster_epochs_bumped += 1;
                self.move_position(channel, 0, epoch);
                self.owned.clear_history(channel);
            }
            if self.start_catch_up(
                channel,
                (from, epoch),
                Some((offset, epoch, payload.clone())),
            ) {
                return;
            }
            return self.accept_remote(channel, offset, epoch, payload, true);
        }
        if epoch == current {
            if offset <= last {
                return;
            }
        } else if held && current != 0 {
            // Published before the position was read, in an incarnation the broker has since
            // replaced.
            return;
        } else {
            // A new epoch: the broker lost the channel (or the position was unknown).
            if current != 0 {
                self.counters.cluster_epochs_bumped += 1;
            }
            let start = offset.saturating_sub(1);
            self.move_position(channel, start, epoch);
        }
        if kept_last.is_some_and(|k| k + 1 != offset) || epoch != current {
            // A gap (dropped or missed messages): what is kept no longer leads up to here.
            self.owned.clear_history(channel);
        }
        self.owned.set_position(channel, offset, epoch);
        let Some(body) = Body::from_broker(payload) else {
            self.counters.cluster_malformed += 1;
            self.owned.clear_history(channel);
            return;
        };
        let shards = self
            .owned
            .get(channel)
            .map(|o| o.shards)
            .unwrap_or_default();
        let history = self.history_policy(channel);
        let frames = self.fan_out(channel, offset, &body, shards, history, None);
        let now = self.now_ms;
        if let Some(tail) = self.cluster.as_mut().and_then(|c| c.tails.get_mut(channel)) {
            if tail.entries.len() < HELD_MAX {
                tail.entries.push(Entry {
                    offset,
                    at_ms: now,
                    frames,
                });
            } else {
                tail.overflowed = true;
            }
        }
    }

    /// Reads the position of a live channel whose position is unknown (epoch 0); the read
    /// starts the broker's epoch if it has none.
    fn refresh_position(&mut self, channel: &Arc<str>) {
        let index = self.index;
        let due = self.answer_due_ms();
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let token = cluster.next_token(index);
        cluster.refreshes.insert(token, (channel.clone(), due));
        cluster.outbox.push_back(BrokerCommand::History {
            channel: channel.clone(),
            since: None,
            token,
        });
    }

    /// Sets a channel's position and tells the shards with subscribers (`Position`).
    fn move_position(&mut self, channel: &Arc<str>, offset: u64, epoch: u64) {
        self.owned.clear_history(channel);
        self.owned.set_position(channel, offset, epoch);
        let shards = self
            .owned
            .get(channel)
            .map(|o| o.shards)
            .unwrap_or_default();
        for shard in shards.iter() {
            let msg = XMsg::Position {
                channel: channel.clone(),
                position: (offset, epoch),
            };
            self.send_x(shard, msg);
        }
    }

    /// A shard with subscribers hears that the broker moved the channel's position.
    pub(super) fn on_position(&mut self, channel: &str, position: (u64, u64)) {
        let Some(id) = self.local.find(channel) else {
            return;
        };
        let local = self.local.get_mut(id);
        if local.sync == crate::channel::local::Sync::Active {
            local.last_offset = position.0;
            local.epoch = position.1;
        }
        // A pending channel gets its position from its own acknowledgement.
    }

    /// Handles this shard's broker events (up to a budget); returns whether there were any.
    pub(super) fn drain_broker(&mut self) -> bool {
        let Some(cluster) = self.cluster.as_mut() else {
            return false;
        };
        let mut events = std::mem::take(&mut cluster.scratch);
        cluster
            .events
            .drain(EVENTS_PER_TURN, |event| events.push(event));
        let any = !events.is_empty();
        for event in events.drain(..) {
            self.on_broker_event(event);
        }
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.scratch = events;
        }
        self.expire_requests();
        any
    }

    /// When a request sent now is failed if no answer came: see `ANSWER_SLACK_MS`.
    fn answer_due_ms(&self) -> u64 {
        self.now_ms + 4 * self.config.cluster.timeout_ms + ANSWER_SLACK_MS
    }

    /// Fails the requests whose answer is overdue (dropped on its way here) as if the broker had
    /// been lost with them in flight: the backend gets `cluster_unavailable` (outcome unknown),
    /// a subscribe its position unknown, a recovery `recovered:false`. Once a second.
    fn expire_requests(&mut self) {
        let now = self.now_ms;
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        if now < cluster.next_sweep_ms {
            return;
        }
        cluster.next_sweep_ms = now + 1000;
        let overdue = |due: u64| due <= now;
        let publishes: Vec<u64> = (cluster.publishes.iter())
            .filter(|(_, p)| overdue(p.due_ms))
            .map(|(&t, _)| t)
            .collect();
        let mut reads: Vec<(u64, Arc<str>)> = (cluster.recoveries.iter())
            .filter(|(_, r)| overdue(r.due_ms))
            .map(|(&t, r)| (t, r.channel.clone()))
            .collect();
        for map in [&cluster.reads, &cluster.refreshes] {
            reads.extend(
                map.iter()
                    .filter(|(_, (_, due))| overdue(*due))
                    .map(|(&t, (c, _))| (t, c.clone())),
            );
        }
        let user_sends: Vec<u64> = (cluster.user_sends.iter())
            .filter(|(_, p)| overdue(p.due_ms))
            .map(|(&t, _)| t)
            .collect();
        let user_nodes: Vec<u64> = (cluster.user_nodes.iter())
            .filter(|(_, (_, _, due))| overdue(*due))
            .map(|(&t, _)| t)
            .collect();
        for token in user_sends {
            self.expire_user_send(token);
        }
        self.expire_presence_reads(now);
        self.expire_conn_ops(now);
        self.expire_history_asks(now);
        for token in user_nodes {
            self.counters.cluster_requests_expired += 1;
            self.on_user_nodes(token, Err(BrokerError::Down));
        }
        for token in publishes {
            let Some(pending) = self
                .cluster
                .as_mut()
                .and_then(|c| c.publishes.remove(&token))
            else {
                continue;
            };
            self.counters.cluster_publish_errors += 1;
            self.counters.cluster_requests_expired += 1;
            self.answer_publish(pending.reply, Err(BrokerError::Down));
        }
        for (token, channel) in reads {
            self.counters.cluster_requests_expired += 1;
            self.on_history_reply(token, &channel, Err(BrokerError::Down));
        }
    }

    fn on_broker_event(&mut self, event: BrokerEvent) {
        match event {
            BrokerEvent::Message {
                channel,
                offset,
                epoch,
                payload,
            } => {
                self.counters.cluster_messages_in += 1;
                let Some(cluster) = self.cluster.as_mut() else {
                    return;
                };
                match cluster.channels.get_mut(&channel) {
                    None => {} // unsubscribed meanwhile
                    Some(Some(sync)) if sync.held.len() < HELD_MAX => {
                        sync.held.push((offset, epoch, payload));
                    }
                    // Past the bound: an offset gap its subscribers see.
                    Some(Some(_)) => {}
                    Some(None) => self.accept_remote(&channel, offset, epoch, &payload, false),
                }
            }
            BrokerEvent::Pattern {
                pattern,
                channel,
                payload,
            } => self.on_redis_input(&pattern, &channel, payload),
            BrokerEvent::Published { token, result } => {
                let Some(cluster) = self.cluster.as_mut() else {
                    return;
                };
                let Some(pending) = cluster.publishes.remove(&token) else {
                    return;
                };
                match &result {
                    Ok(position) => {
                        self.counters.cluster_messages_out += 1;
                        if let Some(key) = pending.key {
                            let at = (position.offset, position.epoch);
                            self.remember_key(&pending.channel, key, at);
                        }
                    }
                    Err(_) => self.counters.cluster_publish_errors += 1,
                }
                self.answer_publish(pending.reply, result);
            }
            BrokerEvent::HistoryReply {
                token,
                channel,
                result,
            } => self.on_history_reply(token, &channel, result),
            BrokerEvent::SubscribeRefused { channel } => self.on_subscribe_refused(&channel),
            BrokerEvent::User { user, payload } => self.on_broker_user(&user, &payload),
            BrokerEvent::UserSent { token, result } => self.on_user_sent(token, result),
            BrokerEvent::UserNodes { token, result } => self.on_user_nodes(token, result),
            BrokerEvent::PresenceNews {
                channel,
                joined,
                user,
                info,
            } => self.on_presence_news(&channel, joined, &user, info.as_deref()),
            BrokerEvent::PresenceReply { token, result } => self.on_presence_reply(token, result),
            BrokerEvent::NodeMessage { payload } => self.on_node_message(&payload),
            BrokerEvent::HistoryTail { token, result } => self.on_history_tail(token, result),
            BrokerEvent::NodeSent { token, result } => self.on_node_sent(token, result),
            BrokerEvent::Resync { channel, now, .. } => {
                let Some(cluster) = self.cluster.as_ref() else {
                    return;
                };
                if !matches!(cluster.channels.get(&channel), Some(None)) {
                    return; // not live here, or its position is being read anyway
                }
                let Some(owned) = self.owned.get(&channel) else {
                    return;
                };
                // Same epoch: messages were published while the node was cut off; another
                // epoch: the broker lost the channel. Either way, when the channel was on the
                // broker's sequence here, what this node missed is fetched (catch-up). A
                // channel whose position was unknown or node-local: its position becomes
                // unknown and is read again (its new messages may be on their way already,
                // read after the position, so the next message sets it); recoveries from the
                // old epoch answer recovered:false.
                let (mut offset, mut epoch) = (owned.offset, owned.epoch);
                if epoch & LOCAL_EPOCH_BIT != 0 {
                    // Sequenced here while the broker was away: compared with the broker's
                    // position it left (and back on the broker's sequence from here).
                    let left = self.cluster.as_mut().and_then(|c| c.local.remove(&channel));
                    (offset, epoch) = left.unwrap_or((0, 0));
                    if epoch != 0 {
                        self.counters.cluster_epochs_bumped += 1;
                        self.move_position(&channel, offset, epoch);
                    }
                }
                let on_broker = epoch != 0 && epoch & LOCAL_EPOCH_BIT == 0;
                if now.epoch == epoch && now.offset > offset && on_broker {
                    // Published elsewhere while this node was cut off: fetched now (when
                    // kept), not at the next message, which may be long in coming.
                    self.start_catch_up(&channel, (offset, epoch), None);
                    return;
                }
                if now.epoch != epoch && now.epoch != 0 && on_broker {
                    // The broker lost the channel and it has a new sequence: all of it is new
                    // to this node's subscribers, and what was published before this node
                    // was back is fetched (when kept).
                    self.counters.cluster_epochs_bumped += 1;
                    self.move_position(&channel, 0, now.epoch);
                    if now.offset > 0 {
                        self.start_catch_up(&channel, (0, now.epoch), None);
                    }
                    return;
                }
                if now.epoch != epoch {
                    if epoch != 0 {
                        self.counters.cluster_epochs_bumped += 1;
                    }
                    self.move_position(&channel, 0, 0);
                    self.refresh_position(&channel);
                }
            }
            BrokerEvent::Up { .. } => {
                let index = self.index;
                let Some(cluster) = self.cluster.as_mut() else {
                    return;
                };
                if std::mem::take(&mut cluster.down) && index == 0 {
                    self.counters.cluster_reconnects += 1;
                }
                // Channels sequenced here while the broker was away (and not moved by a
                // `Resync`: Redis's position is the one they left) go back to it, or to
                // unknown when they left none; recoveries from the node-local epoch answer
                // recovered:false.
                let local: Vec<(Arc<str>, (u64, u64))> = cluster.local.drain().collect();
                for (channel, (offset, epoch)) in local {
                    let on_local = self
                        .owned
                        .get(&channel)
                        .is_some_and(|o| o.epoch & LOCAL_EPOCH_BIT != 0);
                    if on_local {
                        self.counters.cluster_epochs_bumped += 1;
                        match epoch {
                            0 => self.move_position(&channel, 0, 0),
                            _ => self.move_position(&channel, offset, epoch),
                        }
                    }
                }
                let Some(cluster) = self.cluster.as_mut() else {
                    return;
                };
                // Channels answered while the broker was away learn their epoch now.
                let unknown: Vec<Arc<str>> = cluster
                    .channels
                    .iter()
                    .filter(|(_, state)| state.is_none())
                    .map(|(name, _)| name.clone())
                    .filter(|name| self.owned.get(name).is_some_and(|o| o.epoch == 0))
                    .collect();
                for channel in unknown {
                    self.refresh_position(&channel);
                }
            }
            BrokerEvent::Down { .. } => {
                if let Some(cluster) = self.cluster.as_mut() {
                    cluster.down = true;
                }
            }
        }
    }

    fn on_history_reply(
        &mut self,
        token: u64,
        channel: &Arc<str>,
        result: Result<Recovered, BrokerError>,
    ) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        if let Some(pending) = cluster.history_asks.remove(&token) {
            return self.on_history_since(pending, result);
        }
        if let Some(pending) = cluster.recoveries.remove(&token) {
            return self.on_recover_reply(pending, result);
        }
        if let Some((refreshed, _)) = cluster.refreshes.remove(&token) {
            // Still unknown (no message came meanwhile): the broker's epoch, offset 0, so
            // every message of it that is on its way is above the position, and any that
            // were missed show as a gap (or are recovered from the broker).
            let epoch = result.map_or(0, |r| r.position.epoch);
            let unknown = self.owned.get(&refreshed).is_some_and(|o| o.epoch == 0);
            let live = matches!(cluster.channels.get(&refreshed), Some(None));
            if unknown && live && epoch != 0 {
                cluster.fresh.insert(refreshed.clone());
                self.move_position(&refreshed, 0, epoch);
            }
            return;
        }
        if cluster.reads.remove(&token).is_none() {
            return;
        }
        let current = matches!(cluster.channels.get(channel), Some(Some(s)) if s.token == token);
        if current {
            self.finish_sync(channel, result.ok());
        }
    }

    fn on_subscribe_refused(&mut self, channel: &Arc<str>) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let Some(state) = cluster.channels.remove(channel) else {
            return;
        };
        let shards = self
            .owned
            .get(channel)
            .map(|o| o.shards)
            .unwrap_or_default();
        self.owned.remove(channel);
        // Its webhook occupancy goes with it (the set holds only channels with subscribers).
        self.vacate_if_empty(channel);
        // Like an owner that is full: every shard's subscribers of it are refused.
        for shard in shards.iter() {
            let msg = XMsg::Ack {
                channel: channel.clone(),
                position: None,
            };
            self.send_x(shard, msg);
        }
        if let Some(sync) = state {
            self.refuse_recovers(sync.recovers);
        }
    }

    /// Sends the queued interest and history commands while the broker's queue has room (in
    /// order: a history read must follow its subscribe), and wakes the bridge. Once per turn.
    pub(super) fn flush_broker(&mut self) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let mut failed = Vec::new();
        while let Some(command) = cluster.outbox.pop_front() {
            match cluster.handle.try_send(command) {
                Ok(()) => cluster.ring = true,
                Err(Refused::Full(command)) => {
                    // Again next turn, in order.
                    cluster.outbox.push_front(command);
                    break;
                }
                Err(Refused::Down(BrokerCommand::History { channel, token, .. })) => {
                    failed.push((token, channel));
                }
                Err(Refused::Down(_)) => {}
                Err(Refused::Stopped(_)) => {
                    cluster.outbox.clear();
                    break;
                }
            }
        }
        if std::mem::take(&mut cluster.ring) {
            cluster.handle.ring();
        }
        for (token, channel) in failed {
            self.on_history_reply(token, &channel, Err(BrokerError::Down));
        }
    }

    /// Shard 0 subscribes the `[[redis_input]]` patterns once (the bridge keeps them across
    /// reconnects).
    pub(super) fn subscribe_inputs(&mut self) {
        if self.index != 0 {
            return;
        }
        let patterns: Vec<Arc<str>> = self
            .config
            .redis_input
            .iter()
            .map(|i| Arc::from(i.pattern.as_str()))
            .collect();
        if let Some(cluster) = self.cluster.as_mut() {
            for pattern in patterns {
                cluster
                    .outbox
                    .push_back(BrokerCommand::PatternSubscribe { pattern });
            }
        }
    }

    /// A message an application published on a broker channel matching a `[[redis_input]]`
    /// pattern: to the connection, the user or the channel its suffix names.
    fn on_redis_input(&mut self, pattern: &str, broker_channel: &[u8], payload: Bytes) {
        let config = self.config.clone();
        let target = config
            .redis_input
            .iter()
            .find(|i| i.pattern == pattern)
            .and_then(|input| {
                let suffix = broker_channel.strip_prefix(input.prefix().as_bytes())?;
                let suffix = std::str::from_utf8(suffix).ok()?;
                let fits = !suffix.is_empty() && suffix.len() <= INPUT_SUFFIX_BYTES_MAX;
                fits.then_some((input, suffix))
            });
        let Some((input, suffix)) = target else {
            self.counters.redis_input_refused += 1;
            return;
        };
        if payload.len() > config.limits.message_bytes_max {
            self.counters.redis_input_refused += 1;
            return;
        }
        let body = Body::from_foreign(payload);
        let done = match input.to {
            InputTarget::Conn => {
                let conn = (suffix.bytes().all(|b| b.is_ascii_digit()) && suffix.len() <= 16)
                    .then(|| suffix.parse::<u64>().ok())
                    .flatten()
                    .and_then(crate::id::ConnId::from_u64)
                    .filter(|c| c.shard() < self.shards);
                match conn {
                    // Every node gets the message; the node the id names acts on it.
                    Some(conn) if conn.node() != self.node => return,
                    Some(conn) => {
                        let action = ConnAction::Send(body);
                        let msg = XMsg::ToConn {
                            conn,
                            action,
                            reply: None,
                        };
                        self.send_x(conn.shard(), msg);
                        true
                    }
                    None => false,
                }
            }
            InputTarget::User => {
                let ok = suffix.len() <= crate::control::request::USER_BYTES_MAX
                    && !suffix.chars().any(char::is_control);
                if ok {
                    let user: Arc<str> = Arc::from(suffix);
                    let owner = channel::owner_of(&user, self.shards);
                    let op = UserOp::Send(body);
                    // Every node gets the pattern message and acts on its own connections.
                    self.send_x(
                        owner,
                        XMsg::UserOp {
                            user,
                            op,
                            reply: None,
                            here: true,
                        },
                    );
                }
                ok
            }
            InputTarget::Channel => {
                let name = input.channel_for(suffix);
                self.publish(&name, body).is_ok()
            }
        };
        if done {
            self.counters.redis_input_messages += 1;
        } else {
            self.counters.redis_input_refused += 1;
        }
    }

    /// This shard's dropped-event count, for the snapshot; shard 0 also copies the bridge's
    /// own counters (one bridge per node, so the sum over shards is the bridge's count).
    pub(super) fn cluster_gauges(&mut self) {
        if let Some(cluster) = self.cluster.as_ref() {
            self.counters.cluster_events_dropped = cluster.events.dropped();
            self.counters.cluster_up = u64::from(cluster.handle.is_up());
            if self.index == 0 {
                let bridge = cluster.handle.stats();
                self.counters.bridge_messages_in = bridge.messages_in;
                self.counters.bridge_messages_out = bridge.messages_out;
                self.counters.bridge_malformed_in = bridge.malformed_in;
                self.counters.bridge_queue_overflows = bridge.queue_overflows;
                self.counters.bridge_subscribe_refusals = bridge.subscribe_refusals;
                self.counters.bridge_node_id_conflicts = bridge.node_id_conflicts;
            }
        }
    }
}
