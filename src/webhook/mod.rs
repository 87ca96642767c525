//! Pusher webhooks (`[[pusher.apps]] webhook_url`): the events an app's backend is told about,
//! batched and signed as Pusher sends them, posted from a thread of their own.
//!
//! Owns the seam between the shards and the sender: [`Hook`] (what happened), the bounded
//! queue behind [`WebhookHandle`] (shards → sender; never blocks: a full queue drops the event
//! and counts it), the sender's counters ([`WebhookStats`]), and, sans-IO in [`body`], the
//! batch's JSON, its signature and the HTTP request bytes. [`sender`] is the thread.
//!
//! This module is plain data plus the queue: no sockets, no threads, no clock (the engine uses
//! it; only `webhook::sender` does I/O).
//!
//! What is sent, per Pusher's webhook format: `POST` of `{"time_ms":T,"events":[...]}` with
//! `Content-Type: application/json`, `X-Pusher-Key: KEY` and `X-Pusher-Signature:
//! hex(HMAC-SHA256(secret, body))`; events `channel_occupied`, `channel_vacated`,
//! `member_added`, `member_removed`, `client_event`, each `{"name":..,"channel":..}` plus
//! `user_id` (members, and client events on presence channels), `event`, `data`, `socket_id`
//! (client events).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

pub mod body;
pub mod sender;

/// What happened, for one app's webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// The channel got its first subscriber (on this node).
    Occupied {
        /// The channel, as the app names it.
        channel: Arc<str>,
    },
    /// The channel lost its last subscriber (on this node).
    Vacated {
        /// The channel.
        channel: Arc<str>,
    },
    /// A user's first connection joined a presence channel.
    MemberAdded {
        /// The channel.
        channel: Arc<str>,
        /// The user id.
        user: Arc<str>,
    },
    /// A user's last connection left a presence channel.
    MemberRemoved {
        /// The channel.
        channel: Arc<str>,
        /// The user id.
        user: Arc<str>,
    },
    /// A client sent a `client-*` event.
    ClientEvent {
        /// The channel.
        channel: Arc<str>,
        /// The event name (`client-...`).
        event: Arc<str>,
        /// Its data, as the client sent it (a JSON string's contents).
        data: Arc<str>,
        /// The sender's socket id.
        socket_id: Arc<str>,
        /// The sender's user id on a presence channel.
        user: Option<Arc<str>>,
    },
}

impl Hook {
    /// The event's name in the webhook (and in `webhook_events`).
    pub fn name(&self) -> &'static str {
        match self {
            Hook::Occupied { .. } => "channel_occupied",
            Hook::Vacated { .. } => "channel_vacated",
            Hook::MemberAdded { .. } => "member_added",
            Hook::MemberRemoved { .. } => "member_removed",
            Hook::ClientEvent { .. } => "client_event",
        }
    }
}

/// Every event name a webhook may ask for.
pub const EVENT_NAMES: [&str; 5] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
];

/// The sender's counters (atomics shared with the handles).
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Batches posted and answered 2xx.
    pub batches_sent: AtomicU64,
    /// Events in those batches.
    pub events_sent: AtomicU64,
    /// Attempts that failed (connection, timeout, non-2xx), retried or not.
    pub attempts_failed: AtomicU64,
    /// Batches given up after the last retry (their events are lost).
    pub batches_dropped: AtomicU64,
    /// Events dropped because the queue was full.
    pub events_dropped: AtomicU64,
}

/// A copy of [`WebhookStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookCounters {
    /// See [`WebhookStats::batches_sent`].
    pub batches_sent: u64,
    /// See [`WebhookStats::events_sent`].
    pub events_sent: u64,
    /// See [`WebhookStats::attempts_failed`].
    pub attempts_failed: u64,
    /// See [`WebhookStats::batches_dropped`].
    pub batches_dropped: u64,
    /// See [`WebhookStats::events_dropped`].
    pub events_dropped: u64,
}

impl WebhookStats {
    /// The counters now.
    pub fn snapshot(&self) -> WebhookCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WebhookCounters {
            batches_sent: get(&self.batches_sent),
            events_sent: get(&self.events_sent),
            attempts_failed: get(&self.attempts_failed),
            batches_dropped: get(&self.batches_dropped),
            events_dropped: get(&self.events_dropped),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The shards' end of the queue: cheap to clone (one per shard).
#[derive(Debug, Clone)]
pub struct WebhookHandle {
    tx: SyncSender<(u16, Hook)>,
    stats: Arc<WebhookStats>,
}

/// A queue of at most `capacity` events: the handle and the sender's end.
pub fn queue(capacity: usize) -> (WebhookHandle, Receiver<(u16, Hook)>, Arc<WebhookStats>) {
    assert!(capacity > 0);
    let (tx, rx) = sync_channel(capacity);
    let stats = Arc::new(WebhookStats::default());
    (
        WebhookHandle {
            tx,
            stats: stats.clone(),
        },
        rx,
        stats,
    )
}

impl WebhookHandle {
    /// Queues `hook` for app `app` (its index in `[[pusher.apps]]`) without blocking; a full
    /// queue (or a stopped sender) drops it, counted.
    pub fn send(&self, app: u16, hook: Hook) {
        match self.tx.try_send((app, hook)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                WebhookStats::add(&self.stats.events_dropped, 1);
            }
        }
    }

    /// The sender's counters.
    pub fn stats(&self) -> WebhookCounters {
        self.stats.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (handle, rx, _) = queue(2);
        let hook = |c: &str| Hook::Occupied {
            channel: Arc::from(c),
        };
        handle.send(0, hook("a"));
        handle.send(1, hook("b"));
        handle.send(0, hook("c"));
        assert_eq!(handle.stats().events_dropped, 1);
        assert_eq!(rx.try_recv().unwrap(), (0, hook("a")));
        assert_eq!(rx.try_recv().unwrap(), (1, hook("b")));
        assert!(rx.try_recv().is_err());
        drop(rx);
        handle.send(0, hook("d"));
        assert_eq!(
            handle.stats().events_dropped,
            2,
            "a stopped sender drops too"
        );
    }
}
