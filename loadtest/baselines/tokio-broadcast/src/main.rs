//! Baseline for the fan-out comparison: what a Rust developer would write first. A current-thread
//! tokio runtime, tokio-tungstenite, and one `tokio::sync::broadcast` channel. Every connection is
//! a subscriber; every text or binary message a client sends goes to every other connection.
//! A receiver that lags more than the channel's capacity skips ahead (the skipped messages are
//! counted and lost for that client), as `broadcast` defines.
//!
//! Usage: tokio-broadcast-baseline 127.0.0.1:PORT   (port 0 picks one; the ready line says which)

use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

/// Messages a receiver may fall behind before it skips ahead.
const CAPACITY: usize = 4096;

static LAGGED: AtomicU64 = AtomicU64::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".to_string());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(serve(addr));
}

async fn serve(addr: String) {
    let listener = TcpListener::bind(&addr).await.expect("bind");
    let local = listener.local_addr().expect("local addr");
    println!("tokio-broadcast ready listen={local} pid={}", std::process::id());
    let (tx, _) = broadcast::channel::<(u64, Message)>(CAPACITY);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, tx).await {
                eprintln!("connection: {e}");
            }
        });
    }
}

async fn connection(stream: TcpStream, tx: broadcast::Sender<(u64, Message)>) -> Result<(), Box<dyn std::error::Error>> {
    stream.set_nodelay(true)?;
    let ws = tokio_tungstenite::accept_async(stream).await?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut source) = ws.split();
    let mut rx = tx.subscribe();
    // Outbound: forward every broadcast message that another client sent.
    let writer = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok((from, msg)) if from != id => {
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let total = LAGGED.fetch_add(n, Ordering::Relaxed) + n;
                    eprintln!("client {id} lagged, skipped {n} (total {total})");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    // Inbound: broadcast data messages; tungstenite answers pings itself. However the reader
    // ends (close, end of stream, error), the writer ends with it so the socket is freed.
    let result = async {
        while let Some(msg) = source.next().await {
            match msg? {
                m @ (Message::Text(_) | Message::Binary(_)) => {
                    let _ = tx.send((id, m));
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        Ok::<(), tokio_tungstenite::tungstenite::Error>(())
    }
    .await;
    writer.abort();
    result.map_err(Into::into)
}
