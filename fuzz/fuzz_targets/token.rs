//! Fuzzes `auth::Verifier::verify` (HS256). Input: any bytes, read as UTF-8 lossily, as the
//! token; the time is fixed, so the committed seeds keep their meaning (`valid` expires in 2096).
//!
//! Checks beyond "no panic": a verified token's claims respect the limits and its `exp` is after
//! the fixed time; every refusal has one of the two wire codes; `TooLong` comes back exactly when
//! the input is over the limit. Then the input's first two segments are signed with the right
//! secret and verified again, so that the claims parser sees every kind of text a fuzzer makes
//! (an unsigned input never gets past the signature check): that token may be refused for
//! anything but its signature.
#![no_main]

use jsonwebtoken::EncodingKey;
use libfuzzer_sys::fuzz_target;
use ringcast::auth::{Claims, TokenError, TokenLimits, Verifier};

/// The seeds are signed with this secret (33 bytes: over the 32-byte minimum).
const SECRET: &[u8] = b"ringcast-fuzz-secret-0123456789ab";
/// 2023-11-14T22:13:20Z.
const NOW_S: u64 = 1_700_000_000;

fn check(result: &Result<Claims, TokenError>, token: &str, limits: &TokenLimits) {
    match result {
        Ok(claims) => {
            assert!(token.len() <= limits.token_bytes_max);
            assert!(claims.channels.len() <= limits.channels_max);
            assert!(
                claims
                    .info
                    .as_ref()
                    .is_none_or(|i| i.len() <= limits.info_bytes_max)
            );
            assert!(
                claims
                    .sub
                    .as_ref()
                    .is_none_or(|s| !s.is_empty() && s.len() <= 128)
            );
            assert!(claims.exp.is_none_or(|exp| exp > NOW_S));
        }
        Err(e) => {
            assert!(matches!(e.code(), "token_invalid" | "token_expired"));
            assert_eq!(
                *e == TokenError::TooLong,
                token.len() > limits.token_bytes_max
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let limits = TokenLimits::default();
    // Invariant: a 33-byte secret is a valid HS256 key.
    let verifier = Verifier::hs256(SECRET).expect("fixed secret");
    check(&verifier.verify(&token, NOW_S, &limits), &token, &limits);

    let mut segments = token.splitn(3, '.');
    let (Some(header), Some(payload)) = (segments.next(), segments.next()) else {
        return;
    };
    let message = format!("{header}.{payload}");
    // Invariant: a non-empty secret is a valid HMAC key, and HMAC signs any bytes.
    let key = EncodingKey::from_secret(SECRET).expect("fixed secret");
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .expect("HMAC signs anything");
    let signed = format!("{message}.{signature}");
    let result = verifier.verify(&signed, NOW_S, &limits);
    check(&result, &signed, &limits);
    assert_ne!(result, Err(TokenError::BadSignature), "{signed}");
});
