//! ringcast: a WebSocket push engine for Linux.
//!
//! Data flow: clients connect to one of the shards' `SO_REUSEPORT` listeners; the shard (one
//! thread: an engine under a driver) accepts, runs the handshake and the frame codec, and owns
//! the connection for its whole life. A publish goes to the channel's owner shard, which
//! assigns the offset and encodes the frame once into `Bytes`; the same handle is queued to
//! every recipient on every shard, and each connection's queue leaves in one vectored send per
//! loop turn.
//!
//! Module map (each owns one thing):
//! - [`engine`]: the ring-free connection logic of a shard — connection table, lifecycle,
//!   outbound queues, channels, control connections, timers; its driver contract in
//!   [`engine::io`];
//! - [`driver`]: the event loops under the engine — io_uring, epoll, and an in-memory one for
//!   tests — and the sockets; the only code that talks to the kernel (with `xshard`'s doorbell);
//! - [`proto`]: sans-IO WebSocket: handshake, permessage-deflate, frame codec, masking, UTF-8,
//!   close codes;
//! - [`http`]: sans-IO HTTP/1.1 for the API listener: keep-alive requests, responses, queries;
//! - [`wire`]: what clients read: the `/ws` envelope and commands, payloads encoded once in both
//!   formats, the Pusher Channels protocol of `/app/{key}`, the stable error codes;
//! - [`control`]: the sans-IO control protocol: line splitting, request parsing, reply lines;
//! - [`auth`]: who may connect, sans-IO: JWT connection tokens (time is an argument), the
//!   `Origin` allowlist, Pusher's channel authorizations and signed API requests;
//! - [`channel`]: pub/sub state as plain data: local subscriber index, the owner's sequence;
//! - [`xshard`]: bounded SPSC rings between shards, the overflow queue, the eventfd doorbell;
//! - [`broker`]: the seam to a broker shared by several nodes (commands, events, the bounded
//!   queue, the routing of events to shards) and the Redis bridge on its own thread, started
//!   by the server with `[cluster]`; the engine's side is `engine::cluster`;
//! - [`timer`]: the timing wheel (pure data);
//! - [`webhook`]: Pusher webhooks: the events, the bounded queue from the shards, the signed
//!   batches, and the sender on its own thread;
//! - [`config`]: `Config` and `Limits`, every bound of the server;
//! - [`budget`]: a shard's worst-case memory, term by term, from `Limits`;
//! - [`id`]: connection ids;
//! - [`stats`]: counters and their published snapshots;
//! - [`metrics`]: the counters in the Prometheus text format, rendered at scrape time;
//! - [`server`]: listeners, driver choice, shard threads, readiness, shutdown;
//! - [`ctl`]: `ringcast ctl`, the control socket's command-line client.

pub mod auth;
pub mod broker;
pub mod budget;
pub mod channel;
pub mod config;
pub mod control;
pub mod ctl;
pub mod driver;
pub mod engine;
pub mod http;
pub mod id;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod stats;
pub mod timer;
pub mod webhook;
pub mod wire;
pub mod xshard;
