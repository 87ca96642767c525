//! ringcast: a WebSocket push engine for Linux.
//!
//! Data flow: clients connect to one of the shards' `SO_REUSEPORT` listeners; the shard (one
//! thread, one io_uring) accepts, runs the handshake and the frame codec, and owns the
//! connection for its whole life. Server frames are encoded once into `Bytes` and the same
//! handle is queued to every recipient.
//!
//! Module map (each owns one thing):
//! - [`proto`]: sans-IO WebSocket handshake, frame codec, masking, UTF-8, close codes;
//! - [`shard`]: the only io_uring user: ring set-up, listener, buffer ring, connection
//!   lifecycle, outbound queues, timers;
//! - [`timer`]: the timing wheel (pure data);
//! - [`config`]: `Config` and `Limits`, every bound of the server;
//! - [`id`]: connection ids;
//! - [`stats`]: counters and their published snapshots;
//! - [`server`]: listeners, shard threads, readiness, shutdown.

pub mod budget;
pub mod channel;
pub mod config;
pub mod control;
pub mod ctl;
pub mod driver;
pub mod engine;
pub mod id;
pub mod proto;
pub mod server;
pub mod stats;
pub mod timer;
pub mod wire;
pub mod xshard;
