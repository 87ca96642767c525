//! The Prometheus text exposition format (version 0.0.4) of the shards' counters, rendered at
//! scrape time from their published snapshots: the hot path keeps plain per-shard integers and
//! pays nothing for metrics.
//!
//! Owns: metric names, types and help texts. Every counter of `stats::Counters` is exported
//! per shard (`shard="N"` label) as `ringcast_<field>_total`, the gauges under their own names,
//! and the keyed ones with their key as a label (`code`, `status`). A field added to `Counters`
//! is exported without a change here (with a generic help text until it gets its own).
//! Must not: allocate per connection or read a clock.

use crate::stats::Counters;
use std::fmt::Write;

/// Fields that are gauges (a level now), with their metric name and help.
const GAUGES: &[(&str, &str, &str)] = &[
    (
        "open",
        "ringcast_connections",
        "Connections open now (WebSocket, control and HTTP; handshaking, open or closing).",
    ),
    (
        "queued_bytes",
        "ringcast_outbound_queued_bytes",
        "Bytes owed to connections (queued or in flight).",
    ),
    (
        "users_online",
        "ringcast_users_online",
        "Users with at least one connection, held by this shard as their owner.",
    ),
];

/// Help texts of the best-known counters (the rest get a generic one).
const HELP: &[(&str, &str)] = &[
    (
        "accepted",
        "TCP connections accepted on the WebSocket listener.",
    ),
    ("handshakes", "WebSocket upgrade handshakes completed."),
    ("frames_in", "WebSocket frames received."),
    (
        "frames_out",
        "Frames queued to connections (deliveries, pushes, replies).",
    ),
    ("bytes_in", "Bytes received."),
    ("bytes_out", "Bytes sent."),
    (
        "slow_consumers",
        "Connections closed as slow consumers (4001).",
    ),
    (
        "published",
        "Publishes sequenced with at least one subscribing shard.",
    ),
    ("published_no_audience", "Publishes with nobody subscribed."),
    (
        "xshard_overflows",
        "Cross-shard messages that waited in an overflow queue.",
    ),
    (
        "xshard_refused",
        "Cross-shard messages refused (ring and overflow full).",
    ),
    (
        "control_requests",
        "Control requests handled (socket and HTTP API).",
    ),
    ("control_errors", "Control requests answered with an error."),
    (
        "backpressure_episodes",
        "Times a shard passed its outbound high watermark.",
    ),
    (
        "publisher_pauses",
        "Times publishing control connections were paused.",
    ),
    (
        "recoveries",
        "Subscribes with since answered with the missed messages.",
    ),
    ("token_refusals", "Connection tokens refused."),
    (
        "events_dropped",
        "Event-stream events dropped for a consumer behind its buffer.",
    ),
];

fn help_of(field: &str) -> String {
    HELP.iter().find(|(f, _)| *f == field).map_or_else(
        || format!("ringcast counter {field}."),
        |(_, h)| h.to_string(),
    )
}

/// The exposition text for every shard's counters.
pub fn render(shards: &[Counters]) -> String {
    let values: Vec<serde_json::Value> = shards
        .iter()
        .map(|c| serde_json::to_value(c).unwrap_or_default())
        .collect();
    let Some(first) = values.first().and_then(|v| v.as_object()) else {
        return String::new();
    };
    let mut out = String::with_capacity(16 * 1024);
    for field in first.keys() {
        match first[field] {
            serde_json::Value::Number(_) => {
                let (name, help, kind) = match GAUGES.iter().find(|(f, _, _)| f == field) {
                    Some((_, name, help)) => (name.to_string(), help.to_string(), "gauge"),
                    None => (format!("ringcast_{field}_total"), help_of(field), "counter"),
                };
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                for (shard, v) in values.iter().enumerate() {
                    let n = v[field].as_u64().unwrap_or(0);
                    let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {n}");
                }
            }
            serde_json::Value::Array(_) => {
                let (name, label, help) = match field.as_str() {
                    "closed_by_code" => (
                        "ringcast_closes_total",
                        "code",
                        "Connections freed, by WebSocket close code (1006: none).",
                    ),
                    "rejected_by_status" => (
                        "ringcast_handshake_rejections_total",
                        "status",
                        "Upgrade requests refused, by HTTP status.",
                    ),
                    _ => continue,
                };
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} counter");
                for (shard, v) in values.iter().enumerate() {
                    for pair in v[field].as_array().into_iter().flatten() {
                        let key = pair[0].as_u64().unwrap_or(0);
                        let n = pair[1].as_u64().unwrap_or(0);
                        let _ = writeln!(out, "{name}{{shard=\"{shard}\",{label}=\"{key}\"}} {n}");
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_keyed_counters_render_per_shard() {
        let mut a = Counters {
            open: 3,
            published: 7,
            ..Counters::default()
        };
        a.closed(4001);
        a.rejected(403);
        let b = Counters {
            open: 1,
            ..Counters::default()
        };
        let text = render(&[a, b]);
        assert!(text.contains("# TYPE ringcast_connections gauge\n"));
        assert!(text.contains("ringcast_connections{shard=\"0\"} 3\n"));
        assert!(text.contains("ringcast_connections{shard=\"1\"} 1\n"));
        assert!(text.contains("# TYPE ringcast_published_total counter\n"));
        assert!(text.contains("ringcast_published_total{shard=\"0\"} 7\n"));
        assert!(text.contains("ringcast_closes_total{shard=\"0\",code=\"4001\"} 1\n"));
        assert!(
            text.contains("ringcast_handshake_rejections_total{shard=\"0\",status=\"403\"} 1\n")
        );
        // Every sample line is NAME{LABELS} VALUE, and every name has its TYPE line.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<u64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            assert!(name.starts_with("ringcast_"), "{line}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
        assert!(render(&[]).is_empty());
    }
}
