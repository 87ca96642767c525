//! Parsing one control request line (docs/control.md). Every malformed input maps to one stable
//! error code; nothing here panics on any input.

use crate::wire::ErrorCode;
use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Longest `id` (raw JSON) echoed back.
pub const ID_BYTES_MAX: usize = 64;

/// Entries per page of `channels` and `presence` when the request gives no `limit`.
pub const PAGE_DEFAULT: usize = 1000;
/// Largest `limit` of `channels` and `presence`: a page of 5,000 entries of the longest names
/// (128 bytes) stays under 1 MiB, the default `outbound_bytes_max` a reply line must fit.
pub const PAGE_MAX: usize = 5000;
/// Most channels in one `broadcast`: its reply (one result per channel, up to ≈170 bytes each)
/// stays under 1 MiB.
pub const BROADCAST_CHANNELS_MAX: usize = 4096;

/// What a push carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// `data`: a JSON value, as its JSON text.
    Json(String),
    /// `text`: a string.
    Text(String),
    /// `b64`: decoded bytes.
    Binary(Vec<u8>),
}

/// A method with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// Authenticate with the configured token.
    Auth(String),
    /// Publish to one channel; `true`: answer with a delivery report; the optional
    /// idempotency key makes a retry within the window answer the first publish's offset.
    Publish(String, Payload, bool, Option<String>),
    /// Publish to several channels, or (`None`) push to every `/ws` connection.
    Broadcast(Option<Vec<String>>, Payload),
    /// Push to one connection.
    Send(u64, Payload),
    /// Server-side subscribe.
    Subscribe(u64, String),
    /// Server-side unsubscribe.
    Unsubscribe(u64, String),
    /// Close a connection.
    Disconnect(u64, u16, String),
    /// Connection ids subscribed to a channel: a page of at most `limit` ids above `after`.
    Presence {
        /// The channel.
        channel: String,
        /// Ids after this one (the previous page's `next`).
        after: Option<u64>,
        /// Users after this one (the previous page's `users_next`).
        user_after: Option<String>,
        /// Page size (≤ `PAGE_MAX`), of ids and of users.
        limit: usize,
    },
    /// Channels with subscriber counts: a page of at most `limit` names after `after`.
    Channels {
        /// Names after this one, in byte order (the previous page's `next`).
        after: Option<String>,
        /// Page size (≤ `PAGE_MAX`).
        limit: usize,
    },
    /// A channel's kept messages: the newest `limit`, or those after `since` (offset, epoch).
    History {
        /// The channel.
        channel: String,
        /// At most this many (≤ `PAGE_MAX`).
        limit: usize,
        /// Only the messages after this offset, if in this epoch.
        since: Option<(u64, u64)>,
    },
    /// Counters.
    Stats,
    /// Version, shards, uptime, limits.
    Info,
    /// Make a connection one of a user's (`info`: raw JSON for presence).
    BindUser(u64, String, Option<String>),
    /// Make a connection anonymous again.
    UnbindUser(u64),
    /// Push to every connection of a user.
    SendUser(String, Payload),
    /// Close every connection of a user.
    DisconnectUser(String, u16, String),
    /// A user's connection ids.
    UserConns(String),
    /// Connection counts of these users (0: offline).
    Online(Vec<String>),
    /// Online users with their connection counts, a page of at most `limit` after `after`.
    Users {
        /// Names after this one (the previous page's `next`).
        after: Option<String>,
        /// Page size (≤ `PAGE_MAX`).
        limit: usize,
    },
    /// Counts of a channel's users, connections and anonymous connections (O(1)).
    PresenceStats(String),
    /// Drain the whole process over this many ms, then exit.
    Drain(u64),
    /// Read the config file again and apply what can change live.
    Reload,
    /// Turn this control connection into an event-stream consumer.
    Events {
        /// The event types wanted (a mask of `engine::events::Kind`).
        types: Vec<String>,
        /// Consumers with the same group share the stream.
        group: Option<String>,
    },
}

/// Every method name, in a fixed order (the `method` label of the request metrics).
pub const METHODS: &[&str] = &[
    "auth",
    "publish",
    "broadcast",
    "send",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "presence",
    "channels",
    "history",
    "stats",
    "info",
    "bind_user",
    "unbind_user",
    "send_user",
    "disconnect_user",
    "user_conns",
    "online",
    "users",
    "presence_stats",
    "drain",
    "reload",
    "events",
];

impl Method {
    /// The method's index in [`METHODS`].
    pub fn index(&self) -> u16 {
        let name = match self {
            Method::Auth(_) => "auth",
            Method::Publish(..) => "publish",
            Method::Broadcast(..) => "broadcast",
            Method::Send(..) => "send",
            Method::Subscribe(..) => "subscribe",
            Method::Unsubscribe(..) => "unsubscribe",
            Method::Disconnect(..) => "disconnect",
            Method::Presence { .. } => "presence",
            Method::Channels { .. } => "channels",
            Method::History { .. } => "history",
            Method::Stats => "stats",
            Method::Info => "info",
            Method::BindUser(..) => "bind_user",
            Method::UnbindUser(_) => "unbind_user",
            Method::SendUser(..) => "send_user",
            Method::DisconnectUser(..) => "disconnect_user",
            Method::UserConns(_) => "user_conns",
            Method::Online(_) => "online",
            Method::Users { .. } => "users",
            Method::PresenceStats(_) => "presence_stats",
            Method::Drain(_) => "drain",
            Method::Reload => "reload",
            Method::Events { .. } => "events",
        };
        METHODS.iter().position(|m| *m == name).unwrap_or(0) as u16
    }
}

/// Longest user id, in bytes (the same rule as a token's `sub`).
pub const USER_BYTES_MAX: usize = 128;
/// Longest `info` of `bind_user`, in bytes of JSON (the same bound as a token's `info`).
pub const INFO_BYTES_MAX: usize = 1024;
/// Longest event-stream group name.
pub const GROUP_BYTES_MAX: usize = 128;

/// A user id: 1 to 128 bytes, no control characters.
fn user_id(raw: Option<&RawValue>, name: &str) -> Result<String, String> {
    let user = string(raw, name)?;
    if user.is_empty() || user.len() > USER_BYTES_MAX || user.chars().any(char::is_control) {
        return Err(format!(
            "\"{name}\" must be 1 to {USER_BYTES_MAX} bytes without control characters"
        ));
    }
    Ok(user)
}

/// A close code a backend may ask for, and a reason that fits a close frame.
fn close_params(w: &Wire<'_>) -> Result<(u16, String), String> {
    let code = match w.code {
        None => crate::proto::close::KICKED,
        Some(raw) => serde_json::from_str::<u16>(raw.get())
            .ok()
            .filter(|&c| c == 1000 || (3000..=4999).contains(&c))
            .ok_or("\"code\" must be 1000 or 3000-4999")?,
    };
    let reason = match w.reason {
        None => String::new(),
        Some(_) => string(w.reason, "reason")?,
    };
    if reason.len() > 123 {
        return Err("\"reason\" must fit a close frame (123 bytes)".to_string());
    }
    Ok((code, reason))
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Raw JSON of `id`.
    pub id: Option<&'a str>,
    /// `noreply: true`.
    pub noreply: bool,
    /// The method.
    pub method: Method,
}

/// A refused request: stable code, message, and the id when it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError<'a> {
    /// `bad_json`, `unknown_method` or `bad_params`.
    pub code: ErrorCode,
    /// Detail.
    pub message: String,
    /// The request's id (raw JSON), if readable and short enough.
    pub id: Option<&'a str>,
    /// The request asked for no reply.
    pub noreply: bool,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    noreply: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channels: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    b64: Option<&'a RawValue>,
    #[serde(borrow, default)]
    conn: Option<&'a RawValue>,
    #[serde(borrow, default)]
    code: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reason: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cursor: Option<&'a RawValue>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
    #[serde(borrow, default)]
    report: Option<&'a RawValue>,
    #[serde(borrow, default)]
    idempotency_key: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user: Option<&'a RawValue>,
    #[serde(borrow, default)]
    users: Option<&'a RawValue>,
    #[serde(borrow, default)]
    info: Option<&'a RawValue>,
    #[serde(borrow, default)]
    types: Option<&'a RawValue>,
    #[serde(borrow, default)]
    group: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user_cursor: Option<&'a RawValue>,
    #[serde(borrow, default)]
    over_ms: Option<&'a RawValue>,
}

/// Longest `idempotency_key`.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinceWire {
    offset: u64,
    epoch: u64,
}

fn limit(raw: Option<&RawValue>) -> Result<usize, String> {
    let Some(raw) = raw else {
        return Ok(PAGE_DEFAULT);
    };
    serde_json::from_str::<usize>(raw.get())
        .ok()
        .filter(|n| (1..=PAGE_MAX).contains(n))
        .ok_or_else(|| format!("\"limit\" must be an integer from 1 to {PAGE_MAX}"))
}

fn string(raw: Option<&RawValue>, name: &str) -> Result<String, String> {
    let raw = raw.ok_or_else(|| format!("missing \"{name}\""))?;
    serde_json::from_str::<Cow<'_, str>>(raw.get())
        .map(Cow::into_owned)
        .map_err(|_| format!("\"{name}\" must be a string"))
}

fn conn_id(raw: Option<&RawValue>) -> Result<u64, String> {
    let raw = raw.ok_or("missing \"conn\"")?;
    serde_json::from_str::<u64>(raw.get())
        .map_err(|_| "\"conn\" must be a connection id (an integer)".to_string())
}

fn payload(w: &Wire<'_>) -> Result<Payload, String> {
    match (w.data, w.text, w.b64) {
        (Some(data), None, None) => Ok(Payload::Json(data.get().to_string())),
        (None, Some(_), None) => string(w.text, "text").map(Payload::Text),
        (None, None, Some(_)) => {
            let text = string(w.b64, "b64")?;
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map(Payload::Binary)
                .map_err(|e| format!("\"b64\" is not base64: {e}"))
        }
        (None, None, None) => Err("one of \"data\", \"text\" or \"b64\" is required".to_string()),
        _ => Err("give only one of \"data\", \"text\" or \"b64\"".to_string()),
    }
}

/// Parses one line.
pub fn parse(line: &[u8]) -> Result<Request<'_>, RequestError<'_>> {
    // serde would also read a struct from a JSON array; a request must be an object.
    if line.trim_ascii_start().first() != Some(&b'{') {
        return Err(RequestError {
            code: ErrorCode::BadJson,
            message: "a request is one JSON object per line".to_string(),
            id: None,
            noreply: false,
        });
    }
    let wire: Wire<'_> = serde_json::from_slice(line).map_err(|e| RequestError {
        code: ErrorCode::BadJson,
        message: format!("not a JSON request object: {e}"),
        id: None,
        noreply: false,
    })?;
    let noreply = wire.noreply.is_some_and(|v| v.get() == "true");
    let raw_id = wire.id.map(RawValue::get);
    let id = raw_id.filter(|i| i.len() <= ID_BYTES_MAX);
    let fail = |code: ErrorCode, message: String| RequestError {
        code,
        message,
        id,
        noreply,
    };
    if raw_id.is_some() && id.is_none() {
        return Err(fail(
            ErrorCode::BadParams,
            format!("\"id\" is longer than {ID_BYTES_MAX} bytes of JSON"),
        ));
    }
    let method = string(wire.method, "method").map_err(|m| fail(ErrorCode::UnknownMethod, m))?;
    let params = |r: Result<Method, String>| r.map_err(|m| fail(ErrorCode::BadParams, m));
    let method = match method.as_str() {
        "auth" => params(string(wire.token, "token").map(Method::Auth))?,
        "publish" => params((|| {
            let report = match wire.report {
                None => false,
                Some(raw) => serde_json::from_str::<bool>(raw.get())
                    .map_err(|_| "\"report\" must be true or false".to_string())?,
            };
            let key = match wire.idempotency_key {
                None => None,
                Some(_) => {
                    let key = string(wire.idempotency_key, "idempotency_key")?;
                    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
                        return Err(format!(
                            "\"idempotency_key\" must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes"
                        ));
                    }
                    Some(key)
                }
            };
            Ok(Method::Publish(
                string(wire.channel, "channel")?,
                payload(&wire)?,
                report,
                key,
            ))
        })())?,
        "broadcast" => params((|| {
            let channels = match wire.channels {
                None => None,
                Some(raw) => Some(
                    serde_json::from_str::<Vec<String>>(raw.get())
                        .map_err(|_| "\"channels\" must be an array of strings".to_string())?,
                ),
            };
            if channels
                .as_ref()
                .is_some_and(|c| c.len() > BROADCAST_CHANNELS_MAX)
            {
                return Err(format!(
                    "a broadcast names at most {BROADCAST_CHANNELS_MAX} channels (send several)"
                ));
            }
            Ok(Method::Broadcast(channels, payload(&wire)?))
        })())?,
        "send" => params((|| Ok(Method::Send(conn_id(wire.conn)?, payload(&wire)?)))())?,
        "subscribe" => params((|| {
            Ok(Method::Subscribe(
                conn_id(wire.conn)?,
                string(wire.channel, "channel")?,
            ))
        })())?,
        "unsubscribe" => params((|| {
            Ok(Method::Unsubscribe(
                conn_id(wire.conn)?,
                string(wire.channel, "channel")?,
            ))
        })())?,
        "disconnect" => params((|| {
            let conn = conn_id(wire.conn)?;
            let (code, reason) = close_params(&wire)?;
            Ok(Method::Disconnect(conn, code, reason))
        })())?,
        "bind_user" => params((|| {
            let info = match wire.info {
                None => None,
                Some(raw) if raw.get() == "null" => None,
                Some(raw) if raw.get().len() > INFO_BYTES_MAX => {
                    return Err(format!(
                        "\"info\" must be at most {INFO_BYTES_MAX} bytes of JSON"
                    ));
                }
                Some(raw) => Some(raw.get().to_string()),
            };
            Ok(Method::BindUser(
                conn_id(wire.conn)?,
                user_id(wire.user, "user")?,
                info,
            ))
        })())?,
        "unbind_user" => params(conn_id(wire.conn).map(Method::UnbindUser))?,
        "send_user" => params((|| {
            Ok(Method::SendUser(
                user_id(wire.user, "user")?,
                payload(&wire)?,
            ))
        })())?,
        "disconnect_user" => params((|| {
            let user = user_id(wire.user, "user")?;
            let (code, reason) = close_params(&wire)?;
            Ok(Method::DisconnectUser(user, code, reason))
        })())?,
        "user_conns" => params(user_id(wire.user, "user").map(Method::UserConns))?,
        "online" => params((|| {
            let raw = wire.users.ok_or("missing \"users\"")?;
            let users = serde_json::from_str::<Vec<String>>(raw.get())
                .map_err(|_| "\"users\" must be an array of strings".to_string())?;
            if users.len() > PAGE_MAX {
                return Err(format!("\"users\" lists at most {PAGE_MAX} users"));
            }
            if users.iter().any(|u| {
                u.is_empty() || u.len() > USER_BYTES_MAX || u.chars().any(char::is_control)
            }) {
                return Err(format!(
                    "each user must be 1 to {USER_BYTES_MAX} bytes without control characters"
                ));
            }
            Ok(Method::Online(users))
        })())?,
        "users" => params((|| {
            let after = match wire.cursor {
                None => None,
                Some(_) => Some(string(wire.cursor, "cursor")?),
            };
            Ok(Method::Users {
                after,
                limit: limit(wire.limit)?,
            })
        })())?,
        "presence_stats" => params(string(wire.channel, "channel").map(Method::PresenceStats))?,
        "drain" => params((|| {
            let over_ms = match wire.over_ms {
                None => 30_000,
                Some(raw) => serde_json::from_str::<u64>(raw.get())
                    .ok()
                    .filter(|&ms| (1..=3_600_000).contains(&ms))
                    .ok_or("\"over_ms\" must be 1 to 3600000 (one hour)")?,
            };
            Ok(Method::Drain(over_ms))
        })())?,
        "events" => params((|| {
            let types = match wire.types {
                None => vec![
                    "connect".to_string(),
                    "close".to_string(),
                    "subscribe".to_string(),
                    "unsubscribe".to_string(),
                    "message".to_string(),
                    "expired".to_string(),
                ],
                Some(raw) => serde_json::from_str::<Vec<String>>(raw.get())
                    .map_err(|_| "\"types\" must be an array of strings".to_string())?,
            };
            if types.is_empty() || types.len() > 16 {
                return Err("\"types\" must name 1 to 6 event types".to_string());
            }
            let group = match wire.group {
                None => None,
                Some(_) => {
                    let g = string(wire.group, "group")?;
                    if g.is_empty() || g.len() > GROUP_BYTES_MAX || g.chars().any(char::is_control)
                    {
                        return Err(format!("\"group\" must be 1 to {GROUP_BYTES_MAX} bytes"));
                    }
                    Some(g)
                }
            };
            Ok(Method::Events { types, group })
        })())?,
        "presence" => params((|| {
            let after = match wire.cursor {
                None => None,
                Some(raw) => Some(
                    serde_json::from_str::<u64>(raw.get())
                        .map_err(|_| "\"cursor\" must be a connection id (the last page's next)")?,
                ),
            };
            let user_after = match wire.user_cursor {
                None => None,
                Some(_) => Some(string(wire.user_cursor, "user_cursor")?),
            };
            Ok(Method::Presence {
                channel: string(wire.channel, "channel")?,
                after,
                user_after,
                limit: limit(wire.limit)?,
            })
        })())?,
        "channels" => params((|| {
            let after = match wire.cursor {
                None => None,
                Some(_) => Some(string(wire.cursor, "cursor")?),
            };
            Ok(Method::Channels {
                after,
                limit: limit(wire.limit)?,
            })
        })())?,
        "stats" => Method::Stats,
        "reload" => Method::Reload,
        "info" => Method::Info,
        "history" => params((|| {
            let since = match wire.since {
                None => None,
                Some(raw) => {
                    let s: SinceWire = serde_json::from_str(raw.get())
                        .map_err(|_| "\"since\" must be {\"offset\":N,\"epoch\":E}".to_string())?;
                    Some((s.offset, s.epoch))
                }
            };
            let limit = match wire.limit {
                None => 100,
                Some(_) => limit(wire.limit)?,
            };
            Ok(Method::History {
                channel: string(wire.channel, "channel")?,
                limit,
                since,
            })
        })())?,
        other => {
            return Err(fail(
                ErrorCode::UnknownMethod,
                format!(
                    "unknown method {:?}",
                    other.chars().take(32).collect::<String>()
                ),
            ));
        }
    };
    Ok(Request {
        id,
        noreply,
        method,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> &'static str {
        parse(line.as_bytes()).unwrap_err().code.as_str()
    }

    #[test]
    fn methods_parse() {
        let r =
            parse(br#"{"id":1,"method":"publish","channel":"news","data":{"a":[1,2]}}"#).unwrap();
        assert_eq!(r.id, Some("1"));
        assert_eq!(
            r.method,
            Method::Publish(
                "news".into(),
                Payload::Json(r#"{"a":[1,2]}"#.into()),
                false,
                None
            )
        );
        let r = parse(br#"{"method":"publish","channel":"n","text":"h\u00e9","noreply":true}"#)
            .unwrap();
        assert!(r.noreply);
        assert_eq!(
            r.method,
            Method::Publish("n".into(), Payload::Text("hé".into()), false, None)
        );
        let r = parse(br#"{"method":"send","conn":42,"b64":"AP8="}"#).unwrap();
        assert_eq!(r.method, Method::Send(42, Payload::Binary(vec![0, 255])));
        let r = parse(br#"{"method":"broadcast","channels":["a","b"],"text":"x"}"#).unwrap();
        assert_eq!(
            r.method,
            Method::Broadcast(
                Some(vec!["a".into(), "b".into()]),
                Payload::Text("x".into())
            )
        );
        let r = parse(br#"{"method":"disconnect","conn":5}"#).unwrap();
        assert_eq!(r.method, Method::Disconnect(5, 4003, String::new()));
        assert_eq!(
            parse(br#"{"method":"stats"}"#).unwrap().method,
            Method::Stats
        );
    }

    #[test]
    fn every_bad_input_has_its_code() {
        assert_eq!(code("nope"), "bad_json");
        assert_eq!(code("[1,2]"), "bad_json");
        assert_eq!(
            code("{\"method\":\"publish\",\"channel\":\"a\",\"text\":\"x\""),
            "bad_json"
        );
        assert_eq!(code("\u{0}"), "bad_json");
        assert_eq!(code("{\"method\":\"stats\"} trailing"), "bad_json");
        assert_eq!(code("{}"), "unknown_method");
        assert_eq!(code(r#"{"method":7}"#), "unknown_method");
        assert_eq!(code(r#"{"method":"fly"}"#), "unknown_method");
        assert_eq!(code(r#"{"method":"publish","channel":"a"}"#), "bad_params");
        assert_eq!(code(r#"{"method":"publish","text":"x"}"#), "bad_params");
        assert_eq!(
            code(r#"{"method":"publish","channel":1,"text":"x"}"#),
            "bad_params"
        );
        assert_eq!(
            code(r#"{"method":"publish","channel":"a","text":"x","data":1}"#),
            "bad_params"
        );
        assert_eq!(
            code(r#"{"method":"publish","channel":"a","b64":"!!"}"#),
            "bad_params"
        );
        assert_eq!(
            code(r#"{"method":"send","conn":-1,"text":"x"}"#),
            "bad_params"
        );
        assert_eq!(
            code(r#"{"method":"send","conn":1e400,"text":"x"}"#),
            "bad_params"
        );
        assert_eq!(
            code(r#"{"method":"send","conn":99999999999999999999999,"text":"x"}"#),
            "bad_params"
        );
        assert_eq!(
            code(r#"{"method":"disconnect","conn":1,"code":1006}"#),
            "bad_params"
        );
        assert_eq!(
            code(r#"{"method":"broadcast","channels":"a","text":"x"}"#),
            "bad_params"
        );
        let long = format!(r#"{{"id":"{}","method":"stats"}}"#, "x".repeat(80));
        assert_eq!(code(&long), "bad_params");
        let e = parse(br#"{"id":[1],"method":"nope","noreply":true}"#).unwrap_err();
        assert_eq!((e.id, e.noreply), (Some("[1]"), true));
    }

    #[test]
    fn nested_garbage_does_not_panic() {
        let deep = "[".repeat(10_000);
        assert_eq!(
            code(&format!(
                r#"{{"method":"publish","channel":"a","data":{deep}}}"#
            )),
            "bad_json"
        );
        for bytes in [
            &b"\xff\xfe"[..],
            b"{\"method\":\"\xff\"}",
            b"{\"method\":\"publish\",\"channel\":\"a\",\"text\":\"\\ud800\"}",
        ] {
            let _ = parse(bytes);
        }
    }
}
