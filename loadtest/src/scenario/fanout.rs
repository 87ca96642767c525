//! `fanout`: N subscribers, one publisher, a fixed rate or a sweep of rates — and the engine
//! that `slow` and `chat` run on.
//!
//! Method. Subscribers connect first. Each publish arrives as one message, either as the payload
//! itself (a raw frame: ringcast's `format=raw`, or a peer server) or in ringcast's JSON envelope
//! (the `/ws` default); each connection's format is taken from its URL's `format=` or from its
//! first message (`delivery`), and the report says which was seen. On ringcast, subscribers whose
//! URL names no channel and asks for the envelope subscribe with the client command after the
//! upgrade and count as ready only once the `subscribed` reply is in. A warm-up then publishes one
//! message per channel at a time until every subscriber has received something on its channel and
//! caught up, so a subscription still being set up is never counted as loss. Each rate then runs
//! for `--duration`: publish `i` is due at `t0 + i / rate` and carries that intended time, not the
//! moment it was written, so a late publisher or a backed-up server shows as latency instead of
//! fewer samples (no coordinated omission). After the last publish the generator waits until every
//! subscriber has everything or the drain time passes; whatever has not arrived then is lost.
//! Latency = receive time (one clock read per socket read) − intended time, in µs, into an
//! HdrHistogram. A rate "holds" when nothing was lost or duplicated and p99 stayed within
//! `--p99-budget-ms`; a sweep stops at the first rate that does not hold unless `--keep-going`.
//!
//! Publishers: `--control unix:PATH|tcp:ADDR` sends pipelined `noreply` JSON publishes on
//! ringcast's control socket; `--pub-ws` sends the payload as a text frame on its own WebSocket
//! connection (`--pub-url`), for servers that broadcast what a client sends; `--pub-http URL`
//! sends the payload as the body of a `POST` to `URL` on one pipelined keep-alive HTTP/1.1
//! connection, for servers that publish over HTTP (non-2xx answers count as publish errors).
//!
//! The engine (`execute`) runs a `Plan`: the channels and the URL path of each, the publisher,
//! and which subscribers go slow. A slow subscriber (`slow`) leaves the epoll set after the
//! warm-up and is not read again until every rate is done; it is left out of every delivery
//! figure, and at the end it is read again to see how the server closed it. `chat` is the same
//! engine with many small channels. With `--server-pid`, the server's VmRSS is sampled every
//! 500 ms for the whole run.
//!
//! Event-stream load (ringcast; docs/control.md, "Event stream"): `--stalled-consumer` makes a
//! control connection a consumer of every event type (`{"method":"events"}`, answered once
//! every shard routes to it) before the subscribers connect, and then never reads its socket —
//! a backend that hangs. The subscribers' own connects and subscribes already owe it a few MB;
//! `--churn-per-s R` adds R connections per second that open, stay `--churn-hold-ms`, and close
//! with the close handshake beside the subscribers (no channel, nothing to read) from the
//! warm-up to the last rate, so events keep coming while the consumer is stalled. A run with
//! the same churn and no consumer is the baseline: the latency ratio between the two is what a
//! stalled consumer costs the fan-out. The server's event counters over the run (`stats`:
//! `events_sent`, `events_delivered`, `events_dropped`) are reported.

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

use crate::Common;
use crate::delivery::{self, Delivery, Format};
use crate::envelope;
use crate::payload::{self, Seen, SeqTracker, Stamp};
use crate::plot;
use crate::pool::{self, Ending, Handler, Pool, State, TOKEN_SCENARIO};
use crate::procfs::{CpuSample, RssSeries};
use crate::report::{self, Progress, human_count, human_us};
use crate::scenario::control::{self, ControlPub, EventConsumer};
use crate::scenario::http_pub::HttpPub;
use crate::scenario::{self, Setup};
use crate::sys::{self, Event, Interest, Timer};
use crate::target::{self, ControlAddr, HttpUrl, WsUrl};
use crate::ws;

const TOKEN_TIMER: u64 = TOKEN_SCENARIO;
/// The control socket or the HTTP publisher's connection.
const TOKEN_PUBLISHER: u64 = TOKEN_SCENARIO + 1;
/// Publisher output above this is not added to until the server reads: the schedule keeps its
/// intended times, so the wait shows up as latency.
const PUBLISH_BACKLOG_BYTES_MAX: usize = 4 << 20;
/// How often the server's VmRSS is sampled (`--server-pid`).
const RSS_INTERVAL_NS: u64 = 500_000_000;

/// Flags of every scenario that publishes on a schedule (`fanout`, `slow`, `chat`).
#[derive(Args, Debug, Clone, Serialize)]
pub struct Schedule {
    /// Publishes per second, or a comma list for a sweep (e.g. 1000,2000,5000; 2k = 2000).
    #[arg(long, default_value = "100")]
    pub rate: String,
    /// Seconds of publishing per rate.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Payload bytes per publish (at least 40: stream, sequence number, intended send time).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(40..=1_048_576))]
    pub payload: u32,
    /// What pads each payload past its 40-byte header: `dots`, or `json` (a JSON document of
    /// varied events, at least 48 bytes, for measuring permessage-deflate on realistic pushes).
    #[arg(long, value_enum, default_value = "dots")]
    pub fill: payload::Fill,
    /// A rate holds when its p99 latency is within this budget and nothing is lost.
    #[arg(long, default_value_t = 1000)]
    pub p99_budget_ms: u64,
    /// Seconds to wait after the last publish of a rate for frames still on their way
    /// (default: twice the p99 budget, at least 2 s).
    #[arg(long)]
    pub drain: Option<f64>,
    /// Seconds the warm-up may take before the run starts anyway.
    #[arg(long, default_value_t = 10.0)]
    pub warmup: f64,
    /// Let socket events accumulate up to this many µs when only a few are ready, so one wake-up
    /// serves many sockets (adds at most this much to a latency reading; 0: off).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub coalesce_us: u64,
    /// Go on with the sweep after a rate that does not hold.
    #[arg(long)]
    pub keep_going: bool,
    /// Draw latency p50/p99/p99.9 against publish rate into this SVG file.
    #[arg(long)]
    pub plot: Option<String>,
}

impl Schedule {
    /// Checks the flags; returns the rates and the drain time in seconds.
    pub fn check(&self) -> Result<(Vec<f64>, f64), String> {
        let rates = target::parse_rates(&self.rate)?;
        if !(self.duration > 0.0 && self.duration <= 3600.0) {
            return Err("--duration must be within (0, 3600] s".into());
        }
        if !(self.warmup > 0.0 && self.warmup <= 600.0) {
            return Err("--warmup must be within (0, 600] s".into());
        }
        if self.fill == payload::Fill::Json && (self.payload as usize) < payload::JSON_MIN {
            return Err(format!(
                "--fill json needs --payload of at least {} bytes",
                payload::JSON_MIN
            ));
        }
        if self.p99_budget_ms == 0 || self.p99_budget_ms > 600_000 {
            return Err("--p99-budget-ms must be within [1, 600000]".into());
        }
        let drain_s = self
            .drain
            .unwrap_or((2.0 * self.p99_budget_ms as f64 / 1000.0).max(2.0));
        if !(0.0..=600.0).contains(&drain_s) {
            return Err("--drain must be within [0, 600] s".into());
        }
        Ok((rates, drain_s))
    }
}

/// Flags of `fanout` (and of `slow`, which adds its own).
#[derive(Args, Debug, Clone, Serialize)]
pub struct FanoutArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// Publish through ringcast's control socket: unix:PATH or tcp:HOST:PORT.
    #[arg(long, conflicts_with_all = ["pub_ws", "pub_http"])]
    control: Option<String>,
    /// Publish as a WebSocket client sending the payload frames (servers that broadcast what a
    /// client sends).
    #[arg(long, conflicts_with = "pub_http")]
    pub_ws: bool,
    /// Publish as an HTTP/1.1 client: each payload is the body of a POST to this
    /// http://HOST:PORT/PATH, pipelined on one keep-alive connection (non-2xx answers count as
    /// publish errors).
    #[arg(long, value_name = "URL")]
    pub_http: Option<String>,
    /// With --pub-http on the Pusher HTTP API (`http://HOST:PORT/apps/ID/events`): the app's
    /// key; each publish is then a Pusher event `bench` on the channel, signed as the Pusher
    /// server SDKs sign it, and subscribers on `ws://HOST:PORT/app/KEY?protocol=7` join with
    /// `pusher:subscribe`.
    #[arg(long, requires_all = ["pub_http", "pusher_secret"])]
    pusher_key: Option<String>,
    /// The app's secret (with --pusher-key); not written to the report.
    #[arg(long, requires = "pusher_key")]
    #[serde(skip)]
    pusher_secret: Option<String>,
    /// What a --pub-ws publisher sends: `raw` (the payload as a text frame) or `ringcast`
    /// (`{"op":"publish","channel":C,"data":"PAYLOAD"}`, for namespaces with client publish).
    #[arg(long, value_enum, default_value = "raw", requires = "pub_ws")]
    pub_ws_format: PubWsFormat,
    /// URL of the publishing WebSocket connection (default: --url); same host and port.
    #[arg(long, requires = "pub_ws")]
    pub_url: Option<String>,
    /// Spread subscribers over K channels: NAME0..NAME{K-1} (K = 1: the URL's channel).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    channels: u32,
    /// Channel name (or prefix with --channels > 1); default: the URL's channel=, else "bench".
    /// With --control or --pub-ws-format ringcast and a URL without channel=: a format=raw URL
    /// gets channel= added; otherwise (the JSON envelope) each subscriber sends
    /// {"op":"subscribe","channel":C} after the upgrade and is ready at its `subscribed` reply.
    #[arg(long)]
    channel: Option<String>,
    /// Before the subscribers connect, make a control connection (on --control) a consumer of
    /// every event type, then never read it: a stalled backend.
    #[arg(long, requires = "control")]
    stalled_consumer: bool,
    /// Connections per second that open and close beside the subscribers, from the warm-up to
    /// the last rate (they join no channel): events for the event stream (0: none).
    #[arg(long, default_value_t = 0.0)]
    churn_per_s: f64,
    /// How long each churn connection stays open before its close handshake (ms).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    churn_hold_ms: u64,
    #[command(flatten)]
    #[serde(flatten)]
    pub schedule: Schedule,
}

/// The frame format of a `--pub-ws` publisher.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PubWsFormat {
    /// The payload itself, one text frame per publish.
    Raw,
    /// ringcast's client publish command.
    Ringcast,
}

/// Who publishes.
pub enum PublisherSpec {
    /// ringcast's control socket.
    Control(ControlAddr),
    /// A WebSocket client on its own connection to `url`.
    Ws {
        /// Where it connects (same address as the subscribers).
        url: WsUrl,
        /// What it sends.
        format: PubWsFormat,
    },
    /// An HTTP client POSTing each payload to `url`; with Pusher credentials, each as a signed
    /// Pusher HTTP API event.
    Http(HttpUrl, Option<crate::scenario::http_pub::PusherAuth>),
}

/// A run of the engine: everything the scenarios built on it differ in.
pub struct Plan<'a> {
    /// "fanout", "slow" or "chat", for the JSON.
    pub scenario: &'static str,
    /// The scenario's flags, for the JSON.
    pub params: Value,
    /// Connections, URL, server pid, output.
    pub common: &'a Common,
    /// Rates and their timing.
    pub schedule: &'a Schedule,
    /// Who publishes.
    pub publisher: PublisherSpec,
    /// Channel (stream) names; subscriber `i` is on `payload::stream_of(i, len)`.
    pub channel_names: Vec<String>,
    /// The URL path (with query) of each channel's subscribers; one entry: all the same.
    pub paths: Vec<String>,
    /// Each subscriber sends `{"op":"subscribe","channel":C}` for its channel after the upgrade
    /// (its URL names none) and is ready once the `subscribed` reply names it.
    pub subscribe_by_command: bool,
    /// Subscribers that stop reading after the warm-up (empty: none).
    pub slow: Vec<bool>,
    /// Seconds to read the slow subscribers at the end.
    pub slow_read_s: f64,
    /// `SO_RCVBUF` of the slow subscribers' sockets (0: the kernel's default, autotuned).
    pub slow_rcvbuf_bytes: u32,
    /// A stalled event consumer, churn beside the subscribers.
    pub extras: Extras,
}

/// What a run may add beside its subscribers and publisher (`fanout --stalled-consumer`,
/// `--churn-per-s`).
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Where the stalled event consumer connects (`None`: no consumer).
    pub stalled_consumer: Option<ControlAddr>,
    /// Churn connections per second (0: none).
    pub churn_per_s: f64,
    /// How long each churn connection stays open (ns).
    pub churn_hold_ns: u64,
}

impl Extras {
    /// Pool slots the churn needs: the connections alive at once at the rate (held, plus up
    /// to a second to connect and close), and some slack. 0 without churn.
    fn churn_slots(&self) -> usize {
        if self.churn_per_s <= 0.0 {
            return 0;
        }
        (self.churn_per_s * (self.churn_hold_ns as f64 / 1e9 + 1.0)).ceil() as usize + 16
    }
}

/// Checks the `fanout` flags for the extras and builds them.
pub fn extras(args: &FanoutArgs) -> Result<Extras, String> {
    if !(args.churn_per_s >= 0.0 && args.churn_per_s <= 10_000.0) {
        return Err("--churn-per-s must be within [0, 10000]".into());
    }
    let stalled_consumer = if args.stalled_consumer {
        let control = args
            .control
            .as_deref()
            .ok_or("--stalled-consumer needs --control")?;
        Some(target::parse_control(control)?)
    } else {
        None
    };
    Ok(Extras {
        stalled_consumer,
        churn_per_s: args.churn_per_s,
        churn_hold_ns: args.churn_hold_ms * 1_000_000,
    })
}

/// Connections that open and close at a fixed rate in pool slots of their own.
struct Churn {
    /// The free slots (`New`).
    free: Vec<usize>,
    /// Started slots and when each was started.
    live: Vec<(usize, u64)>,
    path: String,
    interval_ns: f64,
    hold_ns: u64,
    t0: u64,
    /// Connections due so far (started or skipped).
    due: u64,
    active: bool,
    /// Due when no slot was free.
    skipped: u64,
    started: u64,
    /// Not upgraded within the connect timeout (abandoned).
    abandoned: u64,
}

impl Churn {
    fn new(slots: std::ops::Range<usize>, path: String, per_s: f64, hold_ns: u64) -> Churn {
        Churn {
            free: slots.rev().collect(),
            live: Vec::new(),
            path,
            interval_ns: 1e9 / per_s,
            hold_ns,
            t0: 0,
            due: 0,
            active: false,
            skipped: 0,
            started: 0,
            abandoned: 0,
        }
    }

    fn start(&mut self, now_ns: u64) {
        self.t0 = now_ns;
        self.active = true;
    }

    /// Starts the connections due by `now_ns`, closes those held long enough, frees the closed.
    fn service(&mut self, pool: &mut Pool, now_ns: u64, connect_timeout_ns: u64) {
        while self.active && self.t0 + (self.due as f64 * self.interval_ns) as u64 <= now_ns {
            self.due += 1;
            match self.free.pop() {
                Some(i) => {
                    pool.start(i, &self.path);
                    self.live.push((i, now_ns));
                    self.started += 1;
                }
                None => self.skipped += 1,
            }
        }
        let Churn {
            live,
            free,
            hold_ns,
            abandoned,
            ..
        } = self;
        live.retain(|&(i, at)| match pool.state(i) {
            State::Open if now_ns >= at + *hold_ns => {
                pool.begin_close(i);
                true
            }
            State::Connecting | State::Handshaking if now_ns >= at + connect_timeout_ns => {
                pool.abort(i, false);
                *abandoned += 1;
                pool.recycle(i);
                free.push(i);
                false
            }
            State::Closed => {
                pool.recycle(i);
                free.push(i);
                false
            }
            _ => true,
        });
    }
}

/// The publisher in use.
enum Publisher {
    Control(ControlPub),
    /// The pool slot of the publishing WebSocket connection.
    Ws {
        conn: usize,
        frame: Vec<u8>,
        format: PubWsFormat,
    },
    Http(HttpPub),
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

/// How a subscriber stands with its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Join {
    /// Its URL names the channel: subscribed by the upgrade itself.
    Url,
    /// The subscribe command is sent (or waits for the upgrade); no reply yet.
    Pending,
    /// The `subscribed` reply named its channel.
    Subscribed,
    /// The subscribe was answered with an error.
    Refused,
}

/// The handler: per-subscriber format, subscription and sequence tracking, the current
/// phase's figures, the slow subscribers' counts and the server's memory series.
struct Receiver {
    subscribers: usize,
    /// Slots from here up are churn connections (their messages are only counted).
    churn_from: usize,
    churn_messages: u64,
    channels: usize,
    /// Channel names by stream, to match a `subscribed` reply to its subscriber.
    channel_names: Vec<String>,
    /// Each subscriber's message format (from its URL, or settled by its first message).
    formats: Vec<Format>,
    joins: Vec<Join>,
    /// `{"op":"error"}` replies on subscriber connections.
    error_replies: u64,
    trackers: Vec<SeqTracker>,
    /// Subscribers that stop reading after the warm-up (empty: none).
    slow: Vec<bool>,
    /// Set when the slow subscribers stopped reading: what they receive from then on (when they
    /// are read again at the end) is only counted, in `slow_messages` and `slow_bytes`.
    slow_stopped: bool,
    slow_messages: Vec<u64>,
    slow_bytes: u64,
    phase: Phase,
    publisher_received: u64,
    timer_fired: bool,
    publisher_ready: bool,
    rss: Option<RssSeries>,
}

impl Handler for Receiver {
    fn message(&mut self, conn: usize, _text: bool, prefix: &[u8], len: u64, now_ns: u64) {
        if conn >= self.churn_from {
            self.churn_messages += 1;
            return;
        }
        if conn >= self.subscribers {
            self.publisher_received += 1;
            return;
        }
        if self.slow_stopped && self.slow.get(conn) == Some(&true) {
            self.slow_messages[conn] += 1;
            self.slow_bytes += len;
            return;
        }
        let stream = payload::stream_of(conn, self.channels);
        let data = match delivery::read(&mut self.formats[conn], prefix) {
            Delivery::Payload(data) => data,
            Delivery::Subscribed(channel) => {
                if self.joins[conn] == Join::Pending
                    && channel == self.channel_names[stream].as_bytes()
                {
                    self.joins[conn] = Join::Subscribed;
                }
                return;
            }
            Delivery::Error => {
                self.error_replies += 1;
                if self.joins[conn] == Join::Pending {
                    self.joins[conn] = Join::Refused;
                }
                return;
            }
            Delivery::Other => return,
            Delivery::Unparsable => {
                self.phase.unparsable += 1;
                return;
            }
        };
        let phase = &mut self.phase;
        let Some(stamp) = payload::decode(data) else {
            phase.unparsable += 1;
            return;
        };
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
            TOKEN_PUBLISHER => self.publisher_ready = true,
            _ => {}
        }
    }

    fn after_poll(&mut self, now_ns: u64) {
        if let Some(rss) = &mut self.rss {
            rss.poll(now_ns);
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
    fill: payload::Fill,
    scratch: Vec<u8>,
    read_buf: Vec<u8>,
    stalls: u64,
    progress: Progress,
    /// Start of the run (the RSS series and the timeline count from here).
    t_start: u64,
    /// Phase names and when they started, ms since `t_start`.
    timeline: Vec<(String, u64)>,
    /// Connections opening and closing beside the subscribers (`--churn-per-s`).
    churn: Option<Churn>,
    connect_timeout_ns: u64,
}

impl Run {
    /// Notes the start of a phase in the timeline (and takes an RSS sample there).
    fn mark(&mut self, name: impl Into<String>) {
        let now = sys::now_ns();
        self.timeline
            .push((name.into(), (now - self.t_start) / 1_000_000));
        if let Some(rss) = &mut self.rx.rss {
            rss.sample_now(now);
        }
    }

    fn publisher_backlog(&self) -> usize {
        match &self.publisher {
            Publisher::Control(c) => c.backlog(),
            Publisher::Ws { conn, .. } => self.pool.out_len(*conn),
            Publisher::Http(h) => h.backlog(),
        }
    }

    fn publisher_failure(&self) -> Option<String> {
        match &self.publisher {
            Publisher::Control(c) => c.closed.clone(),
            Publisher::Ws { conn, .. } => (self.pool.state(*conn) != State::Open)
                .then(|| "the publishing WebSocket connection closed".to_string()),
            Publisher::Http(h) => h.closed.clone(),
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
        payload::encode_with(stamp, self.payload_bytes, self.fill, &mut self.scratch);
        match &mut self.publisher {
            Publisher::Control(c) => c.publish(&self.channel_names[stream], &self.scratch),
            Publisher::Http(h) => h.publish(&self.scratch),
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
                    payload::push_json_string_body(&self.scratch, &mut cmd);
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
        match &mut self.publisher {
            Publisher::Control(c) => c.flush(),
            Publisher::Http(h) => h.flush(),
            Publisher::Ws { .. } => {}
        }
    }

    /// Publishes answered with an error so far (control error replies, non-2xx HTTP statuses).
    fn publish_errors(&self) -> u64 {
        match &self.publisher {
            Publisher::Control(c) => c.errors,
            Publisher::Http(h) => h.errors,
            Publisher::Ws { .. } => 0,
        }
    }

    /// One turn of the loop: wait for events up to `timeout_ms`, then service the timer and
    /// the control socket.
    fn turn(&mut self, timeout_ms: i32) -> Result<(), String> {
        // With churn, wake up at least every 10 ms to start the connections due.
        let timeout_ms = if self.churn.as_ref().is_some_and(|c| c.active) {
            timeout_ms.min(10)
        } else {
            timeout_ms
        };
        self.pool
            .poll(timeout_ms, &mut self.rx)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        if let Some(churn) = &mut self.churn {
            churn.service(&mut self.pool, sys::now_ns(), self.connect_timeout_ns);
        }
        if self.rx.timer_fired {
            self.rx.timer_fired = false;
            self.timer.clear();
        }
        if self.rx.publisher_ready {
            self.rx.publisher_ready = false;
            match &mut self.publisher {
                Publisher::Control(c) => {
                    c.read_replies(&mut self.read_buf);
                    c.flush();
                }
                Publisher::Http(h) => {
                    h.read_responses(&mut self.read_buf);
                    h.flush();
                }
                Publisher::Ws { .. } => {}
            }
        }
        Ok(())
    }

    fn is_slow(&self, i: usize) -> bool {
        self.rx.slow.get(i) == Some(&true)
    }

    /// Open subscribers that are subscribed (by URL, or by command once the reply came), the
    /// slow ones included or not.
    fn open_subscribers(&self, with_slow: bool) -> Vec<usize> {
        (0..self.rx.subscribers)
            .filter(|&i| {
                self.pool.state(i) == State::Open
                    && matches!(self.rx.joins[i], Join::Url | Join::Subscribed)
                    && (with_slow || !self.is_slow(i))
            })
            .collect()
    }

    /// Publishes one message per channel at a time until every open subscriber has received
    /// the latest message of its channel, or `timeout_s` passes. Returns how many subscribers
    /// received nothing.
    fn warm_up(&mut self, timeout_s: f64) -> Result<usize, String> {
        let channels = self.rx.channels;
        let open = self.open_subscribers(true);
        self.rx.phase = Phase::new(vec![1; channels], vec![1; channels]);
        let start = sys::now_ns();
        let deadline = start + (timeout_s * 1e9) as u64;
        let mut last_round = 0u64;
        let mut rounds = 0u64;
        loop {
            let now = sys::now_ns();
            let caught_up = open
                .iter()
                .filter(|&&i| {
                    let t = self.rx.trackers[i];
                    t.next != 0 && t.next == self.next_seq[payload::stream_of(i, channels)]
                })
                .count();
            if rounds > 0 && caught_up == open.len() {
                break;
            }
            if now >= deadline {
                break;
            }
            if let Some(why) = self.publisher_failure() {
                return Err(why);
            }
            // One round (a message to every channel) in flight at a time, or one per 250 ms
            // when some subscriber is silent, so the warm-up never loads the server.
            let quiet_ns = now - last_round;
            if (caught_up == open.len() || quiet_ns > 250_000_000) && quiet_ns > 5_000_000 {
                for stream in 0..channels {
                    self.publish(stream, now);
                }
                self.flush_publisher();
                rounds += 1;
                last_round = now;
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

    /// Takes the slow subscribers out of the epoll set; returns those that were open.
    fn stop_slow(&mut self) -> Vec<usize> {
        self.rx.slow_stopped = true;
        (0..self.rx.subscribers)
            .filter(|&i| self.is_slow(i) && self.pool.pause(i))
            .collect()
    }

    /// Reads the slow subscribers again until the server has closed each of them or `read_s`
    /// passes, so that how each ended (a close frame and its code, end of stream, a reset) is
    /// seen. What they had queued is read and counted, not checked.
    fn read_slow(&mut self, stopped: &[usize], read_s: f64) -> Result<(), String> {
        for &i in stopped {
            self.pool.resume(i);
        }
        let deadline = sys::now_ns() + (read_s * 1e9) as u64;
        loop {
            let open = stopped
                .iter()
                .filter(|&&i| self.pool.state(i) == State::Open)
                .count();
            let now = sys::now_ns();
            if open == 0 || now >= deadline {
                break;
            }
            self.progress.tick(now, || {
                format!("reading the slow subscribers: {open} not closed by the server yet")
            });
            self.turn(50)?;
        }
        self.progress.clear();
        Ok(())
    }

    /// Runs one rate; returns its figures.
    fn run_rate(
        &mut self,
        rate: f64,
        schedule: &Schedule,
        pid: Option<u32>,
        drain_s: f64,
    ) -> Result<Value, String> {
        let channels = self.rx.channels;
        let count = ((rate * schedule.duration).round() as u64).max(1);
        let start_seq = self.next_seq.clone();
        let per_stream = payload::round_robin_counts(count, channels);
        let end_seq: Vec<u64> = (0..channels)
            .map(|k| start_seq[k] + per_stream[k])
            .collect();
        // Everything before this rate is settled: a frame of an earlier rate arriving now is late.
        for i in 0..self.rx.subscribers {
            let k = payload::stream_of(i, channels);
            self.rx.trackers[i].settle(start_seq[k]);
        }
        let open = self.open_subscribers(false);
        let expected: u64 = open
            .iter()
            .map(|&i| per_stream[payload::stream_of(i, channels)])
            .sum();
        self.rx.phase = Phase::new(start_seq.clone(), end_seq.clone());
        let dropped_before = self.pool.stats.dropped;
        let errors_before = self.publish_errors();

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
                let p99 = if ph.hist.is_empty() {
                    "-".into()
                } else {
                    human_us(ph.hist.value_at_quantile(0.99))
                };
                format!(
                    "rate {rate}/s: published {}/{count}, delivered {}, lost {}, p99 so far \
                     {p99}, {} open",
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
            lost_at_end +=
                self.rx.trackers[i].settle(self.next_seq[payload::stream_of(i, channels)]);
        }
        let ph = &self.rx.phase;
        let published = sent;
        let expected = if sent == count {
            expected
        } else {
            open.iter()
                .map(|&i| {
                    let k = payload::stream_of(i, channels);
                    self.next_seq[k] - start_seq[k]
                })
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
        let publish_errors = self.publish_errors() - errors_before;
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
        if publish_errors > 0 {
            reasons.push(format!("{publish_errors} publishes answered with an error"));
        }
        if dropped > 0 {
            reasons.push(format!("{dropped} subscribers disconnected"));
        }
        if p99_ms > schedule.p99_budget_ms as f64 {
            reasons.push(format!(
                "p99 {p99_ms:.1} ms over the {} ms budget",
                schedule.p99_budget_ms
            ));
        }
        Ok(json!({
            "rate": rate,
            "duration_s": schedule.duration,
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
            "publish_errors": publish_errors,
            "held": reasons.is_empty(),
            "not_held_because": reasons,
        }))
    }
}

/// Waits until every open subscriber's subscribe command is answered or `timeout_s` passes;
/// returns what became of them, for the report. Those not subscribed are left out of every
/// figure (`Run::open_subscribers`), and a warning says so.
fn await_subscribed(
    pool: &mut Pool,
    rx: &mut Receiver,
    timeout_s: f64,
    progress: &mut Progress,
) -> Result<Value, String> {
    let count = |pool: &Pool, rx: &Receiver, join: Join| {
        (0..rx.subscribers)
            .filter(|&i| pool.state(i) == State::Open && rx.joins[i] == join)
            .count()
    };
    let t0 = sys::now_ns();
    let deadline = t0 + (timeout_s * 1e9) as u64;
    loop {
        let now = sys::now_ns();
        let pending = count(pool, rx, Join::Pending);
        if pending == 0 || now >= deadline {
            break;
        }
        progress.tick(now, || {
            format!("subscribing: {pending} subscribed replies awaited")
        });
        pool.poll(10, rx).map_err(|e| format!("epoll_wait: {e}"))?;
    }
    progress.clear();
    let seconds = (sys::now_ns() - t0) as f64 / 1e9;
    let subscribed = count(pool, rx, Join::Subscribed);
    let refused = count(pool, rx, Join::Refused);
    let unanswered = count(pool, rx, Join::Pending);
    if subscribed == 0 {
        return Err(format!(
            "no subscriber was subscribed: {refused} subscribe commands answered with an \
             error, {unanswered} unanswered after {seconds:.1} s"
        ));
    }
    if refused + unanswered > 0 {
        eprintln!(
            "ringcast-load: warning: {} of {} open subscribers are not subscribed ({refused} \
             answered with an error, {unanswered} unanswered after {seconds:.1} s); they are \
             left out of the figures",
            refused + unanswered,
            subscribed + refused + unanswered,
        );
    }
    Ok(json!({
        "by": "command",
        "subscribed": subscribed,
        "refused": refused,
        "unanswered": unanswered,
        "seconds": scenario::round3(seconds),
    }))
}

/// The subscribers' formats as the report states them: which was seen, whether the URL named
/// it, and how many connections had each.
fn format_json(formats: &[Format], from_url: bool) -> Value {
    let count = |f: Format| formats.iter().filter(|&&x| x == f).count();
    let (raw, envelope) = (count(Format::Raw), count(Format::Envelope));
    let pusher = count(Format::Pusher);
    let detected = match (raw > 0, envelope > 0, pusher > 0) {
        (true, false, false) => Format::Raw.name(),
        (false, true, false) => Format::Envelope.name(),
        (false, false, true) => Format::Pusher.name(),
        (false, false, false) => "none",
        _ => "mixed",
    };
    json!({
        "detected": detected,
        "from": if from_url { "url" } else { "first message" },
        "raw": raw,
        "envelope": envelope,
        "pusher": pusher,
        "undetected": count(Format::Undetected),
    })
}

/// The report's line about the format (`format: envelope (json), ...`).
fn format_line(result: &Value) -> Option<String> {
    let f = &result["format"];
    let detected = f["detected"].as_str()?;
    let how = if f["from"] == "url" {
        "as the URL asks (format=)"
    } else {
        "detected from each connection's first message"
    };
    let mut line = match detected {
        "raw" => format!("format: {}, {how}", Format::Raw.label()),
        "envelope" => format!("format: {}, {how}", Format::Envelope.label()),
        "pusher" => format!("format: {} (/app/KEY)", Format::Pusher.label()),
        "mixed" => format!(
            "format: mixed, {} subscribers raw and {} {}, {how}",
            f["raw"],
            f["envelope"],
            Format::Envelope.label()
        ),
        _ => return Some("format: none detected (no subscriber received anything)".into()),
    };
    if let Some(n) = f["undetected"].as_u64().filter(|&n| n > 0) {
        line.push_str(&format!("; {n} subscribers received nothing"));
    }
    Some(line)
}

/// How the generator saw a slow subscriber end, as a row label.
fn ending_label(ending: Option<Ending>) -> String {
    match ending {
        Some(Ending::CloseFrame(Some(code))) => format!("close frame, code {code}"),
        Some(Ending::CloseFrame(None)) => "close frame without a code".into(),
        Some(Ending::Eof) => "end of stream without a close frame".into(),
        Some(Ending::Reset) => "reset (ECONNRESET)".into(),
        Some(Ending::Error) => "other error".into(),
        Some(Ending::ByUs) => "closed by the generator".into(),
        None => "not closed by the server".into(),
    }
}

/// Runs a plan: connect, warm up, stop the slow subscribers, run each rate, read the slow
/// subscribers, close. Returns every figure as JSON.
pub fn execute(plan: Plan, setup: Setup) -> Result<Value, String> {
    let (rates, drain_s) = plan.schedule.check()?;
    let host = scenario::host_info(&setup);
    let Setup {
        url,
        urls,
        sources,
        mut progress,
        ..
    } = setup;
    let common = plan.common;
    let schedule = plan.schedule;
    let n = common.connections as usize;
    let channels = plan.channel_names.len();
    assert!(channels > 0, "a plan has a channel");
    assert!(
        plan.slow.is_empty() || plan.slow.len() == n,
        "one slow flag per subscriber"
    );
    let pub_ws = matches!(plan.publisher, PublisherSpec::Ws { .. });
    let churn_from = n + usize::from(pub_ws);
    let slots = churn_from + plan.extras.churn_slots();
    let churn_path = envelope::ws_path(&url.path, None, true, None);
    let mut pool = Pool::new(url, slots, sources).map_err(|e| format!("epoll: {e}"))?;
    // Subscriber i connects to URL i mod K; the publisher and churn connections to the first.
    let url_names: Vec<String> = urls
        .iter()
        .map(|u| format!("ws://{}{}", u.host, u.path))
        .collect();
    pool.spread(urls, n);
    pool.set_deflate(common.deflate);
    pool.set_coalesce(schedule.coalesce_us * 1000);
    let paths = &plan.paths;
    let path_of = |i: usize| &paths[payload::stream_of(i, channels) % paths.len()];
    for i in 0..n {
        // An envelope comes before the payload's header: a reader that captures enough of it,
        // unless the URL asks for raw frames.
        if Format::of_path(path_of(i)) != Format::Raw {
            pool.set_wide(i);
        }
        if plan.subscribe_by_command {
            let channel = &plan.channel_names[payload::stream_of(i, channels)];
            let command = if Format::of_path(path_of(i)) == Format::Pusher {
                crate::pusher::subscribe_command(channel)
            } else {
                envelope::subscribe_command(channel, None)
            };
            pool.send_on_open(i, command.as_bytes());
        }
    }
    let from_url = paths
        .iter()
        .all(|p| Format::of_path(p) != Format::Undetected);
    if plan.slow_rcvbuf_bytes > 0 {
        for (i, _) in plan.slow.iter().enumerate().filter(|&(_, &s)| s) {
            pool.set_rcvbuf(i, plan.slow_rcvbuf_bytes);
        }
    }
    let timer = Timer::new().map_err(|e| format!("timerfd: {e}"))?;
    pool.poller()
        .add(timer.raw_fd(), TOKEN_TIMER, Interest::Read)
        .map_err(|e| format!("epoll_ctl: {e}"))?;
    // The stalled consumer comes first: the subscribers' connects and subscribes are owed to it.
    let stalled = match &plan.extras.stalled_consumer {
        Some(addr) => Some(EventConsumer::subscribe(addr, &[], None)?),
        None => None,
    };
    let stats_addr = plan
        .extras
        .stalled_consumer
        .clone()
        .or(match &plan.publisher {
            PublisherSpec::Control(a) if plan.extras.churn_per_s > 0.0 => Some(a.clone()),
            _ => None,
        });
    let stats_before = stats_addr.as_ref().and_then(control::server_stats);
    let t_start = sys::now_ns();
    let slow_messages = if plan.slow.is_empty() {
        Vec::new()
    } else {
        vec![0; n]
    };
    let mut rx = Receiver {
        subscribers: n,
        churn_from,
        churn_messages: 0,
        channels,
        channel_names: plan.channel_names.clone(),
        formats: (0..n).map(|i| Format::of_path(path_of(i))).collect(),
        joins: vec![
            if plan.subscribe_by_command {
                Join::Pending
            } else {
                Join::Url
            };
            n
        ],
        error_replies: 0,
        trackers: vec![SeqTracker::default(); n],
        slow: plan.slow,
        slow_stopped: false,
        slow_messages,
        slow_bytes: 0,
        phase: Phase::new(vec![1; channels], vec![1; channels]),
        publisher_received: 0,
        timer_fired: false,
        publisher_ready: false,
        rss: common
            .server_pid
            .map(|pid| RssSeries::new(pid, t_start, RSS_INTERVAL_NS)),
    };

    let deadline = t_start + (common.connect_timeout_s * 1e9) as u64;
    let concurrency = common.concurrency as usize;
    pool.open(
        0..n,
        concurrency,
        &|i| path_of(i).clone(),
        deadline,
        &mut rx,
        &mut progress,
    )
    .map_err(|e| format!("epoll_wait: {e}"))?;
    let connect_s = (sys::now_ns() - t_start) as f64 / 1e9;
    let per_url: Vec<Value> = url_names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let mine = (0..n).filter(|&i| pool.target(i) == k);
            json!({
                "url": name,
                "subscribers": mine.clone().count(),
                "opened": mine.filter(|&i| pool.state(i) == State::Open).count(),
            })
        })
        .collect();
    if pool.stats.opened == 0 {
        scenario::print_errors(&pool.stats);
        return Err("no subscriber could connect".into());
    }
    let subscribe = if plan.subscribe_by_command {
        await_subscribed(&mut pool, &mut rx, common.connect_timeout_s, &mut progress)?
    } else {
        json!({"by": "url"})
    };
    let control_addr = match &plan.publisher {
        PublisherSpec::Control(a) => Some(a.clone()),
        PublisherSpec::Ws { .. } | PublisherSpec::Http(..) => None,
    };
    let publisher_kind = match &plan.publisher {
        PublisherSpec::Control(_) => "control",
        PublisherSpec::Ws { .. } => "ws",
        PublisherSpec::Http(_, None) => "http",
        PublisherSpec::Http(_, Some(_)) => "pusher-http",
    };
    let publisher = match plan.publisher {
        PublisherSpec::Ws {
            url: pub_url,
            format,
        } => {
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
                format,
            }
        }
        PublisherSpec::Control(addr) => {
            let c = ControlPub::connect(&addr)?;
            pool.poller()
                .add(c.raw_fd(), TOKEN_PUBLISHER, Interest::EdgeBoth)
                .map_err(|e| format!("epoll_ctl: {e}"))?;
            Publisher::Control(c)
        }
        PublisherSpec::Http(url, pusher) => {
            let mut h = HttpPub::connect(&url)?;
            if let Some(auth) = pusher {
                h.set_pusher(auth);
            }
            pool.poller()
                .add(h.raw_fd(), TOKEN_PUBLISHER, Interest::EdgeBoth)
                .map_err(|e| format!("epoll_ctl: {e}"))?;
            Publisher::Http(h)
        }
    };

    let mut run = Run {
        pool,
        rx,
        publisher,
        timer,
        channel_names: plan.channel_names,
        next_seq: vec![1; channels],
        payload_bytes: schedule.payload as usize,
        fill: schedule.fill,
        scratch: Vec::new(),
        read_buf: vec![0; 64 * 1024],
        stalls: 0,
        progress,
        t_start,
        timeline: vec![("connect".into(), 0)],
        churn: (plan.extras.churn_per_s > 0.0).then(|| {
            Churn::new(
                churn_from..slots,
                churn_path,
                plan.extras.churn_per_s,
                plan.extras.churn_hold_ns,
            )
        }),
        connect_timeout_ns: (common.connect_timeout_s * 1e9) as u64,
    };
    if let Some(churn) = &mut run.churn {
        churn.start(sys::now_ns());
    }
    run.mark("warm-up");
    let silent = run.warm_up(schedule.warmup)?;
    if silent > 0 {
        eprintln!(
            "ringcast-load: warning: {silent} subscribers received nothing during the {} s warm-up \
             (not subscribed? wrong channel?); their frames count as lost",
            schedule.warmup
        );
    }
    let slow_selected = run.rx.slow.iter().filter(|&&s| s).count();
    let stopped = run.stop_slow();

    let run_cpu0: (Option<CpuSample>, CpuSample) = (
        scenario::server_cpu(common.server_pid),
        scenario::self_cpu(),
    );
    let mut results = Vec::new();
    let mut highest_held: Option<f64> = None;
    for &rate in &rates {
        run.mark(format!("rate {rate}"));
        let r = run.run_rate(rate, schedule, common.server_pid, drain_s)?;
        let held = r["held"].as_bool() == Some(true);
        if held {
            highest_held = Some(highest_held.map_or(rate, |h: f64| h.max(rate)));
        }
        results.push(r);
        if !held && !schedule.keep_going {
            break;
        }
    }
    let run_cpu1 = (
        scenario::server_cpu(common.server_pid),
        scenario::self_cpu(),
    );
    let churn = run.churn.as_mut().map(|c| {
        c.active = false;
        json!({
            "per_s": plan.extras.churn_per_s,
            "hold_ms": plan.extras.churn_hold_ns / 1_000_000,
            "started": c.started,
            "skipped_no_free_slot": c.skipped,
            "abandoned_before_upgrade": c.abandoned,
            "messages_received": run.rx.churn_messages,
        })
    });

    let slow = if slow_selected > 0 {
        run.mark("reading the slow subscribers");
        run.read_slow(&stopped, plan.slow_read_s)?;
        let mut endings: std::collections::BTreeMap<String, u64> = Default::default();
        for &i in &stopped {
            *endings.entry(ending_label(run.pool.ending(i))).or_insert(0) += 1;
        }
        let read: Vec<u64> = stopped.iter().map(|&i| run.rx.slow_messages[i]).collect();
        Some(json!({
            "selected": slow_selected,
            "stopped_reading": stopped.len(),
            "read_s": plan.slow_read_s,
            "endings": endings,
            "messages_read_at_end": {
                "total": read.iter().sum::<u64>(),
                "min": read.iter().min(),
                "max": read.iter().max(),
            },
            "payload_bytes_read_at_end": run.rx.slow_bytes,
        }))
    } else {
        None
    };
    let server_stats = control_addr.as_ref().and_then(control::server_stats);
    // The server's event counters over the run (totals less those before the subscribers).
    let events = stats_addr.as_ref().map(|addr| {
        let after = if control_addr.as_ref() == Some(addr) {
            server_stats.clone()
        } else {
            control::server_stats(addr)
        };
        let delta = |key: &str| {
            let a = after.as_ref()?["total"][key].as_u64()?;
            let b = stats_before.as_ref()?["total"][key].as_u64()?;
            Some(a.saturating_sub(b))
        };
        json!({
            "stalled_consumer": stalled.is_some(),
            "stalled_consumer_bytes_read": stalled.as_ref().map(|c| c.bytes_in),
            "events_sent": delta("events_sent"),
            "events_delivered": delta("events_delivered"),
            "events_dropped": delta("events_dropped"),
        })
    });
    // Held open until here, unread: the consumer stalls for the whole run.
    drop(stalled);
    run.mark("close");
    scenario::close(&mut run.pool, &mut run.progress)?;
    run.mark("end");

    let control_errors = match &run.publisher {
        Publisher::Control(c) => {
            json!({"replies": c.replies, "errors": c.errors, "first_error": c.first_error})
        }
        Publisher::Ws { .. } => json!({"publisher_received": run.rx.publisher_received}),
        Publisher::Http(h) => json!({
            "requests": h.requests,
            "responses": h.responses,
            "unanswered": h.unanswered(),
            "errors": h.errors,
            "first_error": h.first_error,
            "closed": h.closed,
        }),
    };
    let server_rss = run.rx.rss.as_ref().map(|r| {
        let s = r.summary();
        json!({
            "interval_ms": r.interval_ms(),
            "min": s.map(|s| s.min),
            "max": s.map(|s| s.max),
            "max_at_ms": s.map(|s| s.max_at_ms),
            "last": s.map(|s| s.last),
            "samples_ms_bytes": r.samples(),
        })
    });
    let server_cpu = scenario::core_fraction(run_cpu0.0, run_cpu1.0);
    let generator_cpu = scenario::round3(run_cpu0.1.core_fraction_until(&run_cpu1.1));
    let timeline: Vec<Value> = run
        .timeline
        .iter()
        .map(|(name, ms)| json!({"phase": name, "start_ms": ms}))
        .collect();
    Ok(json!({
        "scenario": plan.scenario,
        "params": plan.params,
        "host": host,
        "publisher": publisher_kind,
        "channels": run.channel_names,
        "connect_seconds": scenario::round3(connect_s),
        "connections": scenario::pool_json(&run.pool.stats),
        "urls": per_url,
        "format": format_json(&run.rx.formats, from_url),
        "subscribe": subscribe,
        "error_replies": run.rx.error_replies,
        "warmup_silent_subscribers": silent,
        "publisher_replies": control_errors,
        "rates": results,
        "p99_budget_ms": schedule.p99_budget_ms,
        "highest_held_rate": highest_held,
        "server_cpu": server_cpu,
        "generator_cpu": generator_cpu,
        "slow": slow,
        "churn": churn,
        "event_stream": events,
        "server_rss": server_rss,
        "server_stats": server_stats,
        "timeline": timeline,
    }))
}

/// With subscribers spread over several URLs: how many each was given and how many opened.
fn urls_line(result: &Value) -> Option<String> {
    let urls = result["urls"].as_array().filter(|u| u.len() > 1)?;
    let parts: Vec<String> = urls
        .iter()
        .map(|u| {
            format!(
                "{} {} ({} open)",
                u["url"].as_str().unwrap_or("?"),
                human_count(u["subscribers"].as_u64().unwrap_or(0)),
                human_count(u["opened"].as_u64().unwrap_or(0)),
            )
        })
        .collect();
    Some(format!("subscribers per URL: {}", parts.join(", ")))
}

fn cpu_cell(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |c| format!("{c:.2}"))
}

fn mib(v: &Value) -> String {
    v.as_u64()
        .map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

/// Prints the per-rate table and what follows it (reasons, highest rate held, the slow
/// subscribers, the server's memory and counters, errors), from the JSON so the two agree.
pub fn print_report(result: &Value, budget_ms: u64) {
    if let Some(line) = format_line(result) {
        println!("{line}");
    }
    if let Some(line) = urls_line(result) {
        println!("{line}");
    }
    let sub = &result["subscribe"];
    if sub["by"] == "command" {
        println!(
            "subscribed by command after the upgrade: {} ({} refused, {} unanswered; the last \
             reply {} s after the connections were open)",
            human_count(sub["subscribed"].as_u64().unwrap_or(0)),
            sub["refused"],
            sub["unanswered"],
            sub["seconds"],
        );
    }
    let rates = result["rates"].as_array().map_or(&[][..], |v| &v[..]);
    let mut rows = Vec::new();
    for r in rates {
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
            // Subscribers at the start of the rate: fewer than -n after disconnections.
            human_count(r["subscribers"].as_u64().unwrap_or(0)),
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
                "subs",
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
    for r in rates {
        if let Some(why) = r["not_held_because"].as_array().filter(|a| !a.is_empty()) {
            let why: Vec<&str> = why.iter().filter_map(Value::as_str).collect();
            println!("rate {}: not held: {}", r["rate"], why.join("; "));
        }
    }
    match result["highest_held_rate"].as_f64() {
        Some(r) => println!("highest rate held (p99 ≤ {budget_ms} ms, nothing lost): {r}/s"),
        None => println!("no rate held (p99 ≤ {budget_ms} ms, nothing lost)"),
    }
    let slow = &result["slow"];
    if slow.is_object() {
        println!(
            "slow subscribers: {} stopped reading after the warm-up (left out of the figures \
             above); read again for up to {} s at the end, they had ended as follows:",
            slow["stopped_reading"], slow["read_s"]
        );
        if let Some(endings) = slow["endings"].as_object() {
            for (how, count) in endings {
                println!("  {count:>8}  {how}");
            }
        }
        let read = &slow["messages_read_at_end"];
        println!(
            "  messages they still had to read at the end: {} in all, {} to {} each",
            human_count(read["total"].as_u64().unwrap_or(0)),
            human_count(read["min"].as_u64().unwrap_or(0)),
            human_count(read["max"].as_u64().unwrap_or(0)),
        );
    }
    let churn = &result["churn"];
    if churn.is_object() {
        println!(
            "churn: {} connections opened and closed at {}/s (held {} ms), {} skipped (no free \
             slot), {} abandoned before the upgrade",
            human_count(churn["started"].as_u64().unwrap_or(0)),
            churn["per_s"],
            churn["hold_ms"],
            churn["skipped_no_free_slot"],
            churn["abandoned_before_upgrade"],
        );
    }
    let ev = &result["event_stream"];
    if ev.is_object() {
        println!(
            "event stream: {}; server over the run: events_sent {}, events_delivered {}, \
             events_dropped {}",
            if ev["stalled_consumer"] == true {
                "one consumer of every type, stalled (never read) from before the subscribers \
                 connected"
            } else {
                "no consumer"
            },
            ev["events_sent"],
            ev["events_delivered"],
            ev["events_dropped"],
        );
    }
    let rss = &result["server_rss"];
    if rss.is_object() {
        println!(
            "server RSS (every {} ms): min {}, max {} (at {:.1} s), last {}",
            rss["interval_ms"],
            mib(&rss["min"]),
            mib(&rss["max"]),
            rss["max_at_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            mib(&rss["last"]),
        );
    }
    let stats = &result["server_stats"]["total"];
    if stats.is_object() {
        let codes: Vec<String> = stats["closed_by_code"]
            .as_array()
            .map_or(&[][..], |v| &v[..])
            .iter()
            .map(|p| format!("{}:{}", p[0], p[1]))
            .collect();
        println!(
            "server counters before the final close: slow_consumers {}, closed_by_code {}",
            stats["slow_consumers"],
            if codes.is_empty() {
                "-".into()
            } else {
                codes.join(" ")
            }
        );
    }
    let replies = &result["publisher_replies"];
    if let Some(e) = replies["first_error"].as_str() {
        if result["publisher"] == "http" {
            println!(
                "HTTP publisher: {} of {} responses not 2xx, first: {e}",
                replies["errors"], replies["responses"]
            );
        } else {
            println!(
                "control socket: {} error replies, first: {e}",
                replies["errors"]
            );
        }
    }
    if result["publisher"] == "http" {
        if let Some(n) = replies["unanswered"].as_u64().filter(|&n| n > 0) {
            println!("HTTP publisher: {n} requests without a response at the end");
        }
        if let Some(why) = replies["closed"].as_str() {
            println!("HTTP publisher: {why}");
        }
    }
    if let Some(errors) = result["connections"]["errors"].as_object()
        && !errors.is_empty()
    {
        println!("errors:");
        for (kind, count) in errors {
            println!("  {count:>8}  {kind}");
        }
    }
}

/// Writes `--json` and `--plot` (latency percentiles against rate) if asked for.
pub fn write_outputs(
    result: &Value,
    json_path: Option<&str>,
    plot_path: Option<&str>,
    title: &str,
    subtitle: &str,
) -> Result<(), String> {
    if let Some(path) = json_path {
        report::write_json(path, result)?;
    }
    let Some(path) = plot_path else {
        return Ok(());
    };
    let samples: Vec<plot::Sample> = result["rates"]
        .as_array()
        .map_or(&[][..], |v| &v[..])
        .iter()
        .filter_map(|r| {
            let lat = &r["latency_us"];
            Some(plot::Sample {
                rate: r["rate"].as_f64()?,
                p50_us: lat["p50"].as_u64()?,
                p99_us: lat["p99"].as_u64()?,
                p999_us: lat["p999"].as_u64()?,
                held: r["held"].as_bool() == Some(true),
            })
        })
        .collect();
    let svg = plot::latency_vs_rate(&plot::Chart {
        title,
        subtitle,
        x_label: "publishes per second",
        budget_us: result["p99_budget_ms"].as_u64().map(|ms| ms * 1000),
        samples: &samples,
    });
    std::fs::write(path, svg).map_err(|e| format!("--plot {path}: {e}"))
}

/// What `prepare` builds for a `fanout` (or `slow`) run: the parts of its `Plan` that come
/// from the flags.
pub struct Prepared {
    /// URL, sources, progress line.
    pub setup: Setup,
    /// Who publishes.
    pub publisher: PublisherSpec,
    /// As `Plan::channel_names`.
    pub channel_names: Vec<String>,
    /// As `Plan::paths`.
    pub paths: Vec<String>,
    /// As `Plan::subscribe_by_command`.
    pub subscribe_by_command: bool,
}

/// Checks the publisher flags and builds the channel names, their URL paths, how subscribers
/// join and the publisher of a `fanout` (or `slow`) run.
pub fn prepare(args: &FanoutArgs) -> Result<Prepared, String> {
    args.schedule.check()?;
    if args.control.is_none() && !args.pub_ws && args.pub_http.is_none() {
        return Err(
            "fanout needs a publisher: --control unix:PATH|tcp:ADDR, --pub-ws or --pub-http URL"
                .into(),
        );
    }
    let channels = args.channels as usize;
    let named_channels = args.control.is_some()
        || args.pusher_key.is_some()
        || (args.pub_ws && args.pub_ws_format == PubWsFormat::Ringcast);
    if !named_channels && channels > 1 {
        return Err(
            "--channels > 1 needs --control or --pub-ws-format ringcast (a raw \
                    publisher has no channel)"
                .into(),
        );
    }
    let extras = extras(args)?;
    let extra = u64::from(args.pub_ws || args.pub_http.is_some())
        + extras.churn_slots() as u64
        + u64::from(extras.stalled_consumer.is_some());
    let setup = scenario::prepare_spread(&args.common, extra)?;
    let url = &setup.url;
    let publisher = if let Some(control) = &args.control {
        PublisherSpec::Control(target::parse_control(control)?)
    } else if let Some(http) = &args.pub_http {
        let pusher = match (&args.pusher_key, &args.pusher_secret) {
            (Some(key), Some(secret)) => {
                if channels > 1 {
                    return Err("--pusher-key publishes to one channel (--channels 1)".into());
                }
                let channel = args
                    .channel
                    .clone()
                    .or_else(|| url.channel().map(str::to_string))
                    .unwrap_or_else(|| "bench".into());
                Some(crate::scenario::http_pub::PusherAuth {
                    key: key.clone(),
                    secret: secret.clone(),
                    channel,
                })
            }
            _ => None,
        };
        PublisherSpec::Http(target::parse_http_url(http)?, pusher)
    } else {
        let pub_url = match &args.pub_url {
            Some(u) => {
                let p = target::parse_ws_url(u)?;
                if p.addr != url.addr {
                    return Err(format!(
                        "--pub-url must be on the same address as --url ({})",
                        url.addr
                    ));
                }
                p
            }
            None => url.clone(),
        };
        PublisherSpec::Ws {
            url: pub_url,
            format: args.pub_ws_format,
        }
    };
    let base = args
        .channel
        .clone()
        .or_else(|| url.channel().map(str::to_string))
        .unwrap_or_else(|| "bench".into());
    let channel_names: Vec<String> = if channels == 1 {
        vec![base]
    } else {
        (0..channels).map(|k| format!("{base}{k}")).collect()
    };
    let subscribe_by_command = subscribes_by_command(named_channels, url);
    let paths: Vec<String> = if named_channels && !subscribe_by_command {
        channel_names
            .iter()
            .map(|c| url.path_with_channel(c))
            .collect()
    } else {
        vec![url.path.clone()]
    };
    Ok(Prepared {
        setup,
        publisher,
        channel_names,
        paths,
        subscribe_by_command,
    })
}

/// Whether subscribers join their channel with the client command rather than by the URL. With
/// a publisher that names channels (ringcast), a subscriber whose URL names none subscribes by
/// command when it speaks the JSON envelope, which answers with `subscribed`; a raw one gets no
/// replies, so its channel goes into the URL instead. Without named channels (a raw --pub-ws
/// run) the URL stays as given: a peer server may have no channels at all.
fn subscribes_by_command(named_channels: bool, url: &WsUrl) -> bool {
    named_channels && url.channel().is_none() && Format::of_path(&url.path) != Format::Raw
}

/// The plot's second line for a fanout-shaped run.
pub fn plot_subtitle(args: &FanoutArgs, subscribers: u64, extra: &str) -> String {
    format!(
        "{} subscribers on {} channel(s), {}-byte payloads, {} s per rate, {} publisher{extra}",
        human_count(subscribers),
        args.channels,
        args.schedule.payload,
        args.schedule.duration,
        if args.pub_ws {
            "WebSocket"
        } else if args.pub_http.is_some() {
            "HTTP"
        } else {
            "control-socket"
        },
    )
}

/// Runs the scenario.
pub fn run(args: FanoutArgs) -> Result<(), String> {
    let Prepared {
        setup,
        publisher,
        channel_names,
        paths,
        subscribe_by_command,
    } = prepare(&args)?;
    let n = u64::from(args.common.connections);
    let result = execute(
        Plan {
            scenario: "fanout",
            params: serde_json::to_value(&args).map_err(|e| e.to_string())?,
            common: &args.common,
            schedule: &args.schedule,
            publisher,
            channel_names,
            paths,
            subscribe_by_command,
            slow: Vec::new(),
            slow_read_s: 0.0,
            slow_rcvbuf_bytes: 0,
            extras: extras(&args)?,
        },
        setup,
    )?;
    let opened = result["connections"]["opened"].as_u64().unwrap_or(0).min(n);
    println!(
        "fanout: {} subscribers on {} channel(s), {}-byte payloads, {} s per rate, p99 budget {} ms",
        human_count(opened),
        args.channels,
        args.schedule.payload,
        args.schedule.duration,
        args.schedule.p99_budget_ms
    );
    print_report(&result, args.schedule.p99_budget_ms);
    write_outputs(
        &result,
        args.common.json.as_deref(),
        args.schedule.plot.as_deref(),
        "ringcast-load fanout: latency against publish rate",
        &plot_subtitle(&args, opened, ""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_join_by_command_only_on_an_envelope_url_without_a_channel() {
        let url = |q: &str| target::parse_ws_url(&format!("ws://127.0.0.1:9/ws{q}")).unwrap();
        assert!(subscribes_by_command(true, &url("")));
        assert!(subscribes_by_command(true, &url("?format=json")));
        assert!(subscribes_by_command(true, &url("?token=t")));
        // A raw connection gets no `subscribed` reply: its channel goes into the URL.
        assert!(!subscribes_by_command(true, &url("?format=raw")));
        assert!(!subscribes_by_command(true, &url("?channel=bench")));
        // A raw publisher names no channel: a peer server is sent no ringcast command.
        assert!(!subscribes_by_command(false, &url("")));
    }

    #[test]
    fn the_report_names_the_format_seen() {
        use Format::{Envelope, Raw, Undetected};
        let v = json!({ "format": format_json(&[Envelope, Envelope], false) });
        assert_eq!(v["format"]["detected"], "envelope");
        assert_eq!(v["format"]["envelope"], 2);
        assert_eq!(
            format_line(&v).unwrap(),
            "format: envelope (json), detected from each connection's first message"
        );
        let v = json!({ "format": format_json(&[Raw, Raw, Raw], true) });
        assert_eq!(v["format"]["detected"], "raw");
        assert_eq!(
            format_line(&v).unwrap(),
            "format: raw, as the URL asks (format=)"
        );
        let v = json!({ "format": format_json(&[Raw, Envelope, Undetected], false) });
        assert_eq!(v["format"]["detected"], "mixed");
        let line = format_line(&v).unwrap();
        assert!(line.starts_with("format: mixed, 1 subscribers raw and 1 envelope (json)"));
        assert!(line.ends_with("; 1 subscribers received nothing"), "{line}");
        let v = json!({ "format": format_json(&[Undetected], false) });
        assert_eq!(v["format"]["detected"], "none");
        assert!(format_line(&v).unwrap().starts_with("format: none"));
        assert_eq!(format_line(&json!({})), None);
    }
}
