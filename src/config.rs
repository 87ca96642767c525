//! Configuration: where to listen, how many shards, and `Limits`, every bound of the server
//! with its unit, default and overflow behaviour. `docs/limits.md` mirrors `Limits` row by row.
//!
//! A config file is TOML: top-level keys of `Config` plus a `[limits]` table; every key is
//! optional and unknown keys are an error (a typo must not silently leave a default in place).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Every bound of the server. Names carry their unit last; each doc comment says what happens
/// on overflow and what the bound costs in memory at worst.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest HTTP upgrade request head. Overflow: HTTP 431, counted. Memory: this many bytes
    /// per connection while it is handshaking.
    pub handshake_bytes_max: usize,
    /// Time allowed from accept to a complete handshake. Overflow: the socket is closed, counted.
    pub handshake_timeout_ms: u64,
    /// Server ping interval on `/ws`; a connection with no traffic for two intervals is closed
    /// with 4004. 0 turns heartbeats off.
    pub ping_interval_ms: u64,
    /// Time allowed for the close handshake after the server sent its close frame; then the slot
    /// is freed regardless.
    pub close_timeout_ms: u64,
    /// Largest message a `/ws` client may send. Overflow: close 1009. Memory: up to this many
    /// bytes per connection while a message is being assembled.
    pub message_bytes_max: usize,
    /// Most frames in one fragmented `/ws` message. Overflow: close 1009.
    pub fragments_per_message_max: u32,
    /// Largest message on `/echo` (the conformance endpoint; Autobahn 9.* sends 16 MiB).
    pub echo_message_bytes_max: usize,
    /// Most frames in one fragmented `/echo` message (wstest 0.8.2 sends 65,537 in 9.3.1, 9.4.1).
    pub echo_fragments_per_message_max: u32,
    /// Bytes queued for one connection and not yet sent. Overflow: the connection is a slow
    /// consumer and is closed with 4001, counted. Control frames are exempt.
    pub outbound_bytes_max: usize,
    /// Open connections per shard (slab slots). Overflow: HTTP 503, counted. Memory: the slab
    /// reserves this many entries of address space up front; pages are touched only when used.
    pub conns_per_shard_max: usize,
    /// Size of one provided receive buffer. Memory: `recv_buffer_bytes * recv_buffers` per shard.
    pub recv_buffer_bytes: usize,
    /// Provided receive buffers per shard (a power of two, ≤ 32768): sized for bursts of
    /// readable sockets, not for the connection count. Overflow: the kernel ends the multishot
    /// receive with ENOBUFS; it is re-armed once buffers return, nothing is lost.
    pub recv_buffers: usize,
    /// Sends in flight per shard. Overflow: connections wait for the next loop turn. Bounds the
    /// completion queue. Memory: each slot holds `send_iovecs_max` iovecs and `Bytes` handles.
    /// The default covers a shard's audience of one busy channel (10,000 subscribers), so one
    /// publish goes out in one turn: with 4096, it took three, and p99 at 20 and 250 msg/s was
    /// 1.13–1.2× higher (docs/benchmarks.md, "the sends-in-flight cap").
    pub sends_in_flight_max: usize,
    /// Frames gathered into one vectored send.
    pub send_iovecs_max: usize,
    /// Grace period for flushing queued frames at shutdown.
    pub shutdown_timeout_ms: u64,
    /// Subscriptions one connection may hold. Overflow: error `limit_exceeded` (URL: HTTP 400).
    /// Memory: 8 bytes per subscription in the connection, 4 in the channel.
    pub channels_per_conn_max: usize,
    /// Longest channel name. Overflow: error `bad_channel`.
    pub channel_name_bytes_max: usize,
    /// Channels with local subscribers per shard, and channels owned per shard. Overflow: error
    /// `limit_exceeded`. Memory: about 100 bytes plus the name per channel, twice.
    pub channels_per_shard_max: usize,
    /// Messages each cross-shard ring holds. Memory: `shards² × capacity × 48` bytes.
    pub xshard_ring_capacity: usize,
    /// Messages a shard holds back per destination when that ring is full. Overflow: the
    /// message is dropped and counted (`xshard_refused`); with it, a subscriber of that shard
    /// would see a gap, so the subscribers of the affected channel on that shard are closed.
    pub xshard_overflow_max: usize,
    /// Longest control request line. Overflow: error `line_too_long`; the reader skips to the
    /// next newline and the connection stays open. Memory: this much per control connection
    /// holding a partial line.
    pub control_line_bytes_max: usize,
    /// Replies owed on one control connection, whether they wait for other shards or are known
    /// at once (`noreply` requests owe none). Overflow: the request gets `limit_exceeded`, the
    /// connection is closed once the owed replies are out, counted (`control_overloads`).
    pub control_pending_max: usize,
    /// Bytes owed to all connections of one shard (queued or in flight). Overflow: the
    /// connections with the largest queues are dropped as slow consumers (4001) until the shard
    /// is under 7/8 of the limit, counted (`shard_outbound_overflows`). Frames shared by many
    /// queues count once per queue, so real memory is at most this.
    pub shard_outbound_bytes_max: usize,
    /// Messages and control frames a `/ws` client may send per second (token bucket, burst of
    /// one second's worth; 0: no limit). Overflow: close 4002, counted (`rate_limited`).
    pub client_messages_per_s: u32,
    /// How long a publish's `idempotency_key` is remembered by the channel's owner: a retry
    /// within it gets the first publish's offset and is not delivered again. Memory: up to
    /// `idempotency_keys_per_shard_max` keys of ≤ 128 bytes.
    pub idempotency_window_ms: u64,
    /// Idempotency keys one shard remembers. Overflow: the oldest is forgotten first (a retry
    /// of it would then be delivered again), counted (`idempotency_evictions`).
    pub idempotency_keys_per_shard_max: usize,
    /// Bytes of history (kept messages of namespaces with `history_size`) one shard holds in
    /// all. Overflow: the channel keeping a new message drops its own oldest first; a message
    /// that alone would pass the bound is not kept, so recovery past it answers
    /// `recovered: false`.
    pub history_bytes_per_shard_max: usize,
    /// Publisher backpressure: when the bytes a shard owes its connections pass this (or a
    /// quarter of what its WebSocket connections may owe in all, but at least four connections'
    /// `outbound_bytes_max`, whichever is lower), every shard stops
    /// reading the control connections that publish, so backends' writes block instead of
    /// subscribers being shed; reading resumes when the shard is under a quarter of it. Counted
    /// (`backpressure_episodes`, `publisher_pauses`). Memory: bounds what a shard holds under
    /// load well below `shard_outbound_bytes_max`, which stays the last resort.
    pub shard_outbound_high_bytes: usize,
    /// While the shard is over its high watermark, a connection that owes bytes and has taken
    /// none for this long is closed as a slow consumer (4001): it does not read, and must not
    /// hold every publisher back. Readers that make progress are never closed for being slow
    /// while the shard is the one behind.
    pub outbound_stall_ms: u64,
    /// Bytes of partly received messages held by all connections of one shard. Overflow: the
    /// connection whose message passed it is closed with 1009, counted (`shard_inbound_overflows`).
    pub shard_inbound_bytes_max: usize,
    /// Control connections per shard, enforced over the whole process as shards × this (a
    /// listener's connections may all be accepted by one shard). Overflow: the new connection is
    /// closed at once, counted (`control_refusals`). Memory: up to `control_line_bytes_max`
    /// each for a partial line.
    pub control_conns_per_shard_max: usize,
    /// Control connections that have not sent `auth` yet (only with a token), for the whole
    /// process, enforced per shard as ceil(this / shards); they do not count against
    /// `control_conns_per_shard_max`. Overflow: the accepting shard's oldest unauthenticated
    /// connection is closed to make room, counted (`control_unauthed_evictions`), so a new
    /// connection always gets its chance to authenticate.
    pub control_unauthed_max: usize,
    /// Time a control connection has to authenticate (only with a token). Overflow: error
    /// `unauthorized`, then the connection is closed, counted (`control_auth_timeouts`).
    pub control_auth_timeout_ms: u64,
    /// Time a control connection may send nothing (0: no limit, the default, since a backend
    /// may hold one connection open for hours between pushes). Overflow: the connection is
    /// closed after its owed replies, counted (`control_idle_timeouts`).
    pub control_idle_timeout_ms: u64,
    /// WebSocket connections from one client IP address (0: no limit). Enforced per shard as
    /// `ceil(conns_per_ip_max / shards)`, since the kernel spreads one address's connections over
    /// the shards. Overflow: HTTP 429, counted. Memory: ≈50 bytes per connection when on.
    pub conns_per_ip_max: usize,
    /// Connections per shard still in their upgrade handshake (each may hold up to
    /// `handshake_bytes_max`). Overflow: HTTP 503, counted (`conn_limit_refusals`). Bounds the
    /// memory of handshake floods and slowloris crowds.
    pub handshakes_per_shard_max: usize,
    /// Connections one user may hold at once, over the whole process (tabs, devices). Overflow:
    /// the connection whose token or `bind_user` passed it is refused: a token's connection is
    /// closed with 4007, a `bind_user` gets `limit_exceeded`; counted (`user_limit_refusals`).
    /// Memory: one 8-byte id per connection at the user's owner shard.
    pub conns_per_user_max: usize,
    /// Time a connection has, after its token's `exp` passed and it was sent
    /// `{"op":"expired"}`, to send `{"op":"refresh","token":...}`. Overflow: closed with 4005,
    /// counted (`token_expiries`).
    pub token_refresh_grace_ms: u64,
    /// Bytes of events one event-stream consumer may owe (queued, unsent). Overflow: the event
    /// is dropped for that consumer and counted (`events_dropped`); the consumer gets
    /// `{"event":"gap","dropped":N}` before its next event. The engine never waits for it.
    pub event_buffer_bytes_max: usize,
    /// Time an HTTP connection may stay open without a request (keep-alive). Overflow: closed,
    /// counted (`control_idle_timeouts`). 0: no limit.
    pub http_idle_timeout_ms: u64,
    /// The window of a drain started by SIGUSR1 (control `drain` gives its own): WebSocket
    /// connections are closed with 1012 spread evenly over it, then the process exits.
    pub drain_window_ms: u64,
    /// Published messages whose frame payload is shorter than this go uncompressed to
    /// permessage-deflate clients too (RSV1 marks compression per message, RFC 7692 §6, so mixing
    /// is allowed): below a few hundred bytes DEFLATE saves little and costs a compression per
    /// message. Also a compressed version that is not smaller than the plain one is not sent.
    /// Memory: none (the owner's compressor, ≈300 KiB per shard, exists once `deflate` is on).
    pub deflate_min_bytes: usize,
    /// Members listed in a Pusher presence channel's `subscription_succeeded` and in
    /// `GET /apps/{id}/channels/{name}/users` (Pusher's own limit is 100 members). Overflow: the
    /// list stops there (the first members by id, and always the subscriber itself, where
    /// pusher-js looks for `me`) while `count` stays the true number, counted
    /// (`pusher_members_truncated`). Memory: the list is built once per subscription at the
    /// channel's owner, about 100 bytes per member listed.
    pub pusher_presence_members_max: usize,
    /// Largest Pusher event `data` (HTTP API `data`, client event `data`), in bytes (Pusher's
    /// own limit is 10 KB). Overflow: HTTP 413, or `pusher:error` 4301 for a client event,
    /// counted (`pusher_errors`). Memory: the event is encoded once per message at the owner.
    pub pusher_event_bytes_max: usize,
    /// Channels one HTTP API `POST /apps/{id}/events` may name (Pusher: 100). Overflow: HTTP 400.
    pub pusher_channels_per_event_max: usize,
    /// Events in one `POST /apps/{id}/batch_events` (Pusher: 10). Overflow: HTTP 400.
    pub pusher_batch_events_max: usize,
    /// Longest Pusher channel name, in bytes (Pusher: 164). Overflow: `pusher:error` 4009 on
    /// subscribe, HTTP 400 on the API.
    pub pusher_channel_name_bytes_max: usize,
    /// How far a signed HTTP API request's `auth_timestamp` may be from the server's clock, in
    /// seconds (Pusher: 600). Overflow: HTTP 401, counted (`pusher_api_refusals`).
    pub pusher_timestamp_skew_s: u64,
    /// Time a Pusher client has to answer the server's `pusher:ping` (sent after
    /// `activity_timeout_s` of silence) before it is closed with 4201 (pusher-js then
    /// reconnects); pusher-js's own `pongTimeout` is 30 s.
    pub pusher_pong_timeout_ms: u64,
    /// How long a Pusher cache channel keeps its last event, in seconds (Pusher: 30 minutes).
    /// Overflow: older, the event is forgotten and a new subscriber gets `pusher:cache_miss`.
    /// Memory: one event per cache channel at its owner, within `history_bytes_per_shard_max`.
    pub pusher_cache_ttl_s: u64,
    /// Client events (`client-*`) one Pusher connection may send per second, burst one second's
    /// worth (Pusher: 10). Overflow: the event is dropped with `pusher:error` 4301, the
    /// connection stays, counted (`pusher_client_events_limited`). Memory: 8 bytes in the
    /// extension of a connection that sends client events.
    pub pusher_client_events_per_s: u32,
    /// Webhook events queued towards the sender (one queue per process, `[[pusher.apps]]
    /// webhook_url`). Overflow: the event is dropped, counted (`pusher_webhook_events_dropped`).
    /// Memory: ≈150 bytes plus the event's names and data each.
    pub pusher_webhook_queue_max: usize,
    /// Events in one webhook batch (Pusher batches them too). Overflow: a new batch starts.
    /// Memory: within the queue's.
    pub pusher_webhook_batch_max: usize,
    /// How long a webhook batch collects events after its first, in ms. Overflow: it is posted.
    pub pusher_webhook_batch_ms: u64,
    /// Bound of one webhook request's connect, write and read, in ms. Overflow: the attempt
    /// fails; the batch is retried after 1, 2 and 4 s, then dropped, counted
    /// (`pusher_webhook_batches_dropped`).
    pub pusher_webhook_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_bytes_max: 8 * 1024,
            handshake_timeout_ms: 10_000,
            ping_interval_ms: 25_000,
            close_timeout_ms: 5_000,
            message_bytes_max: 64 * 1024,
            fragments_per_message_max: 1024,
            echo_message_bytes_max: 16 * 1024 * 1024,
            echo_fragments_per_message_max: 131_072,
            outbound_bytes_max: 1024 * 1024,
            conns_per_shard_max: 65_536,
            recv_buffer_bytes: 4096,
            recv_buffers: 1024,
            sends_in_flight_max: 16_384,
            send_iovecs_max: 64,
            shutdown_timeout_ms: 5_000,
            channels_per_conn_max: 64,
            channel_name_bytes_max: 128,
            channels_per_shard_max: 100_000,
            xshard_ring_capacity: 8192,
            xshard_overflow_max: 65_536,
            control_line_bytes_max: 1024 * 1024,
            control_pending_max: 65_536,
            shard_outbound_bytes_max: 512 * 1024 * 1024,
            client_messages_per_s: 200,
            shard_inbound_bytes_max: 128 * 1024 * 1024,
            shard_outbound_high_bytes: 256 * 1024 * 1024,
            history_bytes_per_shard_max: 64 * 1024 * 1024,
            idempotency_window_ms: 60_000,
            idempotency_keys_per_shard_max: 100_000,
            outbound_stall_ms: 2_000,
            control_conns_per_shard_max: 64,
            control_unauthed_max: 64,
            control_auth_timeout_ms: 5_000,
            control_idle_timeout_ms: 0,
            conns_per_ip_max: 0,
            handshakes_per_shard_max: 4096,
            conns_per_user_max: 100,
            token_refresh_grace_ms: 30_000,
            event_buffer_bytes_max: 4 * 1024 * 1024,
            http_idle_timeout_ms: 60_000,
            drain_window_ms: 30_000,
            deflate_min_bytes: 256,
            pusher_presence_members_max: 100,
            pusher_event_bytes_max: 10 * 1024,
            pusher_channels_per_event_max: 100,
            pusher_batch_events_max: 10,
            pusher_channel_name_bytes_max: 164,
            pusher_timestamp_skew_s: 600,
            pusher_pong_timeout_ms: 30_000,
            pusher_cache_ttl_s: 1800,
            pusher_client_events_per_s: 10,
            pusher_webhook_queue_max: 10_000,
            pusher_webhook_batch_max: 100,
            pusher_webhook_batch_ms: 250,
            pusher_webhook_timeout_ms: 5_000,
        }
    }
}

impl Limits {
    /// Checks relations between limits that the code relies on.
    pub fn validate(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if !self.recv_buffers.is_power_of_two() || self.recv_buffers > 32_768 {
            errors.push("recv_buffers must be a power of two no larger than 32768".to_string());
        }
        if self.recv_buffer_bytes < 256 || self.recv_buffer_bytes > 1 << 20 {
            errors.push("recv_buffer_bytes must be between 256 and 1048576".to_string());
        }
        if self.conns_per_shard_max == 0 || self.conns_per_shard_max >= 1 << crate::id::SLOT_BITS {
            errors.push(format!(
                "conns_per_shard_max must be between 1 and {}",
                (1 << crate::id::SLOT_BITS) - 1
            ));
        }
        if self.sends_in_flight_max == 0 || self.sends_in_flight_max > 1 << 16 {
            errors.push("sends_in_flight_max must be between 1 and 65536".to_string());
        }
        if self.send_iovecs_max == 0 || self.send_iovecs_max > 1024 {
            errors.push("send_iovecs_max must be between 1 and 1024 (IOV_MAX)".to_string());
        }
        if self.handshakes_per_shard_max == 0 {
            errors.push("handshakes_per_shard_max must be above 0".to_string());
        }
        if self.handshake_bytes_max < 256 {
            errors.push("handshake_bytes_max must be at least 256".to_string());
        }
        if self.handshake_timeout_ms == 0 || self.close_timeout_ms == 0 {
            errors.push("handshake_timeout_ms and close_timeout_ms must be above 0".to_string());
        }
        if self.message_bytes_max == 0 || self.echo_message_bytes_max == 0 {
            errors.push("message size limits must be above 0".to_string());
        }
        if self.outbound_bytes_max < 1024 || self.outbound_bytes_max >= 1 << 31 {
            errors.push("outbound_bytes_max must be between 1024 and 2147483647".to_string());
        }
        if self.channels_per_conn_max == 0
            || self.channel_name_bytes_max == 0
            || self.channels_per_shard_max == 0
        {
            errors.push("channel limits must be above 0".to_string());
        }
        if self.xshard_ring_capacity < 16 {
            errors.push("xshard_ring_capacity must be at least 16".to_string());
        }
        if self.control_line_bytes_max < 1024 || self.control_pending_max == 0 {
            errors.push(
                "control_line_bytes_max must be at least 1024 and control_pending_max above 0"
                    .to_string(),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Per-namespace settings (a namespace is the part of a channel name before its first `:`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Namespace {
    /// Whether connections without a user (no token, no `bind_user`) may subscribe and publish
    /// here. Server-side subscriptions (control `subscribe`) are always allowed.
    pub anonymous: bool,
    /// Which channels of this namespace a client may subscribe to by itself.
    pub subscribe: SubscribeRule,
    /// Push `{"op":"join"|"leave",...}` to the channel's subscribers on a user's first
    /// connection in a channel and after its last one leaves.
    pub join_leave: bool,
    /// Whether `/ws` clients may publish to channels of this namespace.
    pub client_publish: bool,
    /// Messages each channel keeps at its owner for recovery (0: none). Memory: the encoded
    /// frames, bounded per shard by `history_bytes_per_shard_max`.
    pub history_size: usize,
    /// Age after which kept messages are dropped, in seconds (0: no age limit).
    pub history_ttl_s: u64,
    /// What happens to a subscriber behind its queue limit on this namespace's channels.
    pub slow_consumer: SlowConsumerPolicy,
    /// Whether `/ws` clients subscribed to a channel may read its kept messages
    /// (`{"op":"history"}`).
    pub client_history: bool,
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace {
            anonymous: true,
            subscribe: SubscribeRule::Any,
            join_leave: false,
            client_publish: false,
            history_size: 0,
            history_ttl_s: 0,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            client_history: false,
        }
    }
}

/// Which channels of a namespace a `/ws` client may subscribe to (and, with `client_publish`,
/// publish to) by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscribeRule {
    /// Any channel (subject to `anonymous`).
    #[default]
    Any,
    /// Only channels listed in the connection's token (`channels` claim).
    Claim,
    /// Only `NAMESPACE:USER`, where USER is the connection's own user id (`user:42` for user 42).
    Owner,
}

/// Connection tokens (`[auth]`): the key `/ws` tokens are verified with. One of
/// `hs256_secret`, `rs256_public_key_file`, `es256_public_key_file`; none: tokens are refused.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The HS256 shared secret (at least 32 bytes).
    pub hs256_secret: Option<String>,
    /// A PEM file with the RS256 public key.
    pub rs256_public_key_file: Option<PathBuf>,
    /// A PEM file with the ES256 (P-256) public key.
    pub es256_public_key_file: Option<PathBuf>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
}

impl AuthConfig {
    /// The verifier for the configured key (reads a key file); `None` without a key. The error
    /// names the cause and the fix.
    pub fn verifier(&self) -> Result<Option<crate::auth::Verifier>, String> {
        use crate::auth::Verifier;
        let keys = [
            self.hs256_secret.is_some(),
            self.rs256_public_key_file.is_some(),
            self.es256_public_key_file.is_some(),
        ];
        if keys.iter().filter(|&&k| k).count() > 1 {
            return Err(
                "[auth] takes one key: hs256_secret, rs256_public_key_file or \
                 es256_public_key_file"
                    .to_string(),
            );
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("[auth] cannot read {}: {e}", path.display()))
        };
        let verifier = if let Some(secret) = &self.hs256_secret {
            Verifier::hs256(secret.as_bytes())
        } else if let Some(path) = &self.rs256_public_key_file {
            Verifier::rs256_pem(&read(path)?)
        } else if let Some(path) = &self.es256_public_key_file {
            Verifier::es256_pem(&read(path)?)
        } else {
            return Ok(None);
        };
        let verifier = verifier.map_err(|e| format!("[auth]: {}", e.0))?;
        Ok(Some(match &self.audience {
            Some(aud) => verifier.with_audience(aud),
            None => verifier,
        }))
    }
}

/// A namespace's answer to a subscriber that falls behind its queue limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumerPolicy {
    /// Close it with 4001 (it may recover with `since` when it reconnects).
    #[default]
    Disconnect,
    /// Keep only the latest message of each such channel for it until its queue drains
    /// (tickers, positions, progress bars): it sees the offsets jump, counted
    /// (`conflated`), and is never closed for this.
    Conflate,
}

/// A control socket address: `unix:PATH` or `tcp:ADDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAddr {
    /// A Unix stream socket at this path.
    Unix(PathBuf),
    /// A TCP address (loopback unless a token is configured).
    Tcp(SocketAddr),
}

impl ControlAddr {
    /// Parses `unix:PATH` or `tcp:HOST:PORT`.
    pub fn parse(text: &str) -> Result<ControlAddr, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path, e.g. unix:/tmp/ringcast.sock".to_string());
            }
            return Ok(ControlAddr::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = text.strip_prefix("tcp:") {
            return addr
                .parse()
                .map(ControlAddr::Tcp)
                .map_err(|e| format!("bad tcp control address {addr:?}: {e}"));
        }
        Err(format!(
            "control address {text:?} must be unix:PATH or tcp:HOST:PORT"
        ))
    }
}

impl std::fmt::Display for ControlAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ControlAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// The default control address.
pub const CONTROL_DEFAULT: &str = "unix:/tmp/ringcast.sock";

/// The control socket settings (`[control]` in the config file).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Addresses to listen on (`unix:PATH`, `tcp:ADDR`); empty: no control socket.
    pub listen: Vec<String>,
    /// When set, every control connection must send `{"method":"auth","token":...}` first;
    /// it also allows a TCP control address that is not loopback.
    pub token: Option<String>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: vec![CONTROL_DEFAULT.to_string()],
            token: None,
        }
    }
}

/// The HTTP listener (`[http]`): metrics, health checks, the HTTP API, the dashboard.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on (e.g. `127.0.0.1:9081`); none: no HTTP listener (the default).
    pub listen: Option<SocketAddr>,
    /// When set, every `POST /api/...` needs `Authorization: Bearer TOKEN`, and the listener may
    /// be on a non-loopback address.
    pub token: Option<String>,
}

/// The whole server configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// WebSocket listen address.
    pub listen: SocketAddr,
    /// Shards (threads, one io_uring each); 0 means one per available core.
    pub shards: usize,
    /// Whether `/echo` is served (conformance testing).
    pub echo: bool,
    /// Whether permessage-deflate (RFC 7692) is accepted from clients that offer it, on `/ws`
    /// and `/echo` (docs/protocol.md, "Compression"). Global, not per namespace: it is agreed
    /// in the handshake, before the connection names any channel. Each published message is
    /// compressed once by its channel's owner, never per subscriber.
    pub deflate: bool,
    /// Whether shard threads are pinned to cores (round-robin when shards exceed cores).
    pub pin: bool,
    /// Share the WebSocket port with another running server on purpose (`SO_REUSEPORT`, for a
    /// rolling restart). Off: `serve` refuses to start when the address is already served.
    pub reuse_port: bool,
    /// Origins whose pages may open WebSocket connections (`https://app.example.com`,
    /// `https://*.example.com`, `*`); empty: every origin (the start-up output says so). A
    /// request from another origin gets HTTP 403, counted (`origin_refusals`); a request with
    /// no Origin header (not a browser) is always allowed.
    pub allowed_origins: Vec<String>,
    /// Which event loop drives the shards (`auto`: io_uring when the kernel allows it, else epoll).
    pub driver: DriverKind,
    /// Settings per channel namespace.
    pub namespaces: BTreeMap<String, Namespace>,
    /// The control socket.
    pub control: ControlConfig,
    /// Connection tokens.
    pub auth: AuthConfig,
    /// The HTTP listener.
    pub http: HttpConfig,
    /// Scale-out through a broker (`[cluster]`, docs/cluster.md); off unless `redis` is set.
    pub cluster: crate::broker::config::ClusterConfig,
    /// Broker channels applications publish to, mapped onto connections, users or channels
    /// (`[[redis_input]]`, docs/cluster.md); needs `[cluster] redis`.
    pub redis_input: Vec<crate::broker::config::RedisInput>,
    /// The Pusher Channels protocol endpoint (`[[pusher.apps]]`, docs/pusher.md); off without
    /// apps.
    pub pusher: PusherConfig,
    /// Every bound.
    pub limits: Limits,
}

/// `[pusher]`: the applications Pusher clients (pusher-js, Laravel Echo) and the Pusher server
/// SDKs connect to, on `/app/{key}` and `/apps/{id}/...` (docs/pusher.md).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PusherConfig {
    /// The applications; each is isolated from the others and from `/ws`.
    pub apps: Vec<PusherApp>,
}

/// Whether clients of a Pusher app may send `client-*` events.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientEvents {
    /// Refused with `pusher:error` 4301 (Pusher's default).
    #[default]
    Off,
    /// Allowed on private and presence channels the sender subscribes to.
    Members,
}

/// One Pusher application (`[[pusher.apps]]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PusherApp {
    /// The app id of the HTTP API (`/apps/{id}/events`): `[A-Za-z0-9_-]`, 1 to 64 bytes.
    pub id: String,
    /// The public key clients connect with (`/app/{key}`) and requests are signed with.
    pub key: String,
    /// The secret that signs channel authorizations and API requests.
    pub secret: String,
    /// Origins whose pages may connect to this app (as the top-level `allowed_origins`); empty:
    /// any.
    pub allowed_origins: Vec<String>,
    /// Client events (`client-*`): `off` or `members`.
    pub client_events: ClientEvents,
    /// Open connections of this app, split evenly over the shards (ceil(max / shards) per
    /// shard, as `conns_per_ip_max`); 0: no limit. Overflow: `pusher:error` 4004 and close 4004,
    /// counted (`pusher_refusals`).
    pub max_connections: usize,
    /// The `activity_timeout` told to clients, in seconds (pusher-js pings after this much
    /// silence); the server sends `pusher:ping` after this much silence from the client and
    /// closes it with 4201 when `pusher_pong_timeout_ms` more pass. Pusher's own is 120.
    pub activity_timeout_s: u64,
    /// Where the app's webhooks are posted: `http://HOST[:PORT]/PATH` (none: no webhooks).
    pub webhook_url: Option<String>,
    /// The webhook events the app wants (default all: `channel_occupied`, `channel_vacated`,
    /// `member_added`, `member_removed`, `client_event`).
    pub webhook_events: Vec<String>,
}

impl Default for PusherApp {
    fn default() -> Self {
        PusherApp {
            id: String::new(),
            key: String::new(),
            secret: String::new(),
            allowed_origins: Vec::new(),
            client_events: ClientEvents::Off,
            max_connections: 0,
            activity_timeout_s: 120,
            webhook_url: None,
            webhook_events: crate::webhook::EVENT_NAMES
                .iter()
                .map(|e| e.to_string())
                .collect(),
        }
    }
}

impl PusherConfig {
    /// Checks the apps: ids and keys present, well-formed and unique, secrets present.
    pub fn validate(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        let mut ids = std::collections::BTreeSet::new();
        let mut keys = std::collections::BTreeSet::new();
        let token_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        for (i, app) in self.apps.iter().enumerate() {
            let at = format!("pusher.apps[{i}]");
            if !token_ok(&app.id) {
                errors.push(format!(
                    "{at}.id must be 1 to 64 characters of [A-Za-z0-9_-]"
                ));
            }
            if !token_ok(&app.key) {
                errors.push(format!(
                    "{at}.key must be 1 to 64 characters of [A-Za-z0-9_-]"
                ));
            }
            if app.secret.is_empty() {
                errors.push(format!("{at}.secret must not be empty"));
            }
            if !ids.insert(app.id.as_str()) {
                errors.push(format!("{at}.id {:?} is used by another app", app.id));
            }
            if !keys.insert(app.key.as_str()) {
                errors.push(format!("{at}.key {:?} is used by another app", app.key));
            }
            if app.activity_timeout_s == 0 || app.activity_timeout_s > 3600 {
                errors.push(format!(
                    "{at}.activity_timeout_s must be between 1 and 3600"
                ));
            }
            if let Err(e) = crate::auth::OriginPolicy::parse(&app.allowed_origins) {
                errors.push(format!("{at}.allowed_origins: {e}"));
            }
            if let Some(Err(e)) = app
                .webhook_url
                .as_deref()
                .map(crate::webhook::body::WebhookUrl::parse)
            {
                errors.push(format!("{at}.webhook_url: {e}"));
            }
            for event in &app.webhook_events {
                if !crate::webhook::EVENT_NAMES.contains(&event.as_str()) {
                    errors.push(format!(
                        "{at}.webhook_events: unknown event {event:?} (known: {})",
                        crate::webhook::EVENT_NAMES.join(", ")
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// The event loop under the engine (see docs/architecture.md, "Drivers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// io_uring when `io_uring_setup` works here, else epoll with one line naming the cause.
    #[default]
    Auto,
    /// io_uring only: refuse to start without it.
    Uring,
    /// epoll only (readiness-based; for hosts or containers that block io_uring).
    Epoll,
}

impl std::str::FromStr for DriverKind {
    type Err = String;
    fn from_str(s: &str) -> Result<DriverKind, String> {
        match s {
            "auto" => Ok(DriverKind::Auto),
            "uring" | "io_uring" => Ok(DriverKind::Uring),
            "epoll" => Ok(DriverKind::Epoll),
            other => Err(format!("unknown driver {other:?} (auto, uring or epoll)")),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9080)),
            shards: 0,
            echo: false,
            deflate: false,
            pin: true,
            reuse_port: false,
            allowed_origins: Vec::new(),
            driver: DriverKind::Auto,
            namespaces: BTreeMap::new(),
            control: ControlConfig::default(),
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            cluster: crate::broker::config::ClusterConfig::default(),
            redis_input: Vec::new(),
            pusher: PusherConfig::default(),
            limits: Limits::default(),
        }
    }
}

impl Config {
    /// Reads a TOML config file.
    pub fn from_file(path: &PathBuf) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        Config::from_toml(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.limits.validate()?;
        config.cluster.validate()?;
        crate::broker::config::validate_inputs(&config.redis_input, &config.cluster)?;
        config.pusher.validate()?;
        Ok(config)
    }
}

/// Limits a reload may change on a running server (each is read where it is used, so the new
/// value takes effect on the next connection, message or tick); the others size structures the
/// shards allocated at start and need a restart.
pub const LIVE_LIMITS: &[&str] = &[
    "client_messages_per_s",
    "conns_per_user_max",
    "token_refresh_grace_ms",
    "event_buffer_bytes_max",
    "http_idle_timeout_ms",
    "control_idle_timeout_ms",
    "drain_window_ms",
    "deflate_min_bytes",
    "idempotency_window_ms",
    "outbound_stall_ms",
    "ping_interval_ms",
];

/// The outcome of comparing a running configuration with a newly read one.
#[derive(Debug, Clone, PartialEq)]
pub struct Reload {
    /// The configuration to run with: the old one with every live-changeable part replaced.
    pub config: Config,
    /// What changed and is applied now (`allowed_origins`, `namespaces`, `auth`, `limits.X`).
    pub applied: Vec<String>,
    /// What changed but needs a restart (it is not applied).
    pub needs_restart: Vec<String>,
}

/// What a reload of `new` over `old` applies live and what needs a restart (pure: the caller
/// read and validated `new`).
pub fn reload(old: &Config, new: &Config) -> Reload {
    let mut config = old.clone();
    let mut applied = Vec::new();
    let mut needs_restart = Vec::new();
    if old.allowed_origins != new.allowed_origins {
        config.allowed_origins = new.allowed_origins.clone();
        applied.push("allowed_origins".to_string());
    }
    if old.namespaces != new.namespaces {
        config.namespaces = new.namespaces.clone();
        applied.push("namespaces".to_string());
    }
    if old.auth != new.auth {
        config.auth = new.auth.clone();
        applied.push("auth".to_string());
    }
    let restart_if = |changed: bool, name: &str, list: &mut Vec<String>| {
        if changed {
            list.push(name.to_string());
        }
    };
    restart_if(old.listen != new.listen, "listen", &mut needs_restart);
    restart_if(old.shards != new.shards, "shards", &mut needs_restart);
    restart_if(old.echo != new.echo, "echo", &mut needs_restart);
    restart_if(old.deflate != new.deflate, "deflate", &mut needs_restart);
    restart_if(old.pin != new.pin, "pin", &mut needs_restart);
    restart_if(
        old.reuse_port != new.reuse_port,
        "reuse_port",
        &mut needs_restart,
    );
    restart_if(old.driver != new.driver, "driver", &mut needs_restart);
    restart_if(old.control != new.control, "control", &mut needs_restart);
    restart_if(old.http != new.http, "http", &mut needs_restart);
    restart_if(old.cluster != new.cluster, "cluster", &mut needs_restart);
    restart_if(old.pusher != new.pusher, "pusher", &mut needs_restart);
    restart_if(
        old.redis_input != new.redis_input,
        "redis_input",
        &mut needs_restart,
    );
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (
        serde_json::to_value(&old.limits),
        serde_json::to_value(&new.limits),
    ) else {
        return Reload {
            config,
            applied,
            needs_restart,
        };
    };
    let mut live = a.clone();
    for (name, value) in &b {
        if a.get(name) == Some(value) {
            continue;
        }
        if LIVE_LIMITS.contains(&name.as_str()) {
            live.insert(name.clone(), value.clone());
            applied.push(format!("limits.{name}"));
        } else {
            needs_restart.push(format!("limits.{name}"));
        }
    }
    if let Ok(limits) = serde_json::from_value(serde_json::Value::Object(live)) {
        config.limits = limits;
    }
    Reload {
        config,
        applied,
        needs_restart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_apps_are_checked_at_load() {
        let ok = r#"
            [[pusher.apps]]
            id = "1"
            key = "k1"
            secret = "s1"
            [[pusher.apps]]
            id = "2"
            key = "k2"
            secret = "s2"
            client_events = "members"
            activity_timeout_s = 60
        "#;
        let c = Config::from_toml(ok).unwrap();
        assert_eq!(c.pusher.apps.len(), 2);
        assert_eq!(c.pusher.apps[0].activity_timeout_s, 120);
        assert_eq!(c.pusher.apps[1].client_events, ClientEvents::Members);
        let dup = ok.replace("id = \"2\"", "id = \"1\"").replace("k2", "k1");
        let e = Config::from_toml(&dup).unwrap_err();
        assert!(e.contains("id \"1\" is used by another app"), "{e}");
        assert!(e.contains("key \"k1\" is used by another app"), "{e}");
        let e = Config::from_toml(&ok.replace("secret = \"s1\"", "secret = \"\"")).unwrap_err();
        assert!(e.contains("pusher.apps[0].secret must not be empty"), "{e}");
        let e = Config::from_toml(&ok.replace("id = \"1\"", "id = \"a#b\"")).unwrap_err();
        assert!(e.contains("pusher.apps[0].id"), "{e}");
        assert!(
            Config::from_toml(
                &ok.replace("client_events = \"members\"", "client_events = \"all\"")
            )
            .is_err()
        );
        assert_eq!(reload(&Config::default(), &c).needs_restart, ["pusher"]);
    }

    #[test]
    fn example_config_parses() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/ringcast.toml");
        let c = Config::from_file(&path).unwrap();
        assert!(c.namespaces["chat"].client_publish);
    }

    #[test]
    fn control_addresses() {
        assert_eq!(
            ControlAddr::parse("unix:/tmp/x.sock"),
            Ok(ControlAddr::Unix("/tmp/x.sock".into()))
        );
        assert_eq!(
            ControlAddr::parse("tcp:127.0.0.1:7000"),
            Ok(ControlAddr::Tcp("127.0.0.1:7000".parse().unwrap()))
        );
        assert!(ControlAddr::parse("unix:").is_err());
        assert!(ControlAddr::parse("tcp:nowhere").is_err());
        assert!(ControlAddr::parse("/tmp/x.sock").is_err());
        assert_eq!(
            ControlAddr::parse(CONTROL_DEFAULT).unwrap().to_string(),
            CONTROL_DEFAULT
        );
    }

    #[test]
    fn a_reload_applies_what_can_change_live_and_names_the_rest() {
        let old = Config::default();
        let mut new = old.clone();
        new.allowed_origins = vec!["https://app.example.com".to_string()];
        new.limits.client_messages_per_s = 50;
        new.limits.outbound_bytes_max = 2 << 20;
        new.shards = 3;
        let r = reload(&old, &new);
        assert_eq!(
            r.applied,
            ["allowed_origins", "limits.client_messages_per_s"]
        );
        assert_eq!(r.needs_restart, ["shards", "limits.outbound_bytes_max"]);
        assert_eq!(r.config.allowed_origins, new.allowed_origins);
        assert_eq!(r.config.limits.client_messages_per_s, 50);
        assert_eq!(
            r.config.limits.outbound_bytes_max,
            old.limits.outbound_bytes_max
        );
        assert_eq!(r.config.shards, old.shards, "not applied");
        assert!(reload(&old, &old).applied.is_empty());
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Limits::default().validate(), Ok(()));
    }

    #[test]
    fn toml_overrides_and_rejects_typos() {
        let c = Config::from_toml(
            "shards = 2\necho = true\n[limits]\nmessage_bytes_max = 1000\n[namespaces.chat]\nclient_publish = true\n",
        )
        .unwrap();
        assert_eq!(c.shards, 2);
        assert!(c.echo);
        assert_eq!(c.limits.message_bytes_max, 1000);
        assert_eq!(
            c.limits.outbound_bytes_max,
            Limits::default().outbound_bytes_max
        );
        assert!(c.namespaces["chat"].client_publish);
        assert!(Config::from_toml("[limits]\nmesage_bytes_max = 1\n").is_err());
        let c =
            Config::from_toml("[cluster]\nredis = \"redis://10.0.0.5:6380/2\"\nprefix = \"rc\"\n")
                .unwrap();
        assert!(c.cluster.enabled());
        assert_eq!(c.cluster.prefix, "rc");
        assert!(!Config::default().cluster.enabled(), "off by default");
        let typo = Config::from_toml("[cluster]\nredis_url = \"redis://h\"\n").unwrap_err();
        assert!(typo.contains("redis_url"), "{typo}");
        let bad =
            Config::from_toml("[cluster]\nredis = \"redis://h\"\ntimeout_ms = 1\n").unwrap_err();
        assert!(bad.contains("cluster.timeout_ms"), "{bad}");
        assert!(Config::from_toml("[limits]\nrecv_buffers = 1000\n").is_err());
    }

    /// The original Autobahn runner, wstest 0.8.2, sends cases 9.3.1 and 9.4.1 as 4 MiB in
    /// 64-byte fragments and then an empty final one: 65,537 frames. `/echo` must echo them.
    #[test]
    fn echo_defaults_take_the_autobahn_fragment_count() {
        use crate::proto::decoder::{Decoder, DecoderLimits, Message};
        use crate::proto::frame::{OpCode, encode_client};
        use std::ops::ControlFlow;
        let limits = Limits::default();
        let echo = DecoderLimits {
            message_bytes_max: limits.echo_message_bytes_max,
            fragments_max: limits.echo_fragments_per_message_max,
            deflate: false,
        };
        let mask = [1, 2, 3, 4];
        let fragment = [b'*'; 64];
        let mut stream = encode_client(OpCode::Binary, false, &fragment, mask);
        for _ in 1..(4 << 20) / fragment.len() {
            stream.extend(encode_client(OpCode::Continuation, false, &fragment, mask));
        }
        stream.extend(encode_client(OpCode::Continuation, true, &[], mask));
        let mut echoed = None;
        Decoder::default()
            .feed(&mut stream, &echo, &mut |message| {
                if let Message::Binary(bytes) = message {
                    echoed = Some(bytes.len());
                }
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(echoed, Some(4 << 20));
    }
}
