//! The in-memory driver: engines with no kernel, for tests of the connection logic. Sockets are
//! byte queues, sends complete when the test lets them, time is a number the test advances, and
//! the cross-shard rings are the real ones (so they can be filled on demand).
//!
//! A loop turn ([`Cluster::turn`]) runs the same phases as the Linux drivers: inbox, outboxes,
//! flush, I/O (client bytes in, sends out), intents, tick. Deterministic: the same calls give
//! the same results.

use crate::config::Config;
use crate::engine::io::{Intent, Listener, SendResult, Sock, Token, Transmit};
use crate::engine::outbound::Batch;
use crate::engine::{Engine, EngineSetup};
use crate::stats::{Counters, Published};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// One end of a fake socket, as the test (the client) sees it.
#[derive(Debug, Default)]
pub struct Pipe {
    /// The shard that accepted it.
    pub shard: usize,
    /// The engine's token, once it asked to read.
    pub token: Option<Token>,
    /// Bytes the client wrote that the engine has not seen yet.
    pub to_server: VecDeque<u8>,
    /// The client's FIN, to deliver after `to_server`.
    pub client_fin: bool,
    fin_delivered: bool,
    /// Bytes the server sent, not yet read by the test.
    pub from_server: Vec<u8>,
    /// The server half-closed (FIN after its last bytes).
    pub server_fin: bool,
    /// The server closed the socket.
    pub closed: bool,
    /// The response written to a socket that got no slot.
    pub refused: Option<Bytes>,
    /// The engine paused reading this socket (backpressure): `to_server` waits.
    pub paused: bool,
    /// Bytes the client reads per turn (`None`: whatever the window allows): the window is
    /// refilled to this at every turn, like a reader at a fixed speed.
    pub bandwidth: Option<usize>,
    /// Bytes the socket can still take from the server (`None`: unlimited). A send completes
    /// with at most this many bytes; at 0 it stays in flight, like a peer that stopped reading.
    pub window: Option<usize>,
}

/// Input bytes delivered per socket per turn.
pub const INPUT_PER_TURN: usize = 16 * 1024;
/// The wall clock at the cluster's time 0, in ms since the UNIX epoch (2023-11-14): tokens in
/// tests carry `exp` relative to it.
pub const WALL_BASE_MS: u64 = 1_700_000_000_000;

struct Slot {
    token: Token,
    sock: Sock,
    frames: Batch,
}

#[derive(Default)]
struct MemTx {
    slots: Vec<Slot>,
    free: Vec<usize>,
    max: usize,
    /// Sends handed over and not completed yet (in order).
    in_flight: Vec<usize>,
}

impl Transmit for MemTx {
    fn reserve(&mut self) -> Option<(usize, &mut Batch)> {
        let index = match self.free.pop() {
            Some(i) => i,
            None if self.slots.len() < self.max => {
                self.slots.push(Slot {
                    token: Token {
                        slot: 0,
                        generation: 0,
                    },
                    sock: Sock(-1),
                    frames: Batch::default(),
                });
                self.slots.len() - 1
            }
            None => return None,
        };
        Some((index, &mut self.slots[index].frames))
    }

    fn submit(&mut self, index: usize, token: Token, sock: Sock) {
        self.slots[index].token = token;
        self.slots[index].sock = sock;
        self.in_flight.push(index);
    }

    fn in_flight(&self, f: &mut dyn FnMut(&Bytes)) -> usize {
        let mut handles = 0;
        for &i in &self.in_flight {
            handles += self.slots[i].frames.heap_bytes();
            self.slots[i].frames.frames.iter().for_each(&mut *f);
        }
        handles
    }
}

struct Shard {
    engine: Engine,
    tx: MemTx,
    published: Arc<Published>,
}

/// Several engines wired by real cross-shard rings, with fake sockets and a fake clock.
pub struct Cluster {
    shards: Vec<Shard>,
    pipes: BTreeMap<i32, Pipe>,
    next_sock: i32,
    now_ms: u64,
    intents: Vec<Intent>,
    /// Whether the current turn did anything.
    work: bool,
    /// The engines' shared congestion flags.
    congestion: Arc<crate::engine::control::Congestion>,
    /// Whether `StopAccepting` was carried out, per shard.
    pub stopped_accepting: Vec<bool>,
}

/// A stand-in for the broker bridge: the commands the shards sent, and a way to hand them
/// events as the bridge's sink would (routed by `broker::route`).
pub struct FakeBroker {
    /// The shards' handle (mark it up or down with `handle.shared().set_up`).
    pub handle: crate::broker::BrokerHandle,
    /// The commands the shards queued, in order.
    pub commands: std::sync::mpsc::Receiver<crate::broker::BrokerCommand>,
    lanes: Vec<crate::xshard::LaneTx<crate::broker::BrokerEvent>>,
}

impl FakeBroker {
    /// Delivers `event` to the shard (or shards) the sink would.
    pub fn deliver(&mut self, event: crate::broker::BrokerEvent) {
        use crate::broker::route::{Route, route};
        match route(&event, self.lanes.len()) {
            Route::One(shard) => {
                self.lanes[shard].push(event);
            }
            Route::All => {
                for lane in &mut self.lanes {
                    lane.push(event.clone());
                }
            }
        }
    }

    /// Every command queued so far.
    pub fn take(&self) -> Vec<crate::broker::BrokerCommand> {
        let taken: Vec<_> = self.commands.try_iter().collect();
        for command in &taken {
            self.handle.shared().taken(command);
        }
        taken
    }
}

impl Cluster {
    /// `shards` engines on `config` (its ring capacities apply), at time 0.
    pub fn new(config: Config, shards: usize) -> Cluster {
        Cluster::build(config, shards, (0..shards).map(|_| None).collect(), None)
    }

    /// Engines whose Pusher webhooks go to the returned queue (as the sender would take them).
    pub fn with_webhooks(
        config: Config,
        shards: usize,
    ) -> (
        Cluster,
        std::sync::mpsc::Receiver<(u16, crate::webhook::Hook)>,
    ) {
        let (handle, rx, _) = crate::webhook::queue(1024);
        let setups = (0..shards).map(|_| None).collect();
        (Cluster::build(config, shards, setups, Some(handle)), rx)
    }

    /// Clustered engines (`[cluster]` as if set) and the fake broker they talk to; the broker
    /// counts as up.
    pub fn with_broker(config: Config, shards: usize) -> (Cluster, FakeBroker) {
        // Invariant: an eventfd for the fake's doorbell (a test machine has them).
        let (handle, commands) =
            crate::broker::queue(1024, 64 << 20).expect("invariant: an eventfd");
        handle.shared().set_up(true);
        let mut lanes = Vec::new();
        let mut setups = Vec::new();
        for _ in 0..shards {
            let (tx, rx) = crate::xshard::lane(4096);
            lanes.push(tx);
            setups.push(Some(crate::engine::cluster::ClusterSetup {
                handle: handle.clone(),
                events: rx,
            }));
        }
        let cluster = Cluster::build(config, shards, setups, None);
        let broker = FakeBroker {
            handle,
            commands,
            lanes,
        };
        (cluster, broker)
    }

    fn build(
        config: Config,
        shards: usize,
        mut setups: Vec<Option<crate::engine::cluster::ClusterSetup>>,
        webhooks: Option<crate::webhook::WebhookHandle>,
    ) -> Cluster {
        let config = Arc::new(config);
        let mesh = crate::xshard::mesh(
            shards,
            config.limits.xshard_ring_capacity,
            config.limits.xshard_overflow_max,
        );
        let published: Vec<Arc<Published>> = (0..shards)
            .map(|_| Arc::new(Published::default()))
            .collect();
        let all = Arc::new(published.clone());
        let gate = Arc::new(crate::engine::control::ControlGate::default());
        let congestion = Arc::new(crate::engine::control::Congestion::new(shards));
        let drain = Arc::new(std::sync::atomic::AtomicU64::new(0));
        // Invariant: a test that configures [auth] gives a usable key (a bad one is a test bug).
        let verifier = config.auth.verifier();
        let verifier = verifier.expect("invariant: a test's [auth] key is usable");
        let verifier = verifier.map(Arc::new);
        let live = Arc::new(crate::engine::LiveConfig::new(
            config.clone(),
            verifier.clone(),
        ));
        let shards: Vec<Shard> = mesh
            .into_iter()
            .enumerate()
            .map(|(index, mesh)| Shard {
                engine: Engine::new(EngineSetup {
                    index,
                    shards,
                    config: config.clone(),
                    published: published[index].clone(),
                    all_published: all.clone(),
                    epoch_base: 1000,
                    mesh,
                    control_gate: gate.clone(),
                    congestion: congestion.clone(),
                    verifier: verifier.clone(),
                    wall_base_ms: WALL_BASE_MS,
                    // The tests' HTTP connections come on control listener 1.
                    http_listener: Some(1),
                    drain: drain.clone(),
                    live: live.clone(),
                    webhooks: webhooks.clone(),
                    cluster: setups[index].take(),
                }),
                tx: MemTx {
                    max: config.limits.sends_in_flight_max,
                    ..MemTx::default()
                },
                published: published[index].clone(),
            })
            .collect();
        let n = shards.len();
        Cluster {
            shards,
            pipes: BTreeMap::new(),
            next_sock: 100,
            now_ms: 0,
            intents: Vec::new(),
            work: false,
            congestion,
            stopped_accepting: vec![false; n],
        }
    }

    /// The engine of shard `i`.
    pub fn engine(&mut self, i: usize) -> &mut Engine {
        &mut self.shards[i].engine
    }

    /// Shard `i`'s counters as they are now.
    pub fn counters(&self, i: usize) -> Counters {
        self.shards[i].engine.counters().clone()
    }

    /// The sum of every shard's counters.
    pub fn total(&self) -> Counters {
        let mut total = Counters::default();
        for s in &self.shards {
            total.add(s.engine.counters());
        }
        total
    }

    /// Shard `i`'s last published snapshot.
    pub fn published(&self, i: usize) -> Counters {
        self.shards[i].published.read()
    }

    /// The fake clock.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// A client connects to `listener` of shard `shard`; returns its socket.
    pub fn connect(&mut self, shard: usize, listener: Listener) -> Sock {
        let sock = Sock(self.next_sock);
        self.next_sock += 1;
        self.pipes.insert(
            sock.0,
            Pipe {
                shard,
                ..Pipe::default()
            },
        );
        self.shards[shard].engine.on_accept(listener, sock, None);
        self.apply(shard);
        sock
    }

    /// The client's end of `sock`.
    pub fn pipe(&mut self, sock: Sock) -> &mut Pipe {
        self.pipes
            .get_mut(&sock.0)
            // Invariant: every Sock the engines name was handed out by `connect`.
            .expect("a socket of this cluster")
    }

    /// The client writes `bytes` (delivered to the engine on the next turn).
    pub fn write(&mut self, sock: Sock, bytes: &[u8]) {
        self.pipe(sock).to_server.extend(bytes);
    }

    /// The client half-closes (FIN after what it wrote).
    pub fn client_fin(&mut self, sock: Sock) {
        self.pipe(sock).client_fin = true;
    }

    /// Takes what the server sent on `sock` so far.
    pub fn read(&mut self, sock: Sock) -> Vec<u8> {
        std::mem::take(&mut self.pipe(sock).from_server)
    }

    /// Sets how many more bytes `sock` accepts from the server (`None`: unlimited); sends stuck
    /// at a zero window resume on the next turn.
    pub fn set_window(&mut self, sock: Sock, window: Option<usize>) {
        self.pipe(sock).window = window;
    }

    /// Raises or clears shard `i`'s congestion flag from outside (as if it were over its
    /// watermark), to put a publisher's pause exactly where a test wants it.
    pub fn set_congested(&mut self, i: usize, on: bool) {
        self.congestion.set(i, on);
    }

    /// The client of `sock` reads `bytes` per turn from now on.
    pub fn set_bandwidth(&mut self, sock: Sock, bytes: usize) {
        let pipe = self.pipe(sock);
        pipe.bandwidth = Some(bytes);
        pipe.window = Some(bytes);
    }

    /// One loop turn on every shard, at the current time; returns whether any did work.
    pub fn turn(&mut self) -> bool {
        let mut busy = false;
        for i in 0..self.shards.len() {
            busy |= self.turn_shard(i);
        }
        busy
    }

    /// One loop turn of shard `i` alone (the others do not drain their rings meanwhile);
    /// returns whether it did work (cross-shard messages, sends, input, intents).
    pub fn turn_shard(&mut self, i: usize) -> bool {
        self.work = false;
        {
            let shard = &mut self.shards[i];
            self.work |= shard.engine.drain_inbox();
            let mut rang = false;
            shard.engine.flush_outboxes(|_| rang = true);
            self.work |= rang;
            shard.engine.flush(&mut shard.tx);
        }
        self.apply(i);
        for pipe in self.pipes.values_mut().filter(|p| p.shard == i) {
            if let Some(bandwidth) = pipe.bandwidth {
                pipe.window = Some(bandwidth);
            }
        }
        self.complete_sends(i);
        self.deliver_input(i);
        let now = self.now_ms;
        self.shards[i].engine.set_clock_us(now * 1000);
        self.shards[i].engine.tick(now);
        self.apply(i);
        self.work
    }

    /// Turns until two turns in a row do no work (at most 1000); returns the turns taken.
    pub fn settle(&mut self) -> usize {
        let mut idle = 0;
        for n in 0..1000 {
            if self.turn() {
                idle = 0;
            } else {
                idle += 1;
                if idle == 2 {
                    return n + 1;
                }
            }
        }
        panic!("the cluster did not settle in 1000 turns");
    }

    /// Moves the clock forward by `ms` in steps of one tick, turning at each step.
    pub fn advance(&mut self, ms: u64) {
        let end = self.now_ms + ms;
        while self.now_ms < end {
            self.now_ms = (self.now_ms + crate::engine::TICK_MS).min(end);
            self.turn();
        }
        self.settle();
    }

    fn complete_sends(&mut self, i: usize) {
        let in_flight = std::mem::take(&mut self.shards[i].tx.in_flight);
        let mut still = Vec::new();
        for index in in_flight {
            let slot = &mut self.shards[i].tx.slots[index];
            let pipe = self
                .pipes
                .get_mut(&slot.sock.0)
                // Invariant: every Sock the engines name was handed out by `connect`.
                .expect("a socket of this cluster");
            if pipe.closed {
                // The socket is gone: the kernel would fail the send.
                let mut frames = std::mem::take(&mut slot.frames);
                let token = slot.token;
                self.work = true;
                self.shards[i]
                    .engine
                    .on_sent(token, &mut frames, SendResult::Failed);
                self.shards[i].tx.slots[index].frames = frames;
                self.shards[i].tx.free.push(index);
                continue;
            }
            let total = slot.frames.len();
            let n = pipe.window.map_or(total, |w| w.min(total));
            if n == 0 {
                still.push(index);
                continue;
            }
            if let Some(w) = pipe.window.as_mut() {
                *w -= n;
            }
            let mut left = n;
            for f in slot.frames.chunks() {
                let take = left.min(f.len());
                pipe.from_server.extend_from_slice(&f[..take]);
                left -= take;
                if left == 0 {
                    break;
                }
            }
            let mut frames = std::mem::take(&mut slot.frames);
            let token = slot.token;
            self.work = true;
            self.shards[i]
                .engine
                .on_sent(token, &mut frames, SendResult::Sent(n));
            self.shards[i].tx.slots[index].frames = frames;
            self.shards[i].tx.free.push(index);
        }
        self.shards[i].tx.in_flight.extend(still);
        self.apply(i);
    }

    fn deliver_input(&mut self, i: usize) {
        let socks: Vec<i32> = self
            .pipes
            .iter()
            .filter(|(_, p)| p.shard == i && p.token.is_some() && !p.closed && !p.paused)
            .map(|(&s, _)| s)
            .collect();
        for s in socks {
            // Invariant: pipes are never removed, and the list holds those with a token.
            let pipe = self.pipes.get_mut(&s).expect("listed above");
            let token = pipe.token.expect("filtered");
            if !pipe.to_server.is_empty() {
                self.work = true;
                // At most INPUT_PER_TURN per socket and turn, as the Linux drivers bound the
                // input they handle between two flushes.
                let n = pipe.to_server.len().min(INPUT_PER_TURN);
                let mut bytes: Vec<u8> = pipe.to_server.drain(..n).collect();
                self.shards[i].engine.on_bytes(token, &mut bytes);
                self.apply(i);
            }
            // Invariant: pipes are never removed.
            let pipe = self.pipes.get_mut(&s).expect("listed above");
            if pipe.client_fin && !pipe.fin_delivered && !pipe.closed && pipe.to_server.is_empty() {
                pipe.fin_delivered = true;
                self.work = true;
                self.shards[i].engine.on_eof(token);
                self.apply(i);
            }
        }
    }

    fn apply(&mut self, i: usize) {
        while self.shards[i].engine.has_intents() {
            let mut intents = std::mem::take(&mut self.intents);
            self.shards[i].engine.take_intents(&mut intents);
            self.work = true;
            for intent in intents.drain(..) {
                match intent {
                    Intent::Read { token, sock } => self.pipe(sock).token = Some(token),
                    Intent::Refuse { sock, response } => {
                        let pipe = self.pipe(sock);
                        pipe.from_server.extend_from_slice(&response);
                        pipe.refused = Some(response);
                        pipe.closed = true;
                    }
                    Intent::ShutdownWrite { sock } => self.pipe(sock).server_fin = true,
                    Intent::Close { sock, .. } => self.pipe(sock).closed = true,
                    Intent::PauseRead { sock, .. } => self.pipe(sock).paused = true,
                    Intent::ResumeRead { sock, .. } => self.pipe(sock).paused = false,
                    Intent::StopAccepting | Intent::StopAcceptingWebSockets => {
                        self.stopped_accepting[i] = true
                    }
                }
            }
            self.intents = intents;
        }
    }
}
