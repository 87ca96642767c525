//! The generator against the real server: `fanout` with 1,000 raw subscribers on a ringcast
//! server started in this process, publishes through its control socket; every subscriber must
//! get every publish exactly once, each publisher's sequence in order (the generator's loss and
//! duplicate accounting checks both).

use ringcast::config::{Config, ControlConfig, Limits};
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
