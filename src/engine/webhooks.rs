//! The engine's side of Pusher webhooks (`[[pusher.apps]] webhook_url`): which moments are
//! webhook events, and handing them to the sender's queue (`crate::webhook`), never waiting.
//!
//! Owns the mapping only: a channel's owner reports `channel_occupied` when the channel gets
//! its first subscribing shard and `channel_vacated` when it loses its last (so on one node the
//! events follow the channel, whatever the shard of its subscribers; clustered, each node
//! reports its own subscribers), the owner's presence reports `member_added` /
//! `member_removed` on a user's first and last connection, and the sender's shard reports
//! `client_event`. Nothing runs without a webhook: `Engine::webhooks` is `None`.

use super::Engine;
use crate::webhook::Hook;
use std::sync::Arc;

impl Engine {
    /// The app index and the app's channel name of an internal Pusher channel (`#APP#NAME`)
    /// whose app has a webhook.
    fn hooked(&self, internal: &str) -> Option<(u16, Arc<str>)> {
        self.webhooks.as_ref()?;
        let (app_id, channel) = internal.strip_prefix('#')?.split_once('#')?;
        let index = self
            .config
            .pusher
            .apps
            .iter()
            .position(|a| a.id == app_id)?;
        self.config.pusher.apps[index].webhook_url.as_ref()?;
        Some((u16::try_from(index).ok()?, Arc::from(channel)))
    }

    fn hook(&self, app: u16, hook: Hook) {
        if let Some(handle) = &self.webhooks {
            handle.send(app, hook);
        }
    }

    /// The owner: reports `channel_occupied` once until the channel is vacated. A
    /// subscription's presence join reaches the owner before its shard's interest (both on one
    /// ring), so the first of the two reports it, and a member is never added to a channel not
    /// yet occupied.
    fn occupy(&mut self, internal: &Arc<str>) {
        let Some((app, channel)) = self.hooked(internal) else {
            return;
        };
        if self.hook_occupied.insert(internal.clone()) {
            self.hook(app, Hook::Occupied { channel });
        }
    }

    /// The owner: reports `channel_vacated` when no shard subscribes to an occupied channel.
    pub(super) fn vacate_if_empty(&mut self, internal: &Arc<str>) {
        let empty = self.owned.get(internal).is_none_or(|o| o.shards.is_empty());
        if !empty || !self.hook_occupied.remove(internal) {
            return;
        }
        if let Some((app, channel)) = self.hooked(internal) {
            self.hook(app, Hook::Vacated { channel });
        }
    }

    /// The owner: `shard` has its first subscriber of `channel` (`owned.interest`).
    pub(super) fn interest_hooked(
        &mut self,
        channel: &Arc<str>,
        shard: usize,
    ) -> Option<(u64, u64)> {
        let position = self.owned.interest(channel, shard);
        if self.webhooks.is_some() {
            match position {
                Some(_) => self.occupy(channel),
                // Refused (the owner is full): a presence join may have reported it occupied.
                None => self.vacate_if_empty(channel),
            }
        }
        position
    }

    /// The owner: `shard` lost its last subscriber of `channel` (`owned.withdraw`); the last
    /// shard's withdrawal vacates the channel (after its members' removals, which come first
    /// on the same ring).
    pub(super) fn withdraw_hooked(&mut self, channel: &Arc<str>, shard: usize) {
        self.owned.withdraw(channel, shard);
        if self.webhooks.is_some() {
            self.vacate_if_empty(channel);
        }
    }

    /// The owner: a user's first connection joined a presence channel, or its last left.
    pub(super) fn hook_member(&mut self, internal: &Arc<str>, user: &Arc<str>, added: bool) {
        if added && self.webhooks.is_some() {
            self.occupy(internal);
        }
        if let Some((app, channel)) = self.hooked(internal) {
            let user = user.clone();
            let hook = if added {
                Hook::MemberAdded { channel, user }
            } else {
                Hook::MemberRemoved { channel, user }
            };
            self.hook(app, hook);
        }
    }

    /// The sender's shard: a client event was relayed.
    pub(super) fn hook_client_event(
        &mut self,
        internal: &str,
        event: &str,
        data: &str,
        conn: u64,
        user: Option<&str>,
    ) {
        if let Some((app, channel)) = self.hooked(internal) {
            let hook = Hook::ClientEvent {
                channel,
                event: Arc::from(event),
                data: Arc::from(data),
                socket_id: Arc::from(crate::wire::pusher::socket_id(conn)),
                user: user.map(Arc::from),
            };
            self.hook(app, hook);
        }
    }

    /// Shard 0 copies the sender's counters into its own for the snapshot (one sender per
    /// process, so the sum over shards is the sender's count).
    pub(super) fn webhook_gauges(&mut self) {
        let Some(handle) = self.webhooks.as_ref().filter(|_| self.index == 0) else {
            return;
        };
        let s = handle.stats();
        self.counters.pusher_webhook_batches_sent = s.batches_sent;
        self.counters.pusher_webhook_events_sent = s.events_sent;
        self.counters.pusher_webhook_attempts_failed = s.attempts_failed;
        self.counters.pusher_webhook_batches_dropped = s.batches_dropped;
        self.counters.pusher_webhook_events_dropped = s.events_dropped;
    }
}
