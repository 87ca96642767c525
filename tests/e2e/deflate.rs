//! permessage-deflate over real sockets (RFC 7692): the 101 names the extension, a published
//! message reaches a deflate subscriber as the owner's compressed frame, a compressed command is
//! inflated and answered, and a client without the extension keeps getting plain frames.

use super::*;
use ringcast::proto::deflate::{self, Compressor, Inflater};

/// Upgrades with `extensions` as the offer; returns the socket and the 101's head.
fn upgrade_offering(addr: SocketAddr, path: &str, extensions: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: {extensions}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed during handshake");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (s, head)
}

/// The next server frame: its first header byte and its payload.
fn frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 2];
    s.read_exact(&mut header).unwrap();
    let len = match header[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    (header[0], payload)
}

/// The next text frame that is a JSON object with this `op` (plain or compressed).
fn op(s: &mut TcpStream, want: &str) -> (u8, serde_json::Value) {
    loop {
        let (b0, payload) = frame(s);
        let text = if b0 & 0x40 != 0 {
            let mut out = Vec::new();
            Inflater::default()
                .inflate(&payload, 1 << 20, &mut out)
                .expect("the server's compressed frame inflates");
            out
        } else {
            payload
        };
        if b0 & 0x0f != 1 {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        if v["op"] == want {
            return (b0, v);
        }
    }
}

#[test]
fn a_published_message_reaches_a_deflate_subscriber_compressed_once() {
    let mut c = push_config(2, Limits::default());
    c.deflate = true;
    let server = Server::start(c).unwrap();
    let addr = server.local_addr();
    let offer = "permessage-deflate; client_max_window_bits";
    let mut zipped: Vec<TcpStream> = (0..3)
        .map(|_| {
            let (s, head) = upgrade_offering(addr, "/ws?channel=chat:z", offer);
            assert!(
                head.contains(&format!(
                    "Sec-WebSocket-Extensions: {}\r\n",
                    deflate::RESPONSE
                )),
                "{head}"
            );
            s
        })
        .collect();
    let (mut plain, head) = upgrade_offering(addr, "/ws?channel=chat:z", "x-unknown");
    assert!(!head.contains("Extensions"), "{head}");
    for s in zipped.iter_mut().chain([&mut plain]) {
        op(s, "subscribed");
    }
    // A compressed command (RSV1 on a masked client frame): inflated, then answered.
    let publish = serde_json::json!({
        "op": "publish", "channel": "chat:z", "id": 1,
        "data": {"text": "compressed once ".repeat(40)},
    });
    let mut z = Vec::new();
    Compressor::default().compress(publish.to_string().as_bytes(), &mut z);
    let mut command = encode_client(OpCode::Text, true, &z, [9, 8, 7, 6]);
    command[0] |= 0x40;
    zipped[0].write_all(&command).unwrap();
    assert_eq!(op(&mut zipped[0], "published").1["id"], 1);

    let (b0, want) = op(&mut plain, "message");
    assert_eq!(b0, 0x81, "plain frames for a client without the extension");
    assert_eq!(want["data"], publish["data"]);
    for s in &mut zipped {
        let (b0, got) = op(s, "message");
        assert_eq!(b0, 0xc1, "FIN, RSV1, text");
        assert_eq!(got, want);
    }
    // Once at the owner per format (raw has no subscriber but is compressed too), not once per
    // subscriber. Counters are snapshots: wait for the one after the deliveries.
    eventually(&server, "the counters", |c| c.messages_inflated == 1);
    let c = server.counters();
    assert_eq!(c.frames_compressed, 2);
    // Gone before the shutdown, which would otherwise wait for their close frames.
    drop(zipped);
    drop(plain);
    stop(server);
}
