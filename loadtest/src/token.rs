//! HS256 connection tokens (docs/protocol.md, "Identity"): a JWT with the header
//! `{"alg":"HS256","typ":"JWT"}`, the claims as given, both base64url without padding, and an
//! HMAC-SHA256 signature over `HEADER.CLAIMS` with the shared secret.
//!
//! The HMAC comes from RustCrypto's `hmac` and `sha2` (the versions the server's jsonwebtoken
//! already uses); the JWT around it is written here, independently of the server's verifier, so
//! a token the server accepts shows the two agree.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// `{"alg":"HS256","typ":"JWT"}`, encoded.
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// The server refuses an HS256 secret shorter than this (docs/protocol.md, "Identity").
pub const SECRET_BYTES_MIN: usize = 32;

/// base64url (RFC 4648 §5) without padding.
pub fn base64url(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let v = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for k in 0..chars {
            out.push(ALPHABET[(v >> (18 - 6 * k) & 63) as usize] as char);
        }
    }
    out
}

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// An HS256 JWT carrying `claims` (the JSON text of an object).
pub fn hs256(secret: &[u8], claims: &str) -> String {
    let body = base64url(claims.as_bytes());
    let signed = format!("{HEADER}.{body}");
    let signature = base64url(&hmac_sha256(secret, signed.as_bytes()));
    format!("{signed}.{signature}")
}

/// The claims of a connection for `user`, subscribed at connect to `channels`:
/// `{"sub":USER,"channels":[...]}`, written in that order.
pub fn user_claims(user: &str, channels: &[&str]) -> String {
    let quoted = |s: &str| serde_json::to_string(s).expect("a str always serialises");
    let list: Vec<String> = channels.iter().map(|c| quoted(c)).collect();
    format!(
        "{{\"sub\":{},\"channels\":[{}]}}",
        quoted(user),
        list.join(",")
    )
}

/// The token of a connection for `user`, subscribed at connect to `channels`.
pub fn user_token(secret: &[u8], user: &str, channels: &[&str]) -> String {
    hs256(secret, &user_claims(user, channels))
}

/// `path` (a path with an optional query) with `token=TOKEN` in its query, in place of any
/// `token=` it had. A JWT is base64url and dots: nothing in it needs escaping in a query.
pub fn with_token(path: &str, token: &str) -> String {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("token="))
        .collect();
    let param = format!("token={token}");
    params.push(&param);
    format!("{path}?{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // Test case 1: 20 bytes of 0x0b, "Hi There".
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // Test case 2: a key shorter than the block, "what do ya want for nothing?".
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block (131 bytes of 0xaa) is hashed first.
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn base64url_without_padding() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url(br#"{"alg":"HS256","typ":"JWT"}"#), HEADER);
    }

    #[test]
    fn signs_the_well_known_hs256_example() {
        // The HS256 example token of RFC 7519's tooling (jwt.io): these claims, in this order,
        // under the secret "your-256-bit-secret".
        let claims = br#"{"sub":"1234567890","name":"John Doe","iat":1516239022}"#;
        let signed = format!("{HEADER}.{}", base64url(claims));
        assert_eq!(
            signed,
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
             eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
        );
        assert_eq!(
            base64url(&hmac_sha256(b"your-256-bit-secret", signed.as_bytes())),
            "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
        );
    }

    #[test]
    fn tokens_go_into_the_query() {
        assert_eq!(with_token("/ws", "a.b.c"), "/ws?token=a.b.c");
        assert_eq!(
            with_token("/ws?format=raw&token=old", "a.b.c"),
            "/ws?format=raw&token=a.b.c"
        );
    }

    #[test]
    fn user_tokens_carry_sub_and_channels() {
        let t = user_token(b"0123456789abcdef0123456789abcdef", "u7", &["room:bench"]);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], HEADER);
        assert_eq!(
            parts[1],
            base64url(br#"{"sub":"u7","channels":["room:bench"]}"#)
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        assert_eq!(
            parts[2],
            base64url(&hmac_sha256(
                b"0123456789abcdef0123456789abcdef",
                signed.as_bytes()
            ))
        );
        // URL-safe as it is: no '+', '/' or '='.
        assert!(!t.contains(['+', '/', '=']));
        let claims: serde_json::Value =
            serde_json::from_str(&user_claims("a\"b", &["x", "y:z"])).expect("valid JSON");
        assert_eq!(claims["sub"], "a\"b");
        assert_eq!(claims["channels"][1], "y:z");
    }
}
