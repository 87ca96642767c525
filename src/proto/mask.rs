//! Client-to-server payload masking (RFC 6455 §5.3), applied word-at-a-time.

/// XORs `buf` in place with `mask`, where `buf[0]` is payload byte number `offset` of the frame
/// (so a payload split across several reads is unmasked piece by piece).
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    todo!("{buf:?}{mask:?}{offset}")
}
