//! The benchmark payload and the loss/duplicate accounting built on it.
//!
//! A payload starts with a 40-byte ASCII header — stream id (8 hex digits), sequence number (16)
//! and intended send time in CLOCK_MONOTONIC nanoseconds (16) — padded with `.` to the requested
//! size. ASCII hex so that the same bytes travel as a JSON string on the control socket and as a
//! text frame on the wire, unescaped. The intended time comes from the publish schedule, not from
//! the moment the send happened, so a stalled publisher or server shows up as latency instead of
//! silently thinning the samples (no coordinated omission).
//!
//! A stream is one ordered sequence from one publisher to one channel: a subscriber tracks the
//! next sequence number it expects per stream.

/// Bytes of the header; the smallest payload.
pub const HEADER_LEN: usize = 40;

/// The fields a payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Publisher/channel stream id.
    pub stream: u32,
    /// Sequence number within the stream, from 1.
    pub seq: u64,
    /// Intended send time, CLOCK_MONOTONIC ns.
    pub sent_ns: u64,
}

fn put_hex(out: &mut Vec<u8>, value: u64, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(HEX[(value >> (i * 4) & 0xf) as usize]);
    }
}

/// Appends the payload for `stamp`, `size` bytes long (at least `HEADER_LEN`).
pub fn encode(stamp: Stamp, size: usize, out: &mut Vec<u8>) {
    assert!(size >= HEADER_LEN, "payload below header size");
    put_hex(out, u64::from(stamp.stream), 8);
    put_hex(out, stamp.seq, 16);
    put_hex(out, stamp.sent_ns, 16);
    out.resize(out.len() + size - HEADER_LEN, b'.');
}

/// What pads a payload past its header.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Fill {
    /// `.` repeated: the header then dots (compresses to almost nothing).
    Dots,
    /// A JSON document as a backend would push it, `{"h":"HEADER","events":[{...},...]}`:
    /// numbers, short names and words that vary from message to message, so permessage-deflate
    /// compresses it about as much as real JSON pushes (measured ratios in docs/benchmarks.md).
    Json,
}

/// Words of the JSON fill (chosen by a pseudo-random sequence seeded from the stamp).
const WORDS: [&str; 32] = [
    "alpha", "bravo", "order", "shipped", "pending", "user", "device", "online", "away", "busy",
    "login", "logout", "task", "progress", "done", "failed", "retry", "queue", "chat", "room",
    "message", "notice", "price", "update", "stock", "tick", "score", "level", "match", "team",
    "north", "south",
];

/// Appends the payload for `stamp`, `size` bytes long, padded as `fill` says.
pub fn encode_with(stamp: Stamp, size: usize, fill: Fill, out: &mut Vec<u8>) {
    match fill {
        Fill::Dots => encode(stamp, size, out),
        Fill::Json => encode_json(stamp, size, out),
    }
}

/// Bytes of the JSON fill around the header: `{"h":"` + header + `","events":[` ... `]}`.
pub const JSON_MIN: usize = 6 + HEADER_LEN + 2;

fn encode_json(stamp: Stamp, size: usize, out: &mut Vec<u8>) {
    assert!(size >= JSON_MIN, "payload below the JSON fill's minimum");
    let start = out.len();
    let end = start + size;
    out.extend_from_slice(b"{\"h\":\"");
    put_hex(out, u64::from(stamp.stream), 8);
    put_hex(out, stamp.seq, 16);
    put_hex(out, stamp.sent_ns, 16);
    out.extend_from_slice(b"\"");
    let mut rng = stamp.seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(stamp.stream) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Whole event objects while they fit with room for the closing `]}` (and the opening of the
    // array); then a note string takes the rest, so the size is exact.
    let mut item = Vec::with_capacity(160);
    let mut first = true;
    loop {
        item.clear();
        let r = next();
        let word = |i: u64| WORDS[(i % WORDS.len() as u64) as usize];
        item.extend_from_slice(
            format!(
                "{}{{\"id\":{},\"user\":\"u{}\",\"kind\":\"{}\",\"pct\":{},\"text\":\"{} {} {}\"}}",
                if first { ",\"events\":[" } else { "," },
                r % 100_000,
                (r >> 20) % 10_000,
                word(r >> 8),
                (r >> 32) % 101,
                word(r >> 13),
                word(r >> 18),
                word(r >> 23),
            )
            .as_bytes(),
        );
        if out.len() + item.len() + 2 > end {
            break;
        }
        out.extend_from_slice(&item);
        first = false;
    }
    let closing: &[u8] = if first { b"}" } else { b"]}" };
    // Fill the gap with a note of words (at least `,"n":""` needs 7 bytes; below that, spaces
    // before the closing brace, which JSON allows).
    let gap = end - out.len() - closing.len();
    if gap >= 8 {
        out.extend_from_slice(if first { b",\"n\":\"" } else { b"],\"n\":\"" });
        let body = end - out.len() - 2;
        let mut written = 0;
        while written < body {
            let w = WORDS[(next() % WORDS.len() as u64) as usize].as_bytes();
            let take = w.len().min(body - written);
            out.extend_from_slice(&w[..take]);
            written += take;
            if written < body {
                out.push(b' ');
                written += 1;
            }
        }
        out.extend_from_slice(b"\"}");
    } else {
        out.resize(end - closing.len(), b' ');
        out.extend_from_slice(closing);
    }
    debug_assert_eq!(out.len(), end);
}

/// Appends `payload` as the inside of a JSON string: a payload is ASCII without control
/// characters (both fills), so only `"` and `\\` need escaping (RFC 8259 §7).
pub fn push_json_string_body(payload: &[u8], out: &mut Vec<u8>) {
    for &b in payload {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
}

/// Eight lowercase hex digits (`chunk`, most significant first) as a number, or `None` if any
/// byte is not one. Eight at a time in one register: every received payload's 40-digit header
/// is read here, and a branch or a lookup per digit was the generator's largest single cost
/// at 5 million deliveries a second.
fn hex8(chunk: [u8; 8]) -> Option<u32> {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const fn each(b: u8) -> u64 {
        u64::from_ne_bytes([b; 8])
    }
    let x = u64::from_be_bytes(chunk);
    // Per byte, on its low seven bits (so no sum carries into the next byte): the high bit of
    // `(b + 0x80 - lo)` is set when b >= lo. A byte is a digit when it is >= '0' and not >= ':',
    // a letter when >= 'a' and not >= 'g'; bytes with the high bit set are neither.
    let low = x & LOW7;
    let ge = |lo: u8| (low + each(0x80 - lo)) & HIGH;
    let ascii = !x & HIGH;
    let digit = ge(b'0') & !ge(b':');
    let letter = ge(b'a') & !ge(b'g');
    if (digit | letter) & ascii != HIGH {
        return None;
    }
    // A digit's value is its low nibble; a letter's ('a' = 0x61) its low nibble + 9.
    let nibbles = (x & each(0x0f)) + (letter >> 7) * 9;
    // Pack the nibbles, the most significant (first) one highest.
    let t = (nibbles | nibbles >> 4) & 0x00ff_00ff_00ff_00ff;
    let t = (t | t >> 8) & 0x0000_ffff_0000_ffff;
    Some((t | t >> 16) as u32)
}

fn chunk(bytes: &[u8], at: usize) -> [u8; 8] {
    bytes[at..at + 8].try_into().expect("eight bytes")
}

/// Reads the header from a message's first bytes; `None` when it is not a benchmark payload.
/// A leading `"` is skipped: a payload published as a JSON string (`"data":"..."`) reaches a raw
/// subscriber as that JSON text, quotes included.
pub fn decode(prefix: &[u8]) -> Option<Stamp> {
    let prefix = prefix.strip_prefix(b"\"").unwrap_or(prefix);
    // The JSON fill (`Fill::Json`) puts the header in a first field.
    let prefix = prefix.strip_prefix(b"{\"h\":\"").unwrap_or(prefix);
    if prefix.len() < HEADER_LEN {
        return None;
    }
    let wide = |at| {
        Some(u64::from(hex8(chunk(prefix, at))?) << 32 | u64::from(hex8(chunk(prefix, at + 8))?))
    };
    Some(Stamp {
        stream: hex8(chunk(prefix, 0))?,
        seq: wide(8)?,
        sent_ns: wide(24)?,
    })
}

/// What one received sequence number means for its subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The expected next one.
    InOrder,
    /// Arrived after a gap: this many before it were skipped (lost).
    AfterGap(u64),
    /// Already delivered or already counted lost: a duplicate (or a late frame).
    Duplicate,
}

/// The next sequence number one subscriber expects on one stream. 0 means "nothing seen yet":
/// the first frame starts the count, since a subscription may start mid-stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqTracker {
    /// Next expected sequence number (0: none seen).
    pub next: u64,
}

impl SeqTracker {
    /// Accounts for a received `seq`.
    pub fn observe(&mut self, seq: u64) -> Seen {
        if self.next == 0 || seq == self.next {
            self.next = seq + 1;
            Seen::InOrder
        } else if seq > self.next {
            let gap = seq - self.next;
            self.next = seq + 1;
            Seen::AfterGap(gap)
        } else {
            Seen::Duplicate
        }
    }

    /// Closes an accounting period whose last sequence number was `end - 1`: returns how many
    /// never arrived, and moves the expectation past them so they are counted once.
    pub fn settle(&mut self, end: u64) -> u64 {
        if self.next >= end {
            return 0;
        }
        let missing = end - self.next;
        self.next = end;
        missing
    }

    /// Whether everything before `end` has been seen (or counted).
    pub fn reached(&self, end: u64) -> bool {
        self.next >= end
    }
}

/// How many of `count` publishes sent round-robin over `streams` streams, starting at stream 0,
/// go to each stream: the sequence numbers each subscriber of a stream must receive.
pub fn round_robin_counts(count: u64, streams: usize) -> Vec<u64> {
    assert!(streams > 0, "at least one stream");
    let s = streams as u64;
    (0..s)
        .map(|k| count / s + u64::from(k < count % s))
        .collect()
}

/// The stream (channel, group) subscriber `i` belongs to: subscribers are dealt round-robin,
/// so each stream has `n / streams` or one more, and consecutive connections spread over
/// streams (and over the server's shards).
pub fn stream_of(subscriber: usize, streams: usize) -> usize {
    subscriber % streams
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious reading, one digit at a time, to check `hex8` against.
    fn hex8_by_digit(chunk: [u8; 8]) -> Option<u32> {
        chunk.iter().try_fold(0u32, |v, &b| {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => return None,
            };
            Some(v << 4 | u32::from(d))
        })
    }

    #[test]
    fn hex_takes_lowercase_digits_only() {
        assert_eq!(hex8(*b"0123abcd"), Some(0x0123_abcd));
        assert_eq!(hex8(*b"ffffffff"), Some(u32::MAX));
        assert_eq!(hex8(*b"00000000"), Some(0));
        // Every byte value in every position of a valid chunk, against the digit-by-digit
        // reading (the bounds of both ranges, upper case, the high half and NUL among them).
        let base = *b"9a0f5e1b";
        for at in 0..8 {
            for b in 0..=255u8 {
                let mut c = base;
                c[at] = b;
                assert_eq!(hex8(c), hex8_by_digit(c), "{b:#x} at {at}");
            }
        }
        // Pairs of neighbouring bytes (a carry or borrow between lanes would show here).
        for b1 in 0..=255u8 {
            for b2 in 0..=255u8 {
                let c = [b'f', b1, b2, b'0', b'9', b'a', b1, b2];
                assert_eq!(hex8(c), hex8_by_digit(c), "{b1:#x} {b2:#x}");
            }
        }
    }

    #[test]
    fn json_fill_is_json_of_the_exact_size_and_decodes() {
        for size in [JSON_MIN, JSON_MIN + 1, 60, 100, 181, 1024, 4096] {
            for seq in [1u64, 2, 77] {
                let stamp = Stamp {
                    stream: 3,
                    seq,
                    sent_ns: 123_456_789,
                };
                let mut out = b"xx".to_vec();
                encode_with(stamp, size, Fill::Json, &mut out);
                let p = &out[2..];
                assert_eq!(p.len(), size, "size {size}");
                let v: serde_json::Value = serde_json::from_slice(p).expect("valid JSON");
                assert!(v["h"].is_string());
                assert_eq!(
                    decode(&p[..crate::ws::PREFIX_MAX.min(p.len())]),
                    Some(stamp)
                );
            }
        }
        // Different messages differ past the header (compression sees varied content).
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let st = |seq| Stamp {
            stream: 0,
            seq,
            sent_ns: 0,
        };
        encode_with(st(1), 1024, Fill::Json, &mut a);
        encode_with(st(2), 1024, Fill::Json, &mut b);
        assert_ne!(a[46..], b[46..]);
    }

    #[test]
    fn encode_decode_round_trip() {
        let stamp = Stamp {
            stream: 0xdead_beef,
            seq: 123_456_789,
            sent_ns: u64::MAX - 5,
        };
        let mut out = Vec::new();
        encode(stamp, 64, &mut out);
        assert_eq!(out.len(), 64);
        assert!(out.is_ascii());
        assert_eq!(decode(&out), Some(stamp));
        assert_eq!(decode(&out[..39]), None);
        let quoted: Vec<u8> = [&b"\""[..], &out[..]].concat();
        assert_eq!(decode(&quoted), Some(stamp));
        assert_eq!(
            decode(b"{\"op\":\"welcome\",\"conn\":17}.............."),
            None
        );
    }

    #[test]
    fn loss_and_duplicates() {
        let mut t = SeqTracker::default();
        // The first frame seen starts the count wherever it is.
        assert_eq!(t.observe(5), Seen::InOrder);
        assert_eq!(t.observe(6), Seen::InOrder);
        assert_eq!(t.observe(9), Seen::AfterGap(2));
        assert_eq!(t.observe(9), Seen::Duplicate);
        assert_eq!(t.observe(7), Seen::Duplicate);
        assert_eq!(t.observe(10), Seen::InOrder);
        assert!(t.reached(11));
        assert!(!t.reached(12));
        // 11..=14 never arrive: settled as 4 lost, and only once.
        assert_eq!(t.settle(15), 4);
        assert_eq!(t.settle(15), 0);
        // A frame that arrives after its period was settled is a duplicate, not a second count.
        assert_eq!(t.observe(13), Seen::Duplicate);
        assert_eq!(t.observe(15), Seen::InOrder);
    }

    #[test]
    fn group_accounting() {
        // 10 publishes over 4 groups: groups 0 and 1 get 3, groups 2 and 3 get 2.
        assert_eq!(round_robin_counts(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(round_robin_counts(8, 4), vec![2, 2, 2, 2]);
        assert_eq!(round_robin_counts(1, 3), vec![1, 0, 0]);
        assert_eq!(round_robin_counts(7, 1), vec![7]);
        assert_eq!(round_robin_counts(10, 4).iter().sum::<u64>(), 10);
        // 40 members in groups of 4: 10 groups, each with exactly 4 members.
        let mut members = [0usize; 10];
        for i in 0..40 {
            members[stream_of(i, 10)] += 1;
        }
        assert!(members.iter().all(|&m| m == 4));
        // Each member expects each sequence number of its group once, in order: a member that
        // sees 1, 2, 4 of its group's 4 has lost one; seeing 4 again is a duplicate.
        let mut t = SeqTracker { next: 1 };
        assert_eq!(t.observe(1), Seen::InOrder);
        assert_eq!(t.observe(2), Seen::InOrder);
        assert_eq!(t.observe(4), Seen::AfterGap(1));
        assert_eq!(t.observe(4), Seen::Duplicate);
        assert_eq!(t.settle(5), 0);
        assert_eq!(t.settle(6), 1);
    }
}
