//! The bridge's loop, on its own thread: two connections to Redis (one subscribed, one for
//! commands, since a RESP2 connection in subscribed mode takes no other command), the command
//! queue from the shards, and one `poll(2)` over the two sockets and the doorbell.
//!
//! Each turn: connect if it is time; take commands from the queue while the bounds allow
//! (requests in flight, bytes unwritten); write; sleep in `poll` (at most 100 ms while
//! connected, for the timers); read both sockets and act on every complete reply; flush the
//! sink. Requests are pipelined on the command connection and answered in order, so
//! `pending` is a FIFO of what each reply answers.
//!
//! Ordering rules the seam relies on:
//! - a history read is sent only once every earlier (un)subscribe has been confirmed on the
//!   subscriber connection (`sub_owed == 0`), so its position is read while the channel's
//!   subscription is active: later messages all arrive;
//! - after a reconnect, positions are read only once every resubscription is confirmed, for
//!   the same reason, and `Up` is sent after the last of them;
//! - a `UserSend` waits the same way, so a node that has just subscribed the user (its first
//!   connection of the user bound before the send) is among the receivers.
//!
//! Faults: any I/O error, protocol error, error reply on the subscriber connection, or request
//! unanswered for `timeout_ms` drops both connections (`lose`): requests in flight fail with
//! `BrokerError::Down`, `Down` is sent and logged once per loss, and the next attempt follows
//! the backoff. Nothing here panics on what Redis sends.

use super::backoff::{Backoff, Jitter};
use super::conn::{Conn, open_pair};
use super::keys::{Keys, Script};
use super::message;
use super::resp::Reply;
use super::url::RedisUrl;
use crate::broker::config::ClusterConfig;
use crate::broker::{
    BrokerCommand, BrokerError, BrokerEvent, BrokerSink, BrokerStats, DownCause, Keep, Kept,
    Position, PresenceView, Recovered, Shared,
};
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

/// Commands taken from the queue in one turn (then the sockets get their turn).
const COMMANDS_PER_TURN: usize = 4096;
/// Channels named in one `SUBSCRIBE` when resubscribing.
const SUBSCRIBE_BATCH: usize = 512;
/// Room left beside a payload for its RESP framing, broker channel name and message header.
const FRAMING_BYTES: usize = 1024;
/// Longest sleep while connected (the timers' resolution).
const TICK_MS: u64 = 100;

/// A request held until every earlier (un)subscribe is confirmed.
#[derive(Debug)]
enum Held {
    History(u64, Arc<str>, Option<Position>),
    UserSend(u64, Arc<str>, Bytes),
    /// A presence write: its news go out on the channel's broker channel, which this node may
    /// be subscribing just now (its first subscriber is the joining connection).
    PresenceSet(PresenceWrite),
}

/// A `PresenceSet` as the bridge sends it.
#[derive(Debug)]
struct PresenceWrite {
    channel: Arc<str>,
    user: Option<(Arc<str>, Option<Arc<str>>)>,
    conns: u32,
    news: bool,
    node_conns: u64,
    node_anon: u64,
}

/// What one reply on the command connection answers.
#[derive(Debug)]
enum Pending {
    /// A `PUBLISH` to a user's pub/sub channel.
    UserSend { token: u64 },
    /// A `PUBLISH` to a node's pub/sub channel.
    NodeSend { token: u64 },
    /// A `PUBSUB NUMSUB` of users' pub/sub channels.
    UserNodes { token: u64, users: usize },
    /// A publish (kept whole for a resend with `EVAL` after `NOSCRIPT`).
    Publish {
        token: u64,
        channel: Arc<str>,
        payload: Bytes,
        keep: Keep,
    },
    /// A history read (`since: None`: the position script only).
    History {
        token: u64,
        channel: Arc<str>,
        since: Option<Position>,
    },
    /// A history tail read.
    HistoryTail {
        token: u64,
        channel: Arc<str>,
        limit: usize,
    },
    /// A position read after a reconnect.
    Resync { channel: Arc<str> },
    /// A presence write (set, replace, sweep) for `channel`, or the lease's renewal (`None`).
    Presence { channel: Option<Arc<str>> },
    /// A presence read.
    PresenceRead {
        token: u64,
        channel: Arc<str>,
        page: Option<(Option<Arc<str>>, usize)>,
        news: bool,
    },
    /// A keep-alive.
    Ping,
}

/// This node's presence in one channel, as the owner shards reported it: what the bridge
/// writes again after a reconnect. Bounded by the node's own presence (its connections ×
/// their channels).
#[derive(Debug, Default)]
struct NodePresence {
    /// User → its connections in the channel here, and its `info`.
    users: HashMap<Arc<str>, (u32, Option<Arc<str>>)>,
    conns: u64,
    anon: u64,
    news: bool,
}

/// The two connections and what is in flight on them.
struct Link {
    sub: Conn,
    cmd: Conn,
    pending: VecDeque<Pending>,
    /// Subscribe and unsubscribe confirmations still owed.
    sub_owed: usize,
    sub_ping_owed: bool,
    /// The last reply on each connection (or the last request sent to an idle one).
    cmd_progress: Instant,
    sub_progress: Instant,
    /// `NOSCRIPT` was seen: scripts go as `EVAL` until the next connection.
    use_eval: bool,
    /// Resubscribing after a (re)connect: `Up` not sent yet.
    resyncing: bool,
    /// Position reads started (every resubscription confirmed).
    resync_started: bool,
    /// Channels whose position is still to be read.
    resync: VecDeque<Arc<str>>,
    resync_reads: usize,
    moved: usize,
    bumped: usize,
    resubscribed: (usize, usize),
}

/// A subscribed channel.
struct Sub {
    /// The handle events carry.
    channel: Arc<str>,
    /// The last position seen (messages, history replies, resync reads).
    known: Position,
    /// `known` when the last connection was made: what a resync read compares with (a message
    /// of a new epoch may arrive before the read's answer and move `known` already).
    at_connect: Position,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Announced {
    Nothing,
    Up,
    Down,
}

/// The bridge's state.
pub struct Bridge<S: BrokerSink> {
    url: RedisUrl,
    node: String,
    cfg: ClusterConfig,
    keys: Keys,
    publish: Script,
    history: Script,
    position: Script,
    history_tail: Script,
    presence_set: Script,
    presence_replace: Script,
    presence_sweep: Script,
    presence_read: Script,
    /// This process's name in presence: the node's name and its start time, so that a node
    /// restarted under the same name does not take over its dead incarnation's entries.
    instance: String,
    /// This node's number in connection ids, and the pub/sub channel other nodes reach it on.
    node_id: u8,
    node_channel: Vec<u8>,
    /// This node's presence by channel (see [`NodePresence`]).
    presence: HashMap<Arc<str>, NodePresence>,
    /// When the lease is next renewed and the presence channels swept.
    lease_due: Instant,
    /// Presence channels still to sweep in this lease period.
    sweeps: VecDeque<Arc<str>>,
    sink: S,
    shared: Arc<Shared>,
    rx: Receiver<BrokerCommand>,
    stash: Option<BrokerCommand>,
    queue_closed: bool,
    /// Subscribed channels and the last position seen of each.
    subs: HashMap<Arc<str>, Sub>,
    patterns: HashSet<Arc<str>>,
    /// Users subscribed (what this node's connections hold).
    users: HashSet<Arc<str>>,
    /// History reads and user sends waiting for subscribe confirmations.
    held: VecDeque<Held>,
    link: Option<Link>,
    retry_at: Instant,
    backoff: Backoff,
    jitter: Jitter,
    announced: Announced,
    ever_up: bool,
    /// A refused presence write was logged (once per process).
    presence_error_said: bool,
    /// The broker's boot mark at the last connection (`PREFIX:boot`).
    boot: Option<Bytes>,
    /// This connection's presence rewrite goes without news (the broker lost its data).
    presence_quiet: bool,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn protocol(what: &str) -> DownCause {
    DownCause::Protocol(what.to_string())
}

impl<S: BrokerSink> Bridge<S> {
    /// A bridge for `cfg` (validated, `redis` set), fed by `rx`.
    pub fn new(
        cfg: &ClusterConfig,
        url: RedisUrl,
        sink: S,
        shared: Arc<Shared>,
        rx: Receiver<BrokerCommand>,
    ) -> Bridge<S> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32;
        Bridge {
            url,
            node: cfg.node_name(),
            cfg: cfg.clone(),
            keys: Keys::new(&cfg.prefix),
            publish: Script::new(super::keys::PUBLISH),
            history: Script::new(super::keys::HISTORY),
            position: Script::new(super::keys::POSITION),
            history_tail: Script::new(super::keys::HISTORY_TAIL),
            presence_set: Script::new(super::keys::PRESENCE_SET),
            presence_replace: Script::new(super::keys::PRESENCE_REPLACE),
            presence_sweep: Script::new(super::keys::PRESENCE_SWEEP),
            presence_read: Script::new(super::keys::PRESENCE_READ),
            instance: format!(
                "{}@{}",
                cfg.node_name(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
            ),
            node_id: cfg.node_id(),
            node_channel: Keys::new(&cfg.prefix).node(cfg.node_id()),
            presence: HashMap::new(),
            lease_due: Instant::now(),
            sweeps: VecDeque::new(),
            sink,
            shared,
            rx,
            stash: None,
            queue_closed: false,
            subs: HashMap::new(),
            patterns: HashSet::new(),
            users: HashSet::new(),
            held: VecDeque::new(),
            link: None,
            retry_at: Instant::now(),
            backoff: Backoff::new(cfg.reconnect_min_ms, cfg.reconnect_max_ms),
            jitter: Jitter::new(seed),
            announced: Announced::Nothing,
            ever_up: false,
            presence_error_said: false,
            boot: None,
            presence_quiet: false,
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.timeout_ms)
    }

    /// Runs until asked to stop.
    pub fn run(mut self) {
        while !self.shared.stopping() {
            if self.link.is_none() && Instant::now() >= self.retry_at {
                self.connect();
            }
            self.take_commands();
            self.with_link(|_, link| {
                link.sub.flush()?;
                link.cmd.flush()
            });
            self.timers(Instant::now());
            self.sink.flush();
            let ready = self.sleep();
            self.with_link(|bridge, link| bridge.read(link, ready));
            self.sink.flush();
        }
        self.shared.set_up(false);
    }

    /// Runs `f` on the link; a failure loses it.
    fn with_link(&mut self, f: impl FnOnce(&mut Self, &mut Link) -> Result<(), DownCause>) {
        let Some(mut link) = self.link.take() else {
            return;
        };
        match f(self, &mut link) {
            Ok(()) => self.link = Some(link),
            Err(cause) => self.lose(Some(link), cause),
        }
    }

    // ----- connecting and losing ----------------------------------------------------------

    fn connect(&mut self) {
        let timeout = self.timeout();
        let bytes_max = self.cfg.buffer_bytes_max;
        let boot_key = self.keys.boot();
        let nid_key = self.keys.node_id(self.node_id);
        let lease = self.cfg.presence_lease_ms.to_string();
        let boot_mine = format!("{:016x}", self.jitter.draw());
        let opened = open_pair(&self.url, &self.node, timeout, bytes_max).and_then(|(sub, cmd)| {
            let mut cmd = cmd;
            // Whether Redis kept its data since the last connection: the first node to reach a
            // Redis sets its boot mark, and the mark survives exactly as long as the data.
            cmd.setup(&[b"SET", &boot_key, boot_mine.as_bytes(), b"NX"])?;
            let boot = cmd.setup(&[b"GET", &boot_key])?;
            let boot = boot.bytes().cloned().unwrap_or_default();
            // Another live node with this node's number makes connection ids ambiguous:
            // say so at every connect while it lasts (the number is the operator's to fix).
            let held = cmd.setup(&[b"GET", &nid_key])?;
            if let Some(other) = held.bytes().filter(|o| &o[..] != self.instance.as_bytes()) {
                let live = [&self.keys.live_prefix()[..], other].concat();
                if cmd.setup(&[b"EXISTS", &live])?.to_u64() == Some(1) {
                    BrokerStats::count(&self.shared.stats.node_id_conflicts);
                    eprintln!(
                        "ringcast: cluster: node_id {} is also held by the live node {}: \
                         connection ids of the two collide; give each node its own \
                         [cluster] node_id",
                        self.node_id,
                        text(other)
                    );
                }
            }
            cmd.setup(&[
                b"SET",
                &nid_key,
                self.instance.as_bytes(),
                b"PX",
                lease.as_bytes(),
            ])?;
            let scripts = [
                &self.publish,
                &self.history,
                &self.position,
                &self.history_tail,
                &self.presence_set,
                &self.presence_replace,
                &self.presence_sweep,
                &self.presence_read,
            ];
            for script in scripts {
                let sha = cmd.setup(&[b"SCRIPT", b"LOAD", script.text.as_bytes()])?;
                if sha.bytes().map(|b| &b[..]) != Some(script.sha.as_bytes()) {
                    return Err(protocol("SCRIPT LOAD answered another digest"));
                }
            }
            sub.set_nonblocking()?;
            cmd.set_nonblocking()?;
            Ok((sub, cmd, boot))
        });
        let (sub, cmd, boot) = match opened {
            Ok(opened) => opened,
            Err(cause) => return self.lose(None, cause),
        };
        // Redis lost its data (restarted without persistence, flushed): this node's presence
        // is written again without news, as every node's is (nobody left or joined; the
        // subscribers were told of them before). Otherwise the rewrite announces what differs
        // (e.g. the node was cut off long enough for the others to remove its users).
        self.presence_quiet = self.boot.as_ref().is_some_and(|b| *b != boot);
        self.boot = Some(boot);
        let now = Instant::now();
        let mut link = Link {
            sub,
            cmd,
            pending: VecDeque::new(),
            sub_owed: 0,
            sub_ping_owed: false,
            cmd_progress: now,
            sub_progress: now,
            use_eval: false,
            resyncing: true,
            resync_started: false,
            resync: VecDeque::new(),
            resync_reads: 0,
            moved: 0,
            bumped: 0,
            resubscribed: (self.subs.len(), self.patterns.len()),
        };
        for sub in self.subs.values_mut() {
            sub.at_connect = sub.known;
        }
        let channels: Vec<Vec<u8>> = (self.subs.keys().map(|c| self.keys.pubsub(c)))
            .chain(self.users.iter().map(|u| self.keys.user(u)))
            .chain([self.node_channel.clone()])
            .collect();
        for batch in channels.chunks(SUBSCRIBE_BATCH) {
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(batch.iter().map(|c| &c[..]));
            link.sub.queue(&args);
        }
        let patterns: Vec<&Arc<str>> = self.patterns.iter().collect();
        for batch in patterns.chunks(SUBSCRIBE_BATCH) {
            let mut args: Vec<&[u8]> = vec![b"PSUBSCRIBE"];
            args.extend(batch.iter().map(|p| p.as_bytes()));
            link.sub.queue(&args);
        }
        link.sub_owed = channels.len() + patterns.len();
        self.link = Some(link);
        self.with_link(|bridge, link| bridge.advance_resync(link));
    }

    /// The broker is lost (or a connection attempt failed): fail what was in flight, say so
    /// once, and schedule the next attempt.
    fn lose(&mut self, link: Option<Link>, cause: DownCause) {
        self.shared.set_up(false);
        if let Some(link) = link {
            for pending in link.pending {
                match pending {
                    Pending::Publish { token, .. } => self.fail_publish(token),
                    Pending::History { token, channel, .. } => self.fail_history(token, channel),
                    Pending::UserSend { token } => self.fail_user_send(token),
                    Pending::UserNodes { token, .. } => self.fail_user_nodes(token),
                    Pending::NodeSend { token } => self.fail_node_send(token),
                    Pending::HistoryTail { token, .. } => {
                        self.sink.deliver(BrokerEvent::HistoryTail {
                            token,
                            result: Err(BrokerError::Down),
                        })
                    }
                    Pending::PresenceRead { token, .. } => {
                        self.sink.deliver(BrokerEvent::PresenceReply {
                            token,
                            result: Err(BrokerError::Down),
                        })
                    }
                    Pending::Resync { .. } | Pending::Presence { .. } | Pending::Ping => {}
                }
            }
        }
        while let Some(held) = self.held.pop_front() {
            match held {
                Held::History(token, channel, _) => self.fail_history(token, channel),
                Held::UserSend(token, ..) => self.fail_user_send(token),
                // The presence is kept: the replace after the reconnect writes it.
                Held::PresenceSet(_) => {}
            }
        }
        if self.announced != Announced::Down {
            eprintln!(
                "ringcast: cluster: redis at {}:{} is down ({cause}); reconnecting by itself",
                self.url.host, self.url.port
            );
            self.announced = Announced::Down;
            self.sink.deliver(BrokerEvent::Down { cause });
        }
        let delay = self.backoff.next_ms(self.jitter.draw());
        self.retry_at = Instant::now() + Duration::from_millis(delay);
    }

    fn fail_publish(&mut self, token: u64) {
        BrokerStats::count(&self.shared.stats.publish_errors);
        self.sink.deliver(BrokerEvent::Published {
            token,
            result: Err(BrokerError::Down),
        });
    }

    fn fail_user_send(&mut self, token: u64) {
        self.sink.deliver(BrokerEvent::UserSent {
            token,
            result: Err(BrokerError::Down),
        });
    }

    fn fail_node_send(&mut self, token: u64) {
        self.sink.deliver(BrokerEvent::NodeSent {
            token,
            result: Err(BrokerError::Down),
        });
    }

    fn fail_user_nodes(&mut self, token: u64) {
        self.sink.deliver(BrokerEvent::UserNodes {
            token,
            result: Err(BrokerError::Down),
        });
    }

    fn fail_history(&mut self, token: u64, channel: Arc<str>) {
        self.sink.deliver(BrokerEvent::HistoryReply {
            token,
            channel,
            result: Err(BrokerError::Down),
        });
    }

    /// After a (re)connect: once every resubscription is confirmed, read every channel's
    /// position (as the bounds allow), then send `Up`.
    fn advance_resync(&mut self, link: &mut Link) -> Result<(), DownCause> {
        if !link.resyncing || link.sub_owed > 0 {
            return Ok(());
        }
        if !link.resync_started {
            link.resync_started = true;
            link.resync = self.subs.keys().cloned().collect();
        }
        while link.pending.len() < self.cfg.in_flight_max {
            let Some(channel) = link.resync.pop_front() else {
                break;
            };
            if !self.subs.contains_key(&channel) {
                continue;
            }
            link.cmd
                .queue(&[b"HMGET", &self.keys.hash(&channel), b"seq", b"epoch"]);
            self.push_pending(link, Pending::Resync { channel });
            link.resync_reads += 1;
        }
        if link.resync.is_empty() && link.resync_reads == 0 {
            link.resyncing = false;
            // The broker may have lost this node's presence (a restart) or kept entries it no
            // longer has (its leaves were refused meanwhile): write all of it again.
            let channels: Vec<Arc<str>> = self.presence.keys().cloned().collect();
            for channel in channels {
                self.send_presence_replace(link, channel);
            }
            self.presence_quiet = false;
            self.lease_due = Instant::now() + self.lease_period();
            self.announce_up(link);
        }
        Ok(())
    }

    fn announce_up(&mut self, link: &Link) {
        self.backoff.reset();
        if self.ever_up {
            BrokerStats::count(&self.shared.stats.reconnects);
        }
        self.ever_up = true;
        self.announced = Announced::Up;
        self.shared.set_up(true);
        let (resubscribed, patterns) = link.resubscribed;
        eprintln!(
            "ringcast: cluster: redis at {}:{} is up (node {}, prefix {}; subscribed: \
             {resubscribed} channels, {patterns} patterns, {} users; moved meanwhile: {})",
            self.url.host,
            self.url.port,
            self.node,
            self.cfg.prefix,
            self.users.len(),
            link.moved
        );
        self.sink.deliver(BrokerEvent::Up {
            resubscribed,
            patterns,
            moved: link.moved,
            epochs_bumped: link.bumped,
        });
    }

    // ----- commands ---------------------------------------------------------------------------

    /// Whether the bounds let the bridge take another command now.
    fn can_take(&self) -> bool {
        match &self.link {
            None => true,
            Some(link) => {
                link.pending.len() + self.held.len() < self.cfg.in_flight_max
                    && link.cmd.unwritten() < self.cfg.buffer_bytes_max
                    && link.sub.unwritten() < self.cfg.buffer_bytes_max
            }
        }
    }

    /// The next queued command, if any (kept aside when only peeked).
    fn peek(&mut self) -> bool {
        if self.stash.is_none() && !self.queue_closed {
            match self.rx.try_recv() {
                Ok(command) => {
                    self.shared.taken(&command);
                    self.stash = Some(command);
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => self.queue_closed = true,
            }
        }
        self.stash.is_some()
    }

    fn take_commands(&mut self) {
        for _ in 0..COMMANDS_PER_TURN {
            if !self.can_take() || !self.peek() {
                break;
            }
            if let Some(command) = self.stash.take() {
                self.command(command);
            }
        }
    }

    /// One command from the shards. New commands (presence leases) are added here.
    fn command(&mut self, command: BrokerCommand) {
        match command {
            BrokerCommand::Subscribe { channel } => {
                if self.subs.contains_key(&channel) {
                    return;
                }
                if self.subs.len() + self.patterns.len() + self.users.len() >= self.cfg.channels_max
                {
                    BrokerStats::count(&self.shared.stats.subscribe_refusals);
                    self.sink.deliver(BrokerEvent::SubscribeRefused { channel });
                    return;
                }
                let name = self.keys.pubsub(&channel);
                let sub = Sub {
                    channel: channel.clone(),
                    known: Position::default(),
                    at_connect: Position::default(),
                };
                self.subs.insert(channel, sub);
                self.subscription(b"SUBSCRIBE", &name);
            }
            BrokerCommand::Unsubscribe { channel } => {
                if self.subs.remove(&channel).is_some() {
                    let name = self.keys.pubsub(&channel);
                    self.subscription(b"UNSUBSCRIBE", &name);
                }
            }
            BrokerCommand::PatternSubscribe { pattern } => {
                if self.patterns.contains(&pattern) {
                    return;
                }
                if self.subs.len() + self.patterns.len() + self.users.len() >= self.cfg.channels_max
                {
                    BrokerStats::count(&self.shared.stats.subscribe_refusals);
                    self.sink
                        .deliver(BrokerEvent::SubscribeRefused { channel: pattern });
                    return;
                }
                self.subscription(b"PSUBSCRIBE", pattern.as_bytes());
                self.patterns.insert(pattern);
            }
            BrokerCommand::PatternUnsubscribe { pattern } => {
                if self.patterns.remove(&pattern) {
                    self.subscription(b"PUNSUBSCRIBE", pattern.as_bytes());
                }
            }
            BrokerCommand::UserSubscribe { user } => {
                if self.users.contains(&user) {
                    return;
                }
                if self.subs.len() + self.patterns.len() + self.users.len() >= self.cfg.channels_max
                {
                    // The user's connections here then get only this node's sends (counted).
                    BrokerStats::count(&self.shared.stats.subscribe_refusals);
                    return;
                }
                let name = self.keys.user(&user);
                self.users.insert(user);
                self.subscription(b"SUBSCRIBE", &name);
            }
            BrokerCommand::UserUnsubscribe { user } => {
                if self.users.remove(&user) {
                    let name = self.keys.user(&user);
                    self.subscription(b"UNSUBSCRIBE", &name);
                }
            }
            BrokerCommand::UserSend {
                user,
                payload,
                token,
            } => {
                if payload.len() + FRAMING_BYTES > self.cfg.buffer_bytes_max {
                    self.sink.deliver(BrokerEvent::UserSent {
                        token,
                        result: Err(BrokerError::TooLarge),
                    });
                    return;
                }
                match self.link.take() {
                    None => self.fail_user_send(token),
                    Some(mut link) => {
                        if link.sub_owed > 0 {
                            self.held.push_back(Held::UserSend(token, user, payload));
                        } else {
                            self.send_user(&mut link, token, &user, &payload);
                        }
                        self.link = Some(link);
                    }
                }
            }
            BrokerCommand::UserNodes { users, token } => match self.link.take() {
                None => self.fail_user_nodes(token),
                Some(mut link) => {
                    let names: Vec<Vec<u8>> = users.iter().map(|u| self.keys.user(u)).collect();
                    let mut args: Vec<&[u8]> = vec![b"PUBSUB", b"NUMSUB"];
                    args.extend(names.iter().map(|n| &n[..]));
                    link.cmd.queue(&args);
                    let users = users.len();
                    self.push_pending(&mut link, Pending::UserNodes { token, users });
                    self.link = Some(link);
                }
            },
            BrokerCommand::Publish {
                channel,
                payload,
                keep,
                token,
            } => {
                // Its echo on the subscriber connection must fit every node's read bound.
                if payload.len() + FRAMING_BYTES > self.cfg.buffer_bytes_max {
                    BrokerStats::count(&self.shared.stats.publish_errors);
                    self.sink.deliver(BrokerEvent::Published {
                        token,
                        result: Err(BrokerError::TooLarge),
                    });
                    return;
                }
                match self.link.take() {
                    None => self.fail_publish(token),
                    Some(mut link) => {
                        self.send_publish(&mut link, token, channel, payload, keep);
                        self.link = Some(link);
                    }
                }
            }
            BrokerCommand::PresenceSet {
                channel,
                user,
                conns,
                node_conns,
                node_anon,
                news,
            } => {
                let entry = self.presence.entry(channel.clone()).or_default();
                entry.conns = node_conns;
                entry.anon = node_anon;
                entry.news = news;
                if let Some((user, info)) = &user {
                    if conns == 0 {
                        entry.users.remove(user);
                    } else {
                        let held = entry.users.entry(user.clone()).or_insert((0, None));
                        held.0 = conns;
                        if info.is_some() {
                            held.1 = info.clone();
                        }
                    }
                }
                if node_conns == 0 {
                    self.presence.remove(&channel);
                }
                let Some(mut link) = self.link.take() else {
                    return;
                };
                let write = PresenceWrite {
                    channel,
                    user,
                    conns,
                    news,
                    node_conns,
                    node_anon,
                };
                // While resyncing, the replace at its end writes the state as it is then.
                match (link.resyncing, link.sub_owed > 0) {
                    (true, _) => {}
                    (false, true) => self.held.push_back(Held::PresenceSet(write)),
                    (false, false) => self.send_presence_set(&mut link, write),
                }
                self.link = Some(link);
            }
            BrokerCommand::HistoryTail {
                channel,
                limit,
                token,
            } => match self.link.take() {
                None => self.sink.deliver(BrokerEvent::HistoryTail {
                    token,
                    result: Err(BrokerError::Down),
                }),
                Some(mut link) => {
                    self.send_history_tail(&mut link, token, channel, limit);
                    self.link = Some(link);
                }
            },
            BrokerCommand::NodeSend {
                node,
                payload,
                token,
            } => {
                if payload.len() + FRAMING_BYTES > self.cfg.buffer_bytes_max {
                    self.sink.deliver(BrokerEvent::NodeSent {
                        token,
                        result: Err(BrokerError::TooLarge),
                    });
                    return;
                }
                match self.link.take() {
                    None => self.fail_node_send(token),
                    Some(mut link) => {
                        link.cmd
                            .queue(&[b"PUBLISH", &self.keys.node(node), &payload]);
                        self.push_pending(&mut link, Pending::NodeSend { token });
                        self.link = Some(link);
                    }
                }
            }
            BrokerCommand::PresenceRead {
                channel,
                page,
                news,
                token,
            } => match self.link.take() {
                None => self.sink.deliver(BrokerEvent::PresenceReply {
                    token,
                    result: Err(BrokerError::Down),
                }),
                Some(mut link) => {
                    self.send_presence_read(&mut link, token, channel, page, news);
                    self.link = Some(link);
                }
            },
            BrokerCommand::History {
                channel,
                since,
                token,
            } => match self.link.take() {
                None => self.fail_history(token, channel),
                Some(mut link) => {
                    if link.sub_owed > 0 {
                        self.held.push_back(Held::History(token, channel, since));
                    } else {
                        self.send_history(&mut link, token, channel, since);
                    }
                    self.link = Some(link);
                }
            },
        }
    }

    /// Sends a (un)subscribe on the subscriber connection, if connected (otherwise the set
    /// alone changes, and the next connection subscribes what is in it).
    fn subscription(&mut self, verb: &[u8], name: &[u8]) {
        if let Some(link) = &mut self.link {
            link.sub.queue(&[verb, name]);
            if link.sub_owed == 0 {
                link.sub_progress = Instant::now();
            }
            link.sub_owed += 1;
        }
    }

    fn push_pending(&self, link: &mut Link, pending: Pending) {
        if link.pending.is_empty() {
            link.cmd_progress = Instant::now();
        }
        link.pending.push_back(pending);
    }

    /// Queues a script call with two keys: `EVALSHA`, or `EVAL` after a `NOSCRIPT`.
    fn script(&self, link: &mut Link, script: &Script, args: &[&[u8]]) {
        self.script_keys(link, script, 2, args);
    }

    /// Queues a script call whose first `keys` arguments are keys.
    fn script_keys(&self, link: &mut Link, script: &Script, keys: usize, args: &[&[u8]]) {
        let mut all: Vec<&[u8]> = Vec::with_capacity(args.len() + 3);
        if link.use_eval {
            all.extend([&b"EVAL"[..], script.text.as_bytes()]);
        } else {
            all.extend([&b"EVALSHA"[..], script.sha.as_bytes()]);
        }
        let keys = keys.to_string();
        all.push(keys.as_bytes());
        all.extend_from_slice(args);
        link.cmd.queue(&all);
    }

    fn send_history_tail(&mut self, link: &mut Link, token: u64, channel: Arc<str>, limit: usize) {
        let (hash, history) = (self.keys.hash(&channel), self.keys.history(&channel));
        let numbers = [
            limit.min(self.cfg.history_size_max as usize).to_string(),
            (self.cfg.buffer_bytes_max / 2).to_string(),
        ];
        let args: [&[u8]; 4] = [
            &hash,
            &history,
            numbers[0].as_bytes(),
            numbers[1].as_bytes(),
        ];
        let script = self.history_tail.clone();
        self.script(link, &script, &args);
        self.push_pending(
            link,
            Pending::HistoryTail {
                token,
                channel,
                limit,
            },
        );
    }

    // ----- presence ---------------------------------------------------------------------------

    /// Renewal and sweeps happen three times per lease.
    fn lease_period(&self) -> Duration {
        Duration::from_millis(self.cfg.presence_lease_ms / 3)
    }

    /// The keys and shared arguments of a presence script for `channel`, then `extra`.
    fn presence_script(
        &self,
        link: &mut Link,
        script: &Script,
        channel: &str,
        news: bool,
        extra: &[&[u8]],
    ) {
        let [pn, pd, pl, pu_prefix] = self.keys.presence(channel);
        let mine = [&pu_prefix[..], self.instance.as_bytes()].concat();
        let (msg, live) = (self.keys.pubsub(channel), self.keys.live_prefix());
        let ttl_ms = self.cfg.presence_lease_ms.saturating_mul(10).to_string();
        let mut args: Vec<&[u8]> = vec![
            &pn,
            &pd,
            &pl,
            &mine,
            &msg,
            &pu_prefix,
            &live,
            self.instance.as_bytes(),
            ttl_ms.as_bytes(),
            if news { b"1" } else { b"0" },
        ];
        args.extend_from_slice(extra);
        self.script_keys(link, script, 4, &args);
    }

    fn send_presence_set(&mut self, link: &mut Link, write: PresenceWrite) {
        let PresenceWrite {
            channel,
            user,
            conns,
            news,
            node_conns,
            node_anon,
        } = write;
        let numbers = [
            node_conns.to_string(),
            node_anon.to_string(),
            self.cfg.presence_lease_ms.to_string(),
            conns.to_string(),
        ];
        let (name, info) = match &user {
            Some((name, info)) => (name.as_bytes(), info.as_deref().unwrap_or("").as_bytes()),
            None => (&b""[..], &b""[..]),
        };
        let extra: [&[u8]; 6] = [
            numbers[0].as_bytes(),
            numbers[1].as_bytes(),
            numbers[2].as_bytes(),
            name,
            numbers[3].as_bytes(),
            info,
        ];
        let script = self.presence_set.clone();
        self.presence_script(link, &script, &channel, news, &extra);
        self.push_pending(
            link,
            Pending::Presence {
                channel: Some(channel),
            },
        );
    }

    /// Writes all of this node's presence in `channel` (after a reconnect, or a `NOSCRIPT`).
    fn send_presence_replace(&mut self, link: &mut Link, channel: Arc<str>) {
        let Some(entry) = self.presence.get(&channel) else {
            return;
        };
        let numbers = [
            entry.conns.to_string(),
            entry.anon.to_string(),
            self.cfg.presence_lease_ms.to_string(),
        ];
        let values: Vec<(Arc<str>, String)> = (entry.users.iter())
            .map(|(user, (conns, info))| {
                (
                    user.clone(),
                    format!("{conns}\n{}", info.as_deref().unwrap_or("")),
                )
            })
            .collect();
        let news = entry.news && !self.presence_quiet;
        let mut extra: Vec<&[u8]> = numbers.iter().map(|n| n.as_bytes()).collect();
        for (user, value) in &values {
            extra.push(user.as_bytes());
            extra.push(value.as_bytes());
        }
        let script = self.presence_replace.clone();
        self.presence_script(link, &script, &channel, news, &extra);
        self.push_pending(
            link,
            Pending::Presence {
                channel: Some(channel),
            },
        );
    }

    fn send_presence_read(
        &mut self,
        link: &mut Link,
        token: u64,
        channel: Arc<str>,
        page: Option<(Option<Arc<str>>, usize)>,
        news: bool,
    ) {
        let limit = page.as_ref().map_or(0, |(_, l)| *l).to_string();
        let after = page.as_ref().and_then(|(a, _)| a.clone());
        let extra: [&[u8]; 3] = [
            if page.is_some() { b"p" } else { b"s" },
            after.as_deref().unwrap_or("").as_bytes(),
            limit.as_bytes(),
        ];
        let script = self.presence_read.clone();
        self.presence_script(link, &script, &channel, news, &extra);
        self.push_pending(
            link,
            Pending::PresenceRead {
                token,
                channel,
                page,
                news,
            },
        );
    }

    /// The lease: renewed every third of it, and every presence channel swept once per period
    /// (dead nodes' entries removed, this node's keys' TTL refreshed), as the bounds allow.
    fn presence_timers(&mut self, link: &mut Link, now: Instant) {
        if link.resyncing {
            return;
        }
        if now >= self.lease_due {
            self.lease_due = now + self.lease_period();
            let live = [&self.keys.live_prefix()[..], self.instance.as_bytes()].concat();
            let lease = self.cfg.presence_lease_ms.to_string();
            link.cmd
                .queue(&[b"SET", &live, b"1", b"PX", lease.as_bytes()]);
            self.push_pending(link, Pending::Presence { channel: None });
            let nid = self.keys.node_id(self.node_id);
            link.cmd.queue(&[
                b"SET",
                &nid,
                self.instance.as_bytes(),
                b"PX",
                lease.as_bytes(),
            ]);
            self.push_pending(link, Pending::Presence { channel: None });
            if self.sweeps.is_empty() {
                self.sweeps = self.presence.keys().cloned().collect();
            }
        }
        while link.pending.len() < self.cfg.in_flight_max {
            let Some(channel) = self.sweeps.pop_front() else {
                break;
            };
            let Some(news) = self.presence.get(&channel).map(|p| p.news) else {
                continue;
            };
            let script = self.presence_sweep.clone();
            self.presence_script(link, &script, &channel, news, &[]);
            self.push_pending(
                link,
                Pending::Presence {
                    channel: Some(channel),
                },
            );
        }
    }

    fn send_publish(
        &mut self,
        link: &mut Link,
        token: u64,
        channel: Arc<str>,
        payload: Bytes,
        keep: Keep,
    ) {
        let key_ttl_ms = self.cfg.key_ttl_s.saturating_mul(1000);
        let history_ttl_ms = match keep.ttl_s {
            0 => key_ttl_ms,
            s => s.saturating_mul(1000).min(key_ttl_ms),
        };
        let size = keep.size.min(self.cfg.history_size_max).to_string();
        let (hash, history, pubsub) = (
            self.keys.hash(&channel),
            self.keys.history(&channel),
            self.keys.pubsub(&channel),
        );
        let (history_ttl_ms, key_ttl_ms) = (history_ttl_ms.to_string(), key_ttl_ms.to_string());
        let args: [&[u8]; 7] = [
            &hash,
            &history,
            &pubsub,
            &payload,
            size.as_bytes(),
            history_ttl_ms.as_bytes(),
            key_ttl_ms.as_bytes(),
        ];
        self.script(link, &self.publish, &args);
        self.push_pending(
            link,
            Pending::Publish {
                token,
                channel,
                payload,
                keep,
            },
        );
    }

    /// `PUBLISH PREFIX:usr:USER payload`: every node holding the user gets it.
    fn send_user(&mut self, link: &mut Link, token: u64, user: &str, payload: &[u8]) {
        let name = self.keys.user(user);
        link.cmd.queue(&[b"PUBLISH", &name, payload]);
        self.push_pending(link, Pending::UserSend { token });
    }

    fn send_history(
        &mut self,
        link: &mut Link,
        token: u64,
        channel: Arc<str>,
        since: Option<Position>,
    ) {
        match since {
            None => {
                let (hash, history) = (self.keys.hash(&channel), self.keys.history(&channel));
                let key_ttl_ms = self.cfg.key_ttl_s.saturating_mul(1000).to_string();
                let args: [&[u8]; 3] = [&hash, &history, key_ttl_ms.as_bytes()];
                self.script(link, &self.position, &args);
            }
            Some(since) => {
                let (hash, history) = (self.keys.hash(&channel), self.keys.history(&channel));
                let numbers = [
                    since.offset.to_string(),
                    since.epoch.to_string(),
                    self.cfg.history_size_max.to_string(),
                    (self.cfg.buffer_bytes_max / 2).to_string(),
                ];
                let args: [&[u8]; 6] = [
                    &hash,
                    &history,
                    numbers[0].as_bytes(),
                    numbers[1].as_bytes(),
                    numbers[2].as_bytes(),
                    numbers[3].as_bytes(),
                ];
                self.script(link, &self.history, &args);
            }
        }
        self.push_pending(
            link,
            Pending::History {
                token,
                channel,
                since,
            },
        );
    }

    // ----- timers and sleep -----------------------------------------------------------------

    fn timers(&mut self, now: Instant) {
        let timeout = self.timeout();
        self.with_link(|bridge, link| {
            let cmd_waiting = !link.pending.is_empty();
            let sub_waiting = link.sub_owed > 0 || link.sub_ping_owed;
            if cmd_waiting && now.duration_since(link.cmd_progress) > timeout {
                return Err(DownCause::Timeout);
            }
            if sub_waiting && now.duration_since(link.sub_progress) > timeout {
                return Err(DownCause::Timeout);
            }
            if !cmd_waiting && now.duration_since(link.cmd_progress) > timeout / 2 {
                link.cmd.queue(&[b"PING"]);
                link.pending.push_back(Pending::Ping);
                link.cmd_progress = now;
            }
            if !sub_waiting && now.duration_since(link.sub_progress) > timeout / 2 {
                link.sub.queue(&[b"PING"]);
                link.sub_ping_owed = true;
                link.sub_progress = now;
            }
            bridge.presence_timers(link, now);
            link.sub.flush()?;
            link.cmd.flush()
        });
    }

    /// Sleeps until a socket or the doorbell is ready, or the next timer; returns the sockets'
    /// readiness (subscriber, commands).
    fn sleep(&mut self) -> (bool, bool) {
        let timeout_ms = match &self.link {
            Some(_) => TICK_MS,
            None => self
                .retry_at
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(u128::from(TICK_MS * 10)) as u64,
        };
        let doorbell = self.shared.doorbell();
        doorbell.set_sleeping();
        // The doorbell protocol: marked sleeping, look once more before blocking.
        let work = self.shared.stopping() || (self.can_take() && self.peek());
        let timeout_ms = if work { 0 } else { timeout_ms };
        let mut fds = vec![libc::pollfd {
            fd: self.shared.doorbell().fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(link) = &self.link {
            for conn in [&link.sub, &link.cmd] {
                let out = if conn.unwritten() > 0 {
                    libc::POLLOUT
                } else {
                    0
                };
                fds.push(libc::pollfd {
                    fd: conn.fd(),
                    events: libc::POLLIN | out,
                    revents: 0,
                });
            }
        }
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs for the duration of the
        // call; poll(2) only writes their `revents`.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                timeout_ms as i32,
            )
        };
        self.shared.doorbell().set_awake();
        if n > 0 && fds[0].revents & libc::POLLIN != 0 {
            let mut count = 0u64;
            // SAFETY: an 8-byte read from our eventfd into a u64 on the stack; POLLIN said the
            // counter is non-zero, so the blocking fd does not block.
            unsafe {
                libc::read(
                    fds[0].fd,
                    (&mut count as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
        let ready = |i: usize| fds.get(i).is_some_and(|f| f.revents != 0);
        (ready(1), ready(2))
    }

    // ----- replies ---------------------------------------------------------------------------

    fn read(
        &mut self,
        link: &mut Link,
        (sub_ready, cmd_ready): (bool, bool),
    ) -> Result<(), DownCause> {
        if sub_ready {
            link.sub.fill()?;
            while let Some(reply) = link.sub.reply()? {
                link.sub_progress = Instant::now();
                self.on_sub(link, reply)?;
            }
        }
        if cmd_ready {
            link.cmd.fill()?;
            while let Some(reply) = link.cmd.reply()? {
                link.cmd_progress = Instant::now();
                let pending = link
                    .pending
                    .pop_front()
                    .ok_or_else(|| protocol("a reply to no request"))?;
                self.on_cmd(link, pending, reply)?;
            }
        }
        self.advance_resync(link)?;
        link.sub.flush()?;
        link.cmd.flush()
    }

    /// A push on the subscriber connection.
    fn on_sub(&mut self, link: &mut Link, reply: Reply) -> Result<(), DownCause> {
        let items = match reply {
            Reply::Array(items) => items,
            // A connection with no subscription is not in subscribed mode: its PING is
            // answered +PONG (RESP2), not ["pong", ""].
            Reply::Simple(s) if link.sub_ping_owed && s.eq_ignore_ascii_case(b"PONG") => {
                link.sub_ping_owed = false;
                return Ok(());
            }
            Reply::Error(e) => return Err(DownCause::Protocol(text(&e))),
            _ => return Err(protocol("a subscriber push that is not an array")),
        };
        let kind = items.first().and_then(Reply::bytes).map(|b| &b[..]);
        match (kind, items.len()) {
            (Some(b"message"), 3) => {
                let (Some(name), Some(payload)) = (items[1].bytes(), items[2].bytes()) else {
                    return Err(protocol("a message without its channel or payload"));
                };
                if name[..] == self.node_channel[..] {
                    BrokerStats::count(&self.shared.stats.messages_in);
                    self.sink.deliver(BrokerEvent::NodeMessage {
                        payload: payload.clone(),
                    });
                    return Ok(());
                }
                let Some(channel) = self.keys.channel_of(name) else {
                    if let Some(user) = self.keys.user_of(name).and_then(|u| self.users.get(u)) {
                        BrokerStats::count(&self.shared.stats.messages_in);
                        self.sink.deliver(BrokerEvent::User {
                            user: user.clone(),
                            payload: payload.clone(),
                        });
                    }
                    return Ok(());
                };
                let Some(sub) = self.subs.get_mut(channel) else {
                    // Unsubscribed a moment ago: Redis had it in flight.
                    return Ok(());
                };
                if payload.first() == Some(&message::NEWS) {
                    let channel = sub.channel.clone();
                    match message::decode_news(payload) {
                        Some((joined, user, info)) => {
                            BrokerStats::count(&self.shared.stats.messages_in);
                            self.sink.deliver(BrokerEvent::PresenceNews {
                                channel,
                                joined,
                                user: Arc::from(user),
                                info: info.map(Arc::from),
                            });
                        }
                        None => BrokerStats::count(&self.shared.stats.malformed_in),
                    }
                    return Ok(());
                }
                match message::decode(payload) {
                    Ok(m) => {
                        BrokerStats::count(&self.shared.stats.messages_in);
                        if m.epoch != sub.known.epoch || m.offset > sub.known.offset {
                            sub.known = Position {
                                offset: m.offset,
                                epoch: m.epoch,
                            };
                        }
                        let channel = sub.channel.clone();
                        self.sink.deliver(BrokerEvent::Message {
                            channel,
                            offset: m.offset,
                            epoch: m.epoch,
                            payload: m.payload,
                        });
                    }
                    Err(_) => BrokerStats::count(&self.shared.stats.malformed_in),
                }
            }
            (Some(b"pmessage"), 4) => {
                let (Some(pattern), Some(name), Some(payload)) =
                    (items[1].bytes(), items[2].bytes(), items[3].bytes())
                else {
                    return Err(protocol("a pmessage without its parts"));
                };
                let pattern = std::str::from_utf8(pattern).ok();
                let Some(pattern) = pattern.and_then(|p| self.patterns.get(p)) else {
                    return Ok(());
                };
                BrokerStats::count(&self.shared.stats.messages_in);
                self.sink.deliver(BrokerEvent::Pattern {
                    pattern: pattern.clone(),
                    channel: name.clone(),
                    payload: payload.clone(),
                });
            }
            (Some(b"subscribe" | b"unsubscribe" | b"psubscribe" | b"punsubscribe"), 3) => {
                link.sub_owed = link.sub_owed.saturating_sub(1);
                if link.sub_owed == 0 {
                    while let Some(held) = self.held.pop_front() {
                        match held {
                            Held::History(token, channel, since) => {
                                self.send_history(link, token, channel, since);
                            }
                            Held::UserSend(token, user, payload) => {
                                self.send_user(link, token, &user, &payload);
                            }
                            Held::PresenceSet(write) => self.send_presence_set(link, write),
                        }
                    }
                }
            }
            (Some(b"pong"), _) => link.sub_ping_owed = false,
            _ => return Err(protocol("an unknown subscriber push")),
        }
        Ok(())
    }

    /// A reply on the command connection, to `pending`.
    fn on_cmd(&mut self, link: &mut Link, pending: Pending, reply: Reply) -> Result<(), DownCause> {
        let noscript = matches!(&reply, Reply::Error(e) if e.starts_with(b"NOSCRIPT"));
        if noscript {
            // The script cache was flushed (SCRIPT FLUSH, a failover): send it whole from now
            // on. Requests pipelined behind this one may take their offsets before its resend.
            link.use_eval = true;
            match pending {
                Pending::Publish {
                    token,
                    channel,
                    payload,
                    keep,
                } => self.send_publish(link, token, channel, payload, keep),
                Pending::History {
                    token,
                    channel,
                    since,
                } => self.send_history(link, token, channel, since),
                // The replace writes the whole state, whichever write this was.
                Pending::Presence {
                    channel: Some(channel),
                } => self.send_presence_replace(link, channel),
                Pending::PresenceRead {
                    token,
                    channel,
                    page,
                    news,
                } => self.send_presence_read(link, token, channel, page, news),
                Pending::HistoryTail {
                    token,
                    channel,
                    limit,
                } => self.send_history_tail(link, token, channel, limit),
                _ => return Err(protocol("NOSCRIPT for a request that is no script")),
            }
            return Ok(());
        }
        match pending {
            Pending::Publish { token, .. } => {
                let result = match reply {
                    Reply::Error(e) => {
                        BrokerStats::count(&self.shared.stats.publish_errors);
                        Err(BrokerError::Rejected(text(&e)))
                    }
                    Reply::Array(items) => match (items.first(), items.get(1)) {
                        (Some(offset), Some(epoch)) => match (offset.to_u64(), epoch.to_u64()) {
                            (Some(offset), Some(epoch)) => {
                                BrokerStats::count(&self.shared.stats.messages_out);
                                Ok(Position { offset, epoch })
                            }
                            _ => return Err(protocol("a publish reply without numbers")),
                        },
                        _ => return Err(protocol("a short publish reply")),
                    },
                    _ => return Err(protocol("an unexpected publish reply")),
                };
                self.sink.deliver(BrokerEvent::Published { token, result });
            }
            Pending::History {
                token,
                channel,
                since,
            } => {
                let result = match reply {
                    Reply::Error(e) => Err(BrokerError::Rejected(text(&e))),
                    reply => Ok(self.recovered(&channel, since, reply)?),
                };
                self.sink.deliver(BrokerEvent::HistoryReply {
                    token,
                    channel,
                    result,
                });
            }
            Pending::Resync { channel } => {
                link.resync_reads = link.resync_reads.saturating_sub(1);
                let now = position(&reply)?;
                if let Some(sub) = self.subs.get_mut(&channel) {
                    let before = sub.at_connect;
                    if now != before {
                        link.moved += 1;
                        if now.epoch != before.epoch {
                            link.bumped += 1;
                        }
                        if now.epoch != sub.known.epoch || now.offset > sub.known.offset {
                            sub.known = now;
                        }
                        self.sink.deliver(BrokerEvent::Resync {
                            channel,
                            before,
                            now,
                        });
                    }
                }
            }
            Pending::UserSend { token } => {
                let result = self.receivers(reply)?;
                self.sink.deliver(BrokerEvent::UserSent { token, result });
            }
            Pending::HistoryTail { token, .. } => {
                let result = match reply {
                    Reply::Error(e) => Err(BrokerError::Rejected(text(&e))),
                    reply => Ok(history_tail(&reply)?),
                };
                self.sink
                    .deliver(BrokerEvent::HistoryTail { token, result });
            }
            Pending::NodeSend { token } => {
                let result = self.receivers(reply)?;
                self.sink.deliver(BrokerEvent::NodeSent { token, result });
            }
            Pending::UserNodes { token, users } => {
                // [name, count, name, count, ...], in the asked order.
                let result = match reply {
                    Reply::Array(items) if items.len() == 2 * users => items
                        .iter()
                        .skip(1)
                        .step_by(2)
                        .map(|n| match n {
                            Reply::Integer(n) => Ok((*n).max(0) as u64),
                            _ => Err(protocol("a NUMSUB count that is no integer")),
                        })
                        .collect::<Result<Vec<u64>, DownCause>>()?,
                    Reply::Error(e) => {
                        let result = Err(BrokerError::Rejected(text(&e)));
                        self.sink.deliver(BrokerEvent::UserNodes { token, result });
                        return Ok(());
                    }
                    _ => return Err(protocol("an unexpected answer to PUBSUB NUMSUB")),
                };
                self.sink.deliver(BrokerEvent::UserNodes {
                    token,
                    result: Ok(result),
                });
            }
            Pending::Presence { channel } => {
                // An error here (out of memory, a script error) leaves the broker's presence
                // behind this node's until the next write or reconnect: say so once per kind.
                if let Reply::Error(e) = reply {
                    if !self.presence_error_said {
                        self.presence_error_said = true;
                        eprintln!(
                            "ringcast: cluster: redis refused a presence write ({}; channel {}); \
                             presence across nodes may lag until the next change",
                            text(&e),
                            channel.as_deref().unwrap_or("(lease)")
                        );
                    }
                }
            }
            Pending::PresenceRead { token, .. } => {
                let result = match reply {
                    Reply::Error(e) => Err(BrokerError::Rejected(text(&e))),
                    reply => Ok(presence_view(&reply)?),
                };
                self.sink
                    .deliver(BrokerEvent::PresenceReply { token, result });
            }
            Pending::Ping => {
                if !matches!(reply, Reply::Simple(_)) {
                    return Err(protocol("an unexpected answer to PING"));
                }
            }
        }
        Ok(())
    }

    /// Redis's answer to a plain `PUBLISH` (a user's or a node's channel): its receivers.
    fn receivers(&self, reply: Reply) -> Result<Result<u64, BrokerError>, DownCause> {
        match reply {
            Reply::Integer(n) => {
                BrokerStats::count(&self.shared.stats.messages_out);
                Ok(Ok(n.max(0) as u64))
            }
            Reply::Error(e) => Ok(Err(BrokerError::Rejected(text(&e)))),
            _ => Err(protocol("an unexpected answer to PUBLISH")),
        }
    }

    /// A history reply: the position script for a position alone, the history script with
    /// `since`.
    fn recovered(
        &mut self,
        channel: &str,
        since: Option<Position>,
        reply: Reply,
    ) -> Result<Recovered, DownCause> {
        let (position, replay) = match since {
            None => (position(&reply)?, None),
            Some(since) => {
                let Reply::Array(items) = reply else {
                    return Err(protocol("a history reply that is not an array"));
                };
                let number = |i: usize| items.get(i).and_then(Reply::to_u64);
                let (Some(offset), Some(epoch), Some(complete)) = (number(0), number(1), number(2))
                else {
                    return Err(protocol("a history reply without its position"));
                };
                let position = Position { offset, epoch };
                let replay = if complete == 1 {
                    let mut replay = Vec::with_capacity(items.len() - 3);
                    for (i, item) in items[3..].iter().enumerate() {
                        let payload = item
                            .bytes()
                            .ok_or_else(|| protocol("a history entry that is not a string"))?;
                        replay.push((since.offset + 1 + i as u64, payload.clone()));
                    }
                    if since.offset + replay.len() as u64 != offset {
                        return Err(protocol("a history reply with a gap"));
                    }
                    Some(replay)
                } else {
                    None
                };
                (position, replay)
            }
        };
        if let Some(sub) = self.subs.get_mut(channel) {
            if position.epoch != sub.known.epoch || position.offset > sub.known.offset {
                sub.known = position;
            }
        }
        Ok(Recovered { position, replay })
    }
}

/// `HMGET hash seq epoch`: the position ((0, 0) when the channel is unknown).
fn position(reply: &Reply) -> Result<Position, DownCause> {
    let Reply::Array(items) = reply else {
        return Err(protocol("a position that is not an array"));
    };
    let field = |i: usize| match items.get(i) {
        Some(Reply::Nil) => Ok(0),
        Some(r) => r
            .to_u64()
            .ok_or_else(|| protocol("a position field that is no number")),
        None => Err(protocol("a short position")),
    };
    Ok(Position {
        offset: field(0)?,
        epoch: field(1)?,
    })
}

/// The presence script's answer: `{users, conns, anonymous}`, for a page then `more` and per
/// user `user, conns, info`.
fn presence_view(reply: &Reply) -> Result<PresenceView, DownCause> {
    let Reply::Array(items) = reply else {
        return Err(protocol("a presence answer that is not an array"));
    };
    let number = |i: usize| {
        items
            .get(i)
            .and_then(Reply::to_u64)
            .ok_or_else(|| protocol("a presence answer without its counts"))
    };
    let mut view = PresenceView {
        users: number(0)?,
        conns: number(1)?,
        anonymous: number(2)?,
        ..PresenceView::default()
    };
    if items.len() > 3 {
        view.more = number(3)? == 1;
        let rest = &items[4..];
        if rest.len() % 3 != 0 {
            return Err(protocol("a presence page that is not triples"));
        }
        for t in rest.chunks(3) {
            let string = |r: &Reply| {
                r.bytes()
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .map(str::to_string)
                    .ok_or_else(|| protocol("a presence entry that is not text"))
            };
            let user = string(&t[0])?;
            let conns = t[1]
                .to_u64()
                .ok_or_else(|| protocol("a presence entry without its count"))?;
            let info = string(&t[2])?;
            let info = (!info.is_empty()).then_some(info);
            view.page.push((user, conns, info));
        }
    }
    Ok(view)
}

/// The history tail script's answer: `{offset, epoch, truncated, offset1, payload1, ...}`.
fn history_tail(reply: &Reply) -> Result<Kept, DownCause> {
    let Reply::Array(items) = reply else {
        return Err(protocol("a history tail that is not an array"));
    };
    let number = |i: usize| {
        items
            .get(i)
            .and_then(Reply::to_u64)
            .ok_or_else(|| protocol("a history tail without its position"))
    };
    let position = Position {
        offset: number(0)?,
        epoch: number(1)?,
    };
    let truncated = number(2)? == 1;
    let rest = &items[3..];
    if rest.len() % 2 != 0 {
        return Err(protocol("a history tail that is not pairs"));
    }
    let mut messages = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks(2) {
        let offset = pair[0]
            .to_u64()
            .ok_or_else(|| protocol("a history tail entry without its offset"))?;
        let payload = pair[1]
            .bytes()
            .ok_or_else(|| protocol("a history tail entry that is not a string"))?;
        if messages.last().is_some_and(|(o, _)| *o >= offset) || offset > position.offset {
            return Err(protocol("a history tail out of order"));
        }
        messages.push((offset, payload.clone()));
    }
    Ok(Kept {
        position,
        truncated,
        messages,
    })
}
