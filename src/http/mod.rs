//! Sans-IO HTTP/1.1 for the server's own endpoints (`/metrics`, `/healthz`, `/readyz`, the
//! publish API, the dashboard): an incremental request parser for keep-alive connections, the
//! response writer, and the query-string decoder.
//!
//! Owns: the decision "is there a complete, acceptable request at the front of this buffer, and
//! how many bytes is it", the one HTTP status each refusal maps to, and the exact bytes of every
//! response head and JSON error body the HTTP listener sends.
//!
//! Must not: import io_uring, libc, `std::net`, `std::thread` or a driver, or read the clock (a
//! `Date` value is formatted from the seconds the caller passes to [`http_date`]). It holds no
//! per-connection state: the caller owns the receive buffer, appends what it reads, and drains
//! what [`parse`] says it consumed.
//!
//! Invariants:
//! - [`parse`] is a pure function of its input: feeding a growing prefix of a byte stream gives
//!   `Ok(None)` until the first request is complete, then the answer the whole buffer gives, so
//!   the split of the stream into reads never changes the sequence of requests.
//! - [`parse`] looks at no more than `head_bytes_max` bytes to find the end of a head, and
//!   answers (a request or an error) once the buffer holds `head_bytes_max + body_bytes_max`
//!   bytes: a connection's receive buffer never needs to grow beyond that.
//! - Every refusal is one [`HttpError`] with one status and a fixed message, and the connection
//!   is closed after its response: once a request's framing is in doubt, the bytes after it
//!   cannot be trusted to start the next request (RFC 9112 §9.6 lets a server close at any time).
//! - Request bodies are framed by `Content-Length` only; `Transfer-Encoding` (chunked) request
//!   bodies are refused with 411, which tells a client the one framing that works.
//! - Responses always carry `Content-Length` (except 204 and 304, which have no content), so a
//!   response never needs chunked encoding or a close to delimit it.

#[doc(hidden)]
pub mod fuzz;
pub mod query;
pub mod request;
pub mod response;

pub use request::{Method, Request, Version, continue_expected, parse};
pub use response::{
    CONTINUE_100, NO_STORE, error_body, error_json, http_date, reason, response, response_head,
};

/// The bounds of one HTTP request (copied from the server's `Limits`).
///
/// Worst case per connection: the caller's receive buffer holds at most
/// `head_bytes_max + body_bytes_max` bytes before [`parse`] answers, and a parsed [`Request`]
/// owns at most `head_bytes_max` bytes of strings plus `body_bytes_max` bytes of body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request head, from the request line through the empty line that ends it (empty
    /// lines before the request line count too); above it: 431.
    pub head_bytes_max: usize,
    /// Most header fields in one head; above it: 431. Values above [`request::HEADERS_CEILING`]
    /// act as the ceiling (httparse needs the header slots on the stack).
    pub headers_max: usize,
    /// Largest request body (its `Content-Length`); above it: 413, decided from the header
    /// before any of the body has arrived.
    pub body_bytes_max: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            // A browser's head is under 2 KiB; 8 KiB leaves room for long bearer tokens and
            // cookies, and matches common servers' defaults.
            head_bytes_max: 8 * 1024,
            // A browser sends about 15 header fields.
            headers_max: 64,
            // A publish carries one message; message sizes are bounded far below this.
            body_bytes_max: 1024 * 1024,
        }
    }
}

/// The stable error codes of JSON error bodies (`{"error":{"code":...}}`), one per refusal kind.
pub mod code {
    /// 400: the request is malformed.
    pub const BAD_REQUEST: &str = "bad_request";
    /// 401: no valid bearer token.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// 403: authenticated, but not allowed.
    pub const FORBIDDEN: &str = "forbidden";
    /// 404: no endpoint at this path.
    pub const NOT_FOUND: &str = "not_found";
    /// 405: the endpoint exists, the method does not (send `Allow`, RFC 9110 §15.5.6).
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// 411: the request has a body without `Content-Length`.
    pub const LENGTH_REQUIRED: &str = "length_required";
    /// 413: the body is larger than `body_bytes_max`.
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// 415: the body's `Content-Type` is not one the endpoint reads.
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    /// 431: the head is larger than `head_bytes_max` or has too many fields.
    pub const HEADERS_TOO_LARGE: &str = "headers_too_large";
    /// 505: not HTTP/1.0 or HTTP/1.1.
    pub const HTTP_VERSION_NOT_SUPPORTED: &str = "http_version_not_supported";
}

/// Why [`parse`] refused a request: one variant per rule, each with one status, one JSON error
/// code and one fixed message. After any of them the connection is closed (see the module
/// invariants), which [`HttpError::response`] announces with `Connection: close`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// 400: the head is not parseable HTTP/1.x (request line, field syntax, line ends).
    Malformed,
    /// 400: the request target is neither origin-form, absolute-form (http/https) nor `*` for
    /// OPTIONS (RFC 9112 §3.2).
    BadTarget,
    /// 400: an HTTP/1.1 request without Host, or any request with two (RFC 9112 §3.2).
    Host,
    /// 400: `Content-Length` repeated, or not a decimal number (RFC 9112 §6.3 item 5: the
    /// framing is invalid; RFC 9110 §8.6 lets a recipient reject even `42, 42`).
    ContentLength,
    /// 400: both `Transfer-Encoding` and `Content-Length` (RFC 9112 §6.3 item 3: a possible
    /// request smuggling attempt that "ought to be handled as an error"; §6.1: the server must
    /// close the connection after responding).
    TransferEncodingWithLength,
    /// 400: `Transfer-Encoding` in an HTTP/1.0 request (RFC 9112 §6.1: the framing is faulty).
    TransferEncodingHttp10,
    /// 400: a field that may appear once (Authorization, Content-Type, Origin) appears twice.
    RepeatedField,
    /// 400: a field the server reads as text is not UTF-8.
    FieldNotText,
    /// 411: a request body framed by `Transfer-Encoding` (chunked); this server reads
    /// `Content-Length` bodies only (RFC 9110 §15.5.12).
    TransferEncoding,
    /// 411: POST, PUT or PATCH without `Content-Length`.
    LengthRequired,
    /// 413: `Content-Length` above `body_bytes_max` (RFC 9110 §15.5.14).
    BodyTooLarge,
    /// 431: no end of the head within `head_bytes_max` bytes (RFC 6585 §5).
    HeadTooLarge,
    /// 431: more header fields than `headers_max` (RFC 6585 §5).
    TooManyHeaders,
    /// 505: an HTTP version other than 1.0 and 1.1 (RFC 9110 §15.6.6). httparse reads only
    /// those two, so `HTTP/1.2` lands here too.
    Version,
}

impl HttpError {
    /// Every variant, for tests.
    pub const ALL: [HttpError; 14] = [
        HttpError::Malformed,
        HttpError::BadTarget,
        HttpError::Host,
        HttpError::ContentLength,
        HttpError::TransferEncodingWithLength,
        HttpError::TransferEncodingHttp10,
        HttpError::RepeatedField,
        HttpError::FieldNotText,
        HttpError::TransferEncoding,
        HttpError::LengthRequired,
        HttpError::BodyTooLarge,
        HttpError::HeadTooLarge,
        HttpError::TooManyHeaders,
        HttpError::Version,
    ];

    /// The longest [`HttpError::response`], in bytes: the fixed head and JSON around the
    /// longest message (a bound for a caller's send buffer; a test holds every variant to it).
    pub const RESPONSE_BYTES_MAX: usize = 256;

    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            HttpError::Malformed
            | HttpError::BadTarget
            | HttpError::Host
            | HttpError::ContentLength
            | HttpError::TransferEncodingWithLength
            | HttpError::TransferEncodingHttp10
            | HttpError::RepeatedField
            | HttpError::FieldNotText => 400,
            HttpError::TransferEncoding | HttpError::LengthRequired => 411,
            HttpError::BodyTooLarge => 413,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::Version => 505,
        }
    }

    /// The stable JSON error code (one of [`code`]).
    pub fn code(self) -> &'static str {
        match self.status() {
            411 => code::LENGTH_REQUIRED,
            413 => code::PAYLOAD_TOO_LARGE,
            431 => code::HEADERS_TOO_LARGE,
            505 => code::HTTP_VERSION_NOT_SUPPORTED,
            _ => code::BAD_REQUEST,
        }
    }

    /// A short fixed message for the error body.
    pub fn message(self) -> &'static str {
        match self {
            HttpError::Malformed => "malformed request head",
            HttpError::BadTarget => "unsupported request target",
            HttpError::Host => "exactly one Host header required",
            HttpError::ContentLength => "Content-Length must be one decimal number",
            HttpError::TransferEncodingWithLength => {
                "Transfer-Encoding and Content-Length together"
            }
            HttpError::TransferEncodingHttp10 => "Transfer-Encoding in an HTTP/1.0 request",
            HttpError::RepeatedField => "a single-valued header field is repeated",
            HttpError::FieldNotText => "a header value is not UTF-8",
            HttpError::TransferEncoding => {
                "chunked request bodies are not supported; send Content-Length"
            }
            HttpError::LengthRequired => "Content-Length required",
            HttpError::BodyTooLarge => "request body too large",
            HttpError::HeadTooLarge => "request head too large",
            HttpError::TooManyHeaders => "too many header fields",
            HttpError::Version => "HTTP/1.0 or HTTP/1.1 required",
        }
    }

    /// The complete response: a JSON error body, `Cache-Control: no-store` and
    /// `Connection: close` (the caller closes the connection after sending it).
    pub fn response(self) -> Vec<u8> {
        error_json(self.status(), self.code(), self.message(), false, &[])
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status(), self.message())
    }
}

impl std::error::Error for HttpError {}

#[cfg(test)]
mod tests;
