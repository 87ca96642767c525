//! The control protocol, sans-IO: splitting a byte stream into bounded lines, parsing a line into
//! a request, and writing replies (docs/control.md). No sockets, no clock, no io_uring.

pub mod lines;
pub mod request;

pub use lines::{LineSplitter, TooLong};
pub use request::{METHODS, Method, Payload, Request, RequestError, parse};

use crate::wire::ErrorCode;

/// Writes a success reply line: `{"id":ID,"result":RESULT}\n` (no `id` when the request had none).
pub fn reply_ok(id: Option<&str>, result: &str) -> String {
    let mut out = String::with_capacity(24 + result.len());
    out.push('{');
    if let Some(id) = id {
        out.push_str("\"id\":");
        out.push_str(id);
        out.push(',');
    }
    out.push_str("\"result\":");
    out.push_str(result);
    out.push_str("}\n");
    out
}

/// Writes an error reply line: `{"id":ID,"error":{"code":CODE,"message":MSG}}\n`.
pub fn reply_error(id: Option<&str>, code: ErrorCode, message: &str) -> String {
    let mut out = String::with_capacity(64 + message.len());
    out.push('{');
    if let Some(id) = id {
        out.push_str("\"id\":");
        out.push_str(id);
        out.push(',');
    }
    out.push_str("\"error\":{\"code\":");
    out.push('"');
    out.push_str(code.as_str());
    out.push('"');
    out.push_str(",\"message\":");
    out.push_str(&serde_json::Value::from(message).to_string());
    out.push_str("}}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_one_json_line() {
        for line in [
            reply_ok(Some("7"), "{\"offset\":1}"),
            reply_ok(None, "{}"),
            reply_error(
                Some("\"a\""),
                ErrorCode::BadJson,
                "quote \" and newline \n inside",
            ),
            reply_error(None, ErrorCode::UnknownMethod, "x"),
        ] {
            assert!(line.ends_with('\n'));
            assert_eq!(line.matches('\n').count(), 1, "{line}");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert!(v.get("result").is_some() || v["error"]["code"].is_string());
        }
    }
}
