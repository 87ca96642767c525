//! One TCP connection to Redis: blocking while it is set up (connect, `AUTH`, `SELECT`,
//! `CLIENT SETNAME`, `SCRIPT LOAD`, each within the timeout), non-blocking afterwards, when
//! the bridge's `poll` drives it. Owns the socket, the read buffer (at most the decoder's
//! `bytes_max` plus one read) and the write buffer (the bridge stops queueing past its bound).

use super::resp::{self, Decoder, Reply};
use super::url::RedisUrl;
use crate::broker::DownCause;
use bytes::BytesMut;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// Bytes taken from the socket by one `fill`, so one busy connection cannot hold the loop.
const FILL_BYTES_MAX: usize = 1 << 20;

/// A connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    read: BytesMut,
    scratch: Vec<u8>,
    write: Vec<u8>,
    written: usize,
    decoder: Decoder,
}

fn io_cause(e: std::io::Error) -> DownCause {
    DownCause::Io(e.to_string())
}

/// The addresses of the URL's host (a name is resolved again on every attempt).
pub fn resolve(url: &RedisUrl) -> Result<Vec<SocketAddr>, DownCause> {
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| DownCause::Connect(format!("{}: {e}", url.host)))?
        .collect();
    if addrs.is_empty() {
        return Err(DownCause::Connect(format!("{}: no address", url.host)));
    }
    Ok(addrs)
}

impl Conn {
    /// Connects to `addr` and runs the login commands (blocking, each within `timeout`).
    pub fn open(
        addr: SocketAddr,
        url: &RedisUrl,
        name: &str,
        timeout: Duration,
        bytes_max: usize,
    ) -> Result<Conn, DownCause> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| DownCause::Connect(format!("{addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let setup = |e: std::io::Error| DownCause::Connect(format!("{addr}: {e}"));
        stream.set_read_timeout(Some(timeout)).map_err(setup)?;
        stream.set_write_timeout(Some(timeout)).map_err(setup)?;
        let mut conn = Conn {
            stream,
            read: BytesMut::with_capacity(64 * 1024),
            scratch: vec![0; 64 * 1024],
            write: Vec::new(),
            written: 0,
            decoder: Decoder { bytes_max },
        };
        if let Some(password) = &url.password {
            match &url.user {
                Some(user) => conn.setup(&[b"AUTH", user.as_bytes(), password.as_bytes()])?,
                None => conn.setup(&[b"AUTH", password.as_bytes()])?,
            };
        }
        if url.db != 0 {
            conn.setup(&[b"SELECT", url.db.to_string().as_bytes()])?;
        }
        conn.setup(&[b"CLIENT", b"SETNAME", name.as_bytes()])?;
        Ok(conn)
    }

    /// One command during set-up: its reply, an error reply being a connect failure.
    pub fn setup(&mut self, args: &[&[u8]]) -> Result<Reply, DownCause> {
        let reply = self.call(args)?;
        if let Reply::Error(e) = &reply {
            let command = String::from_utf8_lossy(args[0]);
            return Err(DownCause::Connect(format!(
                "{command}: {}",
                String::from_utf8_lossy(e)
            )));
        }
        Ok(reply)
    }

    /// A blocking request and its reply (before `set_nonblocking`).
    fn call(&mut self, args: &[&[u8]]) -> Result<Reply, DownCause> {
        let mut out = Vec::new();
        resp::command(&mut out, args);
        self.stream.write_all(&out).map_err(io_cause)?;
        loop {
            if let Some(reply) = self.reply()? {
                return Ok(reply);
            }
            let n = self.stream.read(&mut self.scratch).map_err(io_cause)?;
            if n == 0 {
                return Err(DownCause::Closed);
            }
            self.read.extend_from_slice(&self.scratch[..n]);
        }
    }

    /// Set-up is over: from now on the bridge's `poll` says when to read and write.
    pub fn set_nonblocking(&self) -> Result<(), DownCause> {
        self.stream.set_nonblocking(true).map_err(io_cause)
    }

    /// The socket, for `poll`.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Queues a command (written by `flush`).
    pub fn queue(&mut self, args: &[&[u8]]) {
        resp::command(&mut self.write, args);
    }

    /// Bytes queued and not yet written.
    pub fn unwritten(&self) -> usize {
        self.write.len() - self.written
    }

    /// Writes what the socket takes now.
    pub fn flush(&mut self) -> Result<(), DownCause> {
        while self.written < self.write.len() {
            match self.stream.write(&self.write[self.written..]) {
                Ok(0) => return Err(DownCause::Closed),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_cause(e)),
            }
        }
        if self.written == self.write.len() {
            self.write.clear();
            self.written = 0;
        } else if self.written > self.write.len() / 2 {
            self.write.drain(..self.written);
            self.written = 0;
        }
        Ok(())
    }

    /// Reads what the socket has now (up to a bound per call).
    pub fn fill(&mut self) -> Result<(), DownCause> {
        let mut taken = 0;
        while taken < FILL_BYTES_MAX && self.read.len() <= self.decoder.bytes_max {
            match self.stream.read(&mut self.scratch) {
                Ok(0) => return Err(DownCause::Closed),
                Ok(n) => {
                    self.read.extend_from_slice(&self.scratch[..n]);
                    taken += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_cause(e)),
            }
        }
        Ok(())
    }

    /// The next complete reply read so far.
    pub fn reply(&mut self) -> Result<Option<Reply>, DownCause> {
        self.decoder
            .decode(&mut self.read)
            .map_err(|e| DownCause::Protocol(e.to_string()))
    }
}

/// Connects the bridge's two connections (subscriber, commands) to the first address of the
/// URL that takes both.
pub fn open_pair(
    url: &RedisUrl,
    node: &str,
    timeout: Duration,
    bytes_max: usize,
) -> Result<(Conn, Conn), DownCause> {
    let started = Instant::now();
    let mut last = DownCause::Connect("no address".to_string());
    for addr in resolve(url)? {
        if started.elapsed() > timeout * 4 {
            break;
        }
        let sub = Conn::open(
            addr,
            url,
            &format!("ringcast:{node}:sub"),
            timeout,
            bytes_max,
        );
        let pair = sub.and_then(|sub| {
            let cmd = Conn::open(
                addr,
                url,
                &format!("ringcast:{node}:cmd"),
                timeout,
                bytes_max,
            )?;
            Ok((sub, cmd))
        });
        match pair {
            Ok(pair) => return Ok(pair),
            Err(e) => last = e,
        }
    }
    Err(last)
}
