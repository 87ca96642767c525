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
    (
        "handshake_timeouts",
        "Connections closed for not completing their handshake in time.",
    ),
    ("frames_in", "WebSocket frames received."),
    (
        "frames_out",
        "Frames queued to connections (deliveries, pushes, replies).",
    ),
    ("bytes_in", "Bytes received."),
    ("bytes_out", "Bytes sent."),
    (
        "sends",
        "Send operations completed (one per batch of frames to one connection).",
    ),
    (
        "stale_completions",
        "Completions for connections already closed (recognised and dropped).",
    ),
    (
        "slow_consumers",
        "Connections closed as slow consumers (4001).",
    ),
    (
        "recv_rearms",
        "Multishot receives re-armed by the io_uring driver.",
    ),
    (
        "conn_limit_refusals",
        "Connections refused at a connection or handshake limit (503).",
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
        "xshard_refused_publishes",
        "Publishes refused at the publisher's shard (answered overloaded).",
    ),
    (
        "xshard_refused_deliveries",
        "Deliveries refused at the owner (an offset gap for that shard).",
    ),
    ("control_conns", "Control connections accepted."),
    (
        "control_requests",
        "Control requests handled (socket and HTTP API).",
    ),
    ("control_errors", "Control requests answered with an error."),
    (
        "control_overloads",
        "Control connections closed for not reading their replies.",
    ),
    (
        "control_refusals",
        "Control connections refused at their limit.",
    ),
    (
        "control_foreign",
        "Control connections closed for speaking another protocol.",
    ),
    (
        "control_unauthed_evictions",
        "Unauthenticated control connections evicted for newer ones.",
    ),
    (
        "control_auth_timeouts",
        "Control connections closed for not authenticating in time.",
    ),
    (
        "control_idle_timeouts",
        "Control and HTTP connections closed for idling.",
    ),
    (
        "rate_limited",
        "Connections closed for sending faster than their rate limit (4002).",
    ),
    (
        "shard_outbound_overflows",
        "Connections shed at the shard-wide outbound byte bound.",
    ),
    (
        "shard_inbound_overflows",
        "Connections closed at the shard-wide inbound byte bound (1009).",
    ),
    (
        "backpressure_episodes",
        "Times a shard passed its outbound high watermark.",
    ),
    (
        "publisher_pauses",
        "Times publishing control connections were paused.",
    ),
    (
        "publisher_pause_overruns",
        "Input a paused publisher sent beyond what is held for it.",
    ),
    (
        "stalled_consumers",
        "Connections closed for taking no bytes while their shard was congested.",
    ),
    (
        "history_refused",
        "Messages not kept because the shard's history bytes were full.",
    ),
    (
        "recoveries",
        "Subscribes with since answered with the missed messages.",
    ),
    (
        "recoveries_refused",
        "Subscribes with since answered recovered:false.",
    ),
    (
        "conflated",
        "Messages held back as the latest of their channel (conflating namespaces).",
    ),
    (
        "publish_retries",
        "Publishes not delivered again (an idempotency key seen in the window).",
    ),
    (
        "idempotency_evictions",
        "Idempotency keys forgotten early at their bound.",
    ),
    (
        "origin_refusals",
        "Upgrades refused for their Origin (403).",
    ),
    (
        "pongs_conflated",
        "Pongs replaced by a newer one still queued.",
    ),
    (
        "pongs_skipped",
        "Pongs not queued to a client with a full queue.",
    ),
    ("token_refusals", "Connection tokens refused."),
    (
        "token_expiries",
        "Connections closed because their token expired unrefreshed (4005).",
    ),
    (
        "user_limit_refusals",
        "Binds refused at conns_per_user_max.",
    ),
    (
        "access_refusals",
        "Subscribes and publishes refused by a namespace's access rules.",
    ),
    (
        "presence_news",
        "Join and leave news pushed by channel owners.",
    ),
    (
        "presence_news_refused",
        "Join and leave news refused by a full cross-shard queue.",
    ),
    (
        "event_consumers",
        "Control connections that became event-stream consumers.",
    ),
    ("events_sent", "Events routed to a consumer."),
    (
        "events_delivered",
        "Events queued to a consumer's connection.",
    ),
    (
        "events_dropped",
        "Event-stream events dropped for a consumer behind its buffer.",
    ),
    (
        "sends_without_consumer",
        "Client sends answered no_consumer.",
    ),
    ("http_conns", "HTTP connections accepted."),
    ("http_requests", "HTTP requests parsed."),
    (
        "http_errors",
        "HTTP requests refused as malformed or too large.",
    ),
    ("drains", "Drains begun."),
    (
        "drained",
        "WebSocket connections closed with 1012 by a drain.",
    ),
    ("config_reloads", "Reloaded configurations taken."),
    (
        "frames_compressed",
        "Frames compressed once by channel owners for permessage-deflate clients.",
    ),
    (
        "deflate_bytes_saved",
        "Payload bytes saved by compressed frames, counted once per frame.",
    ),
    ("messages_inflated", "Compressed client messages inflated."),
    (
        "inflate_too_big",
        "Compressed client messages that inflated past the message limit (1009).",
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

    #[test]
    fn every_counter_has_its_own_help_text() {
        let value = serde_json::to_value(Counters::default()).unwrap();
        let missing: Vec<&String> = value
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.is_number())
            .map(|(k, _)| k)
            .filter(|k| !HELP.iter().any(|(f, _)| f == k) && !GAUGES.iter().any(|(f, _, _)| f == k))
            .collect();
        assert!(
            missing.is_empty(),
            "counters without a HELP text: {missing:?}"
        );
    }
}
