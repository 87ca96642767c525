//! Connection ids across nodes (`[cluster]`): a connection id names its node
//! (`[cluster] node_id`), so a backend may address any connection from any node's control
//! socket. A request for another node's connection (`send`, `disconnect`, `subscribe`,
//! `unsubscribe`) goes to that node through the broker (`NodeSend`, one `PUBLISH` on its
//! channel); its shard 0 hands it to the connection's shard, which acts as if the request had
//! come from its own control socket.
//!
//! Owns the encoding of what crosses the broker for a connection and the requests waiting for
//! the broker's answer. The answer says whether the node got it: `{"node":N,"forwarded":true}`,
//! or `no_such_conn` when no node with that number is connected to the broker. What the node
//! then finds (the connection gone meanwhile) is not reported back: it is counted there
//! (`cluster_conn_forwards_in` counts what was acted on).
//!
//! What comes from the broker is untrusted: a payload that does not decode, or that names a
//! connection of another node or a shard this node does not have, is dropped and counted
//! (`cluster_malformed`), never a panic.

use super::super::Engine;
use super::super::xmsg::{Body, ConnAction, Part, ReplyTo, XMsg};
use super::{failure, overdue};
use crate::broker::{BrokerCommand, BrokerError, Refused};
use crate::id::ConnId;
use crate::wire::ErrorCode;
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;

/// The encoding's version, its first byte; then the connection id (u64, big-endian) and the op.
const VERSION: u8 = 1;
const OP_SEND: u8 = b'S';
const OP_SUBSCRIBE: u8 = b'U';
const OP_UNSUBSCRIBE: u8 = b'X';
const OP_DISCONNECT: u8 = b'D';
/// Longest close reason carried (RFC 6455 §5.5: 125 bytes of close payload, 2 of them the code).
const REASON_BYTES_MAX: usize = 123;
/// Longest channel name carried (the engine's own bound applies again where it is acted on).
const CHANNEL_BYTES_MAX: usize = 1024;

/// What crosses the broker for `action` on `conn`; `None` for an action that does not
/// (binding a user: the user's owner on the connection's node decides).
pub(super) fn encode(conn: ConnId, action: &ConnAction) -> Option<Bytes> {
    let mut out = BytesMut::new();
    out.put_u8(VERSION);
    out.put_u64(conn.get());
    match action {
        ConnAction::Send(body) => {
            out.put_u8(OP_SEND);
            out.extend_from_slice(&body.to_broker());
        }
        ConnAction::Subscribe(name) => {
            out.put_u8(OP_SUBSCRIBE);
            out.extend_from_slice(name.as_bytes());
        }
        ConnAction::Unsubscribe(name) => {
            out.put_u8(OP_UNSUBSCRIBE);
            out.extend_from_slice(name.as_bytes());
        }
        ConnAction::Disconnect(code, reason) => {
            out.put_u8(OP_DISCONNECT);
            out.put_u16(*code);
            out.extend_from_slice(reason.as_bytes());
        }
        ConnAction::Bind(..) => return None,
    }
    Some(out.freeze())
}

/// The connection and action a node sent; `None` when the payload is not one of ours.
pub(super) fn decode(payload: &Bytes) -> Option<(ConnId, ConnAction)> {
    let (&version, rest) = payload.split_first()?;
    if version != VERSION {
        return None;
    }
    let (id, rest) = rest.split_at_checked(8)?;
    let conn = ConnId::from_u64(u64::from_be_bytes(id.try_into().ok()?))?;
    let (&op, rest) = rest.split_first()?;
    let name = || {
        let name = std::str::from_utf8(rest).ok()?;
        (!name.is_empty() && name.len() <= CHANNEL_BYTES_MAX).then(|| Arc::from(name))
    };
    let action = match op {
        OP_SEND => ConnAction::Send(Body::from_broker(&payload.slice(10..))?),
        OP_SUBSCRIBE => ConnAction::Subscribe(name()?),
        OP_UNSUBSCRIBE => ConnAction::Unsubscribe(name()?),
        OP_DISCONNECT => {
            let (code, reason) = rest.split_at_checked(2)?;
            let code = u16::from_be_bytes([code[0], code[1]]);
            let closable = code == 1000 || (3000..=4999).contains(&code);
            let reason = std::str::from_utf8(reason).ok()?;
            if !closable || reason.len() > REASON_BYTES_MAX {
                return None;
            }
            ConnAction::Disconnect(code, reason.to_string())
        }
        _ => return None,
    };
    Some((conn, action))
}

impl Engine {
    /// Whether `conn` is another node's (and this node can reach it through the broker).
    pub(in crate::engine) fn is_remote_conn(&self, conn: ConnId) -> bool {
        self.cluster.is_some() && conn.node() != self.node
    }

    /// A backend's request for another node's connection: sent to that node.
    pub(in crate::engine) fn cluster_conn_op(
        &mut self,
        conn: ConnId,
        action: ConnAction,
        reply: Option<ReplyTo>,
    ) {
        let node = conn.node();
        let Some(payload) = encode(conn, &action) else {
            let part = Part::Failed(
                ErrorCode::BadRequest,
                format!(
                    "connection {} is on node {node}: bind_user and unbind_user go to that \
                     node's control socket",
                    conn.get()
                ),
            );
            return self.answer_conn_op(reply, part);
        };
        let index = self.index;
        let due = self.answer_due_ms();
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let token = cluster.next_token(index);
        let command = BrokerCommand::NodeSend {
            node,
            payload,
            token,
        };
        match cluster.handle.try_send(command) {
            Ok(()) => {
                cluster.ring = true;
                cluster.conn_ops.insert(token, (reply, node, due));
                self.counters.cluster_conn_forwards += 1;
            }
            Err(Refused::Down(_) | Refused::Stopped(_)) => {
                self.answer_conn_op(reply, failure(&BrokerError::Down));
            }
            Err(Refused::Full(_)) => {
                let why = BrokerError::Rejected("its queue is full (queue_capacity)".to_string());
                self.answer_conn_op(reply, failure(&why));
            }
        }
    }

    /// The broker's answer to a request for another node's connection.
    pub(in crate::engine) fn on_node_sent(&mut self, token: u64, result: Result<u64, BrokerError>) {
        let Some((reply, node, _)) = self
            .cluster
            .as_mut()
            .and_then(|c| c.conn_ops.remove(&token))
        else {
            return;
        };
        let part = match result {
            Ok(0) => Part::Failed(
                ErrorCode::NoSuchConn,
                format!("no node {node} is connected to the cluster's broker"),
            ),
            Ok(_) => Part::Json(format!("{{\"node\":{node},\"forwarded\":true}}")),
            Err(e) => failure(&e),
        };
        self.answer_conn_op(reply, part);
    }

    /// Shard 0: another node's request for one of this node's connections.
    pub(in crate::engine) fn on_node_message(&mut self, payload: &Bytes) {
        let decoded = decode(payload)
            .filter(|(conn, _)| conn.node() == self.node && conn.shard() < self.shards);
        let Some((conn, action)) = decoded else {
            self.counters.cluster_malformed += 1;
            return;
        };
        self.counters.cluster_conn_forwards_in += 1;
        self.send_x(
            conn.shard(),
            XMsg::ToConn {
                conn,
                action,
                reply: None,
            },
        );
    }

    /// Requests for other nodes' connections past their deadline: outcome unknown.
    pub(in crate::engine) fn expire_conn_ops(&mut self, now_ms: u64) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        for token in overdue(&cluster.conn_ops, now_ms, |(_, _, due)| *due) {
            self.counters.cluster_requests_expired += 1;
            self.on_node_sent(token, Err(BrokerError::Down));
        }
    }

    fn answer_conn_op(&mut self, reply: Option<ReplyTo>, part: Part) {
        if let Some(to) = reply {
            self.send_x(to.shard as usize, XMsg::Reply { to, part });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip_and_bad_payloads_are_refused() {
        let conn = ConnId::at(7, 1, 42, 3);
        let body = Body::from_broker(&Bytes::from_static(b"j{\"a\":1}")).unwrap();
        for action in [
            ConnAction::Send(body),
            ConnAction::Subscribe(Arc::from("news")),
            ConnAction::Unsubscribe(Arc::from("news")),
            ConnAction::Disconnect(4401, "bye".into()),
        ] {
            let bytes = encode(conn, &action).unwrap();
            let (got, back) = decode(&bytes).expect("decodes");
            assert_eq!(got, conn);
            assert_eq!(format!("{back:?}"), format!("{action:?}"));
        }
        assert!(encode(conn, &ConnAction::Bind(None, None)).is_none());
        let id = conn.get().to_be_bytes();
        let with = |tail: &[u8]| [&[VERSION][..], &id, tail].concat();
        for bad in [
            vec![],
            vec![VERSION],
            [&[2u8][..], &id, b"Unews"].concat(),
            with(b""),
            with(b"Q"),
            with(b"U"),
            with(b"U\xff"),
            with(b"D\x03\xe9"),
            with(b"D\x11"),
            [&[VERSION][..], &(1u64 << 53).to_be_bytes(), b"Unews"].concat(),
        ] {
            assert!(decode(&Bytes::from(bad.clone())).is_none(), "{bad:?}");
        }
    }
}
