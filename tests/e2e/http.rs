//! The HTTP listener against a real server: health, metrics, the API on the control executor,
//! keep-alive pipelining, the bearer token, and bad requests with their statuses.

use super::*;
use serde_json::Value;

fn http_server(token: Option<&str>) -> Server {
    let mut c = push_config(3, Limits::default());
    c.http.listen = Some("127.0.0.1:0".parse().unwrap());
    c.http.token = token.map(str::to_string);
    Server::start(c).unwrap()
}

/// Sends `raw` on a new connection and reads responses until `n` are complete or the server
/// closes (bounded by the read timeout); each is (status, head, body).
fn exchange(addr: SocketAddr, raw: &[u8], n: usize) -> Vec<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 65536];
    while out.len() < n {
        // Parse what is complete.
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                out.push((status, head, body));
                continue;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    out
}

fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    exchange(addr, req.as_bytes(), 1).remove(0)
}

fn post(addr: SocketAddr, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _, body) = exchange(addr, req.as_bytes(), 1).remove(0);
    (status, serde_json::from_slice(&body).unwrap())
}

#[test]
fn health_metrics_and_the_api_on_the_control_executor() {
    let server = http_server(None);
    let addr = server.http_addr().unwrap();
    let (status, head, body) = get(addr, "/healthz");
    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]), "{head}");
    assert_eq!(get(addr, "/readyz").0, 200);
    let mut sub = connect(server.local_addr(), "/ws?channel=web:news&format=raw");
    // The subscription reaches the owner asynchronously: publish until the subscriber has it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = post(
            addr,
            "/api/publish",
            r#"{"channel":"web:news","text":"hi"}"#,
            None,
        );
        assert_eq!(status, 200, "{v}");
        if v["offset"].as_u64().unwrap() > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never subscribed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sub.read().unwrap(), Message::Text("hi".into()));
    // Pipelined on one keep-alive connection: answered in order, parts from other shards too.
    let pipelined = b"GET /api/presence?channel=web:news HTTP/1.1\r\nHost: t\r\n\r\n\
        GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n\
        GET /api/channels?limit=10 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let r = exchange(addr, pipelined, 3);
    assert_eq!(r.len(), 3);
    let presence: Value = serde_json::from_slice(&r[0].2).unwrap();
    assert_eq!(presence["conns"].as_array().unwrap().len(), 1, "{presence}");
    assert_eq!(r[1].2, b"ok\n");
    let channels: Value = serde_json::from_slice(&r[2].2).unwrap();
    assert_eq!(channels["channels"]["web:news"], 1);
    // The control socket's error codes, with their statuses.
    let (status, v) = post(
        addr,
        "/api/publish",
        r#"{"channel":"bad name","text":"x"}"#,
        None,
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_params"))
    );
    // A connection id on a shard this 3-shard server does not have: never a live connection.
    let nobody = ringcast::id::ConnId::new(7, 0, 1).get();
    let body = format!(r#"{{"conn":{nobody},"text":"x"}}"#);
    let (status, v) = post(addr, "/api/send", &body, None);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("no_such_conn"))
    );
    let (status, v) = post(addr, "/api/publish", "[1]", None);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_json"))
    );
    assert_eq!(get(addr, "/api/nope").0, 404);
    assert_eq!(get(addr, "/api/publish").0, 405, "publish is POST only");
    // Metrics: every shard's gauge and the publishes just made.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, head, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        let text = String::from_utf8(body).unwrap();
        for shard in 0..3 {
            assert!(text.contains(&format!("ringcast_connections{{shard=\"{shard}\"}}")));
        }
        let published: u64 = text
            .lines()
            .filter(|l| l.starts_with("ringcast_published_total{"))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum();
        if published >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "published never moved:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(sub);
    stop(server);
}

#[test]
fn bad_requests_get_their_status_and_the_token_guards_posts() {
    let server = http_server(Some("s3cret"));
    let addr = server.http_addr().unwrap();
    let cases: [(&[u8], u16); 4] = [
        (
            b"POST /api/publish HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
            411,
        ),
        (
            b"POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n",
            413,
        ),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX: \r\n\r\n", 200),
        (b"BREW /pot HTCPCP/1.0\r\n\r\n", 400),
    ];
    for (raw, want) in cases {
        let r = exchange(addr, raw, 1);
        assert_eq!(r[0].0, want, "{}", String::from_utf8_lossy(raw));
    }
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    assert_eq!(exchange(addr, big.as_bytes(), 1)[0].0, 431);
    let body = r#"{"channel":"web:x","text":"x"}"#;
    let (status, v) = post(addr, "/api/publish", body, None);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = post(addr, "/api/publish", body, Some("wrong"));
    assert_eq!(status, 401);
    let (status, v) = post(addr, "/api/publish", body, Some("s3cret"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(get(addr, "/api/stats").0, 200, "reads need no token");
    // The server still serves after all of it, and counted the refusals (counters are
    // published every few ticks: poll).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = post(addr, "/api/stats", "{}", Some("s3cret"));
        assert_eq!(status, 200);
        if v["total"]["http_errors"].as_u64().unwrap() >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(server);
}

#[test]
fn a_drain_closes_every_client_with_1012_and_the_server_ends() {
    let server = http_server(None);
    let addr = server.http_addr().unwrap();
    let mut clients: Vec<Ws> = (0..50)
        .map(|_| connect(server.local_addr(), "/ws?channel=web:d"))
        .collect();
    for ws in &mut clients {
        json(ws);
    }
    let (status, v) = post(addr, "/api/drain", r#"{"over_ms":1000}"#, None);
    assert_eq!((status, v["draining"].as_bool()), (200, Some(true)), "{v}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(addr, "/readyz").0 != 503 {
        assert!(Instant::now() < deadline, "readyz never said draining");
        std::thread::sleep(Duration::from_millis(10));
    }
    for ws in &mut clients {
        loop {
            match ws.read() {
                Ok(Message::Close(Some(f))) => {
                    assert_eq!(u16::from(f.code), 1012);
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the server did not end after its drain"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.wait().expect("clean end");
}
