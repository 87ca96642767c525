//! The Redis bridge against real redis-server processes: each test starts its own on a free
//! loopback port (no persistence), waits for it by bounded polling, and kills it when done.
//! redis-server must be installed (`apt-get install -y redis-server`; .ci/run installs it):
//! without it these tests fail, they do not skip.

use bytes::Bytes;
use ringcast::broker::config::ClusterConfig;
use ringcast::broker::redis::RedisBridge;
use ringcast::broker::{
    BrokerCommand, BrokerError, BrokerEvent, BrokerHandle, DownCause, Keep, Position, Refused,
};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

#[path = "support/redis_server.rs"]
mod redis_server;
use redis_server::{Redis, free_port};

fn config(url: &str, node: &str, prefix: &str) -> ClusterConfig {
    ClusterConfig {
        redis: Some(url.to_string()),
        node: Some(node.to_string()),
        prefix: prefix.to_string(),
        timeout_ms: 2_000,
        reconnect_min_ms: 20,
        reconnect_max_ms: 200,
        ..ClusterConfig::default()
    }
}

/// One node: a bridge and everything it delivered.
struct Node {
    bridge: RedisBridge,
    events: Receiver<BrokerEvent>,
    seen: Vec<BrokerEvent>,
}

impl Node {
    fn start(url: &str, node: &str, prefix: &str) -> Node {
        let (tx, events) = channel();
        let bridge = RedisBridge::spawn(&config(url, node, prefix), move |e| {
            let _ = tx.send(e);
        })
        .expect("the bridge starts");
        Node {
            bridge,
            events,
            seen: Vec::new(),
        }
    }

    fn handle(&self) -> BrokerHandle {
        self.bridge.handle()
    }

    fn send(&self, command: BrokerCommand) {
        let handle = self.handle();
        handle.try_send(command).expect("queued");
        handle.ring();
    }

    /// Receives until `done(seen)`, or fails after WAIT naming `what`.
    fn until(&mut self, what: &str, done: impl Fn(&[BrokerEvent]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => self.seen.push(event),
                Err(_) => panic!("waiting for {what}; events so far: {:#?}", self.seen),
            }
        }
    }

    fn ups(&self) -> usize {
        count(&self.seen, |e| matches!(e, BrokerEvent::Up { .. }))
    }

    fn wait_up(&mut self, n: usize) {
        self.until("Up", |seen| {
            count(seen, |e| matches!(e, BrokerEvent::Up { .. })) >= n
        });
    }

    /// A history read as a barrier: answered only after every earlier (un)subscribe of this
    /// bridge is active in Redis.
    fn barrier(&mut self, token: u64) -> Position {
        self.send(BrokerCommand::History {
            channel: Arc::from("barrier"),
            since: None,
            token,
        });
        self.history(token).expect("a position").position
    }

    fn history(&mut self, token: u64) -> Result<ringcast::broker::Recovered, BrokerError> {
        let found = |seen: &[BrokerEvent]| {
            seen.iter().find_map(|e| match e {
                BrokerEvent::HistoryReply {
                    token: t, result, ..
                } if *t == token => Some(result.clone()),
                _ => None,
            })
        };
        self.until("a history reply", |seen| found(seen).is_some());
        found(&self.seen).unwrap()
    }

    fn publish(&self, channel: &str, payload: &str, keep: u32, token: u64) {
        self.send(publish(channel, payload, keep, token));
    }

    fn published(&mut self, token: u64) -> Result<Position, BrokerError> {
        let found = |seen: &[BrokerEvent]| {
            seen.iter().find_map(|e| match e {
                BrokerEvent::Published { token: t, result } if *t == token => Some(result.clone()),
                _ => None,
            })
        };
        self.until("a publish reply", |seen| found(seen).is_some());
        found(&self.seen).unwrap()
    }

    /// Messages of `channel`: (offset, epoch, payload), in arrival order.
    fn messages(&self, channel: &str) -> Vec<(u64, u64, Bytes)> {
        messages(&self.seen, channel)
    }
}

fn publish(channel: &str, payload: &str, keep: u32, token: u64) -> BrokerCommand {
    BrokerCommand::Publish {
        channel: Arc::from(channel),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        keep: Keep {
            size: keep,
            ttl_s: 0,
        },
        token,
    }
}

fn count(seen: &[BrokerEvent], f: impl Fn(&BrokerEvent) -> bool) -> usize {
    seen.iter().filter(|e| f(e)).count()
}

fn messages(seen: &[BrokerEvent], channel: &str) -> Vec<(u64, u64, Bytes)> {
    seen.iter()
        .filter_map(|e| match e {
            BrokerEvent::Message {
                channel: c,
                offset,
                epoch,
                payload,
            } if &**c == channel => Some((*offset, *epoch, payload.clone())),
            _ => None,
        })
        .collect()
}

fn subscribe(channel: &str) -> BrokerCommand {
    BrokerCommand::Subscribe {
        channel: Arc::from(channel),
    }
}

#[test]
fn two_nodes_get_every_message_once_with_gapless_offsets() {
    let redis = Redis::start();
    let mut a = Node::start(&redis.url(), "a", "rt");
    let mut b = Node::start(&redis.url(), "b", "rt");
    for node in [&mut a, &mut b] {
        node.wait_up(1);
        node.send(subscribe("chat:lobby"));
        node.barrier(0);
    }
    for i in 0..100 {
        a.publish("chat:lobby", &format!("a{i}"), 0, 1 + i);
        b.publish("chat:lobby", &format!("b{i}"), 0, 1 + i);
    }
    let mut offsets_of_publishes = Vec::new();
    for node in [&mut a, &mut b] {
        node.until("200 messages", |seen| {
            messages(seen, "chat:lobby").len() >= 200
        });
        let mut own = Vec::new();
        for i in 0..100 {
            own.push(node.published(1 + i).expect("sequenced").offset);
        }
        assert!(
            own.windows(2).all(|w| w[0] < w[1]),
            "a node's publishes keep their order"
        );
        offsets_of_publishes.extend(own);
    }
    offsets_of_publishes.sort_unstable();
    assert_eq!(offsets_of_publishes, (1..=200).collect::<Vec<_>>());
    let (ma, mb) = (a.messages("chat:lobby"), b.messages("chat:lobby"));
    for m in [&ma, &mb] {
        let offsets: Vec<u64> = m.iter().map(|(o, _, _)| *o).collect();
        assert_eq!(
            offsets,
            (1..=200).collect::<Vec<_>>(),
            "gapless, in order, once each"
        );
        assert!(
            m.iter().all(|(_, e, _)| *e == m[0].1 && *e > 0),
            "one epoch"
        );
    }
    assert_eq!(ma, mb, "both nodes saw the same order and payloads");
    let payloads: HashSet<&Bytes> = ma.iter().map(|(_, _, p)| p).collect();
    assert_eq!(payloads.len(), 200);
    // A moment later: still nothing more (no duplicate arrived late).
    b.barrier(999);
    assert_eq!(b.messages("chat:lobby").len(), 200);
    let stats = a.handle().stats();
    assert_eq!((stats.messages_out, stats.messages_in), (100, 200));
    assert_eq!((stats.publish_errors, stats.malformed_in), (0, 0));
}

#[test]
fn history_after_an_offset_or_not_recoverable() {
    let redis = Redis::start();
    let mut a = Node::start(&redis.url(), "a", "hist");
    a.wait_up(1);
    for i in 1..=10 {
        a.publish("news:x", &format!("m{i}"), 5, i);
    }
    let epoch = a.published(10).unwrap().epoch;
    assert_eq!(a.published(10).unwrap().offset, 10);
    let mut token = 100;
    let mut read = |since: Option<(u64, u64)>| {
        token += 1;
        a.send(BrokerCommand::History {
            channel: Arc::from("news:x"),
            since: since.map(|(offset, epoch)| Position { offset, epoch }),
            token,
        });
        a.history(token).unwrap()
    };
    let r = read(Some((5, epoch)));
    assert_eq!(r.position, Position { offset: 10, epoch });
    let replay = r.replay.expect("6..=10 are kept");
    let got: Vec<(u64, &[u8])> = replay.iter().map(|(o, p)| (*o, &p[..])).collect();
    assert_eq!(
        got,
        vec![
            (6, &b"m6"[..]),
            (7, b"m7"),
            (8, b"m8"),
            (9, b"m9"),
            (10, b"m10")
        ]
    );
    assert_eq!(
        read(Some((4, epoch))).replay,
        None,
        "5 was trimmed (history of 5)"
    );
    assert_eq!(
        read(Some((10, epoch))).replay,
        Some(vec![]),
        "nothing missed"
    );
    assert_eq!(read(Some((3, epoch + 1))).replay, None, "another epoch");
    assert_eq!(read(Some((11, epoch))).replay, None, "ahead of the channel");
    let now = read(None);
    assert_eq!(
        (now.position, now.replay),
        (Position { offset: 10, epoch }, None)
    );
    a.send(BrokerCommand::History {
        channel: Arc::from("news:never"),
        since: Some(Position::default()),
        token: 1,
    });
    let unknown = a.history(1).unwrap();
    assert_eq!(unknown.position, Position::default());
    assert_eq!(unknown.replay, Some(vec![]), "saw nothing, missed nothing");
    // The keys are where docs/cluster.md says, with TTLs.
    assert_eq!(redis.cli(&["HGET", "hist:ch:news:x", "seq"]), "10");
    assert_eq!(redis.cli(&["XLEN", "hist:hist:news:x"]), "5");
    let ttl: i64 = redis.cli(&["TTL", "hist:ch:news:x"]).parse().unwrap();
    assert!(ttl > 0 && ttl <= 86_400, "{ttl}");
}

#[test]
fn unsubscribe_stops_delivery() {
    let redis = Redis::start();
    let mut a = Node::start(&redis.url(), "a", "unsub");
    let mut b = Node::start(&redis.url(), "b", "unsub");
    a.wait_up(1);
    b.wait_up(1);
    a.send(subscribe("c:one"));
    a.send(subscribe("c:two"));
    a.barrier(0);
    b.publish("c:one", "first", 0, 1);
    a.until("the first message", |seen| {
        messages(seen, "c:one").len() == 1
    });
    a.send(BrokerCommand::Unsubscribe {
        channel: Arc::from("c:one"),
    });
    a.barrier(1);
    b.publish("c:one", "after", 0, 2);
    b.publish("c:two", "sentinel", 0, 3);
    b.published(3).unwrap();
    a.until("the sentinel", |seen| messages(seen, "c:two").len() == 1);
    assert_eq!(
        a.messages("c:one").len(),
        1,
        "nothing after the unsubscribe"
    );
    assert_eq!(
        redis.cli(&["PUBSUB", "NUMSUB", "unsub:msg:c:one"]),
        "unsub:msg:c:one\n0"
    );
}

#[test]
fn redis_killed_and_restarted_the_bridges_recover_by_themselves() {
    let mut redis = Redis::start();
    let port = redis.port;
    let url = redis.url();
    let mut a = Node::start(&url, "a", "crash");
    let mut b = Node::start(&url, "b", "crash");
    for node in [&mut a, &mut b] {
        node.wait_up(1);
        node.send(subscribe("live:x"));
        node.barrier(0);
    }
    // A publisher that never stops on its own: 1 publish per ms through a's handle.
    let stop = Arc::new(AtomicBool::new(false));
    let refused_down = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (handle, stop, refused_down) = (a.handle(), stop.clone(), refused_down.clone());
        std::thread::spawn(move || {
            let mut token = 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                token += 1;
                match handle.try_send(publish("live:x", &format!("p{token}"), 0, token)) {
                    Ok(()) => handle.ring(),
                    Err(Refused::Down(_)) => {
                        refused_down.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(other) => panic!("{other:?}"),
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    for node in [&mut a, &mut b] {
        node.until("messages before the crash", |seen| {
            messages(seen, "live:x").len() >= 20
        });
    }
    let first_epoch = a.messages("live:x")[0].1;
    redis.kill();
    for node in [&mut a, &mut b] {
        node.until("Down", |seen| {
            count(seen, |e| matches!(e, BrokerEvent::Down { .. })) == 1
        });
    }
    let restarted = Redis::start_on(port);
    for node in [&mut a, &mut b] {
        node.wait_up(2);
    }
    for node in [&mut a, &mut b] {
        let first = node.messages("live:x").len();
        node.until("messages after the restart", move |seen| {
            messages(seen, "live:x").len() >= first + 20
        });
    }
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    assert!(
        refused_down.load(Ordering::Relaxed) > 0,
        "publishes failed fast while down"
    );
    for node in [&a, &b] {
        assert_eq!(node.ups(), 2);
        assert_eq!(
            count(&node.seen, |e| matches!(e, BrokerEvent::Down { .. })),
            1
        );
        let up = node
            .seen
            .iter()
            .rev()
            .find(|e| matches!(e, BrokerEvent::Up { .. }))
            .unwrap();
        let BrokerEvent::Up {
            resubscribed,
            epochs_bumped,
            ..
        } = up
        else {
            unreachable!()
        };
        assert_eq!(*resubscribed, 1);
        let resync = node.seen.iter().find_map(|e| match e {
            BrokerEvent::Resync {
                channel,
                before,
                now,
            } if &**channel == "live:x" => Some((*before, *now)),
            _ => None,
        });
        let (before, now) = resync.expect("live:x moved: Redis lost it");
        assert_eq!(before.epoch, first_epoch);
        assert_ne!(now.epoch, first_epoch);
        assert_eq!(*epochs_bumped, 1);
        // Each (epoch, offset) once; within each epoch consecutive; the new epoch leaves no
        // gap after the position the resync reported (at 1 when that was still unknown).
        let m = node.messages("live:x");
        let unique: HashSet<(u64, u64)> = m.iter().map(|(o, e, _)| (*e, *o)).collect();
        assert_eq!(unique.len(), m.len(), "nothing duplicated");
        let mut by_epoch: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut epochs = Vec::new();
        for (o, e, _) in &m {
            if !epochs.contains(e) {
                epochs.push(*e);
            }
            by_epoch.entry(*e).or_default().push(*o);
        }
        assert_eq!(epochs.len(), 2, "{epochs:?}");
        assert_eq!(epochs[0], first_epoch);
        let old = &by_epoch[&first_epoch];
        assert!(old.windows(2).all(|w| w[1] == w[0] + 1) && old[0] == 1);
        let new = &by_epoch[&epochs[1]];
        assert!(new.windows(2).all(|w| w[1] == w[0] + 1), "{new:?}");
        let start = if now.epoch == epochs[1] {
            now.offset + 1
        } else {
            1
        };
        assert!(
            new[0] >= 1 && new[0] <= start,
            "resync {now:?}, first {}",
            new[0]
        );
    }
    let stats = a.handle().stats();
    assert_eq!(stats.reconnects, 1);
    assert!(stats.publish_errors >= refused_down.load(Ordering::Relaxed));
    drop((a, b));
    drop(restarted);
}

#[test]
fn a_silent_redis_is_lost_after_the_timeout_and_found_again() {
    let redis = Redis::start();
    let mut a = Node::start(&redis.url(), "a", "stall");
    a.wait_up(1);
    a.send(subscribe("s:x"));
    a.barrier(0);
    redis.signal("STOP");
    a.until("Down for a timeout", |seen| {
        seen.iter().any(|e| {
            matches!(
                e,
                BrokerEvent::Down {
                    cause: DownCause::Timeout
                }
            )
        })
    });
    redis.signal("CONT");
    a.wait_up(2);
    a.publish("s:x", "back", 0, 1);
    a.until("the message", |seen| messages(seen, "s:x").len() == 1);
    drop(a);
}

#[test]
fn pattern_subscription_gets_plain_publishes() {
    let redis = Redis::start();
    let mut a = Node::start(&redis.url(), "a", "pat");
    a.wait_up(1);
    a.send(BrokerCommand::PatternSubscribe {
        pattern: Arc::from("ws:fid:*"),
    });
    a.barrier(0);
    assert_eq!(redis.cli(&["PUBLISH", "ws:fid:7", "hello \u{1F600}"]), "1");
    a.until("the pattern message", |seen| {
        seen.iter()
            .any(|e| matches!(e, BrokerEvent::Pattern { .. }))
    });
    let got = a.seen.iter().find_map(|e| match e {
        BrokerEvent::Pattern {
            pattern,
            channel,
            payload,
        } => Some((pattern.to_string(), channel.clone(), payload.clone())),
        _ => None,
    });
    assert_eq!(
        got,
        Some((
            "ws:fid:*".to_string(),
            Bytes::from_static(b"ws:fid:7"),
            Bytes::copy_from_slice("hello \u{1F600}".as_bytes())
        ))
    );
    a.send(BrokerCommand::PatternUnsubscribe {
        pattern: Arc::from("ws:fid:*"),
    });
    a.barrier(1);
    assert_eq!(redis.cli(&["PUBLISH", "ws:fid:8", "gone"]), "0");
    assert_eq!(a.handle().stats().messages_in, 1);
}

#[test]
fn malformed_messages_are_counted_and_dropped() {
    let redis = Redis::start();
    let mut a = Node::start(&redis.url(), "a", "bad");
    a.wait_up(1);
    a.send(subscribe("m:x"));
    a.barrier(0);
    assert_eq!(redis.cli(&["PUBLISH", "bad:msg:m:x", "garbage"]), "1");
    let wrong_version = format!("\x09{}", "0".repeat(20));
    assert_eq!(redis.cli(&["PUBLISH", "bad:msg:m:x", &wrong_version]), "1");
    a.publish("m:x", "good", 0, 1);
    a.until("the good message", |seen| messages(seen, "m:x").len() == 1);
    assert_eq!(a.messages("m:x")[0].0, 1);
    assert_eq!(a.handle().stats().malformed_in, 2);
    assert_eq!(a.handle().stats().messages_in, 1);
}

#[test]
fn a_payload_past_the_buffer_bound_is_refused_not_sent() {
    let redis = Redis::start();
    let (tx, events) = channel();
    let config = ClusterConfig {
        buffer_bytes_max: 64 * 1024,
        ..config(&redis.url(), "a", "big")
    };
    let bridge = RedisBridge::spawn(&config, move |e| {
        let _ = tx.send(e);
    })
    .unwrap();
    let mut a = Node {
        bridge,
        events,
        seen: Vec::new(),
    };
    a.wait_up(1);
    a.send(subscribe("b:x"));
    a.barrier(0);
    a.publish("b:x", &"x".repeat(64 * 1024), 0, 1);
    assert_eq!(a.published(1), Err(BrokerError::TooLarge));
    a.publish("b:x", &"x".repeat(60 * 1024), 0, 2);
    assert_eq!(
        a.published(2).map(|p| p.offset),
        Ok(1),
        "the channel's first offset"
    );
    a.until("the message", |seen| messages(seen, "b:x").len() == 1);
    assert_eq!(count(&a.seen, |e| matches!(e, BrokerEvent::Down { .. })), 0);
    assert_eq!(a.handle().stats().publish_errors, 1);
}

#[test]
fn a_flushed_script_cache_falls_back_to_eval() {
    let redis = Redis::start();
    let mut a = Node::start(&redis.url(), "a", "flush");
    a.wait_up(1);
    a.publish("f:x", "one", 3, 1);
    assert_eq!(a.published(1).unwrap().offset, 1);
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    a.publish("f:x", "two", 3, 2);
    assert_eq!(a.published(2).unwrap().offset, 2);
    let epoch = a.published(2).unwrap().epoch;
    a.send(BrokerCommand::History {
        channel: Arc::from("f:x"),
        since: Some(Position { offset: 0, epoch }),
        token: 3,
    });
    assert_eq!(a.history(3).unwrap().replay.map(|r| r.len()), Some(2));
}

#[test]
fn down_from_the_start_then_up_when_redis_appears() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut a = Node::start(&url, "a", "late");
    a.until("Down", |seen| {
        matches!(seen.first(), Some(BrokerEvent::Down { .. }))
    });
    let handle = a.handle();
    assert!(matches!(
        handle.try_send(publish("l:x", "nope", 0, 1)),
        Err(Refused::Down(_))
    ));
    assert_eq!(handle.stats().publish_errors, 1);
    a.send(subscribe("l:x"));
    let redis = Redis::start_on(port);
    a.wait_up(1);
    let up = a.seen.last().unwrap().clone();
    assert!(
        matches!(
            up,
            BrokerEvent::Up {
                resubscribed: 1,
                ..
            }
        ),
        "{up:?}"
    );
    assert_eq!(
        count(&a.seen, |e| matches!(e, BrokerEvent::Down { .. })),
        1,
        "once"
    );
    a.publish("l:x", "yes", 0, 2);
    a.until("the message", |seen| messages(seen, "l:x").len() == 1);
    drop(redis);
}
