//! permessage-deflate on the receiving side (RFC 7692 §7.2.2), for a load generator: the first
//! bytes of each compressed message, not the whole message.
//!
//! A server that compresses once per message (as ringcast does) sends the same compressed bytes
//! to every subscriber, so the same input arrives here thousands of times. Inflating it once per
//! connection would make the generator, not the server, the saturated side; instead a small cache
//! keyed by the *whole* captured compressed bytes (compared byte for byte, not by a hash) answers
//! repeats. Equal input gives equal output, so every connection's message is still checked: a
//! server that sent one subscriber different bytes misses the cache and is inflated on its own.
//!
//! With `server_no_context_takeover` (which the offer does not require but ringcast always
//! answers) every message starts a fresh DEFLATE stream, so one `Decompress` is reset per miss
//! and no window is kept per connection. A server that kept its context between messages would
//! produce messages that do not inflate on their own: they count as inflate errors.

use flate2::{Decompress, FlushDecompress, Status};

/// Entries of the repeat cache: a few messages in flight at once per channel are enough.
const CACHE_ENTRIES: usize = 16;

/// One shared inflater per generator thread.
pub struct Inflater {
    z: Decompress,
    /// (compressed bytes, wanted prefix length, inflated prefix), replaced round-robin.
    cache: Vec<(Vec<u8>, usize, Vec<u8>)>,
    next_victim: usize,
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
            cache: Vec::with_capacity(CACHE_ENTRIES),
            next_victim: 0,
            inflated: 0,
            repeats: 0,
            errors: 0,
        }
    }
}

impl Inflater {
    /// Up to `want` first bytes of the message whose compressed payload starts with
    /// `compressed` (a prefix of it is enough: DEFLATE decodes front to back). `None` when the
    /// bytes are not a valid raw DEFLATE stream.
    pub fn prefix(&mut self, compressed: &[u8], want: usize) -> Option<&[u8]> {
        if let Some(i) = self
            .cache
            .iter()
            .position(|(c, w, _)| *w == want && c.as_slice() == compressed)
        {
            self.repeats += 1;
            return Some(&self.cache[i].2);
        }
        let mut out = vec![0u8; want];
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
        let entry = (compressed.to_vec(), want, out);
        let at = if self.cache.len() < CACHE_ENTRIES {
            self.cache.push(entry);
            self.cache.len() - 1
        } else {
            let at = self.next_victim;
            self.cache[at] = entry;
            self.next_victim = (at + 1) % CACHE_ENTRIES;
            at
        };
        Some(&self.cache[at].2)
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
