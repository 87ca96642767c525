//! Users, presence by user, tokens and the event stream against a real server on 3 shards:
//! every control method of the users layer, bad tokens and bad calls with their codes, and the
//! event stream under a connect/close storm.

use super::*;
use serde_json::{Value, json};

const SECRET: &str = "an e2e secret of at least thirty-two bytes";

fn users_server(name: &str) -> (Server, std::path::PathBuf) {
    let path =
        std::env::temp_dir().join(format!("ringcast-e2e-{}-{name}.sock", std::process::id()));
    let mut c = push_config(3, Limits::default());
    c.control.listen = vec![format!("unix:{}", path.display())];
    c.auth.hs256_secret = Some(SECRET.to_string());
    c.namespaces.insert(
        "room".into(),
        ringcast::config::Namespace {
            join_leave: true,
            ..Default::default()
        },
    );
    c.namespaces.insert(
        "user".into(),
        ringcast::config::Namespace {
            anonymous: false,
            subscribe: ringcast::config::SubscribeRule::Owner,
            ..Default::default()
        },
    );
    (Server::start(c).unwrap(), path)
}

fn token(claims: Value) -> String {
    ringcast::auth::sign_hs256(&claims.to_string(), SECRET.as_bytes()).unwrap()
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Reads texts until one has `op` == `want` (bounded by the socket's timeout).
fn until_op(ws: &mut Ws, want: &str) -> Value {
    loop {
        let v = json(ws);
        if v["op"] == want {
            return v;
        }
    }
}

/// Polls `call` until `check` holds (bounded: 10 s); returns the last result.
fn poll(ctl: &mut Ctl, req: Value, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = ctl.call(req.clone());
        if check(&r["result"]) {
            return r["result"].clone();
        }
        assert!(Instant::now() < deadline, "{req} stuck at {r}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn user_methods_across_three_shards() {
    let (server, path) = users_server("users");
    let addr = server.local_addr();
    let mut ctl = Ctl::connect(&path);
    // Four tabs of alice (connections land on the shards the kernel picks), one of bob.
    let mut tabs: Vec<Ws> = (0..4).map(|_| connect(addr, "/ws")).collect();
    let ids: Vec<u64> = tabs
        .iter_mut()
        .map(|ws| json(ws)["conn"].as_u64().unwrap())
        .collect();
    for &id in &ids {
        let r = ctl.call(json!({"method":"bind_user","conn":id,"user":"alice","info":{"n":1}}));
        assert_eq!(r["result"], json!({}), "{r}");
    }
    let bob = token(json!({"sub":"bob","exp":now_s() + 600}));
    let mut b = connect(addr, &format!("/ws?token={bob}"));
    assert_eq!(until_op(&mut b, "authed")["user"], "bob");
    let r = ctl.call(json!({"method":"send_user","user":"alice","data":{"hi":1}}));
    assert_eq!(r["result"]["connections"], 4);
    for ws in &mut tabs {
        assert_eq!(until_op(ws, "push")["data"], json!({"hi":1}));
    }
    let r = ctl.call(json!({"method":"user_conns","user":"alice"}));
    let mut got: Vec<u64> = r["result"]["conns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);
    let online = poll(
        &mut ctl,
        json!({"method":"online","users":["alice","bob","carol"]}),
        |r| r["users"]["bob"] == 1,
    );
    assert_eq!(online["users"], json!({"alice":4,"bob":1,"carol":0}));
    assert_eq!(
        ctl.call(json!({"method":"users","limit":1}))["result"],
        json!({"users":{"alice":4},"next":"alice"})
    );
    assert_eq!(
        ctl.call(json!({"method":"users","cursor":"alice"}))["result"],
        json!({"users":{"bob":1},"next":null})
    );
    // Presence by user in a join/leave room: every tab of alice subscribes, bob too.
    for &id in &ids {
        ctl.call(json!({"method":"subscribe","conn":id,"channel":"room:e2e"}));
    }
    send_json(&mut b, json!({"op":"subscribe","channel":"room:e2e"}));
    let stats = poll(
        &mut ctl,
        json!({"method":"presence_stats","channel":"room:e2e"}),
        |r| r["conns"] == 5,
    );
    assert_eq!(stats, json!({"users":2,"conns":5,"anonymous":0}));
    let p = ctl.call(json!({"method":"presence","channel":"room:e2e"}));
    assert_eq!(
        p["result"]["users"]["alice"],
        json!({"conns":4,"info":{"n":1}})
    );
    assert_eq!(p["result"]["conns"].as_array().unwrap().len(), 5);
    // Bad calls get their codes and disturb nothing.
    let bad = [
        (json!({"method":"bind_user","conn":ids[0]}), "bad_params"),
        (
            json!({"method":"bind_user","conn":ids[0],"user":""}),
            "bad_params",
        ),
        (
            // A connection id on a shard this 3-shard server does not have.
            json!({"method":"bind_user","conn":ringcast::id::ConnId::new(7, 0, 1).get(),"user":"x"}),
            "no_such_conn",
        ),
        (json!({"method":"send_user","user":"alice"}), "bad_params"),
        (json!({"method":"online","users":"alice"}), "bad_params"),
        (
            json!({"method":"presence_stats","channel":"bad name"}),
            "bad_params",
        ),
        (json!({"method":"events","types":["nope"]}), "bad_params"),
        (
            json!({"method":"disconnect_user","user":"alice","code":1001}),
            "bad_params",
        ),
    ];
    for (req, code) in bad {
        let r = ctl.call(req.clone());
        assert_eq!(r["error"]["code"], code, "{req} -> {r}");
    }
    // Ending alice's session closes every tab; bob stays; presence and the registry forget.
    let r = ctl.call(json!({"method":"disconnect_user","user":"alice","reason":"logged out"}));
    assert_eq!(r["result"]["connections"], 4);
    for ws in &mut tabs {
        loop {
            match ws.read() {
                Ok(Message::Close(Some(f))) => {
                    assert_eq!(u16::from(f.code), 4003);
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
    poll(
        &mut ctl,
        json!({"method":"presence_stats","channel":"room:e2e"}),
        |r| r["conns"] == 1,
    );
    let left = until_op(&mut b, "leave");
    assert_eq!(left["user"], "alice", "bob saw alice leave once: {left}");
    let online = ctl.call(json!({"method":"online","users":["alice","bob"]}));
    assert_eq!(online["result"]["users"], json!({"alice":0,"bob":1}));
    drop(tabs);
    stop(server);
}

#[test]
fn bad_tokens_get_their_status_and_close_codes() {
    let (server, _path) = users_server("tokens");
    let addr = server.local_addr();
    let mut neighbour = connect(addr, "/ws?channel=room:n");
    json(&mut neighbour);
    let good = token(json!({"sub":"u","exp":now_s() + 600}));
    let expired = token(json!({"sub":"u","exp":now_s() - 10}));
    let forged = format!("{}AA", &good[..good.len() - 2]);
    for (t, want) in [
        (expired.as_str(), "token_expired"),
        (forged.as_str(), "token_invalid"),
        ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1In0.", "token_invalid"),
        ("garbage", "token_invalid"),
    ] {
        let (status, body) = http_status(
            addr,
            format!(
                "GET /ws?token={t} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: \
                 Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(status, 401, "{t}");
        assert!(body.contains(want), "{t}: {body}");
    }
    // A bad `auth` message: its error, then 4006.
    let mut ws = connect(addr, "/ws");
    json(&mut ws);
    send_json(&mut ws, json!({"op":"auth","token":forged}));
    assert_eq!(until_op(&mut ws, "error")["code"], "token_invalid");
    match ws.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4006),
        other => panic!("expected a 4006 close, got {other:?}"),
    }
    // A private channel refuses an anonymous URL subscription and its owner's own is allowed.
    let mut anon = connect(addr, "/ws?channel=user:u");
    assert_eq!(until_op(&mut anon, "error")["code"], "forbidden");
    let mut owner = connect(addr, &format!("/ws?token={good}&channel=user:u"));
    assert_eq!(until_op(&mut owner, "subscribed")["channel"], "user:u");
    neighbour_still_served_ws(&mut neighbour);
    stop(server);
}

/// The neighbour connection is still open and answers a ping command.
fn neighbour_still_served_ws(ws: &mut Ws) {
    send_json(ws, json!({"op":"ping","id":1}));
    assert_eq!(until_op(ws, "pong")["id"], 1);
}

#[test]
fn the_event_stream_sees_every_connect_and_close_of_a_storm_exactly_once() {
    let (server, path) = users_server("events");
    let addr = server.local_addr();
    let mut members: Vec<Ctl> = (0..2).map(|_| Ctl::connect(&path)).collect();
    for m in &mut members {
        let r = m.call(json!({"method":"events","types":["connect","close"],"group":"g"}));
        assert_eq!(r["result"], json!({}));
    }
    // The reply to `events` comes once every shard routes to the new member.
    const N: usize = 300;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..N {
        let mut ws = connect(addr, "/ws");
        ids.insert(json(&mut ws)["conn"].as_u64().unwrap());
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
    }
    // Read every member's events until each connection has its close (bounded by timeouts).
    let mut seen: std::collections::HashMap<u64, Vec<String>> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut readers: Vec<std::sync::mpsc::Receiver<Value>> = Vec::new();
    for m in members.drain(..) {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut m = m;
        std::thread::spawn(move || {
            loop {
                let mut line = String::new();
                match std::io::BufRead::read_line(&mut m.reader, &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let v: Value = serde_json::from_str(&line).unwrap();
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        readers.push(rx);
    }
    let mut member_of: std::collections::HashMap<u64, usize> = Default::default();
    let mut gaps = 0;
    while seen.values().filter(|v| v.len() == 2).count() < N {
        assert!(
            Instant::now() < deadline,
            "events missing: {} complete",
            seen.len()
        );
        for (i, rx) in readers.iter().enumerate() {
            while let Ok(v) = rx.try_recv() {
                if v["event"] == "gap" {
                    gaps += v["dropped"].as_u64().unwrap();
                    continue;
                }
                let conn = v["conn"].as_u64().unwrap();
                assert_eq!(
                    *member_of.entry(conn).or_insert(i),
                    i,
                    "one member per connection"
                );
                seen.entry(conn)
                    .or_default()
                    .push(v["event"].as_str().unwrap().to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(gaps, 0);
    for id in &ids {
        assert_eq!(seen[id], ["connect", "close"], "connection {id}");
    }
    let shares: std::collections::BTreeSet<usize> = member_of.values().copied().collect();
    assert_eq!(shares.len(), 2, "both members got a share");
    stop(server);
}
