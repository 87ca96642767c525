//! Sans-IO parts of a webhook: the batch's JSON, the request bytes, the webhook URL and the
//! answer's status. Time is an argument.

use super::Hook;

/// A webhook endpoint: `http://HOST[:PORT][/PATH]` (plain HTTP: terminate TLS in front of the
/// backend, or post on a private network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// Host name or address.
    pub host: String,
    /// Port (80 when not given).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl WebhookUrl {
    /// Parses a webhook URL; the error says what is wrong.
    pub fn parse(url: &str) -> Result<WebhookUrl, String> {
        if url.starts_with("https://") {
            return Err(
                "https webhooks are not supported: post over http to a local TLS \
                        proxy or on a private network"
                    .to_string(),
            );
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: a webhook URL starts with http://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("{url}: the port is not a number"))?;
                (host, port)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let bad = |c: char| c.is_control() || c.is_whitespace();
        if host.is_empty() || host.chars().any(bad) || path.chars().any(bad) || port == 0 {
            return Err(format!("{url}: not a usable http://HOST[:PORT]/PATH"));
        }
        if url.len() > 2048 {
            return Err("a webhook URL is at most 2048 bytes".to_string());
        }
        Ok(WebhookUrl {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

fn json(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// One event's JSON object.
pub fn event_json(hook: &Hook) -> String {
    let name = hook.name();
    match hook {
        Hook::Occupied { channel } | Hook::Vacated { channel } => {
            format!("{{\"name\":\"{name}\",\"channel\":{}}}", json(channel))
        }
        Hook::MemberAdded { channel, user } | Hook::MemberRemoved { channel, user } => format!(
            "{{\"name\":\"{name}\",\"channel\":{},\"user_id\":{}}}",
            json(channel),
            json(user)
        ),
        Hook::ClientEvent {
            channel,
            event,
            data,
            socket_id,
            user,
        } => {
            let user = user
                .as_ref()
                .map_or(String::new(), |u| format!(",\"user_id\":{}", json(u)));
            format!(
                "{{\"name\":\"{name}\",\"channel\":{},\"event\":{},\"data\":{},\"socket_id\":{}{user}}}",
                json(channel),
                json(event),
                json(data),
                json(socket_id)
            )
        }
    }
}

/// The batch body: `{"time_ms":T,"events":[...]}`.
pub fn batch(time_ms: u64, events: &[Hook]) -> String {
    let mut out = format!("{{\"time_ms\":{time_ms},\"events\":[");
    for (i, hook) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&event_json(hook));
    }
    out.push_str("]}");
    out
}

/// The whole `POST` request for `body`, signed with the app's secret.
pub fn request(url: &WebhookUrl, key: &str, secret: &str, body: &str) -> Vec<u8> {
    let signature = crate::auth::pusher::sign(secret.as_bytes(), body.as_bytes());
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    let mut out = format!(
        "POST {} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: ringcast\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nX-Pusher-Key: {key}\r\n\
         X-Pusher-Signature: {signature}\r\nConnection: close\r\n\r\n",
        url.path,
        url.port,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The status of an HTTP response whose head is complete in `bytes`; `None` while incomplete;
/// `Some(Err)` for bytes that are no HTTP response.
pub fn status(bytes: &[u8]) -> Option<Result<u16, ()>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => Some(response.code.ok_or(())),
        Ok(httparse::Status::Partial) => None,
        // Too many headers is still an answer: only its status matters.
        Err(httparse::Error::TooManyHeaders) => response.code.map(Ok),
        Err(_) => Some(Err(())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn urls_parse_and_bad_ones_are_named() {
        let u = WebhookUrl::parse("http://127.0.0.1:8000/pusher/webhook?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8000, "/pusher/webhook?x=1")
        );
        let u = WebhookUrl::parse("http://hooks.example.com").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("hooks.example.com", 80, "/")
        );
        let u = WebhookUrl::parse("http://[::1]:81/h").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 81));
        for bad in [
            "https://a/b",
            "ftp://a",
            "http://",
            "http://a:x/",
            "http://a:0/",
            "http://a b/",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn batches_are_pushers_json_and_signed_over_the_body() {
        let events = vec![
            Hook::Occupied {
                channel: Arc::from("presence-a"),
            },
            Hook::MemberAdded {
                channel: Arc::from("presence-a"),
                user: Arc::from("7"),
            },
            Hook::ClientEvent {
                channel: Arc::from("presence-a"),
                event: Arc::from("client-typing"),
                data: Arc::from("{\"t\":\"\\\"q\\\"\"}"),
                socket_id: Arc::from("1.2"),
                user: Some(Arc::from("7")),
            },
        ];
        let body = batch(1_327_078_148_132, &events);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["time_ms"], 1_327_078_148_132u64);
        assert_eq!(
            v["events"][0],
            serde_json::json!({"name":"channel_occupied","channel":"presence-a"})
        );
        assert_eq!(v["events"][1]["user_id"], "7");
        assert_eq!(
            v["events"][2]["data"], "{\"t\":\"\\\"q\\\"\"}",
            "data stays the client's string"
        );
        assert_eq!(v["events"][2]["socket_id"], "1.2");
        let url = WebhookUrl::parse("http://127.0.0.1:9/h").unwrap();
        let req = String::from_utf8(request(&url, "key1", "secret1", &body)).unwrap();
        let (head, sent) = req.split_once("\r\n\r\n").unwrap();
        assert_eq!(sent, body);
        assert!(head.starts_with("POST /h HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nX-Pusher-Key: key1\r\n"));
        let want = crate::auth::pusher::sign(b"secret1", body.as_bytes());
        assert!(
            head.contains(&format!("\r\nX-Pusher-Signature: {want}\r\n")),
            "{head}"
        );
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
    }

    #[test]
    fn statuses_are_read_from_complete_heads_only() {
        assert_eq!(
            status(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            Some(Ok(200))
        );
        assert_eq!(status(b"HTTP/1.1 503 Busy\r\n\r\n"), Some(Ok(503)));
        assert_eq!(status(b"HTTP/1.1 200 OK\r\nContent-"), None);
        assert_eq!(status(b"SMTP ready\r\n\r\n"), Some(Err(())));
    }
}
