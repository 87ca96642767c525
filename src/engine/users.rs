//! Users across shards: which connections each user holds, kept by the user's owner shard
//! (`channel::owner_of(user)`, the same hash as channels), and the control methods that address
//! users (`bind_user`, `unbind_user`, `send_user`, `disconnect_user`, `user_conns`, `online`,
//! `users`).
//!
//! Owns: the registry of the users this shard owns (user → connection ids, at most
//! `conns_per_user_max` each) and the messages that keep it: a connection's shard registers and
//! unregisters it (`UserBind`, `UserUnbind`); the owner answers a refused registration with
//! `UserRefused`. Must not: hold a user with no connection (an entry goes with its last one),
//! so after a crash or restart nothing is left behind.
//!
//! Order: a connection's bind and unbind travel on the same ring from its shard to the owner,
//! so the owner sees them in the order they happened.

use super::Engine;
use super::conn::{Endpoint, State};
use super::xmsg::{ConnAction, Part, ReplyTo, UserOp, UserQuery, XMsg};
use crate::channel;
use crate::id::ConnId;
use crate::proto::close;
use crate::wire::ErrorCode;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

/// Users owned by one shard: each with its connections (ids), in bind order.
#[derive(Debug, Default)]
pub struct Registry {
    users: HashMap<Arc<str>, Vec<u64>>,
}

impl Registry {
    /// Adds `conn` to `user`; false when the user already holds `max` connections.
    pub fn bind(&mut self, user: &Arc<str>, conn: u64, max: usize) -> bool {
        let conns = self.users.entry(user.clone()).or_default();
        if conns.contains(&conn) {
            return true;
        }
        if conns.len() >= max {
            if conns.is_empty() {
                self.users.remove(user);
            }
            return false;
        }
        conns.push(conn);
        true
    }

    /// Removes `conn` from `user` (the user goes with its last connection).
    pub fn unbind(&mut self, user: &str, conn: u64) {
        if let Some(conns) = self.users.get_mut(user) {
            conns.retain(|&c| c != conn);
            if conns.is_empty() {
                self.users.remove(user);
            }
        }
    }

    /// The user's connections (empty: offline).
    pub fn conns(&self, user: &str) -> &[u64] {
        self.users.get(user).map_or(&[], |c| c.as_slice())
    }

    /// Users with their connection counts, names after `after`, the first `limit`, in order.
    pub fn page(&self, after: Option<&str>, limit: usize) -> Vec<(Arc<str>, u64)> {
        let mut list: Vec<(Arc<str>, u64)> = self
            .users
            .iter()
            .filter(|(u, _)| after.is_none_or(|a| &***u > a))
            .map(|(u, c)| (u.clone(), c.len() as u64))
            .collect();
        list.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        list.truncate(limit);
        list
    }

    /// Users held.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no user is held.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// A JSON string.
fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

impl Engine {
    /// Registers `slot` (which came with a token for `user`) at the user's owner; a refusal
    /// closes it with 4007.
    pub(super) fn register_user(&mut self, slot: usize, user: Arc<str>) {
        let conn = self.conn_id(slot);
        let owner = channel::owner_of(&user, self.shards);
        self.send_x(
            owner,
            XMsg::UserBind {
                user,
                conn,
                reply: None,
                from_control: None,
            },
        );
    }

    /// Tells `user`'s owner that `slot` no longer belongs to it.
    pub(super) fn unregister_user(&mut self, slot: usize, user: Arc<str>) {
        let conn = self.conn_id(slot);
        let owner = channel::owner_of(&user, self.shards);
        self.send_x(owner, XMsg::UserUnbind { user, conn });
    }

    /// The owner: a connection is to be one of `user`'s. A `bind_user` (`from_control`) goes
    /// on to the connection's shard once registered, so a request the backend sends after it
    /// on the same connection (it travels the same ring to this owner) sees the binding.
    pub(super) fn on_user_bind(
        &mut self,
        user: Arc<str>,
        conn: ConnId,
        reply: Option<ReplyTo>,
        from_control: Option<Option<Arc<str>>>,
    ) {
        let max = self.config.limits.conns_per_user_max;
        let first = self.users.conns(&user).is_empty();
        let ok = self.users.bind(&user, conn.get(), max);
        if !ok {
            self.counters.user_limit_refusals += 1;
        }
        if ok && first {
            self.cluster_user_held(&user, true);
        }
        match (ok, from_control) {
            (true, Some(info)) => {
                let action = ConnAction::Bind(Some(user), info);
                self.send_x(
                    conn.shard(),
                    XMsg::ToConn {
                        conn,
                        action,
                        reply,
                    },
                );
            }
            (true, None) => {}
            (false, Some(_)) => {
                if let Some(to) = reply {
                    let why =
                        format!("user {user} already holds {max} connections (conns_per_user_max)");
                    let part = Part::Failed(ErrorCode::LimitExceeded, why);
                    self.send_x(to.shard as usize, XMsg::Reply { to, part });
                }
            }
            (false, None) => {
                let msg = XMsg::UserRefused {
                    user: user.clone(),
                    conn,
                };
                self.send_x(conn.shard(), msg);
            }
        }
    }

    /// The owner: `conn` is no longer one of `user`'s.
    pub(super) fn on_user_unbind(&mut self, user: &Arc<str>, conn: ConnId) {
        let held = !self.users.conns(user).is_empty();
        self.users.unbind(user, conn.get());
        if held && self.users.conns(user).is_empty() {
            self.cluster_user_held(user, false);
        }
    }

    /// The connection's shard: the owner refused the connection's token user (at its limit).
    pub(super) fn on_user_refused(&mut self, user: &str, conn: ConnId) {
        let slot = conn.slot();
        let alive = self
            .conns
            .get(slot)
            .is_some_and(|c| c.generation == conn.generation() && c.state == State::Open);
        if !alive || self.user_of(slot).as_deref() != Some(user) {
            return;
        }
        // Its identity stays until it is freed; the owner never held it, so freeing it sends
        // an unbind the owner ignores.
        self.start_close_with(slot, close::USER_LIMIT, "too many connections");
    }

    /// The owner: an operation on every connection of `user`.
    pub(super) fn on_user_op(&mut self, user: &str, op: UserOp, reply: Option<ReplyTo>) {
        let conns: Vec<u64> = self.users.conns(user).to_vec();
        let part = match &op {
            UserOp::Conns => {
                let mut out = format!("{{\"user\":{},\"conns\":[", quoted(user));
                for (i, c) in conns.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{c}");
                }
                out.push_str("]}");
                Part::Json(out)
            }
            UserOp::Send(body) => {
                self.act_on_conns(&conns, || ConnAction::Send(body.clone()));
                Part::Json(format!("{{\"connections\":{}}}", conns.len()))
            }
            UserOp::Disconnect(code, reason) => {
                self.act_on_conns(&conns, || ConnAction::Disconnect(*code, reason.clone()));
                Part::Json(format!("{{\"connections\":{}}}", conns.len()))
            }
        };
        if let Some(to) = reply {
            self.send_x(to.shard as usize, XMsg::Reply { to, part });
        }
    }

    /// Sends `action()` to each of `conns` on its shard (no reply: the owner answered already).
    pub(super) fn act_on_conns(&mut self, conns: &[u64], action: impl Fn() -> ConnAction) {
        for conn in conns.iter().filter_map(|&c| ConnId::from_u64(c)) {
            let msg = XMsg::ToConn {
                conn,
                action: action(),
                reply: None,
            };
            self.send_x(conn.shard(), msg);
        }
    }

    /// A question about the users this shard owns.
    pub(super) fn on_user_query(&mut self, query: UserQuery, reply: ReplyTo) {
        let part = match query {
            UserQuery::Online(users) => Part::Channels(
                users
                    .into_iter()
                    .filter(|u| channel::owner_of(u, self.shards) == self.index)
                    .map(|u| {
                        let n = self.users.conns(&u).len() as u64;
                        (u, n)
                    })
                    .collect(),
            ),
            UserQuery::List { after, limit } => {
                Part::Channels(self.users.page(after.as_deref(), limit + 1))
            }
        };
        self.send_x(reply.shard as usize, XMsg::Reply { to: reply, part });
    }

    /// `bind_user` (already registered at the user's owner) or `unbind_user` reached the
    /// connection's shard; `reply` waits for it.
    pub(super) fn bind_conn(
        &mut self,
        slot: usize,
        user: Option<Arc<str>>,
        info: Option<Arc<str>>,
        reply: Option<ReplyTo>,
    ) {
        debug_assert!(matches!(self.conns[slot].endpoint, Endpoint::Push { .. }));
        self.set_identity(slot, user, info, false);
        if let Some(to) = reply {
            self.send_x(
                to.shard as usize,
                XMsg::Reply {
                    to,
                    part: Part::Done,
                },
            );
        }
    }

    /// A `bind_user` registered at the owner found its connection gone: the owner forgets it.
    pub(super) fn bind_missed(&mut self, conn: ConnId, action: &ConnAction) {
        if let ConnAction::Bind(Some(user), _) = action {
            let owner = channel::owner_of(user, self.shards);
            let user = user.clone();
            self.send_x(owner, XMsg::UserUnbind { user, conn });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_bounds_and_forgets() {
        let mut r = Registry::default();
        let alice: Arc<str> = Arc::from("alice");
        assert!(r.bind(&alice, 1, 2));
        assert!(r.bind(&alice, 1, 2), "binding twice is one connection");
        assert!(r.bind(&alice, 2, 2));
        assert!(!r.bind(&alice, 3, 2), "the third passes the limit");
        assert_eq!(r.conns("alice"), &[1, 2]);
        r.unbind("alice", 1);
        r.unbind("alice", 2);
        assert!(r.is_empty(), "a user goes with its last connection");
        assert_eq!(r.conns("alice"), &[] as &[u64]);
        let zero: Arc<str> = Arc::from("z");
        assert!(!r.bind(&zero, 1, 0));
        assert!(r.is_empty(), "a refused first bind leaves nothing");
    }

    #[test]
    fn registry_pages_in_order() {
        let mut r = Registry::default();
        for (i, u) in ["c", "a", "b", "d"].iter().enumerate() {
            assert!(r.bind(&Arc::from(*u), i as u64, 10));
        }
        let names = |v: Vec<(Arc<str>, u64)>| {
            v.into_iter()
                .map(|(u, _)| u.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(r.page(None, 2)), ["a", "b"]);
        assert_eq!(names(r.page(Some("b"), 5)), ["c", "d"]);
        assert_eq!(r.len(), 4);
    }
}
