//! The Redis bridge: one thread per node that carries the seam's commands to Redis and its
//! replies and messages back (docs/cluster.md describes the keys, the scripts, the message
//! format and the failure behaviour).
//!
//! Owns the bridge thread and everything it holds: the two connections, the subscription set,
//! the requests in flight. Must not touch shard state: it talks to the shards only through the
//! command queue and the [`BrokerSink`]. Every buffer is bounded by `[cluster]`
//! (`queue_capacity`, `in_flight_max`, `buffer_bytes_max`, `channels_max`), and nothing Redis
//! sends can panic it: a reply that does not parse drops the connection, a message that does
//! not parse is counted and dropped.
//!
//! Why a RESP codec of its own rather than a client crate: the thread must wait on three
//! things at once (the subscriber socket, the command socket, the shards' doorbell), and
//! redis-rs's synchronous API blocks in one connection's read at a time (a pub/sub receive
//! waits for a message, with a read timeout at best) and buffers input where `poll` cannot see
//! it; its asynchronous API needs a runtime on this thread. It also requires Rust 1.88 (this
//! crate builds with 1.85), and bounds neither replies nor announced lengths. RESP2 with the few
//! replies the bridge needs is small, sans-IO and property-tested here ([`resp`]).
//!
//! Modules: [`url`] (`redis://` URLs), [`resp`] (the codec), [`keys`] (key layout and Lua
//! scripts), [`message`] (the pub/sub message format), [`backoff`] (reconnection delays),
//! [`conn`] (one connection), [`bridge`] (the loop).

use super::config::ClusterConfig;
use super::{BrokerHandle, BrokerSink};
use std::thread::JoinHandle;

pub mod backoff;
pub mod bridge;
pub mod conn;
pub mod keys;
pub mod message;
pub mod resp;
pub mod url;

/// A running bridge: its handle, and its thread (stopped and joined on drop).
#[derive(Debug)]
pub struct RedisBridge {
    handle: BrokerHandle,
    thread: Option<JoinHandle<()>>,
}

impl RedisBridge {
    /// Starts the bridge for `config` (which must have `redis` set); it connects by itself and
    /// delivers `Up` (or `Down`) into `sink` as its first event. The error names the cause.
    pub fn spawn<S: BrokerSink>(config: &ClusterConfig, sink: S) -> Result<RedisBridge, String> {
        config.validate()?;
        let url = config
            .redis
            .as_deref()
            .ok_or_else(|| "cluster.redis is not set".to_string())?;
        let url = url::RedisUrl::parse(url).map_err(|e| format!("cluster.redis: {e}"))?;
        let (handle, rx) = super::queue(config.queue_capacity, config.queue_bytes_max)
            .map_err(|e| format!("cluster: cannot create the bridge's eventfd: {e}"))?;
        let bridge = bridge::Bridge::new(config, url, sink, handle.shared().clone(), rx);
        let thread = std::thread::Builder::new()
            .name("ringcast-broker".to_string())
            .spawn(move || bridge.run())
            .map_err(|e| format!("cluster: cannot start the bridge thread: {e}"))?;
        Ok(RedisBridge {
            handle,
            thread: Some(thread),
        })
    }

    /// A handle for a shard (clone it per shard).
    pub fn handle(&self) -> BrokerHandle {
        self.handle.clone()
    }

    /// Stops the thread and waits for it (requests in flight are abandoned unanswered). A
    /// connection attempt in progress finishes first (at most `timeout_ms` per step).
    pub fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        self.handle.shared().request_stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RedisBridge {
    fn drop(&mut self) {
        self.join();
    }
}
