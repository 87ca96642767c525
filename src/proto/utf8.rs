//! Incremental UTF-8 validation for text messages that arrive in fragments: fails as soon as a
//! byte sequence can no longer become valid (RFC 6455 §8.1 "fail fast"), holds at most 3 bytes.

/// Validator state carried between fragments.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {}

/// The input is not, and cannot become, valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// Validates the next piece of the message.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), InvalidUtf8> {
        todo!("{bytes:?}")
    }
    /// The message ended: an unfinished code point is an error.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        todo!()
    }
}
