//! The incremental request parser: finds the head in a buffer the caller accumulates, parses it
//! with httparse, checks framing and limits, and cuts the body of exactly `Content-Length`
//! bytes. Several requests in one buffer (pipelining) are parsed one per call, the caller
//! draining what each call consumed.
//!
//! Owns: the framing decision (where a request ends), keep-alive semantics (RFC 9112 §9.3), and
//! the few header fields the server acts on, as owned values.
//!
//! Must not: keep state between calls, read past `head_bytes_max` bytes to find a head's end,
//! or accept a body whose length it cannot know from the head.
//!
//! Invariants:
//! - `parse(prefix)` is `Ok(None)` or equals `parse(whole)` for every prefix of a buffer: the
//!   head's end is the earliest empty line within the window, and only the head and the body
//!   bytes decide the answer, never what follows them.
//! - A line ends at CRLF or at a bare LF (RFC 9112 §2.2, as httparse reads it); empty lines
//!   before a request line are skipped (§2.2: a server "SHOULD ignore at least one empty line").
//! - `consumed` is at most `buf.len()`, more than 0, and at most
//!   `head_bytes_max + body_bytes_max`.

use std::borrow::Cow;

use bytes::Bytes;

use super::{HttpError, HttpLimits, query};

/// The most header slots httparse gets, whatever `headers_max` says: they live on the stack of
/// every call (32 bytes each).
pub const HEADERS_CEILING: usize = 128;

/// The request method (RFC 9110 §9). Methods are case-sensitive: `get` is `Other("get")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD: answer with the head a GET would get, without the body (RFC 9110 §9.3.2).
    Head,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// DELETE.
    Delete,
    /// OPTIONS (the only method for which the target `*` is accepted).
    Options,
    /// PATCH (RFC 5789).
    Patch,
    /// Any other method token; the endpoint answers 405 or 501.
    Other(String),
}

impl Method {
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_owned()),
        }
    }

    /// The method token as sent.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
            Method::Other(token) => token,
        }
    }

    /// Whether a request with this method is expected to carry a body, so one without
    /// `Content-Length` is refused with 411 instead of being read as empty (RFC 9112 §6.3 item 6
    /// would allow the latter; RFC 9110 §15.5.12 lets a server insist).
    fn needs_length(&self) -> bool {
        matches!(self, Method::Post | Method::Put | Method::Patch)
    }
}

/// The protocol version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: the connection closes after the response unless the client asked for
    /// `Connection: keep-alive`.
    Http10,
    /// HTTP/1.1: the connection persists unless either side says `Connection: close`.
    Http11,
}

/// A complete request: the head fields the server acts on and the whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The path of the request target, as sent (not %-decoded), e.g. `/api/publish`; `/` for an
    /// absolute-form target without a path, `*` for `OPTIONS *`.
    pub path: String,
    /// The query without `?` (empty when absent), as sent; see [`Request::query_value`].
    pub query: String,
    /// Whether the connection may carry another request after this one's response (RFC 9112
    /// §9.3). When false, the caller sends the response with `Connection: close`, closes, and
    /// ignores any bytes after this request.
    pub keep_alive: bool,
    /// The `Content-Type` value, as sent (parameters included).
    pub content_type: Option<String>,
    /// The token of `Authorization: Bearer <token>` (RFC 6750 §2.1). `None` without the field,
    /// with another scheme, or with a token outside the b64token syntax: all of them are "no
    /// credentials" to the API.
    pub bearer: Option<String>,
    /// The `Accept` value; repeated fields are joined with `, ` (RFC 9110 §5.3).
    pub accept: Option<String>,
    /// The `Origin` value.
    pub origin: Option<String>,
    /// An HTTP/1.1 request with `Expect: 100-continue` (RFC 9110 §10.1.1; ignored for 1.0).
    pub expects_continue: bool,
    /// The body: exactly `Content-Length` bytes (empty without the field).
    pub body: Bytes,
}

impl Request {
    /// The media type of `Content-Type` without its parameters, trimmed, e.g.
    /// `application/json` for `application/json; charset=utf-8`. Compare it ASCII
    /// case-insensitively (RFC 9110 §8.3.1).
    pub fn media_type(&self) -> Option<&str> {
        let value = self.content_type.as_deref()?;
        Some(value.split(';').next().unwrap_or(value).trim())
    }

    /// The first value of the query parameter `name`, decoded (see [`query::value`]).
    pub fn query_value(&self, name: &str) -> Option<Cow<'_, str>> {
        query::value(&self.query, name)
    }
}

/// A request head that passed every check; the body is still in the buffer.
struct Head {
    /// The request, with an empty body.
    request: Request,
    /// Where the head ends in the buffer: just past its empty line.
    end: usize,
    /// The body's length from `Content-Length` (0 without it), at most `body_bytes_max`.
    body_len: usize,
}

/// Parses the request at the front of `buf`. `Ok(None)`: need more bytes (keep them and call
/// again with more). `Ok(Some((request, consumed)))`: the caller drains `consumed` bytes, and
/// may call again at once for a pipelined request. `Err`: send [`HttpError::response`] and
/// close the connection.
///
/// Cost per call: a scan of at most `head_bytes_max` bytes, the head parse, and a copy of the
/// body once it is complete. A caller may skip the call until new bytes arrive.
pub fn parse(buf: &[u8], limits: &HttpLimits) -> Result<Option<(Request, usize)>, HttpError> {
    let Some(Head {
        mut request,
        end,
        body_len,
    }) = head(buf, limits)?
    else {
        return Ok(None);
    };
    let Some(body) = buf.get(end..end.saturating_add(body_len)) else {
        return Ok(None);
    };
    request.body = Bytes::copy_from_slice(body);
    Ok(Some((request, end + body_len)))
}

/// Whether `buf` holds the complete, acceptable head of an HTTP/1.1 request that sent
/// `Expect: 100-continue` and whose body has not fully arrived: the client waits for
/// [`super::CONTINUE_100`] before sending the body (common clients give up waiting after about
/// a second, so without it each such request is a second late). The caller sends it
/// at most once per request, after `parse` gave `Ok(None)`. A request that will be refused gets
/// its error from `parse` instead (RFC 9110 §10.1.1: a final status instead of 100).
pub fn continue_expected(buf: &[u8], limits: &HttpLimits) -> bool {
    match head(buf, limits) {
        Ok(Some(head)) => {
            head.request.expects_continue && buf.len() < head.end.saturating_add(head.body_len)
        }
        _ => false,
    }
}

/// The length of the empty lines at the start of `buf` (CRLF or bare LF each). A CR not yet
/// followed by anything stops the count: the next call sees whether an LF follows.
fn empty_lines(buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match buf.get(at..) {
            Some([b'\n', ..]) => at += 1,
            Some([b'\r', b'\n', ..]) => at += 2,
            _ => return at,
        }
    }
}

/// The length of the head at the start of `buf`, through its first empty line: the earliest
/// `\n\n` or `\n\r\n` (which covers `\r\n\r\n` and every mix of line ends, RFC 9112 §2.2). A
/// bare CR ends nothing. `buf` starts with a non-empty line, so the empty line is the one that
/// ends the head.
fn head_len(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let lf = from + i;
        match buf.get(lf + 1..) {
            Some([b'\n', ..]) => return Some(lf + 2),
            Some([b'\r', b'\n', ..]) => return Some(lf + 3),
            _ => from = lf + 1,
        }
    }
    None
}

/// Finds, parses and checks the head at the front of `buf`.
fn head(buf: &[u8], limits: &HttpLimits) -> Result<Option<Head>, HttpError> {
    // The head must end within the first `head_bytes_max` bytes; looking only there bounds the
    // work per call and makes a long buffer's answer the same as its prefixes'.
    let window = &buf[..buf.len().min(limits.head_bytes_max)];
    let start = empty_lines(window);
    let Some(len) = head_len(&window[start..]) else {
        return if buf.len() >= limits.head_bytes_max {
            Err(HttpError::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    let end = start + len;
    let head_bytes = &window[start..end];

    let mut slots = [httparse::EMPTY_HEADER; HEADERS_CEILING];
    let mut parsed = httparse::Request::new(&mut slots[..limits.headers_max.min(HEADERS_CEILING)]);
    match parsed.parse(head_bytes) {
        // httparse ends the head at the same empty line as `head_len`; should the two ever
        // disagree, they would disagree about where the body starts, so the head is refused.
        Ok(httparse::Status::Complete(n)) if n == len => {}
        Ok(_) => return Err(HttpError::Malformed),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(version_error(head_bytes)),
        Err(_) => return Err(HttpError::Malformed),
    }
    // A complete parse sets method, path and version; their absence would be httparse's bug,
    // answered as a malformed head rather than a panic.
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(HttpError::Malformed);
    };
    let version = if minor == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    let method = Method::from_token(method);

    let fields = Fields::collect(parsed.headers)?;

    // Framing first (RFC 9112 §6.3, in its order): a request whose length is in doubt is refused
    // before anything else is looked at.
    if fields.transfer_encoding {
        if version == Version::Http10 {
            return Err(HttpError::TransferEncodingHttp10);
        }
        if fields.content_lengths > 0 {
            return Err(HttpError::TransferEncodingWithLength);
        }
        return Err(HttpError::TransferEncoding);
    }
    let body_len = match (fields.content_lengths, fields.content_length) {
        (0, _) if method.needs_length() => return Err(HttpError::LengthRequired),
        (0, _) => 0,
        (1, Some(value)) => content_length(value, limits.body_bytes_max)?,
        _ => return Err(HttpError::ContentLength),
    };

    // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any
    // HTTP/1.1 request message that lacks a Host header field and to any request message that
    // contains more than one Host header field line".
    let hosts_ok = match version {
        Version::Http10 => fields.hosts <= 1,
        Version::Http11 => fields.hosts == 1,
    };
    if !hosts_ok {
        return Err(HttpError::Host);
    }
    let (path, query) = split_target(&method, target).ok_or(HttpError::BadTarget)?;

    // RFC 9112 §9.3: `close` ends the connection after this response; otherwise HTTP/1.1
    // persists, and HTTP/1.0 persists only when it asked for `keep-alive`.
    let keep_alive = !fields.close && (version == Version::Http11 || fields.keep_alive);
    let request = Request {
        method,
        version,
        path: path.to_owned(),
        query: query.to_owned(),
        keep_alive,
        content_type: fields.content_type.map(text).transpose()?,
        bearer: fields.authorization.and_then(bearer),
        accept: fields.accept.map(text).transpose()?,
        origin: fields.origin.map(text).transpose()?,
        // RFC 9110 §10.1.1: "A server that receives a 100-continue expectation in an HTTP/1.0
        // request MUST ignore that expectation."
        expects_continue: fields.continue_100 && version == Version::Http11,
        body: Bytes::new(),
    };
    Ok(Some(Head {
        request,
        end,
        body_len,
    }))
}

/// The header fields the parser acts on, lent from the head.
#[derive(Default)]
struct Fields<'a> {
    hosts: usize,
    content_lengths: usize,
    content_length: Option<&'a [u8]>,
    transfer_encoding: bool,
    close: bool,
    keep_alive: bool,
    continue_100: bool,
    content_type: Option<&'a [u8]>,
    authorization: Option<&'a [u8]>,
    origin: Option<&'a [u8]>,
    /// Repeated Accept fields, joined.
    accept: Option<Cow<'a, [u8]>>,
}

impl<'a> Fields<'a> {
    fn collect(headers: &[httparse::Header<'a>]) -> Result<Fields<'a>, HttpError> {
        let mut fields = Fields::default();
        for header in headers {
            let name = header.name;
            let value = header.value.trim_ascii();
            if name.eq_ignore_ascii_case("host") {
                fields.hosts += 1;
            } else if name.eq_ignore_ascii_case("content-length") {
                fields.content_lengths += 1;
                fields.content_length = Some(value);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                fields.transfer_encoding = true;
            } else if name.eq_ignore_ascii_case("connection") {
                // RFC 9110 §7.6.1: Connection is a list of case-insensitive options and may
                // repeat.
                fields.close |= has_token(value, "close");
                fields.keep_alive |= has_token(value, "keep-alive");
            } else if name.eq_ignore_ascii_case("expect") {
                fields.continue_100 |= has_token(value, "100-continue");
            } else if name.eq_ignore_ascii_case("content-type") {
                once(&mut fields.content_type, value)?;
            } else if name.eq_ignore_ascii_case("authorization") {
                once(&mut fields.authorization, value)?;
            } else if name.eq_ignore_ascii_case("origin") {
                once(&mut fields.origin, value)?;
            } else if name.eq_ignore_ascii_case("accept") {
                fields.accept = Some(match fields.accept.take() {
                    None => Cow::Borrowed(value),
                    Some(list) => Cow::Owned([&list[..], b", ", value].concat()),
                });
            }
        }
        Ok(fields)
    }
}

/// Records a field that may appear once; a second one is a 400.
fn once<'a>(slot: &mut Option<&'a [u8]>, value: &'a [u8]) -> Result<(), HttpError> {
    match slot.replace(value) {
        None => Ok(()),
        Some(_) => Err(HttpError::RepeatedField),
    }
}

/// Whether a comma-separated field value lists `token`, ASCII case-insensitively (RFC 9110
/// §5.6.1).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A `Content-Length` value: `1*DIGIT` (RFC 9110 §8.6), no sign, no list. A number too large
/// for any integer is still a number, and too large: 413 like any other above the limit.
fn content_length(value: &[u8], body_bytes_max: usize) -> Result<usize, HttpError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::ContentLength);
    }
    let length = value.iter().try_fold(0usize, |n, &digit| {
        n.checked_mul(10)?.checked_add(usize::from(digit - b'0'))
    });
    match length {
        Some(length) if length <= body_bytes_max => Ok(length),
        _ => Err(HttpError::BodyTooLarge),
    }
}

/// The token of `Bearer <token>` (RFC 6750 §2.1: `"Bearer" 1*SP b64token`; the scheme is
/// case-insensitive, RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<String> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii_start();
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body_len = token.iter().position(|&b| b == b'=').unwrap_or(token.len());
    let (body, padding) = token.split_at(body_len);
    let body_ok = !body.is_empty()
        && body
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    let padding_ok = padding.iter().all(|&b| b == b'=');
    (body_ok && padding_ok).then(|| String::from_utf8_lossy(token).into_owned())
}

/// A field value as an owned string; obs-text that is not UTF-8 is a 400.
fn text(value: impl AsRef<[u8]>) -> Result<String, HttpError> {
    std::str::from_utf8(value.as_ref())
        .map(str::to_owned)
        .map_err(|_| HttpError::FieldNotText)
}

/// Splits a request target into path and query. Accepts the origin-form, the absolute-form
/// (RFC 9112 §3.2.2: a server "MUST accept the absolute-form in requests"), and the
/// asterisk-form for OPTIONS (§3.2.4).
fn split_target<'t>(method: &Method, target: &'t str) -> Option<(&'t str, &'t str)> {
    if target == "*" {
        return (*method == Method::Options).then_some(("*", ""));
    }
    let origin_form = if target.starts_with('/') {
        target
    } else {
        let (scheme, rest) = target.split_once("://")?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return None;
        }
        rest.find(['/', '?']).map_or("", |i| &rest[i..])
    };
    let (path, query) = origin_form.split_once('?').unwrap_or((origin_form, ""));
    Some((if path.is_empty() { "/" } else { path }, query))
}

/// Tells a version httparse does not read (505) from a request line that is not HTTP at all
/// (400): the third word of the line looks like `HTTP/d.d`.
fn version_error(head: &[u8]) -> HttpError {
    let line = head.split(|&b| b == b'\n').next().unwrap_or(head);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut words = line.split(|&b| b == b' ');
    match (words.nth(2), words.next()) {
        (Some([b'H', b'T', b'T', b'P', b'/', major, b'.', minor]), None)
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            HttpError::Version
        }
        _ => HttpError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> HttpLimits {
        HttpLimits::default()
    }

    fn parse_str(input: &str) -> Result<Option<(Request, usize)>, HttpError> {
        parse(input.as_bytes(), &limits())
    }

    fn request(input: &str) -> Request {
        let (request, consumed) = parse_str(input).unwrap().unwrap();
        assert_eq!(consumed, input.len(), "{input:?}");
        request
    }

    /// Parses a whole stream the way a connection does: parse, drain, repeat; stops at the
    /// first error, at a request without keep-alive, or when more bytes are needed.
    fn drain_all(mut buf: &[u8], limits: &HttpLimits) -> (Vec<Request>, Option<HttpError>, usize) {
        let mut requests = Vec::new();
        loop {
            match parse(buf, limits) {
                Ok(Some((request, consumed))) => {
                    assert!(consumed > 0 && consumed <= buf.len());
                    buf = &buf[consumed..];
                    let last = !request.keep_alive;
                    requests.push(request);
                    if last {
                        return (requests, None, buf.len());
                    }
                }
                Ok(None) => return (requests, None, buf.len()),
                Err(error) => return (requests, Some(error), buf.len()),
            }
        }
    }

    #[test]
    fn a_get_with_everything_the_server_reads() {
        let r = request(
            "GET /metrics?format=text&x=1 HTTP/1.1\r\nHost: localhost:9090\r\n\
             Accept: text/plain;version=0.0.4\r\nAccept: */*\r\n\
             Authorization: Bearer abc.DEF-ghi_~+/==\r\nOrigin: https://app.example\r\n\r\n",
        );
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.version, Version::Http11);
        assert_eq!(r.path, "/metrics");
        assert_eq!(r.query, "format=text&x=1");
        assert_eq!(r.query_value("format").as_deref(), Some("text"));
        assert!(r.keep_alive);
        assert_eq!(r.accept.as_deref(), Some("text/plain;version=0.0.4, */*"));
        assert_eq!(r.bearer.as_deref(), Some("abc.DEF-ghi_~+/=="));
        assert_eq!(r.origin.as_deref(), Some("https://app.example"));
        assert_eq!(r.content_type, None);
        assert!(!r.expects_continue);
        assert!(r.body.is_empty());
    }

    #[test]
    fn a_post_with_its_body() {
        let r = request(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json; \
             charset=utf-8\r\nContent-Length: 13\r\n\r\n{\"a\":\"hello\"}",
        );
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.media_type(), Some("application/json"));
        assert_eq!(&r.body[..], b"{\"a\":\"hello\"}");
        // Bytes after the body belong to the next request.
        let input = "PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nokGET";
        let (r, consumed) = parse_str(input).unwrap().unwrap();
        assert_eq!((r.method, &r.body[..]), (Method::Put, &b"ok"[..]));
        assert_eq!(&input.as_bytes()[consumed..], b"GET");
    }

    #[test]
    fn methods_and_targets() {
        for (token, method) in [
            ("HEAD", Method::Head),
            ("DELETE", Method::Delete),
            ("OPTIONS", Method::Options),
            ("PATCH", Method::Patch),
            ("get", Method::Other("get".into())),
            ("PROPFIND", Method::Other("PROPFIND".into())),
        ] {
            let length = if method.needs_length() {
                "Content-Length: 0\r\n"
            } else {
                ""
            };
            let r = request(&format!("{token} / HTTP/1.1\r\nHost: x\r\n{length}\r\n"));
            assert_eq!(r.method.as_str(), token);
            assert_eq!(r.method, method);
        }
        assert_eq!(split_target(&Method::Get, "/"), Some(("/", "")));
        assert_eq!(split_target(&Method::Get, "/a?"), Some(("/a", "")));
        assert_eq!(
            split_target(&Method::Get, "/a?b=c?d"),
            Some(("/a", "b=c?d"))
        );
        assert_eq!(
            split_target(&Method::Get, "http://h:1/m?q"),
            Some(("/m", "q"))
        );
        assert_eq!(split_target(&Method::Get, "HTTPS://h"), Some(("/", "")));
        assert_eq!(split_target(&Method::Get, "http://h?q"), Some(("/", "q")));
        assert_eq!(split_target(&Method::Options, "*"), Some(("*", "")));
        assert_eq!(split_target(&Method::Get, "*"), None);
        assert_eq!(split_target(&Method::Get, "ftp://h/x"), None);
        assert_eq!(split_target(&Method::Get, "h:443"), None);
        assert_eq!(
            parse_str("CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n"),
            Err(HttpError::BadTarget)
        );
        assert_eq!(request("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").path, "*");
    }

    #[test]
    fn keep_alive_semantics() {
        let cases = [
            ("HTTP/1.1", "", true),
            ("HTTP/1.1", "Connection: close\r\n", false),
            ("HTTP/1.1", "Connection: Keep-Alive, CLOSE\r\n", false),
            (
                "HTTP/1.1",
                "Connection: keep-alive\r\nConnection: close\r\n",
                false,
            ),
            ("HTTP/1.1", "Connection: keep-alive\r\n", true),
            ("HTTP/1.1", "Connection: closed\r\n", true),
            ("HTTP/1.0", "", false),
            ("HTTP/1.0", "Connection: keep-alive\r\n", true),
            ("HTTP/1.0", "Connection: Keep-Alive\r\n", true),
            ("HTTP/1.0", "Connection: keep-alive, close\r\n", false),
            ("HTTP/1.0", "Connection: upgrade\r\n", false),
        ];
        for (version, extra, keep_alive) in cases {
            let r = request(&format!("GET / {version}\r\nHost: x\r\n{extra}\r\n"));
            assert_eq!(r.keep_alive, keep_alive, "{version} {extra:?}");
        }
        // HTTP/1.0 may omit Host; it may not repeat it.
        let r = request("GET / HTTP/1.0\r\n\r\n");
        assert_eq!((r.version, r.keep_alive), (Version::Http10, false));
        assert_eq!(
            parse_str("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(HttpError::Host)
        );
    }

    #[test]
    fn expect_100_continue() {
        let limits = limits();
        let head = "POST /api/publish HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\n\
                    Content-Length: 5\r\n\r\n";
        assert!(continue_expected(head.as_bytes(), &limits));
        assert!(continue_expected(format!("{head}hell").as_bytes(), &limits));
        let whole = format!("{head}hello");
        assert!(!continue_expected(whole.as_bytes(), &limits));
        assert!(
            parse(whole.as_bytes(), &limits)
                .unwrap()
                .unwrap()
                .0
                .expects_continue
        );
        // Not for an incomplete head, not for HTTP/1.0, not without a body, not when refused.
        assert!(!continue_expected(
            &head.as_bytes()[..head.len() - 1],
            &limits
        ));
        let http10 = head.replace("HTTP/1.1", "HTTP/1.0");
        assert!(!continue_expected(http10.as_bytes(), &limits));
        let empty = head.replace("Length: 5", "Length: 0");
        assert!(!continue_expected(empty.as_bytes(), &limits));
        let big = head.replace("Length: 5", "Length: 99999999");
        assert!(!continue_expected(big.as_bytes(), &limits));
        assert_eq!(parse(big.as_bytes(), &limits), Err(HttpError::BodyTooLarge));
    }

    #[test]
    fn status_400() {
        let cases = [
            ("GARBAGE\r\n\r\n", HttpError::Malformed),
            ("GET /\r\n\r\n", HttpError::Malformed),
            ("GET  / HTTP/1.1\r\nHost: x\r\n\r\n", HttpError::Malformed),
            ("GET / http/1.1\r\nHost: x\r\n\r\n", HttpError::Malformed),
            ("GET / HTTP/1.1 x\r\nHost: x\r\n\r\n", HttpError::Malformed),
            ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", HttpError::Malformed),
            (
                "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
                HttpError::Malformed,
            ),
            ("GET / HTTP/1.1\r\nNo colon\r\n\r\n", HttpError::Malformed),
            (
                "GET / HTTP/1.1\r\nHost: x\r\rY: z\r\n\r\n",
                HttpError::Malformed,
            ),
            ("\rGET / HTTP/1.1\r\nHost: x\r\n\r\n", HttpError::Malformed),
            ("GET / HTTP/1.1\r\n\r\n", HttpError::Host),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
                HttpError::Host,
            ),
            ("GET x HTTP/1.1\r\nHost: x\r\n\r\n", HttpError::BadTarget),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab",
                HttpError::ContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                HttpError::ContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\na",
                HttpError::ContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\na",
                HttpError::ContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                HttpError::ContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n",
                HttpError::ContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x1\r\n\r\n",
                HttpError::ContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                 Content-Length: 3\r\n\r\n",
                HttpError::TransferEncodingWithLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\
                 Transfer-Encoding: chunked\r\n\r\n",
                HttpError::TransferEncodingWithLength,
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                HttpError::TransferEncodingHttp10,
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nOrigin: a\r\nOrigin: b\r\n\r\n",
                HttpError::RepeatedField,
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\n\
                 Authorization: Bearer b\r\n\r\n",
                HttpError::RepeatedField,
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nContent-Type: a\r\nContent-Type: a\r\n\r\n",
                HttpError::RepeatedField,
            ),
        ];
        for (input, error) in cases {
            assert_eq!(parse_str(input), Err(error), "{input:?}");
            assert_eq!(error.status(), 400);
        }
        // obs-text that is not UTF-8 in a field the server reads as text.
        for name in ["Origin", "Content-Type", "Accept"] {
            let mut input =
                format!("GET / HTTP/1.1\r\nHost: x\r\n{name}: a\u{1}b\r\n\r\n").into_bytes();
            let at = input.iter().position(|&b| b == 1).unwrap();
            input[at] = 0xff;
            assert_eq!(
                parse(&input, &limits()),
                Err(HttpError::FieldNotText),
                "{name}"
            );
        }
        // A non-UTF-8 path.
        let mut input = b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        input[5] = 0xc3;
        assert_eq!(parse(&input, &limits()), Err(HttpError::Malformed));
    }

    #[test]
    fn status_411() {
        for method in ["POST", "PUT", "PATCH"] {
            let input = format!("{method} /api/publish HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(
                parse_str(&input),
                Err(HttpError::LengthRequired),
                "{method}"
            );
        }
        for coding in ["chunked", "gzip, chunked", "identity"] {
            let input =
                format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\n\r\n");
            assert_eq!(
                parse_str(&input),
                Err(HttpError::TransferEncoding),
                "{coding}"
            );
        }
        // Refused at the head, before any of the body arrived.
        let input = "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n";
        assert_eq!(parse_str(input), Err(HttpError::TransferEncoding));
        assert_eq!(HttpError::TransferEncoding.status(), 411);
        assert_eq!(HttpError::LengthRequired.status(), 411);
        // GET and DELETE without Content-Length have an empty body (RFC 9112 §6.3 item 6).
        assert!(
            request("DELETE /x HTTP/1.1\r\nHost: x\r\n\r\n")
                .body
                .is_empty()
        );
    }

    #[test]
    fn status_413_before_the_body() {
        let limits = HttpLimits {
            body_bytes_max: 10,
            ..limits()
        };
        let head = |length: &str| {
            format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n")
        };
        assert!(
            parse(format!("{}0123456789", head("10")).as_bytes(), &limits)
                .unwrap()
                .is_some()
        );
        // Decided from the head alone: no byte of the body has arrived.
        for length in ["11", "1000000000", "99999999999999999999999999999999"] {
            assert_eq!(
                parse(head(length).as_bytes(), &limits),
                Err(HttpError::BodyTooLarge),
                "{length}"
            );
        }
        assert_eq!(HttpError::BodyTooLarge.status(), 413);
        // A zero limit still allows requests without a body.
        let zero = HttpLimits {
            body_bytes_max: 0,
            ..limits
        };
        assert!(parse(head("0").as_bytes(), &zero).unwrap().is_some());
        assert_eq!(
            parse(head("1").as_bytes(), &zero),
            Err(HttpError::BodyTooLarge)
        );
    }

    #[test]
    fn status_431() {
        let input = "GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n";
        let fits = HttpLimits {
            head_bytes_max: input.len(),
            headers_max: 3,
            ..limits()
        };
        assert!(parse(input.as_bytes(), &fits).unwrap().is_some());
        // One byte short: the end is not within the window, and the buffer has reached it.
        let short = HttpLimits {
            head_bytes_max: input.len() - 1,
            ..fits
        };
        assert_eq!(
            parse(input.as_bytes(), &short),
            Err(HttpError::HeadTooLarge)
        );
        assert_eq!(
            parse(&input.as_bytes()[..input.len() - 2], &short),
            Ok(None)
        );
        // Body bytes do not count toward the head.
        let with_body = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n";
        let tight = HttpLimits {
            head_bytes_max: with_body.len(),
            ..limits()
        };
        let full = format!("{with_body}{}", "b".repeat(40));
        assert!(parse(full.as_bytes(), &tight).unwrap().is_some());
        // Too many fields.
        let few = HttpLimits {
            headers_max: 2,
            ..fits
        };
        assert_eq!(
            parse(input.as_bytes(), &few),
            Err(HttpError::TooManyHeaders)
        );
        // Leading empty lines count toward the head.
        let padded = format!("\r\n{input}");
        assert_eq!(
            parse(padded.as_bytes(), &fits),
            Err(HttpError::HeadTooLarge)
        );
        // A flood of empty lines is bounded too.
        assert_eq!(
            parse(&b"\r\n".repeat(5000), &limits()),
            Err(HttpError::HeadTooLarge)
        );
        // A long target is in the head.
        let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
        assert_eq!(parse_str(&long), Err(HttpError::HeadTooLarge));
        assert_eq!(HttpError::HeadTooLarge.status(), 431);
        assert_eq!(HttpError::TooManyHeaders.status(), 431);
        // headers_max above the ceiling acts as the ceiling.
        let many: String = (0..HEADERS_CEILING)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let input = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        let huge = HttpLimits {
            headers_max: usize::MAX,
            head_bytes_max: 1 << 20,
            ..limits()
        };
        assert_eq!(
            parse(input.as_bytes(), &huge),
            Err(HttpError::TooManyHeaders)
        );
    }

    #[test]
    fn status_505() {
        for version in ["HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/3.0"] {
            let input = format!("GET / {version}\r\nHost: x\r\n\r\n");
            assert_eq!(parse_str(&input), Err(HttpError::Version), "{version}");
        }
        assert_eq!(HttpError::Version.status(), 505);
        // Not a version at all: 400.
        for version in ["HTTP/1.10", "HTTP/a.b", "FTP/1.1", "HTTP/11"] {
            let input = format!("GET / {version}\r\nHost: x\r\n\r\n");
            assert_eq!(parse_str(&input), Err(HttpError::Malformed), "{version}");
        }
    }

    #[test]
    fn line_ends_and_leading_empty_lines() {
        let crlf = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let expected = request(crlf);
        for input in [
            "GET /a HTTP/1.1\nHost: x\n\n",
            "GET /a HTTP/1.1\r\nHost: x\n\r\n",
            "GET /a HTTP/1.1\nHost: x\r\n\n",
            "\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            "\n\r\n\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(request(input), expected, "{input:?}");
        }
        // Only empty lines so far: wait for the request line.
        assert_eq!(parse_str("\r\n\r\n"), Ok(None));
        assert_eq!(parse_str("\r"), Ok(None));
        assert_eq!(parse_str(""), Ok(None));
        // A bare CR ends no line (RFC 9112 §2.2).
        assert_eq!(parse_str("GET / HTTP/1.1\r\nHost: x\r\r"), Ok(None));
        assert_eq!(head_len(b"a\n\n"), Some(3));
        assert_eq!(head_len(b"a\r\n\r\n"), Some(5));
        assert_eq!(head_len(b"a\n\r\n"), Some(4));
        assert_eq!(head_len(b"a\n\r\r\n"), None);
        assert_eq!(head_len(b"a\r\n\r"), None);
        assert_eq!(empty_lines(b"\r\n\n\r\nG"), 5);
        assert_eq!(empty_lines(b"\r\r\n"), 0);
    }

    #[test]
    fn bearer_tokens() {
        let cases = [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER   a.b.c", Some("a.b.c")),
            ("Bearer a==", Some("a==")),
            ("Bearer a=b", None),
            ("Bearer ==", None),
            ("Bearer ", None),
            ("Bearer", None),
            ("Bearer a b", None),
            ("Bearer a,b", None),
            ("Basic dXNlcjpwYXNz", None),
            ("Bearerabc", None),
        ];
        for (value, token) in cases {
            assert_eq!(bearer(value.as_bytes()).as_deref(), token, "{value:?}");
        }
        let r = request("GET / HTTP/1.1\r\nHost: x\r\nAuthorization:   Bearer t0k3n  \r\n\r\n");
        assert_eq!(r.bearer.as_deref(), Some("t0k3n"));
    }

    #[test]
    fn pipelined_two_and_three() {
        let first = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        let second = "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
        let third = "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let two = format!("{first}{second}");
        let (requests, error, left) = drain_all(two.as_bytes(), &limits());
        assert_eq!((error, left), (None, 0));
        let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/healthz", "/api/publish"]);
        assert_eq!(&requests[1].body[..], b"abc");

        // Three, the last closing, and bytes after it that the connection never reads.
        let three = format!("{first}{second}{third}GET /ignored HTTP/1.1\r\n\r\n");
        let (requests, error, left) = drain_all(three.as_bytes(), &limits());
        let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/healthz", "/api/publish", "/readyz"]);
        assert_eq!((error, left), (None, "GET /ignored HTTP/1.1\r\n\r\n".len()));
        assert!(!requests[2].keep_alive);

        // A good request, then a bad one: the first is served, the second refused.
        let bad = format!("{first}GET / HTTP/1.1\r\n\r\n");
        let (requests, error, _) = drain_all(bad.as_bytes(), &limits());
        assert_eq!((requests.len(), error), (1, Some(HttpError::Host)));
    }

    #[test]
    fn a_body_split_across_reads() {
        let limits = limits();
        let head = "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n";
        let mut buf = head.as_bytes().to_vec();
        assert_eq!(parse(&buf, &limits), Ok(None));
        for piece in [&b"0123"[..], b"456", b"78"] {
            buf.extend_from_slice(piece);
            assert_eq!(parse(&buf, &limits), Ok(None));
        }
        buf.extend_from_slice(b"9GET");
        let (r, consumed) = parse(&buf, &limits).unwrap().unwrap();
        assert_eq!(&r.body[..], b"0123456789");
        assert_eq!(&buf[consumed..], b"GET");
    }

    /// A valid request of any kind the server sees, its line ends CRLF or bare LF.
    fn request_strategy() -> impl Strategy<Value = String> {
        (
            prop_oneof![Just("GET"), Just("POST"), Just("HEAD"), Just("DELETE")],
            "/[a-z0-9/]{0,12}(\\?[a-z=&+%0-9]{0,12})?",
            any::<bool>(),
            proptest::collection::vec(("X-[A-Za-z]{1,6}", "[ -~]{0,16}"), 0..4),
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<bool>(),
        )
            .prop_map(|(method, target, http10, extra, body, bare_lf)| {
                let eol = if bare_lf { "\n" } else { "\r\n" };
                let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
                let mut head = format!("{method} {target} {version}{eol}Host: h{eol}");
                // Every request keeps the connection, so a pipeline is read to its end.
                if http10 {
                    head.push_str(&format!("Connection: keep-alive{eol}"));
                }
                for (name, value) in extra {
                    head.push_str(&format!("{name}: {}{eol}", value.trim()));
                }
                let body = if method == "POST" || !body.is_empty() {
                    head.push_str(&format!("Content-Length: {}{eol}", body.len()));
                    body
                } else {
                    Vec::new()
                };
                head.push_str(eol);
                let mut bytes = head.into_bytes();
                bytes.extend_from_slice(&body);
                // Body bytes need not be text; a lossless string keeps the strategy simple.
                bytes.iter().map(|&b| char::from(b)).collect()
            })
    }

    fn latin1(s: &str) -> Vec<u8> {
        s.chars().map(|c| c as u8).collect()
    }

    /// Feeds `stream` in the given pieces the way a connection does (append, parse, drain).
    fn feed(pieces: &[&[u8]], limits: &HttpLimits) -> (Vec<Request>, Option<HttpError>, usize) {
        let mut buf = Vec::new();
        let mut requests = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match parse(&buf, limits) {
                    Ok(Some((request, consumed))) => {
                        assert!(consumed > 0 && consumed <= buf.len());
                        buf.drain(..consumed);
                        let last = !request.keep_alive;
                        requests.push(request);
                        if last {
                            return (requests, None, buf.len());
                        }
                    }
                    Ok(None) => {
                        assert!(buf.len() < limits.head_bytes_max + limits.body_bytes_max);
                        break;
                    }
                    Err(error) => return (requests, Some(error), buf.len()),
                }
            }
        }
        (requests, None, buf.len())
    }

    proptest! {
        /// A pipeline of valid requests, split at every byte (and fed as growing prefixes),
        /// parses to the same sequence of requests as the whole buffer.
        #[test]
        fn prop_pipeline_split_at_every_byte(
            requests in proptest::collection::vec(request_strategy(), 1..4),
        ) {
            let stream: Vec<u8> = requests.iter().flat_map(|r| latin1(r)).collect();
            let limits = limits();
            let whole = drain_all(&stream, &limits);
            prop_assert_eq!(whole.0.len(), requests.len());
            prop_assert_eq!(&whole.1, &None);
            prop_assert_eq!(whole.2, 0);
            for cut in 0..=stream.len() {
                let (a, b) = stream.split_at(cut);
                prop_assert_eq!(&feed(&[a, b], &limits), &whole, "cut at {}", cut);
            }
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            prop_assert_eq!(&feed(&bytes, &limits), &whole);
        }

        /// Any bytes, any limits: no panic, `consumed` within the buffer, every prefix either
        /// needs more or gives the whole buffer's answer, and the buffer bound holds.
        #[test]
        fn prop_arbitrary_bytes(
            bytes in proptest::collection::vec(
                prop_oneof![
                    Just(b'\r'), Just(b'\n'), Just(b' '), Just(b':'), any::<u8>(),
                    Just(b'G'), Just(b'0'),
                ],
                0..300,
            ),
            head_bytes_max in 0usize..400,
            headers_max in 0usize..8,
            body_bytes_max in 0usize..64,
        ) {
            let limits = HttpLimits { head_bytes_max, headers_max, body_bytes_max };
            let whole = parse(&bytes, &limits);
            match &whole {
                Ok(Some((request, consumed))) => {
                    prop_assert!(*consumed > 0 && *consumed <= bytes.len());
                    prop_assert!(request.body.len() <= body_bytes_max);
                    prop_assert!(*consumed <= head_bytes_max + body_bytes_max);
                }
                Ok(None) => prop_assert!(bytes.len() < head_bytes_max + body_bytes_max),
                Err(_) => {}
            }
            let mut answer = None;
            for end in 0..=bytes.len() {
                let result = parse(&bytes[..end], &limits);
                if let Some(first) = &answer {
                    prop_assert_eq!(&result, first);
                } else if result != Ok(None) {
                    answer = Some(result);
                }
            }
            prop_assert_eq!(answer.unwrap_or(Ok(None)), whole);
            let _ = continue_expected(&bytes, &limits);
        }

        /// Realistic heads with random damage: the same prefix rule, and no panic.
        #[test]
        fn prop_damaged_requests(
            request in request_strategy(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = latin1(&request);
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let limits = limits();
            let whole = parse(&bytes, &limits);
            for end in 0..bytes.len() {
                let prefix = parse(&bytes[..end], &limits);
                prop_assert!(prefix == Ok(None) || prefix == whole, "prefix {}", end);
            }
        }
    }
}
