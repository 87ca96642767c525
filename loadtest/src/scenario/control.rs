//! The generator's side of ringcast's control socket: a non-blocking publisher that pipelines
//! `noreply` publishes (one per line, docs/control.md) and counts any error replies, and a
//! one-off blocking `stats` query for the counters the server keeps itself (closes by code,
//! slow consumers) at the end of a run.
//!
//! The publisher never blocks the event loop: its output is written until `EAGAIN` and the rest
//! waits for the next writable edge; the caller bounds the backlog.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

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
        // The payload is ASCII hex and '.', so it needs no JSON escaping; the channel name is
        // escaped by serde_json to be safe whatever the user passed.
        let id = self.next_id;
        self.next_id += 1;
        let channel = serde_json::to_string(channel).expect("a str always serialises");
        self.out.extend_from_slice(
            format!("{{\"id\":{id},\"method\":\"publish\",\"channel\":{channel},\"text\":\"")
                .as_bytes(),
        );
        self.out.extend_from_slice(payload);
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
