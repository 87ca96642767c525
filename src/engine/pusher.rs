//! The Pusher Channels endpoint on the engine: `/app/{key}` WebSocket connections speaking the
//! Pusher protocol (pusher-js, Laravel Echo) and the signed HTTP API `/apps/{id}/...` of the
//! Pusher server SDKs, over the engine's own channels, presence and fan-out (docs/pusher.md).
//!
//! Owns: the per-app connection counts of this shard, the glue from `wire::pusher` and
//! `auth::pusher` (sans-IO: parsing, writing, signatures) to subscriptions, presence and
//! publishes. A Pusher channel `C` of app `A` is the engine channel `#A#C`, a name `/ws` and
//! the control socket cannot use, so apps are isolated from each other and from `/ws`.
//!
//! Must not: do anything when no app is configured (`Engine::pusher` is `None`: the paths are
//! unknown and no Pusher code runs on the `/ws` path); encode an event per subscriber (the
//! API's event is written once, then published like any message; the owner frames it once).
//!
//! Presence: a Pusher connection's user in a presence channel is the `user_id` of the
//! `channel_data` it subscribed with (kept in `Ext::pusher_members`), so the engine's presence
//! by user gives `member_added` on a user's first connection and `member_removed` after its
//! last, never twice for two tabs.

use super::Engine;
use super::conn::{Endpoint, PusherMember, REFUSED_APP, State};
use super::io::Token;
use super::limits_ticks;
use super::xmsg::{Cached, Part, Query, XMsg};
use crate::auth::OriginPolicy;
use crate::auth::pusher::{self as sig, SignedRequest};
use crate::channel::{self, ChannelError};
use crate::config::{ClientEvents, PusherApp, PusherConfig};
use crate::http::{self, Request};
use crate::proto::frame::{self, OpCode};
use crate::proto::handshake;
use crate::wire::Body;
use crate::wire::pusher::{self as wire, ClientMessage, Kind, code};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

/// This shard's view of the apps.
#[derive(Debug)]
pub struct PusherApps {
    apps: Vec<AppState>,
}

#[derive(Debug)]
struct AppState {
    origins: OriginPolicy,
    /// This shard's open connections of the app.
    open: usize,
}

impl PusherApps {
    /// The apps' state; `None` without apps.
    pub fn new(config: &PusherConfig) -> Option<PusherApps> {
        if config.apps.is_empty() {
            return None;
        }
        let apps = config
            .apps
            .iter()
            .map(|app| AppState {
                // Validated at load (`PusherConfig::validate`); a bad list would only allow all.
                origins: OriginPolicy::parse(&app.allowed_origins).unwrap_or_default(),
                open: 0,
            })
            .collect();
        Some(PusherApps { apps })
    }
}

/// Which counts an HTTP API channel query asked for (`info=user_count,subscription_count`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Info {
    /// `user_count` (presence channels).
    pub user_count: bool,
    /// `subscription_count`.
    pub subscription_count: bool,
}

impl Info {
    /// The counts `info` (a comma-separated list) asks for; unknown items are ignored.
    pub fn parse(info: &str) -> Info {
        let mut out = Info::default();
        for item in info.split(',') {
            match item.trim() {
                "user_count" => out.user_count = true,
                "subscription_count" => out.subscription_count = true,
                _ => {}
            }
        }
        out
    }

    /// Whether any count is asked for.
    pub fn any(self) -> bool {
        self.user_count || self.subscription_count
    }
}

/// Which answer the owners' channel counts make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `GET /channels`: `{"channels":{name:{..}}}`, occupied channels only.
    List,
    /// `GET /channels/{name}`: `{"occupied":..,..}`.
    One,
    /// `POST /events` with `info`: `{"channels":{name:{..}}}` for every channel triggered.
    Trigger,
}

/// Renders an API channel query's answer from the owners' parts, in `shape`.
pub fn render_channels(map: &BTreeMap<Arc<str>, (u64, u64)>, info: Info, shape: Shape) -> String {
    let counts = |out: &mut String, conns: u64, users: u64, first: bool| {
        let mut first = first;
        if info.user_count {
            let _ = write!(
                out,
                "{}\"user_count\":{users}",
                if first { "" } else { "," }
            );
            first = false;
        }
        if info.subscription_count {
            let _ = write!(
                out,
                "{}\"subscription_count\":{conns}",
                if first { "" } else { "," }
            );
        }
    };
    let mut out = String::new();
    if shape == Shape::One {
        let (conns, users) = map.values().next().copied().unwrap_or((0, 0));
        let _ = write!(out, "{{\"occupied\":{}", conns > 0);
        counts(&mut out, conns, users, false);
        out.push('}');
        return out;
    }
    out.push_str("{\"channels\":{");
    // Users' own channels (`#server-to-user-`) are not listed, as with Pusher; a trigger's
    // answer names every channel it went to.
    let listed = map
        .iter()
        .map(|(name, counts)| (wire::pusher_name(name).unwrap_or(name), counts))
        .filter(|(name, c)| shape == Shape::Trigger || (c.0 > 0 && !name.starts_with('#')));
    for (i, (name, &(conns, users))) in listed.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}:{{", serde_json::Value::from(name));
        counts(&mut out, conns, users, true);
        out.push('}');
    }
    out.push_str("}}");
    out
}

/// A batch's answer: `{"batch":[{..},..]}`, item `i` with the counts `items[i]` asked for, of
/// its channel (0 for a channel its owner has nobody in).
pub fn render_batch(map: &BTreeMap<Arc<str>, (u64, u64)>, items: &[(Arc<str>, Info)]) -> String {
    let mut out = String::from("{\"batch\":[");
    for (i, (channel, info)) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let (conns, users) = map.get(channel).copied().unwrap_or((0, 0));
        out.push('{');
        if info.user_count {
            let _ = write!(out, "\"user_count\":{users}");
        }
        if info.subscription_count {
            let sep = if info.user_count { "," } else { "" };
            let _ = write!(out, "{sep}\"subscription_count\":{conns}");
        }
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// One event of `POST /apps/{id}/events` or of a batch.
#[derive(Deserialize)]
struct ApiEvent<'a> {
    name: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

#[derive(Deserialize)]
struct ApiBatch<'a> {
    #[serde(borrow)]
    batch: Vec<ApiEvent<'a>>,
}

/// An API error: status and explanation.
type ApiError = (u16, String);

impl Engine {
    /// Routes an upgrade to `/app/{key}`: the app's index, or the code and reason it is refused
    /// with after the upgrade (pusher-js reads a `pusher:error` and a close code, not an HTTP
    /// status).
    pub(super) fn pusher_route(
        &mut self,
        key: &str,
        request: &handshake::Request,
    ) -> Result<u16, (u16, &'static str)> {
        let config = self.config.clone();
        let Some(index) = config.pusher.apps.iter().position(|a| a.key == key) else {
            return Err((code::APP_UNKNOWN, "App key not in this cluster"));
        };
        let protocol = http::query::value(&request.query, "protocol")
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0);
        if protocol < wire::PROTOCOL {
            return Err((code::PROTOCOL, "Unsupported protocol version"));
        }
        let Some(apps) = self.pusher.as_mut() else {
            return Err((code::APP_UNKNOWN, "App key not in this cluster"));
        };
        let Some(state) = apps.apps.get_mut(index) else {
            return Err((code::APP_UNKNOWN, "App key not in this cluster"));
        };
        if !state.origins.allows(request.origin.as_deref()) {
            self.counters.origin_refusals += 1;
            return Err((code::UNAUTHORIZED, "Origin not allowed"));
        }
        let max = config.pusher.apps[index].max_connections;
        if max > 0 && state.open >= max.div_ceil(self.shards) {
            return Err((code::OVER_QUOTA, "Over connection quota"));
        }
        state.open += 1;
        Ok(index as u16)
    }

    /// The WebSocket is open: `connection_established`, or the refusal and its close.
    pub(super) fn pusher_open(
        &mut self,
        slot: usize,
        route: Result<u16, (u16, &'static str)>,
        rest: &mut [u8],
    ) {
        let app = match route {
            Ok(app) => app,
            Err((code, message)) => {
                self.counters.pusher_refusals += 1;
                self.pusher_send(slot, &wire::error(code, message));
                return self.fail(slot, code);
            }
        };
        self.counters.pusher_conns += 1;
        let activity_s = self
            .config
            .pusher
            .apps
            .get(app as usize)
            .map_or(120, |a| a.activity_timeout_s);
        let socket_id = wire::socket_id(self.conn_id(slot).get());
        self.pusher_send(slot, &wire::connection_established(&socket_id, activity_s));
        let due = self.now_tick + limits_ticks(activity_s.saturating_mul(1000));
        self.wheel.insert(slot, due);
        if !rest.is_empty() {
            self.decode(slot, rest);
        }
    }

    /// A Pusher connection is freed.
    pub(super) fn pusher_closed(&mut self, app: u16) {
        if app == REFUSED_APP {
            return;
        }
        if let Some(state) = self
            .pusher
            .as_mut()
            .and_then(|p| p.apps.get_mut(app as usize))
        {
            state.open = state.open.saturating_sub(1);
        }
    }

    /// An open Pusher connection's deadline: silent for its activity timeout, it gets a
    /// `pusher:ping`; silent for `pusher_pong_timeout_ms` more, it is closed with 4201.
    pub(super) fn pusher_deadline(&mut self, slot: usize) {
        let Endpoint::Pusher { app } = self.conns[slot].endpoint else {
            return;
        };
        let Some(cfg) = self.config.pusher.apps.get(app as usize) else {
            // A refused connection past its close: nothing to wait for.
            return self.start_close(slot, code::APP_UNKNOWN);
        };
        let activity = limits_ticks(cfg.activity_timeout_s.saturating_mul(1000)).max(1);
        let pong = limits_ticks(self.config.limits.pusher_pong_timeout_ms).max(1);
        let last = self.conns[slot].last_rx_tick;
        let silent = self.now_tick.wrapping_sub(last);
        if silent >= activity + pong {
            self.counters.pusher_timeouts += 1;
            return self.start_close_with(slot, code::PONG_TIMEOUT, "Pong reply not received");
        }
        if silent >= activity {
            self.pusher_send(slot, wire::ping());
            self.wheel.insert(slot, last.wrapping_add(activity + pong));
        } else {
            self.wheel.insert(slot, last.wrapping_add(activity));
        }
    }

    /// The close code a connection is closed with for a ringcast reason: a Pusher client gets
    /// one in the range pusher-js acts on as meant (4100-4199: reconnect after backing off)
    /// instead of ringcast's 4001 (slow consumer) and 4002 (rate limited), which pusher-js
    /// would read as "never reconnect" (4000-4099), and instead of 1001 (shutdown) and 1012
    /// (drain), after which pusher-js would reconnect at once, every client together, to a
    /// server that is going away.
    pub(super) fn pusher_close_code(&self, slot: usize, code: u16) -> u16 {
        use crate::proto::close;
        match self.conns[slot].endpoint {
            Endpoint::Pusher { .. } => match code {
                close::SLOW_CONSUMER
                | close::RATE_LIMITED
                | close::GOING_AWAY
                | close::SERVICE_RESTART => code::OVER_CAPACITY,
                other => other,
            },
            _ => code,
        }
    }

    fn pusher_send(&mut self, slot: usize, text: &str) {
        self.queue_data(slot, frame::encode(OpCode::Text, text.as_bytes()));
    }

    fn pusher_error(&mut self, slot: usize, code: u16, message: &str) {
        self.counters.pusher_errors += 1;
        self.pusher_send(slot, &wire::error(code, message));
    }

    /// The member `slot` is in the presence channel `name` (internal), if any.
    pub(super) fn pusher_member(&self, slot: usize, name: &str) -> Option<&PusherMember> {
        let ext = self.conns.get(slot)?.ext.as_ref()?;
        ext.pusher_members.iter().find(|m| &*m.channel == name)
    }

    /// One text message of a Pusher client.
    pub(super) fn on_pusher_message(&mut self, slot: usize, app: u16, text: &[u8]) {
        let config = self.config.clone();
        let Some(cfg) = config.pusher.apps.get(app as usize) else {
            return; // refused: its close is on its way
        };
        match wire::parse(text) {
            Err(wire::ParseError::NotJson) => self.pusher_error(
                slot,
                code::BAD_MESSAGE,
                "messages are JSON objects with an event",
            ),
            Err(wire::ParseError::MissingField(field)) => {
                let why = format!("missing or bad field: {field}");
                self.pusher_error(slot, code::BAD_MESSAGE, &why)
            }
            Ok(ClientMessage::Ping) => self.pusher_send(slot, wire::pong()),
            Ok(ClientMessage::Pong) => {}
            Ok(ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            }) => self.pusher_subscribe(slot, cfg, &channel, auth, channel_data),
            Ok(ClientMessage::Unsubscribe { channel }) => {
                let internal = wire::internal_name(&cfg.id, &channel);
                let member = self
                    .local
                    .find(&internal)
                    .filter(|&l| self.conns[slot].subs.iter().any(|m| m.channel == l));
                // Pusher answers nothing to an unsubscribe, even of a channel it did not have.
                if let Some(local) = member {
                    self.leave(slot, local);
                }
            }
            Ok(ClientMessage::ClientEvent {
                event,
                channel,
                data,
            }) => self.pusher_client_event(slot, cfg, &event, &channel, &data),
            Ok(ClientMessage::Signin { auth, user_data }) => {
                self.pusher_signin(slot, cfg, &auth, &user_data)
            }
            Ok(ClientMessage::Unknown(event)) => {
                let why = format!("unsupported event {}", serde_json::Value::from(event));
                self.pusher_error(slot, code::BAD_MESSAGE, &why)
            }
        }
    }

    fn pusher_auth_failed(&mut self, slot: usize, channel: &str, why: &str) {
        self.counters.pusher_auth_failures += 1;
        self.pusher_error(slot, code::UNAUTHORIZED, why);
        self.pusher_send(
            slot,
            &wire::subscription_error(channel, "AuthError", why, 401),
        );
    }

    /// `pusher:signin`: checked like a channel authorization (`socket_id::user::user_data`);
    /// the connection is then the user's, and subscribed to its `#server-to-user-{id}` channel
    /// (so the API's events to the user and `terminate_connections` reach it, whether or not
    /// the client subscribes there itself, as pusher-js does).
    fn pusher_signin(&mut self, slot: usize, cfg: &PusherApp, auth: &str, user_data: &str) {
        if self.conns[slot]
            .ext
            .as_ref()
            .is_some_and(|e| e.pusher_user.is_some())
        {
            return self.pusher_error(slot, code::BAD_MESSAGE, "Already signed in");
        }
        let socket_id = wire::socket_id(self.conn_id(slot).get());
        let secret = cfg.secret.as_bytes();
        if !sig::verify_user_auth(&cfg.key, secret, &socket_id, user_data, auth) {
            self.counters.pusher_auth_failures += 1;
            return self.pusher_error(slot, code::UNAUTHORIZED, "Invalid signin signature");
        }
        let Some(user) = wire::signin_user(user_data) else {
            let why = "user_data must have an id of [A-Za-z0-9_-=@,.;], 1 to 128 bytes";
            return self.pusher_error(slot, code::BAD_MESSAGE, why);
        };
        self.conns[slot].ext_mut().pusher_user = Some(Arc::from(user.as_str()));
        self.pusher_send(slot, &wire::signin_success(user_data));
        let internal = wire::internal_name(&cfg.id, &wire::user_channel(&user));
        if let Err(e) = self.subscribe_named(slot, &internal, None, None) {
            self.pusher_channel_error(slot, e);
        }
    }

    /// A client's own subscribe to `#server-to-user-{id}`: only as that signed-in user, and
    /// already done by the sign-in.
    fn pusher_user_channel(&mut self, slot: usize, cfg: &PusherApp, channel: &str) {
        let mine = self.conns[slot]
            .ext
            .as_ref()
            .and_then(|e| e.pusher_user.as_deref())
            .is_some_and(|user| wire::user_channel(user) == channel);
        if !mine {
            let why = format!("{channel} needs a signin as that user");
            return self.pusher_auth_failed(slot, channel, &why);
        }
        let internal = wire::internal_name(&cfg.id, channel);
        let subscribed = self
            .local
            .find(&internal)
            .is_some_and(|l| self.conns[slot].subs.iter().any(|m| m.channel == l));
        if subscribed {
            let text = wire::subscription_succeeded(channel, "{}");
            return self.pusher_send(slot, &text);
        }
        if let Err(e) = self.subscribe_named(slot, &internal, None, None) {
            self.pusher_channel_error(slot, e);
        }
    }

    /// Closes this shard's subscribers of `channel` (a user's channel) with 4009.
    pub(super) fn pusher_terminate(&mut self, channel: &str) {
        let Some(local) = self.local.find(channel) else {
            return;
        };
        let slots: Vec<u32> = self.local.get(local).subscribers.clone();
        for slot in slots {
            let slot = slot as usize;
            if self.conns.get(slot).is_some_and(|c| c.state == State::Open) {
                self.start_close_with(slot, code::UNAUTHORIZED, "Terminated by the server");
            }
        }
    }

    fn pusher_subscribe(
        &mut self,
        slot: usize,
        cfg: &PusherApp,
        channel: &str,
        auth: Option<String>,
        channel_data: Option<String>,
    ) {
        if channel.starts_with("#server-to-user-") {
            return self.pusher_user_channel(slot, cfg, channel);
        }
        if !wire::valid_channel(channel, self.config.limits.pusher_channel_name_bytes_max) {
            return self.pusher_error(slot, code::BAD_MESSAGE, "Invalid channel name");
        }
        let kind = wire::kind_of(channel);
        let member = match kind {
            Kind::Public => None,
            Kind::Private | Kind::Presence => {
                let socket_id = wire::socket_id(self.conn_id(slot).get());
                let data = channel_data.as_deref().filter(|_| kind == Kind::Presence);
                let ok = auth.as_deref().is_some_and(|auth| {
                    sig::verify_channel_auth(
                        &cfg.key,
                        cfg.secret.as_bytes(),
                        &socket_id,
                        channel,
                        data,
                        auth,
                    )
                });
                if !ok {
                    let why = format!("Invalid signature for {channel}");
                    return self.pusher_auth_failed(slot, channel, &why);
                }
                match (kind, data.map(wire::parse_member)) {
                    (Kind::Presence, Some(Some(m))) => Some(m),
                    (Kind::Presence, _) => {
                        let why = "channel_data must name a user_id";
                        return self.pusher_auth_failed(slot, channel, why);
                    }
                    _ => None,
                }
            }
        };
        let internal: Arc<str> = Arc::from(wire::internal_name(&cfg.id, channel));
        let already = self
            .local
            .find(&internal)
            .is_some_and(|l| self.conns[slot].subs.iter().any(|m| m.channel == l));
        if already {
            return self.pusher_error(slot, code::BAD_MESSAGE, "Already subscribed");
        }
        if let Some(m) = member {
            // Before the subscription, so its presence delta names the user.
            self.conns[slot]
                .ext_mut()
                .pusher_members
                .push(PusherMember {
                    channel: internal.clone(),
                    user: Arc::from(m.user_id),
                    info: m.user_info.map(Arc::from),
                });
        }
        if let Err(e) = self.subscribe_named(slot, &internal, None, None) {
            if let Some(ext) = self.conns[slot].ext.as_mut() {
                ext.pusher_members.retain(|m| m.channel != internal);
            }
            self.pusher_channel_error(slot, e);
        }
    }

    /// A subscription is in place: `subscription_succeeded` (for presence, once the owner sent
    /// the members; the client's later messages wait for it, as for any owner round trip).
    pub(super) fn pusher_subscribed(&mut self, slot: usize, internal: &str, since: u64) {
        let Some(channel) = wire::pusher_name(internal) else {
            return;
        };
        if wire::kind_of(channel) != Kind::Presence {
            let text = wire::subscription_succeeded(channel, "{}");
            self.pusher_send(slot, &text);
            return self.pusher_ask_cache(slot, internal, since);
        }
        let user = self.pusher_member(slot, internal).map(|m| m.user.clone());
        let conn = &mut self.conns[slot];
        conn.awaiting = conn.awaiting.saturating_add(1);
        let generation = conn.generation;
        let name: Arc<str> = Arc::from(internal);
        let owner = channel::owner_of(&name, self.shards);
        self.send_x(
            owner,
            XMsg::PusherMembers {
                channel: name,
                shard: self.index as u16,
                slot: slot as u32,
                generation,
                since,
                user,
            },
        );
    }

    /// After `subscription_succeeded` on a cache channel: ask its owner for the last event
    /// (the client's later messages wait for it, so it comes before anything they cause).
    fn pusher_ask_cache(&mut self, slot: usize, internal: &str, since: u64) {
        if !wire::pusher_name(internal).is_some_and(wire::is_cache) {
            return;
        }
        let conn = &mut self.conns[slot];
        conn.awaiting = conn.awaiting.saturating_add(1);
        let generation = conn.generation;
        let name: Arc<str> = Arc::from(internal);
        let owner = channel::owner_of(&name, self.shards);
        let msg = XMsg::PusherCache {
            channel: name,
            shard: self.index as u16,
            slot: slot as u32,
            generation,
            since,
        };
        self.send_x(owner, msg);
    }

    /// The owner: a cache channel's last event for a subscriber that began at `since`.
    pub(super) fn on_pusher_cache(
        &mut self,
        channel: Arc<str>,
        shard: u16,
        slot: u32,
        generation: u32,
        since: u64,
    ) {
        if let Some((_, ttl_ms)) = self.history_policy(&channel) {
            let now = self.now_ms;
            self.owned.expire(&channel, now, ttl_ms);
        }
        let last = self
            .owned
            .get(&channel)
            .and_then(|o| o.history.newest(1).next());
        let cached = match last {
            Some(entry) if entry.offset > since => Cached::Live,
            Some(entry) => Cached::Frame(entry.frames.envelope.clone()),
            None => Cached::Miss,
        };
        let msg = XMsg::PusherCacheReply {
            channel,
            slot,
            generation,
            cached,
        };
        self.send_x(shard as usize, msg);
    }

    /// The cache answer arrived: the last event or `pusher:cache_miss`, then what waited.
    pub(super) fn on_pusher_cache_reply(
        &mut self,
        channel: &str,
        slot: u32,
        generation: u32,
        cached: Cached,
    ) {
        let local = self.local.find(channel);
        let Some(conn) = self.conns.live(Token { slot, generation }) else {
            return;
        };
        conn.awaiting = conn.awaiting.saturating_sub(1);
        let subscribed = local.is_some_and(|l| conn.subs.iter().any(|m| m.channel == l));
        let slot = slot as usize;
        if subscribed && conn.state == State::Open {
            match cached {
                Cached::Frame(frame) => {
                    self.queue_data(slot, frame);
                }
                Cached::Miss => {
                    if let Some(name) = wire::pusher_name(channel) {
                        self.pusher_send(slot, &wire::cache_miss(name));
                    }
                }
                Cached::Live => {}
            }
        }
        if self.conns.get(slot).is_some_and(|c| c.awaiting == 0) {
            self.replay_deferred(slot);
        }
    }

    /// A channel operation of a Pusher client was refused.
    pub(super) fn pusher_channel_error(&mut self, slot: usize, e: ChannelError) {
        let code = match e {
            ChannelError::TooManySubscriptions | ChannelError::TooManyChannels => code::LIMIT,
            _ => code::BAD_MESSAGE,
        };
        let message = e.message(self.config.limits.pusher_channel_name_bytes_max);
        self.pusher_error(slot, code, &message);
    }

    /// The owner: the presence data of `channel` for a subscriber's `subscription_succeeded`.
    pub(super) fn on_pusher_members(
        &mut self,
        channel: Arc<str>,
        shard: u16,
        slot: u32,
        generation: u32,
        since: u64,
        user: Option<Arc<str>>,
    ) {
        let max = self.config.limits.pusher_presence_members_max;
        let data = match self.presence.get(&channel) {
            Some(p) => {
                if p.users() > max {
                    self.counters.pusher_members_truncated += 1;
                }
                let mut members: Vec<(&str, Option<&str>)> = p
                    .page(None, max)
                    .map(|(u, m)| (&**u, m.info.as_deref()))
                    .collect();
                // The asker is always listed (a cut list keeps its first max - 1 and it).
                let me = user.as_deref().and_then(|u| p.member(u));
                if let Some((u, m)) = me.filter(|(u, _)| !members.iter().any(|x| x.0 == &***u)) {
                    if members.len() >= max.max(1) {
                        members.pop();
                    }
                    members.push((&**u, m.info.as_deref()));
                }
                wire::presence_data(members.into_iter(), p.users())
            }
            None => wire::presence_data(std::iter::empty(), 0),
        };
        let msg = XMsg::PusherMembersReply {
            channel,
            slot,
            generation,
            since,
            data,
        };
        self.send_x(shard as usize, msg);
    }

    /// The members arrived: `subscription_succeeded` (unless it unsubscribed meanwhile), then
    /// the messages that waited for it.
    pub(super) fn on_pusher_members_reply(
        &mut self,
        channel: &str,
        slot: u32,
        generation: u32,
        since: u64,
        data: &str,
    ) {
        let local = self.local.find(channel);
        let Some(conn) = self.conns.live(Token { slot, generation }) else {
            return;
        };
        conn.awaiting = conn.awaiting.saturating_sub(1);
        let subscribed = local.is_some_and(|l| conn.subs.iter().any(|m| m.channel == l));
        let slot = slot as usize;
        if subscribed && conn.state == State::Open {
            if let Some(name) = wire::pusher_name(channel) {
                let text = wire::subscription_succeeded(name, data);
                self.pusher_send(slot, &text);
            }
            self.pusher_ask_cache(slot, channel, since);
        }
        if self.conns.get(slot).is_some_and(|c| c.awaiting == 0) {
            self.replay_deferred(slot);
        }
    }

    /// The owner: a user's first connection joined (or last left) a Pusher presence channel.
    pub(super) fn pusher_news(
        &mut self,
        name: &Arc<str>,
        user: &Arc<str>,
        info: Option<Arc<str>>,
        joined: bool,
    ) {
        let Some(channel) = wire::pusher_name(name) else {
            return;
        };
        if wire::kind_of(channel) != Kind::Presence {
            return;
        }
        self.counters.presence_news += 1;
        self.hook_member(name, user, joined);
        let text = if joined {
            wire::member_added(channel, user, info.as_deref())
        } else {
            wire::member_removed(channel, user)
        };
        self.notify_shards(name, &text, joined.then(|| user.clone()));
    }

    /// A `client-*` event: relayed to the channel's other subscribers when the app allows it
    /// and the sender subscribes to that private or presence channel; never back to the sender.
    fn pusher_client_event(
        &mut self,
        slot: usize,
        cfg: &PusherApp,
        event: &str,
        channel: &str,
        data: &str,
    ) {
        if cfg.client_events == ClientEvents::Off {
            let why = "Client events are not enabled for this app";
            return self.pusher_error(slot, code::CLIENT_EVENT, why);
        }
        if wire::kind_of(channel) == Kind::Public {
            let why = "Client events need a private or presence channel";
            return self.pusher_error(slot, code::CLIENT_EVENT, why);
        }
        if data.len() > self.config.limits.pusher_event_bytes_max || !wire::valid_event(event) {
            let why = "Client event too large, or a bad event name";
            return self.pusher_error(slot, code::CLIENT_EVENT, why);
        }
        let internal = wire::internal_name(&cfg.id, channel);
        let subscribed = self
            .local
            .find(&internal)
            .is_some_and(|l| self.conns[slot].subs.iter().any(|m| m.channel == l));
        if !subscribed {
            let why = "Client events need a subscription to the channel";
            return self.pusher_error(slot, code::CLIENT_EVENT, why);
        }
        if !self.take_client_event_token(slot) {
            self.counters.pusher_client_events_limited += 1;
            let why = "Client event rejected due to rate limit";
            return self.pusher_error(slot, code::CLIENT_EVENT, why);
        }
        let user = self.pusher_member(slot, &internal).map(|m| m.user.clone());
        let text = wire::client_event(event, channel, data, user.as_deref());
        self.counters.pusher_client_events += 1;
        let exclude = Some(self.conn_id(slot).get());
        if let Some(conn) = exclude {
            self.hook_client_event(&internal, event, data, conn, user.as_deref());
        }
        let channel: Arc<str> = Arc::from(internal);
        let owner = channel::owner_of(&channel, self.shards);
        let body = Body::Pusher {
            text: Bytes::from(text),
            exclude,
        };
        self.send_x(
            owner,
            XMsg::Publish {
                channel,
                body,
                reply: None,
                report: false,
                key: None,
            },
        );
    }

    /// One client event from the connection's bucket (refilled from the ticks elapsed, burst
    /// of one second's worth); false when it is empty.
    fn take_client_event_token(&mut self, slot: usize) -> bool {
        let rate = self.config.limits.pusher_client_events_per_s;
        if rate == 0 {
            return true;
        }
        let now = self.now_tick;
        let ext = self.conns[slot].ext_mut();
        // Before the first event the bucket is full: as if refilled a second ago.
        let last = ext
            .client_event_tick
            .unwrap_or_else(|| now.wrapping_sub(limits_ticks(1000)));
        let elapsed_ms = u64::from(now.wrapping_sub(last)) * super::TICK_MS;
        let refill = elapsed_ms * u64::from(rate) / 1000;
        if refill > 0 || ext.client_event_tick.is_none() {
            ext.client_event_tick = Some(now);
            let tokens = u64::from(ext.client_event_tokens) + refill;
            ext.client_event_tokens = tokens.min(u64::from(rate)) as u32;
        }
        if ext.client_event_tokens == 0 {
            return false;
        }
        ext.client_event_tokens -= 1;
        true
    }

    /// The Pusher channels this shard owns under `prefix` (or named `prefix`, with `exact`):
    /// name, connections, users.
    pub(super) fn pusher_owned_channels(
        &self,
        prefix: &str,
        exact: bool,
    ) -> Vec<(Arc<str>, u64, u64)> {
        if exact {
            return match self.presence.get(prefix) {
                Some(p) => vec![(Arc::from(prefix), p.conns(), p.users() as u64)],
                None => Vec::new(),
            };
        }
        self.presence
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, p)| (name.clone(), p.conns(), p.users() as u64))
            .collect()
    }

    /// The owner's answer to `GET .../users`: `{"users":[{"id":..},..]}`.
    pub(super) fn pusher_users_json(&self, channel: &str, limit: usize) -> String {
        let mut out = String::from("{\"users\":[");
        if let Some(p) = self.presence.get(channel) {
            for (i, (user, _)) in p.page(None, limit).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{{\"id\":{}}}", serde_json::Value::from(&**user));
            }
        }
        out.push_str("]}");
        out
    }

    /// A request under `/apps/`: signature, then the API.
    pub(super) fn on_pusher_api(&mut self, slot: usize, request: &Request) {
        if let Err((status, why)) = self.pusher_api(slot, request) {
            self.counters.pusher_api_refusals += 1;
            let code = match status {
                401 => "unauthorized",
                403 => "forbidden",
                404 => "not_found",
                405 => "method_not_allowed",
                413 => "too_large",
                _ => "bad_request",
            };
            self.http_json_error(slot, status, code, &why);
        }
    }

    fn pusher_api(&mut self, slot: usize, request: &Request) -> Result<(), ApiError> {
        use http::request::Method as M;
        let config = self.config.clone();
        let rest = request.path.strip_prefix("/apps/").unwrap_or("");
        let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let Some(app) = config.pusher.apps.iter().find(|a| a.id == id) else {
            return Err((403, "unknown app".to_string()));
        };
        let method = match request.method {
            M::Get => "GET",
            M::Post => "POST",
            _ => return Err((405, "the Pusher API answers GET and POST".to_string())),
        };
        let signed = SignedRequest {
            method,
            path: &request.path,
            query: &request.query,
            body: &request.body,
        };
        let now_s = (self.wall_base_ms + self.now_ms) / 1000;
        let skew = config.limits.pusher_timestamp_skew_s;
        sig::verify_request(&app.key, app.secret.as_bytes(), signed, now_s, skew)
            .map_err(|e| (401, e.message().to_string()))?;
        self.counters.pusher_api_requests += 1;
        match (method, tail) {
            ("POST", "events") => self.pusher_api_events(slot, app, &request.body, false),
            ("POST", "batch_events") => self.pusher_api_events(slot, app, &request.body, true),
            ("GET", "channels") => self.pusher_api_channels(slot, app, request, None),
            ("POST", tail) if tail.starts_with("users/") => {
                let rest = &tail["users/".len()..];
                let (user, action) = rest.rsplit_once('/').unwrap_or((rest, ""));
                let user = http::query::decode(user);
                if !wire::valid_channel(&user, 128) {
                    return Err((400, "invalid user id".to_string()));
                }
                let channel = wire::internal_name(&app.id, &wire::user_channel(&user));
                match action {
                    "terminate_connections" => self.pusher_api_terminate(slot, channel),
                    _ => Err((404, "no such Pusher API path".to_string())),
                }
            }
            ("GET", tail) if tail.starts_with("channels/") => {
                let name = &tail["channels/".len()..];
                let (name, users) = match name.strip_suffix("/users") {
                    Some(name) => (name, true),
                    None => (name, false),
                };
                let name = http::query::decode(name);
                let max = config.limits.pusher_channel_name_bytes_max;
                if !wire::valid_channel(&name, max) {
                    return Err((400, "invalid channel name".to_string()));
                }
                if users {
                    self.pusher_api_users(slot, app, &name)
                } else {
                    self.pusher_api_channels(slot, app, request, Some(&name))
                }
            }
            _ => Err((404, "no such Pusher API path".to_string())),
        }
    }

    /// `POST /apps/{id}/events` (one event, to its channels) or `/batch_events`.
    fn pusher_api_events(
        &mut self,
        slot: usize,
        app: &PusherApp,
        body: &[u8],
        batch: bool,
    ) -> Result<(), ApiError> {
        let limits = &self.config.limits;
        let events: Vec<ApiEvent<'_>> = if batch {
            let b: ApiBatch<'_> = serde_json::from_slice(body)
                .map_err(|e| (400, format!("the body must be {{\"batch\":[..]}}: {e}")))?;
            if b.batch.len() > limits.pusher_batch_events_max {
                let max = limits.pusher_batch_events_max;
                return Err((400, format!("at most {max} events in a batch")));
            }
            b.batch
        } else {
            vec![
                serde_json::from_slice(body)
                    .map_err(|e| (400, format!("the body must be an event object: {e}")))?,
            ]
        };
        // Checked whole before anything is published: a bad batch publishes nothing.
        let mut publishes: Vec<(Arc<str>, Body)> = Vec::new();
        // Per batch item: its first channel (internal name) and the counts it asked for.
        let mut items: Vec<(Arc<str>, Info)> = Vec::new();
        for event in &events {
            if !wire::valid_event(&event.name) {
                return Err((400, "invalid event name".to_string()));
            }
            // The SDKs send `data` as a string (JSON they encoded); another value is relayed
            // as its JSON text.
            let data = serde_json::from_str::<String>(event.data.get())
                .unwrap_or_else(|_| event.data.get().to_string());
            if data.len() > limits.pusher_event_bytes_max {
                let max = limits.pusher_event_bytes_max;
                return Err((413, format!("event data is over {max} bytes")));
            }
            let mut channels: Vec<&str> = event.channels.iter().flatten().map(|c| &**c).collect();
            channels.extend(event.channel.as_deref());
            if channels.is_empty() || channels.len() > limits.pusher_channels_per_event_max {
                let max = limits.pusher_channels_per_event_max;
                return Err((400, format!("an event names 1 to {max} channels")));
            }
            let max = limits.pusher_channel_name_bytes_max;
            if channels.iter().any(|c| !wire::valid_api_channel(c, max)) {
                return Err((400, "invalid channel name".to_string()));
            }
            let exclude = match event.socket_id.as_deref() {
                None => None,
                Some(s) => {
                    Some(wire::parse_socket_id(s).ok_or((400, "invalid socket_id".to_string()))?)
                }
            };
            if batch {
                let first: Arc<str> = Arc::from(wire::internal_name(&app.id, channels[0]));
                items.push((first, Info::parse(event.info.as_deref().unwrap_or(""))));
            }
            for channel in channels {
                let text = wire::event(&event.name, channel, &data, None);
                let body = Body::Pusher {
                    text: Bytes::from(text),
                    exclude,
                };
                publishes.push((Arc::from(wire::internal_name(&app.id, channel)), body));
            }
        }
        self.counters.control_requests += 1;
        // A publisher like any other: paused while some shard is over its high watermark.
        self.mark_publisher(slot);
        // `info` (one event, not a batch): each owner answers its channel's counts after the
        // publish, on the same ring, so they include nothing older than the event.
        let info = match (batch, events.first()) {
            (false, Some(e)) => Info::parse(e.info.as_deref().unwrap_or("")),
            _ => Info::default(),
        };
        let channels: Vec<Arc<str>> = publishes.iter().map(|(c, _)| c.clone()).collect();
        // A batch with `info` on some item: each such item's channel is asked of its owner
        // once, right after that channel's (last) publish in the batch.
        let batch_info = items.iter().any(|(_, i)| i.any());
        let mut asked: Vec<Arc<str>> = Vec::new();
        if batch_info {
            for (channel, item) in &items {
                if item.any() && !asked.contains(channel) {
                    asked.push(channel.clone());
                }
            }
        }
        let (parts, acc) = if info.any() {
            let parts = 2 * publishes.len() as u32;
            (parts, super::control::Acc::pusher_trigger(info, &channels))
        } else if batch_info {
            let parts = (publishes.len() + asked.len()) as u32;
            (parts, super::control::Acc::pusher_batch(items))
        } else {
            (publishes.len() as u32, super::control::Acc::fixed("{}"))
        };
        let last_of = |channel: &Arc<str>| channels.iter().rposition(|c| c == channel);
        let Some(to) = self.await_parts(slot, None, parts, acc) else {
            return Ok(()); // answered: too many replies owed on this connection
        };
        for (index, (channel, body)) in publishes.into_iter().enumerate() {
            let owner = channel::owner_of(&channel, self.shards);
            let msg = XMsg::Publish {
                channel: channel.clone(),
                body,
                reply: Some((to, index as u32)),
                report: false,
                key: None,
            };
            self.send_x(owner, msg);
            let ask_batch = asked.contains(&channel) && last_of(&channel) == Some(index);
            if info.any() || ask_batch {
                let query = Query::PusherChannels {
                    prefix: channel,
                    exact: true,
                };
                self.send_x(owner, XMsg::Query { query, reply: to });
            }
        }
        Ok(())
    }

    /// `POST /apps/{id}/users/{user}/terminate_connections`: every shard closes the user's
    /// signed-in connections with 4009.
    fn pusher_api_terminate(&mut self, slot: usize, internal: String) -> Result<(), ApiError> {
        let parts = self.shards as u32;
        let Some(to) = self.await_parts(slot, None, parts, super::control::Acc::fixed("{}")) else {
            return Ok(());
        };
        let channel: Arc<str> = Arc::from(internal);
        for shard in 0..self.shards {
            let query = Query::PusherTerminate {
                channel: channel.clone(),
            };
            self.send_x(shard, XMsg::Query { query, reply: to });
        }
        Ok(())
    }

    /// `GET /apps/{id}/channels` (every shard answers for the channels it owns) or
    /// `GET /apps/{id}/channels/{name}` (its owner answers).
    fn pusher_api_channels(
        &mut self,
        slot: usize,
        app: &PusherApp,
        request: &Request,
        single: Option<&str>,
    ) -> Result<(), ApiError> {
        let info = Info::parse(&request.query_value("info").unwrap_or_default());
        let prefix = match single {
            Some(name) => name.to_string(),
            None => request
                .query_value("filter_by_prefix")
                .unwrap_or_default()
                .into_owned(),
        };
        if info.user_count && !prefix.starts_with("presence-") {
            let why = "info=user_count is for presence channels (filter_by_prefix=presence-)";
            return Err((400, why.to_string()));
        }
        let internal: Arc<str> = Arc::from(wire::internal_name(&app.id, &prefix));
        let exact = single.is_some();
        let parts = if exact { 1 } else { self.shards as u32 };
        let shape = if exact { Shape::One } else { Shape::List };
        let acc = super::control::Acc::pusher_channels(info, shape);
        let Some(to) = self.await_parts(slot, None, parts, acc) else {
            return Ok(());
        };
        let shards: Vec<usize> = if exact {
            vec![channel::owner_of(&internal, self.shards)]
        } else {
            (0..self.shards).collect()
        };
        for shard in shards {
            let query = Query::PusherChannels {
                prefix: internal.clone(),
                exact,
            };
            self.send_x(shard, XMsg::Query { query, reply: to });
        }
        Ok(())
    }

    /// `GET /apps/{id}/channels/{name}/users` (presence channels; the owner answers).
    fn pusher_api_users(
        &mut self,
        slot: usize,
        app: &PusherApp,
        name: &str,
    ) -> Result<(), ApiError> {
        if wire::kind_of(name) != Kind::Presence {
            return Err((
                400,
                "users are listed for presence channels only".to_string(),
            ));
        }
        let internal: Arc<str> = Arc::from(wire::internal_name(&app.id, name));
        let acc = super::control::Acc::json();
        let Some(to) = self.await_parts(slot, None, 1, acc) else {
            return Ok(());
        };
        let query = Query::PusherUsers {
            channel: internal.clone(),
            limit: self.config.limits.pusher_presence_members_max,
        };
        let owner = channel::owner_of(&internal, self.shards);
        self.send_x(owner, XMsg::Query { query, reply: to });
        Ok(())
    }
}

/// The part of a query answer this shard sends for a Pusher question.
pub(super) fn answer(engine: &mut Engine, query: Query) -> Part {
    match query {
        Query::PusherChannels { prefix, exact } => {
            Part::PusherChannels(engine.pusher_owned_channels(&prefix, exact))
        }
        Query::PusherUsers { channel, limit } => {
            Part::Json(engine.pusher_users_json(&channel, limit))
        }
        Query::PusherTerminate { channel } => {
            engine.pusher_terminate(&channel);
            Part::Done
        }
        _ => Part::Done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_answers_render_as_the_sdk_reads_them() {
        let mut map = BTreeMap::new();
        map.insert(Arc::from("#1#presence-a"), (3, 2));
        map.insert(Arc::from("#1#presence-b"), (0, 0));
        map.insert(Arc::from("#1##server-to-user-u1"), (1, 0));
        let info = Info {
            user_count: true,
            subscription_count: false,
        };
        assert_eq!(
            render_channels(&map, info, Shape::List),
            r#"{"channels":{"presence-a":{"user_count":2}}}"#
        );
        assert_eq!(
            render_channels(&map, Info::default(), Shape::List),
            r#"{"channels":{"presence-a":{}}}"#
        );
        let both = Info {
            user_count: true,
            subscription_count: true,
        };
        let mut one = BTreeMap::new();
        one.insert(Arc::from("#1#presence-a"), (3, 2));
        assert_eq!(
            render_channels(&one, both, Shape::One),
            r#"{"occupied":true,"user_count":2,"subscription_count":3}"#
        );
        assert_eq!(
            render_channels(&BTreeMap::new(), Info::default(), Shape::One),
            r#"{"occupied":false}"#
        );
    }
}
