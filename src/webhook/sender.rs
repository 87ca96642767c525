//! The webhook sender: one thread per process, never a shard's loop. It takes events from the
//! queue, batches them per app (a batch is posted `batch_ms` after its first event, or at once
//! when it holds `batch_max`), and posts each batch with a bounded number of retries.
//!
//! Bounds: the queue (`pusher_webhook_queue_max` events, drops counted), a batch
//! (`pusher_webhook_batch_max` events), batches waiting per app ([`WAITING_MAX`]: the oldest
//! is dropped, counted), one request at a time with `pusher_webhook_timeout_ms` for connecting,
//! writing and reading, and an answer read up to [`ANSWER_BYTES_MAX`]. A failed attempt
//! (connection refused, timeout, no 2xx) is retried after 1, 2 and 4 s, then the batch is
//! dropped and counted; an app whose endpoint is down delays the others' posts by at most its
//! timeouts.

use super::body::{self, WebhookUrl};
use super::{Hook, WebhookStats};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Batches an app may have waiting to be (re)posted.
pub const WAITING_MAX: usize = 16;
/// Most bytes of an answer read (its head must fit).
pub const ANSWER_BYTES_MAX: usize = 64 * 1024;
/// Delays before the retries of a failed batch (what the server uses).
pub const RETRY_DELAYS_MS: [u64; 3] = [1000, 2000, 4000];

/// Where one app's webhooks go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The endpoint.
    pub url: WebhookUrl,
    /// The app's key (`X-Pusher-Key`).
    pub key: String,
    /// The app's secret (signs the body).
    pub secret: String,
    /// The event names it wants (`webhook_events`).
    pub events: Vec<String>,
}

/// The sender's settings.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// By app index; `None`: the app has no webhook.
    pub targets: Vec<Option<Target>>,
    /// Events per batch.
    pub batch_max: usize,
    /// How long a batch collects events after its first.
    pub batch_ms: u64,
    /// Bound of one request's connect, write and read.
    pub timeout_ms: u64,
    /// Delays before each retry of a failed batch; after the last, it is dropped.
    pub retry_delays_ms: Vec<u64>,
}

struct Batch {
    body: String,
    events: usize,
    attempts: usize,
    due: Instant,
}

#[derive(Default)]
struct AppQueue {
    open: Vec<Hook>,
    opened: Option<Instant>,
    waiting: VecDeque<Batch>,
}

/// The running sender.
pub struct WebhookSender {
    thread: JoinHandle<()>,
}

impl WebhookSender {
    /// Starts the thread; it ends when every handle is gone (after one last try of what is
    /// waiting).
    pub fn spawn(
        config: SenderConfig,
        rx: Receiver<(u16, Hook)>,
        stats: Arc<WebhookStats>,
    ) -> std::io::Result<WebhookSender> {
        let thread = std::thread::Builder::new()
            .name("ringcast-webhooks".to_string())
            .spawn(move || run(config, rx, stats))?;
        Ok(WebhookSender { thread })
    }

    /// Waits for the thread (after the shards, which hold the handles, have stopped).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn run(config: SenderConfig, rx: Receiver<(u16, Hook)>, stats: Arc<WebhookStats>) {
    let mut apps: Vec<AppQueue> = config.targets.iter().map(|_| AppQueue::default()).collect();
    let batch_for = Duration::from_millis(config.batch_ms);
    loop {
        let now = Instant::now();
        let next = apps
            .iter()
            .flat_map(|a| {
                let open = a.opened.map(|t| t + batch_for);
                let retry = a.waiting.front().map(|b| b.due);
                open.into_iter().chain(retry)
            })
            .min()
            .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now));
        let disconnected = match rx.recv_timeout(next) {
            Ok((app, hook)) => {
                take(&config, &mut apps, app, hook, &stats);
                // Whatever else is queued, without waiting.
                while let Ok((app, hook)) = rx.try_recv() {
                    take(&config, &mut apps, app, hook, &stats);
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        let now = Instant::now();
        for (i, app) in apps.iter_mut().enumerate() {
            let due = app.opened.is_some_and(|t| now >= t + batch_for);
            if !app.open.is_empty() && (due || disconnected) {
                close_batch(app, &stats);
            }
            let Some(target) = config.targets.get(i).and_then(Option::as_ref) else {
                app.waiting.clear();
                continue;
            };
            while app
                .waiting
                .front()
                .is_some_and(|b| disconnected || b.due <= now)
            {
                let Some(mut batch) = app.waiting.pop_front() else {
                    break;
                };
                let timeout = Duration::from_millis(config.timeout_ms);
                if post(target, &batch.body, timeout) {
                    WebhookStats::add(&stats.batches_sent, 1);
                    WebhookStats::add(&stats.events_sent, batch.events as u64);
                    continue;
                }
                WebhookStats::add(&stats.attempts_failed, 1);
                match config.retry_delays_ms.get(batch.attempts) {
                    Some(&delay) if !disconnected => {
                        batch.attempts += 1;
                        batch.due = Instant::now() + Duration::from_millis(delay);
                        app.waiting.push_front(batch);
                        break;
                    }
                    _ => WebhookStats::add(&stats.batches_dropped, 1),
                }
            }
        }
        if disconnected {
            return;
        }
    }
}

/// An event for app `app`, if the app has a webhook that wants it (a full batch is closed).
fn take(config: &SenderConfig, apps: &mut [AppQueue], app: u16, hook: Hook, stats: &WebhookStats) {
    let wanted = config
        .targets
        .get(usize::from(app))
        .and_then(Option::as_ref)
        .is_some_and(|t| t.events.iter().any(|e| e == hook.name()));
    let Some(queue) = apps.get_mut(usize::from(app)) else {
        return;
    };
    if !wanted {
        return;
    }
    if queue.open.is_empty() {
        queue.opened = Some(Instant::now());
    }
    queue.open.push(hook);
    if queue.open.len() >= config.batch_max {
        close_batch(queue, stats);
    }
}

/// Turns the open events into a batch waiting to be posted (the oldest waiting one goes when
/// there are `WAITING_MAX`).
fn close_batch(app: &mut AppQueue, stats: &WebhookStats) {
    let events = std::mem::take(&mut app.open);
    app.opened = None;
    if app.waiting.len() >= WAITING_MAX {
        app.waiting.pop_front();
        WebhookStats::add(&stats.batches_dropped, 1);
    }
    app.waiting.push_back(Batch {
        body: body::batch(now_ms(), &events),
        events: events.len(),
        attempts: 0,
        due: Instant::now(),
    });
}

/// One attempt: connect, write the request, read the answer's status; true for 2xx.
fn post(target: &Target, body_text: &str, timeout: Duration) -> bool {
    let request = body::request(&target.url, &target.key, &target.secret, body_text);
    let Ok(addrs) = (target.url.host.as_str(), target.url.port).to_socket_addrs() else {
        return false;
    };
    for addr in addrs {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
            continue;
        };
        let _ = stream.set_read_timeout(Some(timeout));
        let _ = stream.set_write_timeout(Some(timeout));
        if stream.write_all(&request).is_err() {
            return false;
        }
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        let deadline = Instant::now() + timeout;
        while answer.len() < ANSWER_BYTES_MAX && Instant::now() < deadline {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&chunk[..n]);
                    if body::status(&answer).is_some() {
                        break;
                    }
                }
            }
        }
        return matches!(body::status(&answer), Some(Ok(200..=299)));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-connection-at-a-time HTTP server answering the given statuses in turn; returns
    /// the requests it read (head and body).
    fn server(statuses: Vec<u16>) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for status in statuses {
                let (mut s, _) = listener.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .unwrap()
                            .parse()
                            .unwrap();
                        if rest.len() >= len {
                            seen.push(text);
                            break;
                        }
                    }
                }
                let _ = write!(s, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            }
            seen
        });
        (port, thread)
    }

    #[test]
    fn batches_are_posted_signed_and_retried_after_a_failure() {
        let (port, srv) = server(vec![500, 200, 200]);
        let target = Target {
            url: WebhookUrl::parse(&format!("http://127.0.0.1:{port}/hook")).unwrap(),
            key: "k".to_string(),
            secret: "s".to_string(),
            events: vec!["channel_occupied".to_string(), "member_added".to_string()],
        };
        let config = SenderConfig {
            targets: vec![None, Some(target)],
            batch_max: 2,
            batch_ms: 50,
            timeout_ms: 5000,
            retry_delays_ms: vec![10, 20, 40],
        };
        let (handle, rx, stats) = super::super::queue(100);
        let sender = WebhookSender::spawn(config, rx, stats).unwrap();
        let hook = |c: &str| Hook::Occupied {
            channel: Arc::from(c),
        };
        handle.send(1, hook("a"));
        handle.send(
            1,
            Hook::Vacated {
                channel: Arc::from("not wanted"),
            },
        );
        handle.send(0, hook("no webhook"));
        handle.send(1, hook("b"));
        handle.send(1, hook("c"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while handle.stats().batches_sent < 2 {
            assert!(Instant::now() < deadline, "{:?}", handle.stats());
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(handle);
        sender.join();
        let seen = srv.join().unwrap();
        assert_eq!(
            seen.len(),
            3,
            "one failed attempt, its retry, the second batch"
        );
        assert_eq!(seen[0], seen[1], "the retry is the same request");
        let bodies: Vec<serde_json::Value> = seen
            .iter()
            .map(|r| serde_json::from_str(r.split_once("\r\n\r\n").unwrap().1).unwrap())
            .collect();
        let channels = |v: &serde_json::Value| {
            v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["channel"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            channels(&bodies[1]),
            ["a", "b"],
            "batch_max events, in order"
        );
        assert_eq!(channels(&bodies[2]), ["c"]);
        for r in &seen {
            let (head, body) = r.split_once("\r\n\r\n").unwrap();
            let sig = crate::auth::pusher::sign(b"s", body.as_bytes());
            assert!(
                head.contains(&format!("X-Pusher-Signature: {sig}")),
                "{head}"
            );
            assert!(head.contains("X-Pusher-Key: k"));
        }
    }

    #[test]
    fn an_endpoint_that_stays_down_costs_the_batch_after_its_retries() {
        // Nothing listens on the port: every attempt fails at once.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = Target {
            url: WebhookUrl::parse(&format!("http://127.0.0.1:{port}/")).unwrap(),
            key: "k".to_string(),
            secret: "s".to_string(),
            events: vec!["channel_vacated".to_string()],
        };
        let config = SenderConfig {
            targets: vec![Some(target)],
            batch_max: 100,
            batch_ms: 10,
            timeout_ms: 1000,
            retry_delays_ms: vec![10, 20, 40],
        };
        let (handle, rx, stats) = super::super::queue(100);
        let sender = WebhookSender::spawn(config, rx, stats).unwrap();
        handle.send(
            0,
            Hook::Vacated {
                channel: Arc::from("x"),
            },
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while handle.stats().batches_dropped < 1 {
            assert!(Instant::now() < deadline, "{:?}", handle.stats());
            std::thread::sleep(Duration::from_millis(50));
        }
        let s = handle.stats();
        assert_eq!(s.attempts_failed, 4, "the first attempt and three retries");
        assert_eq!(s.batches_sent, 0);
        drop(handle);
        sender.join();
    }
}
