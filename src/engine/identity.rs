//! Who a `/ws` connection is: its connection token (URL `token=`, `{"op":"auth"}`,
//! `{"op":"refresh"}`), its user (the token's `sub`, or the backend's `bind_user`), the expiry
//! of its token, and what its channel's namespace lets it do (docs/protocol.md, "Identity").
//!
//! Owns: [`Identity`] (in the connection's extension, so an anonymous connection pays nothing),
//! the token's deadlines (in the connection's one wheel entry, together with its heartbeat) and
//! the access rules of namespaces (`anonymous`, `subscribe`).
//! Must not: read the clock — a token's `exp` is compared with `wall_base_ms + now_ms`, both
//! given by the driver.
//!
//! Invariants: a connection with a user is registered at that user's owner shard (see
//! `users`), exactly once; its presence entries (see `presence`) carry the identity it had
//! when it joined, and a change of identity leaves and re-joins them.

use super::Engine;
use super::conn::{Endpoint, State};
use super::limits_ticks;
use crate::auth::Claims;
use crate::config::SubscribeRule;
use crate::proto::close;
use crate::proto::frame::{self, OpCode};
use crate::wire::{ErrorCode, envelope};
use std::sync::Arc;

/// A connection's user and token (absent for an anonymous connection).
#[derive(Debug, Default, Clone)]
pub struct Identity {
    /// The user id (a token's `sub`, or `bind_user`); `None` for a token without `sub`.
    pub user: Option<Arc<str>>,
    /// The user's `info` (raw JSON), shown in presence and join/leave news.
    pub info: Option<Arc<str>>,
    /// When the token expires, in the engine's milliseconds (`None`: no token, or no `exp`).
    pub exp_ms: Option<u64>,
    /// `{"op":"expired"}` was sent: the connection closes at `exp_ms + grace` unless refreshed.
    pub expired: bool,
    /// The channels the token lists (`channels` claim): subscribed at connect, and the only
    /// ones a `subscribe = "claim"` namespace lets this connection subscribe to.
    pub claims: Vec<Arc<str>>,
}

/// How a token reached the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVia {
    /// `?token=` in the URL (refused tokens never get here: the upgrade gets 401).
    Url,
    /// `{"op":"auth"}`.
    Auth,
    /// `{"op":"refresh"}`.
    Refresh,
}

impl Engine {
    /// Seconds since the UNIX epoch on the driver's clock.
    pub(super) fn now_unix_s(&self) -> u64 {
        (self.wall_base_ms + self.now_ms) / 1000
    }

    /// Verifies a token now; the error is the wire code and a sentence.
    pub(super) fn verify_token(&self, token: &str) -> Result<Claims, (ErrorCode, String)> {
        let Some(verifier) = self.verifier.as_deref() else {
            return Err((
                ErrorCode::TokenInvalid,
                "this server takes no connection tokens ([auth] has no key)".to_string(),
            ));
        };
        let limits = crate::auth::TokenLimits {
            leeway_s: self.config.auth.leeway_s,
            ..Default::default()
        };
        verifier
            .verify(token, self.now_unix_s(), &limits)
            .map_err(|e| {
                let code = match e {
                    crate::auth::TokenError::Expired => ErrorCode::TokenExpired,
                    _ => ErrorCode::TokenInvalid,
                };
                (code, e.message())
            })
    }

    /// The connection's identity, if it has one.
    pub(super) fn identity(&self, slot: usize) -> Option<&Identity> {
        self.conns[slot].ext.as_ref()?.identity.as_ref()
    }

    /// The connection's user, if it has one.
    pub(super) fn user_of(&self, slot: usize) -> Option<Arc<str>> {
        self.identity(slot)?.user.clone()
    }

    /// A verified token for `slot`: its identity, its user's registration, its channels.
    /// `Refresh` keeps the user (a token for another user is refused by the caller).
    pub(super) fn take_claims(&mut self, slot: usize, claims: Claims, via: TokenVia) {
        let exp_ms = claims
            .exp
            .map(|exp_s| exp_s.saturating_mul(1000).saturating_sub(self.wall_base_ms));
        let channels: Vec<Arc<str>> = claims
            .channels
            .iter()
            .map(|c| Arc::from(c.as_str()))
            .collect();
        if via == TokenVia::Refresh {
            let Some(identity) = self.conns[slot].ext_mut().identity.as_mut() else {
                return;
            };
            identity.exp_ms = exp_ms;
            identity.expired = false;
            identity.claims = channels;
            if let Some(info) = claims.info {
                identity.info = Some(Arc::from(info));
            }
            self.arm_open_deadline(slot, None);
            return;
        }
        let user = claims.sub.map(|s| Arc::<str>::from(s.as_str()));
        let info = claims.info.map(|i| Arc::<str>::from(i.as_str()));
        self.set_identity(slot, user, info, true);
        if let Some(identity) = self.conns[slot].ext_mut().identity.as_mut() {
            identity.exp_ms = exp_ms;
            identity.claims = channels.clone();
        } else {
            // A token without `sub` still has an expiry and channels.
            self.conns[slot].ext_mut().identity = Some(Identity {
                exp_ms,
                claims: channels.clone(),
                ..Identity::default()
            });
        }
        self.arm_open_deadline(slot, None);
        // The token's channels: subscribed now (the signature is the permission).
        for name in channels {
            let already = self
                .local
                .find(&name)
                .is_some_and(|l| self.conns[slot].subs.iter().any(|m| m.channel == l));
            if already {
                continue;
            }
            if let Err(e) = self.subscribe(slot, &name, None) {
                self.reply_channel_error(slot, e, None);
            }
            if !self.conns.contains(slot) || self.conns[slot].state != State::Open {
                return;
            }
        }
    }

    /// Gives `slot` a user (or none): leaves its presence entries under the old identity,
    /// unregisters the old user, registers the new one when it came with a token (`by_token`;
    /// a `bind_user` was registered by the owner before it got here), and re-joins its
    /// channels' presence under the new identity.
    pub(super) fn set_identity(
        &mut self,
        slot: usize,
        user: Option<Arc<str>>,
        info: Option<Arc<str>>,
        by_token: bool,
    ) {
        self.presence_all(slot, false);
        if let Some(old) = self.user_of(slot) {
            // Re-binding the same user keeps its registration (the owner already counts it).
            if user.as_deref() == Some(&*old) && !by_token {
                if let Some(identity) = self.conns[slot].ext_mut().identity.as_mut() {
                    identity.info = info;
                }
                return self.presence_all(slot, true);
            }
            self.unregister_user(slot, old);
        }
        let ext = self.conns[slot].ext_mut();
        let identity = ext.identity.get_or_insert_with(Identity::default);
        identity.user = user.clone();
        identity.info = if user.is_some() { info } else { None };
        if let (Some(user), true) = (user, by_token) {
            self.register_user(slot, user);
        }
        self.presence_all(slot, true);
    }

    /// `{"op":"auth"}` and `{"op":"refresh"}` from a client.
    pub(super) fn on_token_command(
        &mut self,
        slot: usize,
        token: &str,
        via: TokenVia,
        id: Option<&str>,
    ) {
        let has_token = self
            .identity(slot)
            .is_some_and(|i| i.exp_ms.is_some() || !i.claims.is_empty());
        let current = self.user_of(slot);
        if via == TokenVia::Auth && (has_token || current.is_some()) {
            return self.reply_error(
                slot,
                ErrorCode::BadRequest,
                "this connection is already identified; send refresh with a new token",
                id,
            );
        }
        let claims = match self.verify_token(token) {
            Ok(claims) => claims,
            Err((code, message)) => {
                self.counters.token_refusals += 1;
                self.reply_error(slot, code, &message, id);
                if via == TokenVia::Refresh {
                    // A connection whose refresh fails keeps its old deadline; one that cannot
                    // prove itself at all is told so and closed.
                    return;
                }
                return self.start_close(slot, close::TOKEN_INVALID);
            }
        };
        if via == TokenVia::Refresh {
            let same = match (&current, &claims.sub) {
                (Some(a), Some(b)) => **a == **b,
                (None, None) => true,
                _ => false,
            };
            if !same || self.identity(slot).is_none() {
                self.counters.token_refusals += 1;
                self.reply_error(
                    slot,
                    ErrorCode::TokenInvalid,
                    "a refresh token must name the connection's user (sub)",
                    id,
                );
                return self.start_close(slot, close::TOKEN_INVALID);
            }
        }
        let op = if via == TokenVia::Refresh {
            "refreshed"
        } else {
            "authed"
        };
        let text = envelope::authed(op, claims.sub.as_deref(), claims.exp, id);
        self.reply(slot, text);
        self.take_claims(slot, claims, via);
    }

    /// The tick at which `slot`'s token needs attention: its expiry, or the end of its grace.
    fn token_due_tick(&self, slot: usize) -> Option<u32> {
        let identity = self.identity(slot)?;
        let exp_ms = identity.exp_ms?;
        let due_ms = if identity.expired {
            exp_ms.saturating_add(self.config.limits.token_refresh_grace_ms)
        } else {
            exp_ms
        };
        let ahead = due_ms.saturating_sub(self.now_ms);
        Some(self.now_tick.wrapping_add(limits_ticks(ahead)))
    }

    /// Arms an open `/ws` connection's one deadline: its next heartbeat (`next_ping`, or one
    /// interval from now) or its token's, whichever comes first.
    pub(super) fn arm_open_deadline(&mut self, slot: usize, next_ping: Option<u32>) {
        let ping_ms = self.config.limits.ping_interval_ms;
        let ping = match next_ping {
            Some(t) => Some(t),
            None if ping_ms > 0 => Some(self.now_tick + limits_ticks(ping_ms)),
            None => None,
        };
        let token = self.token_due_tick(slot);
        let due = match (ping, token) {
            (Some(p), Some(t)) => Some(if t.wrapping_sub(p) as i32 <= 0 { t } else { p }),
            (p, t) => p.or(t),
        };
        match due {
            Some(due) => self.wheel.insert(slot, due),
            None => self.wheel.remove(slot),
        }
    }

    /// The deadline of an open `/ws` connection fired: its token's, or its heartbeat.
    pub(super) fn on_open_deadline(&mut self, slot: usize) {
        let due = self
            .token_due_tick(slot)
            .is_some_and(|t| self.now_tick.wrapping_sub(t) as i32 >= 0);
        if !due {
            if self.config.limits.ping_interval_ms == 0 {
                // No heartbeats here: the wheel fired a tick early for the token; re-arm.
                return self.arm_open_deadline(slot, None);
            }
            return self.heartbeat(slot);
        }
        let expired = self.identity(slot).is_some_and(|i| i.expired);
        if expired {
            self.counters.token_expiries += 1;
            return self.start_close_with(slot, close::TOKEN_EXPIRED, "token expired");
        }
        if let Some(identity) = self.conns[slot].ext_mut().identity.as_mut() {
            identity.expired = true;
        }
        let grace = self.config.limits.token_refresh_grace_ms;
        let text = envelope::expired(grace);
        if let Endpoint::Push { raw: false, .. } = self.conns[slot].endpoint {
            self.queue_data(slot, frame::encode(OpCode::Text, text.as_bytes()));
        }
        self.emit_expired(slot);
        if self.conns.contains(slot) && self.conns[slot].state == State::Open {
            // The heartbeat keeps its rhythm approximately: it is re-armed one interval on.
            self.arm_open_deadline(slot, None);
        }
    }

    /// Whether `slot` may subscribe to (or, `publish`, publish to) `name` by itself.
    pub(super) fn may_access(&self, slot: usize, name: &str) -> Result<(), &'static str> {
        let Some(ns) = self
            .config
            .namespaces
            .get(crate::channel::namespace_of(name))
        else {
            return Ok(());
        };
        let identity = self.identity(slot);
        let user = identity.and_then(|i| i.user.as_deref());
        if !ns.anonymous && user.is_none() {
            return Err("this namespace needs an identified user (a token, or bind_user)");
        }
        match ns.subscribe {
            SubscribeRule::Any => Ok(()),
            SubscribeRule::Claim => {
                let listed = identity.is_some_and(|i| i.claims.iter().any(|c| &**c == name));
                if listed {
                    Ok(())
                } else {
                    Err("this namespace allows only the channels listed in the token")
                }
            }
            SubscribeRule::Owner => {
                let own = name
                    .split_once(':')
                    .is_some_and(|(_, rest)| user.is_some_and(|u| u == rest));
                if own {
                    Ok(())
                } else {
                    Err("this namespace allows only the user's own channel (NAMESPACE:USER)")
                }
            }
        }
    }
}
