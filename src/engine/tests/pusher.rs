//! The Pusher endpoint on the in-memory driver: connection, subscriptions with authorizations,
//! presence by user, events published once through the signed HTTP API, exclusion, heartbeats,
//! bad input and isolation between apps.

use super::*;
use crate::auth::pusher::{channel_auth, sign_request};
use crate::config::{ClientEvents, PusherApp};
use crate::driver::memory::WALL_BASE_MS;
use crate::webhook::Hook;
use std::sync::Arc;

fn app(id: &str, key: &str) -> PusherApp {
    PusherApp {
        id: id.into(),
        key: key.into(),
        secret: format!("{key}-secret"),
        client_events: ClientEvents::Members,
        ..PusherApp::default()
    }
}

fn pusher_config() -> Config {
    let mut config = config();
    config.pusher.apps = vec![app("1", "key1"), app("2", "key2")];
    config
}

/// A Pusher client: its socket and socket id.
struct Client {
    ws: Ws,
    socket_id: String,
}

fn connect(c: &mut Cluster, shard: usize, key: &str) -> Client {
    let mut ws = Ws::open(
        c,
        shard,
        &format!("/app/{key}?protocol=7&client=js&version=8.4.0"),
    );
    let texts = ws.texts(c);
    assert_eq!(
        texts[0]["event"], "pusher:connection_established",
        "{texts:?}"
    );
    let data: Value = serde_json::from_str(texts[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["activity_timeout"], 120);
    let socket_id = data["socket_id"].as_str().unwrap().to_string();
    Client { ws, socket_id }
}

impl Client {
    fn send(&self, c: &mut Cluster, v: Value) {
        self.ws.send_text(c, &v.to_string());
        c.settle();
    }

    fn subscribe(&self, c: &mut Cluster, key: &str, channel: &str, user: Option<&str>) {
        let mut data = json!({ "channel": channel });
        if channel.starts_with("private-") || channel.starts_with("presence-") {
            let channel_data =
                user.map(|u| json!({"user_id": u, "user_info": {"n": u}}).to_string());
            let secret = format!("{key}-secret");
            let auth = channel_auth(
                key,
                secret.as_bytes(),
                &self.socket_id,
                channel,
                channel_data.as_deref(),
            );
            data["auth"] = json!(auth);
            if let Some(cd) = channel_data {
                data["channel_data"] = json!(cd);
            }
        }
        self.send(c, json!({"event": "pusher:subscribe", "data": data}));
    }

    fn texts(&mut self, c: &mut Cluster) -> Vec<Value> {
        self.ws.texts(c)
    }
}

/// An HTTP request on shard `shard`'s HTTP listener, signed for `key`; the status and body.
fn api(
    c: &mut Cluster,
    shard: usize,
    key: &str,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let secret = format!("{key}-secret");
    let now_s = (WALL_BASE_MS + c.now_ms()) / 1000;
    let query = sign_request(
        key,
        secret.as_bytes(),
        method,
        path,
        params,
        body.as_bytes(),
        now_s,
    );
    raw_api(c, shard, method, &format!("{path}?{query}"), body)
}

fn raw_api(c: &mut Cluster, shard: usize, method: &str, target: &str, body: &str) -> (u16, Value) {
    let sock = c.connect(shard, Listener::Control(1));
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    c.write(sock, req.as_bytes());
    c.settle();
    let text = String::from_utf8(c.read(sock)).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn events_of<'a>(texts: &'a [Value], event: &str) -> Vec<&'a Value> {
    texts.iter().filter(|t| t["event"] == event).collect()
}

#[test]
fn unknown_key_and_old_protocol_get_an_error_and_their_close_code() {
    let mut c = Cluster::new(pusher_config(), 1);
    for (path, code) in [
        ("/app/nope?protocol=7", 4001),
        ("/app/key1?protocol=6", 4007),
        ("/app/key1", 4007),
    ] {
        let mut ws = Ws::open(&mut c, 0, path);
        let frames = ws.frames(&mut c);
        let error: Value = serde_json::from_slice(&frames[0].1).unwrap();
        assert_eq!(error["event"], "pusher:error");
        assert_eq!(error["data"]["code"], code, "{path}");
        assert_eq!(close_code(&frames), Some(code), "{path}");
    }
    assert_eq!(c.counters(0).pusher_refusals, 3);
}

#[test]
fn without_apps_the_pusher_paths_are_unknown() {
    let mut c = Cluster::new(config(), 1);
    let sock = c.connect(0, Listener::WebSocket);
    c.write(sock, b"GET /app/key1?protocol=7 HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    c.settle();
    let text = String::from_utf8(c.read(sock)).unwrap();
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    let (status, _) = raw_api(&mut c, 0, "GET", "/apps/1/channels", "");
    assert_eq!(status, 404);
}

#[test]
fn socket_ids_are_unique_and_pings_get_pongs() {
    let mut c = Cluster::new(pusher_config(), 2);
    let mut a = connect(&mut c, 0, "key1");
    let b = connect(&mut c, 1, "key1");
    let d = connect(&mut c, 0, "key1");
    assert_ne!(a.socket_id, b.socket_id);
    assert_ne!(a.socket_id, d.socket_id);
    for id in [&a.socket_id, &b.socket_id, &d.socket_id] {
        let (high, low) = id.split_once('.').unwrap();
        assert!(
            high.bytes().chain(low.bytes()).all(|b| b.is_ascii_digit()),
            "{id}"
        );
    }
    a.send(&mut c, json!({"event":"pusher:ping","data":{}}));
    assert_eq!(a.texts(&mut c)[0]["event"], "pusher:pong");
}

#[test]
fn public_private_and_bad_auth_subscriptions() {
    let mut c = Cluster::new(pusher_config(), 2);
    let mut a = connect(&mut c, 0, "key1");
    let news = owned_by(1, 2, "news-");
    a.subscribe(&mut c, "key1", &news, None);
    let texts = a.texts(&mut c);
    assert_eq!(
        texts[0]["event"], "pusher_internal:subscription_succeeded",
        "{texts:?}"
    );
    assert_eq!(texts[0]["channel"], news.as_str());
    a.subscribe(&mut c, "key1", "private-a", None);
    assert_eq!(
        a.texts(&mut c)[0]["event"],
        "pusher_internal:subscription_succeeded"
    );
    // Signed for another socket: refused, and the connection stays open.
    let auth = channel_auth("key1", b"key1-secret", "1.1", "private-b", None);
    a.send(
        &mut c,
        json!({"event":"pusher:subscribe","data":{"channel":"private-b","auth":auth}}),
    );
    let texts = a.texts(&mut c);
    assert_eq!(texts[0]["data"]["code"], 4009);
    assert_eq!(texts[1]["event"], "pusher:subscription_error");
    assert_eq!(texts[1]["channel"], "private-b");
    assert_eq!(texts[1]["data"]["status"], 401);
    a.send(
        &mut c,
        json!({"event":"pusher:subscribe","data":{"channel":"private-b"}}),
    );
    assert_eq!(a.texts(&mut c)[0]["data"]["code"], 4009);
    assert_eq!(c.total().pusher_auth_failures, 2);
    a.send(&mut c, json!({"event":"pusher:ping"}));
    assert_eq!(a.texts(&mut c)[0]["event"], "pusher:pong", "still open");
}

#[test]
fn presence_lists_members_and_announces_users_once() {
    let mut c = Cluster::new(pusher_config(), 2);
    let room = owned_by(1, 2, "presence-room");
    let mut a = connect(&mut c, 0, "key1");
    a.subscribe(&mut c, "key1", &room, Some("alice"));
    let texts = a.texts(&mut c);
    assert_eq!(texts.len(), 1, "no member_added for oneself: {texts:?}");
    let data: Value = serde_json::from_str(texts[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["presence"]["ids"], json!(["alice"]));
    assert_eq!(data["presence"]["hash"]["alice"], json!({"n":"alice"}));
    assert_eq!(data["presence"]["count"], 1);

    let mut b = connect(&mut c, 1, "key1");
    b.subscribe(&mut c, "key1", &room, Some("bob"));
    let data: Value = serde_json::from_str(b.texts(&mut c)[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["presence"]["ids"], json!(["alice", "bob"]));
    let texts = a.texts(&mut c);
    let added = events_of(&texts, "pusher_internal:member_added");
    assert_eq!(added.len(), 1, "{texts:?}");
    let member: Value = serde_json::from_str(added[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(member, json!({"user_id":"bob","user_info":{"n":"bob"}}));

    // A second tab of bob: no news; its leaving: no news; the last one leaving: removed.
    let mut b2 = connect(&mut c, 0, "key1");
    b2.subscribe(&mut c, "key1", &room, Some("bob"));
    let data: Value = serde_json::from_str(b2.texts(&mut c)[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["presence"]["count"], 2, "users, not connections");
    assert!(a.texts(&mut c).is_empty());
    b2.send(
        &mut c,
        json!({"event":"pusher:unsubscribe","data":{"channel":room}}),
    );
    assert!(a.texts(&mut c).is_empty(), "bob still has a tab");
    c.client_fin(b.ws.sock);
    c.settle();
    c.advance(100);
    let texts = a.texts(&mut c);
    let removed = events_of(&texts, "pusher_internal:member_removed");
    assert_eq!(removed.len(), 1, "{texts:?}");
    let member: Value = serde_json::from_str(removed[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(member, json!({"user_id":"bob"}));

    // Presence without channel_data is refused.
    let auth = channel_auth("key1", b"key1-secret", &a.socket_id, "presence-x", None);
    a.send(
        &mut c,
        json!({"event":"pusher:subscribe","data":{"channel":"presence-x","auth":auth}}),
    );
    assert_eq!(a.texts(&mut c)[0]["data"]["code"], 4009);
}

#[test]
fn api_events_reach_subscribers_once_encoded_and_exclude_the_sender() {
    let mut c = Cluster::new(pusher_config(), 2);
    let mut a = connect(&mut c, 0, "key1");
    let mut b = connect(&mut c, 1, "key1");
    let mut other_app = connect(&mut c, 1, "key2");
    for client in [&a, &b] {
        client.subscribe(&mut c, "key1", "orders", None);
    }
    other_app.subscribe(&mut c, "key2", "orders", None);
    a.texts(&mut c);
    b.texts(&mut c);
    other_app.texts(&mut c);
    let body =
        json!({"name":"placed","channel":"orders","data":"{\"id\":7,\"q\":\"\\\"\"}"}).to_string();
    let (status, reply) = api(&mut c, 0, "key1", "POST", "/apps/1/events", &[], &body);
    assert_eq!((status, reply), (200, json!({})));
    for client in [&mut a, &mut b] {
        let texts = client.texts(&mut c);
        assert_eq!(
            texts,
            vec![json!({"event":"placed","channel":"orders","data":"{\"id\":7,\"q\":\"\\\"\"}"})]
        );
    }
    assert!(other_app.texts(&mut c).is_empty(), "apps are isolated");
    // With socket_id: everyone but that connection.
    let body =
        json!({"name":"e2","channels":["orders"],"data":"x","socket_id":a.socket_id}).to_string();
    let (status, _) = api(&mut c, 1, "key1", "POST", "/apps/1/events", &[], &body);
    assert_eq!(status, 200);
    assert!(a.texts(&mut c).is_empty(), "the sender is excluded");
    assert_eq!(b.texts(&mut c)[0]["event"], "e2");
    // A batch.
    let body = json!({"batch":[{"name":"b1","channel":"orders","data":"1"},{"name":"b2","channel":"orders","data":"2"}]}).to_string();
    let (status, _) = api(
        &mut c,
        1,
        "key1",
        "POST",
        "/apps/1/batch_events",
        &[],
        &body,
    );
    assert_eq!(status, 200);
    let names: Vec<Value> = b.texts(&mut c).iter().map(|t| t["event"].clone()).collect();
    assert_eq!(names, vec![json!("b1"), json!("b2")]);
}

#[test]
fn api_refuses_bad_signatures_apps_and_bodies() {
    let mut c = Cluster::new(pusher_config(), 1);
    let body = json!({"name":"e","channel":"a","data":"x"}).to_string();
    // Signed with app 2's key for app 1: 401.
    let (status, _) = api(&mut c, 0, "key2", "POST", "/apps/1/events", &[], &body);
    assert_eq!(status, 401);
    let (status, _) = api(&mut c, 0, "key1", "POST", "/apps/9/events", &[], &body);
    assert_eq!(status, 403);
    let (status, _) = raw_api(&mut c, 0, "POST", "/apps/1/events?auth_key=key1", &body);
    assert_eq!(status, 401);
    // A body changed after signing: 401 (body_md5).
    let secret = b"key1-secret";
    let now_s = (WALL_BASE_MS + c.now_ms()) / 1000;
    let query = sign_request(
        "key1",
        secret,
        "POST",
        "/apps/1/events",
        &[],
        body.as_bytes(),
        now_s,
    );
    let (status, _) = raw_api(
        &mut c,
        0,
        "POST",
        &format!("/apps/1/events?{query}"),
        &body.replace("\"x\"", "\"y\""),
    );
    assert_eq!(status, 401);
    // An old timestamp: 401.
    let query = sign_request(
        "key1",
        secret,
        "POST",
        "/apps/1/events",
        &[],
        body.as_bytes(),
        now_s - 601,
    );
    let (status, _) = raw_api(&mut c, 0, "POST", &format!("/apps/1/events?{query}"), &body);
    assert_eq!(status, 401);
    let big = json!({"name":"e","channel":"a","data":"x".repeat(10 * 1024 + 1)}).to_string();
    assert_eq!(
        api(&mut c, 0, "key1", "POST", "/apps/1/events", &[], &big).0,
        413
    );
    let many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let body = json!({"name":"e","channels":many,"data":"x"}).to_string();
    assert_eq!(
        api(&mut c, 0, "key1", "POST", "/apps/1/events", &[], &body).0,
        400
    );
    for bad in [
        "not json",
        "{}",
        r#"{"name":"e","channel":"a b","data":"x"}"#,
        r#"{"name":"e","channel":"a","data":"x","socket_id":"1"}"#,
    ] {
        assert_eq!(
            api(&mut c, 0, "key1", "POST", "/apps/1/events", &[], bad).0,
            400,
            "{bad}"
        );
    }
    assert!(c.counters(0).pusher_api_refusals >= 11);
}

#[test]
fn api_lists_channels_counts_and_users() {
    let mut c = Cluster::new(pusher_config(), 2);
    let a = connect(&mut c, 0, "key1");
    let b = connect(&mut c, 1, "key1");
    let d = connect(&mut c, 1, "key1");
    a.subscribe(&mut c, "key1", "presence-r", Some("u1"));
    b.subscribe(&mut c, "key1", "presence-r", Some("u2"));
    d.subscribe(&mut c, "key1", "presence-r", Some("u2"));
    a.subscribe(&mut c, "key1", "news", None);
    let x = connect(&mut c, 0, "key2");
    x.subscribe(&mut c, "key2", "other", None);
    let (status, v) = api(&mut c, 0, "key1", "GET", "/apps/1/channels", &[], "");
    assert_eq!(
        (status, v),
        (200, json!({"channels":{"news":{},"presence-r":{}}}))
    );
    let params = [("filter_by_prefix", "presence-"), ("info", "user_count")];
    let (_, v) = api(&mut c, 1, "key1", "GET", "/apps/1/channels", &params, "");
    assert_eq!(v, json!({"channels":{"presence-r":{"user_count":2}}}));
    let (status, _) = api(
        &mut c,
        1,
        "key1",
        "GET",
        "/apps/1/channels",
        &[("info", "user_count")],
        "",
    );
    assert_eq!(status, 400, "user_count needs the presence- prefix");
    let params = [("info", "user_count,subscription_count")];
    let (_, v) = api(
        &mut c,
        0,
        "key1",
        "GET",
        "/apps/1/channels/presence-r",
        &params,
        "",
    );
    assert_eq!(
        v,
        json!({"occupied":true,"user_count":2,"subscription_count":3})
    );
    let (_, v) = api(&mut c, 0, "key1", "GET", "/apps/1/channels/empty", &[], "");
    assert_eq!(v, json!({"occupied":false}));
    let (_, v) = api(
        &mut c,
        0,
        "key1",
        "GET",
        "/apps/1/channels/presence-r/users",
        &[],
        "",
    );
    assert_eq!(v, json!({"users":[{"id":"u1"},{"id":"u2"}]}));
    let (status, _) = api(
        &mut c,
        0,
        "key1",
        "GET",
        "/apps/1/channels/news/users",
        &[],
        "",
    );
    assert_eq!(status, 400);
}

#[test]
fn client_events_go_to_the_other_members_only() {
    let mut config = pusher_config();
    config.pusher.apps[1].client_events = ClientEvents::Off;
    let mut c = Cluster::new(config, 2);
    let mut a = connect(&mut c, 0, "key1");
    let mut b = connect(&mut c, 1, "key1");
    a.subscribe(&mut c, "key1", "presence-chat", Some("a"));
    b.subscribe(&mut c, "key1", "presence-chat", Some("b"));
    a.texts(&mut c);
    b.texts(&mut c);
    a.send(
        &mut c,
        json!({"event":"client-typing","channel":"presence-chat","data":{"on":true}}),
    );
    assert!(a.texts(&mut c).is_empty(), "never echoed to the sender");
    assert_eq!(
        b.texts(&mut c),
        vec![
            json!({"event":"client-typing","channel":"presence-chat","data":{"on":true},"user_id":"a"})
        ]
    );
    a.send(
        &mut c,
        json!({"event":"client-x","channel":"public","data":{}}),
    );
    assert_eq!(a.texts(&mut c)[0]["data"]["code"], 4301);
    a.send(
        &mut c,
        json!({"event":"client-x","channel":"private-not-mine","data":{}}),
    );
    assert_eq!(a.texts(&mut c)[0]["data"]["code"], 4301);
    let mut x = connect(&mut c, 0, "key2");
    x.subscribe(&mut c, "key2", "private-p", None);
    x.texts(&mut c);
    x.send(
        &mut c,
        json!({"event":"client-x","channel":"private-p","data":{}}),
    );
    assert_eq!(
        x.texts(&mut c)[0]["data"]["code"],
        4301,
        "the app has them off"
    );
}

#[test]
fn bad_input_is_answered_and_counted_without_closing() {
    let mut c = Cluster::new(pusher_config(), 1);
    let mut a = connect(&mut c, 0, "key1");
    for bad in [
        "not json",
        "[]",
        r#"{"event":"pusher:subscribe"}"#,
        r#"{"event":"pusher:nope"}"#,
        r#"{"event":"pusher:subscribe","data":{"channel":"a b"}}"#,
        r##"{"event":"pusher:subscribe","data":{"channel":"#1#x"}}"##,
    ] {
        a.ws.send_text(&mut c, bad);
        c.settle();
        let texts = a.texts(&mut c);
        assert_eq!(texts[0]["event"], "pusher:error", "{bad}");
        assert_eq!(texts[0]["data"]["code"], 4300, "{bad}");
    }
    assert_eq!(c.counters(0).pusher_errors, 6);
    // Too many subscriptions: an error, the connection stays.
    let max = c_limits().channels_per_conn_max;
    for i in 0..=max {
        a.subscribe(&mut c, "key1", &format!("c{i}"), None);
    }
    let texts = a.texts(&mut c);
    assert_eq!(
        events_of(&texts, "pusher_internal:subscription_succeeded").len(),
        max
    );
    assert_eq!(events_of(&texts, "pusher:error")[0]["data"]["code"], 4100);
    a.send(&mut c, json!({"event":"pusher:ping"}));
    assert_eq!(a.texts(&mut c)[0]["event"], "pusher:pong");
}

#[test]
fn a_silent_client_is_pinged_then_closed_with_4201() {
    let mut c = Cluster::new(pusher_config(), 1);
    let mut a = connect(&mut c, 0, "key1");
    let mut b = connect(&mut c, 0, "key1");
    c.advance(119_000);
    assert!(a.texts(&mut c).is_empty());
    c.advance(2_000);
    assert_eq!(a.texts(&mut c)[0]["event"], "pusher:ping");
    b.ws.frames(&mut c);
    b.send(&mut c, json!({"event":"pusher:pong","data":{}}));
    // Closed 120 s + 30 s after its last bytes (at 150 s).
    c.advance(27_000);
    assert!(a.ws.frames(&mut c).is_empty());
    c.advance(3_000);
    assert_eq!(close_code(&a.ws.frames(&mut c)), Some(4201));
    assert!(close_code(&b.ws.frames(&mut c)).is_none(), "b answered");
    assert_eq!(c.counters(0).pusher_timeouts, 1);
}

#[test]
fn max_connections_is_enforced_with_4004() {
    let mut config = pusher_config();
    config.pusher.apps[0].max_connections = 2;
    let mut c = Cluster::new(config, 1);
    let _a = connect(&mut c, 0, "key1");
    let b = connect(&mut c, 0, "key1");
    let mut ws = Ws::open(&mut c, 0, "/app/key1?protocol=7");
    let frames = ws.frames(&mut c);
    assert_eq!(close_code(&frames), Some(4004));
    c.client_fin(b.ws.sock);
    c.settle();
    c.advance(100);
    let _d = connect(&mut c, 0, "key1");
    let _x = connect(&mut c, 0, "key2");
}

#[test]
fn a_client_over_the_rate_gets_a_backoff_close_code() {
    let mut config = pusher_config();
    config.limits.client_messages_per_s = 5;
    let mut c = Cluster::new(config, 1);
    let mut a = connect(&mut c, 0, "key1");
    let mut text = Vec::new();
    for _ in 0..10 {
        text.extend(encode_client(
            OpCode::Text,
            true,
            br#"{"event":"pusher:ping"}"#,
            MASK,
        ));
    }
    c.write(a.ws.sock, &text);
    c.settle();
    assert_eq!(
        close_code(&a.ws.frames(&mut c)),
        Some(4100),
        "pusher-js backs off on 41xx"
    );
}

#[test]
fn cache_channels_replay_their_last_event_or_say_miss() {
    let mut c = Cluster::new(pusher_config(), 2);
    let cache = owned_by(1, 2, "cache-");
    for (i, name) in ["first", "last"].iter().enumerate() {
        let body = json!({"name":name,"channel":cache,"data":i.to_string()}).to_string();
        assert_eq!(
            api(&mut c, 0, "key1", "POST", "/apps/1/events", &[], &body).0,
            200
        );
    }
    let mut a = connect(&mut c, 0, "key1");
    a.subscribe(&mut c, "key1", &cache, None);
    a.subscribe(&mut c, "key1", "cache-empty", None);
    let texts = a.texts(&mut c);
    let events: Vec<&Value> = texts.iter().map(|t| &t["event"]).collect();
    assert_eq!(
        events,
        [
            "pusher_internal:subscription_succeeded",
            "last",
            "pusher_internal:subscription_succeeded",
            "pusher:cache_miss"
        ],
        "{texts:?}"
    );
    assert_eq!(texts[3]["channel"], "cache-empty");
    // A live event reaches the subscriber and becomes what a later one gets; it expires with
    // pusher_cache_ttl_s.
    let body = json!({"name":"live","channel":cache,"data":"2"}).to_string();
    api(&mut c, 1, "key1", "POST", "/apps/1/events", &[], &body);
    assert_eq!(a.texts(&mut c)[0]["event"], "live");
    let mut b = connect(&mut c, 1, "key1");
    b.subscribe(&mut c, "key1", &cache, None);
    let texts = b.texts(&mut c);
    assert_eq!(texts[1]["event"], "live", "{texts:?}");
    assert_eq!(texts.len(), 2);
    // Presence cache channels: members first, then the event.
    let pc = "presence-cache-room";
    let body = json!({"name":"p","channel":pc,"data":"x"}).to_string();
    api(&mut c, 0, "key1", "POST", "/apps/1/events", &[], &body);
    b.subscribe(&mut c, "key1", pc, Some("bob"));
    let texts = b.texts(&mut c);
    assert_eq!(texts[0]["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(texts[1]["event"], "p", "{texts:?}");
    c.advance(c_limits().pusher_cache_ttl_s * 1000 + 1000);
    let mut d = connect(&mut c, 0, "key1");
    d.subscribe(&mut c, "key1", &cache, None);
    let texts = d.texts(&mut c);
    assert_eq!(texts[1]["event"], "pusher:cache_miss", "expired: {texts:?}");
}

#[test]
fn signed_in_users_get_their_events_and_can_be_terminated() {
    use crate::auth::pusher::user_auth;
    let mut c = Cluster::new(pusher_config(), 2);
    let signin = |c: &mut Cluster, client: &Client, data: &str, secret: &[u8]| {
        let auth = user_auth("key1", secret, &client.socket_id, data);
        client.send(
            c,
            json!({"event":"pusher:signin","data":{"auth":auth,"user_data":data}}),
        );
    };
    let mut a = connect(&mut c, 0, "key1");
    let mut b = connect(&mut c, 1, "key1");
    let mut other = connect(&mut c, 1, "key1");
    signin(&mut c, &a, r#"{"id":"u1","name":"A"}"#, b"key1-secret");
    let texts = a.texts(&mut c);
    assert_eq!(texts[0]["event"], "pusher:signin_success", "{texts:?}");
    let data: Value = serde_json::from_str(texts[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["user_data"], r#"{"id":"u1","name":"A"}"#);
    assert_eq!(texts[1]["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(texts[1]["channel"], "#server-to-user-u1");
    signin(&mut c, &b, r#"{"id":"u1"}"#, b"key1-secret");
    b.texts(&mut c);
    // A wrong signature, and a subscribe to someone else's channel: refused.
    signin(&mut c, &other, r#"{"id":"u1"}"#, b"wrong");
    assert_eq!(other.texts(&mut c)[0]["data"]["code"], 4009);
    other.send(
        &mut c,
        json!({"event":"pusher:subscribe","data":{"channel":"#server-to-user-u1"}}),
    );
    assert_eq!(other.texts(&mut c)[0]["data"]["code"], 4009);
    // pusher-js subscribes to its own channel after the signin: answered, not doubled.
    a.send(
        &mut c,
        json!({"event":"pusher:subscribe","data":{"channel":"#server-to-user-u1"}}),
    );
    assert_eq!(
        a.texts(&mut c)[0]["event"],
        "pusher_internal:subscription_succeeded"
    );
    // The SDKs' sendToUser triggers on the user's channel.
    let body = json!({"name":"note","channel":"#server-to-user-u1","data":"{\"x\":1}"}).to_string();
    let (status, _) = api(&mut c, 0, "key1", "POST", "/apps/1/events", &[], &body);
    assert_eq!(status, 200);
    for client in [&mut a, &mut b] {
        let texts = client.texts(&mut c);
        assert_eq!(
            texts,
            vec![json!({"event":"note","channel":"#server-to-user-u1","data":"{\"x\":1}"})]
        );
    }
    assert!(other.texts(&mut c).is_empty());
    let (_, v) = api(&mut c, 0, "key1", "GET", "/apps/1/channels", &[], "");
    assert_eq!(v, json!({"channels":{}}), "users' channels are not listed");
    let (status, _) = api(
        &mut c,
        1,
        "key1",
        "POST",
        "/apps/1/users/u1/terminate_connections",
        &[],
        "{}",
    );
    assert_eq!(status, 200);
    assert_eq!(close_code(&a.ws.frames(&mut c)), Some(4009));
    assert_eq!(close_code(&b.ws.frames(&mut c)), Some(4009));
    other.send(&mut c, json!({"event":"pusher:ping"}));
    assert_eq!(
        other.texts(&mut c)[0]["event"],
        "pusher:pong",
        "others stay"
    );
    let (status, _) = api(
        &mut c,
        1,
        "key1",
        "POST",
        "/apps/1/users/a%22b/terminate_connections",
        &[],
        "{}",
    );
    assert_eq!(status, 400);
    let body = json!({"name":"note","channel":"#server-to-user-a b","data":"x"}).to_string();
    assert_eq!(
        api(&mut c, 0, "key1", "POST", "/apps/1/events", &[], &body).0,
        400
    );
}

#[test]
fn api_publishers_are_paused_by_backpressure() {
    let mut c = Cluster::new(pusher_config(), 2);
    let mut a = connect(&mut c, 0, "key1");
    a.subscribe(&mut c, "key1", "news", None);
    a.texts(&mut c);
    let now_s = (WALL_BASE_MS + c.now_ms()) / 1000;
    let request = |n: u32| {
        let body = json!({"name":"e","channel":"news","data":n.to_string()}).to_string();
        let q = sign_request(
            "key1",
            b"key1-secret",
            "POST",
            "/apps/1/events",
            &[],
            body.as_bytes(),
            now_s,
        );
        format!(
            "POST /apps/1/events?{q} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let http = c.connect(0, Listener::Control(1));
    c.write(http, request(1).as_bytes());
    c.settle();
    assert!(
        String::from_utf8(c.read(http))
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    c.set_congested(1, true);
    c.write(http, request(2).as_bytes());
    c.settle();
    assert!(
        c.pipe(http).paused,
        "a Pusher API publisher is paused while a shard is congested"
    );
    c.set_congested(1, false);
    c.settle();
    let datas: Vec<Value> = a.texts(&mut c).iter().map(|t| t["data"].clone()).collect();
    assert_eq!(datas, vec![json!("1"), json!("2")]);
}

#[test]
fn socket_id_exclusion_skips_exactly_one_subscriber_wherever_it_is() {
    let mut c = Cluster::new(pusher_config(), 1);
    let mut clients: Vec<Client> = (0..4).map(|_| connect(&mut c, 0, "key1")).collect();
    for client in &clients {
        client.subscribe(&mut c, "key1", "room", None);
    }
    // One leaves and comes back: the subscriber list is reordered (swap-remove).
    clients[0].send(
        &mut c,
        json!({"event":"pusher:unsubscribe","data":{"channel":"room"}}),
    );
    clients[0].subscribe(&mut c, "key1", "room", None);
    for client in &mut clients {
        client.texts(&mut c);
    }
    for excluded in 0..4 {
        let socket_id = clients[excluded].socket_id.clone();
        let body =
            json!({"name":"e","channel":"room","data":"x","socket_id":socket_id}).to_string();
        assert_eq!(
            api(&mut c, 0, "key1", "POST", "/apps/1/events", &[], &body).0,
            200
        );
        for (i, client) in clients.iter_mut().enumerate() {
            let got = client.texts(&mut c).len();
            assert_eq!(
                got,
                usize::from(i != excluded),
                "excluded {excluded}, client {i}"
            );
        }
    }
    // A socket id of a connection that is gone, or not subscribed, excludes nobody.
    let body = json!({"name":"e","channel":"room","data":"x","socket_id":"9.9"}).to_string();
    api(&mut c, 0, "key1", "POST", "/apps/1/events", &[], &body);
    for client in &mut clients {
        assert_eq!(client.texts(&mut c).len(), 1);
    }
}

#[test]
fn an_app_refuses_origins_it_does_not_allow() {
    let mut config = pusher_config();
    config.pusher.apps[0].allowed_origins = vec!["https://good.example".into()];
    let mut c = Cluster::new(config, 1);
    let path = "/app/key1?protocol=7";
    let (mut bad, _) = Ws::open_with(&mut c, 0, path, "Origin: https://evil.example\r\n");
    let frames = bad.frames(&mut c);
    let error: Value = serde_json::from_slice(&frames[0].1).unwrap();
    assert_eq!(error["data"]["code"], 4009);
    assert_eq!(close_code(&frames), Some(4009));
    let (mut good, _) = Ws::open_with(&mut c, 0, path, "Origin: https://good.example\r\n");
    assert_eq!(
        good.texts(&mut c)[0]["event"],
        "pusher:connection_established"
    );
    // The other app allows any origin.
    let (mut other, _) = Ws::open_with(
        &mut c,
        0,
        "/app/key2?protocol=7",
        "Origin: https://evil.example\r\n",
    );
    assert_eq!(
        other.texts(&mut c)[0]["event"],
        "pusher:connection_established"
    );
    assert_eq!(c.counters(0).origin_refusals, 1);
}

#[test]
fn member_lists_stop_at_their_limit_with_the_true_count() {
    let mut config = pusher_config();
    config.limits.pusher_presence_members_max = 2;
    let mut c = Cluster::new(config, 1);
    let clients: Vec<Client> = (0..3).map(|_| connect(&mut c, 0, "key1")).collect();
    for (i, client) in clients.iter().enumerate() {
        client.subscribe(&mut c, "key1", "presence-big", Some(&format!("u{i}")));
    }
    let mut last = connect(&mut c, 0, "key1");
    last.subscribe(&mut c, "key1", "presence-big", Some("u9"));
    let texts = last.texts(&mut c);
    let data: Value = serde_json::from_str(texts[0]["data"].as_str().unwrap()).unwrap();
    // The first by id, and always the subscriber itself (pusher-js finds `me` in the list).
    assert_eq!(data["presence"]["ids"], json!(["u0", "u9"]));
    assert_eq!(data["presence"]["hash"]["u9"], json!({"n":"u9"}));
    assert_eq!(data["presence"]["count"], 4);
    assert!(c.counters(0).pusher_members_truncated >= 1);
    let (_, v) = api(
        &mut c,
        0,
        "key1",
        "GET",
        "/apps/1/channels/presence-big/users",
        &[],
        "",
    );
    assert_eq!(v["users"].as_array().unwrap().len(), 2);
}

#[test]
fn client_events_over_their_rate_are_refused_and_the_connection_stays() {
    let mut c = Cluster::new(pusher_config(), 1);
    let mut a = connect(&mut c, 0, "key1");
    let mut b = connect(&mut c, 0, "key1");
    a.subscribe(&mut c, "key1", "private-r", None);
    b.subscribe(&mut c, "key1", "private-r", None);
    a.texts(&mut c);
    b.texts(&mut c);
    let mut burst = Vec::new();
    for i in 0..12 {
        let text = json!({"event":"client-x","channel":"private-r","data":{"i":i}}).to_string();
        burst.extend(encode_client(OpCode::Text, true, text.as_bytes(), MASK));
    }
    c.write(a.ws.sock, &burst);
    c.settle();
    assert_eq!(b.texts(&mut c).len(), 10, "a second's worth goes through");
    let errors = a.texts(&mut c);
    assert_eq!(errors.len(), 2);
    assert!(errors.iter().all(|e| e["data"]["code"] == 4301));
    assert_eq!(c.counters(0).pusher_client_events_limited, 2);
    c.advance(500);
    a.send(
        &mut c,
        json!({"event":"client-x","channel":"private-r","data":{}}),
    );
    assert_eq!(b.texts(&mut c).len(), 1, "refilled");
}

#[test]
fn a_trigger_with_info_answers_each_channels_counts() {
    let mut c = Cluster::new(pusher_config(), 2);
    let a = connect(&mut c, 0, "key1");
    let b = connect(&mut c, 1, "key1");
    a.subscribe(&mut c, "key1", "presence-i", Some("u1"));
    b.subscribe(&mut c, "key1", "presence-i", Some("u1"));
    a.subscribe(&mut c, "key1", "plain", None);
    let body = json!({"name":"e","channels":["presence-i","plain","empty"],"data":"x",
                      "info":"subscription_count,user_count"})
    .to_string();
    let (status, v) = api(&mut c, 0, "key1", "POST", "/apps/1/events", &[], &body);
    assert_eq!(status, 200);
    assert_eq!(
        v,
        json!({"channels":{
            "presence-i":{"user_count":1,"subscription_count":2},
            "plain":{"user_count":0,"subscription_count":1},
            "empty":{"user_count":0,"subscription_count":0}
        }})
    );
    // A batch answers each item's info, in order (an item without info gets {}).
    let body = json!({"batch":[
        {"name":"e","channel":"plain","data":"x","info":"subscription_count"},
        {"name":"e","channel":"empty","data":"y"},
        {"name":"e","channel":"presence-i","data":"z","info":"user_count,subscription_count"}
    ]})
    .to_string();
    assert_eq!(
        api(
            &mut c,
            0,
            "key1",
            "POST",
            "/apps/1/batch_events",
            &[],
            &body
        ),
        (
            200,
            json!({"batch":[
                {"subscription_count":1},
                {},
                {"user_count":1,"subscription_count":2}
            ]})
        )
    );
    // Without info anywhere, a batch answers {}.
    let body = json!({"batch":[{"name":"e","channel":"plain","data":"x"}]}).to_string();
    assert_eq!(
        api(
            &mut c,
            0,
            "key1",
            "POST",
            "/apps/1/batch_events",
            &[],
            &body
        ),
        (200, json!({}))
    );
}

#[test]
fn webhooks_report_occupancy_members_and_client_events_of_apps_that_have_one() {
    let mut config = pusher_config();
    config.pusher.apps[0].webhook_url = Some("http://127.0.0.1:9/hooks".to_string());
    let (mut c, hooks) = Cluster::with_webhooks(config, 2);
    let hook_list = |rx: &std::sync::mpsc::Receiver<(u16, Hook)>| rx.try_iter().collect::<Vec<_>>();
    // Two users on different shards join one presence channel; the second tab of a makes no
    // member event.
    let a = connect(&mut c, 0, "key1");
    let a2 = connect(&mut c, 1, "key1");
    let b = connect(&mut c, 1, "key1");
    a.subscribe(&mut c, "key1", "presence-room", Some("a"));
    a2.subscribe(&mut c, "key1", "presence-room", Some("a"));
    b.subscribe(&mut c, "key1", "presence-room", Some("b"));
    let ch = || Arc::<str>::from("presence-room");
    let user = |u: &str| Arc::<str>::from(u);
    assert_eq!(
        hook_list(&hooks),
        vec![
            (0, Hook::Occupied { channel: ch() }),
            (
                0,
                Hook::MemberAdded {
                    channel: ch(),
                    user: user("a")
                }
            ),
            (
                0,
                Hook::MemberAdded {
                    channel: ch(),
                    user: user("b")
                }
            ),
        ],
        "occupied once for the channel (not once per shard), one member_added per user"
    );
    // A client event, with the sender's socket id and user.
    a.send(
        &mut c,
        json!({"event":"client-typing","channel":"presence-room","data":{"on":true}}),
    );
    match hook_list(&hooks).as_slice() {
        [
            (
                0,
                Hook::ClientEvent {
                    channel,
                    event,
                    data,
                    socket_id,
                    user,
                },
            ),
        ] => {
            assert_eq!(&**channel, "presence-room");
            assert_eq!(&**event, "client-typing");
            assert_eq!(
                serde_json::from_str::<Value>(data).unwrap(),
                json!({"on":true})
            );
            assert_eq!(**socket_id, *a.socket_id);
            assert_eq!(user.as_deref(), Some("a"));
        }
        other => panic!("{other:?}"),
    }
    // The app without a webhook reports nothing.
    let other = connect(&mut c, 0, "key2");
    other.subscribe(&mut c, "key2", "news", None);
    assert!(hook_list(&hooks).is_empty());
    // Leaving: member_removed after a user's last tab, vacated after the last subscriber.
    for client in [&a, &a2, &b] {
        client.send(
            &mut c,
            json!({"event":"pusher:unsubscribe","data":{"channel":"presence-room"}}),
        );
    }
    assert_eq!(
        hook_list(&hooks),
        vec![
            (
                0,
                Hook::MemberRemoved {
                    channel: ch(),
                    user: user("a")
                }
            ),
            (
                0,
                Hook::MemberRemoved {
                    channel: ch(),
                    user: user("b")
                }
            ),
            (0, Hook::Vacated { channel: ch() }),
        ]
    );
}

#[test]
fn drains_and_shutdowns_tell_pusher_clients_to_back_off() {
    let mut c = Cluster::new(pusher_config(), 2);
    let mut clients: Vec<Client> = (0..40).map(|i| connect(&mut c, i % 2, "key1")).collect();
    let mut ws = Ws::open(&mut c, 0, "/ws");
    ws.texts(&mut c);
    for client in &mut clients {
        client.texts(&mut c);
    }
    c.engine(0).request_drain(1000);
    let mut closed_by_step = Vec::new();
    let mut seen = vec![false; clients.len()];
    for _ in 0..10 {
        c.advance(100);
        let mut n = 0;
        for (i, client) in clients.iter_mut().enumerate() {
            if !seen[i] {
                match close_code(&client.ws.frames(&mut c)) {
                    Some(4100) => {
                        seen[i] = true;
                        n += 1;
                    }
                    Some(other) => panic!("client {i} closed with {other}"),
                    None => {}
                }
            }
        }
        closed_by_step.push(n);
    }
    // Spread over the window like /ws connections (4100: pusher-js backs off, then
    // reconnects), not all at once.
    assert!(
        closed_by_step.iter().all(|&n| n <= 10),
        "{closed_by_step:?}"
    );
    assert!(
        closed_by_step[..5].iter().sum::<usize>() >= 10,
        "{closed_by_step:?}"
    );
    assert!(
        seen.iter().filter(|&&s| s).count() >= 36,
        "{closed_by_step:?}"
    );
    assert_eq!(
        close_code(&ws.frames(&mut c)),
        Some(close::SERVICE_RESTART),
        "/ws keeps 1012"
    );
    // A shutdown without a drain: Pusher clients get 4100 too, /ws clients 1001.
    let mut c = Cluster::new(pusher_config(), 1);
    let mut p = connect(&mut c, 0, "key1");
    let mut ws = Ws::open(&mut c, 0, "/ws");
    ws.texts(&mut c);
    p.texts(&mut c);
    c.engine(0).begin_shutdown();
    c.settle();
    assert_eq!(close_code(&p.ws.frames(&mut c)), Some(4100));
    assert_eq!(close_code(&ws.frames(&mut c)), Some(close::GOING_AWAY));
}
