//! A channel's history at its owner: the last messages as the frames already encoded for
//! delivery (envelope and raw, plain and compressed: `wire::Frames`), so a replay sends the same
//! bytes a live delivery did.
//!
//! Pure data: time is an argument (`now_ms`). Bounded three ways: entries (`size_max`), age
//! (`ttl_ms`, 0: none), and bytes over the whole shard (`shard_bytes` against `shard_max`, the
//! caller's running total; the entry that would pass it is not kept and the oldest of this
//! channel go first).

use crate::wire::Frames;
use std::collections::VecDeque;
use std::sync::Arc;

/// One kept message.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its offset.
    pub offset: u64,
    /// When it was published (the owner's clock, ms).
    pub at_ms: u64,
    /// Its frames, shared with the deliveries that carried them.
    pub frames: Arc<Frames>,
}

impl Entry {
    /// Bytes it holds (every frame version).
    pub fn bytes(&self) -> usize {
        self.frames.len() + 64
    }
}

/// A channel's kept messages, oldest first, offsets consecutive.
#[derive(Debug, Default, Clone)]
pub struct History {
    entries: VecDeque<Entry>,
    bytes: usize,
}

/// What a replay from `since` finds.
#[derive(Debug, PartialEq, Eq)]
pub enum Since {
    /// Every message after `since` is kept: replay them (possibly none).
    Complete,
    /// Some messages after `since` are gone: the client must reload.
    Gone,
}

impl History {
    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Keeps `entry` (the channel's newest message) within the bounds; returns whether it was
    /// kept (not when it alone would pass the shard's byte bound).
    pub fn push(
        &mut self,
        entry: Entry,
        size_max: usize,
        shard_bytes: &mut usize,
        shard_max: usize,
    ) -> bool {
        debug_assert!(
            self.entries
                .back()
                .is_none_or(|e| e.offset + 1 == entry.offset)
        );
        if size_max == 0 {
            return false;
        }
        let cost = entry.bytes();
        while !self.entries.is_empty()
            && (self.entries.len() >= size_max || *shard_bytes + cost > shard_max)
        {
            self.pop_oldest(shard_bytes);
        }
        if *shard_bytes + cost > shard_max {
            return false;
        }
        *shard_bytes += cost;
        self.bytes += cost;
        self.entries.push_back(entry);
        true
    }

    fn pop_oldest(&mut self, shard_bytes: &mut usize) {
        if let Some(old) = self.entries.pop_front() {
            let cost = old.bytes();
            self.bytes -= cost;
            *shard_bytes -= cost;
        }
    }

    /// Drops entries older than `ttl_ms` (0: no age limit).
    pub fn expire(&mut self, now_ms: u64, ttl_ms: u64, shard_bytes: &mut usize) {
        if ttl_ms == 0 {
            return;
        }
        while self
            .entries
            .front()
            .is_some_and(|e| now_ms.saturating_sub(e.at_ms) > ttl_ms)
        {
            self.pop_oldest(shard_bytes);
        }
    }

    /// Drops everything (the channel goes away).
    pub fn clear(&mut self, shard_bytes: &mut usize) {
        while !self.entries.is_empty() {
            self.pop_oldest(shard_bytes);
        }
    }

    /// The newest kept offset.
    pub fn last_offset(&self) -> Option<u64> {
        self.entries.back().map(|e| e.offset)
    }

    /// Whether every message after `since` up to `last` (the channel's last offset) is kept.
    pub fn covers(&self, since: u64, last: u64) -> Since {
        if since >= last {
            return Since::Complete;
        }
        match self.entries.front() {
            Some(first) if first.offset <= since + 1 => Since::Complete,
            _ => Since::Gone,
        }
    }

    /// The kept messages after `since`, oldest first.
    pub fn after(&self, since: u64) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.offset > since)
    }

    /// The newest `limit` messages (oldest first).
    pub fn newest(&self, limit: usize) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .skip(self.entries.len().saturating_sub(limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, at_ms: u64, len: usize) -> Entry {
        Entry {
            offset,
            at_ms,
            frames: Arc::new(Frames::plain(
                bytes::Bytes::from(vec![b'e'; len]),
                bytes::Bytes::from(vec![b'r'; len]),
            )),
        }
    }

    #[test]
    fn size_bound_keeps_the_newest() {
        let mut h = History::default();
        let mut shard = 0;
        for o in 1..=10 {
            assert!(h.push(entry(o, 0, 10), 3, &mut shard, 1 << 20));
        }
        assert_eq!(h.len(), 3);
        assert_eq!(
            h.after(0).map(|e| e.offset).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert_eq!(shard, h.bytes());
        assert_eq!(h.covers(7, 10), Since::Complete);
        assert_eq!(h.covers(6, 10), Since::Gone);
        assert_eq!(h.covers(10, 10), Since::Complete, "nothing missed");
        h.clear(&mut shard);
        assert_eq!(shard, 0);
    }

    #[test]
    fn ttl_and_the_shard_byte_bound() {
        let mut h = History::default();
        let mut shard = 0;
        let cost = entry(1, 0, 100).bytes();
        for o in 1..=5 {
            h.push(entry(o, o * 1000, 100), 100, &mut shard, 3 * cost);
        }
        assert_eq!(h.len(), 3, "the shard's bytes bound the channel");
        assert_eq!(shard, 3 * cost);
        h.expire(6_500, 2_000, &mut shard);
        assert_eq!(h.after(0).map(|e| e.offset).collect::<Vec<_>>(), vec![5]);
        // An entry bigger than the whole bound is not kept.
        let mut other = History::default();
        assert!(!other.push(entry(1, 0, 1000), 10, &mut shard, 3 * cost));
        assert_eq!(h.newest(1).map(|e| e.offset).collect::<Vec<_>>(), vec![5]);
    }
}
