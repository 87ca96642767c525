//! The HTTP/1.1 upgrade handshake (RFC 6455 §4.2), parsed with httparse from a buffer the caller
//! accumulates (bytes may arrive one at a time), and the HTTP responses: 101 or a rejection.
//!
//! Owns: the decision "is this request head a valid WebSocket opening handshake, and what does
//! it ask for", and the exact bytes of every response the server sends before frames start.
//!
//! Invariants:
//! - `parse` is a pure function of its input: feeding a growing prefix of a request yields
//!   `Ok(None)` until the head is complete, then the same result the whole buffer gives.
//! - `parse` never looks past `head_bytes_max` bytes, so its cost per call is bounded by the
//!   limit, whatever the peer sends.
//! - A line of the head ends at CRLF or at a bare LF (RFC 9112 §2.2), the head at its first empty
//!   line; responses always use CRLF.
//! - Every rejection is one fixed HTTP status with a one-line body and `Connection: close`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

/// The GUID a server appends to the client's key before hashing (§1.3, §4.2.2).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Most header fields a request head may carry; above it: 431. A browser sends about 15.
pub const HEADERS_MAX: usize = 64;

/// The length of a base64-encoded 16-byte nonce, padding included (§4.1, item 7 of the client
/// requirements: "a randomly selected 16-byte value that has been base64-encoded").
const KEY_BASE64_LEN: usize = 24;

/// A valid upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The path part of the request target, e.g. `/ws`.
    pub path: String,
    /// The query string without `?` (empty when absent).
    pub query: String,
    /// The Origin header, if any.
    pub origin: Option<String>,
    /// Subprotocols offered in Sec-WebSocket-Protocol, in order.
    pub protocols: Vec<String>,
    /// The Sec-WebSocket-Accept value for this request's key.
    pub accept: String,
    /// The first acceptable permessage-deflate offer of Sec-WebSocket-Extensions (RFC 7692 §5;
    /// `deflate::negotiate`): the server window it allows, in bits. Whether the server takes it
    /// up is the engine's choice (config).
    pub deflate_offer: Option<u8>,
    /// Length of the request head in the buffer; bytes after it are already WebSocket frames.
    pub head_len: usize,
}

/// Why a request was refused; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// 400, with a one-line reason.
    BadRequest(&'static str),
    /// 404: no endpoint at this path.
    NotFound,
    /// 426 with `Sec-WebSocket-Version: 13`.
    UpgradeRequired,
    /// 431: the head passed the size limit.
    HeadersTooLarge,
    /// 503: the server is at its connection limit or shutting down.
    Unavailable,
    /// 429: this client address has too many connections.
    TooManyRequests,
    /// 403: the page's Origin is not in `allowed_origins`.
    Forbidden,
    /// 401: the URL's `token` does not verify; the body starts with the token's error code
    /// (`token_invalid: ...`, `token_expired: ...`).
    Unauthorized(&'static str),
}

/// The reasons `parse` gives with `Rejection::BadRequest`, one per rule it checks.
pub mod reason {
    /// The head is not parseable HTTP/1.x.
    pub const MALFORMED: &str = "malformed request head";
    /// §4.1: "The method of the request MUST be GET".
    pub const METHOD: &str = "method must be GET";
    /// §4.1: "the HTTP version MUST be at least 1.1".
    pub const VERSION: &str = "HTTP/1.1 required";
    /// The request target is neither origin-form nor an http(s)/ws(s) absolute-form.
    pub const TARGET: &str = "unsupported request target";
    /// RFC 9112 §3.2: a request without Host, or with two, gets a 400.
    pub const HOST: &str = "exactly one Host header required";
    /// §4.2.1 item 3: no `Upgrade: websocket`. A plain HTTP GET lands here.
    pub const UPGRADE: &str = "not a websocket upgrade (Upgrade: websocket missing)";
    /// §4.2.1 item 4: no `upgrade` token in Connection.
    pub const CONNECTION: &str = "Connection header must include upgrade";
    /// §4.2.1 item 5: Sec-WebSocket-Key missing, repeated, or not a base64 16-byte value.
    pub const KEY: &str = "Sec-WebSocket-Key must be one base64-encoded 16-byte value";
    /// §11.3.5: Sec-WebSocket-Version must not appear more than once.
    pub const VERSION_REPEATED: &str = "Sec-WebSocket-Version repeated";
    /// RFC 6454 §7.3: a request carries at most one Origin; it must be text.
    pub const ORIGIN: &str = "Origin must be one UTF-8 value";
    /// A Sec-WebSocket-Protocol value that is not text.
    pub const PROTOCOL: &str = "Sec-WebSocket-Protocol must be UTF-8";
}

impl Rejection {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            Rejection::BadRequest(_) => 400,
            Rejection::NotFound => 404,
            Rejection::UpgradeRequired => 426,
            Rejection::HeadersTooLarge => 431,
            Rejection::Unavailable => 503,
            Rejection::TooManyRequests => 429,
            Rejection::Forbidden => 403,
            Rejection::Unauthorized(_) => 401,
        }
    }

    /// The status line's reason phrase (RFC 9110 §15, RFC 6585 §5 for 431).
    fn phrase(self) -> &'static str {
        match self {
            Rejection::BadRequest(_) => "Bad Request",
            Rejection::NotFound => "Not Found",
            Rejection::UpgradeRequired => "Upgrade Required",
            Rejection::HeadersTooLarge => "Request Header Fields Too Large",
            Rejection::Unavailable => "Service Unavailable",
            Rejection::TooManyRequests => "Too Many Requests",
            Rejection::Forbidden => "Forbidden",
            Rejection::Unauthorized(_) => "Unauthorized",
        }
    }

    /// The one-line body, without its newline.
    pub fn body(self) -> &'static str {
        match self {
            Rejection::BadRequest(reason) => reason,
            Rejection::NotFound => "no websocket endpoint at this path",
            Rejection::UpgradeRequired => "websocket version 13 required",
            Rejection::HeadersTooLarge => "request head too large",
            Rejection::Unavailable => "server unavailable, retry later",
            Rejection::TooManyRequests => "too many connections from this address",
            Rejection::Forbidden => "this origin may not connect",
            Rejection::Unauthorized(reason) => reason,
        }
    }

    /// A complete HTTP response with a one-line body and `Connection: close`.
    pub fn response(self) -> Bytes {
        // §4.2.2: a server that does not speak the client's version answers 426 and lists the
        // versions it does speak in Sec-WebSocket-Version.
        let version = if self == Rejection::UpgradeRequired {
            "Sec-WebSocket-Version: 13\r\n"
        } else {
            ""
        };
        let body = self.body();
        Bytes::from(format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n{version}\r\n{body}\n",
            self.status(),
            self.phrase(),
            body.len() + 1,
        ))
    }
}

/// Where the head ends: the index just past the first empty line in `buf`.
///
/// RFC 9112 §2.2: "a recipient MAY recognize a single LF as a line terminator and ignore any
/// preceding CR". Tools (`nc`, scripts, hand-written clients) send bare LF, and a head we could
/// not see the end of would wait for the handshake deadline instead of being answered. So a
/// line ends at an LF, and the head at the first LF that closes an empty line: the earliest end
/// of `\n\n` or `\n\r\n`, which covers `\r\n\r\n` and every mix. A bare CR ends nothing (the
/// same section makes it invalid). httparse reads line ends the same way, so both agree on where
/// the frames start.
///
/// A Horspool-style search over the candidate last byte: every byte of an end is `\r` or `\n`,
/// and header text is mostly neither, so it usually skips 2 at a time. It never skips a
/// possible end, so the answer is the earliest one and a prefix of `buf` gives the same answer
/// as soon as it contains it.
fn head_end(buf: &[u8]) -> Option<usize> {
    // The shortest end, `\n\n`, has its last byte at index 1 at the earliest.
    let mut at = 1;
    while at < buf.len() {
        at += match buf[at] {
            b'\n' => {
                let through = &buf[..=at];
                if through.ends_with(b"\n\n") || through.ends_with(b"\n\r\n") {
                    return Some(at + 1);
                }
                // This LF may start an end whose last byte is the next one or the one after.
                1
            }
            // A CR can only be the middle of `\n\r\n`, whose last byte would be the next one.
            b'\r' => 1,
            // No end contains this byte; an end after it is 2 bytes long at least.
            _ => 2,
        };
    }
    None
}

/// Whether a comma-separated header value lists `token`, compared ASCII case-insensitively
/// (RFC 9110 §5.6.1 lists; §4.2.1 makes Upgrade and Connection tokens case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Splits a request target into path and query (§3: the resource name is path plus query).
/// Accepts the origin-form and, as RFC 9112 §3.2.2 requires of servers, the absolute-form.
fn split_target(target: &str) -> Option<(&str, &str)> {
    let origin_form = if target.starts_with('/') {
        target
    } else {
        let (scheme, rest) = target.split_once("://")?;
        let known = ["http", "https", "ws", "wss"];
        if !known.iter().any(|s| scheme.eq_ignore_ascii_case(s)) {
            return None;
        }
        rest.find(['/', '?']).map_or("", |i| &rest[i..])
    };
    let (path, query) = origin_form.split_once('?').unwrap_or((origin_form, ""));
    Some((if path.is_empty() { "/" } else { path }, query))
}

/// Whether `key` is the base64 encoding of exactly 16 bytes (§4.2.1 item 5).
fn key_is_valid(key: &[u8]) -> bool {
    let mut nonce = [0u8; KEY_BASE64_LEN];
    key.len() == KEY_BASE64_LEN && BASE64.decode_slice(key, &mut nonce) == Ok(16)
}

/// A header value as an owned string; bytes that are not UTF-8 (httparse lets obs-text through)
/// are a 400 with `reason`.
fn text(value: &[u8], reason: &'static str) -> Result<String, Rejection> {
    std::str::from_utf8(value)
        .map(str::to_owned)
        .map_err(|_| Rejection::BadRequest(reason))
}

/// Parses the request head in `buf`. `Ok(None)`: need more bytes.
pub fn parse(buf: &[u8], head_bytes_max: usize) -> Result<Option<Request>, Rejection> {
    // The head must end within the first `head_bytes_max` bytes; searching only there bounds the
    // work per call and makes the answer for a long buffer the same as for its prefixes.
    let window = &buf[..buf.len().min(head_bytes_max)];
    let Some(head_len) = head_end(window) else {
        return if buf.len() >= head_bytes_max {
            Err(Rejection::HeadersTooLarge)
        } else {
            Ok(None)
        };
    };

    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(&buf[..head_len]) {
        // httparse ends the head at the same empty line as `head_end`; should the two ever
        // disagree, they would disagree about where the frames start, so the head is refused.
        Ok(httparse::Status::Complete(len)) if len == head_len => {}
        Ok(_) => return Err(Rejection::BadRequest(reason::MALFORMED)),
        Err(httparse::Error::TooManyHeaders) => return Err(Rejection::HeadersTooLarge),
        Err(_) => return Err(Rejection::BadRequest(reason::MALFORMED)),
    }
    if request.method != Some("GET") {
        return Err(Rejection::BadRequest(reason::METHOD));
    }
    // httparse only accepts HTTP/1.0 and HTTP/1.1 and reports the minor version.
    if request.version != Some(1) {
        return Err(Rejection::BadRequest(reason::VERSION));
    }
    let target = request
        .path
        .ok_or(Rejection::BadRequest(reason::MALFORMED))?;
    let (path, query) = split_target(target).ok_or(Rejection::BadRequest(reason::TARGET))?;

    let mut hosts = 0usize;
    let mut upgrade = false;
    let mut connection = false;
    let mut version: Option<&[u8]> = None;
    let mut versions = 0usize;
    let mut key: Option<&[u8]> = None;
    let mut keys = 0usize;
    let mut origin: Option<&[u8]> = None;
    let mut origins = 0usize;
    let mut protocols = Vec::new();
    let mut deflate_offer = None;
    for header in request.headers.iter() {
        let name = header.name;
        let value = header.value.trim_ascii();
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            versions += 1;
            version = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            keys += 1;
            key = Some(value);
        } else if name.eq_ignore_ascii_case("origin") {
            origins += 1;
            origin = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            // §4.2.1 item 8 / §11.3.4: the header may repeat; its values form one list.
            let list =
                std::str::from_utf8(value).map_err(|_| Rejection::BadRequest(reason::PROTOCOL))?;
            protocols.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned),
            );
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            // RFC 6455 §9.1: the header may repeat. A value that is not text is a malformed
            // offer: declined, not a failed handshake (RFC 7692 §5).
            if let Ok(list) = std::str::from_utf8(value) {
                deflate_offer = deflate_offer.or(super::deflate::negotiate([list]));
            }
        }
    }
    if hosts != 1 {
        return Err(Rejection::BadRequest(reason::HOST));
    }
    if !upgrade {
        return Err(Rejection::BadRequest(reason::UPGRADE));
    }
    if !connection {
        return Err(Rejection::BadRequest(reason::CONNECTION));
    }
    if versions > 1 {
        return Err(Rejection::BadRequest(reason::VERSION_REPEATED));
    }
    // §4.2.2: a version other than 13 (or none) gets 426 with the version we speak.
    if version != Some(b"13") {
        return Err(Rejection::UpgradeRequired);
    }
    let key = match key {
        Some(key) if keys == 1 && key_is_valid(key) => key,
        _ => return Err(Rejection::BadRequest(reason::KEY)),
    };
    if origins > 1 {
        return Err(Rejection::BadRequest(reason::ORIGIN));
    }
    let origin = origin.map(|o| text(o, reason::ORIGIN)).transpose()?;

    Ok(Some(Request {
        path: path.to_owned(),
        query: query.to_owned(),
        origin,
        protocols,
        accept: accept_key(key),
        deflate_offer,
        head_len,
    }))
}

/// `base64(sha1(key + GUID))` (§4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key);
    sha1.update(ACCEPT_GUID);
    BASE64.encode(sha1.digest().bytes())
}

/// The `101 Switching Protocols` response, with `protocol` echoed when one was chosen and
/// permessage-deflate accepted when `deflate` holds the agreed server window (RFC 7692 §5: the
/// server answers with one extension element, `deflate::response`).
pub fn response_101(accept: &str, protocol: Option<&str>, deflate: Option<u8>) -> Bytes {
    // §4.2.2 item 5: status line, Upgrade, Connection, Sec-WebSocket-Accept, and the chosen
    // subprotocol only when there is one.
    let mut response = String::with_capacity(160);
    response.push_str(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: ",
    );
    response.push_str(accept);
    response.push_str("\r\n");
    if let Some(protocol) = protocol {
        response.push_str("Sec-WebSocket-Protocol: ");
        response.push_str(protocol);
        response.push_str("\r\n");
    }
    if let Some(window_bits) = deflate {
        response.push_str("Sec-WebSocket-Extensions: ");
        response.push_str(&super::deflate::response(window_bits));
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    Bytes::from(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 8192;

    /// The example request of RFC 6455 §1.2, with `extra` header lines inserted before the end.
    fn rfc_request(extra: &str) -> String {
        format!(
            "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn parse_str(request: &str) -> Result<Option<Request>, Rejection> {
        parse(request.as_bytes(), MAX)
    }

    /// Replaces one header line of the RFC request (matched by its start) with `line`, or
    /// removes it when `line` is empty.
    fn with_header(prefix: &str, line: &str) -> String {
        rfc_request("")
            .split_inclusive("\r\n")
            .map(|l| {
                if l.starts_with(prefix) {
                    line.to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect()
    }

    #[test]
    fn accept_key_rfc_example() {
        // §1.3 / §4.2.2.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_the_rfc_request() {
        let request = rfc_request("");
        let parsed = parse_str(&request).unwrap().unwrap();
        assert_eq!(
            parsed,
            Request {
                path: "/chat".into(),
                query: String::new(),
                origin: Some("http://example.com".into()),
                protocols: vec!["chat".into(), "superchat".into()],
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
                deflate_offer: None,
                head_len: request.len(),
            }
        );
    }

    #[test]
    fn head_len_excludes_following_frames() {
        let mut bytes = rfc_request("").into_bytes();
        let head_len = bytes.len();
        bytes.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        assert_eq!(parse(&bytes, MAX).unwrap().unwrap().head_len, head_len);
    }

    #[test]
    fn incomplete_heads_need_more() {
        assert_eq!(parse(b"", MAX), Ok(None));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n", MAX), Ok(None));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r", MAX), Ok(None));
    }

    #[test]
    fn size_limit() {
        let request = rfc_request("");
        let len = request.len();
        assert!(parse(request.as_bytes(), len).unwrap().is_some());
        assert_eq!(
            parse(request.as_bytes(), len - 1),
            Err(Rejection::HeadersTooLarge)
        );
        // Without an end, the buffer reaching the limit is already too large.
        let endless = "GET / HTTP/1.1\r\nX: ".to_owned() + &"a".repeat(100);
        assert_eq!(
            parse(endless.as_bytes(), 100),
            Err(Rejection::HeadersTooLarge)
        );
        assert_eq!(parse(&endless.as_bytes()[..99], 100), Ok(None));
        // Too many header fields is the same overflow.
        let many: String = (0..HEADERS_MAX).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            parse_str(&rfc_request(&many)),
            Err(Rejection::HeadersTooLarge)
        );
    }

    #[test]
    fn header_names_and_tokens_are_case_insensitive() {
        let request = "GET /a/b?x=1&y=2 HTTP/1.1\r\nhOsT: h\r\nUPGRADE: WebSocket\r\n\
                       connection: keep-alive,  Upgrade \r\nsec-websocket-key: \
                       dGhlIHNhbXBsZSBub25jZQ==\r\nSEC-WEBSOCKET-VERSION: 13\r\n\r\n";
        let parsed = parse_str(request).unwrap().unwrap();
        assert_eq!(parsed.path, "/a/b");
        assert_eq!(parsed.query, "x=1&y=2");
        assert_eq!(parsed.origin, None);
        assert!(parsed.protocols.is_empty());
    }

    #[test]
    fn protocols_from_every_header_in_order() {
        let request = rfc_request("Sec-WebSocket-Protocol: , v2.json ,x\r\n");
        let parsed = parse_str(&request).unwrap().unwrap();
        assert_eq!(parsed.protocols, ["chat", "superchat", "v2.json", "x"]);
    }

    #[test]
    fn request_targets() {
        assert_eq!(split_target("/"), Some(("/", "")));
        assert_eq!(split_target("/ws?"), Some(("/ws", "")));
        assert_eq!(split_target("/ws?a=b?c"), Some(("/ws", "a=b?c")));
        assert_eq!(split_target("http://h:80/ws?q"), Some(("/ws", "q")));
        assert_eq!(split_target("WSS://h"), Some(("/", "")));
        assert_eq!(split_target("ws://h?q"), Some(("/", "q")));
        assert_eq!(split_target("*"), None);
        assert_eq!(split_target("ftp://h/x"), None);
        let request = rfc_request("").replacen("/chat", "*", 1);
        assert_eq!(
            parse_str(&request),
            Err(Rejection::BadRequest(reason::TARGET))
        );
    }

    #[test]
    fn rejections() {
        use Rejection::*;
        let cases: Vec<(String, Rejection)> = vec![
            (
                rfc_request("").replacen("GET", "POST", 1),
                BadRequest(reason::METHOD),
            ),
            (
                rfc_request("").replacen("HTTP/1.1", "HTTP/1.0", 1),
                BadRequest(reason::VERSION),
            ),
            (
                rfc_request("").replacen("HTTP/1.1", "HTTP/2.0", 1),
                BadRequest(reason::MALFORMED),
            ),
            ("GARBAGE\r\n\r\n".into(), BadRequest(reason::MALFORMED)),
            (with_header("Host", ""), BadRequest(reason::HOST)),
            (rfc_request("Host: again\r\n"), BadRequest(reason::HOST)),
            (with_header("Upgrade", ""), BadRequest(reason::UPGRADE)),
            (
                with_header("Upgrade", "Upgrade: h2c\r\n"),
                BadRequest(reason::UPGRADE),
            ),
            (
                with_header("Connection", "Connection: keep-alive\r\n"),
                BadRequest(reason::CONNECTION),
            ),
            (
                with_header("Connection", "Connection: upgrades\r\n"),
                BadRequest(reason::CONNECTION),
            ),
            (with_header("Sec-WebSocket-Version", ""), UpgradeRequired),
            (
                with_header("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8\r\n"),
                UpgradeRequired,
            ),
            (
                with_header("Sec-WebSocket-Version", "Sec-WebSocket-Version: 13, 8\r\n"),
                UpgradeRequired,
            ),
            (
                rfc_request("Sec-WebSocket-Version: 13\r\n"),
                BadRequest(reason::VERSION_REPEATED),
            ),
            (
                with_header("Sec-WebSocket-Key", ""),
                BadRequest(reason::KEY),
            ),
            (
                rfc_request("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
                BadRequest(reason::KEY),
            ),
            // 15 and 17 bytes, a wrong alphabet, missing padding.
            (
                with_header(
                    "Sec-WebSocket-Key",
                    "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\n",
                ),
                BadRequest(reason::KEY),
            ),
            (
                with_header(
                    "Sec-WebSocket-Key",
                    "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=\r\n",
                ),
                BadRequest(reason::KEY),
            ),
            (
                with_header(
                    "Sec-WebSocket-Key",
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ-_\r\n",
                ),
                BadRequest(reason::KEY),
            ),
            (
                with_header(
                    "Sec-WebSocket-Key",
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n",
                ),
                BadRequest(reason::KEY),
            ),
            (
                rfc_request("Origin: http://evil.example\r\n"),
                BadRequest(reason::ORIGIN),
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(parse_str(&request), Err(expected), "{request}");
        }
        // Header values that are not UTF-8 where they become strings.
        let mut bytes = with_header("Origin", "Origin: \u{1}\r\n").into_bytes();
        let at = bytes.windows(9).position(|w| w == b"Origin: \x01").unwrap() + 8;
        bytes[at] = 0xff;
        assert_eq!(parse(&bytes, MAX), Err(BadRequest(reason::ORIGIN)));
        let mut bytes = rfc_request("Sec-WebSocket-Protocol: \u{1}\r\n").into_bytes();
        let at = bytes.iter().position(|&b| b == 1).unwrap();
        bytes[at] = 0xfe;
        assert_eq!(parse(&bytes, MAX), Err(BadRequest(reason::PROTOCOL)));
        // A head ends at its first empty line, bare LF or not: what follows is not part of it.
        let request = "GET / HTTP/1.1\nHost: x\n\nUpgrade: websocket\r\n\r\n";
        assert_eq!(parse_str(request), Err(BadRequest(reason::UPGRADE)));
    }

    /// RFC 9112 §2.2 lets a recipient take a bare LF as a line end; tools such as `nc` and
    /// hand-written clients send one. A bare-LF head and mixed heads parse to the same request
    /// as the CRLF original, whatever the split, and the size limit still counts every byte.
    #[test]
    fn bare_lf_and_mixed_line_ends() {
        let crlf = rfc_request("");
        let expected = parse_str(&crlf).unwrap().unwrap();
        let relined = |keep_crlf: &dyn Fn(usize) -> bool| -> String {
            crlf.split_inclusive("\r\n")
                .enumerate()
                .map(|(i, line)| {
                    if keep_crlf(i) {
                        line.to_owned()
                    } else {
                        line.replace("\r\n", "\n")
                    }
                })
                .collect()
        };
        let bare = relined(&|_| false);
        // The two mixes end the head with `\n\r\n` and `\r\n\n` (9 lines, the last empty).
        let mixed_even = relined(&|i| i % 2 == 0);
        let mixed_odd = relined(&|i| i % 2 == 1);
        assert!(bare.ends_with("13\n\n"));
        assert!(mixed_even.ends_with("13\n\r\n"));
        assert!(mixed_odd.ends_with("13\r\n\n"));
        for head in [&bare, &mixed_even, &mixed_odd] {
            let mut bytes = head.clone().into_bytes();
            // A masked empty text frame right behind the head is not part of it.
            bytes.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
            let whole = parse(&bytes, MAX);
            let want = Request {
                head_len: head.len(),
                ..expected.clone()
            };
            assert_eq!(whole, Ok(Some(want)), "{head:?}");
            // Fed byte by byte: every prefix short of the head needs more, every longer one
            // gives the whole buffer's answer.
            for end in 0..=bytes.len() {
                let prefix = parse(&bytes[..end], MAX);
                if end < head.len() {
                    assert_eq!(prefix, Ok(None), "prefix {end} of {head:?}");
                } else {
                    assert_eq!(prefix, whole, "prefix {end} of {head:?}");
                }
            }
            assert!(parse(head.as_bytes(), head.len()).unwrap().is_some());
            assert_eq!(
                parse(head.as_bytes(), head.len() - 1),
                Err(Rejection::HeadersTooLarge)
            );
        }
        // Every spelling of the empty line ends the head, so a plain GET is answered at once.
        for (eol, end) in [
            ("\r\n", "\r\n"),
            ("\n", "\n"),
            ("\r\n", "\n"),
            ("\n", "\r\n"),
        ] {
            let request = format!("GET / HTTP/1.1{eol}Host: x{eol}{end}");
            assert_eq!(
                parse_str(&request),
                Err(Rejection::BadRequest(reason::UPGRADE)),
                "{request:?}"
            );
        }
        assert_eq!(parse(b"GET / HTTP/1.1\nHost: x\n", MAX), Ok(None));
        // A bare CR is not a line end (RFC 9112 §2.2): the head has not ended.
        assert_eq!(parse(b"GET / HTTP/1.1\nHost: x\r\r", MAX), Ok(None));
    }

    #[test]
    fn extension_offers() {
        let offered = |extra: &str| {
            parse_str(&rfc_request(extra))
                .unwrap()
                .unwrap()
                .deflate_offer
                .is_some()
        };
        assert!(!offered(""));
        assert!(offered("Sec-WebSocket-Extensions: permessage-deflate\r\n"));
        // RFC 7692 §5.1: offers in two headers form one list, in order.
        assert!(offered(
            "Sec-WebSocket-Extensions: foo\r\nsec-websocket-extensions: permessage-deflate; \
             client_max_window_bits\r\n"
        ));
        // A malformed offer declines the extension; the handshake itself succeeds.
        assert!(!offered(
            "Sec-WebSocket-Extensions: permessage-deflate; x=\"\r\n"
        ));
        let mut bytes = rfc_request("Sec-WebSocket-Extensions: \u{ff}\r\n").into_bytes();
        let at = bytes
            .windows(2)
            .position(|w| w == "\u{ff}".as_bytes())
            .unwrap();
        bytes.splice(at..at + 2, [0xff]);
        assert_eq!(parse(&bytes, MAX).unwrap().unwrap().deflate_offer, None);
        assert_eq!(
            parse_str(&rfc_request(
                "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n"
            ))
            .unwrap()
            .unwrap()
            .deflate_offer,
            Some(10)
        );
        let response = response_101("abc", None, Some(10));
        assert!(
            response.ends_with(b"client_no_context_takeover; server_max_window_bits=10\r\n\r\n")
        );
        let response = response_101("abc", None, Some(15));
        assert!(response.ends_with(
            b"Sec-WebSocket-Accept: abc\r\nSec-WebSocket-Extensions: permessage-deflate; \
              server_no_context_takeover; client_no_context_takeover\r\n\r\n"
        ));
    }

    #[test]
    fn responses() {
        let response = response_101("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", None, None);
        assert_eq!(
            &response[..],
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        let response = response_101("abc", Some("chat"), None);
        assert!(
            response
                .ends_with(b"Sec-WebSocket-Accept: abc\r\nSec-WebSocket-Protocol: chat\r\n\r\n")
        );

        let response = Rejection::UpgradeRequired.response();
        assert_eq!(
            &response[..],
            b"HTTP/1.1 426 Upgrade Required\r\nContent-Type: text/plain\r\nContent-Length: 30\r\n\
              Connection: close\r\nSec-WebSocket-Version: 13\r\n\r\nwebsocket version 13 required\n"
        );
        for rejection in [
            Rejection::BadRequest(reason::KEY),
            Rejection::NotFound,
            Rejection::UpgradeRequired,
            Rejection::HeadersTooLarge,
            Rejection::Unavailable,
            Rejection::TooManyRequests,
        ] {
            let response = rejection.response();
            let text = std::str::from_utf8(&response).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {} ", rejection.status())));
            assert!(head.contains(&format!("Content-Length: {}", body.len())));
            assert!(head.contains("Connection: close"));
            assert_eq!(body.matches('\n').count(), 1);
            assert!(body.ends_with('\n'));
        }
        assert_eq!(Rejection::HeadersTooLarge.status(), 431);
        assert_eq!(Rejection::NotFound.status(), 404);
        assert_eq!(Rejection::Unavailable.status(), 503);
    }

    #[test]
    fn head_end_search() {
        assert_eq!(head_end(b"\r\n\r\n"), Some(4));
        assert_eq!(head_end(b"a\r\n\r\n"), Some(5));
        assert_eq!(head_end(b"\r\r\n\r\n"), Some(5));
        assert_eq!(head_end(b"\n\r\n\r\n"), Some(3));
        assert_eq!(head_end(b"ab\r\n\r\r\n\r\nx"), Some(9));
        assert_eq!(head_end(b"\r\n\r"), None);
        assert_eq!(head_end(b"\n\n\r\n\n\r\r\n"), Some(2));
        assert_eq!(head_end(b"a\n\n"), Some(3));
        assert_eq!(head_end(b"a\r\n\n"), Some(4));
        assert_eq!(head_end(b"a\n\r\n"), Some(4));
        assert_eq!(head_end(b"\n"), None);
        assert_eq!(head_end(b"a\n\r"), None);
        assert_eq!(head_end(b"a\n\r\r\n"), None);
        assert_eq!(head_end(b"a\r\r\nb\r\n"), None);
    }

    /// The earliest end of an empty line, by brute force.
    fn reference_head_end(buf: &[u8]) -> Option<usize> {
        (1..=buf.len()).find(|&end| {
            let through = &buf[..end];
            through.ends_with(b"\n\n") || through.ends_with(b"\n\r\n")
        })
    }

    /// A valid request with arbitrary (legal) variations, each line ended by CRLF or, as RFC
    /// 9112 §2.2 lets a recipient accept, by a bare LF.
    fn request_strategy() -> impl Strategy<Value = String> {
        (
            "/[a-z0-9/]{0,12}(\\?[a-z=&]{0,8})?",
            proptest::collection::vec("[a-z][a-z0-9.]{0,6}", 0..4),
            proptest::collection::vec(("X-[A-Za-z]{1,6}", "[ -~]{0,20}"), 0..5),
            any::<bool>(),
            // One choice per line: at most 1 + 5 + 1 + 4 + 1 = 12 lines.
            proptest::collection::vec(any::<bool>(), 12),
        )
            .prop_map(|(target, protocols, extra, upper, bare_lf)| {
                let mut lines = vec![format!("GET {target} HTTP/1.1")];
                let names = [
                    "Host",
                    "Upgrade",
                    "Connection",
                    "Sec-WebSocket-Key",
                    "Sec-WebSocket-Version",
                ];
                let values = [
                    "example.com",
                    "websocket",
                    "keep-alive, Upgrade",
                    "AAAAAAAAAAAAAAAAAAAAAA==",
                    "13",
                ];
                for (name, value) in names.iter().zip(values) {
                    let name = if upper {
                        name.to_ascii_uppercase()
                    } else {
                        name.to_string()
                    };
                    lines.push(format!("{name}: {value}"));
                }
                if !protocols.is_empty() {
                    lines.push(format!("Sec-WebSocket-Protocol: {}", protocols.join(", ")));
                }
                for (name, value) in extra {
                    lines.push(format!("{name}: {}", value.trim()));
                }
                lines.push(String::new());
                lines
                    .iter()
                    .zip(bare_lf)
                    .map(|(line, bare)| format!("{line}{}", if bare { "\n" } else { "\r\n" }))
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn prop_growing_prefix(
            request in request_strategy(),
            tail in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut bytes = request.clone().into_bytes();
            bytes.extend_from_slice(&tail);
            let whole = parse(&bytes, MAX);
            let parsed = whole.clone().unwrap().unwrap();
            prop_assert_eq!(parsed.head_len, request.len());
            for end in 0..bytes.len() {
                let prefix = parse(&bytes[..end], MAX);
                if end < request.len() {
                    prop_assert_eq!(prefix, Ok(None), "prefix of {}", end);
                } else {
                    prop_assert_eq!(&prefix, &whole);
                }
            }
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            max in 0usize..400,
        ) {
            let whole = parse(&bytes, max);
            // Prefix consistency holds for any input: once a prefix gives an answer, every longer
            // buffer gives the same one.
            let mut answer = None;
            for end in 0..=bytes.len() {
                let result = parse(&bytes[..end], max);
                if let Some(first) = &answer {
                    prop_assert_eq!(&result, first);
                } else if result != Ok(None) {
                    answer = Some(result);
                }
            }
            prop_assert_eq!(answer.unwrap_or(Ok(None)), whole);
        }

        #[test]
        fn prop_head_end_matches_reference(
            bytes in proptest::collection::vec(
                prop_oneof![Just(b'\r'), Just(b'\n'), any::<u8>()],
                0..64,
            ),
        ) {
            prop_assert_eq!(head_end(&bytes), reference_head_end(&bytes));
        }
    }
}
