//! `reconnect`: subscribers that drop their connection and come back with `since`, while a
//! fan-out to everyone else goes on — the acceptance of ringcast's history and recovery
//! (docs/protocol.md, "Recovery"): nothing lost, nothing duplicated at the seam, and the other
//! subscribers' latency unchanged.
//!
//! Method. `-n N` subscribers on one channel (`--channel`, default `hist:bench`), whose
//! namespace must keep history (`history_size`; `loadtest/reconnect.toml` is such a config).
//! `--reconnect-fraction F` of them (spread evenly over the connections) are *reconnecting*:
//! they use the JSON format (each message in its envelope, with its `offset`; the `subscribed`
//! reply with the channel's `epoch`), the others are *stable* `format=raw` subscribers, as in
//! `fanout`. A control-socket publisher sends `--rate` publishes per second for the whole run,
//! each payload stamped with a sequence number and its intended send time (as in `fanout`; the
//! JSON subscribers get it as the envelope's `data` string).
//!
//! After a warm-up (every subscriber receiving, at least 1 s) the run has three periods:
//! `--calm-s` without reconnects ("before"), `--duration` with them ("churn"), `--calm-s`
//! without ("after"). During the churn each reconnecting subscriber drops its connection every
//! `--reconnect-every-s`, the subscribers' first drops spread evenly over one interval (about
//! F × N / interval drops per second, steadily), or all at once with `--waves`. A drop is abrupt
//! by default (`--drop eof`: the socket is closed without a close frame, as when a client's
//! process dies; `reset`: an RST, as when a network path fails; `close`: the close handshake).
//! The subscriber is then offline for `--offline-ms` — messages go on being published meanwhile
//! — and reconnects on a fresh socket with the last offset it received and the epoch:
//! `?channel=C&since=OFFSET:EPOCH:C` (`--resume url`) or `{"op":"subscribe","channel":C,
//! "since":{"offset":N,"epoch":E}}` sent as the first frame (`--resume command`). No drop is
//! scheduled that would reconnect after the churn ends, and a subscriber still waiting for its
//! `subscribed` reply when its next drop is due skips that drop (counted).
//!
//! Checks. Every subscriber tracks the payload's sequence number over its whole life, across its
//! connections: a gap is lost, a number seen again is duplicated. A reconnecting subscriber
//! also tracks the channel's offsets: after `"recovered":true` the next message must be the one
//! after its `since` offset, and every offset once, in order; `"recovered":false` is counted,
//! and the gap that follows it is reported as announced (the server said those are gone), not
//! as lost. Offset − sequence must be the same for every message (one publisher, one channel):
//! a message under the wrong offset is counted. A message on a new connection before its
//! `subscribed` reply is counted too (the server must send the reply first).
//!
//! Latency (receive time − intended send time, µs) is kept apart for the stable subscribers, for
//! the reconnecting subscribers' live messages (those after the reply's offset), and for their
//! replayed messages (which waited offline by design). A message belongs to the period of its
//! intended send time, as in `connect --storm`. The stable subscribers' latency during the
//! churn over that of the calm periods (before and after together) is the ratio the acceptance
//! bounds (`--latency-tolerance`, 10 %), measured in one run on the same connections; a run with
//! `--reconnect-fraction 0` measures the same ratio with no reconnects at all (the noise
//! floor). After the last period the publisher stops and the generator waits up to `--drain`
//! seconds for what is on its way; whatever has not arrived then is lost.
//!
//! The server config the figures in docs/benchmarks.md were measured with
//! (`loadtest/reconnect.toml`):
//!
//! ```toml
//! [namespaces.hist]
//! history_size = 1000   # 10 s at 100/s: far more than --offline-ms misses
//! ```

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

use crate::Common;
use crate::envelope::{self, Envelope, Since};
use crate::payload::{self, Seen, SeqTracker, Stamp};
use crate::pool::{self, Handler, Pool, State, TOKEN_SCENARIO};
use crate::procfs::CpuSample;
use crate::report::{self, human_count, human_us};
use crate::scenario::control::{self, ControlPub};
use crate::scenario::{self, Setup};
use crate::sys::{self, Event, Interest, Timer};
use crate::target;

const TOKEN_TIMER: u64 = TOKEN_SCENARIO;
const TOKEN_CONTROL: u64 = TOKEN_SCENARIO + 1;
/// Publisher output above this is not added to until the server reads (as in `fanout`).
const PUBLISH_BACKLOG_BYTES_MAX: usize = 4 << 20;
/// The warm-up publishes at least this long, so every subscriber is receiving.
const WARMUP_MIN_NS: u64 = 1_000_000_000;
/// How often the reconnecting subscribers' connections are looked at when nothing is due sooner
/// (a reconnect that failed, a connection the server closed).
const SWEEP_NS: u64 = 20_000_000;
/// No mover index (a stable subscriber).
const STABLE: u32 = u32::MAX;

/// Flags of `reconnect`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ReconnectArgs {
    #[command(flatten)]
    #[serde(flatten)]
    common: Common,
    /// The publisher: ringcast's control socket, unix:PATH or tcp:HOST:PORT.
    #[arg(long)]
    control: String,
    /// The channel; its namespace must keep history (default: the URL's channel=, else
    /// hist:bench).
    #[arg(long)]
    channel: Option<String>,
    /// Publishes per second, for the whole run.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Payload bytes (at least 40: stream, sequence number, intended send time).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(40..=65_536))]
    payload: u32,
    /// Fraction of the subscribers that drop and reconnect (0 to 1; 0: a baseline run).
    #[arg(long, default_value_t = 0.1)]
    reconnect_fraction: f64,
    /// Each reconnecting subscriber drops its connection this often during the churn (s).
    #[arg(long, default_value_t = 3.0)]
    reconnect_every_s: f64,
    /// How long a subscriber stays offline between its drop and its reconnect (ms).
    #[arg(long, default_value_t = 1000)]
    offline_ms: u64,
    /// How a connection is dropped: eof (closed without a close frame), reset (RST), close
    /// (the close handshake).
    #[arg(long, value_enum, default_value = "eof")]
    drop: DropMode,
    /// How a subscriber resumes: url (?channel=C&since=OFFSET:EPOCH:C) or command (a subscribe
    /// with "since" as its first frame).
    #[arg(long, value_enum, default_value = "url")]
    resume: ResumeMode,
    /// Drop every reconnecting subscriber at the same moments instead of spreading the drops
    /// evenly over each interval.
    #[arg(long)]
    waves: bool,
    /// Seconds measured without reconnects before the churn, and again after it.
    #[arg(long, default_value_t = 10.0)]
    calm_s: f64,
    /// Seconds of churn (subscribers dropping and reconnecting).
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Seconds the warm-up may take before the run starts anyway.
    #[arg(long, default_value_t = 10.0)]
    warmup: f64,
    /// Seconds to wait after the last publish for messages on their way.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// The run passes when the stable subscribers' p50 and p99 during the churn are within this
    /// fraction of the calm periods' (and nothing is lost or duplicated).
    #[arg(long, default_value_t = 0.10)]
    latency_tolerance: f64,
    /// Let socket events accumulate up to this many µs (see fanout).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    coalesce_us: u64,
}

/// How a reconnecting subscriber drops its connection.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DropMode {
    /// Close the socket without a close frame (the server sees an end of stream).
    Eof,
    /// Close with SO_LINGER 0 (the server sees a reset).
    Reset,
    /// The WebSocket close handshake (the reconnect does not wait for it to finish).
    Close,
}

/// How a reconnecting subscriber asks for what it missed.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResumeMode {
    /// `?channel=C&since=OFFSET:EPOCH:C` in the URL.
    Url,
    /// A subscribe command with `since`, sent as the connection's first frame.
    Command,
}

/// The periods, by a message's intended send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Warmup,
    Before,
    Churn,
    After,
}

impl Period {
    /// Index into the per-period figures (`None`: the warm-up, not measured).
    fn index(self) -> Option<usize> {
        match self {
            Period::Warmup => None,
            Period::Before => Some(0),
            Period::Churn => Some(1),
            Period::After => Some(2),
        }
    }
}

const PERIOD_NAMES: [&str; 3] = ["before", "churn", "after"];

/// The period boundaries (CLOCK_MONOTONIC ns); `u64::MAX` until the warm-up is over.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    measure_from: u64,
    churn_start: u64,
    churn_end: u64,
    end: u64,
}

impl Bounds {
    fn unset() -> Bounds {
        Bounds {
            measure_from: u64::MAX,
            churn_start: u64::MAX,
            churn_end: u64::MAX,
            end: u64::MAX,
        }
    }

    fn starting_at(t: u64, calm_ns: u64, churn_ns: u64) -> Bounds {
        Bounds {
            measure_from: t,
            churn_start: t + calm_ns,
            churn_end: t + calm_ns + churn_ns,
            end: t + 2 * calm_ns + churn_ns,
        }
    }

    fn period_of(&self, sent_ns: u64) -> Period {
        if sent_ns < self.measure_from {
            Period::Warmup
        } else if sent_ns < self.churn_start {
            Period::Before
        } else if sent_ns < self.churn_end {
            Period::Churn
        } else {
            Period::After
        }
    }
}

/// When reconnecting subscriber `k` of `movers` drops first, as an offset from the churn's
/// start: spread evenly over one interval (the middle of each share), or all at 0 in waves.
fn first_drop_offset_ns(k: usize, movers: usize, every_ns: u64, waves: bool) -> u64 {
    if waves || movers == 0 {
        return 0;
    }
    ((2 * k as u128 + 1) * u128::from(every_ns) / (2 * movers as u128)) as u64
}

/// The subscribers that reconnect: `fraction` of `n`, evenly spaced in connection order.
fn mover_set(n: usize, fraction: f64) -> Vec<usize> {
    let count = ((n as f64 * fraction).round() as usize).min(n);
    (0..count).map(|k| k * n / count).collect()
}

/// A reconnecting subscriber's view of its channel by offset, across its connections.
#[derive(Debug, Default, Clone, Copy)]
struct Resume {
    /// The channel's epoch, from the last `subscribed` reply.
    epoch: Option<u64>,
    /// The next offset expected (0: nothing known yet).
    next: u64,
    /// Offsets up to this one are the current connection's replay; later ones are live.
    live_after: u64,
    /// A subscribe is on its way and its reply has not come.
    awaiting: bool,
}

/// What a `subscribed` reply means for a reconnecting subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// The reply to a subscribe without `since`.
    First,
    /// `recovered: true`: the `missed` messages after `since` follow.
    Recovered { missed: u64 },
    /// `recovered: false`: the server says `missed` messages are gone (`None`: another epoch).
    Refused { missed: Option<u64> },
    /// `recovered: true` with another epoch, or a channel offset behind what the subscriber
    /// already has: the server contradicts itself (the subscriber resynchronises on it).
    Inconsistent,
    /// A reply without a subscribe waiting for it.
    Unexpected,
}

/// What one message's offset means for a reconnecting subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offset {
    /// The expected one; `replay` when it is part of the connection's replay.
    InOrder { replay: bool },
    /// After `missing` skipped offsets.
    Gap { missing: u64, replay: bool },
    /// At or before one already received.
    Duplicate,
    /// Before the `subscribed` reply of its connection.
    BeforeReply,
}

impl Resume {
    /// Where the subscriber's view ends, for `since` (`None` before any reply).
    fn since(&self) -> Option<Since> {
        Some(Since {
            offset: self.next.checked_sub(1)?,
            epoch: self.epoch?,
        })
    }

    /// A subscribe was sent (or a connection subscribing by URL started).
    fn subscribe(&mut self) {
        self.awaiting = true;
    }

    fn on_subscribed(&mut self, offset: u64, epoch: u64, recovered: Option<bool>) -> Reply {
        if !self.awaiting {
            return Reply::Unexpected;
        }
        self.awaiting = false;
        self.live_after = offset;
        let have = self.next.saturating_sub(1);
        let resync = |r: &mut Resume| {
            r.epoch = Some(epoch);
            r.next = offset + 1;
        };
        match recovered {
            None => {
                resync(self);
                Reply::First
            }
            Some(true) if self.next != 0 && self.epoch == Some(epoch) && offset >= have => {
                Reply::Recovered {
                    missed: offset - have,
                }
            }
            Some(true) => {
                resync(self);
                Reply::Inconsistent
            }
            Some(false) => {
                let missed = (self.epoch == Some(epoch)).then(|| offset.saturating_sub(have));
                resync(self);
                Reply::Refused { missed }
            }
        }
    }

    fn on_message(&mut self, offset: u64) -> Offset {
        if self.awaiting {
            return Offset::BeforeReply;
        }
        let replay = offset <= self.live_after;
        if self.next == 0 || offset == self.next {
            self.next = offset + 1;
            Offset::InOrder { replay }
        } else if offset > self.next {
            let missing = offset - self.next;
            self.next = offset + 1;
            Offset::Gap { missing, replay }
        } else {
            Offset::Duplicate
        }
    }
}

/// Where a reconnecting subscriber's link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Connected (its `subscribed` reply may still be on its way for the first connection).
    Online,
    /// Dropped; reconnects at `until`.
    Offline { until: u64 },
    /// A reconnect is under way, no reply yet.
    Connecting,
}

/// A reconnecting subscriber: two pool slots used in turn (so a connection still in its close
/// handshake never holds up the next), its offset view and its schedule.
struct Mover {
    slots: [usize; 2],
    current: usize,
    link: Link,
    resume: Resume,
    /// When the current connection was started.
    started_ns: u64,
    /// Its next drop (`u64::MAX`: none left).
    next_drop: u64,
    /// The last reply was `recovered: false`: the gap the next message shows was announced.
    refused_pending: bool,
    /// The replay of the current connection has not all arrived yet.
    catching_up: bool,
}

impl Mover {
    fn slot(&self) -> usize {
        self.slots[self.current]
    }
}

/// Deliveries and latency of one group of messages.
struct Figures {
    delivered: u64,
    hist: Histogram<u64>,
}

impl Figures {
    fn new() -> Figures {
        Figures {
            delivered: 0,
            hist: pool::latency_histogram(),
        }
    }
}

/// Counters of everything that is not a plain in-order delivery.
#[derive(Debug, Default, Serialize)]
struct Counts {
    stable_lost: u64,
    stable_duplicated: u64,
    /// Reconnecting subscribers, by payload sequence number.
    moving_lost: u64,
    moving_duplicated: u64,
    /// Reconnecting subscribers, by the channel's offset.
    offset_lost: u64,
    offset_duplicated: u64,
    /// Skipped sequence numbers right after a `recovered: false`.
    lost_announced: u64,
    /// What `recovered: false` replies said was gone (same epoch only).
    refused_missed: u64,
    first_subscribes: u64,
    recovered: u64,
    not_recovered: u64,
    /// Messages the `recovered: true` replies announced as following.
    to_replay: u64,
    replayed: u64,
    inconsistent_replies: u64,
    unexpected_replies: u64,
    before_reply: u64,
    offset_seq_mismatch: u64,
    /// Messages on a connection its subscriber had already dropped (close handshake under way).
    after_drop: u64,
    foreign: u64,
    unparsable: u64,
    other_ops: u64,
    error_replies: u64,
    first_error: Option<String>,
    drops: u64,
    drops_skipped: u64,
    reconnects: u64,
    reconnects_without_position: u64,
    reconnect_failures: u64,
    /// Connections of reconnecting subscribers the server closed (they reconnect too).
    server_closed: u64,
    /// Close handshakes (`--drop close`) not finished when their slot was needed again.
    unfinished_closes: u64,
}

/// The control-socket publisher on its own schedule (a timer and every loop turn), so it keeps
/// publishing while the pool opens, drops and reopens connections.
struct Feed {
    publisher: ControlPub,
    channel: String,
    timer: Timer,
    payload_bytes: usize,
    scratch: Vec<u8>,
    read_buf: Vec<u8>,
    interval_ns: f64,
    t0: u64,
    /// Publishes sent so far; the next carries sequence number `sent + 1`.
    sent: u64,
    publishing: bool,
    armed_for: u64,
    stalls: u64,
    published: [u64; 3],
}

impl Feed {
    fn start(&mut self, now_ns: u64, bounds: &Bounds) {
        self.t0 = now_ns;
        self.publishing = true;
        self.publish_due(now_ns, bounds);
    }

    /// Publishes every message due by `now_ns`, each stamped with its intended time, and arms
    /// the timer for the next.
    fn publish_due(&mut self, now_ns: u64, bounds: &Bounds) {
        if !self.publishing {
            return;
        }
        let (t0, interval_ns) = (self.t0, self.interval_ns);
        let due = |i: u64| t0 + (i as f64 * interval_ns) as u64;
        while due(self.sent) <= now_ns {
            if self.publisher.backlog() > PUBLISH_BACKLOG_BYTES_MAX {
                self.stalls += 1;
                break;
            }
            let sent_ns = due(self.sent);
            let stamp = Stamp {
                stream: 0,
                seq: self.sent + 1,
                sent_ns,
            };
            self.scratch.clear();
            payload::encode(stamp, self.payload_bytes, &mut self.scratch);
            self.publisher.publish(&self.channel, &self.scratch);
            self.sent += 1;
            if let Some(p) = bounds.period_of(sent_ns).index() {
                self.published[p] += 1;
            }
        }
        self.publisher.flush();
        let next = due(self.sent);
        if next != self.armed_for {
            // A timerfd on a valid fd only fails for a bad time, and `next` is a valid one.
            let _ = self.timer.arm_at(next);
            self.armed_for = next;
        }
    }
}

/// The handler: every subscriber's accounting, the figures, the publisher.
struct Rx {
    n: usize,
    channel: Vec<u8>,
    /// Per subscriber slot (`0..n`): its mover index, or `STABLE`.
    mover_of: Vec<u32>,
    movers: Vec<Mover>,
    /// Per subscriber, by payload sequence number, across its connections.
    trackers: Vec<SeqTracker>,
    bounds: Bounds,
    feed: Feed,
    stable: [Figures; 3],
    /// Reconnecting subscribers: `delivered` counts live and replayed messages, `hist` the live.
    moving: [Figures; 3],
    replay: Figures,
    /// From the start of a reconnect (`connect()`) to its `subscribed` reply, µs.
    reply_us: Histogram<u64>,
    /// From the start of a reconnect to the last replayed message (or the reply, when nothing
    /// was missed), µs.
    caught_up_us: Histogram<u64>,
    /// Offset − sequence number of the first envelope seen (the same for every message).
    delta: Option<u64>,
    counts: Counts,
}

impl Rx {
    fn stable_message(&mut self, conn: usize, prefix: &[u8], now_ns: u64) {
        let Some(stamp) = payload::decode(prefix) else {
            self.counts.unparsable += 1;
            return;
        };
        if stamp.stream != 0 {
            self.counts.foreign += 1;
            return;
        }
        match self.trackers[conn].observe(stamp.seq) {
            Seen::InOrder => {}
            Seen::AfterGap(missing) => self.counts.stable_lost += missing,
            Seen::Duplicate => {
                self.counts.stable_duplicated += 1;
                return;
            }
        }
        if let Some(p) = self.bounds.period_of(stamp.sent_ns).index() {
            let f = &mut self.stable[p];
            f.delivered += 1;
            f.hist
                .saturating_record((now_ns.saturating_sub(stamp.sent_ns) / 1000).max(1));
        }
    }

    fn mover_message(&mut self, k: usize, conn: usize, prefix: &[u8], now_ns: u64) {
        let m = &mut self.movers[k];
        // A client that dropped its connection reads nothing more from it, even while a close
        // handshake (`--drop close`) lets the server's frames still arrive.
        if m.slot() != conn || matches!(m.link, Link::Offline { .. }) {
            self.counts.after_drop += 1;
            return;
        }
        let c = &mut self.counts;
        match envelope::parse(prefix) {
            Envelope::Subscribed {
                channel,
                offset,
                epoch,
                recovered,
            } => {
                if channel != self.channel.as_slice() {
                    c.foreign += 1;
                    return;
                }
                let since_start = (now_ns.saturating_sub(m.started_ns) / 1000).max(1);
                match m.resume.on_subscribed(offset, epoch, recovered) {
                    Reply::First => c.first_subscribes += 1,
                    Reply::Recovered { missed } => {
                        c.recovered += 1;
                        c.to_replay += missed;
                        self.reply_us.saturating_record(since_start);
                        if missed == 0 {
                            self.caught_up_us.saturating_record(since_start);
                        } else {
                            m.catching_up = true;
                        }
                    }
                    Reply::Refused { missed } => {
                        c.not_recovered += 1;
                        c.refused_missed += missed.unwrap_or(0);
                        m.refused_pending = true;
                        self.reply_us.saturating_record(since_start);
                    }
                    Reply::Inconsistent => c.inconsistent_replies += 1,
                    Reply::Unexpected => c.unexpected_replies += 1,
                }
                if m.link == Link::Connecting {
                    m.link = Link::Online;
                }
            }
            Envelope::Message {
                channel,
                offset,
                data,
            } => {
                if channel != self.channel.as_slice() {
                    c.foreign += 1;
                    return;
                }
                let Some(stamp) = payload::decode(data) else {
                    c.unparsable += 1;
                    return;
                };
                if stamp.stream != 0 {
                    c.foreign += 1;
                    return;
                }
                // One publisher on one channel: offset and sequence number move together.
                let delta = offset.wrapping_sub(stamp.seq);
                match self.delta {
                    None => self.delta = Some(delta),
                    Some(d) if d != delta => c.offset_seq_mismatch += 1,
                    Some(_) => {}
                }
                let replay = match m.resume.on_message(offset) {
                    Offset::InOrder { replay } => replay,
                    Offset::Gap { missing, replay } => {
                        c.offset_lost += missing;
                        replay
                    }
                    Offset::Duplicate => {
                        c.offset_duplicated += 1;
                        false
                    }
                    Offset::BeforeReply => {
                        c.before_reply += 1;
                        false
                    }
                };
                if m.catching_up && offset >= m.resume.live_after {
                    m.catching_up = false;
                    self.caught_up_us
                        .saturating_record((now_ns.saturating_sub(m.started_ns) / 1000).max(1));
                }
                let refused = std::mem::take(&mut m.refused_pending);
                match self.trackers[m.slots[0]].observe(stamp.seq) {
                    Seen::InOrder => {}
                    Seen::AfterGap(missing) if refused => c.lost_announced += missing,
                    Seen::AfterGap(missing) => c.moving_lost += missing,
                    Seen::Duplicate => {
                        c.moving_duplicated += 1;
                        return;
                    }
                }
                let us = (now_ns.saturating_sub(stamp.sent_ns) / 1000).max(1);
                if replay {
                    c.replayed += 1;
                }
                if let Some(p) = self.bounds.period_of(stamp.sent_ns).index() {
                    let f = &mut self.moving[p];
                    f.delivered += 1;
                    if replay {
                        self.replay.delivered += 1;
                        self.replay.hist.saturating_record(us);
                    } else {
                        f.hist.saturating_record(us);
                    }
                }
            }
            Envelope::Welcome { .. } => {}
            Envelope::Error => {
                c.error_replies += 1;
                if c.first_error.is_none() {
                    c.first_error = Some(String::from_utf8_lossy(prefix).into_owned());
                }
            }
            Envelope::Other | Envelope::Presence { .. } => c.other_ops += 1,
            Envelope::Unparsable => c.unparsable += 1,
        }
    }
}

impl Handler for Rx {
    fn message(&mut self, conn: usize, _text: bool, prefix: &[u8], _len: u64, now_ns: u64) {
        let k = if conn < self.n {
            self.mover_of[conn]
        } else {
            (conn - self.n) as u32
        };
        if k == STABLE {
            self.stable_message(conn, prefix, now_ns);
        } else {
            self.mover_message(k as usize, conn, prefix, now_ns);
        }
    }

    fn scenario_event(&mut self, ev: Event) {
        match ev.token {
            TOKEN_TIMER => {
                self.feed.timer.clear();
                self.feed.publish_due(sys::now_ns(), &self.bounds);
            }
            TOKEN_CONTROL => {
                let feed = &mut self.feed;
                feed.publisher.read_replies(&mut feed.read_buf);
                feed.publisher.flush();
            }
            _ => {}
        }
    }

    fn after_poll(&mut self, now_ns: u64) {
        self.feed.publish_due(now_ns, &self.bounds);
    }
}

/// The churn's schedule and how reconnects are made.
struct Churn {
    base_path: String,
    channel: String,
    every_ns: u64,
    offline_ns: u64,
    connect_timeout_ns: u64,
    drop: DropMode,
    resume: ResumeMode,
}

impl Churn {
    /// The first drop of mover `k` (`u64::MAX`: its reconnect would fall after the churn).
    fn first_drop(&self, bounds: &Bounds, k: usize, movers: usize, waves: bool) -> u64 {
        let at = bounds.churn_start + first_drop_offset_ns(k, movers, self.every_ns, waves);
        self.if_in_churn(bounds, at)
    }

    fn if_in_churn(&self, bounds: &Bounds, at: u64) -> u64 {
        if at.saturating_add(self.offline_ns) < bounds.churn_end {
            at
        } else {
            u64::MAX
        }
    }

    /// Drops, reconnects and checks the movers that are due; returns when next to look.
    fn service(&self, pool: &mut Pool, rx: &mut Rx, now: u64) -> u64 {
        let mut next = now + SWEEP_NS;
        let bounds = rx.bounds;
        for m in &mut rx.movers {
            let c = &mut rx.counts;
            let slot = m.slot();
            match m.link {
                Link::Online => {
                    if pool.state(slot) != State::Open {
                        // Closed by the server, or the first connection never opened: a client
                        // connects again.
                        if pool.ending(slot).is_some() {
                            c.server_closed += 1;
                        } else {
                            c.reconnect_failures += 1;
                        }
                        m.resume.awaiting = false;
                        m.link = Link::Offline {
                            until: now + self.offline_ns,
                        };
                        next = next.min(now + self.offline_ns);
                        continue;
                    }
                    if now >= m.next_drop {
                        let at = m.next_drop;
                        m.next_drop = self.if_in_churn(&bounds, at + self.every_ns);
                        if m.resume.awaiting {
                            c.drops_skipped += 1;
                        } else {
                            match self.drop {
                                DropMode::Eof => {
                                    pool.abort(slot, false);
                                }
                                DropMode::Reset => {
                                    pool.abort(slot, true);
                                }
                                DropMode::Close => {
                                    if !pool.begin_close(slot) {
                                        pool.abort(slot, false);
                                    }
                                }
                            }
                            c.drops += 1;
                            let until = at + self.offline_ns;
                            m.link = Link::Offline { until };
                            next = next.min(until);
                            continue;
                        }
                    }
                    next = next.min(m.next_drop);
                }
                Link::Offline { until } => {
                    if now < until {
                        next = next.min(until);
                        continue;
                    }
                    let other = 1 - m.current;
                    let fresh = m.slots[other];
                    if pool.state(fresh) == State::Closing {
                        pool.abort(fresh, false);
                        c.unfinished_closes += 1;
                    }
                    if pool.state(fresh) == State::Closed {
                        pool.recycle(fresh);
                    }
                    m.current = other;
                    let since = m.resume.since();
                    if since.is_none() {
                        c.reconnects_without_position += 1;
                    }
                    let path = match self.resume {
                        ResumeMode::Url => {
                            envelope::ws_path(&self.base_path, Some(&self.channel), false, since)
                        }
                        ResumeMode::Command => {
                            let cmd = envelope::subscribe_command(&self.channel, since);
                            pool.send_on_open(fresh, cmd.as_bytes());
                            envelope::ws_path(&self.base_path, None, false, None)
                        }
                    };
                    m.resume.subscribe();
                    m.catching_up = false;
                    m.started_ns = now;
                    m.link = Link::Connecting;
                    c.reconnects += 1;
                    pool.start(fresh, &path);
                }
                Link::Connecting => {
                    let failed = pool.state(slot) == State::Closed;
                    let late = now.saturating_sub(m.started_ns) > self.connect_timeout_ns;
                    if failed || late {
                        if late {
                            pool.abort(slot, true);
                        }
                        c.reconnect_failures += 1;
                        m.resume.awaiting = false;
                        m.link = Link::Offline {
                            until: now + self.offline_ns,
                        };
                        next = next.min(now + self.offline_ns);
                    }
                }
            }
        }
        next
    }
}

fn io(e: std::io::Error) -> String {
    format!("epoll_wait: {e}")
}

fn check(args: &ReconnectArgs) -> Result<(), String> {
    if !(args.rate > 0.0 && args.rate <= 100_000.0) {
        return Err("--rate must be within (0, 100000] per second".into());
    }
    if !(0.0..=1.0).contains(&args.reconnect_fraction) {
        return Err("--reconnect-fraction must be within [0, 1]".into());
    }
    if !(args.reconnect_every_s > 0.0 && args.reconnect_every_s <= 3600.0) {
        return Err("--reconnect-every-s must be within (0, 3600]".into());
    }
    if args.offline_ms as f64 >= args.reconnect_every_s * 1000.0 {
        return Err("--offline-ms must be shorter than --reconnect-every-s".into());
    }
    for (v, name) in [(args.calm_s, "--calm-s"), (args.duration, "--duration")] {
        if !(v > 0.0 && v <= 3600.0) {
            return Err(format!("{name} must be within (0, 3600] s"));
        }
    }
    if !(args.warmup > 0.0 && args.warmup <= 600.0) {
        return Err("--warmup must be within (0, 600] s".into());
    }
    if !(0.0..=600.0).contains(&args.drain) {
        return Err("--drain must be within [0, 600] s".into());
    }
    if !(0.0..=10.0).contains(&args.latency_tolerance) {
        return Err("--latency-tolerance must be within [0, 10]".into());
    }
    Ok(())
}

/// A channel name the server accepts and that needs no escaping in a URL or a JSON string.
fn valid_channel(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:@/-".contains(&b))
}

/// The ratio of two latency summaries' percentiles (`None` when either is empty).
fn ratios(churn: &Histogram<u64>, calm: &Histogram<u64>) -> Value {
    if churn.is_empty() || calm.is_empty() {
        return Value::Null;
    }
    let r = |q: f64| {
        let (a, b) = (churn.value_at_quantile(q), calm.value_at_quantile(q));
        scenario::round3(a as f64 / b.max(1) as f64)
    };
    json!({"p50": r(0.5), "p90": r(0.9), "p99": r(0.99), "p999": r(0.999)})
}

/// Runs the scenario.
pub fn run(args: ReconnectArgs) -> Result<(), String> {
    check(&args)?;
    let control_addr = target::parse_control(&args.control)?;
    let n = args.common.connections as usize;
    let movers = mover_set(n, args.reconnect_fraction);
    let r = movers.len();
    let setup = scenario::prepare(&args.common, r as u64)?;
    let host = scenario::host_info(&setup);
    let Setup {
        url,
        sources,
        mut progress,
        ..
    } = setup;
    let channel = args
        .channel
        .clone()
        .or_else(|| url.channel().map(str::to_string))
        .unwrap_or_else(|| "hist:bench".into());
    if !valid_channel(&channel) {
        return Err(format!(
            "channel {channel:?}: 1 to 128 characters of [A-Za-z0-9_.:@/-]"
        ));
    }
    let base_path = url.path.clone();
    let stable_path = envelope::ws_path(&base_path, Some(&channel), true, None);
    let json_path = envelope::ws_path(&base_path, Some(&channel), false, None);
    let pid = args.common.server_pid;
    let connect_timeout_ns = (args.common.connect_timeout_s * 1e9) as u64;

    let mut pool = Pool::new(url, n + r, sources).map_err(|e| format!("epoll: {e}"))?;
    pool.set_deflate(args.common.deflate);
    pool.set_coalesce(args.coalesce_us * 1000);
    let timer = Timer::new().map_err(|e| format!("timerfd: {e}"))?;
    pool.poller()
        .add(timer.raw_fd(), TOKEN_TIMER, Interest::Read)
        .map_err(|e| format!("epoll_ctl: {e}"))?;
    let publisher = ControlPub::connect(&control_addr)?;
    pool.poller()
        .add(publisher.raw_fd(), TOKEN_CONTROL, Interest::EdgeBoth)
        .map_err(|e| format!("epoll_ctl: {e}"))?;

    let mut mover_of = vec![STABLE; n];
    let t_open = sys::now_ns();
    let mut mover_list = Vec::with_capacity(r);
    for (k, &sub) in movers.iter().enumerate() {
        mover_of[sub] = k as u32;
        let spare = n + k;
        pool.set_wide(sub);
        pool.set_wide(spare);
        let mut resume = Resume::default();
        resume.subscribe();
        mover_list.push(Mover {
            slots: [sub, spare],
            current: 0,
            link: Link::Online,
            resume,
            started_ns: t_open,
            next_drop: u64::MAX,
            refused_pending: false,
            catching_up: false,
        });
    }
    let mut rx = Rx {
        n,
        channel: channel.as_bytes().to_vec(),
        mover_of,
        movers: mover_list,
        trackers: vec![SeqTracker::default(); n],
        bounds: Bounds::unset(),
        feed: Feed {
            publisher,
            channel: channel.clone(),
            timer,
            payload_bytes: args.payload as usize,
            scratch: Vec::new(),
            read_buf: vec![0; 64 * 1024],
            interval_ns: 1e9 / args.rate,
            t0: 0,
            sent: 0,
            publishing: false,
            armed_for: 0,
            stalls: 0,
            published: [0; 3],
        },
        stable: [Figures::new(), Figures::new(), Figures::new()],
        moving: [Figures::new(), Figures::new(), Figures::new()],
        replay: Figures::new(),
        reply_us: pool::latency_histogram(),
        caught_up_us: pool::latency_histogram(),
        delta: None,
        counts: Counts::default(),
    };

    let is_mover: Vec<bool> = rx.mover_of.iter().map(|&k| k != STABLE).collect();
    pool.open(
        0..n,
        args.common.concurrency as usize,
        &|i| {
            if is_mover[i] {
                json_path.clone()
            } else {
                stable_path.clone()
            }
        },
        t_open + connect_timeout_ns,
        &mut rx,
        &mut progress,
    )
    .map_err(io)?;
    let connect_s = (sys::now_ns() - t_open) as f64 / 1e9;
    let opened = (0..n).filter(|&i| pool.state(i) == State::Open).count();
    if opened == 0 {
        scenario::print_errors(&pool.stats);
        return Err("no subscriber could connect".into());
    }

    // Warm-up: publish until every open subscriber is receiving (at least 1 s).
    let t = sys::now_ns();
    let bounds = rx.bounds;
    rx.feed.start(t, &bounds);
    let warmup_end = t + (args.warmup * 1e9) as u64;
    loop {
        let now = sys::now_ns();
        let receiving = (0..n)
            .filter(|&i| pool.state(i) != State::Open || rx.trackers[i].next != 0)
            .count();
        let replied = rx.movers.iter().all(|m| !m.resume.awaiting);
        if now >= warmup_end || (now >= t + WARMUP_MIN_NS && receiving == n && replied) {
            break;
        }
        progress.tick(now, || {
            format!("warm-up: {receiving} of {n} subscribers receiving")
        });
        pool.poll(10, &mut rx).map_err(io)?;
    }
    progress.clear();
    let silent: Vec<usize> = (0..n).filter(|&i| rx.trackers[i].next == 0).collect();
    if !silent.is_empty() {
        eprintln!(
            "ringcast-load: warning: {} subscribers received nothing during the warm-up \
             (not connected? wrong channel?); they are left out of the accounting",
            silent.len()
        );
    }
    let stable_count = (0..n)
        .filter(|&i| rx.mover_of[i] == STABLE && rx.trackers[i].next != 0)
        .count();
    let moving_count = rx
        .movers
        .iter()
        .filter(|m| rx.trackers[m.slots[0]].next != 0)
        .count();

    // The three periods; the churn's drops are scheduled from its start.
    let calm_ns = (args.calm_s * 1e9) as u64;
    let churn_ns = (args.duration * 1e9) as u64;
    let bounds = Bounds::starting_at(sys::now_ns(), calm_ns, churn_ns);
    rx.bounds = bounds;
    let churn = Churn {
        base_path,
        channel: channel.clone(),
        every_ns: (args.reconnect_every_s * 1e9) as u64,
        offline_ns: args.offline_ms * 1_000_000,
        connect_timeout_ns,
        drop: args.drop,
        resume: args.resume,
    };
    for k in 0..r {
        rx.movers[k].next_drop = churn.first_drop(&bounds, k, r, args.waves);
    }
    let cpu = |pid| (scenario::server_cpu(pid), scenario::self_cpu());
    let boundaries = [
        bounds.measure_from,
        bounds.churn_start,
        bounds.churn_end,
        bounds.end,
    ];
    let mut samples: Vec<(Option<CpuSample>, CpuSample)> = vec![cpu(pid)];
    let mut next_action = bounds.churn_start;
    loop {
        let now = sys::now_ns();
        while samples.len() < boundaries.len() && now >= boundaries[samples.len()] {
            samples.push(cpu(pid));
        }
        if now >= bounds.end {
            break;
        }
        if let Some(why) = &rx.feed.publisher.closed {
            return Err(why.clone());
        }
        if now >= next_action {
            next_action = churn.service(&mut pool, &mut rx, now);
        }
        let period = PERIOD_NAMES[rx.bounds.period_of(now).index().unwrap_or(0)];
        let c = &rx.counts;
        progress.tick(now, || {
            format!(
                "{period}: published {}, {} open, {} reconnects ({} recovered, {} not), lost {}, \
                 {:.0} s left",
                human_count(rx.feed.sent),
                human_count(pool.stats.open_now),
                human_count(c.reconnects),
                human_count(c.recovered),
                human_count(c.not_recovered),
                human_count(c.stable_lost + c.moving_lost),
                (bounds.end - now) as f64 / 1e9
            )
        });
        let until = next_action.min(bounds.end);
        let wait_ms = (until.saturating_sub(now).div_ceil(1_000_000)).clamp(1, 100) as i32;
        pool.poll(wait_ms, &mut rx).map_err(io)?;
    }
    progress.clear();

    // Stop publishing; let what is on its way arrive, reconnects still under way finish.
    rx.feed.publishing = false;
    let end_seq = rx.feed.sent + 1;
    let drain_until = sys::now_ns() + (args.drain * 1e9) as u64;
    loop {
        let now = sys::now_ns();
        if now >= drain_until {
            break;
        }
        let waiting_stable = (0..n).any(|i| {
            rx.mover_of[i] == STABLE
                && pool.state(i) == State::Open
                && rx.trackers[i].next != 0
                && !rx.trackers[i].reached(end_seq)
        });
        let waiting_movers = rx.movers.iter().any(|m| {
            rx.trackers[m.slots[0]].next != 0 && !rx.trackers[m.slots[0]].reached(end_seq)
        });
        if !waiting_stable && !waiting_movers {
            break;
        }
        if now >= next_action {
            next_action = churn.service(&mut pool, &mut rx, now);
        }
        pool.poll(10, &mut rx).map_err(io)?;
    }
    // What has not arrived now is lost: every subscriber that was receiving after the warm-up
    // counts, the ones the server disconnected included.
    for i in 0..n {
        if rx.trackers[i].next == 0 {
            continue;
        }
        let missing = rx.trackers[i].settle(end_seq);
        if rx.mover_of[i] == STABLE {
            rx.counts.stable_lost += missing;
        } else {
            rx.counts.moving_lost += missing;
        }
    }
    let stable_disconnected = (0..n)
        .filter(|&i| rx.mover_of[i] == STABLE && pool.state(i) != State::Open)
        .count();
    let server_stats = control::server_stats(&control_addr);
    scenario::close(&mut pool, &mut progress)?;

    let result = report_json(&Report {
        args: &args,
        host,
        channel: &channel,
        rx: &rx,
        pool: &pool,
        samples: &samples,
        connect_s,
        stable_count,
        moving_count,
        silent: silent.len(),
        stable_disconnected,
        server_stats,
    });
    print_report(&result);
    if let Some(path) = &args.common.json {
        report::write_json(path, &result)?;
    }
    if let Some(why) = &rx.feed.publisher.closed {
        return Err(why.clone());
    }
    Ok(())
}

/// What the report is made of.
struct Report<'a> {
    args: &'a ReconnectArgs,
    host: Value,
    channel: &'a str,
    rx: &'a Rx,
    pool: &'a Pool,
    /// CPU samples at the period boundaries (before, churn, after, end).
    samples: &'a [(Option<CpuSample>, CpuSample)],
    connect_s: f64,
    stable_count: usize,
    moving_count: usize,
    silent: usize,
    stable_disconnected: usize,
    server_stats: Option<Value>,
}

fn report_json(r: &Report) -> Value {
    let rx = r.rx;
    let c = &rx.counts;
    let mut periods = serde_json::Map::new();
    for (p, name) in PERIOD_NAMES.iter().enumerate() {
        let published = rx.feed.published[p];
        let window = r.samples.get(p).zip(r.samples.get(p + 1));
        let (server_cpu, generator_cpu) = match window {
            Some((a, b)) => (
                scenario::core_fraction(a.0, b.0),
                Some(scenario::round3(a.1.core_fraction_until(&b.1))),
            ),
            None => (None, None),
        };
        let seconds =
            window.map(|(a, b)| scenario::round3((b.1.wall_ns - a.1.wall_ns) as f64 / 1e9));
        periods.insert(
            (*name).into(),
            json!({
                "seconds": seconds,
                "published": published,
                "stable": {
                    "expected": published * r.stable_count as u64,
                    "delivered": rx.stable[p].delivered,
                    "latency_us": report::percentiles(&rx.stable[p].hist),
                },
                "reconnecting": {
                    "expected": published * r.moving_count as u64,
                    "delivered": rx.moving[p].delivered,
                    "live_latency_us": report::percentiles(&rx.moving[p].hist),
                },
                "server_cpu": server_cpu,
                "generator_cpu": generator_cpu,
                "generator_bound": generator_cpu.is_some_and(|g| g >= 0.95),
            }),
        );
    }
    let mut calm = rx.stable[0].hist.clone();
    calm.add(&rx.stable[2].hist)
        .expect("histograms of the same bounds add");
    let ratio = ratios(&rx.stable[1].hist, &calm);
    let lost = c.stable_lost + c.moving_lost + c.offset_lost;
    let duplicated = c.stable_duplicated + c.moving_duplicated + c.offset_duplicated;
    let tolerance = r.args.latency_tolerance;
    let mut reasons: Vec<String> = Vec::new();
    if lost > 0 {
        reasons.push(format!("{lost} lost"));
    }
    if duplicated > 0 {
        reasons.push(format!("{duplicated} duplicated"));
    }
    if c.not_recovered > 0 {
        reasons.push(format!(
            "{} reconnects answered recovered:false (does the channel's namespace keep \
             history, history_size?)",
            c.not_recovered
        ));
    }
    let anomalies = c.offset_seq_mismatch
        + c.before_reply
        + c.inconsistent_replies
        + c.unexpected_replies
        + c.foreign
        + c.unparsable
        + c.error_replies;
    if anomalies > 0 {
        reasons.push(format!(
            "{anomalies} protocol anomalies (see accounting.reconnecting)"
        ));
    }
    if c.reconnect_failures > 0 {
        reasons.push(format!("{} reconnects failed", c.reconnect_failures));
    }
    if r.silent > 0 {
        reasons.push(format!("{} subscribers silent after the warm-up", r.silent));
    }
    if r.stable_disconnected > 0 || c.server_closed > 0 {
        reasons.push(format!(
            "{} connections closed by the server",
            r.stable_disconnected as u64 + c.server_closed
        ));
    }
    if let Some(e) = &rx.feed.publisher.first_error {
        reasons.push(format!("publish errors, first: {e}"));
    }
    for q in ["p50", "p99"] {
        if let Some(v) = ratio[q].as_f64()
            && v > 1.0 + tolerance
        {
            reasons.push(format!(
                "stable {q} during the churn ×{v:.3} the calm periods' (tolerance {:.0} %)",
                tolerance * 100.0
            ));
        }
    }
    if ratio.is_null() {
        reasons.push("no stable latency to compare (no stable subscribers?)".into());
    }
    json!({
        "scenario": "reconnect",
        "params": r.args,
        "host": r.host,
        "channel": r.channel,
        "connect_seconds": scenario::round3(r.connect_s),
        "connections": scenario::pool_json(&r.pool.stats),
        "subscribers": {
            "stable": r.stable_count,
            "reconnecting": r.moving_count,
            "silent_after_warmup": r.silent,
            "stable_disconnected": r.stable_disconnected,
        },
        "periods": periods,
        "stable_calm_latency_us": report::percentiles(&calm),
        "stable_churn_over_calm": ratio,
        "reconnects": {
            "drops": c.drops,
            "drops_skipped": c.drops_skipped,
            "reconnects": c.reconnects,
            "reconnects_without_position": c.reconnects_without_position,
            "failures": c.reconnect_failures,
            "server_closed": c.server_closed,
            "unfinished_closes": c.unfinished_closes,
            "recovered_true": c.recovered,
            "recovered_false": c.not_recovered,
            "announced_missing_by_refusals": c.refused_missed,
            "to_replay": c.to_replay,
            "replayed": c.replayed,
            "reply_latency_us": report::percentiles(&rx.reply_us),
            "caught_up_latency_us": report::percentiles(&rx.caught_up_us),
            "replay_latency_us": report::percentiles(&rx.replay.hist),
        },
        "accounting": {
            "lost": lost,
            "duplicated": duplicated,
            "stable": {"lost": c.stable_lost, "duplicated": c.stable_duplicated},
            "reconnecting": {
                "lost": c.moving_lost,
                "duplicated": c.moving_duplicated,
                "lost_by_offset": c.offset_lost,
                "duplicated_by_offset": c.offset_duplicated,
                "lost_announced": c.lost_announced,
                "offset_seq_mismatch": c.offset_seq_mismatch,
                "before_reply": c.before_reply,
                "inconsistent_replies": c.inconsistent_replies,
                "unexpected_replies": c.unexpected_replies,
                "after_drop": c.after_drop,
                "first_subscribes": c.first_subscribes,
            },
            "foreign": c.foreign,
            "unparsable": c.unparsable,
            "other_ops": c.other_ops,
            "error_replies": c.error_replies,
            "first_error": c.first_error,
        },
        "publisher": {
            "sent": rx.feed.sent,
            "stalls": rx.feed.stalls,
            "errors": rx.feed.publisher.errors,
            "first_error": rx.feed.publisher.first_error,
        },
        "server_stats": r.server_stats,
        "passed": reasons.is_empty(),
        "failed_because": reasons,
    })
}

fn print_report(v: &Value) {
    let p = &v["params"];
    let subs = &v["subscribers"];
    println!(
        "reconnect: {} stable + {} reconnecting subscribers on {}, {}/s, {}-byte payloads; \
         every {} s each reconnecting one drops ({}) and comes back after {} ms ({} resume{})",
        human_count(subs["stable"].as_u64().unwrap_or(0)),
        human_count(subs["reconnecting"].as_u64().unwrap_or(0)),
        v["channel"].as_str().unwrap_or(""),
        p["rate"],
        p["payload"],
        p["reconnect_every_s"],
        p["drop"].as_str().unwrap_or(""),
        p["offline_ms"],
        p["resume"].as_str().unwrap_or(""),
        if p["waves"] == true { ", in waves" } else { "" },
    );
    let q = |x: &Value| x.as_u64().map_or("-".to_string(), human_us);
    let cpu = |x: &Value| x.as_f64().map_or("-".into(), |c| format!("{c:.2}"));
    let mut rows = Vec::new();
    for name in PERIOD_NAMES {
        let f = &v["periods"][name];
        let (st, mv) = (&f["stable"], &f["reconnecting"]);
        let (sl, ml) = (&st["latency_us"], &mv["live_latency_us"]);
        let gen_cell = format!(
            "{}{}",
            cpu(&f["generator_cpu"]),
            if f["generator_bound"] == true {
                " (generator-bound)"
            } else {
                ""
            }
        );
        rows.push(vec![
            name.to_string(),
            f["seconds"]
                .as_f64()
                .map_or("-".into(), |s| format!("{s:.2}")),
            human_count(f["published"].as_u64().unwrap_or(0)),
            format!(
                "{}/{}",
                human_count(st["delivered"].as_u64().unwrap_or(0)),
                human_count(st["expected"].as_u64().unwrap_or(0))
            ),
            q(&sl["p50"]),
            q(&sl["p99"]),
            q(&sl["p999"]),
            q(&sl["max"]),
            format!(
                "{}/{}",
                human_count(mv["delivered"].as_u64().unwrap_or(0)),
                human_count(mv["expected"].as_u64().unwrap_or(0))
            ),
            q(&ml["p50"]),
            q(&ml["p99"]),
            q(&ml["max"]),
            cpu(&f["server_cpu"]),
            gen_cell,
        ]);
    }
    print!(
        "{}",
        report::table(
            &[
                "period",
                "seconds",
                "published",
                "stable delivered",
                "p50",
                "p99",
                "p99.9",
                "max",
                "reconn. delivered",
                "live p50",
                "live p99",
                "live max",
                "server_cpu",
                "generator_cpu",
            ],
            &rows
        )
    );
    let ratio = &v["stable_churn_over_calm"];
    if ratio.is_object() {
        let calm = &v["stable_calm_latency_us"];
        println!(
            "stable subscribers, churn over calm (before + after: p50 {}, p99 {}, p99.9 {}): \
             p50 ×{}, p90 ×{}, p99 ×{}, p99.9 ×{}",
            q(&calm["p50"]),
            q(&calm["p99"]),
            q(&calm["p999"]),
            ratio["p50"],
            ratio["p90"],
            ratio["p99"],
            ratio["p999"]
        );
    }
    let rc = &v["reconnects"];
    println!(
        "reconnects: {} drops ({} skipped), {} reconnects: recovered true {}, false {}, \
         failed {}; {} messages replayed of {} announced",
        human_count(rc["drops"].as_u64().unwrap_or(0)),
        rc["drops_skipped"],
        human_count(rc["reconnects"].as_u64().unwrap_or(0)),
        human_count(rc["recovered_true"].as_u64().unwrap_or(0)),
        human_count(rc["recovered_false"].as_u64().unwrap_or(0)),
        rc["failures"],
        human_count(rc["replayed"].as_u64().unwrap_or(0)),
        human_count(rc["to_replay"].as_u64().unwrap_or(0)),
    );
    let (rl, cl, pl) = (
        &rc["reply_latency_us"],
        &rc["caught_up_latency_us"],
        &rc["replay_latency_us"],
    );
    println!(
        "  connect() to subscribed reply: p50 {}, p99 {}, max {}; to the last replayed \
         message: p50 {}, p99 {}, max {}; replayed messages' age: p50 {}, max {}",
        q(&rl["p50"]),
        q(&rl["p99"]),
        q(&rl["max"]),
        q(&cl["p50"]),
        q(&cl["p99"]),
        q(&cl["max"]),
        q(&pl["p50"]),
        q(&pl["max"]),
    );
    let a = &v["accounting"];
    let m = &a["reconnecting"];
    println!(
        "accounting: stable lost {}, duplicated {}; reconnecting lost {} (by offset {}), \
         duplicated {} (by offset {}), announced gone {}; offset/sequence mismatches {}, \
         messages before the reply {}",
        a["stable"]["lost"],
        a["stable"]["duplicated"],
        m["lost"],
        m["lost_by_offset"],
        m["duplicated"],
        m["duplicated_by_offset"],
        m["lost_announced"],
        m["offset_seq_mismatch"],
        m["before_reply"],
    );
    let total = &v["server_stats"]["total"];
    if total.is_object() {
        println!(
            "server counters: recoveries {}, recoveries_refused {}",
            total["recoveries"], total["recoveries_refused"]
        );
    }
    if let Some(e) = a["first_error"].as_str() {
        println!("error replies: {}, first: {e}", a["error_replies"]);
    }
    if let Some(errors) = v["connections"]["errors"].as_object()
        && !errors.is_empty()
    {
        println!("errors:");
        for (kind, count) in errors {
            println!("  {count:>8}  {kind}");
        }
    }
    let why: Vec<&str> = v["failed_because"]
        .as_array()
        .map_or(&[][..], |a| &a[..])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if why.is_empty() {
        println!(
            "passed: nothing lost or duplicated, every reconnect recovered, stable p50 and p99 \
             within {:.0} % of the calm periods'",
            p["latency_tolerance"].as_f64().unwrap_or(0.0) * 100.0
        );
    } else {
        println!("not passed: {}", why.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_by_intended_send_time() {
        let b = Bounds::starting_at(100, 10, 30);
        assert_eq!(
            (b.measure_from, b.churn_start, b.churn_end, b.end),
            (100, 110, 140, 150)
        );
        assert_eq!(b.period_of(99), Period::Warmup);
        assert_eq!(b.period_of(100), Period::Before);
        assert_eq!(b.period_of(110), Period::Churn);
        assert_eq!(b.period_of(139), Period::Churn);
        assert_eq!(b.period_of(140), Period::After);
        assert_eq!(b.period_of(10_000), Period::After);
        assert_eq!(Bounds::unset().period_of(5), Period::Warmup);
    }

    #[test]
    fn drops_spread_over_the_interval_or_come_in_waves() {
        let every = 3_000_000_000;
        let offsets: Vec<u64> = (0..4)
            .map(|k| first_drop_offset_ns(k, 4, every, false))
            .collect();
        assert_eq!(
            offsets,
            vec![375_000_000, 1_125_000_000, 1_875_000_000, 2_625_000_000]
        );
        assert!((0..1000).all(|k| first_drop_offset_ns(k, 1000, every, false) < every));
        assert!((0..4).all(|k| first_drop_offset_ns(k, 4, every, true) == 0));
        // Evenly spaced movers: 10 % of 20 are 0 and 10.
        assert_eq!(mover_set(20, 0.1), vec![0, 10]);
        assert_eq!(mover_set(10, 0.0), Vec::<usize>::new());
        assert_eq!(mover_set(3, 1.0), vec![0, 1, 2]);
        assert_eq!(mover_set(10_000, 0.1).len(), 1000);
        // No drop whose reconnect would fall after the churn.
        let churn = Churn {
            base_path: "/ws".into(),
            channel: "c".into(),
            every_ns: 3,
            offline_ns: 1,
            connect_timeout_ns: 10,
            drop: DropMode::Eof,
            resume: ResumeMode::Url,
        };
        let b = Bounds::starting_at(0, 10, 10);
        assert_eq!(churn.if_in_churn(&b, 18), 18);
        assert_eq!(churn.if_in_churn(&b, 19), u64::MAX);
    }

    #[test]
    fn recovery_accounting_by_offset() {
        let mut r = Resume::default();
        assert_eq!(r.since(), None);
        r.subscribe();
        // Nothing before the reply counts as in order.
        assert_eq!(r.on_message(5), Offset::BeforeReply);
        assert_eq!(r.on_subscribed(10, 7, None), Reply::First);
        assert_eq!(r.on_message(11), Offset::InOrder { replay: false });
        assert_eq!(r.on_message(12), Offset::InOrder { replay: false });
        assert_eq!(
            r.since(),
            Some(Since {
                offset: 12,
                epoch: 7
            })
        );
        // Dropped after 12; the channel reached 15 meanwhile: 13..=15 replayed, then live.
        r.subscribe();
        assert_eq!(
            r.on_subscribed(15, 7, Some(true)),
            Reply::Recovered { missed: 3 }
        );
        assert_eq!(r.on_message(13), Offset::InOrder { replay: true });
        assert_eq!(r.on_message(14), Offset::InOrder { replay: true });
        assert_eq!(r.on_message(15), Offset::InOrder { replay: true });
        assert_eq!(r.on_message(16), Offset::InOrder { replay: false });
        // A seam that repeats or skips shows.
        assert_eq!(r.on_message(16), Offset::Duplicate);
        assert_eq!(
            r.on_message(18),
            Offset::Gap {
                missing: 1,
                replay: false
            }
        );
        // A reply nobody waits for, and recovered:true that contradicts the client.
        assert_eq!(r.on_subscribed(18, 7, Some(true)), Reply::Unexpected);
        r.subscribe();
        assert_eq!(r.on_subscribed(18, 8, Some(true)), Reply::Inconsistent);
        r.subscribe();
        assert_eq!(r.on_subscribed(10, 8, Some(true)), Reply::Inconsistent);
        assert_eq!(r.next, 11, "resynchronised on the server's offset");
        // recovered:false: what is gone is announced, live messages follow the reply's offset.
        r.subscribe();
        assert_eq!(
            r.on_subscribed(40, 8, Some(false)),
            Reply::Refused { missed: Some(30) }
        );
        assert_eq!(r.on_message(41), Offset::InOrder { replay: false });
        r.subscribe();
        assert_eq!(
            r.on_subscribed(3, 9, Some(false)),
            Reply::Refused { missed: None }
        );
        assert_eq!(r.since().map(|s| s.epoch), Some(9));
        // Recovery with nothing missed.
        r.subscribe();
        assert_eq!(r.on_message(4), Offset::BeforeReply);
        assert_eq!(
            r.on_subscribed(3, 9, Some(true)),
            Reply::Recovered { missed: 0 }
        );
        assert_eq!(r.on_message(4), Offset::InOrder { replay: false });
    }

    #[test]
    fn channel_names_and_ratios() {
        assert!(valid_channel("hist:bench"));
        assert!(valid_channel("a/b@c.d-e_f:1"));
        assert!(!valid_channel(""));
        assert!(!valid_channel("a b"));
        assert!(!valid_channel("a&since=1:2:a"));
        assert!(!valid_channel(&"x".repeat(129)));
        let mut calm = pool::latency_histogram();
        let mut churn = pool::latency_histogram();
        assert!(ratios(&churn, &calm).is_null());
        for _ in 0..100 {
            calm.record(1000).unwrap();
            churn.record(1100).unwrap();
        }
        let r = ratios(&churn, &calm);
        assert_eq!(r["p50"], 1.1);
        assert_eq!(r["p99"], 1.1);
    }
}
