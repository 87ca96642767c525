//! `ringcast`: the command line. Parses arguments, builds the `Config`, runs the server, and
//! prints start-up errors as "cause + fix".

use clap::{Parser, Subcommand};
use ringcast::budget;
use ringcast::config::Config;
use ringcast::server::Server;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "ringcast",
    version,
    about = "A WebSocket push engine for Linux (io_uring, one shard per core)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (single node, no broker).
    Serve(ServeArgs),
    /// Talk to a running server's control socket (publish, send, stats, ...).
    Ctl(ringcast::ctl::CtlArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// WebSocket listen address [default: 127.0.0.1:9080, or the config file's].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Number of shards (threads, one io_uring each) [default: one per core].
    #[arg(long)]
    shards: Option<usize>,
    /// Serve /echo (echoes every message; for conformance tests).
    #[arg(long)]
    echo: bool,
    /// TOML configuration file (every limit; see docs/limits.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// Share the WebSocket port with a server already running on it (rolling restarts); without
    /// it, `serve` refuses an address another process serves.
    #[arg(long)]
    reuse_port: bool,
    /// Event loop: auto (io_uring when the kernel allows it, else epoll), uring, or epoll
    /// [default: auto, or the config file's `driver`].
    #[arg(long, value_name = "auto|uring|epoll")]
    driver: Option<ringcast::config::DriverKind>,
    /// Control socket address, unix:PATH or tcp:ADDR (repeatable) [default: unix:/tmp/ringcast.sock].
    #[arg(long = "control", value_name = "ADDR")]
    control: Vec<String>,
    /// Serve no control socket.
    #[arg(long, conflicts_with = "control")]
    no_control: bool,
    /// HTTP listener for /metrics, /healthz, /readyz, the HTTP API and the dashboard, e.g.
    /// 127.0.0.1:9081 [default: off, or the config file's [http] listen].
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    /// Start even when the worst-case memory budget exceeds the host's available memory.
    #[arg(long)]
    allow_overcommit: bool,
    /// Print the memory budget term by term and exit.
    #[arg(long)]
    print_budget: bool,
}

static SIGNALS: AtomicUsize = AtomicUsize::new(0);
/// SIGHUP arrived: read the config file again.
static RELOAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_reload_signal(_: libc::c_int) {
    RELOAD.store(true, Ordering::SeqCst);
}

/// SIGUSR1 arrived: drain over `drain_window_ms`, then exit.
static DRAIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_drain_signal(_: libc::c_int) {
    DRAIN.store(true, Ordering::SeqCst);
}

extern "C" fn on_signal(_: libc::c_int) {
    // A second SIGINT/SIGTERM exits at once; only async-signal-safe calls here.
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

fn install_signal_handlers() {
    // SAFETY: installing a handler that only touches an atomic and calls _exit; SIGPIPE is
    // ignored because a peer that vanished must be an error code, never a process kill.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
        let mut drain: libc::sigaction = std::mem::zeroed();
        drain.sa_sigaction = on_drain_signal as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut drain.sa_mask);
        libc::sigaction(libc::SIGUSR1, &drain, std::ptr::null_mut());
        let mut hup: libc::sigaction = std::mem::zeroed();
        hup.sa_sigaction = on_reload_signal as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut hup.sa_mask);
        libc::sigaction(libc::SIGHUP, &hup, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// The command line's settings over the config file's (at start and on every reload).
fn apply_args(config: &mut Config, args: &ServeArgs) {
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    config.echo |= args.echo;
    config.pin &= !args.no_pin;
    if !args.control.is_empty() {
        config.control.listen = args.control.clone();
    }
    if args.no_control {
        config.control.listen.clear();
    }
    if args.reuse_port {
        config.reuse_port = true;
    }
    if let Some(http) = args.http {
        config.http.listen = Some(http);
    }
    if let Some(driver) = args.driver {
        config.driver = driver;
    }
}

/// SIGHUP or control `reload`: read the config file again and apply what can change live.
fn reload(server: &Server, args: &ServeArgs) {
    let Some(path) = &args.config else {
        eprintln!("ringcast: reload: started without --config, nothing to read again");
        return;
    };
    let result = Config::from_file(path).and_then(|mut config| {
        apply_args(&mut config, args);
        server.reload(config)
    });
    match result {
        Ok(r) if r.applied.is_empty() && r.needs_restart.is_empty() => {
            eprintln!("ringcast: reload: {} unchanged", path.display())
        }
        Ok(r) => eprintln!(
            "ringcast: reload: applied [{}]; needs a restart, not applied [{}]",
            r.applied.join(", "),
            r.needs_restart.join(", ")
        ),
        Err(e) => eprintln!("ringcast: reload refused, the running configuration stays: {e}"),
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    apply_args(&mut config, &args);
    config.limits.validate()?;
    let shards = if config.shards == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        config.shards
    };
    let terms = budget::shard_budget(&config.limits, shards, config.echo, config.deflate);
    let worst = budget::total_bytes(&terms) * shards;
    if args.print_budget {
        println!("memory budget per shard ({shards} shards):");
        for t in &terms {
            let kind = if t.fixed { "fixed" } else { "at most" };
            println!(
                "  {:<22} {:>7} {:>12}",
                t.name,
                kind,
                budget::human(t.bytes)
            );
        }
        println!("  worst case, all shards: {}", budget::human(worst));
        return Ok(());
    }
    let available = budget::mem_available_bytes();
    eprintln!(
        "ringcast: memory budget: {} fixed + up to {} per shard, worst case {} for {shards} \
         shards (available: {}; --print-budget for the terms)",
        budget::human(budget::fixed_bytes(&terms)),
        budget::human(budget::total_bytes(&terms) - budget::fixed_bytes(&terms)),
        budget::human(worst),
        available.map_or("unknown".to_string(), budget::human),
    );
    if let Some(available) = available {
        if worst > available && !args.allow_overcommit {
            return Err(format!(
                "the worst-case memory budget ({}) exceeds available memory ({}). Fix: lower the \
                 limits that dominate it (see --print-budget and docs/limits.md), run fewer shards, \
                 or pass --allow-overcommit to accept the risk.",
                budget::human(worst),
                budget::human(available)
            ));
        }
    }
    install_signal_handlers();
    let drain_ms = config.limits.drain_window_ms;
    let server = Server::start(config)?;
    for note in &server.notes {
        eprintln!("ringcast: {note}");
    }
    for addr in server.control_addrs() {
        eprintln!("ringcast: control socket on {addr}");
    }
    let mut out = std::io::stdout().lock();
    if let Some(addr) = server.http_addr() {
        // Before the readiness line, so a script that waits for `ready` can read both.
        let _ = writeln!(out, "ringcast http listen={addr}");
    }
    let _ = writeln!(
        out,
        "ringcast ready listen={} shards={} pid={}",
        server.local_addr(),
        server.shards(),
        std::process::id()
    );
    let _ = out.flush();
    drop(out);
    while SIGNALS.load(Ordering::SeqCst) == 0 && !server.is_finished() {
        if RELOAD.swap(false, Ordering::SeqCst) || server.take_reload_request() {
            reload(&server, &args);
        }
        if DRAIN.swap(false, Ordering::SeqCst) {
            eprintln!("ringcast: SIGUSR1: draining over {drain_ms} ms, then exiting");
            server.drain(drain_ms);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    server.shutdown();
    let totals = server.counters();
    let result = server.wait();
    eprintln!(
        "ringcast: stopped; accepted {} handshakes {} slow consumers {}",
        totals.accepted, totals.handshakes, totals.slow_consumers
    );
    result
}

fn main() {
    // A panic in a shard is a bug: log it with the thread (shard) name and exit non-zero rather
    // than run on with a dead shard.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let conn = ringcast::engine::current_conn().map_or(String::new(), |id| {
            format!(" while handling connection {id}")
        });
        eprintln!(
            "ringcast: BUG: panic in {}{conn}",
            thread.name().unwrap_or("main")
        );
        default_hook(info);
        std::process::exit(101);
    }));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Ctl(args) => std::process::exit(ringcast::ctl::run(args)),
    };
    if let Err(err) = result {
        eprintln!("ringcast: {err}");
        std::process::exit(1);
    }
}
