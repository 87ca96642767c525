//! `connect`: open N connections as fast as `--concurrency` allows and report handshakes per
//! second and the upgrade latency (from `connect()` to the parsed 101) percentiles.
//!
//! `--storm`: a reconnect storm measured against a concurrent fan-out. `--probe P` raw
//! subscribers on their own channel receive publishes at `--rate` (control socket, each payload
//! carrying its intended send time, as in `fanout`) for the whole run. N connections are opened
//! first; after a warm-up the probe's latency is measured for `--calm-s` ("before"), then all N
//! are closed with the close handshake and N new ones opened in their place (a second range of
//! pool slots) as fast as `--concurrency` allows ("storm"), then `--calm-s` more ("after"). A
//! publish belongs to the period its intended send time falls in, so a message published before
//! the storm and delivered late during it counts as "before": each period shows what the
//! server did to the messages it was given then.

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

use crate::Common;
use crate::payload::{self, Seen, SeqTracker, Stamp};
use crate::pool::{self, Handler, Ignore, Pool, State, TOKEN_SCENARIO};
use crate::report::{self, human_count, human_us};
use crate::scenario::control::ControlPub;
use crate::scenario::{self, Setup};
use crate::sys::{self, Event, Interest, Timer};
use crate::target;

const TOKEN_TIMER: u64 = TOKEN_SCENARIO;
const TOKEN_CONTROL: u64 = TOKEN_SCENARIO + 1;
/// Publisher output above this is not added to until the server reads (as in `fanout`).
const PUBLISH_BACKLOG_BYTES_MAX: usize = 4 << 20;
/// Probe publishing runs this long before "before" starts, so every probe is receiving.
const WARMUP_NS: u64 = 1_000_000_000;
/// Time allowed for the server to complete the storm's close handshakes.
const STORM_CLOSE_NS: u64 = 30_000_000_000;

/// Flags of `connect`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ConnectArgs {
    #[command(flatten)]
    #[serde(flatten)]
    common: Common,
    /// Reconnect storm: open N, then close all N and open N again, while --probe subscribers
    /// measure fan-out latency before, during and after (needs --control).
    #[arg(long)]
    storm: bool,
    /// Probe subscribers (raw format, on --probe-channel) for --storm.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    probe: u32,
    /// The probe's channel.
    #[arg(long, default_value = "storm:probe")]
    probe_channel: String,
    /// Publishes per second to the probe channel (--storm).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// The probe publisher: ringcast's control socket, unix:PATH or tcp:HOST:PORT (--storm).
    #[arg(long)]
    control: Option<String>,
    /// Seconds measured before the storm, and again after it (--storm).
    #[arg(long, default_value_t = 5.0)]
    calm_s: f64,
    /// Probe payload bytes (at least 40).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(40..=65_536))]
    payload: u32,
    /// Let socket events accumulate up to this many µs (see fanout; --storm only).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    coalesce_us: u64,
}

/// Runs the scenario.
pub fn run(args: ConnectArgs) -> Result<(), String> {
    if args.storm {
        return run_storm(args);
    }
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
    pool.set_deflate(args.common.deflate);

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

/// The periods of a storm run, by a message's intended send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    /// Before the measurement starts: sequence numbers are tracked, latency is not recorded.
    Warmup,
    /// The calm before the storm.
    Before,
    /// From the first close to the last reconnect.
    Storm,
    /// The calm after.
    After,
}

/// The period boundaries (CLOCK_MONOTONIC ns); `u64::MAX` until the boundary is reached.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    measure_from: u64,
    storm_start: u64,
    storm_end: u64,
}

impl Bounds {
    fn new() -> Bounds {
        Bounds {
            measure_from: u64::MAX,
            storm_start: u64::MAX,
            storm_end: u64::MAX,
        }
    }

    /// The period of a message intended to be sent at `sent_ns`.
    fn period_of(&self, sent_ns: u64) -> Period {
        if sent_ns < self.measure_from {
            Period::Warmup
        } else if sent_ns < self.storm_start {
            Period::Before
        } else if sent_ns < self.storm_end {
            Period::Storm
        } else {
            Period::After
        }
    }
}

/// The figures of one period.
struct PeriodFigures {
    published: u64,
    delivered: u64,
    hist: Histogram<u64>,
}

/// The probe fan-out: P raw subscribers in slots `0..P`, a control publisher at a fixed rate
/// driven by its own timer (so it keeps publishing while the pool opens and closes the storm's
/// connections), and figures by period.
struct Probe {
    subscribers: usize,
    trackers: Vec<SeqTracker>,
    publisher: ControlPub,
    channel: String,
    timer: Timer,
    payload_bytes: usize,
    scratch: Vec<u8>,
    read_buf: Vec<u8>,
    interval_ns: f64,
    t0: u64,
    /// Publishes sent so far; the next one carries sequence number `sent + 1`.
    sent: u64,
    publishing: bool,
    armed_for: u64,
    stalls: u64,
    bounds: Bounds,
    /// Before, storm, after.
    periods: [PeriodFigures; 3],
    lost: u64,
    duplicated: u64,
    foreign: u64,
    /// Data messages received by the storm's connections (welcome messages and the like).
    storm_messages: u64,
}

impl Probe {
    fn figures(&mut self, p: Period) -> Option<&mut PeriodFigures> {
        match p {
            Period::Warmup => None,
            Period::Before => Some(&mut self.periods[0]),
            Period::Storm => Some(&mut self.periods[1]),
            Period::After => Some(&mut self.periods[2]),
        }
    }

    fn start_publishing(&mut self, now_ns: u64) {
        self.t0 = now_ns;
        self.publishing = true;
        self.publish_due(now_ns);
    }

    /// Publishes every message due by `now_ns` (each stamped with its intended time) and arms
    /// the timer for the next one.
    fn publish_due(&mut self, now_ns: u64) {
        if !self.publishing {
            return;
        }
        let (t0, interval_ns) = (self.t0, self.interval_ns);
        let due = |i: u64| t0 + (i as f64 * interval_ns) as u64;
        while due(self.sent) <= now_ns {
            if self.publisher.backlog() > PUBLISH_BACKLOG_BYTES_MAX {
                self.stalls += 1;
                break;
            }
            let sent_ns = due(self.sent);
            let stamp = Stamp {
                stream: 0,
                seq: self.sent + 1,
                sent_ns,
            };
            self.scratch.clear();
            payload::encode(stamp, self.payload_bytes, &mut self.scratch);
            self.publisher.publish(&self.channel, &self.scratch);
            self.sent += 1;
            let period = self.bounds.period_of(sent_ns);
            if let Some(f) = self.figures(period) {
                f.published += 1;
            }
        }
        self.publisher.flush();
        let next = due(self.sent);
        if next != self.armed_for {
            // A timerfd on a valid fd only fails for a bad time, and `next` is a valid one.
            let _ = self.timer.arm_at(next);
            self.armed_for = next;
        }
    }
}

impl Handler for Probe {
    fn message(&mut self, conn: usize, _text: bool, prefix: &[u8], _len: u64, now_ns: u64) {
        if conn >= self.subscribers {
            self.storm_messages += 1;
            return;
        }
        let Some(stamp) = payload::decode(prefix) else {
            self.foreign += 1;
            return;
        };
        if stamp.stream != 0 {
            self.foreign += 1;
            return;
        }
        match self.trackers[conn].observe(stamp.seq) {
            Seen::InOrder => {}
            Seen::AfterGap(missing) => self.lost += missing,
            Seen::Duplicate => {
                self.duplicated += 1;
                return;
            }
        }
        let period = self.bounds.period_of(stamp.sent_ns);
        if let Some(f) = self.figures(period) {
            f.delivered += 1;
            let us = now_ns.saturating_sub(stamp.sent_ns) / 1000;
            f.hist.saturating_record(us.max(1));
        }
    }

    fn scenario_event(&mut self, ev: Event) {
        match ev.token {
            TOKEN_TIMER => {
                self.timer.clear();
                self.publish_due(sys::now_ns());
            }
            TOKEN_CONTROL => {
                self.publisher.read_replies(&mut self.read_buf);
                self.publisher.flush();
            }
            _ => {}
        }
    }

    fn after_poll(&mut self, now_ns: u64) {
        self.publish_due(now_ns);
    }
}

fn io(e: std::io::Error) -> String {
    format!("epoll_wait: {e}")
}

/// `connect --storm`.
fn run_storm(args: ConnectArgs) -> Result<(), String> {
    if !(args.rate > 0.0 && args.rate <= 1_000_000.0) {
        return Err("--rate must be within (0, 1000000] per second".into());
    }
    if !(args.calm_s > 0.0 && args.calm_s <= 600.0) {
        return Err("--calm-s must be within (0, 600]".into());
    }
    let control = args
        .control
        .as_deref()
        .ok_or("--storm needs --control unix:PATH|tcp:ADDR for the probe's publisher")?;
    let control = target::parse_control(control)?;
    let p = args.probe as usize;
    let n = args.common.connections as usize;
    let setup = scenario::prepare(&args.common, p as u64)?;
    let host = scenario::host_info(&setup);
    let Setup {
        url,
        sources,
        mut progress,
        ..
    } = setup;
    let storm_path = url.path.clone();
    let base = storm_path.split('?').next().unwrap_or("/");
    let probe_path = format!("{base}?channel={}&format=raw", args.probe_channel);
    let pid = args.common.server_pid;
    let concurrency = args.common.concurrency as usize;
    let connect_timeout_ns = (args.common.connect_timeout_s * 1e9) as u64;

    let mut pool = Pool::new(url, p + 2 * n, sources).map_err(|e| format!("epoll: {e}"))?;
    pool.set_deflate(args.common.deflate);
    pool.set_coalesce(args.coalesce_us * 1000);
    let timer = Timer::new().map_err(|e| format!("timerfd: {e}"))?;
    pool.poller()
        .add(timer.raw_fd(), TOKEN_TIMER, Interest::Read)
        .map_err(|e| format!("epoll_ctl: {e}"))?;
    let publisher = ControlPub::connect(&control)?;
    pool.poller()
        .add(publisher.raw_fd(), TOKEN_CONTROL, Interest::EdgeBoth)
        .map_err(|e| format!("epoll_ctl: {e}"))?;
    let period = || PeriodFigures {
        published: 0,
        delivered: 0,
        hist: pool::latency_histogram(),
    };
    let mut probe = Probe {
        subscribers: p,
        trackers: vec![SeqTracker::default(); p],
        publisher,
        channel: args.probe_channel.clone(),
        timer,
        payload_bytes: args.payload as usize,
        scratch: Vec::new(),
        read_buf: vec![0; 64 * 1024],
        interval_ns: 1e9 / args.rate,
        t0: 0,
        sent: 0,
        publishing: false,
        armed_for: 0,
        stalls: 0,
        bounds: Bounds::new(),
        periods: [period(), period(), period()],
        lost: 0,
        duplicated: 0,
        foreign: 0,
        storm_messages: 0,
    };

    // The storm's first N connections, then the probe.
    let wave1 = p..p + n;
    let wave2 = p + n..p + 2 * n;
    let t = sys::now_ns();
    pool.open(
        wave1.clone(),
        concurrency,
        &|_| storm_path.clone(),
        t + connect_timeout_ns,
        &mut probe,
        &mut progress,
    )
    .map_err(io)?;
    let first_open_s = (sys::now_ns() - t) as f64 / 1e9;
    let first_opened = pool.stats.opened;
    let first_handshakes = report::percentiles(&pool.stats.handshake_us);
    let t = sys::now_ns();
    pool.open(
        0..p,
        concurrency,
        &|_| probe_path.clone(),
        t + connect_timeout_ns,
        &mut probe,
        &mut progress,
    )
    .map_err(io)?;
    let probes_open = (0..p).filter(|&i| pool.state(i) == State::Open).count();
    if probes_open == 0 {
        scenario::print_errors(&pool.stats);
        return Err("no probe subscriber could connect".into());
    }

    // Warm-up, then the three periods; the probe publishes throughout.
    let now = sys::now_ns();
    probe.bounds.measure_from = now + WARMUP_NS;
    probe.start_publishing(now);
    pool.run_until(
        probe.bounds.measure_from,
        &mut probe,
        &mut progress,
        "warm-up",
    )
    .map_err(io)?;
    let silent = probe.trackers.iter().filter(|t| t.next == 0).count();
    let cpu = |pid| (scenario::server_cpu(pid), scenario::self_cpu());
    let before_cpu = cpu(pid);
    let calm_ns = (args.calm_s * 1e9) as u64;
    pool.run_until(
        probe.bounds.measure_from + calm_ns,
        &mut probe,
        &mut progress,
        "before the storm",
    )
    .map_err(io)?;

    let storm_cpu = cpu(pid);
    let storm_start = sys::now_ns();
    probe.bounds.storm_start = storm_start;
    let (opened0, failed0, dropped0) = (pool.stats.opened, pool.stats.failed, pool.stats.dropped);
    pool.close_range(
        wave1,
        storm_start + STORM_CLOSE_NS,
        &mut probe,
        &mut progress,
    )
    .map_err(io)?;
    let closed_at = sys::now_ns();
    pool.stats.handshake_us.reset();
    pool.open(
        wave2.clone(),
        concurrency,
        &|_| storm_path.clone(),
        closed_at + connect_timeout_ns,
        &mut probe,
        &mut progress,
    )
    .map_err(io)?;
    let storm_end = sys::now_ns();
    probe.bounds.storm_end = storm_end;
    let after_cpu = cpu(pid);
    let reopened = pool.stats.opened - opened0;
    let reopen_failed = pool.stats.failed - failed0;
    let reopen_handshakes = report::percentiles(&pool.stats.handshake_us);
    pool.run_until(
        storm_end + calm_ns,
        &mut probe,
        &mut progress,
        "after the storm",
    )
    .map_err(io)?;
    let end_cpu = cpu(pid);

    // Stop publishing and let the last messages arrive (at most 2 s), then count what is
    // missing as lost.
    probe.publishing = false;
    let last_seq = probe.sent + 1;
    let drain_until = sys::now_ns() + 2_000_000_000;
    while sys::now_ns() < drain_until
        && (0..p).any(|i| pool.state(i) == State::Open && !probe.trackers[i].reached(last_seq))
    {
        pool.poll(10, &mut probe).map_err(io)?;
    }
    let mut lost_at_end = 0;
    for i in 0..p {
        if pool.state(i) == State::Open {
            lost_at_end += probe.trackers[i].settle(last_seq);
        }
    }
    let storm_open_at_end = wave2.filter(|&i| pool.state(i) == State::Open).count();
    let probe_disconnected = (0..p).filter(|&i| pool.state(i) != State::Open).count();
    scenario::close(&mut pool, &mut progress)?;

    let close_s = (closed_at - storm_start) as f64 / 1e9;
    let reopen_s = (storm_end - closed_at) as f64 / 1e9;
    let windows = [
        (before_cpu, storm_cpu),
        (storm_cpu, after_cpu),
        (after_cpu, end_cpu),
    ];
    let names = ["before", "storm", "after"];
    let mut periods = serde_json::Map::new();
    for (k, f) in probe.periods.iter().enumerate() {
        let (a, b) = windows[k];
        periods.insert(
            names[k].into(),
            json!({
                "seconds": scenario::round3((b.1.wall_ns - a.1.wall_ns) as f64 / 1e9),
                "published": f.published,
                "expected": f.published * probes_open as u64,
                "delivered": f.delivered,
                "latency_us": report::percentiles(&f.hist),
                "server_cpu": scenario::core_fraction(a.0, b.0),
                "generator_cpu": scenario::round3(a.1.core_fraction_until(&b.1)),
                "generator_bound": a.1.core_fraction_until(&b.1) >= 0.95,
            }),
        );
    }
    let lost = probe.lost + lost_at_end;
    let result = json!({
        "scenario": "connect-storm",
        "params": &args,
        "host": host,
        "connections": scenario::pool_json(&pool.stats),
        "storm": {
            "connections": n,
            "first_opened": first_opened,
            "first_open_s": scenario::round3(first_open_s),
            "first_handshake_latency_us": first_handshakes,
            "closed_s": scenario::round3(close_s),
            "dropped_during_storm": pool.stats.dropped - dropped0,
            "reopened": reopened,
            "reopen_failed": reopen_failed,
            "reopen_s": scenario::round3(reopen_s),
            "reopen_handshakes_per_s": (reopened as f64 / reopen_s.max(1e-9)).round(),
            "reopen_handshake_latency_us": reopen_handshakes,
            "open_at_end": storm_open_at_end,
            "messages_received": probe.storm_messages,
        },
        "probe": {
            "subscribers": probes_open,
            "channel": args.probe_channel,
            "rate": args.rate,
            "silent_after_warmup": silent,
            "periods": periods,
            "lost": lost,
            "duplicated": probe.duplicated,
            "foreign": probe.foreign,
            "disconnected": probe_disconnected,
            "publisher_stalls": probe.stalls,
            "publisher_errors": probe.publisher.errors,
            "publisher_first_error": probe.publisher.first_error,
        },
    });
    print_storm(&result, &args);
    if let Some(path) = &args.common.json {
        report::write_json(path, &result)?;
    }
    if let Some(why) = &probe.publisher.closed {
        return Err(why.clone());
    }
    Ok(())
}

fn print_storm(result: &Value, args: &ConnectArgs) {
    let storm = &result["storm"];
    let probe = &result["probe"];
    let hs = &storm["reopen_handshake_latency_us"];
    let q = |v: &Value| v.as_u64().map_or("-".to_string(), human_us);
    println!(
        "connect --storm: {} connections closed in {:.2} s and {} reopened in {:.2} s \
         ({} handshakes/s, p50 {}, p99 {}, {} failed); probe: {} subscribers on {}, {}/s, \
         {}-byte payloads",
        human_count(storm["first_opened"].as_u64().unwrap_or(0)),
        storm["closed_s"].as_f64().unwrap_or(0.0),
        human_count(storm["reopened"].as_u64().unwrap_or(0)),
        storm["reopen_s"].as_f64().unwrap_or(0.0),
        human_count(storm["reopen_handshakes_per_s"].as_f64().unwrap_or(0.0) as u64),
        q(&hs["p50"]),
        q(&hs["p99"]),
        storm["reopen_failed"],
        probe["subscribers"],
        args.probe_channel,
        args.rate,
        args.payload,
    );
    let mut rows = Vec::new();
    for name in ["before", "storm", "after"] {
        let f = &probe["periods"][name];
        let lat = &f["latency_us"];
        rows.push(vec![
            name.to_string(),
            format!("{:.2}", f["seconds"].as_f64().unwrap_or(0.0)),
            human_count(f["published"].as_u64().unwrap_or(0)),
            human_count(f["delivered"].as_u64().unwrap_or(0)),
            q(&lat["p50"]),
            q(&lat["p90"]),
            q(&lat["p99"]),
            q(&lat["p999"]),
            q(&lat["max"]),
            f["server_cpu"]
                .as_f64()
                .map_or("-".into(), |c| format!("{c:.2}")),
            f["generator_cpu"].as_f64().map_or("-".into(), |c| {
                // At a saturated generator, probe latency includes the generator's own delay.
                let bound = if c >= 0.95 { " (generator-bound)" } else { "" };
                format!("{c:.2}{bound}")
            }),
        ]);
    }
    print!(
        "{}",
        report::table(
            &[
                "period",
                "seconds",
                "published",
                "delivered",
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
    println!(
        "probe: lost {}, duplicated {}, disconnected {}",
        probe["lost"], probe["duplicated"], probe["disconnected"]
    );
    if let Some(e) = probe["publisher_first_error"].as_str() {
        println!(
            "control socket: {} error replies, first: {e}",
            probe["publisher_errors"]
        );
    }
    if let Some(errors) = result["connections"]["errors"].as_object()
        && !errors.is_empty()
    {
        println!("errors:");
        for (kind, count) in errors {
            println!("  {count:>8}  {kind}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_by_intended_send_time() {
        let mut b = Bounds::new();
        // Before any boundary is set, everything is warm-up.
        assert_eq!(b.period_of(5), Period::Warmup);
        b.measure_from = 100;
        assert_eq!(b.period_of(99), Period::Warmup);
        assert_eq!(b.period_of(100), Period::Before);
        // The storm has started but not ended: everything from its start is "storm".
        b.storm_start = 200;
        assert_eq!(b.period_of(199), Period::Before);
        assert_eq!(b.period_of(200), Period::Storm);
        assert_eq!(b.period_of(10_000), Period::Storm);
        b.storm_end = 300;
        assert_eq!(b.period_of(299), Period::Storm);
        assert_eq!(b.period_of(300), Period::After);
    }
}
