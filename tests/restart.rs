//! Restarting right after a crash: `kill -9`, then at once a new server on the same Unix control
//! path. The dead server's socket may still accept `connect()` for a few milliseconds; the lock
//! file decides, so the restart never fails with "another server is listening".

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the child when dropped, so no server outlives the test.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ringcast serve` on `control`; returns it once its readiness line arrived, or the
/// stderr it printed before exiting.
fn serve(control: &str) -> Result<Guard, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--no-pin",
        ])
        .args(["--control", control])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ringcast ready ") {
                let _ = tx.send(());
            }
        }
    });
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        let text: Vec<String> = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect();
        let _ = etx.send(text.join("\n"));
    });
    let guard = Guard(child);
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(()) => Ok(guard),
        Err(_) => {
            drop(guard);
            Err(erx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_default())
        }
    }
}

#[test]
fn restart_right_after_kill_9_on_the_same_control_path() {
    let path = std::env::temp_dir().join(format!("ringcast-restart-{}.sock", std::process::id()));
    let control = format!("unix:{}", path.display());
    let mut server = serve(&control).expect("the first server starts");
    for round in 0..5 {
        let started = Instant::now();
        // SIGKILL: no shutdown, no clean-up of the socket file.
        server.0.kill().unwrap();
        server.0.wait().unwrap();
        server = serve(&control)
            .unwrap_or_else(|err| panic!("restart {round} failed after kill -9: {err}"));
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    // A second server beside a live one is still refused.
    let err = serve(&control).err().expect("a live server keeps its path");
    assert!(err.contains("another server is listening"), "{err}");
    drop(server);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(path.with_extension("sock.lock"));
}
