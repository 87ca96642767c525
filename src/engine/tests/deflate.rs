//! permessage-deflate on the engine (RFC 7692): negotiation in the 101, published messages
//! compressed once at the owner and shared by every deflate subscriber (live and replayed).

use super::*;
use crate::proto::deflate::{self, Inflater};

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

fn with_deflate() -> Config {
    let mut config = with_history(10);
    config.deflate = true;
    config
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Inflater::default()
        .inflate(payload, 1 << 20, &mut out)
        .unwrap();
    out
}

/// A JSON value long enough to be compressed (over `deflate_min_bytes`).
fn long_json() -> String {
    json!({"text": "ringcast ".repeat(60)}).to_string()
}

#[test]
fn the_101_answers_an_offer_only_when_deflate_is_on() {
    let mut c = Cluster::new(with_deflate(), 1);
    let (_, head) = Ws::open_with(&mut c, 0, "/ws", OFFER);
    assert!(
        head.contains(&format!(
            "\r\nSec-WebSocket-Extensions: {}",
            deflate::RESPONSE
        )),
        "{head}"
    );
    let (_, head) = Ws::open_with(&mut c, 0, "/ws", "");
    assert!(!head.contains("Extensions"), "{head}");
    // A malformed offer declines the extension, the handshake still succeeds (RFC 7692 §5).
    let bad = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=x\r\n";
    let (_, head) = Ws::open_with(&mut c, 0, "/ws", bad);
    assert!(!head.contains("Extensions"), "{head}");
    let mut c = Cluster::new(with_history(10), 1);
    let (_, head) = Ws::open_with(&mut c, 0, "/ws", OFFER);
    assert!(
        !head.contains("Extensions"),
        "deflate is off by default: {head}"
    );
}

#[test]
fn a_deflate_subscriber_gets_the_owners_compressed_frame() {
    let mut c = Cluster::new(with_deflate(), 2);
    let name = owned_by(0, 2, "h:z");
    let ctl = control(&mut c, 0);
    let subscribe = json!({"op":"subscribe","channel":name}).to_string();
    // On the other shard than the owner: the frames cross the ring as they were made.
    let (mut zipped, _) = Ws::open_with(&mut c, 1, "/ws", OFFER);
    let (mut zipped_raw, _) = Ws::open_with(&mut c, 1, "/ws?format=raw", OFFER);
    let mut plain = Ws::open(&mut c, 1, "/ws");
    for ws in [&zipped, &zipped_raw, &plain] {
        ws.send_text(&mut c, &subscribe);
    }
    c.settle();
    let epoch = zipped
        .texts(&mut c)
        .into_iter()
        .find(|m| m["op"] == "subscribed")
        .unwrap()["epoch"]
        .as_u64()
        .unwrap();
    zipped_raw.frames(&mut c);
    plain.frames(&mut c);
    let data = long_json();
    let value: Value = serde_json::from_str(&data).unwrap();
    let publish = json!({"method":"publish","channel":name,"data":value,"noreply":true});
    c.write(ctl, format!("{publish}\n").as_bytes());
    c.settle();

    let plain_frames = plain.frames_with_bits(&mut c);
    assert_eq!(plain_frames.len(), 1);
    assert_eq!(
        plain_frames[0].0, 0x81,
        "no RSV1 for a client without the extension"
    );
    let envelope = &plain_frames[0].1;
    let got = zipped.frames_with_bits(&mut c);
    assert_eq!(got.len(), 1);
    // FIN + RSV1 + text: RFC 7692 §6, the compressed bit on the message's frame.
    assert_eq!(got[0].0, 0xc1);
    assert!(got[0].1.len() < envelope.len() / 2, "{}", got[0].1.len());
    assert_eq!(&inflate(&got[0].1), envelope);
    let got = zipped_raw.frames_with_bits(&mut c);
    assert_eq!(got[0].0, 0xc1);
    assert_eq!(inflate(&got[0].1), data.as_bytes());
    // Once per format at the owner, whatever the number of subscribers.
    let total = c.total();
    assert_eq!(total.frames_compressed, 2);
    assert!(
        total.deflate_bytes_saved > 500,
        "{}",
        total.deflate_bytes_saved
    );

    // A short message goes plain to everyone (below deflate_min_bytes; RSV1 is per message).
    c.write(ctl, noreply_publishes(&name, ["hi".to_string()]).as_bytes());
    c.settle();
    let got = zipped.frames_with_bits(&mut c);
    assert_eq!(got[0].0, 0x81);
    assert_eq!(c.total().frames_compressed, 2);

    // History keeps the compressed frames: a recovering deflate client gets the same bytes.
    let (mut back, _) = Ws::open_with(&mut c, 1, "/ws", OFFER);
    let sub = json!({"op":"subscribe","channel":name,"since":{"offset":0,"epoch":epoch}});
    back.send_text(&mut c, &sub.to_string());
    c.settle();
    let replay: Vec<_> = back
        .frames_with_bits(&mut c)
        .into_iter()
        .filter(|f| f.0 == 0xc1)
        .collect();
    assert_eq!(replay.len(), 1, "the long message, replayed compressed");
    assert_eq!(&inflate(&replay[0].1), envelope);
}

/// A masked client frame with RSV1 around `text` compressed (RFC 7692 §7.2.1).
fn compressed_client_frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut z = Vec::new();
    deflate::Compressor::default().compress(payload, &mut z);
    let mut frame = encode_client(op, true, &z, MASK);
    frame[0] |= 0x40;
    frame
}

#[test]
fn compressed_client_messages_are_inflated_within_the_limit() {
    let mut config = with_deflate();
    config.limits.message_bytes_max = 4096;
    let mut c = Cluster::new(config, 1);
    // A command on /ws, compressed.
    let (mut ws, _) = Ws::open_with(&mut c, 0, "/ws", OFFER);
    ws.texts(&mut c);
    let ping = json!({"op":"ping","id":7}).to_string();
    c.write(
        ws.sock,
        &compressed_client_frame(OpCode::Text, ping.as_bytes()),
    );
    c.settle();
    let got = ws.texts(&mut c);
    assert_eq!(got, vec![json!({"op":"pong","id":7})]);
    assert_eq!(c.total().messages_inflated, 1);
    // On /echo: the message comes back, compressed again for a deflate client.
    let (mut echo, _) = Ws::open_with(&mut c, 0, "/echo", OFFER);
    let text = "echo ".repeat(500);
    c.write(
        echo.sock,
        &compressed_client_frame(OpCode::Text, text.as_bytes()),
    );
    c.settle();
    let got = echo.frames_with_bits(&mut c);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, 0xc1);
    assert_eq!(inflate(&got[0].1), text.as_bytes());
    let mut plain_echo = Ws::open(&mut c, 0, "/echo");
    plain_echo.send_text(&mut c, "x");
    c.settle();
    assert_eq!(
        plain_echo.frames_with_bits(&mut c),
        vec![(0x81, b"x".to_vec())]
    );
    // Inflated past message_bytes_max (a few bytes on the wire): 1009, counted.
    let (mut bomb, _) = Ws::open_with(&mut c, 0, "/ws", OFFER);
    bomb.texts(&mut c);
    let zeros = format!("\"{}\"", "0".repeat(5000));
    c.write(
        bomb.sock,
        &compressed_client_frame(OpCode::Text, zeros.as_bytes()),
    );
    c.settle();
    assert_eq!(
        close_code(&bomb.frames(&mut c)),
        Some(close::MESSAGE_TOO_BIG)
    );
    assert_eq!(c.total().inflate_too_big, 1);
    // Inflated text that is not UTF-8: 1007 (RFC 6455 §8.1 applies to the message).
    let (mut bad, _) = Ws::open_with(&mut c, 0, "/ws", OFFER);
    bad.texts(&mut c);
    c.write(
        bad.sock,
        &compressed_client_frame(OpCode::Text, &[0xff, 0xfe]),
    );
    c.settle();
    assert_eq!(
        close_code(&bad.frames(&mut c)),
        Some(close::INVALID_PAYLOAD)
    );
    // RSV1 from a client that did not negotiate the extension: 1002 (RFC 6455 §5.2).
    let mut plain = Ws::open(&mut c, 0, "/ws");
    plain.texts(&mut c);
    c.write(
        plain.sock,
        &compressed_client_frame(OpCode::Text, ping.as_bytes()),
    );
    c.settle();
    assert_eq!(
        close_code(&plain.frames(&mut c)),
        Some(close::PROTOCOL_ERROR)
    );
}

#[test]
fn a_client_that_limits_the_server_window_gets_only_what_fits_it() {
    let mut c = Cluster::new(with_deflate(), 1);
    let name = owned_by(0, 1, "h:w");
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9\r\n";
    let (mut narrow, head) = Ws::open_with(&mut c, 0, "/ws?format=raw", offer);
    // RFC 7692 §7.1.2.1: the accepted limit is echoed.
    assert!(head.ends_with("; server_max_window_bits=9"), "{head}");
    let (mut full, _) = Ws::open_with(&mut c, 0, "/ws?format=raw", OFFER);
    let subscribe = json!({"op":"subscribe","channel":name}).to_string();
    narrow.send_text(&mut c, &subscribe);
    full.send_text(&mut c, &subscribe);
    c.settle();
    narrow.frames(&mut c);
    full.frames(&mut c);
    let ctl = control(&mut c, 0);
    // 300 bytes fit a 512-byte window: compressed for both; 600 do not: plain for the narrow one.
    let texts = ["x".repeat(300), "y".repeat(600)];
    c.write(ctl, noreply_publishes(&name, texts.clone()).as_bytes());
    c.settle();
    let got = narrow.frames_with_bits(&mut c);
    assert_eq!(got[0].0, 0xc1);
    assert_eq!(inflate(&got[0].1), texts[0].as_bytes());
    assert_eq!(got[1], (0x81, texts[1].clone().into_bytes()));
    let got = full.frames_with_bits(&mut c);
    assert_eq!((got[0].0, got[1].0), (0xc1, 0xc1));
    // /echo compresses a long answer with a 512-byte window for such a client.
    let (mut echo, _) = Ws::open_with(&mut c, 0, "/echo", offer);
    let text = "0123456789abcdef".repeat(200);
    echo.send_text(&mut c, &text);
    c.settle();
    let got = echo.frames_with_bits(&mut c);
    assert_eq!(got[0].0, 0xc1);
    assert_eq!(inflate(&got[0].1), text.as_bytes());
}
