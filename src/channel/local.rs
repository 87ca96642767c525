//! The local subscriber index of one shard: channel name → subscribers (connection slots).
//!
//! Subscribe and unsubscribe are O(1) in the channel's size: a channel keeps a `Vec` of
//! subscribers and each membership remembers its position, so removal is a `swap_remove` plus
//! one position fix in the membership of the subscriber that moved.

use super::ChannelError;
use slab::Slab;
use std::collections::HashMap;
use std::sync::Arc;

/// Index of a local channel in the shard's slab.
pub type LocalId = u32;

/// A subscription as the connection sees it: which channel, and where the connection sits in
/// that channel's subscriber list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    /// The channel.
    pub channel: LocalId,
    /// Position in the channel's subscriber list.
    pub position: u32,
}

/// Whether the owner has acknowledged this shard's interest yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Interest sent, no acknowledgement yet: no message can arrive before it.
    Pending,
    /// The owner knows this shard; `last_offset` is the last delivered offset.
    Active,
}

/// A channel with local subscribers.
#[derive(Debug)]
pub struct Local {
    /// The name (shared with messages in flight).
    pub name: Arc<str>,
    /// Subscribers: connection slots.
    pub subscribers: Vec<u32>,
    /// Offset of the last message delivered here (or announced by the owner's ack).
    pub last_offset: u64,
    /// The owner's epoch for this channel.
    pub epoch: u64,
    /// Acknowledgement state.
    pub sync: Sync,
    /// Subscribers waiting for the acknowledgement to be answered: connection slot, its
    /// generation, and the raw JSON id of their request (if any).
    pub waiting: Vec<(u32, u32, Option<Box<str>>)>,
}

/// What a subscribe did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    /// First local subscriber: the shard must register interest with the owner, and answer the
    /// client when the acknowledgement arrives.
    NeedsOwner(LocalId),
    /// Interest is pending: answer the client when the acknowledgement arrives.
    Waiting(LocalId),
    /// The channel is active here: answer now with its last offset.
    Ready(LocalId),
}

/// What an unsubscribe did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribed {
    /// The channel has no local subscriber left.
    pub now_empty: bool,
    /// The subscriber that moved into the freed position, and that position.
    pub moved: Option<(u32, u32)>,
}

/// The index.
#[derive(Debug, Default)]
pub struct LocalChannels {
    by_name: HashMap<Arc<str>, LocalId>,
    channels: Slab<Local>,
}

impl LocalChannels {
    /// Number of channels with local subscribers (or pending).
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether there is no channel.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// The channel called `name`, if it has local subscribers.
    pub fn find(&self, name: &str) -> Option<LocalId> {
        self.by_name.get(name).copied()
    }

    /// A channel by id.
    pub fn get(&self, id: LocalId) -> &Local {
        &self.channels[id as usize]
    }

    /// A channel by id, mutable.
    pub fn get_mut(&mut self, id: LocalId) -> &mut Local {
        &mut self.channels[id as usize]
    }

    /// Iterates over channels.
    pub fn iter(&self) -> impl Iterator<Item = &Local> {
        self.channels.iter().map(|(_, c)| c)
    }

    /// Adds `conn` (whose memberships are `memberships`) to `name`.
    pub fn subscribe(
        &mut self,
        conn: u32,
        memberships: &mut Vec<Membership>,
        name: &str,
        per_conn_max: usize,
        channels_max: usize,
    ) -> Result<Subscribed, ChannelError> {
        let existing = self.find(name);
        if let Some(id) = existing {
            if memberships.iter().any(|m| m.channel == id) {
                return Err(ChannelError::AlreadySubscribed);
            }
        }
        if memberships.len() >= per_conn_max {
            return Err(ChannelError::TooManySubscriptions);
        }
        let (id, created) = match existing {
            Some(id) => (id, false),
            None => {
                if self.channels.len() >= channels_max {
                    return Err(ChannelError::TooManyChannels);
                }
                let name: Arc<str> = Arc::from(name);
                let id = self.channels.insert(Local {
                    name: name.clone(),
                    subscribers: Vec::new(),
                    last_offset: 0,
                    epoch: 0,
                    sync: Sync::Pending,
                    waiting: Vec::new(),
                }) as LocalId;
                self.by_name.insert(name, id);
                (id, true)
            }
        };
        let channel = &mut self.channels[id as usize];
        memberships.push(Membership {
            channel: id,
            position: channel.subscribers.len() as u32,
        });
        channel.subscribers.push(conn);
        Ok(match (created, channel.sync) {
            (true, _) => Subscribed::NeedsOwner(id),
            (false, Sync::Pending) => Subscribed::Waiting(id),
            (false, Sync::Active) => Subscribed::Ready(id),
        })
    }

    /// Removes `conn` from channel `id`. The subscriber that moved into the freed position (if
    /// any) is returned: the caller must call `moved_to` on its memberships. When the channel has
    /// no local subscriber left, the caller withdraws interest and calls `remove_channel` (or
    /// keeps the entry while an acknowledgement is pending).
    pub fn unsubscribe(
        &mut self,
        conn: u32,
        memberships: &mut Vec<Membership>,
        id: LocalId,
    ) -> Result<Unsubscribed, ChannelError> {
        let Some(at) = memberships.iter().position(|m| m.channel == id) else {
            return Err(ChannelError::NotSubscribed);
        };
        let membership = memberships.swap_remove(at);
        let channel = &mut self.channels[id as usize];
        let position = membership.position as usize;
        assert_eq!(channel.subscribers[position], conn);
        channel.subscribers.swap_remove(position);
        Ok(Unsubscribed {
            now_empty: channel.subscribers.is_empty(),
            moved: channel
                .subscribers
                .get(position)
                .map(|&moved| (moved, position as u32)),
        })
    }

    /// Fixes the membership of a subscriber that `unsubscribe` moved.
    pub fn moved_to(memberships: &mut [Membership], id: LocalId, position: u32) {
        let m = memberships.iter_mut().find(|m| m.channel == id);
        // Invariant: every subscriber of a channel has a membership for it.
        let m = m.expect("a subscriber without its membership");
        m.position = position;
    }

    /// Forgets an empty channel.
    pub fn remove_channel(&mut self, id: LocalId) {
        let channel = self.channels.remove(id as usize);
        assert!(channel.subscribers.is_empty());
        self.by_name.remove(&channel.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_unsubscribe_keeps_positions_consistent() {
        let mut index = LocalChannels::default();
        let mut members: Vec<Vec<Membership>> = vec![Vec::new(); 5];
        for conn in 0..5u32 {
            let got = index
                .subscribe(conn, &mut members[conn as usize], "news", 8, 100)
                .unwrap();
            if conn == 0 {
                assert_eq!(got, Subscribed::NeedsOwner(0));
            } else {
                assert_eq!(got, Subscribed::Waiting(0));
            }
        }
        index.get_mut(0).sync = Sync::Active;
        let mut m5 = Vec::new();
        assert_eq!(
            index.subscribe(5, &mut m5, "news", 8, 100),
            Ok(Subscribed::Ready(0))
        );
        assert_eq!(
            index.subscribe(5, &mut m5, "news", 8, 100),
            Err(ChannelError::AlreadySubscribed)
        );
        members.push(m5);
        // Remove from the middle: the last subscriber moves and its position is fixed.
        for conn in [1u32, 0, 4, 2, 5] {
            let mut mine = std::mem::take(&mut members[conn as usize]);
            let done = index.unsubscribe(conn, &mut mine, 0).unwrap();
            assert!(!done.now_empty);
            if let Some((moved, position)) = done.moved {
                LocalChannels::moved_to(&mut members[moved as usize], 0, position);
            }
            for (c, ms) in members.iter().enumerate() {
                for m in ms {
                    assert_eq!(
                        index.get(m.channel).subscribers[m.position as usize],
                        c as u32
                    );
                }
            }
        }
        let mut mine = std::mem::take(&mut members[3]);
        let done = index.unsubscribe(3, &mut mine, 0).unwrap();
        assert_eq!(
            done,
            Unsubscribed {
                now_empty: true,
                moved: None
            }
        );
        assert_eq!(
            index.unsubscribe(3, &mut mine, 0),
            Err(ChannelError::NotSubscribed)
        );
        index.remove_channel(0);
        assert!(index.is_empty());
        assert_eq!(index.find("news"), None);
    }

    #[test]
    fn limits() {
        let mut index = LocalChannels::default();
        let mut m = Vec::new();
        index.subscribe(1, &mut m, "a", 2, 2).unwrap();
        index.subscribe(1, &mut m, "b", 2, 2).unwrap();
        assert_eq!(
            index.subscribe(1, &mut m, "c", 2, 2),
            Err(ChannelError::TooManySubscriptions)
        );
        let mut m2 = Vec::new();
        assert_eq!(
            index.subscribe(2, &mut m2, "c", 2, 2),
            Err(ChannelError::TooManyChannels)
        );
        assert_eq!(
            index.subscribe(2, &mut m2, "a", 2, 2),
            Ok(Subscribed::Waiting(0))
        );
    }
}
