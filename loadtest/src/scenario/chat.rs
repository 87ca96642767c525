//! `chat`: many small channels, the group-chat shape. `-n N` members in groups of `--group K`:
//! N / K channels `PREFIX0`, `PREFIX1`, ... (default `chat:g0`, ...), member `i` in group
//! `i mod (N / K)`. The members' messages are published through ringcast's control socket on
//! their behalf: one control connection, `noreply` publishes round-robin over the groups at the
//! total rate `--rate` (so each member "sends" at rate / N, each group at rate × K / N), and each
//! message reaches the K members of its group. It is the `fanout` engine with N / K channels:
//! each group is one ordered stream, and each member expects every sequence number of its
//! group once, in order (lost, duplicated, and `foreign` for a message of another group).

use clap::Args;
use serde::Serialize;

use crate::Common;
use crate::report::human_count;
use crate::scenario::fanout::{self, Plan, PublisherSpec, Schedule};
use crate::scenario::{self};
use crate::target;

/// Flags of `chat`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ChatArgs {
    #[command(flatten)]
    #[serde(flatten)]
    common: Common,
    /// ringcast's control socket (unix:PATH or tcp:HOST:PORT), where the members' messages are
    /// published.
    #[arg(long)]
    control: String,
    /// Members per group; -n must be a multiple of it.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    group: u32,
    /// Group channel prefix: the groups are PREFIX0 .. PREFIX{N/K-1}.
    #[arg(long, default_value = "chat:g")]
    channel: String,
    /// --rate is the total publishes per second over all groups.
    #[command(flatten)]
    #[serde(flatten)]
    schedule: Schedule,
}

/// The number of groups of `group` members among `members`, if they divide evenly.
pub fn groups(members: u32, group: u32) -> Result<usize, String> {
    if group == 0 || !members.is_multiple_of(group) {
        return Err(format!(
            "-n {members} is not a multiple of --group {group}: every group has the same size"
        ));
    }
    Ok((members / group) as usize)
}

/// Runs the scenario.
pub fn run(args: ChatArgs) -> Result<(), String> {
    args.schedule.check()?;
    let g = groups(args.common.connections, args.group)?;
    let control = target::parse_control(&args.control)?;
    let setup = scenario::prepare(&args.common, 0)?;
    let channel_names: Vec<String> = (0..g).map(|k| format!("{}{k}", args.channel)).collect();
    let paths = channel_names
        .iter()
        .map(|c| setup.url.path_with_channel(c))
        .collect();
    let result = fanout::execute(
        Plan {
            scenario: "chat",
            params: serde_json::to_value(&args).map_err(|e| e.to_string())?,
            common: &args.common,
            schedule: &args.schedule,
            publisher: PublisherSpec::Control(control),
            channel_names,
            paths,
            subscribe_by_command: false,
            slow: Vec::new(),
            slow_read_s: 0.0,
            slow_rcvbuf_bytes: 0,
            extras: Default::default(),
        },
        setup,
    )?;
    let n = u64::from(args.common.connections);
    let opened = result["connections"]["opened"].as_u64().unwrap_or(0).min(n);
    println!(
        "chat: {} members in {} groups of {}; rate = publishes/s over all groups (each delivered \
         to the {} members of its group); {}-byte payloads, {} s per rate, p99 budget {} ms",
        human_count(opened),
        human_count(g as u64),
        args.group,
        args.group,
        args.schedule.payload,
        args.schedule.duration,
        args.schedule.p99_budget_ms
    );
    fanout::print_report(&result, args.schedule.p99_budget_ms);
    let subtitle = format!(
        "{} members in groups of {} ({} channels), {}-byte payloads, {} s per rate, \
         control-socket publisher",
        human_count(opened),
        args.group,
        human_count(g as u64),
        args.schedule.payload,
        args.schedule.duration
    );
    fanout::write_outputs(
        &result,
        args.common.json.as_deref(),
        args.schedule.plot.as_deref(),
        "ringcast-load chat: latency against total publish rate",
        &subtitle,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_divide_evenly() {
        assert_eq!(groups(10_000, 10), Ok(1000));
        assert_eq!(groups(40, 4), Ok(10));
        assert_eq!(groups(7, 7), Ok(1));
        assert!(groups(10, 3).is_err());
    }
}
