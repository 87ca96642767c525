//! The server: binds one listener per shard, starts the pinned shard threads, reports readiness,
//! aggregates counters and stops the shards on request.

/// Epoch numbers each millisecond of a run's start time reserves (see `Server::start`).
const EPOCH_PER_MS: u64 = 1024;
use crate::config::{Config, ControlAddr, DriverKind};
use crate::driver::{ShardIo, socket as listener};
use crate::engine::{Engine, EngineSetup};
use crate::stats::{Counters, Published};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Fewest open files `ringcast serve` accepts: below this a push tier cannot do its job.
pub const NOFILE_MIN: u64 = 4096;

/// A running server.
pub struct Server {
    threads: Vec<JoinHandle<io::Result<()>>>,
    published: Vec<Arc<Published>>,
    stop: Arc<AtomicBool>,
    local_addr: SocketAddr,
    /// Informational lines for the start-up banner (ring mode, file limit).
    pub notes: Vec<String>,
    /// Control addresses being served.
    control: Vec<ControlAddr>,
    /// The `PATH.lock` of each Unix control socket, held until `wait` has removed the socket
    /// files and stopped the shards, so a successor never binds a path we are about to remove.
    control_locks: Vec<std::os::fd::OwnedFd>,
    /// The HTTP listener's address.
    http_addr: Option<SocketAddr>,
    /// The drain request every shard reads (ms; 0: none).
    drain: Arc<std::sync::atomic::AtomicU64>,
    /// The configuration the shards run, replaceable by a reload.
    live: Arc<crate::engine::LiveConfig>,
    /// The broker bridge (`[cluster]`), stopped after the shards.
    bridge: Option<crate::broker::redis::RedisBridge>,
    /// The Pusher webhook sender, which ends once the shards (its queue's handles) are gone.
    webhook_sender: Option<crate::webhook::sender::WebhookSender>,
}

/// The driver the shards run on, and the line that says why when it is not the one asked for.
struct Chosen {
    kind: DriverKind,
    note: Option<String>,
}

/// Resolves `auto`: io_uring when a ring can be set up here, else epoll with one line naming the
/// cause and the fix. `uring` without io_uring is an error with the same explanation.
fn choose_driver(wanted: DriverKind) -> Result<Chosen, String> {
    use crate::driver::uring;
    match wanted {
        DriverKind::Epoll => Ok(Chosen {
            kind: DriverKind::Epoll,
            note: None,
        }),
        DriverKind::Uring => match uring::probe() {
            Ok(()) => Ok(Chosen {
                kind: DriverKind::Uring,
                note: None,
            }),
            Err(e) => Err(uring::ring::explain_unavailable(&e)),
        },
        DriverKind::Auto => match uring::probe() {
            Ok(()) => Ok(Chosen {
                kind: DriverKind::Uring,
                note: None,
            }),
            Err(e) => Ok(Chosen {
                kind: DriverKind::Epoll,
                note: Some(format!(
                    "driver: epoll (io_uring unavailable: {} To run on io_uring, fix that and \
                     restart; --driver epoll silences this line.)",
                    uring::ring::explain_unavailable(&e)
                )),
            }),
        },
    }
}

/// A shard thread: builds its driver, reports readiness (or the cause of failure), runs.
fn run_shard(
    kind: DriverKind,
    index: usize,
    engine: Engine,
    io: ShardIo,
    limits: &crate::config::Limits,
    ready: mpsc::Sender<Result<String, String>>,
) -> io::Result<()> {
    match kind {
        DriverKind::Epoll => {
            let shard = match crate::driver::epoll::EpollShard::new(engine, io, limits) {
                Ok(shard) => shard,
                Err(err) => {
                    let _ = ready.send(Err(format!("shard {index}: epoll set-up failed: {err}")));
                    return Err(err);
                }
            };
            let _ = ready.send(Ok(format!("shard {index}: driver epoll")));
            drop(ready);
            shard.run()
        }
        DriverKind::Uring | DriverKind::Auto => {
            let shard = match crate::driver::uring::UringShard::new(engine, io, limits) {
                Ok(shard) => shard,
                Err(err) => {
                    let why = crate::driver::uring::ring::explain_unavailable(&err);
                    let _ = ready.send(Err(why));
                    return Err(err);
                }
            };
            let _ = ready.send(Ok(format!(
                "shard {index}: driver io_uring, mode {:?}, {}",
                shard.mode(),
                shard.files_note()
            )));
            drop(ready);
            shard.run()
        }
    }
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Heap a glibc arena keeps at its top when memory is freed, instead of giving it back to the
/// kernel (glibc's default is 128 KiB, adjusted upwards as large blocks are freed).
const HEAP_KEEP_BYTES: i32 = 64 << 20;

/// Blocks from this size up are mapped on their own (glibc's default starts at 128 KiB); below
/// it they come from the arena. Above every outbound buffer of the default limits (1 MiB).
const HEAP_MAP_BYTES: i32 = 4 << 20;

/// Tells glibc's allocator to keep freed heap for reuse. Under fan-out every subscriber's
/// buffer grows and is freed again each time it drains; with glibc's defaults the freed top of
/// the heap went back to the kernel and was faulted in again on the next burst: page faults and
/// clearing fresh pages took about 9 % of a shard's core at 630 msg/s × 10,000 subscribers
/// (docs/benchmarks.md). Memory stays bounded by the budget: what is kept was allocated before,
/// and at most `HEAP_KEEP_BYTES` per arena stays once freed. A `GLIBC_TUNABLES` that sets any
/// `glibc.malloc` tunable is left to decide instead. A refusal changes nothing but speed, so
/// it is not reported.
pub fn keep_heap() {
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.")) {
        return;
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets the allocator's parameters; it is called before the shards
    // start, and glibc takes its own lock anyway.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, HEAP_KEEP_BYTES);
        libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_MAP_BYTES);
    }
}

/// Opens the control listeners of `config`: Unix sockets, and TCP only on loopback unless a token
/// is configured (the control socket can publish to every client). Also returns the locks of
/// the Unix sockets, which must stay open for as long as the server runs.
fn open_control(config: &Config) -> Result<ControlListeners, String> {
    let mut fds = Vec::new();
    let mut addrs = Vec::new();
    let mut locks = Vec::new();
    for text in &config.control.listen {
        let addr = ControlAddr::parse(text)?;
        let fd = match &addr {
            ControlAddr::Unix(path) => {
                let unix = listener::listen_unix(path)
                    .map_err(|e| format!("cannot listen on control socket {addr}: {e}"))?;
                locks.push(unix.lock);
                unix.fd
            }
            ControlAddr::Tcp(tcp) => {
                let same_port = tcp.port() != 0 && tcp.port() == config.listen.port();
                let overlap = tcp.ip() == config.listen.ip()
                    || tcp.ip().is_unspecified()
                    || config.listen.ip().is_unspecified();
                if same_port && overlap {
                    return Err(format!(
                        "control address {addr} is the WebSocket address {}: clients and backends \
                         would reach each other's service. Fix: give the control socket its own port.",
                        config.listen
                    ));
                }
                if !tcp.ip().is_loopback() && config.control.token.is_none() {
                    return Err(format!(
                        "control address {addr} is not loopback: anyone reaching it could push to every \
                         client. Fix: use a loopback address, or set [control] token in the config."
                    ));
                }
                listener::listen(*tcp, true)
                    .map_err(|e| format!("cannot listen on control socket {addr}: {e}"))?
                    .0
            }
        };
        fds.push(fd);
        addrs.push(addr);
    }
    Ok((fds, addrs, locks))
}

/// Control listeners, their addresses, and the locks of the Unix ones.
type ControlListeners = (
    Vec<std::os::fd::OwnedFd>,
    Vec<ControlAddr>,
    Vec<std::os::fd::OwnedFd>,
);

impl Server {
    /// Binds the listeners and starts the shards; returns once every shard is ready to accept.
    pub fn start(config: Config) -> Result<Server, String> {
        config.limits.validate()?;
        crate::broker::config::validate_inputs(&config.redis_input, &config.cluster)?;
        let origins = crate::auth::OriginPolicy::parse(&config.allowed_origins)
            .map_err(|e| format!("allowed_origins: {e}"))?;
        let shards = if config.shards == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.shards
        };
        if shards > 1 << crate::id::SHARD_BITS {
            return Err(format!(
                "--shards {shards} is above the maximum of {}",
                1 << crate::id::SHARD_BITS
            ));
        }
        let mut notes = Vec::new();
        if origins.is_open() {
            notes.push(
                "origin check off: pages from any origin may open WebSocket connections \
                 (set allowed_origins in the config to restrict them)"
                    .to_string(),
            );
        }
        keep_heap();
        let nofile = raise_nofile();
        if nofile < NOFILE_MIN {
            return Err(format!(
                "the open-files limit is {nofile}, below the {NOFILE_MIN} ringcast needs. \
                 Fix: `ulimit -n 65536` in the shell that starts it, or LimitNOFILE=65536 in its systemd unit."
            ));
        }
        let wanted = (shards * config.limits.conns_per_shard_max) as u64;
        if nofile < wanted {
            notes.push(format!(
                "open-files limit {nofile} is below shards x conns_per_shard_max = {wanted}: \
                 the process will refuse connections (EMFILE) before the configured limit"
            ));
        }
        let mut listeners = Vec::with_capacity(shards);
        let (first, bound) = listener::listen(config.listen, !config.reuse_port)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        listeners.push(first);
        for _ in 1..shards {
            let (fd, _) = listener::listen(bound, false)
                .map_err(|e| format!("cannot listen on {bound}: {e}"))?;
            listeners.push(fd);
        }
        let (mut control_fds, control, control_locks) = open_control(&config)?;
        // The HTTP listener rides with the control listeners (every shard accepts on it); the
        // engine knows it by its index.
        let (http_listener, http_addr) = match config.http.listen {
            None => (None, None),
            Some(addr) => {
                if !addr.ip().is_loopback() && config.http.token.is_none() {
                    return Err(format!(
                        "HTTP address {addr} is not loopback: anyone reaching it could publish to every \
                         client. Fix: use a loopback address, or set [http] token in the config."
                    ));
                }
                if addr.port() != 0 && addr.port() == bound.port() {
                    return Err(format!(
                        "HTTP address {addr} is the WebSocket port. Fix: give [http] its own port."
                    ));
                }
                let (fd, bound_http) = listener::listen(addr, true)
                    .map_err(|e| format!("cannot listen on HTTP address {addr}: {e}"))?;
                control_fds.push(fd);
                (Some(control_fds.len() - 1), Some(bound_http))
            }
        };
        let config = Arc::new(config);
        let stop = Arc::new(AtomicBool::new(false));
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let mesh = crate::xshard::mesh(
            shards,
            config.limits.xshard_ring_capacity,
            config.limits.xshard_overflow_max,
        );
        let bells = crate::xshard::doorbells(shards)
            .map_err(|e| format!("cannot create the cross-shard doorbells: {e}"))?;
        let driver = choose_driver(config.driver)?;
        if let Some(note) = &driver.note {
            // The operator must see why io_uring is not used (one line, printed by the caller).
            notes.push(note.clone());
        }
        let verifier = config.auth.verifier()?.map(Arc::new);
        let drain = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let live = Arc::new(crate::engine::LiveConfig::new(
            config.clone(),
            verifier.clone(),
        ));
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // Epochs must never repeat across runs, or a client recovering after a restart could
        // be told `recovered: true` for another run's messages. A shard's counter starts at the
        // start time × 1024 and grows by at most 2 per channel it creates, so it stays below the
        // next run's start as long as a run creates fewer than 512 channels per millisecond of
        // its life on average. (Start time alone was overtaken by a burst of 20,000 channels.)
        // The result stays below 2^52 (JavaScript-safe) until the year 2109.
        let epoch_base = wall_ms.saturating_mul(EPOCH_PER_MS);
        // Clustered: the bridge runs on its own thread; its events reach each shard through a
        // ring of its own and that shard's doorbell, its commands go through a handle per shard.
        let (bridge, mut cluster_lanes) = if config.cluster.enabled() {
            // Every request in flight has room for its answer, plus as much again for messages.
            let lane_capacity = config.cluster.queue_capacity.saturating_mul(2).max(1024);
            let (sink, lanes) = crate::broker::route::ShardSink::new(bells.clone(), lane_capacity);
            let bridge = crate::broker::redis::RedisBridge::spawn(&config.cluster, sink)?;
            (Some(bridge), lanes.into_iter().map(Some).collect())
        } else {
            (None, Vec::new())
        };
        // Pusher webhooks: one sender thread for the process, fed by every shard.
        let (webhooks, webhook_sender) =
            if config.pusher.apps.iter().any(|a| a.webhook_url.is_some()) {
                let limits = &config.limits;
                let (handle, rx, stats) = crate::webhook::queue(limits.pusher_webhook_queue_max);
                let targets = config
                    .pusher
                    .apps
                    .iter()
                    .map(|app| {
                        let url = app.webhook_url.as_deref()?;
                        // Validated at load (`PusherConfig::validate`).
                        let url = crate::webhook::body::WebhookUrl::parse(url).ok()?;
                        Some(crate::webhook::sender::Target {
                            url,
                            key: app.key.clone(),
                            secret: app.secret.clone(),
                            events: app.webhook_events.clone(),
                        })
                    })
                    .collect();
                let sender_config = crate::webhook::sender::SenderConfig {
                    targets,
                    batch_max: limits.pusher_webhook_batch_max.max(1),
                    batch_ms: limits.pusher_webhook_batch_ms,
                    timeout_ms: limits.pusher_webhook_timeout_ms.max(1),
                    retry_delays_ms: crate::webhook::sender::RETRY_DELAYS_MS.to_vec(),
                };
                let sender = crate::webhook::sender::WebhookSender::spawn(sender_config, rx, stats)
                    .map_err(|e| format!("cannot start the webhook thread: {e}"))?;
                (Some(handle), Some(sender))
            } else {
                (None, None)
            };
        let mut threads = Vec::with_capacity(shards);
        let published: Vec<Arc<Published>> = (0..shards)
            .map(|_| Arc::new(Published::default()))
            .collect();
        let all_published = Arc::new(published.clone());
        let control_gate = Arc::new(crate::engine::control::ControlGate::default());
        let congestion = Arc::new(crate::engine::control::Congestion::new(shards));
        for ((index, listener), mesh) in listeners.into_iter().enumerate().zip(mesh) {
            let control_listeners = control_fds
                .iter()
                .map(|fd| fd.try_clone())
                .collect::<io::Result<Vec<_>>>()
                .map_err(|e| format!("cannot share the control socket: {e}"))?;
            let setup = EngineSetup {
                index,
                shards,
                config: config.clone(),
                published: published[index].clone(),
                all_published: all_published.clone(),
                epoch_base,
                mesh,
                control_gate: control_gate.clone(),
                congestion: congestion.clone(),
                verifier: verifier.clone(),
                wall_base_ms: wall_ms,
                http_listener,
                drain: drain.clone(),
                live: live.clone(),
                webhooks: webhooks.clone(),
                cluster: match (&bridge, cluster_lanes.get_mut(index).and_then(Option::take)) {
                    (Some(bridge), Some(events)) => Some(crate::engine::cluster::ClusterSetup {
                        handle: bridge.handle(),
                        events,
                    }),
                    _ => None,
                },
            };
            let shard_io = ShardIo {
                listener,
                control_listeners,
                bells: bells.clone(),
                stop: stop.clone(),
            };
            let core = (config.pin && !cores.is_empty()).then(|| cores[index % cores.len()]);
            let ready = ready_tx.clone();
            let limits = config.limits.clone();
            let kind = driver.kind;
            let thread = std::thread::Builder::new()
                .name(format!("shard-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let engine = Engine::new(setup);
                    run_shard(kind, index, engine, shard_io, &limits, ready)
                })
                .map_err(|e| format!("cannot start shard thread: {e}"))?;
            threads.push(thread);
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..shards {
            match ready_rx.recv() {
                Ok(Ok(note)) => notes.push(note),
                Ok(Err(err)) => failure = Some(err),
                Err(_) => failure = Some("a shard thread died during start-up".to_string()),
            }
        }
        drop(control_fds);
        let server = Server {
            threads,
            published,
            stop,
            local_addr: bound,
            notes,
            control,
            control_locks,
            http_addr,
            drain,
            live,
            bridge,
            webhook_sender,
        };
        if let Some(err) = failure {
            server.stop.store(true, Ordering::Relaxed);
            let _ = server.wait();
            return Err(err);
        }
        Ok(server)
    }

    /// Applies what `new` (read again from the config file and validated here) may change on a
    /// running server; returns the report (`applied`, `needs_restart`). Every shard takes the
    /// new configuration within about 100 ms.
    pub fn reload(&self, new: Config) -> Result<crate::config::Reload, String> {
        new.limits.validate()?;
        crate::auth::OriginPolicy::parse(&new.allowed_origins)
            .map_err(|e| format!("allowed_origins: {e}"))?;
        let verifier = new.auth.verifier()?.map(Arc::new);
        let Ok(mut current) = self.live.current.lock() else {
            return Err("the configuration cell is poisoned (a shard panicked)".to_string());
        };
        let report = crate::config::reload(&current.0, &new);
        if !report.applied.is_empty() {
            let verifier = if report.applied.iter().any(|a| a == "auth") {
                verifier
            } else {
                current.1.clone()
            };
            *current = (Arc::new(report.config.clone()), verifier);
            self.live.generation.fetch_add(1, Ordering::Relaxed);
        }
        Ok(report)
    }

    /// Whether a control `reload` asked for the config file to be read again (and clears it).
    pub fn take_reload_request(&self) -> bool {
        self.live.requested.swap(false, Ordering::Relaxed)
    }

    /// Drains over `window_ms`: every shard stops accepting, closes its WebSocket connections
    /// with 1012 spread over the window, then shuts down (the process ends).
    pub fn drain(&self, window_ms: u64) {
        self.drain.store(window_ms.max(1), Ordering::Relaxed);
    }

    /// The HTTP listener's bound address, when one is configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The control addresses served.
    pub fn control_addrs(&self) -> &[ControlAddr] {
        &self.control
    }

    /// The bound WebSocket address (with the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.threads.len()
    }

    /// The latest counters of each shard (snapshots, at most a few ticks old).
    pub fn shard_counters(&self) -> Vec<Counters> {
        self.published.iter().map(|p| p.read()).collect()
    }

    /// The sum over shards.
    pub fn counters(&self) -> Counters {
        let mut total = Counters::default();
        for c in self.shard_counters() {
            total.add(&c);
        }
        total
    }

    /// Starts a graceful shutdown: stop accepting, close every connection with 1001, flush
    /// within `shutdown_timeout_ms`.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether every shard thread has ended.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits for every shard to end; the first error wins.
    pub fn wait(self) -> Result<(), String> {
        let mut result = Ok(());
        for addr in &self.control {
            if let ControlAddr::Unix(path) = addr {
                let _ = std::fs::remove_file(path);
            }
        }
        for (index, thread) in self.threads.into_iter().enumerate() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = result.and(Err(format!("shard {index}: {e}"))),
                Err(_) => result = result.and(Err(format!("shard {index} panicked"))),
            }
        }
        // The shards are gone: the webhook queue has no sender left, so the thread posts what
        // is waiting once and ends.
        if let Some(sender) = self.webhook_sender {
            sender.join();
        }
        // The shards are gone: nothing sends to the bridge any more.
        if let Some(bridge) = self.bridge {
            bridge.stop();
        }
        // Only now may a successor take the control paths: their socket files are gone.
        drop(self.control_locks);
        result
    }
}
