//! Counters: plain per-shard integers, published as a snapshot a few times a second so that
//! `stats` requests and tests can read them without touching the shard's hot path.

use serde::Serialize;
use std::sync::Mutex;

/// Buckets of a [`Histogram`]: bucket `i` counts values at most `2^i` units; the last one counts
/// the rest (+Inf).
pub const HISTOGRAM_BUCKETS: usize = 26;

/// A power-of-two histogram kept as plain integers (one increment per observation).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Histogram {
    /// Observations per bucket (not cumulative).
    pub buckets: [u64; HISTOGRAM_BUCKETS],
    /// Sum of the observed values.
    pub sum: u64,
    /// Observations.
    pub count: u64,
}

impl Histogram {
    /// Counts one value.
    pub fn observe(&mut self, value: u64) {
        let bucket = if value <= 1 {
            0
        } else {
            (64 - (value - 1).leading_zeros()) as usize
        };
        self.buckets[bucket.min(HISTOGRAM_BUCKETS - 1)] += 1;
        self.sum = self.sum.saturating_add(value);
        self.count += 1;
    }

    /// Adds another histogram.
    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.sum = self.sum.saturating_add(other.sum);
        self.count += other.count;
    }
}

/// One shard's counters (or their sum over shards).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// TCP connections accepted.
    pub accepted: u64,
    /// Connections open now (handshaking, open or closing).
    pub open: u64,
    /// Gauge: bytes owed to this shard's connections (queued or in flight), at the snapshot.
    pub queued_bytes: u64,
    /// Gauge: users this shard holds as their owner (each with at least one connection).
    pub users_online: u64,
    /// Gauge: bytes of history kept by the channels this shard owns.
    pub history_bytes: u64,
    /// Gauge: control and HTTP connections open now (included in `open`).
    pub control_open: u64,
    /// Gauge: 1 while the broker bridge is connected (`[cluster]`; summed: the shards that see
    /// it up), else 0.
    pub cluster_up: u64,
    /// Upgrade handshakes completed.
    pub handshakes: u64,
    /// Handshakes refused, by HTTP status, e.g. `[(400, 3), (404, 1)]`.
    pub rejected_by_status: Vec<(u16, u64)>,
    /// Connections closed at the handshake deadline.
    pub handshake_timeouts: u64,
    /// Connections freed, by the close code that ended them (1006: no close handshake).
    pub closed_by_code: Vec<(u16, u64)>,
    /// Control requests (socket and HTTP API) by method: (index in `control::METHODS`, count).
    pub requests_by_method: Vec<(u16, u64)>,
    /// Control error replies by code: (index in `wire::ErrorCode::ALL`, count).
    pub errors_by_code: Vec<(u16, u64)>,
    /// Frames received.
    pub frames_in: u64,
    /// Frames queued for sending.
    pub frames_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Vectored sends completed.
    pub sends: u64,
    /// Completions for a connection that was already gone (recognised by generation, dropped).
    pub stale_completions: u64,
    /// Connections closed because their outbound queue passed its byte limit.
    pub slow_consumers: u64,
    /// Multishot receives re-armed after the kernel ended them (ENOBUFS or a full CQ).
    pub recv_rearms: u64,
    /// Turns of the shard's event loop. With `sends`, `frames_out` and `control_requests`, the
    /// per-turn averages of sends, frames queued and requests read.
    pub loop_turns: u64,
    /// Microseconds the loop spent in the call that submits and waits (`io_uring_enter`,
    /// `epoll_wait`), sleeping included: what is left of wall time is the loop's own work.
    pub loop_wait_us: u64,
    /// Runs of one channel's messages delivered together, each subscriber visited once per run
    /// (`engine::pubsub`, `deliver_run`): `delivery_run_messages / delivery_runs` is the
    /// messages per visit.
    pub delivery_runs: u64,
    /// Messages delivered in those runs (each counted once, not per subscriber).
    pub delivery_run_messages: u64,
    /// Connections refused at the per-shard connection limit (also in `rejected_by_status` 503).
    pub conn_limit_refusals: u64,
    /// Publishes sequenced by this shard as a channel owner.
    pub published: u64,
    /// Publishes to channels nobody subscribes to (dropped; nothing to deliver).
    pub published_no_audience: u64,
    /// Cross-shard messages that waited in the overflow queue because a ring was full.
    pub xshard_overflows: u64,
    /// Cross-shard messages dropped because the overflow queue was full too.
    pub xshard_refused: u64,
    /// Control connections accepted.
    pub control_conns: u64,
    /// Control request lines read.
    pub control_requests: u64,
    /// Control requests answered with an error.
    pub control_errors: u64,
    /// Control connections closed for having `control_pending_max` replies pending.
    pub control_overloads: u64,
    /// Connections closed with 4002 for sending faster than `client_messages_per_s`.
    pub rate_limited: u64,
    /// Connections dropped because the shard's total outbound bytes passed its limit.
    pub shard_outbound_overflows: u64,
    /// Connections closed with 1009 because the shard's partly received messages passed their limit.
    pub shard_inbound_overflows: u64,
    /// Control connections refused at `control_conns_per_shard_max`.
    pub control_refusals: u64,
    /// Control connections closed at once because their first bytes were not a JSON object
    /// (an HTTP request from a web page, TLS, another protocol); nothing they sent ran.
    pub control_foreign: u64,
    /// Unauthenticated control connections closed to make room at `control_unauthed_max`.
    pub control_unauthed_evictions: u64,
    /// Control connections closed for not authenticating within `control_auth_timeout_ms`.
    pub control_auth_timeouts: u64,
    /// Control connections closed after `control_idle_timeout_ms` without input.
    pub control_idle_timeouts: u64,
    /// Times this shard passed its high watermark (publishers were paused everywhere).
    pub backpressure_episodes: u64,
    /// Control connections this shard stopped reading because some shard was over its
    /// watermark.
    pub publisher_pauses: u64,
    /// Reads of a paused control connection handled anyway because more than 1 MiB was held.
    pub publisher_pause_overruns: u64,
    /// Connections closed as slow consumers because they took no bytes for `outbound_stall_ms`
    /// while their shard was over its watermark.
    pub stalled_consumers: u64,
    /// Messages not kept in history because they alone would pass `history_bytes_per_shard_max`.
    pub history_refused: u64,
    /// Subscribes with `since` answered with the missed messages.
    pub recoveries: u64,
    /// Subscribes with `since` answered `recovered: false` (window passed or epoch changed).
    pub recoveries_refused: u64,
    /// Messages held back as the latest of their channel for a subscriber behind its limit on
    /// a conflating namespace (an earlier held one was replaced, or it waits for the queue).
    pub conflated: u64,
    /// Publishes not delivered again: a retry with an idempotency key seen within the window.
    pub publish_retries: u64,
    /// Idempotency keys forgotten early at `idempotency_keys_per_shard_max`.
    pub idempotency_evictions: u64,
    /// Handshakes refused with 403 because their Origin is not allowed.
    pub origin_refusals: u64,
    /// Pusher connections opened on /app/{key} (connection_established sent).
    pub pusher_conns: u64,
    /// Pusher connections refused after the upgrade (unknown key, old protocol, origin, max_connections).
    pub pusher_refusals: u64,
    /// pusher:error replies for bad client input (not JSON, unknown event, bad channel, limits).
    pub pusher_errors: u64,
    /// Pusher subscriptions refused for their authorization (4009).
    pub pusher_auth_failures: u64,
    /// Pusher connections closed silent past activity_timeout_s + pusher_pong_timeout_ms (4201).
    pub pusher_timeouts: u64,
    /// Pusher client events relayed.
    pub pusher_client_events: u64,
    /// Pusher client events dropped over pusher_client_events_per_s (4301).
    pub pusher_client_events_limited: u64,
    /// Pusher HTTP API requests whose signature verified.
    pub pusher_api_requests: u64,
    /// Pusher HTTP API requests refused (401 signature, 403 app, 400, 413).
    pub pusher_api_refusals: u64,
    /// Pusher member lists cut at pusher_presence_members_max.
    pub pusher_members_truncated: u64,
    /// Pongs that replaced a pong still queued for a client whose queue backs up (only the
    /// latest ping is answered, RFC 6455 §5.5.3).
    pub pongs_conflated: u64,
    /// Pongs not queued because the client's outbound queue was full (it pings without reading;
    /// RFC 6455 §5.5.3 allows answering only the latest ping).
    pub pongs_skipped: u64,
    /// Cross-shard messages dropped because the destination's ring and overflow queue were
    /// full, by kind: publishes refused at the publisher's shard (a control request waiting for
    /// the offset gets `overloaded`).
    pub xshard_refused_publishes: u64,
    /// ... deliveries refused at the channel's owner (that shard's subscribers see an offset gap).
    pub xshard_refused_deliveries: u64,
    /// Tokens refused (URL: 401; `auth`/`refresh`: an error, then 4006 for `auth`).
    pub token_refusals: u64,
    /// Connections closed with 4005: their token expired and no refresh came in the grace.
    pub token_expiries: u64,
    /// Binds refused at `conns_per_user_max`.
    pub user_limit_refusals: u64,
    /// Subscribes and publishes refused by a namespace's `anonymous`/`subscribe` rules.
    pub access_refusals: u64,
    /// Join/leave news pushed by channel owners.
    pub presence_news: u64,
    /// Join/leave news a full cross-shard queue refused.
    pub presence_news_refused: u64,
    /// Control connections that became event-stream consumers.
    pub event_consumers: u64,
    /// Events routed to a consumer.
    pub events_sent: u64,
    /// Events queued to a consumer's connection.
    pub events_delivered: u64,
    /// Events dropped: the consumer was behind `event_buffer_bytes_max`, or a ring refused them.
    pub events_dropped: u64,
    /// Client `send`s answered `no_consumer`.
    pub sends_without_consumer: u64,
    /// HTTP connections accepted.
    pub http_conns: u64,
    /// HTTP requests parsed.
    pub http_requests: u64,
    /// HTTP requests refused as malformed or too large (400, 411, 413, 431, 505).
    pub http_errors: u64,
    /// Drains begun (control drain, SIGUSR1).
    pub drains: u64,
    /// WebSocket connections closed with 1012 by a drain.
    pub drained: u64,
    /// Reloaded configurations this shard took.
    pub config_reloads: u64,
    /// Latency of a sample of publishes (one in 64, at their owner): from the owner taking the
    /// publish to its frame being queued on a subscriber's shard (whose loop sends it in the same
    /// turn), in µs.
    pub delivery_latency_us: Histogram,
    /// Bytes a connection owed when its next batch was handed to the kernel, in units of 64
    /// bytes (bucket i: at most 64·2^i bytes).
    pub send_queue_64b: Histogram,
    /// Frames compressed (permessage-deflate) by this shard as a channel owner: at most two
    /// per published message (envelope and raw), however many subscribers get them.
    pub frames_compressed: u64,
    /// Payload bytes the compressed frames are smaller than the plain ones, once per frame
    /// (not multiplied by the subscribers that get it).
    pub deflate_bytes_saved: u64,
    /// Compressed client messages inflated.
    pub messages_inflated: u64,
    /// Compressed client messages refused for inflating past the message limit (close 1009).
    pub inflate_too_big: u64,
    /// Times the broker came back after being lost (`[cluster]`; counted by shard 0).
    pub cluster_reconnects: u64,
    /// Publishes answered `cluster_unavailable` (or `limit_exceeded` for a payload too large for
    /// the bridge): the broker was down, its queue full, or it refused or lost the publish.
    pub cluster_publish_errors: u64,
    /// Publishes delivered to this node's subscribers only, with a node-local epoch, because
    /// the broker was down (answered with `local_only`).
    pub cluster_publish_local: u64,
    /// Channel messages received from the broker at their owner shard (then fanned out).
    pub cluster_messages_in: u64,
    /// Publishes the broker sequenced for this shard's requests.
    pub cluster_messages_out: u64,
    /// Broker messages dropped at their owner for a payload that does not decode (kind byte,
    /// UTF-8, JSON).
    pub cluster_malformed: u64,
    /// Broker events dropped because this shard's ring from the bridge was full.
    pub cluster_events_dropped: u64,
    /// Broker requests failed here because no answer came in time (it was dropped at a full
    /// event ring): publishes answered `cluster_unavailable`, reads as if the broker was lost.
    pub cluster_requests_expired: u64,
    /// Channels whose broker epoch changed while this node had subscribers (the broker lost them).
    pub cluster_epochs_bumped: u64,
    /// `send_user` and `disconnect_user` requests sent through the broker to every node holding
    /// the user (at the user's owner shard).
    pub cluster_user_sends: u64,
    /// User sends received from the broker (any node's, this one's included) and acted on at the
    /// user's owner shard.
    pub cluster_user_messages_in: u64,
    /// `send_user` and `disconnect_user` requests acted on this node only, because the broker
    /// was down (the reply says `local_only`).
    pub cluster_user_local_only: u64,
    /// The bridge's own counters (`[cluster]`; one bridge per node, copied by shard 0, so the
    /// other shards hold 0). Messages received from Redis: channel, user and pattern messages.
    pub bridge_messages_in: u64,
    /// Publishes and user sends Redis accepted from the bridge.
    pub bridge_messages_out: u64,
    /// Messages from Redis the bridge could not decode.
    pub bridge_malformed_in: u64,
    /// Commands refused because the bridge's queue was full (`queue_capacity`).
    pub bridge_queue_overflows: u64,
    /// Subscriptions refused because the bridge's set was full (`channels_max`).
    pub bridge_subscribe_refusals: u64,
    /// Connects that found another live node holding this node's `node_id`.
    pub bridge_node_id_conflicts: u64,
    /// Gaps in a live channel (messages published while this node was cut off) read from the
    /// broker's history to deliver them.
    pub cluster_catch_ups: u64,
    /// Of those, gaps the broker no longer held (trimmed, expired, or lost with Redis): seen
    /// by the subscribers as an offset gap.
    pub cluster_catch_ups_failed: u64,
    /// Requests for another node's connection sent through the broker.
    pub cluster_conn_forwards: u64,
    /// Requests for this node's connections received from other nodes and acted on.
    pub cluster_conn_forwards_in: u64,
    /// Webhook batches posted and answered 2xx (copied by shard 0 from the sender).
    pub pusher_webhook_batches_sent: u64,
    /// Webhook events in those batches.
    pub pusher_webhook_events_sent: u64,
    /// Webhook posts that failed (connection, timeout, no 2xx), retried or not.
    pub pusher_webhook_attempts_failed: u64,
    /// Webhook batches given up after their last retry, or pushed out of a full wait list.
    pub pusher_webhook_batches_dropped: u64,
    /// Webhook events dropped because the sender's queue was full.
    pub pusher_webhook_events_dropped: u64,
    /// `[[redis_input]]` messages acted on (sent to a connection, a user or a channel).
    pub redis_input_messages: u64,
    /// `[[redis_input]]` messages ignored: unknown pattern, bad or too long suffix, payload too
    /// large, bad channel.
    pub redis_input_refused: u64,
}

fn bump(list: &mut Vec<(u16, u64)>, key: u16, by: u64) {
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += by,
        None => {
            list.push((key, by));
            list.sort_unstable();
        }
    }
}

impl Counters {
    /// Counts a control request of the method at `index` in `control::METHODS`.
    pub fn request(&mut self, index: u16) {
        bump(&mut self.requests_by_method, index, 1);
    }

    /// Counts a control error reply with the code at `index` in `ErrorCode::ALL`.
    pub fn error_reply(&mut self, index: u16) {
        bump(&mut self.errors_by_code, index, 1);
    }

    /// Counts a refused handshake.
    pub fn rejected(&mut self, status: u16) {
        bump(&mut self.rejected_by_status, status, 1);
    }

    /// Counts a freed connection by close code.
    pub fn closed(&mut self, code: u16) {
        bump(&mut self.closed_by_code, code, 1);
    }

    /// How many connections ended with `code`.
    pub fn closed_with(&self, code: u16) -> u64 {
        self.closed_by_code
            .iter()
            .find(|(k, _)| *k == code)
            .map_or(0, |(_, n)| *n)
    }

    /// How many handshakes were refused with `status`.
    pub fn rejected_with(&self, status: u16) -> u64 {
        self.rejected_by_status
            .iter()
            .find(|(k, _)| *k == status)
            .map_or(0, |(_, n)| *n)
    }

    /// Adds another shard's counters.
    pub fn add(&mut self, other: &Counters) {
        self.accepted += other.accepted;
        self.open += other.open;
        self.queued_bytes += other.queued_bytes;
        self.users_online += other.users_online;
        self.history_bytes += other.history_bytes;
        self.control_open += other.control_open;
        self.cluster_up += other.cluster_up;
        self.handshakes += other.handshakes;
        for &(k, n) in &other.rejected_by_status {
            bump(&mut self.rejected_by_status, k, n);
        }
        self.handshake_timeouts += other.handshake_timeouts;
        for &(k, n) in &other.requests_by_method {
            bump(&mut self.requests_by_method, k, n);
        }
        for &(k, n) in &other.errors_by_code {
            bump(&mut self.errors_by_code, k, n);
        }
        for &(k, n) in &other.closed_by_code {
            bump(&mut self.closed_by_code, k, n);
        }
        self.frames_in += other.frames_in;
        self.frames_out += other.frames_out;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.sends += other.sends;
        self.stale_completions += other.stale_completions;
        self.slow_consumers += other.slow_consumers;
        self.recv_rearms += other.recv_rearms;
        self.loop_turns += other.loop_turns;
        self.loop_wait_us += other.loop_wait_us;
        self.delivery_runs += other.delivery_runs;
        self.delivery_run_messages += other.delivery_run_messages;
        self.conn_limit_refusals += other.conn_limit_refusals;
        self.published += other.published;
        self.published_no_audience += other.published_no_audience;
        self.xshard_overflows += other.xshard_overflows;
        self.xshard_refused += other.xshard_refused;
        self.control_conns += other.control_conns;
        self.control_requests += other.control_requests;
        self.control_errors += other.control_errors;
        self.control_overloads += other.control_overloads;
        self.rate_limited += other.rate_limited;
        self.shard_outbound_overflows += other.shard_outbound_overflows;
        self.shard_inbound_overflows += other.shard_inbound_overflows;
        self.control_refusals += other.control_refusals;
        self.pongs_skipped += other.pongs_skipped;
        self.origin_refusals += other.origin_refusals;
        self.pusher_conns += other.pusher_conns;
        self.pusher_refusals += other.pusher_refusals;
        self.pusher_errors += other.pusher_errors;
        self.pusher_auth_failures += other.pusher_auth_failures;
        self.pusher_timeouts += other.pusher_timeouts;
        self.pusher_client_events += other.pusher_client_events;
        self.pusher_client_events_limited += other.pusher_client_events_limited;
        self.pusher_api_requests += other.pusher_api_requests;
        self.pusher_api_refusals += other.pusher_api_refusals;
        self.pusher_members_truncated += other.pusher_members_truncated;
        self.publish_retries += other.publish_retries;
        self.idempotency_evictions += other.idempotency_evictions;
        self.conflated += other.conflated;
        self.history_refused += other.history_refused;
        self.recoveries += other.recoveries;
        self.recoveries_refused += other.recoveries_refused;
        self.backpressure_episodes += other.backpressure_episodes;
        self.publisher_pauses += other.publisher_pauses;
        self.stalled_consumers += other.stalled_consumers;
        self.publisher_pause_overruns += other.publisher_pause_overruns;
        self.pongs_conflated += other.pongs_conflated;
        self.control_foreign += other.control_foreign;
        self.control_unauthed_evictions += other.control_unauthed_evictions;
        self.control_auth_timeouts += other.control_auth_timeouts;
        self.control_idle_timeouts += other.control_idle_timeouts;
        self.xshard_refused_publishes += other.xshard_refused_publishes;
        self.xshard_refused_deliveries += other.xshard_refused_deliveries;
        self.token_refusals += other.token_refusals;
        self.token_expiries += other.token_expiries;
        self.user_limit_refusals += other.user_limit_refusals;
        self.access_refusals += other.access_refusals;
        self.presence_news += other.presence_news;
        self.presence_news_refused += other.presence_news_refused;
        self.event_consumers += other.event_consumers;
        self.events_sent += other.events_sent;
        self.events_delivered += other.events_delivered;
        self.events_dropped += other.events_dropped;
        self.sends_without_consumer += other.sends_without_consumer;
        self.http_conns += other.http_conns;
        self.http_requests += other.http_requests;
        self.http_errors += other.http_errors;
        self.drains += other.drains;
        self.drained += other.drained;
        self.frames_compressed += other.frames_compressed;
        self.deflate_bytes_saved += other.deflate_bytes_saved;
        self.messages_inflated += other.messages_inflated;
        self.inflate_too_big += other.inflate_too_big;
        self.cluster_reconnects += other.cluster_reconnects;
        self.cluster_publish_errors += other.cluster_publish_errors;
        self.cluster_publish_local += other.cluster_publish_local;
        self.cluster_messages_in += other.cluster_messages_in;
        self.cluster_messages_out += other.cluster_messages_out;
        self.cluster_malformed += other.cluster_malformed;
        self.cluster_events_dropped += other.cluster_events_dropped;
        self.cluster_requests_expired += other.cluster_requests_expired;
        self.cluster_epochs_bumped += other.cluster_epochs_bumped;
        self.cluster_user_sends += other.cluster_user_sends;
        self.cluster_user_messages_in += other.cluster_user_messages_in;
        self.cluster_user_local_only += other.cluster_user_local_only;
        self.bridge_messages_in += other.bridge_messages_in;
        self.bridge_messages_out += other.bridge_messages_out;
        self.bridge_malformed_in += other.bridge_malformed_in;
        self.bridge_queue_overflows += other.bridge_queue_overflows;
        self.bridge_subscribe_refusals += other.bridge_subscribe_refusals;
        self.bridge_node_id_conflicts += other.bridge_node_id_conflicts;
        self.cluster_conn_forwards += other.cluster_conn_forwards;
        self.cluster_catch_ups += other.cluster_catch_ups;
        self.cluster_catch_ups_failed += other.cluster_catch_ups_failed;
        self.cluster_conn_forwards_in += other.cluster_conn_forwards_in;
        self.pusher_webhook_batches_sent += other.pusher_webhook_batches_sent;
        self.pusher_webhook_events_sent += other.pusher_webhook_events_sent;
        self.pusher_webhook_attempts_failed += other.pusher_webhook_attempts_failed;
        self.pusher_webhook_batches_dropped += other.pusher_webhook_batches_dropped;
        self.pusher_webhook_events_dropped += other.pusher_webhook_events_dropped;
        self.redis_input_messages += other.redis_input_messages;
        self.redis_input_refused += other.redis_input_refused;
        self.config_reloads += other.config_reloads;
        self.delivery_latency_us.add(&other.delivery_latency_us);
        self.send_queue_64b.add(&other.send_queue_64b);
    }
}

/// A shard's published snapshot. The shard only ever `try_lock`s it, so a slow reader can delay
/// a snapshot but never the shard.
#[derive(Debug, Default)]
pub struct Published {
    snapshot: Mutex<Counters>,
}

impl Published {
    /// Called by the shard: replaces the snapshot unless a reader holds it right now.
    pub fn publish(&self, counters: &Counters) {
        if let Ok(mut snap) = self.snapshot.try_lock() {
            snap.clone_from(counters);
        }
    }

    /// Called by readers.
    pub fn read(&self) -> Counters {
        match self.snapshot.lock() {
            Ok(snap) => snap.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_merges_keyed_counts() {
        let mut a = Counters::default();
        a.closed(1000);
        a.rejected(404);
        let mut b = Counters::default();
        b.closed(1000);
        b.closed(1002);
        b.open = 2;
        a.add(&b);
        assert_eq!(a.closed_with(1000), 2);
        assert_eq!(a.closed_with(1002), 1);
        assert_eq!(a.rejected_with(404), 1);
        assert_eq!(a.open, 2);
    }

    #[test]
    fn histogram_buckets_are_powers_of_two() {
        let mut h = Histogram::default();
        for v in [0, 1, 2, 3, 4, 5, 1 << 30] {
            h.observe(v);
        }
        assert_eq!(&h.buckets[..4], &[2, 1, 2, 1], "≤1, ≤2, ≤4, ≤8");
        assert_eq!(h.buckets[HISTOGRAM_BUCKETS - 1], 1, "past 2^24 is +Inf");
        assert_eq!(h.count, 7);
    }
}
