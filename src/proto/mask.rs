//! Client-to-server payload masking (RFC 6455 §5.3), applied word-at-a-time.
//!
//! Owns: the XOR of a payload with its 4-byte masking key. Masking is its own inverse, so the
//! same function masks (the load generator, tests) and unmasks (the decoder).
//! Invariant: the result is byte-for-byte what the naive loop of §5.3 produces,
//! `buf[i] ^= mask[(offset + i) % 4]`, for every offset and length (tested below).

/// XORs `buf` in place with `mask`, where `buf[0]` is payload byte number `offset` of the frame
/// (so a payload split across several reads is unmasked piece by piece).
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    // §5.3: octet i of the payload is XORed with octet (i mod 4) of the key. Rotating the key by
    // the offset makes buf[0] line up with key octet 0, and since 8 is a multiple of 4 the
    // rotated key repeats exactly twice in every 8-byte word.
    let o = offset % 4;
    let key = [
        mask[o],
        mask[(o + 1) % 4],
        mask[(o + 2) % 4],
        mask[(o + 3) % 4],
    ];
    let doubled = [
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ];
    let word = u64::from_ne_bytes(doubled);
    // Native-endian loads and stores keep byte positions where they were, so the XOR with the
    // doubled key is the same as XORing byte by byte; the loads are unaligned-safe because they
    // go through arrays, which is why no `unsafe` is needed. LLVM turns this loop into wide
    // vector XORs.
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        // `chunks_exact_mut(8)` only yields slices of exactly 8 bytes, so this cannot fail.
        let bytes: &mut [u8; 8] = chunk
            .try_into()
            .expect("chunks_exact_mut(8) yields 8 bytes");
        *bytes = (u64::from_ne_bytes(*bytes) ^ word).to_ne_bytes();
    }
    // The remainder (< 8 bytes) starts at a multiple of 8, hence at key octet 0 again.
    for (byte, k) in chunks.into_remainder().iter_mut().zip(doubled) {
        *byte ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The literal §5.3 definition, as the reference.
    fn naive(buf: &mut [u8], mask: [u8; 4], offset: usize) {
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte ^= mask[(offset + i) % 4];
        }
    }

    #[test]
    fn matches_naive_for_small_lengths_and_every_offset() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        for offset in 0..8 {
            for len in 0..40 {
                let original: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut fast = original.clone();
                let mut slow = original.clone();
                apply_mask(&mut fast, mask, offset);
                naive(&mut slow, mask, offset);
                assert_eq!(fast, slow, "offset {offset} len {len}");
            }
        }
    }

    #[test]
    fn rfc_example() {
        // §5.7: "Hello" masked with 37 fa 21 3d.
        let mut payload = *b"Hello";
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(payload, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    #[test]
    fn piecewise_equals_whole() {
        let mask = [1, 2, 3, 4];
        let original: Vec<u8> = (0..100u8).collect();
        let mut whole = original.clone();
        apply_mask(&mut whole, mask, 0);
        for split in 0..original.len() {
            let mut pieces = original.clone();
            let (a, b) = pieces.split_at_mut(split);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, split);
            assert_eq!(pieces, whole, "split {split}");
        }
    }

    proptest! {
        #[test]
        fn prop_matches_naive(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            mask in any::<[u8; 4]>(),
            offset in 0usize..1000,
        ) {
            let mut fast = data.clone();
            let mut slow = data.clone();
            apply_mask(&mut fast, mask, offset);
            naive(&mut slow, mask, offset);
            prop_assert_eq!(&fast, &slow);
            // Masking twice restores the input.
            apply_mask(&mut fast, mask, offset);
            prop_assert_eq!(fast, data);
        }
    }
}
