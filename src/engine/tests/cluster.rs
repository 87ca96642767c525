//! Clustered channels on the in-memory driver, against a fake broker: the subscribe/position
//! protocol (held messages, duplicates dropped), publishes answered from the broker, epochs
//! moving, recovery through the broker, and untrusted broker input (malformed payloads, bad
//! `[[redis_input]]` suffixes) counted and dropped.

use super::*;
use crate::broker::config::{ClusterConfig, InputTarget, RedisInput};
use crate::broker::{BrokerCommand, BrokerError, BrokerEvent, Position, Recovered};
use crate::driver::memory::FakeBroker;
use bytes::Bytes;
use std::sync::Arc;

fn clustered() -> Config {
    let mut config = config();
    config.cluster = ClusterConfig {
        redis: Some("redis://127.0.0.1:1".to_string()),
        ..ClusterConfig::default()
    };
    config.namespaces.insert(
        "rec".to_string(),
        crate::config::Namespace {
            history_size: 100,
            ..Default::default()
        },
    );
    config.redis_input = vec![
        RedisInput {
            pattern: "ws:fid:*".to_string(),
            to: InputTarget::Conn,
            channel: None,
        },
        RedisInput {
            pattern: "ws:in:*".to_string(),
            to: InputTarget::Channel,
            channel: Some("feed:{}".to_string()),
        },
    ];
    config
}

fn message(channel: &str, offset: u64, epoch: u64, data: &str) -> BrokerEvent {
    BrokerEvent::Message {
        channel: Arc::from(channel),
        offset,
        epoch,
        payload: crate::wire::Body::Json(Bytes::copy_from_slice(data.as_bytes())).to_broker(),
    }
}

/// The token of the position read the owner sent for `channel`, after its `Subscribe`.
fn position_read(broker: &FakeBroker, channel: &str) -> u64 {
    let commands = broker.take();
    let at = commands
        .iter()
        .position(|c| matches!(c, BrokerCommand::Subscribe { channel: ch } if &**ch == channel))
        .unwrap_or_else(|| panic!("no Subscribe for {channel}: {commands:?}"));
    match &commands[at + 1] {
        BrokerCommand::History {
            channel: ch,
            since: None,
            token,
        } if &**ch == channel => *token,
        other => panic!("not a position read after the subscribe: {other:?}"),
    }
}

fn reply(token: u64, channel: &str, offset: u64, epoch: u64) -> BrokerEvent {
    BrokerEvent::HistoryReply {
        token,
        channel: Arc::from(channel),
        result: Ok(Recovered {
            position: Position { offset, epoch },
            replay: None,
        }),
    }
}

/// (offset, data) of the `message` envelopes received.
fn offsets(texts: &[Value]) -> Vec<(u64, Value)> {
    texts
        .iter()
        .filter(|t| t["op"] == "message")
        .map(|t| (t["offset"].as_u64().unwrap(), t["data"].clone()))
        .collect()
}

#[test]
fn messages_before_the_position_are_held_and_duplicates_dropped() {
    let (mut c, mut broker) = Cluster::with_broker(clustered(), 2);
    let mut subs: Vec<Ws> = (0..2).map(|s| Ws::open(&mut c, s, "/ws")).collect();
    for ws in &mut subs {
        ws.send_text(&mut c, r#"{"op":"subscribe","channel":"news"}"#);
    }
    c.settle();
    let token = position_read(&broker, "news");
    assert!(broker.take().is_empty(), "one subscription for the node");
    for ws in &mut subs {
        assert!(
            ws.texts(&mut c).iter().all(|t| t["op"] != "subscribed"),
            "held"
        );
    }
    // Before the answer: one at the position (dropped), one above (held, then delivered).
    broker.deliver(message("news", 5, 7, "5"));
    broker.deliver(message("news", 6, 7, "6"));
    c.settle();
    broker.deliver(reply(token, "news", 5, 7));
    broker.deliver(message("news", 6, 7, "6"));
    broker.deliver(message("news", 7, 7, "7"));
    c.settle();
    for ws in &mut subs {
        let texts = ws.texts(&mut c);
        let sub = texts.iter().find(|t| t["op"] == "subscribed").unwrap();
        assert_eq!(
            (sub["offset"].as_u64(), sub["epoch"].as_u64()),
            (Some(5), Some(7))
        );
        assert_eq!(offsets(&texts), vec![(6, json!(6)), (7, json!(7))]);
    }
    // A new epoch (the broker lost the channel): offsets start again and later subscribers
    // hear the new epoch.
    broker.deliver(message("news", 1, 9, "\"new\""));
    c.settle();
    for ws in &mut subs {
        assert_eq!(offsets(&ws.texts(&mut c)), vec![(1, json!("new"))]);
    }
    assert_eq!(c.total().cluster_epochs_bumped, 1);
    let mut late = Ws::open(&mut c, 1, "/ws");
    late.send_text(&mut c, r#"{"op":"subscribe","channel":"news"}"#);
    c.settle();
    let texts = late.texts(&mut c);
    let sub = texts.iter().find(|t| t["op"] == "subscribed").unwrap();
    assert_eq!(
        (sub["offset"].as_u64(), sub["epoch"].as_u64()),
        (Some(1), Some(9))
    );
    // Malformed payloads from the broker are counted and never reach a client.
    let bad = |payload: &'static [u8], offset| BrokerEvent::Message {
        channel: Arc::from("news"),
        offset,
        epoch: 9,
        payload: Bytes::from_static(payload),
    };
    broker.deliver(bad(b"x{}", 2));
    broker.deliver(bad(b"t\xff", 3));
    broker.deliver(bad(b"j{nope", 4));
    broker.deliver(bad(b"", 5));
    broker.deliver(message("news", 6, 9, "6"));
    c.settle();
    assert_eq!(c.total().cluster_malformed, 4);
    for ws in subs.iter_mut().chain(std::iter::once(&mut late)) {
        assert_eq!(offsets(&ws.texts(&mut c)), vec![(6, json!(6))]);
    }
    // The last subscriber leaving unsubscribes the node, once.
    let unsubscribes = |commands: Vec<BrokerCommand>| {
        commands
            .iter()
            .filter(|c| matches!(c, BrokerCommand::Unsubscribe { channel } if &**channel == "news"))
            .count()
    };
    for ws in &subs {
        ws.send_text(&mut c, r#"{"op":"unsubscribe","channel":"news"}"#);
    }
    c.settle();
    assert_eq!(unsubscribes(broker.take()), 0, "one subscriber is left");
    late.send_text(&mut c, r#"{"op":"unsubscribe","channel":"news"}"#);
    c.settle();
    assert_eq!(unsubscribes(broker.take()), 1);
    // What the broker still sends for it is dropped.
    broker.deliver(message("news", 7, 9, "7"));
    c.settle();
    assert!(offsets(&late.texts(&mut c)).is_empty());
}

#[test]
fn publishes_are_answered_from_the_broker() {
    let (mut c, mut broker) = Cluster::with_broker(clustered(), 2);
    let ctl = control(&mut c, 1);
    c.write(
        ctl,
        b"{\"id\":1,\"method\":\"publish\",\"channel\":\"news\",\"data\":{\"a\":1}}\n",
    );
    c.settle();
    let commands = broker.take();
    let Some(BrokerCommand::Publish { payload, token, .. }) = commands
        .iter()
        .find(|c| matches!(c, BrokerCommand::Publish { .. }))
    else {
        panic!("no publish sent: {commands:?}");
    };
    assert_eq!(&payload[..], b"j{\"a\":1}", "kind byte, then the JSON");
    assert!(lines(&mut c, ctl).is_empty(), "answered by the broker");
    broker.deliver(BrokerEvent::Published {
        token: *token,
        result: Ok(Position {
            offset: 41,
            epoch: 3,
        }),
    });
    c.settle();
    let r = lines(&mut c, ctl);
    assert_eq!(r[0]["result"]["offset"], 41, "{r:?}");
    assert_eq!(r[0]["result"]["epoch"], 3);
    // Lost in flight, then refused at once while down.
    c.write(
        ctl,
        b"{\"id\":2,\"method\":\"publish\",\"channel\":\"news\",\"text\":\"x\"}\n",
    );
    c.settle();
    let token = match broker.take().pop() {
        Some(BrokerCommand::Publish { token, .. }) => token,
        other => panic!("{other:?}"),
    };
    broker.deliver(BrokerEvent::Published {
        token,
        result: Err(BrokerError::Down),
    });
    c.settle();
    assert_eq!(
        lines(&mut c, ctl)[0]["error"]["code"],
        "cluster_unavailable"
    );
    broker.handle.shared().set_up(false);
    let r = call(
        &mut c,
        ctl,
        &[json!({"id":3,"method":"publish","channel":"news","text":"y"})],
    );
    assert_eq!(r[0]["error"]["code"], "cluster_unavailable", "{r:?}");
    assert!(broker.take().is_empty(), "nothing queued while down");
    assert_eq!(c.total().cluster_publish_errors, 2);
    assert_eq!(c.total().cluster_messages_out, 1);
}

#[test]
fn requests_whose_answer_never_comes_are_failed_at_their_deadline() {
    let (mut c, broker) = Cluster::with_broker(clustered(), 2);
    let ctl = control(&mut c, 1);
    c.write(
        ctl,
        b"{\"id\":1,\"method\":\"publish\",\"channel\":\"news\",\"text\":\"x\"}\n",
    );
    let mut sub = Ws::open(&mut c, 0, "/ws");
    sub.send_text(&mut c, r#"{"op":"subscribe","channel":"lost"}"#);
    c.settle();
    let sent = broker.take();
    assert!(
        sent.iter()
            .any(|c| matches!(c, BrokerCommand::Publish { .. }))
    );
    assert!(
        sent.iter()
            .any(|c| matches!(c, BrokerCommand::History { .. }))
    );
    // The answers were dropped on their way (a full event ring): nothing comes back. Until the
    // deadline nothing is failed ...
    let deadline =
        4 * ClusterConfig::default().timeout_ms + crate::engine::cluster::ANSWER_SLACK_MS;
    c.advance(deadline - 1000);
    c.settle();
    assert!(lines(&mut c, ctl).is_empty());
    assert_eq!(c.total().cluster_requests_expired, 0);
    // ... then the publish is answered as lost in flight, and the subscribe as a read the broker
    // could not answer: acknowledged with its position unknown.
    c.advance(2000);
    c.settle();
    assert_eq!(
        lines(&mut c, ctl)[0]["error"]["code"],
        "cluster_unavailable"
    );
    let texts = sub.texts(&mut c);
    let subscribed = texts.iter().find(|t| t["op"] == "subscribed");
    assert!(subscribed.is_some(), "{texts:?}");
    assert_eq!(c.total().cluster_requests_expired, 2);
    assert_eq!(c.total().cluster_publish_errors, 1);
}

#[test]
fn recovery_reads_the_broker_and_appends_what_came_meanwhile() {
    let (mut c, mut broker) = Cluster::with_broker(clustered(), 2);
    let mut ws = Ws::open(&mut c, 0, "/ws");
    ws.send_text(
        &mut c,
        r#"{"op":"subscribe","channel":"rec:a","since":{"offset":2,"epoch":7}}"#,
    );
    c.settle();
    let token = position_read(&broker, "rec:a");
    broker.deliver(reply(token, "rec:a", 5, 7));
    c.settle();
    // Nothing local covers 3..=5: the owner asks the broker from 2.
    let commands = broker.take();
    let Some(BrokerCommand::History {
        since: Some(since),
        token,
        ..
    }) = commands.first()
    else {
        panic!("no recovery read: {commands:?}");
    };
    assert_eq!((since.offset, since.epoch), (2, 7));
    // Messages 6 and 7 arrive before the broker's answer, which ends at 6.
    broker.deliver(message("rec:a", 6, 7, "6"));
    broker.deliver(message("rec:a", 7, 7, "7"));
    c.settle();
    let payload = |n: &str| crate::wire::Body::Json(Bytes::from(n.to_string())).to_broker();
    broker.deliver(BrokerEvent::HistoryReply {
        token: *token,
        channel: Arc::from("rec:a"),
        result: Ok(Recovered {
            position: Position {
                offset: 6,
                epoch: 7,
            },
            replay: Some((3..=6).map(|o| (o, payload(&o.to_string()))).collect()),
        }),
    });
    broker.deliver(message("rec:a", 8, 7, "8"));
    c.settle();
    let texts = ws.texts(&mut c);
    let sub = texts.iter().find(|t| t["op"] == "subscribed").unwrap();
    assert_eq!(sub["recovered"], true, "{sub}");
    assert_eq!(sub["offset"], 7, "{sub}");
    let got: Vec<u64> = offsets(&texts).iter().map(|(o, _)| *o).collect();
    assert_eq!(got, vec![3, 4, 5, 6, 7, 8], "once each, in order");
    assert_eq!(c.total().recoveries, 1);
    // Another epoch: not recoverable, no broker read.
    let mut other = Ws::open(&mut c, 1, "/ws");
    other.send_text(
        &mut c,
        r#"{"op":"subscribe","channel":"rec:a","since":{"offset":2,"epoch":6}}"#,
    );
    c.settle();
    let texts = other.texts(&mut c);
    let sub = texts.iter().find(|t| t["op"] == "subscribed").unwrap();
    assert_eq!(sub["recovered"], false, "{sub}");
    let sent = broker.take();
    assert!(
        !sent
            .iter()
            .any(|c| matches!(c, BrokerCommand::History { .. })),
        "{sent:?}"
    );
}

#[test]
fn redis_input_is_validated_and_counted() {
    let (mut c, mut broker) = Cluster::with_broker(clustered(), 2);
    let patterns: Vec<String> = broker
        .take()
        .into_iter()
        .filter_map(|c| match c {
            BrokerCommand::PatternSubscribe { pattern } => Some(pattern.to_string()),
            _ => None,
        })
        .collect();
    c.settle();
    let patterns: Vec<String> = patterns
        .into_iter()
        .chain(broker.take().into_iter().filter_map(|c| match c {
            BrokerCommand::PatternSubscribe { pattern } => Some(pattern.to_string()),
            _ => None,
        }))
        .collect();
    assert_eq!(patterns, vec!["ws:fid:*", "ws:in:*"], "once per node");
    let mut ws = Ws::open(&mut c, 1, "/ws");
    let id = ws.texts(&mut c)[0]["conn"].as_u64().unwrap();
    let input = |pattern: &str, channel: &[u8], payload: &[u8]| BrokerEvent::Pattern {
        pattern: Arc::from(pattern),
        channel: Bytes::copy_from_slice(channel),
        payload: Bytes::copy_from_slice(payload),
    };
    broker.deliver(input(
        "ws:fid:*",
        format!("ws:fid:{id}").as_bytes(),
        b"{\"x\":1}",
    ));
    let long = format!("ws:fid:{}", "9".repeat(300));
    for (pattern, channel) in [
        ("ws:fid:*", &b"ws:fid:"[..]),
        ("ws:fid:*", b"ws:fid:12x"),
        ("ws:fid:*", b"ws:fid:\xff"),
        ("ws:fid:*", b"ws:fid:99999999999999999999"),
        ("ws:fid:*", long.as_bytes()),
        ("ws:fid:*", b"other:1"),
        ("ws:nope:*", b"ws:nope:1"),
        ("ws:in:*", b"ws:in:bad channel"),
    ] {
        broker.deliver(input(pattern, channel, b"x"));
    }
    broker.deliver(input("ws:in:*", b"ws:in:a", b"[1]"));
    c.settle();
    let texts = ws.texts(&mut c);
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert_eq!(texts[0]["data"], json!({"x": 1}));
    let total = c.total();
    assert_eq!(
        (total.redis_input_messages, total.redis_input_refused),
        (2, 8)
    );
    let published = broker.take();
    assert!(
        published
            .iter()
            .any(|c| matches!(c, BrokerCommand::Publish { channel, .. } if &**channel == "feed:a")),
        "{published:?}"
    );
}

#[test]
fn a_subscribe_while_the_broker_is_down_is_answered_and_its_first_message_sets_the_position() {
    let (mut c, mut broker) = Cluster::with_broker(clustered(), 2);
    broker.handle.shared().set_up(false);
    let mut ws = Ws::open(&mut c, 0, "/ws");
    ws.send_text(&mut c, r#"{"op":"subscribe","channel":"news"}"#);
    c.settle();
    let texts = ws.texts(&mut c);
    let sub = texts.iter().find(|t| t["op"] == "subscribed").unwrap();
    assert_eq!(
        (sub["offset"].as_u64(), sub["epoch"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(
        broker
            .take()
            .iter()
            .any(|c| matches!(c, BrokerCommand::Subscribe { .. })),
        "interest is queued while down (the bridge resubscribes it)"
    );
    broker.handle.shared().set_up(true);
    broker.deliver(BrokerEvent::Up {
        resubscribed: 1,
        patterns: 2,
        moved: 0,
        epochs_bumped: 0,
    });
    c.settle();
    // Back up: the channel's position is read again, and its epoch is known from then on.
    let refresh = broker.take().into_iter().find_map(|c| match c {
        BrokerCommand::History {
            since: None, token, ..
        } => Some(token),
        _ => None,
    });
    broker.deliver(reply(refresh.expect("a position read"), "news", 11, 5));
    c.settle();
    let mut late = Ws::open(&mut c, 1, "/ws");
    late.send_text(&mut c, r#"{"op":"subscribe","channel":"news"}"#);
    c.settle();
    let texts = late.texts(&mut c);
    let sub = texts.iter().find(|t| t["op"] == "subscribed").unwrap();
    assert_eq!(
        (sub["offset"].as_u64(), sub["epoch"].as_u64()),
        (Some(0), Some(5))
    );
    broker.deliver(message("news", 12, 5, "12"));
    broker.deliver(message("news", 13, 5, "13"));
    c.settle();
    for ws in [&mut ws, &mut late] {
        assert_eq!(
            offsets(&ws.texts(&mut c)),
            vec![(12, json!(12)), (13, json!(13))]
        );
    }
    // The broker lost the channel: the position becomes unknown until the next message.
    broker.deliver(BrokerEvent::Resync {
        channel: Arc::from("news"),
        before: Position {
            offset: 13,
            epoch: 5,
        },
        now: Position::default(),
    });
    c.settle();
    assert!(
        broker
            .take()
            .iter()
            .any(|c| matches!(c, BrokerCommand::History { since: None, .. })),
        "the new epoch is read"
    );
    broker.deliver(message("news", 1, 6, "1"));
    c.settle();
    assert_eq!(offsets(&ws.texts(&mut c)), vec![(1, json!(1))]);
    assert_eq!(c.total().cluster_epochs_bumped, 1);
}

/// The user commands the engine sent (taking every command from the broker).
fn user_commands(broker: &FakeBroker) -> Vec<BrokerCommand> {
    broker
        .take()
        .into_iter()
        .filter(|c| {
            matches!(
                c,
                BrokerCommand::UserSubscribe { .. }
                    | BrokerCommand::UserUnsubscribe { .. }
                    | BrokerCommand::UserSend { .. }
                    | BrokerCommand::UserNodes { .. }
            )
        })
        .collect()
}

#[test]
fn user_sends_go_through_the_broker_and_act_on_what_comes_back() {
    let (mut c, mut broker) = Cluster::with_broker(clustered(), 3);
    let mut a0 = Ws::open(&mut c, 0, "/ws");
    let mut a2 = Ws::open(&mut c, 2, "/ws");
    let mut id = |ws: &mut Ws| {
        let texts = ws.texts(&mut c);
        assert_eq!(texts[0]["op"], "welcome", "{texts:?}");
        texts[0]["conn"].as_u64().unwrap()
    };
    let (id0, id2) = (id(&mut a0), id(&mut a2));
    let ctl = control(&mut c, 1);
    let r = call(
        &mut c,
        ctl,
        &[
            json!({"id":1,"method":"bind_user","conn":id0,"user":"alice"}),
            json!({"id":2,"method":"bind_user","conn":id2,"user":"alice"}),
        ],
    );
    assert!(r.iter().all(|r| r.get("result").is_some()), "{r:?}");
    let commands = user_commands(&broker);
    assert_eq!(
        commands,
        vec![BrokerCommand::UserSubscribe {
            user: Arc::from("alice")
        }],
        "the node subscribes the user once, at its first connection"
    );
    // A send goes to the broker; nothing reaches the tabs until the broker hands it back.
    c.write(
        ctl,
        b"{\"id\":3,\"method\":\"send_user\",\"user\":\"alice\",\"data\":{\"msg\":\"hi\"}}\n",
    );
    c.settle();
    let (payload, token) = match user_commands(&broker).pop() {
        Some(BrokerCommand::UserSend {
            user,
            payload,
            token,
        }) if &*user == "alice" => (payload, token),
        other => panic!("no UserSend: {other:?}"),
    };
    assert!(a0.texts(&mut c).is_empty(), "not before the broker's copy");
    broker.deliver(BrokerEvent::UserSent {
        token,
        result: Ok(2),
    });
    c.settle();
    let r = lines(&mut c, ctl);
    assert_eq!(r[0]["result"], json!({"connections":2,"nodes":2}), "{r:?}");
    broker.deliver(BrokerEvent::User {
        user: Arc::from("alice"),
        payload: payload.clone(),
    });
    // Another node's send arrives the same way; a malformed one is dropped and counted.
    broker.deliver(BrokerEvent::User {
        user: Arc::from("alice"),
        payload: Bytes::from_static(b"\x01Sx"),
    });
    c.settle();
    for ws in [&mut a0, &mut a2] {
        assert_eq!(
            ws.texts(&mut c),
            vec![json!({"op":"push","data":{"msg":"hi"}})],
            "each tab once"
        );
    }
    assert_eq!(c.total().cluster_user_messages_in, 1);
    assert_eq!(c.total().cluster_malformed, 1);
    assert_eq!(c.total().cluster_user_sends, 1);
    // While the broker is down: acted on here only, and the reply says so.
    broker.handle.shared().set_up(false);
    let r = call(
        &mut c,
        ctl,
        &[json!({"id":4,"method":"send_user","user":"alice","text":"local"})],
    );
    assert_eq!(
        r[0]["result"],
        json!({"connections":2,"local_only":true}),
        "{r:?}"
    );
    assert!(
        user_commands(&broker).is_empty(),
        "nothing queued while down"
    );
    for ws in [&mut a0, &mut a2] {
        assert_eq!(ws.texts(&mut c), vec![json!({"op":"push","data":"local"})]);
    }
    assert_eq!(c.total().cluster_user_local_only, 1);
    broker.handle.shared().set_up(true);
    // A disconnect from another node closes both tabs; the last one gone unsubscribes.
    let bytes = Bytes::from_static(b"\x01D\x11\x31logged out");
    broker.deliver(BrokerEvent::User {
        user: Arc::from("alice"),
        payload: bytes,
    });
    c.settle();
    for ws in [&mut a0, &mut a2] {
        assert_eq!(close_code(&ws.frames(&mut c)), Some(4401));
        c.client_fin(ws.sock);
    }
    c.settle();
    assert_eq!(
        user_commands(&broker),
        vec![BrokerCommand::UserUnsubscribe {
            user: Arc::from("alice")
        }]
    );
    // online asks the broker how many nodes hold each user, beside this node's counts.
    c.write(
        ctl,
        b"{\"id\":6,\"method\":\"online\",\"users\":[\"alice\",\"bob\"]}\n",
    );
    c.settle();
    let token = match broker.take().pop() {
        Some(BrokerCommand::UserNodes { users, token }) => {
            assert_eq!(users, vec![Arc::from("alice"), Arc::from("bob")]);
            token
        }
        other => panic!("no UserNodes: {other:?}"),
    };
    assert!(lines(&mut c, ctl).is_empty(), "waits for the broker's part");
    broker.deliver(BrokerEvent::UserNodes {
        token,
        result: Ok(vec![3, 0]),
    });
    c.settle();
    let r = lines(&mut c, ctl);
    assert_eq!(
        r[0]["result"],
        json!({"users":{"alice":0,"bob":0},"nodes":{"alice":3,"bob":0}}),
        "{r:?}"
    );
    broker.handle.shared().set_up(false);
    let r = call(
        &mut c,
        ctl,
        &[json!({"id":7,"method":"online","users":["alice"]})],
    );
    assert_eq!(
        r[0]["result"],
        json!({"users":{"alice":0},"nodes":null}),
        "{r:?}"
    );
    broker.handle.shared().set_up(true);
    // A send whose answer never comes is failed at its deadline, outcome unknown.
    c.write(
        ctl,
        b"{\"id\":5,\"method\":\"disconnect_user\",\"user\":\"alice\"}\n",
    );
    c.settle();
    assert!(matches!(
        user_commands(&broker).pop(),
        Some(BrokerCommand::UserSend { .. })
    ));
    c.advance(
        4 * ClusterConfig::default().timeout_ms + crate::engine::cluster::ANSWER_SLACK_MS + 1000,
    );
    c.settle();
    let r = lines(&mut c, ctl);
    assert_eq!(r[0]["error"]["code"], "cluster_unavailable", "{r:?}");
    assert_eq!(c.total().cluster_requests_expired, 1);
}

#[test]
fn while_the_broker_is_down_a_node_delivers_to_its_own_subscribers() {
    let (mut c, mut broker) = Cluster::with_broker(clustered(), 2);
    let mut sub = Ws::open(&mut c, 1, "/ws");
    sub.send_text(&mut c, r#"{"op":"subscribe","channel":"rec:a"}"#);
    c.settle();
    let token = position_read(&broker, "rec:a");
    broker.deliver(reply(token, "rec:a", 10, 7));
    c.settle();
    let texts = sub.texts(&mut c);
    assert!(texts.iter().any(|t| t["op"] == "subscribed"), "{texts:?}");
    broker.handle.shared().set_up(false);
    broker.deliver(BrokerEvent::Down {
        cause: crate::broker::DownCause::Closed,
    });
    let ctl = control(&mut c, 0);
    let r = call(
        &mut c,
        ctl,
        &[
            json!({"id":1,"method":"publish","channel":"rec:a","data":1}),
            json!({"id":2,"method":"publish","channel":"rec:a","data":2}),
            json!({"id":3,"method":"publish","channel":"nobody:here","data":3}),
        ],
    );
    let local_epoch = r[0]["result"]["epoch"].as_u64().unwrap();
    assert!(
        local_epoch >= crate::engine::cluster::LOCAL_EPOCH_BIT,
        "{r:?}"
    );
    assert!(local_epoch < 1 << 53, "JavaScript-safe");
    assert_eq!(
        r[0]["result"],
        json!({"offset":11,"epoch":local_epoch,"local_only":true}),
        "offsets go on from the broker's, on a node-local epoch"
    );
    assert_eq!(r[1]["result"]["offset"], 12);
    assert_eq!(r[1]["result"]["epoch"], local_epoch, "one epoch while down");
    assert_eq!(
        r[2]["error"]["code"], "cluster_unavailable",
        "no subscriber here: nobody would get it"
    );
    assert!(broker.take().is_empty(), "nothing queued for the broker");
    assert_eq!(
        offsets(&sub.texts(&mut c)),
        vec![(11, json!(1)), (12, json!(2))]
    );
    assert_eq!(c.total().cluster_publish_local, 2);
    // Within the local epoch a recovery on this node works; across it, it cannot.
    let mut back = Ws::open(&mut c, 0, "/ws");
    let since = format!(
        r#"{{"op":"subscribe","channel":"rec:a","since":{{"offset":11,"epoch":{local_epoch}}}}}"#
    );
    back.send_text(&mut c, &since);
    c.settle();
    let texts = back.texts(&mut c);
    let subscribed = texts.iter().find(|t| t["op"] == "subscribed").unwrap();
    assert_eq!(subscribed["recovered"], true, "{texts:?}");
    assert_eq!(offsets(&texts), vec![(12, json!(2))]);
    let mut old = Ws::open(&mut c, 0, "/ws");
    old.send_text(
        &mut c,
        r#"{"op":"subscribe","channel":"rec:a","since":{"offset":10,"epoch":7}}"#,
    );
    c.settle();
    let texts = old.texts(&mut c);
    let subscribed = texts.iter().find(|t| t["op"] == "subscribed").unwrap();
    assert_eq!(subscribed["recovered"], false, "{texts:?}");
    // The broker back, and others published 11 and 12 meanwhile (Resync): the channel returns
    // to the broker's position it left (10, epoch 7) and catches up on what it missed.
    broker.handle.shared().set_up(true);
    broker.deliver(BrokerEvent::Resync {
        channel: Arc::from("rec:a"),
        before: Position {
            offset: 10,
            epoch: 7,
        },
        now: Position {
            offset: 12,
            epoch: 7,
        },
    });
    broker.deliver(BrokerEvent::Up {
        resubscribed: 1,
        patterns: 0,
        moved: 1,
        epochs_bumped: 0,
    });
    c.settle();
    let commands = broker.take();
    let Some(BrokerCommand::History {
        token,
        since: Some(since),
        ..
    }) = commands
        .iter()
        .find(|c| matches!(c, BrokerCommand::History { channel, .. } if &**channel == "rec:a"))
    else {
        panic!("no catch-up read after the broker came back: {commands:?}");
    };
    assert_eq!((since.offset, since.epoch), (10, 7), "from where it left");
    // A live message arrives before the answer: held until the missed ones are delivered.
    broker.deliver(message("rec:a", 13, 7, "\"live\""));
    c.settle();
    let payload = |n: &str| crate::wire::Body::Json(Bytes::from(n.to_string())).to_broker();
    broker.deliver(BrokerEvent::HistoryReply {
        token: *token,
        channel: Arc::from("rec:a"),
        result: Ok(Recovered {
            position: Position {
                offset: 12,
                epoch: 7,
            },
            replay: Some(vec![(11, payload("11")), (12, payload("12"))]),
        }),
    });
    c.settle();
    for ws in [&mut sub, &mut back, &mut old] {
        assert_eq!(
            offsets(&ws.texts(&mut c)),
            vec![(11, json!(11)), (12, json!(12)), (13, json!("live"))],
            "the broker's sequence again, with what was missed, once each, in order"
        );
    }
    assert_eq!(c.total().cluster_catch_ups, 1);
    assert!(c.total().cluster_epochs_bumped >= 1);
    let r = call(
        &mut c,
        ctl,
        &[json!({"id":4,"method":"publish","channel":"rec:a","data":4})],
    );
    assert!(r.is_empty(), "answered by the broker now: {r:?}");
    assert!(
        broker
            .take()
            .iter()
            .any(|c| matches!(c, BrokerCommand::Publish { .. }))
    );
}

#[test]
fn presence_is_written_to_the_broker_read_from_it_and_its_news_come_from_it() {
    let mut config = clustered();
    config.namespaces.insert(
        "pres".to_string(),
        crate::config::Namespace {
            join_leave: true,
            ..Default::default()
        },
    );
    let (mut c, mut broker) = Cluster::with_broker(config, 2);
    let mut ws = Ws::open(&mut c, 1, "/ws");
    ws.send_text(&mut c, r#"{"op":"subscribe","channel":"pres:r"}"#);
    c.settle();
    let token = position_read(&broker, "pres:r");
    broker.deliver(reply(token, "pres:r", 0, 7));
    c.settle();
    let conn = ws.texts(&mut c)[0]["conn"].as_u64().unwrap();
    let ctl = control(&mut c, 0);
    let r = call(
        &mut c,
        ctl,
        &[json!({"id":1,"method":"bind_user","conn":conn,"user":"alice","info":{"n":1}})],
    );
    assert!(r[0].get("error").is_none(), "{r:?}");
    // The owner reported each change: the anonymous connection left, alice's came.
    let sets: Vec<_> = broker
        .take()
        .into_iter()
        .filter_map(|c| match c {
            BrokerCommand::PresenceSet {
                channel,
                user,
                conns,
                node_conns,
                node_anon,
                news,
            } => Some((channel, user, conns, node_conns, node_anon, news)),
            _ => None,
        })
        .collect();
    let alice = Some((Arc::from("alice"), Some(Arc::from("{\"n\":1}"))));
    assert_eq!(
        sets.last(),
        Some(&(Arc::from("pres:r"), alice, 1, 1, 0, true)),
        "{sets:?}"
    );
    // While the broker is up, the news are its own, not this node's.
    assert!(
        !ws.texts(&mut c).iter().any(|t| t["op"] == "join"),
        "no local join news"
    );
    broker.deliver(BrokerEvent::PresenceNews {
        channel: Arc::from("pres:r"),
        joined: true,
        user: Arc::from("bob"),
        info: None,
    });
    c.settle();
    let texts = ws.texts(&mut c);
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert_eq!(
        (&texts[0]["op"], &texts[0]["user"]),
        (&json!("join"), &json!("bob"))
    );
    // presence_stats is the broker's answer for every node.
    c.write(
        ctl,
        b"{\"id\":2,\"method\":\"presence_stats\",\"channel\":\"pres:r\"}\n",
    );
    c.settle();
    let read = broker.take().into_iter().find_map(|c| match c {
        BrokerCommand::PresenceRead {
            token, page: None, ..
        } => Some(token),
        _ => None,
    });
    let token = read.expect("a presence read");
    broker.deliver(BrokerEvent::PresenceReply {
        token,
        result: Ok(crate::broker::PresenceView {
            users: 2,
            conns: 3,
            anonymous: 1,
            ..Default::default()
        }),
    });
    c.settle();
    let r = lines(&mut c, ctl);
    assert_eq!(
        r[0]["result"],
        json!({"users":2,"conns":3,"anonymous":1}),
        "{r:?}"
    );
    // Broker down: this node's view, marked, and this node announces its own news.
    broker.handle.shared().set_up(false);
    let r = call(
        &mut c,
        ctl,
        &[json!({"id":3,"method":"presence_stats","channel":"pres:r"})],
    );
    assert_eq!(
        r[0]["result"],
        json!({"users":1,"conns":1,"anonymous":0,"local_only":true}),
        "{r:?}"
    );
    let mut other = Ws::open(&mut c, 0, "/ws");
    other.send_text(&mut c, r#"{"op":"subscribe","channel":"pres:r"}"#);
    c.settle();
    let conn = other.texts(&mut c)[0]["conn"].as_u64().unwrap();
    call(
        &mut c,
        ctl,
        &[json!({"id":4,"method":"bind_user","conn":conn,"user":"carol"})],
    );
    let texts = ws.texts(&mut c);
    assert!(
        texts
            .iter()
            .any(|t| t["op"] == "join" && t["user"] == "carol"),
        "{texts:?}"
    );
}
