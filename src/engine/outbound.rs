//! A connection's outbound queue: frames waiting to be sent, with a byte limit.
//!
//! Plain data, no ring types: the driver takes a [`Batch`] for one vectored send, and reports how
//! many bytes the kernel took. Frames in flight stay counted until they are sent, so the limit
//! bounds everything the connection owes, in flight or not.
//!
//! **Small frames by copy, large frames by reference.** A published frame is encoded once; each
//! subscriber's queue then either copies its bytes into the connection's own contiguous buffer
//! (`copied`) or keeps a shared handle (`Bytes`, an atomic increment now and a decrement when
//! sent). Below [`COPY_FRAME_BYTES_MAX`] the copy is cheaper than the handle: no atomic operation
//! per subscriber, no 32-byte handle, and one iovec for every small frame of a turn instead of
//! one each (measured in `benches/fanout.rs`, "queue"; docs/benchmarks.md). Above it, copying
//! would cost more than sharing.
//!
//! A run of small frames (the messages of one channel that reach a shard together) is queued as
//! one frame of its size ([`Outbound::push_run`]): concatenated once per run, then copied or
//! shared by the same rule. At high rates a run is long, so each subscriber takes one handle
//! per run and the kernel copies from the one shared buffer, warm in the cache, instead of from
//! ten thousand buffers each written just before (measured in docs/benchmarks.md).
//!
//! Order: a queue is `[copied][frames]` — copied bytes always precede the handles. A small frame
//! is copied only while no handle waits (else it is queued by handle behind them), so the order
//! of what the connection receives is the order of `push` calls.
//!
//! Costs: a handle costs its frame's length plus `FRAME_OVERHEAD`, so a flood of tiny frames is
//! bounded by the same limit as a few big ones; a copied frame costs its length (a WebSocket frame
//! is at least 2 bytes, so that bound holds too).
//!
//! Memory: an idle connection owns no heap — its queue (`Queue`: the buffer and the handle ring)
//! exists only while it owes something, and goes back to the shard's spares ([`Owed`]) when it
//! drains, keeping its capacity for the next connection that needs one. Spares are bounded by
//! `SPARE_BYTES_MAX` per shard, a send slot's buffer by `KEEP_COPIED_BYTES_MAX` between sends.

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

/// What a queued handle costs beyond its bytes.
pub const FRAME_OVERHEAD: usize = std::mem::size_of::<Bytes>();

/// Shared frames up to this many bytes are copied into a subscriber's buffer instead of queued
/// by handle (see the module's header for why, docs/benchmarks.md for the measurement).
pub const COPY_FRAME_BYTES_MAX: usize = 256;

/// A buffer a queue starts with when its first frame is copied (most turns copy a few small
/// frames per connection).
const COPIED_INITIAL_BYTES: usize = 256;

/// A send slot's or spare queue's buffer keeps at most this capacity once drained (a backlog's
/// larger buffer is freed rather than kept).
pub const KEEP_COPIED_BYTES_MAX: usize = 4096;

/// A spare queue keeps at most this many handle places once drained.
const KEEP_HANDLES_MAX: usize = 16;

/// Heap the spare queues of one shard may keep for reuse.
pub const SPARE_BYTES_MAX: usize = 16 << 20;

/// One send's frames: the copied bytes (sent first) and the handles after them. The driver owns it
/// from `Transmit::submit` until it reports the send with `Engine::on_sent`.
#[derive(Debug, Default)]
pub struct Batch {
    /// Small frames, copied back to back.
    pub copied: Vec<u8>,
    /// Shared frames, after `copied`.
    pub frames: Vec<Bytes>,
}

impl Batch {
    /// An empty batch with room for `frames` handles.
    pub fn with_capacity(frames: usize) -> Batch {
        Batch {
            copied: Vec::new(),
            frames: Vec::with_capacity(frames),
        }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.copied.is_empty() && self.frames.is_empty()
    }

    /// Bytes to send.
    pub fn len(&self) -> usize {
        self.copied.len() + self.frames.iter().map(Bytes::len).sum::<usize>()
    }

    /// The byte runs to send, in order: one per iovec.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        let copied = (!self.copied.is_empty()).then_some(self.copied.as_slice());
        copied.into_iter().chain(self.frames.iter().map(|f| &f[..]))
    }

    /// The batch's bytes when they are one run (only copied bytes, or one handle): the driver
    /// can then send them without iovecs.
    pub fn single_run(&self) -> Option<&[u8]> {
        match (self.copied.is_empty(), self.frames.as_slice()) {
            (false, []) => Some(&self.copied),
            (true, [only]) => Some(only),
            _ => None,
        }
    }

    /// Heap the batch holds that no other queue shares: the handle vector and the copied buffer
    /// (by capacity).
    pub fn heap_bytes(&self) -> usize {
        self.frames.capacity() * std::mem::size_of::<Bytes>() + self.copied.capacity()
    }

    /// Empties it, keeping its capacity for the next send unless the buffer grew past
    /// `KEEP_COPIED_BYTES_MAX`.
    pub fn clear(&mut self) {
        self.frames.clear();
        if self.copied.capacity() > KEEP_COPIED_BYTES_MAX {
            self.copied = Vec::new();
        } else {
            self.copied.clear();
        }
    }
}

/// What a connection owes while it owes anything.
#[derive(Debug, Default)]
pub struct Queue {
    copied: Vec<u8>,
    frames: VecDeque<Bytes>,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.copied.is_empty() && self.frames.is_empty()
    }

    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Queue>()
            + self.copied.capacity()
            + self.frames.capacity() * std::mem::size_of::<Bytes>()
    }
}

/// A shard's side of its queues: the sum of what they owe (`total`, kept in step by every
/// queue operation) and the drained queues kept for reuse.
#[derive(Debug, Default)]
pub struct Owed {
    total: usize,
    // Boxed on purpose: a queue moves between a connection (`Option<Box<Queue>>`, one word
    // while idle) and this list without copying or reallocating.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Queue>>,
    spare_bytes: usize,
}

impl Owed {
    /// Bytes owed by all the shard's queues (queued and in flight).
    pub fn total(&self) -> usize {
        self.total
    }

    /// Heap held by spare queues.
    pub fn spare_bytes(&self) -> usize {
        self.spare_bytes
    }

    fn take_queue(&mut self) -> Box<Queue> {
        match self.spare.pop() {
            Some(q) => {
                self.spare_bytes -= q.heap_bytes();
                q
            }
            None => Box::default(),
        }
    }

    fn give_back(&mut self, mut q: Box<Queue>) {
        q.frames.clear();
        q.copied.clear();
        if q.copied.capacity() > KEEP_COPIED_BYTES_MAX {
            q.copied = Vec::new();
        }
        if q.frames.capacity() > KEEP_HANDLES_MAX {
            q.frames = VecDeque::new();
        }
        let bytes = q.heap_bytes();
        if self.spare_bytes + bytes <= SPARE_BYTES_MAX {
            self.spare_bytes += bytes;
            self.spare.push(q);
        }
    }

    fn charge(&mut self, cost: usize) {
        self.total += cost;
    }

    fn release(&mut self, cost: usize) {
        assert!(
            cost <= self.total,
            "a queue released more than the shard owed"
        );
        self.total -= cost;
    }
}

/// The queue.
#[derive(Debug, Default)]
pub struct Outbound {
    /// Present only while something is queued (an idle connection owns no heap).
    queue: Option<Box<Queue>>,
    /// Cost owed (see the module's header): queued plus in flight. 32 bits keep the connection's
    /// state small; `Limits::validate` caps `outbound_bytes_max` below 2^31, and exempt control
    /// frames are few and small.
    owed_bytes: u32,
    /// The front handle is the rest of a partly sent batch (it must go out before anything else
    /// and may not be dropped, or the stream's framing breaks).
    partial_front: bool,
}

impl Outbound {
    fn queue(&mut self, owed: &mut Owed) -> &mut Queue {
        self.queue.get_or_insert_with(|| owed.take_queue())
    }

    fn charge(&mut self, cost: usize, owed: &mut Owed) {
        owed.charge(cost);
        self.owed_bytes = u32::try_from(self.owed_bytes as usize + cost).unwrap_or(u32::MAX);
    }

    fn release(&mut self, cost: usize, owed: &mut Owed) {
        assert!(cost <= self.owed_bytes as usize, "released more than owed");
        self.owed_bytes -= cost as u32;
        owed.release(cost);
    }

    /// Gives an empty queue back to the shard's spares.
    fn settle(&mut self, owed: &mut Owed) {
        if let Some(q) = self.queue.take_if(|q| q.is_empty()) {
            owed.give_back(q);
        }
    }

    /// Queues a data frame by handle unless that would put more than `limit_bytes` in the queue.
    pub fn push(&mut self, frame: Bytes, limit_bytes: usize, owed: &mut Owed) -> Enqueue {
        if self.owed_bytes as usize + frame.len() + FRAME_OVERHEAD > limit_bytes {
            return Enqueue::SlowConsumer;
        }
        self.push_control(frame, owed);
        Enqueue::Enqueued
    }

    /// Makes room for `bytes` more copied bytes at once, when they would be copied (no handle
    /// waits) and fit the limit: a run of small frames (`Engine::deliver_run`) then grows the
    /// buffer once, not by doubling through every size on the way (each a reallocation that
    /// copies what is there). Changes nothing that is owed. Within the limit, the first of
    /// those frames will be queued too (its check is `bytes`' at most), so a queue this makes is
    /// never left empty.
    pub fn reserve_copied(&mut self, bytes: usize, limit_bytes: usize, owed: &mut Owed) {
        if bytes == 0 || self.owed_bytes as usize + bytes + FRAME_OVERHEAD > limit_bytes {
            return;
        }
        if self.queue.as_ref().is_some_and(|q| !q.frames.is_empty()) {
            return; // they will be queued by handle
        }
        let q = self.queue(owed);
        q.copied.reserve(bytes.max(COPIED_INITIAL_BYTES));
    }

    /// Queues a run of small frames shared with other subscribers as one frame, `run` being
    /// their concatenation (`Engine::deliver_run`): copied when it is small and no handle
    /// waits, else by one handle, exactly as `push_shared` would queue a frame of its size. So
    /// a subscriber gets a run of many small frames in one copy or one reference count instead
    /// of one per frame, and the kernel reads the one shared copy for every subscriber. Returns
    /// false, having changed nothing, when the run does not fit `limit_bytes`: the caller then
    /// offers its frames one by one (some may fit, and past the limit each needs its verdict).
    ///
    /// The caller guarantees that `run` is whole frames, each of 2..=`COPY_FRAME_BYTES_MAX`
    /// bytes, so what the connection receives is those frames, in order. Within the limit, each
    /// frame alone would have been queued too (its check is the run's at most).
    pub fn push_run(&mut self, run: &Bytes, limit_bytes: usize, owed: &mut Owed) -> bool {
        if run.len() < 2 {
            return false;
        }
        self.push_shared(run, limit_bytes, owed) == Enqueue::Enqueued
    }

    /// Queues a frame shared with other subscribers: copied when it is small and no handle
    /// waits, else by handle; refused past `limit_bytes` (checked at the handle's cost either
    /// way, so the outcome does not depend on the queue's form).
    pub fn push_shared(&mut self, frame: &Bytes, limit_bytes: usize, owed: &mut Owed) -> Enqueue {
        self.push_shared_with(frame, COPY_FRAME_BYTES_MAX, limit_bytes, owed)
    }

    /// `push_shared` with the copy threshold as an argument (`benches/fanout.rs` measures both
    /// ways at every size with it: 0 never copies, `usize::MAX` always does).
    pub fn push_shared_with(
        &mut self,
        frame: &Bytes,
        copy_bytes_max: usize,
        limit_bytes: usize,
        owed: &mut Owed,
    ) -> Enqueue {
        if self.owed_bytes as usize + frame.len() + FRAME_OVERHEAD > limit_bytes {
            return Enqueue::SlowConsumer;
        }
        let len = frame.len();
        let q = self.queue(owed);
        if (2..=copy_bytes_max).contains(&len) && q.frames.is_empty() {
            if q.copied.capacity() == 0 {
                q.copied.reserve(COPIED_INITIAL_BYTES.max(len));
            }
            q.copied.extend_from_slice(frame);
            self.charge(len, owed);
        } else {
            q.frames.push_back(frame.clone());
            self.charge(len + FRAME_OVERHEAD, owed);
        }
        Enqueue::Enqueued
    }

    /// Queues a control frame or handshake response by handle: exempt from the limit (a pong or
    /// a close must reach a client even when its data backlog is full); ≤ 127 bytes for control
    /// frames.
    pub fn push_control(&mut self, frame: Bytes, owed: &mut Owed) {
        let cost = frame.len() + FRAME_OVERHEAD;
        self.queue(owed).frames.push_back(frame);
        self.charge(cost, owed);
    }

    /// Drops every queued frame that is not in flight (keeping the rest of a partly sent one),
    /// so that a close frame queued next reaches a slow client as soon as it reads anything.
    pub fn discard_queued(&mut self, owed: &mut Owed) {
        let keep = usize::from(self.partial_front);
        let Some(mut q) = self.queue.take() else {
            return;
        };
        let mut released = std::mem::take(&mut q.copied).len();
        let keep = keep.min(q.frames.len());
        for frame in q.frames.drain(keep..) {
            released += frame.len() + FRAME_OVERHEAD;
        }
        self.queue = Some(q);
        self.release(released, owed);
        self.settle(owed);
    }

    /// Replaces the most recent queued handle among the last `scan` that `is_it` picks (never
    /// the rest of a partly sent batch) with `frame`, keeping its place; returns whether one was
    /// found. Used to conflate pongs, which are queued by handle: only the latest ping's answer
    /// matters.
    pub fn replace_recent(
        &mut self,
        is_it: impl Fn(&Bytes) -> bool,
        frame: Bytes,
        scan: usize,
        owed: &mut Owed,
    ) -> Result<(), Bytes> {
        let first = usize::from(self.partial_front);
        let Some(q) = self.queue.as_mut() else {
            return Err(frame);
        };
        let len = q.frames.len();
        let from = len.saturating_sub(scan).max(first);
        let Some(index) = (from..len).rev().find(|&i| is_it(&q.frames[i])) else {
            return Err(frame);
        };
        let old = std::mem::replace(&mut q.frames[index], frame);
        let new_len = q.frames[index].len();
        // Owed bytes follow the payload difference (the handle cost is unchanged).
        self.release(old.len(), owed);
        self.charge(new_len, owed);
        Ok(())
    }

    /// Bytes owed (queued and in flight).
    pub fn owed_bytes(&self) -> usize {
        self.owed_bytes as usize
    }

    /// Whether frames wait to be sent (in-flight frames are not counted here).
    pub fn has_queued(&self) -> bool {
        self.queue.as_ref().is_some_and(|q| !q.is_empty())
    }

    /// Moves the copied bytes and up to `max_frames` handles (the copied run counting as one)
    /// into `batch` for one vectored send.
    pub fn take_batch(&mut self, max_frames: usize, batch: &mut Batch, owed: &mut Owed) {
        debug_assert!(batch.is_empty());
        assert!(max_frames >= 1, "a batch holds at least one iovec");
        let Some(q) = self.queue.as_mut() else {
            return;
        };
        if !q.copied.is_empty() {
            // The slot's empty buffer (with its capacity) takes the queue's place.
            std::mem::swap(&mut q.copied, &mut batch.copied);
            assert!(
                !self.partial_front,
                "a partly sent batch leaves no copied bytes behind it"
            );
        }
        let n = (max_frames - usize::from(!batch.copied.is_empty())).min(q.frames.len());
        batch.frames.extend(q.frames.drain(..n));
        self.partial_front = false;
        self.settle(owed);
    }

    /// The kernel took `sent` bytes of `batch`: the rest goes back to the front, in order, and
    /// the batch is left empty.
    pub fn complete(&mut self, batch: &mut Batch, mut sent: usize, owed: &mut Owed) {
        let mut released = 0;
        let mut unsent: Vec<Bytes> = Vec::new();
        let copied = batch.copied.len();
        let copied_rest = sent < copied;
        if !copied_rest {
            sent -= copied;
            released += copied;
        } else {
            // Rare (the socket's buffer filled mid-batch): the rest becomes a handle, costed as one.
            released += sent;
            unsent.push(Bytes::copy_from_slice(&batch.copied[sent..]));
            sent = 0;
        }
        for mut frame in batch.frames.drain(..) {
            if !unsent.is_empty() {
                unsent.push(frame);
                continue;
            }
            if sent >= frame.len() {
                sent -= frame.len();
                released += frame.len() + FRAME_OVERHEAD;
                continue;
            }
            released += sent;
            frame.advance(sent);
            sent = 0;
            unsent.push(frame);
        }
        batch.clear();
        self.release(released, owed);
        if unsent.is_empty() {
            return;
        }
        let mut extra = usize::from(copied_rest) * FRAME_OVERHEAD;
        let q = self.queue(owed);
        if !q.copied.is_empty() {
            // Copied while the batch was in flight, so newer than all of it: it keeps its place
            // behind the rest as a handle, and the queue is `[frames]` only again.
            let newer = Bytes::from(std::mem::take(&mut q.copied));
            q.frames.push_front(newer);
            extra += FRAME_OVERHEAD;
        }
        for frame in unsent.into_iter().rev() {
            q.frames.push_front(frame);
        }
        self.partial_front = true;
        self.charge(extra, owed);
    }

    /// Frees everything (the connection is gone); the batch in flight is owned by the send slot.
    pub fn clear(&mut self, owed: &mut Owed) {
        let owed_bytes = self.owed_bytes as usize;
        self.release(owed_bytes, owed);
        if let Some(q) = self.queue.take() {
            owed.give_back(q);
        }
        self.partial_front = false;
    }

    /// Calls `f` on every queued handle (not those in flight, which their send slot holds).
    pub fn for_each_queued(&self, f: &mut impl FnMut(&Bytes)) {
        if let Some(q) = &self.queue {
            q.frames.iter().for_each(f);
        }
    }

    /// Heap bytes the queue holds that no other queue shares: its buffer and ring of handles
    /// (by capacity), not the shared payloads.
    pub fn heap_bytes(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.heap_bytes())
    }

    /// Whether the queue holds no heap (a drained queue goes back to the spares at once).
    pub fn release_if_empty(&mut self) -> bool {
        self.queue.is_none()
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
        let mut t = Owed::default();
        assert_eq!(q.push(b("12345"), 5 + O + 3, &mut t), Enqueue::Enqueued);
        assert_eq!(q.push(b("1234"), 5 + O + 3, &mut t), Enqueue::SlowConsumer);
        q.push_control(b("pong"), &mut t);
        assert_eq!(q.owed_bytes(), 9 + 2 * O);
        assert_eq!(t.total(), q.owed_bytes());
    }

    #[test]
    fn tiny_frames_are_bounded_by_their_handles() {
        let mut q = Outbound::default();
        let mut t = Owed::default();
        let mut queued = 0;
        while q.push(Bytes::new(), 1024, &mut t) == Enqueue::Enqueued {
            queued += 1;
        }
        assert_eq!(queued, 1024 / O);
    }

    #[test]
    fn partial_send_resumes_in_order() {
        let mut q = Outbound::default();
        let mut t = Owed::default();
        for s in ["aaa", "bbb", "ccc", "ddd"] {
            assert_eq!(q.push(b(s), 1000, &mut t), Enqueue::Enqueued);
        }
        let mut batch = Batch::default();
        q.take_batch(3, &mut batch, &mut t);
        assert_eq!(batch.frames.len(), 3);
        q.complete(&mut batch, 4, &mut t); // "aaa" + "b"
        assert!(batch.is_empty());
        assert_eq!(q.owed_bytes(), 8 + 3 * O);
        // The rest of "bbb" survives a discard; "ccc" and "ddd" do not.
        q.discard_queued(&mut t);
        assert_eq!(q.owed_bytes(), 2 + O);
        q.take_batch(10, &mut batch, &mut t);
        let joined: Vec<u8> = batch.chunks().flatten().copied().collect();
        assert_eq!(joined, b"bb");
        q.complete(&mut batch, 2, &mut t);
        assert_eq!(q.owed_bytes(), 0);
        assert_eq!(t.total(), 0, "the shard total follows the queue");
        assert!(!q.has_queued());
    }

    #[test]
    fn replace_recent_keeps_order_and_accounting() {
        let mut q = Outbound::default();
        let mut t = Owed::default();
        for s in ["aaa", "P1", "bbb"] {
            q.push_control(b(s), &mut t);
        }
        let is_pong = |f: &Bytes| f.starts_with(b"P");
        assert!(q.replace_recent(is_pong, b("P22"), 8, &mut t).is_ok());
        assert_eq!(q.owed_bytes(), 9 + 3 * O);
        assert_eq!(t.total(), q.owed_bytes());
        assert!(
            q.replace_recent(is_pong, b("P3"), 1, &mut t).is_err(),
            "outside the scan"
        );
        let mut batch = Batch::default();
        q.take_batch(10, &mut batch, &mut t);
        let joined: Vec<u8> = batch.chunks().flatten().copied().collect();
        assert_eq!(joined, b"aaaP22bbb");
    }

    #[test]
    fn in_flight_bytes_count_against_the_limit() {
        let mut q = Outbound::default();
        let mut t = Owed::default();
        let limit = 8 + O + 2;
        assert_eq!(q.push(b("12345678"), limit, &mut t), Enqueue::Enqueued);
        let mut batch = Batch::default();
        q.take_batch(8, &mut batch, &mut t);
        assert_eq!(q.push(b("123"), limit, &mut t), Enqueue::SlowConsumer);
        q.complete(&mut batch, 8, &mut t);
        assert_eq!(q.push(b("123"), limit, &mut t), Enqueue::Enqueued);
    }

    fn sent_bytes(q: &mut Outbound, t: &mut Owed, max_frames: usize) -> (Vec<u8>, usize) {
        let mut batch = Batch::default();
        q.take_batch(max_frames, &mut batch, t);
        let bytes: Vec<u8> = batch.chunks().flatten().copied().collect();
        let iovecs = batch.chunks().count();
        let n = bytes.len();
        q.complete(&mut batch, n, t);
        (bytes, iovecs)
    }

    #[test]
    fn small_shared_frames_are_copied_large_ones_shared() {
        let mut q = Outbound::default();
        let mut t = Owed::default();
        let small = Bytes::from(b"small-frame".to_vec());
        let large = Bytes::from(vec![b'L'; COPY_FRAME_BYTES_MAX + 1]);
        assert_eq!(q.push_shared(&small, 1 << 20, &mut t), Enqueue::Enqueued);
        assert_eq!(q.push_shared(&small, 1 << 20, &mut t), Enqueue::Enqueued);
        // Copied frames cost their bytes only, and take no reference.
        assert_eq!(q.owed_bytes(), 2 * small.len());
        assert!(small.is_unique(), "a copied frame holds no handle");
        assert_eq!(q.push_shared(&large, 1 << 20, &mut t), Enqueue::Enqueued);
        assert!(!large.is_unique(), "a large frame is shared");
        // Behind a handle, a small frame waits by handle too, so order holds.
        assert_eq!(q.push_shared(&small, 1 << 20, &mut t), Enqueue::Enqueued);
        assert_eq!(t.total(), q.owed_bytes());
        let (bytes, iovecs) = sent_bytes(&mut q, &mut t, 16);
        let mut want = [&small[..], &small[..]].concat();
        want.extend_from_slice(&large);
        want.extend_from_slice(&small);
        assert_eq!(bytes, want);
        assert_eq!(
            iovecs, 3,
            "both copied frames in one iovec, then two handles"
        );
        assert_eq!((q.owed_bytes(), t.total()), (0, 0));
        assert!(
            small.is_unique() && large.is_unique(),
            "every handle released"
        );
        assert!(q.release_if_empty(), "a drained queue owns no heap");
        assert_eq!(q.heap_bytes(), 0);
        assert!(t.spare_bytes() > 0, "its queue went back to the spares");
    }

    #[test]
    fn a_partly_sent_copy_resumes_before_what_was_copied_meanwhile() {
        let mut q = Outbound::default();
        let mut t = Owed::default();
        for s in ["aaaa", "bbbb"] {
            q.push_shared(&b(s), 1000, &mut t);
        }
        let mut batch = Batch::default();
        q.take_batch(8, &mut batch, &mut t);
        assert_eq!(batch.copied, b"aaaabbbb");
        // While it is in flight, more small frames are copied into a new buffer.
        q.push_shared(&b("cccc"), 1000, &mut t);
        q.complete(&mut batch, 6, &mut t); // "aaaabb"
        assert!(batch.is_empty());
        // What is owed: "bb" and "cccc", each now a handle.
        assert_eq!(q.owed_bytes(), 2 + 4 + 2 * O);
        assert_eq!(t.total(), q.owed_bytes());
        // A discard keeps the partly sent rest only.
        q.push_shared(&b("dddd"), 1000, &mut t);
        let (bytes, _) = sent_bytes(&mut q, &mut t, 8);
        assert_eq!(bytes, b"bbccccdddd");
        assert_eq!((q.owed_bytes(), t.total()), (0, 0));
        q.push_shared(&b("eeee"), 1000, &mut t);
        q.push_shared(&b("ffff"), 1000, &mut t);
        let mut batch = Batch::default();
        q.take_batch(8, &mut batch, &mut t);
        q.push_shared(&b("gggg"), 1000, &mut t);
        q.complete(&mut batch, 5, &mut t);
        q.discard_queued(&mut t);
        let (bytes, _) = sent_bytes(&mut q, &mut t, 8);
        assert_eq!(
            bytes, b"fff",
            "the rest of the partly sent batch survives the discard"
        );
        assert_eq!((q.owed_bytes(), t.total()), (0, 0));
    }

    #[test]
    fn the_limit_is_checked_at_the_handle_cost_for_copies_too() {
        let mut q = Outbound::default();
        let mut t = Owed::default();
        let f = b("0123456789");
        let limit = 3 * (10 + O);
        let mut n = 0;
        while q.push_shared(&f, limit, &mut t) == Enqueue::Enqueued {
            n += 1;
            assert!(n < 100, "the limit must stop a flood");
        }
        // Copies cost less than handles, so at least as many fit as by handle.
        assert!(n >= 3, "{n}");
        assert!(q.owed_bytes() + 10 + O > limit);
        q.clear(&mut t);
        assert_eq!(t.total(), 0);
    }

    #[test]
    fn spares_are_bounded_and_drained_buffers_shrink() {
        let mut t = Owed::default();
        let big = Bytes::from(vec![b'x'; COPY_FRAME_BYTES_MAX]);
        let mut conns: Vec<Outbound> = (0..64).map(|_| Outbound::default()).collect();
        for q in &mut conns {
            for _ in 0..16 {
                q.push_shared(&big, 1 << 20, &mut t);
            }
        }
        for q in &mut conns {
            let (bytes, _) = sent_bytes(q, &mut t, 8);
            assert_eq!(bytes.len(), 16 * COPY_FRAME_BYTES_MAX);
        }
        assert_eq!(t.total(), 0);
        assert!(t.spare_bytes() <= SPARE_BYTES_MAX);
        // Each kept spare gave up the 16 KiB buffer it grew (over KEEP_COPIED_BYTES_MAX).
        assert!(t.spare_bytes() <= 64 * (std::mem::size_of::<Queue>() + KEEP_COPIED_BYTES_MAX));
        let mut batch = Batch::default();
        batch.copied.reserve(KEEP_COPIED_BYTES_MAX + 1);
        batch.clear();
        assert_eq!(batch.copied.capacity(), 0);
    }

    #[test]
    fn a_batch_of_one_run_is_sent_without_iovecs() {
        let mut t = Owed::default();
        let mut q = Outbound::default();
        let mut batch = Batch::default();
        assert_eq!(batch.single_run(), None, "nothing to send");
        q.push_shared(&b("ab"), 1000, &mut t);
        q.push_shared(&b("cd"), 1000, &mut t);
        q.take_batch(8, &mut batch, &mut t);
        assert_eq!(
            batch.single_run(),
            Some(&b"abcd"[..]),
            "copied frames are one run"
        );
        q.complete(&mut batch, 4, &mut t);
        let big = Bytes::from(vec![b'x'; COPY_FRAME_BYTES_MAX + 1]);
        q.push_shared(&big, 1 << 20, &mut t);
        q.take_batch(8, &mut batch, &mut t);
        assert_eq!(batch.single_run(), Some(&big[..]), "one handle is one run");
        q.complete(&mut batch, big.len(), &mut t);
        q.push_shared(&b("ab"), 1 << 20, &mut t);
        q.push_shared(&big, 1 << 20, &mut t);
        q.take_batch(8, &mut batch, &mut t);
        assert_eq!(
            batch.single_run(),
            None,
            "copied bytes and a handle are two"
        );
    }

    #[test]
    fn a_reservation_grows_the_buffer_once_and_never_leaves_an_empty_queue() {
        let mut t = Owed::default();
        let mut q = Outbound::default();
        let frame = Bytes::from(vec![b'x'; 100]);
        q.reserve_copied(10 * 100, 1 << 20, &mut t);
        let at = q.queue.as_ref().unwrap().copied.as_ptr();
        for _ in 0..10 {
            assert_eq!(q.push_shared(&frame, 1 << 20, &mut t), Enqueue::Enqueued);
        }
        assert_eq!(
            q.queue.as_ref().unwrap().copied.as_ptr(),
            at,
            "ten frames, no reallocation"
        );
        assert_eq!(t.total(), 1000, "a reservation is not owed");
        q.clear(&mut t);
        // Past the limit nothing is made: the frames will be refused, and an empty queue left
        // attached would never be flushed back to the spares.
        let mut idle = Outbound::default();
        idle.reserve_copied(1000, 1000, &mut t);
        assert_eq!(idle.heap_bytes(), 0);
        idle.reserve_copied(0, 1 << 20, &mut t);
        assert_eq!(idle.heap_bytes(), 0, "nothing to reserve");
    }

    #[test]
    fn a_run_is_queued_as_one_frame_of_its_size() {
        let frames: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![b'a' + i; 60])).collect();
        let joined: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let long = Bytes::from(joined.clone());
        let short = Bytes::from(joined[..120].to_vec());
        assert!(short.len() <= COPY_FRAME_BYTES_MAX && long.len() > COPY_FRAME_BYTES_MAX);
        // A short run is copied (no handle), a long one shared by one handle.
        let (mut q, mut t) = (Outbound::default(), Owed::default());
        assert!(q.push_run(&short, 1 << 20, &mut t));
        assert!(short.is_unique(), "a short run is copied");
        assert!(q.push_run(&long, 1 << 20, &mut t));
        assert!(!long.is_unique(), "a long run is shared");
        assert_eq!(q.owed_bytes(), short.len() + long.len() + O);
        assert_eq!(t.total(), q.owed_bytes());
        let (bytes, iovecs) = sent_bytes(&mut q, &mut t, 16);
        assert_eq!(bytes, [&short[..], &long[..]].concat());
        assert_eq!(iovecs, 2);
        assert!(long.is_unique(), "the handle went with the send");
        // Refused past the limit, changing nothing; within it, each frame would fit alone.
        let exact = long.len() + O;
        for limit in [exact, exact - 1] {
            let (mut whole, mut t2) = (Outbound::default(), Owed::default());
            let took = whole.push_run(&long, limit, &mut t2);
            assert_eq!(took, limit == exact, "limit {limit}");
            if took {
                let (mut one, mut t1) = (Outbound::default(), Owed::default());
                for f in &frames {
                    assert_eq!(one.push_shared(f, limit, &mut t1), Enqueue::Enqueued);
                }
                assert_eq!(
                    sent_bytes(&mut whole, &mut t2, 16).0,
                    sent_bytes(&mut one, &mut t1, 16).0
                );
            } else {
                assert_eq!(
                    (whole.owed_bytes(), t2.total(), whole.heap_bytes()),
                    (0, 0, 0)
                );
            }
        }
        // Behind a waiting handle even a short run goes by handle, so order holds.
        let (mut q, mut t) = (Outbound::default(), Owed::default());
        let large = Bytes::from(vec![b'L'; COPY_FRAME_BYTES_MAX + 1]);
        assert_eq!(q.push_shared(&large, 1 << 20, &mut t), Enqueue::Enqueued);
        assert!(q.push_run(&short, 1 << 20, &mut t));
        assert!(!short.is_unique());
        assert_eq!(
            sent_bytes(&mut q, &mut t, 16).0,
            [&large[..], &short[..]].concat()
        );
        assert!(
            !q.push_run(&short.slice(..1), 1 << 20, &mut t),
            "not a frame"
        );
        assert_eq!(t.total(), 0);
    }
}
