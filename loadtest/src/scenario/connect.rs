//! `connect`: open N connections as fast as `--concurrency` allows and report handshakes per
//! second and the upgrade latency (from `connect()` to the parsed 101) percentiles.
//! (The reconnect-storm variant measured against a concurrent fan-out is later work; it will
//! reuse `Pool::open` on a second range of slots.)

use clap::Args;
use serde::Serialize;
use serde_json::json;

use crate::Common;
use crate::pool::{Ignore, Pool};
use crate::report::{self, human_count, human_us};
use crate::scenario::{self, Setup};
use crate::sys;

/// Flags of `connect`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ConnectArgs {
    #[command(flatten)]
    #[serde(flatten)]
    common: Common,
}

/// Runs the scenario.
pub fn run(args: ConnectArgs) -> Result<(), String> {
    let setup = scenario::prepare(&args.common, 0)?;
    let host = scenario::host_info(&setup);
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

    let (srv0, gen0) = (scenario::server_cpu(pid), scenario::self_cpu());
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
    let elapsed_s = (sys::now_ns() - t0) as f64 / 1e9;
    let (srv1, gen1) = (scenario::server_cpu(pid), scenario::self_cpu());
    scenario::close(&mut pool, &mut progress)?;

    let opened = pool.stats.opened;
    let per_s = opened as f64 / elapsed_s.max(1e-9);
    let server_cpu = scenario::core_fraction(srv0, srv1);
    let generator_cpu = scenario::round3(gen0.core_fraction_until(&gen1));
    let h = &pool.stats.handshake_us;
    let result = json!({
        "scenario": "connect",
        "params": &args,
        "host": host,
        "connections": scenario::pool_json(&pool.stats),
        "elapsed_s": scenario::round3(elapsed_s),
        "handshakes_per_s": per_s.round(),
        "handshake_latency_us": report::percentiles(h),
        "server_cpu": server_cpu,
        "generator_cpu": generator_cpu,
        "generator_bound": generator_cpu >= 0.95,
    });
    let q = |p: f64| {
        if h.is_empty() {
            "-".to_string()
        } else {
            human_us(h.value_at_quantile(p))
        }
    };
    let rows = vec![vec![
        human_count(opened),
        human_count(pool.stats.failed),
        format!("{elapsed_s:.2}s"),
        human_count(per_s.round() as u64),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        if h.is_empty() {
            "-".into()
        } else {
            human_us(h.max())
        },
        server_cpu.map_or("-".into(), |c| format!("{c:.2}")),
        format!(
            "{generator_cpu:.2}{}",
            if generator_cpu >= 0.95 {
                " (generator-bound)"
            } else {
                ""
            }
        ),
    ]];
    print!(
        "{}",
        report::table(
            &[
                "opened",
                "failed",
                "time",
                "handshakes/s",
                "p50",
                "p90",
                "p99",
                "p99.9",
                "max",
                "server_cpu",
                "generator_cpu"
            ],
            &rows
        )
    );
    scenario::print_errors(&pool.stats);
    if let Some(path) = &args.common.json {
        report::write_json(path, &result)?;
    }
    Ok(())
}
