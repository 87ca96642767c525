//! Incremental UTF-8 validation for text messages that arrive in fragments: fails as soon as a
//! byte sequence can no longer become valid (RFC 6455 §8.1 "fail fast"), holds at most 3 bytes.
//!
//! Owns: the rule "is this prefix of a text message still a prefix of some valid UTF-8 text?".
//! The byte-level work is `std::str::from_utf8`, whose `Utf8Error::error_len()` tells apart
//! "invalid" (`Some`) from "cut short at the end" (`None`). It reports `Some` for a partial
//! sequence that can no longer complete (`F4 90`, `ED A0`, `E0 80`), which is what makes the
//! validation fail fast (Autobahn cases 6.*) instead of at the end of the message.
//! Invariant: a `Utf8Validator` holds only the bytes of one incomplete code point (≤ 3), and those
//! bytes are a valid prefix of some code point.

/// Validator state carried between fragments.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// The first bytes of a code point cut by the end of the previous piece.
    pending: [u8; 3],
    /// How many bytes of `pending` are in use (0..=3).
    pending_len: u8,
}

/// The input is not, and cannot become, valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Validates `bytes` as text that may continue later: returns how many bytes at its end are an
/// incomplete (but so far valid) code point, 0..=3, or `InvalidUtf8` when no continuation can
/// make it valid. The caller keeps the returned tail and validates it again with what follows.
pub fn validate_partial(bytes: &[u8]) -> Result<usize, InvalidUtf8> {
    match std::str::from_utf8(bytes) {
        Ok(_) => Ok(0),
        // `None`: the input ended inside a code point whose bytes so far are valid. The tail is
        // at most 3 bytes because a 4-byte sequence that is complete is either valid or an error.
        Err(e) if e.error_len().is_none() => Ok(bytes.len() - e.valid_up_to()),
        Err(_) => Err(InvalidUtf8),
    }
}

/// The length of the code point a lead byte starts (RFC 3629 §4), or `None` when `lead` cannot
/// start a multi-byte sequence.
fn sequence_len(lead: u8) -> Option<usize> {
    match lead {
        0xC2..=0xDF => Some(2),
        0xE0..=0xEF => Some(3),
        0xF0..=0xF4 => Some(4),
        _ => None,
    }
}

impl Utf8Validator {
    /// Validates the next piece of the message.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), InvalidUtf8> {
        let mut rest = bytes;
        if self.pending_len > 0 {
            // Complete the pending code point with the first bytes of this piece, then go on
            // with the remainder from a code point boundary.
            let held = usize::from(self.pending_len);
            let width = sequence_len(self.pending[0]).ok_or(InvalidUtf8)?;
            let take = (width - held).min(rest.len());
            let mut point = [0u8; 4];
            point[..held].copy_from_slice(&self.pending[..held]);
            point[held..held + take].copy_from_slice(&rest[..take]);
            let filled = held + take;
            let tail = validate_partial(&point[..filled])?;
            if tail > 0 {
                // Still incomplete: this piece was shorter than what the code point needs.
                debug_assert_eq!(tail, filled);
                self.keep(&point[..filled]);
                return Ok(());
            }
            rest = &rest[take..];
            self.pending_len = 0;
        }
        let tail = validate_partial(rest)?;
        self.keep(&rest[rest.len() - tail..]);
        Ok(())
    }

    /// The message ended: an unfinished code point is an error. The validator is reset either way,
    /// ready for the next message.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.pending_len == 0;
        self.pending_len = 0;
        if complete { Ok(()) } else { Err(InvalidUtf8) }
    }

    /// Whether an incomplete code point is being held.
    pub fn is_pending(&self) -> bool {
        self.pending_len > 0
    }

    fn keep(&mut self, tail: &[u8]) {
        // `validate_partial` never returns a tail longer than 3 bytes (see there).
        assert!(tail.len() <= self.pending.len());
        self.pending[..tail.len()].copy_from_slice(tail);
        self.pending_len = tail.len() as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The length of the shortest prefix of `s` that is already known to be invalid, if any: the
    /// point where a fail-fast validator must report the error.
    fn fail_point(s: &[u8]) -> Option<usize> {
        (1..=s.len()).find(|&n| validate_partial(&s[..n]).is_err())
    }

    /// Feeds `s` in pieces of the given lengths (the last piece takes the rest); returns the end
    /// offset of the piece that failed, or `None` when all pieces and `finish` passed.
    fn feed_pieces(s: &[u8], cuts: &[usize]) -> Result<(), usize> {
        let mut v = Utf8Validator::default();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&s.len())) {
            let end = cut.clamp(start, s.len());
            v.feed(&s[start..end]).map_err(|_| end)?;
            start = end;
        }
        v.finish().map_err(|_| s.len() + 1)
    }

    #[test]
    fn whole_strings() {
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed("Hello-µ@ßöäüàá-UTF-8!!".as_bytes()), Ok(()));
        assert_eq!(v.finish(), Ok(()));
        assert_eq!(v.feed(&[0xce, 0xba, 0xe1, 0xbd]), Ok(()));
        assert!(v.is_pending());
        assert_eq!(v.finish(), Err(InvalidUtf8));
        assert!(!v.is_pending());
    }

    #[test]
    fn code_point_split_across_many_pieces() {
        let s = "κόσμε 𝄞".as_bytes();
        for first in 0..=s.len() {
            for second in first..=s.len() {
                assert_eq!(feed_pieces(s, &[first, second]), Ok(()), "{first} {second}");
            }
        }
        // One byte at a time.
        let mut v = Utf8Validator::default();
        for b in s {
            assert_eq!(v.feed(std::slice::from_ref(b)), Ok(()));
        }
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn fails_fast_on_partial_sequences_that_cannot_complete() {
        // F4 90 would be above U+10FFFF; ED A0 a surrogate; E0 80 and C0 overlong.
        for bad in [
            &[0xf4, 0x90][..],
            &[0xed, 0xa0],
            &[0xe0, 0x80],
            &[0xc0],
            &[0xff],
            &[0x80],
        ] {
            let mut v = Utf8Validator::default();
            let mut failed = false;
            for b in bad {
                failed |= v.feed(std::slice::from_ref(b)).is_err();
            }
            assert!(failed, "{bad:x?}");
        }
        // Autobahn 6.4.1: the fragment with the invalid byte fails, not the end of the message.
        let mut v = Utf8Validator::default();
        assert_eq!(
            v.feed(&[
                0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5
            ]),
            Ok(())
        );
        assert_eq!(v.feed(&[0xf4, 0x90, 0x80, 0x80]), Err(InvalidUtf8));
    }

    #[test]
    fn empty_pieces_are_harmless() {
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(&[]), Ok(()));
        assert_eq!(v.feed(&[0xe2]), Ok(()));
        assert_eq!(v.feed(&[]), Ok(()));
        assert_eq!(v.feed(&[0x82]), Ok(()));
        assert_eq!(v.feed(&[0xac]), Ok(()));
        assert_eq!(v.finish(), Ok(()));
    }

    fn utf8ish() -> impl Strategy<Value = Vec<u8>> {
        // Mostly valid text with some raw bytes mixed in, so both outcomes are common.
        proptest::collection::vec(
            prop_oneof![
                4 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
                1 => any::<u8>().prop_map(|b| vec![b]),
                1 => proptest::collection::vec(0x80u8..0xc0, 1..3),
            ],
            0..24,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn prop_pieces_fail_exactly_where_the_prefix_becomes_invalid(
            s in utf8ish(),
            mut cuts in proptest::collection::vec(0usize..100, 0..6),
        ) {
            cuts.sort_unstable();
            let cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(s.len())).collect();
            let outcome = feed_pieces(&s, &cuts);
            match (fail_point(&s), std::str::from_utf8(&s)) {
                (Some(n), _) => {
                    // The failing piece is the first one that ends at or after byte n.
                    let ends = cuts.iter().copied().chain(std::iter::once(s.len()));
                    let end = ends.into_iter().find(|&c| c >= n);
                    prop_assert_eq!(outcome, Err(end.unwrap_or(s.len())));
                }
                (None, Ok(_)) => prop_assert_eq!(outcome, Ok(())),
                // Valid so far but cut short: only `finish` fails.
                (None, Err(_)) => prop_assert_eq!(outcome, Err(s.len() + 1)),
            }
        }
    }
}
