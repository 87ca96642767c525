//! History across nodes (`[cluster]`): the control socket's `history` and a client's
//! `history` read the channel's kept messages from the broker (its stream, `P:hist:NAME`),
//! whichever node published them and whether or not this node had subscribers then. The
//! owner's local history holds only what this node delivered since its first subscriber of
//! the channel; the broker's holds what the namespace keeps for the whole cluster.
//!
//! Owns the history requests waiting for the broker and the rendering of its answer into the
//! single-node JSON (each message as subscribers get it, encoded here from the broker's
//! payload). While the broker cannot be asked, or fails the read, the owner answers from its
//! local history with `"local_only":true`.

use super::super::Engine;
use super::super::xmsg::{Body, Part, ReplyTo, XMsg};
use crate::broker::{BrokerCommand, BrokerError, Kept, Position, Recovered};
use bytes::Bytes;
use std::sync::Arc;

/// Who asked for a channel's history.
#[derive(Debug)]
pub enum HistoryAsker {
    /// The control socket's `history` (the reply to complete).
    Control(ReplyTo),
    /// A `/ws` client's `history`: its shard, slot, generation and the command's id.
    Client {
        /// The client's shard.
        shard: u16,
        /// Its slot.
        slot: u32,
        /// Its generation.
        generation: u32,
        /// The command's id.
        id: Option<Box<str>>,
    },
}

/// A history read sent to the broker.
pub(super) struct PendingHistory {
    due_ms: u64,
    asker: HistoryAsker,
    channel: Arc<str>,
    limit: usize,
    since: Option<(u64, u64)>,
}

impl Engine {
    /// The owner: a `history` request. In cluster mode it is read from the broker, or answered
    /// from this node marked `local_only` when the broker cannot be asked (`Ok`); without a
    /// cluster (or for a channel that keeps no history) the asker comes back (`Err`).
    pub(in crate::engine) fn cluster_history(
        &mut self,
        channel: &Arc<str>,
        limit: usize,
        since: Option<(u64, u64)>,
        asker: HistoryAsker,
    ) -> Result<(), HistoryAsker> {
        if crate::wire::pusher::is_internal(channel) || self.history_policy(channel).is_none() {
            return Err(asker);
        }
        let index = self.index;
        let due_ms = self.answer_due_ms();
        let Some(cluster) = self.cluster.as_mut() else {
            return Err(asker);
        };
        let token = cluster.next_token(index);
        let command = match since {
            Some((offset, epoch)) => BrokerCommand::History {
                channel: channel.clone(),
                since: Some(Position { offset, epoch }),
                token,
            },
            None => BrokerCommand::HistoryTail {
                channel: channel.clone(),
                limit,
                token,
            },
        };
        let refused = cluster.handle.try_send(command).is_err();
        let pending = PendingHistory {
            due_ms,
            asker,
            channel: channel.clone(),
            limit,
            since,
        };
        if refused {
            // Down, or its queue full: this node's history, marked.
            let body = self.local_history(&pending);
            self.answer_history(pending, body);
            return Ok(());
        }
        cluster.ring = true;
        cluster.history_asks.insert(token, pending);
        Ok(())
    }

    /// The broker's newest messages of a channel (a `history` without `since`).
    pub(in crate::engine) fn on_history_tail(
        &mut self,
        token: u64,
        result: Result<Kept, BrokerError>,
    ) {
        let Some(pending) = self
            .cluster
            .as_mut()
            .and_then(|c| c.history_asks.remove(&token))
        else {
            return;
        };
        let body = match result {
            Ok(kept) => {
                let frames = self.history_frames(&pending.channel, kept.messages, pending.limit);
                let at = (kept.position.offset, kept.position.epoch);
                self.history_body(at, None, kept.truncated, &frames)
            }
            Err(_) => self.local_history(&pending),
        };
        self.answer_history(pending, body);
    }

    /// The broker's messages after `since` (a `history` with `since`).
    pub(super) fn on_history_since(
        &mut self,
        pending: PendingHistory,
        result: Result<Recovered, BrokerError>,
    ) {
        let body = match result {
            Ok(r) => {
                let recovered = r.replay.is_some();
                let frames = self.history_frames(
                    &pending.channel,
                    r.replay.unwrap_or_default(),
                    pending.limit,
                );
                let at = (r.position.offset, r.position.epoch);
                self.history_body(at, Some(recovered), false, &frames)
            }
            Err(_) => self.local_history(&pending),
        };
        self.answer_history(pending, body);
    }

    /// History reads past their deadline (the answer was dropped on its way): answered here.
    pub(in crate::engine) fn expire_history_asks(&mut self, now_ms: u64) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        for token in super::overdue(&cluster.history_asks, now_ms, |p| p.due_ms) {
            self.counters.cluster_requests_expired += 1;
            self.on_history_tail(token, Err(BrokerError::Down));
        }
    }

    /// The envelope frames of the newest `limit` of `messages` (oldest first), as subscribers
    /// got them; a payload that does not decode is skipped and counted.
    fn history_frames(
        &mut self,
        channel: &str,
        messages: Vec<(u64, Bytes)>,
        limit: usize,
    ) -> Vec<Bytes> {
        let skip = messages.len().saturating_sub(limit);
        let mut frames = Vec::with_capacity(messages.len() - skip);
        for (offset, payload) in messages.into_iter().skip(skip) {
            match Body::from_broker(&payload) {
                Some(body) if !matches!(body, Body::Pusher { .. }) => {
                    frames.push(crate::wire::encode_message(channel, offset, &body).0);
                }
                _ => self.counters.cluster_malformed += 1,
            }
        }
        frames
    }

    /// This node's answer, marked (the broker could not be asked, or failed).
    fn local_history(&mut self, pending: &PendingHistory) -> String {
        let mut body = self.history_json(&pending.channel, pending.limit, pending.since);
        body.insert_str(body.len() - 1, ",\"local_only\":true");
        body
    }

    fn answer_history(&mut self, pending: PendingHistory, body: String) {
        match pending.asker {
            HistoryAsker::Control(to) => {
                let part = Part::Json(body);
                self.send_x(to.shard as usize, XMsg::Reply { to, part });
            }
            HistoryAsker::Client {
                shard,
                slot,
                generation,
                id,
            } => {
                let msg = XMsg::ClientHistoryReply {
                    channel: pending.channel,
                    slot,
                    generation,
                    id,
                    body,
                };
                self.send_x(shard as usize, msg);
            }
        }
    }
}
