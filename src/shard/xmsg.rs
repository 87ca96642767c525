//! Messages between shards. Payloads travel as `Bytes` (a refcount), names as `Arc<str>`.

use bytes::Bytes;
use std::sync::Arc;

/// A published payload as the publisher gave it.
#[derive(Debug, Clone)]
pub enum Body {
    /// A JSON value (its text): raw subscribers get it as a text frame, envelopes embed it as
    /// `"data":VALUE`.
    Json(Bytes),
    /// A string: raw subscribers get it as a text frame, envelopes as `"data":"..."`.
    Text(Bytes),
    /// Bytes: raw subscribers get a binary frame, envelopes `"b64":"..."`.
    Binary(Bytes),
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
    /// From the owner: one sequenced message, encoded once in both formats.
    Deliver {
        /// Channel name.
        channel: Arc<str>,
        /// Its offset.
        offset: u64,
        /// The `{"op":"message",...}` text frame.
        envelope: Bytes,
        /// The payload as a text or binary frame.
        raw: Bytes,
    },
}
