//! io_uring setup and the registered provided-buffer ring. The only place that knows the
//! kernel's ring layout; everything above it sees slices and completions.
//!
//! Kernel versions: multishot accept 5.19, multishot receive and buffer rings (PBUF_RING) 6.0,
//! `SINGLE_ISSUER` 6.0, `DEFER_TASKRUN` 6.1, `COOP_TASKRUN` 5.19, `EXT_ARG` waits 5.11.

use io_uring::{IoUring, types::BufRingEntry};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

/// How the ring was set up (reported at start-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingMode {
    /// `SINGLE_ISSUER | DEFER_TASKRUN`: completions run only when the shard asks (6.1+).
    DeferTaskrun,
    /// `COOP_TASKRUN`: no inter-processor interrupt for task work (5.19+).
    CoopTaskrun,
    /// Neither flag was accepted.
    Plain,
}

/// Builds a ring, trying the cheapest modes first.
pub fn build_ring(entries: u32, cq_entries: u32) -> io::Result<(IoUring, RingMode)> {
    let deferred = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(cq_entries)
        .build(entries);
    if let Ok(ring) = deferred {
        return Ok((ring, RingMode::DeferTaskrun));
    }
    let coop = IoUring::builder()
        .setup_coop_taskrun()
        .setup_cqsize(cq_entries)
        .build(entries);
    if let Ok(ring) = coop {
        return Ok((ring, RingMode::CoopTaskrun));
    }
    let ring = IoUring::builder().setup_cqsize(cq_entries).build(entries)?;
    Ok((ring, RingMode::Plain))
}

/// Explains why io_uring cannot be used, naming the cause and the fix.
pub fn explain_unavailable(err: &io::Error) -> String {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    match (err.raw_os_error(), disabled) {
        (_, Some(2)) => "io_uring is disabled on this host (kernel.io_uring_disabled = 2). \
            Fix: sysctl -w kernel.io_uring_disabled=0 (as root)."
            .to_string(),
        (Some(libc::EPERM), Some(1)) => "io_uring is restricted to a group on this host \
            (kernel.io_uring_disabled = 1). Fix: run ringcast in the group named by \
            kernel.io_uring_group, or sysctl -w kernel.io_uring_disabled=0."
            .to_string(),
        (Some(libc::ENOSYS), _) | (Some(libc::EPERM), _) => format!(
            "io_uring_setup failed ({err}): the kernel lacks io_uring or a seccomp profile blocks \
             it (Docker 25+ and containerd 2.0 RuntimeDefault do). Fix: run on Linux 6.1 or newer \
             with a seccomp profile that allows io_uring_setup, io_uring_enter and \
             io_uring_register (deploy/seccomp-io_uring.json is Docker's default profile plus \
             those three: docker run --security-opt seccomp=deploy/seccomp-io_uring.json)."
        ),
        (Some(libc::ENOMEM), _) => format!(
            "io_uring_setup failed ({err}): not enough locked memory for the rings. \
             Fix: raise `ulimit -l` (memlock) or use a kernel of 5.12 or newer."
        ),
        _ => format!(
            "io_uring setup failed ({err}). ringcast needs Linux 6.1 or newer with io_uring enabled."
        ),
    }
}

/// A registered provided-buffer ring: `count` buffers of `size` bytes that the kernel fills on
/// multishot receives. A buffer belongs to the shard from the completion that names it until
/// `recycle` puts it back.
pub struct BufRing {
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    data: Vec<u8>,
    size: usize,
    count: u16,
    tail: u16,
    group: u16,
}

impl BufRing {
    /// Allocates the buffers and registers them as group `group` on `ring`.
    pub fn new(ring: &IoUring, group: u16, count: usize, size: usize) -> io::Result<BufRing> {
        assert!(count.is_power_of_two());
        assert!(count <= 32_768);
        let ring_bytes = count * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping; the kernel requires page alignment, which mmap gives.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut this = BufRing {
            ring: ptr.cast(),
            ring_bytes,
            data: vec![0u8; count * size],
            size,
            count: count as u16,
            tail: 0,
            group,
        };
        // Fault the buffers in now: they are a fixed cost of the shard, cycled through in FIFO
        // order by the kernel, and would otherwise show up as memory growth under the first
        // bursts of traffic instead of in the start-up footprint.
        for page in this.data.chunks_mut(4096) {
            // SAFETY: a valid, exclusively borrowed byte; volatile so the write is not elided.
            unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 0) };
        }
        for bid in 0..count {
            this.push_entry(bid as u16);
        }
        this.publish_tail();
        // SAFETY: the ring memory stays mapped until drop, after the ring (owned by the shard,
        // dropped first) is gone; `count` entries were mapped.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                this.ring as u64,
                count as u16,
                group,
                0,
            )?;
        }
        Ok(this)
    }

    /// The buffer group id to name in receives.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Bytes held (for the memory budget).
    pub fn bytes(&self) -> usize {
        self.ring_bytes + self.data.len()
    }

    /// The first `len` bytes of buffer `bid`, which a completion just handed to the shard.
    pub fn get(&mut self, bid: u16, len: usize) -> &mut [u8] {
        assert!(bid < self.count);
        assert!(len <= self.size);
        let start = bid as usize * self.size;
        &mut self.data[start..start + len]
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        assert!(bid < self.count);
        self.push_entry(bid);
        self.publish_tail();
    }

    fn push_entry(&mut self, bid: u16) {
        let index = (self.tail & (self.count - 1)) as usize;
        let addr = self.data.as_ptr() as u64 + bid as u64 * self.size as u64;
        // SAFETY: index < count, within the mapping; the kernel reads entries only up to the tail
        // we publish after this write.
        let entry = unsafe { &mut *self.ring.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish_tail(&self) {
        // SAFETY: the tail field lives inside entry 0 of the mapping; the kernel reads it
        // concurrently, hence the atomic store with release ordering after the entry writes.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; the ring that used it is gone (see `Shard`
        // field order) or unregistered.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_bytes);
        }
    }
}

/// What a completion is for; stored in the top byte of `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Multishot accept on the shard's listener.
    Accept = 1,
    /// Multishot receive on a connection (slot + generation).
    Recv = 2,
    /// A vectored send (send slot index).
    Send = 3,
    /// The shard's wake-up eventfd.
    Wake = 4,
    /// A cancellation of a receive (backpressure); its own completion carries nothing.
    Cancel = 5,
}

const KIND_SHIFT: u32 = 56;
const SLOT_SHIFT: u32 = crate::id::GEN_BITS;

/// Packs kind, slot and generation into `user_data`.
pub fn user_data(op: Op, slot: usize, generation: u32) -> u64 {
    debug_assert!(slot < 1 << crate::id::SLOT_BITS);
    debug_assert!(generation < 1 << crate::id::GEN_BITS);
    ((op as u64) << KIND_SHIFT) | ((slot as u64) << SLOT_SHIFT) | u64::from(generation)
}

/// Unpacks `user_data`; `None` for a kind this shard never submits.
pub fn parse_user_data(data: u64) -> Option<(Op, usize, u32)> {
    let op = match data >> KIND_SHIFT {
        1 => Op::Accept,
        2 => Op::Recv,
        3 => Op::Send,
        4 => Op::Wake,
        5 => Op::Cancel,
        _ => return None,
    };
    let slot = ((data >> SLOT_SHIFT) & ((1 << crate::id::SLOT_BITS) - 1)) as usize;
    let generation = (data & ((1 << crate::id::GEN_BITS) - 1)) as u32;
    Some((op, slot, generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trip() {
        for op in [Op::Accept, Op::Recv, Op::Send, Op::Wake, Op::Cancel] {
            let (slot, generation) = (
                (1 << crate::id::SLOT_BITS) - 1,
                (1 << crate::id::GEN_BITS) - 1,
            );
            let ud = user_data(op, slot, generation);
            assert_eq!(parse_user_data(ud), Some((op, slot, generation)));
            let ud = user_data(op, 123_456, 200_000);
            assert_eq!(parse_user_data(ud), Some((op, 123_456, 200_000)));
        }
        assert_eq!(parse_user_data(0), None);
    }
}
