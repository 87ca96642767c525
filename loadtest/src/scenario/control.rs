//! The generator's side of ringcast's control socket: a non-blocking publisher that pipelines
//! `noreply` publishes (one per line, docs/control.md) and counts any error replies, a one-off
//! blocking `stats` query for the counters the server keeps itself (closes by code, slow
//! consumers) at the end of a run, blocking request/reply round trips (`Requester`, for timing
//! `presence_stats`), and an event-stream consumer (`EventConsumer`: `{"method":"events"}`, then
//! the event lines, parsed by `parse_stream_line`).
//!
//! The publisher never blocks the event loop: its output is written until `EAGAIN` and the rest
//! waits for the next writable edge; the caller bounds the backlog. A consumer keeps at most one
//! partial line (`REPLY_LINE_BYTES_MAX`); a stalled consumer reads nothing at all, so what the
//! server owes it stays in the server (bounded there by `event_buffer_bytes_max`) and in the
//! socket's kernel buffers.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::sys;
use crate::target::ControlAddr;

/// Replies read from the control socket are kept up to this line length for error reports.
const REPLY_LINE_BYTES_MAX: usize = 64 * 1024;
/// How long the `stats` query may take.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// The control-socket publisher: pipelined newline-delimited JSON, `noreply` publishes.
pub struct ControlPub {
    fd: OwnedFd,
    out: Vec<u8>,
    out_head: usize,
    input: Vec<u8>,
    next_id: u64,
    /// Reply lines read (errors only, with `noreply`).
    pub replies: u64,
    /// Error replies.
    pub errors: u64,
    /// The first error reply, as received.
    pub first_error: Option<String>,
    /// Why the connection is unusable, once it is.
    pub closed: Option<String>,
}

/// How long a blocking request (`Requester`, the `events` request) may wait for its reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn connect_error(addr: &ControlAddr, e: io::Error) -> String {
    let shown = match addr {
        ControlAddr::Unix(path) => format!("unix:{path}"),
        ControlAddr::Tcp(a) => format!("tcp:{a}"),
    };
    format!("control socket {shown}: {e} (is the server started with --control {shown}?)")
}

impl ControlPub {
    /// Connects (blocking, on loopback or a local socket) and switches to non-blocking.
    pub fn connect(addr: &ControlAddr) -> Result<ControlPub, String> {
        let fd: OwnedFd = match addr {
            ControlAddr::Unix(path) => std::os::unix::net::UnixStream::connect(path)
                .map_err(|e| connect_error(addr, e))?
                .into(),
            ControlAddr::Tcp(a) => {
                let s = std::net::TcpStream::connect(a).map_err(|e| connect_error(addr, e))?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                s.into()
            }
        };
        sys::set_nonblocking(fd.as_raw_fd()).map_err(|e| e.to_string())?;
        Ok(ControlPub {
            fd,
            out: Vec::with_capacity(1 << 16),
            out_head: 0,
            input: Vec::new(),
            next_id: 1,
            replies: 0,
            errors: 0,
            first_error: None,
            closed: None,
        })
    }

    /// The socket, to register with the poller (edge-triggered, read and write).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Bytes written by `publish` and not yet taken by the kernel.
    pub fn backlog(&self) -> usize {
        self.out.len() - self.out_head
    }

    /// Queues one `noreply` publish of `payload` (ASCII, no JSON escaping needed) to `channel`.
    pub fn publish(&mut self, channel: &str, payload: &[u8]) {
        // The payload is ASCII (hex and dots, or the JSON fill, whose quotes are escaped here);
        // the channel name is escaped by serde_json to be safe whatever the user passed.
        let id = self.next_id;
        self.next_id += 1;
        let channel = serde_json::to_string(channel).expect("a str always serialises");
        self.out.extend_from_slice(
            format!("{{\"id\":{id},\"method\":\"publish\",\"channel\":{channel},\"text\":\"")
                .as_bytes(),
        );
        crate::payload::push_json_string_body(payload, &mut self.out);
        self.out.extend_from_slice(b"\",\"noreply\":true}\n");
    }

    /// Writes until done or `EAGAIN` (the registration is edge-triggered).
    pub fn flush(&mut self) {
        while self.backlog() > 0 && self.closed.is_none() {
            match sys::write(self.fd.as_raw_fd(), &self.out[self.out_head..]) {
                Ok(n) => self.out_head += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.closed = Some(format!("control socket write: {e}")),
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

    /// Reads replies until `EAGAIN`; counts errors and keeps the first one.
    pub fn read_replies(&mut self, buf: &mut [u8]) {
        while self.closed.is_none() {
            match sys::read(self.fd.as_raw_fd(), buf) {
                Ok(0) => self.closed = Some("control socket closed by the server".into()),
                Ok(n) => {
                    self.input.extend_from_slice(&buf[..n]);
                    while let Some(end) = self.input.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = self.input.drain(..=end).collect();
                        self.replies += 1;
                        let text = String::from_utf8_lossy(&line);
                        if text.contains("\"error\"") {
                            self.errors += 1;
                            if self.first_error.is_none() {
                                self.first_error = Some(text.trim().to_string());
                            }
                        }
                    }
                    if self.input.len() > REPLY_LINE_BYTES_MAX {
                        self.input.clear();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.closed = Some(format!("control socket read: {e}")),
            }
        }
    }
}

/// A blocking control connection (Unix or TCP).
enum Stream {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl Stream {
    fn connect(addr: &ControlAddr, timeout: Duration) -> Result<Stream, String> {
        let s = match addr {
            ControlAddr::Unix(path) => Stream::Unix(
                std::os::unix::net::UnixStream::connect(path)
                    .map_err(|e| connect_error(addr, e))?,
            ),
            ControlAddr::Tcp(a) => {
                let s = std::net::TcpStream::connect_timeout(a, timeout)
                    .map_err(|e| connect_error(addr, e))?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                Stream::Tcp(s)
            }
        };
        let set = |r: io::Result<()>| r.map_err(|e| format!("control socket: {e}"));
        match &s {
            Stream::Unix(u) => {
                set(u.set_read_timeout(Some(timeout)))?;
                set(u.set_write_timeout(Some(timeout)))?;
            }
            Stream::Tcp(t) => {
                set(t.set_read_timeout(Some(timeout)))?;
                set(t.set_write_timeout(Some(timeout)))?;
            }
        }
        Ok(s)
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Unix(u) => u.write_all(bytes),
            Stream::Tcp(t) => t.write_all(bytes),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(u) => u.read(buf),
            Stream::Tcp(t) => t.read(buf),
        }
    }

    fn into_fd(self) -> OwnedFd {
        match self {
            Stream::Unix(u) => u.into(),
            Stream::Tcp(t) => t.into(),
        }
    }
}

/// Reads from `stream` into `input` until it holds a whole line; returns that line (without
/// its newline) and leaves what followed it in `input`.
fn read_line(stream: &mut Stream, input: &mut Vec<u8>) -> Result<Vec<u8>, String> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = input.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = input.drain(..=end).take(end).collect();
            return Ok(line);
        }
        if input.len() > REPLY_LINE_BYTES_MAX {
            return Err(format!(
                "control socket: a reply line longer than {REPLY_LINE_BYTES_MAX} bytes"
            ));
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err("control socket closed by the server".into()),
            Ok(n) => input.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("control socket read: {e}")),
        }
    }
}

/// A blocking control connection for timed request/reply round trips, one at a time.
pub struct Requester {
    stream: Stream,
    input: Vec<u8>,
    next_id: u64,
}

impl Requester {
    /// Connects (blocking, 10 s timeouts on connect, read and write).
    pub fn connect(addr: &ControlAddr) -> Result<Requester, String> {
        Ok(Requester {
            stream: Stream::connect(addr, REQUEST_TIMEOUT)?,
            input: Vec::new(),
            next_id: 1,
        })
    }

    /// Sends `{"id":N,"method":METHOD,FIELDS}` (`fields`: `,"key":value...` or empty) and
    /// waits for its reply: its `result`, or the error reply as text.
    pub fn call(&mut self, method: &str, fields: &str) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let line = format!("{{\"id\":{id},\"method\":\"{method}\"{fields}}}\n");
        self.stream
            .write_all(line.as_bytes())
            .map_err(|e| format!("control socket write: {e}"))?;
        let reply = read_line(&mut self.stream, &mut self.input)?;
        let v: Value = serde_json::from_slice(&reply).map_err(|e| {
            format!(
                "control socket: unparsable reply ({e}): {}",
                String::from_utf8_lossy(&reply)
            )
        })?;
        if v["id"] != id {
            return Err(format!("control socket: a reply to another request: {v}"));
        }
        match v.get("result") {
            Some(r) => Ok(r.clone()),
            None => Err(format!("{method}: {v}")),
        }
    }
}

/// The type of an event line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `connect`.
    Connect,
    /// `close`.
    Close,
    /// `subscribe`, `unsubscribe`, `message`, `expired`, or a type this tool does not know.
    Other,
}

/// One line of the event stream, as far as the generator checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamLine {
    /// `{"event":KIND,"shard":S,"seq":N,"conn":ID,"user":U|null,...}`.
    Event {
        /// The type.
        kind: EventKind,
        /// The shard that sent it.
        shard: u32,
        /// Its number among the events that shard sent to this consumer.
        seq: u64,
        /// The connection it is about.
        conn: u64,
        /// The connection's user (`None`: null, anonymous).
        user: Option<String>,
    },
    /// `{"event":"gap","dropped":N}`: N events for this consumer were dropped before the next.
    Gap {
        /// How many.
        dropped: u64,
    },
    /// A reply with a `result` (the `events` request's `{"id":..,"result":{}}`).
    Result,
    /// A reply with an `error` (or the server's last line before it closes), as received.
    Error(String),
    /// Not JSON, or an event without the fields every event has.
    Unparsable,
}

#[derive(Deserialize)]
struct RawLine {
    event: Option<String>,
    shard: Option<u32>,
    seq: Option<u64>,
    conn: Option<u64>,
    #[serde(default)]
    user: Option<String>,
    dropped: Option<u64>,
    result: Option<serde::de::IgnoredAny>,
    error: Option<serde::de::IgnoredAny>,
}

/// Reads one line of a consumer's stream (without its newline).
pub fn parse_stream_line(line: &[u8]) -> StreamLine {
    let Ok(raw) = serde_json::from_slice::<RawLine>(line) else {
        return StreamLine::Unparsable;
    };
    match raw.event.as_deref() {
        Some("gap") => match raw.dropped {
            Some(dropped) => StreamLine::Gap { dropped },
            None => StreamLine::Unparsable,
        },
        Some(name) => {
            let kind = match name {
                "connect" => EventKind::Connect,
                "close" => EventKind::Close,
                _ => EventKind::Other,
            };
            match (raw.shard, raw.seq, raw.conn) {
                (Some(shard), Some(seq), Some(conn)) => StreamLine::Event {
                    kind,
                    shard,
                    seq,
                    conn,
                    user: raw.user,
                },
                _ => StreamLine::Unparsable,
            }
        }
        None if raw.error.is_some() => {
            StreamLine::Error(String::from_utf8_lossy(line).into_owned())
        }
        None if raw.result.is_some() => StreamLine::Result,
        None => StreamLine::Unparsable,
    }
}

/// `{"id":1,"method":"events","types":[...],"group":G}`: no `types` when `types` is empty
/// (the server's default: every type), no `group` when `None`.
pub fn events_request(types: &[&str], group: Option<&str>) -> String {
    let quoted = |s: &str| serde_json::to_string(s).expect("a str always serialises");
    let types = if types.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = types.iter().map(|t| quoted(t)).collect();
        format!(",\"types\":[{}]", list.join(","))
    };
    let group = group.map_or(String::new(), |g| format!(",\"group\":{}", quoted(g)));
    format!("{{\"id\":1,\"method\":\"events\"{types}{group}}}\n")
}

/// A control connection that consumes the event stream: it sent `events` and got its `result`
/// (every shard routes to it from then on) before `subscribe` returned. Non-blocking after that;
/// register `raw_fd` for reading and call `read` when it is readable — or never, for a consumer
/// that stalls.
pub struct EventConsumer {
    fd: OwnedFd,
    /// Bytes after the last whole line (at most one partial line, bounded).
    input: Vec<u8>,
    /// Bytes read after the `events` reply.
    pub bytes_in: u64,
    /// Lines longer than `REPLY_LINE_BYTES_MAX`, skipped.
    pub overlong: u64,
    /// Why the connection is unusable, once it is.
    pub closed: Option<String>,
}

impl EventConsumer {
    /// Connects, sends `events` with `types` and `group`, and waits (blocking, at most 10 s) for
    /// its result. Lines that followed the reply in the same read are kept for the first `read`.
    pub fn subscribe(
        addr: &ControlAddr,
        types: &[&str],
        group: Option<&str>,
    ) -> Result<EventConsumer, String> {
        let mut stream = Stream::connect(addr, REQUEST_TIMEOUT)?;
        stream
            .write_all(events_request(types, group).as_bytes())
            .map_err(|e| format!("control socket write: {e}"))?;
        let mut input = Vec::new();
        let line = read_line(&mut stream, &mut input)?;
        match parse_stream_line(&line) {
            StreamLine::Result => {}
            StreamLine::Error(e) => return Err(format!("events: {e}")),
            // Events start after the reply: anything else first is a protocol surprise.
            other => {
                return Err(format!(
                    "events: expected the request's result first, got {other:?}"
                ));
            }
        }
        let fd = stream.into_fd();
        sys::set_nonblocking(fd.as_raw_fd()).map_err(|e| e.to_string())?;
        Ok(EventConsumer {
            fd,
            input,
            bytes_in: 0,
            overlong: 0,
            closed: None,
        })
    }

    /// The socket, to register with the poller (level-triggered reads).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Hands every whole line already buffered to `on_line`, then reads once (up to
    /// `buf.len()` bytes) and does the same with what came; a level-triggered registration
    /// reports the socket again if more is waiting.
    pub fn read(&mut self, buf: &mut [u8], on_line: &mut impl FnMut(StreamLine)) {
        self.take_lines(on_line);
        if self.closed.is_some() {
            return;
        }
        match sys::read(self.fd.as_raw_fd(), buf) {
            Ok(0) => self.closed = Some("control socket closed by the server".into()),
            Ok(n) => {
                self.bytes_in += n as u64;
                self.input.extend_from_slice(&buf[..n]);
                self.take_lines(on_line);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => self.closed = Some(format!("control socket read: {e}")),
        }
    }

    fn take_lines(&mut self, on_line: &mut impl FnMut(StreamLine)) {
        let mut start = 0;
        while let Some(len) = self.input[start..].iter().position(|&b| b == b'\n') {
            let line = &self.input[start..start + len];
            if !line.is_empty() {
                on_line(parse_stream_line(line));
            }
            start += len + 1;
        }
        self.input.drain(..start);
        if self.input.len() > REPLY_LINE_BYTES_MAX {
            // Not a line this tool can use: skip to its end.
            self.overlong += 1;
            self.input.clear();
        }
    }
}

fn query<S: Read + Write>(mut stream: S, request: &str) -> Option<Value> {
    stream.write_all(request.as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let reply: Value = serde_json::from_str(&line).ok()?;
    reply.get("result").cloned()
}

/// The server's own counters (`{"method":"stats"}`, its `result`), asked on a connection of
/// its own; `None` if the server does not answer within 2 s or is not ringcast.
pub fn server_stats(addr: &ControlAddr) -> Option<Value> {
    let request = "{\"id\":1,\"method\":\"stats\"}\n";
    match addr {
        ControlAddr::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path).ok()?;
            s.set_read_timeout(Some(STATS_TIMEOUT)).ok()?;
            s.set_write_timeout(Some(STATS_TIMEOUT)).ok()?;
            query(s, request)
        }
        ControlAddr::Tcp(a) => {
            let s = std::net::TcpStream::connect_timeout(a, STATS_TIMEOUT).ok()?;
            s.set_read_timeout(Some(STATS_TIMEOUT)).ok()?;
            s.set_write_timeout(Some(STATS_TIMEOUT)).ok()?;
            query(s, request)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines() {
        assert_eq!(
            parse_stream_line(
                br#"{"event":"connect","shard":0,"seq":1,"conn":12884901890,"user":"alice","remote":"127.0.0.1","origin":null,"path":"/ws","query":""}"#
            ),
            StreamLine::Event {
                kind: EventKind::Connect,
                shard: 0,
                seq: 1,
                conn: 12_884_901_890,
                user: Some("alice".into()),
            }
        );
        assert_eq!(
            parse_stream_line(
                br#"{"event":"close","shard":1,"seq":7,"conn":5,"user":null,"code":1000}"#
            ),
            StreamLine::Event {
                kind: EventKind::Close,
                shard: 1,
                seq: 7,
                conn: 5,
                user: None,
            }
        );
        assert!(matches!(
            parse_stream_line(
                br#"{"event":"subscribe","shard":0,"seq":2,"conn":5,"user":null,"channel":"c"}"#
            ),
            StreamLine::Event {
                kind: EventKind::Other,
                ..
            }
        ));
        assert_eq!(
            parse_stream_line(br#"{"event":"gap","dropped":12}"#),
            StreamLine::Gap { dropped: 12 }
        );
        assert_eq!(
            parse_stream_line(br#"{"id":1,"result":{}}"#),
            StreamLine::Result
        );
        assert!(matches!(
            parse_stream_line(br#"{"id":1,"error":{"code":"bad_params","message":"x"}}"#),
            StreamLine::Error(_)
        ));
        // An event without its seq, a gap without its count, a cut line: unparsable.
        for bad in [
            &br#"{"event":"close","shard":1,"conn":5,"user":null}"#[..],
            br#"{"event":"gap"}"#,
            br#"{"event":"connect","shard":0,"seq":1,"con"#,
            b"not json",
            br#"{"event":"connect","shard":0,"seq":-1,"conn":5,"user":null}"#,
        ] {
            assert_eq!(parse_stream_line(bad), StreamLine::Unparsable, "{bad:?}");
        }
    }

    #[test]
    fn events_requests() {
        assert_eq!(
            events_request(&["connect", "close"], Some("g")),
            "{\"id\":1,\"method\":\"events\",\"types\":[\"connect\",\"close\"],\"group\":\"g\"}\n"
        );
        let v: Value = serde_json::from_str(&events_request(&[], None)).expect("valid JSON");
        assert_eq!(v["method"], "events");
        assert!(v.get("types").is_none(), "every type");
        assert!(v.get("group").is_none());
    }
}
