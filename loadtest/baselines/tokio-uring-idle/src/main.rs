//! Baseline for the idle-memory comparison: the natural tokio-uring 0.5 WebSocket server. Each
//! connection is a task that owns a 4 KiB `Vec` and keeps one read in flight with it: with
//! completion-based I/O the kernel owns the buffer until the read completes, so an idle
//! connection pins its buffer. (ringcast instead uses multishot receive into a provided-buffer
//! ring shared by all connections, which tokio-uring 0.5 does not offer.) Received frames are
//! discarded; a close frame or end of stream ends the connection.
//!
//! Usage: tokio-uring-idle-baseline 127.0.0.1:PORT   (port 0 picks one; the ready line says which)

use std::net::SocketAddr;

use base64::Engine;
use tokio_uring::net::{TcpListener, TcpStream};

const READ_BUFFER_BYTES: usize = 4096;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn main() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".to_string())
        .parse()
        .expect("address like 127.0.0.1:9002");
    tokio_uring::start(async move {
        let listener = TcpListener::bind(addr).expect("bind");
        let local = listener.local_addr().expect("local addr");
        println!("tokio-uring-idle ready listen={local} pid={}", std::process::id());
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept: {e}");
                    continue;
                }
            };
            tokio_uring::spawn(async move {
                if let Err(e) = connection(stream).await {
                    eprintln!("connection: {e}");
                }
            });
        }
    });
}

/// The `Sec-WebSocket-Key` header of a complete request head, if present.
fn websocket_key(head: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| value.trim().to_string())
    })
}

async fn connection(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(READ_BUFFER_BYTES);
    // Handshake: read until the end of the request head (it must fit the buffer).
    let head_end = loop {
        let (res, b) = stream.read(buf).await;
        buf = b;
        if res? == 0 {
            return Ok(());
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() == buf.capacity() {
            let (res, _) = stream.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n".to_vec()).await;
            return res;
        }
    };
    let Some(key) = websocket_key(&buf[..head_end]) else {
        let (res, _) = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()).await;
        return res;
    };
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    let (res, _) = stream.write_all(response.into_bytes()).await;
    res?;
    // Frames: keep one read in flight with the connection's own 4 KiB buffer; discard data.
    loop {
        buf.clear();
        let (res, b) = stream.read(buf).await;
        buf = b;
        let n = res?;
        if n == 0 {
            return Ok(());
        }
        // A close frame (opcode 0x8) at the start of a read ends the connection; a crude check
        // is enough for a baseline that only holds idle connections.
        if buf[0] & 0x0f == 0x8 {
            return Ok(());
        }
    }
}
