//! Pusher signatures, sans-IO: the channel authorizations clients present on `pusher:subscribe`
//! and the signed requests of the Pusher HTTP API, both HMAC-SHA256 with the app's secret.
//!
//! Owns: the strings that are signed (exactly as the Pusher server SDKs build them), the
//! constant-time checks, and [`ApiAuthError`] with its HTTP status.
//!
//! Must not: read the clock (`now_s`, seconds since the UNIX epoch, is an argument), or compare
//! a signature with `==` (the HMAC crate's `verify_slice` compares in constant time).
//!
//! Invariants: no input panics; a signature that is not 64 hex digits is simply wrong.

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// `hex(HMAC-SHA256(secret, message))`, lowercase.
pub fn sign(secret: &[u8], message: &[u8]) -> String {
    let mut mac = mac_of(secret);
    mac.update(message);
    hex(&mac.finalize().into_bytes())
}

fn mac_of(secret: &[u8]) -> HmacSha256 {
    // Invariant: HMAC takes keys of any length (RFC 2104 §3: longer ones are hashed first).
    HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length")
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let bytes = text.as_bytes();
    if bytes.len() % 2 != 0 {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Whether `signature` (hex) is the HMAC of `message`, compared in constant time.
fn verify_hex(secret: &[u8], message: &[u8], signature: &str) -> bool {
    let Some(bytes) = unhex(signature).filter(|b| b.len() == 32) else {
        return false;
    };
    let mut mac = mac_of(secret);
    mac.update(message);
    mac.verify_slice(&bytes).is_ok()
}

/// The string a channel authorization signs: `socket_id:channel_name`, and `:channel_data` for
/// a presence channel (the raw string the client sends, byte for byte).
fn channel_message(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The `auth` a backend gives a client for `channel` (what the SDKs' `authorizeChannel`
/// returns): `key:hex(HMAC-SHA256(secret, "socket_id:channel[:channel_data]"))`.
pub fn channel_auth(
    key: &str,
    secret: &[u8],
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    let message = channel_message(socket_id, channel, channel_data);
    format!("{key}:{}", sign(secret, message.as_bytes()))
}

/// The `auth` of a user sign-in (what the SDKs' `authenticateUser` returns):
/// `key:hex(HMAC-SHA256(secret, "socket_id::user::user_data"))`.
pub fn user_auth(key: &str, secret: &[u8], socket_id: &str, user_data: &str) -> String {
    let message = format!("{socket_id}::user::{user_data}");
    format!("{key}:{}", sign(secret, message.as_bytes()))
}

/// Whether `auth` signs in `socket_id` as the user of `user_data`.
pub fn verify_user_auth(
    key: &str,
    secret: &[u8],
    socket_id: &str,
    user_data: &str,
    auth: &str,
) -> bool {
    let Some((auth_key, signature)) = auth.split_once(':') else {
        return false;
    };
    let message = format!("{socket_id}::user::{user_data}");
    auth_key == key && verify_hex(secret, message.as_bytes(), signature)
}

/// Whether `auth` authorizes `socket_id` on `channel` (with `channel_data` for presence).
pub fn verify_channel_auth(
    key: &str,
    secret: &[u8],
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> bool {
    let Some((auth_key, signature)) = auth.split_once(':') else {
        return false;
    };
    if auth_key != key {
        return false;
    }
    let message = channel_message(socket_id, channel, channel_data);
    verify_hex(secret, message.as_bytes(), signature)
}

/// Why a signed API request was refused; every one is HTTP 401 (Pusher's "authentication
/// error"), with this text as its explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiAuthError {
    /// A parameter the signature needs is absent (`auth_key`, `auth_timestamp`,
    /// `auth_version`, `auth_signature`, or `body_md5` with a body).
    Missing(&'static str),
    /// A parameter appears twice (the signed string would be ambiguous).
    Duplicate,
    /// `auth_key` is not the app's key.
    WrongKey,
    /// `auth_version` is not `1.0`.
    Version,
    /// `auth_timestamp` is not a number, or too far from the server's clock.
    Timestamp,
    /// `body_md5` is not the MD5 of the body.
    BodyMd5,
    /// `auth_signature` does not match.
    Signature,
}

impl ApiAuthError {
    /// The explanation in the 401 response.
    pub fn message(self) -> &'static str {
        match self {
            ApiAuthError::Missing(_) => "a signature parameter is missing",
            ApiAuthError::Duplicate => "a query parameter appears twice",
            ApiAuthError::WrongKey => "auth_key is not this app's key",
            ApiAuthError::Version => "auth_version must be 1.0",
            ApiAuthError::Timestamp => "auth_timestamp is not within 600 s of the server's clock",
            ApiAuthError::BodyMd5 => "body_md5 is not the MD5 of the body",
            ApiAuthError::Signature => "invalid signature",
        }
    }
}

/// A request as its signature covers it.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// `GET`, `POST`, ... (upper case, as sent).
    pub method: &'a str,
    /// The path as sent, e.g. `/apps/3/events`.
    pub path: &'a str,
    /// The query string without `?`, as sent.
    pub query: &'a str,
    /// The body (empty without one).
    pub body: &'a [u8],
}

/// Checks a Pusher HTTP API request signed with `key` and `secret` at `now_s`, the way the
/// server SDKs sign (Pusher HTTP API reference, "Authentication"): the parameters other than
/// `auth_signature`, keys lower-cased, sorted by key, joined as `key=value` with `&`, signed as
/// `METHOD\nPATH\nQUERY`; `body_md5` (hex MD5 of the body) is required with a body.
pub fn verify_request(
    key: &str,
    secret: &[u8],
    request: SignedRequest<'_>,
    now_s: u64,
    skew_s: u64,
) -> Result<(), ApiAuthError> {
    let mut params: Vec<(String, String)> = crate::http::query::pairs(request.query)
        .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
        .collect();
    params.sort();
    if params.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(ApiAuthError::Duplicate);
    }
    let get = |name: &str| {
        params
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| params[i].1.as_str())
    };
    let signature = get("auth_signature").ok_or(ApiAuthError::Missing("auth_signature"))?;
    let auth_key = get("auth_key").ok_or(ApiAuthError::Missing("auth_key"))?;
    let timestamp = get("auth_timestamp").ok_or(ApiAuthError::Missing("auth_timestamp"))?;
    let version = get("auth_version").ok_or(ApiAuthError::Missing("auth_version"))?;
    if auth_key != key {
        return Err(ApiAuthError::WrongKey);
    }
    if version != "1.0" {
        return Err(ApiAuthError::Version);
    }
    let at: u64 = timestamp.parse().map_err(|_| ApiAuthError::Timestamp)?;
    if at.abs_diff(now_s) > skew_s {
        return Err(ApiAuthError::Timestamp);
    }
    if !request.body.is_empty() {
        let md5 = get("body_md5").ok_or(ApiAuthError::Missing("body_md5"))?;
        if !md5.eq_ignore_ascii_case(&hex(&Md5::digest(request.body))) {
            return Err(ApiAuthError::BodyMd5);
        }
    }
    let mut message = format!("{}\n{}\n", request.method, request.path);
    let mut first = true;
    for (k, v) in params.iter().filter(|(k, _)| k != "auth_signature") {
        if !first {
            message.push('&');
        }
        first = false;
        message.push_str(k);
        message.push('=');
        message.push_str(v);
    }
    if verify_hex(secret, message.as_bytes(), signature) {
        Ok(())
    } else {
        Err(ApiAuthError::Signature)
    }
}

/// Signs a request the way the SDKs do (for tests and examples): the query to send, with
/// `auth_signature` last. `params` are the request's own parameters (`name=value`, unencoded).
pub fn sign_request(
    key: &str,
    secret: &[u8],
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &[u8],
    now_s: u64,
) -> String {
    let mut all: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    all.push(("auth_key".into(), key.into()));
    all.push(("auth_timestamp".into(), now_s.to_string()));
    all.push(("auth_version".into(), "1.0".into()));
    if !body.is_empty() {
        all.push(("body_md5".into(), hex(&Md5::digest(body))));
    }
    all.sort();
    let query: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let query = query.join("&");
    let signature = sign(secret, format!("{method}\n{path}\n{query}").as_bytes());
    format!("{query}&auth_signature={signature}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_requests_never_panic(
            query in ".{0,200}",
            body in proptest::collection::vec(any::<u8>(), 0..64),
            now_s in any::<u64>(),
            skew_s in any::<u64>(),
        ) {
            let request = SignedRequest { method: "POST", path: "/apps/1/events", query: &query, body: &body };
            let _ = verify_request("k", b"s", request, now_s, skew_s);
        }

        #[test]
        fn only_the_signature_verifies(
            socket in "[0-9]{1,5}\\.[0-9]{1,5}",
            channel in "[a-z-]{1,20}",
            data in proptest::option::of(".{0,40}"),
            flip in 0usize..64,
        ) {
            let auth = channel_auth("k", b"s", &socket, &channel, data.as_deref());
            prop_assert!(verify_channel_auth("k", b"s", &socket, &channel, data.as_deref(), &auth));
            // Any one hex digit changed: refused.
            let (key, sig) = auth.split_once(':').unwrap();
            let mut sig = sig.as_bytes().to_vec();
            sig[flip] = if sig[flip] == b'0' { b'1' } else { b'0' };
            let bad = format!("{key}:{}", String::from_utf8(sig).unwrap());
            prop_assert!(!verify_channel_auth("k", b"s", &socket, &channel, data.as_deref(), &bad));
        }

        #[test]
        fn signed_requests_verify_at_any_time_within_the_skew(
            now_s in 1_000u64..u64::MAX / 2,
            drift in 0u64..=600,
            name in "p_[a-z]{1,8}",
            value in "[A-Za-z0-9_-]{0,10}",
        ) {
            let query = sign_request("k", b"s", "GET", "/apps/1/channels", &[(&name, &value)], b"", now_s);
            let request = SignedRequest { method: "GET", path: "/apps/1/channels", query: &query, body: b"" };
            prop_assert_eq!(verify_request("k", b"s", request, now_s + drift, 600), Ok(()));
            prop_assert_eq!(verify_request("k", b"s", request, now_s + 601, 600), Err(ApiAuthError::Timestamp));
        }
    }

    /// Pusher's documented example ("Authorizing users", private channels): key
    /// 278d425bdf160c739803, secret 7ad3773142a6692b25b8, socket 1234.1234, private-foobar.
    #[test]
    fn the_documented_private_channel_example() {
        let auth = channel_auth(
            "278d425bdf160c739803",
            b"7ad3773142a6692b25b8",
            "1234.1234",
            "private-foobar",
            None,
        );
        assert_eq!(
            auth,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        let ok = |auth: &str| {
            verify_channel_auth(
                "278d425bdf160c739803",
                b"7ad3773142a6692b25b8",
                "1234.1234",
                "private-foobar",
                None,
                auth,
            )
        };
        assert!(ok(&auth));
        assert!(ok(&auth
            .to_uppercase()
            .replace("278D425BDF160C739803", "278d425bdf160c739803")));
        assert!(!ok(&auth.replace(":58", ":59")));
        assert!(!ok(&auth.replace("278d", "378d")), "another key");
        assert!(!ok("278d425bdf160c739803:58df"), "short");
        assert!(!ok("278d425bdf160c739803:zz"), "not hex");
        assert!(!ok("no-colon"));
        assert!(!ok(""));
        let other_socket = verify_channel_auth(
            "278d425bdf160c739803",
            b"7ad3773142a6692b25b8",
            "1234.1235",
            "private-foobar",
            None,
            &auth,
        );
        assert!(!other_socket);
    }

    #[test]
    fn user_sign_ins_are_checked() {
        let data = r#"{"id":"u1","name":"A"}"#;
        let auth = user_auth("k", b"s", "1.2", data);
        let expected = format!(
            "k:{}",
            sign(b"s", b"1.2::user::{\"id\":\"u1\",\"name\":\"A\"}")
        );
        assert_eq!(auth, expected);
        assert!(verify_user_auth("k", b"s", "1.2", data, &auth));
        assert!(!verify_user_auth("k", b"s", "1.3", data, &auth));
        assert!(!verify_user_auth(
            "k",
            b"s",
            "1.2",
            r#"{"id":"u2","name":"A"}"#,
            &auth
        ));
        assert!(!verify_user_auth("k2", b"s", "1.2", data, &auth));
        assert!(!verify_user_auth("k", b"s", "1.2", data, "k"));
    }

    /// Pusher's documented presence example: the same key and secret, socket 1234.1234,
    /// presence-foobar, channel_data `{"user_id":10,"user_info":{"name":"Mr. Channels"}}`.
    #[test]
    fn the_documented_presence_channel_example() {
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        let auth = channel_auth(
            "278d425bdf160c739803",
            b"7ad3773142a6692b25b8",
            "1234.1234",
            "presence-foobar",
            Some(data),
        );
        assert_eq!(
            auth,
            "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
        let check = |data: &str| {
            verify_channel_auth(
                "278d425bdf160c739803",
                b"7ad3773142a6692b25b8",
                "1234.1234",
                "presence-foobar",
                Some(data),
                &auth,
            )
        };
        assert!(check(data));
        // The raw string counts, not its meaning: one more space is another signature.
        assert!(!check(
            r#"{"user_id": 10,"user_info":{"name":"Mr. Channels"}}"#
        ));
    }

    /// Pusher's documented HTTP API example (key 278d425bdf160c739803, secret
    /// 7ad3773142a6692b25b8, timestamp 1353088179, the body of a `POST /apps/3/events`).
    #[test]
    fn the_documented_request_example() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(hex(&Md5::digest(body)), "ec365a775a4cd0599faeb73354201b6f");
        let query = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
                     &body_md5=ec365a775a4cd0599faeb73354201b6f\
                     &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
        let request = SignedRequest {
            method: "POST",
            path: "/apps/3/events",
            query,
            body,
        };
        let key = "278d425bdf160c739803";
        let secret = b"7ad3773142a6692b25b8";
        assert_eq!(
            verify_request(key, secret, request, 1353088179, 600),
            Ok(())
        );
        assert_eq!(
            verify_request(key, secret, request, 1353088179 + 599, 600),
            Ok(())
        );
        assert_eq!(
            verify_request(key, secret, request, 1353088179 + 601, 600),
            Err(ApiAuthError::Timestamp)
        );
        let tampered = SignedRequest {
            body: br#"{"name":"foo","channels":["project-4"],"data":"{\"some\":\"data\"}"}"#,
            ..request
        };
        assert_eq!(
            verify_request(key, secret, tampered, 1353088179, 600),
            Err(ApiAuthError::BodyMd5)
        );
        let other_path = SignedRequest {
            path: "/apps/4/events",
            ..request
        };
        assert_eq!(
            verify_request(key, secret, other_path, 1353088179, 600),
            Err(ApiAuthError::Signature)
        );
        assert_eq!(
            verify_request(key, b"wrong", request, 1353088179, 600),
            Err(ApiAuthError::Signature)
        );
        assert_eq!(
            verify_request("other", secret, request, 1353088179, 600),
            Err(ApiAuthError::WrongKey)
        );
    }

    #[test]
    fn signed_requests_round_trip_and_bad_ones_are_named() {
        let (key, secret) = ("k", b"s".as_slice());
        let query = sign_request(
            key,
            secret,
            "GET",
            "/apps/1/channels",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")],
            b"",
            1000,
        );
        let request = SignedRequest {
            method: "GET",
            path: "/apps/1/channels",
            query: &query,
            body: b"",
        };
        assert_eq!(verify_request(key, secret, request, 1000, 600), Ok(()));
        let with_extra = format!("{query}&extra=1");
        let extra = SignedRequest {
            query: &with_extra,
            ..request
        };
        assert_eq!(
            verify_request(key, secret, extra, 1000, 600),
            Err(ApiAuthError::Signature)
        );
        let twice = format!("{query}&info=x");
        let twice = SignedRequest {
            query: &twice,
            ..request
        };
        assert_eq!(
            verify_request(key, secret, twice, 1000, 600),
            Err(ApiAuthError::Duplicate)
        );
        for missing in [
            "auth_key",
            "auth_timestamp",
            "auth_version",
            "auth_signature",
        ] {
            let q: Vec<&str> = query
                .split('&')
                .filter(|p| !p.starts_with(&format!("{missing}=")))
                .collect();
            let q = q.join("&");
            let r = SignedRequest {
                query: &q,
                ..request
            };
            assert_eq!(
                verify_request(key, secret, r, 1000, 600),
                Err(ApiAuthError::Missing(missing))
            );
        }
        let body_without_md5 = SignedRequest {
            body: b"{}",
            ..request
        };
        assert_eq!(
            verify_request(key, secret, body_without_md5, 1000, 600),
            Err(ApiAuthError::Missing("body_md5"))
        );
        let v2 = query.replace("auth_version=1.0", "auth_version=2.0");
        let v2 = SignedRequest {
            query: &v2,
            ..request
        };
        assert_eq!(
            verify_request(key, secret, v2, 1000, 600),
            Err(ApiAuthError::Version)
        );
        let garbage = SignedRequest {
            query: "%zz=%&&=&auth_timestamp=abc",
            ..request
        };
        assert!(verify_request(key, secret, garbage, 1000, 600).is_err());
    }
}
