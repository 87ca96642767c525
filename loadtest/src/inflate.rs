//! permessage-deflate on the receiving side (RFC 7692 §7.2.2), for a load generator: the first
//! bytes of each compressed message, not the whole message.
//!
//! A server that compresses once per message (as ringcast does) sends the same compressed bytes
//! to every subscriber, so the same input arrives here thousands of times. Inflating it once per
//! connection would make the generator, not the server, the saturated side; instead a cache
//! indexed by a hash of the captured compressed bytes answers repeats, each hit confirmed by
//! comparing the whole bytes (a hash alone could be fooled). Equal input gives equal output, so every connection's message is still checked: a
//! server that sent one subscriber different bytes misses the cache and is inflated on its own.
//!
//! With `server_no_context_takeover` (which the offer does not require but ringcast always
//! answers) every message starts a fresh DEFLATE stream, so one `Decompress` is reset per miss
//! and no window is kept per connection. A server that kept its context between messages would
//! produce messages that do not inflate on their own: they count as inflate errors.

use flate2::{Decompress, FlushDecompress, Status};

/// Entries of the repeat cache, direct-mapped by a hash of the compressed bytes. Far more than
/// the messages in flight at once (a fan-out at 300/s with 400 ms of spread has ~120): two of
/// them sharing an entry would evict each other on every delivery. With 1,024 entries such a run
/// inflated each message ~300 times (of 10,000 deliveries); entries take heap only once used.
const CACHE_ENTRIES: usize = 16384;

/// One cached answer.
#[derive(Default)]
struct Entry {
    hash: u64,
    want: usize,
    compressed: Vec<u8>,
    plain: Vec<u8>,
}

/// One shared inflater per generator thread.
pub struct Inflater {
    z: Decompress,
    cache: Vec<Entry>,
    /// Messages inflated (cache misses).
    pub inflated: u64,
    /// Messages answered from the cache.
    pub repeats: u64,
    /// Messages whose compressed bytes did not inflate.
    pub errors: u64,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            z: Decompress::new(false),
            cache: (0..CACHE_ENTRIES).map(|_| Entry::default()).collect(),
            inflated: 0,
            repeats: 0,
            errors: 0,
        }
    }
}

/// FNV-1a over 8-byte words (the tail byte by byte): cheap, and only a hint — a hit is confirmed
/// by comparing the bytes.
fn hash(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().expect("chunks of 8"))).wrapping_mul(PRIME);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(PRIME);
    }
    h
}

impl Inflater {
    /// Up to `want` first bytes of the message whose compressed payload starts with
    /// `compressed` (a prefix of it is enough: DEFLATE decodes front to back). `None` when the
    /// bytes are not a valid raw DEFLATE stream.
    pub fn prefix(&mut self, compressed: &[u8], want: usize) -> Option<&[u8]> {
        let h = hash(compressed);
        let at = (h as usize ^ want) % CACHE_ENTRIES;
        let e = &self.cache[at];
        if e.hash == h && e.want == want && e.compressed == compressed && !e.plain.is_empty() {
            self.repeats += 1;
            return Some(&self.cache[at].plain);
        }
        let mut out = std::mem::take(&mut self.cache[at].plain);
        out.clear();
        out.resize(want, 0);
        let mut produced = 0usize;
        self.z.reset(false);
        let mut input = compressed;
        // Feed until the output holds `want` bytes or the input ends; a raw stream cut short
        // (the capture is a prefix, and §7.2.1's 00 00 ff ff tail is not sent) is not an error.
        loop {
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let status = self
                .z
                .decompress(input, &mut out[produced..], FlushDecompress::Sync);
            let used = (self.z.total_in() - in0) as usize;
            produced += (self.z.total_out() - out0) as usize;
            input = &input[used..];
            match status {
                Err(_) => {
                    self.errors += 1;
                    self.cache[at].hash = 0;
                    self.cache[at].plain = Vec::new();
                    return None;
                }
                Ok(Status::StreamEnd) => break,
                Ok(_) if produced == want || input.is_empty() => break,
                Ok(_) if used == 0 && self.z.total_out() == out0 => break,
                Ok(_) => {}
            }
        }
        out.truncate(produced);
        self.inflated += 1;
        let e = &mut self.cache[at];
        e.hash = h;
        e.want = want;
        e.compressed.clear();
        e.compressed.extend_from_slice(compressed);
        e.plain = out;
        // An empty result is never cached as a hit (see the check above): a message that
        // inflates to nothing is rare and cheap to inflate again.
        Some(&self.cache[at].plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// What a permessage-deflate sender puts in the frame: raw DEFLATE, sync-flushed, with the
    /// trailing 00 00 ff ff removed (RFC 7692 §7.2.1).
    fn compress(data: &[u8]) -> Vec<u8> {
        let mut z = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        z.compress_vec(data, &mut out, FlushCompress::Sync)
            .expect("compress");
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }

    fn message(seq: u32) -> Vec<u8> {
        let mut m = format!("{seq:08x}").into_bytes();
        for i in 0..200 {
            m.extend_from_slice(format!("{{\"id\":{i},\"name\":\"user{}\"}},", i * seq).as_bytes());
        }
        m
    }

    #[test]
    fn inflates_the_first_bytes_and_answers_repeats_from_the_cache() {
        let mut inf = Inflater::default();
        let m = message(7);
        let c = compress(&m);
        assert!(c.len() < m.len() / 2, "the test message compresses");
        assert_eq!(inf.prefix(&c, 48), Some(&m[..48]));
        assert_eq!(inf.prefix(&c, 48), Some(&m[..48]));
        assert_eq!((inf.inflated, inf.repeats), (1, 1));
        // A wider prefix of the same bytes is a different answer, not a cache hit.
        assert_eq!(inf.prefix(&c, 256), Some(&m[..256]));
        assert_eq!(inf.inflated, 2);
        // A capture cut short still gives what its bytes hold.
        let short = inf
            .prefix(&c[..c.len() / 2], 4096)
            .expect("valid prefix")
            .to_vec();
        assert!(!short.is_empty() && m.starts_with(&short));
    }

    #[test]
    fn different_bytes_miss_the_cache_and_garbage_is_an_error() {
        let mut inf = Inflater::default();
        for seq in 0..40 {
            let m = message(seq);
            assert_eq!(inf.prefix(&compress(&m), 48), Some(&m[..48]));
        }
        assert_eq!(inf.inflated, 40);
        // 0xff: BTYPE 11 is reserved (RFC 1951 §3.2.3).
        assert_eq!(inf.prefix(&[0xff, 0xff, 0xff], 48), None);
        assert_eq!(inf.errors, 1);
        // A message shorter than the prefix asked for.
        assert_eq!(inf.prefix(&compress(b"hi"), 48), Some(&b"hi"[..]));
    }
}
