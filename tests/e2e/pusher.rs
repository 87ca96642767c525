//! The Pusher endpoint against a real server: pusher-protocol clients (tungstenite) on
//! `/app/{key}`, the signed HTTP API on the HTTP listener, across shards.

use super::*;
use ringcast::auth::pusher::{channel_auth, sign_request};
use serde_json::{Value, json};

const KEY: &str = "e2e-key";
const SECRET: &str = "e2e-secret";

fn pusher_server(shards: usize) -> Server {
    let mut c = config(shards, Limits::default());
    c.http.listen = Some("127.0.0.1:0".parse().unwrap());
    c.pusher.apps = vec![ringcast::config::PusherApp {
        id: "7".into(),
        key: KEY.into(),
        secret: SECRET.into(),
        ..Default::default()
    }];
    Server::start(c).unwrap()
}

/// A connected client and its socket id.
fn pusher_client(addr: SocketAddr) -> (Ws, String) {
    let mut ws = connect(addr, &format!("/app/{KEY}?protocol=7&client=e2e&version=1"));
    let hello = json(&mut ws);
    assert_eq!(hello["event"], "pusher:connection_established");
    let data: Value = serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
    (ws, data["socket_id"].as_str().unwrap().to_string())
}

fn subscribe(ws: &mut Ws, socket_id: &str, channel: &str, user: Option<&str>) -> Value {
    let channel_data = user.map(|u| json!({"user_id": u}).to_string());
    let mut data = json!({"channel": channel});
    if channel.starts_with("presence-") || channel.starts_with("private-") {
        let auth = channel_auth(
            KEY,
            SECRET.as_bytes(),
            socket_id,
            channel,
            channel_data.as_deref(),
        );
        data["auth"] = json!(auth);
        if let Some(cd) = channel_data {
            data["channel_data"] = json!(cd);
        }
    }
    send_json(ws, json!({"event":"pusher:subscribe","data":data}));
    json(ws)
}

/// A signed API request; its status and JSON body.
fn api(
    http: SocketAddr,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &str,
    secret: &str,
) -> (u16, Value) {
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let query = sign_request(
        KEY,
        secret.as_bytes(),
        method,
        path,
        params,
        body.as_bytes(),
        now_s,
    );
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "{method} {path}?{query} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let text = String::from_utf8(read_to_close(&mut s)).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn pusher_clients_and_the_signed_api_across_shards() {
    let server = pusher_server(4);
    let (addr, http) = (server.local_addr(), server.http_addr().unwrap());
    // Enough clients that some land on other shards than the channels' owners.
    let mut clients: Vec<(Ws, String)> = (0..6).map(|_| pusher_client(addr)).collect();
    let ids: std::collections::HashSet<&String> = clients.iter().map(|c| &c.1).collect();
    assert_eq!(ids.len(), 6, "socket ids are unique");
    for (i, (ws, socket_id)) in clients.iter_mut().enumerate() {
        let ok = subscribe(ws, socket_id, "presence-e2e", Some(&format!("u{}", i % 3)));
        assert_eq!(
            ok["event"], "pusher_internal:subscription_succeeded",
            "{ok}"
        );
        let data: Value = serde_json::from_str(ok["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["presence"]["count"], (i + 1).min(3), "{data}");
        let ok = subscribe(ws, socket_id, "news", None);
        assert_eq!(
            ok["event"], "pusher_internal:subscription_succeeded",
            "{ok}"
        );
    }
    // Only the first three joins were users' first connections: client 0 gets two member_added
    // (u1, u2) and the event; client 5, the sender, is excluded.
    let body =
        json!({"name":"hello","channels":["news"],"data":"{\"n\":1}","socket_id":clients[5].1})
            .to_string();
    let (status, reply) = api(http, "POST", "/apps/7/events", &[], &body, SECRET);
    assert_eq!((status, reply), (200, json!({})));
    let mut events = Vec::new();
    while events.len() < 3 {
        let v = json(&mut clients[0].0);
        events.push(v["event"].as_str().unwrap().to_string());
        if v["event"] == "hello" {
            assert_eq!(v["data"], "{\"n\":1}");
            assert_eq!(v["channel"], "news");
        }
    }
    // The news and the event come from different owners, on different rings: any order.
    events.sort();
    assert_eq!(
        events,
        [
            "hello",
            "pusher_internal:member_added",
            "pusher_internal:member_added"
        ]
    );
    for (ws, _) in clients.iter_mut().take(5).skip(1) {
        loop {
            let v = json(ws);
            if v["event"] == "hello" {
                break;
            }
            assert_eq!(v["event"], "pusher_internal:member_added", "{v}");
        }
    }
    // The excluded client gets the next event, not that one.
    let body = json!({"name":"next","channel":"news","data":"2"}).to_string();
    assert_eq!(
        api(http, "POST", "/apps/7/events", &[], &body, SECRET).0,
        200
    );
    let v = json(&mut clients[5].0);
    assert_eq!(v["event"], "next", "{v}");
    let params = [("filter_by_prefix", "presence-"), ("info", "user_count")];
    let (status, v) = api(http, "GET", "/apps/7/channels", &params, "", SECRET);
    assert_eq!(
        (status, v),
        (200, json!({"channels":{"presence-e2e":{"user_count":3}}}))
    );
    let (_, v) = api(
        http,
        "GET",
        "/apps/7/channels/presence-e2e/users",
        &[],
        "",
        SECRET,
    );
    assert_eq!(v, json!({"users":[{"id":"u0"},{"id":"u1"},{"id":"u2"}]}));
    let (status, _) = api(http, "POST", "/apps/7/events", &[], &body, "wrong-secret");
    assert_eq!(status, 401);
    drop(clients);
    stop(server);
}
