//! The io_uring driver: one ring per shard, a thin loop over the engine.
//!
//! Each loop turn: drain the cross-shard inbox (doorbell protocol) → retry outboxes and ring
//! doorbells → flush (one vectored `SENDMSG` per connection with output) → submit and wait for
//! a completion or the next tick → drain completions into the engine (accepts, receives from the
//! provided-buffer ring, sends, the doorbell read) → carry out the engine's intents → tick.
//!
//! Invariants: every buffer a submission points to (send slots with their `msghdr` and iovecs,
//! the doorbell's 8 bytes, the buffer ring) lives at a stable address owned by this driver until
//! the submission's last completion arrives; a provided buffer is recycled as soon as the engine
//! returns from `on_bytes`. Each `user_data` carries kind, slot and generation, so a completion
//! for a connection that is gone is recognised (the engine counts it stale).

pub mod files;
pub mod ring;

use super::{RECV_BYTES_PER_TURN, SendPool, ShardIo, socket};
use crate::config::Limits;
use crate::engine::Engine;
use crate::engine::io::{Intent, Listener, SendResult, Sock, Token};
use files::{FixedFiles, on_target};
use io_uring::{IoUring, cqueue, opcode, types};
use ring::{BufRing, Op, RingMode};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Submission queue entries per ring.
pub const SQ_ENTRIES: u32 = 4096;
/// Buffer group id of the shard's provided-buffer ring.
const BUFFER_GROUP: u16 = 0;
/// Completions taken from the queue at a time.
const CQE_BATCH: usize = 256;

/// Completion queue entries for `limits`: room for every send in flight and every buffer the
/// multishot receives can fill, plus slack (the kernel buffers overflow beyond that anyway).
pub fn cq_entries(limits: &Limits) -> u32 {
    (limits.sends_in_flight_max + limits.recv_buffers + 4096)
        .next_power_of_two()
        .min(1 << 20) as u32
}

/// Whether io_uring can be set up here (a small ring, created and dropped); the error names
/// what blocks it (see `ring::explain_unavailable`).
///
/// The ring lives on a thread of its own: tearing a ring down queues task work on the thread
/// that created it, and the kernel delivers that work by interrupting the thread's next
/// blocking system call (`EINTR`), which would surprise the caller's thread.
pub fn probe() -> io::Result<()> {
    std::thread::Builder::new()
        .name("io_uring-probe".into())
        .spawn(|| IoUring::new(8).map(drop))?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the io_uring probe thread panicked")))
}

/// What a `SENDMSG` in flight points at besides the frames: its iovecs and its `msghdr`.
pub struct Msg {
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

impl Default for Msg {
    fn default() -> Msg {
        Msg {
            iov: Vec::new(),
            // SAFETY: msghdr is plain data; all-zero is valid (no name, no control).
            msg: unsafe { std::mem::zeroed() },
        }
    }
}

/// A send in flight on io_uring: the kernel reads its iovecs, `msghdr` and frames until its
/// completion arrives, so the slot owns them until then.
pub type SendSlot = super::SendSlot<Msg>;

/// A shard on io_uring. Field order matters: the ring is dropped first, so the kernel is done
/// with the buffer ring and the send slots before they are freed.
pub struct UringShard {
    ring: IoUring,
    bufs: BufRing,
    /// Connections' sockets entered in the ring's file table, by slot.
    files: FixedFiles,
    sends: SendPool<Msg>,
    /// The doorbell read's 8-byte buffer: the kernel writes it, so it lives at a stable address.
    wake_buf: Box<u64>,
    engine: Engine,
    io: ShardIo,
    listener: Option<OwnedFd>,
    control_listeners: Vec<OwnedFd>,
    /// Whether each listener (0: WebSocket, 1..: control) has its multishot accept armed.
    accept_armed: Vec<bool>,
    cqes: Vec<(u64, i32, u32)>,
    /// Connections whose receive the engine paused (backpressure): not re-armed until resumed.
    paused: std::collections::HashSet<Token>,
    intents: Vec<Intent>,
    trimmer: super::Trimmer,
    started: Instant,
    mode: RingMode,
}

impl UringShard {
    /// Builds the ring and the buffer ring for `engine`. Runs on the shard's own thread.
    pub fn new(engine: Engine, mut io: ShardIo, limits: &Limits) -> io::Result<UringShard> {
        let (ring, mode) = ring::build_ring(SQ_ENTRIES, cq_entries(limits))?;
        let bufs = BufRing::new(
            &ring,
            BUFFER_GROUP,
            limits.recv_buffers,
            limits.recv_buffer_bytes,
        )?;
        // Every slot a connection of any kind can take: the slab is shared (see `FixedFiles`).
        let files = FixedFiles::new(
            &ring,
            limits.conns_per_shard_max + limits.control_conns_per_shard_max + 1024,
        );
        let control_listeners = std::mem::take(&mut io.control_listeners);
        let listener = io.listener.try_clone()?;
        Ok(UringShard {
            ring,
            bufs,
            files,
            sends: SendPool::new(limits.sends_in_flight_max, limits.send_iovecs_max.min(4)),
            wake_buf: Box::new(0),
            engine,
            accept_armed: vec![false; 1 + control_listeners.len()],
            io,
            listener: Some(listener),
            control_listeners,
            cqes: Vec::with_capacity(1024),
            paused: std::collections::HashSet::new(),
            intents: Vec::new(),
            trimmer: super::Trimmer::new(),
            started: Instant::now(),
            mode,
        })
    }

    /// How the ring was set up.
    pub fn mode(&self) -> RingMode {
        self.mode
    }

    /// The file table, for the start-up line.
    pub fn files_note(&self) -> String {
        match self.files.off_reason() {
            None => format!("file table of {} sockets", self.files.size()),
            Some(why) => format!("no file table ({why}): sockets named by descriptor"),
        }
    }

    /// What the driver allocated up front, measured from the objects themselves (the ring sizes
    /// as the kernel set them) plus the engine's: compared with the budget's fixed part.
    pub fn preallocated_bytes(&self) -> usize {
        let params = self.ring.params();
        self.bufs.bytes()
            + self.engine.preallocated_bytes()
            + params.sq_entries() as usize * 64
            + params.cq_entries() as usize * 16
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs the loop until shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        self.arm_accept();
        self.arm_wake();
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
            let entered = super::monotonic_us();
            if busy {
                bell.set_awake();
                self.submit_nowait()?;
            } else {
                self.wait()?;
                bell.set_awake();
            }
            let counters = self.engine.counters_mut();
            counters.loop_turns += 1;
            counters.loop_wait_us += super::monotonic_us().saturating_sub(entered);
            self.complete_within(RECV_BYTES_PER_TURN);
            let now = self.now_ms();
            self.engine.set_clock_us(super::monotonic_us());
            self.engine.tick(now);
            self.trimmer.tick(self.engine.queued_bytes(), now);
            if self.io.stop.load(Ordering::Relaxed) && !self.engine.is_shutting_down() {
                self.engine.begin_shutdown();
            }
            self.apply_intents();
            if self.accept_armed.contains(&false) && !self.engine.is_shutting_down() {
                self.arm_accept();
            }
            if self.engine.is_done() {
                self.engine.publish_counters();
                return Ok(());
            }
        }
    }

    /// Pushes one submission, submitting first if the queue is full.
    fn push(&mut self, entry: io_uring::squeue::Entry) {
        loop {
            // SAFETY: every buffer an entry points to (send slots, msghdr, iovecs, the wake
            // buffer) is owned by the driver at a stable address until its completion arrives.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // Full: hand what is queued to the kernel and try again.
            if let Err(err) = self.ring.submit() {
                assert!(
                    err.raw_os_error() == Some(libc::EBUSY)
                        || err.raw_os_error() == Some(libc::EINTR),
                    "io_uring_enter failed: {err}"
                );
                // EBUSY: the completion queue is full; draining it frees room.
                self.complete_within(usize::MAX);
            }
        }
    }

    fn wait(&mut self) -> io::Result<()> {
        let tick = crate::engine::TICK_MS;
        let to_next_tick_ms = tick - self.now_ms() % tick;
        let ts = types::Timespec::new().nsec((to_next_tick_ms * 1_000_000) as u32);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn submit_nowait(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn arm_wake(&mut self) {
        let fd = self.io.bells[self.engine.index()].fd();
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(types::Fd(fd), buf.cast(), 8)
            .build()
            .user_data(ring::user_data(Op::Wake, 0, 0));
        self.push(entry);
    }

    /// Arms a multishot accept on every listener that has none.
    fn arm_accept(&mut self) {
        for index in 0..self.accept_armed.len() {
            if self.accept_armed[index] {
                continue;
            }
            let fd = match index {
                0 => match &self.listener {
                    Some(l) => l.as_raw_fd(),
                    None => continue,
                },
                i => match self.control_listeners.get(i - 1) {
                    Some(l) => l.as_raw_fd(),
                    None => continue,
                },
            };
            let entry = opcode::AcceptMulti::new(types::Fd(fd))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(ring::user_data(Op::Accept, index, 0));
            self.push(entry);
            self.accept_armed[index] = true;
        }
    }

    fn arm_recv(&mut self, token: Token, sock: Sock) {
        let group = self.bufs.group();
        let entry = on_target!(self.files.target(token.slot, sock.0), |fd| {
            opcode::RecvMulti::new(fd, group).build()
        })
        .user_data(ring::user_data(
            Op::Recv,
            token.slot as usize,
            token.generation,
        ));
        self.push(entry);
    }

    /// Ends the multishot receive of `token` (`ASYNC_CANCEL` by its `user_data`, 5.5); the
    /// receive completes with `ECANCELED`, and bytes not yet received stay in the socket.
    fn cancel_recv(&mut self, token: Token) {
        let target = ring::user_data(Op::Recv, token.slot as usize, token.generation);
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(ring::user_data(Op::Cancel, 0, 0));
        self.push(entry);
    }

    /// The engine's flush, then one send submission per batch it handed over: `SEND` (since
    /// 5.6) when the batch is one run of bytes — the common case since small frames are copied
    /// into one buffer — which spares the kernel the `msghdr` and iovec copies of `SENDMSG`
    /// (measured in docs/benchmarks.md), `SENDMSG` otherwise.
    fn flush(&mut self) {
        self.engine.flush(&mut self.sends);
        let mut submitted = std::mem::take(&mut self.sends.submitted);
        for &index in &submitted {
            let send = self.sends.slot(index);
            let user_data = ring::user_data(Op::Send, index as usize, 0);
            let target = self.files.target(send.token.slot, send.sock.0);
            let single = send
                .frames
                .single_run()
                .and_then(|run| Some((run.as_ptr(), u32::try_from(run.len()).ok()?)));
            if let Some((buf, len)) = single {
                let entry = on_target!(target, |fd| opcode::Send::new(fd, buf, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build())
                .user_data(user_data);
                self.push(entry);
                continue;
            }
            let Msg { iov, msg } = &mut send.extra;
            iov.clear();
            iov.extend(send.frames.chunks().map(|f| libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            }));
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = iov.len();
            let msg: *const libc::msghdr = msg;
            let entry = on_target!(target, |fd| opcode::SendMsg::new(fd, msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build())
            .user_data(user_data);
            self.push(entry);
        }
        submitted.clear();
        self.sends.submitted = submitted;
    }

    /// Carries out what the engine asked for, in order.
    fn apply_intents(&mut self) {
        while self.engine.has_intents() {
            let mut intents = std::mem::take(&mut self.intents);
            self.engine.take_intents(&mut intents);
            for intent in intents.drain(..) {
                match intent {
                    Intent::Read { token, sock } => {
                        self.files.enter(&self.ring, token.slot, sock.0);
                        self.arm_recv(token, sock)
                    }
                    Intent::Refuse { sock, response } => socket::refuse(sock.0, &response),
                    Intent::ShutdownWrite { sock } => socket::shutdown_write(sock.0),
                    Intent::Close { token, sock } => {
                        // The closed connection's token is dead now: forget it.
                        self.paused.retain(|t| self.engine.live_sock(*t).is_some());
                        // Before the close: the table's reference would keep the socket open.
                        self.files.leave(&self.ring, token.slot);
                        socket::close(sock.0)
                    }
                    Intent::PauseRead { token, .. } => {
                        if self.paused.insert(token) {
                            self.cancel_recv(token);
                        }
                    }
                    Intent::ResumeRead { token, sock } => {
                        if self.paused.remove(&token) {
                            self.arm_recv(token, sock);
                        }
                    }
                    Intent::StopAccepting => self.stop_accepting(),
                    Intent::StopAcceptingWebSockets => self.stop_accepting_websockets(),
                }
            }
            self.intents = intents;
        }
    }

    fn stop_accepting_websockets(&mut self) {
        if let Some(listener) = self.listener.take() {
            // shutdown(2) ends the multishot accept (its completion arrives without MORE); the
            // listener is closed when dropped.
            socket::shutdown_listener(listener.as_raw_fd());
        }
    }

    fn stop_accepting(&mut self) {
        self.stop_accepting_websockets();
        for listener in self.control_listeners.drain(..) {
            // Every shard holds a duplicate of the same socket.
            socket::shutdown_listener(listener.as_raw_fd());
        }
    }

    /// Drains completions until `recv_budget_bytes` of input have been handled. What is left
    /// waits in the completion queue for the next turn, after a flush.
    fn complete_within(&mut self, recv_budget_bytes: usize) {
        let mut received = 0usize;
        loop {
            self.cqes.clear();
            self.cqes.extend(
                self.ring
                    .completion()
                    .take(CQE_BATCH)
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if self.cqes.is_empty() {
                return;
            }
            let cqes = std::mem::take(&mut self.cqes);
            for &(data, result, flags) in &cqes {
                match ring::parse_user_data(data) {
                    Some((Op::Accept, listener, _)) => self.on_accept(listener, result, flags),
                    Some((Op::Recv, slot, generation)) => {
                        if result > 0 {
                            received += result as usize;
                        }
                        let token = Token {
                            slot: slot as u32,
                            generation,
                        };
                        self.on_recv(token, result, flags)
                    }
                    Some((Op::Send, index, _)) => self.on_send(index, result),
                    Some((Op::Wake, _, _)) => self.arm_wake(),
                    Some((Op::Cancel, _, _)) | None => {}
                }
            }
            self.cqes = cqes;
            self.apply_intents();
            if received >= recv_budget_bytes {
                return;
            }
        }
    }

    fn on_accept(&mut self, listener: usize, result: i32, flags: u32) {
        if !cqueue::more(flags) {
            // The kernel ended the multishot accept (error or cancellation); re-armed next turn.
            if let Some(armed) = self.accept_armed.get_mut(listener) {
                *armed = false;
            }
        }
        if result < 0 {
            return;
        }
        let fd = result;
        let which = match listener {
            0 => {
                socket::set_nodelay(fd);
                Listener::WebSocket
            }
            i => Listener::Control(i - 1),
        };
        let peer = if which == Listener::WebSocket && self.engine.wants_peer_addr() {
            socket::peer_addr(fd)
        } else {
            None
        };
        self.engine.on_accept(which, Sock(fd), peer);
    }

    fn on_recv(&mut self, token: Token, result: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        if result > 0 {
            match bid {
                Some(bid) => {
                    let data = self.bufs.get(bid, result as usize);
                    self.engine.on_bytes(token, data);
                    self.bufs.recycle(bid);
                }
                None => debug_assert!(false, "a buffer-select receive completed without a buffer"),
            }
        } else {
            if let Some(bid) = bid {
                self.bufs.recycle(bid);
            }
            if result == -libc::ECANCELED {
                // Paused by the engine (or a cancel that raced a close): nothing to report.
                return;
            }
            if result == 0 {
                return self.engine.on_eof(token);
            }
            if result != -libc::ENOBUFS {
                return self.engine.on_error(token);
            }
        }
        if more || self.paused.contains(&token) {
            return;
        }
        if let Some(sock) = self.engine.live_sock(token) {
            // ENOBUFS (all buffers were in use) or a full completion queue ended the multishot
            // receive; the bytes not yet received stay in the socket, so re-arming loses nothing.
            self.engine.counters_mut().recv_rearms += 1;
            self.arm_recv(token, sock);
        }
    }

    fn on_send(&mut self, index: usize, result: i32) {
        let outcome = if result > 0 {
            SendResult::Sent(result as usize)
        } else {
            SendResult::Failed
        };
        self.sends.complete(index as u16, &mut self.engine, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::EngineSetup;
    use crate::stats::Published;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// The budget's fixed part is what a shard really allocates at start (one shard: no
    /// cross-shard rings).
    #[test]
    fn preallocation_matches_the_budget() {
        let mut config = Config::default();
        config.limits.recv_buffers = 256;
        let (listener, _) = socket::listen("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let mesh = crate::xshard::mesh(1, 16, 16).pop().unwrap();
        let engine = Engine::new(EngineSetup {
            index: 0,
            shards: 1,
            config: Arc::new(config.clone()),
            published: Arc::new(Published::default()),
            all_published: Arc::new(Vec::new()),
            epoch_base: 0,
            mesh,
            control_gate: Default::default(),
            congestion: Arc::new(crate::engine::control::Congestion::new(1)),
            verifier: None,
            wall_base_ms: 0,
            http_listener: None,
            drain: Default::default(),
            live: Arc::new(crate::engine::LiveConfig::new(
                Arc::new(config.clone()),
                None,
            )),
            webhooks: None,
            cluster: None,
        });
        let io = ShardIo {
            listener,
            control_listeners: Vec::new(),
            bells: crate::xshard::doorbells(1).unwrap(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let shard = UringShard::new(engine, io, &config.limits).unwrap();
        let terms = crate::budget::shard_budget(&config.limits, 1, false, false);
        assert_eq!(
            shard.preallocated_bytes(),
            crate::budget::fixed_bytes(&terms)
        );
    }
}
