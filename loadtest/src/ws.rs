//! The client side of RFC 6455, sans-IO: the upgrade request, the 101 check with
//! Sec-WebSocket-Accept (§4.2.2), masked client frames out (§5.3) and an incremental reader of
//! unmasked server frames in (§5.2).
//!
//! The reader keeps no payload: a load generator needs only the first bytes of each message (the
//! sequence number and send time) and its length, so it captures a short prefix and skips the
//! rest. Idle, a connection's reader is a few hundred bytes of inline state and no heap. A
//! reader made with `FrameReader::wide` captures `WIDE_PREFIX_MAX` bytes instead, in one boxed
//! buffer: enough for a JSON envelope (`{"op":"message","channel":C,"offset":N,"data":"...`) up to
//! the payload's header, for the few connections that need it.

/// Bytes of each data message the reader captures (the payload header is 40 bytes).
pub const PREFIX_MAX: usize = 48;
/// Bytes a wide reader captures: a ringcast envelope with a channel name of up to 128
/// characters and the payload header after it.
pub const WIDE_PREFIX_MAX: usize = 256;
/// A control frame's payload limit (§5.5).
const CONTROL_MAX: usize = 125;
/// Refuse frames above this: nothing in a benchmark is that large, and the length would
/// otherwise be trusted from the wire.
const FRAME_BYTES_MAX: u64 = 1 << 31;
/// Compressed bytes of each message a deflate reader captures (`FrameReader::enable_deflate`):
/// enough to inflate the first `WIDE_PREFIX_MAX` bytes of any message seen in a benchmark.
pub const DEFLATE_CAPTURE_MAX: usize = 4096;
/// What a `--deflate` client offers: what browsers send (RFC 7692 §7.1.2.2: the client accepts
/// any `client_max_window_bits` the server names).
pub const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";
/// A handshake response larger than this is an error.
pub const RESPONSE_BYTES_MAX: usize = 8192;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Opcodes (§5.2).
pub mod opcode {
    /// Continuation frame.
    pub const CONTINUATION: u8 = 0x0;
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Binary frame.
    pub const BINARY: u8 = 0x2;
    /// Close frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping frame.
    pub const PING: u8 = 0x9;
    /// Pong frame.
    pub const PONG: u8 = 0xA;
}

/// Standard base64 with padding (RFC 4648 §4), for the 16-byte key and the 20-byte digest.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The Sec-WebSocket-Accept value a server must answer to `key` (§4.2.2 step 5.4).
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    base64(&sha.digest().bytes())
}

/// The upgrade request for `path` on `host` with a base64 `key`, offering permessage-deflate
/// when `deflate` is set.
pub fn request(host: &str, path: &str, key: &str, deflate: bool) -> Vec<u8> {
    let ext = if deflate {
        format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n")
    } else {
        String::new()
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
    )
    .into_bytes()
}

/// Whether a 101 response head accepted permessage-deflate (RFC 7692 §5: the server names the
/// extension in `Sec-WebSocket-Extensions`).
pub fn deflate_accepted(head: &[u8]) -> bool {
    let head = String::from_utf8_lossy(head);
    head.split("\r\n").any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-extensions")
                && value
                    .split(',')
                    .any(|ext| ext.split(';').next().map(str::trim) == Some("permessage-deflate"))
        })
    })
}

/// Outcome of looking at the bytes received so far in answer to the upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// The header is not complete yet.
    Partial,
    /// 101 with the right accept key; frames start at this offset.
    Upgraded(usize),
    /// Anything else, with a short reason for the error table.
    Refused(String),
}

/// Checks a server's answer: status 101 and `Sec-WebSocket-Accept` equal to `expected_accept`.
pub fn check_response(buf: &[u8], expected_accept: &str) -> Response {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > RESPONSE_BYTES_MAX {
            return Response::Refused("response header too large".into());
        }
        return Response::Partial;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut parts = status.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || code != "101" {
        return Response::Refused(format!("status {}", status.trim()));
    }
    let accept = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-accept")
            .then(|| value.trim().to_string())
    });
    match accept {
        Some(a) if a == expected_accept => Response::Upgraded(end + 4),
        Some(_) => Response::Refused("wrong Sec-WebSocket-Accept".into()),
        None => Response::Refused("no Sec-WebSocket-Accept".into()),
    }
}

/// Appends one masked FIN client frame (§5.2, §5.3) to `out`.
pub fn encode_client(op: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | op);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// What the reader found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete data message: text or binary, its first bytes and its total length.
    Message {
        /// Opcode of the first frame was text.
        text: bool,
        /// Up to `PREFIX_MAX` first bytes (`WIDE_PREFIX_MAX` for a wide reader).
        prefix: &'a [u8],
        /// Total payload length over all fragments (as sent: compressed when `compressed`).
        len: u64,
        /// RSV1 was set (RFC 7692 §6): `prefix` holds the first compressed bytes, up to
        /// `DEFLATE_CAPTURE_MAX`.
        compressed: bool,
    },
    /// A ping with its payload (to be echoed in a pong).
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame with its code, if any.
    Close(Option<u16>),
}

/// A server frame that breaks RFC 6455; the connection is dropped and the kind counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// A server frame with the mask bit (§5.1: a client must close).
    Masked,
    /// RSV bits without a negotiated extension (§5.2).
    Reserved,
    /// An opcode that is not defined (§5.2).
    Opcode(u8),
    /// A control frame that is fragmented or longer than 125 bytes (§5.5).
    BadControl,
    /// A continuation without a message, or a new message inside one (§5.4).
    Fragmentation,
    /// A frame longer than this tool accepts.
    TooLarge,
}

impl ReadError {
    /// A short stable name for error tables.
    pub fn name(self) -> &'static str {
        match self {
            ReadError::Masked => "masked server frame",
            ReadError::Reserved => "reserved bits set",
            ReadError::Opcode(_) => "reserved opcode",
            ReadError::BadControl => "bad control frame",
            ReadError::Fragmentation => "bad fragmentation",
            ReadError::TooLarge => "frame too large",
        }
    }
}

/// Incremental reader of server frames: feed it bytes split anywhere.
#[derive(Debug, Clone)]
pub struct FrameReader {
    header: [u8; 10],
    header_len: u8,
    in_payload: bool,
    remaining: u64,
    frame_opcode: u8,
    frame_fin: bool,
    frame_len: u64,
    in_message: bool,
    message_text: bool,
    message_len: u64,
    prefix: [u8; PREFIX_MAX],
    prefix_len: u16,
    /// The capture buffer of a wide reader (then `prefix` is unused).
    wide: Option<Box<[u8; WIDE_PREFIX_MAX]>>,
    /// permessage-deflate was negotiated: RSV1 is allowed on a message's first frame, and a
    /// compressed message is captured here.
    deflate: Option<Box<[u8; DEFLATE_CAPTURE_MAX]>>,
    message_compressed: bool,
    control: [u8; CONTROL_MAX],
    control_len: u8,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader {
            header: [0; 10],
            header_len: 0,
            in_payload: false,
            remaining: 0,
            frame_opcode: 0,
            frame_fin: false,
            frame_len: 0,
            in_message: false,
            message_text: false,
            message_len: 0,
            prefix: [0; PREFIX_MAX],
            prefix_len: 0,
            wide: None,
            deflate: None,
            message_compressed: false,
            control: [0; CONTROL_MAX],
            control_len: 0,
        }
    }
}

/// Header length implied by its first two bytes (server frames are never masked).
fn header_needed(b1: u8) -> usize {
    match b1 & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

impl FrameReader {
    /// A reader that captures the first `WIDE_PREFIX_MAX` bytes of each message.
    pub fn wide() -> FrameReader {
        FrameReader {
            wide: Some(Box::new([0; WIDE_PREFIX_MAX])),
            ..FrameReader::default()
        }
    }

    /// Back to the state of a new reader (for a new connection), keeping its width; a new
    /// connection negotiates deflate again.
    pub fn reset(&mut self) {
        let wide = self.wide.take();
        *self = FrameReader {
            wide,
            ..FrameReader::default()
        };
    }

    /// Bytes of each message's start this reader hands on (uncompressed).
    pub fn prefix_width(&self) -> usize {
        if self.wide.is_some() {
            WIDE_PREFIX_MAX
        } else {
            PREFIX_MAX
        }
    }

    /// permessage-deflate was negotiated on this connection (RFC 7692 §6).
    pub fn enable_deflate(&mut self) {
        if self.deflate.is_none() {
            self.deflate = Some(Box::new([0; DEFLATE_CAPTURE_MAX]));
        }
    }

    /// Consumes `input`, calling `sink` for each complete message or control frame.
    pub fn feed(
        &mut self,
        input: &[u8],
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ReadError> {
        let mut i = 0;
        while i < input.len() {
            if let Some(used) = self.whole_message(&input[i..], sink) {
                i += used;
                continue;
            }
            if !self.in_payload {
                i += self.take_header(&input[i..])?;
                if self.in_payload && self.remaining == 0 {
                    self.finish_frame(sink);
                }
                continue;
            }
            let take = (input.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            self.capture(&input[i..i + take]);
            self.remaining -= take as u64;
            i += take;
            if self.remaining == 0 {
                self.finish_frame(sink);
            }
        }
        Ok(())
    }

    /// The common case read without the state machine: between messages, `input` starts with
    /// a whole unfragmented, uncompressed text or binary frame of at most 65,535 bytes. Its
    /// message goes to `sink` lent from `input` (no copy into the reader) and the bytes it took
    /// are returned; `None` leaves everything to the general path. `sink` gets what the general
    /// path would give (a test feeds both ways), and the reader stays between messages: the
    /// per-message fields the general path sets are reset by the next frame's header before
    /// they are read, so they are not written here.
    fn whole_message(&mut self, input: &[u8], sink: &mut impl FnMut(Event<'_>)) -> Option<usize> {
        if self.in_payload || self.header_len != 0 || self.in_message {
            return None;
        }
        let (&b0, &b1) = (input.first()?, input.get(1)?);
        // FIN, no RSV bit, text or binary; unmasked, and a 7- or 16-bit length.
        let text = match b0 {
            0x81 => true,
            0x82 => false,
            _ => return None,
        };
        let (header, len) = match b1 {
            0..=125 => (2, usize::from(b1)),
            126 => (
                4,
                usize::from(u16::from_be_bytes([*input.get(2)?, *input.get(3)?])),
            ),
            _ => return None,
        };
        let payload = input.get(header..header + len)?;
        sink(Event::Message {
            text,
            prefix: &payload[..len.min(self.prefix_width())],
            len: len as u64,
            compressed: false,
        });
        Some(header + len)
    }

    /// Takes header bytes from `input`; returns how many it used. Sets `in_payload` once the
    /// header is complete and valid.
    fn take_header(&mut self, input: &[u8]) -> Result<usize, ReadError> {
        let mut used = 0;
        while used < input.len() {
            let have = usize::from(self.header_len);
            let needed = if have < 2 {
                2
            } else {
                header_needed(self.header[1])
            };
            if have == 2 && self.header[1] & 0x80 != 0 {
                return Err(ReadError::Masked);
            }
            if have == needed {
                break;
            }
            let take = (needed - have).min(input.len() - used);
            self.header[have..have + take].copy_from_slice(&input[used..used + take]);
            self.header_len += take as u8;
            used += take;
        }
        let have = usize::from(self.header_len);
        if have < 2 {
            return Ok(used);
        }
        if self.header[1] & 0x80 != 0 {
            return Err(ReadError::Masked);
        }
        if have < header_needed(self.header[1]) {
            return Ok(used);
        }
        self.start_frame()?;
        Ok(used)
    }

    fn start_frame(&mut self) -> Result<(), ReadError> {
        let (b0, b1) = (self.header[0], self.header[1]);
        self.header_len = 0;
        // RSV1 marks a compressed message on its first frame only (RFC 7692 §6.1); RSV2/3 are
        // never defined here.
        let rsv1 = b0 & 0x40 != 0;
        let first_data = matches!(b0 & 0x0f, opcode::TEXT | opcode::BINARY);
        if b0 & 0x30 != 0 || (rsv1 && (self.deflate.is_none() || !first_data)) {
            return Err(ReadError::Reserved);
        }
        let len = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().expect("8 header bytes")),
            n => u64::from(n),
        };
        if len > FRAME_BYTES_MAX {
            return Err(ReadError::TooLarge);
        }
        let (op, fin) = (b0 & 0x0f, b0 & 0x80 != 0);
        match op {
            opcode::TEXT | opcode::BINARY => {
                if self.in_message {
                    return Err(ReadError::Fragmentation);
                }
                self.in_message = true;
                self.message_compressed = rsv1;
                self.message_text = op == opcode::TEXT;
                self.message_len = 0;
                self.prefix_len = 0;
            }
            opcode::CONTINUATION => {
                if !self.in_message {
                    return Err(ReadError::Fragmentation);
                }
            }
            opcode::CLOSE | opcode::PING | opcode::PONG => {
                if !fin || len > CONTROL_MAX as u64 {
                    return Err(ReadError::BadControl);
                }
                self.control_len = 0;
            }
            other => return Err(ReadError::Opcode(other)),
        }
        self.frame_opcode = op;
        self.frame_fin = fin;
        self.frame_len = len;
        self.remaining = len;
        self.in_payload = true;
        Ok(())
    }

    fn capture(&mut self, bytes: &[u8]) {
        if self.frame_opcode >= opcode::CLOSE {
            let at = usize::from(self.control_len);
            self.control[at..at + bytes.len()].copy_from_slice(bytes);
            self.control_len += bytes.len() as u8;
        } else {
            let buf: &mut [u8] = match (&mut self.deflate, &mut self.wide) {
                (Some(d), _) if self.message_compressed => &mut d[..],
                (_, Some(w)) => &mut w[..],
                (_, None) => &mut self.prefix[..],
            };
            let at = usize::from(self.prefix_len);
            let take = bytes.len().min(buf.len() - at);
            buf[at..at + take].copy_from_slice(&bytes[..take]);
            self.prefix_len += take as u16;
        }
    }

    fn finish_frame(&mut self, sink: &mut impl FnMut(Event<'_>)) {
        self.in_payload = false;
        let control = &self.control[..usize::from(self.control_len)];
        match self.frame_opcode {
            opcode::PING => sink(Event::Ping(control)),
            opcode::PONG => sink(Event::Pong),
            opcode::CLOSE => {
                let code =
                    (control.len() >= 2).then(|| u16::from_be_bytes([control[0], control[1]]));
                sink(Event::Close(code));
            }
            _ => {
                self.message_len += self.frame_len;
                if self.frame_fin {
                    self.in_message = false;
                    let buf: &[u8] = match (&self.deflate, &self.wide) {
                        (Some(d), _) if self.message_compressed => &d[..],
                        (_, Some(w)) => &w[..],
                        (_, None) => &self.prefix[..],
                    };
                    sink(Event::Message {
                        text: self.message_text,
                        prefix: &buf[..usize::from(self.prefix_len)],
                        len: self.message_len,
                        compressed: self.message_compressed,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Message(bool, Vec<u8>, u64),
        Ping(Vec<u8>),
        Pong,
        Close(Option<u16>),
    }

    fn collect(
        reader: &mut FrameReader,
        input: &[u8],
        out: &mut Vec<Owned>,
    ) -> Result<(), ReadError> {
        reader.feed(input, &mut |ev| {
            out.push(match ev {
                Event::Message {
                    text, prefix, len, ..
                } => Owned::Message(text, prefix.to_vec(), len),
                Event::Ping(p) => Owned::Ping(p.to_vec()),
                Event::Pong => Owned::Pong,
                Event::Close(c) => Owned::Close(c),
            })
        })
    }

    fn server_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![b0];
        if payload.len() < 126 {
            out.push(payload.len() as u8);
        } else if payload.len() <= 0xffff {
            out.push(126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    fn sample_stream() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend(server_frame(0x81, b"hello"));
        s.extend(server_frame(0x82, &[7u8; 300]));
        s.extend(server_frame(0x89, b"pp"));
        s.extend(server_frame(0x81, &[b'a'; 70_000]));
        s.extend(server_frame(0x01, b"frag-"));
        s.extend(server_frame(0x8A, b""));
        s.extend(server_frame(0x00, b"ment"));
        s.extend(server_frame(0x80, &[b'z'; 100]));
        s.extend(server_frame(0x81, b""));
        s.extend(server_frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e']));
        s
    }

    fn expected() -> Vec<Owned> {
        vec![
            Owned::Message(true, b"hello".to_vec(), 5),
            Owned::Message(false, vec![7u8; PREFIX_MAX], 300),
            Owned::Ping(b"pp".to_vec()),
            Owned::Message(true, vec![b'a'; PREFIX_MAX], 70_000),
            Owned::Pong,
            Owned::Message(
                true,
                b"frag-ment".iter().copied().chain([b'z'; 39]).collect(),
                109,
            ),
            Owned::Message(true, vec![], 0),
            Owned::Close(Some(1000)),
        ]
    }

    #[test]
    fn reads_whole_stream() {
        let mut out = Vec::new();
        collect(&mut FrameReader::default(), &sample_stream(), &mut out).unwrap();
        assert_eq!(out, expected());
    }

    #[test]
    fn split_at_every_byte_gives_the_same_events() {
        let stream = sample_stream();
        // Every two-way split, plus byte-at-a-time.
        for cut in (0..stream.len()).step_by(7).chain([1, 2, 3, 4, 9, 10, 11]) {
            let mut reader = FrameReader::default();
            let mut out = Vec::new();
            collect(&mut reader, &stream[..cut], &mut out).unwrap();
            collect(&mut reader, &stream[cut..], &mut out).unwrap();
            assert_eq!(out, expected(), "split at {cut}");
        }
        let mut reader = FrameReader::default();
        let mut out = Vec::new();
        for b in &stream {
            collect(&mut reader, std::slice::from_ref(b), &mut out).unwrap();
        }
        assert_eq!(out, expected());
    }

    #[test]
    fn whole_frames_are_lent_from_the_input_and_read_as_byte_by_byte() {
        // Small and 16-bit-length frames, text and binary, between control frames and a
        // fragmented message; every reader kind.
        let mut stream = Vec::new();
        for n in [0usize, 1, 47, 48, 49, 125, 126, 255, 256, 257, 65_535] {
            let body: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            stream.extend(server_frame(if n % 2 == 0 { 0x81 } else { 0x82 }, &body));
        }
        stream.extend(server_frame(0x89, b"pp"));
        stream.extend(server_frame(0x01, b"frag-"));
        stream.extend(server_frame(0x80, b"ment"));
        stream.extend(server_frame(0x81, b"after"));
        for make in [FrameReader::default, FrameReader::wide] {
            for deflate in [false, true] {
                let fresh = || {
                    let mut r = make();
                    if deflate {
                        r.enable_deflate();
                    }
                    r
                };
                let (mut whole, mut by_byte) = (Vec::new(), Vec::new());
                let mut reader = fresh();
                collect(&mut reader, &stream, &mut whole).unwrap();
                let mut slow = fresh();
                for b in &stream {
                    collect(&mut slow, std::slice::from_ref(b), &mut by_byte).unwrap();
                }
                assert_eq!(
                    whole,
                    by_byte,
                    "wide {} deflate {deflate}",
                    reader.wide.is_some()
                );
                assert_eq!(whole.len(), 14);
                // Both readers are between messages again, in the same state.
                assert_eq!(
                    (reader.in_payload, reader.in_message, reader.header_len),
                    (slow.in_payload, slow.in_message, slow.header_len)
                );
            }
        }
    }

    #[test]
    fn a_wide_reader_captures_more_and_keeps_its_width() {
        let long: Vec<u8> = (0..300u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut stream = server_frame(0x81, &long);
        stream.extend(server_frame(0x81, b"short"));
        let mut reader = FrameReader::wide();
        let mut out = Vec::new();
        // Split inside the first message's captured part and past it.
        collect(&mut reader, &stream[..100], &mut out).unwrap();
        collect(&mut reader, &stream[100..], &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                Owned::Message(true, long[..WIDE_PREFIX_MAX].to_vec(), 300),
                Owned::Message(true, b"short".to_vec(), 5),
            ]
        );
        // Reset mid-frame: a new connection starts clean and still captures wide.
        collect(&mut reader, &stream[..50], &mut out).unwrap();
        reader.reset();
        assert!(reader.wide.is_some());
        let mut out = Vec::new();
        collect(&mut reader, &stream, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0],
            Owned::Message(true, long[..WIDE_PREFIX_MAX].to_vec(), 300)
        );
        assert!(FrameReader::default().wide.is_none());
    }

    #[test]
    fn rejects_protocol_violations() {
        let mut out = Vec::new();
        let masked = [0x81, 0x81, 1, 2, 3, 4, b'x'];
        assert_eq!(
            collect(&mut FrameReader::default(), &masked, &mut out),
            Err(ReadError::Masked)
        );
        let rsv = server_frame(0xC1, b"x");
        assert_eq!(
            collect(&mut FrameReader::default(), &rsv, &mut out),
            Err(ReadError::Reserved)
        );
        let op = server_frame(0x83, b"x");
        assert_eq!(
            collect(&mut FrameReader::default(), &op, &mut out),
            Err(ReadError::Opcode(3))
        );
        let long_ping = server_frame(0x89, &[0; 126]);
        assert_eq!(
            collect(&mut FrameReader::default(), &long_ping, &mut out),
            Err(ReadError::BadControl)
        );
        let stray = server_frame(0x80, b"x");
        assert_eq!(
            collect(&mut FrameReader::default(), &stray, &mut out),
            Err(ReadError::Fragmentation)
        );
        let mut nested = server_frame(0x01, b"a");
        nested.extend(server_frame(0x81, b"b"));
        assert_eq!(
            collect(&mut FrameReader::default(), &nested, &mut out),
            Err(ReadError::Fragmentation)
        );
    }

    #[test]
    fn rsv1_only_with_deflate_and_only_on_a_first_frame() {
        // Without the extension RSV1 is a protocol error (RFC 6455 §5.2).
        let compressed_text = server_frame(0xC1, &[0xf2, 0x48, 0x05, 0x00]);
        let mut out = Vec::new();
        assert_eq!(
            collect(&mut FrameReader::default(), &compressed_text, &mut out),
            Err(ReadError::Reserved)
        );
        // With it, the message is flagged and its compressed bytes captured whole.
        let mut r = FrameReader::default();
        r.enable_deflate();
        let mut seen = Vec::new();
        r.feed(&compressed_text, &mut |ev| {
            if let Event::Message {
                prefix, compressed, ..
            } = ev
            {
                seen.push((prefix.to_vec(), compressed));
            }
        })
        .expect("valid with deflate");
        assert_eq!(seen, vec![(vec![0xf2, 0x48, 0x05, 0x00], true)]);
        // Plain messages still pass through the plain prefix on a deflate reader.
        seen.clear();
        r.feed(&server_frame(0x81, b"plain"), &mut |ev| {
            if let Event::Message {
                prefix, compressed, ..
            } = ev
            {
                seen.push((prefix.to_vec(), compressed));
            }
        })
        .expect("plain frame");
        assert_eq!(seen, vec![(b"plain".to_vec(), false)]);
        // RSV1 on a continuation or a control frame is an error even with the extension (§6.1).
        let mut cont = server_frame(0x41, b"a");
        cont.extend_from_slice(&server_frame(0xC0, b"b"));
        r.reset();
        r.enable_deflate();
        assert_eq!(collect(&mut r, &cont, &mut out), Err(ReadError::Reserved));
        r.reset();
        r.enable_deflate();
        assert_eq!(
            collect(&mut r, &server_frame(0xC9, b""), &mut out),
            Err(ReadError::Reserved)
        );
    }

    #[test]
    fn deflate_acceptance_is_read_from_the_response_head() {
        assert!(deflate_accepted(
            b"HTTP/1.1 101 Switching Protocols\r\nsec-websocket-extensions: permessage-deflate; \
              server_no_context_takeover; client_no_context_takeover"
        ));
        assert!(!deflate_accepted(
            b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x"
        ));
        assert!(!deflate_accepted(
            b"HTTP/1.1 101 OK\r\nSec-WebSocket-Extensions: x-permessage-deflate"
        ));
        let req = String::from_utf8(request("h", "/ws", "k", true)).expect("ascii");
        assert!(
            req.contains(
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            )
        );
        assert!(
            !String::from_utf8(request("h", "/ws", "k", false))
                .expect("ascii")
                .contains("Extensions")
        );
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[test]
    fn response_check() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x00";
        let accept = accept_key(key);
        assert_eq!(check_response(&ok[..20], &accept), Response::Partial);
        assert_eq!(
            check_response(ok, &accept),
            Response::Upgraded(ok.len() - 2)
        );
        let bad = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(check_response(bad, &accept), Response::Refused(_)));
        let wrong = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert!(matches!(
            check_response(wrong, &accept),
            Response::Refused(_)
        ));
    }

    #[test]
    fn client_frames_are_masked() {
        let mut out = Vec::new();
        encode_client(opcode::TEXT, b"abc", [1, 2, 3, 4], &mut out);
        assert_eq!(out, [0x81, 0x83, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2, b'c' ^ 3]);
        out.clear();
        encode_client(opcode::BINARY, &[0; 200], [0; 4], &mut out);
        assert_eq!(&out[..4], &[0x82, 0x80 | 126, 0, 200]);
        assert_eq!(out.len(), 4 + 4 + 200);
    }
}
