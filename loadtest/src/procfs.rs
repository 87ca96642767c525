//! Readings from /proc: the server's resident memory and CPU time, the kernel's TCP socket
//! memory and slab size. Parsing is separate from reading so it can be tested on fixed text.

use std::fs;

/// `VmRSS` of `/proc/PID/status` in bytes. Threads share one address space, so this is the whole
/// process's figure, not one thread's.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    parse_kb_field(
        &fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmRSS:",
    )
}

/// utime + stime of `/proc/PID/stat`, in clock ticks (summed over all threads).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat_cpu(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `Slab:` of /proc/meminfo in bytes (all kernel slab caches, socket structures among them).
pub fn slab_bytes() -> Option<u64> {
    parse_kb_field(&fs::read_to_string("/proc/meminfo").ok()?, "Slab:")
}

/// The `mem` figure of the `TCP:` line of /proc/net/sockstat, in pages: memory charged to TCP
/// socket buffers on the whole host.
pub fn tcp_mem_pages() -> Option<u64> {
    parse_sockstat_tcp_mem(&fs::read_to_string("/proc/net/sockstat").ok()?)
}

/// The page size, the unit of sockstat's `mem`.
pub fn page_bytes() -> u64 {
    // SAFETY: plain libc call.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// The local port range (`net.ipv4.ip_local_port_range`): how many ephemeral ports one source
/// address has towards one destination.
pub fn ephemeral_ports() -> Option<u64> {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u64>());
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    Some(hi.saturating_sub(lo) + 1)
}

fn parse_kb_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn parse_stat_cpu(text: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn parse_sockstat_tcp_mem(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mem" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// A CPU time sample of a process, to compute a fraction of one core between two samples.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    /// CPU time in ns.
    pub cpu_ns: u64,
    /// Wall clock (monotonic) in ns.
    pub wall_ns: u64,
}

impl CpuSample {
    /// The fraction of one core used between `self` and a later sample.
    pub fn core_fraction_until(&self, later: &CpuSample) -> f64 {
        let wall = later.wall_ns.saturating_sub(self.wall_ns);
        if wall == 0 {
            return 0.0;
        }
        later.cpu_ns.saturating_sub(self.cpu_ns) as f64 / wall as f64
    }
}

/// A process's VmRSS sampled every `interval_ns`, driven by the caller's event loop (no thread:
/// the generator stays one thread on one core). A sample is taken at the first call at or after
/// each due time; due times missed while the loop was busy are skipped, not made up.
#[derive(Debug, Clone)]
pub struct RssSeries {
    pid: u32,
    t0_ns: u64,
    interval_ns: u64,
    next_ns: u64,
    /// (ms since `t0_ns`, bytes).
    samples: Vec<(u64, u64)>,
}

/// Minimum, maximum and last of an `RssSeries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RssSummary {
    /// Smallest sample, bytes.
    pub min: u64,
    /// Largest sample, bytes.
    pub max: u64,
    /// Last sample, bytes.
    pub last: u64,
    /// When the largest sample was taken, ms since the start of the series.
    pub max_at_ms: u64,
}

impl RssSeries {
    /// A series of `pid` starting at `t0_ns`, one sample per `interval_ns` (at least 1 ms).
    pub fn new(pid: u32, t0_ns: u64, interval_ns: u64) -> RssSeries {
        RssSeries {
            pid,
            t0_ns,
            interval_ns: interval_ns.max(1_000_000),
            next_ns: t0_ns,
            samples: Vec::new(),
        }
    }

    /// Takes a sample if one is due at `now_ns`.
    pub fn poll(&mut self, now_ns: u64) {
        if now_ns < self.next_ns {
            return;
        }
        if let Some(rss) = rss_bytes(self.pid) {
            self.record(now_ns, rss);
        }
        self.next_ns = next_due(self.t0_ns, self.interval_ns, now_ns);
    }

    /// Takes a sample now, due or not (phase boundaries).
    pub fn sample_now(&mut self, now_ns: u64) {
        if let Some(rss) = rss_bytes(self.pid) {
            self.record(now_ns, rss);
        }
    }

    fn record(&mut self, now_ns: u64, rss: u64) {
        let ms = now_ns.saturating_sub(self.t0_ns) / 1_000_000;
        self.samples.push((ms, rss));
    }

    /// Interval between samples, ms.
    pub fn interval_ms(&self) -> u64 {
        self.interval_ns / 1_000_000
    }

    /// The samples: (ms since the start, bytes).
    pub fn samples(&self) -> &[(u64, u64)] {
        &self.samples
    }

    /// Minimum, maximum and last sample; `None` before the first sample.
    pub fn summary(&self) -> Option<RssSummary> {
        summarize(&self.samples)
    }
}

/// The first due time after `now_ns` on the grid `t0_ns + k * interval_ns`.
fn next_due(t0_ns: u64, interval_ns: u64, now_ns: u64) -> u64 {
    let k = now_ns.saturating_sub(t0_ns) / interval_ns + 1;
    t0_ns + k * interval_ns
}

fn summarize(samples: &[(u64, u64)]) -> Option<RssSummary> {
    let &(_, last) = samples.last()?;
    let &(max_at_ms, max) = samples
        .iter()
        .rev()
        .max_by_key(|&&(_, b)| b)
        .expect("not empty");
    let min = samples.iter().map(|&(_, b)| b).min().expect("not empty");
    Some(RssSummary {
        min,
        max,
        last,
        max_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_meminfo() {
        let status = "Name:\tringcast\nVmPeak:\t  9000 kB\nVmRSS:\t    4242 kB\nThreads:\t3\n";
        assert_eq!(parse_kb_field(status, "VmRSS:"), Some(4242 * 1024));
        let meminfo = "MemTotal:       24683520 kB\nSlab:             201234 kB\n";
        assert_eq!(parse_kb_field(meminfo, "Slab:"), Some(201234 * 1024));
        assert_eq!(parse_kb_field(meminfo, "Nope:"), None);
    }

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let stat =
            "1234 (my server) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat_cpu(stat), Some(325));
    }

    #[test]
    fn parses_sockstat() {
        let text =
            "sockets: used 190\nTCP: inuse 5 orphan 0 tw 2 alloc 7 mem 13\nUDP: inuse 1 mem 0\n";
        assert_eq!(parse_sockstat_tcp_mem(text), Some(13));
    }

    #[test]
    fn rss_schedule_and_summary() {
        // Due times stay on the grid; missed ones are skipped.
        assert_eq!(next_due(1_000, 500, 1_000), 1_500);
        assert_eq!(next_due(1_000, 500, 1_499), 1_500);
        assert_eq!(next_due(1_000, 500, 1_500), 2_000);
        assert_eq!(next_due(1_000, 500, 3_700), 4_000);
        assert_eq!(summarize(&[]), None);
        let s = summarize(&[(0, 10), (500, 30), (1000, 5), (1500, 30), (2000, 20)]).unwrap();
        // The first time the maximum was reached.
        assert_eq!(
            s,
            RssSummary {
                min: 5,
                max: 30,
                last: 20,
                max_at_ms: 500
            }
        );
    }
}
