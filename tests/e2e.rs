//! End-to-end tests: a real server on 127.0.0.1:0 in this process, real clients (tungstenite,
//! and raw TCP for what a well-behaved library refuses to send).

use ringcast::config::{Config, Limits};
use ringcast::proto::frame::{OpCode, encode_client};
use ringcast::server::Server;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// The driver under test: `RINGCAST_DRIVER=epoll|uring|auto` (the test command runs this suite
/// once per driver); auto by default.
fn driver() -> ringcast::config::DriverKind {
    std::env::var("RINGCAST_DRIVER")
        .ok()
        .map(|d| d.parse().expect("RINGCAST_DRIVER is auto, uring or epoll"))
        .unwrap_or_default()
}

fn config(shards: usize, limits: Limits) -> Config {
    Config {
        driver: driver(),
        listen: "127.0.0.1:0".parse().unwrap(),
        shards,
        echo: true,
        pin: false,
        limits,
        control: ringcast::config::ControlConfig {
            listen: Vec::new(),
            token: None,
        },
        ..Config::default()
    }
}

fn start(shards: usize, limits: Limits) -> Server {
    Server::start(config(shards, limits)).expect("server starts")
}

type Ws = WebSocket<TcpStream>;

fn connect(addr: SocketAddr, path: &str) -> Ws {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let url = format!("ws://{addr}{path}");
    let (ws, response) = tungstenite::client(url, stream).expect("handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// Polls the server's counters until `check` holds (bounded: 10 s).
fn eventually(server: &Server, what: &str, check: impl Fn(&ringcast::stats::Counters) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = server.counters();
        if check(&c) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {c:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(server: Server) {
    server.shutdown();
    server.wait().expect("clean shutdown");
}

/// Reads the raw bytes a server sends until it closes the socket (bounded by the read timeout).
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("read failed after {} bytes: {e}", all.len()),
        }
    }
}

fn raw_upgrade(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "server closed during handshake"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s
}

/// The close code in the last close frame of a raw server byte stream.
fn close_code_of(bytes: &[u8]) -> Option<u16> {
    let mut i = 0;
    let mut code = None;
    while i + 2 <= bytes.len() {
        let op = bytes[i] & 0x0f;
        let mut len = (bytes[i + 1] & 0x7f) as usize;
        let mut at = i + 2;
        if len == 126 {
            len = u16::from_be_bytes([bytes[at], bytes[at + 1]]) as usize;
            at += 2;
        } else if len == 127 {
            len = u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            at += 8;
        }
        if op == 8 && len >= 2 {
            code = Some(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
        }
        i = at + len;
    }
    code
}

#[test]
fn echo_text_binary_ping_and_clean_close() {
    let server = start(2, Limits::default());
    let addr = server.local_addr();
    let mut ws = connect(addr, "/echo");
    ws.send(Message::text("hello ünïcödé 🚀")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("hello ünïcödé 🚀"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
    ws.send(Message::text("")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text(""));
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    assert_eq!(
        ws.read().unwrap(),
        Message::Pong(b"are you there".to_vec().into())
    );
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, CloseCode::Normal);
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    eventually(&server, "the connection freed", |c| {
        c.open == 0 && c.closed_with(1000) == 1
    });
    stop(server);
}

#[test]
fn echo_large_messages_up_to_16_mib() {
    let server = start(1, Limits::default());
    let mut ws = connect(server.local_addr(), "/echo");
    for size in [125usize, 126, 65_535, 65_536, 1 << 20, 16 << 20] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        ws.send(Message::binary(payload.clone())).unwrap();
        match ws.read().unwrap() {
            Message::Binary(got) => assert!(got[..] == payload[..], "size {size} differs"),
            other => panic!("size {size}: unexpected {other:?}"),
        }
    }
    drop(ws);
    eventually(&server, "connection gone", |c| c.open == 0);
    stop(server);
}

#[test]
fn fragmented_message_with_interleaved_ping_is_reassembled() {
    let server = start(1, Limits::default());
    let mut s = raw_upgrade(server.local_addr(), "/echo");
    let mask = [1, 2, 3, 4];
    let mut wire = Vec::new();
    wire.extend(encode_client(
        OpCode::Text,
        false,
        "héllo ".as_bytes(),
        mask,
    ));
    wire.extend(encode_client(OpCode::Ping, true, b"p", mask));
    // A two-byte character split across fragments must still validate.
    let text = "wörld".as_bytes();
    wire.extend(encode_client(OpCode::Continuation, false, &text[..2], mask));
    wire.extend(encode_client(OpCode::Continuation, true, &text[2..], mask));
    wire.extend(encode_client(
        OpCode::Close,
        true,
        &1000u16.to_be_bytes(),
        mask,
    ));
    // One byte at a time: the decoder must not care how the bytes arrive.
    for b in &wire {
        s.write_all(std::slice::from_ref(b)).unwrap();
    }
    let got = read_to_close(&mut s);
    // pong "p", then the text, then close 1000
    assert_eq!(&got[..3], &[0x8a, 0x01, b'p']);
    let msg = "héllo wörld".as_bytes();
    assert_eq!(got[3], 0x81);
    assert_eq!(got[4] as usize, msg.len());
    assert_eq!(&got[5..5 + msg.len()], msg);
    assert_eq!(close_code_of(&got), Some(1000));
    eventually(&server, "freed", |c| c.open == 0);
    stop(server);
}

#[test]
fn protocol_violations_get_their_close_codes() {
    let limits = Limits {
        message_bytes_max: 1000,
        ..Limits::default()
    };
    let server = start(2, limits);
    let addr = server.local_addr();
    let mask = [9, 8, 7, 6];
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        (
            "unmasked frame",
            "/echo",
            vec![0x81, 0x02, b'h', b'i'],
            1002,
        ),
        (
            "reserved opcode",
            "/echo",
            encode_client(OpCode::Text, true, b"x", mask)
                .iter()
                .enumerate()
                .map(|(i, b)| if i == 0 { 0x83 } else { *b })
                .collect(),
            1002,
        ),
        (
            "rsv bit",
            "/echo",
            encode_client(OpCode::Text, true, b"x", mask)
                .iter()
                .enumerate()
                .map(|(i, b)| if i == 0 { b | 0x40 } else { *b })
                .collect(),
            1002,
        ),
        (
            "invalid utf-8",
            "/echo",
            encode_client(OpCode::Text, true, &[0xce, 0xba, 0xff], mask),
            1007,
        ),
        (
            "continuation without start",
            "/echo",
            encode_client(OpCode::Continuation, true, b"x", mask),
            1002,
        ),
        (
            "too big on /ws",
            "/ws?format=raw",
            encode_client(OpCode::Binary, true, &[0u8; 1001], mask),
            1009,
        ),
        (
            "2^63 length header",
            "/echo",
            vec![
                0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4,
            ],
            1009,
        ),
        (
            "close code 1005 on the wire",
            "/echo",
            encode_client(OpCode::Close, true, &1005u16.to_be_bytes(), mask),
            1002,
        ),
    ];
    for (name, path, bytes, code) in &cases {
        let mut s = raw_upgrade(addr, path);
        s.write_all(bytes).unwrap();
        let got = read_to_close(&mut s);
        assert_eq!(close_code_of(&got), Some(*code), "{name}: got {got:?}");
    }
    // A healthy client on the same server is undisturbed.
    let mut ws = connect(addr, "/echo");
    ws.send(Message::text("still here")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("still here"));
    drop(ws);
    eventually(&server, "all freed", |c| {
        c.open == 0
            && c.closed_with(1002) == 5
            && c.closed_with(1007) == 1
            && c.closed_with(1009) == 2
    });
    stop(server);
}

fn http_status(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer and close before the whole request is written.
    let _ = s.write_all(request);
    let got = String::from_utf8_lossy(&read_to_close(&mut s)).into_owned();
    let status = got
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, got)
}

#[test]
fn bad_handshakes_get_http_errors() {
    let server = start(1, Limits::default());
    let addr = server.local_addr();
    let good = |path: &str, version: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
        )
    };
    let (status, body) = http_status(addr, good("/nowhere", "13").as_bytes());
    assert_eq!(status, 404, "{body}");
    let (status, body) = http_status(addr, good("/echo", "8").as_bytes());
    assert_eq!(status, 426, "{body}");
    assert!(body.contains("Sec-WebSocket-Version: 13"), "{body}");
    let (status, _) = http_status(addr, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 400);
    let (status, _) = http_status(addr, b"POST /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert_eq!(status, 400);
    let (status, _) = http_status(addr, b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert_eq!(status, 400);
    let mut huge = good("/echo", "13").into_bytes();
    huge.truncate(huge.len() - 2);
    huge.extend(format!("X-Pad: {}\r\n\r\n", "a".repeat(10_000)).as_bytes());
    let (status, _) = http_status(addr, &huge);
    assert_eq!(status, 431);
    let (status, _) = http_status(addr, b"\x16\x03\x01 not http at all\r\n\r\n");
    assert_eq!(status, 400);
    eventually(&server, "rejections counted", |c| {
        c.open == 0
            && c.rejected_with(404) == 1
            && c.rejected_with(426) == 1
            && c.rejected_with(400) == 4
            && c.rejected_with(431) == 1
    });
    stop(server);
}

#[test]
fn handshake_deadline_closes_a_silent_connection() {
    let limits = Limits {
        handshake_timeout_ms: 200,
        ..Limits::default()
    };
    let server = start(1, limits);
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\n").unwrap();
    assert!(read_to_close(&mut s).is_empty());
    // Slowloris: a byte every 20 ms keeps the socket busy but never finishes the head; the
    // deadline counts from accept, not from the last byte.
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    let mut writer = s.try_clone().unwrap();
    let dribble = std::thread::spawn(move || {
        let started = Instant::now();
        for b in b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Pad: "
            .iter()
            .chain(std::iter::repeat(&b'a'))
        {
            if writer.write_all(std::slice::from_ref(b)).is_err() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
            assert!(started.elapsed() < Duration::from_secs(10), "never cut off");
        }
        unreachable!()
    });
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(read_to_close(&mut s).is_empty());
    dribble.join().unwrap();
    eventually(&server, "both timeouts counted", |c| {
        c.handshake_timeouts == 2 && c.open == 0
    });
    stop(server);
}

#[test]
fn heartbeat_pings_and_closes_silent_clients() {
    let limits = Limits {
        ping_interval_ms: 100,
        close_timeout_ms: 300,
        ..Limits::default()
    };
    let server = start(1, limits);
    let mut s = raw_upgrade(server.local_addr(), "/ws?format=raw");
    // A client that never answers: a ping every interval, then close 4004 after two silent ones.
    let got = read_to_close(&mut s);
    assert!(got.starts_with(&[0x89, 0x00]), "first a ping: {got:?}");
    assert_eq!(close_code_of(&got), Some(4004));
    // A client that answers (tungstenite pongs automatically while reading) stays open.
    let mut ws = connect(server.local_addr(), "/ws?format=raw");
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_millis(600) {
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("a responsive client was closed: {e}"),
        }
    }
    assert!(pings >= 3, "pings: {pings}");
    eventually(&server, "4004 counted", |c| c.closed_with(4004) == 1);
    stop(server);
}

#[test]
fn connection_limit_answers_503_and_spares_existing_connections() {
    let limits = Limits {
        conns_per_shard_max: 2,
        ..Limits::default()
    };
    let server = start(1, limits);
    let addr = server.local_addr();
    let mut a = connect(addr, "/echo");
    let mut b = connect(addr, "/echo");
    let (status, _) = http_status(addr, b"GET /echo HTTP/1.1\r\n\r\n");
    assert_eq!(status, 503);
    for ws in [&mut a, &mut b] {
        ws.send(Message::text("ok")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("ok"));
    }
    eventually(&server, "503 counted", |c| {
        c.rejected_with(503) == 1 && c.conn_limit_refusals == 1
    });
    stop(server);
}

#[test]
fn graceful_shutdown_sends_going_away() {
    let server = start(2, Limits::default());
    let addr = server.local_addr();
    let mut clients: Vec<Ws> = (0..8).map(|_| connect(addr, "/echo")).collect();
    eventually(&server, "all open", |c| c.open == 8);
    server.shutdown();
    for ws in &mut clients {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    drop(clients);
    server.wait().expect("exits cleanly");
}

#[test]
fn many_connections_open_and_leave() {
    let server = start(2, Limits::default());
    let addr = server.local_addr();
    let mut clients: Vec<Ws> = (0..200).map(|_| connect(addr, "/echo")).collect();
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::text(format!("n{i}"))).unwrap();
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(ws.read().unwrap(), Message::text(format!("n{i}")));
    }
    eventually(&server, "200 open", |c| {
        c.open == 200 && c.handshakes == 200
    });
    drop(clients);
    eventually(&server, "all gone", |c| c.open == 0);
    let per_shard = server.shard_counters();
    assert!(
        per_shard.iter().all(|c| c.accepted > 0),
        "SO_REUSEPORT spreads connections: {per_shard:?}"
    );
    // Each shard's loop counts its turns and the time it spent submitting and waiting (both
    // drivers; the loop sleeps between ticks, so the wait is never zero).
    eventually(&server, "loop turns counted", |c| {
        c.loop_turns > 0 && c.loop_wait_us > 0
    });
    for c in server.shard_counters() {
        assert!(c.loop_turns > 0 && c.loop_wait_us > 0, "{c:?}");
    }
    stop(server);
}

// ---- channels and fan-out on /ws ----

fn push_config(shards: usize, limits: Limits) -> Config {
    let mut c = config(shards, limits);
    c.namespaces.insert(
        "chat".into(),
        ringcast::config::Namespace {
            client_publish: true,
            ..Default::default()
        },
    );
    c
}

fn json(ws: &mut Ws) -> serde_json::Value {
    loop {
        match ws.read().expect("a message") {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn send_json(ws: &mut Ws, v: serde_json::Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

#[test]
fn fanout_across_four_shards_is_exactly_once_and_gapless() {
    let server = Server::start(push_config(4, Limits::default())).unwrap();
    let addr = server.local_addr();
    // Envelope subscribers, spread over the shards by SO_REUSEPORT.
    let mut subs: Vec<Ws> = Vec::new();
    for i in 0..24 {
        let mut ws = connect(addr, "/ws");
        let welcome = json(&mut ws);
        assert_eq!(welcome["op"], "welcome");
        assert!(welcome["conn"].as_u64().is_some());
        send_json(
            &mut ws,
            serde_json::json!({"op":"subscribe","channel":"chat:room","id":i}),
        );
        let ack = json(&mut ws);
        assert_eq!(ack["op"], "subscribed", "{ack}");
        assert_eq!(ack["id"], i);
        assert_eq!(ack["offset"], 0);
        subs.push(ws);
    }
    // Raw subscribers from the URL.
    let mut raws: Vec<Ws> = (0..8)
        .map(|_| connect(addr, "/ws?channel=chat%3Aroom&format=raw"))
        .collect();
    eventually(&server, "all subscribed", |c| c.open == 32);
    // Raw subscriptions complete asynchronously; a ping round trip on every envelope client
    // proves nothing, so wait until the owner saw every shard's interest by publishing a probe
    // and reading it on every raw client.
    let mut publishers: Vec<Ws> = (0..6).map(|_| connect(addr, "/ws")).collect();
    for p in &mut publishers {
        assert_eq!(json(p)["op"], "welcome");
    }
    // Publishes from several connections (hence several shards) into one channel.
    let per_publisher = 50;
    for round in 0..per_publisher {
        for (p, ws) in publishers.iter_mut().enumerate() {
            send_json(
                ws,
                serde_json::json!({"op":"publish","channel":"chat:room","data":{"p":p,"n":round}}),
            );
        }
    }
    let total = per_publisher * publishers.len();
    for ws in &mut subs {
        let mut seen = std::collections::HashSet::new();
        for expect_offset in 1..=total as u64 {
            let m = json(ws);
            assert_eq!(m["op"], "message");
            assert_eq!(m["channel"], "chat:room");
            assert_eq!(m["offset"], expect_offset, "gapless, in order");
            assert!(
                seen.insert((
                    m["data"]["p"].as_u64().unwrap(),
                    m["data"]["n"].as_u64().unwrap()
                )),
                "no duplicate"
            );
        }
    }
    for ws in &mut raws {
        let mut last_n = vec![-1i64; publishers.len()];
        let mut count = 0;
        while count < total {
            match ws.read().unwrap() {
                Message::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    let (p, n) = (v["p"].as_u64().unwrap() as usize, v["n"].as_i64().unwrap());
                    assert_eq!(n, last_n[p] + 1, "per-publisher order on a raw subscriber");
                    last_n[p] = n;
                    count += 1;
                }
                Message::Ping(_) => {}
                other => panic!("raw subscribers get payloads only: {other:?}"),
            }
        }
    }
    eventually(&server, "all sequenced", |c| c.published == total as u64);
    stop(server);
}

#[test]
fn unsubscribe_errors_and_limits() {
    let limits = Limits {
        channels_per_conn_max: 2,
        ..Limits::default()
    };
    let server = Server::start(push_config(2, limits)).unwrap();
    let addr = server.local_addr();
    let mut ws = connect(addr, "/ws");
    assert_eq!(json(&mut ws)["op"], "welcome");
    send_json(&mut ws, serde_json::json!({"op":"subscribe","channel":"a"}));
    assert_eq!(json(&mut ws)["op"], "subscribed");
    send_json(
        &mut ws,
        serde_json::json!({"op":"subscribe","channel":"a","id":"dup"}),
    );
    let e = json(&mut ws);
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str(), e["id"].as_str()),
        (Some("error"), Some("already_subscribed"), Some("dup"))
    );
    send_json(&mut ws, serde_json::json!({"op":"subscribe","channel":"b"}));
    assert_eq!(json(&mut ws)["op"], "subscribed");
    send_json(&mut ws, serde_json::json!({"op":"subscribe","channel":"c"}));
    assert_eq!(json(&mut ws)["code"], "limit_exceeded");
    send_json(
        &mut ws,
        serde_json::json!({"op":"subscribe","channel":"bad name"}),
    );
    assert_eq!(json(&mut ws)["code"], "bad_channel");
    send_json(
        &mut ws,
        serde_json::json!({"op":"publish","channel":"a","data":1}),
    );
    assert_eq!(
        json(&mut ws)["code"],
        "forbidden",
        "namespace without client publish"
    );
    ws.send(Message::text("{not json")).unwrap();
    assert_eq!(json(&mut ws)["code"], "bad_json");
    send_json(&mut ws, serde_json::json!({"op":"ping","id":5}));
    let pong = json(&mut ws);
    assert_eq!(
        (pong["op"].as_str(), pong["id"].as_u64()),
        (Some("pong"), Some(5))
    );
    send_json(
        &mut ws,
        serde_json::json!({"op":"unsubscribe","channel":"a","id":1}),
    );
    assert_eq!(json(&mut ws)["op"], "unsubscribed");
    send_json(
        &mut ws,
        serde_json::json!({"op":"unsubscribe","channel":"a"}),
    );
    assert_eq!(json(&mut ws)["code"], "not_subscribed");
    // A publish after unsubscribing from "a" is not delivered; one to "chat:x" after subscribing is.
    send_json(
        &mut ws,
        serde_json::json!({"op":"subscribe","channel":"chat:x"}),
    );
    assert_eq!(json(&mut ws)["op"], "subscribed");
    let mut other = connect(addr, "/ws");
    assert_eq!(json(&mut other)["op"], "welcome");
    send_json(
        &mut other,
        serde_json::json!({"op":"publish","channel":"chat:x","data":"hello"}),
    );
    let m = json(&mut ws);
    assert_eq!(
        (m["op"].as_str(), m["data"].as_str(), m["offset"].as_u64()),
        (Some("message"), Some("hello"), Some(1))
    );
    // Bad URL channel: the upgrade is refused with 400.
    let (status, _) = http_status(addr, b"GET /ws?channel=bad%20name HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert_eq!(status, 400);
    // Binary on /ws is refused with 1003.
    ws.send(Message::binary(vec![1u8])).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 1003);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    stop(server);
}

#[test]
fn slow_consumer_is_closed_and_others_keep_receiving() {
    let limits = Limits {
        outbound_bytes_max: 64 * 1024,
        // The publisher sends thousands of messages; the rate limit is not what is tested here.
        client_messages_per_s: 0,
        ..Limits::default()
    };
    let server = Server::start(push_config(1, limits)).unwrap();
    let addr = server.local_addr();
    // The slow client: subscribes, then never reads. Its kernel buffers fill, then its queue.
    let mut slow = raw_upgrade(addr, "/ws?channel=chat:feed&format=raw");
    let mut healthy = connect(addr, "/ws?channel=chat:feed&format=raw");
    let mut publisher = connect(addr, "/ws");
    assert_eq!(json(&mut publisher)["op"], "welcome");
    eventually(&server, "3 open", |c| c.open == 3);
    let payload = "x".repeat(4000);
    let mut received = 0usize;
    let mut sent = 0usize;
    while server.counters().slow_consumers == 0 {
        assert!(sent < 50_000, "the slow consumer was never detected");
        // Bursts stay well under the queue limit, so only a client that does not read passes it.
        for _ in 0..8 {
            send_json(
                &mut publisher,
                serde_json::json!({"op":"publish","channel":"chat:feed","data":payload}),
            );
            sent += 1;
        }
        // The healthy client keeps up.
        while received < sent {
            match healthy.read().unwrap() {
                Message::Text(_) => received += 1,
                Message::Ping(_) => {}
                other => panic!("{other:?}"),
            }
        }
    }
    // It was closed with 4001; the healthy one still gets everything.
    send_json(
        &mut publisher,
        serde_json::json!({"op":"publish","channel":"chat:feed","data":"after"}),
    );
    loop {
        match healthy.read().unwrap() {
            Message::Text(t) if t.as_str() == "\"after\"" => break,
            Message::Text(_) | Message::Ping(_) => {}
            other => panic!("{other:?}"),
        }
    }
    // Its backlog was dropped, so when it reads again it finds the reason right behind what
    // was already on its way.
    assert_eq!(close_code_of(&read_to_close(&mut slow)), Some(4001));
    drop(slow);
    eventually(&server, "the slow consumer freed with 4001", |c| {
        c.closed_with(4001) == 1 && c.open == 2
    });
    stop(server);
}

// ---- the control socket ----

struct Ctl {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl Ctl {
    fn connect(path: &std::path::Path) -> Ctl {
        let s = std::os::unix::net::UnixStream::connect(path).expect("control socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Ctl {
            writer: s.try_clone().unwrap(),
            reader: std::io::BufReader::new(s),
        }
    }
    fn send_raw(&mut self, line: &[u8]) {
        self.writer.write_all(line).unwrap();
    }
    fn line(&mut self) -> serde_json::Value {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.reader, &mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }
    fn call(&mut self, req: serde_json::Value) -> serde_json::Value {
        self.send_raw(format!("{req}\n").as_bytes());
        self.line()
    }
}

fn control_server(shards: usize, name: &str) -> (Server, std::path::PathBuf) {
    control_server_with(shards, name, Limits::default())
}

fn control_server_with(shards: usize, name: &str, limits: Limits) -> (Server, std::path::PathBuf) {
    let path =
        std::env::temp_dir().join(format!("ringcast-e2e-{}-{name}.sock", std::process::id()));
    let mut c = push_config(shards, limits);
    c.control.listen = vec![format!("unix:{}", path.display())];
    (Server::start(c).unwrap(), path)
}

/// Polls `presence` until `channel` has `n` subscribers (a subscription reaches the owner
/// asynchronously).
fn await_presence(ctl: &mut Ctl, channel: &str, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = ctl.call(serde_json::json!({"method":"presence","channel":channel}));
        let ids: Vec<u64> = r["result"]["conns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        if ids.len() == n {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "presence of {channel} stuck at {ids:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn control_publish_send_join_and_disconnect() {
    let (server, path) = control_server(3, "main");
    let addr = server.local_addr();
    let mut ctl = Ctl::connect(&path);
    let mut subs: Vec<Ws> = (0..6).map(|_| connect(addr, "/ws?channel=news")).collect();
    let mut ids = Vec::new();
    for ws in &mut subs {
        let w = json(ws);
        ids.push(w["conn"].as_u64().unwrap());
        assert_eq!(json(ws)["op"], "subscribed");
    }
    let mut present = await_presence(&mut ctl, "news", 6);
    present.sort();
    ids.sort();
    assert_eq!(
        present, ids,
        "presence lists exactly the subscribers, across shards"
    );
    // publish with every payload kind; offsets 1, 2, 3.
    let r = ctl
        .call(serde_json::json!({"id":"a","method":"publish","channel":"news","data":{"k":[1,2]}}));
    assert_eq!(r["id"], "a");
    assert_eq!(r["result"]["offset"], 1);
    let epoch = r["result"]["epoch"].as_u64().unwrap();
    assert!(epoch > 0);
    assert_eq!(
        ctl.call(serde_json::json!({"method":"publish","channel":"news","text":"plain"}))["result"]
            ["offset"],
        2
    );
    assert_eq!(
        ctl.call(serde_json::json!({"method":"publish","channel":"news","b64":"AP8="}))["result"]["offset"],
        3
    );
    for ws in &mut subs {
        let m = json(ws);
        assert_eq!(
            (m["offset"].as_u64(), &m["data"]),
            (Some(1), &serde_json::json!({"k":[1,2]}))
        );
        assert_eq!(json(ws)["data"], "plain");
        assert_eq!(json(ws)["b64"], "AP8=");
    }
    // channels: counts summed over shards.
    let r = ctl.call(serde_json::json!({"method":"channels"}));
    assert_eq!(r["result"]["channels"]["news"], 6);
    // send to one connection; server-side subscribe, then a publish reaches it.
    let target = ids[0];
    drop(subs);
    let mut lone = connect(addr, "/ws");
    let lone_id = json(&mut lone)["conn"].as_u64().unwrap();
    assert_eq!(
        ctl.call(serde_json::json!({"id":1,"method":"send","conn":lone_id,"text":"just you"}))["result"],
        serde_json::json!({})
    );
    let m = json(&mut lone);
    assert_eq!(
        (m["op"].as_str(), m["data"].as_str()),
        (Some("push"), Some("just you"))
    );
    assert_eq!(
        ctl.call(serde_json::json!({"method":"subscribe","conn":lone_id,"channel":"chat:side"}))["result"],
        serde_json::json!({})
    );
    let s = json(&mut lone);
    assert_eq!(
        (s["op"].as_str(), s["channel"].as_str()),
        (Some("subscribed"), Some("chat:side"))
    );
    assert_eq!(
        ctl.call(serde_json::json!({"method":"publish","channel":"chat:side","text":"joined"}))["result"]
            ["offset"],
        1
    );
    assert_eq!(json(&mut lone)["data"], "joined");
    assert_eq!(
        ctl.call(serde_json::json!({"method":"subscribe","conn":lone_id,"channel":"chat:side"}))["error"]
            ["code"],
        "already_subscribed"
    );
    assert_eq!(
        ctl.call(serde_json::json!({"method":"unsubscribe","conn":lone_id,"channel":"chat:side"}))
            ["result"],
        serde_json::json!({})
    );
    assert_eq!(json(&mut lone)["op"], "unsubscribed");
    // disconnect: close 4003 with the reason.
    assert_eq!(
        ctl.call(serde_json::json!({"method":"disconnect","conn":lone_id,"reason":"bye"}))["result"],
        serde_json::json!({})
    );
    match lone.read().unwrap() {
        Message::Close(Some(f)) => {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (4003, "bye"))
        }
        other => panic!("{other:?}"),
    }
    // A stale id: no_such_conn.
    assert_eq!(
        ctl.call(serde_json::json!({"method":"send","conn":lone_id,"text":"x"}))["error"]["code"],
        "no_such_conn"
    );
    assert_eq!(
        ctl.call(serde_json::json!({"method":"send","conn":target + 1,"text":"x"}))["error"]["code"],
        "no_such_conn"
    );
    stop(server);
    assert!(!path.exists(), "the socket file is removed on exit");
}

#[test]
fn control_pipelining_order_noreply_and_bad_lines() {
    let (server, path) = control_server(2, "pipe");
    let mut ctl = Ctl::connect(&path);
    let mut sub = connect(server.local_addr(), "/ws?channel=feed&format=raw");
    await_presence(&mut ctl, "feed", 1);
    // 1,000 fire-and-forget publishes, interleaved with garbage, then requests with replies:
    // replies come back in request order and only for the requests that asked.
    let mut batch = Vec::new();
    for i in 0..1000 {
        batch.extend(format!("{{\"method\":\"publish\",\"channel\":\"feed\",\"text\":\"{i}\",\"noreply\":true}}\n").as_bytes());
    }
    batch.extend(b"not json\n");
    batch.extend(b"{\"id\":1,\"method\":\"publish\",\"channel\":\"feed\",\"text\":\"last\"}\n");
    batch.extend(b"\n{\"id\":2,\"method\":\"publish\",\"channel\":\"bad name\",\"text\":\"x\"}\n");
    batch.extend(b"{\"id\":3,\"method\":\"nope\"}\n{\"id\":4,\"method\":\"send\",\"conn\":\"x\",\"text\":\"x\"}\n");
    batch.extend(vec![b'z'; 1_100_000]);
    batch.extend(b"\n{\"id\":5,\"method\":\"info\"}\n");
    batch.extend(b"{\"id\":6,\"method\":\"publish\",\"channel\":\"feed\",\"text\":\"x\",\"noreply\":true,\"data\":1}\n");
    batch.extend(b"{\"id\":7,\"method\":\"stats\"}\n");
    // Written from another thread: the server may answer before the whole batch is written.
    let mut writer = ctl.writer.try_clone().unwrap();
    let w = std::thread::spawn(move || writer.write_all(&batch).unwrap());
    assert_eq!(ctl.line()["error"]["code"], "bad_json");
    let r = ctl.line();
    assert_eq!(
        (r["id"].as_u64(), r["result"]["offset"].as_u64()),
        (Some(1), Some(1001))
    );
    assert_eq!(ctl.line()["error"]["code"], "bad_params");
    assert_eq!(ctl.line()["error"]["code"], "unknown_method");
    assert_eq!(ctl.line()["error"]["code"], "bad_params");
    assert_eq!(ctl.line()["error"]["code"], "line_too_long");
    let r = ctl.line();
    assert_eq!(
        (r["id"].as_u64(), r["result"]["shards"].as_u64()),
        (Some(5), Some(2))
    );
    let r = ctl.line();
    assert_eq!(r["id"], 7, "the bad noreply request got no reply: {r}");
    w.join().unwrap();
    for i in 0..1000 {
        assert_eq!(sub.read().unwrap(), Message::text(i.to_string()));
    }
    assert_eq!(sub.read().unwrap(), Message::text("last"));
    stop(server);
}

#[test]
fn control_token_and_tcp() {
    let mut c = push_config(1, Limits::default());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    c.control.listen = vec![format!("tcp:127.0.0.1:{port}")];
    c.control.token = Some("s3cret".into());
    let server = Server::start(c).unwrap();
    let talk = |lines: &[&str]| -> Vec<serde_json::Value> {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        for l in lines {
            w.write_all(format!("{l}\n").as_bytes()).unwrap();
        }
        let mut r = std::io::BufReader::new(s);
        let mut out = Vec::new();
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut r, &mut line).unwrap_or(0) > 0 {
            out.push(serde_json::from_str(&line).unwrap());
            line.clear();
            if out.len() == lines.len() {
                break;
            }
        }
        out
    };
    let refused = talk(&[r#"{"id":1,"method":"info"}"#, r#"{"id":2,"method":"info"}"#]);
    assert_eq!(refused.len(), 1, "closed after the refusal: {refused:?}");
    assert_eq!(refused[0]["error"]["code"], "unauthorized");
    let ok = talk(&[
        r#"{"method":"auth","token":"s3cret"}"#,
        r#"{"id":2,"method":"info"}"#,
    ]);
    assert_eq!(ok[0]["result"], serde_json::json!({}));
    assert_eq!(ok[1]["result"]["shards"], 1);
    stop(server);
    // Without a token, a non-loopback TCP control address is refused at start-up.
    let mut c = push_config(1, Limits::default());
    c.control.listen = vec!["tcp:0.0.0.0:0".into()];
    let err = Server::start(c).err().expect("refused");
    assert!(err.contains("not loopback"), "{err}");
}

// ---- adversarial clients: each ends with its close code, a freed slot, a counter, and a
// healthy neighbour that still gets its messages ----

/// A healthy subscriber on `channel` plus a publisher; checks one round trip.
fn neighbour_still_served(addr: SocketAddr, channel: &str) {
    let mut sub = connect(addr, &format!("/ws?channel={channel}&format=raw"));
    let mut publisher = connect(addr, "/ws");
    assert_eq!(json(&mut publisher)["op"], "welcome");
    let deadline = Instant::now() + Duration::from_secs(10);
    sub.get_mut()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    loop {
        assert!(Instant::now() < deadline, "the neighbour got nothing");
        send_json(
            &mut publisher,
            serde_json::json!({"op":"publish","channel":channel,"data":"alive"}),
        );
        match sub.read() {
            Ok(Message::Text(t)) if t.as_str() == "\"alive\"" => return,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("the neighbour failed: {e}"),
        }
    }
}

#[test]
fn ping_flood_and_message_flood_are_rate_limited() {
    let limits = Limits {
        client_messages_per_s: 20,
        ..Limits::default()
    };
    let server = Server::start(push_config(1, limits)).unwrap();
    let addr = server.local_addr();
    let mask = [1, 2, 3, 4];
    for flood in [
        encode_client(OpCode::Ping, true, b"", mask),
        encode_client(OpCode::Text, true, br#"{"op":"ping"}"#, mask),
    ] {
        let mut s = raw_upgrade(addr, "/ws?format=raw");
        let burst: Vec<u8> = std::iter::repeat_n(flood, 200).flatten().collect();
        let _ = s.write_all(&burst);
        let got = read_to_close(&mut s);
        assert_eq!(close_code_of(&got), Some(4002));
    }
    neighbour_still_served(addr, "chat:n");
    eventually(&server, "counted and freed", |c| {
        c.rate_limited == 2 && c.closed_with(4002) == 2 && c.open == 0
    });
    stop(server);
}

#[test]
fn fragment_flood_split_utf8_and_frames_after_close() {
    let server = Server::start(push_config(2, Limits::default())).unwrap();
    let addr = server.local_addr();
    let mask = [7, 7, 7, 7];
    // 1,100 fragments of one message on /ws (limit 1,024): 1009.
    let mut s = raw_upgrade(addr, "/ws?format=raw");
    let mut wire = encode_client(OpCode::Text, false, b"a", mask);
    for _ in 0..1100 {
        wire.extend(encode_client(OpCode::Continuation, false, b"a", mask));
    }
    let _ = s.write_all(&wire);
    assert_eq!(close_code_of(&read_to_close(&mut s)), Some(1009));
    // A 4-byte character split across fragments, then broken: 1007 as soon as it is known.
    let mut s = raw_upgrade(addr, "/ws?format=raw");
    let mut wire = encode_client(OpCode::Text, false, &[0xf0, 0x9f], mask);
    wire.extend(encode_client(OpCode::Continuation, true, b"A", mask));
    s.write_all(&wire).unwrap();
    assert_eq!(close_code_of(&read_to_close(&mut s)), Some(1007));
    // Frames after the client's close are ignored; the server answers the close once.
    let mut s = raw_upgrade(addr, "/echo");
    let mut wire = encode_client(OpCode::Close, true, &1000u16.to_be_bytes(), mask);
    wire.extend(encode_client(OpCode::Text, true, b"too late", mask));
    wire.extend(encode_client(OpCode::Ping, true, b"", mask));
    s.write_all(&wire).unwrap();
    let got = read_to_close(&mut s);
    assert_eq!(
        got,
        vec![0x88, 0x02, 0x03, 0xe8],
        "exactly one close frame, nothing else"
    );
    // Zero-length frames of every kind are fine.
    let mut ws = connect(addr, "/echo");
    ws.send(Message::binary(Vec::new())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(Vec::new()));
    neighbour_still_served(addr, "chat:n");
    eventually(&server, "all three counted", |c| {
        c.closed_with(1009) == 1 && c.closed_with(1007) == 1 && c.closed_with(1000) == 1
    });
    stop(server);
}

#[test]
fn reset_mid_send_frees_the_slot() {
    let server = Server::start(push_config(1, Limits::default())).unwrap();
    let addr = server.local_addr();
    let victim = raw_upgrade(addr, "/ws?channel=chat:big&format=raw");
    let mut publisher = connect(addr, "/ws");
    assert_eq!(json(&mut publisher)["op"], "welcome");
    eventually(&server, "both open", |c| c.open == 2);
    let big = "y".repeat(30_000);
    for _ in 0..20 {
        send_json(
            &mut publisher,
            serde_json::json!({"op":"publish","channel":"chat:big","data":big}),
        );
    }
    // SO_LINGER 0: close sends RST while the server is still sending.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setting a plain socket option on a socket we own.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&victim),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(victim);
    eventually(&server, "the reset connection freed", |c| {
        c.open == 1 && c.closed_with(1006) == 1
    });
    neighbour_still_served(addr, "chat:n");
    stop(server);
}

#[test]
fn subscribe_toggles_leave_no_state_behind() {
    // Thousands of commands in a burst: the message rate limit is off for this client.
    let (server, path) = control_server_with(
        2,
        "toggle",
        Limits {
            client_messages_per_s: 0,
            ..Limits::default()
        },
    );
    let mut ctl = Ctl::connect(&path);
    let mut ws = connect(server.local_addr(), "/ws");
    assert_eq!(json(&mut ws)["op"], "welcome");
    for i in 0..3000 {
        send_json(
            &mut ws,
            serde_json::json!({"op":"subscribe","channel":format!("t{}", i % 7)}),
        );
        send_json(
            &mut ws,
            serde_json::json!({"op":"unsubscribe","channel":format!("t{}", i % 7)}),
        );
        if i % 100 == 99 {
            // Let the replies drain so the client is not a slow consumer of its own replies.
            for _ in 0..200 {
                let r = json(&mut ws);
                assert!(r["op"] == "subscribed" || r["op"] == "unsubscribed", "{r}");
            }
        }
    }
    let r = ctl.call(serde_json::json!({"method":"channels"}));
    assert_eq!(
        r["result"]["channels"],
        serde_json::json!({}),
        "no channel left: {r}"
    );
    // And the connection still works.
    send_json(
        &mut ws,
        serde_json::json!({"op":"subscribe","channel":"t1"}),
    );
    assert_eq!(json(&mut ws)["op"], "subscribed");
    assert_eq!(
        ctl.call(serde_json::json!({"method":"publish","channel":"t1","text":"ok"}))["result"]["offset"],
        1
    );
    assert_eq!(json(&mut ws)["data"], "ok");
    stop(server);
}

#[test]
fn shard_wide_byte_bounds() {
    // Outbound: three readers that never read, a shard limit below their per-connection limit.
    let limits = Limits {
        shard_outbound_bytes_max: 2 << 20,
        outbound_bytes_max: 4 << 20,
        shard_inbound_bytes_max: 100_000,
        message_bytes_max: 1 << 20,
        client_messages_per_s: 0,
        ..Limits::default()
    };
    let server = Server::start(push_config(1, limits)).unwrap();
    let addr = server.local_addr();
    let stuck: Vec<TcpStream> = (0..3)
        .map(|_| raw_upgrade(addr, "/ws?channel=chat:flood&format=raw"))
        .collect();
    let mut publisher = connect(addr, "/ws");
    assert_eq!(json(&mut publisher)["op"], "welcome");
    eventually(&server, "4 open", |c| c.open == 4);
    let payload = "z".repeat(16_000);
    let mut sent = 0;
    while server.counters().shard_outbound_overflows == 0 {
        assert!(sent < 20_000, "the shard bound never acted");
        for _ in 0..20 {
            send_json(
                &mut publisher,
                serde_json::json!({"op":"publish","channel":"chat:flood","data":payload}),
            );
        }
        sent += 20;
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(stuck);
    // Inbound: a frame announcing 500 kB, of which 150 kB arrive: the shard's assembly bound acts.
    let mut s = raw_upgrade(addr, "/ws?format=raw");
    let mut wire = vec![0x82, 0xff];
    wire.extend(500_000u64.to_be_bytes());
    wire.extend([1, 2, 3, 4]);
    wire.extend(vec![0u8; 150_000]);
    let _ = s.write_all(&wire);
    assert_eq!(close_code_of(&read_to_close(&mut s)), Some(1009));
    eventually(&server, "inbound bound counted", |c| {
        c.shard_inbound_overflows == 1
    });
    neighbour_still_served(addr, "chat:n");
    stop(server);
}

#[test]
fn replies_keep_command_order_while_a_subscription_waits_for_its_owner() {
    let server = Server::start(push_config(4, Limits::default())).unwrap();
    let mut ws = connect(server.local_addr(), "/ws");
    assert_eq!(json(&mut ws)["op"], "welcome");
    // Sent in one burst: the first subscribe needs a round trip to the channel's owner.
    let burst: Vec<serde_json::Value> = vec![
        serde_json::json!({"op":"subscribe","channel":"fresh","id":1}),
        serde_json::json!({"op":"unsubscribe","channel":"fresh","id":2}),
        serde_json::json!({"op":"ping","id":3}),
        serde_json::json!({"op":"subscribe","channel":"fresh","id":4}),
        serde_json::json!({"op":"subscribe","channel":"other","id":5}),
    ];
    for cmd in &burst {
        send_json(&mut ws, cmd.clone());
    }
    let expect = [
        "subscribed",
        "unsubscribed",
        "pong",
        "subscribed",
        "subscribed",
    ];
    for (i, op) in expect.iter().enumerate() {
        let r = json(&mut ws);
        assert_eq!(
            (r["op"].as_str(), r["id"].as_u64()),
            (Some(*op), Some(i as u64 + 1)),
            "{r}"
        );
    }
    stop(server);
}

#[test]
fn per_address_limit_answers_429() {
    let limits = Limits {
        conns_per_ip_max: 2,
        ..Limits::default()
    };
    let server = start(1, limits);
    let addr = server.local_addr();
    let mut a = connect(addr, "/echo");
    let _b = connect(addr, "/echo");
    let (status, _) = http_status(addr, b"GET /echo HTTP/1.1\r\n\r\n");
    assert_eq!(status, 429);
    a.send(Message::text("still ok")).unwrap();
    assert_eq!(a.read().unwrap(), Message::text("still ok"));
    drop(a);
    eventually(&server, "429 counted, a slot released", |c| {
        c.rejected_with(429) >= 1 && c.open == 1
    });
    let _c = connect(addr, "/echo");
    stop(server);
}

#[test]
fn control_client_that_half_closes_still_gets_its_replies() {
    let (server, path) = control_server(2, "halfclose");
    for _ in 0..20 {
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // As `echo ... | socat - UNIX-CONNECT:...` does: write, half-close, read to EOF.
        s.write_all(b"{\"id\":1,\"method\":\"info\"}\n  \n{\"id\":2,\"method\":\"channels\"}\n{\"id\":3,\"method\":\"publish\",\"channel\":\"x\",\"text\":\"t\"}\n").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        let ids: Vec<u64> = all
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ids, vec![1, 2, 3], "{all}");
    }
    eventually(&server, "control connections freed", |c| {
        c.control_conns == 20 && c.open == 0
    });
    stop(server);
}

#[test]
fn handshake_crowd_is_bounded_with_503() {
    let limits = Limits {
        handshakes_per_shard_max: 2,
        handshake_timeout_ms: 500,
        ..Limits::default()
    };
    let server = start(1, limits);
    let addr = server.local_addr();
    let mut open = connect(addr, "/echo"); // done handshaking: does not count
    let silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    eventually(&server, "two handshaking", |c| c.accepted == 3);
    let (status, _) = http_status(addr, b"GET /echo HTTP/1.1\r\n\r\n");
    assert_eq!(status, 503);
    open.send(Message::text("fine")).unwrap();
    assert_eq!(open.read().unwrap(), Message::text("fine"));
    // Once the silent ones hit their deadline, handshakes are accepted again.
    eventually(&server, "deadlines", |c| c.handshake_timeouts == 2);
    drop(silent);
    let _again = connect(addr, "/echo");
    stop(server);
}

#[path = "e2e/hardening.rs"]
mod hardening;

#[path = "e2e/flow.rs"]
mod flow;

#[path = "e2e/recovery.rs"]
mod recovery;

#[path = "e2e/users.rs"]
mod users;

#[path = "e2e/http.rs"]
mod http;

#[path = "e2e/deflate.rs"]
mod deflate;

#[path = "e2e/pusher.rs"]
mod pusher;
