//! The `/ws` client protocol: JSON text frames (docs/protocol.md).
//!
//! Client → server: `subscribe`, `unsubscribe`, `publish`, `ping`, each with an optional `id`
//! echoed in the reply. Server → client: `welcome`, `subscribed`, `unsubscribed`, `message`,
//! `pong`, `error`. Replies are written by hand: channel names never need escaping (see
//! `channel::validate_name`) and `id` and `data` are copied as the raw JSON the client sent.

use crate::wire::ErrorCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt::Write;

/// Longest `id` (as raw JSON text) echoed back; a longer one is refused with `bad_request`.
pub const ID_BYTES_MAX: usize = 64;

/// Most messages a client's `history` asks for.
pub const HISTORY_LIMIT_MAX: usize = 1000;

/// `{"op":"history","channel":C,<the owner's fields>[,"id":X]}` around the owner's rendering of
/// the channel's history (`{"offset":..,"epoch":..,"messages":[..]}`).
pub fn history(channel: &str, body: &str, id: Option<&str>) -> String {
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or("");
    let mut out = String::with_capacity(32 + channel.len() + body.len());
    let _ = write!(
        out,
        "{{\"op\":\"history\",\"channel\":\"{channel}\",{inner}"
    );
    with_id(&mut out, id);
    out
}

#[derive(Deserialize)]
struct Wire<'a> {
    op: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    since: Option<Since>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
}

/// Where a client's view of a channel ends: the last offset it received, and the channel's
/// epoch then (from `subscribed` and each `message`'s channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    /// The last offset the client received.
    pub offset: u64,
    /// The epoch of that offset.
    pub epoch: u64,
}

/// A client command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// Subscribe to a channel, optionally recovering what was published after `Since`.
    Subscribe(Cow<'a, str>, Option<Since>),
    /// Unsubscribe from a channel.
    Unsubscribe(Cow<'a, str>),
    /// Publish `data` (raw JSON) to a channel.
    Publish(Cow<'a, str>, &'a str),
    /// Application-level ping.
    Ping,
    /// The channel's kept messages: the newest `limit` (default 100, at most 1000).
    History(Cow<'a, str>, usize),
    /// Identify with a connection token (browsers cannot set headers).
    Auth(Cow<'a, str>),
    /// Replace the connection's token before (or in the grace after) it expires.
    Refresh(Cow<'a, str>),
    /// `data` (raw JSON) for the backend's event stream (`message` events).
    Send(&'a str),
}

/// A parsed request: the command and the raw JSON of its `id`, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Raw JSON of the `id` field, echoed in the reply.
    pub id: Option<&'a str>,
    /// The command.
    pub command: Command<'a>,
}

/// Why a client message was refused; `code()` is the stable wire code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// Stable code: `bad_json`, `bad_request`, `unknown_op`.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// The request's id, when it could be read.
    pub id: Option<String>,
}

/// Parses one text message from a client.
pub fn parse(text: &[u8]) -> Result<Request<'_>, ClientError> {
    // serde would also read a struct from a JSON array; a command must be an object.
    if text.trim_ascii_start().first() != Some(&b'{') {
        return Err(ClientError {
            code: ErrorCode::BadJson,
            message: "a command is a JSON object".to_string(),
            id: None,
        });
    }
    let wire: Wire<'_> = serde_json::from_slice(text).map_err(|e| ClientError {
        code: ErrorCode::BadJson,
        message: format!("not a JSON command object: {e}"),
        id: None,
    })?;
    let id = wire.id.map(RawValue::get);
    let fail = |code: ErrorCode, message: &str| ClientError {
        code,
        message: message.to_string(),
        id: id.filter(|i| i.len() <= ID_BYTES_MAX).map(str::to_string),
    };
    if id.is_some_and(|i| i.len() > ID_BYTES_MAX) {
        return Err(fail(
            ErrorCode::BadRequest,
            "id is longer than 64 bytes of JSON",
        ));
    }
    let channel = wire
        .channel
        .ok_or_else(|| fail(ErrorCode::BadRequest, "missing \"channel\""));
    let command = match wire.op.as_ref() {
        "subscribe" => Command::Subscribe(channel?, wire.since),
        "unsubscribe" => Command::Unsubscribe(channel?),
        "publish" => {
            let ch = channel?;
            let data = wire
                .data
                .ok_or_else(|| fail(ErrorCode::BadRequest, "missing \"data\""))?;
            Command::Publish(ch, data.get())
        }
        "ping" => Command::Ping,
        "history" => {
            let limit = wire.limit.unwrap_or(100);
            if limit == 0 || limit > HISTORY_LIMIT_MAX {
                return Err(fail(ErrorCode::BadRequest, "limit must be 1 to 1000"));
            }
            Command::History(channel?, limit)
        }
        "auth" | "refresh" => {
            let token = wire
                .token
                .ok_or_else(|| fail(ErrorCode::BadRequest, "missing \"token\""))?;
            if wire.op == "auth" {
                Command::Auth(token)
            } else {
                Command::Refresh(token)
            }
        }
        "send" => {
            let data = wire
                .data
                .ok_or_else(|| fail(ErrorCode::BadRequest, "missing \"data\""))?;
            Command::Send(data.get())
        }
        _ => {
            return Err(fail(
                ErrorCode::UnknownOp,
                "op must be subscribe, unsubscribe, publish, history, ping, auth, refresh or \
                 send",
            ));
        }
    };
    Ok(Request { id, command })
}

fn with_id(out: &mut String, id: Option<&str>) {
    if let Some(id) = id {
        out.push_str(",\"id\":");
        out.push_str(id);
    }
    out.push('}');
}

/// `{"op":"welcome","conn":ID}`
pub fn welcome(conn: u64) -> String {
    format!("{{\"op\":\"welcome\",\"conn\":{conn}}}")
}

/// `{"op":"subscribed","channel":C,"offset":N,"epoch":E[,"id":X]}`
pub fn subscribed(channel: &str, offset: u64, epoch: u64, id: Option<&str>) -> String {
    let mut out = String::with_capacity(64 + channel.len());
    let _ = write!(
        out,
        "{{\"op\":\"subscribed\",\"channel\":\"{channel}\",\"offset\":{offset},\"epoch\":{epoch}"
    );
    with_id(&mut out, id);
    out
}

/// `{"op":"subscribed","channel":C,"offset":N,"epoch":E,"recovered":B[,"id":X]}`: the answer to a
/// subscribe with `since`; with `recovered: true` the missed messages follow it, with `false`
/// they are gone and N/E are where the live messages start.
pub fn subscribed_recovery(
    channel: &str,
    offset: u64,
    epoch: u64,
    recovered: bool,
    id: Option<&str>,
) -> String {
    let mut out = String::with_capacity(80 + channel.len());
    let _ = write!(
        out,
        "{{\"op\":\"subscribed\",\"channel\":\"{channel}\",\"offset\":{offset},\"epoch\":{epoch},\
         \"recovered\":{recovered}"
    );
    with_id(&mut out, id);
    out
}

/// `{"op":"unsubscribed","channel":C[,"id":X]}`
pub fn unsubscribed(channel: &str, id: Option<&str>) -> String {
    let mut out = format!("{{\"op\":\"unsubscribed\",\"channel\":\"{channel}\"");
    with_id(&mut out, id);
    out
}

/// `{"op":"published","channel":C[,"id":X]}`: the publish was accepted for sequencing.
pub fn published(channel: &str, id: Option<&str>) -> String {
    let mut out = format!("{{\"op\":\"published\",\"channel\":\"{channel}\"");
    with_id(&mut out, id);
    out
}

/// `{"op":"authed","user":U[,"id":X]}` (`user` is null for a token without `sub`), or
/// `{"op":"refreshed",...}` for a refresh.
pub fn authed(op: &str, user: Option<&str>, exp: Option<u64>, id: Option<&str>) -> String {
    let mut out = format!("{{\"op\":\"{op}\",\"user\":");
    match user {
        Some(u) => out.push_str(&serde_json::Value::from(u).to_string()),
        None => out.push_str("null"),
    }
    if let Some(exp) = exp {
        let _ = write!(out, ",\"exp\":{exp}");
    }
    with_id(&mut out, id);
    out
}

/// `{"op":"expired","grace_ms":G}`: the token's `exp` passed; refresh within G ms or be closed.
pub fn expired(grace_ms: u64) -> String {
    format!("{{\"op\":\"expired\",\"grace_ms\":{grace_ms}}}")
}

/// `{"op":"sent"[,"id":X]}`: a client `send` was handed to the event stream.
pub fn sent(id: Option<&str>) -> String {
    let mut out = String::from("{\"op\":\"sent\"");
    with_id(&mut out, id);
    out
}

/// `{"op":"join"|"leave","channel":C,"user":U,"info":I}`: presence news, pushed by the channel's
/// owner (`info` is the raw JSON of the user's info, or null).
pub fn presence_news(join: bool, channel: &str, user: &str, info: Option<&str>) -> String {
    let op = if join { "join" } else { "leave" };
    format!(
        "{{\"op\":\"{op}\",\"channel\":\"{channel}\",\"user\":{},\"info\":{}}}",
        serde_json::Value::from(user),
        info.unwrap_or("null")
    )
}

/// `{"op":"pong"[,"id":X]}`
pub fn pong(id: Option<&str>) -> String {
    let mut out = String::from("{\"op\":\"pong\"");
    with_id(&mut out, id);
    out
}

/// `{"op":"error","code":CODE,"message":TEXT[,"id":X]}`
pub fn error(code: ErrorCode, message: &str, id: Option<&str>) -> String {
    let mut out = String::from("{\"op\":\"error\",\"code\":\"");
    out.push_str(code.as_str());
    out.push('"');
    // A message may quote client input: encode it properly.
    out.push_str(",\"message\":");
    out.push_str(&serde_json::Value::from(message).to_string());
    with_id(&mut out, id);
    out
}

/// The envelope of a published message, before its data: `{"op":"message","channel":C,"offset":N,`
/// followed by `"data":DATA}` (JSON or text) or `"b64":"..."}` (binary), written by the owner.
pub fn message_prefix(out: &mut Vec<u8>, channel: &str, offset: u64) {
    let _ = std::io::Write::write_fmt(
        out,
        format_args!("{{\"op\":\"message\",\"channel\":\"{channel}\",\"offset\":{offset},"),
    );
}

/// Decodes `%XX` escapes in a query value (a browser's `URLSearchParams` escapes `:`, `/`, `@`);
/// `None` for a malformed escape or a result that is not UTF-8.
pub fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// What a `/ws` URL asks for: `?channel=a&channel=b&format=raw`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Channels to subscribe at connect.
    pub channels: Vec<String>,
    /// `format=raw`.
    pub raw: bool,
    /// `since=OFFSET:EPOCH:CHANNEL` (repeatable): recover those URL channels from there.
    pub since: Vec<(String, Since)>,
    /// `token=JWT`: the connection token.
    pub token: Option<String>,
}

/// Parses the query string of a `/ws` URL; at most `channels_max` channels.
pub fn parse_query(query: &str, channels_max: usize) -> Result<Query, &'static str> {
    let mut q = Query::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "channel" => {
                if q.channels.len() >= channels_max {
                    return Err("too many channels in the URL");
                }
                q.channels
                    .push(percent_decode(value).ok_or("malformed %-escape in channel")?);
            }
            "format" => match value {
                "raw" => q.raw = true,
                "json" => q.raw = false,
                _ => return Err("format must be raw or json"),
            },
            "since" => {
                if q.since.len() >= channels_max {
                    return Err("too many since parameters in the URL");
                }
                let value = percent_decode(value).ok_or("malformed %-escape in since")?;
                // The channel comes last: its name may hold ':' itself.
                let mut parts = value.splitn(3, ':');
                let (offset, epoch, channel) = match (parts.next(), parts.next(), parts.next()) {
                    (Some(o), Some(e), Some(c)) => (o.parse().ok(), e.parse().ok(), c),
                    _ => (None, None, ""),
                };
                match (offset, epoch) {
                    (Some(offset), Some(epoch)) if !channel.is_empty() => {
                        q.since.push((channel.to_string(), Since { offset, epoch }))
                    }
                    _ => return Err("since must be OFFSET:EPOCH:CHANNEL"),
                }
            }
            "token" => {
                if q.token.is_some() {
                    return Err("more than one token in the URL");
                }
                q.token = Some(percent_decode(value).ok_or("malformed %-escape in token")?);
            }
            _ => {} // other parameters (a proxy's parameters, cache busters) are not ours
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_since_names_its_channel_last() {
        let q = parse_query("channel=h:a:b&since=5:17:h%3Aa%3Ab&format=raw", 8).unwrap();
        assert_eq!(q.channels, vec!["h:a:b".to_string()]);
        assert_eq!(
            q.since,
            vec![(
                "h:a:b".to_string(),
                Since {
                    offset: 5,
                    epoch: 17
                }
            )]
        );
        assert!(parse_query("since=5:h", 8).is_err());
        assert!(parse_query("since=x:1:h", 8).is_err());
        assert!(parse_query("since=1:2:", 8).is_err());
    }

    #[test]
    fn parses_commands_with_ids() {
        let r = parse(br#"{"op":"subscribe","channel":"news","id":7}"#).unwrap();
        assert_eq!(
            r,
            Request {
                id: Some("7"),
                command: Command::Subscribe("news".into(), None)
            }
        );
        let r =
            parse(br#"{"op":"publish","channel":"chat:1","data":{"a":[1,2]},"id":"x"}"#).unwrap();
        assert_eq!(
            r.command,
            Command::Publish("chat:1".into(), r#"{"a":[1,2]}"#)
        );
        assert_eq!(r.id, Some("\"x\""));
        assert_eq!(parse(br#"{"op":"ping"}"#).unwrap().command, Command::Ping);
        assert_eq!(
            parse(br#"{"op":"auth","token":"a.b.c"}"#).unwrap().command,
            Command::Auth("a.b.c".into())
        );
        assert_eq!(
            parse(br#"{"op":"refresh","token":"t"}"#).unwrap().command,
            Command::Refresh("t".into())
        );
        assert_eq!(
            parse(br#"{"op":"send","data":{"k":1}}"#).unwrap().command,
            Command::Send(r#"{"k":1}"#)
        );
        assert_eq!(parse(br#"{"op":"auth"}"#).unwrap_err().code, "bad_request");
        assert_eq!(parse(br#"{"op":"send"}"#).unwrap_err().code, "bad_request");
    }

    #[test]
    fn errors_have_stable_codes() {
        assert_eq!(parse(b"nope").unwrap_err().code, "bad_json");
        assert_eq!(parse(b"[1]").unwrap_err().code, "bad_json");
        assert_eq!(
            parse(br#"{"op":"fly","id":3}"#).unwrap_err(),
            ClientError {
                code: ErrorCode::UnknownOp,
                message: "op must be subscribe, unsubscribe, publish, history, ping, auth, \
                          refresh or send"
                    .into(),
                id: Some("3".into()),
            }
        );
        assert_eq!(
            parse(br#"{"op":"subscribe"}"#).unwrap_err().code,
            "bad_request"
        );
        assert_eq!(
            parse(br#"{"op":"publish","channel":"a"}"#)
                .unwrap_err()
                .code,
            "bad_request"
        );
        let long_id = format!(r#"{{"op":"ping","id":"{}"}}"#, "a".repeat(100));
        assert_eq!(parse(long_id.as_bytes()).unwrap_err().code, "bad_request");
        assert_eq!(
            parse(br#"{"op":"subscribe","channel":5}"#)
                .unwrap_err()
                .code,
            "bad_json"
        );
    }

    #[test]
    fn replies_are_valid_json() {
        for text in [
            welcome(42),
            subscribed("a:b", 3, 9, Some("\"q\"")),
            unsubscribed("a", None),
            published("a", Some("1")),
            pong(None),
            error(ErrorCode::BadJson, "it said \"x\"\n", Some("[1]")),
        ] {
            let v: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(v["op"].is_string());
        }
        let mut m = Vec::new();
        message_prefix(&mut m, "news", 5);
        m.extend_from_slice(b"\"data\":{\"k\":1}}");
        let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v["offset"], 5);
    }

    #[test]
    fn query() {
        assert_eq!(
            parse_query("channel=a&channel=chat%3A1&format=raw&t=1", 4).unwrap(),
            Query {
                channels: vec!["a".into(), "chat:1".into()],
                raw: true,
                since: Vec::new(),
                token: None,
            }
        );
        let q = parse_query("token=a.b%2Ec&channel=x", 4).unwrap();
        assert_eq!(q.token.as_deref(), Some("a.b.c"));
        assert!(
            parse_query("token=a&token=b", 4).is_err(),
            "one token per URL"
        );
        assert!(parse_query("channel=a&channel=b", 1).is_err());
        assert!(parse_query("channel=%zz", 4).is_err());
        assert!(parse_query("format=xml", 4).is_err());
        assert_eq!(parse_query("", 4).unwrap(), Query::default());
    }
}
