//! Identity, users, presence and the event stream on the in-memory driver: tokens and their
//! expiry, user addressing across shards, presence deduplicated by user, join/leave news, and
//! event routing to consumer groups.

use super::*;
use crate::driver::memory::WALL_BASE_MS;

const SECRET: &str = "a test secret of at least thirty-two bytes";

fn auth_config() -> Config {
    let mut config = config();
    config.auth.hs256_secret = Some(SECRET.to_string());
    config.limits.token_refresh_grace_ms = 1_000;
    let room = crate::config::Namespace {
        join_leave: true,
        ..Default::default()
    };
    config.namespaces.insert("room".to_string(), room);
    let private = crate::config::Namespace {
        anonymous: false,
        subscribe: crate::config::SubscribeRule::Owner,
        ..Default::default()
    };
    config.namespaces.insert("user".to_string(), private);
    config
}

/// A token for `claims` (sub, exp, channels, info) signed with the test secret.
fn token(claims: Value) -> String {
    crate::auth::sign_hs256(&claims.to_string(), SECRET.as_bytes()).unwrap()
}

/// `exp` `s` seconds after the cluster's time 0.
fn exp_in(s: u64) -> u64 {
    WALL_BASE_MS / 1000 + s
}

/// An HTTP upgrade of `path` that must be refused; the status line and body.
fn refused(c: &mut Cluster, shard: usize, path: &str) -> String {
    let sock = c.connect(shard, Listener::WebSocket);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    c.write(sock, req.as_bytes());
    c.settle();
    String::from_utf8(c.read(sock)).unwrap()
}

fn ops(texts: &[Value]) -> Vec<String> {
    texts
        .iter()
        .map(|t| t["op"].as_str().unwrap_or("").to_string())
        .collect()
}

/// A connection's id from its welcome.
fn welcome_id(ws: &mut Ws, c: &mut Cluster) -> u64 {
    let texts = ws.texts(c);
    assert_eq!(texts[0]["op"], "welcome", "{texts:?}");
    texts[0]["conn"].as_u64().unwrap()
}

#[test]
fn a_url_token_names_the_user_and_subscribes_its_channels() {
    let mut c = Cluster::new(auth_config(), 2);
    let t = token(json!({"sub":"alice","exp":exp_in(60),"channels":["user:alice","news:1"]}));
    let mut ws = Ws::open(&mut c, 0, &format!("/ws?token={t}"));
    let texts = ws.texts(&mut c);
    assert_eq!(ops(&texts)[..2], ["welcome", "authed"]);
    assert_eq!(texts[1]["user"], "alice");
    let mut subscribed: Vec<&str> = texts
        .iter()
        .filter(|t| t["op"] == "subscribed")
        .map(|t| t["channel"].as_str().unwrap())
        .collect();
    subscribed.sort();
    assert_eq!(subscribed, ["news:1", "user:alice"]);
    // A bad signature, an expired token and a `none` token get 401 with their code.
    let forged = format!("{}x", &t[..t.len() - 1]);
    assert!(refused(&mut c, 0, &format!("/ws?token={forged}")).starts_with("HTTP/1.1 401"));
    let old = token(json!({"sub":"alice","exp":exp_in(0) - 10}));
    let text = refused(&mut c, 1, &format!("/ws?token={old}"));
    assert!(
        text.starts_with("HTTP/1.1 401") && text.contains("token_expired"),
        "{text}"
    );
    let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.";
    assert!(refused(&mut c, 0, &format!("/ws?token={none}")).contains("token_invalid"));
    assert_eq!(c.total().token_refusals, 3);
}

#[test]
fn namespace_rules_guard_private_channels() {
    let mut c = Cluster::new(auth_config(), 1);
    let mut anon = Ws::open(&mut c, 0, "/ws?channel=user:alice");
    let texts = anon.texts(&mut c);
    assert!(
        texts
            .iter()
            .any(|t| t["op"] == "error" && t["code"] == "forbidden"),
        "an anonymous URL subscription to user:alice is refused: {texts:?}"
    );
    let t = token(json!({"sub":"bob"}));
    let mut bob = Ws::open(&mut c, 0, "/ws");
    bob.texts(&mut c);
    bob.send_text(&mut c, &json!({"op":"auth","token":t}).to_string());
    bob.send_text(
        &mut c,
        r#"{"op":"subscribe","channel":"user:alice","id":1}"#,
    );
    bob.send_text(&mut c, r#"{"op":"subscribe","channel":"user:bob","id":2}"#);
    c.settle();
    let texts = bob.texts(&mut c);
    assert_eq!(ops(&texts), ["authed", "error", "subscribed"], "{texts:?}");
    assert_eq!(texts[1]["id"], 1);
    assert_eq!(texts[1]["code"], "forbidden");
    assert_eq!(c.total().access_refusals, 2);
}

#[test]
fn an_expired_token_is_told_then_closed_unless_refreshed() {
    let mut c = Cluster::new(auth_config(), 1);
    let t = token(json!({"sub":"alice","exp":exp_in(2)}));
    let mut kept = Ws::open(&mut c, 0, &format!("/ws?token={t}"));
    let mut lost = Ws::open(&mut c, 0, &format!("/ws?token={t}"));
    kept.texts(&mut c);
    lost.texts(&mut c);
    c.advance(1_900);
    assert!(ops(&kept.texts(&mut c)).is_empty(), "nothing before exp");
    c.advance(200);
    assert_eq!(ops(&kept.texts(&mut c)), ["expired"]);
    assert_eq!(ops(&lost.texts(&mut c)), ["expired"]);
    let fresh = token(json!({"sub":"alice","exp":exp_in(60)}));
    kept.send_text(
        &mut c,
        &json!({"op":"refresh","token":fresh,"id":7}).to_string(),
    );
    c.settle();
    let texts = kept.texts(&mut c);
    assert_eq!(ops(&texts), ["refreshed"]);
    assert_eq!(texts[0]["id"], 7);
    c.advance(1_200);
    let frames = lost.frames(&mut c);
    assert_eq!(
        close_code(&frames),
        Some(close::TOKEN_EXPIRED),
        "{frames:?}"
    );
    let frames = kept.frames(&mut c);
    assert_eq!(
        close_code(&frames),
        None,
        "the refreshed one stays: {frames:?}"
    );
    assert_eq!(c.total().token_expiries, 1);
    // A refresh naming another user is refused and closes.
    let other = token(json!({"sub":"mallory","exp":exp_in(60)}));
    kept.send_text(&mut c, &json!({"op":"refresh","token":other}).to_string());
    c.settle();
    let frames = kept.frames(&mut c);
    assert_eq!(close_code(&frames), Some(close::TOKEN_INVALID));
}

#[test]
fn users_are_addressed_across_shards() {
    let mut c = Cluster::new(auth_config(), 3);
    let mut a0 = Ws::open(&mut c, 0, "/ws");
    let mut a2 = Ws::open(&mut c, 2, "/ws");
    let mut other = Ws::open(&mut c, 1, "/ws");
    let (id0, id2) = (welcome_id(&mut a0, &mut c), welcome_id(&mut a2, &mut c));
    other.texts(&mut c);
    let ctl = control(&mut c, 1);
    let r = call(
        &mut c,
        ctl,
        &[
            json!({"id":1,"method":"bind_user","conn":id0,"user":"alice","info":{"name":"A"}}),
            json!({"id":2,"method":"bind_user","conn":id2,"user":"alice"}),
            json!({"id":3,"method":"send_user","user":"alice","data":{"msg":"hi"}}),
            json!({"id":4,"method":"user_conns","user":"alice"}),
            json!({"id":5,"method":"online","users":["alice","bob"]}),
            json!({"id":6,"method":"users"}),
            json!({"id":7,"method":"send_user","user":"bob","text":"nobody"}),
        ],
    );
    assert_eq!(r.len(), 7, "{r:?}");
    assert_eq!(r[2]["result"]["connections"], 2);
    let mut conns: Vec<u64> = r[3]["result"]["conns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    conns.sort();
    let mut want = vec![id0, id2];
    want.sort();
    assert_eq!(conns, want);
    assert_eq!(r[4]["result"]["users"], json!({"alice":2,"bob":0}));
    assert_eq!(r[5]["result"], json!({"users":{"alice":2},"next":null}));
    assert_eq!(r[6]["result"]["connections"], 0);
    for ws in [&mut a0, &mut a2] {
        let texts = ws.texts(&mut c);
        assert_eq!(texts.len(), 1, "each tab gets the push once: {texts:?}");
        assert_eq!(texts[0], json!({"op":"push","data":{"msg":"hi"}}));
    }
    assert!(other.texts(&mut c).is_empty(), "nobody else gets it");
    let r = call(
        &mut c,
        ctl,
        &[json!({"id":8,"method":"disconnect_user","user":"alice"})],
    );
    assert_eq!(r[0]["result"]["connections"], 2);
    c.settle();
    assert_eq!(close_code(&a0.frames(&mut c)), Some(close::KICKED));
    assert_eq!(close_code(&a2.frames(&mut c)), Some(close::KICKED));
    for ws in [&a0, &a2] {
        c.client_fin(ws.sock);
    }
    c.settle();
    let r = call(
        &mut c,
        ctl,
        &[json!({"id":9,"method":"online","users":["alice"]})],
    );
    assert_eq!(
        r[0]["result"]["users"]["alice"], 0,
        "nothing left behind: {r:?}"
    );
}

#[test]
fn the_per_user_limit_refuses_the_extra_connection() {
    let mut config = auth_config();
    config.limits.conns_per_user_max = 1;
    let mut c = Cluster::new(config, 2);
    let mut a = Ws::open(&mut c, 0, "/ws");
    let mut b = Ws::open(&mut c, 1, "/ws");
    let (ia, ib) = (welcome_id(&mut a, &mut c), welcome_id(&mut b, &mut c));
    let ctl = control(&mut c, 0);
    let r = call(
        &mut c,
        ctl,
        &[
            json!({"id":1,"method":"bind_user","conn":ia,"user":"carol"}),
            json!({"id":2,"method":"bind_user","conn":ib,"user":"carol"}),
            json!({"id":3,"method":"user_conns","user":"carol"}),
        ],
    );
    assert_eq!(r[0]["result"], json!({}), "{r:?}");
    assert_eq!(r[1]["error"]["code"], "limit_exceeded", "{r:?}");
    assert_eq!(r[2]["result"]["conns"], json!([ia]));
    // A token over the limit closes its connection with 4007.
    let t = token(json!({"sub":"carol"}));
    let mut t2 = Ws::open(&mut c, 1, &format!("/ws?token={t}"));
    c.settle();
    assert_eq!(close_code(&t2.frames(&mut c)), Some(close::USER_LIMIT));
    assert_eq!(c.total().user_limit_refusals, 2);
}

#[test]
fn presence_counts_users_once_and_news_come_once_per_user() {
    let mut c = Cluster::new(auth_config(), 3);
    let ch = "room:lobby";
    let mut watcher = Ws::open(&mut c, 1, &format!("/ws?channel={ch}"));
    c.settle();
    watcher.texts(&mut c);
    let alice = token(json!({"sub":"alice","info":{"name":"Alice"}}));
    let bob = token(json!({"sub":"bob"}));
    let mut tab1 = Ws::open(&mut c, 0, &format!("/ws?token={alice}&channel={ch}"));
    let mut tab2 = Ws::open(&mut c, 2, &format!("/ws?token={alice}&channel={ch}"));
    let mut b = Ws::open(&mut c, 2, &format!("/ws?token={bob}&channel={ch}"));
    c.settle();
    let news: Vec<Value> = watcher
        .texts(&mut c)
        .into_iter()
        .filter(|t| t["op"] == "join" || t["op"] == "leave")
        .collect();
    assert_eq!(
        news,
        [
            json!({"op":"join","channel":ch,"user":"alice","info":{"name":"Alice"}}),
            json!({"op":"join","channel":ch,"user":"bob","info":null}),
        ],
        "one join per user, however many tabs"
    );
    let ctl = control(&mut c, 0);
    let r = call(
        &mut c,
        ctl,
        &[
            json!({"id":1,"method":"presence_stats","channel":ch}),
            json!({"id":2,"method":"presence","channel":ch}),
        ],
    );
    assert_eq!(r[0]["result"], json!({"users":2,"conns":4,"anonymous":1}));
    assert_eq!(r[1]["result"]["users"]["alice"]["conns"], 2);
    assert_eq!(
        r[1]["result"]["users"]["alice"]["info"],
        json!({"name":"Alice"})
    );
    assert_eq!(r[1]["result"]["anonymous"], 1);
    assert_eq!(r[1]["result"]["conns"].as_array().unwrap().len(), 4);
    for ws in [&mut tab1, &mut tab2, &mut b] {
        ws.texts(&mut c);
    }
    // One tab closes: alice stays. The second closes: alice leaves.
    c.client_fin(tab1.sock);
    c.settle();
    assert!(watcher.texts(&mut c).iter().all(|t| t["op"] != "leave"));
    c.client_fin(tab2.sock);
    c.settle();
    let texts = watcher.texts(&mut c);
    assert_eq!(
        texts,
        [json!({"op":"leave","channel":ch,"user":"alice","info":{"name":"Alice"}})]
    );
    let r = call(
        &mut c,
        ctl,
        &[json!({"id":3,"method":"presence_stats","channel":ch})],
    );
    assert_eq!(r[0]["result"], json!({"users":1,"conns":2,"anonymous":1}));
    c.client_fin(b.sock);
    c.client_fin(watcher.sock);
    c.settle();
    let r = call(
        &mut c,
        ctl,
        &[json!({"id":4,"method":"presence_stats","channel":ch})],
    );
    assert_eq!(
        r[0]["result"],
        json!({"users":0,"conns":0,"anonymous":0}),
        "no ghosts"
    );
    assert_eq!(c.total().presence_news, 4, "alice and bob joined and left");
}

#[test]
fn binding_after_subscribing_moves_presence_to_the_user() {
    let mut c = Cluster::new(auth_config(), 2);
    let ch = "room:b";
    let mut ws = Ws::open(&mut c, 1, &format!("/ws?channel={ch}"));
    let id = welcome_id(&mut ws, &mut c);
    let ctl = control(&mut c, 0);
    // One call at a time: a pipelined request runs concurrently with the ones before it (only
    // the replies keep their order), and presence news travel from the connection's shard.
    let ask = |c: &mut Cluster, r: Value| call(c, ctl, &[r]).remove(0)["result"].clone();
    assert_eq!(
        ask(
            &mut c,
            json!({"method":"bind_user","conn":id,"user":"dave"})
        ),
        json!({})
    );
    let stats = json!({"method":"presence_stats","channel":ch});
    assert_eq!(
        ask(&mut c, stats.clone()),
        json!({"users":1,"conns":1,"anonymous":0})
    );
    assert_eq!(
        ask(&mut c, json!({"method":"unbind_user","conn":id})),
        json!({})
    );
    assert_eq!(
        ask(&mut c, stats),
        json!({"users":0,"conns":1,"anonymous":1})
    );
    let online = ask(&mut c, json!({"method":"online","users":["dave"]}));
    assert_eq!(online["users"]["dave"], 0);
    let texts = ws.texts(&mut c);
    assert_eq!(
        ops(&texts)
            .iter()
            .filter(|o| *o == "join" || *o == "leave")
            .count(),
        2,
        "dave joined then left: {texts:?}"
    );
}

/// Event lines received by a consumer, without gap lines.
fn events(c: &mut Cluster, sock: Sock) -> Vec<Value> {
    lines(c, sock)
        .into_iter()
        .filter(|l| l.get("event").is_some())
        .collect()
}

#[test]
fn a_consumer_group_shares_the_stream_in_connection_order() {
    let mut c = Cluster::new(auth_config(), 3);
    let m1 = control(&mut c, 0);
    let m2 = control(&mut c, 2);
    for m in [m1, m2] {
        let r = call(
            &mut c,
            m,
            &[json!({"id":1,"method":"events","group":"workers"})],
        );
        assert_eq!(r[0]["result"], json!({}), "{r:?}");
    }
    let t = token(json!({"sub":"erin"}));
    let mut clients = Vec::new();
    for i in 0..12 {
        let path = if i == 0 {
            format!("/ws?token={t}")
        } else {
            "/ws?channel=news:x".to_string()
        };
        clients.push(Ws::open(&mut c, i % 3, &path));
    }
    c.settle();
    clients[0].send_text(&mut c, r#"{"op":"send","data":{"hello":1},"id":"s"}"#);
    c.settle();
    assert_eq!(clients[0].texts(&mut c).last().unwrap()["op"], "sent");
    for ws in &clients {
        c.client_fin(ws.sock);
    }
    c.settle();
    let (e1, e2) = (events(&mut c, m1), events(&mut c, m2));
    assert!(!e1.is_empty() && !e2.is_empty(), "both members get a share");
    let mut by_conn: std::collections::BTreeMap<u64, Vec<(String, usize)>> = Default::default();
    for (member, list) in [(1, &e1), (2, &e2)] {
        for e in list.iter() {
            by_conn
                .entry(e["conn"].as_u64().unwrap())
                .or_default()
                .push((e["event"].as_str().unwrap().to_string(), member));
        }
    }
    assert_eq!(by_conn.len(), 12);
    for (conn, evs) in &by_conn {
        let members: std::collections::BTreeSet<usize> = evs.iter().map(|e| e.1).collect();
        assert_eq!(
            members.len(),
            1,
            "connection {conn}'s events went to one member: {evs:?}"
        );
        let names: Vec<&str> = evs.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names.first(), Some(&"connect"), "{names:?}");
        assert_eq!(names.last(), Some(&"close"), "{names:?}");
    }
    let message = e1
        .iter()
        .chain(&e2)
        .find(|e| e["event"] == "message")
        .unwrap();
    assert_eq!(message["data"], json!({"hello":1}));
    assert_eq!(message["user"], "erin");
    // Per-shard sequence numbers run without gaps for each member.
    for list in [&e1, &e2] {
        for shard in 0..3 {
            let seqs: Vec<u64> = list
                .iter()
                .filter(|e| e["shard"] == shard)
                .map(|e| e["seq"].as_u64().unwrap())
                .collect();
            assert!(
                seqs.iter().enumerate().all(|(i, &s)| s == i as u64 + 1),
                "{seqs:?}"
            );
        }
    }
    // A member that leaves hands its connections over.
    c.client_fin(m2);
    c.settle();
    let late = Ws::open(&mut c, 1, "/ws");
    c.settle();
    let e = events(&mut c, m1);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["event"], "connect");
    drop(late);
}

#[test]
fn a_send_without_consumer_is_an_error_and_a_stalled_consumer_gets_a_gap() {
    let mut config = auth_config();
    config.limits.event_buffer_bytes_max = 1024;
    let mut c = Cluster::new(config, 1);
    let mut ws = Ws::open(&mut c, 0, "/ws");
    ws.texts(&mut c);
    ws.send_text(&mut c, r#"{"op":"send","data":1}"#);
    c.settle();
    let texts = ws.texts(&mut c);
    assert_eq!(texts[0]["code"], "no_consumer", "{texts:?}");
    let consumer = control(&mut c, 0);
    let r = call(
        &mut c,
        consumer,
        &[json!({"id":1,"method":"events","types":["message"]})],
    );
    assert_eq!(r[0]["result"], json!({}));
    c.set_window(consumer, Some(0));
    for i in 0..100 {
        ws.send_text(
            &mut c,
            &format!(r#"{{"op":"send","data":"message number {i}"}}"#),
        );
        c.settle();
    }
    assert!(c.total().events_dropped > 0, "the stalled consumer drops");
    let dropped = c.total().events_dropped;
    c.set_window(consumer, None);
    c.settle();
    ws.send_text(&mut c, r#"{"op":"send","data":"after"}"#);
    c.settle();
    let all = lines(&mut c, consumer);
    let gap = all
        .iter()
        .find(|l| l["event"] == "gap")
        .expect("a gap line");
    assert_eq!(gap["dropped"].as_u64(), Some(dropped));
    let got = all.iter().filter(|l| l["event"] == "message").count() as u64;
    assert_eq!(
        got + dropped,
        101,
        "every event arrived or was counted as dropped"
    );
    assert_eq!(all.last().unwrap()["data"], "after");
    let r = call(&mut c, consumer, &[json!({"id":2,"method":"events"})]);
    assert_eq!(
        r[0]["error"]["code"], "bad_params",
        "one subscription per connection"
    );
}

#[test]
fn a_pipelined_publish_after_a_control_subscribe_reaches_the_new_member() {
    // The GatewayWorker pattern: join a connection to a group, then send to the group, in one
    // write. The subscribe is answered once the channel's owner registered the interest, and
    // the publish behind it waits for that answer.
    let mut c = Cluster::new(auth_config(), 3);
    let ch = owned_by(2, 3, "group:");
    let mut ws = Ws::open(&mut c, 1, "/ws");
    let id = welcome_id(&mut ws, &mut c);
    let ctl = control(&mut c, 0);
    let r = call(
        &mut c,
        ctl,
        &[
            json!({"id":1,"method":"subscribe","conn":id,"channel":ch}),
            json!({"id":2,"method":"publish","channel":ch,"text":"first"}),
            json!({"id":3,"method":"presence_stats","channel":ch}),
        ],
    );
    assert_eq!(r[0]["result"], json!({}), "{r:?}");
    assert_eq!(
        r[1]["result"]["offset"], 1,
        "the publish saw the new member: {r:?}"
    );
    assert_eq!(r[2]["result"]["conns"], 1);
    let texts = ws.texts(&mut c);
    assert!(
        texts
            .iter()
            .any(|t| t["op"] == "message" && t["data"] == "first"),
        "{texts:?}"
    );
    // The same from a backend that half-closes after writing (`echo ... | socat`).
    let mut ws2 = Ws::open(&mut c, 2, "/ws");
    let id2 = welcome_id(&mut ws2, &mut c);
    let ch2 = owned_by(0, 3, "group:");
    let ctl2 = control(&mut c, 1);
    let text = format!(
        "{}\n{}\n",
        json!({"id":1,"method":"subscribe","conn":id2,"channel":ch2}),
        json!({"id":2,"method":"publish","channel":ch2,"text":"second"})
    );
    c.write(ctl2, text.as_bytes());
    c.client_fin(ctl2);
    c.settle();
    let replies = lines(&mut c, ctl2);
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[1]["result"]["offset"], 1);
    assert!(c.pipe(ctl2).closed, "then the server closes");
    let texts = ws2.texts(&mut c);
    assert!(texts.iter().any(|t| t["data"] == "second"), "{texts:?}");
}

#[test]
fn a_drain_spreads_its_closes_over_the_window_then_shuts_down() {
    let mut c = Cluster::new(config(), 2);
    let mut clients: Vec<Ws> = (0..100).map(|i| Ws::open(&mut c, i % 2, "/ws")).collect();
    for ws in &mut clients {
        ws.texts(&mut c);
    }
    let ctl = control(&mut c, 0);
    let r = call(
        &mut c,
        ctl,
        &[json!({"id":1,"method":"drain","over_ms":1000})],
    );
    assert_eq!(r[0]["result"], json!({"draining":true,"over_ms":1000}));
    let mut closed_by_step = Vec::new();
    let mut seen = vec![false; clients.len()];
    for _ in 0..10 {
        c.advance(100);
        let mut n = 0;
        for (i, ws) in clients.iter_mut().enumerate() {
            if !seen[i] && close_code(&ws.frames(&mut c)) == Some(close::SERVICE_RESTART) {
                seen[i] = true;
                n += 1;
            }
        }
        closed_by_step.push(n);
    }
    // Each shard closes its share as the window elapses: about a tenth per 100 ms, never a herd.
    assert!(
        closed_by_step.iter().all(|&n| n <= 20),
        "{closed_by_step:?}"
    );
    assert!(
        closed_by_step[..5].iter().sum::<usize>() >= 30,
        "{closed_by_step:?}"
    );
    c.advance(100);
    let total = seen.iter().filter(|&&s| s).count();
    assert!(
        total >= 90,
        "{total} of 100 closed with 1012 within the window"
    );
    assert!(c.engine(0).is_shutting_down() && c.engine(1).is_shutting_down());
    assert_eq!(c.total().drains, 2);
}
