//! The control-plane and listener defects an attack run found, each reproduced against a real
//! server on loopback: a web page's POST to the control port, a second server on the same
//! address, a cross-shard flood that used to lose replies, a backend that never reads, silent
//! unauthenticated crowds, and pong floods.

use super::*;
use std::io::BufRead;

/// A loopback port nobody holds right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads until EOF (bounded by the socket's read timeout); `None` when the read timed out.
fn read_until_eof(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(all),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(all),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return None,
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

fn tcp_control_server(limits: Limits, token: Option<&str>) -> (Server, SocketAddr) {
    let port = free_port();
    let mut c = push_config(2, limits);
    c.control.listen = vec![format!("tcp:127.0.0.1:{port}")];
    c.control.token = token.map(str::to_string);
    (
        Server::start(c).expect("server starts"),
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
}

/// A line-oriented TCP control client.
struct TcpCtl {
    reader: std::io::BufReader<TcpStream>,
    writer: TcpStream,
}

impl TcpCtl {
    fn connect(addr: SocketAddr) -> TcpCtl {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        TcpCtl {
            writer: s.try_clone().unwrap(),
            reader: std::io::BufReader::new(s),
        }
    }
    fn call(&mut self, req: serde_json::Value) -> serde_json::Value {
        self.writer
            .write_all(format!("{req}\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }
}

/// A page's `fetch("http://127.0.0.1:PORT/", {method: "POST", mode: "no-cors", body})` to a
/// token-less TCP control socket: the connection is closed at once and the body never runs.
#[test]
fn a_web_pages_post_to_the_control_port_runs_nothing() {
    let (server, control) = tcp_control_server(Limits::default(), None);
    let mut sub = connect(server.local_addr(), "/ws?channel=chat:x&format=raw");
    let mut ctl = TcpCtl::connect(control);
    // The subscription is in place before the attack (so silence afterwards means something).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = ctl.call(serde_json::json!({"method":"presence","channel":"chat:x"}));
        if r["result"]["conns"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscription never reached its owner"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let body = r#"{"method":"publish","channel":"chat:x","text":"pwned"}"#;
    let post = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nOrigin: http://evil.example\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}\n",
        control.port(),
        body.len() + 1
    );
    let mut page = TcpStream::connect(control).unwrap();
    page.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    page.write_all(post.as_bytes()).unwrap();
    let answer = read_until_eof(&mut page).expect("closed at once, not left open");
    assert!(
        answer.is_empty(),
        "no answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // The next thing the subscriber receives is a marker sent afterwards, not the page's body.
    let r = ctl.call(serde_json::json!({"method":"publish","channel":"chat:x","text":"marker"}));
    assert!(r["result"]["offset"].as_u64().is_some(), "{r}");
    match sub.read().unwrap() {
        Message::Text(t) => assert_eq!(t.as_str(), "marker"),
        other => panic!("unexpected {other:?}"),
    }
    eventually(&server, "the foreign connection counted", |c| {
        c.control_foreign == 1
    });
    stop(server);
}

/// A second server on an address already served is refused, naming the cause; so is a control
/// socket on the WebSocket address, and a second server on the same Unix control path.
#[test]
fn a_second_server_on_the_same_address_is_refused() {
    let port = free_port();
    let mut first = push_config(1, Limits::default());
    first.listen = SocketAddr::from(([127, 0, 0, 1], port));
    let path = std::env::temp_dir().join(format!("ringcast-e2e-{}-twice.sock", std::process::id()));
    first.control.listen = vec![format!("unix:{}", path.display())];
    let server = Server::start(first.clone()).expect("the first server starts");
    let mut second = first.clone();
    second.control.listen = Vec::new();
    let err = Server::start(second)
        .err()
        .expect("the second server is refused");
    assert!(
        err.contains("another process is already listening"),
        "{err}"
    );
    let mut same_path = first.clone();
    same_path.listen = "127.0.0.1:0".parse().unwrap();
    let err = Server::start(same_path)
        .err()
        .expect("the same control path is refused");
    assert!(err.contains("another server is listening"), "{err}");
    let mut overlap = config(1, Limits::default());
    let other = free_port();
    overlap.listen = SocketAddr::from(([127, 0, 0, 1], other));
    overlap.control.listen = vec![format!("tcp:127.0.0.1:{other}")];
    let err = Server::start(overlap)
        .err()
        .expect("control on the WebSocket address is refused");
    assert!(err.contains("is the WebSocket address"), "{err}");
    // The first server is undisturbed.
    neighbour_still_served(server.local_addr(), "chat:still");
    stop(server);
}

/// A noreply flood through small cross-shard rings, while another backend publishes with
/// replies: every request gets its answer (an offset, or `overloaded`), and both connections
/// answer a new request afterwards.
#[test]
fn replies_survive_a_cross_shard_flood() {
    let limits = Limits {
        xshard_ring_capacity: 16,
        xshard_overflow_max: 16,
        ..Limits::default()
    };
    let (server, path) = control_server_with(2, "flood", limits);
    let mut subs: Vec<Ws> = (0..50)
        .map(|_| connect(server.local_addr(), "/ws?channel=flood&format=raw"))
        .collect();
    let mut a = Ctl::connect(&path);
    let mut b = Ctl::connect(&path);
    await_presence(&mut a, "flood", subs.len());
    let flood = std::thread::spawn({
        let mut writer = a.writer.try_clone().unwrap();
        move || {
            let line =
                b"{\"method\":\"publish\",\"channel\":\"flood\",\"text\":\"f\",\"noreply\":true}\n";
            let mut batch = Vec::new();
            for _ in 0..500 {
                batch.extend_from_slice(line);
            }
            for _ in 0..100 {
                writer.write_all(&batch).unwrap();
            }
        }
    });
    let mut answered = 0;
    for i in 0..200 {
        let r = b.call(serde_json::json!({"id":i,"method":"publish","channel":"flood","text":"b"}));
        assert_eq!(r["id"], i);
        assert!(
            r["result"]["offset"].is_u64() || r["error"]["code"] == "overloaded",
            "{r}"
        );
        answered += 1;
    }
    assert_eq!(answered, 200);
    flood.join().unwrap();
    assert_eq!(
        a.call(serde_json::json!({"id":"a","method":"info"}))["id"],
        "a"
    );
    assert_eq!(
        b.call(serde_json::json!({"id":"b","method":"info"}))["id"],
        "b"
    );
    drop(subs.drain(..));
    stop(server);
}

/// A backend that pipelines requests and never reads its replies is closed with a last line
/// saying why, counted as a control overload, not as a WebSocket slow consumer.
#[test]
fn a_backend_that_never_reads_its_replies_is_told_why() {
    let (server, path) = control_server_with(1, "unread", Limits::default());
    let s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let mut writer = s.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        let line = b"{\"method\":\"publish\",\"channel\":\"nobody\",\"text\":\"x\"}\n";
        let batch: Vec<u8> = line
            .iter()
            .copied()
            .cycle()
            .take(line.len() * 1000)
            .collect();
        // Stops when the server closes the connection (EPIPE), bounded anyway.
        for _ in 0..1000 {
            if writer.write_all(&batch).is_err() {
                return;
            }
        }
    });
    eventually(&server, "the overload counted", |c| {
        c.control_overloads >= 1
    });
    let mut reader = std::io::BufReader::new(s);
    reader
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut last = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => last = line.clone(),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read failed: {e}"),
        }
    }
    let last: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(last["error"]["code"], "limit_exceeded", "{last}");
    flood.join().unwrap();
    let c = server.counters();
    assert_eq!(c.slow_consumers, 0);
    stop(server);
}

/// Silent connections to a token-protected TCP control socket do not lock the backend out.
#[test]
fn silent_unauthenticated_crowds_do_not_lock_out_the_backend() {
    // 200 idle sockets, as in the attack: more than every default control limit.
    let (server, control) = tcp_control_server(Limits::default(), Some("s3cret"));
    let crowd: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(control).unwrap())
        .collect();
    eventually(&server, "the crowd accepted", |c| {
        c.control_conns + c.control_refusals >= 200
    });
    let mut backend = TcpCtl::connect(control);
    let r = backend.call(serde_json::json!({"method":"auth","token":"s3cret"}));
    assert_eq!(r["result"], serde_json::json!({}), "{r}");
    let r = backend.call(serde_json::json!({"id":1,"method":"info"}));
    assert_eq!(r["id"], 1);
    assert!(server.counters().control_unauthed_evictions > 0);
    drop(crowd);
    stop(server);
}

/// Pings whose pongs are never read back the connection's queue up; from then on the pending
/// pong is replaced by the latest one: memory stays bounded and nobody is closed for it.
#[test]
fn a_pong_flood_is_bounded_by_the_connection_queue() {
    let limits = Limits {
        client_messages_per_s: 0,
        outbound_bytes_max: 64 * 1024,
        ..Limits::default()
    };
    let server = Server::start(push_config(1, limits)).unwrap();
    let mut s = raw_upgrade(server.local_addr(), "/ws");
    let ping = encode_client(OpCode::Ping, true, &[7u8; 125], [1, 2, 3, 4]);
    let batch: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 1000)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.counters().pongs_conflated == 0 {
        assert!(Instant::now() < deadline, "no pong was ever conflated");
        s.write_all(&batch).unwrap();
    }
    let c = server.counters();
    assert_eq!(c.slow_consumers, 0);
    assert_eq!(c.open, 1, "the flooding client is still open: {c:?}");
    stop(server);
}
