//! The epoll driver: the same engine on readiness notifications, for hosts and containers where
//! io_uring is blocked (Docker 25+ and containerd 2.0 default seccomp profiles, or
//! `kernel.io_uring_disabled`). Every interface it uses exists since Linux 2.6.
//!
//! - Listeners and the doorbell eventfd are level-triggered; connections are registered once,
//!   edge-triggered for input and output (`EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET`).
//! - Input: a connection with input is read until `EAGAIN` into one receive buffer shared by the
//!   whole shard (an idle connection owns no read buffer, as on io_uring), at most
//!   `READ_BYTES_PER_CONN` at a time, so one busy socket cannot starve the others; what is left
//!   waits in the ready list (it will not be signalled again).
//! - Output: the engine's flush hands one batch per connection; it is written with one `writev`
//!   at once. A batch the socket cannot take (`EAGAIN`) stays in flight, owned by its send slot,
//!   until `EPOLLOUT`; the engine never has more than one send in flight per connection.
//!
//! Invariant: an event's `u64` names a listener, the doorbell, or a connection's `Token`; a
//! connection's token is checked against the engine (`live_sock`) before its socket is used, so
//! a reused descriptor is never mistaken for the connection that had it.

use super::{RECV_BYTES_PER_TURN, SendPool, ShardIo, socket};
use crate::config::Limits;
use crate::engine::Engine;
use crate::engine::io::{Intent, Listener, SendResult, Sock, Token};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Bytes read from one connection before the next ready connection's turn.
const READ_BYTES_PER_CONN: usize = 64 * 1024;
/// The shard's receive buffer.
const RECV_BUFFER_BYTES: usize = 64 * 1024;
/// Accepts per listener per turn (level-triggered: the rest are reported again).
const ACCEPTS_PER_TURN: usize = 256;
/// Events taken per `epoll_wait`.
const EVENTS_MAX: usize = 1024;
/// `writev` takes at most this many iovecs (`IOV_MAX` on Linux).
const IOV_MAX: usize = 1024;

const KIND_SHIFT: u32 = 56;
const KIND_LISTENER: u64 = 1;
const KIND_WAKE: u64 = 2;
const KIND_CONN: u64 = 3;

fn conn_data(token: Token) -> u64 {
    (KIND_CONN << KIND_SHIFT)
        | (u64::from(token.slot) << crate::id::GEN_BITS)
        | u64::from(token.generation)
}

fn parse_conn(data: u64) -> Token {
    Token {
        slot: ((data >> crate::id::GEN_BITS) & ((1 << crate::id::SLOT_BITS) - 1)) as u32,
        generation: (data & ((1 << crate::id::GEN_BITS) - 1)) as u32,
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// What one vectored send did.
enum Wrote {
    Some(usize),
    WouldBlock,
    Failed,
}

/// A batch handed to the socket stays in its slot until written (at least one byte) or failed;
/// the slot's extra data is the iovec array for `sendmsg`.
type SendSlot = super::SendSlot<Vec<libc::iovec>>;

fn write_batch(slot: &mut SendSlot) -> Wrote {
    if let Some(only) = slot.frames.single_run() {
        // One run of bytes (small frames are copied into one buffer): plain `send`, no iovecs.
        // SAFETY: `only` points into the slot's batch, which does not change during the call;
        // MSG_NOSIGNAL as below.
        let n = unsafe {
            libc::send(
                slot.sock.0,
                only.as_ptr().cast(),
                only.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        return wrote(n);
    }
    let iov = &mut slot.extra;
    iov.clear();
    iov.extend(slot.frames.chunks().take(IOV_MAX).map(|f| libc::iovec {
        iov_base: f.as_ptr() as *mut libc::c_void,
        iov_len: f.len(),
    }));
    // SAFETY: msghdr is plain data; all-zero is valid (no name, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    // SAFETY: the iovecs point into `frames`, which the slot owns and does not change during the
    // call. sendmsg rather than writev for MSG_NOSIGNAL: a peer's reset must be an error code,
    // never a SIGPIPE (a library user may not ignore the signal).
    let n = unsafe { libc::sendmsg(slot.sock.0, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    wrote(n)
}

/// The outcome of a `send`/`sendmsg` that returned `n`.
fn wrote(n: isize) -> Wrote {
    if n > 0 {
        return Wrote::Some(n as usize);
    }
    let err = io::Error::last_os_error().raw_os_error();
    match err {
        Some(libc::EAGAIN) | Some(libc::EINTR) if n < 0 => Wrote::WouldBlock,
        _ => Wrote::Failed,
    }
}

/// A shard on epoll.
pub struct EpollShard {
    epoll: OwnedFd,
    engine: Engine,
    io: ShardIo,
    listener: Option<OwnedFd>,
    control_listeners: Vec<OwnedFd>,
    sends: SendPool<Vec<libc::iovec>>,
    /// Sends waiting for `EPOLLOUT`, by socket.
    blocked: HashMap<i32, u16>,
    /// Send outcomes to report to the engine after a flush.
    done: Vec<(u16, SendResult)>,
    /// Connections with unread input, in turn order, and the set of them (no duplicates).
    readable: VecDeque<Token>,
    queued: HashSet<Token>,
    /// Connections whose input the engine paused (backpressure); not read until resumed.
    paused: HashSet<Token>,
    buf: Vec<u8>,
    events: Vec<libc::epoll_event>,
    intents: Vec<Intent>,
    trimmer: super::Trimmer,
    started: Instant,
}

impl EpollShard {
    /// Creates the epoll instance and registers the listeners and the doorbell.
    pub fn new(engine: Engine, mut io: ShardIo, limits: &Limits) -> io::Result<EpollShard> {
        // SAFETY: plain epoll_create1(2); the fd is owned at once.
        let epoll = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: a fresh descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let control_listeners = std::mem::take(&mut io.control_listeners);
        let listener = io.listener.try_clone()?;
        let shard = EpollShard {
            epoll,
            engine,
            listener: Some(listener),
            control_listeners,
            sends: SendPool::new(limits.sends_in_flight_max, 0),
            blocked: HashMap::new(),
            done: Vec::new(),
            readable: VecDeque::new(),
            queued: HashSet::new(),
            paused: HashSet::new(),
            buf: vec![0u8; RECV_BUFFER_BYTES],
            events: Vec::with_capacity(EVENTS_MAX),
            intents: Vec::new(),
            trimmer: super::Trimmer::new(),
            started: Instant::now(),
            io,
        };
        let listen_fds: Vec<i32> = std::iter::once(shard.listener.as_ref().map(|l| l.as_raw_fd()))
            .flatten()
            .chain(shard.control_listeners.iter().map(|l| l.as_raw_fd()))
            .collect();
        for (index, fd) in listen_fds.into_iter().enumerate() {
            set_nonblocking(fd)?;
            shard.add(
                fd,
                libc::EPOLLIN as u32,
                (KIND_LISTENER << KIND_SHIFT) | index as u64,
            )?;
        }
        let bell = shard.io.bells[shard.engine.index()].fd();
        set_nonblocking(bell)?;
        shard.add(bell, libc::EPOLLIN as u32, KIND_WAKE << KIND_SHIFT)?;
        Ok(shard)
    }

    fn add(&self, fd: i32, events: u32, data: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: data };
        // SAFETY: a valid epoll fd, a valid target fd, and a live event struct.
        check(unsafe {
            libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event)
        })
        .map(drop)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs the loop until shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        let bell = self.io.bells[self.engine.index()].clone();
        loop {
            let mut busy = self.engine.drain_inbox();
            if !busy {
                // Doorbell protocol: mark sleeping, then look once more before blocking.
                bell.set_sleeping();
                busy = self.engine.drain_inbox();
            }
            let bells = &self.io.bells;
            self.engine.flush_outboxes(|to| {
                bells[to].ring();
            });
            self.flush();
            self.apply_intents();
            let timeout_ms = if busy || !self.readable.is_empty() {
                0
            } else {
                let tick = crate::engine::TICK_MS;
                (tick - self.now_ms() % tick) as i32
            };
            let entered = super::monotonic_us();
            self.wait(timeout_ms)?;
            let counters = self.engine.counters_mut();
            counters.loop_turns += 1;
            counters.loop_wait_us += super::monotonic_us().saturating_sub(entered);
            bell.set_awake();
            self.read_ready();
            let now = self.now_ms();
            self.engine.set_clock_us(super::monotonic_us());
            self.engine.tick(now);
            self.trimmer.tick(self.engine.queued_bytes(), now);
            if self.io.stop.load(Ordering::Relaxed) && !self.engine.is_shutting_down() {
                self.engine.begin_shutdown();
            }
            self.apply_intents();
            if self.engine.is_done() {
                self.engine.publish_counters();
                return Ok(());
            }
        }
    }

    /// Waits for readiness and dispatches it: accepts, doorbell, connection readiness.
    fn wait(&mut self, timeout_ms: i32) -> io::Result<()> {
        self.events.clear();
        // SAFETY: the buffer has room for EVENTS_MAX events; the kernel writes at most that many
        // and we set the length to what it reports.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                EVENTS_MAX as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.raw_os_error() == Some(libc::EINTR) {
                Ok(())
            } else {
                Err(err)
            };
        }
        // SAFETY: the kernel initialised the first n entries.
        unsafe { self.events.set_len(n as usize) };
        let events = std::mem::take(&mut self.events);
        for event in &events {
            let (flags, data) = (event.events, event.u64);
            match data >> KIND_SHIFT {
                KIND_LISTENER => self.accept((data & 0xffff) as usize),
                KIND_WAKE => drain_eventfd(self.io.bells[self.engine.index()].fd()),
                KIND_CONN => {
                    let token = parse_conn(data);
                    if flags & libc::EPOLLOUT as u32 != 0 {
                        self.on_writable(token);
                    }
                    let input =
                        (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
                    if flags & input != 0 && self.queued.insert(token) {
                        self.readable.push_back(token);
                    }
                }
                _ => {}
            }
        }
        self.events = events;
        self.apply_intents();
        Ok(())
    }

    fn accept(&mut self, index: usize) {
        let fd = match index {
            0 => self.listener.as_ref().map(|l| l.as_raw_fd()),
            i => self.control_listeners.get(i - 1).map(|l| l.as_raw_fd()),
        };
        let Some(fd) = fd else {
            return;
        };
        for _ in 0..ACCEPTS_PER_TURN {
            // SAFETY: accept4 on our listener; no address is asked for.
            let conn = unsafe {
                libc::accept4(
                    fd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if conn < 0 {
                // EAGAIN: nothing more now; other errors (ECONNABORTED, EMFILE) end this turn's
                // accepts and level-triggering brings the listener back.
                return;
            }
            let which = if index == 0 {
                socket::set_nodelay(conn);
                Listener::WebSocket
            } else {
                Listener::Control(index - 1)
            };
            let peer = if which == Listener::WebSocket && self.engine.wants_peer_addr() {
                socket::peer_addr(conn)
            } else {
                None
            };
            self.engine.on_accept(which, Sock(conn), peer);
            self.apply_intents();
        }
    }

    /// Reads ready connections, round-robin, within the turn's input budget.
    fn read_ready(&mut self) {
        let mut budget = RECV_BYTES_PER_TURN;
        let mut turns = self.readable.len();
        while budget > 0 && turns > 0 {
            turns -= 1;
            let Some(token) = self.readable.pop_front() else {
                break;
            };
            let Some(sock) = self.engine.live_sock(token) else {
                self.queued.remove(&token);
                continue;
            };
            if self.paused.contains(&token) {
                // Resuming puts it back in the list: its input waits in the socket meanwhile.
                self.queued.remove(&token);
                continue;
            }
            let mut taken = 0;
            let mut drained = false;
            while taken < READ_BYTES_PER_CONN && budget > 0 {
                // SAFETY: reading into our buffer, at most its length.
                let n = unsafe { libc::read(sock.0, self.buf.as_mut_ptr().cast(), self.buf.len()) };
                if n > 0 {
                    let n = n as usize;
                    taken += n;
                    budget = budget.saturating_sub(n);
                    self.engine.on_bytes(token, &mut self.buf[..n]);
                    self.apply_intents();
                    // Gone, or paused by these very bytes (backpressure): read no further, or
                    // the engine would have to hold what this loop reads.
                    if self.engine.live_sock(token).is_none() || self.paused.contains(&token) {
                        drained = true;
                        break;
                    }
                    continue;
                }
                let err = io::Error::last_os_error().raw_os_error();
                if n < 0 && matches!(err, Some(libc::EAGAIN) | Some(libc::EINTR)) {
                    drained = err == Some(libc::EAGAIN);
                    break;
                }
                drained = true;
                if n == 0 {
                    self.engine.on_eof(token);
                } else {
                    self.engine.on_error(token);
                }
                self.apply_intents();
                break;
            }
            if drained {
                self.queued.remove(&token);
            } else {
                // More input may wait, and edge-triggering will not say so again.
                self.readable.push_back(token);
            }
        }
    }

    /// The engine's flush, then one `writev` per batch it handed over; outcomes go back to the
    /// engine once the flush is over.
    fn flush(&mut self) {
        self.engine.flush(&mut self.sends);
        let mut submitted = std::mem::take(&mut self.sends.submitted);
        for &index in &submitted {
            self.try_write(index);
        }
        submitted.clear();
        self.sends.submitted = submitted;
        self.report_sends();
    }

    fn try_write(&mut self, index: u16) {
        let slot = self.sends.slot(index);
        match write_batch(slot) {
            Wrote::Some(n) => self.done.push((index, SendResult::Sent(n))),
            Wrote::WouldBlock => {
                self.blocked.insert(slot.sock.0, index);
            }
            Wrote::Failed => self.done.push((index, SendResult::Failed)),
        }
    }

    fn on_writable(&mut self, token: Token) {
        let Some(sock) = self.engine.live_sock(token) else {
            return;
        };
        if let Some(index) = self.blocked.remove(&sock.0) {
            self.try_write(index);
            self.report_sends();
        }
    }

    fn report_sends(&mut self) {
        let mut done = std::mem::take(&mut self.done);
        for (index, result) in done.drain(..) {
            self.sends.complete(index, &mut self.engine, result);
        }
        self.done = done;
    }

    /// Carries out what the engine asked for, in order.
    fn apply_intents(&mut self) {
        while self.engine.has_intents() {
            let mut intents = std::mem::take(&mut self.intents);
            self.engine.take_intents(&mut intents);
            for intent in intents.drain(..) {
                match intent {
                    Intent::Read { token, sock } => {
                        let events =
                            (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET)
                                as u32;
                        if self.add(sock.0, events, conn_data(token)).is_err() {
                            // Cannot watch it (ENOMEM, ENOSPC): the connection cannot be served.
                            self.engine.on_error(token);
                        }
                    }
                    Intent::Refuse { sock, response } => socket::refuse(sock.0, &response),
                    Intent::ShutdownWrite { sock } => socket::shutdown_write(sock.0),
                    Intent::Close { sock, .. } => {
                        // The closed connection's token is dead now: forget it.
                        self.paused.retain(|t| self.engine.live_sock(*t).is_some());
                        // A send waiting for EPOLLOUT on this socket never completes now: report
                        // it (the engine counts it stale) before the descriptor can be reused.
                        if let Some(index) = self.blocked.remove(&sock.0) {
                            self.done.push((index, SendResult::Failed));
                        }
                        socket::close(sock.0);
                    }
                    Intent::PauseRead { token, .. } => {
                        self.paused.insert(token);
                    }
                    Intent::ResumeRead { token, .. } => {
                        // Edge-triggered: input that arrived while paused raises no new event.
                        self.paused.remove(&token);
                        if self.queued.insert(token) {
                            self.readable.push_back(token);
                        }
                    }
                    Intent::StopAccepting => self.stop_accepting(),
                    Intent::StopAcceptingWebSockets => self.stop_accepting_websockets(),
                }
            }
            self.intents = intents;
            self.report_sends();
        }
    }

    fn stop_accepting_websockets(&mut self) {
        let listener = self.listener.take();
        self.forget_listeners(listener.into_iter());
    }

    fn stop_accepting(&mut self) {
        let listeners: Vec<_> = self
            .listener
            .take()
            .into_iter()
            .chain(self.control_listeners.drain(..))
            .collect();
        self.forget_listeners(listeners.into_iter());
    }

    fn forget_listeners(&mut self, listeners: impl Iterator<Item = std::os::fd::OwnedFd>) {
        for listener in listeners {
            // SAFETY: removing our listener from our epoll set; a null event is allowed for DEL.
            unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                );
            }
            socket::shutdown_listener(listener.as_raw_fd());
        }
    }
}

fn set_nonblocking(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl(2) on a descriptor we hold.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// Reads the doorbell's counter back to zero (the eventfd is non-blocking here).
fn drain_eventfd(fd: i32) {
    let mut counter = 0u64;
    // SAFETY: an 8-byte read from our eventfd into a live u64; EAGAIN means already zero.
    unsafe {
        libc::read(fd, (&mut counter as *mut u64).cast(), 8);
    }
}
