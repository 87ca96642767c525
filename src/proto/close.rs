//! Close codes (RFC 6455 §7.4) and the project's application codes (4000-4999).

/// 1000: normal closure.
pub const NORMAL: u16 = 1000;
/// 1001: the server is going away (shutdown).
pub const GOING_AWAY: u16 = 1001;
/// 1002: protocol error.
pub const PROTOCOL_ERROR: u16 = 1002;
/// 1003: a data type the endpoint cannot accept.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// 1005: no status code was present (never sent on the wire).
pub const NO_STATUS: u16 = 1005;
/// 1006: abnormal closure, no close frame (never sent on the wire).
pub const ABNORMAL: u16 = 1006;
/// 1007: payload data inconsistent with the message type (invalid UTF-8 in a text message).
pub const INVALID_PAYLOAD: u16 = 1007;
/// 1008: policy violation.
pub const POLICY_VIOLATION: u16 = 1008;
/// 1009: message too big.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// 1011: internal error.
pub const INTERNAL_ERROR: u16 = 1011;
/// 4001: the client did not read fast enough; its outbound queue passed its byte limit.
pub const SLOW_CONSUMER: u16 = 4001;
/// 4002: the client sent control frames or messages faster than its rate limit.
pub const RATE_LIMITED: u16 = 4002;
/// 4003: the connection was closed by the backend through the control socket.
pub const KICKED: u16 = 4003;
/// 4004: no traffic from the client for two heartbeat intervals.
pub const HEARTBEAT_TIMEOUT: u16 = 4004;

/// Whether `code` may appear in a close frame received from a peer (RFC 6455 §7.4.1, §7.4.2):
/// 1000-1003, 1007-1011 and 3000-4999. 1004-1006, 1015, 0-999 and 5000+ are invalid.
pub fn is_valid_on_wire(code: u16) -> bool {
    todo!("{code}")
}
