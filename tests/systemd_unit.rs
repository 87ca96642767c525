//! deploy/ringcast.service passes `systemd-analyze verify` (unit syntax, known directives, an
//! executable ExecStart): the unit is checked against the real systemd, with ExecStart pointed
//! at the binary this build made.

use std::process::Command;

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/ringcast.service"
    ))
    .expect("deploy/ringcast.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/ringcast serve"),
        "the unit's ExecStart moved"
    );
    let dir = std::env::temp_dir().join(format!("ringcast-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ringcast.service");
    let unit = unit.replace("/usr/local/bin/ringcast", env!("CARGO_BIN_EXE_ringcast"));
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("timeout")
        .args(["60", "systemd-analyze", "verify"])
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (Debian package systemd; .ci/run installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    // Warnings about the host (no /etc/ringcast, an unknown user) are not the unit's problems;
    // anything naming the unit's own lines is.
    let own: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ringcast.service"))
        .filter(|l| !l.contains("Failed to resolve user") && !l.contains("No such file"))
        .collect();
    assert!(
        out.status.success() && own.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}
