//! Channels on a shard: client commands on `/ws`, subscriptions, the owner's sequencing, and
//! delivery of one encoded frame to every local subscriber.
//!
//! Publish path: publisher's shard → `Publish` → owner (`channel::owner_of`) assigns the offset
//! and encodes the envelope and raw frames once → `Deliver` to every shard with subscribers →
//! each queues the frame to each subscriber (`Outbound`: a small frame copied into the
//! subscriber's buffer, a large one shared by handle; the messages that arrive together as a
//! run, queued as one frame). No per-subscriber allocation or clock read. Clustered, the owner
//! sends the publish to the broker instead, and the broker's message comes back to the owner of
//! every node, which fans it out the same way (`super::cluster`).

use super::Engine;
use super::cluster::HistoryAsker;
use super::conn::{Endpoint, State};
use super::io::Token;
use super::limits_ticks;
use super::outbound::FRAME_OVERHEAD;
use super::outbound::{self, Enqueue};
use super::xmsg::{Body, Part, ReplyTo, XMsg};
use crate::channel::local::{LocalChannels, Subscribed, Sync};
use crate::channel::{self, ChannelError};
use crate::proto::frame::{self, OpCode};
use crate::wire::envelope::{self, Command};
use crate::wire::{ErrorCode, Frames, encode_message};
use crate::xshard::Sent;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;

/// Commands a client may send while one of its subscriptions waits for the channel's owner (a
/// round trip between shards, microseconds); more closes it with 4002.
pub const DEFERRED_COMMANDS_MAX: usize = 256;

/// Cross-shard messages handled per loop turn before the shard returns to its sockets.
pub const DRAIN_BUDGET: usize = 8192;

/// Most messages of one channel delivered in one visit to each subscriber (`deliver_run`); it
/// also bounds how far a run may carry the queues past the watermark.
pub const RUN_MESSAGES_MAX: usize = 64;

/// One message of a run (see `Engine::deliver_run`).
#[derive(Debug)]
pub struct RunItem {
    offset: u64,
    frames: Arc<crate::wire::Frames>,
    report: Option<Box<ReplyTo>>,
    stamp_us: u64,
}

impl Engine {
    /// Sends a message to shard `to` (to itself through a local queue, so that every pair keeps
    /// FIFO order and handlers never re-enter). Control-plane messages are never refused; a
    /// refused data-plane message has the outcome docs/limits.md gives for its kind.
    pub(super) fn send_x(&mut self, to: usize, msg: XMsg) {
        if to == self.index {
            self.self_queue.push_back(msg);
            return;
        }
        let Some(outbox) = self.outboxes[to].as_mut() else {
            unreachable!("an outbox exists for every other shard");
        };
        let sent = if msg.may_be_refused() {
            outbox.send(msg)
        } else {
            outbox.send_unbounded(msg)
        };
        match sent {
            Sent::Ring => {}
            Sent::Overflow => self.counters.xshard_overflows += 1,
            Sent::Refused(msg) => self.on_refused(msg),
        }
    }

    /// A data-plane message did not fit (ring and overflow queue full): the publisher or the
    /// subscribers learn it, never silently. A request waiting for its outcome gets `overloaded`
    /// (through the self queue, so no handler re-enters).
    fn on_refused(&mut self, msg: XMsg) {
        self.counters.xshard_refused += 1;
        let reply = match msg {
            XMsg::Publish { reply, .. } => {
                self.counters.xshard_refused_publishes += 1;
                reply.map(|(to, _)| to)
            }
            XMsg::Deliver { report, .. } => {
                // That shard's subscribers miss this offset: envelope clients see the gap in
                // the offsets and can recover (docs/limits.md).
                self.counters.xshard_refused_deliveries += 1;
                if let Some(to) = report {
                    // The report waits for every shard: this one says it was not reached.
                    let part = Part::Delivered {
                        delivered: 0,
                        slow: 0,
                        refused: true,
                    };
                    let shard = to.shard as usize;
                    if shard == self.index {
                        self.self_queue.push_back(XMsg::Reply { to: *to, part });
                    } else {
                        self.send_x(shard, XMsg::Reply { to: *to, part });
                    }
                }
                None
            }
            XMsg::PushAll { reply, .. }
            | XMsg::ToConn { reply, .. }
            | XMsg::UserOp { reply, .. } => reply,
            XMsg::Event { to, .. } => {
                self.event_refused(to);
                None
            }
            XMsg::Notify { .. } => {
                // Those subscribers miss one join/leave news (presence itself stays right).
                self.counters.presence_news_refused += 1;
                None
            }
            other => {
                debug_assert!(false, "a control-plane message was refused: {other:?}");
                None
            }
        };
        if let Some(to) = reply {
            // Data-plane messages with a reply are sent by the shard of the waiting control
            // connection, so its answer stays on this shard.
            assert_eq!(to.shard as usize, self.index);
            let part = Part::Failed(
                ErrorCode::Overloaded,
                "the server's cross-shard queues are full; retry later".to_string(),
            );
            self.self_queue.push_back(XMsg::Reply { to, part });
        }
    }

    /// Handles what other shards (and this one) sent, and the broker's events when clustered,
    /// up to a budget; returns whether anything
    /// was handled (not when everything waits for the queues to drain: the driver may then
    /// sleep until sends complete or the next tick).
    pub fn drain_inbox(&mut self) -> bool {
        let mut batch = std::mem::take(&mut self.xbatch);
        if batch.is_empty() {
            while let Some(msg) = self.self_queue.pop_front() {
                batch.push_back(msg);
            }
            self.inbox.drain(DRAIN_BUDGET, |m| batch.push_back(m));
        }
        let mut any = self.drain_broker();
        if any && batch.is_empty() {
            // What the broker's events sent to this shard itself.
            while let Some(msg) = self.self_queue.pop_front() {
                batch.push_back(msg);
            }
        }
        let high = self.high_watermark();
        while let Some(msg) = batch.pop_front() {
            if self.owed.total() > high
                && matches!(msg, XMsg::Deliver { .. } | XMsg::PushAll { .. })
            {
                // Over the watermark: the rest waits, in order, until the queues drain (the
                // rings behind it fill up, and publishers are paused meanwhile).
                batch.push_front(msg);
                break;
            }
            any = true;
            match msg {
                XMsg::Deliver {
                    channel,
                    offset,
                    frames,
                    report,
                    stamp_us,
                } => {
                    let first = RunItem {
                        offset,
                        frames,
                        report,
                        stamp_us,
                    };
                    self.deliver_from(&channel, first, Some((&mut batch, high)));
                }
                msg => self.handle_x(msg),
            }
        }
        self.xbatch = batch;
        any
    }

    /// Delivers `first` and, given the rest of an inbox batch, the deliveries that continue its
    /// run there (`extend_run`); the replies met on the way are handled after the run.
    fn deliver_from(
        &mut self,
        channel: &Arc<str>,
        first: RunItem,
        rest: Option<(&mut VecDeque<XMsg>, usize)>,
    ) {
        let mut run = std::mem::take(&mut self.run_scratch);
        let mut replies = std::mem::take(&mut self.run_replies);
        let alone = first.frames.exclude.is_some();
        run.push(first);
        if let Some((batch, high)) = rest.filter(|_| !alone) {
            self.extend_run(channel, &mut run, &mut replies, batch, high);
        }
        self.deliver_messages(channel, &mut run);
        for reply in replies.drain(..) {
            self.handle_x(reply);
        }
        self.run_scratch = run;
        self.run_replies = replies;
    }

    /// Takes from the front of `batch` the deliveries that continue a run of `channel` (see
    /// `deliver_run`): up to `RUN_MESSAGES_MAX`, none that excludes a connection, none once the
    /// queues are over the watermark. Replies met on the way (a publisher's acknowledgements:
    /// the owner sends one before each delivery) move to `replies`, handled after the run:
    /// they only answer control connections, and whatever an answer releases (a barrier's held
    /// commands) came after these publishes anyway.
    fn extend_run(
        &mut self,
        channel: &Arc<str>,
        run: &mut Vec<RunItem>,
        replies: &mut Vec<XMsg>,
        batch: &mut VecDeque<XMsg>,
        high: usize,
    ) {
        while run.len() < RUN_MESSAGES_MAX && self.owed.total() <= high {
            match batch.front() {
                Some(XMsg::Deliver {
                    channel: next,
                    frames,
                    ..
                }) if frames.exclude.is_none()
                    && (Arc::ptr_eq(next, channel) || next == channel) =>
                {
                    let Some(XMsg::Deliver {
                        offset,
                        frames,
                        report,
                        stamp_us,
                        ..
                    }) = batch.pop_front()
                    else {
                        unreachable!("the front was a delivery");
                    };
                    run.push(RunItem {
                        offset,
                        frames,
                        report,
                        stamp_us,
                    });
                }
                Some(XMsg::Reply { .. }) if replies.len() < RUN_MESSAGES_MAX => {
                    replies.extend(batch.pop_front());
                }
                _ => return,
            }
        }
    }

    /// Delivers `run` (emptied) and reports each message: its sampled latency, its counts to
    /// the publisher that asked.
    fn deliver_messages(&mut self, channel: &str, run: &mut Vec<RunItem>) {
        let mut counts = std::mem::take(&mut self.run_counts);
        self.deliver_run(channel, run, &mut counts);
        for (item, &(delivered, slow)) in run.drain(..).zip(counts.iter()) {
            if item.stamp_us != 0 && delivered > 0 {
                let latency = self.now_us.saturating_sub(item.stamp_us);
                self.counters.delivery_latency_us.observe(latency);
            }
            if let Some(to) = item.report {
                let part = Part::Delivered {
                    delivered,
                    slow,
                    refused: false,
                };
                self.send_x(to.shard as usize, XMsg::Reply { to: *to, part });
            }
        }
        self.run_counts = counts;
    }

    /// Retries overflowed messages; calls `ring(shard)` for every destination that got messages
    /// since the last call (the driver rings that shard's doorbell). Once per loop turn.
    pub fn flush_outboxes(&mut self, mut ring: impl FnMut(usize)) {
        self.flush_broker();
        for (to, outbox) in self.outboxes.iter_mut().enumerate() {
            if let Some(outbox) = outbox {
                if outbox.flush() {
                    ring(to);
                }
            }
        }
    }

    pub(super) fn handle_x(&mut self, msg: XMsg) {
        let Some(msg) = self.cluster_intercept(msg) else {
            return;
        };
        match msg {
            XMsg::Publish {
                channel,
                body,
                reply,
                report,
                key,
            } => {
                if let Some(key) = key {
                    if let Some((offset, epoch)) = self.seen_key(&channel, &key) {
                        // A retry: answer what the first publish got, deliver nothing again.
                        self.counters.publish_retries += 1;
                        if let Some((to, index)) = reply {
                            let part = Part::Published {
                                index,
                                offset,
                                epoch,
                                more: 0,
                            };
                            self.send_x(to.shard as usize, XMsg::Reply { to, part });
                        }
                        return;
                    }
                    let position = self.sequence(channel.clone(), body, reply, report);
                    self.remember_key(&channel, key, position);
                } else {
                    self.sequence(channel, body, reply, report);
                }
            }
            XMsg::ToConn {
                conn,
                action,
                reply,
            } => self.on_to_conn(conn, action, reply),
            XMsg::Query { query, reply } => self.on_query(query, reply),
            XMsg::PushAll {
                envelope,
                raw,
                reply,
            } => self.on_push_all(&envelope, &raw, reply),
            XMsg::Reply { to, part } => self.on_reply(to, part),
            XMsg::Interest { channel, shard } => {
                let position = self.interest_hooked(&channel, shard as usize);
                self.send_x(shard as usize, XMsg::Ack { channel, position });
            }
            XMsg::Withdraw { channel, shard } => self.withdraw_hooked(&channel, shard as usize),
            XMsg::Ack { channel, position } => self.on_ack(&channel, position),
            XMsg::Position { channel, position } => self.on_position(&channel, position),
            XMsg::Recover {
                channel,
                since,
                shard,
                slot,
                generation,
                id,
            } => {
                if let Some((_, ttl_ms)) = self.history_policy(&channel) {
                    let now = self.now_ms;
                    self.owned.expire(&channel, now, ttl_ms);
                }
                let recovery = self.owned.recover(&channel, since.0, since.1);
                let msg = XMsg::Recovered {
                    channel,
                    slot,
                    generation,
                    id,
                    position: recovery.position,
                    replay: recovery.replay,
                };
                self.send_x(shard as usize, msg);
            }
            XMsg::History {
                channel,
                limit,
                since,
                reply,
            } => {
                let asker = HistoryAsker::Control(reply);
                let Err(HistoryAsker::Control(reply)) =
                    self.cluster_history(&channel, limit, since, asker)
                else {
                    return; // asked of the broker
                };
                let part = Part::Json(self.history_json(&channel, limit, since));
                self.send_x(reply.shard as usize, XMsg::Reply { to: reply, part });
            }
            XMsg::ClientHistory {
                channel,
                limit,
                shard,
                slot,
                generation,
                id,
            } => {
                let asker = HistoryAsker::Client {
                    shard,
                    slot,
                    generation,
                    id,
                };
                let Err(HistoryAsker::Client {
                    shard,
                    slot,
                    generation,
                    id,
                }) = self.cluster_history(&channel, limit, None, asker)
                else {
                    return; // asked of the broker
                };
                let body = self.history_json(&channel, limit, None);
                let msg = XMsg::ClientHistoryReply {
                    channel,
                    slot,
                    generation,
                    id,
                    body,
                };
                self.send_x(shard as usize, msg);
            }
            XMsg::ClientHistoryReply {
                channel,
                slot,
                generation,
                id,
                body,
            } => {
                let Some(conn) = self.conns.live(Token { slot, generation }) else {
                    return;
                };
                conn.awaiting = conn.awaiting.saturating_sub(1);
                let slot = slot as usize;
                self.reply(slot, envelope::history(&channel, &body, id.as_deref()));
                if self.conns[slot].awaiting == 0 {
                    self.replay_deferred(slot);
                }
            }
            XMsg::Recovered {
                channel,
                slot,
                generation,
                id,
                position,
                replay,
            } => self.on_recovered(&channel, slot, generation, id, position, replay),
            XMsg::UserBind {
                user,
                conn,
                reply,
                from_control,
            } => self.on_user_bind(user, conn, reply, from_control),
            XMsg::UserUnbind { user, conn } => self.on_user_unbind(&user, conn),
            XMsg::UserRefused { user, conn } => self.on_user_refused(&user, conn),
            XMsg::UserOp {
                user, op, reply, ..
            } => self.on_user_op(&user, op, reply),
            XMsg::UserQuery { query, reply } => self.on_user_query(query, reply),
            XMsg::Presence {
                channel,
                user,
                info,
                join,
            } => self.on_presence(channel, user, info, join),
            XMsg::PresenceAsk {
                channel,
                stats,
                after,
                limit,
                reply,
            } => self.on_presence_ask(&channel, stats, after.as_deref(), limit, reply),
            XMsg::Notify {
                channel,
                frame,
                skip_user,
            } => self.on_notify(&channel, &frame, skip_user.as_deref()),
            XMsg::PusherMembers {
                channel,
                shard,
                slot,
                generation,
                since,
                user,
            } => self.on_pusher_members(channel, shard, slot, generation, since, user),
            XMsg::PusherMembersReply {
                channel,
                slot,
                generation,
                since,
                data,
            } => self.on_pusher_members_reply(&channel, slot, generation, since, &data),
            XMsg::PusherCache {
                channel,
                shard,
                slot,
                generation,
                since,
            } => self.on_pusher_cache(channel, shard, slot, generation, since),
            XMsg::PusherCacheReply {
                channel,
                slot,
                generation,
                cached,
            } => self.on_pusher_cache_reply(&channel, slot, generation, cached),
            XMsg::Consumer {
                group,
                addr,
                types,
                reply,
            } => {
                self.on_consumer(group, addr, types);
                if let Some(to) = reply {
                    self.send_x(
                        to.shard as usize,
                        XMsg::Reply {
                            to,
                            part: Part::Done,
                        },
                    );
                }
            }
            XMsg::Event { to, line, missed } => self.on_event(to, line, missed),
            XMsg::Deliver {
                channel,
                offset,
                frames,
                report,
                stamp_us,
            } => {
                let first = RunItem {
                    offset,
                    frames,
                    report,
                    stamp_us,
                };
                self.deliver_from(&channel, first, None);
            }
        }
    }

    /// The owner: assign the next offset, encode both frames once, fan out to the shards.
    /// The channel's history settings, when its namespace keeps history: (size, ttl in ms).
    pub(super) fn history_policy(&self, name: &str) -> Option<(usize, u64)> {
        if crate::wire::pusher::is_internal(name) {
            // A Pusher cache channel keeps its last event; other Pusher channels none.
            let cache =
                crate::wire::pusher::pusher_name(name).is_some_and(crate::wire::pusher::is_cache);
            let ttl_ms = self.config.limits.pusher_cache_ttl_s.saturating_mul(1000);
            return cache.then_some((1, ttl_ms));
        }
        self.config
            .namespaces
            .get(channel::namespace_of(name))
            .filter(|ns| ns.history_size > 0)
            .map(|ns| (ns.history_size, ns.history_ttl_s.saturating_mul(1000)))
    }

    /// The position a publish with this key got, if it was within the window.
    pub(super) fn seen_key(&mut self, channel: &str, key: &str) -> Option<(u64, u64)> {
        let window = limits_ticks(self.config.limits.idempotency_window_ms);
        let now = self.now_tick;
        // Forget what aged out (oldest first), then look.
        while let Some((tick, k)) = self.idempotency_order.front() {
            if now.wrapping_sub(*tick) < window {
                break;
            }
            let k = k.clone();
            self.idempotency_order.pop_front();
            self.idempotency.remove(&k);
        }
        self.idempotency
            .get(&(Arc::from(channel), Box::from(key)))
            .copied()
    }

    /// Remembers the position a publish with this key got.
    pub(super) fn remember_key(&mut self, channel: &Arc<str>, key: Box<str>, position: (u64, u64)) {
        let max = self.config.limits.idempotency_keys_per_shard_max;
        if max == 0 {
            return;
        }
        while self.idempotency.len() >= max {
            let Some((_, oldest)) = self.idempotency_order.pop_front() else {
                break;
            };
            self.idempotency.remove(&oldest);
            self.counters.idempotency_evictions += 1;
        }
        let k = (channel.clone(), key);
        self.idempotency.insert(k.clone(), position);
        self.idempotency_order.push_back((self.now_tick, k));
    }

    /// Sequences and fans out one publish; returns its offset and epoch ((0, 0): nobody
    /// subscribes and nothing is kept).
    pub(super) fn sequence(
        &mut self,
        channel: Arc<str>,
        body: Body,
        reply: Option<(ReplyTo, u32)>,
        report: bool,
    ) -> (u64, u64) {
        let history = self.history_policy(&channel);
        let sequenced = self.owned.publish(&channel, history.is_some());
        if let Some((to, index)) = reply {
            let (offset, epoch) = sequenced.map_or((0, 0), |(o, e, _)| (o, e));
            let more = match (report, &sequenced) {
                (true, Some((_, _, shards))) => shards.iter().count() as u32,
                _ => 0,
            };
            self.send_x(
                to.shard as usize,
                XMsg::Reply {
                    to,
                    part: Part::Published {
                        index,
                        offset,
                        epoch,
                        more,
                    },
                },
            );
        }
        let report_to = reply.filter(|_| report).map(|(to, _)| to);
        let Some((offset, epoch, shards)) = sequenced else {
            self.counters.published_no_audience += 1;
            return (0, 0);
        };
        if shards.is_empty() {
            self.counters.published_no_audience += 1;
        } else {
            self.counters.published += 1;
        }
        let _ = self.fan_out(&channel, offset, &body, shards, history, report_to);
        (offset, epoch)
    }

    /// The owner, once a message has its offset (assigned here, or by the broker when
    /// clustered): encode both frames once, keep them in history, send them to every shard in
    /// `shards`.
    pub(super) fn fan_out(
        &mut self,
        channel: &Arc<str>,
        offset: u64,
        body: &Body,
        shards: crate::channel::owner::ShardSet,
        history: Option<(usize, u64)>,
        report_to: Option<ReplyTo>,
    ) -> Arc<Frames> {
        let (envelope, raw) = encode_message(channel, offset, body);
        let mut frames = Frames::plain(envelope, raw);
        let pusher = match body {
            crate::wire::Body::Pusher { exclude, .. } => {
                frames.exclude = *exclude;
                true
            }
            _ => false,
        };
        // Pusher connections never agree permessage-deflate: nothing to compress for them.
        if let Some(compressor) = self.compressor.as_mut().filter(|_| !pusher) {
            // Once here at the owner, never per subscriber (RFC 7692 §7.2.1; without context
            // takeover the same bytes suit every deflate client).
            let min = self.config.limits.deflate_min_bytes;
            let done = frames.compress(compressor, min, &mut self.deflate_scratch);
            self.counters.frames_compressed += done.frames;
            self.counters.deflate_bytes_saved += done.bytes_saved;
        }
        let frames = Arc::new(frames);
        if let Some((size, ttl_ms)) = history {
            // The same frames the subscribers get: a replay sends the bytes a delivery did.
            let now = self.now_ms;
            self.owned.expire(channel, now, ttl_ms);
            let entry = crate::channel::history::Entry {
                offset,
                at_ms: now,
                frames: frames.clone(),
            };
            let max = self.config.limits.history_bytes_per_shard_max;
            if !self.owned.keep(channel, entry, size, max) {
                self.counters.history_refused += 1;
            }
        }
        self.sequenced = self.sequenced.wrapping_add(1);
        let stamp_us = if self.sequenced % super::LATENCY_SAMPLE_EVERY == 0 {
            self.now_us.max(1)
        } else {
            0
        };
        for shard in shards.iter() {
            let msg = XMsg::Deliver {
                channel: channel.clone(),
                offset,
                frames: frames.clone(),
                report: report_to.map(Box::new),
                stamp_us,
            };
            self.send_x(shard, msg);
        }
        frames
    }

    /// Queues a run of sequenced messages of one channel (consecutive offsets as the owner sent
    /// them, see `drain_inbox`) to every local subscriber, each subscriber getting the whole
    /// run in one visit; `counts[i]` is (queued, slow) for `run[i]`. Only a run of one may
    /// exclude a connection (a Pusher `socket_id`).
    fn deliver_run(&mut self, name: &str, run: &[RunItem], counts: &mut Vec<(u64, u64)>) {
        counts.clear();
        counts.resize(run.len(), (0, 0));
        debug_assert!(run.len() == 1 || run.iter().all(|m| m.frames.exclude.is_none()));
        let Some(id) = self.local.find(name) else {
            return;
        };
        let channel = self.local.get_mut(id);
        if channel.sync == Sync::Pending {
            // Sent before this shard's (new) interest was registered: it precedes the offset the
            // acknowledgement will announce.
            return;
        }
        let conflate = self
            .config
            .namespaces
            .get(channel::namespace_of(name))
            .is_some_and(|ns| ns.slow_consumer == crate::config::SlowConsumerPolicy::Conflate);
        for item in run {
            debug_assert!(item.offset > channel.last_offset);
            channel.last_offset = item.offset;
        }
        let frames = &*run[0].frames;
        // The bytes each format's subscribers will copy from a run of more than one message
        // (see `Outbound::reserve_copied`); a deflate subscriber's frames may differ, and gets
        // no reservation.
        let copied_total = |pick: fn(&Frames) -> &Bytes| -> usize {
            run.iter()
                .map(|m| pick(&m.frames).len())
                .filter(|&n| n <= outbound::COPY_FRAME_BYTES_MAX)
                .sum()
        };
        let (raw_total, envelope_total) = if run.len() > 1 {
            (copied_total(|f| &f.raw), copied_total(|f| &f.envelope))
        } else {
            (0, 0)
        };
        // A run of small frames is queued whole, as one frame would be (`Outbound::push_run`):
        // concatenated once per format, when the first subscriber of that format needs it.
        let mut blobs: [Option<Option<Bytes>>; 2] = [None, None];
        let mut whole_runs = 0u64;
        self.counters.delivery_runs += 1;
        self.counters.delivery_run_messages += run.len() as u64;
        let limit = self.config.limits.outbound_bytes_max;
        let now = self.now_tick;
        let stall = self.stall_ticks;
        let mut slow = std::mem::take(&mut self.slow_scratch);
        // A Pusher event's `socket_id`: that connection's place in this channel's list, when it
        // is on this shard and subscribed. The list is then walked in two parts around it, so
        // the loop itself does no extra work per subscriber.
        let excluded = frames
            .exclude
            .and_then(crate::id::ConnId::from_u64)
            .filter(|c| c.shard() == self.index);
        let skip_slot = excluded.map(|c| c.slot());
        let skip = excluded.and_then(|c| {
            let conn = self.conns.get(c.slot())?;
            let member = conn.subs.iter().find(|m| m.channel == id)?;
            (conn.generation == c.generation()).then_some(member.position as usize)
        });
        let subscribers = &self.local.get(id).subscribers;
        let (before, after) = match skip {
            Some(p)
                if subscribers
                    .get(p)
                    .is_some_and(|&s| Some(s as usize) == skip_slot) =>
            {
                (&subscribers[..p], &subscribers[p + 1..])
            }
            _ => (&subscribers[..], &subscribers[..0]),
        };
        // Two tight loops rather than one chained iterator: no check per subscriber.
        for part in [before, after] {
            for &slot in part {
                let conn = &mut self.conns[slot as usize];
                if conn.state != State::Open {
                    continue;
                }
                if conn
                    .ext
                    .as_ref()
                    .is_some_and(|e| e.recovering.contains(&id))
                {
                    // Its recovery's replay covers these offsets and comes next.
                    continue;
                }
                // The whole run while the connection's lines are in the cache: its entry, its
                // queue and the end of its buffer are touched once per run, not per message.
                if conn.endpoint.deflate_window_bits() == 0 {
                    let raw = conn.endpoint.raw();
                    let total = if raw { raw_total } else { envelope_total };
                    let blob = blobs[usize::from(!raw)].get_or_insert_with(|| run_bytes(run, raw));
                    if let Some(blob) = blob
                        && conn.out.push_run(blob, limit, &mut self.owed)
                    {
                        // Within the limit, so neither conflation nor lagging applies.
                        whole_runs += 1;
                        super::queue_flush(conn, slot, now, &mut self.dirty);
                        continue;
                    }
                    if total > 0 {
                        conn.out.reserve_copied(total, limit, &mut self.owed);
                    }
                }
                for (count, item) in counts.iter_mut().zip(run) {
                    // Lent, not cloned: a small frame is copied into the queue, a large one
                    // shared there.
                    let frame = item
                        .frames
                        .pick(conn.endpoint.raw(), conn.endpoint.deflate_window_bits());
                    // Over its limit: a conflating channel keeps the latest value instead;
                    // otherwise a reader that makes progress lags rather than being shed
                    // (`data_limit`).
                    let over = conn.out.owed_bytes() + frame.len() + FRAME_OVERHEAD > limit;
                    if over && conflate {
                        // Only the newest value matters: it waits (replacing an older one) until
                        // the queue drains; the publisher is not held back for it.
                        self.counters.conflated += 1;
                        let held = &mut conn.ext_mut().conflated;
                        match held.iter_mut().find(|(c, _)| *c == id) {
                            Some(entry) => entry.1 = frame.clone(),
                            None => held.push((id, frame.clone())),
                        }
                        continue;
                    }
                    let limit =
                        super::data_limit(conn, frame.len(), limit, now, stall, &mut self.lagging);
                    match conn.out.push_shared(frame, limit, &mut self.owed) {
                        Enqueue::Enqueued => {
                            count.0 += 1;
                            self.counters.frames_out += 1;
                            super::queue_flush(conn, slot, now, &mut self.dirty);
                        }
                        Enqueue::SlowConsumer => {
                            // Closed after the run: the rest of it is not offered.
                            count.1 += 1;
                            slow.push(slot);
                            break;
                        }
                        Enqueue::Closed => break,
                    }
                }
            }
        }
        for count in counts.iter_mut() {
            count.0 += whole_runs;
        }
        self.counters.frames_out += whole_runs * run.len() as u64;
        for slot in slow.drain(..) {
            self.slow_consumer(slot as usize);
        }
        self.slow_scratch = slow;
    }

    fn on_ack(&mut self, name: &str, position: Option<(u64, u64)>) {
        if let Some(waiters) = self.subscribe_waiters.remove(name) {
            for to in waiters {
                let part = match position {
                    Some(_) => Part::Done,
                    None => {
                        let e = ChannelError::TooManyChannels;
                        Part::Failed(
                            e.code(),
                            e.message(self.config.limits.channel_name_bytes_max),
                        )
                    }
                };
                self.send_x(to.shard as usize, XMsg::Reply { to, part });
            }
        }
        let Some(id) = self.local.find(name) else {
            return;
        };
        let waiting = std::mem::take(&mut self.local.get_mut(id).waiting);
        let name: Arc<str> = self.local.get(id).name.clone();
        match position {
            None => {
                // The owner is full: every subscriber of this channel here is refused.
                let subscribers = self.local.get(id).subscribers.clone();
                for slot in subscribers {
                    self.leave(slot as usize, id);
                }
                if self.local.find(&name).is_some() {
                    self.local.remove_channel(id);
                }
            }
            Some((offset, epoch)) => {
                let channel = self.local.get_mut(id);
                channel.sync = Sync::Active;
                channel.last_offset = offset;
                channel.epoch = epoch;
                if channel.subscribers.is_empty() {
                    // Everyone left while the acknowledgement was on its way.
                    self.local.remove_channel(id);
                    let owner = channel::owner_of(&name, self.shards);
                    self.send_x(
                        owner,
                        XMsg::Withdraw {
                            channel: name.clone(),
                            shard: self.index as u16,
                        },
                    );
                }
            }
        }
        for (slot, generation, req) in waiting {
            let slot = slot as usize;
            let Some(conn) = self
                .conns
                .get_mut(slot)
                .filter(|c| c.generation == generation)
            else {
                continue;
            };
            conn.awaiting = conn.awaiting.saturating_sub(1);
            let subscribed = self.local.find(&name).is_some_and(|l| l == id)
                && conn.subs.iter().any(|m| m.channel == id);
            match position {
                Some((offset, epoch)) if subscribed => {
                    self.subscribed_reply(slot, &name, offset, epoch, req.as_deref());
                }
                Some(_) => {} // unsubscribed by the backend meanwhile
                None => {
                    let err = ChannelError::TooManyChannels;
                    self.reply_channel_error(slot, err, req.as_deref());
                }
            }
            if self.conns[slot].awaiting == 0 {
                self.replay_deferred(slot);
            }
        }
    }

    /// The owner's answer to the control socket's `history`: position, and the kept messages as
    /// the envelopes subscribers got (`{"op":"message",...}`), oldest first.
    pub(super) fn history_json(
        &mut self,
        name: &str,
        limit: usize,
        since: Option<(u64, u64)>,
    ) -> String {
        if let Some((_, ttl_ms)) = self.history_policy(name) {
            let now = self.now_ms;
            self.owned.expire(name, now, ttl_ms);
        }
        let (offset, epoch, messages, recovered): (u64, u64, Vec<Bytes>, Option<bool>) = match since
        {
            Some((since, since_epoch)) => {
                let r = self.owned.recover(name, since, since_epoch);
                let recovered = r.replay.is_some();
                let frames = r.replay.unwrap_or_default();
                let skip = frames.len().saturating_sub(limit);
                let frames = frames
                    .into_iter()
                    .skip(skip)
                    .map(|e| e.frames.envelope.clone())
                    .collect();
                (r.position.0, r.position.1, frames, Some(recovered))
            }
            None => match self.owned.get(name) {
                Some(owned) => (
                    owned.offset,
                    owned.epoch,
                    owned
                        .history
                        .newest(limit)
                        .map(|e| e.frames.envelope.clone())
                        .collect(),
                    None,
                ),
                None => (0, 0, Vec::new(), None),
            },
        };
        self.history_body((offset, epoch), recovered, false, &messages)
    }

    /// `{"offset":..,"epoch":..,["recovered":..,]["truncated":true,]"messages":[..]}` from the
    /// envelope frames of the messages, oldest first (`truncated`: older ones were left out
    /// already).
    pub(super) fn history_body(
        &self,
        (offset, epoch): (u64, u64),
        recovered: Option<bool>,
        truncated: bool,
        messages: &[Bytes],
    ) -> String {
        let mut out = format!("{{\"offset\":{offset},\"epoch\":{epoch}");
        if let Some(recovered) = recovered {
            out.push_str(&format!(",\"recovered\":{recovered}"));
        }
        // The answer must fit the asker's queue: the newest messages that fit half of
        // `outbound_bytes_max` are shown, and `truncated` says when older ones were left out.
        let budget = self.config.limits.outbound_bytes_max / 2;
        let mut used = 0;
        let mut first = messages.len();
        while first > 0 {
            let len = crate::proto::frame::server_payload(&messages[first - 1]).len() + 1;
            if used + len > budget {
                break;
            }
            used += len;
            first -= 1;
        }
        if first > 0 || truncated {
            out.push_str(",\"truncated\":true");
        }
        out.push_str(",\"messages\":[");
        for (i, frame) in messages[first..].iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // The envelope is JSON the owner wrote itself (encode_message).
            out.push_str(&String::from_utf8_lossy(
                crate::proto::frame::server_payload(frame),
            ));
        }
        out.push_str("]}");
        out
    }

    /// The owner answered a subscribe with `since`: the reply, the replay, then live messages.
    fn on_recovered(
        &mut self,
        name: &str,
        slot: u32,
        generation: u32,
        id: Option<Box<str>>,
        position: (u64, u64),
        replay: Option<Vec<crate::channel::history::Entry>>,
    ) {
        let local = self.local.find(name);
        let Some(conn) = self.conns.live(Token { slot, generation }) else {
            return;
        };
        let slot = slot as usize;
        conn.awaiting = conn.awaiting.saturating_sub(1);
        let was_recovering = match (local, conn.ext.as_mut()) {
            (Some(l), Some(ext)) => {
                let before = ext.recovering.len();
                ext.recovering.retain(|&r| r != l);
                before != ext.recovering.len()
            }
            _ => false,
        };
        let subscribed = local.is_some_and(|l| conn.subs.iter().any(|m| m.channel == l));
        if subscribed && was_recovering {
            let endpoint = conn.endpoint;
            let recovered = replay.is_some();
            let (offset, epoch) = position;
            let text = envelope::subscribed_recovery(name, offset, epoch, recovered, id.as_deref());
            self.reply(slot, text);
            if recovered {
                self.counters.recoveries += 1;
            } else {
                self.counters.recoveries_refused += 1;
            }
            for entry in replay.into_iter().flatten() {
                let frame = entry
                    .frames
                    .pick(endpoint.raw(), endpoint.deflate_window_bits())
                    .clone();
                if self.queue_data(slot, frame) != Enqueue::Enqueued {
                    break;
                }
            }
        } else if !subscribed && was_recovering {
            // The owner was full and refused the channel meanwhile (see `on_ack`).
            self.reply_channel_error(slot, ChannelError::TooManyChannels, id.as_deref());
        }
        if self.conns.get(slot).is_some_and(|c| c.awaiting == 0) {
            self.replay_deferred(slot);
        }
    }

    /// Runs the commands a client sent while its subscription waited for the owner, in order.
    pub(super) fn replay_deferred(&mut self, slot: usize) {
        let Some(mut queue) = self.conns[slot]
            .ext
            .as_mut()
            .map(|e| std::mem::take(&mut e.deferred))
        else {
            return;
        };
        while let Some(command) = queue.pop_front() {
            if self.conns.get(slot).is_none_or(|c| c.state != State::Open) {
                return;
            }
            self.on_command(slot, &command);
            if self.conns[slot].awaiting > 0 {
                // Waiting again: the rest stays queued, in order.
                let ext = self.conns[slot].ext_mut();
                // Commands deferred meanwhile (none: replay runs before new input) go after.
                queue.append(&mut ext.deferred);
                ext.deferred = queue;
                return;
            }
        }
    }

    /// Subscribes `slot` to `name`; replies now or when the owner acknowledges.
    pub(super) fn subscribe(
        &mut self,
        slot: usize,
        name: &str,
        id: Option<&str>,
    ) -> Result<(), ChannelError> {
        self.subscribe_since(slot, name, id, None)
    }

    /// Subscribes `slot` to `name`; with `since`, the missed messages are replayed first (the
    /// owner answers in order with its deliveries, and live ones wait for that answer).
    pub(super) fn subscribe_since(
        &mut self,
        slot: usize,
        name: &str,
        id: Option<&str>,
        since: Option<envelope::Since>,
    ) -> Result<(), ChannelError> {
        channel::validate_name(name, self.config.limits.channel_name_bytes_max)?;
        self.subscribe_named(slot, name, id, since)
    }

    /// `subscribe_since` for a name already checked by its caller (a Pusher channel's internal
    /// name is outside `validate_name`'s characters on purpose).
    pub(super) fn subscribe_named(
        &mut self,
        slot: usize,
        name: &str,
        id: Option<&str>,
        since: Option<envelope::Since>,
    ) -> Result<(), ChannelError> {
        let limits = &self.config.limits;
        let (per_conn, per_shard) = (limits.channels_per_conn_max, limits.channels_per_shard_max);
        let conn = &mut self.conns[slot];
        let generation = conn.generation;
        let outcome =
            self.local
                .subscribe(slot as u32, &mut conn.subs, name, per_conn, per_shard)?;
        self.on_joined(slot, &outcome);
        if let Some(since) = since {
            let local = match outcome {
                Subscribed::NeedsOwner(l) | Subscribed::Waiting(l) | Subscribed::Ready(l) => l,
            };
            let channel_name = self.local.get(local).name.clone();
            let owner = channel::owner_of(&channel_name, self.shards);
            if let Subscribed::NeedsOwner(_) = outcome {
                self.send_x(
                    owner,
                    XMsg::Interest {
                        channel: channel_name.clone(),
                        shard: self.index as u16,
                    },
                );
            }
            let conn = &mut self.conns[slot];
            conn.awaiting = conn.awaiting.saturating_add(1);
            conn.ext_mut().recovering.push(local);
            self.send_x(
                owner,
                XMsg::Recover {
                    channel: channel_name,
                    since: (since.offset, since.epoch),
                    shard: self.index as u16,
                    slot: slot as u32,
                    generation,
                    id: id.map(Box::from),
                },
            );
            return Ok(());
        }
        match outcome {
            Subscribed::NeedsOwner(local) | Subscribed::Waiting(local) => {
                // The client's later commands wait for this answer, so replies stay in order.
                let conn = &mut self.conns[slot];
                conn.awaiting = conn.awaiting.saturating_add(1);
                let channel = self.local.get_mut(local);
                channel
                    .waiting
                    .push((slot as u32, generation, id.map(Box::from)));
                if let Subscribed::NeedsOwner(_) = outcome {
                    let name = channel.name.clone();
                    let owner = channel::owner_of(&name, self.shards);
                    self.send_x(
                        owner,
                        XMsg::Interest {
                            channel: name,
                            shard: self.index as u16,
                        },
                    );
                }
            }
            Subscribed::Ready(local) => {
                let channel = self.local.get(local);
                let (offset, epoch) = (channel.last_offset, channel.epoch);
                self.subscribed_reply(slot, name, offset, epoch, id);
            }
        }
        Ok(())
    }

    /// Unsubscribes `slot` from `name` and tells an envelope client (with the request's id).
    pub(super) fn unsubscribe(
        &mut self,
        slot: usize,
        name: &str,
        id: Option<&str>,
    ) -> Result<(), ChannelError> {
        let member = self
            .local
            .find(name)
            .filter(|&local| self.conns[slot].subs.iter().any(|m| m.channel == local));
        let local = member.ok_or(ChannelError::NotSubscribed)?;
        self.leave(slot, local);
        self.reply(slot, envelope::unsubscribed(name, id));
        Ok(())
    }

    /// Removes `slot` from local channel `id`, withdrawing interest when it was the last one.
    pub(super) fn leave(&mut self, slot: usize, id: u32) {
        let conn = &mut self.conns[slot];
        if let Some(ext) = conn.ext.as_mut() {
            ext.recovering.retain(|&r| r != id);
        }
        let Ok(done) = self.local.unsubscribe(slot as u32, &mut conn.subs, id) else {
            return;
        };
        let name = self.local.get(id).name.clone();
        self.emit_membership(slot, &name, false);
        self.presence_delta(slot, name.clone(), false);
        if let Some(ext) = self.conns[slot].ext.as_mut() {
            ext.pusher_members.retain(|m| m.channel != name);
        }
        if let Some((moved, position)) = done.moved {
            LocalChannels::moved_to(&mut self.conns[moved as usize].subs, id, position);
        }
        if done.now_empty && self.local.get(id).sync == Sync::Active {
            let name = self.local.get(id).name.clone();
            self.local.remove_channel(id);
            self.send_x(
                channel::owner_of(&name, self.shards),
                XMsg::Withdraw {
                    channel: name,
                    shard: self.index as u16,
                },
            );
        }
        // A pending, now empty channel stays until its acknowledgement arrives (see `on_ack`).
    }

    /// A subscription was added (any outcome): the owner's presence and the event stream hear
    /// of it. The interest message (if any) is sent after this one by the caller, but the owner
    /// keeps presence apart from interest, so their order does not matter.
    fn on_joined(&mut self, slot: usize, outcome: &Subscribed) {
        let local = match *outcome {
            Subscribed::NeedsOwner(l) | Subscribed::Waiting(l) | Subscribed::Ready(l) => l,
        };
        let name = self.local.get(local).name.clone();
        self.emit_membership(slot, &name, true);
        self.presence_delta(slot, name, true);
    }

    /// Unsubscribes a connection from everything (it is being freed).
    pub(super) fn leave_all(&mut self, slot: usize) {
        while let Some(m) = self.conns[slot].subs.last().copied() {
            self.leave(slot, m.channel);
        }
    }

    /// Publishes `body` on `name` (from a client or the control socket).
    pub(super) fn publish(&mut self, name: &str, body: Body) -> Result<(), ChannelError> {
        channel::validate_name(name, self.config.limits.channel_name_bytes_max)?;
        let channel: Arc<str> = Arc::from(name);
        let owner = channel::owner_of(&channel, self.shards);
        self.send_x(
            owner,
            XMsg::Publish {
                channel,
                body,
                reply: None,
                report: false,
                key: None,
            },
        );
        Ok(())
    }

    /// A subscription is in place: tell the client, in its protocol.
    fn subscribed_reply(
        &mut self,
        slot: usize,
        name: &str,
        offset: u64,
        epoch: u64,
        id: Option<&str>,
    ) {
        if let Endpoint::Pusher { .. } = self.conns[slot].endpoint {
            return self.pusher_subscribed(slot, name, offset);
        }
        self.reply(slot, envelope::subscribed(name, offset, epoch, id));
    }

    /// Queues a JSON reply for an envelope-format client (raw clients get nothing but payloads).
    pub(super) fn reply(&mut self, slot: usize, text: String) {
        if let Endpoint::Push { raw: false, .. } = self.conns[slot].endpoint {
            self.queue_data(slot, frame::encode(OpCode::Text, text.as_bytes()));
        }
    }

    pub(super) fn reply_error(
        &mut self,
        slot: usize,
        code: ErrorCode,
        message: &str,
        id: Option<&str>,
    ) {
        self.reply(slot, envelope::error(code, message, id));
    }

    /// Tells an envelope client why a channel operation was refused.
    pub(super) fn reply_channel_error(&mut self, slot: usize, e: ChannelError, id: Option<&str>) {
        if let Endpoint::Pusher { .. } = self.conns[slot].endpoint {
            return self.pusher_channel_error(slot, e);
        }
        let message = e.message(self.config.limits.channel_name_bytes_max);
        self.reply_error(slot, e.code(), &message, id);
    }

    /// Handles one text message from a `/ws` client.
    pub(super) fn on_command(&mut self, slot: usize, text: &[u8]) {
        if self.conns[slot].awaiting > 0 {
            // A subscription of this client waits for its channel's owner: keep the command (and
            // the order of replies) until the answer arrives.
            let queue = &mut self.conns[slot].ext_mut().deferred;
            if queue.len() >= DEFERRED_COMMANDS_MAX {
                self.counters.rate_limited += 1;
                let code = self.pusher_close_code(slot, crate::proto::close::RATE_LIMITED);
                return self.fail(slot, code);
            }
            queue.push_back(text.to_vec());
            return;
        }
        if let Endpoint::Pusher { app } = self.conns[slot].endpoint {
            return self.on_pusher_message(slot, app, text);
        }
        let request = match envelope::parse(text) {
            Ok(request) => request,
            Err(e) => return self.reply_error(slot, e.code, &e.message, e.id.as_deref()),
        };
        let id = request.id;
        match request.command {
            Command::Ping => self.reply(slot, envelope::pong(id)),
            Command::History(name, limit) => {
                let allowed = self
                    .config
                    .namespaces
                    .get(channel::namespace_of(&name))
                    .is_some_and(|ns| ns.client_history);
                let subscribed = self
                    .local
                    .find(&name)
                    .is_some_and(|l| self.conns[slot].subs.iter().any(|m| m.channel == l));
                if !allowed || !subscribed {
                    return self.reply_error(
                        slot,
                        ErrorCode::Forbidden,
                        "history needs a subscription, on a namespace with client_history",
                        id,
                    );
                }
                let channel_name: Arc<str> = Arc::from(name.as_ref());
                let owner = channel::owner_of(&channel_name, self.shards);
                let generation = self.conns[slot].generation;
                // Later commands wait for this answer, so replies keep their order.
                let conn = &mut self.conns[slot];
                conn.awaiting = conn.awaiting.saturating_add(1);
                self.send_x(
                    owner,
                    XMsg::ClientHistory {
                        channel: channel_name,
                        limit,
                        shard: self.index as u16,
                        slot: slot as u32,
                        generation,
                        id: id.map(Box::from),
                    },
                );
            }
            Command::Auth(token) => {
                self.on_token_command(slot, &token, super::identity::TokenVia::Auth, id)
            }
            Command::Refresh(token) => {
                self.on_token_command(slot, &token, super::identity::TokenVia::Refresh, id)
            }
            Command::Send(data) => {
                if self.emit_message(slot, data) {
                    if id.is_some() {
                        self.reply(slot, envelope::sent(id));
                    }
                } else {
                    self.counters.sends_without_consumer += 1;
                    self.reply_error(
                        slot,
                        ErrorCode::NoConsumer,
                        "no backend listens for message events (control method events)",
                        id,
                    );
                }
            }
            Command::Subscribe(name, since) => {
                if let Err(why) = self.may_access(slot, &name) {
                    self.counters.access_refusals += 1;
                    return self.reply_error(slot, ErrorCode::Forbidden, why, id);
                }
                if let Err(e) = self.subscribe_since(slot, &name, id, since) {
                    self.reply_channel_error(slot, e, id);
                }
            }
            Command::Unsubscribe(name) => {
                if let Err(e) = self.unsubscribe(slot, &name, id) {
                    self.reply_channel_error(slot, e, id);
                }
            }
            Command::Publish(name, data) => {
                let allowed = self
                    .config
                    .namespaces
                    .get(channel::namespace_of(&name))
                    .is_some_and(|ns| ns.client_publish);
                if !allowed {
                    return self.reply_error(
                        slot,
                        ErrorCode::Forbidden,
                        "client publish is not enabled for this namespace",
                        id,
                    );
                }
                if let Err(why) = self.may_access(slot, &name) {
                    self.counters.access_refusals += 1;
                    return self.reply_error(slot, ErrorCode::Forbidden, why, id);
                }
                let body = Body::Json(Bytes::copy_from_slice(data.as_bytes()));
                match self.publish(&name, body) {
                    Ok(()) => {
                        if id.is_some() {
                            self.reply(slot, envelope::published(&name, id));
                        }
                    }
                    Err(e) => self.reply_channel_error(slot, e, id),
                }
            }
        }
    }
}

/// A run's frames of one format (`raw` or the envelope) concatenated, queued to each subscriber
/// as one frame (`Outbound::push_run`); `None` for a run of one, or when a frame is not small
/// enough to be copied (it would be shared by handle, and so would the run). At most
/// `RUN_MESSAGES_MAX` × `COPY_FRAME_BYTES_MAX` bytes, one allocation per run and format.
fn run_bytes(run: &[RunItem], raw: bool) -> Option<Bytes> {
    fn pick(m: &RunItem, raw: bool) -> &Bytes {
        if raw {
            &m.frames.raw
        } else {
            &m.frames.envelope
        }
    }
    let small = |m: &RunItem| (2..=outbound::COPY_FRAME_BYTES_MAX).contains(&pick(m, raw).len());
    if run.len() < 2 || !run.iter().all(small) {
        return None;
    }
    let mut bytes = Vec::with_capacity(run.iter().map(|m| pick(m, raw).len()).sum());
    for m in run {
        bytes.extend_from_slice(pick(m, raw));
    }
    Some(Bytes::from(bytes))
}
