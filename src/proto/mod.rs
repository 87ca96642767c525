//! Sans-IO WebSocket protocol (RFC 6455): the HTTP upgrade handshake, the client frame decoder,
//! the server frame encoder, permessage-deflate (RFC 7692), masking, incremental UTF-8
//! validation and close codes.
//!
//! This module knows bytes, not sockets: it never imports io_uring, libc or `std::net` and never
//! reads the clock. The shard feeds it bytes and acts on what it returns.

pub mod close;
pub mod decoder;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;
