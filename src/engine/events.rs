//! The backend event stream: control connections that sent `{"method":"events",...}` receive
//! NDJSON events of `/ws` connections — `connect`, `close`, `subscribe`, `unsubscribe`,
//! `message` (a client's `{"op":"send"}`), `expired` (docs/control.md, "Event stream").
//!
//! Owns: every shard's copy of the consumer list (groups and their members, kept in step by
//! `ConsumerJoin`/`ConsumerLeave` broadcasts), the choice of member for each connection, and
//! each member's per-shard sequence numbers and drop counts.
//!
//! Groups: consumers that name the same `group` share the stream; each connection's events go
//! to one member, chosen by rendezvous hashing of (connection, member) among the members that
//! want the event's type, so a member that leaves hands only its own connections to the others.
//! A consumer without a group gets every event it asked for.
//!
//! Order and loss: a connection's events are produced by its shard and travel to the member's
//! shard on one ring, so they arrive in the order they happened; `seq` counts the events one
//! shard sent to one member, so a gap in it is visible. A member behind its
//! `event_buffer_bytes_max`, or a ring that refused the event, drops it (counted,
//! `events_dropped`) and the member gets `{"event":"gap","dropped":N}` before its next event.
//! The engine never waits for a consumer.

use super::Engine;
use super::conn::Endpoint;
use super::io::PeerAddr;
use super::xmsg::XMsg;
use bytes::Bytes;
use std::fmt::Write;
use std::sync::Arc;

/// An event type's bit in a consumer's mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A `/ws` connection opened.
    Connect = 1 << 0,
    /// It closed.
    Close = 1 << 1,
    /// It subscribed to a channel (by itself, by its token, or by the backend).
    Subscribe = 1 << 2,
    /// It left a channel.
    Unsubscribe = 1 << 3,
    /// It sent `{"op":"send","data":...}`.
    Message = 1 << 4,
    /// Its token expired (it was sent `{"op":"expired"}`).
    Expired = 1 << 5,
}

impl Kind {
    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Close => "close",
            Kind::Subscribe => "subscribe",
            Kind::Unsubscribe => "unsubscribe",
            Kind::Message => "message",
            Kind::Expired => "expired",
        }
    }

    /// Every type.
    pub const ALL: [Kind; 6] = [
        Kind::Connect,
        Kind::Close,
        Kind::Subscribe,
        Kind::Unsubscribe,
        Kind::Message,
        Kind::Expired,
    ];

    /// The mask of a list of type names; the first unknown name is the error.
    pub fn mask_of<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<u8, String> {
        let mut mask = 0u8;
        for name in names {
            match Kind::ALL.iter().find(|k| k.name() == name) {
                Some(k) => mask |= *k as u8,
                None => {
                    return Err(format!(
                        "unknown event type {name:?}: connect, close, subscribe, unsubscribe, \
                         message or expired"
                    ));
                }
            }
        }
        Ok(mask)
    }
}

/// A consumer: a control connection on some shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberAddr {
    /// Its shard.
    pub shard: u16,
    /// Its slot.
    pub slot: u32,
    /// Its generation.
    pub generation: u32,
}

impl MemberAddr {
    fn key(self) -> u64 {
        (u64::from(self.shard) << 48) ^ (u64::from(self.slot) << 20) ^ u64::from(self.generation)
    }
}

/// One member as this shard knows it.
#[derive(Debug)]
struct Member {
    addr: MemberAddr,
    types: u8,
    /// Events this shard sent it.
    seq: u64,
    /// Events this shard could not hand to the ring since the last one it could.
    missed: u32,
}

/// A group of consumers (or one consumer alone: `name` is `None`).
#[derive(Debug)]
struct Group {
    name: Option<Arc<str>>,
    members: Vec<Member>,
}

/// This shard's view of every consumer.
#[derive(Debug, Default)]
pub struct Consumers {
    groups: Vec<Group>,
    /// Union of every member's types (an event nobody wants is never rendered).
    wanted: u8,
}

/// 64-bit mix (splitmix64's finaliser): rendezvous weights must spread well.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Consumers {
    /// Adds a member (to its group, or alone).
    pub fn join(&mut self, group: Option<Arc<str>>, addr: MemberAddr, types: u8) {
        self.leave(addr);
        let member = Member {
            addr,
            types,
            seq: 0,
            missed: 0,
        };
        match group
            .as_ref()
            .and_then(|g| self.groups.iter_mut().find(|x| x.name.as_ref() == Some(g)))
        {
            Some(g) => g.members.push(member),
            None => self.groups.push(Group {
                name: group,
                members: vec![member],
            }),
        }
        self.recompute();
    }

    /// Removes a member; its connections go to the rest of its group.
    pub fn leave(&mut self, addr: MemberAddr) {
        for g in &mut self.groups {
            g.members.retain(|m| m.addr != addr);
        }
        self.groups.retain(|g| !g.members.is_empty());
        self.recompute();
    }

    fn recompute(&mut self) {
        self.wanted = self
            .groups
            .iter()
            .flat_map(|g| g.members.iter())
            .fold(0, |m, x| m | x.types);
    }

    /// Whether any member wants `kind`.
    pub fn wants(&self, kind: Kind) -> bool {
        self.wanted & kind as u8 != 0
    }

    /// For each group, the member that gets `conn`'s events of `kind`: (address, its next
    /// sequence number, events missed before this one).
    pub fn route(&mut self, conn: u64, kind: Kind, out: &mut Vec<(MemberAddr, u64, u32)>) {
        for g in &mut self.groups {
            let chosen = g
                .members
                .iter_mut()
                .filter(|m| m.types & kind as u8 != 0)
                .max_by_key(|m| mix(conn ^ mix(m.addr.key())));
            if let Some(m) = chosen {
                m.seq += 1;
                out.push((m.addr, m.seq, std::mem::take(&mut m.missed)));
            }
        }
    }

    /// A ring refused an event for `addr`: it is told with its next one.
    pub fn missed(&mut self, addr: MemberAddr, n: u32) {
        for g in &mut self.groups {
            for m in &mut g.members {
                if m.addr == addr {
                    m.missed = m.missed.saturating_add(n);
                }
            }
        }
    }

    /// Members known.
    pub fn len(&self) -> usize {
        self.groups.iter().map(|g| g.members.len()).sum()
    }

    /// Whether there is no consumer.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// An IP address as text, without `std::net` (the engine does no networking).
pub fn ip_text(addr: PeerAddr) -> String {
    let v = addr.0;
    if v >> 32 == 0xffff {
        let b = (v as u32).to_be_bytes();
        return format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3]);
    }
    let mut out = String::new();
    for i in (0..8).rev() {
        if i != 7 {
            out.push(':');
        }
        let _ = write!(out, "{:x}", (v >> (i * 16)) as u16);
    }
    out
}

/// A query string without its `token` parameter (tokens never leave the server).
pub fn query_without_token(query: &str) -> String {
    query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some("token"))
        .collect::<Vec<_>>()
        .join("&")
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

impl Engine {
    /// Whether some consumer wants events of `kind`.
    pub(super) fn wants_event(&self, kind: Kind) -> bool {
        self.consumers.wants(kind)
    }

    /// Sends one event of `slot`'s connection to one member of each group that wants it.
    /// `fields` are the event's own fields, rendered once: `,"key":value...`.
    fn emit(&mut self, slot: usize, kind: Kind, fields: &str) {
        let conn = self.conn_id(slot).get();
        let user = self.user_of(slot);
        let mut routes = Vec::new();
        self.consumers.route(conn, kind, &mut routes);
        for (addr, seq, missed) in routes {
            let mut line = String::with_capacity(96 + fields.len());
            let _ = write!(
                line,
                "{{\"event\":\"{}\",\"shard\":{},\"seq\":{seq},\"conn\":{conn},\"user\":{}",
                kind.name(),
                self.index,
                user.as_deref().map_or("null".to_string(), json_str),
            );
            line.push_str(fields);
            line.push_str("}\n");
            self.counters.events_sent += 1;
            self.send_x(
                addr.shard as usize,
                XMsg::Event {
                    to: addr,
                    line: Bytes::from(line),
                    missed,
                },
            );
        }
    }

    /// `connect`: after the upgrade (remote address only when the driver passed it).
    pub(super) fn emit_connect(
        &mut self,
        slot: usize,
        origin: Option<&str>,
        path: &str,
        query: &str,
    ) {
        if !self.wants_event(Kind::Connect) {
            return;
        }
        let peer = self.conns[slot].ext.as_ref().and_then(|e| e.peer);
        let mut f = String::new();
        let _ = write!(
            f,
            ",\"remote\":{},\"origin\":{},\"path\":{},\"query\":{}",
            peer.map_or("null".to_string(), |p| json_str(&ip_text(p))),
            origin.map_or("null".to_string(), json_str),
            json_str(path),
            json_str(&query_without_token(query)),
        );
        self.emit(slot, Kind::Connect, &f);
    }

    /// `close`, with the close code the connection ended with.
    pub(super) fn emit_close(&mut self, slot: usize, code: u16) {
        if !self.wants_event(Kind::Close) {
            return;
        }
        self.emit(slot, Kind::Close, &format!(",\"code\":{code}"));
    }

    /// `subscribe` / `unsubscribe`.
    pub(super) fn emit_membership(&mut self, slot: usize, channel: &str, join: bool) {
        let kind = if join {
            Kind::Subscribe
        } else {
            Kind::Unsubscribe
        };
        if !self.wants_event(kind) {
            return;
        }
        // Channel names never need escaping (`channel::validate_name`).
        self.emit(slot, kind, &format!(",\"channel\":\"{channel}\""));
    }

    /// `message`: what the client sent with `{"op":"send","data":...}` (raw JSON).
    pub(super) fn emit_message(&mut self, slot: usize, data: &str) -> bool {
        if !self.wants_event(Kind::Message) {
            return false;
        }
        self.emit(slot, Kind::Message, &format!(",\"data\":{data}"));
        true
    }

    /// `expired`: the connection's token expired.
    pub(super) fn emit_expired(&mut self, slot: usize) {
        if self.wants_event(Kind::Expired) {
            self.emit(slot, Kind::Expired, "");
        }
    }

    /// A consumer joined or left somewhere: this shard's routing follows.
    pub(super) fn on_consumer(
        &mut self,
        group: Option<Arc<str>>,
        addr: MemberAddr,
        types: Option<u8>,
    ) {
        match types {
            Some(types) => self.consumers.join(group, addr, types),
            None => self.consumers.leave(addr),
        }
    }

    /// Tells every shard (this one included) that a control connection of this shard joins
    /// (`types`) or leaves (`None`) the event stream; each answers `reply` (one part per shard)
    /// once it routes to the member.
    pub(super) fn announce_consumer(
        &mut self,
        slot: usize,
        generation: u32,
        group: Option<Arc<str>>,
        types: Option<u8>,
        reply: Option<super::xmsg::ReplyTo>,
    ) {
        let addr = MemberAddr {
            shard: self.index as u16,
            slot: slot as u32,
            generation,
        };
        for shard in 0..self.shards {
            self.send_x(
                shard,
                XMsg::Consumer {
                    group: group.clone(),
                    addr,
                    types,
                    reply,
                },
            );
        }
    }

    /// An event reached its consumer's shard: queue it (after a gap line when some were lost),
    /// or drop it when the consumer owes `event_buffer_bytes_max` already.
    pub(super) fn on_event(&mut self, to: MemberAddr, line: Bytes, missed: u32) {
        let max = self.config.limits.event_buffer_bytes_max;
        let slot = to.slot as usize;
        let Some(conn) = self
            .conns
            .get_mut(slot)
            .filter(|c| c.generation == to.generation && c.endpoint == Endpoint::Control)
        else {
            return;
        };
        let Some(state) = conn.ext.as_mut().and_then(|e| e.control.as_mut()) else {
            return;
        };
        if !state.is_consumer() {
            return;
        }
        state.events_dropped += u64::from(missed);
        if conn.out.owed_bytes() + line.len() > max {
            state.events_dropped += 1;
            self.counters.events_dropped += 1;
            return;
        }
        let dropped = std::mem::take(&mut state.events_dropped);
        if dropped > 0 {
            let gap = format!("{{\"event\":\"gap\",\"dropped\":{dropped}}}\n");
            conn.out.push_control(Bytes::from(gap), &mut self.owed);
        }
        conn.out.push_control(line, &mut self.owed);
        self.counters.events_delivered += 1;
        self.mark_dirty(slot);
    }

    /// A ring refused an event (data plane): the consumer learns it with its next one.
    pub(super) fn event_refused(&mut self, to: MemberAddr) {
        self.counters.events_dropped += 1;
        self.consumers.missed(to, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(shard: u16, slot: u32) -> MemberAddr {
        MemberAddr {
            shard,
            slot,
            generation: 1,
        }
    }

    #[test]
    fn a_group_splits_connections_and_a_leaver_hands_over_only_its_own() {
        let mut c = Consumers::default();
        let g: Arc<str> = Arc::from("workers");
        let all = Kind::mask_of(["connect", "close"]).unwrap();
        c.join(Some(g.clone()), addr(0, 1), all);
        c.join(Some(g.clone()), addr(1, 2), all);
        c.join(Some(g.clone()), addr(0, 3), all);
        let route = |c: &mut Consumers, conn: u64| {
            let mut out = Vec::new();
            c.route(conn, Kind::Connect, &mut out);
            assert_eq!(out.len(), 1, "one member of the group gets each event");
            out[0].0
        };
        let before: Vec<MemberAddr> = (0..300).map(|conn| route(&mut c, conn)).collect();
        for m in [addr(0, 1), addr(1, 2), addr(0, 3)] {
            let n = before.iter().filter(|&&a| a == m).count();
            assert!(n > 50, "member {m:?} got {n} of 300 connections");
        }
        c.leave(addr(1, 2));
        for conn in 0..300u64 {
            let now = route(&mut c, conn);
            if before[conn as usize] != addr(1, 2) {
                assert_eq!(
                    now, before[conn as usize],
                    "connection {conn} moved needlessly"
                );
            } else {
                assert_ne!(now, addr(1, 2));
            }
        }
    }

    #[test]
    fn ungrouped_consumers_each_get_everything_they_asked_for() {
        let mut c = Consumers::default();
        c.join(None, addr(0, 1), Kind::Connect as u8);
        c.join(None, addr(0, 2), Kind::Connect as u8 | Kind::Close as u8);
        let mut out = Vec::new();
        c.route(7, Kind::Connect, &mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        c.route(7, Kind::Close, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, addr(0, 2));
        assert!(!c.wants(Kind::Message));
        c.leave(addr(0, 2));
        assert!(!c.wants(Kind::Close));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn sequence_numbers_count_per_member_and_misses_are_reported_once() {
        let mut c = Consumers::default();
        c.join(None, addr(0, 1), Kind::Message as u8);
        let mut out = Vec::new();
        c.route(1, Kind::Message, &mut out);
        c.missed(addr(0, 1), 3);
        c.route(2, Kind::Message, &mut out);
        c.route(3, Kind::Message, &mut out);
        let got: Vec<(u64, u32)> = out.iter().map(|&(_, s, m)| (s, m)).collect();
        assert_eq!(got, [(1, 0), (2, 3), (3, 0)]);
    }

    #[test]
    fn unknown_types_are_refused_by_name() {
        assert!(
            Kind::mask_of(["connect", "nope"])
                .unwrap_err()
                .contains("\"nope\"")
        );
        assert_eq!(Kind::mask_of([]).unwrap(), 0);
    }

    #[test]
    fn addresses_and_queries_render() {
        assert_eq!(ip_text(PeerAddr(0xffff_7f00_0001)), "127.0.0.1");
        assert_eq!(ip_text(PeerAddr(1)), "0:0:0:0:0:0:0:1");
        assert_eq!(
            query_without_token("channel=a&token=x.y.z&format=raw"),
            "channel=a&format=raw"
        );
        assert_eq!(query_without_token("token=abc"), "");
    }
}
