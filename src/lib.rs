//! ringcast: a WebSocket push engine for Linux.
pub mod proto;
