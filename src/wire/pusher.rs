//! The Pusher Channels protocol (version 7) as pusher-js and Laravel Echo speak it on
//! `/app/{key}`: the client messages ringcast understands, the server messages it writes, the
//! channel names and kinds, socket ids, and the error codes with the close codes pusher-js acts
//! on (docs/pusher.md).
//!
//! Owns: parsing a client message into [`ClientMessage`], writing every server message, and the
//! internal channel name a Pusher channel of one app lives under (`#APP_ID#CHANNEL`: the `#`
//! is outside the characters `/ws` and the control socket accept, so only the app's own clients
//! and API reach it).
//!
//! Must not: allocate per subscriber (an event is written once per message at the channel's
//! owner), read the clock, or panic on any input.
//!
//! Conventions of the protocol kept here: server events carry `data` as a JSON *string* (the
//! client parses it again); `pusher:error` carries an object; pusher-js accepts both.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt::Write;

/// The protocol version ringcast speaks; older clients are refused with 4007.
pub const PROTOCOL: u32 = 7;

/// Error codes of `pusher:error` and the close codes that go with them (Pusher Channels
/// protocol, "Error codes"): 4000-4099 the client must not reconnect, 4100-4199 it reconnects
/// after backing off, 4200-4299 it reconnects at once.
pub mod code {
    /// The app key names no app.
    pub const APP_UNKNOWN: u16 = 4001;
    /// The app is over its `max_connections`.
    pub const OVER_QUOTA: u16 = 4004;
    /// The client's protocol version is too old (or missing).
    pub const PROTOCOL: u16 = 4007;
    /// A subscription's authorization was wrong (the connection stays open), or the page's
    /// origin is not allowed for the app (the connection is closed).
    pub const UNAUTHORIZED: u16 = 4009;
    /// Generic reconnect-at-once: the client went silent past its activity timeout.
    pub const PONG_TIMEOUT: u16 = 4201;
    /// The message could not be understood (not JSON, unknown event, bad field, bad channel
    /// name): Pusher's generic 43xx error, the connection stays open.
    pub const BAD_MESSAGE: u16 = 4300;
    /// A client event was refused (not allowed, not subscribed, too large, too fast).
    pub const CLIENT_EVENT: u16 = 4301;
    /// Too many subscriptions on this connection, or the shard is full of channels.
    pub const LIMIT: u16 = 4100;
    /// Closed for falling behind (slow consumer) or sending too fast: pusher-js reconnects
    /// after backing off.
    pub const OVER_CAPACITY: u16 = 4100;
}

/// What kind of channel a name is, from its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Anyone may subscribe.
    Public,
    /// `private-` (and `private-encrypted-`, relayed as is): needs an authorization.
    Private,
    /// `presence-`: needs an authorization with `channel_data` naming the user.
    Presence,
}

/// The kind of `channel` (the `cache-` forms keep their base kind).
pub fn kind_of(channel: &str) -> Kind {
    let base = channel.strip_prefix("private-cache-").map(|_| "private-");
    let base = base.or_else(|| channel.strip_prefix("presence-cache-").map(|_| "presence-"));
    let name = base.unwrap_or(channel);
    if name.starts_with("presence-") {
        Kind::Presence
    } else if name.starts_with("private-") {
        Kind::Private
    } else {
        Kind::Public
    }
}

/// Whether `channel` is a cache channel (`cache-`, `private-cache-`,
/// `private-encrypted-cache-`, `presence-cache-`): its last event is kept and replayed to a new
/// subscriber, or `pusher:cache_miss` sent.
pub fn is_cache(channel: &str) -> bool {
    [
        "cache-",
        "private-cache-",
        "private-encrypted-cache-",
        "presence-cache-",
    ]
    .iter()
    .any(|p| channel.starts_with(p))
}

/// `pusher:cache_miss`: a cache channel had no event to replay.
pub fn cache_miss(channel: &str) -> String {
    format!(
        "{{\"event\":\"pusher:cache_miss\",\"channel\":{}}}",
        json_string(channel)
    )
}

/// Whether `name` is a valid Pusher channel name: 1 to `max_bytes` bytes of
/// `[A-Za-z0-9_\-=@,.;]`, and not a reserved `#` name.
pub fn valid_channel(name: &str, max_bytes: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_bytes
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'@' | b',' | b'.' | b';')
        })
}

/// Whether the HTTP API may publish to `name`: a valid channel, or a user's channel
/// `#server-to-user-{id}` (the SDKs' `sendToUser` triggers there).
pub fn valid_api_channel(name: &str, max_bytes: usize) -> bool {
    match name.strip_prefix("#server-to-user-") {
        Some(user) => valid_channel(user, 128),
        None => valid_channel(name, max_bytes),
    }
}

/// Whether `name` is a valid event name for the HTTP API (at most 200 bytes, printable, no
/// quote or backslash, so it needs no JSON escaping).
pub fn valid_event(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// The internal channel of `channel` in app `app_id`.
pub fn internal_name(app_id: &str, channel: &str) -> String {
    format!("#{app_id}#{channel}")
}

/// The prefix every internal channel of `app_id` starts with.
pub fn internal_prefix(app_id: &str) -> String {
    format!("#{app_id}#")
}

/// The Pusher channel of an internal name (the part after the app's prefix), if it is one.
pub fn pusher_name(internal: &str) -> Option<&str> {
    let rest = internal.strip_prefix('#')?;
    rest.split_once('#').map(|(_, channel)| channel)
}

/// Whether a channel name is an internal Pusher one (decided by its first byte: `/ws` names
/// never start with `#`).
pub fn is_internal(name: &str) -> bool {
    name.as_bytes().first() == Some(&b'#')
}

/// The socket id of a connection id: `HIGH.LOW` of its 64 bits, as Pusher's `\d+\.\d+`.
pub fn socket_id(conn: u64) -> String {
    format!("{}.{}", conn >> 32, conn & 0xffff_ffff)
}

/// The connection id of a socket id, if it is one.
pub fn parse_socket_id(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(high) || !digits(low) {
        return None;
    }
    let (high, low): (u64, u64) = (high.parse().ok()?, low.parse().ok()?);
    if high > u64::from(u32::MAX) || low > u64::from(u32::MAX) {
        return None;
    }
    Some(high << 32 | low)
}

/// A message a client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// `pusher:ping`.
    Ping,
    /// `pusher:pong` (an answer to the server's ping).
    Pong,
    /// `pusher:subscribe`.
    Subscribe {
        /// The channel.
        channel: String,
        /// `key:signature`, for private and presence channels.
        auth: Option<String>,
        /// The presence member, a JSON text exactly as the client sent it.
        channel_data: Option<String>,
    },
    /// `pusher:unsubscribe`.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// `pusher:signin`: the user the backend authenticated (`socket_id::user::user_data`).
    Signin {
        /// `key:signature`.
        auth: String,
        /// The user's data, a JSON text exactly as sent (its `id` names the user).
        user_data: String,
    },
    /// `client-*`: an event for the channel's other members.
    ClientEvent {
        /// The event name.
        event: String,
        /// The channel.
        channel: String,
        /// The data as sent (a JSON value's text).
        data: String,
    },
    /// Another `pusher:` event, or an event outside the protocol.
    Unknown(String),
}

/// Why a client message was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not one JSON object with a string `event`.
    NotJson,
    /// A known event without a field it needs.
    MissingField(&'static str),
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SigninData {
    auth: String,
    user_data: String,
}

#[derive(Deserialize, Default)]
struct SubscribeData {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<String>,
}

/// Parses one client text message.
pub fn parse(text: &[u8]) -> Result<ClientMessage, ParseError> {
    let raw: Raw<'_> = serde_json::from_slice(text).map_err(|_| ParseError::NotJson)?;
    let event = raw.event.as_ref();
    match event {
        "pusher:ping" => Ok(ClientMessage::Ping),
        "pusher:pong" => Ok(ClientMessage::Pong),
        "pusher:subscribe" | "pusher:unsubscribe" => {
            // pusher-js sends `data` as an object; some clients send it as a JSON string.
            let data: SubscribeData = match raw.data {
                None => SubscribeData::default(),
                Some(value) => match serde_json::from_str::<String>(value.get()) {
                    Ok(inner) => serde_json::from_str(&inner),
                    Err(_) => serde_json::from_str(value.get()),
                }
                .map_err(|_| ParseError::MissingField("data"))?,
            };
            let channel = data.channel.ok_or(ParseError::MissingField("channel"))?;
            if event == "pusher:unsubscribe" {
                return Ok(ClientMessage::Unsubscribe { channel });
            }
            Ok(ClientMessage::Subscribe {
                channel,
                auth: data.auth,
                channel_data: data.channel_data,
            })
        }
        "pusher:signin" => {
            let value = raw.data.ok_or(ParseError::MissingField("data"))?;
            let data: SigninData = match serde_json::from_str::<String>(value.get()) {
                Ok(inner) => serde_json::from_str(&inner),
                Err(_) => serde_json::from_str(value.get()),
            }
            .map_err(|_| ParseError::MissingField("auth, user_data"))?;
            Ok(ClientMessage::Signin {
                auth: data.auth,
                user_data: data.user_data,
            })
        }
        e if e.starts_with("client-") => Ok(ClientMessage::ClientEvent {
            event: e.to_string(),
            channel: raw.channel.ok_or(ParseError::MissingField("channel"))?,
            data: raw.data.map_or("null", |d| d.get()).to_string(),
        }),
        other => Ok(ClientMessage::Unknown(other.to_string())),
    }
}

/// A presence member from `channel_data`: `user_id` (a string, or a number taken as its text)
/// and `user_info` (any JSON, kept as its text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The user id.
    pub user_id: String,
    /// The user's info as JSON text (`None`: absent).
    pub user_info: Option<String>,
}

/// The member a presence subscription's `channel_data` names; `None` when it names none.
pub fn parse_member(channel_data: &str) -> Option<Member> {
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        user_id: &'a RawValue,
        #[serde(default, borrow)]
        user_info: Option<&'a RawValue>,
    }
    let data: Data<'_> = serde_json::from_str(channel_data).ok()?;
    let id = data.user_id.get();
    let user_id = match serde_json::from_str::<String>(id) {
        Ok(s) => s,
        Err(_) if serde_json::from_str::<serde_json::Number>(id).is_ok() => id.to_string(),
        Err(_) => return None,
    };
    if user_id.is_empty() || user_id.len() > 128 {
        return None;
    }
    Some(Member {
        user_id,
        user_info: data.user_info.map(|v| v.get().to_string()),
    })
}

fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// `pusher:connection_established`.
pub fn connection_established(socket_id: &str, activity_timeout_s: u64) -> String {
    let data =
        format!("{{\"socket_id\":\"{socket_id}\",\"activity_timeout\":{activity_timeout_s}}}");
    format!(
        "{{\"event\":\"pusher:connection_established\",\"data\":{}}}",
        json_string(&data)
    )
}

/// `pusher:error` with a code (pusher-js shows `data.code` and `data.message`).
pub fn error(code: u16, message: &str) -> String {
    format!(
        "{{\"event\":\"pusher:error\",\"data\":{{\"code\":{code},\"message\":{}}}}}",
        json_string(message)
    )
}

/// `pusher:pong`, the answer to `pusher:ping`.
pub fn pong() -> &'static str {
    "{\"event\":\"pusher:pong\",\"data\":\"{}\"}"
}

/// `pusher:ping`, sent to a client silent for its activity timeout.
pub fn ping() -> &'static str {
    "{\"event\":\"pusher:ping\",\"data\":\"{}\"}"
}

/// `pusher_internal:subscription_succeeded`; `data` is JSON text (`{}`, or the presence data).
pub fn subscription_succeeded(channel: &str, data: &str) -> String {
    event(
        "pusher_internal:subscription_succeeded",
        channel,
        data,
        None,
    )
}

/// `pusher:subscription_error` for `channel`, as pusher-js emits on a channel whose
/// authorization failed: `{"type":"AuthError","error":..,"status":401}`.
pub fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> String {
    let data = format!(
        "{{\"type\":{},\"error\":{},\"status\":{status}}}",
        json_string(kind),
        json_string(message)
    );
    format!(
        "{{\"event\":\"pusher:subscription_error\",\"channel\":{},\"data\":{data}}}",
        json_string(channel)
    )
}

/// An event on a channel: `{"event":E,"channel":C,"data":"<data as a string>"}`, with
/// `user_id` for a client event on a presence channel. Written once per message.
pub fn event(name: &str, channel: &str, data: &str, user_id: Option<&str>) -> String {
    let mut out = String::with_capacity(48 + name.len() + channel.len() + data.len() * 9 / 8);
    let _ = write!(
        out,
        "{{\"event\":{},\"channel\":{},\"data\":{}",
        json_string(name),
        json_string(channel),
        json_string(data)
    );
    if let Some(user) = user_id {
        let _ = write!(out, ",\"user_id\":{}", json_string(user));
    }
    out.push('}');
    out
}

/// A client event relayed as the client wrote its data (any JSON value, Pusher relays it as it
/// came), with `user_id` on presence channels.
pub fn client_event(name: &str, channel: &str, data_json: &str, user_id: Option<&str>) -> String {
    let mut out = format!(
        "{{\"event\":{},\"channel\":{},\"data\":{data_json}",
        json_string(name),
        json_string(channel)
    );
    if let Some(user) = user_id {
        let _ = write!(out, ",\"user_id\":{}", json_string(user));
    }
    out.push('}');
    out
}

/// The user id of a signin's `user_data` (`{"id":"..",..}`, a string or a number), if it is
/// one: 1 to 128 bytes of the channel-name characters, since it names the user's channel
/// `#server-to-user-{id}`.
pub fn signin_user(user_data: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        id: &'a RawValue,
    }
    let data: Data<'_> = serde_json::from_str(user_data).ok()?;
    let id = data.id.get();
    let id = match serde_json::from_str::<String>(id) {
        Ok(s) => s,
        Err(_) if serde_json::from_str::<serde_json::Number>(id).is_ok() => id.to_string(),
        Err(_) => return None,
    };
    valid_channel(&id, 128).then_some(id)
}

/// The channel a signed-in user's events come on.
pub fn user_channel(user_id: &str) -> String {
    format!("#server-to-user-{user_id}")
}

/// `pusher:signin_success` with the user's data as the client sent it.
pub fn signin_success(user_data: &str) -> String {
    let data = format!("{{\"user_data\":{}}}", json_string(user_data));
    format!(
        "{{\"event\":\"pusher:signin_success\",\"data\":{}}}",
        json_string(&data)
    )
}

/// `pusher_internal:member_added`.
pub fn member_added(channel: &str, user_id: &str, user_info: Option<&str>) -> String {
    let data = format!(
        "{{\"user_id\":{},\"user_info\":{}}}",
        json_string(user_id),
        user_info.unwrap_or("null")
    );
    event("pusher_internal:member_added", channel, &data, None)
}

/// `pusher_internal:member_removed`.
pub fn member_removed(channel: &str, user_id: &str) -> String {
    let data = format!("{{\"user_id\":{}}}", json_string(user_id));
    event("pusher_internal:member_removed", channel, &data, None)
}

/// The presence part of `subscription_succeeded`:
/// `{"presence":{"ids":[..],"hash":{id:info},"count":n}}`, from members in id order.
pub fn presence_data<'a>(
    members: impl Iterator<Item = (&'a str, Option<&'a str>)>,
    count: usize,
) -> String {
    let mut ids = String::from("[");
    let mut hash = String::from("{");
    for (i, (id, info)) in members.enumerate() {
        if i > 0 {
            ids.push(',');
            hash.push(',');
        }
        let id = json_string(id);
        ids.push_str(&id);
        let _ = write!(hash, "{id}:{}", info.unwrap_or("null"));
    }
    format!("{{\"presence\":{{\"ids\":{ids}],\"hash\":{hash}}},\"count\":{count}}}}}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_messages_never_panic(text in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&text);
        }

        #[test]
        fn arbitrary_fields_never_panic(
            event in prop_oneof![Just("pusher:subscribe".to_string()), Just("pusher:signin".to_string()),
                                 Just("client-x".to_string()), ".{0,20}"],
            data in prop_oneof![Just("null".to_string()), Just("{}".to_string()), ".{0,40}".prop_map(|s| serde_json::Value::from(s).to_string()),
                                "[0-9]{1,5}"],
            member in ".{0,80}",
            socket in ".{0,24}",
        ) {
            let text = format!("{{\"event\":{},\"data\":{data},\"channel\":\"c\"}}", serde_json::Value::from(event));
            let _ = parse(text.as_bytes());
            let _ = parse_member(&member);
            let _ = signin_user(&member);
            if let Some(id) = parse_socket_id(&socket) {
                prop_assert_eq!(parse_socket_id(&socket_id(id)), Some(id));
            }
        }

        #[test]
        fn written_messages_are_json(name in ".{0,30}", channel in ".{0,30}", data in ".{0,60}") {
            for text in [event(&name, &channel, &data, Some(&data)), error(4300, &data),
                         member_added(&channel, &name, None), member_removed(&channel, &name),
                         subscription_error(&channel, "AuthError", &data, 401), cache_miss(&channel),
                         signin_success(&data)] {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                prop_assert!(v["event"].is_string());
            }
            let v: serde_json::Value = serde_json::from_str(&event(&name, &channel, &data, None)).unwrap();
            prop_assert_eq!(v["data"].as_str(), Some(data.as_str()));
        }
    }

    #[test]
    fn client_messages_parse() {
        assert_eq!(
            parse(br#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            parse(br#"{"event":"pusher:subscribe","data":{"channel":"news"}}"#),
            Ok(ClientMessage::Subscribe {
                channel: "news".into(),
                auth: None,
                channel_data: None
            })
        );
        let presence = br#"{"event":"pusher:subscribe","data":{"auth":"k:ab","channel_data":"{\"user_id\":\"1\"}","channel":"presence-a"}}"#;
        assert_eq!(
            parse(presence),
            Ok(ClientMessage::Subscribe {
                channel: "presence-a".into(),
                auth: Some("k:ab".into()),
                channel_data: Some(r#"{"user_id":"1"}"#.into())
            })
        );
        let as_string = br#"{"event":"pusher:unsubscribe","data":"{\"channel\":\"news\"}"}"#;
        assert_eq!(
            parse(as_string),
            Ok(ClientMessage::Unsubscribe {
                channel: "news".into()
            })
        );
        assert_eq!(
            parse(br#"{"event":"client-typing","channel":"private-a","data":{"x":1}}"#),
            Ok(ClientMessage::ClientEvent {
                event: "client-typing".into(),
                channel: "private-a".into(),
                data: r#"{"x":1}"#.into()
            })
        );
        assert_eq!(
            parse(br#"{"event":"pusher:other"}"#),
            Ok(ClientMessage::Unknown("pusher:other".into()))
        );
        assert_eq!(parse(b"not json"), Err(ParseError::NotJson));
        assert_eq!(parse(br#"{"data":1}"#), Err(ParseError::NotJson));
        assert_eq!(parse(br#"[1]"#), Err(ParseError::NotJson));
        assert_eq!(
            parse(br#"{"event":"pusher:subscribe","data":{}}"#),
            Err(ParseError::MissingField("channel"))
        );
        assert_eq!(
            parse(br#"{"event":"pusher:subscribe","data":7}"#),
            Err(ParseError::MissingField("data"))
        );
    }

    #[test]
    fn every_split_and_garbage_parses_without_panic() {
        let good = br#"{"event":"pusher:subscribe","data":{"auth":"k:ab","channel_data":"{\"user_id\":1}","channel":"presence-a"}}"#;
        for end in 0..good.len() {
            let _ = parse(&good[..end]);
            let _ = parse(&good[end..]);
        }
        for data in [
            "",
            "{",
            "{\"user_id\":[]}",
            "{\"user_id\":null}",
            "{\"user_id\":\"\"}",
        ] {
            assert_eq!(parse_member(data), None, "{data}");
        }
    }

    #[test]
    fn signins_parse_and_name_their_user() {
        let text = br#"{"event":"pusher:signin","data":{"auth":"k:ab","user_data":"{\"id\":\"u1\",\"name\":\"A\"}"}}"#;
        assert_eq!(
            parse(text),
            Ok(ClientMessage::Signin {
                auth: "k:ab".into(),
                user_data: r#"{"id":"u1","name":"A"}"#.into()
            })
        );
        assert_eq!(
            parse(br#"{"event":"pusher:signin","data":{"auth":"k:ab"}}"#),
            Err(ParseError::MissingField("auth, user_data"))
        );
        assert_eq!(signin_user(r#"{"id":"u1"}"#).as_deref(), Some("u1"));
        assert_eq!(signin_user(r#"{"id":7}"#).as_deref(), Some("7"));
        for bad in [
            r#"{"id":"a\"b"}"#,
            r#"{"id":""}"#,
            r#"{"name":"x"}"#,
            "[]",
            "",
            r#"{"id":null}"#,
        ] {
            assert_eq!(signin_user(bad), None, "{bad}");
        }
        let ok: serde_json::Value =
            serde_json::from_str(&signin_success(r#"{"id":"u1"}"#)).unwrap();
        let data: serde_json::Value = serde_json::from_str(ok["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["user_data"], r#"{"id":"u1"}"#);
        assert_eq!(user_channel("u1"), "#server-to-user-u1");
    }

    #[test]
    fn members_take_string_or_number_ids() {
        assert_eq!(
            parse_member(r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#),
            Some(Member {
                user_id: "10".into(),
                user_info: Some(r#"{"name":"Mr. Channels"}"#.into())
            })
        );
        assert_eq!(
            parse_member(r#"{"user_id":"u1"}"#),
            Some(Member {
                user_id: "u1".into(),
                user_info: None
            })
        );
    }

    #[test]
    fn server_messages_are_what_pusher_js_reads() {
        let established = connection_established("1.2", 120);
        let v: serde_json::Value = serde_json::from_str(&established).unwrap();
        assert_eq!(v["event"], "pusher:connection_established");
        let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["socket_id"], "1.2");
        assert_eq!(data["activity_timeout"], 120);
        let e = event("my-event", "news", "{\"a\":\"\\\"q\"}", None);
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["data"], "{\"a\":\"\\\"q\"}");
        assert_eq!(v["channel"], "news");
        let p = presence_data([("1", Some("{\"n\":1}")), ("2", None)].into_iter(), 2);
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["presence"]["ids"], serde_json::json!(["1", "2"]));
        assert_eq!(v["presence"]["hash"]["1"]["n"], 1);
        assert_eq!(v["presence"]["count"], 2);
        let added = member_added("presence-a", "1", Some("{}"));
        let v: serde_json::Value = serde_json::from_str(&added).unwrap();
        let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["user_id"], "1");
        let err = error(code::APP_UNKNOWN, "no such app");
        let v: serde_json::Value = serde_json::from_str(&err).unwrap();
        assert_eq!(v["data"]["code"], 4001);
        for text in [pong(), ping()] {
            serde_json::from_str::<serde_json::Value>(text).unwrap();
        }
        let s = subscription_error("private-a", "AuthError", "bad", 401);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["data"]["status"], 401);
    }

    #[test]
    fn names_and_socket_ids() {
        assert_eq!(kind_of("presence-room"), Kind::Presence);
        assert_eq!(kind_of("private-encrypted-x"), Kind::Private);
        assert_eq!(kind_of("private-cache-x"), Kind::Private);
        assert_eq!(kind_of("presence-cache-x"), Kind::Presence);
        assert_eq!(kind_of("cache-x"), Kind::Public);
        assert_eq!(kind_of("news"), Kind::Public);
        assert!(is_cache("cache-x") && is_cache("private-cache-x") && is_cache("presence-cache-x"));
        assert!(is_cache("private-encrypted-cache-x"));
        assert!(!is_cache("news") && !is_cache("private-x") && !is_cache("x-cache-y"));
        let miss: serde_json::Value = serde_json::from_str(&cache_miss("cache-x")).unwrap();
        assert_eq!(miss["event"], "pusher:cache_miss");
        assert!(valid_channel("private-a=b,c;d@e.f_g-h", 164));
        assert!(!valid_channel("a b", 164));
        assert!(!valid_channel("#1#x", 164));
        assert!(!valid_channel(&"a".repeat(165), 164));
        assert!(!valid_channel("", 164));
        let internal = internal_name("app1", "presence-a");
        assert!(is_internal(&internal));
        assert_eq!(pusher_name(&internal), Some("presence-a"));
        assert!(internal.starts_with(&internal_prefix("app1")));
        assert!(crate::channel::validate_name(&internal, 1024).is_err());
        for id in [0u64, 1, 1 << 40 | 7, u64::MAX >> 11] {
            let s = socket_id(id);
            assert!(s.split_once('.').is_some());
            assert_eq!(parse_socket_id(&s), Some(id));
        }
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "a.1",
            "1.2.3",
            "99999999999.1",
            "4294967296.0",
        ] {
            assert_eq!(parse_socket_id(bad), None, "{bad}");
        }
        assert!(valid_api_channel("#server-to-user-u1", 164));
        assert!(valid_api_channel("news", 164));
        assert!(!valid_api_channel("#server-to-user-", 164));
        assert!(!valid_api_channel("#other", 164));
        assert!(valid_event("my-event"));
        assert!(!valid_event("a\"b"));
        assert!(!valid_event(""));
    }
}
