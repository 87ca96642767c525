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
        "cluster_up",
        "ringcast_cluster_up",
        "1 while the shard's broker bridge is connected (`[cluster]`), else 0.",
    ),
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
        "control_open",
        "ringcast_control_connections",
        "Control-socket and HTTP connections open now (included in ringcast_connections).",
    ),
    (
        "history_bytes",
        "ringcast_history_bytes",
        "Bytes of history kept by the channels this shard owns.",
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
    ("loop_turns", "Turns of the shards' event loops."),
    (
        "loop_wait_us",
        "Microseconds the event loops spent submitting and waiting (io_uring_enter, epoll_wait).",
    ),
    (
        "delivery_runs",
        "Runs of one channel's messages delivered with one visit to each subscriber.",
    ),
    (
        "delivery_run_messages",
        "Messages delivered in those runs (once each, not per subscriber).",
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
        "pusher_conns",
        "Pusher connections opened on /app/{key} (connection_established sent).",
    ),
    (
        "pusher_refusals",
        "Pusher connections refused after the upgrade (unknown key, old protocol, origin, max_connections).",
    ),
    (
        "pusher_errors",
        "pusher:error replies for bad client input (not JSON, unknown event, bad channel, limits).",
    ),
    (
        "pusher_auth_failures",
        "Pusher subscriptions refused for their authorization (4009).",
    ),
    (
        "pusher_timeouts",
        "Pusher connections closed silent past activity_timeout_s + pusher_pong_timeout_ms (4201).",
    ),
    ("pusher_client_events", "Pusher client events relayed."),
    (
        "pusher_client_events_limited",
        "Pusher client events dropped over pusher_client_events_per_s (4301).",
    ),
    (
        "pusher_api_requests",
        "Pusher HTTP API requests whose signature verified.",
    ),
    (
        "pusher_api_refusals",
        "Pusher HTTP API requests refused (401 signature, 403 app, 400, 413).",
    ),
    (
        "pusher_members_truncated",
        "Pusher member lists cut at pusher_presence_members_max.",
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
    (
        "cluster_reconnects",
        "Times the broker came back after being lost.",
    ),
    (
        "cluster_publish_errors",
        "Publishes refused or lost by the broker (answered cluster_unavailable).",
    ),
    (
        "cluster_publish_local",
        "Publishes delivered to this node's subscribers only, the broker being down.",
    ),
    (
        "cluster_messages_in",
        "Channel messages received from the broker at their owner shard.",
    ),
    (
        "cluster_messages_out",
        "Publishes the broker sequenced for this shard.",
    ),
    (
        "cluster_malformed",
        "Broker messages dropped for a payload that does not decode.",
    ),
    (
        "cluster_requests_expired",
        "Broker requests failed for want of an answer (dropped at a full event ring).",
    ),
    (
        "cluster_events_dropped",
        "Broker events dropped at a full ring towards the shard.",
    ),
    (
        "bridge_messages_in",
        "Messages the bridge received from Redis (channel, user and pattern messages).",
    ),
    (
        "bridge_messages_out",
        "Publishes and user sends Redis accepted from the bridge.",
    ),
    (
        "bridge_malformed_in",
        "Messages from Redis the bridge could not decode.",
    ),
    (
        "bridge_queue_overflows",
        "Commands refused because the bridge's queue was full.",
    ),
    (
        "bridge_subscribe_refusals",
        "Subscriptions refused because the bridge's set was full (channels_max).",
    ),
    (
        "bridge_node_id_conflicts",
        "Connects that found another live node holding this node's node_id.",
    ),
    (
        "cluster_catch_ups",
        "Gaps in a live channel read from the broker's history to deliver them.",
    ),
    (
        "cluster_catch_ups_failed",
        "Gaps the broker no longer held (subscribers see an offset gap).",
    ),
    (
        "cluster_conn_forwards",
        "Requests for another node's connection sent through the broker.",
    ),
    (
        "cluster_conn_forwards_in",
        "Requests for this node's connections received from other nodes and acted on.",
    ),
    (
        "pusher_webhook_batches_sent",
        "Webhook batches posted and answered 2xx (copied by shard 0 from the sender).",
    ),
    (
        "pusher_webhook_events_sent",
        "Webhook events in those batches.",
    ),
    (
        "pusher_webhook_attempts_failed",
        "Webhook posts that failed (connection, timeout, no 2xx), retried or not.",
    ),
    (
        "pusher_webhook_batches_dropped",
        "Webhook batches given up after their last retry, or pushed out of a full wait list.",
    ),
    (
        "pusher_webhook_events_dropped",
        "Webhook events dropped because the sender's queue was full.",
    ),
    (
        "cluster_epochs_bumped",
        "Channels whose broker epoch changed while subscribed here.",
    ),
    (
        "cluster_user_sends",
        "User sends and disconnects sent through the broker to every node holding the user.",
    ),
    (
        "cluster_user_messages_in",
        "User sends and disconnects received from the broker and acted on here.",
    ),
    (
        "cluster_user_local_only",
        "User sends and disconnects acted on this node only, the broker being down.",
    ),
    ("redis_input_messages", "Redis input messages acted on."),
    (
        "redis_input_refused",
        "Redis input messages ignored (bad suffix, too long, unknown target).",
    ),
];

/// Counters kept in a smaller unit than Prometheus' base unit, exported in the base unit
/// (promtool's lint asks for seconds): field, metric name, factor.
const SCALED: &[(&str, &str, f64)] = &[("loop_wait_us", "ringcast_loop_wait_seconds_total", 1e-6)];

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
                if let Some((_, name, factor)) = SCALED.iter().find(|(f, _, _)| f == field) {
                    let help = help_of(field).replace("Microseconds", "Seconds");
                    let _ = writeln!(out, "# HELP {name} {help}");
                    let _ = writeln!(out, "# TYPE {name} counter");
                    for (shard, v) in values.iter().enumerate() {
                        let x = v[field].as_u64().unwrap_or(0) as f64 * factor;
                        let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {x}");
                    }
                    continue;
                }
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
                let names: Option<Vec<&str>> = match field.as_str() {
                    "requests_by_method" => Some(crate::control::METHODS.to_vec()),
                    "errors_by_code" => Some(
                        crate::wire::ErrorCode::ALL
                            .iter()
                            .map(|c| c.as_str())
                            .collect(),
                    ),
                    _ => None,
                };
                let (name, label, help) = match field.as_str() {
                    "requests_by_method" => (
                        "ringcast_control_requests_by_method_total",
                        "method",
                        "Control requests (socket and HTTP API), by method.",
                    ),
                    "errors_by_code" => (
                        "ringcast_control_errors_by_code_total",
                        "code",
                        "Control error replies, by stable error code.",
                    ),
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
                        let key = match &names {
                            Some(names) => {
                                names.get(key as usize).copied().unwrap_or("?").to_string()
                            }
                            None => key.to_string(),
                        };
                        let _ = writeln!(out, "{name}{{shard=\"{shard}\",{label}=\"{key}\"}} {n}");
                    }
                }
            }
            serde_json::Value::Object(_) => histogram(&mut out, field, &values),
            _ => {}
        }
    }
    out
}

/// A `stats::Histogram` field as a Prometheus histogram (cumulative `le` buckets, `_sum`,
/// `_count`), its unit converted to the base unit the name says.
fn histogram(out: &mut String, field: &str, values: &[serde_json::Value]) {
    // (metric name, help, the value of one unit in the metric's unit)
    let (name, help, unit): (&str, &str, f64) = match field {
        "delivery_latency_us" => (
            "ringcast_delivery_latency_seconds",
            "A sample of publishes (1 in 64): from the channel's owner taking the publish to the \
             frame queued on a subscriber's shard.",
            1e-6,
        ),
        "send_queue_64b" => (
            "ringcast_send_queue_bytes",
            "Bytes a connection owed when its next batch was handed to the kernel.",
            64.0,
        ),
        _ => return,
    };
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (shard, v) in values.iter().enumerate() {
        let h = &v[field];
        let buckets: Vec<u64> = h["buckets"]
            .as_array()
            .map(|b| b.iter().map(|x| x.as_u64().unwrap_or(0)).collect())
            .unwrap_or_default();
        let mut cumulative = 0u64;
        for (i, n) in buckets.iter().enumerate() {
            cumulative += n;
            if i + 1 == buckets.len() {
                break; // the last bucket is +Inf, written below
            }
            let le = (1u64 << i) as f64 * unit;
            let _ = writeln!(
                out,
                "{name}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let count = h["count"].as_u64().unwrap_or(0);
        let sum = h["sum"].as_u64().unwrap_or(0) as f64 * unit;
        let _ = writeln!(
            out,
            "{name}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(out, "{name}_sum{{shard=\"{shard}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_keyed_counters_render_per_shard() {
        let mut a = Counters {
            open: 3,
            published: 7,
            loop_wait_us: 2_500_000,
            ..Counters::default()
        };
        a.closed(4001);
        a.rejected(403);
        a.request(1);
        a.error_reply(2);
        a.delivery_latency_us.observe(300);
        a.delivery_latency_us.observe(5);
        let b = Counters {
            open: 1,
            ..Counters::default()
        };
        let text = render(&[a, b]);
        assert!(text.contains("# TYPE ringcast_connections gauge\n"));
        assert!(text.contains("ringcast_connections{shard=\"0\"} 3\n"));
        assert!(text.contains("ringcast_connections{shard=\"1\"} 1\n"));
        assert!(text.contains("# TYPE ringcast_published_total counter\n"));
        // A microsecond counter leaves in seconds, under a name promtool accepts.
        assert!(text.contains("# TYPE ringcast_loop_wait_seconds_total counter\n"));
        assert!(text.contains("ringcast_loop_wait_seconds_total{shard=\"0\"} 2.5\n"));
        assert!(!text.contains("loop_wait_us"));
        assert!(text.contains("ringcast_published_total{shard=\"0\"} 7\n"));
        assert!(text.contains("ringcast_closes_total{shard=\"0\",code=\"4001\"} 1\n"));
        assert!(
            text.contains("ringcast_handshake_rejections_total{shard=\"0\",status=\"403\"} 1\n")
        );
        assert!(text.contains(
            "ringcast_control_requests_by_method_total{shard=\"0\",method=\"publish\"} 1\n"
        ));
        assert!(text.contains(
            "ringcast_control_errors_by_code_total{shard=\"0\",code=\"bad_params\"} 1\n"
        ));
        assert!(text.contains("# TYPE ringcast_delivery_latency_seconds histogram\n"));
        // 5 µs falls in le=8e-6, 300 µs in le=0.000512; cumulative counts, +Inf = count.
        assert!(
            text.contains(
                "ringcast_delivery_latency_seconds_bucket{shard=\"0\",le=\"0.000008\"} 1\n"
            )
        );
        assert!(
            text.contains(
                "ringcast_delivery_latency_seconds_bucket{shard=\"0\",le=\"0.000512\"} 2\n"
            )
        );
        assert!(
            text.contains("ringcast_delivery_latency_seconds_bucket{shard=\"0\",le=\"+Inf\"} 2\n")
        );
        assert!(text.contains("ringcast_delivery_latency_seconds_count{shard=\"0\"} 2\n"));
        // Every sample line is NAME{LABELS} VALUE, and every name has its TYPE line.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            assert!(name.starts_with("ringcast_"), "{line}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(name);
            assert!(text.contains(&format!("# TYPE {family} ")), "{line}");
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
