//! What clients and backends read on the wire, in one place: the `/ws` JSON envelope and its
//! commands ([`envelope`]), published and pushed payloads encoded once in both client formats
//! ([`push`]), the Pusher Channels protocol of `/app/{key}` ([`pusher`]), and the stable error
//! codes every error reply uses ([`ErrorCode`]).
//!
//! Pure data and text: no sockets, no clock.

pub mod envelope;
pub mod push;
pub mod pusher;

pub use push::{Body, Compressed, Frames, encode_message, encode_push};

/// A stable error code: the `code` of every JSON error, on `/ws` and on the control socket
/// (docs/protocol.md, docs/control.md). One enum, rendered in one place, so a code cannot be
/// misspelt in one handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The input is not one JSON object.
    BadJson,
    /// A `/ws` command lacks a field or has a bad one.
    BadRequest,
    /// A control request lacks a parameter or has a bad one.
    BadParams,
    /// `op` names no `/ws` command.
    UnknownOp,
    /// `method` names no control method.
    UnknownMethod,
    /// A channel name is empty, too long, or has characters outside `[A-Za-z0-9_.:@/-]`.
    BadChannel,
    /// A configured limit was reached (subscriptions, channels, pending replies, ...).
    LimitExceeded,
    /// Already subscribed to that channel.
    AlreadySubscribed,
    /// Not subscribed to that channel.
    NotSubscribed,
    /// The namespace does not allow it (client publish).
    Forbidden,
    /// No control token yet, or a wrong one.
    Unauthorized,
    /// The connection id names no open connection.
    NoSuchConn,
    /// A control line is longer than `control_line_bytes_max`.
    LineTooLong,
    /// The server could not take the request now (its cross-shard queues are full); retry later.
    Overloaded,
    /// A connection token does not verify (signature, algorithm, format, claims).
    TokenInvalid,
    /// A connection token's `exp` has passed: fetch a new one.
    TokenExpired,
    /// A client `send` found no event-stream consumer for `message` events.
    NoConsumer,
    /// Clustered (`[cluster]`): the broker is unreachable or refused or lost the publish; its
    /// outcome may be unknown (lost in flight). Retry later.
    ClusterUnavailable,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadParams => "bad_params",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::UnknownMethod => "unknown_method",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NoSuchConn => "no_such_conn",
            ErrorCode::LineTooLong => "line_too_long",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::NoConsumer => "no_consumer",
            ErrorCode::ClusterUnavailable => "cluster_unavailable",
        }
    }

    /// Every code (for the docs test).
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::BadParams,
        ErrorCode::UnknownOp,
        ErrorCode::UnknownMethod,
        ErrorCode::BadChannel,
        ErrorCode::LimitExceeded,
        ErrorCode::AlreadySubscribed,
        ErrorCode::NotSubscribed,
        ErrorCode::Forbidden,
        ErrorCode::Unauthorized,
        ErrorCode::NoSuchConn,
        ErrorCode::LineTooLong,
        ErrorCode::Overloaded,
        ErrorCode::TokenInvalid,
        ErrorCode::TokenExpired,
        ErrorCode::NoConsumer,
        ErrorCode::ClusterUnavailable,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
        }
    }
}
