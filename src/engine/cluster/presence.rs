//! Presence across nodes (`[cluster]`): `presence` and `presence_stats` answer for every live
//! node, and `join_leave` news are decided once for the cluster. A channel's owner shard on
//! each node reports every change of the node's presence in it to the bridge
//! (`BrokerCommand::PresenceSet`: the user's connections here now and the node's totals); the
//! bridge keeps the node's presence and writes it to the broker under the node's lease, so a
//! node that dies leaves no users behind once the lease has passed. The broker decides whether
//! a change is a user's first connection on any node or its last on all of them and then
//! publishes the news on the channel's broker channel, which every node with subscribers
//! receives in the channel's order (`BrokerEvent::PresenceNews`).
//!
//! Owns the presence reads waiting for the broker and the rendering of their answers (the same
//! JSON as on one node). Must not: announce news itself while the broker is up (every node
//! would), or answer from this node alone without saying so (`"local_only":true` while the
//! broker is down or refused the read).
//!
//! Pusher presence channels stay per node (docs/pusher.md): their member events follow
//! Pusher's own rules and are not sent here.

use super::super::Engine;
use super::super::xmsg::{Part, ReplyTo, XMsg};
use crate::broker::{BrokerCommand, BrokerError, PresenceView};
use std::fmt::Write;
use std::sync::Arc;

/// A presence read sent to the broker, waiting for its answer.
pub(super) struct PendingPresenceRead {
    pub(super) due_ms: u64,
    pub(super) reply: ReplyTo,
    pub(super) channel: Arc<str>,
    /// `None`: `presence_stats`; `Some((after, limit))`: a page of `presence`.
    pub(super) page: Option<(Option<Arc<str>>, usize)>,
}

/// `presence_stats`'s answer from the broker's view.
fn stats_json(view: &PresenceView) -> String {
    format!(
        "{{\"users\":{},\"conns\":{},\"anonymous\":{}}}",
        view.users, view.conns, view.anonymous
    )
}

/// The users part of `presence` from the broker's view (the shape of the single-node answer).
fn users_json(view: &PresenceView) -> String {
    let mut out = String::from("\"users\":{");
    for (i, (user, conns, info)) in view.page.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // `info` was checked as JSON where it entered (bind_user, a token); the broker is
        // untrusted, so anything else is answered as null.
        let info = info
            .as_deref()
            .filter(|i| serde_json::from_str::<serde::de::IgnoredAny>(i).is_ok())
            .unwrap_or("null");
        let _ = write!(
            out,
            "{}:{{\"conns\":{conns},\"info\":{info}}}",
            serde_json::Value::from(user.as_str())
        );
    }
    out.push_str("},\"users_next\":");
    match (view.more, view.page.last()) {
        (true, Some((last, ..))) => {
            out.push_str(&serde_json::Value::from(last.as_str()).to_string())
        }
        _ => out.push_str("null"),
    }
    let _ = write!(out, ",\"anonymous\":{}", view.anonymous);
    out
}

impl Engine {
    /// Whether `name`'s presence is kept across nodes: clustered, and not a Pusher channel.
    pub(in crate::engine) fn presence_clustered(&self, name: &str) -> bool {
        self.cluster.is_some() && !crate::wire::pusher::is_internal(name)
    }

    /// Whether this owner announces `name`'s news itself: not while the broker is up (it
    /// decides them for the cluster, and they come back as `PresenceNews`).
    pub(in crate::engine) fn presence_news_here(&self, name: &str) -> bool {
        !self.presence_clustered(name) || self.cluster.as_ref().is_some_and(|c| !c.handle.is_up())
    }

    /// The owner: this node's presence in `name` changed for `user` (after the local update).
    pub(in crate::engine) fn cluster_presence_changed(
        &mut self,
        name: &Arc<str>,
        user: Option<&Arc<str>>,
        info: Option<Arc<str>>,
    ) {
        if !self.presence_clustered(name) {
            return;
        }
        let (conns, node_conns, node_anon) = match self.presence.get(name) {
            Some(p) => (
                user.and_then(|u| p.member(u)).map_or(0, |(_, m)| m.conns),
                p.conns(),
                p.anonymous(),
            ),
            None => (0, 0, 0),
        };
        let news = self.join_leave(name);
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        // In the outbox, behind the channel's `Subscribe`: its order with interest is kept.
        cluster.outbox.push_back(BrokerCommand::PresenceSet {
            channel: name.clone(),
            user: user.map(|u| (u.clone(), info)),
            conns,
            node_conns,
            node_anon,
            news,
        });
    }

    /// The owner: `presence` / `presence_stats` for every live node. False when the broker
    /// cannot be asked now (the caller answers from this node, saying so).
    pub(in crate::engine) fn cluster_presence_ask(
        &mut self,
        name: &str,
        page: Option<(Option<&str>, usize)>,
        reply: ReplyTo,
    ) -> bool {
        if !self.presence_clustered(name) {
            return false;
        }
        let index = self.index;
        let due_ms = self.answer_due_ms();
        let news = self.join_leave(name);
        let Some(cluster) = self.cluster.as_mut() else {
            return false;
        };
        let channel: Arc<str> = Arc::from(name);
        let page = page.map(|(after, limit)| (after.map(Arc::from), limit));
        let token = cluster.next_token(index);
        let command = BrokerCommand::PresenceRead {
            channel: channel.clone(),
            page: page.clone(),
            news,
            token,
        };
        if cluster.handle.try_send(command).is_err() {
            return false;
        }
        cluster.ring = true;
        let pending = PendingPresenceRead {
            due_ms,
            reply,
            channel,
            page,
        };
        cluster.presence_reads.insert(token, pending);
        true
    }

    /// The broker's answer to a presence read (or its failure: this node's view, marked).
    pub(in crate::engine) fn on_presence_reply(
        &mut self,
        token: u64,
        result: Result<PresenceView, BrokerError>,
    ) {
        let Some(pending) = self
            .cluster
            .as_mut()
            .and_then(|c| c.presence_reads.remove(&token))
        else {
            return;
        };
        let text = match (&result, &pending.page) {
            (Ok(view), None) => stats_json(view),
            (Ok(view), Some(_)) => users_json(view),
            (Err(_), None) => {
                let local = self.presence_stats_json(&pending.channel);
                format!("{},\"local_only\":true}}", &local[..local.len() - 1])
            }
            (Err(_), Some((after, limit))) => {
                let local = self.presence_users_json(&pending.channel, after.as_deref(), *limit);
                format!("{local},\"local_only\":true")
            }
        };
        self.send_x(
            pending.reply.shard as usize,
            XMsg::Reply {
                to: pending.reply,
                part: Part::Json(text),
            },
        );
    }

    /// News the broker decided for the cluster: sent to this node's subscribers of `channel`.
    pub(in crate::engine) fn on_presence_news(
        &mut self,
        channel: &Arc<str>,
        joined: bool,
        user: &str,
        info: Option<&str>,
    ) {
        if !self.join_leave(channel)
            || !self.presence_clustered(channel)
            || self.owned.get(channel).is_none()
        {
            return;
        }
        self.counters.presence_news += 1;
        let text = crate::wire::envelope::presence_news(joined, channel, user, info);
        self.notify_shards(channel, &text, None);
    }

    /// Presence reads past their deadline (the answer was dropped on its way): answered from
    /// this node, marked `local_only`.
    pub(in crate::engine) fn expire_presence_reads(&mut self, now_ms: u64) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        for token in super::overdue(&cluster.presence_reads, now_ms, |p| p.due_ms) {
            self.counters.cluster_requests_expired += 1;
            self.on_presence_reply(token, Err(BrokerError::Down));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_have_the_single_node_shape() {
        let view = PresenceView {
            users: 2,
            conns: 5,
            anonymous: 1,
            page: vec![
                ("alice".into(), 3, Some("{\"n\":1}".into())),
                ("bob\"".into(), 1, Some("{broken".into())),
            ],
            more: true,
        };
        assert_eq!(
            stats_json(&view),
            "{\"users\":2,\"conns\":5,\"anonymous\":1}"
        );
        let users: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", users_json(&view))).unwrap();
        assert_eq!(users["users"]["alice"]["conns"], 3);
        assert_eq!(users["users"]["alice"]["info"]["n"], 1);
        assert!(
            users["users"]["bob\""]["info"].is_null(),
            "bad info from the broker is null"
        );
        assert_eq!(users["users_next"], "bob\"");
        assert_eq!(users["anonymous"], 1);
        let last = PresenceView {
            more: false,
            ..view
        };
        let users: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", users_json(&last))).unwrap();
        assert!(users["users_next"].is_null());
    }
}
