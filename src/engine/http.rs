//! HTTP connections on the shard (`[http] listen`): Prometheus `/metrics`, `/healthz`,
//! `/readyz`, the dashboard at `/`, and the HTTP API (`/api/METHOD`), which runs the control
//! socket's own executor — the same methods, bodies, results and error codes (docs/http.md).
//!
//! An HTTP connection is a control connection (`Endpoint::Control`) whose `ControlState` holds
//! an HTTP receive buffer: requests take places in the same queue of pending replies, so
//! pipelined requests are answered in order even when their parts come from other shards, and
//! publishing ones are paused by backpressure like any publishing backend.
//!
//! Must not: trust a header value in a response (responses carry only fixed header values), or
//! let the receive buffer grow past what `http::parse` needs to answer
//! (`head_bytes_max + body_bytes_max`).

use super::Engine;
use crate::control::{self as ctl, Method};
use crate::http::{self, HttpLimits, Request};
use crate::wire::ErrorCode;
use std::fmt::Write;

/// The dashboard page (self-contained: no CDN, no build step).
const DASHBOARD: &str = include_str!("../../assets/dashboard.html");

/// Control methods the HTTP API serves (`events` and `auth` belong to a socket that stays open).
const API_METHODS: &[&str] = &[
    "publish",
    "broadcast",
    "send",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "bind_user",
    "unbind_user",
    "send_user",
    "disconnect_user",
    "user_conns",
    "online",
    "users",
    "presence",
    "presence_stats",
    "channels",
    "history",
    "stats",
    "info",
    "drain",
    "reload",
];

/// API methods that only read (also served to `GET`, with their fields from the query string,
/// and without the token).
const READ_METHODS: &[&str] = &[
    "user_conns",
    "online",
    "users",
    "presence",
    "presence_stats",
    "channels",
    "history",
    "stats",
    "info",
];

/// The HTTP status of a control error code.
pub fn status_of(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::UnknownMethod | ErrorCode::NoSuchConn => 404,
        ErrorCode::Unauthorized => 401,
        ErrorCode::Forbidden => 403,
        ErrorCode::LimitExceeded => 429,
        ErrorCode::Overloaded => 503,
        ErrorCode::LineTooLong => 413,
        _ => 400,
    }
}

/// A JSON object of the query's fields (`limit=5&cursor=a` → `{"limit":5,"cursor":"a"}`):
/// digits become numbers, `users` a list split at commas, everything else a string.
fn query_object(query: &str) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in http::query::pairs(query).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}:", serde_json::Value::from(k.as_ref()));
        if !v.is_empty() && v.len() <= 18 && v.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&v);
        } else if k == "users" {
            let list: Vec<&str> = v.split(',').filter(|u| !u.is_empty()).collect();
            out.push_str(&serde_json::Value::from(list).to_string());
        } else {
            out.push_str(&serde_json::Value::from(v.as_ref()).to_string());
        }
    }
    out.push('}');
    out
}

/// The control request line for `method` with the fields of the JSON object `body`.
fn control_line(method: &str, body: &[u8]) -> Option<Vec<u8>> {
    let body = body.trim_ascii();
    let rest = body.strip_prefix(b"{")?;
    let mut line = format!("{{\"method\":\"{method}\"").into_bytes();
    if !rest.trim_ascii_start().starts_with(b"}") {
        line.push(b',');
    }
    line.extend_from_slice(rest);
    Some(line)
}

impl Engine {
    /// The limits HTTP requests are held to.
    fn http_limits(&self) -> HttpLimits {
        let limits = &self.config.limits;
        HttpLimits {
            head_bytes_max: limits.handshake_bytes_max,
            body_bytes_max: limits.control_line_bytes_max,
            ..HttpLimits::default()
        }
    }

    /// Bytes of an HTTP connection: appended to its buffer, then every complete request at
    /// its front is answered (or queued for its answer), in order.
    pub(super) fn on_http_bytes(&mut self, slot: usize, data: &[u8]) {
        let limits = self.http_limits();
        let Some(state) = self.conns[slot].control() else {
            return;
        };
        let Some(buf) = state.http.as_mut() else {
            return;
        };
        // While paused (backpressure) requests wait in the buffer, up to what one request may
        // take; past it they are parsed anyway — the bound wins over the pause, as a control
        // connection's held input does (counted alike).
        let cap = limits.head_bytes_max + limits.body_bytes_max;
        let overrun = state.paused && buf.len() + data.len() > cap;
        buf.extend_from_slice(data);
        if overrun {
            self.counters.publisher_pause_overruns += 1;
        }
        loop {
            if !self.conns.contains(slot) {
                return;
            }
            let conn = &mut self.conns[slot];
            if conn.state != super::conn::State::Open {
                return;
            }
            let Some(state) = conn.control() else {
                return;
            };
            let Some(buf) = state.http.as_mut() else {
                return;
            };
            if state.paused && buf.len() <= cap {
                return; // resumed by backpressure's end
            }
            let parsed = http::parse(buf, &limits);
            match parsed {
                Ok(None) => return,
                Ok(Some((request, used))) => {
                    buf.drain(..used);
                    if buf.capacity() > 64 * 1024 && buf.is_empty() {
                        *buf = Vec::new();
                    }
                    self.counters.http_requests += 1;
                    let keep_alive = request.keep_alive;
                    self.on_http_request(slot, request);
                    if !keep_alive {
                        if let Some(state) = self.conns.get_mut(slot).and_then(|c| c.control()) {
                            state.http = None;
                        }
                        self.flush_replies(slot);
                        return self.close_after_flush(slot);
                    }
                    if self.publisher_must_wait(slot) {
                        return self.pause_publisher(slot);
                    }
                }
                Err(e) => {
                    self.counters.http_errors += 1;
                    self.reply_raw(slot, e.response());
                    if let Some(state) = self.conns[slot].control() {
                        state.http = None;
                    }
                    self.flush_replies(slot);
                    return self.close_after_flush(slot);
                }
            }
        }
    }

    pub(super) fn http_json_error(&mut self, slot: usize, status: u16, code: &str, message: &str) {
        let extra: &[(&str, &str)] = if status == 401 {
            &[("WWW-Authenticate", "Bearer")]
        } else {
            &[]
        };
        self.reply_raw(
            slot,
            http::response::error_json(status, code, message, true, extra),
        );
    }

    fn on_http_request(&mut self, slot: usize, request: Request) {
        use http::request::Method as M;
        let head = request.method == M::Head;
        let get = request.method == M::Get || head;
        let path = request.path.as_str();
        let page = |status: u16, ctype: &str, body: &[u8]| {
            if head {
                http::response::response_head(status, ctype, body.len(), true, &[])
            } else {
                http::response::response(status, ctype, body, true, &[])
            }
        };
        match path {
            "/healthz" | "/readyz" | "/metrics" | "/" | "/dashboard" if !get => {
                let allow = [("Allow", "GET, HEAD")];
                let r = http::response::error_json(
                    405,
                    "method_not_allowed",
                    "this path answers GET and HEAD",
                    true,
                    &allow,
                );
                self.reply_raw(slot, r)
            }
            "/healthz" => self.reply_raw(slot, page(200, "text/plain; charset=utf-8", b"ok\n")),
            "/readyz" => {
                let r = if self.is_draining() {
                    page(503, "text/plain; charset=utf-8", b"draining\n")
                } else {
                    page(200, "text/plain; charset=utf-8", b"ready\n")
                };
                self.reply_raw(slot, r)
            }
            "/metrics" => {
                let shards: Vec<crate::stats::Counters> =
                    self.all_published.iter().map(|p| p.read()).collect();
                let text = crate::metrics::render(&shards);
                let ctype = "text/plain; version=0.0.4; charset=utf-8";
                self.reply_raw(slot, page(200, ctype, text.as_bytes()))
            }
            "/" | "/dashboard" => {
                let ctype = "text/html; charset=utf-8";
                self.reply_raw(slot, page(200, ctype, DASHBOARD.as_bytes()))
            }
            _ if path.starts_with("/apps/") && self.pusher.is_some() => {
                self.on_pusher_api(slot, &request)
            }
            _ => match path.strip_prefix("/api/") {
                Some(method) if API_METHODS.contains(&method) => {
                    self.on_api(slot, method, &request)
                }
                _ => self.http_json_error(slot, 404, "not_found", "no such path"),
            },
        }
    }

    /// `POST /api/publish?channel=NAME` with the payload as the body (`curl --data-binary`):
    /// `application/json` is published as `data` (it must be JSON), UTF-8 text as `text`,
    /// anything else as binary.
    fn publish_body(&mut self, slot: usize, channel: &str, request: &Request) {
        let body = &request.body;
        let payload = if request.media_type() == Some("application/json") {
            if serde_json::from_slice::<&serde_json::value::RawValue>(body).is_err() {
                return self.http_json_error(slot, 400, "bad_json", "the body is not JSON");
            }
            ctl::Payload::Json(String::from_utf8_lossy(body).into_owned())
        } else {
            match std::str::from_utf8(body) {
                Ok(text) => ctl::Payload::Text(text.to_string()),
                Err(_) => ctl::Payload::Binary(body.to_vec()),
            }
        };
        self.counters.control_requests += 1;
        let method = Method::Publish(channel.to_string(), payload, false, None);
        self.execute(slot, method, None, false);
    }

    fn on_api(&mut self, slot: usize, method: &str, request: &Request) {
        use http::request::Method as M;
        let reads = READ_METHODS.contains(&method);
        let line = match request.method {
            M::Get if reads => control_line(method, query_object(&request.query).as_bytes()),
            M::Post => {
                if let Some(token) = self.config.http.token.as_deref() {
                    if request.bearer.as_deref() != Some(token) {
                        return self.http_json_error(
                            slot,
                            401,
                            "unauthorized",
                            "send Authorization: Bearer TOKEN ([http] token)",
                        );
                    }
                }
                if method == "publish" {
                    if let Some(channel) = request.query_value("channel") {
                        return self.publish_body(slot, &channel, request);
                    }
                }
                let body: &[u8] = if request.body.is_empty() {
                    b"{}"
                } else {
                    &request.body
                };
                match control_line(method, body) {
                    Some(line) => Some(line),
                    None => {
                        return self.http_json_error(
                            slot,
                            400,
                            "bad_json",
                            "the body must be one JSON object",
                        );
                    }
                }
            }
            _ => {
                let allow = if reads { "GET, POST" } else { "POST" };
                let r = http::response::error_json(
                    405,
                    "method_not_allowed",
                    "see docs/http.md for the methods of each path",
                    true,
                    &[("Allow", allow)],
                );
                return self.reply_raw(slot, r);
            }
        };
        let Some(line) = line else {
            return self.http_json_error(slot, 400, "bad_json", "bad query string");
        };
        self.counters.control_requests += 1;
        match ctl::parse(&line) {
            Ok(parsed) => {
                // A reply always comes back over HTTP: `noreply` is not honoured here.
                if matches!(parsed.method, Method::Auth(_) | Method::Events { .. }) {
                    return self.http_json_error(slot, 404, "unknown_method", "not over HTTP");
                }
                self.execute(slot, parsed.method, parsed.id, false);
            }
            Err(e) => {
                self.counters.control_errors += 1;
                self.http_json_error(slot, status_of(e.code), e.code.as_str(), &e.message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_become_request_objects() {
        assert_eq!(query_object(""), "{}");
        assert_eq!(
            query_object("channel=chat%3A1&limit=5&users=a,b"),
            r#"{"channel":"chat:1","limit":5,"users":["a","b"]}"#
        );
        assert_eq!(
            control_line("stats", b" {} ").unwrap(),
            br#"{"method":"stats"}"#.to_vec()
        );
        assert_eq!(
            control_line("publish", br#"{"channel":"a","text":"x"}"#).unwrap(),
            br#"{"method":"publish","channel":"a","text":"x"}"#.to_vec()
        );
        assert!(control_line("publish", b"[1]").is_none());
    }

    #[test]
    fn error_codes_have_statuses() {
        assert_eq!(status_of(ErrorCode::BadParams), 400);
        assert_eq!(status_of(ErrorCode::NoSuchConn), 404);
        assert_eq!(status_of(ErrorCode::Overloaded), 503);
        assert_eq!(status_of(ErrorCode::LimitExceeded), 429);
    }
}
