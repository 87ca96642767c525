//! Baseline for the fan-out comparison: the floor. The simplest server that does on its send
//! path what the fastest C++ push servers (uWebSockets on uSockets) do, and nothing else:
//!
//! - one thread and one level-triggered epoll set, through libc (no async runtime);
//! - one contiguous output buffer (`Vec<u8>`) per socket;
//! - each published frame encoded once (header and unmasked payload, straight into a batch
//!   buffer) and then copied into every subscriber's output buffer;
//! - one `send` per dirty socket per loop turn, after every ready event of that `epoll_wait`
//!   has been handled, so publishes that arrive within one turn leave in one `send`.
//!
//! No JSON, no channels, no per-connection state beyond the above, and no limits but the ones
//! that keep it from crashing (a request head, a client frame, and a subscriber's unsent
//! output are bounded; the last closes the subscriber). Every connection is a subscriber; every
//! text or binary message a client sends goes to every other connection, in a frame of the
//! same type: the same contract as the `tokio-broadcast` baseline, so `ringcast-load fanout
//! --pub-ws` drives both unchanged, and each subscriber receives the payload as a raw frame
//! (what ringcast sends with `format=raw`).
//!
//! Why it is the reference: what is left here is work no push server avoids — copying each
//! frame to each subscriber and the kernel's TCP work for each `send` — so its delivered rate
//! on a machine marks how far a design can get with a `send` per socket per turn. What a
//! server measures below it is the cost of its own machinery (envelopes, limits, queues,
//! cross-core hand-offs); above it, the gain of doing less kernel work per frame.
//!
//! Client frames: pings are answered with a pong; a close is answered with a close (its status
//! code echoed) and the TCP connection is then closed by the server (RFC 6455 §7.1.1); pongs,
//! and fragmented messages (which nothing in the load generator sends), are read and dropped.
//!
//! Usage: epoll-floor-baseline 127.0.0.1:PORT   (port 0 picks one; the ready line says which)

use std::io::{self, Write as _};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use base64::Engine as _;

/// RFC 6455 §4.2.2 step 5.4.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Every ready socket is read once per turn into this one buffer, shared by all connections;
/// only an unfinished head or frame is copied out of it, into the connection's own input.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Events taken per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;
/// A request head that grows past this without ending is refused (the connection is closed).
const HEAD_BYTES_MAX: usize = 8 * 1024;
/// A client frame longer than this closes its connection: the load generator's largest
/// payload is 1 MiB, and the length would otherwise be trusted from the wire.
const FRAME_BYTES_MAX: u64 = 16 << 20;
/// A subscriber whose unsent output would pass this is closed without a close frame (the
/// generator counts it as disconnected and its missing frames as lost): a reader that stopped
/// must not take the machine's memory. Worst case: this much per connection.
const OUT_BYTES_MAX: usize = 16 << 20;
/// The listening socket's epoll token; connections use their slot index.
const LISTENER: u64 = u64::MAX;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the complete request head.
    Handshake,
    /// Upgraded: a subscriber, and a publisher of what it sends.
    Open,
    /// A close frame (or a refusal) is queued; the socket is closed once `out` is written, and
    /// nothing more is read into the connection or fanned out to it.
    Closing,
}

struct Conn {
    fd: OwnedFd,
    state: State,
    /// Bytes of an unfinished request head or client frame, kept between reads.
    input: Vec<u8>,
    /// Frames not written yet: the socket's one contiguous output buffer.
    out: Vec<u8>,
    /// In this turn's dirty list.
    dirty: bool,
    /// EPOLLOUT is in the socket's interest set: the kernel took only part of `out`.
    want_out: bool,
}

struct Server {
    epoll: OwnedFd,
    listener: TcpListener,
    /// Connections by slot; a slot's index is its epoll token.
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Slots with output to write this turn (each at most once: `Conn::dirty`).
    dirty: Vec<usize>,
    read_buf: Vec<u8>,
    /// The frames of one read of a publisher, encoded once, copied to every subscriber.
    batch: Vec<u8>,
    /// Subscribers to close after a fan-out (over `OUT_BYTES_MAX`).
    doomed: Vec<usize>,
    closed_over_bound: u64,
    accept_errors: u64,
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9003".to_string());
    raise_nofile_limit();
    let mut server = match Server::bind(&addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("epoll-floor: {addr}: {e}");
            std::process::exit(1);
        }
    };
    let local = server
        .listener
        .local_addr()
        .expect("a bound socket has an address");
    println!(
        "epoll-floor ready listen={local} pid={}",
        std::process::id()
    );
    let _ = io::stdout().flush();
    server.run();
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: thousands of subscribers need more
/// descriptors than the usual soft default of 1024.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the call's duration.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max
    {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; failure leaves the old limit, which is only reported.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            eprintln!("epoll-floor: setrlimit: {}", io::Error::last_os_error());
        }
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn epoll_ctl(epoll: RawFd, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a valid epoll_event for the call's duration; the kernel copies it.
    cvt(unsafe { libc::epoll_ctl(epoll, op, fd, &mut ev) }).map(drop)
}

fn errno_is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl Server {
    fn bind(addr: &str) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        // Linux lets listen(2) on a listening socket change its backlog: std's default is
        // smaller than the generator's 256 connects in flight (the kernel caps it at somaxconn).
        // SAFETY: a plain call on a socket this process owns.
        cvt(unsafe { libc::listen(listener.as_raw_fd(), 4096) })?;
        // SAFETY: a plain call; the returned descriptor is owned below.
        let epoll = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `epoll` is a fresh descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            listener.as_raw_fd(),
            libc::EPOLLIN as u32,
            LISTENER,
        )?;
        Ok(Server {
            epoll,
            listener,
            conns: Vec::new(),
            free: Vec::new(),
            dirty: Vec::new(),
            read_buf: vec![0; READ_BUFFER_BYTES],
            batch: Vec::new(),
            doomed: Vec::new(),
            closed_over_bound: 0,
            accept_errors: 0,
        })
    }

    /// The loop: handle every ready event of one `epoll_wait`, then one flush of the dirty
    /// sockets.
    fn run(&mut self) -> ! {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        loop {
            // SAFETY: `events` has room for EVENTS_PER_WAIT entries, all writable.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    EVENTS_PER_WAIT as libc::c_int,
                    -1,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("epoll_wait: {e}");
            }
            for ev in &events[..n as usize] {
                // Copies out of the (packed on x86-64) event.
                let (token, flags) = (ev.u64, ev.events);
                if token == LISTENER {
                    self.accept();
                    continue;
                }
                // A slot closed earlier in this pass may already hold a new connection: a read
                // then finds nothing (EAGAIN) and a write only what that connection queued.
                let slot = token as usize;
                if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                    self.read(slot);
                }
                if flags & libc::EPOLLOUT as u32 != 0 {
                    self.mark_dirty(slot);
                }
            }
            self.flush();
        }
    }

    fn accept(&mut self) {
        loop {
            // SAFETY: null address pointers are allowed (the peer's address is not wanted).
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR | libc::ECONNABORTED) => continue,
                    _ => {
                        // Out of descriptors, most likely: the listener stays readable and the
                        // next turn tries again. Reported at powers of two, not every turn.
                        self.accept_errors += 1;
                        if self.accept_errors.is_power_of_two() {
                            eprintln!("epoll-floor: accept: {e} ({} so far)", self.accept_errors);
                        }
                        return;
                    }
                }
            }
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let one: libc::c_int = 1;
            // SAFETY: `one` is a valid c_int for the call's duration. Best effort, as in the
            // other baselines: without it small frames may wait for Nagle's algorithm.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            if let Err(e) = epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                libc::EPOLLIN as u32,
                slot as u64,
            ) {
                eprintln!("epoll-floor: epoll_ctl: {e}");
                self.free.push(slot);
                continue;
            }
            self.conns[slot] = Some(Conn {
                fd,
                state: State::Handshake,
                input: Vec::new(),
                out: Vec::new(),
                dirty: false,
                want_out: false,
            });
        }
    }

    fn close(&mut self, slot: usize) {
        // Dropping the descriptor closes it, which also takes it out of the epoll set.
        if self.conns[slot].take().is_some() {
            self.free.push(slot);
        }
    }

    fn mark_dirty(&mut self, slot: usize) {
        if let Some(c) = self.conns[slot].as_mut()
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(slot);
        }
    }

    /// One read of a ready socket; its complete frames are handled, what it published is
    /// fanned out.
    fn read(&mut self, slot: usize) {
        let Server {
            conns,
            read_buf,
            batch,
            ..
        } = self;
        let Some(conn) = conns[slot].as_mut() else {
            return;
        };
        // SAFETY: `read_buf` is valid and writable for its whole length.
        let n = unsafe {
            libc::read(
                conn.fd.as_raw_fd(),
                read_buf.as_mut_ptr().cast(),
                read_buf.len(),
            )
        };
        if n == 0 {
            return self.close(slot);
        }
        if n < 0 {
            if errno_is_transient(&io::Error::last_os_error()) {
                return;
            }
            return self.close(slot);
        }
        let data = &read_buf[..n as usize];
        if conn.state == State::Closing {
            // The close reply is on its way; what follows it is dropped.
            return;
        }
        let mut input = std::mem::take(&mut conn.input);
        let result = if input.is_empty() {
            // The common case: nothing pending, the frames are read in the shared buffer.
            let r = consume(&mut conn.state, data, &mut conn.out, batch);
            if let Ok(used) = r {
                input.extend_from_slice(&data[used..]);
            }
            r
        } else {
            input.extend_from_slice(data);
            let r = consume(&mut conn.state, &input, &mut conn.out, batch);
            if let Ok(used) = r {
                input.drain(..used);
            }
            r
        };
        conn.input = input;
        let has_output = !conn.out.is_empty();
        if result.is_err() {
            batch.clear();
            return self.close(slot);
        }
        if has_output {
            self.mark_dirty(slot);
        }
        if !self.batch.is_empty() {
            self.fan_out(slot);
        }
    }

    /// Copies the batch into every other open connection's output buffer.
    fn fan_out(&mut self, sender: usize) {
        let Server {
            conns,
            dirty,
            batch,
            doomed,
            ..
        } = self;
        for (slot, c) in conns.iter_mut().enumerate() {
            let Some(c) = c else { continue };
            if slot == sender || c.state != State::Open {
                continue;
            }
            if c.out.len() + batch.len() > OUT_BYTES_MAX {
                doomed.push(slot);
                continue;
            }
            c.out.extend_from_slice(batch);
            if !c.dirty {
                c.dirty = true;
                dirty.push(slot);
            }
        }
        batch.clear();
        while let Some(slot) = self.doomed.pop() {
            self.closed_over_bound += 1;
            eprintln!(
                "epoll-floor: closed a subscriber over {OUT_BYTES_MAX} bytes of unsent output \
                 ({} so far)",
                self.closed_over_bound
            );
            self.close(slot);
        }
    }

    /// One `send` per dirty socket; EPOLLOUT is asked for while the kernel leaves some unsent.
    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            let epoll = self.epoll.as_raw_fd();
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            if !c.dirty {
                continue;
            }
            c.dirty = false;
            if !c.out.is_empty() {
                // SAFETY: `out` is valid for reads of its length. MSG_NOSIGNAL: a peer that
                // went away is an EPIPE here, not a SIGPIPE.
                let n = unsafe {
                    libc::send(
                        c.fd.as_raw_fd(),
                        c.out.as_ptr().cast(),
                        c.out.len(),
                        libc::MSG_NOSIGNAL,
                    )
                };
                if n >= 0 {
                    c.out.drain(..n as usize);
                } else if !errno_is_transient(&io::Error::last_os_error()) {
                    self.close(slot);
                    continue;
                }
            }
            let wanted = if c.out.is_empty() {
                if c.state == State::Closing {
                    self.close(slot);
                    continue;
                }
                false
            } else {
                true
            };
            if wanted != c.want_out {
                let events = libc::EPOLLIN as u32 | if wanted { libc::EPOLLOUT as u32 } else { 0 };
                if epoll_ctl(
                    epoll,
                    libc::EPOLL_CTL_MOD,
                    c.fd.as_raw_fd(),
                    events,
                    slot as u64,
                )
                .is_err()
                {
                    self.close(slot);
                    continue;
                }
                c.want_out = wanted;
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }
}

/// The `Sec-WebSocket-Key` header of a request head, if present.
fn websocket_key(head: &[u8]) -> Option<&[u8]> {
    head.split(|&b| b == b'\n').find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        name.trim_ascii()
            .eq_ignore_ascii_case(b"sec-websocket-key")
            .then(|| value.trim_ascii())
    })
}

/// The 101 answer to a request head with `key` (RFC 6455 §4.2.2).
fn upgrade_response(key: &[u8], out: &mut Vec<u8>) {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(GUID);
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends an unmasked server frame header (FIN set) for `len` payload bytes (RFC 6455 §5.2).
fn frame_header(opcode: u8, len: usize, out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends `payload` unmasked (RFC 6455 §5.3; a frame without the mask bit is taken as is).
fn unmask_into(payload: &[u8], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    match mask {
        Some(m) => out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i & 3])),
        None => out.extend_from_slice(payload),
    }
}

/// A client frame that cannot be handled: the connection is closed.
#[derive(Debug, PartialEq, Eq)]
struct Refused;

/// Handles what a connection sent (sans-IO): the request head while handshaking, then every
/// complete client frame. Answers (101, pong, close) go to `out`; data messages, encoded once
/// as server frames, go to `batch` for the fan-out. Returns how many bytes were used; the rest
/// is an unfinished head or frame to keep until more arrives.
fn consume(
    state: &mut State,
    data: &[u8],
    out: &mut Vec<u8>,
    batch: &mut Vec<u8>,
) -> Result<usize, Refused> {
    let mut at = 0;
    if *state == State::Handshake {
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            return if data.len() > HEAD_BYTES_MAX {
                Err(Refused)
            } else {
                Ok(0)
            };
        };
        match websocket_key(&data[..end]) {
            Some(key) => {
                upgrade_response(key, out);
                *state = State::Open;
            }
            None => {
                out.extend_from_slice(
                    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                );
                *state = State::Closing;
                return Ok(data.len());
            }
        }
        at = end + 4;
    }
    while *state == State::Open {
        let rest = &data[at..];
        if rest.len() < 2 {
            break;
        }
        let (b0, b1) = (rest[0], rest[1]);
        let (mut header, mut len) = (2, u64::from(b1 & 0x7f));
        if len == 126 {
            if rest.len() < 4 {
                break;
            }
            len = u64::from(u16::from_be_bytes([rest[2], rest[3]]));
            header = 4;
        } else if len == 127 {
            if rest.len() < 10 {
                break;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&rest[2..10]);
            len = u64::from_be_bytes(b);
            header = 10;
        }
        if len > FRAME_BYTES_MAX {
            return Err(Refused);
        }
        let mask = if b1 & 0x80 != 0 {
            if rest.len() < header + 4 {
                break;
            }
            let m = [
                rest[header],
                rest[header + 1],
                rest[header + 2],
                rest[header + 3],
            ];
            header += 4;
            Some(m)
        } else {
            None
        };
        let total = header + len as usize;
        if rest.len() < total {
            break;
        }
        let payload = &rest[header..total];
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
        match opcode {
            0x1 | 0x2 if fin => {
                frame_header(opcode, payload.len(), batch);
                unmask_into(payload, mask, batch);
            }
            0x8 => {
                // Echo the status code (RFC 6455 §5.5.1), then the server closes TCP first.
                let mut code = Vec::with_capacity(2);
                unmask_into(&payload[..payload.len().min(2)], mask, &mut code);
                if code.len() < 2 {
                    code.clear();
                }
                frame_header(0x8, code.len(), out);
                out.extend_from_slice(&code);
                *state = State::Closing;
            }
            0x9 => {
                frame_header(0xA, payload.len(), out);
                unmask_into(payload, mask, out);
            }
            // Pongs, continuations and the first frames of fragmented messages.
            _ => {}
        }
        at += total;
    }
    if *state == State::Closing {
        // Nothing after a close is handled.
        return Ok(data.len());
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let len = payload.len();
        if len < 126 {
            f.push(0x80 | len as u8);
        } else if len <= 0xffff {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        frame_header(opcode, payload.len(), &mut f);
        f.extend_from_slice(payload);
        f
    }

    /// Feeds `input` in pieces cut at `cuts`, keeping the unused rest as a connection does.
    fn feed(input: &[u8], cuts: &[usize]) -> (State, Vec<u8>, Vec<u8>, Result<(), Refused>) {
        let (mut state, mut out, mut batch, mut pending) =
            (State::Handshake, Vec::new(), Vec::new(), Vec::new());
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&input.len())) {
            pending.extend_from_slice(&input[from..to]);
            from = to;
            match consume(&mut state, &pending, &mut out, &mut batch) {
                Ok(used) => {
                    pending.drain(..used);
                }
                Err(e) => return (state, out, batch, Err(e)),
            }
        }
        (state, out, batch, Ok(()))
    }

    const REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn handshake_answers_the_rfc_example() {
        let (state, out, batch, r) = feed(REQUEST, &[]);
        assert_eq!(r, Ok(()));
        assert_eq!(state, State::Open);
        assert!(batch.is_empty());
        let text = String::from_utf8(out).expect("ASCII");
        assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
        // RFC 6455 §1.3's example key and accept value.
        assert!(
            text.ends_with("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"),
            "{text}"
        );
    }

    #[test]
    fn a_head_without_key_is_refused_and_an_endless_head_closes() {
        let (state, out, _, r) = feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &[]);
        assert_eq!(r, Ok(()));
        assert_eq!(state, State::Closing);
        assert!(out.starts_with(b"HTTP/1.1 400 "));
        let endless = vec![b'a'; HEAD_BYTES_MAX + 1];
        assert_eq!(feed(&endless, &[]).3, Err(Refused));
    }

    #[test]
    fn frames_split_anywhere_give_the_same_result() {
        let big = vec![b'x'; 70_000];
        let mut input = REQUEST.to_vec();
        input.extend(client_frame(0x1, b"hello", [1, 2, 3, 4]));
        input.extend(client_frame(0x9, b"p", [9, 8, 7, 6]));
        input.extend(client_frame(0x2, &[0u8; 300], [5, 5, 5, 5]));
        input.extend(client_frame(0xA, b"pong", [1, 1, 1, 1]));
        // Where the large frame's payload starts and ends (a 10-byte header with the mask).
        let big_at = input.len() + 14;
        input.extend(client_frame(0x1, &big, [0, 1, 0, 1]));
        // A fragmented message: both frames are dropped.
        let mut first = client_frame(0x1, b"frag", [3, 3, 3, 3]);
        first[0] &= 0x7f;
        input.extend(first);
        input.extend(client_frame(0x0, b"ment", [3, 3, 3, 3]));
        input.extend(client_frame(0x8, &1000u16.to_be_bytes(), [7, 7, 7, 7]));
        input.extend(client_frame(0x1, b"after close", [2, 2, 2, 2]));

        let mut want_batch = server_frame(0x1, b"hello");
        want_batch.extend(server_frame(0x2, &[0u8; 300]));
        want_batch.extend(server_frame(0x1, &big));
        let (state, out, batch, r) = feed(&input, &[]);
        assert_eq!(r, Ok(()));
        assert_eq!(state, State::Closing);
        assert_eq!(batch, want_batch);
        let answers = &out[out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        let mut want_answers = server_frame(0xA, b"p");
        want_answers.extend(server_frame(0x8, &1000u16.to_be_bytes()));
        assert_eq!(answers, &want_answers[..]);
        // Every split point, except that the large payload's inside is crossed in steps (its
        // bytes are all alike), and each also as a split into three.
        let big_end = big_at + big.len();
        let cuts = (1..big_at + 8)
            .chain((big_at + 8..big_end - 8).step_by(4099))
            .chain(big_end - 8..input.len());
        for cut in cuts {
            let (s, o, b, r) = feed(&input, &[cut]);
            assert_eq!(
                (s, &o, &b, r),
                (state, &out, &batch, Ok(())),
                "cut at {cut}"
            );
            let second = (cut + 3).min(input.len());
            let (s, o, b, r) = feed(&input, &[cut, second]);
            assert_eq!(
                (s, &o, &b, r),
                (state, &out, &batch, Ok(())),
                "cut at {cut}, {second}"
            );
        }
    }

    #[test]
    fn an_oversized_frame_is_refused() {
        let mut input = REQUEST.to_vec();
        input.extend_from_slice(&[0x81, 0x80 | 127]);
        input.extend_from_slice(&(FRAME_BYTES_MAX + 1).to_be_bytes());
        assert_eq!(feed(&input, &[]).3, Err(Refused));
    }

    #[test]
    fn server_frame_lengths() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = Vec::new();
            frame_header(0x1, len, &mut out);
            assert_eq!(out.len(), header, "{len}");
            assert_eq!(out[0], 0x81);
        }
    }
}
