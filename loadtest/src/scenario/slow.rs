//! `slow`: `fanout` with a fraction of the subscribers that stop reading after the warm-up.
//! They keep their sockets open and are never read again until every rate is done, as a client
//! that hangs or sits behind a dead network path looks to a server: its receive window fills,
//! then the server's send buffer, then the server's own queue for it (in ringcast, until
//! `outbound_bytes_max`, when it is closed with 4001). On loopback the first two stages are
//! large: a socket that is not read autotunes its receive buffer (up to `net.ipv4.tcp_rmem`'s
//! maximum) and the server's send buffer grows with the 64 KiB loopback MSS, so megabytes pass
//! before the server's own queue grows; `--slow-rcvbuf` gives the slow sockets a small fixed
//! receive buffer, as a client behind a slow link has, so the server's side fills sooner.
//!
//! Reports the healthy subscribers' figures exactly as `fanout` does (the slow ones are left out
//! of delivery, loss and latency), how each slow subscriber ended as the generator saw it when
//! it finally read the socket again (a close frame and its code, end of stream, a reset, or not
//! closed at all), the server's own counters (`stats` on the control socket), and the server's
//! VmRSS every 500 ms. `--slow-fraction 0` is the same run without slow subscribers, for the
//! comparison.

use clap::Args;
use serde::Serialize;

use crate::payload;
use crate::report::human_count;
use crate::scenario::fanout::{self, FanoutArgs, Plan};

/// Flags of `slow`: those of `fanout`, and the slow fraction.
#[derive(Args, Debug, Clone, Serialize)]
pub struct SlowArgs {
    #[command(flatten)]
    #[serde(flatten)]
    fanout: FanoutArgs,
    /// Fraction of the subscribers that stop reading after the warm-up (0 to 1), spread evenly
    /// over the connections and channels; 0: none (the run to compare with).
    #[arg(long, default_value_t = 0.01)]
    slow_fraction: f64,
    /// Seconds to read the slow subscribers again at the end, to see how the server closed them.
    #[arg(long, default_value_t = 10.0)]
    slow_read_s: f64,
    /// Receive buffer (SO_RCVBUF) of the slow subscribers' sockets, set before they connect: a
    /// client with a small window. Default: the kernel's, which on loopback autotunes up to
    /// net.ipv4.tcp_rmem's maximum and holds megabytes before the server's queue grows.
    #[arg(long, default_value_t = 0)]
    slow_rcvbuf: u32,
}

/// Parts per million: the selection is integer arithmetic, so it is exact and repeatable.
const PPM: u64 = 1_000_000;

/// Which of `n` subscribers go slow, for subscribers dealt round-robin over `streams` channels
/// (`payload::stream_of`). Within each channel, members are picked Bresenham-style at
/// `fraction` of them, evenly spaced in connection order, each channel's pattern shifted by its
/// index so the rounding remainders spread over channels too: about `n × fraction` in all,
/// never clustered on one channel (as every 100th connection would be with 10 channels).
pub fn slow_set(n: usize, fraction: f64, streams: usize) -> Vec<bool> {
    assert!((0.0..=1.0).contains(&fraction), "a fraction");
    assert!(streams > 0, "at least one stream");
    let ppm = (fraction * PPM as f64).round() as u64;
    let streams_u = streams as u64;
    (0..n)
        .map(|i| {
            let k = payload::stream_of(i, streams) as u64;
            let rank = (i / streams) as u64;
            let phase = k * PPM / streams_u;
            (rank * ppm + phase) / PPM < ((rank + 1) * ppm + phase) / PPM
        })
        .collect()
}

/// Runs the scenario.
pub fn run(args: SlowArgs) -> Result<(), String> {
    if !(0.0..=1.0).contains(&args.slow_fraction) {
        return Err("--slow-fraction must be within [0, 1]".into());
    }
    if !(0.0..=600.0).contains(&args.slow_read_s) {
        return Err("--slow-read-s must be within [0, 600]".into());
    }
    let fanout::Prepared {
        setup,
        publisher,
        channel_names,
        paths,
        subscribe_by_command,
    } = fanout::prepare(&args.fanout)?;
    let n = args.fanout.common.connections as usize;
    let slow = slow_set(n, args.slow_fraction, channel_names.len());
    let slow_count = slow.iter().filter(|&&s| s).count();
    let result = fanout::execute(
        Plan {
            scenario: "slow",
            params: serde_json::to_value(&args).map_err(|e| e.to_string())?,
            common: &args.fanout.common,
            schedule: &args.fanout.schedule,
            publisher,
            channel_names,
            paths,
            subscribe_by_command,
            slow,
            slow_read_s: args.slow_read_s,
            slow_rcvbuf_bytes: args.slow_rcvbuf,
            extras: fanout::extras(&args.fanout)?,
        },
        setup,
    )?;
    let schedule = &args.fanout.schedule;
    let opened = result["connections"]["opened"]
        .as_u64()
        .unwrap_or(0)
        .min(n as u64);
    println!(
        "slow: {} subscribers, {} of them ({}) stop reading after the warm-up; {}-byte \
         payloads, {} s per rate, p99 budget {} ms; figures below are the healthy subscribers'",
        human_count(opened),
        human_count(slow_count as u64),
        args.slow_fraction,
        schedule.payload,
        schedule.duration,
        schedule.p99_budget_ms
    );
    fanout::print_report(&result, schedule.p99_budget_ms);
    let extra = format!(
        ", {} slow ({})",
        human_count(slow_count as u64),
        args.slow_fraction
    );
    fanout::write_outputs(
        &result,
        args.fanout.common.json.as_deref(),
        schedule.plot.as_deref(),
        "ringcast-load slow: healthy subscribers' latency against publish rate",
        &fanout::plot_subtitle(&args.fanout, opened, &extra),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(v: &[bool]) -> Vec<usize> {
        v.iter()
            .enumerate()
            .filter(|&(_, &s)| s)
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn one_percent_of_one_channel_is_every_hundredth() {
        let v = slow_set(10_000, 0.01, 1);
        let c = chosen(&v);
        assert_eq!(c.len(), 100);
        assert!(c.windows(2).all(|w| w[1] - w[0] == 100));
    }

    #[test]
    fn none_all_and_rounding() {
        assert!(chosen(&slow_set(1000, 0.0, 1)).is_empty());
        assert_eq!(chosen(&slow_set(1000, 1.0, 3)).len(), 1000);
        assert_eq!(chosen(&slow_set(10, 0.25, 1)).len(), 2);
        assert!(slow_set(0, 0.5, 1).is_empty());
        // Repeatable: the same arguments pick the same subscribers.
        assert_eq!(slow_set(5000, 0.013, 7), slow_set(5000, 0.013, 7));
    }

    #[test]
    fn spread_over_channels() {
        // 10 channels: every 100th connection would all be on channel 0.
        let v = slow_set(10_000, 0.01, 10);
        let mut per_channel = [0usize; 10];
        for i in chosen(&v) {
            per_channel[payload::stream_of(i, 10)] += 1;
        }
        assert!(per_channel.iter().all(|&c| c == 10), "{per_channel:?}");
        // Remainders spread too: 3 channels of 50, 2 % each = 1 per channel.
        let v = slow_set(150, 0.02, 3);
        let mut per_channel = [0usize; 3];
        for i in chosen(&v) {
            per_channel[payload::stream_of(i, 3)] += 1;
        }
        assert_eq!(per_channel, [1, 1, 1]);
        // 1 % of 150 over 3 channels: 0.5 per channel, rounded by phase: 1 or 2 in all.
        let total = chosen(&slow_set(150, 0.01, 3)).len();
        assert!((1..=2).contains(&total), "{total}");
    }
}
