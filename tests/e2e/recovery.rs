//! Recovery against a real server: subscribers on several shards drop and come back with
//! `since` while publishes go on; each gets every message exactly once, in order.

use super::*;

fn history_config(shards: usize) -> Config {
    // The publisher is a /ws client sending faster than the default client rate limit.
    let limits = Limits {
        client_messages_per_s: 0,
        ..Limits::default()
    };
    let mut c = push_config(shards, limits);
    c.namespaces.insert(
        "rec".into(),
        ringcast::config::Namespace {
            history_size: 1000,
            client_publish: true,
            ..Default::default()
        },
    );
    c
}

/// Reads JSON texts until `until` holds for one of them (bounded by the socket's timeout).
fn read_json_until(
    ws: &mut Ws,
    mut until: impl FnMut(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    loop {
        if let Message::Text(t) = ws.read().expect("a message before the read timeout") {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            let done = until(&v);
            out.push(v);
            if done {
                return out;
            }
        }
    }
}

#[test]
fn subscribers_on_four_shards_reconnect_and_miss_nothing() {
    const TOTAL: u64 = 400;
    let server = Server::start(history_config(4)).unwrap();
    let addr = server.local_addr();
    let publisher = std::thread::spawn(move || {
        let mut p = connect(addr, "/ws");
        assert_eq!(json(&mut p)["op"], "welcome");
        for i in 0..TOTAL {
            send_json(
                &mut p,
                serde_json::json!({"op":"publish","channel":"rec:x","data":i}),
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    // Eight subscribers (spread over the shards by the kernel), each dropping twice.
    let subscribers: Vec<std::thread::JoinHandle<Vec<u64>>> = (0..8)
        .map(|k| {
            std::thread::spawn(move || {
                let mut seen: Vec<u64> = Vec::new();
                let mut since: Option<(u64, u64)> = None;
                for round in 0..3 {
                    let mut ws = connect(addr, "/ws");
                    assert_eq!(json(&mut ws)["op"], "welcome");
                    let mut cmd = serde_json::json!({"op":"subscribe","channel":"rec:x"});
                    if let Some((offset, epoch)) = since {
                        cmd["since"] = serde_json::json!({"offset":offset,"epoch":epoch});
                    }
                    send_json(&mut ws, cmd);
                    let reply = read_json_until(&mut ws, |v| v["op"] == "subscribed");
                    let sub = reply.last().unwrap();
                    if since.is_some() {
                        assert_eq!(sub["recovered"], true, "{sub}");
                    }
                    let epoch = sub["epoch"].as_u64().unwrap();
                    if since.is_none() {
                        // The first subscribe starts at the channel's offset then.
                        since = Some((sub["offset"].as_u64().unwrap(), epoch));
                        seen.extend(1..=sub["offset"].as_u64().unwrap());
                    }
                    // Read a while, then drop (the last round reads to the end).
                    let stop_at = if round == 2 {
                        TOTAL
                    } else {
                        (round + 1) * 100 + k * 7
                    };
                    let msgs = read_json_until(&mut ws, |v| {
                        v["op"] == "message" && v["offset"].as_u64().unwrap() >= stop_at
                    });
                    for m in msgs.iter().filter(|m| m["op"] == "message") {
                        let offset = m["offset"].as_u64().unwrap();
                        seen.push(offset);
                        since = Some((offset, epoch));
                    }
                    drop(ws);
                }
                seen
            })
        })
        .collect();
    publisher.join().unwrap();
    for s in subscribers {
        let seen = s.join().expect("a subscriber");
        assert_eq!(
            seen,
            (1..=TOTAL).collect::<Vec<u64>>(),
            "exactly once, in order"
        );
    }
    assert!(server.counters().recoveries >= 16);
    stop(server);
}
