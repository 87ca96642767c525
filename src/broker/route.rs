//! Which shard a broker event is for, and the [`BrokerSink`] that carries events there: one
//! bounded SPSC ring per shard (`xshard::lane`) from the bridge's thread, and that shard's
//! doorbell rung once per batch.
//!
//! Routing: a channel's events (`Message`, `Resync`, `SubscribeRefused`) go to the channel's
//! owner shard (`channel::owner_of`, the same on every node), a user's (`User`) to the user's
//! owner shard (the same hash); answers (`Published`, `HistoryReply`, `UserSent`) to the shard
//! named in the request's token ([`token`]); pattern messages to a
//! shard chosen by a hash of their broker channel (any shard can act on them); `Up` and `Down`
//! to every shard.
//!
//! Overflow: a full ring drops the event and counts it (the shard reads the count into
//! `cluster_events_dropped`). A dropped `Message` is an offset gap its subscribers see; a
//! dropped answer leaves its request unanswered, which is why the rings are sized from
//! `[cluster] queue_capacity` (every request in flight fits) plus room for messages.
//!
//! Plain data: no thread, no clock; the bridge calls it on its own thread.

use super::{BrokerEvent, BrokerSink};
use crate::xshard::{Doorbell, LaneRx, LaneTx, lane};
use std::sync::Arc;

/// Bits of a request token below the shard index.
const TOKEN_SHARD_SHIFT: u32 = 48;

/// A request token naming the shard that waits for the answer, and its own sequence number.
pub fn token(shard: usize, seq: u64) -> u64 {
    assert!(shard < 1 << 8);
    ((shard as u64) << TOKEN_SHARD_SHIFT) | (seq & ((1 << TOKEN_SHARD_SHIFT) - 1))
}

/// The shard a token names.
pub fn token_shard(token: u64) -> usize {
    (token >> TOKEN_SHARD_SHIFT) as usize
}

/// Where an event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// One shard.
    One(usize),
    /// Every shard.
    All,
}

/// The route of `event` among `shards` shards.
pub fn route(event: &BrokerEvent, shards: usize) -> Route {
    let owner = |name: &str| Route::One(crate::channel::owner_of(name, shards));
    match event {
        BrokerEvent::Message { channel, .. }
        | BrokerEvent::Resync { channel, .. }
        | BrokerEvent::PresenceNews { channel, .. }
        | BrokerEvent::SubscribeRefused { channel } => owner(channel),
        // A user's owner shard holds its registry (the same hash as channels).
        BrokerEvent::User { user, .. } => owner(user),
        BrokerEvent::Published { token, .. }
        | BrokerEvent::HistoryReply { token, .. }
        | BrokerEvent::UserSent { token, .. }
        | BrokerEvent::UserNodes { token, .. }
        | BrokerEvent::PresenceReply { token, .. }
        | BrokerEvent::NodeSent { token, .. }
        | BrokerEvent::HistoryTail { token, .. } => Route::One(token_shard(*token).min(shards - 1)),
        BrokerEvent::Pattern { channel, .. } => {
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for b in channel.iter() {
                hash ^= u64::from(*b);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
            Route::One((hash % shards as u64) as usize)
        }
        // Shard 0 hands it to the connection's shard.
        BrokerEvent::NodeMessage { .. } => Route::One(0),
        BrokerEvent::Up { .. } | BrokerEvent::Down { .. } => Route::All,
    }
}

/// The sink the server gives the bridge: per-shard rings and doorbells.
pub struct ShardSink {
    lanes: Vec<LaneTx<BrokerEvent>>,
    bells: Vec<Arc<Doorbell>>,
    pushed: Vec<bool>,
}

impl ShardSink {
    /// A sink towards `bells.len()` shards, each ring holding `capacity` events; returns the
    /// shards' ends, by shard index.
    pub fn new(
        bells: Vec<Arc<Doorbell>>,
        capacity: usize,
    ) -> (ShardSink, Vec<LaneRx<BrokerEvent>>) {
        assert!(!bells.is_empty());
        let (lanes, rxs): (Vec<_>, Vec<_>) = bells.iter().map(|_| lane(capacity)).unzip();
        let pushed = vec![false; bells.len()];
        (
            ShardSink {
                lanes,
                bells,
                pushed,
            },
            rxs,
        )
    }
}

impl BrokerSink for ShardSink {
    fn deliver(&mut self, event: BrokerEvent) {
        match route(&event, self.lanes.len()) {
            Route::One(shard) => {
                self.pushed[shard] |= self.lanes[shard].push(event);
            }
            Route::All => {
                for (shard, lane) in self.lanes.iter_mut().enumerate() {
                    self.pushed[shard] |= lane.push(event.clone());
                }
            }
        }
    }

    fn flush(&mut self) {
        for (shard, pushed) in self.pushed.iter_mut().enumerate() {
            if std::mem::take(pushed) {
                self.bells[shard].ring();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{BrokerError, DownCause};
    use bytes::Bytes;

    #[test]
    fn events_go_to_their_shard_and_doorbells_ring_once_per_batch() {
        let bells: Vec<Arc<Doorbell>> =
            (0..3).map(|_| Arc::new(Doorbell::new().unwrap())).collect();
        let (mut sink, mut rxs) = ShardSink::new(bells.clone(), 4);
        let t = token(2, 7);
        assert_eq!(token_shard(t), 2);
        sink.deliver(BrokerEvent::Published {
            token: t,
            result: Err(BrokerError::Down),
        });
        let name: Arc<str> = Arc::from("news");
        let owner = crate::channel::owner_of(&name, 3);
        sink.deliver(BrokerEvent::Message {
            channel: name,
            offset: 1,
            epoch: 1,
            payload: Bytes::from_static(b"tx"),
        });
        sink.deliver(BrokerEvent::Down {
            cause: DownCause::Closed,
        });
        for bell in &bells {
            bell.set_sleeping();
        }
        sink.flush();
        let counts: Vec<usize> = rxs.iter_mut().map(|rx| rx.drain(10, drop)).collect();
        let mut expect = vec![1, 1, 1];
        expect[2] += 1;
        expect[owner] += 1;
        assert_eq!(counts, expect);
        for _ in 0..10 {
            sink.deliver(BrokerEvent::Published {
                token: token(0, 1),
                result: Err(BrokerError::Down),
            });
        }
        assert_eq!(rxs[0].dropped(), 6, "a full ring drops and counts");
    }
}
