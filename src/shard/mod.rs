//! A shard: one thread, one io_uring, one listener, a slab of connections, a timing wheel.
//!
//! This module is the only user of io_uring. Each loop turn has four phases:
//! 1. **flush** — every connection marked dirty with frames queued and no send in flight gets one
//!    vectored `SENDMSG` over its queued frames (so a burst of pushes costs one send per
//!    connection, not one per frame);
//! 2. **wait** — submit and wait for at least one completion or the next tick;
//! 3. **complete** — drain the completion queue: accepts, receives (from the provided-buffer
//!    ring), sends; each `user_data` carries kind, slot and generation, so a completion for a
//!    connection that is gone is recognised, counted and dropped;
//! 4. **timers** — advance the wheel: handshake deadlines, heartbeats, close deadlines.
//!
//! Invariants: at most one send in flight per connection; the frames of a send in flight are
//! owned by its send slot until the completion arrives (the kernel reads them); a provided
//! buffer is recycled as soon as its bytes are consumed.

pub mod budget;
pub mod conn;
pub mod control;
pub mod listener;
pub mod outbound;
pub mod pubsub;
pub mod uring;
pub mod xmsg;

use crate::channel::local::LocalChannels;
use crate::channel::owner::OwnedChannels;
use crate::config::{Config, Limits};
use crate::proto::client;
use crate::proto::close;
use crate::proto::decoder::{DecoderLimits, Message};
use crate::proto::frame::{self, OpCode};
use crate::proto::handshake::{self, Rejection};
use crate::stats::{Counters, Published};
use crate::timer::Wheel;
use crate::xshard::{Endpoints, Inbox, Outbox};
use bytes::Bytes;
use conn::{
    CLOSE_RECEIVED, CLOSE_SENT, Conn, DIRTY, Endpoint, FIN_AFTER_FLUSH, PEER_EOF, SENDING, State,
    TRIM_WHEN_DRAINED,
};
use io_uring::{IoUring, cqueue, opcode, types};
use outbound::Enqueue;
use slab::Slab;
use std::collections::VecDeque;
use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use uring::{BufRing, Op, RingMode};
use xmsg::XMsg;

/// Milliseconds per wheel tick.
pub const TICK_MS: u64 = 10;
/// Buckets of the timing wheel: 4096 × 10 ms ≈ 41 s per revolution, longer than the default
/// heartbeat, so common deadlines are visited once.
pub const WHEEL_BUCKETS: usize = 4096;
/// Ticks between two snapshots of the counters.
const PUBLISH_EVERY_TICKS: u32 = 10;
/// Buffer group id of the shard's provided-buffer ring.
const BUFFER_GROUP: u16 = 0;

/// Everything a shard needs from the server at start.
pub struct ShardSetup {
    /// Shard index.
    pub index: usize,
    /// This shard's `SO_REUSEPORT` listener.
    pub listener: OwnedFd,
    /// The configuration.
    pub config: Arc<Config>,
    /// Where the shard publishes its counters.
    pub published: Arc<Published>,
    /// Set to start a graceful shutdown; the shard polls it once per loop turn.
    pub stop: Arc<AtomicBool>,
    /// This shard's ends of the cross-shard mesh.
    pub mesh: Endpoints<XMsg>,
    /// Number of shards.
    pub shards: usize,
    /// Makes channel epochs differ between runs (start time in ms).
    pub epoch_base: u64,
    /// Control socket listeners (each shard holds its own duplicate and accepts on it).
    pub control_listeners: Vec<OwnedFd>,
    /// Every shard's published counters (for the control socket's `stats`).
    pub all_published: Arc<Vec<Arc<Published>>>,
}

thread_local! {
    /// The connection whose completion the shard is handling, for the panic report.
    static CURRENT_CONN: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// The id of the connection this shard thread was handling, if any (read by the panic hook:
/// a panic in a shard is a bug, and its report names the connection involved).
pub fn current_conn() -> Option<u64> {
    CURRENT_CONN.with(|c| c.get())
}

/// Input bytes handled per loop turn before the shard flushes what they produced.
const RECV_BYTES_PER_TURN: usize = 256 * 1024;
/// Completions taken from the queue at a time.
const CQE_BATCH: usize = 256;

/// Submission queue entries per ring.
pub const SQ_ENTRIES: u32 = 4096;

/// Completion queue entries for `limits`: room for every send in flight and every buffer the
/// multishot receives can fill, plus slack (the kernel buffers overflow beyond that anyway).
pub fn cq_entries(limits: &Limits) -> u32 {
    (limits.sends_in_flight_max + limits.recv_buffers + 4096)
        .next_power_of_two()
        .min(1 << 20) as u32
}

/// A send in flight: the kernel reads `iov` and `frames` until its completion arrives, so the
/// slot (boxed, at a stable address) owns them until then.
pub(crate) struct SendSlot {
    conn_slot: usize,
    generation: u32,
    frames: Vec<Bytes>,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

/// A shard. Field order matters: the ring is dropped first, so the kernel is done with the
/// buffer ring and the send slots before they are freed.
pub struct Shard {
    ring: IoUring,
    bufs: BufRing,
    // Boxed on purpose: the kernel holds pointers into a slot while its send is in flight, so
    // a slot must not move when the vector grows.
    #[allow(clippy::vec_box)]
    sends: Vec<Box<SendSlot>>,
    free_sends: Vec<u16>,
    /// The doorbell read's 8-byte buffer: the kernel writes it, so it lives at a stable address.
    wake_buf: Box<u64>,
    outboxes: Vec<Option<Outbox<XMsg>>>,
    inbox: Inbox<XMsg>,
    self_queue: VecDeque<XMsg>,
    xbatch: Vec<XMsg>,
    local: LocalChannels,
    owned: OwnedChannels,
    slow_scratch: Vec<u32>,
    /// Connections per client address, and each connection's address (only with
    /// `conns_per_ip_max`).
    per_ip: std::collections::HashMap<std::net::IpAddr, u32>,
    conn_ip: std::collections::HashMap<usize, std::net::IpAddr>,
    /// Commands of clients waiting for a subscription's answer (see `pubsub::on_command`).
    deferred: std::collections::HashMap<usize, VecDeque<Vec<u8>>>,
    controls: std::collections::HashMap<usize, control::ControlState>,
    control_listeners: Vec<OwnedFd>,
    line_arena: Vec<u8>,
    line_ranges: Vec<Option<std::ops::Range<usize>>>,
    all_published: Arc<Vec<Arc<Published>>>,
    shards: usize,
    index: usize,
    listener: Option<OwnedFd>,
    config: Arc<Config>,
    conns: Slab<Conn>,
    next_generation: u32,
    wheel: Wheel,
    dirty: Vec<u32>,
    dirty_next: Vec<u32>,
    fired: Vec<usize>,
    cqes: Vec<(u64, i32, u32)>,
    counters: Counters,
    /// Bytes owed to all connections of this shard (queued or in flight), bounded by
    /// `shard_outbound_bytes_max`.
    queued_bytes: usize,
    /// Connections in the handshaking state, bounded by `handshakes_per_shard_max`.
    handshaking: usize,
    /// While the real figure is under the limit, the running total at which to measure again.
    shed_recheck_at: usize,
    /// Bytes of partly received messages held by decoders, bounded by `shard_inbound_bytes_max`.
    inbound_bytes: usize,
    published: Arc<Published>,
    stop: Arc<AtomicBool>,
    started: Instant,
    now_tick: u32,
    /// Whether each listener (0: WebSocket, 1..: control) has its multishot accept armed.
    accept_armed: Vec<bool>,
    shutting_down: Option<u32>,
    ring_mode: RingMode,
    ws_limits: DecoderLimits,
    echo_limits: DecoderLimits,
}

fn limits_ticks(ms: u64) -> u32 {
    ms.div_ceil(TICK_MS).min(u32::MAX as u64 / 2) as u32
}

impl Shard {
    /// Builds a shard: its ring, buffer ring and slab. Runs on the shard's own thread.
    pub fn new(setup: ShardSetup) -> io::Result<Shard> {
        let limits = &setup.config.limits;
        let (ring, ring_mode) = uring::build_ring(SQ_ENTRIES, cq_entries(limits))?;
        let bufs = BufRing::new(
            &ring,
            BUFFER_GROUP,
            limits.recv_buffers,
            limits.recv_buffer_bytes,
        )?;
        let mut wheel = Wheel::new(WHEEL_BUCKETS, 0);
        wheel.reserve_keys(budget::wheel_keys(limits));
        Ok(Shard {
            ring,
            bufs,
            sends: Vec::new(),
            free_sends: Vec::new(),
            wake_buf: Box::new(0),
            outboxes: setup.mesh.outboxes,
            inbox: setup.mesh.inbox,
            self_queue: VecDeque::new(),
            xbatch: Vec::new(),
            local: LocalChannels::default(),
            owned: OwnedChannels::new(setup.epoch_base, limits.channels_per_shard_max),
            slow_scratch: Vec::new(),
            deferred: std::collections::HashMap::new(),
            per_ip: std::collections::HashMap::new(),
            conn_ip: std::collections::HashMap::new(),
            controls: std::collections::HashMap::new(),
            accept_armed: vec![false; 1 + setup.control_listeners.len()],
            control_listeners: setup.control_listeners,
            line_arena: Vec::new(),
            line_ranges: Vec::new(),
            all_published: setup.all_published,
            shards: setup.shards,
            index: setup.index,
            listener: Some(setup.listener),
            // The slab reserves address space for the limit; untouched pages cost no memory.
            conns: Slab::with_capacity(limits.conns_per_shard_max),
            next_generation: 0,
            wheel,
            dirty: Vec::new(),
            dirty_next: Vec::new(),
            fired: Vec::new(),
            cqes: Vec::with_capacity(1024),
            counters: Counters::default(),
            queued_bytes: 0,
            handshaking: 0,
            shed_recheck_at: 0,
            inbound_bytes: 0,
            published: setup.published,
            stop: setup.stop,
            started: Instant::now(),
            now_tick: 0,

            shutting_down: None,
            ring_mode,
            ws_limits: DecoderLimits {
                message_bytes_max: limits.message_bytes_max,
                fragments_max: limits.fragments_per_message_max,
            },
            echo_limits: DecoderLimits {
                message_bytes_max: limits.echo_message_bytes_max,
                fragments_max: limits.echo_fragments_per_message_max,
            },
            config: setup.config,
        })
    }

    /// How the ring was set up.
    pub fn ring_mode(&self) -> RingMode {
        self.ring_mode
    }

    /// What `new` allocated up front, measured from the objects themselves (the ring sizes as
    /// the kernel set them): compared with the budget's fixed part in a test.
    pub fn preallocated_bytes(&self) -> usize {
        let params = self.ring.params();
        self.bufs.bytes()
            + self.wheel.heap_bytes()
            + params.sq_entries() as usize * 64
            + params.cq_entries() as usize * 16
    }

    fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// Runs the loop until shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        self.arm_accept();
        self.arm_wake();
        let mut last_publish = 0u32;
        loop {
            let mut busy = self.drain_inbox();
            if !busy {
                // Doorbell protocol: mark sleeping, then look once more before blocking.
                self.inbox.bell().set_sleeping();
                busy = self.drain_inbox();
            }
            self.flush_outboxes();
            self.flush();
            if busy {
                self.inbox.bell().set_awake();
                self.submit_nowait()?;
            } else {
                self.wait()?;
                self.inbox.bell().set_awake();
            }
            self.complete();
            self.now_tick = (self.started.elapsed().as_millis() / TICK_MS as u128) as u32;
            self.fire_timers();
            if self.accept_armed.contains(&false) && self.shutting_down.is_none() {
                self.arm_accept();
            }
            if self.stop.load(Ordering::Relaxed) && self.shutting_down.is_none() {
                self.begin_shutdown();
            }
            if let Some(deadline) = self.shutting_down {
                let late = self.now_tick.wrapping_sub(deadline) as i32 >= 0;
                if self.conns.is_empty() || late {
                    self.counters.open = self.conns.len() as u64;
                    self.published.publish(&self.counters);
                    return Ok(());
                }
            }
            if self.now_tick.wrapping_sub(last_publish) >= PUBLISH_EVERY_TICKS {
                last_publish = self.now_tick;
                self.counters.open = self.conns.len() as u64;
                self.published.publish(&self.counters);
            }
        }
    }

    /// Pushes one submission, submitting first if the queue is full.
    fn push(&mut self, entry: io_uring::squeue::Entry) {
        loop {
            // SAFETY: every buffer an entry points to (send slots, msghdr, iovecs) is owned by
            // the shard at a stable address until the entry's completion arrives.
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
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        let to_next_tick_ms = TICK_MS - elapsed_ms % TICK_MS;
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
        let fd = self.inbox.bell().fd();
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(types::Fd(fd), buf.cast(), 8)
            .build()
            .user_data(uring::user_data(Op::Wake, 0, 0));
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
                i => self.control_listeners[i - 1].as_raw_fd(),
            };
            let entry = opcode::AcceptMulti::new(types::Fd(fd))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(uring::user_data(Op::Accept, index, 0));
            self.push(entry);
            self.accept_armed[index] = true;
        }
    }

    fn arm_recv(&mut self, slot: usize) {
        let conn = &self.conns[slot];
        let entry = opcode::RecvMulti::new(types::Fd(conn.fd), self.bufs.group())
            .build()
            .user_data(uring::user_data(Op::Recv, slot, conn.generation));
        self.push(entry);
    }

    /// Drains the completion queue (the phase of a loop turn).
    fn complete(&mut self) {
        self.complete_within(RECV_BYTES_PER_TURN);
    }

    /// Drains completions until `recv_budget_bytes` of input have been handled. What is left
    /// waits in the completion queue for the next turn, after a flush: a backend pipelining
    /// megabytes of publishes then produces bounded bursts per turn, which subscribers' queues
    /// absorb, instead of one burst as large as everything the kernel had buffered.
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
                // Decoded once; the connection involved is noted for the panic report.
                let op = uring::parse_user_data(data);
                let involved = match op {
                    Some((Op::Recv, slot, generation)) => Some((slot, generation)),
                    Some((Op::Send, index, _)) => {
                        self.sends.get(index).map(|s| (s.conn_slot, s.generation))
                    }
                    _ => None,
                };
                let id = involved.map(|(slot, generation)| {
                    crate::id::ConnId::new(self.index, slot, generation).get()
                });
                CURRENT_CONN.with(|c| c.set(id));
                match op {
                    Some((Op::Accept, listener, _)) => self.on_accept(listener, result, flags),
                    Some((Op::Recv, slot, generation)) => {
                        if result > 0 {
                            received += result as usize;
                        }
                        self.on_recv(slot, generation, result, flags)
                    }
                    Some((Op::Send, slot, _)) => self.on_send(slot, result),
                    Some((Op::Wake, _, _)) => self.arm_wake(),
                    None => {}
                }
            }
            self.cqes = cqes;
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
        if listener > 0 {
            if self.shutting_down.is_some() || self.conns.len() >= self.limits().conns_per_shard_max
            {
                // SAFETY: a socket we own and nobody else knows.
                unsafe { libc::close(fd) };
                return;
            }
            return self.open_control(fd);
        }
        self.counters.accepted += 1;
        let full = self.conns.len() >= self.limits().conns_per_shard_max
            || self.handshaking >= self.limits().handshakes_per_shard_max;
        if full || self.shutting_down.is_some() {
            self.counters.conn_limit_refusals += 1;
            self.refuse_unregistered(fd, Rejection::Unavailable);
            return;
        }
        let ip = match self.config.limits.conns_per_ip_max {
            0 => None,
            max => {
                let per_shard = max.div_ceil(self.shards) as u32;
                let ip = listener::peer_ip(fd);
                if let Some(ip) = ip {
                    if self.per_ip.get(&ip).copied().unwrap_or(0) >= per_shard {
                        self.refuse_unregistered(fd, Rejection::TooManyRequests);
                        return;
                    }
                }
                ip
            }
        };
        listener::set_nodelay(fd);
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & ((1 << crate::id::GEN_BITS) - 1);
        let slot = self.conns.insert(Conn::new(fd, generation, self.now_tick));
        self.handshaking += 1;
        if let Some(ip) = ip {
            *self.per_ip.entry(ip).or_insert(0) += 1;
            self.conn_ip.insert(slot, ip);
        }
        let deadline = self.now_tick + limits_ticks(self.limits().handshake_timeout_ms);
        self.wheel.insert(slot, deadline);
        self.arm_recv(slot);
    }

    /// Answers a connection that gets no slot: a short response written directly (it fits any
    /// fresh socket's send buffer), then close.
    fn refuse_unregistered(&mut self, fd: i32, rejection: Rejection) {
        self.counters.rejected(rejection.status());
        let response = rejection.response();
        // SAFETY: fd is a socket we own; the buffer is live for the call. A failed or short
        // write only means the peer sees a reset instead of the status line.
        unsafe {
            libc::send(
                fd,
                response.as_ptr().cast(),
                response.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
            libc::close(fd);
        }
    }

    fn conn_mut(&mut self, slot: usize, generation: u32) -> Option<&mut Conn> {
        self.conns
            .get_mut(slot)
            .filter(|c| c.generation == generation)
    }

    fn on_recv(&mut self, slot: usize, generation: u32, result: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        if self.conn_mut(slot, generation).is_none() {
            if let Some(bid) = bid {
                self.bufs.recycle(bid);
            }
            self.counters.stale_completions += 1;
            return;
        }
        if result > 0 {
            let len = result as usize;
            self.counters.bytes_in += len as u64;
            match bid {
                Some(bid) => {
                    self.on_bytes(slot, bid, len);
                    self.bufs.recycle(bid);
                }
                None => debug_assert!(false, "a buffer-select receive completed without a buffer"),
            }
        } else if result == 0 && self.conns[slot].endpoint == Endpoint::Control {
            // A backend may half-close after writing its requests (`echo ... | socat`): its
            // replies still go out, then the connection is freed.
            let conn = &mut self.conns[slot];
            conn.flags |= PEER_EOF | FIN_AFTER_FLUSH;
            conn.state = State::Closing;
            self.arm_close_deadline(slot);
            self.mark_dirty(slot);
            return;
        } else if result != -libc::ENOBUFS {
            // The peer's FIN or a socket error: the connection ends with the code of its close
            // handshake if one started, else as abnormal (1006).
            let code = self.conns[slot].close_code;
            self.free(slot, code);
            return;
        }
        if !more && self.conns.contains(slot) {
            // ENOBUFS (all buffers were in use) or a full completion queue ended the multishot
            // receive; the bytes not yet received stay in the socket, so re-arming loses nothing.
            self.counters.recv_rearms += 1;
            self.arm_recv(slot);
        }
    }

    fn on_bytes(&mut self, slot: usize, bid: u16, len: usize) {
        let now = self.now_tick;
        let state = {
            let conn = &mut self.conns[slot];
            conn.last_rx_tick = now;
            conn.state
        };
        if self.conns[slot].endpoint == Endpoint::Control {
            let data: *const [u8] = self.bufs.get(bid, len);
            // SAFETY: the buffer stays ours until recycled after this call, and the control path
            // does not touch the buffer ring.
            self.on_control_bytes(slot, unsafe { &*data });
            self.mark_dirty(slot);
            return;
        }
        match state {
            State::Handshaking => {
                let data = self.bufs.get(bid, len);
                let conn = &mut self.conns[slot];
                if conn.head.len() + data.len() > self.config.limits.handshake_bytes_max + 4 {
                    // Keep at most the limit (+4 so a complete head of exactly the limit parses).
                    let room = (self.config.limits.handshake_bytes_max + 4)
                        .saturating_sub(conn.head.len());
                    conn.head.extend_from_slice(&data[..room.min(data.len())]);
                } else {
                    conn.head.extend_from_slice(data);
                }
                self.on_head(slot);
            }
            State::Open | State::Closing => {
                if self.conns[slot].reads_frames() {
                    self.on_frames(slot, bid, len);
                }
            }
            State::Draining => {}
        }
        self.mark_dirty(slot);
    }

    fn on_head(&mut self, slot: usize) {
        let max = self.config.limits.handshake_bytes_max;
        let parsed = handshake::parse(&self.conns[slot].head, max);
        let request = match parsed {
            Ok(None) => return,
            Ok(Some(request)) => request,
            Err(rejection) => return self.reject(slot, rejection),
        };
        let mut url_channels = Vec::new();
        let endpoint = match request.path.as_str() {
            "/echo" if self.config.echo => Endpoint::Echo,
            "/ws" => {
                let limits = &self.config.limits;
                let query = match client::parse_query(&request.query, limits.channels_per_conn_max)
                {
                    Ok(query) => query,
                    Err(why) => return self.reject(slot, Rejection::BadRequest(why)),
                };
                let bad = query.channels.iter().any(|c| {
                    crate::channel::validate_name(c, limits.channel_name_bytes_max).is_err()
                });
                if bad {
                    return self.reject(slot, Rejection::BadRequest("bad channel name in the URL"));
                }
                url_channels = query.channels;
                Endpoint::Push { raw: query.raw }
            }
            _ => return self.reject(slot, Rejection::NotFound),
        };
        self.counters.handshakes += 1;
        let ping_ms = self.config.limits.ping_interval_ms;
        let now = self.now_tick;
        self.handshaking -= 1;
        let conn = &mut self.conns[slot];
        conn.endpoint = endpoint;
        conn.state = State::Open;
        conn.flags |= TRIM_WHEN_DRAINED;
        conn.close_code = close::ABNORMAL;
        conn.out.push_control(
            handshake::response_101(&request.accept, None),
            &mut self.queued_bytes,
        );
        // Bytes after the head are already frames (a client may pipeline them).
        let mut rest = std::mem::take(&mut conn.head);
        rest.drain(..request.head_len);
        self.wheel.remove(slot);
        if matches!(endpoint, Endpoint::Push { .. }) && ping_ms > 0 {
            self.wheel.insert(slot, now + limits_ticks(ping_ms));
        }
        if let Endpoint::Push { raw: false } = endpoint {
            let welcome = client::welcome(self.conn_id(slot).get());
            self.queue_data(slot, frame::encode(OpCode::Text, welcome.as_bytes()));
        }
        for name in url_channels {
            if let Err(e) = self.subscribe(slot, &name, None) {
                self.reply_error(slot, e.code(), e.message(), None);
            }
        }
        if !rest.is_empty() {
            self.decode(slot, &mut rest);
        }
    }

    /// The connection's public id.
    fn conn_id(&self, slot: usize) -> crate::id::ConnId {
        crate::id::ConnId::new(self.index, slot, self.conns[slot].generation)
    }

    fn reject(&mut self, slot: usize, rejection: Rejection) {
        self.counters.rejected(rejection.status());
        assert_eq!(self.conns[slot].state, State::Handshaking);
        self.handshaking -= 1;
        let conn = &mut self.conns[slot];
        conn.head = Vec::new();
        conn.out
            .push_control(rejection.response(), &mut self.queued_bytes);
        conn.state = State::Closing;
        conn.flags |= FIN_AFTER_FLUSH;
        self.arm_close_deadline(slot);
        self.mark_dirty(slot);
    }

    fn on_frames(&mut self, slot: usize, bid: u16, len: usize) {
        // The buffer stays ours until recycled after this call; decoding unmasks it in place.
        let data: *mut [u8] = self.bufs.get(bid, len);
        // SAFETY: `data` points into the buffer ring's memory, which `decode` does not touch
        // (it borrows the connection and counters only); the kernel does not write this buffer
        // until we recycle it.
        self.decode(slot, unsafe { &mut *data });
    }

    fn decode(&mut self, slot: usize, data: &mut [u8]) {
        let conn = &mut self.conns[slot];
        let limits = match conn.endpoint {
            Endpoint::Echo => self.echo_limits,
            _ => self.ws_limits,
        };
        let outbound_max = self.config.limits.outbound_bytes_max;
        let endpoint = conn.endpoint;
        // The token bucket of /ws clients: refilled from the ticks elapsed, burst of one second.
        let rate = match endpoint {
            Endpoint::Push { .. } => self.config.limits.client_messages_per_s,
            _ => 0,
        };
        if rate > 0 {
            let burst = u64::from(rate.min(u32::from(u8::MAX)));
            let elapsed_ms = u64::from(self.now_tick.wrapping_sub(conn.bucket_tick)) * TICK_MS;
            let refill = elapsed_ms * u64::from(rate) / 1000;
            if refill > 0 {
                conn.bucket_tick = self.now_tick;
            }
            conn.tokens = (u64::from(conn.tokens) + refill).min(burst) as u8;
        }
        let mut limited = false;
        let held_before = conn.decoder.heap_bytes();
        let counters = &mut self.counters;
        let queued = &mut self.queued_bytes;
        let Conn {
            decoder,
            out,
            flags,
            close_code,
            state,
            tokens,
            ..
        } = conn;
        let mut slow = false;
        let mut commands: Vec<Vec<u8>> = Vec::new();
        let mut binary_on_ws = false;
        let result = decoder.feed(data, &limits, &mut |message| {
            counters.frames_in += 1;
            if rate > 0 && !matches!(message, Message::Close { .. }) {
                if *tokens == 0 {
                    limited = true;
                    return ControlFlow::Break(());
                }
                *tokens -= 1;
            }
            match message {
                Message::Text(payload) | Message::Binary(payload) if endpoint == Endpoint::Echo => {
                    let op = if matches!(message, Message::Text(_)) {
                        OpCode::Text
                    } else {
                        OpCode::Binary
                    };
                    // The echo endpoint is for conformance tests: its limit is the message limit
                    // (plus a frame header and a queue handle).
                    let limit = outbound_max.max(limits.message_bytes_max + 64);
                    counters.frames_out += 1;
                    if out.push(frame::encode(op, payload), limit, queued) == Enqueue::SlowConsumer
                    {
                        slow = true;
                        return ControlFlow::Break(());
                    }
                }
                Message::Text(payload) => commands.push(payload.to_vec()),
                Message::Binary(_) => {
                    // §7.4.1: 1003 for a data type the endpoint cannot accept.
                    binary_on_ws = true;
                    return ControlFlow::Break(());
                }
                Message::Ping(payload) => {
                    counters.frames_out += 1;
                    out.push_control(frame::encode(OpCode::Pong, payload), queued);
                }
                Message::Pong(_) => {}
                Message::Close { code, .. } => {
                    *flags |= CLOSE_RECEIVED | FIN_AFTER_FLUSH;
                    if *flags & CLOSE_SENT == 0 {
                        // §5.5.1: answer with a close frame, echoing the status code.
                        *flags |= CLOSE_SENT;
                        counters.frames_out += 1;
                        let reply = match code {
                            Some(code) => frame::encode_close(code, ""),
                            None => frame::encode(OpCode::Close, &[]),
                        };
                        out.push_control(reply, queued);
                        *close_code = code.unwrap_or(close::NO_STATUS);
                    }
                    *state = State::Closing;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
        let held_after = self.conns[slot].decoder.heap_bytes();
        // Decoders are the only holders of partial messages; the shard total follows their deltas.
        self.inbound_bytes = (self.inbound_bytes + held_after).saturating_sub(held_before);
        if held_after > held_before
            && self.inbound_bytes > self.config.limits.shard_inbound_bytes_max
        {
            // Over the shard's bound: the largest partial message goes (not simply the one that
            // grew last, which may be a small, innocent one).
            let largest = self
                .conns
                .iter()
                .max_by_key(|(_, c)| c.decoder.heap_bytes())
                .map(|(s, _)| s);
            if let Some(largest) = largest {
                self.counters.shard_inbound_overflows += 1;
                self.fail(largest, close::MESSAGE_TOO_BIG);
                if largest == slot {
                    return;
                }
            }
        }
        if slow {
            return self.slow_consumer(slot);
        }
        if limited {
            // Commands read before the limit was hit are still served, then the close.
            self.counters.rate_limited += 1;
        }
        for command in commands {
            if self.conns[slot].state != State::Open {
                break;
            }
            self.on_command(slot, &command);
        }
        if limited {
            return self.fail(slot, close::RATE_LIMITED);
        }
        if binary_on_ws {
            return self.fail(slot, close::UNSUPPORTED_DATA);
        }
        match result {
            Ok(()) => {
                if self.conns[slot].state == State::Closing {
                    self.arm_close_deadline(slot);
                }
            }
            Err(error) => self.fail(slot, error.close_code()),
        }
        let conn = &mut self.conns[slot];
        if conn.decoder.heap_bytes() == 0 {
            conn.out.shrink_when_idle();
        }
    }

    /// Fails the connection (§7.1.7): send a close frame with `code`, read nothing more, then FIN.
    fn fail(&mut self, slot: usize, code: u16) {
        let conn = &mut self.conns[slot];
        // Nothing more is decoded: release a partly received message now.
        let held = conn.decoder.heap_bytes();
        conn.decoder = crate::proto::decoder::Decoder::default();
        self.inbound_bytes -= held.min(self.inbound_bytes);
        let conn = &mut self.conns[slot];
        if conn.flags & CLOSE_SENT == 0 {
            conn.out
                .push_control(frame::encode_close(code, ""), &mut self.queued_bytes);
            conn.flags |= CLOSE_SENT;
            self.counters.frames_out += 1;
        }
        conn.flags |= FIN_AFTER_FLUSH;
        conn.close_code = code;
        conn.state = State::Closing;
        self.arm_close_deadline(slot);
        self.mark_dirty(slot);
    }

    /// Starts a server-initiated close (heartbeat, shutdown, slow consumer): send a close frame
    /// and wait for the peer's, up to the close deadline.
    fn start_close(&mut self, slot: usize, code: u16) {
        self.start_close_with(slot, code, "");
    }

    fn start_close_with(&mut self, slot: usize, code: u16, reason: &str) {
        let conn = &mut self.conns[slot];
        if conn.state != State::Open {
            return;
        }
        conn.out
            .push_control(frame::encode_close(code, reason), &mut self.queued_bytes);
        conn.flags |= CLOSE_SENT;
        conn.close_code = code;
        conn.state = State::Closing;
        self.counters.frames_out += 1;
        self.arm_close_deadline(slot);
        self.mark_dirty(slot);
    }

    fn slow_consumer(&mut self, slot: usize) {
        self.counters.slow_consumers += 1;
        // The backlog will never be read in time; dropping it lets the close frame (queued next)
        // reach the client as soon as it reads again, so it learns why it was closed.
        let conn = &mut self.conns[slot];
        if conn.state == State::Open {
            conn.out.discard_queued(&mut self.queued_bytes);
        }
        self.start_close(slot, close::SLOW_CONSUMER);
    }

    /// Queues a data frame for `slot`, closing it as a slow consumer when its queue is full.
    fn queue_data(&mut self, slot: usize, frame: Bytes) {
        let max = self.config.limits.outbound_bytes_max;
        let conn = &mut self.conns[slot];
        if conn.state != State::Open {
            return;
        }
        match conn.out.push(frame, max, &mut self.queued_bytes) {
            Enqueue::Enqueued => {
                self.counters.frames_out += 1;
                self.mark_dirty(slot);
            }
            Enqueue::SlowConsumer => self.slow_consumer(slot),
        }
    }

    fn arm_close_deadline(&mut self, slot: usize) {
        let ticks = limits_ticks(self.config.limits.close_timeout_ms);
        self.wheel.insert(slot, self.now_tick + ticks);
    }

    fn mark_dirty(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if conn.flags & (DIRTY | SENDING) == 0 && conn.out.has_queued() {
            conn.flags |= DIRTY;
            self.dirty.push(slot as u32);
        } else if conn.flags & (SENDING | DIRTY) == 0 && conn.flags & FIN_AFTER_FLUSH != 0 {
            // A control connection finishes only when its last pending reply is out.
            let replies_pending = self.controls.get(&slot).is_some_and(|s| s.has_pending());
            if !replies_pending {
                self.send_fin(slot);
            }
        }
    }

    /// Everything is sent: half-close, then wait for the peer's FIN (lingering close, so our
    /// last frames are not destroyed by a reset).
    fn send_fin(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if conn.state == State::Draining {
            return;
        }
        if conn.flags & PEER_EOF != 0 {
            // Both directions are done.
            let code = conn.close_code;
            return self.free(slot, code);
        }
        conn.state = State::Draining;
        // SAFETY: shutdown(2) on a socket we own.
        unsafe {
            libc::shutdown(conn.fd, libc::SHUT_WR);
        }
        self.arm_close_deadline(slot);
    }

    fn send_slot(&mut self) -> Option<usize> {
        if let Some(index) = self.free_sends.pop() {
            return Some(index as usize);
        }
        if self.sends.len() >= self.config.limits.sends_in_flight_max {
            return None;
        }
        // Small to start: most sends carry a frame or two; a slot grows (up to send_iovecs_max)
        // only when a connection really has a backlog.
        let initial = self.config.limits.send_iovecs_max.min(4);
        self.sends.push(Box::new(SendSlot {
            conn_slot: 0,
            generation: 0,
            frames: Vec::with_capacity(initial),
            iov: Vec::with_capacity(initial),
            // SAFETY: msghdr is plain data; all-zero is valid (no name, no control).
            msg: unsafe { std::mem::zeroed() },
        }));
        Some(self.sends.len() - 1)
    }

    /// Enforces `shard_outbound_bytes_max`: drops the connections with the largest queues as
    /// slow consumers until the shard is back under 7/8 of the limit. A scan of the slab, but
    /// only when the limit is passed, which a healthy shard never does.
    fn shed_largest_queues(&mut self) {
        let max = self.config.limits.shard_outbound_bytes_max;
        if self.queued_bytes <= max {
            self.shed_recheck_at = 0;
            return;
        }
        if self.queued_bytes <= self.shed_recheck_at {
            return;
        }
        // The running total counts a frame shared by N queues N times (cheap to keep). Before
        // dropping anyone, measure what the queues really hold; while that is under the limit,
        // look again only after the running total grows by another eighth of it.
        let real = self.real_queued_bytes();
        if real <= max {
            self.shed_recheck_at = self.queued_bytes + max / 8;
            return;
        }
        self.shed_recheck_at = 0;
        // Shed until the running total is back under 7/8 of the limit, scaled by how much it
        // overstates the real figure.
        let target =
            ((max / 8 * 7) as u128 * self.queued_bytes as u128 / real.max(1) as u128) as usize;
        let mut by_size: Vec<(usize, usize)> = self
            .conns
            .iter()
            .map(|(slot, c)| (c.out.owed_bytes(), slot))
            .filter(|&(owed, _)| owed > 0)
            .collect();
        by_size.sort_unstable_by(|a, b| b.cmp(a));
        for (_, slot) in by_size {
            if self.queued_bytes <= target {
                break;
            }
            self.counters.shard_outbound_overflows += 1;
            self.counters.slow_consumers += 1;
            self.free(slot, close::SLOW_CONSUMER);
        }
    }

    /// What the outbound queues really hold: their rings of handles (by capacity), and each
    /// distinct payload once (frames shared by many queues point at the same bytes). A scan of
    /// every queue and send slot, done only when the running total passes its limit.
    fn real_queued_bytes(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        let mut payloads = 0usize;
        let mut count = |frame: &Bytes| {
            if seen.insert(frame.as_ptr() as usize) {
                payloads += frame.len();
            }
        };
        let mut handles = 0usize;
        for (_, conn) in self.conns.iter() {
            handles += conn.out.heap_bytes();
            conn.out.for_each_queued(&mut count);
        }
        for send in &self.sends {
            handles += send.frames.capacity() * outbound::FRAME_OVERHEAD;
            send.frames.iter().for_each(&mut count);
        }
        handles + payloads
    }

    fn flush(&mut self) {
        self.shed_largest_queues();
        std::mem::swap(&mut self.dirty, &mut self.dirty_next);
        let mut list = std::mem::take(&mut self.dirty_next);
        for &slot in &list {
            let slot = slot as usize;
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            if conn.flags & DIRTY == 0 {
                continue; // a stale entry: the slot was freed and reused
            }
            conn.flags &= !DIRTY;
            if conn.flags & SENDING != 0 || !conn.out.has_queued() {
                continue;
            }
            let Some(index) = self.send_slot() else {
                // Every send slot is in flight: try again next turn.
                let conn = &mut self.conns[slot];
                conn.flags |= DIRTY;
                self.dirty.push(slot as u32);
                continue;
            };
            let iov_max = self.config.limits.send_iovecs_max;
            let conn = &mut self.conns[slot];
            let send = &mut self.sends[index];
            send.conn_slot = slot;
            send.generation = conn.generation;
            conn.out.take_batch(iov_max, &mut send.frames);
            send.iov.clear();
            send.iov.extend(send.frames.iter().map(|f| libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            }));
            send.msg.msg_iov = send.iov.as_mut_ptr();
            send.msg.msg_iovlen = send.iov.len();
            conn.flags |= SENDING;
            let entry = opcode::SendMsg::new(types::Fd(conn.fd), &send.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(uring::user_data(Op::Send, index, 0));
            self.push(entry);
        }
        list.clear();
        self.dirty_next = list;
    }

    fn on_send(&mut self, index: usize, result: i32) {
        let (slot, generation) = {
            let send = &self.sends[index];
            (send.conn_slot, send.generation)
        };
        self.counters.sends += 1;
        let alive = self.conn_mut(slot, generation).is_some();
        if !alive {
            self.sends[index].frames.clear();
            self.free_sends.push(index as u16);
            self.counters.stale_completions += 1;
            return;
        }
        let mut frames = std::mem::take(&mut self.sends[index].frames);
        let conn = &mut self.conns[slot];
        conn.flags &= !SENDING;
        if result <= 0 {
            frames.clear();
            self.sends[index].frames = frames;
            self.free_sends.push(index as u16);
            let code = self.conns[slot].close_code;
            self.free(slot, code);
            return;
        }
        self.counters.bytes_out += result as u64;
        conn.out
            .complete(&mut frames, result as usize, &mut self.queued_bytes);
        if conn.flags & TRIM_WHEN_DRAINED != 0 && conn.out.release_if_empty() {
            conn.flags &= !TRIM_WHEN_DRAINED;
        }
        self.sends[index].frames = frames;
        self.free_sends.push(index as u16);
        self.mark_dirty(slot);
    }

    fn fire_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(self.now_tick, &mut fired);
        for &slot in &fired {
            let Some(conn) = self.conns.get(slot) else {
                continue;
            };
            match conn.state {
                State::Handshaking => {
                    self.counters.handshake_timeouts += 1;
                    self.free(slot, 0);
                }
                State::Open => self.heartbeat(slot),
                State::Closing | State::Draining => {
                    let code = conn.close_code;
                    self.free(slot, code);
                }
            }
        }
        fired.clear();
        self.fired = fired;
    }

    fn heartbeat(&mut self, slot: usize) {
        let interval = limits_ticks(self.config.limits.ping_interval_ms);
        let silent = self.now_tick.wrapping_sub(self.conns[slot].last_rx_tick);
        if silent >= 2 * interval {
            return self.start_close(slot, close::HEARTBEAT_TIMEOUT);
        }
        let conn = &mut self.conns[slot];
        conn.out
            .push_control(frame::encode(OpCode::Ping, &[]), &mut self.queued_bytes);
        conn.flags |= TRIM_WHEN_DRAINED;
        self.counters.frames_out += 1;
        self.wheel.insert(slot, self.now_tick + interval);
        self.mark_dirty(slot);
    }

    /// Frees a connection now: its slot, its timer, its socket. A send still in flight keeps its
    /// frames in its send slot; its completion will be counted stale.
    fn free(&mut self, slot: usize, code: u16) {
        if self.conns[slot].state == State::Handshaking {
            self.handshaking -= 1;
        }
        self.leave_all(slot);
        self.controls.remove(&slot);
        self.deferred.remove(&slot);
        if let Some(ip) = self.conn_ip.remove(&slot) {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
        let mut conn = self.conns.remove(slot);
        conn.out.clear(&mut self.queued_bytes);
        self.inbound_bytes -= conn.decoder.heap_bytes().min(self.inbound_bytes);
        self.wheel.remove(slot);
        if code != 0 {
            self.counters.closed(code);
        }
        // SAFETY: the fd is ours. shutdown first, because a multishot receive in flight holds a
        // reference to the socket, so close alone would neither send FIN nor end the receive.
        unsafe {
            libc::shutdown(conn.fd, libc::SHUT_RDWR);
            libc::close(conn.fd);
        }
    }

    fn begin_shutdown(&mut self) {
        let timeout = limits_ticks(self.config.limits.shutdown_timeout_ms);
        self.shutting_down = Some(self.now_tick + timeout);
        if let Some(listener) = self.listener.take() {
            // SAFETY: shutdown(2) ends the multishot accept (its completion arrives without
            // MORE) and the listener is closed when dropped.
            unsafe {
                libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR);
            }
        }
        for listener in self.control_listeners.drain(..) {
            // SAFETY: as above; every shard holds a duplicate of the same socket.
            unsafe {
                libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR);
            }
        }
        let slots: Vec<usize> = self.conns.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            if self.conns[slot].endpoint == Endpoint::Control {
                // Replies to requests already read still go out; then EOF.
                let conn = &mut self.conns[slot];
                conn.state = State::Closing;
                conn.flags |= FIN_AFTER_FLUSH;
                self.wheel.insert(slot, self.now_tick + timeout);
                self.mark_dirty(slot);
                continue;
            }
            match self.conns[slot].state {
                State::Handshaking => self.free(slot, 0),
                State::Open => {
                    self.start_close(slot, close::GOING_AWAY);
                    // Shutdown has its own deadline; the close deadline must not cut it short.
                    self.wheel.insert(slot, self.now_tick + timeout);
                }
                State::Closing | State::Draining => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget's fixed part is what a shard really allocates at start (one shard: no
    /// cross-shard rings).
    #[test]
    fn preallocation_matches_the_budget() {
        let mut config = Config::default();
        config.limits.recv_buffers = 256;
        let (listener, _) = listener::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let mesh = crate::xshard::mesh(1, 16, 16).unwrap().pop().unwrap();
        let setup = ShardSetup {
            index: 0,
            listener,
            config: Arc::new(config.clone()),
            published: Arc::new(Published::default()),
            stop: Arc::new(AtomicBool::new(false)),
            mesh,
            shards: 1,
            epoch_base: 0,
            control_listeners: Vec::new(),
            all_published: Arc::new(Vec::new()),
        };
        let shard = Shard::new(setup).unwrap();
        let terms = budget::shard_budget(&config.limits, 1, false);
        assert_eq!(shard.preallocated_bytes(), budget::fixed_bytes(&terms));
    }
}
