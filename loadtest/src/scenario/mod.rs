//! Scenarios: each parses its own flags, drives a `Pool`, prints a table and writes JSON.
//! This module holds what they share: start-up checks (loopback, file limit, ports, server pid)
//! and CPU sampling.

pub mod chat;
pub mod connect;
pub mod control;
pub mod events;
pub mod fanout;
pub mod http_pub;
pub mod idle;
pub mod presence;
pub mod reconnect;
pub mod slow;

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::Common;
use crate::procfs::{self, CpuSample};
use crate::report::Progress;
use crate::sys;
use crate::target::{self, WsUrl};

/// File descriptors a run needs besides its connections (stdio, epoll, timerfd, publisher).
const SPARE_FDS: u64 = 32;

/// What every scenario starts from.
pub struct Setup {
    /// The parsed, loopback-checked URL (the first of `urls`).
    pub url: WsUrl,
    /// Every URL of `--url` (one unless the scenario spreads subscribers, `prepare_spread`).
    pub urls: Vec<WsUrl>,
    /// Source addresses for `--src` (empty: let the kernel choose).
    pub sources: Vec<IpAddr>,
    /// The live progress line.
    pub progress: Progress,
    /// RLIMIT_NOFILE (soft, hard) after raising the soft limit.
    pub nofile: (u64, u64),
}

/// Checks the common flags and the machine's limits before any connection is made, and says
/// clearly when `--connections` cannot fit.
pub fn prepare(common: &Common, extra_connections: u64) -> Result<Setup, String> {
    let setup = prepare_spread(common, extra_connections)?;
    if setup.urls.len() > 1 {
        return Err("--url: a list of URLs is only for fanout and slow; give one URL".into());
    }
    Ok(setup)
}

/// As `prepare`, with `--url` a comma-separated list of URLs the scenario spreads its
/// subscribers over (`Pool::spread`).
pub fn prepare_spread(common: &Common, extra_connections: u64) -> Result<Setup, String> {
    let urls = target::parse_ws_urls(&common.url)?;
    let url = urls[0].clone();
    let sources = match &common.src {
        Some(s) => {
            let v = target::parse_sources(s)?;
            for u in &urls {
                if let Some(bad) = v.iter().find(|ip| !target::source_matches(ip, &u.addr)) {
                    return Err(format!(
                        "--src {bad} cannot reach {} (address family differs)",
                        u.addr
                    ));
                }
            }
            v
        }
        None => Vec::new(),
    };
    sys::set_timer_slack_ns(1_000);
    let n = u64::from(common.connections) + extra_connections;
    let (soft, hard) =
        sys::raise_nofile_limit().map_err(|e| format!("getrlimit/setrlimit: {e}"))?;
    let need = n + SPARE_FDS;
    if need > soft {
        return Err(format!(
            "{n} connections need about {need} file descriptors, but this process may open at most \
             {soft} (RLIMIT_NOFILE hard limit {hard}). Raise the hard limit (ulimit -Hn as root, \
             LimitNOFILE= in a systemd unit) or run with at most {} connections.",
            soft.saturating_sub(SPARE_FDS)
        ));
    }
    if let Some(ports) = procfs::ephemeral_ports() {
        let addresses = sources.len().max(1) as u64;
        if n > ports * addresses {
            return Err(format!(
                "{n} connections to one server address need {n} source ports, but each source address \
                 has {ports} ephemeral ports (net.ipv4.ip_local_port_range) and {addresses} source \
                 address(es) are in use: pass --src 127.0.0.2-127.0.0.{} (at least {} addresses)",
                1 + n.div_ceil(ports).max(2),
                n.div_ceil(ports)
            ));
        }
    }
    if let Some(pid) = common.server_pid
        && !sys::process_exists(pid)
    {
        return Err(format!("--server-pid {pid}: no such process"));
    }
    if common.connect_timeout_s.is_nan()
        || common.connect_timeout_s <= 0.0
        || common.connect_timeout_s > 3600.0
    {
        return Err("--connect-timeout-s must be within (0, 3600]".into());
    }
    Ok(Setup {
        url,
        urls,
        sources,
        progress: Progress::new(!common.quiet && sys::stderr_is_terminal()),
        nofile: (soft, hard),
    })
}

/// A CPU sample of the server, if its pid is known and still alive.
pub fn server_cpu(pid: Option<u32>) -> Option<CpuSample> {
    let ticks = procfs::cpu_ticks(pid?)?;
    Some(CpuSample {
        cpu_ns: ticks * 1_000_000_000 / sys::clock_ticks_per_s(),
        wall_ns: sys::now_ns(),
    })
}

/// A CPU sample of this process.
pub fn self_cpu() -> CpuSample {
    CpuSample {
        cpu_ns: sys::self_cpu_ns(),
        wall_ns: sys::now_ns(),
    }
}

/// Fraction of one core between two optional samples, rounded to 3 decimals.
pub fn core_fraction(a: Option<CpuSample>, b: Option<CpuSample>) -> Option<f64> {
    Some(round3(a?.core_fraction_until(&b?)))
}

/// Rounds to 3 decimals for reports.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The CPUs this process may run on (to record pinning), e.g. "1" or "0-1".
fn affinity() -> String {
    // SAFETY: an all-zero cpu_set_t is valid; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid for writes of its size.
    let ok =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            == 0;
    if !ok {
        return "?".into();
    }
    // SAFETY: CPU_ISSET reads the set initialised above.
    let cpus: Vec<String> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .map(|c| c.to_string())
        .collect();
    cpus.join(",")
}

/// Facts about the host and this process that make a figure reproducible.
pub fn host_info(setup: &Setup) -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "kernel": kernel.trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "generator_cpus": affinity(),
        "nofile_soft": setup.nofile.0,
        "nofile_hard": setup.nofile.1,
        "generator_version": env!("CARGO_PKG_VERSION"),
    })
}

/// Connection counters and errors as JSON.
pub fn pool_json(stats: &crate::pool::PoolStats) -> Value {
    json!({
        "started": stats.started,
        "opened": stats.opened,
        "failed": stats.failed,
        "dropped": stats.dropped,
        "pings_answered": stats.pings,
        "closed_cleanly": stats.closed_cleanly,
        "aborted": stats.aborted,
        "errors": stats.errors,
        "handshake_latency_us": crate::report::percentiles(&stats.handshake_us),
        "generator_io": {
            "epoll_waits": stats.epoll_waits,
            "events": stats.events,
            "reads": stats.reads,
            "coalesce_sleeps": stats.coalesce_sleeps,
            "messages": stats.messages,
            "bytes_in": stats.bytes_in,
            "bytes_in_per_message": (stats.messages > 0)
                .then(|| round3(stats.bytes_in as f64 / stats.messages as f64)),
            "deflate_negotiated": stats.deflate_negotiated,
            "compressed_messages": stats.compressed_messages,
            "inflated": stats.inflated,
            "inflate_errors": stats.inflate_errors,
        },
    })
}

/// Closes the pool's connections with the close handshake, waiting at most 10 s.
pub fn close(pool: &mut crate::pool::Pool, progress: &mut Progress) -> Result<(), String> {
    pool.close_all(sys::now_ns() + 10_000_000_000, progress)
        .map_err(|e| format!("epoll_wait: {e}"))
}

/// Prints the error table (if any) under a scenario's table.
pub fn print_errors(stats: &crate::pool::PoolStats) {
    if stats.errors.is_empty() {
        return;
    }
    println!("errors:");
    for (kind, count) in &stats.errors {
        println!("  {count:>8}  {kind}");
    }
}
