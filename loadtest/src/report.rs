//! Output: the live progress line (stderr, only on a terminal), the final table (stdout) and the
//! JSON file. Figures are collected as `serde_json::Value` so the table and the file cannot
//! disagree.

use std::io::Write;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Redraws one status line on stderr at most once a second, only when stderr is a terminal.
pub struct Progress {
    enabled: bool,
    next_ns: u64,
    drawn: bool,
}

impl Progress {
    /// A progress line, drawn only if `enabled` (stderr is a terminal and not `--quiet`).
    pub fn new(enabled: bool) -> Progress {
        Progress {
            enabled,
            next_ns: 0,
            drawn: false,
        }
    }

    /// Redraws with `line()` if a second has passed since the last draw.
    pub fn tick(&mut self, now_ns: u64, line: impl FnOnce() -> String) {
        if !self.enabled || now_ns < self.next_ns {
            return;
        }
        self.next_ns = now_ns + 1_000_000_000;
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{}", line());
        let _ = err.flush();
        self.drawn = true;
    }

    /// Erases the line (before normal output), and draws the next tick at once.
    pub fn clear(&mut self) {
        self.next_ns = 0;
        if self.drawn {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
            self.drawn = false;
        }
    }
}

/// Percentiles of a µs histogram as JSON: p50, p90, p99, p999, max, mean, count.
pub fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
        "count": h.len(),
    })
}

/// A duration in µs as a short human figure.
pub fn human_us(us: u64) -> String {
    if us >= 10_000_000 {
        format!("{:.1}s", us as f64 / 1e6)
    } else if us >= 10_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{us}µs")
    }
}

/// A count with thousands separators.
pub fn human_count(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A plain text table: a header row and rows, columns right-aligned to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = w - cell.chars().count();
            s.push_str(&" ".repeat(pad));
            s.push_str(cell);
        }
        s.push('\n');
        s
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &str, value: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("--json {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(human_count(0), "0");
        assert_eq!(human_count(1234567), "1,234,567");
        assert_eq!(human_us(950), "950µs");
        assert_eq!(human_us(25_400), "25.4ms");
        let t = table(
            &["a", "bb"],
            &[vec!["1".into(), "2".into()], vec!["100".into(), "x".into()]],
        );
        assert_eq!(t, "  a  bb\n  1   2\n100   x\n");
    }
}
