//! Presence by user, across shards: every subscribe and unsubscribe of a `/ws` connection sends
//! a delta to the channel's owner, which keeps `channel::presence::ChannelPresence` and, on
//! namespaces with `join_leave`, pushes `{"op":"join"}` on a user's first connection in the
//! channel and `{"op":"leave"}` after its last — never twice for two tabs.
//!
//! Owns: the owner's presence map (one entry per channel with anyone in it) and the
//! `presence`/`presence_stats` answers. Must not: keep an empty entry (presence dies with its
//! connections), or push news to raw-format clients (they get payloads only).
//! Order: a connection's deltas travel from its shard to the owner on one ring, in order, and
//! the news travel from the owner with its deliveries, so they keep the channel's order.

use super::Engine;
use super::conn::{Endpoint, State};
use super::outbound::Enqueue;
use super::xmsg::{Part, ReplyTo, XMsg};
use crate::channel::local::Sync;
use crate::channel::{self, presence::ChannelPresence};
use crate::proto::frame::{self, OpCode};
use crate::wire::envelope;
use bytes::Bytes;
use std::fmt::Write;
use std::sync::Arc;

impl Engine {
    /// Tells the owner of local channel `local` that `slot` joined (or left) it, under the
    /// connection's current identity.
    pub(super) fn presence_delta(&mut self, slot: usize, name: Arc<str>, join: bool) {
        let (user, info) = if let Endpoint::Pusher { .. } = self.conns[slot].endpoint {
            // A Pusher connection is a member per presence channel, as its `channel_data` said.
            match self.pusher_member(slot, &name) {
                Some(m) => (
                    Some(m.user.clone()),
                    if join { m.info.clone() } else { None },
                ),
                None => (None, None),
            }
        } else {
            match self.identity(slot) {
                Some(i) => (i.user.clone(), if join { i.info.clone() } else { None }),
                None => (None, None),
            }
        };
        let owner = channel::owner_of(&name, self.shards);
        self.send_x(
            owner,
            XMsg::Presence {
                channel: name,
                user,
                info,
                join,
            },
        );
    }

    /// Leaves (`join` false: before its identity changes) or joins (after it changed) the
    /// presence of every channel `slot` subscribes to.
    pub(super) fn presence_all(&mut self, slot: usize, join: bool) {
        let names: Vec<Arc<str>> = self.conns[slot]
            .subs
            .iter()
            .map(|m| self.local.get(m.channel).name.clone())
            .collect();
        for name in names {
            self.presence_delta(slot, name, join);
        }
    }

    /// The owner: a connection joined or left `name`.
    pub(super) fn on_presence(
        &mut self,
        name: Arc<str>,
        user: Option<Arc<str>>,
        info: Option<Arc<str>>,
        join: bool,
    ) {
        let entry = self.presence.entry(name.clone()).or_default();
        let joined_info = if join { info.clone() } else { None };
        let news = if join {
            let first = entry.join(user.as_ref(), info.clone());
            first.then_some((true, info))
        } else {
            let last = entry.leave(user.as_deref());
            if entry.is_empty() {
                self.presence.remove(&name);
            }
            last.map(|m| (false, m.info))
        };
        self.cluster_presence_changed(&name, user.as_ref(), joined_info);
        if !self.presence_news_here(&name) {
            return;
        }
        let Some((joined, info)) = news else {
            return;
        };
        let Some(user) = user else {
            return;
        };
        if crate::wire::pusher::is_internal(&name) {
            return self.pusher_news(&name, &user, joined.then_some(info).flatten(), joined);
        }
        if !self.join_leave(&name) {
            return;
        }
        self.counters.presence_news += 1;
        let text = envelope::presence_news(joined, &name, &user, info.as_deref());
        self.notify_shards(&name, &text, None);
    }

    /// Whether `name`'s namespace pushes join/leave news.
    pub(super) fn join_leave(&self, name: &str) -> bool {
        self.config
            .namespaces
            .get(channel::namespace_of(name))
            .is_some_and(|ns| ns.join_leave)
    }

    /// The owner: sends a news frame (`text`, encoded once) to every shard with subscribers of
    /// `name`, each to queue it to its own (`on_notify`), skipping `skip_user`'s connections.
    pub(super) fn notify_shards(
        &mut self,
        name: &Arc<str>,
        text: &str,
        skip_user: Option<Arc<str>>,
    ) {
        let frame = frame::encode(OpCode::Text, text.as_bytes());
        let shards: Vec<usize> = match self.owned.get(name) {
            Some(owned) => owned.shards.iter().collect(),
            None => Vec::new(),
        };
        for shard in shards {
            self.send_x(
                shard,
                XMsg::Notify {
                    channel: name.clone(),
                    frame: frame.clone(),
                    skip_user: skip_user.clone(),
                },
            );
        }
    }

    /// Queues a presence news frame to this shard's envelope-format subscribers of `name`.
    pub(super) fn on_notify(&mut self, name: &str, frame: &Bytes, skip_user: Option<&str>) {
        let Some(id) = self.local.find(name) else {
            return;
        };
        if self.local.get(id).sync != Sync::Active {
            return;
        }
        let subscribers: Vec<u32> = self.local.get(id).subscribers.clone();
        for slot in subscribers {
            let slot = slot as usize;
            let conn = &self.conns[slot];
            let reads_news = match conn.endpoint {
                Endpoint::Push { raw, .. } => !raw,
                Endpoint::Pusher { .. } => {
                    skip_user.is_none()
                        || self.pusher_member(slot, name).map(|m| &*m.user) != skip_user
                }
                _ => false,
            };
            if conn.state != State::Open || !reads_news {
                continue;
            }
            if self.queue_data(slot, frame.clone()) != Enqueue::Enqueued {
                continue;
            }
        }
    }

    /// The owner's part of `presence`: `"users":{..},"users_next":..,"anonymous":N`.
    pub(super) fn presence_users_json(
        &self,
        name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> String {
        let empty = ChannelPresence::default();
        let p = self.presence.get(name).unwrap_or(&empty);
        let mut out = String::from("\"users\":{");
        let page: Vec<_> = p.page(after, limit + 1).collect();
        for (i, (user, member)) in page.iter().take(limit).enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{}:{{\"conns\":{},\"info\":{}}}",
                serde_json::Value::from(&***user),
                member.conns,
                member.info.as_deref().unwrap_or("null")
            );
        }
        out.push_str("},\"users_next\":");
        match page.len() > limit {
            true => out.push_str(&serde_json::Value::from(&**page[limit - 1].0).to_string()),
            false => out.push_str("null"),
        }
        let _ = write!(out, ",\"anonymous\":{}", p.anonymous());
        out
    }

    /// The owner's answer to `presence_stats`: counts only, O(1).
    pub(super) fn presence_stats_json(&self, name: &str) -> String {
        match self.presence.get(name) {
            Some(p) => format!(
                "{{\"users\":{},\"conns\":{},\"anonymous\":{}}}",
                p.users(),
                p.conns(),
                p.anonymous()
            ),
            None => "{\"users\":0,\"conns\":0,\"anonymous\":0}".to_string(),
        }
    }

    /// The owner: a presence question.
    pub(super) fn on_presence_ask(
        &mut self,
        name: &str,
        stats: bool,
        after: Option<&str>,
        limit: usize,
        reply: ReplyTo,
    ) {
        let page = (!stats).then_some((after, limit));
        if self.cluster_presence_ask(name, page, reply) {
            return;
        }
        let mut text = if stats {
            self.presence_stats_json(name)
        } else {
            self.presence_users_json(name, after, limit)
        };
        if self.presence_clustered(name) {
            // The broker could not be asked (down, or its queue full): this node's view.
            match stats {
                true => text.insert_str(text.len() - 1, ",\"local_only\":true"),
                false => text.push_str(",\"local_only\":true"),
            }
        }
        self.send_x(
            reply.shard as usize,
            XMsg::Reply {
                to: reply,
                part: Part::Json(text),
            },
        );
    }
}
