//! The owner's side of a channel: its offset sequence, its epoch, and which shards have local
//! subscribers. An entry exists only while some shard has subscribers, so the owner's memory is
//! bounded by the channels that have an audience; when the last interested shard leaves, the
//! entry goes and a later one starts a new epoch (clients see offsets restart with it).

use super::history::{Entry, History, Since};
use std::collections::HashMap;
use std::sync::Arc;

/// A set of shard indexes (up to 256, the id scheme's maximum).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardSet([u64; 4]);

impl ShardSet {
    /// Adds a shard.
    pub fn insert(&mut self, shard: usize) {
        self.0[shard / 64] |= 1 << (shard % 64);
    }
    /// Removes a shard.
    pub fn remove(&mut self, shard: usize) {
        self.0[shard / 64] &= !(1 << (shard % 64));
    }
    /// Whether no shard is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
    /// Whether `shard` is in the set.
    pub fn contains(&self, shard: usize) -> bool {
        self.0[shard / 64] & (1 << (shard % 64)) != 0
    }
    /// The shards in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..256).filter(|&s| self.contains(s))
    }
}

/// One owned channel.
#[derive(Debug, Clone)]
pub struct Owned {
    /// The last offset assigned (0: none yet).
    pub offset: u64,
    /// Identifies this incarnation of the channel's sequence.
    pub epoch: u64,
    /// Shards with local subscribers.
    pub shards: ShardSet,
    /// Kept messages (empty unless the namespace keeps history).
    pub history: History,
}

/// The channels this shard owns.
#[derive(Debug)]
pub struct OwnedChannels {
    map: HashMap<Arc<str>, Owned>,
    next_epoch: u64,
    max: usize,
    /// Bytes of history kept by all channels of this shard.
    history_bytes: usize,
}

/// What a recovery from an offset and epoch found.
#[derive(Debug)]
pub struct Recovery {
    /// The channel's last offset and epoch.
    pub position: (u64, u64),
    /// The messages after the client's offset, when all of them are kept in the same epoch.
    pub replay: Option<Vec<Entry>>,
}

impl OwnedChannels {
    /// `epoch_base` makes epochs differ between process runs (the caller passes e.g. the start
    /// time in ms; kept below 2^53 so JSON readers hold it exactly). `max` bounds the entries.
    pub fn new(epoch_base: u64, max: usize) -> OwnedChannels {
        OwnedChannels {
            map: HashMap::new(),
            next_epoch: epoch_base % (1 << 52),
            max,
            history_bytes: 0,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A shard has its first local subscriber. Returns the channel's last offset and epoch (the
    /// shard's subscribers receive every later offset), or `None` when the owner is full.
    pub fn interest(&mut self, name: &Arc<str>, shard: usize) -> Option<(u64, u64)> {
        if !self.map.contains_key(name) {
            if self.map.len() >= self.max {
                return None;
            }
            self.next_epoch += 1;
            self.create(name);
        }
        let owned = self.map.get_mut(name)?;
        owned.shards.insert(shard);
        Some((owned.offset, owned.epoch))
    }

    fn create(&mut self, name: &Arc<str>) {
        self.next_epoch += 1;
        self.map.insert(
            name.clone(),
            Owned {
                offset: 0,
                epoch: self.next_epoch,
                shards: ShardSet::default(),
                history: History::default(),
            },
        );
    }

    /// Bytes of history kept by this shard's channels.
    pub fn history_bytes(&self) -> usize {
        self.history_bytes
    }

    /// Keeps the channel's newest message in its history (after `publish` sequenced it).
    pub fn keep(&mut self, name: &str, entry: Entry, size_max: usize, shard_max: usize) -> bool {
        let Some(owned) = self.map.get_mut(name) else {
            return false;
        };
        owned
            .history
            .push(entry, size_max, &mut self.history_bytes, shard_max)
    }

    /// Drops the channel's messages older than `ttl_ms`; forgets the channel when nothing is
    /// left of it (no history, no interest).
    pub fn expire(&mut self, name: &str, now_ms: u64, ttl_ms: u64) {
        let Some(owned) = self.map.get_mut(name) else {
            return;
        };
        let had_history = !owned.history.is_empty();
        owned
            .history
            .expire(now_ms, ttl_ms, &mut self.history_bytes);
        // Forgotten only when its last kept message just aged out (a channel created by the
        // publish being kept right now has no history yet).
        if had_history && owned.shards.is_empty() && owned.history.is_empty() {
            self.map.remove(name);
        }
    }

    /// What a client that saw offset `since` of epoch `epoch` missed, with the channel's
    /// position. A channel this shard does not know has position (0, 0) and recovers nothing
    /// unless the client saw nothing either.
    pub fn recover(&self, name: &str, since: u64, epoch: u64) -> Recovery {
        let Some(owned) = self.map.get(name) else {
            return Recovery {
                position: (0, 0),
                replay: None,
            };
        };
        let position = (owned.offset, owned.epoch);
        let same_epoch = epoch == owned.epoch && since <= owned.offset;
        let replay = (same_epoch && owned.history.covers(since, owned.offset) == Since::Complete)
            .then(|| owned.history.after(since).cloned().collect());
        Recovery { position, replay }
    }

    /// A shard's last local subscriber left.
    pub fn withdraw(&mut self, name: &str, shard: usize) {
        if let Some(owned) = self.map.get_mut(name) {
            owned.shards.remove(shard);
            // A channel that keeps history outlives its subscribers: a client reconnecting
            // later recovers what was published meanwhile.
            if owned.shards.is_empty() && owned.history.is_empty() {
                self.map.remove(name);
            }
        }
    }

    /// Sequences a publish: the new offset, the epoch and the shards to deliver to; `None` when
    /// nobody subscribes and the channel keeps no history (nothing to deliver or remember).
    /// With `keeps_history`, a channel without subscribers is sequenced too (created if new,
    /// within the bound), so its history has every offset.
    pub fn publish(&mut self, name: &str, keeps_history: bool) -> Option<(u64, u64, ShardSet)> {
        if keeps_history && !self.map.contains_key(name) && self.map.len() < self.max {
            let name: Arc<str> = Arc::from(name);
            self.create(&name);
        }
        let owned = self.map.get_mut(name)?;
        owned.offset += 1;
        Some((owned.offset, owned.epoch, owned.shards))
    }

    /// The entry for `name`.
    pub fn get(&self, name: &str) -> Option<&Owned> {
        self.map.get(name)
    }

    /// Clustered: the broker sequences the channel; its position as the broker gave it (the
    /// last offset delivered here and the broker's epoch).
    pub fn set_position(&mut self, name: &str, offset: u64, epoch: u64) {
        if let Some(owned) = self.map.get_mut(name) {
            owned.offset = offset;
            owned.epoch = epoch;
        }
    }

    /// Clustered: forgets the channel's kept messages (a gap or a new epoch came from the
    /// broker, so they no longer lead up to the channel's position).
    pub fn clear_history(&mut self, name: &str) {
        if let Some(owned) = self.map.get_mut(name) {
            owned.history.clear(&mut self.history_bytes);
        }
    }

    /// Clustered: forgets the channel (the node's last interest left and the broker
    /// subscription with it, so its history here would miss what comes next).
    pub fn remove(&mut self, name: &str) {
        if let Some(mut owned) = self.map.remove(name) {
            owned.history.clear(&mut self.history_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_interest_and_epochs() {
        let mut owned = OwnedChannels::new(1000, 2);
        let news: Arc<str> = Arc::from("news");
        assert_eq!(
            owned.publish("news", false),
            None,
            "no audience, nothing sequenced"
        );
        let (offset, epoch) = owned.interest(&news, 3).unwrap();
        assert_eq!(offset, 0);
        let (o1, e1, shards) = owned.publish("news", false).unwrap();
        assert_eq!((o1, e1), (1, epoch));
        assert!(shards.contains(3) && !shards.contains(0));
        assert_eq!(owned.interest(&news, 0), Some((1, epoch)));
        assert_eq!(owned.publish("news", false).unwrap().0, 2);
        owned.withdraw("news", 3);
        assert_eq!(owned.publish("news", false).unwrap().0, 3);
        owned.withdraw("news", 0);
        assert!(owned.is_empty());
        let (offset, epoch2) = owned.interest(&news, 1).unwrap();
        assert_eq!(offset, 0);
        assert_ne!(epoch2, epoch, "a new incarnation has a new epoch");
        owned.interest(&Arc::from("b"), 1).unwrap();
        assert_eq!(owned.interest(&Arc::from("c"), 1), None, "bounded");
    }

    #[test]
    fn history_keeps_a_channel_without_subscribers() {
        let mut owned = OwnedChannels::new(0, 10);
        let entry = |offset| Entry {
            offset,
            at_ms: offset * 1000,
            frames: Arc::new(crate::wire::Frames::plain(
                bytes::Bytes::from_static(b"e"),
                bytes::Bytes::from_static(b"r"),
            )),
        };
        for _ in 0..3 {
            let (offset, _, shards) = owned.publish("h:a", true).unwrap();
            assert!(shards.is_empty());
            owned.expire("h:a", offset * 1000, 10_000);
            assert!(owned.keep("h:a", entry(offset), 10, 1 << 20));
        }
        let r = owned.recover("h:a", 1, owned.get("h:a").unwrap().epoch);
        assert_eq!(r.position.0, 3);
        assert_eq!(r.replay.unwrap().len(), 2);
        // Everything ages out: the channel is forgotten.
        owned.expire("h:a", 60_000, 10_000);
        assert!(owned.get("h:a").is_none());
        assert_eq!(owned.history_bytes(), 0);
    }

    #[test]
    fn shard_set() {
        let mut s = ShardSet::default();
        s.insert(0);
        s.insert(70);
        s.insert(255);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 70, 255]);
        s.remove(70);
        assert!(!s.contains(70));
    }
}
