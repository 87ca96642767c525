//! Users across nodes (`[cluster]`): `send_user` and `disconnect_user` reach the user's
//! connections on every node. The user's owner shard on each node subscribes the user at the
//! broker while the node holds connections of the user (`UserSubscribe` on the first,
//! `UserUnsubscribe` after the last); a backend's request, on whichever node, goes to the
//! broker once (`UserSend`), and every node holding the user, this one included, acts on its
//! own connections when the broker hands it back (`BrokerEvent::User`). So every node applies
//! one user's sends in the broker's one order, and a node acts only on what came back.
//!
//! Owns the encoding of what crosses the broker for a user and the requests waiting for the
//! broker's answer. The answer names the connections this node holds and the nodes that got it:
//! `{"connections":N,"nodes":K}` (no node knows the others' connections; `nodes` 0 means the
//! user is offline everywhere). While the broker is down the request is acted on here only and
//! answered `{"connections":N,"local_only":true}` (the other nodes miss it).
//!
//! What comes from the broker is untrusted: a payload that does not decode is dropped and
//! counted (`cluster_malformed`), never a panic.

use super::super::Engine;
use super::super::xmsg::{Body, ConnAction, Part, ReplyTo, UserOp};
use super::failure;
use crate::broker::{BrokerCommand, BrokerError, Refused};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;

/// The encoding's version, its first byte.
const VERSION: u8 = 1;
/// A push to each connection: the body as the broker carries channel payloads.
const OP_SEND: u8 = b'S';
/// A close of each connection: code (2 bytes, big-endian), then the reason (UTF-8).
const OP_DISCONNECT: u8 = b'D';
/// Longest close reason carried (RFC 6455 §5.5: 125 bytes of close payload, 2 of them the code).
const REASON_BYTES_MAX: usize = 123;

/// A user request sent to the broker, waiting for its answer.
pub(super) struct PendingUserSend {
    /// When it is failed if no answer came (`answer_due_ms`).
    pub(super) due_ms: u64,
    pub(super) reply: Option<ReplyTo>,
    /// The user's connections on this node when the request was sent.
    pub(super) local: usize,
}

/// What crosses the broker for `op`; `None` for an op that is not sent (`user_conns`).
pub(super) fn encode(op: &UserOp) -> Option<Bytes> {
    let mut out = BytesMut::new();
    out.put_u8(VERSION);
    match op {
        UserOp::Send(body) => {
            out.put_u8(OP_SEND);
            out.extend_from_slice(&body.to_broker());
        }
        UserOp::Disconnect(code, reason) => {
            out.put_u8(OP_DISCONNECT);
            out.put_u16(*code);
            out.extend_from_slice(reason.as_bytes());
        }
        UserOp::Conns => return None,
    }
    Some(out.freeze())
}

/// The op a node sent; `None` when the payload is not one of ours.
pub(super) fn decode(payload: &Bytes) -> Option<UserOp> {
    let (&version, rest) = payload.split_first()?;
    let (&op, rest) = rest.split_first()?;
    if version != VERSION {
        return None;
    }
    match op {
        OP_SEND => Body::from_broker(&payload.slice(2..)).map(UserOp::Send),
        OP_DISCONNECT => {
            let (code, reason) = rest.split_at_checked(2)?;
            let code = u16::from_be_bytes([code[0], code[1]]);
            let closable = code == 1000 || (3000..=4999).contains(&code);
            let reason = std::str::from_utf8(reason).ok()?;
            (closable && reason.len() <= REASON_BYTES_MAX)
                .then(|| UserOp::Disconnect(code, reason.to_string()))
        }
        _ => None,
    }
}

impl Engine {
    /// The user's owner: `user` got its first connection on this node (`held`) or lost its
    /// last: subscribe or unsubscribe it at the broker. Nothing without `[cluster]`.
    pub(in crate::engine) fn cluster_user_held(&mut self, user: &Arc<str>, held: bool) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let user = user.clone();
        cluster.outbox.push_back(if held {
            BrokerCommand::UserSubscribe { user }
        } else {
            BrokerCommand::UserUnsubscribe { user }
        });
    }

    /// The user's owner: a backend's `send_user` or `disconnect_user`, for every node.
    pub(in crate::engine) fn cluster_user_op(
        &mut self,
        user: Arc<str>,
        op: UserOp,
        reply: Option<ReplyTo>,
    ) {
        let Some(payload) = encode(&op) else {
            return self.on_user_op(&user, op, reply);
        };
        let local = self.users.conns(&user).len();
        let index = self.index;
        let due = self.answer_due_ms();
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let token = cluster.next_token(index);
        let command = BrokerCommand::UserSend {
            user: user.clone(),
            payload,
            token,
        };
        match cluster.handle.try_send(command) {
            Ok(()) => {
                cluster.ring = true;
                let pending = PendingUserSend {
                    due_ms: due,
                    reply,
                    local,
                };
                cluster.user_sends.insert(token, pending);
                self.counters.cluster_user_sends += 1;
            }
            Err(Refused::Down(_) | Refused::Stopped(_)) => {
                // Degraded: this node's connections still get it.
                self.counters.cluster_user_local_only += 1;
                self.act_on_user(&user, &op);
                let part = Part::Json(format!("{{\"connections\":{local},\"local_only\":true}}"));
                self.answer_user(reply, part);
            }
            Err(Refused::Full(_)) => {
                let why = BrokerError::Rejected("its queue is full (queue_capacity)".to_string());
                self.answer_user(reply, failure(&why));
            }
        }
    }

    /// The broker's answer to a user request.
    pub(in crate::engine) fn on_user_sent(&mut self, token: u64, result: Result<u64, BrokerError>) {
        let Some(pending) = self
            .cluster
            .as_mut()
            .and_then(|c| c.user_sends.remove(&token))
        else {
            return;
        };
        let part = match result {
            Ok(nodes) => Part::Json(format!(
                "{{\"connections\":{},\"nodes\":{nodes}}}",
                pending.local
            )),
            Err(e) => failure(&e),
        };
        self.answer_user(pending.reply, part);
    }

    /// Clustered `online`: asks the broker how many nodes hold each of `users`; the answer is
    /// one more part of the reply `to` (`Part::Nodes`, `None` when the broker cannot say).
    pub(in crate::engine) fn cluster_user_nodes(&mut self, users: Vec<Arc<str>>, to: ReplyTo) {
        let index = self.index;
        let due = self.answer_due_ms();
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let token = cluster.next_token(index);
        let asked = users.clone();
        match cluster
            .handle
            .try_send(BrokerCommand::UserNodes { users, token })
        {
            Ok(()) => {
                cluster.ring = true;
                cluster.user_nodes.insert(token, (to, asked, due));
            }
            Err(_) => self.send_x(
                to.shard as usize,
                super::super::xmsg::XMsg::Reply {
                    to,
                    part: Part::Nodes(None),
                },
            ),
        }
    }

    /// The broker's node counts for a clustered `online` (or their failure).
    pub(in crate::engine) fn on_user_nodes(
        &mut self,
        token: u64,
        result: Result<Vec<u64>, BrokerError>,
    ) {
        let Some((to, users, _)) = self
            .cluster
            .as_mut()
            .and_then(|c| c.user_nodes.remove(&token))
        else {
            return;
        };
        let nodes = result
            .ok()
            .filter(|n| n.len() == users.len())
            .map(|n| users.into_iter().zip(n).collect());
        self.send_x(
            to.shard as usize,
            super::super::xmsg::XMsg::Reply {
                to,
                part: Part::Nodes(nodes),
            },
        );
    }

    /// A user request past its deadline (its answer was dropped on the way): outcome unknown.
    pub(in crate::engine) fn expire_user_send(&mut self, token: u64) {
        self.counters.cluster_requests_expired += 1;
        self.on_user_sent(token, Err(BrokerError::Down));
    }

    /// What a node (this one included) sent to `user`: act on this node's connections.
    pub(in crate::engine) fn on_broker_user(&mut self, user: &str, payload: &Bytes) {
        match decode(payload) {
            Some(op) => {
                self.counters.cluster_user_messages_in += 1;
                self.act_on_user(user, &op);
            }
            None => self.counters.cluster_malformed += 1,
        }
    }

    fn act_on_user(&mut self, user: &str, op: &UserOp) {
        let conns: Vec<u64> = self.users.conns(user).to_vec();
        match op {
            UserOp::Send(body) => self.act_on_conns(&conns, || ConnAction::Send(body.clone())),
            UserOp::Disconnect(code, reason) => {
                self.act_on_conns(&conns, || ConnAction::Disconnect(*code, reason.clone()));
            }
            UserOp::Conns => {}
        }
    }

    fn answer_user(&mut self, reply: Option<ReplyTo>, part: Part) {
        if let Some(to) = reply {
            self.send_x(
                to.shard as usize,
                super::super::xmsg::XMsg::Reply { to, part },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_and_bad_payloads_are_refused() {
        let send = UserOp::Send(Body::from_broker(&Bytes::from_static(b"j{\"a\":1}")).unwrap());
        let bytes = encode(&send).unwrap();
        match decode(&bytes) {
            Some(UserOp::Send(body)) => {
                assert_eq!(body.to_broker(), Bytes::from_static(b"j{\"a\":1}"))
            }
            other => panic!("{other:?}"),
        }
        let bytes = encode(&UserOp::Disconnect(4401, "logged out".into())).unwrap();
        match decode(&bytes) {
            Some(UserOp::Disconnect(4401, reason)) => assert_eq!(reason, "logged out"),
            other => panic!("{other:?}"),
        }
        assert!(encode(&UserOp::Conns).is_none());
        for bad in [
            &b""[..],
            b"\x01",
            b"\x02S",
            b"\x01X",
            b"\x01D\x0f",
            b"\x01D\x03\xe9",         // 1001: not a code a backend may use
            b"\x01D\x11\x31\xff\xfe", // 4401, not UTF-8
        ] {
            assert!(decode(&Bytes::copy_from_slice(bad)).is_none(), "{bad:?}");
        }
        let long = [&b"\x01D\x11\x31"[..], &[b'x'; 124]].concat();
        assert!(
            decode(&Bytes::from(long)).is_none(),
            "a reason too long for a close frame"
        );
    }
}
