//! Machine-checked style: the module boundary of the sans-IO layers, leftover debugging, and
//! `unwrap`/`expect` outside tests only where a comment names the invariant.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The file's lines before its `#[cfg(test)]` module (tests may do as they like); none for a
/// file that is a test module itself (`tests.rs`, or any file under a `tests/` directory of
/// `src/`).
fn shipped_lines(path: &Path) -> Vec<(usize, String)> {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return Vec::new();
    }
    if path.components().any(|c| c.as_os_str() == "tests") && path.starts_with(root().join("src")) {
        return Vec::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

#[test]
fn sans_io_layers_touch_no_io_and_no_clock() {
    let forbidden = [
        "io_uring",
        "libc::",
        "std::net",
        "std::time",
        "Instant::",
        "SystemTime",
        "crate::shard",
        "std::thread",
    ];
    let mut problems = Vec::new();
    for layer in ["proto", "control", "channel", "wire", "auth", "http"] {
        let mut files = Vec::new();
        rust_files(&root().join("src").join(layer), &mut files);
        assert!(!files.is_empty(), "src/{layer} has no files?");
        for file in files {
            for (n, line) in shipped_lines(&file) {
                for word in forbidden {
                    if line.contains(word) && !line.trim_start().starts_with("//") {
                        problems.push(format!(
                            "{}:{n}: `{word}` in a sans-IO layer",
                            file.display()
                        ));
                    }
                }
            }
        }
    }
    // The engine is ring-free: no io_uring, no libc, no sockets, no clock, no driver (the driver
    // contract in engine/io.rs is the only seam).
    let engine_forbidden = [
        "io_uring",
        "libc::",
        "std::net",
        "std::time",
        "Instant::",
        "SystemTime",
        "crate::driver",
        "std::thread",
        "std::os::",
        // The engine sees the broker seam (`crate::broker`), never the bridge behind it.
        "broker::redis",
    ];
    let mut files = Vec::new();
    rust_files(&root().join("src/engine"), &mut files);
    assert!(files.len() >= 8, "src/engine has its modules");
    for file in files {
        for (n, line) in shipped_lines(&file) {
            for word in engine_forbidden {
                if line.contains(word) && !line.trim_start().starts_with("//") {
                    problems.push(format!("{}:{n}: `{word}` in the engine", file.display()));
                }
            }
        }
    }
    // The broker seam (src/broker/*.rs, which the engine may use) is plain data and a queue:
    // no sockets, threads or clock. Only the bridge (src/broker/redis/) does I/O, on its own
    // thread, and no part of the broker reaches into the engine or a driver: it talks to the
    // shards through the seam alone.
    let seam_forbidden = [
        "io_uring",
        "libc::",
        "std::net",
        "std::time",
        "Instant::",
        "SystemTime",
        "std::thread",
    ];
    let mut files = Vec::new();
    rust_files(&root().join("src/broker"), &mut files);
    assert!(files.len() >= 3, "src/broker has its modules");
    for file in files {
        let seam = file.parent() == Some(root().join("src/broker").as_path());
        for (n, line) in shipped_lines(&file) {
            if line.trim_start().starts_with("//") {
                continue;
            }
            if line.contains("crate::engine") || line.contains("crate::driver") {
                problems.push(format!(
                    "{}:{n}: the broker talks to the shards through its seam only",
                    file.display()
                ));
            }
            for word in seam_forbidden.iter().filter(|_| seam) {
                if line.contains(word) {
                    problems.push(format!(
                        "{}:{n}: `{word}` in the broker seam (I/O belongs in broker/redis)",
                        file.display()
                    ));
                }
            }
        }
    }
    // The cross-shard rings know nothing about WebSocket.
    let mut files = Vec::new();
    rust_files(&root().join("src/xshard"), &mut files);
    for file in files {
        for (n, line) in shipped_lines(&file) {
            if line.contains("proto::")
                || line.contains("crate::engine")
                || line.contains("crate::wire")
            {
                problems.push(format!(
                    "{}:{n}: xshard must not know the protocol",
                    file.display()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_leftover_debugging_and_unwraps_name_their_invariant() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let engine_files = files.len();
    rust_files(&root().join("loadtest/src"), &mut files);
    let mut problems = Vec::new();
    for (index, file) in files.into_iter().enumerate() {
        // The load generator is a tool: only the leftover-debugging rule applies to it.
        let engine = index < engine_files;
        let lines = shipped_lines(&file);
        for (i, (n, line)) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("dbg!(") || code.contains("todo!(") || code.contains("unimplemented!(")
            {
                problems.push(format!(
                    "{}:{n}: leftover `{}`",
                    file.display(),
                    code.trim()
                ));
            }
            if engine && (code.contains(".unwrap()") || code.contains(".expect(")) {
                // The comment may sit on any of the three lines above (or the line itself).
                let from = i.saturating_sub(3);
                let justified = lines[from..=i].iter().any(|(_, l)| {
                    let l = l.to_lowercase();
                    l.contains("invariant") || l.contains("cannot fail") || l.contains("infallible")
                });
                if !justified {
                    problems.push(format!(
                        "{}:{n}: unwrap/expect without an invariant comment",
                        file.display()
                    ));
                }
            }
            if engine && line.chars().count() > 120 {
                problems.push(format!(
                    "{}:{n}: line longer than 120 characters",
                    file.display()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every field of `Limits` has its row in docs/limits.md (and every row names a field).
#[test]
fn every_limit_has_its_row_in_the_docs() {
    let limits = serde_json::to_value(ringcast::config::Limits::default()).unwrap();
    let fields: Vec<&String> = limits.as_object().unwrap().keys().collect();
    let doc = std::fs::read_to_string(root().join("docs/limits.md")).unwrap();
    let rows: Vec<String> = doc
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('`').nth(1).map(str::to_string))
        .collect();
    let missing: Vec<&&String> = fields.iter().filter(|f| !rows.contains(f)).collect();
    assert!(
        missing.is_empty(),
        "Limits fields without a row in docs/limits.md: {missing:?}"
    );
    let unknown: Vec<&String> = rows
        .iter()
        .filter(|r| !fields.iter().any(|f| f == r))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/limits.md rows that are not Limits fields: {unknown:?}"
    );
}

/// Every stable error code is documented in docs/protocol.md or docs/control.md.
#[test]
fn every_error_code_is_documented() {
    let protocol = std::fs::read_to_string(root().join("docs/protocol.md")).unwrap();
    let control = std::fs::read_to_string(root().join("docs/control.md")).unwrap();
    let missing: Vec<&str> = ringcast::wire::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .filter(|c| !protocol.contains(&format!("`{c}`")) && !control.contains(&format!("`{c}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "error codes no document names: {missing:?}"
    );
}

/// `unsafe` needs its `// SAFETY:` comment, machine-checked by clippy.
#[test]
fn clippy_requires_safety_comments() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(manifest.contains("undocumented_unsafe_blocks = \"deny\""));
}
