//! `events`: the backend event stream (docs/control.md, "Event stream") under a connect/close
//! storm — every `connect` and `close` of every connection arrives exactly once, in the
//! connection's order, or a `gap` line says how many were dropped.
//!
//! Method. `--consumers K` control connections (at most 8) each send
//! `{"method":"events","types":["connect","close"]}`, with `"group":G` when `--group` is given
//! (then the K share the stream: each connection's events go to one of them), and wait for the
//! request's `result`, which the server sends once every shard routes to the consumer. Then `-n N`
//! `/ws` connections (envelope format: each reads its `{"op":"welcome","conn":ID}`, which is how
//! the generator knows the id its events carry) storm the server, `--rounds` times on fresh
//! connections: `--pattern wave` opens all N as fast as `--concurrency` allows, waits for every
//! welcome, then closes all N with the close handshake; `--pattern each` closes each connection
//! the moment its welcome arrives, `--concurrency` connections in their short lives at a time,
//! so a connection's `connect` and `close` are produced microseconds apart. With `--secret` and
//! `--users U`, connection `i` carries an HS256 token for user `u{i % U}` and its events must
//! name that user. The consumers are read by the same loop that drives the connections, as a
//! backend on the same machine would read them; after the last close the generator reads until
//! every expected event (or gap) arrived or `--drain-s` passes, then `--settle-s` more for
//! anything extra. `--lag-first` leaves the first consumer unread until the storm is over, a
//! backend that fell behind: with enough events (rounds, or a small `event_buffer_bytes_max`)
//! the server must drop some for it and say so with `gap` lines. A gap line comes before the
//! consumer's next event, so when the consumers fall quiet with events still unaccounted for,
//! the generator opens and closes one more connection at a time (at most 64, each accounted
//! like the storm's) until every consumer has all it is owed or a gap for it.
//!
//! Checks, for every connection that was welcomed: exactly one `connect` and one `close` at each
//! consumer (without a group) or at one member of the group (with one; both at the same member),
//! the `connect` first in that consumer's stream; the `user` as in the token. Per consumer and
//! shard, `seq` must grow by exactly one per event: a jump is events dropped and must be covered
//! by `gap` lines (`dropped` summed; a gap counts across shards and also covers a shard's last
//! drops, which its `seq` shows only if that shard sends a later event), and a repeat or a step
//! back is counted as such. Events of
//! connections this run did not make, other event types and unparsable lines are counted. The
//! run is *exact* when nothing is missing, extra or out of order; *accounted for* when the only
//! differences are missing events, exactly as many as the gaps state (and no more `seq` skipped
//! than that).
//!
//! Bounds: a consumer keeps at most one partial line (64 KiB); the events recorded for the
//! final accounting are capped at twice the connections made plus 10,000 per consumer (the rest
//! only counted).

use std::collections::HashMap;

use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

use crate::Common;
use crate::envelope::{self, Envelope};
use crate::pool::{Handler, Pool, State, TOKEN_SCENARIO};
use crate::report::{self, human_count};
use crate::scenario::control::{self, EventConsumer, EventKind, StreamLine};
use crate::scenario::{self, Setup};
use crate::sys::{self, Event, Interest};
use crate::target;
use crate::token;

/// Consumers are registered at `TOKEN_SCENARIO + k`.
const CONSUMERS_MAX: u32 = 8;
/// Event records kept per consumer beyond two per connection made.
const RECORD_SLACK: usize = 10_000;
/// The `user` of an event whose user is null (anonymous).
const USER_NONE: u32 = u32::MAX;
/// The `user` of an event whose user is not one of `u0..u{U-1}`.
const USER_OTHER: u32 = u32::MAX - 1;
/// How long `--pattern wave` waits for the last welcomes after the last upgrade.
const WELCOME_WAIT_NS: u64 = 10_000_000_000;
/// Time allowed for the server to complete a storm's close handshakes.
const CLOSE_WAIT_NS: u64 = 30_000_000_000;
/// Shards a consumer tracks `seq` for; events from a shard above are counted, not checked.
const SHARDS_MAX: usize = 1024;
/// The consumers count as quiet after this long without an event.
const QUIET_NS: u64 = 500_000_000;
/// Connections opened one at a time after the storm to bring out the gaps still owed.
const FLUSHES_MAX: u32 = 64;

/// How the connections storm.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Open all N, then close all N.
    Wave,
    /// Close each connection as soon as its welcome arrives.
    Each,
}

/// Flags of `events`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct EventsArgs {
    #[command(flatten)]
    #[serde(flatten)]
    common: Common,
    /// ringcast's control socket, where the consumers connect: unix:PATH or tcp:HOST:PORT.
    #[arg(long)]
    control: String,
    /// Event consumers (control connections reading the stream).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(CONSUMERS_MAX)))]
    consumers: u32,
    /// The consumers share this group (each connection's events go to one of them); without
    /// it every consumer gets every event.
    #[arg(long)]
    group: Option<String>,
    /// wave: open all N, then close all N; each: close each connection as soon as its welcome
    /// arrives.
    #[arg(long, value_enum, default_value = "wave")]
    pattern: Pattern,
    /// Storms in a row, each on new connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// HS256 secret of the server's `[auth]`: connection i carries a token for user u{i % --users}
    /// and its events must name that user (without it the connections are anonymous).
    #[arg(long, requires = "users")]
    #[serde(skip)]
    secret: Option<String>,
    /// Users the connections are spread over (with --secret).
    #[arg(long, requires = "secret", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    users: Option<u32>,
    /// The first consumer is not read until the storm is over (a backend that fell behind):
    /// what the server could not hold for it must come back as `gap` lines.
    #[arg(long)]
    lag_first: bool,
    /// Seconds to wait after the last close for the events still on their way.
    #[arg(long, default_value_t = 10.0)]
    drain_s: f64,
    /// Seconds to go on reading after every expected event arrived (duplicates, strays).
    #[arg(long, default_value_t = 0.5)]
    settle_s: f64,
}

/// One event as recorded for the final accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rec {
    conn: u64,
    close: bool,
    user: u32,
}

/// What one consumer's stream held.
#[derive(Debug, Default)]
struct Stream {
    connects: u64,
    closes: u64,
    other_events: u64,
    gaps: u64,
    gap_dropped: u64,
    results: u64,
    errors: u64,
    first_error: Option<String>,
    unparsable: u64,
    /// The last `seq` per shard (0: none yet).
    last_seq: Vec<u64>,
    /// Numbers skipped by `seq` (events the server dropped for this consumer).
    seq_skipped: u64,
    /// Events whose `seq` was not above the shard's last one.
    seq_not_increasing: u64,
    /// Events from a shard beyond `SHARDS_MAX` (not checked).
    shard_unchecked: u64,
    records: Vec<Rec>,
    records_max: usize,
    records_left_out: u64,
    last_event_ns: u64,
}

impl Stream {
    fn new(records_max: usize) -> Stream {
        Stream {
            records_max,
            ..Stream::default()
        }
    }

    /// The events of interest received (connect and close).
    fn received(&self) -> u64 {
        self.connects + self.closes
    }

    fn line(&mut self, line: StreamLine, users: Option<u32>, now_ns: u64) {
        match line {
            StreamLine::Event {
                kind,
                shard,
                seq,
                conn,
                user,
            } => {
                self.last_event_ns = now_ns;
                let shard = shard as usize;
                if shard < SHARDS_MAX {
                    if self.last_seq.len() <= shard {
                        self.last_seq.resize(shard + 1, 0);
                    }
                    let last = self.last_seq[shard];
                    if seq > last {
                        self.seq_skipped += seq - last - 1;
                        self.last_seq[shard] = seq;
                    } else {
                        self.seq_not_increasing += 1;
                    }
                } else {
                    self.shard_unchecked += 1;
                }
                let close = match kind {
                    EventKind::Connect => {
                        self.connects += 1;
                        false
                    }
                    EventKind::Close => {
                        self.closes += 1;
                        true
                    }
                    EventKind::Other => {
                        self.other_events += 1;
                        return;
                    }
                };
                if self.records.len() >= self.records_max {
                    self.records_left_out += 1;
                    return;
                }
                self.records.push(Rec {
                    conn,
                    close,
                    user: user_index(user.as_deref(), users),
                });
            }
            StreamLine::Gap { dropped } => {
                self.gaps += 1;
                self.gap_dropped += dropped;
            }
            StreamLine::Result => self.results += 1,
            StreamLine::Error(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
            StreamLine::Unparsable => self.unparsable += 1,
        }
    }
}

/// The index of user `u{k}` (k < `users`, written without leading zeros), or `USER_NONE` /
/// `USER_OTHER`.
fn user_index(user: Option<&str>, users: Option<u32>) -> u32 {
    let Some(user) = user else {
        return USER_NONE;
    };
    let k = user
        .strip_prefix('u')
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .filter(|d| d.len() == 1 || !d.starts_with('0'))
        .and_then(|d| d.parse::<u32>().ok());
    match (k, users) {
        (Some(k), Some(u)) if k < u => k,
        _ => USER_OTHER,
    }
}

/// The handler: welcomes of the storm's connections and the consumers' streams.
struct Checker {
    /// The id of each slot's current connection (0: no welcome yet).
    slot_conn: Vec<u64>,
    /// Slots whose welcome arrived since the driver last looked (`--pattern each`).
    welcomed_now: Vec<usize>,
    /// Every connection welcomed: its id → its index in `expected_user`.
    known: HashMap<u64, u32>,
    /// Per connection welcomed, the user its events must name.
    expected_user: Vec<u32>,
    users: Option<u32>,
    welcome_without_id: u64,
    welcome_twice: u64,
    other_messages: u64,
    consumers: Vec<EventConsumer>,
    streams: Vec<Stream>,
    read_buf: Vec<u8>,
}

impl Handler for Checker {
    fn message(&mut self, conn: usize, _text: bool, prefix: &[u8], _len: u64, _now_ns: u64) {
        match envelope::parse(prefix) {
            Envelope::Welcome { conn: Some(id) } => {
                if self.slot_conn[conn] != 0 || self.known.contains_key(&id) {
                    self.welcome_twice += 1;
                    return;
                }
                self.slot_conn[conn] = id;
                let user = self.users.map_or(USER_NONE, |u| conn as u32 % u);
                self.known.insert(id, self.expected_user.len() as u32);
                self.expected_user.push(user);
                self.welcomed_now.push(conn);
            }
            Envelope::Welcome { conn: None } => self.welcome_without_id += 1,
            _ => self.other_messages += 1,
        }
    }

    fn scenario_event(&mut self, ev: Event) {
        let Some(k) = ev.token.checked_sub(TOKEN_SCENARIO) else {
            return;
        };
        let k = k as usize;
        if k >= self.consumers.len() {
            return;
        }
        let now = sys::now_ns();
        let users = self.users;
        let Checker {
            consumers,
            streams,
            read_buf,
            ..
        } = self;
        let stream = &mut streams[k];
        consumers[k].read(read_buf, &mut |line| stream.line(line, users, now));
    }
}

impl Checker {
    /// When the last event arrived, at any consumer (0: none yet).
    fn last_event_ns(&self) -> u64 {
        self.streams
            .iter()
            .map(|s| s.last_event_ns)
            .max()
            .unwrap_or(0)
    }

    /// Whether every expected event arrived or was announced dropped.
    fn complete(&self, grouped: bool) -> bool {
        let expected = 2 * self.expected_user.len() as u64;
        if grouped {
            let got: u64 = self
                .streams
                .iter()
                .map(|s| s.received() + s.gap_dropped)
                .sum();
            got >= expected
        } else {
            self.streams
                .iter()
                .all(|s| s.received() + s.gap_dropped >= expected)
        }
    }
}

/// The accounting of one set of consumers that should together hold every event once: one
/// consumer without a group, or all the members of the group.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Accounting {
    /// Connections welcomed (each owes one connect and one close).
    pub connections: u64,
    /// Connections without their connect.
    pub missing_connect: u64,
    /// Connections without their close.
    pub missing_close: u64,
    /// Connect events beyond the first of a connection.
    pub duplicate_connect: u64,
    /// Close events beyond the first of a connection.
    pub duplicate_close: u64,
    /// Connections whose close came before their connect.
    pub close_before_connect: u64,
    /// Connections whose connect and close went to different members of the group.
    pub split: u64,
    /// Events naming another user than the connection's token.
    pub wrong_user: u64,
    /// Events of connections this run did not make (or whose welcome it never read).
    pub unknown_conn: u64,
    /// Events announced dropped by `gap` lines.
    pub gap_dropped: u64,
    /// Numbers skipped by `seq`.
    pub seq_skipped: u64,
    /// Events whose `seq` did not grow.
    pub seq_not_increasing: u64,
}

impl Accounting {
    /// Events owed and not received.
    pub fn missing(&self) -> u64 {
        self.missing_connect + self.missing_close
    }

    /// Nothing missing, extra, out of order or misnamed.
    pub fn exact(&self) -> bool {
        self.missing() == 0 && self.gap_dropped == 0 && self.seq_skipped == 0 && self.sound()
    }

    /// No duplicate, no order error, no stray or misnamed event, every missing event stated by
    /// the gaps, and the `seq` jumps no more than the gaps state: a jump shows only when the
    /// same shard sends a later event, so a shard's last drops are in the gaps (which count
    /// across shards) and not in its `seq`.
    pub fn accounted_for(&self) -> bool {
        self.sound() && self.missing() == self.gap_dropped && self.seq_skipped <= self.gap_dropped
    }

    fn sound(&self) -> bool {
        self.duplicate_connect == 0
            && self.duplicate_close == 0
            && self.close_before_connect == 0
            && self.split == 0
            && self.wrong_user == 0
            && self.unknown_conn == 0
            && self.seq_not_increasing == 0
    }
}

/// Accounts the connections `known` (id → index into `expected_user`) against `streams`, which
/// together must hold every connection's connect and close once (one stream, or a group's).
fn account(known: &HashMap<u64, u32>, expected_user: &[u32], streams: &[&Stream]) -> Accounting {
    let n = expected_user.len();
    // Per connection: connects, closes, the member that got the first event (u8::MAX: none),
    // whether a close came first.
    let mut connects = vec![0u32; n];
    let mut closes = vec![0u32; n];
    let mut member = vec![u8::MAX; n];
    let mut a = Accounting {
        connections: n as u64,
        ..Accounting::default()
    };
    for (k, s) in streams.iter().enumerate() {
        a.gap_dropped += s.gap_dropped;
        a.seq_skipped += s.seq_skipped;
        a.seq_not_increasing += s.seq_not_increasing;
        for r in &s.records {
            let Some(&c) = known.get(&r.conn) else {
                a.unknown_conn += 1;
                continue;
            };
            let c = c as usize;
            if r.user != expected_user[c] {
                a.wrong_user += 1;
            }
            match member[c] {
                u8::MAX => member[c] = k as u8,
                m if m as usize != k => a.split += 1,
                _ => {}
            }
            if r.close {
                closes[c] += 1;
            } else {
                if closes[c] > 0 && connects[c] == 0 {
                    a.close_before_connect += 1;
                }
                connects[c] += 1;
            }
        }
    }
    for c in 0..n {
        match connects[c] {
            0 => a.missing_connect += 1,
            k => a.duplicate_connect += u64::from(k - 1),
        }
        match closes[c] {
            0 => a.missing_close += 1,
            k => a.duplicate_close += u64::from(k - 1),
        }
    }
    a
}

fn io(e: std::io::Error) -> String {
    format!("epoll_wait: {e}")
}

/// Polls until `done` or `deadline_ns`; returns whether `done` held.
fn poll_until(
    pool: &mut Pool,
    ck: &mut Checker,
    deadline_ns: u64,
    done: &dyn Fn(&Pool, &Checker) -> bool,
) -> Result<bool, String> {
    loop {
        if done(pool, ck) {
            return Ok(true);
        }
        if sys::now_ns() >= deadline_ns {
            return Ok(false);
        }
        pool.poll(10, ck).map_err(io)?;
    }
}

/// Runs the scenario.
pub fn run(args: EventsArgs) -> Result<(), String> {
    if !(args.drain_s > 0.0 && args.drain_s <= 600.0) {
        return Err("--drain-s must be within (0, 600]".into());
    }
    if !(args.settle_s >= 0.0 && args.settle_s <= 60.0) {
        return Err("--settle-s must be within [0, 60]".into());
    }
    if let Some(s) = &args.secret
        && s.len() < token::SECRET_BYTES_MIN
    {
        return Err(format!(
            "--secret must be at least {} bytes (the server refuses a shorter one)",
            token::SECRET_BYTES_MIN
        ));
    }
    let control_addr = target::parse_control(&args.control)?;
    let k = args.consumers as usize;
    let n = args.common.connections as usize;
    // One more slot than the storm's: the connections that bring out owed gaps.
    let setup = scenario::prepare(&args.common, k as u64 + 1)?;
    if setup.url.path.contains("format=raw") {
        return Err(
            "events needs envelope-format connections (each reads its welcome's conn id): \
             drop format=raw from --url"
                .into(),
        );
    }
    let host = scenario::host_info(&setup);
    let Setup {
        url,
        sources,
        mut progress,
        ..
    } = setup;
    let base_path = url.path.clone();
    let tokens: Vec<String> = match (&args.secret, args.users) {
        (Some(secret), Some(users)) => (0..users.min(args.common.connections))
            .map(|u| token::user_token(secret.as_bytes(), &format!("u{u}"), &[]))
            .collect(),
        _ => Vec::new(),
    };
    let path_of = |i: usize| {
        if tokens.is_empty() {
            base_path.clone()
        } else {
            token::with_token(&base_path, &tokens[i % tokens.len()])
        }
    };
    let grouped = args.group.is_some();
    let pid = args.common.server_pid;
    let concurrency = args.common.concurrency as usize;
    let connect_timeout_ns = (args.common.connect_timeout_s * 1e9) as u64;

    let mut pool = Pool::new(url, n + 1, sources).map_err(|e| format!("epoll: {e}"))?;
    pool.set_deflate(args.common.deflate);
    for i in 0..=n {
        pool.set_wide(i);
    }
    let records_max = 2 * n * args.rounds as usize + RECORD_SLACK;
    let mut consumers = Vec::with_capacity(k);
    for j in 0..k {
        let c =
            EventConsumer::subscribe(&control_addr, &["connect", "close"], args.group.as_deref())?;
        if !(args.lag_first && j == 0) {
            pool.poller()
                .add(c.raw_fd(), TOKEN_SCENARIO + j as u64, Interest::Read)
                .map_err(|e| format!("epoll_ctl: {e}"))?;
        }
        consumers.push(c);
    }
    let server_before = control::server_stats(&control_addr);
    let mut ck = Checker {
        slot_conn: vec![0; n + 1],
        welcomed_now: Vec::new(),
        known: HashMap::with_capacity(n * args.rounds as usize),
        expected_user: Vec::with_capacity(n * args.rounds as usize),
        users: args.users,
        welcome_without_id: 0,
        welcome_twice: 0,
        other_messages: 0,
        consumers,
        streams: (0..k).map(|_| Stream::new(records_max)).collect(),
        read_buf: vec![0; 256 * 1024],
    };

    let (srv0, gen0) = (scenario::server_cpu(pid), scenario::self_cpu());
    let t_start = sys::now_ns();
    let mut rounds = Vec::new();
    let mut opened_without_welcome = 0u64;
    for round in 0..args.rounds {
        if round > 0 {
            for i in 0..n {
                if pool.state(i) == State::Closed {
                    pool.recycle(i);
                }
                ck.slot_conn[i] = 0;
            }
        }
        let opened0 = pool.stats.opened;
        let failed0 = pool.stats.failed;
        let welcomed0 = ck.expected_user.len();
        let t0 = sys::now_ns();
        let (open_s, close_s);
        match args.pattern {
            Pattern::Wave => {
                pool.open(
                    0..n,
                    concurrency,
                    &path_of,
                    t0 + connect_timeout_ns,
                    &mut ck,
                    &mut progress,
                )
                .map_err(io)?;
                // Every open connection's welcome, so every id is known before it closes.
                poll_until(
                    &mut pool,
                    &mut ck,
                    sys::now_ns() + WELCOME_WAIT_NS,
                    &|p, c| (0..n).all(|i| p.state(i) != State::Open || c.slot_conn[i] != 0),
                )?;
                opened_without_welcome += (0..n)
                    .filter(|&i| pool.state(i) == State::Open && ck.slot_conn[i] == 0)
                    .count() as u64;
                ck.welcomed_now.clear();
                let t1 = sys::now_ns();
                open_s = (t1 - t0) as f64 / 1e9;
                pool.close_range(0..n, t1 + CLOSE_WAIT_NS, &mut ck, &mut progress)
                    .map_err(io)?;
                close_s = (sys::now_ns() - t1) as f64 / 1e9;
            }
            Pattern::Each => {
                // Slots started and not closed yet: at most `concurrency`.
                let mut live: Vec<usize> = Vec::with_capacity(concurrency);
                let mut next = 0;
                let deadline = t0 + connect_timeout_ns + CLOSE_WAIT_NS;
                loop {
                    while live.len() < concurrency && next < n {
                        pool.start(next, &path_of(next));
                        live.push(next);
                        next += 1;
                    }
                    for i in std::mem::take(&mut ck.welcomed_now) {
                        pool.begin_close(i);
                    }
                    live.retain(|&i| pool.state(i) != State::Closed);
                    if live.is_empty() && next == n {
                        break;
                    }
                    let now = sys::now_ns();
                    if now >= deadline {
                        for &i in &live {
                            if pool.state(i) == State::Open && ck.slot_conn[i] == 0 {
                                opened_without_welcome += 1;
                            }
                            pool.abort(i, false);
                        }
                        break;
                    }
                    progress.tick(now, || {
                        format!(
                            "round {}: {} of {n} started, {} live",
                            round + 1,
                            next,
                            live.len()
                        )
                    });
                    pool.poll(10, &mut ck).map_err(io)?;
                }
                progress.clear();
                open_s = (sys::now_ns() - t0) as f64 / 1e9;
                close_s = 0.0;
            }
        }
        let opened = pool.stats.opened - opened0;
        rounds.push(json!({
            "round": round + 1,
            "opened": opened,
            "failed": pool.stats.failed - failed0,
            "welcomed": ck.expected_user.len() - welcomed0,
            "open_s": scenario::round3(open_s),
            "close_s": scenario::round3(close_s),
            "connections_per_s": (opened as f64 / (open_s + close_s).max(1e-9)).round(),
        }));
    }
    let storm_end = sys::now_ns();
    let (srv1, gen1) = (scenario::server_cpu(pid), scenario::self_cpu());
    if args.lag_first {
        pool.poller()
            .add(ck.consumers[0].raw_fd(), TOKEN_SCENARIO, Interest::Read)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
    }

    // The events still on their way: until every one arrived (or was announced dropped), or
    // the consumers fell quiet.
    let drain_deadline = storm_end + (args.drain_s * 1e9) as u64;
    let quiet_or_complete = |c: &Checker| {
        c.complete(grouped) || sys::now_ns() >= c.last_event_ns().max(storm_end) + QUIET_NS
    };
    poll_until(&mut pool, &mut ck, drain_deadline, &|_, c| {
        quiet_or_complete(c)
    })?;
    // A consumer that lost events hears of it only before its next event: one more connection
    // at a time (its connect and close are accounted like the others'), until every consumer
    // has everything or a gap for it.
    let mut flushes = 0u32;
    while !ck.complete(grouped) && flushes < FLUSHES_MAX && sys::now_ns() < drain_deadline {
        if pool.state(n) == State::Closed {
            pool.recycle(n);
        }
        ck.slot_conn[n] = 0;
        let t = sys::now_ns();
        pool.open(
            n..n + 1,
            1,
            &path_of,
            t + connect_timeout_ns,
            &mut ck,
            &mut progress,
        )
        .map_err(io)?;
        poll_until(&mut pool, &mut ck, t + WELCOME_WAIT_NS, &|p, c| {
            p.state(n) != State::Open || c.slot_conn[n] != 0
        })?;
        ck.welcomed_now.clear();
        pool.close_range(
            n..n + 1,
            sys::now_ns() + CLOSE_WAIT_NS,
            &mut ck,
            &mut progress,
        )
        .map_err(io)?;
        flushes += 1;
        let flushed_at = sys::now_ns();
        poll_until(&mut pool, &mut ck, drain_deadline, &|_, c| {
            c.complete(grouped) || sys::now_ns() >= c.last_event_ns().max(flushed_at) + QUIET_NS
        })?;
    }
    let complete = ck.complete(grouped);
    let drained_at = sys::now_ns();
    let settle_until = drained_at + (args.settle_s * 1e9) as u64;
    while sys::now_ns() < settle_until {
        pool.poll(10, &mut ck).map_err(io)?;
    }
    let server_stats = control::server_stats(&control_addr);
    scenario::close(&mut pool, &mut progress)?;

    let streams: Vec<&Stream> = ck.streams.iter().collect();
    let accountings: Vec<Accounting> = if grouped {
        vec![account(&ck.known, &ck.expected_user, &streams)]
    } else {
        streams
            .iter()
            .map(|s| account(&ck.known, &ck.expected_user, std::slice::from_ref(s)))
            .collect()
    };
    let verdict = if accountings.iter().all(Accounting::exact) {
        "exact"
    } else if accountings.iter().all(Accounting::accounted_for) {
        "accounted for"
    } else {
        "failed"
    };
    let last_event = ck
        .streams
        .iter()
        .map(|s| s.last_event_ns)
        .max()
        .unwrap_or(0);
    let consumer_json: Vec<Value> = ck
        .streams
        .iter()
        .zip(&ck.consumers)
        .map(|(s, c)| {
            json!({
                "connects": s.connects,
                "closes": s.closes,
                "other_events": s.other_events,
                "gaps": s.gaps,
                "gap_dropped": s.gap_dropped,
                "seq_skipped": s.seq_skipped,
                "seq_not_increasing": s.seq_not_increasing,
                "shards_seen": s.last_seq.iter().filter(|&&q| q > 0).count(),
                "shard_unchecked": s.shard_unchecked,
                "unparsable": s.unparsable,
                "results_after_subscribe": s.results,
                "errors": s.errors,
                "first_error": s.first_error,
                "records_left_out": s.records_left_out,
                "overlong_lines": c.overlong,
                "bytes_in": c.bytes_in,
                "closed": c.closed,
            })
        })
        .collect();
    let storm_s = (storm_end - t_start) as f64 / 1e9;
    let events_total: u64 = ck.streams.iter().map(Stream::received).sum();
    // The server's own event counters over the run (its totals since it started, less those
    // read before the storm).
    let server_events = server_stats.as_ref().map(|after| {
        let delta = |key: &str| {
            let before = server_before
                .as_ref()
                .map_or(Some(0), |b| b["total"][key].as_u64());
            Some(after["total"][key].as_u64()?.saturating_sub(before?))
        };
        json!({
            "events_sent": delta("events_sent"),
            "events_delivered": delta("events_delivered"),
            "events_dropped": delta("events_dropped"),
        })
    });
    let result = json!({
        "scenario": "events",
        "params": &args,
        "host": host,
        "connections": scenario::pool_json(&pool.stats),
        "rounds": rounds,
        "welcomed": ck.expected_user.len(),
        "opened_without_welcome": opened_without_welcome,
        "welcome_without_id": ck.welcome_without_id,
        "welcome_twice": ck.welcome_twice,
        "other_messages": ck.other_messages,
        "storm_s": scenario::round3(storm_s),
        "events_received": events_total,
        "events_per_s_during_storm": (events_total as f64 / storm_s.max(1e-9)).round(),
        "all_arrived_within_drain": complete,
        "flush_connections": flushes,
        "last_event_after_storm_ms": scenario::round3(last_event.saturating_sub(storm_end) as f64 / 1e6),
        "server_cpu": scenario::core_fraction(srv0, srv1),
        "generator_cpu": scenario::round3(gen0.core_fraction_until(&gen1)),
        "consumers": consumer_json,
        "accounting": accountings,
        "verdict": verdict,
        "server_events": server_events,
    });
    print_report(&result, &args);
    if let Some(path) = &args.common.json {
        report::write_json(path, &result)?;
    }
    if verdict == "failed" {
        return Err("the event stream did not account for every connect and close".into());
    }
    Ok(())
}

fn print_report(v: &Value, args: &EventsArgs) {
    let c = |x: &Value| human_count(x.as_u64().unwrap_or(0));
    println!(
        "events: {} connections welcomed in {} round(s) ({:?}), {:.2} s; {} consumer(s){}; \
         {} connect/close events received, last {} ms after the last close",
        c(&v["welcomed"]),
        args.rounds,
        args.pattern,
        v["storm_s"].as_f64().unwrap_or(0.0),
        args.consumers,
        args.group
            .as_deref()
            .map_or(String::new(), |g| format!(" in group {g}")),
        c(&v["events_received"]),
        v["last_event_after_storm_ms"],
    );
    let mut rows = Vec::new();
    for (k, s) in v["consumers"].as_array().into_iter().flatten().enumerate() {
        rows.push(vec![
            format!("{}", k + 1),
            c(&s["connects"]),
            c(&s["closes"]),
            c(&s["gaps"]),
            c(&s["gap_dropped"]),
            c(&s["seq_skipped"]),
            c(&s["seq_not_increasing"]),
            c(&s["shards_seen"]),
            c(&s["other_events"]),
            c(&s["unparsable"]),
        ]);
    }
    print!(
        "{}",
        report::table(
            &[
                "consumer",
                "connects",
                "closes",
                "gaps",
                "gap dropped",
                "seq skipped",
                "seq not +1",
                "shards",
                "other",
                "unparsable",
            ],
            &rows
        )
    );
    let mut rows = Vec::new();
    for (k, a) in v["accounting"].as_array().into_iter().flatten().enumerate() {
        rows.push(vec![
            if args.group.is_some() {
                "group".to_string()
            } else {
                format!("{}", k + 1)
            },
            c(&a["connections"]),
            c(&a["missing_connect"]),
            c(&a["missing_close"]),
            c(&a["duplicate_connect"]),
            c(&a["duplicate_close"]),
            c(&a["close_before_connect"]),
            c(&a["split"]),
            c(&a["wrong_user"]),
            c(&a["unknown_conn"]),
        ]);
    }
    print!(
        "{}",
        report::table(
            &[
                "stream",
                "connections",
                "no connect",
                "no close",
                "dup connect",
                "dup close",
                "close first",
                "split",
                "wrong user",
                "unknown",
            ],
            &rows
        )
    );
    if let Some(e) = v["server_events"].as_object() {
        println!(
            "server counters over the run: events_sent {}, events_delivered {}, events_dropped {}",
            e["events_sent"], e["events_delivered"], e["events_dropped"]
        );
    }
    for s in v["consumers"].as_array().into_iter().flatten() {
        if let Some(e) = s["first_error"].as_str() {
            println!("consumer error reply: {e}");
        }
        if let Some(e) = s["closed"].as_str() {
            println!("consumer: {e}");
        }
    }
    println!("verdict: {}", v["verdict"].as_str().unwrap_or("?"));
    if let Some(errors) = v["connections"]["errors"].as_object()
        && !errors.is_empty()
    {
        println!("errors:");
        for (kind, count) in errors {
            println!("  {count:>8}  {kind}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, shard: u32, seq: u64, conn: u64, user: Option<&str>) -> StreamLine {
        StreamLine::Event {
            kind,
            shard,
            seq,
            conn,
            user: user.map(str::to_string),
        }
    }

    #[test]
    fn users_by_name() {
        assert_eq!(user_index(Some("u0"), Some(5)), 0);
        assert_eq!(user_index(Some("u4"), Some(5)), 4);
        assert_eq!(user_index(Some("u5"), Some(5)), USER_OTHER);
        assert_eq!(user_index(Some("u04"), Some(5)), USER_OTHER);
        assert_eq!(user_index(Some("alice"), Some(5)), USER_OTHER);
        assert_eq!(user_index(Some("u1"), None), USER_OTHER);
        assert_eq!(user_index(None, Some(5)), USER_NONE);
    }

    #[test]
    fn a_clean_stream_is_exact() {
        let known: HashMap<u64, u32> = [(10, 0), (11, 1)].into_iter().collect();
        let users = [0, 1];
        let mut s = Stream::new(100);
        for (q, (kind, conn)) in [
            (EventKind::Connect, 10),
            (EventKind::Connect, 11),
            (EventKind::Close, 11),
            (EventKind::Close, 10),
        ]
        .into_iter()
        .enumerate()
        {
            let user = if conn == 10 { "u0" } else { "u1" };
            s.line(ev(kind, 0, q as u64 + 1, conn, Some(user)), Some(2), 0);
        }
        let a = account(&known, &users, &[&s]);
        assert!(a.exact(), "{a:?}");
        assert_eq!(a.connections, 2);
    }

    #[test]
    fn errors_of_every_kind_are_counted() {
        let known: HashMap<u64, u32> = [(10, 0), (11, 1), (12, 2)].into_iter().collect();
        let users = [USER_NONE; 3];
        let mut s = Stream::new(100);
        // 10: close before connect; 11: connect twice, no close; 12: nothing; 99: unknown.
        s.line(ev(EventKind::Close, 0, 1, 10, None), None, 0);
        s.line(ev(EventKind::Connect, 0, 2, 10, None), None, 0);
        s.line(ev(EventKind::Connect, 0, 3, 11, None), None, 0);
        s.line(ev(EventKind::Connect, 0, 3, 11, Some("u1")), None, 0);
        s.line(ev(EventKind::Connect, 1, 1, 99, None), None, 0);
        let a = account(&known, &users, &[&s]);
        assert_eq!(a.close_before_connect, 1);
        assert_eq!(a.duplicate_connect, 1);
        assert_eq!(a.missing_connect, 1);
        assert_eq!(a.missing_close, 2);
        assert_eq!(a.unknown_conn, 1);
        assert_eq!(a.wrong_user, 1, "u1 where the connection is anonymous");
        assert_eq!(a.seq_not_increasing, 1, "seq 3 twice on shard 0");
        assert!(!a.exact() && !a.accounted_for());
    }

    #[test]
    fn drops_are_accounted_for_by_gaps_and_seq() {
        let known: HashMap<u64, u32> = [(10, 0), (11, 1)].into_iter().collect();
        let users = [USER_NONE; 2];
        let mut s = Stream::new(100);
        s.line(ev(EventKind::Connect, 0, 1, 10, None), None, 0);
        // Two events dropped (seq 2 and 3: 11's connect and 10's close), then announced.
        s.line(StreamLine::Gap { dropped: 2 }, None, 0);
        s.line(ev(EventKind::Close, 0, 4, 11, None), None, 0);
        let a = account(&known, &users, &[&s]);
        assert_eq!(a.missing(), 2);
        assert_eq!(a.gap_dropped, 2);
        assert_eq!(a.seq_skipped, 2);
        assert!(!a.exact());
        assert!(a.accounted_for(), "{a:?}");
        // Seq jumps below the gaps' count: the shard's last drops, stated by the gap only.
        let mut s = Stream::new(100);
        s.line(ev(EventKind::Connect, 0, 1, 10, None), None, 0);
        s.line(StreamLine::Gap { dropped: 2 }, None, 0);
        s.line(ev(EventKind::Close, 1, 1, 10, None), None, 0);
        let a = account(&known, &users, &[&s]);
        assert_eq!((a.missing(), a.gap_dropped, a.seq_skipped), (2, 2, 0));
        assert!(a.accounted_for(), "{a:?}");
        // A drop the gap does not state is not accounted for.
        let mut s = Stream::new(100);
        s.line(ev(EventKind::Connect, 0, 1, 10, None), None, 0);
        s.line(ev(EventKind::Close, 0, 2, 10, None), None, 0);
        s.line(ev(EventKind::Close, 0, 3, 11, None), None, 0);
        let a = account(&known, &users, &[&s]);
        assert_eq!(a.missing(), 1);
        assert!(!a.accounted_for());
    }

    #[test]
    fn a_group_shares_connections_but_not_one_connection() {
        let known: HashMap<u64, u32> = [(10, 0), (11, 1)].into_iter().collect();
        let users = [USER_NONE; 2];
        let (mut a1, mut a2) = (Stream::new(100), Stream::new(100));
        a1.line(ev(EventKind::Connect, 0, 1, 10, None), None, 0);
        a1.line(ev(EventKind::Close, 0, 2, 10, None), None, 0);
        a2.line(ev(EventKind::Connect, 0, 1, 11, None), None, 0);
        a2.line(ev(EventKind::Close, 0, 2, 11, None), None, 0);
        assert!(account(&known, &users, &[&a1, &a2]).exact());
        // 11's close at the other member: split.
        let (mut b1, mut b2) = (Stream::new(100), Stream::new(100));
        b1.line(ev(EventKind::Connect, 0, 1, 10, None), None, 0);
        b1.line(ev(EventKind::Close, 0, 2, 10, None), None, 0);
        b1.line(ev(EventKind::Close, 0, 3, 11, None), None, 0);
        b2.line(ev(EventKind::Connect, 0, 1, 11, None), None, 0);
        let a = account(&known, &users, &[&b1, &b2]);
        assert_eq!(a.split, 1);
        assert!(!a.exact());
    }

    #[test]
    fn records_are_bounded() {
        let mut s = Stream::new(2);
        for q in 1..=5 {
            s.line(ev(EventKind::Connect, 0, q, q, None), None, 0);
        }
        assert_eq!(s.records.len(), 2);
        assert_eq!(s.records_left_out, 3);
        assert_eq!(s.connects, 5);
    }
}
