//! Config reload on a running process: SIGHUP (and control `reload`) reads the config file
//! again; an Origin allowlist changes live, a limit that needs a restart is reported and left.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The status of an upgrade request from `origin`.
fn upgrade_status(port: u16, origin: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Origin: {origin}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_and_control_reload_apply_origins_live_and_report_the_rest() {
    let dir = std::env::temp_dir().join(format!("ringcast-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("ringcast.toml");
    let sock = dir.join("c.sock");
    std::fs::write(&conf, "allowed_origins = [\"https://a.example\"]\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--no-pin",
        ])
        .arg("--config")
        .arg(&conf)
        .arg("--control")
        .arg(format!("unix:{}", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let pid = child.id() as i32;
    let guard = Guard(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("ringcast ready listen=127.0.0.1:") {
                let port: u16 = rest.split(' ').next().unwrap().parse().unwrap();
                let _ = tx.send(port);
            }
        }
    });
    let (etx, erx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = etx.send(line);
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(30)).expect("ready");
    assert_eq!(upgrade_status(port, "https://a.example"), 101);
    assert_eq!(upgrade_status(port, "https://b.example"), 403);
    // SIGHUP with a new allowlist and a limit that cannot change live.
    std::fs::write(
        &conf,
        "allowed_origins = [\"https://b.example\"]\n[limits]\noutbound_bytes_max = 2097152\n",
    )
    .unwrap();
    // SAFETY: signalling the child we started (it is alive: the guard holds it).
    unsafe { libc_kill(pid, 1) };
    let mut report = String::new();
    wait_for("the reload report", || {
        while let Ok(line) = erx.try_recv() {
            if line.contains("reload:") {
                report = line;
            }
        }
        !report.is_empty()
    });
    assert!(report.contains("applied [allowed_origins]"), "{report}");
    assert!(report.contains("limits.outbound_bytes_max"), "{report}");
    // Every shard takes it within a few ticks; every connection from b is then allowed.
    wait_for("b.example allowed on every shard", || {
        (0..8).all(|_| upgrade_status(port, "https://b.example") == 101)
    });
    assert_eq!(upgrade_status(port, "https://a.example"), 403);
    // Control `reload` reads the file again too; a broken file leaves the running config.
    std::fs::write(&conf, "allowed_origins = 7\n").unwrap();
    let mut ctl = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    ctl.write_all(b"{\"id\":1,\"method\":\"reload\"}\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(ctl.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("\"requested\":true"), "{line}");
    let mut refused = String::new();
    wait_for("the refusal", || {
        while let Ok(l) = erx.try_recv() {
            if l.contains("reload refused") {
                refused = l;
            }
        }
        !refused.is_empty()
    });
    assert_eq!(
        upgrade_status(port, "https://b.example"),
        101,
        "still the last good config"
    );
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
