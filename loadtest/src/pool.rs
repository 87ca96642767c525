//! The pool of client WebSocket connections and the epoll loop that drives them.
//!
//! One thread, one epoll set, one shared 256 KiB read buffer. A connection owns its socket, a
//! frame reader (a few hundred bytes inline) and an output buffer that is empty except while the
//! kernel refuses bytes. Subscriber sockets are level-triggered and read once per event: a read
//! that fills less than the buffer has drained the socket, so no extra `read` returning `EAGAIN`
//! is paid per event; a socket with more bytes is simply reported again.
//!
//! Scenarios own everything else (publishers, timers) and register it under tokens at or above
//! `TOKEN_SCENARIO`; the pool hands those events to the scenario's `Handler`.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use hdrhistogram::Histogram;

use crate::inflate::Inflater;
use crate::report::Progress;
use crate::sys::{self, Event, Interest, Poller};
use crate::target::WsUrl;
use crate::ws::{self, FrameReader, Response};

/// Tokens from here up belong to the scenario (timers, control sockets); below are connections.
pub const TOKEN_SCENARIO: u64 = 1 << 40;
/// Size of the shared read buffer: large enough that one read drains a socket that has a burst
/// of coalesced frames queued.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Events handled per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;
/// Coalescing applies after a wait that returned fewer events than this; a busier loop already
/// batches by itself.
const COALESCE_BELOW_EVENTS: usize = 64;
/// `close_range` sends this many close frames between two looks at the other sockets.
const CLOSE_BATCH: usize = 256;
/// A connection whose unsent output passes this is failing to keep up; further sends are refused.
pub const OUT_BYTES_MAX: usize = 16 << 20;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started.
    New,
    /// TCP connect in progress; the upgrade request waits in `out`.
    Connecting,
    /// Request sent, waiting for the 101.
    Handshaking,
    /// Upgraded.
    Open,
    /// We sent a close frame and wait for the server to close the TCP connection first
    /// (RFC 6455 §7.1.1), so TIME_WAIT stays on the server's side and repeated runs do not
    /// exhaust the generator's ephemeral ports.
    Closing,
    /// Closed (by us, by the peer, or failed).
    Closed,
}

/// How a connection that was open ended, as the generator saw it: what a scenario reports
/// about connections the server closed (a slow consumer's 4001, a reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The server sent a close frame, with its status code if it had one.
    CloseFrame(Option<u16>),
    /// End of stream without a close frame (possibly in the middle of a frame).
    Eof,
    /// `ECONNRESET` (or `EPIPE`) on a read or a write: the server's kernel reset it.
    Reset,
    /// Another failure: a protocol violation, an unexpected socket error.
    Error,
    /// The generator closed it (close handshake, or dropped at the end of a run).
    ByUs,
}

/// What a scenario does with what the pool receives.
pub trait Handler {
    /// A complete data message on connection `conn`, read at `now_ns`.
    fn message(&mut self, conn: usize, text: bool, prefix: &[u8], len: u64, now_ns: u64);
    /// An event on a scenario-owned token.
    fn scenario_event(&mut self, _ev: Event) {}
    /// Called once after every `epoll_wait` and its events, in every loop of the pool (opening,
    /// holding, closing): where a scenario does periodic work (publishing on a schedule,
    /// sampling the server's memory) that must go on while the pool drives a phase.
    fn after_poll(&mut self, _now_ns: u64) {}
}

/// A handler for phases where data messages are only counted by the pool.
pub struct Ignore;

impl Handler for Ignore {
    fn message(&mut self, _: usize, _: bool, _: &[u8], _: u64, _: u64) {}
}

struct Conn {
    fd: Option<OwnedFd>,
    state: State,
    interest: Interest,
    started_ns: u64,
    /// Expected Sec-WebSocket-Accept while handshaking.
    accept: String,
    /// Response bytes while handshaking.
    response: Vec<u8>,
    out: Vec<u8>,
    reader: FrameReader,
    /// Set once an open connection ends.
    ending: Option<Ending>,
    /// Taken out of the epoll set (`Pool::pause`): nothing is read until `resume`.
    paused: bool,
    /// `SO_RCVBUF` to set before connecting (0: the kernel's default, autotuned).
    rcvbuf_bytes: u32,
    /// A text message to send as soon as the upgrade completes (empty: none).
    on_open: Vec<u8>,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            fd: None,
            state: State::New,
            interest: Interest::Read,
            started_ns: 0,
            accept: String::new(),
            response: Vec::new(),
            out: Vec::new(),
            reader: FrameReader::default(),
            ending: None,
            paused: false,
            rcvbuf_bytes: 0,
            on_open: Vec::new(),
        }
    }
}

/// Counters of the pool, cumulative over the run.
#[derive(Debug)]
pub struct PoolStats {
    /// Connections started.
    pub started: u64,
    /// Upgrades completed.
    pub opened: u64,
    /// Connections that failed before opening.
    pub failed: u64,
    /// Open connections that the server closed or reset.
    pub dropped: u64,
    /// Open connections now.
    pub open_now: u64,
    /// Connections in the close handshake now.
    pub closing_now: u64,
    /// Close handshakes the server completed (close frame or end of stream).
    pub closed_cleanly: u64,
    /// Connections the generator dropped without the close handshake (`abort`).
    pub aborted: u64,
    /// `epoll_wait` calls, events returned and socket reads: events per wait and reads per
    /// message show how well the loop batches.
    pub epoll_waits: u64,
    /// Events returned by `epoll_wait`.
    pub events: u64,
    /// `read` calls on connections.
    pub reads: u64,
    /// Sleeps taken to let events accumulate (see `set_coalesce`).
    pub coalesce_sleeps: u64,
    /// Data messages received (all connections).
    pub messages: u64,
    /// Bytes received after the handshake.
    pub bytes_in: u64,
    /// Pings answered with a pong.
    pub pings: u64,
    /// Upgrades whose response accepted permessage-deflate (`set_deflate`).
    pub deflate_negotiated: u64,
    /// Data messages that arrived compressed (RSV1).
    pub compressed_messages: u64,
    /// Of those, how many the shared inflater had to inflate (the rest repeated bytes it had
    /// just inflated for another connection), and how many did not inflate.
    pub inflated: u64,
    /// Compressed messages that were not valid raw DEFLATE (counted as unparsable as well).
    pub inflate_errors: u64,
    /// Failures by kind ("connect: ...", "handshake: ...", "closed by server: code ...").
    pub errors: BTreeMap<String, u64>,
    /// Upgrade latency, connect() to 101, µs.
    pub handshake_us: Histogram<u64>,
}

/// The connections and their event loop.
pub struct Pool {
    poller: Poller,
    conns: Vec<Conn>,
    /// Where connections go: slot `i` to `urls[target_of(i, spread, urls.len())]`.
    urls: Vec<WsUrl>,
    spread: usize,
    sources: Vec<IpAddr>,
    next_source: usize,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    rng: u64,
    in_flight: usize,
    coalesce_ns: u64,
    last_events: usize,
    /// Offer permessage-deflate in every upgrade request.
    deflate: bool,
    /// Shared by all connections: compressed messages are inflated here, as far as the reader's
    /// prefix width (see `inflate`).
    inflater: Inflater,
    /// Counters.
    pub stats: PoolStats,
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 1000 s at 3 significant digits.
    Histogram::new_with_bounds(1, 1_000_000_000, 3).expect("static histogram bounds are valid")
}

/// A fresh latency histogram (µs, 3 significant digits).
pub fn latency_histogram() -> Histogram<u64> {
    new_histogram()
}

/// Which of `k` targets slot `i` connects to when the first `spread` slots are spread over
/// them round-robin: slot `i < spread` to target `i mod k`, every other slot to the first.
pub fn target_of(i: usize, spread: usize, k: usize) -> usize {
    if i < spread { i % k } else { 0 }
}

impl Pool {
    /// A pool for `count` connections to `url`, binding round-robin to `sources` (may be empty).
    pub fn new(url: WsUrl, count: usize, sources: Vec<IpAddr>) -> io::Result<Pool> {
        let seed = sys::now_ns() ^ u64::from(std::process::id()) << 32;
        Ok(Pool {
            poller: Poller::new(EVENTS_PER_WAIT)?,
            conns: (0..count).map(|_| Conn::new()).collect(),
            urls: vec![url],
            spread: 0,
            sources,
            next_source: 0,
            buf: vec![0; READ_BUFFER_BYTES],
            scratch: Vec::new(),
            rng: seed | 1,
            in_flight: 0,
            coalesce_ns: 0,
            last_events: 0,
            deflate: false,
            inflater: Inflater::default(),
            stats: PoolStats {
                started: 0,
                opened: 0,
                failed: 0,
                dropped: 0,
                open_now: 0,
                closing_now: 0,
                closed_cleanly: 0,
                aborted: 0,
                epoll_waits: 0,
                events: 0,
                reads: 0,
                coalesce_sleeps: 0,
                messages: 0,
                bytes_in: 0,
                pings: 0,
                deflate_negotiated: 0,
                compressed_messages: 0,
                inflated: 0,
                inflate_errors: 0,
                errors: BTreeMap::new(),
                handshake_us: new_histogram(),
            },
        })
    }

    /// Spreads the first `slots` slots over `urls` round-robin (`target_of`); the other slots
    /// go to the first URL. `urls` replaces the pool's URL.
    pub fn spread(&mut self, urls: Vec<WsUrl>, slots: usize) {
        assert!(!urls.is_empty(), "a pool has a target");
        self.urls = urls;
        self.spread = slots;
    }

    /// The index in the pool's URLs (see `spread`) that slot `i` connects to.
    pub fn target(&self, i: usize) -> usize {
        target_of(i, self.spread, self.urls.len())
    }

    /// The epoll set, for scenario-owned fds (register them at `TOKEN_SCENARIO` or above).
    pub fn poller(&self) -> &Poller {
        &self.poller
    }

    /// Lets events accumulate for up to `ns` before waiting again when the last wait found only a
    /// few. Without it, a server that sends one frame at a time wakes the generator once per
    /// frame, and the wake-up (a context switch each way) costs several times the read itself;
    /// with it, one wake-up serves every socket that became readable in the window. The price is
    /// at most `ns` added to a latency reading. 0 disables it.
    pub fn set_coalesce(&mut self, ns: u64) {
        self.coalesce_ns = ns;
    }

    /// Offers permessage-deflate (RFC 7692) in the upgrade requests of connections started from
    /// now on; connections whose server accepts it read compressed messages.
    pub fn set_deflate(&mut self, on: bool) {
        self.deflate = on;
    }

    /// State of connection `i`.
    pub fn state(&self, i: usize) -> State {
        self.conns[i].state
    }

    /// How open connection `i` ended (`None`: it is still open, or it never opened).
    pub fn ending(&self, i: usize) -> Option<Ending> {
        self.conns[i].ending
    }

    /// Stops reading open connection `i`: its socket leaves the epoll set, so nothing is read
    /// from it and no event (not even a reset) is seen until `resume`. The socket stays open,
    /// which is how a client that stops reading looks to the server: its receive window fills,
    /// then the server's send buffer, then the server's own queue. Returns false if `i` is not
    /// open.
    pub fn pause(&mut self, i: usize) -> bool {
        let conn = &mut self.conns[i];
        if conn.state != State::Open || conn.paused {
            return false;
        }
        let Some(fd) = conn.fd.as_ref().map(|f| f.as_raw_fd()) else {
            return false;
        };
        if let Err(e) = self.poller.delete(fd) {
            self.fail(i, format!("epoll_ctl: {e}"));
            return false;
        }
        self.conns[i].paused = true;
        true
    }

    /// Puts paused connection `i` back into the epoll set: what the server sent meanwhile (or
    /// its close, or a reset) is read from the next `poll` on.
    pub fn resume(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if !conn.paused {
            return;
        }
        conn.paused = false;
        let (interest, fd) = (conn.interest, conn.fd.as_ref().map(|f| f.as_raw_fd()));
        if let Some(fd) = fd
            && let Err(e) = self.poller.add(fd, i as u64, interest)
        {
            self.fail(i, format!("epoll_ctl: {e}"));
        }
    }

    /// Gives connection `i` a fixed receive buffer of `bytes` (`SO_RCVBUF`, set before it
    /// connects): a client with a small window, as on a slow mobile link. Without it, a
    /// loopback socket that is not read autotunes its buffer up to `tcp_rmem`'s maximum and
    /// absorbs megabytes before the server's own queue grows at all.
    pub fn set_rcvbuf(&mut self, i: usize, bytes: u32) {
        assert_eq!(
            self.conns[i].state,
            State::New,
            "set before the connection starts"
        );
        self.conns[i].rcvbuf_bytes = bytes;
    }

    /// Makes connection `i` capture the first `ws::WIDE_PREFIX_MAX` bytes of each message
    /// instead of `ws::PREFIX_MAX` (a JSON envelope before the payload); kept across `recycle`.
    pub fn set_wide(&mut self, i: usize) {
        assert_eq!(
            self.conns[i].state,
            State::New,
            "set before the connection starts"
        );
        self.conns[i].reader = FrameReader::wide();
    }

    /// Queues `text` to be sent on connection `i`, as one masked text frame, the moment its
    /// upgrade completes (a command a client sends first thing, such as a subscribe).
    pub fn send_on_open(&mut self, i: usize, text: &[u8]) {
        assert!(
            matches!(
                self.conns[i].state,
                State::New | State::Connecting | State::Handshaking
            ),
            "a connection that is not open yet"
        );
        self.conns[i].on_open = text.to_vec();
    }

    /// Makes closed connection `i` startable again, as a new connection: what it received
    /// before is forgotten, its settings (`set_wide`, `set_rcvbuf`) are kept.
    pub fn recycle(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        assert_eq!(conn.state, State::Closed, "only a closed slot is recycled");
        conn.state = State::New;
        conn.ending = None;
        conn.interest = Interest::Read;
        conn.paused = false;
        conn.on_open = Vec::new();
        conn.reader.reset();
    }

    /// Drops connection `i` at once, without the close handshake, as a client whose network
    /// went away or whose process died would: the socket is closed (the server sees an end of
    /// stream, or a reset if unread data was left), or with `reset` closed with `SO_LINGER` 0
    /// (an RST, and no TIME_WAIT left on the generator's side). A connection still connecting
    /// or handshaking is abandoned the same way. Returns false when there was no socket.
    pub fn abort(&mut self, i: usize, reset: bool) -> bool {
        let conn = &mut self.conns[i];
        let Some(fd) = conn.fd.take() else {
            return false;
        };
        if reset {
            // Best effort: without it the close is a FIN, still abrupt for the WebSocket.
            let _ = sys::set_linger_zero(&fd);
        }
        drop(fd);
        let was = conn.state;
        conn.state = State::Closed;
        conn.paused = false;
        conn.out = Vec::new();
        conn.response = Vec::new();
        conn.accept = String::new();
        conn.on_open = Vec::new();
        match was {
            State::Open => {
                conn.ending.get_or_insert(Ending::ByUs);
                self.stats.open_now -= 1;
            }
            State::Connecting | State::Handshaking => self.in_flight -= 1,
            State::Closing => self.stats.closing_now -= 1,
            State::New | State::Closed => {}
        }
        self.stats.aborted += 1;
        true
    }

    /// Starts the close handshake on open connection `i` without waiting for it: a close frame
    /// (1000) is sent and the connection is `Closing` until the server closes the TCP
    /// connection (seen by later `poll`s). Returns false if `i` is not open or the frame could
    /// not be queued.
    pub fn begin_close(&mut self, i: usize) -> bool {
        if self.conns[i].state != State::Open {
            return false;
        }
        self.resume(i);
        let mut frame = Vec::with_capacity(8);
        let mask = self.mask();
        ws::encode_client(ws::opcode::CLOSE, &1000u16.to_be_bytes(), mask, &mut frame);
        if self.send(i, &frame) && self.conns[i].state == State::Open {
            self.conns[i].state = State::Closing;
            self.conns[i].ending = Some(Ending::ByUs);
            self.stats.open_now -= 1;
            self.stats.closing_now += 1;
            return true;
        }
        false
    }

    /// Unsent output bytes of connection `i`.
    pub fn out_len(&self, i: usize) -> usize {
        self.conns[i].out.len()
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: masks and keys only need to be unpredictable enough for proxies.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A fresh frame mask.
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_random() as u32).to_ne_bytes()
    }

    fn count_error(&mut self, kind: String) {
        *self.stats.errors.entry(kind).or_insert(0) += 1;
    }

    fn fail(&mut self, i: usize, kind: String) {
        self.fail_with(i, Ending::Error, kind);
    }

    /// Drops connection `i`, recording `ending` if it was open, and counts `kind`.
    fn fail_with(&mut self, i: usize, ending: Ending, kind: String) {
        let conn = &mut self.conns[i];
        let was = conn.state;
        if was == State::Open && conn.ending.is_none() {
            conn.ending = Some(ending);
        }
        conn.paused = false;
        conn.fd = None;
        conn.state = State::Closed;
        conn.out = Vec::new();
        conn.response = Vec::new();
        conn.accept = String::new();
        conn.on_open = Vec::new();
        match was {
            State::Connecting | State::Handshaking => {
                self.stats.failed += 1;
                self.in_flight -= 1;
            }
            State::Open => {
                self.stats.dropped += 1;
                self.stats.open_now -= 1;
            }
            State::Closing => self.stats.closing_now -= 1,
            State::New | State::Closed => {}
        }
        self.count_error(kind);
    }

    /// Ends a close handshake that the server completed.
    fn closed_cleanly(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        conn.fd = None;
        conn.state = State::Closed;
        conn.out = Vec::new();
        conn.ending.get_or_insert(Ending::ByUs);
        self.stats.closing_now -= 1;
        self.stats.closed_cleanly += 1;
    }

    fn set_interest(&mut self, i: usize, interest: Interest) {
        let conn = &mut self.conns[i];
        if conn.interest == interest {
            return;
        }
        conn.interest = interest;
        if conn.paused {
            // Not in the epoll set: `resume` registers the interest recorded here.
            return;
        }
        let fd = conn.fd.as_ref().map(|f| f.as_raw_fd());
        if let Some(fd) = fd
            && let Err(e) = self.poller.modify(fd, i as u64, interest)
        {
            self.fail(i, format!("epoll_ctl: {e}"));
        }
    }

    /// Starts connection `i` on `path`. Failures are counted, not returned: a load run goes on
    /// with the connections it could open.
    pub fn start(&mut self, i: usize, path: &str) {
        assert_eq!(
            self.conns[i].state,
            State::New,
            "a slot is started once (or again after `recycle`)"
        );
        let src = (!self.sources.is_empty()).then(|| {
            let s = self.sources[self.next_source % self.sources.len()];
            self.next_source += 1;
            s
        });
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&self.next_random().to_ne_bytes());
        key[8..].copy_from_slice(&self.next_random().to_ne_bytes());
        let key = ws::base64(&key);
        self.stats.started += 1;
        self.in_flight += 1;
        let started_ns = sys::now_ns();
        let target = self.target(i);
        let addr = self.urls[target].addr;
        {
            let conn = &mut self.conns[i];
            conn.state = State::Connecting;
            conn.started_ns = started_ns;
            conn.accept = ws::accept_key(&key);
            conn.out = ws::request(&self.urls[target].host, path, &key, self.deflate);
        }
        let fd = match sys::tcp_socket(&addr, src) {
            Ok(fd) => fd,
            Err(e) => return self.fail(i, format!("socket: {}", describe(&e))),
        };
        let rcvbuf = self.conns[i].rcvbuf_bytes;
        if rcvbuf > 0
            && let Err(e) = sys::set_rcvbuf(&fd, rcvbuf)
        {
            return self.fail(i, format!("setsockopt SO_RCVBUF: {e}"));
        }
        let connected = match sys::connect(&fd, &addr) {
            Ok(c) => c,
            Err(e) => return self.fail(i, format!("connect: {}", describe(&e))),
        };
        let interest = if connected {
            Interest::ReadWrite
        } else {
            Interest::Write
        };
        if let Err(e) = self.poller.add(fd.as_raw_fd(), i as u64, interest) {
            return self.fail(i, format!("epoll_ctl: {e}"));
        }
        let conn = &mut self.conns[i];
        conn.fd = Some(fd);
        conn.interest = interest;
        if connected {
            conn.state = State::Handshaking;
            self.flush(i);
        }
    }

    /// Queues `bytes` on open connection `i` and tries to send them now. Returns false (and
    /// sends nothing) when the connection is not open or its backlog passed `OUT_BYTES_MAX`.
    pub fn send(&mut self, i: usize, bytes: &[u8]) -> bool {
        let conn = &mut self.conns[i];
        if conn.state != State::Open || conn.out.len() > OUT_BYTES_MAX {
            return false;
        }
        conn.out.extend_from_slice(bytes);
        self.flush(i);
        true
    }

    fn flush(&mut self, i: usize) {
        loop {
            let conn = &mut self.conns[i];
            let Some(fd) = conn.fd.as_ref().map(|f| f.as_raw_fd()) else {
                return;
            };
            if conn.out.is_empty() {
                if conn.state != State::Connecting {
                    self.set_interest(i, Interest::Read);
                }
                return;
            }
            match sys::write(fd, &conn.out) {
                Ok(n) => {
                    conn.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.set_interest(i, Interest::ReadWrite);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return self.fail_with(i, ending_of(&e), format!("send: {}", describe(&e)));
                }
            }
        }
    }

    /// Waits up to `timeout_ms` for events and handles them.
    pub fn poll(&mut self, timeout_ms: i32, h: &mut impl Handler) -> io::Result<()> {
        if self.coalesce_ns > 0
            && timeout_ms != 0
            && self.last_events > 0
            && self.last_events < COALESCE_BELOW_EVENTS
        {
            sys::sleep_ns(self.coalesce_ns);
            self.stats.coalesce_sleeps += 1;
        }
        let n = self.poller.wait(timeout_ms)?;
        self.last_events = n;
        self.stats.epoll_waits += 1;
        self.stats.events += n as u64;
        for k in 0..n {
            let ev = self.poller.event(k);
            if ev.token >= TOKEN_SCENARIO {
                h.scenario_event(ev);
                continue;
            }
            let i = ev.token as usize;
            match self.conns[i].state {
                State::Connecting => self.finish_connect(i),
                State::Handshaking | State::Open | State::Closing => {
                    if ev.writable() && !self.conns[i].out.is_empty() {
                        self.flush(i);
                    }
                    if ev.readable() && self.conns[i].state != State::Closed {
                        self.read(i, h);
                    }
                }
                State::New | State::Closed => {}
            }
        }
        h.after_poll(sys::now_ns());
        Ok(())
    }

    fn finish_connect(&mut self, i: usize) {
        let Some(fd) = self.conns[i].fd.as_ref() else {
            return;
        };
        match sys::take_error(fd) {
            Ok(None) => {
                self.conns[i].state = State::Handshaking;
                self.flush(i);
            }
            Ok(Some(e)) | Err(e) => self.fail(i, format!("connect: {}", describe(&e))),
        }
    }

    fn read(&mut self, i: usize, h: &mut impl Handler) {
        let Some(fd) = self.conns[i].fd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        self.stats.reads += 1;
        let n = match sys::read(fd, &mut self.buf) {
            Ok(0) => {
                let kind = match self.conns[i].state {
                    State::Closing => return self.closed_cleanly(i),
                    State::Open => "closed by server without close frame",
                    _ => "handshake: connection closed",
                };
                return self.fail_with(i, Ending::Eof, kind.to_string());
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return;
            }
            Err(e) => return self.fail_with(i, ending_of(&e), format!("recv: {}", describe(&e))),
        };
        let now = sys::now_ns();
        if self.conns[i].state == State::Handshaking {
            let conn = &mut self.conns[i];
            conn.response.extend_from_slice(&self.buf[..n]);
            match ws::check_response(&conn.response, &conn.accept) {
                Response::Partial => {}
                Response::Refused(why) => self.fail(i, format!("handshake: {why}")),
                Response::Upgraded(at) => {
                    if self.deflate && ws::deflate_accepted(&conn.response[..at]) {
                        conn.reader.enable_deflate();
                        self.stats.deflate_negotiated += 1;
                    }
                    let rest = std::mem::take(&mut conn.response).split_off(at);
                    conn.accept = String::new();
                    conn.state = State::Open;
                    self.in_flight -= 1;
                    self.stats.opened += 1;
                    self.stats.open_now += 1;
                    let us = (now.saturating_sub(conn.started_ns) / 1000).max(1);
                    self.stats.handshake_us.saturating_record(us);
                    let first = std::mem::take(&mut conn.on_open);
                    if !first.is_empty() {
                        let mut frame = Vec::with_capacity(first.len() + 14);
                        let mask = self.mask();
                        ws::encode_client(ws::opcode::TEXT, &first, mask, &mut frame);
                        self.send(i, &frame);
                    }
                    if !rest.is_empty() && self.conns[i].state == State::Open {
                        self.feed(i, &rest, now, h);
                    }
                }
            }
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        self.feed(i, &buf[..n], now, h);
        self.buf = buf;
    }

    fn feed(&mut self, i: usize, bytes: &[u8], now: u64, h: &mut impl Handler) {
        self.stats.bytes_in += bytes.len() as u64;
        let mask = self.mask();
        let Pool {
            conns,
            scratch,
            stats,
            inflater,
            ..
        } = self;
        scratch.clear();
        let mut close: Option<Option<u16>> = None;
        let width = conns[i].reader.prefix_width();
        let result = conns[i].reader.feed(bytes, &mut |ev| match ev {
            ws::Event::Message {
                text,
                prefix,
                len,
                compressed: false,
            } => {
                stats.messages += 1;
                h.message(i, text, prefix, len, now);
            }
            ws::Event::Message {
                text,
                prefix,
                len,
                compressed: true,
            } => {
                stats.messages += 1;
                stats.compressed_messages += 1;
                // Bytes that do not inflate reach the handler as an empty prefix: unparsable.
                let plain = inflater.prefix(prefix, width).unwrap_or(&[]);
                h.message(i, text, plain, len, now);
                stats.inflated = inflater.inflated;
                stats.inflate_errors = inflater.errors;
            }
            ws::Event::Ping(payload) => {
                stats.pings += 1;
                ws::encode_client(ws::opcode::PONG, payload, mask, scratch);
            }
            ws::Event::Pong => {}
            ws::Event::Close(code) => {
                if close.is_none() {
                    close = Some(code);
                }
            }
        });
        if let Err(e) = result {
            return self.fail(i, format!("protocol: {}", e.name()));
        }
        if close.is_some() && self.conns[i].state == State::Closing {
            // The server answered our close; it closes the TCP connection next (RFC 6455
            // §7.1.1), and waiting for that end of stream keeps TIME_WAIT on its side.
            return;
        }
        if let Some(code) = close {
            // Answer the close (RFC 6455 §5.5.1) with the same code, best effort, then drop.
            let payload = code.map(u16::to_be_bytes);
            let mut reply = Vec::new();
            ws::encode_client(
                ws::opcode::CLOSE,
                payload.as_ref().map_or(&[][..], |p| &p[..]),
                mask,
                &mut reply,
            );
            if let Some(fd) = self.conns[i].fd.as_ref() {
                let _ = sys::write(fd.as_raw_fd(), &reply);
            }
            let what = code.map_or("none".to_string(), |c| c.to_string());
            return self.fail_with(
                i,
                Ending::CloseFrame(code),
                format!("closed by server: code {what}"),
            );
        }
        if !self.scratch.is_empty() {
            let pongs = std::mem::take(&mut self.scratch);
            self.send(i, &pongs);
            self.scratch = pongs;
        }
    }

    /// Opens connections `range` with at most `concurrency` connects and handshakes in flight,
    /// until all are open or failed or `deadline_ns` passes (then the rest fail as timeouts).
    pub fn open(
        &mut self,
        range: std::ops::Range<usize>,
        concurrency: usize,
        path_of: &dyn Fn(usize) -> String,
        deadline_ns: u64,
        h: &mut impl Handler,
        progress: &mut Progress,
    ) -> io::Result<()> {
        let slots: Vec<usize> = range.collect();
        self.open_slots(&slots, concurrency, path_of, deadline_ns, h, progress)
    }

    /// `open` for any set of slots (each `New`), in the order given.
    pub fn open_slots(
        &mut self,
        slots: &[usize],
        concurrency: usize,
        path_of: &dyn Fn(usize) -> String,
        deadline_ns: u64,
        h: &mut impl Handler,
        progress: &mut Progress,
    ) -> io::Result<()> {
        let total = slots.len() as u64;
        let (base_opened, base_failed) = (self.stats.opened, self.stats.failed);
        let mut next = 0;
        loop {
            while self.in_flight < concurrency && next < slots.len() {
                self.start(slots[next], &path_of(slots[next]));
                next += 1;
            }
            let done = (self.stats.opened - base_opened) + (self.stats.failed - base_failed);
            let now = sys::now_ns();
            progress.tick(now, || {
                format!(
                    "connecting: {} open, {} failed, {} in flight of {}",
                    self.stats.open_now, self.stats.failed, self.in_flight, total
                )
            });
            if done == total {
                break;
            }
            if now >= deadline_ns {
                for &i in slots {
                    if matches!(self.conns[i].state, State::Connecting | State::Handshaking) {
                        self.fail(i, "timeout: no 101 before the connect deadline".into());
                    }
                }
                break;
            }
            self.poll(10, h)?;
        }
        progress.clear();
        Ok(())
    }

    /// Handles events until `deadline_ns`, for holding connections open (pings are answered).
    pub fn run_until(
        &mut self,
        deadline_ns: u64,
        h: &mut impl Handler,
        progress: &mut Progress,
        label: &str,
    ) -> io::Result<()> {
        loop {
            let now = sys::now_ns();
            if now >= deadline_ns {
                break;
            }
            progress.tick(now, || {
                format!(
                    "{label}: {} open, {} dropped, {:.0} s left",
                    self.stats.open_now,
                    self.stats.dropped,
                    (deadline_ns - now) as f64 / 1e9
                )
            });
            let wait_ms = ((deadline_ns - now) / 1_000_000).clamp(1, 200) as i32;
            self.poll(wait_ms, h)?;
        }
        progress.clear();
        Ok(())
    }

    /// Closes every connection with the close handshake: a close frame (1000) to each open
    /// connection, then the server's close is awaited until `deadline_ns`; what is left is then
    /// dropped (FIN).
    pub fn close_all(&mut self, deadline_ns: u64, progress: &mut Progress) -> io::Result<()> {
        self.close_range(0..self.conns.len(), deadline_ns, &mut Ignore, progress)?;
        self.drop_all();
        Ok(())
    }

    /// Closes connections `range` with the close handshake while the rest of the pool (and the
    /// scenario, through `h`) goes on: a close frame (1000) to each open one, then the server's
    /// close is awaited until `deadline_ns`; the ones left are then dropped (FIN).
    pub fn close_range(
        &mut self,
        range: std::ops::Range<usize>,
        deadline_ns: u64,
        h: &mut impl Handler,
        progress: &mut Progress,
    ) -> io::Result<()> {
        let slots: Vec<usize> = range.collect();
        self.close_slots(&slots, deadline_ns, h, progress)
    }

    /// `close_range` for any set of slots, closed in the order given.
    pub fn close_slots(
        &mut self,
        slots: &[usize],
        deadline_ns: u64,
        h: &mut impl Handler,
        progress: &mut Progress,
    ) -> io::Result<()> {
        for (k, &i) in slots.iter().enumerate() {
            if k > 0 && k % CLOSE_BATCH == 0 {
                // A send on loopback also runs the receiver's TCP work, ~10-20 µs: 19,000 in
                // one go would stall everything else the loop serves (a scenario's publisher
                // and probe readers) for a third of a second.
                self.poll(0, h)?;
            }
            self.begin_close(i);
        }
        // The slots' connections in the close handshake: those closed just now and any that
        // a scenario started closing earlier (`begin_close`).
        let mut pending: Vec<usize> = slots
            .iter()
            .copied()
            .filter(|&i| self.conns[i].state == State::Closing)
            .collect();
        while !pending.is_empty() && sys::now_ns() < deadline_ns {
            progress.tick(sys::now_ns(), || format!("closing: {} left", pending.len()));
            self.poll(10, h)?;
            pending.retain(|&i| self.conns[i].state == State::Closing);
        }
        progress.clear();
        for &i in slots {
            if self.conns[i].state == State::Closing {
                self.fail(i, "close: the server did not close in time".into());
            }
        }
        Ok(())
    }

    /// Drops every connection at once (FIN, or RST where unread data remains).
    pub fn drop_all(&mut self) {
        for conn in &mut self.conns {
            conn.fd = None;
            conn.paused = false;
            match conn.state {
                State::Open => {
                    self.stats.open_now -= 1;
                    conn.ending.get_or_insert(Ending::ByUs);
                }
                State::Closing => self.stats.closing_now -= 1,
                _ => {}
            }
            conn.state = State::Closed;
        }
        self.in_flight = 0;
    }
}

/// What a socket error says about how the connection ended.
fn ending_of(e: &io::Error) -> Ending {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => Ending::Reset,
        _ => Ending::Error,
    }
}

/// An io::Error with the hint a user needs for the common load-test failures.
pub fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            format!("{e} (out of file descriptors: raise ulimit -n)")
        }
        Some(libc::EADDRNOTAVAIL) => {
            format!(
                "{e} (out of ephemeral ports: add source addresses with --src 127.0.0.2-127.0.0.9)"
            )
        }
        Some(libc::ECONNREFUSED) => format!("{e} (is the server listening?)"),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::target_of;

    #[test]
    fn slots_spread_round_robin() {
        let k3: Vec<usize> = (0..7).map(|i| target_of(i, 7, 3)).collect();
        assert_eq!(k3, vec![0, 1, 2, 0, 1, 2, 0]);
        // Past the spread slots (a publisher, churn): the first target.
        assert_eq!(target_of(7, 7, 3), 0);
        assert_eq!(target_of(8, 7, 3), 0);
        // One target, or nothing spread: every slot to the first, as without a list.
        assert!((0..10).all(|i| target_of(i, 10, 1) == 0));
        assert!((0..10).all(|i| target_of(i, 0, 2) == 0));
        let to_b = (0..10_000)
            .filter(|&i| target_of(i, 10_000, 2) == 1)
            .count();
        assert_eq!(to_b, 5_000);
    }
}
