//! A connection's outbound queue: `Bytes` frames waiting to be sent, with a byte limit.
//!
//! Plain data, no ring types: the driver takes a batch for one vectored send, and reports how
//! many bytes the kernel took. Frames in flight stay counted until they are sent, so the limit
//! bounds everything the connection owes, in flight or not.
//!
//! A frame costs its length plus `FRAME_OVERHEAD` (its handle in the queue), so a flood of tiny
//! or empty frames is bounded by the same limit as a few big ones.

use bytes::{Buf, Bytes};
use std::collections::VecDeque;

/// What happened to a frame offered to the queue (never a bool: the caller must act on each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueue {
    /// Queued; it will leave with the next send.
    Enqueued,
    /// Refused: the queue would pass its byte limit. The caller closes the connection as a
    /// slow consumer.
    SlowConsumer,
    /// Refused: the connection is no longer open (closing, or gone); nothing was queued.
    Closed,
}

/// What a queued frame costs beyond its bytes: its handle.
pub const FRAME_OVERHEAD: usize = std::mem::size_of::<Bytes>();

/// The queue.
#[derive(Debug, Default)]
pub struct Outbound {
    frames: VecDeque<Bytes>,
    /// Cost owed (bytes plus `FRAME_OVERHEAD` per frame): queued plus in flight. 32 bits keep
    /// the connection's state small; `Limits::validate` caps `outbound_bytes_max` below 2^31,
    /// and exempt control frames are few and small.
    owed_bytes: u32,
    /// The front frame is the rest of a partly sent frame (it must go out before anything else
    /// and may not be dropped, or the stream's framing breaks).
    partial_front: bool,
}

impl Outbound {
    /// Queues a data frame unless that would put more than `limit_bytes` in the queue.
    /// `shard_total` is the shard's sum over all queues, kept in step.
    pub fn push(&mut self, frame: Bytes, limit_bytes: usize, shard_total: &mut usize) -> Enqueue {
        if self.owed_bytes as usize + frame.len() + FRAME_OVERHEAD > limit_bytes {
            return Enqueue::SlowConsumer;
        }
        self.push_control(frame, shard_total);
        Enqueue::Enqueued
    }

    /// Queues a control frame or handshake response: exempt from the limit (a pong or a close
    /// must reach a client even when its data backlog is full); ≤ 127 bytes for control frames.
    pub fn push_control(&mut self, frame: Bytes, shard_total: &mut usize) {
        let cost = frame.len() + FRAME_OVERHEAD;
        *shard_total += cost;
        self.owed_bytes = u32::try_from(self.owed_bytes as usize + cost).unwrap_or(u32::MAX);
        self.frames.push_back(frame);
    }

    /// Drops every queued frame that is not in flight (keeping the rest of a partly sent one),
    /// so that a close frame queued next reaches a slow client as soon as it reads anything.
    pub fn discard_queued(&mut self, shard_total: &mut usize) {
        let keep = usize::from(self.partial_front).min(self.frames.len());
        for frame in self.frames.drain(keep..) {
            let cost = frame.len() + FRAME_OVERHEAD;
            self.owed_bytes -= cost as u32;
            *shard_total -= cost;
        }
    }

    /// Replaces the most recent queued frame among the last `scan` that `is_it` picks (never the
    /// rest of a partly sent frame) with `frame`, keeping its place; returns whether one was
    /// found. Used to conflate pongs: only the latest ping's answer matters.
    pub fn replace_recent(
        &mut self,
        is_it: impl Fn(&Bytes) -> bool,
        frame: Bytes,
        scan: usize,
        shard_total: &mut usize,
    ) -> Result<(), Bytes> {
        let first = usize::from(self.partial_front);
        let len = self.frames.len();
        let from = len.saturating_sub(scan).max(first);
        let Some(index) = (from..len).rev().find(|&i| is_it(&self.frames[i])) else {
            return Err(frame);
        };
        let old = std::mem::replace(&mut self.frames[index], frame);
        let new_len = self.frames[index].len();
        // Owed bytes follow the payload difference (the handle cost is unchanged).
        self.owed_bytes = (self.owed_bytes as usize + new_len - old.len()) as u32;
        *shard_total = *shard_total + new_len - old.len();
        Ok(())
    }

    /// Bytes owed (queued and in flight).
    pub fn owed_bytes(&self) -> usize {
        self.owed_bytes as usize
    }

    /// Whether frames wait to be sent (in-flight frames are not counted here).
    pub fn has_queued(&self) -> bool {
        !self.frames.is_empty()
    }

    /// Moves up to `max_frames` frames into `batch` for one vectored send.
    pub fn take_batch(&mut self, max_frames: usize, batch: &mut Vec<Bytes>) {
        debug_assert!(batch.is_empty());
        let n = max_frames.min(self.frames.len());
        batch.extend(self.frames.drain(..n));
        self.partial_front = false;
    }

    /// The kernel took `sent` bytes of `batch`: the rest goes back to the front, in order.
    pub fn complete(&mut self, batch: &mut Vec<Bytes>, mut sent: usize, shard_total: &mut usize) {
        let mut released = 0;
        let mut rest = batch.drain(..);
        let mut partial = None;
        for mut frame in rest.by_ref() {
            if sent >= frame.len() {
                sent -= frame.len();
                released += frame.len() + FRAME_OVERHEAD;
                continue;
            }
            released += sent;
            frame.advance(sent);
            partial = Some(frame);
            break;
        }
        assert!(released <= self.owed_bytes as usize);
        assert!(released <= *shard_total);
        self.owed_bytes -= released as u32;
        *shard_total -= released;
        if let Some(frame) = partial {
            // The first frame not wholly sent: resume it, then everything after it, in order.
            self.partial_front = true;
            let tail: Vec<Bytes> = rest.collect();
            for later in tail.into_iter().rev() {
                self.frames.push_front(later);
            }
            self.frames.push_front(frame);
        }
    }

    /// Frees everything (the connection is gone); the batch in flight is owned by the send slot.
    pub fn clear(&mut self, shard_total: &mut usize) {
        assert!(self.owed_bytes as usize <= *shard_total);
        *shard_total -= self.owed_bytes as usize;
        self.frames = VecDeque::new();
        self.owed_bytes = 0;
        self.partial_front = false;
    }

    /// Calls `f` on every queued frame (not those in flight, which their send slot holds).
    pub fn for_each_queued(&self, f: &mut impl FnMut(&Bytes)) {
        self.frames.iter().for_each(f);
    }

    /// Heap bytes held by the queue's ring of handles (not the shared payloads).
    pub fn heap_bytes(&self) -> usize {
        self.frames.capacity() * std::mem::size_of::<Bytes>()
    }

    /// Releases the handle ring when the queue is empty and it grew large (a burst), so a
    /// connection does not keep a burst's ring forever.
    pub fn shrink_when_idle(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > 16 {
            self.frames = VecDeque::new();
        }
    }

    /// Releases the handle ring if the queue is empty; returns whether it did.
    pub fn release_if_empty(&mut self) -> bool {
        if self.frames.is_empty() {
            self.frames = VecDeque::new();
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const O: usize = FRAME_OVERHEAD;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn limit_refuses_data_but_not_control() {
        let mut q = Outbound::default();
        let mut t = 0usize;
        assert_eq!(q.push(b("12345"), 5 + O + 3, &mut t), Enqueue::Enqueued);
        assert_eq!(q.push(b("1234"), 5 + O + 3, &mut t), Enqueue::SlowConsumer);
        q.push_control(b("pong"), &mut t);
        assert_eq!(q.owed_bytes(), 9 + 2 * O);
        assert_eq!(t, q.owed_bytes());
    }

    #[test]
    fn tiny_frames_are_bounded_by_their_handles() {
        let mut q = Outbound::default();
        let mut t = 0usize;
        let mut queued = 0;
        while q.push(Bytes::new(), 1024, &mut t) == Enqueue::Enqueued {
            queued += 1;
        }
        assert_eq!(queued, 1024 / O);
    }

    #[test]
    fn partial_send_resumes_in_order() {
        let mut q = Outbound::default();
        let mut t = 0usize;
        for s in ["aaa", "bbb", "ccc", "ddd"] {
            assert_eq!(q.push(b(s), 1000, &mut t), Enqueue::Enqueued);
        }
        let mut batch = Vec::new();
        q.take_batch(3, &mut batch);
        assert_eq!(batch.len(), 3);
        q.complete(&mut batch, 4, &mut t); // "aaa" + "b"
        assert!(batch.is_empty());
        assert_eq!(q.owed_bytes(), 8 + 3 * O);
        // The rest of "bbb" survives a discard; "ccc" and "ddd" do not.
        q.discard_queued(&mut t);
        assert_eq!(q.owed_bytes(), 2 + O);
        q.take_batch(10, &mut batch);
        let joined: Vec<u8> = batch.iter().flat_map(|f| f.iter().copied()).collect();
        assert_eq!(joined, b"bb");
        q.complete(&mut batch, 2, &mut t);
        assert_eq!(q.owed_bytes(), 0);
        assert_eq!(t, 0, "the shard total follows the queue");
        assert!(!q.has_queued());
    }

    #[test]
    fn replace_recent_keeps_order_and_accounting() {
        let mut q = Outbound::default();
        let mut t = 0usize;
        for s in ["aaa", "P1", "bbb"] {
            q.push_control(b(s), &mut t);
        }
        let is_pong = |f: &Bytes| f.starts_with(b"P");
        assert!(q.replace_recent(is_pong, b("P22"), 8, &mut t).is_ok());
        assert_eq!(q.owed_bytes(), 9 + 3 * O);
        assert_eq!(t, q.owed_bytes());
        assert!(
            q.replace_recent(is_pong, b("P3"), 1, &mut t).is_err(),
            "outside the scan"
        );
        let mut batch = Vec::new();
        q.take_batch(10, &mut batch);
        let joined: Vec<u8> = batch.iter().flat_map(|f| f.iter().copied()).collect();
        assert_eq!(joined, b"aaaP22bbb");
    }

    #[test]
    fn in_flight_bytes_count_against_the_limit() {
        let mut q = Outbound::default();
        let mut t = 0usize;
        let limit = 8 + O + 2;
        assert_eq!(q.push(b("12345678"), limit, &mut t), Enqueue::Enqueued);
        let mut batch = Vec::new();
        q.take_batch(8, &mut batch);
        assert_eq!(q.push(b("123"), limit, &mut t), Enqueue::SlowConsumer);
        q.complete(&mut batch, 8, &mut t);
        assert_eq!(q.push(b("123"), limit, &mut t), Enqueue::Enqueued);
    }
}
