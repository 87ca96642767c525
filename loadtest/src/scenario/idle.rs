//! `idle`: open N connections, hold them, and report what they cost: the server's resident
//! memory per connection (VmRSS delta, the whole process since threads share one address space)
//! and the host's kernel memory (TCP socket buffer pages from /proc/net/sockstat, and Slab from
//! /proc/meminfo). On loopback the kernel figures include both ends of every connection: the
//! generator's sockets are on the same host.

use clap::Args;
use serde::Serialize;
use serde_json::json;

use crate::Common;
use crate::pool::{Ignore, Pool};
use crate::procfs;
use crate::report::{self, human_count};
use crate::scenario::{self, Setup};
use crate::sys;

/// Flags of `idle`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct IdleArgs {
    #[command(flatten)]
    #[serde(flatten)]
    common: Common,
    /// Seconds to hold the connections open once all are up (pings are answered).
    #[arg(long, default_value_t = 10.0)]
    hold: f64,
    /// Seconds to let the server settle after the last upgrade, before the "after" sample.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    rss: Option<u64>,
    tcp_pages: Option<u64>,
    slab: Option<u64>,
}

fn sample(pid: Option<u32>) -> Memory {
    Memory {
        rss: pid.and_then(procfs::rss_bytes),
        tcp_pages: procfs::tcp_mem_pages(),
        slab: procfs::slab_bytes(),
    }
}

fn per_conn(before: Option<u64>, after: Option<u64>, n: u64) -> Option<f64> {
    let (b, a) = (before? as f64, after? as f64);
    (n > 0).then(|| ((a - b) / n as f64 * 10.0).round() / 10.0)
}

/// Runs the scenario.
pub fn run(args: IdleArgs) -> Result<(), String> {
    if !(0.0..=86_400.0).contains(&args.hold) || !(0.0..=60.0).contains(&args.settle) {
        return Err("--hold must be within [0, 86400] s and --settle within [0, 60] s".into());
    }
    let setup = scenario::prepare(&args.common, 0)?;
    let setup_info = scenario::host_info(&setup);
    let Setup {
        url,
        sources,
        mut progress,
        ..
    } = setup;
    let n = args.common.connections as usize;
    let pid = args.common.server_pid;
    let path = url.path.clone();
    let mut pool = Pool::new(url, n, sources).map_err(|e| format!("epoll: {e}"))?;
    pool.set_deflate(args.common.deflate);

    let before = sample(pid);
    let t0 = sys::now_ns();
    let deadline = t0 + (args.common.connect_timeout_s * 1e9) as u64;
    pool.open(
        0..n,
        args.common.concurrency as usize,
        &|_| path.clone(),
        deadline,
        &mut Ignore,
        &mut progress,
    )
    .map_err(|e| format!("epoll_wait: {e}"))?;
    let open_s = (sys::now_ns() - t0) as f64 / 1e9;
    pool.run_until(
        sys::now_ns() + (args.settle * 1e9) as u64,
        &mut Ignore,
        &mut progress,
        "settling",
    )
    .map_err(|e| format!("epoll_wait: {e}"))?;
    let after = sample(pid);
    let cpu0 = scenario::server_cpu(pid);
    pool.run_until(
        sys::now_ns() + (args.hold * 1e9) as u64,
        &mut Ignore,
        &mut progress,
        "holding",
    )
    .map_err(|e| format!("epoll_wait: {e}"))?;
    let held = sample(pid);
    let cpu1 = scenario::server_cpu(pid);
    let open_at_end = pool.stats.open_now;
    scenario::close(&mut pool, &mut progress)?;
    // Give the server a moment to free what the closed connections held.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let closed = sample(pid);

    let opened = pool.stats.opened;
    let page = procfs::page_bytes();
    let pages = |m: Memory| m.tcp_pages.map(|p| p * page);
    let result = json!({
        "scenario": "idle",
        "params": &args,
        "host": setup_info,
        "connections": scenario::pool_json(&pool.stats),
        "open_seconds": scenario::round3(open_s),
        "open_at_end_of_hold": open_at_end,
        "server_rss_bytes": {"before": before.rss, "after_open": after.rss, "end_of_hold": held.rss, "after_close": closed.rss},
        "server_rss_per_conn_bytes": per_conn(before.rss, held.rss, opened),
        "server_rss_per_conn_bytes_after_open": per_conn(before.rss, after.rss, opened),
        "server_cpu_during_hold": scenario::core_fraction(cpu0, cpu1),
        "kernel_tcp_mem_bytes": {"before": pages(before), "end_of_hold": pages(held), "after_close": pages(closed)},
        "kernel_tcp_mem_per_conn_bytes": per_conn(pages(before), pages(held), opened),
        "kernel_slab_bytes": {"before": before.slab, "end_of_hold": held.slab, "after_close": closed.slab},
        "kernel_slab_per_conn_bytes": per_conn(before.slab, held.slab, opened),
        "note": "kernel figures are host-wide and include both ends of each loopback connection",
    });

    let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} B"));
    let mb = |v: Option<u64>| {
        v.map_or("-".to_string(), |v| {
            format!("{:.1} MiB", v as f64 / 1048576.0)
        })
    };
    let hs = &pool.stats.handshake_us;
    let q = |p: f64| {
        if hs.is_empty() {
            "-".into()
        } else {
            report::human_us(hs.value_at_quantile(p))
        }
    };
    println!(
        "idle: {} of {} connections opened in {open_s:.2} s (handshake p50 {}, p99 {}), {} still \
         open after {} s, {} closed cleanly",
        human_count(opened),
        human_count(n as u64),
        q(0.5),
        q(0.99),
        human_count(open_at_end),
        args.hold,
        human_count(pool.stats.closed_cleanly),
    );
    let rows = vec![
        vec![
            "server RSS (VmRSS)".into(),
            mb(before.rss),
            mb(held.rss),
            show(per_conn(before.rss, held.rss, opened)),
        ],
        vec![
            "kernel TCP mem (sockstat)".into(),
            mb(pages(before)),
            mb(pages(held)),
            show(per_conn(pages(before), pages(held), opened)),
        ],
        vec![
            "kernel Slab (meminfo)".into(),
            mb(before.slab),
            mb(held.slab),
            show(per_conn(before.slab, held.slab, opened)),
        ],
    ];
    print!(
        "{}",
        report::table(&["memory", "before", "held", "per connection"], &rows)
    );
    if pid.is_none() {
        println!("(no --server-pid: server RSS not measured)");
    }
    println!("(kernel figures are host-wide and count both ends of each loopback connection)");
    scenario::print_errors(&pool.stats);
    if let Some(path) = &args.common.json {
        report::write_json(path, &result)?;
    }
    if opened < n as u64 {
        return Err(format!("only {opened} of {n} connections opened"));
    }
    Ok(())
}
