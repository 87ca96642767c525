//! Close codes (RFC 6455 §7.4) and the project's application codes (4000-4999).
//!
//! Owns: the numeric codes this server sends and the rule for which codes a peer may send.
//! Invariant: every code this module names that is sent on the wire passes `is_valid_on_wire`
//! (checked in the tests below); 1005 and 1006 exist only to be reported locally, never sent.

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
/// 1012: the service is restarting (IANA registry); sent by a drain: reconnect, and the load
/// balancer sends you to another instance.
pub const SERVICE_RESTART: u16 = 1012;
/// 4001: the client did not read fast enough; its outbound queue passed its byte limit.
pub const SLOW_CONSUMER: u16 = 4001;
/// 4002: the client sent control frames or messages faster than its rate limit.
pub const RATE_LIMITED: u16 = 4002;
/// 4003: the connection was closed by the backend through the control socket.
pub const KICKED: u16 = 4003;
/// 4004: no traffic from the client for two heartbeat intervals.
pub const HEARTBEAT_TIMEOUT: u16 = 4004;
/// 4005: the connection's token expired and no `refresh` came within the grace.
pub const TOKEN_EXPIRED: u16 = 4005;
/// 4006: an `auth` or `refresh` token did not verify (or named another user).
pub const TOKEN_INVALID: u16 = 4006;
/// 4007: the user already holds `conns_per_user_max` connections.
pub const USER_LIMIT: u16 = 4007;

/// Whether `code` may appear in a close frame received from a peer (RFC 6455 §7.4.1, §7.4.2):
/// 1000-1003, 1007-1014 and 3000-4999. 1004-1006, 1015, 0-999, 1016-2999 and 5000+ are invalid.
///
/// 1012 (service restart), 1013 (try again later) and 1014 (bad gateway) were registered with
/// IANA after RFC 6455 and the Autobahn suite accepts them (its case 7.9.* lists 0, 999, 1004,
/// 1005, 1006, 1016, 1100, 2000 and 2999 as invalid, 7.7.* the classic codes as valid). 1004 is
/// reserved, 1005/1006/1015 "MUST NOT be set as a status code in a Close control frame" (§7.4.1),
/// 1016-2999 are reserved for future extensions of the protocol (§7.4.2), 3000-3999 are for
/// libraries and frameworks, 4000-4999 for private use (this project's own codes live there).
pub fn is_valid_on_wire(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_and_autobahn_codes() {
        // Autobahn 7.7.*: valid codes must be accepted.
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(is_valid_on_wire(code), "{code} must be valid");
        }
        // IANA-registered after the RFC.
        for code in [1012, 1013, 1014] {
            assert!(is_valid_on_wire(code), "{code} must be valid");
        }
        // Autobahn 7.9.* plus the RFC's reserved and out-of-range codes.
        for code in [
            0,
            1,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            1100,
            2000,
            2999,
            5000,
            u16::MAX,
        ] {
            assert!(!is_valid_on_wire(code), "{code} must be invalid");
        }
    }

    #[test]
    fn codes_we_send_are_valid() {
        let sent = [
            NORMAL,
            GOING_AWAY,
            PROTOCOL_ERROR,
            UNSUPPORTED_DATA,
            INVALID_PAYLOAD,
            POLICY_VIOLATION,
            MESSAGE_TOO_BIG,
            INTERNAL_ERROR,
            SLOW_CONSUMER,
            RATE_LIMITED,
            KICKED,
            HEARTBEAT_TIMEOUT,
        ];
        for code in sent {
            assert!(is_valid_on_wire(code), "{code}");
        }
        assert!(!is_valid_on_wire(NO_STATUS));
        assert!(!is_valid_on_wire(ABNORMAL));
    }
}
