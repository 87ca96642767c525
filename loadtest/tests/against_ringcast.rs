//! The generator against the real server: `fanout` with 1,000 subscribers on a ringcast server
//! started in this process, publishes through its control socket, once with raw frames and once
//! on the default `/ws` protocol (JSON envelopes, subscribed by command); every subscriber must
//! get every publish exactly once, each publisher's sequence in order (the generator's loss and
//! duplicate accounting checks both), and the report must name the format it saw. And
//! `reconnect` on a namespace with history: subscribers that drop and come back with `since`
//! (in the URL, and as a command) get every message once. And users: `presence` (HS256 tokens
//! signed by the generator, verified by the server; one join and one leave per user), `events`
//! (every connect and close once, or a gap for it), and `fanout` with a stalled event consumer
//! and connection churn (the consumer loses events, the subscribers nothing). And
//! `fanout --deflate`: subscribers that negotiated permessage-deflate get every message
//! compressed (fewer bytes on the wire than the payload), inflated by the generator without a
//! loss.

use ringcast::config::{AuthConfig, Config, ControlConfig, Limits, Namespace};
use ringcast::server::Server;
use std::process::Command;

#[test]
fn fanout_against_ringcast_loses_nothing() {
    let sock = std::env::temp_dir().join(format!("ringcast-load-e2e-{}.sock", std::process::id()));
    let config = Config {
        listen: "127.0.0.1:0"
            .parse()
            .expect("a literal address: cannot fail"),
        shards: 2,
        pin: false,
        control: ControlConfig {
            listen: vec![format!("unix:{}", sock.display())],
            token: None,
        },
        limits: Limits::default(),
        ..Config::default()
    };
    let server = Server::start(config).expect("server starts");
    // Raw frames (the URL asks for them, the channel is added to it), and the default /ws
    // protocol: JSON envelopes, found out from each connection's first message, with the
    // channel in the URL, and with a URL without one, so each subscriber subscribes with the
    // client command.
    for (name, query, format, from, by) in [
        ("raw", "?format=raw", "raw", "url", "url"),
        (
            "envelope-url",
            "?channel=bench",
            "envelope",
            "first message",
            "url",
        ),
        ("envelope", "", "envelope", "first message", "command"),
    ] {
        let json = std::env::temp_dir().join(format!(
            "ringcast-load-e2e-{name}-{}.json",
            std::process::id()
        ));
        let out = Command::new(env!("CARGO_BIN_EXE_ringcast-load"))
            .arg("fanout")
            .arg("--url")
            .arg(format!("ws://{}/ws{query}", server.local_addr()))
            .args(["--channel", &format!("bench:{name}"), "--control"])
            .arg(format!("unix:{}", sock.display()))
            .args([
                "-n",
                "1000",
                "--rate",
                "200",
                "--duration",
                "2",
                "--drain",
                "2",
                "--quiet",
                "--json",
            ])
            .arg(&json)
            .output()
            .expect("ringcast-load runs");
        assert!(
            out.status.success(),
            "ringcast-load ({name}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let text = std::fs::read_to_string(&json).expect("the JSON report");
        let _ = std::fs::remove_file(&json);
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let r = &v["rates"][0];
        assert_eq!(r["published"], 400, "{name}");
        assert_eq!(r["delivered"], 400 * 1000, "{name}: {r}");
        assert_eq!(r["lost"], 0, "{name}: {r}");
        assert_eq!(r["duplicated"], 0, "{name}: {r}");
        assert_eq!(r["unparsable"], 0, "{name}: {r}");
        assert_eq!(r["foreign"], 0, "{name}: {r}");
        let f = &v["format"];
        assert_eq!(f["detected"], format, "{name}: {f}");
        assert_eq!(f["from"], from, "{name}: {f}");
        assert_eq!(f[format], 1000, "{name}: {f}");
        assert_eq!(f["undetected"], 0, "{name}: {f}");
        assert_eq!(v["subscribe"]["by"], by, "{name}");
        if by == "command" {
            assert_eq!(v["subscribe"]["subscribed"], 1000, "{}", v["subscribe"]);
            assert_eq!(v["subscribe"]["refused"], 0, "{}", v["subscribe"]);
        }
        assert_eq!(v["error_replies"], 0, "{name}");
        let line = if format == "raw" {
            "format: raw"
        } else {
            "format: envelope (json)"
        };
        assert!(stdout.contains(line), "{name}: {stdout}");
    }
    let counters = server.counters();
    assert_eq!(counters.slow_consumers, 0);
    server.shutdown();
    server.wait().expect("clean shutdown");
}

#[test]
fn deflate_subscribers_get_every_message_compressed() {
    let sock = std::env::temp_dir().join(format!("ringcast-load-defl-{}.sock", std::process::id()));
    let config = Config {
        listen: "127.0.0.1:0"
            .parse()
            .expect("a literal address: cannot fail"),
        shards: 2,
        pin: false,
        deflate: true,
        control: ControlConfig {
            listen: vec![format!("unix:{}", sock.display())],
            token: None,
        },
        ..Config::default()
    };
    let server = Server::start(config).expect("server starts");
    let url = format!("ws://{}/ws?format=raw&channel=bench", server.local_addr());
    let control = format!("unix:{}", sock.display());
    let v = run_load(
        "deflate",
        &[
            "fanout",
            "--url",
            &url,
            "--channel",
            "bench",
            "--control",
            &control,
            "-n",
            "500",
            "--rate",
            "100",
            "--duration",
            "2",
            // Generous on a loaded machine: a drain is a bound, not a wait.
            "--drain",
            "5",
            "--payload",
            "1024",
            "--fill",
            "json",
            "--deflate",
        ],
    );
    let r = &v["rates"][0];
    assert_eq!(r["published"], 200);
    assert_eq!(r["delivered"], 200 * 500);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["duplicated"], 0);
    let io = &v["connections"]["generator_io"];
    assert_eq!(io["deflate_negotiated"], 500);
    assert_eq!(io["inflate_errors"], 0);
    // Every data message came compressed (1 KiB is far above deflate_min_bytes), and the same
    // compressed bytes went to every subscriber: the generator inflated each message about once.
    assert_eq!(io["compressed_messages"], io["messages"]);
    let messages = io["messages"].as_u64().expect("a count");
    let inflated = io["inflated"].as_u64().expect("a count");
    assert!(messages >= 200 * 500, "{io}");
    assert!(
        inflated * 100 < messages,
        "inflated {inflated} of {messages}"
    );
    // The JSON fill compresses: fewer bytes per message on the wire than its 1,024-byte payload.
    let per = io["bytes_in_per_message"].as_f64().expect("a ratio");
    assert!(per < 800.0, "{per} bytes on the wire per message");
    server.shutdown();
    server.wait().expect("clean shutdown");
}

#[test]
fn reconnecting_subscribers_recover_every_message() {
    let sock = std::env::temp_dir().join(format!(
        "ringcast-load-e2e-reconnect-{}.sock",
        std::process::id()
    ));
    let mut config = Config {
        listen: "127.0.0.1:0"
            .parse()
            .expect("a literal address: cannot fail"),
        shards: 2,
        pin: false,
        control: ControlConfig {
            listen: vec![format!("unix:{}", sock.display())],
            token: None,
        },
        limits: Limits::default(),
        ..Config::default()
    };
    config.namespaces.insert(
        "hist".into(),
        Namespace {
            history_size: 1000,
            ..Namespace::default()
        },
    );
    let server = Server::start(config).expect("server starts");
    let mut reconnects = 0;
    // Both ways of resuming, and both an abrupt drop and the close handshake.
    for (name, how) in [
        ("url", ["--resume", "url", "--drop", "eof"]),
        ("command", ["--resume", "command", "--drop", "close"]),
    ] {
        let json = std::env::temp_dir().join(format!(
            "ringcast-load-e2e-reconnect-{name}-{}.json",
            std::process::id()
        ));
        let out = Command::new(env!("CARGO_BIN_EXE_ringcast-load"))
            .arg("reconnect")
            .arg("--url")
            .arg(format!("ws://{}/ws", server.local_addr()))
            .args(["--channel", &format!("hist:{name}"), "--control"])
            .arg(format!("unix:{}", sock.display()))
            .args(how)
            .args([
                "-n",
                "100",
                "--reconnect-fraction",
                "0.2",
                "--reconnect-every-s",
                "0.5",
                "--offline-ms",
                "150",
                "--rate",
                "200",
                "--calm-s",
                "0.5",
                "--duration",
                "2",
                "--quiet",
                "--json",
            ])
            .arg(&json)
            .output()
            .expect("ringcast-load runs");
        assert!(
            out.status.success(),
            "ringcast-load reconnect ({name}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&json).expect("the JSON report");
        let _ = std::fs::remove_file(&json);
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["subscribers"]["stable"], 80, "{name}");
        assert_eq!(v["subscribers"]["reconnecting"], 20, "{name}");
        let a = &v["accounting"];
        assert_eq!(a["lost"], 0, "{name}: {a}");
        assert_eq!(a["duplicated"], 0, "{name}: {a}");
        let m = &a["reconnecting"];
        for k in [
            "lost_announced",
            "offset_seq_mismatch",
            "before_reply",
            "inconsistent_replies",
            "unexpected_replies",
        ] {
            assert_eq!(m[k], 0, "{name}: {k}: {m}");
        }
        assert_eq!(a["unparsable"], 0, "{name}: {a}");
        assert_eq!(a["foreign"], 0, "{name}: {a}");
        let r = &v["reconnects"];
        // 20 subscribers, a drop every 0.5 s of a 2 s churn (none that would come back after it).
        let done = r["reconnects"].as_u64().unwrap();
        assert!(done >= 40, "{name}: {r}");
        assert_eq!(r["recovered_true"], done, "{name}: {r}");
        assert_eq!(r["recovered_false"], 0, "{name}: {r}");
        assert_eq!(r["failures"], 0, "{name}: {r}");
        // Offline 150 ms at 200/s: about 30 messages missed and replayed per reconnect.
        assert!(r["replayed"].as_u64().unwrap() >= done * 20, "{name}: {r}");
        assert_eq!(r["replayed"], r["to_replay"], "{name}: {r}");
        for period in ["before", "churn", "after"] {
            let p = &v["periods"][period];
            assert_eq!(
                p["stable"]["delivered"], p["stable"]["expected"],
                "{name} {period}"
            );
            assert_eq!(
                p["reconnecting"]["delivered"], p["reconnecting"]["expected"],
                "{name} {period}"
            );
        }
        reconnects += done;
    }
    let counters = server.counters();
    assert_eq!(counters.recoveries, reconnects);
    assert_eq!(counters.recoveries_refused, 0);
    server.shutdown();
    server.wait().expect("clean shutdown");
}

/// The secret of the users tests' servers (and the generator's --secret).
const SECRET: &str = "a test secret of at least thirty-two bytes";

/// A two-shard server with HS256 tokens, `room` announcing joins and leaves, and `limits`.
fn users_server(name: &str, limits: Limits) -> (Server, std::path::PathBuf) {
    let sock = std::env::temp_dir().join(format!(
        "ringcast-load-e2e-{name}-{}.sock",
        std::process::id()
    ));
    let mut config = Config {
        listen: "127.0.0.1:0"
            .parse()
            .expect("a literal address: cannot fail"),
        shards: 2,
        pin: false,
        control: ControlConfig {
            listen: vec![format!("unix:{}", sock.display())],
            token: None,
        },
        limits,
        auth: AuthConfig {
            hs256_secret: Some(SECRET.into()),
            ..AuthConfig::default()
        },
        ..Config::default()
    };
    config.namespaces.insert(
        "room".into(),
        Namespace {
            join_leave: true,
            ..Namespace::default()
        },
    );
    (Server::start(config).expect("server starts"), sock)
}

/// Runs ringcast-load with `args` and `--json FILE`; the report.
fn run_load(name: &str, args: &[&str]) -> serde_json::Value {
    let json = std::env::temp_dir().join(format!(
        "ringcast-load-e2e-{name}-{}.json",
        std::process::id()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast-load"))
        .args(args)
        .args(["--quiet", "--json"])
        .arg(&json)
        .output()
        .expect("ringcast-load runs");
    assert!(
        out.status.success(),
        "ringcast-load {name} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&text).expect("valid JSON")
}

#[test]
fn presence_gives_one_join_and_one_leave_per_user() {
    let (server, sock) = users_server("presence", Limits::default());
    let url = format!("ws://{}/ws", server.local_addr());
    let control = format!("unix:{}", sock.display());
    for format in ["raw", "json"] {
        let v = run_load(
            &format!("presence-{format}"),
            &[
                "presence",
                "--url",
                &url,
                "--control",
                &control,
                "--secret",
                SECRET,
                "-n",
                "300",
                "--users",
                "100",
                "--watchers",
                "2",
                "--storm-users",
                "40",
                "--stats-calls",
                "20",
                "--settle-s",
                "0.3",
                "--member-format",
                format,
            ],
        );
        assert_eq!(v["passed"], true, "{format}: {}", v["failures"]);
        // The tokens verified: every member is in the channel as its user.
        assert_eq!(v["members_open"], 300, "{format}");
        assert_eq!(
            v["presence_stats"]["answer"],
            serde_json::json!({"users": 102, "conns": 302, "anonymous": 0}),
            "{format}"
        );
        // The reference channel holds the two watchers only.
        assert_eq!(
            v["presence_stats"]["reference_answer"],
            serde_json::json!({"users": 2, "conns": 2, "anonymous": 0}),
            "{format}"
        );
        for phase in [&v["connect"]["news"], &v["storm_news"]] {
            for w in phase.as_array().expect("one per watcher") {
                assert_eq!(w["users_as_expected"], w["users_with_news_expected"], "{w}");
                assert_eq!(w["news_for_others"], 0, "{w}");
            }
        }
        assert_eq!(v["storm_news"][0]["users_with_news_expected"], 40);
        assert_eq!(v["storm"]["connections"], 120, "3 tabs of each of 40 users");
    }
    server.shutdown();
    server.wait().expect("clean shutdown");
}

#[test]
fn the_event_stream_accounts_for_every_connect_and_close() {
    let (server, sock) = users_server("events", Limits::default());
    let url = format!("ws://{}/ws", server.local_addr());
    let control = format!("unix:{}", sock.display());
    for (name, extra) in [
        ("wave", &["--consumers", "2"][..]),
        (
            "each-group",
            &[
                "--consumers",
                "2",
                "--group",
                "g",
                "--pattern",
                "each",
                "--secret",
                SECRET,
                "--users",
                "50",
            ][..],
        ),
    ] {
        let mut args = vec!["events", "--url", &url, "--control", &control, "-n", "500"];
        args.extend_from_slice(extra);
        let v = run_load(&format!("events-{name}"), &args);
        assert_eq!(v["verdict"], "exact", "{name}: {}", v["accounting"]);
        assert_eq!(v["welcomed"], 500, "{name}");
        let got: u64 = v["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["connects"].as_u64().unwrap() + c["closes"].as_u64().unwrap())
            .sum();
        let copies = if name == "wave" { 2 } else { 1 };
        assert_eq!(got, 1000 * copies, "{name}");
    }
    server.shutdown();
    server.wait().expect("clean shutdown");

    // A consumer that is not read through the storm, on a server that holds only 16 KiB for
    // it: events are dropped, and the gaps say how many.
    let limits = Limits {
        event_buffer_bytes_max: 16 * 1024,
        ..Limits::default()
    };
    let (server, sock) = users_server("events-lag", limits);
    let url = format!("ws://{}/ws", server.local_addr());
    let control = format!("unix:{}", sock.display());
    let v = run_load(
        "events-lag",
        &[
            "events",
            "--url",
            &url,
            "--control",
            &control,
            "-n",
            "2000",
            "--consumers",
            "2",
            "--lag-first",
        ],
    );
    assert_eq!(v["verdict"], "accounted for", "{}", v["accounting"]);
    let lagging = &v["accounting"][0];
    assert!(lagging["gap_dropped"].as_u64().unwrap() > 0, "{lagging}");
    assert_eq!(
        lagging["gap_dropped"].as_u64().unwrap(),
        lagging["missing_connect"].as_u64().unwrap() + lagging["missing_close"].as_u64().unwrap()
    );
    let stated: u64 = v["accounting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["gap_dropped"].as_u64().unwrap())
        .sum();
    assert_eq!(v["server_events"]["events_dropped"], stated);
    server.shutdown();
    server.wait().expect("clean shutdown");
}

#[test]
fn a_stalled_event_consumer_loses_events_not_the_fanouts_messages() {
    // 16 KiB for the consumer: the subscribers' connects and the churn overflow it quickly.
    let limits = Limits {
        event_buffer_bytes_max: 16 * 1024,
        ..Limits::default()
    };
    let (server, sock) = users_server("stalled", limits);
    let url = format!("ws://{}/ws?format=raw", server.local_addr());
    let control = format!("unix:{}", sock.display());
    let v = run_load(
        "stalled",
        &[
            "fanout",
            "--url",
            &url,
            "--channel",
            "bench",
            "--control",
            &control,
            "-n",
            "500",
            "--rate",
            "100",
            "--duration",
            "2",
            "--drain",
            "2",
            "--stalled-consumer",
            "--churn-per-s",
            "200",
        ],
    );
    let r = &v["rates"][0];
    assert_eq!(r["published"], 200);
    assert_eq!(r["delivered"], 200 * 500);
    assert_eq!(r["lost"], 0);
    let e = &v["event_stream"];
    assert_eq!(e["stalled_consumer"], true);
    assert!(e["events_dropped"].as_u64().unwrap() > 0, "{e}");
    assert!(
        v["churn"]["started"].as_u64().unwrap() >= 300,
        "{}",
        v["churn"]
    );
    assert_eq!(v["churn"]["skipped_no_free_slot"], 0);
    server.shutdown();
    server.wait().expect("clean shutdown");
}
