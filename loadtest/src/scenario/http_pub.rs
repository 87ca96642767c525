//! The HTTP publisher (`--pub-http URL`): each payload is the body of a `POST` to `URL` on one
//! keep-alive HTTP/1.1 connection, pipelined, for servers that take publishes over HTTP.
//!
//! Like the control-socket publisher it never blocks the event loop: requests are written until
//! `EAGAIN` and the rest waits for the next writable edge; the caller bounds the backlog, so a
//! server that stops reading shows as publisher stalls (and a phase that cannot finish), not as
//! memory. Responses are read as they come and discarded; a status outside 2xx counts as a
//! publish error. The response parser is just enough for well-formed responses: a status line,
//! headers, then a body framed by `Content-Length`, `chunked`, nothing (1xx, 204, 304) or the
//! end of the connection.

use std::io;
use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::sys;
use crate::target::HttpUrl;

/// A status line, header line or chunk-size line longer than this is a malformed response.
const LINE_BYTES_MAX: usize = 16 * 1024;

/// Where the response parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    StatusLine,
    Headers,
    /// `Content-Length` body bytes still to skip.
    Body(u64),
    ChunkSize,
    /// Chunk data bytes still to skip.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    /// A body without length: everything up to the end of the connection.
    UntilClose,
}

/// An incremental HTTP/1.1 response parser: feed it bytes as they arrive, split anywhere; it
/// reports the status of each complete response.
#[derive(Debug)]
pub struct ResponseParser {
    part: Part,
    line: Vec<u8>,
    status: u16,
    status_line: String,
    content_length: Option<u64>,
    chunked: bool,
}

impl Default for ResponseParser {
    fn default() -> Self {
        ResponseParser {
            part: Part::StatusLine,
            line: Vec::new(),
            status: 0,
            status_line: String::new(),
            content_length: None,
            chunked: false,
        }
    }
}

impl ResponseParser {
    /// Parses `data`; calls `done(status, status_line)` once per complete response (1xx interim
    /// responses are skipped). Returns an error for a response it cannot parse.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        done: &mut impl FnMut(u16, &str),
    ) -> Result<(), String> {
        while !data.is_empty() {
            match self.part {
                Part::Body(n) | Part::ChunkData(n) => {
                    let take = n.min(data.len() as u64);
                    data = &data[take as usize..];
                    let left = n - take;
                    self.part = match (self.part, left) {
                        (Part::Body(_), 0) => {
                            done(self.status, &self.status_line);
                            Part::StatusLine
                        }
                        (Part::Body(_), _) => Part::Body(left),
                        (_, 0) => Part::ChunkEnd,
                        _ => Part::ChunkData(left),
                    };
                }
                Part::UntilClose => data = &[],
                _ => {
                    let (line_done, used) = match data.iter().position(|&b| b == b'\n') {
                        Some(i) => (true, i + 1),
                        None => (false, data.len()),
                    };
                    self.line.extend_from_slice(&data[..used]);
                    data = &data[used..];
                    if self.line.len() > LINE_BYTES_MAX {
                        return Err(format!(
                            "a response line longer than {LINE_BYTES_MAX} bytes"
                        ));
                    }
                    if line_done {
                        let line = std::mem::take(&mut self.line);
                        let text = String::from_utf8_lossy(&line);
                        self.line_complete(text.trim_end_matches(['\r', '\n']), done)?;
                        self.line = line;
                        self.line.clear();
                    }
                }
            }
        }
        Ok(())
    }

    /// True when the parser is between responses (or reading a body that ends with the
    /// connection, which an end of stream completes).
    fn at_boundary(&self) -> bool {
        matches!(self.part, Part::StatusLine | Part::UntilClose) && self.line.is_empty()
    }

    /// The end of the connection: completes a body that runs until the close.
    pub fn finish(&mut self, done: &mut impl FnMut(u16, &str)) {
        if self.part == Part::UntilClose {
            done(self.status, &self.status_line);
            self.part = Part::StatusLine;
        }
    }

    fn line_complete(
        &mut self,
        line: &str,
        done: &mut impl FnMut(u16, &str),
    ) -> Result<(), String> {
        match self.part {
            Part::StatusLine => {
                if line.is_empty() {
                    // Tolerate a stray empty line between responses.
                    return Ok(());
                }
                let mut words = line.splitn(3, ' ');
                let version = words.next().unwrap_or("");
                let code = words.next().unwrap_or("");
                if !version.starts_with("HTTP/1.") || code.len() != 3 {
                    return Err(format!("not an HTTP/1.x status line: {line:?}"));
                }
                self.status = code
                    .parse()
                    .map_err(|_| format!("bad status code in {line:?}"))?;
                self.status_line = line.to_string();
                self.content_length = None;
                self.chunked = false;
                self.part = Part::Headers;
            }
            Part::Headers if line.is_empty() => {
                self.part = if (100..200).contains(&self.status) {
                    // An interim response; the real one follows.
                    Part::StatusLine
                } else if self.status == 204 || self.status == 304 {
                    done(self.status, &self.status_line);
                    Part::StatusLine
                } else if self.chunked {
                    Part::ChunkSize
                } else {
                    match self.content_length {
                        Some(0) => {
                            done(self.status, &self.status_line);
                            Part::StatusLine
                        }
                        Some(n) => Part::Body(n),
                        None => Part::UntilClose,
                    }
                };
            }
            Part::Headers => {
                let (name, value) = line
                    .split_once(':')
                    .ok_or_else(|| format!("bad header line {line:?}"))?;
                let (name, value) = (name.trim(), value.trim());
                if name.eq_ignore_ascii_case("content-length") {
                    self.content_length = Some(
                        value
                            .parse()
                            .map_err(|_| format!("bad Content-Length {value:?}"))?,
                    );
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    self.chunked = value
                        .rsplit(',')
                        .next()
                        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
                }
            }
            Part::ChunkSize => {
                let hex = line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(hex, 16)
                    .map_err(|_| format!("bad chunk size line {line:?}"))?;
                self.part = if size == 0 {
                    Part::Trailers
                } else {
                    Part::ChunkData(size)
                };
            }
            Part::ChunkEnd => {
                if !line.is_empty() {
                    return Err("chunk data not followed by CRLF".into());
                }
                self.part = Part::ChunkSize;
            }
            Part::Trailers => {
                if line.is_empty() {
                    done(self.status, &self.status_line);
                    self.part = Part::StatusLine;
                }
            }
            Part::Body(_) | Part::ChunkData(_) | Part::UntilClose => {
                unreachable!("bodies are not read by line")
            }
        }
        Ok(())
    }
}

/// A Pusher app's credentials and the channel its publishes go to (`fanout --pusher-key`).
#[derive(Debug, Clone)]
pub struct PusherAuth {
    /// The app key (`auth_key`).
    pub key: String,
    /// The app secret (signs each request).
    pub secret: String,
    /// The channel of every event.
    pub channel: String,
}

/// The HTTP publisher: pipelined `POST`s on one keep-alive connection.
pub struct HttpPub {
    /// Pusher mode: each publish a signed event with these credentials.
    pusher: Option<Box<PusherAuth>>,
    /// The URL's path and `Host` (what a signed request is built from).
    path: String,
    host: String,
    fd: OwnedFd,
    /// `POST PATH HTTP/1.1` and the fixed headers, up to and including `Content-Length: `.
    head: Vec<u8>,
    out: Vec<u8>,
    out_head: usize,
    parser: ResponseParser,
    /// Requests queued.
    pub requests: u64,
    /// Complete responses read.
    pub responses: u64,
    /// Responses with a status outside 2xx.
    pub errors: u64,
    /// The status line of the first of those.
    pub first_error: Option<String>,
    /// Why the connection is unusable, once it is.
    pub closed: Option<String>,
}

impl HttpPub {
    /// Connects (blocking, on loopback) and switches to non-blocking.
    pub fn connect(url: &HttpUrl) -> Result<HttpPub, String> {
        let s = std::net::TcpStream::connect(url.addr).map_err(|e| {
            format!(
                "--pub-http {}: {e} (is the server listening there?)",
                url.addr
            )
        })?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let fd: OwnedFd = s.into();
        sys::set_nonblocking(fd.as_raw_fd()).map_err(|e| e.to_string())?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: ",
            url.path, url.host
        )
        .into_bytes();
        Ok(HttpPub {
            pusher: None,
            path: url.path.clone(),
            host: url.host.clone(),
            fd,
            head,
            out: Vec::with_capacity(1 << 16),
            out_head: 0,
            parser: ResponseParser::default(),
            requests: 0,
            responses: 0,
            errors: 0,
            first_error: None,
            closed: None,
        })
    }

    /// The socket, to register with the poller (edge-triggered, read and write).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Bytes queued by `publish` and not yet taken by the kernel.
    pub fn backlog(&self) -> usize {
        self.out.len() - self.out_head
    }

    /// Requests sent (or queued) that have no response yet.
    pub fn unanswered(&self) -> u64 {
        self.requests - self.responses
    }

    /// Makes every publish a Pusher HTTP API event `bench` on `auth.channel`, signed with the
    /// app's secret (a new signature per request: the timestamp and `body_md5` change).
    pub fn set_pusher(&mut self, auth: PusherAuth) {
        self.pusher = Some(Box::new(auth));
    }

    /// Queues one `POST` with `payload` as its body.
    pub fn publish(&mut self, payload: &[u8]) {
        if let Some(auth) = &self.pusher {
            let (path, host) = (&self.path, &self.host);
            self.requests += 1;
            let body = crate::pusher::event_body("bench", &auth.channel, payload);
            let now_s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let query = crate::pusher::signed_query(&auth.key, &auth.secret, path, &body, now_s);
            write!(
                self.out,
                "POST {path}?{query} HTTP/1.1\r\nHost: {host}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .expect("writing to a Vec cannot fail");
            self.out.extend_from_slice(&body);
            return;
        }
        self.requests += 1;
        self.out.extend_from_slice(&self.head);
        write!(self.out, "{}\r\n\r\n", payload.len()).expect("writing to a Vec cannot fail");
        self.out.extend_from_slice(payload);
    }

    /// Writes until done or `EAGAIN` (the registration is edge-triggered).
    pub fn flush(&mut self) {
        while self.backlog() > 0 && self.closed.is_none() {
            match sys::write(self.fd.as_raw_fd(), &self.out[self.out_head..]) {
                Ok(n) => self.out_head += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.closed = Some(format!("HTTP publisher write: {e}")),
            }
        }
        if self.out_head == self.out.len() {
            self.out.clear();
            self.out_head = 0;
        } else if self.out_head > (1 << 20) {
            self.out.drain(..self.out_head);
            self.out_head = 0;
        }
    }

    /// Reads responses until `EAGAIN`; counts them, and the errors, keeping the first one.
    pub fn read_responses(&mut self, buf: &mut [u8]) {
        while self.closed.is_none() {
            match sys::read(self.fd.as_raw_fd(), buf) {
                Ok(0) => {
                    self.parser.finish(&mut count(
                        &mut self.responses,
                        &mut self.errors,
                        &mut self.first_error,
                    ));
                    let cut = if self.parser.at_boundary() {
                        ""
                    } else {
                        " in the middle of a response"
                    };
                    self.closed = Some(format!(
                        "HTTP publisher connection closed by the server{cut} after {} responses",
                        self.responses
                    ));
                }
                Ok(n) => {
                    let mut done =
                        count(&mut self.responses, &mut self.errors, &mut self.first_error);
                    if let Err(e) = self.parser.feed(&buf[..n], &mut done) {
                        self.closed = Some(format!("HTTP publisher: malformed response: {e}"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.closed = Some(format!("HTTP publisher read: {e}")),
            }
        }
    }
}

/// The response counter handed to the parser.
fn count<'a>(
    responses: &'a mut u64,
    errors: &'a mut u64,
    first_error: &'a mut Option<String>,
) -> impl FnMut(u16, &str) + 'a {
    move |status, line| {
        *responses += 1;
        if !(200..300).contains(&status) {
            *errors += 1;
            if first_error.is_none() {
                *first_error = Some(line.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three pipelined responses of every framing (and an interim 100 Continue), then one
    /// without a length that runs until the close.
    const STREAM: &[u8] = b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n\
        HTTP/1.1 100 Continue\r\n\r\n\
        HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-type: text/plain\r\n\r\nhello\
        HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
        4;ext=1\r\nbusy\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: y\r\n\r\n\
        HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n\
        HTTP/1.0 404 Not Found\r\n\r\nno length: up to the close";

    fn parse_split(at: &[usize]) -> Vec<(u16, String)> {
        let mut p = ResponseParser::default();
        let mut seen = Vec::new();
        let mut done = |s: u16, l: &str| seen.push((s, l.to_string()));
        let mut from = 0;
        for &cut in at.iter().chain(std::iter::once(&STREAM.len())) {
            p.feed(&STREAM[from..cut], &mut done).unwrap();
            from = cut;
        }
        p.finish(&mut done);
        assert!(p.at_boundary());
        seen
    }

    fn expected() -> Vec<(u16, String)> {
        vec![
            (204, "HTTP/1.1 204 No Content".into()),
            (200, "HTTP/1.1 200 OK".into()),
            (503, "HTTP/1.1 503 Service Unavailable".into()),
            (201, "HTTP/1.1 201 Created".into()),
            (404, "HTTP/1.0 404 Not Found".into()),
        ]
    }

    #[test]
    fn responses_split_at_every_byte() {
        assert_eq!(parse_split(&[]), expected());
        for cut in 0..=STREAM.len() {
            assert_eq!(parse_split(&[cut]), expected(), "split at {cut}");
        }
        let every: Vec<usize> = (1..STREAM.len()).collect();
        assert_eq!(parse_split(&every), expected());
    }

    #[test]
    fn malformed_responses_are_errors() {
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXY\r\n",
        ] {
            let mut p = ResponseParser::default();
            assert!(p.feed(bad, &mut |_, _| {}).is_err(), "{bad:?}");
        }
        let mut p = ResponseParser::default();
        let long = vec![b'a'; LINE_BYTES_MAX + 1];
        assert!(p.feed(&long, &mut |_, _| {}).is_err());
    }

    #[test]
    fn unfinished_response_is_not_at_a_boundary() {
        let mut p = ResponseParser::default();
        let mut n = 0;
        p.feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc",
            &mut |_, _| n += 1,
        )
        .unwrap();
        assert_eq!(n, 0);
        assert!(!p.at_boundary());
    }
}
