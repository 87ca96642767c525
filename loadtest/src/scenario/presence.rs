//! `presence`: users and presence in one big channel — `presence_stats` answers in O(1) however
//! many are in the channel, and a connect/disconnect storm of many users gives exactly one
//! `leave` and one `join` per user, and nothing else (docs/protocol.md, "Identity";
//! docs/control.md, `presence_stats`).
//!
//! Method. `-n N` member connections as `--users U` users: member `i` carries an HS256 token
//! (`--secret`, the server's `[auth] hs256_secret`) for user `u{i % U}` with
//! `channels:[C]` (`--channel`, default `room:bench`, whose namespace must have
//! `join_leave = true`; `loadtest/presence.toml` is such a config), so it is in the channel from
//! its upgrade on. Members use `format=raw` by default (raw clients get no presence news, so the
//! run measures presence, not the fan-out of news to 10,000 clients); `--member-format json`
//! makes them envelope clients that get every join and leave (counted only). Before them,
//! `--watchers W` envelope connections (users `watch0..`, same channel) open and wait for their
//! `subscribed` reply; each watcher counts the join and leave news per member user, and checks
//! that a user's news alternate (a join while the user is already in, or a leave while it is
//! out, is counted).
//!
//! 1. Connect: the members open as fast as `--concurrency` allows; the generator then waits
//!    until every watcher has a join of every user (at most `--news-timeout-s`) and `--settle-s`
//!    more. Expected: one join per user, no leave.
//! 2. `presence_stats`: `--stats-calls` sequential round trips on a control connection of their
//!    own, each interleaved with a `presence_stats` of a reference channel (`C` with `-ref`
//!    appended, same namespace, which only the watchers' tokens join: W users) and an `info` (a
//!    request that reads no channel), each timed from the write to the reply's newline (the
//!    event loop is idle meanwhile; nothing else is in flight). The answers must be `users` =
//!    U + W, `conns` = N + W, `anonymous` 0 (and W, W, 0 for the reference). O(1) is shown two
//!    ways: the big channel's latency over the reference's, call by call in one server process
//!    (the machine's noise cancels), must stay near 1; and across runs with different N and U
//!    it must not grow.
//! 3. Storm: every connection of `--storm-users S` users (`u0..u{S-1}`: the members with
//!    `i % U < S`) is closed with the close handshake; once every watcher has the S leaves, the
//!    same connections reopen (new sockets, same tokens) and the generator waits for the S joins
//!    and `--settle-s` more. Waiting for the leaves before reopening keeps the check exact with
//!    several shards: a user's close and its reopen travel to the channel's owner from different
//!    shards, on different rings, and a reopen overtaking the close would rightly give no news
//!    at all. Expected per watcher: exactly one leave then one join for each stormed user,
//!    nothing for the others. `presence_stats` is asked again after the storm.
//!
//! Every wait is bounded; the run fails (exit status 1) when a check does not hold.

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

use crate::Common;
use crate::envelope::{self, Envelope};
use crate::pool::{self, Handler, Pool, State};
use crate::report::{self, human_count};
use crate::scenario::control::Requester;
use crate::scenario::{self, Setup};
use crate::sys;
use crate::target;
use crate::token;

/// How long the watchers may take to open and be subscribed.
const WATCHERS_READY_NS: u64 = 10_000_000_000;
/// Time allowed for the server to complete the storm's close handshakes.
const CLOSE_WAIT_NS: u64 = 30_000_000_000;
/// `presence_stats` calls asked again after the storm.
const CALLS_AFTER_STORM: u32 = 20;

/// How the members connect.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberFormat {
    /// `format=raw`: no presence news.
    Raw,
    /// The envelope format: every join and leave of the channel (counted only).
    Json,
}

/// Flags of `presence`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct PresenceArgs {
    #[command(flatten)]
    #[serde(flatten)]
    common: Common,
    /// ringcast's control socket (for presence_stats): unix:PATH or tcp:HOST:PORT.
    #[arg(long)]
    control: String,
    /// The server's `[auth]` hs256_secret: the tokens are signed with it.
    #[arg(long)]
    #[serde(skip)]
    secret: String,
    /// Users the members are spread over: member i is user u{i % U}.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    users: u32,
    /// The channel; its namespace must have join_leave = true.
    #[arg(long, default_value = "room:bench")]
    channel: String,
    /// Envelope-format connections that count the join/leave news (users watch0, watch1...).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    watchers: u32,
    /// raw: members get no news; json: members are envelope clients and get every join/leave.
    #[arg(long, value_enum, default_value = "raw")]
    member_format: MemberFormat,
    /// presence_stats calls timed (and as many info calls).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    stats_calls: u32,
    /// Users whose every connection closes and reopens in the storm (u0..u{S-1}; 0: no storm).
    #[arg(long, default_value_t = 1000)]
    storm_users: u32,
    /// Seconds to go on reading after the expected news arrived (late or extra news).
    #[arg(long, default_value_t = 1.0)]
    settle_s: f64,
    /// Seconds the expected news may take to arrive after each phase.
    #[arg(long, default_value_t = 30.0)]
    news_timeout_s: f64,
}

/// What one watcher saw.
#[derive(Debug, Clone)]
struct Watcher {
    subscribed: bool,
    /// Join and leave news per member user.
    joins: Vec<u32>,
    leaves: Vec<u32>,
    /// Whether the user is in the channel, by the news so far.
    present: Vec<bool>,
    join_while_present: u64,
    leave_while_absent: u64,
    /// News about the watchers' own users.
    watcher_news: u64,
    /// News about a user that is neither a member user nor a watcher.
    stranger_news: u64,
    other_channel: u64,
    /// News on the reference channel (the watchers' own joins).
    reference_news: u64,
    messages: u64,
    errors: u64,
    unparsable: u64,
    other_ops: u64,
}

impl Watcher {
    fn new(users: usize) -> Watcher {
        Watcher {
            subscribed: false,
            joins: vec![0; users],
            leaves: vec![0; users],
            present: vec![false; users],
            join_while_present: 0,
            leave_while_absent: 0,
            watcher_news: 0,
            stranger_news: 0,
            other_channel: 0,
            reference_news: 0,
            messages: 0,
            errors: 0,
            unparsable: 0,
            other_ops: 0,
        }
    }

    fn news(&mut self, join: bool, user: &[u8]) {
        let Some(u) = member_user(user, self.joins.len()) else {
            if user.starts_with(b"watch") {
                self.watcher_news += 1;
            } else {
                self.stranger_news += 1;
            }
            return;
        };
        if join {
            self.joins[u] += 1;
            if self.present[u] {
                self.join_while_present += 1;
            }
            self.present[u] = true;
        } else {
            self.leaves[u] += 1;
            if !self.present[u] {
                self.leave_while_absent += 1;
            }
            self.present[u] = false;
        }
    }
}

/// The index of member user `u{k}` (k < `users`, no leading zeros).
fn member_user(user: &[u8], users: usize) -> Option<usize> {
    let digits = user.strip_prefix(b"u")?;
    if digits.is_empty()
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits.len() > 1 && digits[0] == b'0')
        || digits.len() > 9
    {
        return None;
    }
    let k = std::str::from_utf8(digits).ok()?.parse::<usize>().ok()?;
    (k < users).then_some(k)
}

/// The handler: the watchers' news, the members' messages counted.
struct Rx {
    watchers: Vec<Watcher>,
    channel: Vec<u8>,
    reference: Vec<u8>,
    member_messages: u64,
    last_news_ns: u64,
}

impl Handler for Rx {
    fn message(&mut self, conn: usize, _text: bool, prefix: &[u8], _len: u64, now_ns: u64) {
        let Some(w) = self.watchers.get_mut(conn) else {
            self.member_messages += 1;
            return;
        };
        match envelope::parse(prefix) {
            Envelope::Presence {
                join,
                channel,
                user,
            } => {
                if channel == self.reference.as_slice() {
                    w.reference_news += 1;
                    return;
                }
                if channel != self.channel.as_slice() {
                    w.other_channel += 1;
                    return;
                }
                self.last_news_ns = now_ns;
                w.news(join, user);
            }
            Envelope::Subscribed { channel, .. } if channel == self.channel.as_slice() => {
                w.subscribed = true;
            }
            Envelope::Message { .. } => w.messages += 1,
            Envelope::Error => w.errors += 1,
            Envelope::Unparsable => w.unparsable += 1,
            // welcome, authed, another subscribed.
            _ => w.other_ops += 1,
        }
    }
}

/// Join and leave counts of every watcher at one moment.
type Snapshot = Vec<(Vec<u32>, Vec<u32>)>;

fn snapshot(rx: &Rx) -> Snapshot {
    rx.watchers
        .iter()
        .map(|w| (w.joins.clone(), w.leaves.clone()))
        .collect()
}

/// The news of one phase at one watcher against what was expected.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct NewsCheck {
    /// Users expected to have news in the phase.
    pub users_with_news_expected: u64,
    /// Of them, users with exactly the expected news.
    pub users_as_expected: u64,
    /// Joins expected and not seen.
    pub joins_missing: u64,
    /// Joins beyond those expected.
    pub joins_extra: u64,
    /// Leaves expected and not seen.
    pub leaves_missing: u64,
    /// Leaves beyond those expected.
    pub leaves_extra: u64,
    /// News (joins and leaves) about users that should have had none.
    pub news_for_others: u64,
}

impl NewsCheck {
    /// Exactly the expected news.
    pub fn exact(&self) -> bool {
        self.users_as_expected == self.users_with_news_expected
            && self.joins_missing == 0
            && self.joins_extra == 0
            && self.leaves_missing == 0
            && self.leaves_extra == 0
            && self.news_for_others == 0
    }
}

/// Compares the news between two snapshots of one watcher with `expect(user)`: the joins and
/// leaves that user should have had in between.
fn check_news(
    before: &(Vec<u32>, Vec<u32>),
    after: &(Vec<u32>, Vec<u32>),
    expect: &dyn Fn(usize) -> (u32, u32),
) -> NewsCheck {
    let mut c = NewsCheck::default();
    for u in 0..after.0.len() {
        let joins = after.0[u] - before.0[u];
        let leaves = after.1[u] - before.1[u];
        let (want_joins, want_leaves) = expect(u);
        if want_joins == 0 && want_leaves == 0 {
            c.news_for_others += u64::from(joins + leaves);
            continue;
        }
        c.users_with_news_expected += 1;
        if joins == want_joins && leaves == want_leaves {
            c.users_as_expected += 1;
        }
        c.joins_missing += u64::from(want_joins.saturating_sub(joins));
        c.joins_extra += u64::from(joins.saturating_sub(want_joins));
        c.leaves_missing += u64::from(want_leaves.saturating_sub(leaves));
        c.leaves_extra += u64::from(leaves.saturating_sub(want_leaves));
    }
    c
}

fn io(e: std::io::Error) -> String {
    format!("epoll_wait: {e}")
}

/// Polls until `done` or `deadline_ns`; returns whether `done` held.
fn poll_until(
    pool: &mut Pool,
    rx: &mut Rx,
    deadline_ns: u64,
    done: &dyn Fn(&Pool, &Rx) -> bool,
) -> Result<bool, String> {
    loop {
        if done(pool, rx) {
            return Ok(true);
        }
        if sys::now_ns() >= deadline_ns {
            return Ok(false);
        }
        pool.poll(10, rx).map_err(io)?;
    }
}

/// Polls for `seconds`.
fn settle(pool: &mut Pool, rx: &mut Rx, seconds: f64) -> Result<(), String> {
    let until = sys::now_ns() + (seconds * 1e9) as u64;
    poll_until(pool, rx, until, &|_, _| false).map(|_| ())
}

/// Timed `presence_stats` calls on the channel, each followed by one on the reference channel
/// and an `info`; the last answers and how many differed from the one before.
struct StatsTiming {
    presence_ns: Histogram<u64>,
    reference_ns: Histogram<u64>,
    info_ns: Histogram<u64>,
    last: Value,
    last_reference: Value,
    answers_differ: u64,
}

fn time_presence_stats(
    req: &mut Requester,
    channel: &str,
    reference: &str,
    calls: u32,
) -> Result<StatsTiming, String> {
    let mut t = StatsTiming {
        presence_ns: pool::latency_histogram(),
        reference_ns: pool::latency_histogram(),
        info_ns: pool::latency_histogram(),
        last: Value::Null,
        last_reference: Value::Null,
        answers_differ: 0,
    };
    let fields = |c: &str| {
        format!(
            ",\"channel\":{}",
            serde_json::to_string(c).expect("a str always serialises")
        )
    };
    let (fields, reference_fields) = (fields(channel), fields(reference));
    for k in 0..calls {
        let t0 = sys::now_ns();
        let answer = req.call("presence_stats", &fields)?;
        let t1 = sys::now_ns();
        let answer_reference = req.call("presence_stats", &reference_fields)?;
        let t2 = sys::now_ns();
        req.call("info", "")?;
        let t3 = sys::now_ns();
        t.presence_ns.saturating_record((t1 - t0).max(1));
        t.reference_ns.saturating_record((t2 - t1).max(1));
        t.info_ns.saturating_record((t3 - t2).max(1));
        if k > 0 && (answer != t.last || answer_reference != t.last_reference) {
            t.answers_differ += 1;
        }
        t.last = answer;
        t.last_reference = answer_reference;
    }
    Ok(t)
}

/// `a`'s percentiles over `b`'s (p50, p90, p99), rounded to 3 decimals.
fn ratios(a: &Histogram<u64>, b: &Histogram<u64>) -> Value {
    let r = |q: f64| {
        scenario::round3(a.value_at_quantile(q) as f64 / b.value_at_quantile(q).max(1) as f64)
    };
    json!({"p50": r(0.5), "p90": r(0.9), "p99": r(0.99)})
}

/// Percentiles in µs with one decimal, from a histogram of ns.
fn percentiles_us(h: &Histogram<u64>) -> Value {
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    json!({
        "p50": us(h.value_at_quantile(0.5)),
        "p90": us(h.value_at_quantile(0.9)),
        "p99": us(h.value_at_quantile(0.99)),
        "max": us(h.max()),
        "count": h.len(),
    })
}

/// Runs the scenario.
pub fn run(args: PresenceArgs) -> Result<(), String> {
    if args.secret.len() < token::SECRET_BYTES_MIN {
        return Err(format!(
            "--secret must be at least {} bytes (the server refuses a shorter one)",
            token::SECRET_BYTES_MIN
        ));
    }
    if args.storm_users > args.users {
        return Err("--storm-users must be at most --users".into());
    }
    if !(args.settle_s >= 0.0 && args.settle_s <= 60.0) {
        return Err("--settle-s must be within [0, 60]".into());
    }
    if !(args.news_timeout_s > 0.0 && args.news_timeout_s <= 600.0) {
        return Err("--news-timeout-s must be within (0, 600]".into());
    }
    let control_addr = target::parse_control(&args.control)?;
    let w = args.watchers as usize;
    let n = args.common.connections as usize;
    let users = args.users as usize;
    let setup = scenario::prepare(&args.common, w as u64 + 1)?;
    let host = scenario::host_info(&setup);
    let Setup {
        url,
        sources,
        mut progress,
        ..
    } = setup;
    let secret = args.secret.as_bytes();
    let channel = args.channel.as_str();
    let reference = format!("{channel}-ref");
    let watcher_base = envelope::ws_path(&url.path, None, false, None);
    let member_base = envelope::ws_path(
        &url.path,
        None,
        args.member_format == MemberFormat::Raw,
        None,
    );
    let watcher_paths: Vec<String> = (0..w)
        .map(|k| {
            let t = token::user_token(secret, &format!("watch{k}"), &[channel, &reference]);
            token::with_token(&watcher_base, &t)
        })
        .collect();
    let member_paths: Vec<String> = (0..users.min(n))
        .map(|u| {
            let t = token::user_token(secret, &format!("u{u}"), &[channel]);
            token::with_token(&member_base, &t)
        })
        .collect();
    let path_of = |slot: usize| {
        if slot < w {
            watcher_paths[slot].clone()
        } else {
            member_paths[(slot - w) % users].clone()
        }
    };
    let user_of = |slot: usize| (slot - w) % users;
    let concurrency = args.common.concurrency as usize;
    let connect_timeout_ns = (args.common.connect_timeout_s * 1e9) as u64;
    let news_timeout_ns = (args.news_timeout_s * 1e9) as u64;
    let pid = args.common.server_pid;

    let mut pool = Pool::new(url, w + n, sources).map_err(|e| format!("epoll: {e}"))?;
    pool.set_deflate(args.common.deflate);
    for i in 0..w {
        pool.set_wide(i);
    }
    let mut rx = Rx {
        watchers: vec![Watcher::new(users); w],
        channel: channel.as_bytes().to_vec(),
        reference: reference.as_bytes().to_vec(),
        member_messages: 0,
        last_news_ns: 0,
    };

    // Watchers first, subscribed before any member arrives.
    let t = sys::now_ns();
    pool.open(
        0..w,
        w,
        &path_of,
        t + WATCHERS_READY_NS,
        &mut rx,
        &mut progress,
    )
    .map_err(io)?;
    let ready = poll_until(&mut pool, &mut rx, t + WATCHERS_READY_NS, &|p, r| {
        (0..w).all(|i| p.state(i) == State::Open && r.watchers[i].subscribed)
    })?;
    if !ready {
        scenario::print_errors(&pool.stats);
        return Err(format!(
            "the watchers did not open and get their subscribed reply for {channel} within 10 s \
             (is --secret the server's hs256_secret?)"
        ));
    }
    // The watchers' own joins, which may still be on their way, are not the members' business.
    settle(&mut pool, &mut rx, 0.2)?;

    // 1. Connect.
    let before_connect = snapshot(&rx);
    let members: Vec<usize> = (w..w + n).collect();
    let (srv0, gen0) = (scenario::server_cpu(pid), scenario::self_cpu());
    let t0 = sys::now_ns();
    pool.open_slots(
        &members,
        concurrency,
        &path_of,
        t0 + connect_timeout_ns,
        &mut rx,
        &mut progress,
    )
    .map_err(io)?;
    let connect_s = (sys::now_ns() - t0) as f64 / 1e9;
    let open_members: Vec<usize> = members
        .iter()
        .copied()
        .filter(|&i| pool.state(i) == State::Open)
        .collect();
    let mut present_users = vec![false; users];
    for &i in &open_members {
        present_users[user_of(i)] = true;
    }
    let joined = |r: &Rx| {
        r.watchers
            .iter()
            .zip(&before_connect)
            .all(|(wt, b)| (0..users).all(|u| !present_users[u] || wt.joins[u] > b.0[u]))
    };
    let all_joins = poll_until(&mut pool, &mut rx, t0 + news_timeout_ns, &|_, r| joined(r))?;
    let joins_s = (rx.last_news_ns.max(t0) - t0) as f64 / 1e9;
    settle(&mut pool, &mut rx, args.settle_s)?;
    let (srv1, gen1) = (scenario::server_cpu(pid), scenario::self_cpu());
    let after_connect = snapshot(&rx);
    let connect_checks: Vec<NewsCheck> = before_connect
        .iter()
        .zip(&after_connect)
        .map(|(b, a)| {
            check_news(b, a, &|u| {
                if present_users[u] { (1, 0) } else { (0, 0) }
            })
        })
        .collect();

    // 2. presence_stats.
    let mut req = Requester::connect(&control_addr)?;
    let watchers_open = (0..w).filter(|&i| pool.state(i) == State::Open).count() as u64;
    let expected_stats = json!({
        "users": present_users.iter().filter(|&&p| p).count() as u64 + watchers_open,
        "conns": open_members.len() as u64 + watchers_open,
        "anonymous": 0,
    });
    let expected_reference = json!({
        "users": watchers_open,
        "conns": watchers_open,
        "anonymous": 0,
    });
    let timing = time_presence_stats(&mut req, channel, &reference, args.stats_calls)?;

    // 3. Storm.
    let s = args.storm_users as usize;
    let stormed: Vec<usize> = open_members
        .iter()
        .copied()
        .filter(|&i| user_of(i) < s)
        .collect();
    let stormed_users: Vec<bool> = (0..users).map(|u| u < s && present_users[u]).collect();
    let mut storm = Value::Null;
    let mut storm_checks: Vec<NewsCheck> = Vec::new();
    let mut after_storm_timing = None;
    if !stormed.is_empty() {
        let before = snapshot(&rx);
        let t_close = sys::now_ns();
        pool.close_slots(&stormed, t_close + CLOSE_WAIT_NS, &mut rx, &mut progress)
            .map_err(io)?;
        let closed_s = (sys::now_ns() - t_close) as f64 / 1e9;
        let left = |r: &Rx| {
            r.watchers
                .iter()
                .zip(&before)
                .all(|(wt, b)| (0..users).all(|u| !stormed_users[u] || wt.leaves[u] > b.1[u]))
        };
        let all_leaves = poll_until(&mut pool, &mut rx, t_close + news_timeout_ns, &|_, r| {
            left(r)
        })?;
        let leaves_s = (rx.last_news_ns.max(t_close) - t_close) as f64 / 1e9;
        for &i in &stormed {
            pool.recycle(i);
        }
        let t_open = sys::now_ns();
        let opened0 = pool.stats.opened;
        pool.open_slots(
            &stormed,
            concurrency,
            &path_of,
            t_open + connect_timeout_ns,
            &mut rx,
            &mut progress,
        )
        .map_err(io)?;
        let reopened = pool.stats.opened - opened0;
        let reopen_s = (sys::now_ns() - t_open) as f64 / 1e9;
        let rejoined = |r: &Rx| {
            r.watchers
                .iter()
                .zip(&before)
                .all(|(wt, b)| (0..users).all(|u| !stormed_users[u] || wt.joins[u] > b.0[u]))
        };
        let all_rejoins = poll_until(&mut pool, &mut rx, t_open + news_timeout_ns, &|_, r| {
            rejoined(r)
        })?;
        let rejoins_s = (rx.last_news_ns.max(t_open) - t_open) as f64 / 1e9;
        settle(&mut pool, &mut rx, args.settle_s)?;
        let after = snapshot(&rx);
        storm_checks = before
            .iter()
            .zip(&after)
            .map(|(b, a)| {
                check_news(b, a, &|u| {
                    if stormed_users[u] { (1, 1) } else { (0, 0) }
                })
            })
            .collect();
        storm = json!({
            "users": stormed_users.iter().filter(|&&x| x).count(),
            "connections": stormed.len(),
            "closed_s": scenario::round3(closed_s),
            "all_leaves_seen": all_leaves,
            "last_leave_after_s": scenario::round3(leaves_s),
            "reopened": reopened,
            "reopen_s": scenario::round3(reopen_s),
            "all_joins_seen": all_rejoins,
            "last_join_after_s": scenario::round3(rejoins_s),
        });
        after_storm_timing = Some(time_presence_stats(
            &mut req,
            channel,
            &reference,
            CALLS_AFTER_STORM,
        )?);
    }
    scenario::close(&mut pool, &mut progress)?;

    let watcher_json: Vec<Value> = rx
        .watchers
        .iter()
        .map(|wt| {
            json!({
                "join_while_present": wt.join_while_present,
                "leave_while_absent": wt.leave_while_absent,
                "watcher_news": wt.watcher_news,
                "stranger_news": wt.stranger_news,
                "other_channel": wt.other_channel,
                "reference_news": wt.reference_news,
                "messages": wt.messages,
                "errors": wt.errors,
                "unparsable": wt.unparsable,
            })
        })
        .collect();
    let order_ok = rx
        .watchers
        .iter()
        .all(|wt| wt.join_while_present == 0 && wt.leave_while_absent == 0);
    let nothing_else = rx.watchers.iter().all(|wt| {
        wt.stranger_news == 0
            && wt.other_channel == 0
            && wt.messages == 0
            && wt.errors == 0
            && wt.unparsable == 0
    }) && (args.member_format == MemberFormat::Json || rx.member_messages == 0);
    let answers_ok = |t: &StatsTiming| {
        t.last == expected_stats && t.last_reference == expected_reference && t.answers_differ == 0
    };
    let stats_ok = answers_ok(&timing) && after_storm_timing.as_ref().is_none_or(answers_ok);
    let mut failures = Vec::new();
    if !all_joins || !connect_checks.iter().all(NewsCheck::exact) {
        failures.push("the connect phase did not give exactly one join per user");
    }
    if !storm_checks.iter().all(NewsCheck::exact) || storm["all_leaves_seen"] == false {
        failures.push("the storm did not give exactly one leave and one join per stormed user");
    }
    if !order_ok {
        failures.push("a join or leave out of turn");
    }
    if !nothing_else {
        failures.push("other messages than the expected news");
    }
    if !stats_ok {
        failures.push("presence_stats did not answer the expected counts");
    }
    let result = json!({
        "scenario": "presence",
        "params": &args,
        "host": host,
        "connections": scenario::pool_json(&pool.stats),
        "members_open": open_members.len(),
        "users_present": present_users.iter().filter(|&&p| p).count(),
        "watchers": w,
        "connect": {
            "seconds": scenario::round3(connect_s),
            "all_joins_seen": all_joins,
            "last_join_after_s": scenario::round3(joins_s),
            "server_cpu": scenario::core_fraction(srv0, srv1),
            "generator_cpu": scenario::round3(gen0.core_fraction_until(&gen1)),
            "news": connect_checks,
        },
        "presence_stats": {
            "expected": expected_stats,
            "reference_channel": reference,
            "reference_expected": expected_reference,
            "reference_answer": timing.last_reference,
            "answer": timing.last,
            "answers_differ": timing.answers_differ,
            "latency_us": percentiles_us(&timing.presence_ns),
            "reference_latency_us": percentiles_us(&timing.reference_ns),
            "ratio_to_reference": ratios(&timing.presence_ns, &timing.reference_ns),
            "info_latency_us": percentiles_us(&timing.info_ns),
            "after_storm": after_storm_timing.as_ref().map(|t| json!({
                "answer": t.last,
                "latency_us": percentiles_us(&t.presence_ns),
                "reference_latency_us": percentiles_us(&t.reference_ns),
            })),
        },
        "storm": storm,
        "storm_news": storm_checks,
        "watcher": watcher_json,
        "member_messages": rx.member_messages,
        "failures": failures,
        "passed": failures.is_empty(),
    });
    print_report(&result, &args);
    if let Some(path) = &args.common.json {
        report::write_json(path, &result)?;
    }
    if !failures.is_empty() {
        return Err(failures.join("; "));
    }
    Ok(())
}

fn print_report(v: &Value, args: &PresenceArgs) {
    let c = |x: &Value| human_count(x.as_u64().unwrap_or(0));
    let ps = &v["presence_stats"];
    println!(
        "presence: {} members as {} users on {} ({} members), {} watcher(s); connected in {:.2} s, \
         last join {:.2} s after the first connect",
        c(&v["members_open"]),
        c(&v["users_present"]),
        args.channel,
        match args.member_format {
            MemberFormat::Raw => "raw",
            MemberFormat::Json => "json",
        },
        args.watchers,
        v["connect"]["seconds"].as_f64().unwrap_or(0.0),
        v["connect"]["last_join_after_s"].as_f64().unwrap_or(0.0),
    );
    let lat = |l: &Value| {
        format!(
            "p50 {} µs, p90 {} µs, p99 {} µs, max {} µs",
            l["p50"], l["p90"], l["p99"], l["max"]
        )
    };
    println!(
        "presence_stats ({} calls): {}; answer {} (expected {})",
        ps["latency_us"]["count"],
        lat(&ps["latency_us"]),
        ps["answer"],
        ps["expected"]
    );
    println!(
        "presence_stats of {} ({}), interleaved call by call: {}; ratio {} to it: p50 ×{}, \
         p90 ×{}, p99 ×{}",
        ps["reference_channel"].as_str().unwrap_or("?"),
        ps["reference_answer"],
        lat(&ps["reference_latency_us"]),
        args.channel,
        ps["ratio_to_reference"]["p50"],
        ps["ratio_to_reference"]["p90"],
        ps["ratio_to_reference"]["p99"],
    );
    println!(
        "info, interleaved (reads no channel): {}",
        lat(&ps["info_latency_us"])
    );
    if let Some(a) = ps["after_storm"].as_object() {
        println!(
            "presence_stats after the storm: {}; answer {}",
            lat(&a["latency_us"]),
            a["answer"]
        );
    }
    let storm = &v["storm"];
    if storm.is_object() {
        println!(
            "storm: {} users' {} connections closed in {:.2} s (last leave after {:.2} s), \
             {} reopened in {:.2} s (last join after {:.2} s)",
            c(&storm["users"]),
            c(&storm["connections"]),
            storm["closed_s"].as_f64().unwrap_or(0.0),
            storm["last_leave_after_s"].as_f64().unwrap_or(0.0),
            c(&storm["reopened"]),
            storm["reopen_s"].as_f64().unwrap_or(0.0),
            storm["last_join_after_s"].as_f64().unwrap_or(0.0),
        );
    }
    let mut rows = Vec::new();
    for (phase, key) in [
        ("connect", &v["connect"]["news"]),
        ("storm", &v["storm_news"]),
    ] {
        for (k, n) in key.as_array().into_iter().flatten().enumerate() {
            rows.push(vec![
                phase.to_string(),
                format!("{}", k + 1),
                c(&n["users_with_news_expected"]),
                c(&n["users_as_expected"]),
                c(&n["joins_missing"]),
                c(&n["joins_extra"]),
                c(&n["leaves_missing"]),
                c(&n["leaves_extra"]),
                c(&n["news_for_others"]),
            ]);
        }
    }
    print!(
        "{}",
        report::table(
            &[
                "phase",
                "watcher",
                "users",
                "as expected",
                "joins missing",
                "joins extra",
                "leaves missing",
                "leaves extra",
                "news for others",
            ],
            &rows
        )
    );
    for (k, wt) in v["watcher"].as_array().into_iter().flatten().enumerate() {
        println!(
            "watcher {}: out of turn {} join(s), {} leave(s); news of watchers {}, of strangers \
             {}, other channels {}; messages {}, errors {}, unparsable {}",
            k + 1,
            wt["join_while_present"],
            wt["leave_while_absent"],
            wt["watcher_news"],
            wt["stranger_news"],
            wt["other_channel"],
            wt["messages"],
            wt["errors"],
            wt["unparsable"],
        );
    }
    println!("member messages received: {}", c(&v["member_messages"]));
    match v["failures"].as_array().filter(|f| !f.is_empty()) {
        None => println!("passed"),
        Some(f) => {
            for why in f {
                println!("FAILED: {}", why.as_str().unwrap_or("?"));
            }
        }
    }
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

    #[test]
    fn member_users_by_name() {
        assert_eq!(member_user(b"u0", 10), Some(0));
        assert_eq!(member_user(b"u9", 10), Some(9));
        assert_eq!(member_user(b"u10", 10), None);
        assert_eq!(member_user(b"u01", 10), None);
        assert_eq!(member_user(b"u", 10), None);
        assert_eq!(member_user(b"watch0", 10), None);
        assert_eq!(member_user(b"u99999999999999999999", usize::MAX), None);
    }

    #[test]
    fn news_alternate_per_user() {
        let mut w = Watcher::new(3);
        w.news(true, b"u1");
        w.news(true, b"u1"); // a second join while in
        w.news(false, b"u2"); // a leave while out
        w.news(true, b"watch0");
        w.news(true, b"bob");
        assert_eq!(w.joins, vec![0, 2, 0]);
        assert_eq!(w.leaves, vec![0, 0, 1]);
        assert_eq!(w.join_while_present, 1);
        assert_eq!(w.leave_while_absent, 1);
        assert_eq!(w.watcher_news, 1);
        assert_eq!(w.stranger_news, 1);
    }

    #[test]
    fn news_against_expectations() {
        let before = (vec![1, 1, 1, 1], vec![0, 0, 0, 0]);
        // u0, u1 stormed: u0 as expected, u1 a second join and no leave; u2 a stray leave.
        let after = (vec![2, 3, 1, 1], vec![1, 0, 1, 0]);
        let c = check_news(&before, &after, &|u| if u < 2 { (1, 1) } else { (0, 0) });
        assert_eq!(
            c,
            NewsCheck {
                users_with_news_expected: 2,
                users_as_expected: 1,
                joins_missing: 0,
                joins_extra: 1,
                leaves_missing: 1,
                leaves_extra: 0,
                news_for_others: 1,
            }
        );
        assert!(!c.exact());
        let c = check_news(&before, &before, &|_| (0, 0));
        assert!(c.exact());
    }
}
