//! The HTTP/1.1 upgrade handshake (RFC 6455 §4.2), parsed with httparse from a buffer the caller
//! accumulates (bytes may arrive one at a time), and the HTTP responses: 101 or a rejection.

use bytes::Bytes;

/// A valid upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The path part of the request target, e.g. `/ws`.
    pub path: String,
    /// The query string without `?` (empty when absent).
    pub query: String,
    /// The Origin header, if any.
    pub origin: Option<String>,
    /// Subprotocols offered in Sec-WebSocket-Protocol, in order.
    pub protocols: Vec<String>,
    /// The Sec-WebSocket-Accept value for this request's key.
    pub accept: String,
    /// Length of the request head in the buffer; bytes after it are already WebSocket frames.
    pub head_len: usize,
}

/// Why a request was refused; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// 400, with a one-line reason.
    BadRequest(&'static str),
    /// 404: no endpoint at this path.
    NotFound,
    /// 426 with `Sec-WebSocket-Version: 13`.
    UpgradeRequired,
    /// 431: the head passed the size limit.
    HeadersTooLarge,
    /// 503: the server is at its connection limit or shutting down.
    Unavailable,
}

impl Rejection {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        todo!()
    }
    /// A complete HTTP response with a one-line body and `Connection: close`.
    pub fn response(self) -> Bytes {
        todo!()
    }
}

/// Parses the request head in `buf`. `Ok(None)`: need more bytes.
pub fn parse(buf: &[u8], head_bytes_max: usize) -> Result<Option<Request>, Rejection> {
    todo!("{buf:?}{head_bytes_max}")
}

/// `base64(sha1(key + GUID))` (§4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    todo!("{key:?}")
}

/// The `101 Switching Protocols` response, with `protocol` echoed when one was chosen.
pub fn response_101(accept: &str, protocol: Option<&str>) -> Bytes {
    todo!("{accept}{protocol:?}")
}
