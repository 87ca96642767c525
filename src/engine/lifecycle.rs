//! A connection's life on the engine: the upgrade handshake, frames in, the close handshake,
//! heartbeats, and the failures that end it (docs/architecture.md, "Lifecycle").
//!
//! Owns no state of its own: these are the `Engine` methods that move a connection between
//! `Handshaking`, `Open`, `Closing` and `Draining`, each state with its deadline in the wheel.
//! Must not: touch a socket (the driver does, on `Intent`s) or read a clock (`now_tick` is the
//! driver's last `tick`).

use super::Engine;
use super::conn::{
    CLOSE_RECEIVED, CLOSE_SENT, Conn, Endpoint, FIN_AFTER_FLUSH, State, TRIM_WHEN_DRAINED,
};
use super::outbound::Enqueue;
use super::{TICK_MS, limits_ticks};
use crate::proto::close;
use crate::proto::decoder::Message;
use crate::proto::deflate::{self, InflateError};
use crate::proto::frame::{self, OpCode};
use crate::proto::handshake::{self, Rejection};
use crate::wire::envelope;
use bytes::Bytes;
use std::ops::ControlFlow;

/// Above this capacity the inflater's and the compressor's buffers are released after the read
/// that used them.
const INFLATED_KEEP_BYTES: usize = 64 << 10;

/// Queued frames searched (from the most recent) for a pong to replace.
const PONG_SCAN_FRAMES: usize = 16;

impl Engine {
    /// Bytes of a handshaking connection. A head that arrives whole in one read (the common
    /// case) is parsed where it lies; a partial one is kept in the connection's extension
    /// (bounded by `handshake_bytes_max`) until the rest arrives.
    pub(super) fn on_head_bytes(&mut self, slot: usize, data: &mut [u8]) {
        let max = self.config.limits.handshake_bytes_max;
        let held = self.conns[slot]
            .ext
            .as_mut()
            .map(|e| std::mem::take(&mut e.head))
            .unwrap_or_default();
        if held.is_empty() {
            match handshake::parse(data, max) {
                Ok(Some(request)) => {
                    let rest = &mut data[request.head_len..];
                    return self.on_request(slot, request, rest);
                }
                Ok(None) => {
                    // Keep at most the limit (+4 so a complete head of exactly the limit parses).
                    let keep = data.len().min(max + 4);
                    self.conns[slot].ext_mut().head = data[..keep].to_vec();
                    return;
                }
                Err(rejection) => return self.reject(slot, rejection),
            }
        }
        let mut head = held;
        head.extend_from_slice(data);
        match handshake::parse(&head, max) {
            Ok(Some(request)) => {
                let mut rest = head.split_off(request.head_len);
                self.on_request(slot, request, &mut rest);
            }
            Ok(None) => {
                head.truncate(max + 4);
                self.conns[slot].ext_mut().head = head;
            }
            Err(rejection) => self.reject(slot, rejection),
        }
    }

    /// A complete upgrade request: route it, open the WebSocket, decode what followed it.
    fn on_request(&mut self, slot: usize, request: handshake::Request, rest: &mut [u8]) {
        if !self.origins.allows(request.origin.as_deref()) {
            self.counters.origin_refusals += 1;
            return self.reject(slot, Rejection::Forbidden);
        }
        let mut url_channels = Vec::new();
        let mut url_since = Vec::new();
        let mut url_claims = None;
        // RFC 7692 §5: the client offered it and this server is configured to take it up
        // (not on `/app/{key}`: Pusher's events are encoded once for plain frames only).
        let pusher_key = request
            .path
            .strip_prefix("/app/")
            .filter(|_| self.pusher.is_some());
        let deflate = request
            .deflate_offer
            .filter(|_| self.config.deflate && pusher_key.is_none());
        let mut pusher_route = None;
        let endpoint = match request.path.as_str() {
            _ if pusher_key.is_some() => {
                let route = self.pusher_route(pusher_key.unwrap_or(""), &request);
                let app = match route {
                    Ok(app) => app,
                    Err(_) => super::conn::REFUSED_APP,
                };
                pusher_route = Some(route);
                Endpoint::Pusher { app }
            }
            "/echo" if self.config.echo => Endpoint::Echo {
                deflate: deflate.unwrap_or(0),
            },
            "/ws" => {
                let limits = &self.config.limits;
                let query =
                    match envelope::parse_query(&request.query, limits.channels_per_conn_max) {
                        Ok(query) => query,
                        Err(why) => return self.reject(slot, Rejection::BadRequest(why)),
                    };
                let bad = query.channels.iter().any(|c| {
                    crate::channel::validate_name(c, limits.channel_name_bytes_max).is_err()
                });
                if bad {
                    return self.reject(slot, Rejection::BadRequest("bad channel name in the URL"));
                }
                url_channels = query.channels;
                url_since = query.since;
                if let Some(token) = query.token {
                    match self.verify_token(&token) {
                        Ok(claims) => url_claims = Some(claims),
                        Err((code, _)) => {
                            self.counters.token_refusals += 1;
                            return self.reject(slot, Rejection::Unauthorized(code.as_str()));
                        }
                    }
                }
                Endpoint::Push {
                    raw: query.raw,
                    deflate: deflate.unwrap_or(0),
                }
            }
            _ => return self.reject(slot, Rejection::NotFound),
        };
        self.counters.handshakes += 1;
        let ping_ms = self.config.limits.ping_interval_ms;
        let now = self.now_tick;
        self.handshaking -= 1;
        let conn = &mut self.conns[slot];
        conn.endpoint = endpoint;
        conn.state = State::Open;
        conn.flags |= TRIM_WHEN_DRAINED;
        conn.close_code = close::ABNORMAL;
        conn.out.push_control(
            handshake::response_101(&request.accept, None, deflate),
            &mut self.owed,
        );
        if conn.ext.as_ref().is_some_and(|e| e.is_empty()) {
            conn.ext = None;
        }
        self.wheel.remove(slot);
        if matches!(endpoint, Endpoint::Push { .. }) && ping_ms > 0 {
            self.wheel.insert(slot, now + limits_ticks(ping_ms));
        }
        if let Some(route) = pusher_route {
            return self.pusher_open(slot, route, rest);
        }
        if let Endpoint::Push { raw: false, .. } = endpoint {
            let welcome = envelope::welcome(self.conn_id(slot).get());
            self.queue_data(slot, frame::encode(OpCode::Text, welcome.as_bytes()));
        }
        if matches!(endpoint, Endpoint::Push { .. }) {
            if let Some(claims) = url_claims {
                // Identity first: the connect event names the user, and the URL's channels are
                // checked against the token's rights.
                let text = envelope::authed("authed", claims.sub.as_deref(), claims.exp, None);
                self.reply(slot, text);
                self.take_claims(slot, claims, super::identity::TokenVia::Url);
            }
            self.emit_connect(
                slot,
                request.origin.as_deref(),
                &request.path,
                &request.query,
            );
            if self.config.limits.conns_per_ip_max == 0 {
                // The address was kept only for the connect event.
                if let Some(ext) = self.conns[slot].ext.as_mut() {
                    ext.peer = None;
                }
            }
            if self.conns[slot].ext.as_ref().is_some_and(|e| e.is_empty()) {
                self.conns[slot].ext = None;
            }
        }
        for name in url_channels {
            if !self.conns.contains(slot) || self.conns[slot].state != State::Open {
                return;
            }
            if let Err(why) = self.may_access(slot, &name) {
                self.counters.access_refusals += 1;
                self.reply_error(slot, crate::wire::ErrorCode::Forbidden, why, None);
                continue;
            }
            let since = url_since
                .iter()
                .find(|(channel, _)| *channel == name)
                .map(|(_, since)| *since);
            if let Err(e) = self.subscribe_since(slot, &name, None, since) {
                self.reply_channel_error(slot, e, None);
            }
        }
        // Bytes after the head are already frames (a client may pipeline them).
        if !rest.is_empty() {
            self.decode(slot, rest);
        }
    }

    /// The connection's public id.
    pub(super) fn conn_id(&self, slot: usize) -> crate::id::ConnId {
        crate::id::ConnId::at(self.node, self.index, slot, self.conns[slot].generation)
    }

    pub(super) fn reject(&mut self, slot: usize, rejection: Rejection) {
        self.counters.rejected(rejection.status());
        assert_eq!(self.conns[slot].state, State::Handshaking);
        self.handshaking -= 1;
        let conn = &mut self.conns[slot];
        if let Some(ext) = conn.ext.as_mut() {
            ext.head = Vec::new();
        }
        conn.out.push_control(rejection.response(), &mut self.owed);
        self.close_after_flush(slot);
    }

    /// The one way a connection ends after its last bytes: `Closing` with FIN once everything
    /// queued is sent (for a control connection, once its last pending reply is out), bounded by
    /// the close deadline.
    pub(super) fn close_after_flush(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        conn.state = State::Closing;
        conn.flags |= FIN_AFTER_FLUSH;
        self.arm_close_deadline(slot);
        self.mark_dirty(slot);
    }

    pub(super) fn decode(&mut self, slot: usize, data: &mut [u8]) {
        let conn = &mut self.conns[slot];
        let mut limits = match conn.endpoint {
            Endpoint::Echo { .. } => self.echo_limits,
            _ => self.ws_limits,
        };
        limits.deflate = conn.endpoint.deflate();
        let outbound_max = self.config.limits.outbound_bytes_max;
        let endpoint = conn.endpoint;
        // The token bucket of /ws clients: refilled from the ticks elapsed, burst of one second.
        let rate = match endpoint {
            Endpoint::Push { .. } | Endpoint::Pusher { .. } => {
                self.config.limits.client_messages_per_s
            }
            _ => 0,
        };
        if rate > 0 {
            let burst = u64::from(rate.min(u32::from(u8::MAX)));
            let elapsed_ms = u64::from(self.now_tick.wrapping_sub(conn.bucket_tick)) * TICK_MS;
            let refill = elapsed_ms * u64::from(rate) / 1000;
            if refill > 0 {
                conn.bucket_tick = self.now_tick;
            }
            conn.tokens = (u64::from(conn.tokens) + refill).min(burst) as u8;
        }
        let mut limited = false;
        let held_before = conn.decoder.heap_bytes();
        let counters = &mut self.counters;
        let queued = &mut self.owed;
        let mut inflater = self.inflater.as_deref_mut();
        let inflated = &mut self.inflated;
        let mut compressor = self.compressor.as_deref_mut();
        let scratch = &mut self.deflate_scratch;
        let narrow = &mut self.echo_narrow;
        let window_bits = endpoint.deflate_window_bits();
        let mut inflate_failure = None;
        let Conn {
            decoder,
            out,
            flags,
            close_code,
            state,
            tokens,
            ..
        } = conn;
        let mut slow = false;
        let mut commands: Vec<Vec<u8>> = Vec::new();
        let mut binary_on_ws = false;
        let result = decoder.feed(data, &limits, &mut |message| {
            counters.frames_in += 1;
            if rate > 0 && !matches!(message, Message::Close { .. }) {
                if *tokens == 0 {
                    limited = true;
                    return ControlFlow::Break(());
                }
                *tokens -= 1;
            }
            let message = match message {
                Message::Compressed { text, payload } => {
                    // One inflater per shard, reset per message: the client agreed to
                    // client_no_context_takeover (RFC 7692 §7.1.1.2), so no window carries over.
                    // Invariant: a deflate endpoint exists only with `config.deflate`.
                    let inflater = inflater
                        .as_deref_mut()
                        .expect("deflate endpoints exist only with config.deflate, restart-only");
                    match inflater.inflate(payload, limits.message_bytes_max, inflated) {
                        Ok(()) => counters.messages_inflated += 1,
                        Err(InflateError::TooBig) => {
                            // RFC 6455 §7.4.1: 1009, the inflated message is over the limit.
                            counters.inflate_too_big += 1;
                            inflate_failure = Some(close::MESSAGE_TOO_BIG);
                            return ControlFlow::Break(());
                        }
                        Err(InflateError::Corrupt) => {
                            inflate_failure = Some(close::INVALID_PAYLOAD);
                            return ControlFlow::Break(());
                        }
                    }
                    if !text {
                        Message::Binary(inflated)
                    } else if std::str::from_utf8(inflated).is_ok() {
                        Message::Text(inflated)
                    } else {
                        // RFC 6455 §8.1 applies to the inflated text: 1007.
                        inflate_failure = Some(close::INVALID_PAYLOAD);
                        return ControlFlow::Break(());
                    }
                }
                other => other,
            };
            match message {
                Message::Text(payload) | Message::Binary(payload)
                    if matches!(endpoint, Endpoint::Echo { .. }) =>
                {
                    let op = if matches!(message, Message::Text(_)) {
                        OpCode::Text
                    } else {
                        OpCode::Binary
                    };
                    // The echo endpoint is for conformance tests: its limit is the message limit
                    // (plus a frame header and a queue handle).
                    let limit = outbound_max.max(limits.message_bytes_max + 64);
                    counters.frames_out += 1;
                    let reply = match compressor.as_deref_mut() {
                        // A deflate client gets its echo compressed, as a compressing peer would
                        // send it (RFC 7692 allows either; conformance clients check the
                        // compressed path). Per connection here: /echo is a test endpoint, never
                        // a fan-out.
                        Some(compressor) if limits.deflate => {
                            scratch.clear();
                            if deflate::fits_window(payload.len(), window_bits) {
                                compressor.compress(payload, scratch);
                            } else {
                                // A client that limited the server window (RFC 7692 §7.1.2.1):
                                // a compressor with that window, kept for the next echo.
                                if narrow.as_ref().is_none_or(|(bits, _)| *bits != window_bits) {
                                    let fresh = deflate::Compressor::with_window_bits(window_bits);
                                    *narrow = Some((window_bits, Box::new(fresh)));
                                }
                                if let Some((_, narrow)) = narrow.as_mut() {
                                    narrow.compress(payload, scratch);
                                }
                            }
                            frame::encode_compressed(op, scratch)
                        }
                        _ => frame::encode(op, payload),
                    };
                    if out.push(reply, limit, queued) == Enqueue::SlowConsumer {
                        slow = true;
                        return ControlFlow::Break(());
                    }
                }
                Message::Text(payload) => commands.push(payload.to_vec()),
                Message::Binary(_) => {
                    // §7.4.1: 1003 for a data type the endpoint cannot accept.
                    binary_on_ws = true;
                    return ControlFlow::Break(());
                }
                Message::Ping(payload) => {
                    // RFC 6455 §5.5.3 lets an endpoint answer only the most recent ping. A client
                    // that reads gets every pong; one whose queue backs up (it pings without
                    // reading) gets its pending pong replaced by the latest one, and a pong that
                    // does not fit the outbound bound at all is skipped: memory stays bounded.
                    let pong = frame::encode(OpCode::Pong, payload);
                    let limit = outbound_max.max(limits.message_bytes_max + 64);
                    let pong = if out.owed_bytes() > outbound_max / 16 {
                        let is_pong = |f: &Bytes| f.first() == Some(&0x8a);
                        match out.replace_recent(is_pong, pong, PONG_SCAN_FRAMES, queued) {
                            Ok(()) => {
                                counters.pongs_conflated += 1;
                                return ControlFlow::Continue(());
                            }
                            Err(pong) => pong,
                        }
                    } else {
                        pong
                    };
                    match out.push(pong, limit, queued) {
                        Enqueue::Enqueued => counters.frames_out += 1,
                        _ => counters.pongs_skipped += 1,
                    }
                }
                Message::Pong(_) | Message::Compressed { .. } => {}
                Message::Close { code, .. } => {
                    *flags |= CLOSE_RECEIVED | FIN_AFTER_FLUSH;
                    if *flags & CLOSE_SENT == 0 {
                        // §5.5.1: answer with a close frame, echoing the status code.
                        *flags |= CLOSE_SENT;
                        counters.frames_out += 1;
                        let reply = match code {
                            Some(code) => frame::encode_close(code, ""),
                            None => frame::encode(OpCode::Close, &[]),
                        };
                        out.push_control(reply, queued);
                        *close_code = code.unwrap_or(close::NO_STATUS);
                    }
                    *state = State::Closing;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
        let held_after = self.conns[slot].decoder.heap_bytes();
        // Decoders are the only holders of partial messages; the shard total follows their deltas.
        self.inbound_bytes = (self.inbound_bytes + held_after).saturating_sub(held_before);
        if held_after > held_before
            && self.inbound_bytes > self.config.limits.shard_inbound_bytes_max
        {
            // Over the shard's bound: the largest partial message goes (not simply the one that
            // grew last, which may be a small, innocent one).
            let largest = self
                .conns
                .iter()
                .max_by_key(|(_, c)| c.decoder.heap_bytes())
                .map(|(s, _)| s);
            if let Some(largest) = largest {
                self.counters.shard_inbound_overflows += 1;
                self.fail(largest, close::MESSAGE_TOO_BIG);
                if largest == slot {
                    return;
                }
            }
        }
        if slow {
            return self.slow_consumer(slot);
        }
        if limited {
            // Commands read before the limit was hit are still served, then the close.
            self.counters.rate_limited += 1;
        }
        for command in commands {
            if self.conns[slot].state != State::Open {
                break;
            }
            self.on_command(slot, &command);
        }
        if limited {
            let code = self.pusher_close_code(slot, close::RATE_LIMITED);
            return self.fail(slot, code);
        }
        if binary_on_ws {
            return self.fail(slot, close::UNSUPPORTED_DATA);
        }
        // One large message does not pin its size for the shard's life.
        if self.inflated.capacity() > INFLATED_KEEP_BYTES {
            self.inflated = Vec::new();
        }
        if self.deflate_scratch.capacity() > INFLATED_KEEP_BYTES {
            self.deflate_scratch = Vec::new();
        }
        if let Some(code) = inflate_failure {
            return self.fail(slot, code);
        }
        match result {
            Ok(()) => {
                if self.conns[slot].state == State::Closing {
                    self.arm_close_deadline(slot);
                }
            }
            Err(error) => self.fail(slot, error.close_code()),
        }
    }

    /// Fails the connection (§7.1.7): send a close frame with `code`, read nothing more, then FIN.
    pub(super) fn fail(&mut self, slot: usize, code: u16) {
        let conn = &mut self.conns[slot];
        // Nothing more is decoded: release a partly received message now.
        let held = conn.decoder.heap_bytes();
        conn.decoder = crate::proto::decoder::Decoder::default();
        self.inbound_bytes -= held.min(self.inbound_bytes);
        let conn = &mut self.conns[slot];
        if conn.flags & CLOSE_SENT == 0 {
            conn.out
                .push_control(frame::encode_close(code, ""), &mut self.owed);
            conn.flags |= CLOSE_SENT;
            self.counters.frames_out += 1;
        }
        conn.close_code = code;
        self.close_after_flush(slot);
    }

    /// Starts a server-initiated close (heartbeat, shutdown, slow consumer): send a close frame
    /// and wait for the peer's, up to the close deadline.
    pub(super) fn start_close(&mut self, slot: usize, code: u16) {
        self.start_close_with(slot, code, "");
    }

    pub(super) fn start_close_with(&mut self, slot: usize, code: u16, reason: &str) {
        let conn = &mut self.conns[slot];
        if conn.state != State::Open {
            return;
        }
        conn.out
            .push_control(frame::encode_close(code, reason), &mut self.owed);
        conn.flags |= CLOSE_SENT;
        conn.close_code = code;
        conn.state = State::Closing;
        self.counters.frames_out += 1;
        self.arm_close_deadline(slot);
        self.mark_dirty(slot);
    }

    pub(super) fn slow_consumer(&mut self, slot: usize) {
        self.counters.slow_consumers += 1;
        // It no longer holds its shard congested: nothing more is queued for it.
        let conn = &mut self.conns[slot];
        if conn.flags & super::conn::LAGGING != 0 {
            conn.flags &= !super::conn::LAGGING;
            self.lagging -= 1;
        }
        // The backlog will never be read in time; dropping it lets the close frame (queued next)
        // reach the client as soon as it reads again, so it learns why it was closed.
        let conn = &mut self.conns[slot];
        if conn.state == State::Open {
            conn.out.discard_queued(&mut self.owed);
        }
        let code = self.pusher_close_code(slot, close::SLOW_CONSUMER);
        self.start_close(slot, code);
    }

    /// Queues a data frame for `slot`, closing it as a slow consumer when its queue is full.
    pub(super) fn queue_data(&mut self, slot: usize, frame: Bytes) -> Enqueue {
        let conn = &mut self.conns[slot];
        if conn.state != State::Open {
            return Enqueue::Closed;
        }
        let max = super::data_limit(
            conn,
            frame.len(),
            self.config.limits.outbound_bytes_max,
            self.now_tick,
            self.stall_ticks,
            &mut self.lagging,
        );
        let outcome = conn.out.push_shared(&frame, max, &mut self.owed);
        match outcome {
            Enqueue::Enqueued => {
                self.counters.frames_out += 1;
                self.mark_dirty(slot);
            }
            Enqueue::SlowConsumer => self.slow_consumer(slot),
            Enqueue::Closed => {}
        }
        outcome
    }

    pub(super) fn arm_close_deadline(&mut self, slot: usize) {
        let ticks = limits_ticks(self.config.limits.close_timeout_ms);
        self.wheel.insert(slot, self.now_tick + ticks);
    }

    pub(super) fn heartbeat(&mut self, slot: usize) {
        let interval = limits_ticks(self.config.limits.ping_interval_ms);
        let silent = self.now_tick.wrapping_sub(self.conns[slot].last_rx_tick);
        if silent >= 2 * interval {
            return self.start_close(slot, close::HEARTBEAT_TIMEOUT);
        }
        let conn = &mut self.conns[slot];
        conn.out
            .push_control(frame::encode(OpCode::Ping, &[]), &mut self.owed);
        conn.flags |= TRIM_WHEN_DRAINED;
        self.counters.frames_out += 1;
        let next = self.now_tick + interval;
        self.arm_open_deadline(slot, Some(next));
        self.mark_dirty(slot);
    }
}
