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
//! scripts), [`message`] (the pub/sub message format), [`backoff`] (reconnection delays).

pub mod backoff;
pub mod keys;
pub mod message;
pub mod resp;
pub mod url;
