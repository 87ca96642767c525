//! `fanout`: N subscribers, one publisher, a fixed rate or a sweep of rates.
//!
//! Method. Subscribers connect first (raw format: each publish arrives as one frame, payload as
//! published). A warm-up then publishes slowly until every subscriber has received something on
//! its channel and caught up, so a subscription still being set up is never counted as loss.
//! Each rate then runs for `--duration`: publish `i` is due at `t0 + i / rate` and carries that
//! intended time, not the moment it was written, so a late publisher or a backed-up server shows
//! as latency instead of fewer samples (no coordinated omission). After the last publish the
//! generator waits until every subscriber has everything or the drain time passes; whatever has
//! not arrived then is lost. Latency = receive time (one clock read per socket read) − intended
//! time, in µs, into an HdrHistogram. A rate "holds" when nothing was lost or duplicated and p99
//! stayed within `--p99-budget-ms`; a sweep stops at the first rate that does not hold unless
//! `--keep-going`.
//!
//! Publishers: `--control unix:PATH|tcp:ADDR` sends pipelined `noreply` JSON publishes on
//! ringcast's control socket; `--pub-ws` sends the payload as a text frame on its own WebSocket
//! connection (`--pub-url`), for servers that broadcast what a client sends.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

use crate::Common;
use crate::payload::{self, Seen, SeqTracker, Stamp};
use crate::pool::{self, Handler, Pool, State, TOKEN_SCENARIO};
use crate::procfs::CpuSample;
use crate::report::{self, Progress, human_count, human_us};
use crate::scenario::{self, Setup};
use crate::sys::{self, Event, Interest, Timer};
use crate::target::{self, ControlAddr};
use crate::ws;

const TOKEN_TIMER: u64 = TOKEN_SCENARIO;
const TOKEN_CONTROL: u64 = TOKEN_SCENARIO + 1;
/// Publisher output above this is not added to until the server reads: the schedule keeps its
/// intended times, so the wait shows up as latency.
const PUBLISH_BACKLOG_BYTES_MAX: usize = 4 << 20;
/// Replies read from the control socket are kept up to this line length for error reports.
const REPLY_LINE_BYTES_MAX: usize = 64 * 1024;

/// Flags of `fanout`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct FanoutArgs {
    #[command(flatten)]
    #[serde(flatten)]
    common: Common,
    /// Publish through ringcast's control socket: unix:PATH or tcp:HOST:PORT.
    #[arg(long, conflicts_with = "pub_ws")]
    control: Option<String>,
    /// Publish as a WebSocket client sending the payload frames (servers that broadcast what a
    /// client sends).
    #[arg(long)]
    pub_ws: bool,
    /// What a --pub-ws publisher sends: `raw` (the payload as a text frame) or `ringcast`
    /// (`{"op":"publish","channel":C,"data":"PAYLOAD"}`, for namespaces with client publish).
    #[arg(long, value_enum, default_value = "raw", requires = "pub_ws")]
    pub_ws_format: PubWsFormat,
    /// URL of the publishing WebSocket connection (default: --url); same host and port.
    #[arg(long, requires = "pub_ws")]
    pub_url: Option<String>,
    /// Publishes per second, or a comma list for a sweep (e.g. 1000,2000,5000; 2k = 2000).
    #[arg(long, default_value = "100")]
    rate: String,
    /// Seconds of publishing per rate.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Payload bytes per publish (at least 40: stream, sequence number, intended send time).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(40..=1_048_576))]
    payload: u32,
    /// Spread subscribers over K channels: NAME0..NAME{K-1} (K = 1: the URL's channel).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    channels: u32,
    /// Channel name (or prefix with --channels > 1); default: the URL's channel=, else "bench".
    #[arg(long)]
    channel: Option<String>,
    /// A rate holds when its p99 latency is within this budget and nothing is lost.
    #[arg(long, default_value_t = 1000)]
    p99_budget_ms: u64,
    /// Seconds to wait after the last publish of a rate for frames still on their way
    /// (default: twice the p99 budget, at least 2 s).
    #[arg(long)]
    drain: Option<f64>,
    /// Seconds the warm-up may take before the run starts anyway.
    #[arg(long, default_value_t = 10.0)]
    warmup: f64,
    /// Let socket events accumulate up to this many µs when only a few are ready, so one wake-up
    /// serves many sockets (adds at most this much to a latency reading; 0: off).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    coalesce_us: u64,
    /// Go on with the sweep after a rate that does not hold.
    #[arg(long)]
    keep_going: bool,
}

/// The frame format of a `--pub-ws` publisher.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum PubWsFormat {
    /// The payload itself, one text frame per publish.
    Raw,
    /// ringcast's client publish command.
    Ringcast,
}

/// The control-socket publisher: pipelined newline-delimited JSON, `noreply` publishes.
struct ControlPub {
    fd: OwnedFd,
    out: Vec<u8>,
    out_head: usize,
    input: Vec<u8>,
    next_id: u64,
    replies: u64,
    errors: u64,
    first_error: Option<String>,
    closed: Option<String>,
}

impl ControlPub {
    fn connect(addr: &ControlAddr) -> Result<ControlPub, String> {
        let fd: OwnedFd = match addr {
            ControlAddr::Unix(path) => std::os::unix::net::UnixStream::connect(path)
                .map_err(|e| format!("control socket unix:{path}: {e} (is the server started with --control unix:{path}?)"))?
                .into(),
            ControlAddr::Tcp(a) => {
                let s = std::net::TcpStream::connect(a)
                    .map_err(|e| format!("control socket tcp:{a}: {e} (is the server started with --control tcp:{a}?)"))?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                s.into()
            }
        };
        sys::set_nonblocking(fd.as_raw_fd()).map_err(|e| e.to_string())?;
        Ok(ControlPub {
            fd,
            out: Vec::with_capacity(1 << 16),
            out_head: 0,
            input: Vec::new(),
            next_id: 1,
            replies: 0,
            errors: 0,
            first_error: None,
            closed: None,
        })
    }

    fn backlog(&self) -> usize {
        self.out.len() - self.out_head
    }

    fn publish(&mut self, channel: &str, payload: &[u8]) {
        // The payload is ASCII hex and '.', so it needs no JSON escaping; the channel name is
        // escaped by serde_json to be safe whatever the user passed.
        let id = self.next_id;
        self.next_id += 1;
        let channel = serde_json::to_string(channel).expect("a str always serialises");
        self.out.extend_from_slice(
            format!("{{\"id\":{id},\"method\":\"publish\",\"channel\":{channel},\"text\":\"")
                .as_bytes(),
        );
        self.out.extend_from_slice(payload);
        self.out.extend_from_slice(b"\",\"noreply\":true}\n");
    }

    /// Writes until done or `EAGAIN` (the registration is edge-triggered).
    fn flush(&mut self) {
        while self.backlog() > 0 && self.closed.is_none() {
            match sys::write(self.fd.as_raw_fd(), &self.out[self.out_head..]) {
                Ok(n) => self.out_head += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.closed = Some(format!("control socket write: {e}")),
            }
        }
        if self.out_head == self.out.len() {
            self.out.clear();
            self.out_head = 0;
        } else if self.out_head > (1 << 20) {
            self.out.drain(..self.out_head);
            self.out_head = 0;
        }
    }

    /// Reads replies until `EAGAIN`; counts errors and keeps the first one.
    fn read_replies(&mut self, buf: &mut [u8]) {
        while self.closed.is_none() {
            match sys::read(self.fd.as_raw_fd(), buf) {
                Ok(0) => self.closed = Some("control socket closed by the server".into()),
                Ok(n) => {
                    self.input.extend_from_slice(&buf[..n]);
                    while let Some(end) = self.input.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = self.input.drain(..=end).collect();
                        self.replies += 1;
                        let text = String::from_utf8_lossy(&line);
                        if text.contains("\"error\"") {
                            self.errors += 1;
                            if self.first_error.is_none() {
                                self.first_error = Some(text.trim().to_string());
                            }
                        }
                    }
                    if self.input.len() > REPLY_LINE_BYTES_MAX {
                        self.input.clear();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.closed = Some(format!("control socket read: {e}")),
            }
        }
    }
}

enum Publisher {
    Control(ControlPub),
    /// The pool slot of the publishing WebSocket connection.
    Ws {
        conn: usize,
        frame: Vec<u8>,
        format: PubWsFormat,
    },
}

/// Per-rate accumulators.
struct Phase {
    start_seq: Vec<u64>,
    end_seq: Vec<u64>,
    hist: Histogram<u64>,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    late: u64,
    foreign: u64,
    unparsable: u64,
    complete: usize,
    last_rx_ns: u64,
}

impl Phase {
    fn new(start_seq: Vec<u64>, end_seq: Vec<u64>) -> Phase {
        Phase {
            start_seq,
            end_seq,
            hist: pool::latency_histogram(),
            delivered: 0,
            lost: 0,
            duplicated: 0,
            late: 0,
            foreign: 0,
            unparsable: 0,
            complete: 0,
            last_rx_ns: 0,
        }
    }
}

/// The handler: per-subscriber sequence tracking and the current phase's figures.
struct Receiver {
    subscribers: usize,
    channels: usize,
    trackers: Vec<SeqTracker>,
    phase: Phase,
    publisher_received: u64,
    timer_fired: bool,
    control_ready: bool,
}

impl Handler for Receiver {
    fn message(&mut self, conn: usize, _text: bool, prefix: &[u8], _len: u64, now_ns: u64) {
        if conn >= self.subscribers {
            self.publisher_received += 1;
            return;
        }
        let phase = &mut self.phase;
        let Some(stamp) = payload::decode(prefix) else {
            phase.unparsable += 1;
            return;
        };
        let stream = conn % self.channels;
        if stamp.stream as usize != stream {
            phase.foreign += 1;
            return;
        }
        if stamp.seq < phase.start_seq[stream] {
            // From an earlier rate, after that rate was settled: it was counted lost there.
            phase.late += 1;
            return;
        }
        let tracker = &mut self.trackers[conn];
        let end = phase.end_seq[stream];
        let was_complete = tracker.reached(end);
        match tracker.observe(stamp.seq) {
            Seen::InOrder => {}
            Seen::AfterGap(missing) => phase.lost += missing,
            Seen::Duplicate => {
                phase.duplicated += 1;
                return;
            }
        }
        phase.delivered += 1;
        phase.last_rx_ns = now_ns;
        let us = now_ns.saturating_sub(stamp.sent_ns) / 1000;
        phase.hist.saturating_record(us.max(1));
        if !was_complete && tracker.reached(end) {
            phase.complete += 1;
        }
    }

    fn scenario_event(&mut self, ev: Event) {
        match ev.token {
            TOKEN_TIMER => self.timer_fired = true,
            TOKEN_CONTROL => self.control_ready = true,
            _ => {}
        }
    }
}

/// Everything a run drives.
struct Run {
    pool: Pool,
    rx: Receiver,
    publisher: Publisher,
    timer: Timer,
    channel_names: Vec<String>,
    next_seq: Vec<u64>,
    payload_bytes: usize,
    scratch: Vec<u8>,
    read_buf: Vec<u8>,
    stalls: u64,
    progress: Progress,
}

impl Run {
    fn publisher_backlog(&self) -> usize {
        match &self.publisher {
            Publisher::Control(c) => c.backlog(),
            Publisher::Ws { conn, .. } => self.pool.out_len(*conn),
        }
    }

    fn publisher_failure(&self) -> Option<String> {
        match &self.publisher {
            Publisher::Control(c) => c.closed.clone(),
            Publisher::Ws { conn, .. } => (self.pool.state(*conn) != State::Open)
                .then(|| "the publishing WebSocket connection closed".to_string()),
        }
    }

    /// Publishes the next message of `stream` with intended time `sent_ns`.
    fn publish(&mut self, stream: usize, sent_ns: u64) {
        let stamp = Stamp {
            stream: stream as u32,
            seq: self.next_seq[stream],
            sent_ns,
        };
        self.next_seq[stream] += 1;
        self.scratch.clear();
        payload::encode(stamp, self.payload_bytes, &mut self.scratch);
        match &mut self.publisher {
            Publisher::Control(c) => c.publish(&self.channel_names[stream], &self.scratch),
            Publisher::Ws {
                conn,
                frame,
                format,
            } => {
                frame.clear();
                let mask = self.pool.mask();
                if *format == PubWsFormat::Ringcast {
                    let channel = serde_json::to_string(&self.channel_names[stream])
                        .expect("a str always serialises");
                    let mut cmd = format!("{{\"op\":\"publish\",\"channel\":{channel},\"data\":\"")
                        .into_bytes();
                    cmd.extend_from_slice(&self.scratch);
                    cmd.extend_from_slice(b"\"}");
                    self.scratch = cmd;
                }
                ws::encode_client(ws::opcode::TEXT, &self.scratch, mask, frame);
                let (conn, frame) = (*conn, std::mem::take(frame));
                self.pool.send(conn, &frame);
                if let Publisher::Ws { frame: f, .. } = &mut self.publisher {
                    *f = frame;
                }
            }
        }
    }

    fn flush_publisher(&mut self) {
        if let Publisher::Control(c) = &mut self.publisher {
            c.flush();
        }
    }

    /// One turn of the loop: wait for events up to `timeout_ms`, then service the timer and
    /// the control socket.
    fn turn(&mut self, timeout_ms: i32) -> Result<(), String> {
        self.pool
            .poll(timeout_ms, &mut self.rx)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        if self.rx.timer_fired {
            self.rx.timer_fired = false;
            self.timer.clear();
        }
        if self.rx.control_ready {
            self.rx.control_ready = false;
            if let Publisher::Control(c) = &mut self.publisher {
                c.read_replies(&mut self.read_buf);
                c.flush();
            }
        }
        Ok(())
    }

    fn open_subscribers(&self) -> Vec<usize> {
        (0..self.rx.subscribers)
            .filter(|&i| self.pool.state(i) == State::Open)
            .collect()
    }

    /// Publishes slowly until every open subscriber has received the latest message of its
    /// channel, or `timeout_s` passes. Returns how many subscribers received nothing.
    fn warm_up(&mut self, timeout_s: f64) -> Result<usize, String> {
        let channels = self.rx.channels;
        let open = self.open_subscribers();
        self.rx.phase = Phase::new(vec![1; channels], vec![1; channels]);
        let start = sys::now_ns();
        let deadline = start + (timeout_s * 1e9) as u64;
        let mut last_publish = 0u64;
        let mut next_stream = 0usize;
        let mut published_all = false;
        loop {
            let now = sys::now_ns();
            let caught_up = open
                .iter()
                .filter(|&&i| {
                    let t = self.rx.trackers[i];
                    t.next != 0 && t.next == self.next_seq[i % channels]
                })
                .count();
            if published_all && caught_up == open.len() {
                break;
            }
            if now >= deadline {
                break;
            }
            if let Some(why) = self.publisher_failure() {
                return Err(why);
            }
            // One message in flight at a time (or one per 250 ms when some subscriber is
            // silent), so the warm-up never loads the server.
            let quiet_ns = now - last_publish;
            if (caught_up == open.len() || quiet_ns > 250_000_000) && quiet_ns > 5_000_000 {
                self.publish(next_stream, now);
                self.flush_publisher();
                next_stream = (next_stream + 1) % channels;
                published_all |= next_stream == 0;
                last_publish = now;
            }
            let (done, total) = (caught_up, open.len());
            self.progress.tick(now, || {
                format!("warm-up: {done} of {total} subscribers receiving")
            });
            self.turn(5)?;
        }
        self.progress.clear();
        Ok(open
            .iter()
            .filter(|&&i| self.rx.trackers[i].next == 0)
            .count())
    }

    /// Runs one rate; returns its figures.
    fn run_rate(&mut self, rate: f64, args: &FanoutArgs, drain_s: f64) -> Result<Value, String> {
        let channels = self.rx.channels;
        let count = ((rate * args.duration).round() as u64).max(1);
        let start_seq = self.next_seq.clone();
        let end_seq: Vec<u64> = (0..channels as u64)
            .map(|k| {
                start_seq[k as usize]
                    + count / channels as u64
                    + u64::from(k < count % channels as u64)
            })
            .collect();
        // Everything before this rate is settled: a frame of an earlier rate arriving now is late.
        for i in 0..self.rx.subscribers {
            let k = i % channels;
            self.rx.trackers[i].settle(start_seq[k]);
        }
        let open = self.open_subscribers();
        let expected_per_stream: Vec<u64> =
            (0..channels).map(|k| end_seq[k] - start_seq[k]).collect();
        let expected: u64 = open
            .iter()
            .map(|&i| expected_per_stream[i % channels])
            .sum();
        self.rx.phase = Phase::new(start_seq.clone(), end_seq.clone());
        let dropped_before = self.pool.stats.dropped;
        let pid = args.common.server_pid;

        let interval_ns = 1e9 / rate;
        let t0 = sys::now_ns() + 2_000_000;
        let due = |i: u64| t0 + (i as f64 * interval_ns) as u64;
        let schedule_end = due(count - 1);
        let drain_ns = (drain_s * 1e9) as u64;
        // Bound the phase whatever happens: the schedule, the drain, and 10 s of slack.
        let hard_stop = schedule_end + drain_ns + 10_000_000_000;
        let (srv0, gen0) = (scenario::server_cpu(pid), scenario::self_cpu());
        let mut sent = 0u64;
        let mut armed_for = 0u64;
        let mut failure: Option<String> = None;
        loop {
            let now = sys::now_ns();
            while sent < count && due(sent) <= now {
                if self.publisher_backlog() > PUBLISH_BACKLOG_BYTES_MAX {
                    self.stalls += 1;
                    break;
                }
                self.publish((sent % channels as u64) as usize, due(sent));
                sent += 1;
            }
            self.flush_publisher();
            if sent == count
                && (self.rx.phase.complete >= open.len() || now >= schedule_end + drain_ns)
            {
                break;
            }
            if now >= hard_stop {
                failure = Some(format!(
                    "stopped at the phase time limit with {} of {count} published",
                    sent
                ));
                break;
            }
            if let Some(why) = self.publisher_failure() {
                failure = Some(why);
                break;
            }
            let timeout_ms = if sent < count {
                let next = due(sent);
                if next != armed_for && next > now {
                    self.timer
                        .arm_at(next)
                        .map_err(|e| format!("timerfd: {e}"))?;
                    armed_for = next;
                }
                // The timer wakes us when the next publish is due; the timeout is a backstop.
                if next <= now { 0 } else { 100 }
            } else {
                50
            };
            let ph = &self.rx.phase;
            self.progress.tick(now, || {
                let p99 = if ph.hist.is_empty() { "-".into() } else { human_us(ph.hist.value_at_quantile(0.99)) };
                format!(
                    "rate {rate}/s: published {}/{count}, delivered {}, lost {}, p99 so far {p99}, {} open",
                    human_count(sent),
                    human_count(ph.delivered),
                    human_count(ph.lost),
                    human_count(self.pool.stats.open_now)
                )
            });
            self.turn(timeout_ms)?;
        }
        let (srv1, gen1) = (scenario::server_cpu(pid), scenario::self_cpu());
        self.progress.clear();

        // What has not arrived by now is lost (subscribers that disconnected included).
        let mut lost_at_end = 0;
        for &i in &open {
            lost_at_end += self.rx.trackers[i].settle(self.next_seq[i % channels]);
        }
        let ph = &self.rx.phase;
        let published = sent;
        let expected = if sent == count {
            expected
        } else {
            open.iter()
                .map(|&i| self.next_seq[i % channels] - start_seq[i % channels])
                .sum()
        };
        let lost = ph.lost + lost_at_end;
        let window_ns = ph.last_rx_ns.max(schedule_end).saturating_sub(t0).max(1);
        let delivered_per_s = ph.delivered as f64 / (window_ns as f64 / 1e9);
        let server_cpu = scenario::core_fraction(srv0, srv1);
        let generator_cpu = scenario::round3(gen0.core_fraction_until(&gen1));
        let p99_ms = if ph.hist.is_empty() {
            f64::INFINITY
        } else {
            ph.hist.value_at_quantile(0.99) as f64 / 1000.0
        };
        let dropped = self.pool.stats.dropped - dropped_before;
        let mut reasons = Vec::new();
        if let Some(f) = failure {
            reasons.push(f);
        }
        if lost > 0 {
            reasons.push(format!("{lost} lost"));
        }
        if ph.duplicated > 0 {
            reasons.push(format!("{} duplicated", ph.duplicated));
        }
        if dropped > 0 {
            reasons.push(format!("{dropped} subscribers disconnected"));
        }
        if p99_ms > args.p99_budget_ms as f64 {
            reasons.push(format!(
                "p99 {p99_ms:.1} ms over the {} ms budget",
                args.p99_budget_ms
            ));
        }
        Ok(json!({
            "rate": rate,
            "duration_s": args.duration,
            "subscribers": open.len(),
            "published": published,
            "expected": expected,
            "delivered": ph.delivered,
            "lost": lost,
            "duplicated": ph.duplicated,
            "late": ph.late,
            "foreign": ph.foreign,
            "unparsable": ph.unparsable,
            "disconnected": dropped,
            "delivered_per_s": delivered_per_s.round(),
            "latency_us": report::percentiles(&ph.hist),
            "server_cpu": server_cpu,
            "generator_cpu": generator_cpu,
            "generator_bound": generator_cpu >= 0.95,
            "publisher_stalls": self.stalls,
            "held": reasons.is_empty(),
            "not_held_because": reasons,
        }))
    }
}

fn cpu_cell(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |c| format!("{c:.2}"))
}

/// Runs the scenario.
pub fn run(args: FanoutArgs) -> Result<(), String> {
    let rates = target::parse_rates(&args.rate)?;
    if !(args.duration > 0.0 && args.duration <= 3600.0) {
        return Err("--duration must be within (0, 3600] s".into());
    }
    if !(args.warmup > 0.0 && args.warmup <= 600.0) {
        return Err("--warmup must be within (0, 600] s".into());
    }
    if args.p99_budget_ms == 0 || args.p99_budget_ms > 600_000 {
        return Err("--p99-budget-ms must be within [1, 600000]".into());
    }
    let drain_s = args
        .drain
        .unwrap_or((2.0 * args.p99_budget_ms as f64 / 1000.0).max(2.0));
    if !(0.0..=600.0).contains(&drain_s) {
        return Err("--drain must be within [0, 600] s".into());
    }
    if args.control.is_none() && !args.pub_ws {
        return Err("fanout needs a publisher: --control unix:PATH|tcp:ADDR or --pub-ws".into());
    }
    let channels = args.channels as usize;
    let named_channels = args.control.is_some() || args.pub_ws_format == PubWsFormat::Ringcast;
    if !named_channels && channels > 1 {
        return Err(
            "--channels > 1 needs --control or --pub-ws-format ringcast (a raw publisher has no channel)".into(),
        );
    }
    let setup = scenario::prepare(&args.common, u64::from(args.pub_ws))?;
    let host = scenario::host_info(&setup);
    let Setup {
        url,
        sources,
        mut progress,
        ..
    } = setup;
    let pub_url = match &args.pub_url {
        Some(u) => {
            let p = target::parse_ws_url(u)?;
            if p.addr != url.addr {
                return Err(format!(
                    "--pub-url must be on the same address as --url ({})",
                    url.addr
                ));
            }
            Some(p)
        }
        None => args.pub_ws.then(|| url.clone()),
    };

    let base = args
        .channel
        .clone()
        .or_else(|| url.channel().map(str::to_string))
        .unwrap_or_else(|| "bench".into());
    let channel_names: Vec<String> = if channels == 1 {
        vec![base.clone()]
    } else {
        (0..channels).map(|k| format!("{base}{k}")).collect()
    };
    // With a control publisher the subscribers' URL names their channel; a --pub-ws run keeps
    // the URL as given (a peer server may have no channels at all).
    let paths: Vec<String> = if named_channels {
        channel_names
            .iter()
            .map(|c| url.path_with_channel(c))
            .collect()
    } else {
        vec![url.path.clone()]
    };

    let n = args.common.connections as usize;
    let slots = n + usize::from(args.pub_ws);
    let mut pool = Pool::new(url, slots, sources).map_err(|e| format!("epoll: {e}"))?;
    pool.set_coalesce(args.coalesce_us * 1000);
    let timer = Timer::new().map_err(|e| format!("timerfd: {e}"))?;
    pool.poller()
        .add(timer.raw_fd(), TOKEN_TIMER, Interest::Read)
        .map_err(|e| format!("epoll_ctl: {e}"))?;
    let mut rx = Receiver {
        subscribers: n,
        channels,
        trackers: vec![SeqTracker::default(); n],
        phase: Phase::new(vec![1; channels], vec![1; channels]),
        publisher_received: 0,
        timer_fired: false,
        control_ready: false,
    };

    let t0 = sys::now_ns();
    let deadline = t0 + (args.common.connect_timeout_s * 1e9) as u64;
    let concurrency = args.common.concurrency as usize;
    pool.open(
        0..n,
        concurrency,
        &|i| paths[(i % channels) % paths.len()].clone(),
        deadline,
        &mut rx,
        &mut progress,
    )
    .map_err(|e| format!("epoll_wait: {e}"))?;
    let connect_s = (sys::now_ns() - t0) as f64 / 1e9;
    if pool.stats.opened == 0 {
        scenario::print_errors(&pool.stats);
        return Err("no subscriber could connect".into());
    }
    let publisher = if let Some(pub_url) = &pub_url {
        let path = pub_url.path.clone();
        let deadline = sys::now_ns() + 10_000_000_000;
        pool.open(
            n..n + 1,
            1,
            &|_| path.clone(),
            deadline,
            &mut rx,
            &mut progress,
        )
        .map_err(|e| format!("epoll_wait: {e}"))?;
        if pool.state(n) != State::Open {
            scenario::print_errors(&pool.stats);
            return Err("the publishing WebSocket connection did not open".into());
        }
        Publisher::Ws {
            conn: n,
            frame: Vec::new(),
            format: args.pub_ws_format,
        }
    } else {
        let addr = target::parse_control(args.control.as_deref().expect("checked above"))?;
        let c = ControlPub::connect(&addr)?;
        pool.poller()
            .add(c.fd.as_raw_fd(), TOKEN_CONTROL, Interest::EdgeBoth)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
        Publisher::Control(c)
    };

    let mut run = Run {
        pool,
        rx,
        publisher,
        timer,
        channel_names,
        next_seq: vec![1; channels],
        payload_bytes: args.payload as usize,
        scratch: Vec::new(),
        read_buf: vec![0; 64 * 1024],
        stalls: 0,
        progress,
    };
    let silent = run.warm_up(args.warmup)?;
    if silent > 0 {
        eprintln!(
            "ringcast-load: warning: {silent} subscribers received nothing during the {} s warm-up \
             (not subscribed? wrong channel?); their frames count as lost",
            args.warmup
        );
    }

    let run_cpu0: (Option<CpuSample>, CpuSample) = (
        scenario::server_cpu(args.common.server_pid),
        scenario::self_cpu(),
    );
    let mut results = Vec::new();
    let mut highest_held: Option<f64> = None;
    for &rate in &rates {
        let r = run.run_rate(rate, &args, drain_s)?;
        let held = r["held"].as_bool() == Some(true);
        if held {
            highest_held = Some(highest_held.map_or(rate, |h: f64| h.max(rate)));
        }
        results.push(r);
        if !held && !args.keep_going {
            break;
        }
    }
    let run_cpu1 = (
        scenario::server_cpu(args.common.server_pid),
        scenario::self_cpu(),
    );
    scenario::close(&mut run.pool, &mut run.progress)?;

    let control_errors = match &run.publisher {
        Publisher::Control(c) => {
            json!({"replies": c.replies, "errors": c.errors, "first_error": c.first_error})
        }
        Publisher::Ws { .. } => json!({"publisher_received": run.rx.publisher_received}),
    };
    let server_cpu = scenario::core_fraction(run_cpu0.0, run_cpu1.0);
    let generator_cpu = scenario::round3(run_cpu0.1.core_fraction_until(&run_cpu1.1));
    let result = json!({
        "scenario": "fanout",
        "params": &args,
        "host": host,
        "publisher": if args.pub_ws { "ws" } else { "control" },
        "channels": run.channel_names,
        "connect_seconds": scenario::round3(connect_s),
        "connections": scenario::pool_json(&run.pool.stats),
        "warmup_silent_subscribers": silent,
        "publisher_replies": control_errors,
        "rates": results,
        "p99_budget_ms": args.p99_budget_ms,
        "highest_held_rate": highest_held,
        "server_cpu": server_cpu,
        "generator_cpu": generator_cpu,
    });

    println!(
        "fanout: {} subscribers on {} channel(s), {}-byte payloads, {} s per rate, p99 budget {} ms",
        human_count(run.pool.stats.opened.min(n as u64)),
        channels,
        args.payload,
        args.duration,
        args.p99_budget_ms
    );
    let mut rows = Vec::new();
    for r in result["rates"].as_array().expect("built above") {
        let lat = &r["latency_us"];
        let q = |k: &str| lat[k].as_u64().map_or("-".to_string(), human_us);
        let gen_cell = format!(
            "{}{}",
            cpu_cell(&r["generator_cpu"]),
            if r["generator_bound"].as_bool() == Some(true) {
                " (generator-bound)"
            } else {
                ""
            }
        );
        rows.push(vec![
            format!("{}", r["rate"].as_f64().unwrap_or(0.0)),
            human_count(r["published"].as_u64().unwrap_or(0)),
            human_count(r["delivered"].as_u64().unwrap_or(0)),
            human_count(r["lost"].as_u64().unwrap_or(0)),
            human_count(r["duplicated"].as_u64().unwrap_or(0)),
            human_count(r["delivered_per_s"].as_f64().unwrap_or(0.0) as u64),
            q("p50"),
            q("p90"),
            q("p99"),
            q("p999"),
            q("max"),
            cpu_cell(&r["server_cpu"]),
            gen_cell,
            if r["held"].as_bool() == Some(true) {
                "yes".into()
            } else {
                "no".into()
            },
        ]);
    }
    print!(
        "{}",
        report::table(
            &[
                "rate/s",
                "published",
                "delivered",
                "lost",
                "dup",
                "delivered/s",
                "p50",
                "p90",
                "p99",
                "p99.9",
                "max",
                "server_cpu",
                "generator_cpu",
                "held"
            ],
            &rows
        )
    );
    for r in result["rates"].as_array().expect("built above") {
        if let Some(why) = r["not_held_because"].as_array().filter(|a| !a.is_empty()) {
            let why: Vec<&str> = why.iter().filter_map(Value::as_str).collect();
            println!("rate {}: not held: {}", r["rate"], why.join("; "));
        }
    }
    match highest_held {
        Some(r) => println!(
            "highest rate held (p99 ≤ {} ms, nothing lost): {r}/s",
            args.p99_budget_ms
        ),
        None => println!(
            "no rate held (p99 ≤ {} ms, nothing lost)",
            args.p99_budget_ms
        ),
    }
    if let Publisher::Control(c) = &run.publisher
        && let Some(e) = &c.first_error
    {
        println!("control socket: {} error replies, first: {e}", c.errors);
    }
    scenario::print_errors(&run.pool.stats);
    if let Some(path) = &args.common.json {
        report::write_json(path, &result)?;
    }
    Ok(())
}
