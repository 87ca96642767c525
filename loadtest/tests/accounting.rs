//! The generator's own correctness, end to end: `ringcast-load fanout --pub-ws` against a tiny
//! in-test broadcast server that is correct, drops every 100th message, or sends every 50th
//! twice. The JSON report must show exactly that: nothing lost on the correct server, loss on
//! the dropping one, duplicates on the duplicating one — and a rate that "holds" only for the
//! correct server. The same server (with a minimal control socket) checks the accounting of
//! `chat` (each member gets exactly its group's messages), `slow` (the slow subscribers are
//! left out of the figures, and what they had queued is read at the end) and `connect --storm`
//! (the probe loses nothing while every other connection closes and reopens).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

#[derive(Clone, Copy)]
enum Fault {
    None,
    DropEvery(u64),
    DuplicateEvery(u64),
}

fn base64(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// Reads one masked client frame; returns (opcode, payload), or None at end of stream.
fn read_frame(r: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).ok()?;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b).ok()?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).ok()?;
        len = u64::from_be_bytes(b);
    }
    let mut mask = [0u8; 4];
    r.read_exact(&mut mask).ok()?;
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).ok()?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Some((h[0] & 0x0f, payload))
}

fn server_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | op];
    if payload.len() < 126 {
        f.push(payload.len() as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

type Clients = Arc<Mutex<Vec<(usize, String, TcpStream)>>>;

/// A minimal control socket: newline-delimited JSON `publish` requests; the `text` goes to the
/// WebSocket clients subscribed (by URL) to `channel`. Returns the socket path.
fn spawn_control(clients: Clients, name: &str) -> String {
    let path =
        std::env::temp_dir().join(format!("ringcast-load-{name}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let clients = clients.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let req: serde_json::Value = serde_json::from_str(&line).unwrap();
                    assert_eq!(req["method"], "publish");
                    assert_eq!(req["noreply"], true);
                    let channel = req["channel"].as_str().unwrap();
                    let frame = server_frame(0x1, req["text"].as_str().unwrap().as_bytes());
                    for (_, ch, s) in clients.lock().unwrap().iter_mut() {
                        if ch == channel {
                            let _ = s.write_all(&frame);
                        }
                    }
                }
            });
        }
    });
    path.to_string_lossy().into_owned()
}

/// A thread-per-connection broadcast server: every data message a client sends goes to every
/// other client, with `fault` applied to the n-th message. Returns its port.
fn spawn_server(fault: Fault) -> u16 {
    spawn_server_with(fault, Arc::default())
}

fn spawn_server_with(fault: Fault, clients: Clients) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let counter = Arc::new(Mutex::new(0u64));
    thread::spawn(move || {
        for (id, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { break };
            let (clients, counter) = (clients.clone(), counter.clone());
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut key = String::new();
                let mut channel = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line.starts_with("POST ") {
                        serve_posts(line, reader, stream, clients);
                        return;
                    }
                    if let Some(target) = line.strip_prefix("GET ")
                        && let Some((_, query)) = target.split_once("channel=")
                    {
                        channel = query.split(['&', ' ']).next().unwrap().to_string();
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("sec-websocket-key")
                    {
                        key = value.trim().to_string();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut sha = sha1_smol::Sha1::new();
                sha.update(key.as_bytes());
                sha.update(GUID.as_bytes());
                let accept = base64(&sha.digest().bytes());
                let mut w = stream.try_clone().unwrap();
                write!(
                    w,
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                )
                .unwrap();
                clients.lock().unwrap().push((id, channel, w));
                while let Some((op, payload)) = read_frame(&mut reader) {
                    if op == 0x8 {
                        let _ = stream
                            .try_clone()
                            .unwrap()
                            .write_all(&server_frame(0x8, &payload));
                        break;
                    }
                    let n = {
                        let mut c = counter.lock().unwrap();
                        *c += 1;
                        *c
                    };
                    let copies = match fault {
                        Fault::DropEvery(k) if n % k == 0 => 0,
                        Fault::DuplicateEvery(k) if n % k == 0 => 2,
                        _ => 1,
                    };
                    let frame = server_frame(0x1, &payload);
                    for (other, _, s) in clients.lock().unwrap().iter_mut() {
                        if *other != id {
                            for _ in 0..copies {
                                let _ = s.write_all(&frame);
                            }
                        }
                    }
                }
                clients.lock().unwrap().retain(|(other, _, _)| *other != id);
                let _ = stream.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    port
}

/// Serves HTTP/1.1 `POST /publish` requests on a keep-alive connection, starting with the
/// request line already read: each body goes to every WebSocket client as a text frame, and
/// each request is answered `204 No Content` — or, with `?fail_every=K` in the request target,
/// every K-th with a chunked `503` (the body is still broadcast).
fn serve_posts(
    mut request_line: String,
    mut reader: BufReader<TcpStream>,
    mut stream: TcpStream,
    clients: Clients,
) {
    let mut served = 0u64;
    loop {
        assert!(
            request_line.starts_with("POST /publish"),
            "{request_line:?}"
        );
        let fail_every: Option<u64> = request_line
            .split_once("fail_every=")
            .map(|(_, k)| k.split(' ').next().unwrap().parse().unwrap());
        let mut length = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = Some(value.trim().parse::<usize>().unwrap());
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; length.expect("a POST with Content-Length")];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let frame = server_frame(0x1, &body);
        for (_, _, s) in clients.lock().unwrap().iter_mut() {
            let _ = s.write_all(&frame);
        }
        served += 1;
        let response: &[u8] = if fail_every.is_some_and(|k| served.is_multiple_of(k)) {
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\nbusy\r\n0\r\n\r\n"
        } else {
            b"HTTP/1.1 204 No Content\r\nServer: test\r\n\r\n"
        };
        if stream.write_all(response).is_err() {
            return;
        }
        request_line.clear();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
    }
}

fn run_fanout(fault: Fault, name: &str) -> serde_json::Value {
    let port = spawn_server(fault);
    let json =
        std::env::temp_dir().join(format!("ringcast-load-{name}-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast-load"))
        .args([
            "fanout",
            "--url",
            &format!("ws://127.0.0.1:{port}/ws"),
            "--pub-ws",
        ])
        .args([
            "-n",
            "20",
            "--rate",
            "200",
            "--duration",
            "2",
            "--drain",
            "1",
            "--quiet",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ringcast-load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).unwrap();
    let _ = std::fs::remove_file(&json);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["rates"][0].clone()
}

#[test]
fn correct_server_loses_nothing() {
    let r = run_fanout(Fault::None, "none");
    assert_eq!(r["published"], 400);
    assert_eq!(r["delivered"], 400 * 20);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["duplicated"], 0);
    assert_eq!(r["held"], true);
}

#[test]
fn http_publisher_loses_nothing() {
    let port = spawn_server(Fault::None);
    let r = run_load(
        "http",
        &[
            "fanout",
            "--url",
            &format!("ws://127.0.0.1:{port}/ws"),
            "--pub-http",
            &format!("http://127.0.0.1:{port}/publish"),
            "-n",
            "20",
            "--rate",
            "200",
            "--duration",
            "2",
            "--drain",
            "1",
        ],
    );
    assert_eq!(r["publisher"], "http");
    let rate = &r["rates"][0];
    assert_eq!(rate["published"], 400);
    assert_eq!(rate["delivered"], 400 * 20);
    assert_eq!(rate["lost"], 0);
    assert_eq!(rate["duplicated"], 0);
    assert_eq!(rate["publish_errors"], 0);
    assert_eq!(rate["held"], true);
    let replies = &r["publisher_replies"];
    assert_eq!(replies["errors"], 0);
    assert!(replies["closed"].is_null(), "{replies}");
    // The warm-up's publishes and the 400, every one answered.
    let requests = replies["requests"].as_u64().unwrap();
    assert!(requests >= 401, "{replies}");
    assert_eq!(
        replies["responses"].as_u64().unwrap() + replies["unanswered"].as_u64().unwrap(),
        requests
    );
}

#[test]
fn http_error_statuses_are_publish_errors() {
    let port = spawn_server(Fault::None);
    let r = run_load(
        "http-errors",
        &[
            "fanout",
            "--url",
            &format!("ws://127.0.0.1:{port}/ws"),
            "--pub-http",
            &format!("http://127.0.0.1:{port}/publish?fail_every=100"),
            "-n",
            "5",
            "--rate",
            "200",
            "--duration",
            "1",
            "--drain",
            "1",
        ],
    );
    let rate = &r["rates"][0];
    // Every publish was still delivered; every 100th was answered 503 (warm-up included).
    assert_eq!(rate["lost"], 0);
    assert_eq!(rate["delivered"], 200 * 5);
    let errors = rate["publish_errors"].as_u64().unwrap();
    assert!((1..=3).contains(&errors), "{rate}");
    assert_eq!(rate["held"], false);
    let replies = &r["publisher_replies"];
    assert_eq!(
        replies["first_error"], "HTTP/1.1 503 Service Unavailable",
        "{replies}"
    );
    assert!(replies["closed"].is_null(), "{replies}");
}

#[test]
fn pub_http_conflicts_with_the_other_publishers() {
    for other in [&["--pub-ws"][..], &["--control", "unix:/nonexistent"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_ringcast-load"))
            .args(["fanout", "--url", "ws://127.0.0.1:9/ws"])
            .args(["--pub-http", "http://127.0.0.1:9/publish"])
            .args(other)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot be used with"), "{err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast-load"))
        .args(["fanout", "--url", "ws://127.0.0.1:9/ws"])
        .args(["--pub-http", "http://192.0.2.1:80/publish"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}

#[test]
fn dropped_frames_are_reported_lost() {
    let r = run_fanout(Fault::DropEvery(100), "drop");
    let lost = r["lost"].as_u64().unwrap();
    // Every 100th message the server saw (warm-up included) went to nobody: 4 or 5 of the 400
    // publishes, each missing at all 20 subscribers.
    assert!((4 * 20..=5 * 20).contains(&lost), "lost {lost}");
    assert_eq!(lost % 20, 0);
    assert_eq!(r["delivered"].as_u64().unwrap() + lost, 400 * 20);
    assert_eq!(r["duplicated"], 0);
    assert_eq!(r["held"], false);
}

#[test]
fn repeated_frames_are_reported_duplicated() {
    let r = run_fanout(Fault::DuplicateEvery(50), "dup");
    let dup = r["duplicated"].as_u64().unwrap();
    assert!((8 * 20..=9 * 20).contains(&dup), "duplicated {dup}");
    assert_eq!(r["lost"], 0);
    assert_eq!(r["delivered"], 400 * 20);
    assert_eq!(r["held"], false);
}

#[test]
fn control_publisher_spreads_over_channels() {
    let clients: Clients = Arc::default();
    let port = spawn_server_with(Fault::None, clients.clone());
    let sock = spawn_control(clients, "control");
    let json =
        std::env::temp_dir().join(format!("ringcast-load-control-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast-load"))
        .args([
            "fanout",
            "--url",
            &format!("ws://127.0.0.1:{port}/ws?channel=x&format=raw"),
        ])
        .args(["--control", &format!("unix:{sock}"), "--channels", "3"])
        .args([
            "-n",
            "30",
            "--rate",
            "300",
            "--duration",
            "1",
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&sock);
    assert!(
        out.status.success(),
        "ringcast-load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(v["channels"], serde_json::json!(["x0", "x1", "x2"]));
    let r = &v["rates"][0];
    assert_eq!(r["published"], 300);
    // Each publish reaches the 10 subscribers of its channel only.
    assert_eq!(r["delivered"], 300 * 10);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["duplicated"], 0);
    assert_eq!(r["foreign"], 0);
    assert_eq!(r["held"], true);
}

/// Runs `ringcast-load ARGS... --quiet --json FILE` and returns the JSON.
fn run_load(name: &str, args: &[&str]) -> serde_json::Value {
    let json =
        std::env::temp_dir().join(format!("ringcast-load-{name}-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast-load"))
        .args(args)
        .args(["--quiet", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ringcast-load {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    v
}

#[test]
fn chat_members_get_exactly_their_groups_messages() {
    let clients: Clients = Arc::default();
    let port = spawn_server_with(Fault::None, clients.clone());
    let sock = spawn_control(clients, "chat");
    let url = format!("ws://127.0.0.1:{port}/ws?format=raw");
    let control = format!("unix:{sock}");
    let v = run_load(
        "chat",
        &[
            "chat",
            "--url",
            &url,
            "--control",
            &control,
            "-n",
            "40",
            "--group",
            "4",
            "--rate",
            "200",
            "--duration",
            "1",
        ],
    );
    let _ = std::fs::remove_file(&sock);
    let channels = v["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 10);
    assert_eq!(channels[0], "chat:g0");
    assert_eq!(channels[9], "chat:g9");
    let r = &v["rates"][0];
    assert_eq!(r["published"], 200);
    assert_eq!(r["expected"], 200 * 4);
    assert_eq!(r["delivered"], 200 * 4);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["duplicated"], 0);
    assert_eq!(r["foreign"], 0);
    assert_eq!(r["held"], true);
}

#[test]
fn slow_subscribers_are_left_out_and_read_at_the_end() {
    let port = spawn_server(Fault::None);
    let url = format!("ws://127.0.0.1:{port}/ws");
    // 2 of 20 stop reading; 200 publishes of 64 bytes stay well within the socket buffers, so
    // the blocking in-test server never stalls on them and never closes them.
    let v = run_load(
        "slow",
        &[
            "slow",
            "--url",
            &url,
            "--pub-ws",
            "-n",
            "20",
            "--slow-fraction",
            "0.1",
            "--rate",
            "200",
            "--duration",
            "1",
            "--drain",
            "1",
            "--slow-read-s",
            "1",
        ],
    );
    let r = &v["rates"][0];
    assert_eq!(r["subscribers"], 18);
    assert_eq!(r["published"], 200);
    assert_eq!(r["delivered"], 200 * 18);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["duplicated"], 0);
    assert_eq!(r["held"], true);
    let slow = &v["slow"];
    assert_eq!(slow["selected"], 2);
    assert_eq!(slow["stopped_reading"], 2);
    assert_eq!(slow["endings"]["not closed by the server"], 2);
    // Each had every publish of the rate waiting for it.
    assert_eq!(slow["messages_read_at_end"]["min"], 200);
    assert_eq!(slow["messages_read_at_end"]["max"], 200);
    assert_eq!(v["params"]["slow_fraction"], 0.1);
}

#[test]
fn storm_probe_loses_nothing_while_connections_reopen() {
    let clients: Clients = Arc::default();
    let port = spawn_server_with(Fault::None, clients.clone());
    let sock = spawn_control(clients, "storm");
    let url = format!("ws://127.0.0.1:{port}/ws");
    let control = format!("unix:{sock}");
    let v = run_load(
        "storm",
        &[
            "connect",
            "--storm",
            "--url",
            &url,
            "--control",
            &control,
            "-n",
            "30",
            "--probe",
            "5",
            "--rate",
            "100",
            "--calm-s",
            "0.5",
        ],
    );
    let _ = std::fs::remove_file(&sock);
    let storm = &v["storm"];
    assert_eq!(storm["first_opened"], 30);
    assert_eq!(storm["reopened"], 30);
    assert_eq!(storm["reopen_failed"], 0);
    assert_eq!(storm["open_at_end"], 30);
    let probe = &v["probe"];
    assert_eq!(probe["subscribers"], 5);
    assert_eq!(probe["lost"], 0);
    assert_eq!(probe["duplicated"], 0);
    assert_eq!(probe["foreign"], 0);
    for period in ["before", "storm", "after"] {
        let p = &probe["periods"][period];
        // Every publish of a period reached every probe.
        assert_eq!(p["delivered"], p["expected"], "{period}");
    }
    // 0.5 s at 100/s.
    let before = probe["periods"]["before"]["published"].as_u64().unwrap();
    assert!((49..=51).contains(&before), "{before}");
}

/// What the fake history server below does at the seam of each recovery.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seam {
    /// Every message after `since`, once: what ringcast must do.
    Exact,
    /// The `since` message itself again before the missed ones.
    RepeatLast,
    /// The first missed message left out.
    SkipFirst,
    /// `"recovered":false`, nothing replayed.
    Refuse,
}

/// One channel with offsets from 1, epoch 1 and every message kept, and its subscribers (id,
/// raw format, socket).
#[derive(Default)]
struct Hub {
    payloads: Vec<String>,
    subscribers: Vec<(usize, bool, TcpStream)>,
}

const FAKE_CHANNEL: &str = "hist:fake";

fn envelope(offset: usize, payload: &str) -> Vec<u8> {
    server_frame(
        0x1,
        format!(
            "{{\"op\":\"message\",\"channel\":\"{FAKE_CHANNEL}\",\"offset\":{offset},\"data\":\"{payload}\"}}"
        )
        .as_bytes(),
    )
}

/// Subscribes a connection: the `subscribed` reply and, with `since`, the replay (with `seam`
/// applied), all under the hub's lock so no publish slips in between.
fn join(hub: &mut Hub, id: usize, raw: bool, mut w: TcpStream, since: Option<usize>, seam: Seam) {
    let last = hub.payloads.len();
    if !raw {
        let reply = |recovered: &str| {
            server_frame(
                0x1,
                format!(
                    "{{\"op\":\"subscribed\",\"channel\":\"{FAKE_CHANNEL}\",\"offset\":{last},\"epoch\":1{recovered}}}"
                )
                .as_bytes(),
            )
        };
        match since {
            None => {
                let _ = w.write_all(&reply(""));
            }
            Some(_) if seam == Seam::Refuse => {
                let _ = w.write_all(&reply(",\"recovered\":false"));
            }
            Some(s) => {
                let _ = w.write_all(&reply(",\"recovered\":true"));
                let from = match seam {
                    Seam::RepeatLast => s.max(1),
                    Seam::SkipFirst => s + 2,
                    Seam::Exact | Seam::Refuse => s + 1,
                };
                for offset in from..=last {
                    let _ = w.write_all(&envelope(offset, &hub.payloads[offset - 1]));
                }
            }
        }
    }
    hub.subscribers.push((id, raw, w));
}

/// A fake ringcast for `reconnect`: `/ws?channel=C[&format=raw][&since=O:E:C]` or a subscribe
/// command (`since` inside), JSON envelopes with offsets, and a control socket whose publishes
/// go to every subscriber. Returns the WebSocket port and the control socket's path.
fn spawn_history_server(seam: Seam, name: &str) -> (u16, String) {
    let hub: Arc<Mutex<Hub>> = Arc::default();
    let path =
        std::env::temp_dir().join(format!("ringcast-load-{name}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let control = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let publish_hub = hub.clone();
    thread::spawn(move || {
        for stream in control.incoming() {
            let Ok(stream) = stream else { break };
            let hub = publish_hub.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let req: serde_json::Value = serde_json::from_str(&line).unwrap();
                    if req["method"] != "publish" {
                        continue;
                    }
                    let text = req["text"].as_str().unwrap().to_string();
                    let mut hub = hub.lock().unwrap();
                    hub.payloads.push(text.clone());
                    let offset = hub.payloads.len();
                    let (raw_frame, json_frame) =
                        (server_frame(0x1, text.as_bytes()), envelope(offset, &text));
                    for (_, raw, s) in hub.subscribers.iter_mut() {
                        let _ = s.write_all(if *raw { &raw_frame } else { &json_frame });
                    }
                }
            });
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for (id, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { break };
            let hub = hub.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).unwrap_or(0) == 0 {
                    return;
                }
                let query = request
                    .split(' ')
                    .nth(1)
                    .and_then(|t| t.split_once('?'))
                    .map_or(String::new(), |(_, q)| q.to_string());
                let param = |key: &str| {
                    query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix(&format!("{key}=")[..]))
                        .map(str::to_string)
                };
                let raw = param("format").as_deref() == Some("raw");
                let since: Option<usize> =
                    param("since").map(|s| s.split(':').next().unwrap().parse().unwrap());
                let mut key = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("sec-websocket-key")
                    {
                        key = value.trim().to_string();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut sha = sha1_smol::Sha1::new();
                sha.update(key.as_bytes());
                sha.update(GUID.as_bytes());
                let accept = base64(&sha.digest().bytes());
                let mut w = stream.try_clone().unwrap();
                write!(
                    w,
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                )
                .unwrap();
                if !raw {
                    let welcome = format!("{{\"op\":\"welcome\",\"conn\":{id}}}");
                    let _ = w.write_all(&server_frame(0x1, welcome.as_bytes()));
                }
                if param("channel").is_some() {
                    join(&mut hub.lock().unwrap(), id, raw, w, since, seam);
                }
                while let Some((op, payload)) = read_frame(&mut reader) {
                    if op == 0x8 {
                        let _ = stream
                            .try_clone()
                            .unwrap()
                            .write_all(&server_frame(0x8, &payload));
                        break;
                    }
                    let cmd: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                    assert_eq!(cmd["op"], "subscribe", "{cmd}");
                    assert_eq!(cmd["channel"], FAKE_CHANNEL, "{cmd}");
                    let since = cmd["since"]["offset"].as_u64().map(|o| o as usize);
                    let w = stream.try_clone().unwrap();
                    join(&mut hub.lock().unwrap(), id, raw, w, since, seam);
                }
                hub.lock()
                    .unwrap()
                    .subscribers
                    .retain(|(other, _, _)| *other != id);
                let _ = stream.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, path.to_string_lossy().into_owned())
}

/// `reconnect` against the fake history server: 20 subscribers, 5 of them dropping every
/// 0.5 s for 150 ms (about 30 messages missed each time at 200/s) during a 2 s churn.
fn run_reconnect(seam: Seam, name: &str, resume: &str) -> serde_json::Value {
    let (port, sock) = spawn_history_server(seam, name);
    let v = run_load(
        name,
        &[
            "reconnect",
            "--url",
            &format!("ws://127.0.0.1:{port}/ws"),
            "--control",
            &format!("unix:{sock}"),
            "--channel",
            FAKE_CHANNEL,
            "--resume",
            resume,
            "-n",
            "20",
            "--reconnect-fraction",
            "0.25",
            "--reconnect-every-s",
            "0.5",
            "--offline-ms",
            "150",
            "--rate",
            "200",
            "--calm-s",
            "0.5",
            "--duration",
            "2",
            "--drain",
            "1",
        ],
    );
    let _ = std::fs::remove_file(&sock);
    assert_eq!(v["subscribers"]["stable"], 15, "{name}");
    assert_eq!(v["subscribers"]["reconnecting"], 5, "{name}");
    assert_eq!(v["accounting"]["stable"]["lost"], 0, "{name}");
    assert_eq!(v["accounting"]["stable"]["duplicated"], 0, "{name}");
    assert_eq!(v["reconnects"]["failures"], 0, "{name}");
    // 5 subscribers, a drop every 0.5 s of the 2 s churn, none that would come back after it.
    let reconnects = v["reconnects"]["reconnects"].as_u64().unwrap();
    assert!((15..=20).contains(&reconnects), "{name}: {reconnects}");
    v
}

#[test]
fn an_exact_recovery_loses_and_repeats_nothing() {
    for resume in ["url", "command"] {
        let name = format!("seam-exact-{resume}");
        let v = run_reconnect(Seam::Exact, &name, resume);
        let (a, r) = (&v["accounting"], &v["reconnects"]);
        assert_eq!(a["lost"], 0, "{resume}: {a}");
        assert_eq!(a["duplicated"], 0, "{resume}: {a}");
        assert_eq!(r["recovered_true"], r["reconnects"], "{resume}: {r}");
        assert_eq!(r["replayed"], r["to_replay"], "{resume}: {r}");
        assert!(r["replayed"].as_u64().unwrap() >= 15 * 20, "{resume}: {r}");
        assert_eq!(a["reconnecting"]["offset_seq_mismatch"], 0, "{a}");
        assert_eq!(
            v["passed"].as_bool().unwrap(),
            v["failed_because"].as_array().unwrap().is_empty()
        );
    }
}

#[test]
fn a_repeated_message_at_the_seam_is_a_duplicate() {
    let v = run_reconnect(Seam::RepeatLast, "seam-repeat", "url");
    let (m, reconnects) = (
        &v["accounting"]["reconnecting"],
        &v["reconnects"]["reconnects"],
    );
    // One duplicate per recovery, by sequence number and by offset; nothing lost.
    assert_eq!(&m["duplicated"], reconnects, "{m}");
    assert_eq!(&m["duplicated_by_offset"], reconnects, "{m}");
    assert_eq!(m["lost"], 0, "{m}");
    assert_eq!(m["lost_by_offset"], 0, "{m}");
    assert_eq!(v["passed"], false);
}

#[test]
fn a_message_left_out_at_the_seam_is_lost() {
    let v = run_reconnect(Seam::SkipFirst, "seam-skip", "command");
    let (m, reconnects) = (
        &v["accounting"]["reconnecting"],
        &v["reconnects"]["reconnects"],
    );
    assert_eq!(&m["lost"], reconnects, "{m}");
    assert_eq!(&m["lost_by_offset"], reconnects, "{m}");
    assert_eq!(m["duplicated"], 0, "{m}");
    assert_eq!(m["lost_announced"], 0, "{m}");
    assert_eq!(v["passed"], false);
}

#[test]
fn a_refused_recovery_is_announced_not_lost() {
    let v = run_reconnect(Seam::Refuse, "seam-refuse", "url");
    let (m, r) = (&v["accounting"]["reconnecting"], &v["reconnects"]);
    assert_eq!(r["recovered_true"], 0, "{r}");
    assert_eq!(r["recovered_false"], r["reconnects"], "{r}");
    assert_eq!(m["lost"], 0, "{m}");
    assert_eq!(m["duplicated"], 0, "{m}");
    // What the refusals said was gone is what the subscribers then missed.
    let announced = m["lost_announced"].as_u64().unwrap();
    assert!(announced >= 15 * 20, "{m}");
    assert_eq!(r["announced_missing_by_refusals"], announced, "{r}");
    assert_eq!(v["passed"], false);
}
