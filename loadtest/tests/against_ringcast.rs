//! The generator against the real server: `fanout` with 1,000 raw subscribers on a ringcast
//! server started in this process, publishes through its control socket; every subscriber must
//! get every publish exactly once, each publisher's sequence in order (the generator's loss and
//! duplicate accounting checks both). And `reconnect` on a namespace with history: subscribers
//! that drop and come back with `since` (in the URL, and as a command) get every message once.

use ringcast::config::{Config, ControlConfig, Limits, Namespace};
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
    let json = std::env::temp_dir().join(format!("ringcast-load-e2e-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast-load"))
        .arg("fanout")
        .arg("--url")
        .arg(format!("ws://{}/ws?format=raw", server.local_addr()))
        .args(["--channel", "bench", "--control"])
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
        "ringcast-load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    let _ = std::fs::remove_file(&json);
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let r = &v["rates"][0];
    assert_eq!(r["published"], 400);
    assert_eq!(r["delivered"], 400 * 1000);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["duplicated"], 0);
    let counters = server.counters();
    assert_eq!(counters.slow_consumers, 0);
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
