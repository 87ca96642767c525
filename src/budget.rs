//! The memory budget of a shard, computed from `Limits`: what it can hold at worst, term by term.
//! `ringcast serve` prints it at start-up and refuses a configuration whose worst case does not
//! fit the host's available memory (unless told to accept the risk).
//!
//! The terms are the io_uring driver's (the epoll driver's fixed part is smaller: one shared
//! receive buffer instead of the buffer ring, no rings in user memory), so the figure is an
//! upper bound for either driver.
//!
//! Fixed terms are allocated (and touched) when the shard starts; variable terms grow with load
//! but each is bounded by a limit. Kernel memory (socket buffers, the rings' kernel side) is not
//! counted: it is governed by the kernel's own limits (`net.ipv4.tcp_mem`, memlock).

use crate::config::Limits;
use crate::driver::uring::{SQ_ENTRIES, SendSlot, cq_entries};
use crate::engine::WHEEL_BUCKETS;
use crate::engine::conn::Conn;
use crate::engine::xmsg::XMsg;
use bytes::Bytes;

/// One line of the budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// What it is.
    pub name: &'static str,
    /// Bytes at worst.
    pub bytes: usize,
    /// Allocated at start (true) or grows with load up to `bytes` (false).
    pub fixed: bool,
}

/// Timer links the wheel reserves up front (more are added as slots are used).
pub fn wheel_keys(limits: &Limits) -> usize {
    limits.conns_per_shard_max.min(1 << 16)
}

/// zlib's deflate state for a window of 2^15 and memLevel 8: `(1 << (15 + 2)) + (1 << (8 + 9))`
/// bytes plus its fixed part (zlib's `deflateInit2` documentation).
const DEFLATE_STATE_BYTES: usize = (1 << 17) + (1 << 17) + 8 * 1024;

/// zlib's inflate state with a 32 KiB window, plus its fixed part.
const INFLATE_STATE_BYTES: usize = (1 << 15) + 8 * 1024;

/// A shard's budget, term by term (`deflate`: the config's `deflate`).
pub fn shard_budget(limits: &Limits, shards: usize, echo: bool, deflate: bool) -> Vec<Term> {
    let conns = limits.conns_per_shard_max;
    let page = 4096;
    let others = shards.saturating_sub(1);
    let message_max = if echo {
        limits.message_bytes_max.max(limits.echo_message_bytes_max)
    } else {
        limits.message_bytes_max
    };
    vec![
        // The provided receive buffers, touched at start (see `BufRing::new`).
        Term {
            name: "receive buffers",
            bytes: limits.recv_buffers * limits.recv_buffer_bytes,
            fixed: true,
        },
        // The buffer ring's entries (16 bytes each), one mapping rounded up to a page.
        Term {
            name: "buffer ring",
            bytes: (limits.recv_buffers * 16).div_ceil(page) * page,
            fixed: true,
        },
        // The io_uring submission (64 B) and completion (16 B) entries, mapped into the process.
        Term {
            name: "io_uring rings",
            bytes: SQ_ENTRIES as usize * 64 + cq_entries(limits) as usize * 16,
            fixed: true,
        },
        // Wheel bucket heads and the links reserved at start (16 bytes per key).
        Term {
            name: "timer wheel",
            bytes: WHEEL_BUCKETS * 4 + wheel_keys(limits) * 16,
            fixed: true,
        },
        // Slab entries: reserved as address space, touched one entry per connection in use.
        Term {
            name: "connection slots",
            bytes: conns * std::mem::size_of::<Option<Conn>>(),
            fixed: false,
        },
        // Timer links beyond the reserved ones.
        Term {
            name: "timer links",
            bytes: conns.saturating_sub(wheel_keys(limits)) * 16,
            fixed: false,
        },
        // Send slots, created on demand up to the limit, each with room for its iovecs and handles.
        Term {
            name: "send slots",
            bytes: limits.sends_in_flight_max
                * (std::mem::size_of::<SendSlot>()
                    + limits.send_iovecs_max
                        * (std::mem::size_of::<libc::iovec>() + std::mem::size_of::<Bytes>())),
            fixed: false,
        },
        // Between sends, a slot keeps its buffer for copied frames (engine::outbound) up to
        // KEEP_COPIED_BYTES_MAX; what is in flight is counted in "outbound queues".
        Term {
            name: "send slot buffers",
            bytes: limits.sends_in_flight_max * crate::engine::outbound::KEEP_COPIED_BYTES_MAX,
            fixed: false,
        },
        // Drained queues kept for reuse, so a connection that receives every turn allocates
        // nothing (engine::outbound::Owed), bounded per shard.
        Term {
            name: "spare queues",
            bytes: crate::engine::outbound::SPARE_BYTES_MAX,
            fixed: false,
        },
        // Incoming cross-shard rings (one per other shard), allocated at start by the mesh.
        Term {
            name: "cross-shard rings",
            bytes: others * limits.xshard_ring_capacity * std::mem::size_of::<XMsg>(),
            fixed: true,
        },
        // Outgoing overflow queues, one per other shard.
        Term {
            name: "cross-shard overflow",
            bytes: others * limits.xshard_overflow_max * std::mem::size_of::<XMsg>(),
            fixed: false,
        },
        // Everything owed to clients, shared frames counted once per queue.
        Term {
            name: "outbound queues",
            bytes: limits.shard_outbound_bytes_max,
            fixed: false,
        },
        // Partly received messages.
        Term {
            name: "message assembly",
            bytes: limits
                .shard_inbound_bytes_max
                .min(conns.saturating_mul(message_max)),
            fixed: false,
        },
        // Upgrade requests being read.
        Term {
            name: "handshake heads",
            bytes: conns.min(limits.handshakes_per_shard_max) * (limits.handshake_bytes_max + 4),
            fixed: false,
        },
        // Partial control lines.
        Term {
            name: "control lines",
            bytes: limits.control_conns_per_shard_max * limits.control_line_bytes_max,
            fixed: false,
        },
        // permessage-deflate: the owner's compressor and `/echo`'s narrow-window one, the
        // inflater, the compressor's output (a message or a published payload) and the inflated
        // message (one chunk past the limit at most).
        Term {
            name: "permessage-deflate",
            bytes: if deflate {
                let compressed = message_max.max(limits.control_line_bytes_max);
                let inflated = message_max + crate::proto::deflate::INFLATE_CHUNK_BYTES;
                2 * DEFLATE_STATE_BYTES + INFLATE_STATE_BYTES + compressed + inflated
            } else {
                0
            },
            fixed: false,
        },
    ]
}

/// Sum of the fixed terms.
pub fn fixed_bytes(terms: &[Term]) -> usize {
    terms.iter().filter(|t| t.fixed).map(|t| t.bytes).sum()
}

/// Sum of all terms.
pub fn total_bytes(terms: &[Term]) -> usize {
    terms.iter().map(|t| t.bytes).sum()
}

/// The host's available memory (`MemAvailable` in /proc/meminfo), if readable.
pub fn mem_available_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Formats a byte count for people.
pub fn human(bytes: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_bounded_and_follows_limits() {
        let limits = Limits::default();
        let terms = shard_budget(&limits, 2, false, false);
        let total = total_bytes(&terms);
        assert!(total > fixed_bytes(&terms));
        let small = Limits {
            shard_outbound_bytes_max: 1 << 20,
            ..Limits::default()
        };
        let diff = total - total_bytes(&shard_budget(&small, 2, false, false));
        assert_eq!(diff, limits.shard_outbound_bytes_max - (1 << 20));
        // One shard has no cross-shard rings.
        let single = shard_budget(&limits, 1, false, false);
        assert_eq!(
            single
                .iter()
                .find(|t| t.name == "cross-shard rings")
                .unwrap()
                .bytes,
            0
        );
        // permessage-deflate costs only when it is on.
        let deflate = total_bytes(&shard_budget(&limits, 2, false, true));
        assert!(
            deflate > total + 2 * DEFLATE_STATE_BYTES,
            "{deflate} vs {total}"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(4 * 1024 * 1024), "4.0 MiB");
    }
}
