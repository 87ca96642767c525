//! permessage-deflate (RFC 7692): the negotiation in the upgrade handshake, and the codec that
//! compresses a message payload once and inflates a client's compressed message within a bound.
//!
//! Owns: the decision "which `Sec-WebSocket-Extensions` offer do we accept, and what do we
//! answer", and the exact DEFLATE bytes of a compressed payload (§7.2.1).
//!
//! Must not: keep an LZ77 window between messages. The server always answers with
//! `server_no_context_takeover; client_no_context_takeover`, so every message is compressed and
//! inflated on its own: one compressed frame can be shared by every subscriber (encode once), and
//! one inflater per shard serves all of its connections, reset before each message.
//!
//! Invariants:
//! - `negotiate` is a pure function of the header values; a malformed or unacceptable offer is
//!   skipped (the extension is declined), never a handshake failure (§5: "the server ... MAY
//!   decline"; §7.1: a server declines an offer it does not accept).
//! - `Inflater::inflate` never writes more than `max_bytes + INFLATE_CHUNK_BYTES` bytes of
//!   output, whatever the compression ratio of its input: a "zip bomb" is refused with `TooBig`.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name (§7).
pub const NAME: &str = "permessage-deflate";

/// The `Sec-WebSocket-Extensions` value of our 101 response.
///
/// §7.1.1.1: a server MAY add `server_no_context_takeover` to its response even when the offer
/// did not contain it. §7.1.1.2: a server MAY add `client_no_context_takeover` likewise ("the
/// server ... MAY include it ... even if the client did not"). Neither window-bits parameter is
/// sent: §7.1.2.1 lets the server omit `server_max_window_bits` (the client then accepts any
/// window up to 15), and §7.1.2.2 lets it omit `client_max_window_bits` whether or not it was
/// offered. With no context takeover on either side, the window sizes only bound memory inside
/// one message, and our inflater always has the full 32 KiB window.
pub const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The empty stored block a sync flush ends with; §7.2.1 removes it from the wire and §7.2.2 has
/// the receiver put it back before inflating.
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output grows by at most this much per inflate step, so the bound is checked at this grain.
pub const INFLATE_CHUNK_BYTES: usize = 16 * 1024;

/// The largest window (log2 bytes) the server compresses with, and assumes when a client does
/// not limit it (§7.1.2.1: 15 when `server_max_window_bits` is absent).
pub const WINDOW_BITS_MAX: u8 = 15;

/// The smallest `server_max_window_bits` accepted: zlib's raw DEFLATE has no 256-byte window
/// (it compresses with 512 bytes when asked for 8), so an offer of 8 is declined.
pub const WINDOW_BITS_MIN: u8 = 9;

/// The server window of one offer (an extension name and its parameters) if it is acceptable.
///
/// §7.1: "A server MUST decline an extension negotiation offer for this extension if ... The
/// negotiation offer contains an extension parameter not defined for use in an offer / ... with
/// an invalid value / multiple extension parameters with the same name."
fn acceptable_offer(offer: &str) -> Option<u8> {
    let mut parts = offer.split(';');
    let name = parts.next().unwrap_or("").trim();
    if !name.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen = [false; 4];
    let mut server_bits = WINDOW_BITS_MAX;
    for param in parts {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (param.trim(), None),
        };
        let value = match value.map(unquote) {
            None => None,
            Some(Some(v)) => Some(v),
            // A quoted string that is not closed, or a value that is neither a token nor one.
            Some(None) => return None,
        };
        let index = match key.to_ascii_lowercase().as_str() {
            // §7.1.1.1 / §7.1.1.2: these two have no value.
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            // §7.1.2.1: a value is required, an integer 8..=15; the server accepts it by
            // answering with "the same or smaller value". Accepted from 9 (WINDOW_BITS_MIN).
            "server_max_window_bits" => match value.and_then(window_bits) {
                Some(bits) if bits >= WINDOW_BITS_MIN => {
                    server_bits = bits;
                    2
                }
                _ => return None,
            },
            // §7.1.2.2: no value, or an integer 8..=15; it only announces what the client
            // supports, and we need not answer it.
            "client_max_window_bits" => match value {
                None => 3,
                Some(v) if window_bits(v).is_some() => 3,
                _ => return None,
            },
            _ => return None,
        };
        if seen[index] {
            return None;
        }
        seen[index] = true;
    }
    Some(server_bits)
}

/// §7.1.2: "The value ... MUST conform to the ABNF: 1*DIGIT", and be 8 to 15 with no leading 0.
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || value.len() > 2 || value.starts_with('0') {
        return None;
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|b| (8..=15).contains(b))
}

/// A parameter value: a token, or a quoted string (RFC 6455 §9.1 allows both; RFC 7692 §7.1
/// says a quoted value must conform after unquoting). `None`: malformed.
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            // Window bits are digits: a backslash escape or a quote inside is never valid.
            (!inner.contains(['"', '\\'])).then_some(inner)
        }
        None => (!value.is_empty() && !value.contains('"')).then_some(value),
    }
}

/// Splits a header value into offers at commas outside quoted strings (RFC 6455 §9.1: the
/// header's values form one comma-separated list).
fn offers(value: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut quoted = false;
    let mut cuts = Vec::new();
    for (i, b) in value.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                cuts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    cuts.push(&value[start..]);
    cuts.into_iter()
}

/// The first acceptable permessage-deflate offer in the `Sec-WebSocket-Extensions` header values
/// (every occurrence, in order: §9.1 lets the header repeat; offers are in the client's order of
/// preference, §5.1): the largest window, in bits, the server may compress with for this client
/// (`WINDOW_BITS_MAX` unless the offer limits it). `None`: the extension is declined.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<u8> {
    values
        .into_iter()
        .flat_map(offers)
        .find_map(acceptable_offer)
}

/// The `Sec-WebSocket-Extensions` value of our 101 for an agreed server window: `RESPONSE`, with
/// `server_max_window_bits` echoed when the client limited it (§7.1.2.1: the server "MUST
/// include" it then, with the same or a smaller value).
pub fn response(server_window_bits: u8) -> String {
    if server_window_bits >= WINDOW_BITS_MAX {
        RESPONSE.to_owned()
    } else {
        format!("{RESPONSE}; server_max_window_bits={server_window_bits}")
    }
}

/// Whether a message compressed with the full window may go to a client that limited the server
/// window to `window_bits`. Without context takeover every message starts with an empty window,
/// so no back-reference reaches further than the bytes of the message before it: a payload of at
/// most `2^window_bits` bytes never refers past the client's window, whatever window compressed
/// it. A longer one goes plain (RSV1 is per message, §6).
pub fn fits_window(payload_len: usize, window_bits: u8) -> bool {
    window_bits >= WINDOW_BITS_MAX || payload_len <= 1usize << window_bits
}

/// Compresses one message payload, without context (§7.2.1, "server_no_context_takeover").
/// One per shard, reset before each message: it holds the LZ77 window and hash tables (about
/// 256 KiB), never a connection's state.
pub struct Compressor {
    inner: Compress,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compressor")
    }
}

impl Default for Compressor {
    fn default() -> Self {
        // Level 6 (zlib's default): nearly all of level 9's ratio on JSON at a fraction of its
        // time. Raw DEFLATE: no zlib header or checksum (§7.2.1 compresses "using DEFLATE").
        Compressor {
            inner: Compress::new(Compression::new(6), false),
        }
    }
}

impl Compressor {
    /// A compressor whose LZ77 window is `2^window_bits` bytes (`WINDOW_BITS_MIN..=15`), for a
    /// client that limited the server window (§7.1.2.1).
    pub fn with_window_bits(window_bits: u8) -> Compressor {
        assert!((WINDOW_BITS_MIN..=WINDOW_BITS_MAX).contains(&window_bits));
        Compressor {
            inner: Compress::new_with_window_bits(Compression::new(6), false, window_bits),
        }
    }

    /// Appends the compressed form of `payload` to `out`: a sync flush's output with its
    /// `00 00 ff ff` tail removed (§7.2.1 steps 1-3).
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        self.inner.reset();
        let start = out.len();
        loop {
            // The worst case of DEFLATE is stored blocks: 5 bytes per 64 KiB plus the flush.
            out.reserve(payload.len() / 2 + 64);
            let consumed = self.inner.total_in() as usize;
            // Infallible: a raw stream fed in order (flate2 reports errors for compression only
            // when the stream is misused).
            let status = self
                .inner
                .compress_vec(&payload[consumed..], out, FlushCompress::Sync)
                .expect("compressing a well-formed stream cannot fail");
            // A sync flush that did not fill the output has written everything it holds.
            if self.inner.total_in() as usize == payload.len()
                && out.len() < out.capacity()
                && status == Status::Ok
            {
                break;
            }
        }
        // §7.2.1 step 2: a sync flush ends with an empty stored block, so nothing is appended.
        assert!(out[start..].ends_with(&TAIL));
        // §7.2.1 step 3: "Remove 4 octets (that are 0x00 0x00 0xff 0xff) from the tail end."
        out.truncate(out.len() - TAIL.len());
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// The inflated message would pass the bound: close 1009 (RFC 6455 §7.4.1).
    TooBig,
    /// Not a valid DEFLATE stream: close 1007, the data is "not consistent with the type of the
    /// message" (RFC 6455 §7.4.1; RFC 7692 §8 leaves the code to the endpoint).
    Corrupt,
}

/// Inflates client messages, without context (the client agreed to
/// `client_no_context_takeover`). One per shard, reset before each message.
pub struct Inflater {
    inner: Decompress,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inflater")
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            inner: Decompress::new(false),
        }
    }
}

#[cfg(test)]
impl Inflater {
    /// An inflater with a smaller window, as a client that limited the server window has.
    fn with_window_bits(window_bits: u8) -> Inflater {
        Inflater {
            inner: Decompress::new_with_window_bits(false, window_bits),
        }
    }
}

impl Inflater {
    /// Inflates one whole message's compressed payload (the concatenated frame payloads) into
    /// `out` (cleared first), appending the tail §7.2.1 removed (§7.2.2). Refuses with `TooBig`
    /// as soon as the output passes `max_bytes`: at most one chunk is written past it.
    pub fn inflate(
        &mut self,
        compressed: &[u8],
        max_bytes: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        self.inner.reset(false);
        out.clear();
        for input in [compressed, &TAIL[..]] {
            let mut at = 0;
            loop {
                let len = out.len();
                out.resize(len + INFLATE_CHUNK_BYTES, 0);
                let (in_before, out_before) = (self.inner.total_in(), self.inner.total_out());
                let status =
                    self.inner
                        .decompress(&input[at..], &mut out[len..], FlushDecompress::None);
                let consumed = (self.inner.total_in() - in_before) as usize;
                let produced = (self.inner.total_out() - out_before) as usize;
                out.truncate(len + produced);
                at += consumed;
                let status = status.map_err(|_| InflateError::Corrupt)?;
                if out.len() > max_bytes {
                    return Err(InflateError::TooBig);
                }
                // §7.2.3.4: a block with BFINAL set ends the message; the bytes after it (at
                // least the tail appended here) are ignored.
                if status == Status::StreamEnd {
                    return Ok(());
                }
                // All input taken and room left over: the inflater waits for more input.
                if at == input.len() && produced < INFLATE_CHUNK_BYTES {
                    break;
                }
                if consumed == 0 && produced == 0 {
                    return Err(InflateError::Corrupt);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn yes(value: &str) -> bool {
        negotiate([value]).is_some()
    }

    #[test]
    fn rfc_7692_examples() {
        // §5.2 and §7.1.3's example offers.
        assert!(yes("permessage-deflate"));
        assert!(yes("permessage-deflate; client_max_window_bits"));
        assert!(yes(
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover"
        ));
        assert!(yes("permessage-deflate; server_max_window_bits=15"));
        assert!(yes("permessage-deflate; client_max_window_bits=10"));
        // §5.2: the first offer asks for a window we do not use, the second is the fallback.
        assert!(yes(
            "permessage-deflate; client_max_window_bits; server_max_window_bits=10, \
             permessage-deflate; client_max_window_bits"
        ));
        // The same as two headers: the first offer wins, with the window it asks for.
        assert_eq!(
            negotiate([
                "permessage-deflate; server_max_window_bits=10",
                "permessage-deflate"
            ]),
            Some(10)
        );
        assert_eq!(negotiate(["x, permessage-deflate"]), Some(15));
        assert_eq!(response(15), RESPONSE);
        assert_eq!(response(9), format!("{RESPONSE}; server_max_window_bits=9"));
    }

    #[test]
    fn window_bits_values() {
        assert!(yes("permessage-deflate; client_max_window_bits=8"));
        assert!(yes("permessage-deflate; client_max_window_bits=15"));
        assert!(yes("permessage-deflate; client_max_window_bits=\"12\""));
        assert!(yes("permessage-deflate; server_max_window_bits=\"15\""));
        for bad in ["7", "16", "08", "", "x", "1 5", "\"15", "-9", "150"] {
            let offer = format!("permessage-deflate; client_max_window_bits={bad}");
            assert!(!yes(&offer), "{offer}");
        }
        // §7.1.2.1: server_max_window_bits needs a value; 8 is declined (WINDOW_BITS_MIN).
        assert!(!yes("permessage-deflate; server_max_window_bits"));
        assert!(!yes("permessage-deflate; server_max_window_bits=8"));
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=9"]),
            Some(9)
        );
        // Declined 8, then a fallback offer.
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=8, permessage-deflate"]),
            Some(15)
        );
    }

    #[test]
    fn bad_offers_are_declined() {
        assert_eq!(negotiate([]), None);
        assert!(!yes(""));
        assert!(!yes("x-webkit-deflate-frame"));
        assert!(!yes("permessage-deflate; unknown_param"));
        assert!(!yes("permessage-deflate; server_no_context_takeover=1"));
        assert!(!yes(
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover"
        ));
        assert!(!yes(
            "permessage-deflate; client_max_window_bits; client_max_window_bits=9"
        ));
        // A bad offer is skipped; a good one after it is still taken.
        assert!(yes("permessage-deflate; bogus, permessage-deflate"));
        assert!(yes("foo; a=\"x,y\", PerMessage-Deflate"));
    }

    fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        let mut out = Vec::new();
        Inflater::default().inflate(compressed, max, &mut out)?;
        Ok(out)
    }

    #[test]
    fn rfc_7692_hello() {
        // §7.2.3.1: "Hello" compressed, and §7.2.3.4: with a BFINAL block and a trailing 0x00.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&hello, 100).unwrap(), b"Hello");
        let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(inflate(&bfinal, 100).unwrap(), b"Hello");
        // §7.2.3.3: uncompressed (stored) blocks.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(inflate(&stored, 100).unwrap(), b"Hello");
        // §7.2.3.5: two blocks.
        let two = [
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ];
        assert_eq!(inflate(&two, 100).unwrap(), b"Hello");
        let mut out = Vec::new();
        Compressor::default().compress(b"Hello", &mut out);
        assert_eq!(out, hello);
    }

    #[test]
    fn corrupt_and_too_big() {
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff], 100),
            Err(InflateError::Corrupt)
        );
        let zeros = vec![0u8; 1 << 20];
        let mut z = Vec::new();
        Compressor::default().compress(&zeros, &mut z);
        assert!(z.len() < 2048, "{}", z.len());
        assert_eq!(inflate(&z, (1 << 20) - 1), Err(InflateError::TooBig));
        assert_eq!(inflate(&z, 1 << 20).unwrap().len(), 1 << 20);
        // The bound holds memory down too: refused output stays within one chunk of it.
        let mut out = Vec::new();
        let _ = Inflater::default().inflate(&z, 1000, &mut out);
        assert!(
            out.capacity() <= 1000 + 2 * INFLATE_CHUNK_BYTES,
            "{}",
            out.capacity()
        );
    }

    proptest! {
        #[test]
        fn prop_round_trip(
            payload in prop::collection::vec(prop_oneof![Just(b'a'), Just(b'{'), any::<u8>()],
                0..70_000),
        ) {
            let mut compressor = Compressor::default();
            let mut inflater = Inflater::default();
            let mut z = Vec::new();
            compressor.compress(&payload, &mut z);
            let mut out = Vec::new();
            inflater.inflate(&z, payload.len(), &mut out).unwrap();
            prop_assert_eq!(&out, &payload);
            // The same (reused) codecs give the same bytes: nothing carries over.
            let mut again = Vec::new();
            compressor.compress(&payload, &mut again);
            prop_assert_eq!(&again, &z);
            if !payload.is_empty() {
                prop_assert_eq!(
                    inflater.inflate(&z, payload.len() - 1, &mut out),
                    Err(InflateError::TooBig)
                );
            }
        }

        #[test]
        fn prop_negotiate_never_panics(value in ".{0,80}") {
            let _ = negotiate([value.as_str()]);
        }

        /// A small window's compressor gives a stream that a full-window inflater reads, and a
        /// full-window stream of a payload within the window never reaches past it (checked by
        /// inflating with that window).
        #[test]
        fn prop_windows(
            payload in prop::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>()],
                0..3000),
            bits in WINDOW_BITS_MIN..=WINDOW_BITS_MAX,
        ) {
            let mut z = Vec::new();
            Compressor::with_window_bits(bits).compress(&payload, &mut z);
            let mut out = Vec::new();
            Inflater::default().inflate(&z, payload.len(), &mut out).unwrap();
            prop_assert_eq!(&out, &payload);
            if fits_window(payload.len(), bits) {
                let mut z = Vec::new();
                Compressor::default().compress(&payload, &mut z);
                let mut narrow = Inflater::with_window_bits(bits);
                narrow.inflate(&z, payload.len(), &mut out).unwrap();
                prop_assert_eq!(&out, &payload);
            }
        }
    }
}
