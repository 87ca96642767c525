//! Who may connect, sans-IO: connection tokens (JWT, verified against a configured key), the
//! `Origin` allowlist of the WebSocket handshake, and Pusher's HMAC signatures (channel
//! authorizations and signed HTTP API requests, [`pusher`]).
//!
//! Owns: the [`Verifier`] (one key, one algorithm), the [`TokenLimits`] a token is held to, the
//! [`Claims`] ringcast takes from a token, the [`TokenError`] taxonomy with its wire codes, and the
//! [`OriginPolicy`].
//!
//! Must not: read the clock — the time a token is checked at is the caller's `now_s`, in seconds
//! since the UNIX epoch, so tests and the in-memory driver choose it; do I/O — keys arrive as
//! bytes (reading a key file, or an environment variable, is the caller's job, at start-up);
//! import io_uring, libc, `std::net`, `std::time` or `std::thread`.
//!
//! Invariants: no input panics; every refusal is a value with a stable code; a [`Verifier`] that
//! exists holds a usable key, so a bad key is a start-up error, never a per-connection one.

pub mod jwt;
pub mod origin;
pub mod pusher;

pub use jwt::{Algorithm, Claims, KeyError, TokenError, TokenLimits, Verifier, sign_hs256};
pub use origin::OriginPolicy;
