//! Connection tokens as JWTs (RFC 7519) in the JWS compact serialization (RFC 7515 §7.1):
//! `base64url(header) . base64url(claims) . base64url(signature)`.
//!
//! Owns: one verification key bound to one algorithm ([`Verifier`]), the order of the checks,
//! and the mapping of every refusal to one [`TokenError`] with a stable wire code.
//!
//! Must not: read the clock (`now_s` is an argument), read key files (the caller hands over the
//! bytes), or trust anything in the token before its signature has been checked.
//!
//! The signature check is `jsonwebtoken`'s, with its RustCrypto backend; everything about time
//! and about our own claims is done here, because the crate's time validation reads the system
//! clock and its claim types do not carry our limits.
//!
//! Order of the checks, cheapest and least trusting first:
//! 1. length, before a single byte is parsed (`token_bytes_max`);
//! 2. shape: exactly three segments;
//! 3. the header's `alg` must be exactly the verifier's algorithm — `none`, another family or
//!    another hash are all refused here, so no key is ever used with an algorithm it was not
//!    configured for (the HS256-with-an-RSA-public-key confusion, among others);
//! 4. the signature (the crate, which also refuses `crit` extensions it does not know, RFC 7515
//!    §4.1.11, and checks the algorithm against the key's family a second time);
//! 5. the claims: `exp`/`nbf` against `now_s` first (so an expired token is reported as expired
//!    and the client knows to fetch a new one), then `sub`, `channels` and `info`.
//!
//! Invariants: no input panics (a property test below and the `token` fuzz target); a
//! [`Verifier`] that exists holds a key the backend accepted for its algorithm (checked when it
//! was built, not at the first connection).

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Shortest HMAC secret accepted: RFC 7518 §3.2, "a key of the same size as the hash output
/// (for instance, 256 bits for "HS256") or larger MUST be used".
pub const HS256_SECRET_BYTES_MIN: usize = 32;

/// Smallest RSA modulus accepted: RFC 7518 §3.3, "a key of size 2048 bits or larger MUST be
/// used with these algorithms".
pub const RSA_MODULUS_BITS_MIN: usize = 2048;

/// Longest `sub` (user id), in bytes.
pub const SUB_BYTES_MAX: usize = 128;

/// The signature algorithms a [`Verifier`] can be configured for (RFC 7518 §3.1 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC with SHA-256, a shared secret.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, an RSA public key.
    Rs256,
    /// ECDSA on P-256 with SHA-256, a P-256 public key.
    Es256,
}

impl Algorithm {
    /// The `alg` header value, as RFC 7518 §3.1 spells it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
        }
    }

    fn backend(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::Hs256 => jsonwebtoken::Algorithm::HS256,
            Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        }
    }
}

/// Signs `claims` (a JSON object's text) as an HS256 token with `secret` — for `ringcast token`
/// (tokens for development and tests) and the tests; a production issuer is the application's
/// own login code.
pub fn sign_hs256(claims: &str, secret: &[u8]) -> Result<String, KeyError> {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.as_bytes()));
    let key = jsonwebtoken::EncodingKey::from_secret(secret)
        .map_err(|e| KeyError(format!("cannot sign with this secret: {e}")))?;
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .map_err(|e| KeyError(format!("cannot sign with this secret: {e}")))?;
    Ok(format!("{message}.{signature}"))
}

/// Bounds on one token, checked by [`Verifier::verify`].
///
/// Worst-case memory of one verification: a few copies of the token (the base64-decoded header
/// and claims, the parsed claims), so about `4 * token_bytes_max`, freed before `verify`
/// returns except for the [`Claims`] themselves (at most `token_bytes_max` of text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLimits {
    /// Longest token, in bytes, checked before any parsing; above it: [`TokenError::TooLong`].
    /// Default 4096: a token travels in a URL or a first message, and 4 KiB is already larger
    /// than what proxies commonly let through in a request line.
    pub token_bytes_max: usize,
    /// Longest JSON text of the `info` claim, in bytes; above it: `BadClaims("info")`.
    /// Default 1024: `info` is copied into presence data for every member of a channel.
    pub info_bytes_max: usize,
    /// Most entries in the `channels` claim; above it: `BadClaims("channels")`. Default 64.
    pub channels_max: usize,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds. Default 0: the caller's clock and the
    /// issuer's are assumed to agree unless the operator says otherwise.
    pub leeway_s: u64,
}

impl Default for TokenLimits {
    fn default() -> Self {
        TokenLimits {
            token_bytes_max: 4096,
            info_bytes_max: 1024,
            channels_max: 64,
            leeway_s: 0,
        }
    }
}

/// The claims of a verified token that ringcast uses; other claims are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claims {
    /// The user id: when present, 1..=128 bytes with no control characters.
    pub sub: Option<String>,
    /// Expiry, in seconds since the UNIX epoch (a fractional value is rounded down).
    pub exp: Option<u64>,
    /// Channels to subscribe at connect, at most `channels_max`; the caller validates each name
    /// against its channel rules.
    pub channels: Vec<String>,
    /// The `info` claim's JSON text, verbatim (any JSON value), at most `info_bytes_max` bytes.
    pub info: Option<String>,
}

/// Why a token was refused. Each maps to one wire code ([`TokenError::code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Longer than `token_bytes_max`; refused before parsing.
    TooLong,
    /// Not three base64url segments of a JSON header and a JSON object.
    Malformed,
    /// The signature does not verify with the configured key.
    BadSignature,
    /// The header's `alg` is not the one the key is configured for (`none` included).
    WrongAlgorithm,
    /// `exp` is past (`now_s >= exp + leeway_s`).
    Expired,
    /// `nbf` is in the future (`now_s + leeway_s < nbf`).
    NotYetValid,
    /// A claim has the wrong type or breaks a limit; the claim's name.
    BadClaims(&'static str),
}

impl TokenError {
    /// The stable wire code: `token_expired` tells the client to fetch a new token and retry;
    /// everything else is `token_invalid` (retrying the same token cannot help).
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Expired => "token_expired",
            _ => "token_invalid",
        }
    }

    /// A sentence for the client or the log; never contains token bytes.
    pub fn message(&self) -> String {
        match self {
            TokenError::TooLong => "token is longer than the server accepts".to_string(),
            TokenError::Malformed => {
                "token is not a JWT: expected three base64url segments, a JSON header and a JSON \
                 object of claims"
                    .to_string()
            }
            TokenError::BadSignature => "token signature does not verify".to_string(),
            TokenError::WrongAlgorithm => {
                "token is signed with an algorithm this server does not accept".to_string()
            }
            TokenError::Expired => "token has expired".to_string(),
            TokenError::NotYetValid => "token is not valid yet (nbf)".to_string(),
            TokenError::BadClaims(claim) => {
                format!("token claim `{claim}` is invalid: {}", claim_rule(claim))
            }
        }
    }
}

/// What a claim must look like, for [`TokenError::message`].
fn claim_rule(claim: &str) -> &'static str {
    match claim {
        "sub" => "it must be a string of 1 to 128 bytes without control characters",
        "exp" | "nbf" => "it must be a non-negative number of seconds since the UNIX epoch",
        "channels" => "it must be an array of strings, no longer than the server's limit",
        "info" => "its JSON text is longer than the server's limit",
        "aud" => "the token's audience is not this server",
        _ => "it has the wrong type",
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for TokenError {}

/// A key that cannot be used, with the cause and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

/// Verifies tokens against one key, for one algorithm.
#[derive(Clone)]
pub struct Verifier {
    algorithm: Algorithm,
    key: DecodingKey,
    /// Built once: only the signature and `aud` checks are left to the crate.
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs, even a public one: it says nothing useful there.
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .field("audience", &self.validation.aud)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// An HS256 verifier with a shared secret of at least 32 bytes.
    pub fn hs256(secret: &[u8]) -> Result<Verifier, KeyError> {
        if secret.len() < HS256_SECRET_BYTES_MIN {
            return Err(KeyError(format!(
                "the HS256 secret is {} bytes; use at least {HS256_SECRET_BYTES_MIN} random \
                 bytes (RFC 7518 §3.2), e.g. `openssl rand -base64 32`",
                secret.len()
            )));
        }
        let key = DecodingKey::from_secret(secret)
            .map_err(|e| KeyError(format!("the HS256 secret cannot be used: {e}")))?;
        Verifier::new(Algorithm::Hs256, key)
    }

    /// An RS256 verifier from an RSA public key in PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`), with a
    /// modulus of at least 2048 bits.
    pub fn rs256_pem(public_key_pem: &[u8]) -> Result<Verifier, KeyError> {
        let key = DecodingKey::from_rsa_pem(public_key_pem).map_err(|e| {
            KeyError(format!(
                "the RS256 key is not an RSA public key in PEM ({e}); export it with \
                 `openssl pkey -in private.pem -pubout`"
            ))
        })?;
        let verifier = Verifier::new(Algorithm::Rs256, key)?;
        let bits = verifier.rsa_modulus_bits()?;
        if bits < RSA_MODULUS_BITS_MIN {
            return Err(KeyError(format!(
                "the RS256 key has {bits} bits; use at least {RSA_MODULUS_BITS_MIN} \
                 (RFC 7518 §3.3)"
            )));
        }
        Ok(verifier)
    }

    /// An ES256 verifier from a P-256 public key in PEM (`PUBLIC KEY`).
    pub fn es256_pem(public_key_pem: &[u8]) -> Result<Verifier, KeyError> {
        let key = DecodingKey::from_ec_pem(public_key_pem).map_err(|e| {
            KeyError(format!(
                "the ES256 key is not an EC public key in PEM ({e}); export it with \
                 `openssl pkey -in private.pem -pubout`"
            ))
        })?;
        Verifier::new(Algorithm::Es256, key)
    }

    /// Also require tokens to name `audience` in their `aud` claim (RFC 7519 §4.1.3). Without
    /// this, a token that carries an `aud` claim at all is refused: it was issued for someone
    /// named, and we cannot tell that it is us.
    pub fn with_audience(mut self, audience: &str) -> Verifier {
        self.validation.set_audience(&[audience]);
        self.validation.set_required_spec_claims(&["aud"]);
        self
    }

    fn new(algorithm: Algorithm, key: DecodingKey) -> Result<Verifier, KeyError> {
        // The crate picks its crypto backend from its features, process-wide; if a build ever
        // enables two, it would panic at the first token. Asking here turns that into a
        // start-up error, and afterwards the choice is fixed, so `decode` cannot panic.
        let provider = CryptoProvider::try_get_default().ok_or_else(|| {
            KeyError(
                "no JWT crypto backend: jsonwebtoken needs exactly one of its `rust_crypto` \
                 and `aws_lc_rs` features (this is a build problem)"
                    .to_string(),
            )
        })?;
        // Build the backend's verifier once, now, so that a key the backend refuses (a P-384
        // key for ES256, a private key where the public one belongs) fails at start-up.
        (provider.verifier_factory)(&algorithm.backend(), &key).map_err(|e| {
            KeyError(format!(
                "the key cannot verify {} tokens: {e}",
                algorithm.name()
            ))
        })?;
        let mut validation = Validation::new(algorithm.backend());
        // Time is ours: the crate would compare `exp`/`nbf` with the system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        // Kept on: a token carrying `aud` is refused unless `with_audience` names us.
        validation.validate_aud = true;
        Ok(Verifier {
            algorithm,
            key,
            validation,
        })
    }

    fn rsa_modulus_bits(&self) -> Result<usize, KeyError> {
        let provider = CryptoProvider::try_get_default()
            .ok_or_else(|| KeyError("no JWT crypto backend".to_string()))?;
        let der = self
            .key
            .try_get_as_bytes()
            .map_err(|e| KeyError(format!("the RS256 key cannot be read: {e}")))?;
        let (n, _e) = (provider.key_utils.rsa_pub_components_from_public_key)(der)
            .map_err(|e| KeyError(format!("the RS256 key cannot be read: {e}")))?;
        let Some(first) = n.iter().position(|&b| b != 0) else {
            return Ok(0);
        };
        Ok((n.len() - first) * 8 - n[first].leading_zeros() as usize)
    }

    /// The algorithm this verifier accepts, and the only one.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Verifies `token` at time `now_s` (seconds since the UNIX epoch) and returns its claims.
    pub fn verify(
        &self,
        token: &str,
        now_s: u64,
        limits: &TokenLimits,
    ) -> Result<Claims, TokenError> {
        if token.len() > limits.token_bytes_max {
            return Err(TokenError::TooLong);
        }
        let mut segments = token.split('.');
        let (Some(header), Some(_), Some(_), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        self.check_algorithm(header)?;
        // The crate also reads `sub`, `iss`, `aud`, `exp` and `nbf` for its own validation: a
        // scalar of the wrong type there it sets aside (and we report it by name below), but an
        // array or an object where it expects a string or a number stops its JSON parse, so such
        // a token comes back as `Malformed` rather than `BadClaims`. Refused either way.
        let payload = jsonwebtoken::decode::<Box<RawValue>>(token, &self.key, &self.validation)
            .map_err(|e| backend_error(e.kind()))?
            .claims;
        claims(payload.get(), now_s, limits)
    }

    /// Step 3: the header's `alg`, read by us before the crate sees the token, so that every
    /// other algorithm is one clear refusal whatever the crate's enum does with the name.
    fn check_algorithm(&self, header_b64: &str) -> Result<(), TokenError> {
        #[derive(Deserialize)]
        struct Header<'a> {
            #[serde(borrow)]
            alg: Cow<'a, str>,
        }
        let json = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| TokenError::Malformed)?;
        // A header that is not an object would otherwise pass as a one-element array.
        if json.trim_ascii_start().first() != Some(&b'{') {
            return Err(TokenError::Malformed);
        }
        let header: Header<'_> =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if header.alg != self.algorithm.name() {
            return Err(TokenError::WrongAlgorithm);
        }
        Ok(())
    }
}

/// The crate's refusals in our terms. Time errors cannot come back (its time checks are off);
/// they are mapped anyway so that a change in the crate still gives the right answer.
fn backend_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => TokenError::WrongAlgorithm,
        ErrorKind::InvalidAudience => TokenError::BadClaims("aud"),
        ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => {
            TokenError::BadClaims(match c.as_str() {
                "aud" => "aud",
                "sub" => "sub",
                "exp" => "exp",
                "nbf" => "nbf",
                "iss" => "iss",
                _ => "claims",
            })
        }
        ErrorKind::InvalidIssuer => TokenError::BadClaims("iss"),
        ErrorKind::InvalidSubject => TokenError::BadClaims("sub"),
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        // A signature of the wrong size for the key, or a key the backend cannot use for this
        // one token: either way, the signature did not verify.
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => TokenError::BadSignature,
        // Base64, JSON, UTF-8, the shape (`InvalidToken`: segments, `crit`, `b64`), and
        // whatever a later version of the crate adds.
        _ => TokenError::Malformed,
    }
}

/// Step 5: the claims we use, from the verified payload's JSON text.
fn claims(json: &str, now_s: u64, limits: &TokenLimits) -> Result<Claims, TokenError> {
    // Each claim is first taken as raw JSON so that a claim of the wrong type is reported by
    // name (`BadClaims("sub")`) rather than as a malformed token. Duplicate names among these
    // are refused by serde, as RFC 7519 §4 allows.
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(borrow, default)]
        sub: Option<&'a RawValue>,
        #[serde(borrow, default)]
        exp: Option<&'a RawValue>,
        #[serde(borrow, default)]
        nbf: Option<&'a RawValue>,
        #[serde(borrow, default)]
        channels: Option<&'a RawValue>,
        #[serde(borrow, default)]
        info: Option<&'a RawValue>,
    }
    // RFC 7519 §7.2 step 10: the claims set is a JSON object (serde would take an array too).
    if !json.trim_start().starts_with('{') {
        return Err(TokenError::Malformed);
    }
    let raw: Raw<'_> = serde_json::from_str(json).map_err(|_| TokenError::Malformed)?;

    let exp = raw
        .exp
        .map(|v| numeric_date(v, f64::floor))
        .transpose()
        .map_err(|()| TokenError::BadClaims("exp"))?;
    let nbf = raw
        .nbf
        .map(|v| numeric_date(v, f64::ceil))
        .transpose()
        .map_err(|()| TokenError::BadClaims("nbf"))?;
    // RFC 7519 §4.1.4: the current time MUST be before `exp`.
    if exp.is_some_and(|exp| now_s >= exp.saturating_add(limits.leeway_s)) {
        return Err(TokenError::Expired);
    }
    // RFC 7519 §4.1.5: the current time MUST be after or equal to `nbf`.
    if nbf.is_some_and(|nbf| now_s.saturating_add(limits.leeway_s) < nbf) {
        return Err(TokenError::NotYetValid);
    }

    let sub = match raw.sub {
        None => None,
        Some(v) => {
            let sub: String =
                serde_json::from_str(v.get()).map_err(|_| TokenError::BadClaims("sub"))?;
            if sub.is_empty() || sub.len() > SUB_BYTES_MAX || sub.chars().any(char::is_control) {
                return Err(TokenError::BadClaims("sub"));
            }
            Some(sub)
        }
    };
    // The token's length bounds the array before it is parsed: at most one entry per 3 bytes.
    let channels: Vec<String> = match raw.channels {
        None => Vec::new(),
        Some(v) => serde_json::from_str(v.get()).map_err(|_| TokenError::BadClaims("channels"))?,
    };
    if channels.len() > limits.channels_max {
        return Err(TokenError::BadClaims("channels"));
    }
    let info = match raw.info {
        None => None,
        Some(v) if v.get().len() > limits.info_bytes_max => {
            return Err(TokenError::BadClaims("info"));
        }
        Some(v) => Some(v.get().to_string()),
    };
    Ok(Claims {
        sub,
        exp,
        channels,
        info,
    })
}

/// A NumericDate (RFC 7519 §2): a non-negative JSON number of seconds, maybe fractional, which
/// `round` turns into whole seconds in the safe direction (down for `exp`, up for `nbf`).
fn numeric_date(raw: &RawValue, round: fn(f64) -> f64) -> Result<u64, ()> {
    let number: serde_json::Number = serde_json::from_str(raw.get()).map_err(|_| ())?;
    if let Some(n) = number.as_u64() {
        return Ok(n);
    }
    match number.as_f64().map(round) {
        // 2^64 as f64 is exact; everything below it converts without saturating.
        Some(f) if f.is_finite() && (0.0..18_446_744_073_709_551_616.0).contains(&f) => {
            Ok(f as u64)
        }
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const RS_PRIVATE: &[u8] = include_bytes!("testdata/rs256-private.pem");
    const RS_PUBLIC: &[u8] = include_bytes!("testdata/rs256-public.pem");
    const ES_PRIVATE: &[u8] = include_bytes!("testdata/es256-private.pem");
    const ES_PUBLIC: &[u8] = include_bytes!("testdata/es256-public.pem");
    const P384_PUBLIC: &[u8] = include_bytes!("testdata/p384-public.pem");
    const RS1024_PUBLIC: &[u8] = include_bytes!("testdata/rs1024-public.pem");
    /// 2023-11-14: every test passes its own time; this one is nowhere near today's clock.
    const NOW: u64 = 1_700_000_000;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with exactly this header and payload text, HMAC-SHA256-signed with `secret`.
    fn hs256_raw(header: &str, payload: &str, secret: &[u8]) -> String {
        let message = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let key = EncodingKey::from_secret(secret).unwrap();
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
                .unwrap();
        format!("{message}.{signature}")
    }

    fn hs256(claims: &Value) -> String {
        hs256_raw(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &claims.to_string(),
            SECRET,
        )
    }

    fn verify_hs(token: &str) -> Result<Claims, TokenError> {
        Verifier::hs256(SECRET)
            .unwrap()
            .verify(token, NOW, &TokenLimits::default())
    }

    /// Applies `edit` to the decoded signature and re-encodes it, so the result is still
    /// canonical base64url and only the signature check can refuse it.
    fn edit_signature(token: &str, edit: fn(&mut Vec<u8>)) -> String {
        let (message, signature) = token.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
        edit(&mut bytes);
        format!("{message}.{}", b64(&bytes))
    }

    /// Flips one bit in the middle of the signature.
    fn tamper_signature(token: &str) -> String {
        edit_signature(token, |bytes| {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
        })
    }

    /// Drops the signature's last 3 bytes.
    fn truncate_signature(token: &str) -> String {
        edit_signature(token, |bytes| bytes.truncate(bytes.len() - 3))
    }

    #[test]
    fn hs256_good_token() {
        let token = hs256(&json!({
            "sub": "user-42",
            "exp": NOW + 60,
            "channels": ["news", "chat:1"],
            "info": {"name": "Ada", "tags": [1, 2]},
            "iat": NOW,
            "whatever": true,
        }));
        let claims = verify_hs(&token).unwrap();
        assert_eq!(claims.sub.as_deref(), Some("user-42"));
        assert_eq!(claims.exp, Some(NOW + 60));
        assert_eq!(claims.channels, ["news", "chat:1"]);
        assert_eq!(
            claims.info.as_deref(),
            Some(r#"{"name":"Ada","tags":[1,2]}"#)
        );
    }

    #[test]
    fn empty_claims_are_fine() {
        assert_eq!(verify_hs(&hs256(&json!({}))).unwrap(), Claims::default());
        // `null` is the same as absent.
        let token = hs256(&json!({"sub": null, "channels": null, "info": null}));
        assert_eq!(verify_hs(&token).unwrap(), Claims::default());
    }

    #[test]
    fn info_is_kept_verbatim() {
        let token = hs256_raw(
            r#"{"alg":"HS256"}"#,
            r#"{"info": [1, "two", {"3": null}] }"#,
            SECRET,
        );
        let claims = verify_hs(&token).unwrap();
        assert_eq!(claims.info.as_deref(), Some(r#"[1, "two", {"3": null}]"#));
        let token = hs256(&json!({"info": "just text"}));
        assert_eq!(
            verify_hs(&token).unwrap().info.as_deref(),
            Some("\"just text\"")
        );
    }

    #[test]
    fn bad_signature_is_refused() {
        let token = hs256(&json!({"sub": "a"}));
        assert_eq!(
            verify_hs(&tamper_signature(&token)),
            Err(TokenError::BadSignature)
        );
        let other = hs256_raw(r#"{"alg":"HS256"}"#, r#"{"sub":"a"}"#, &[7u8; 32]);
        assert_eq!(verify_hs(&other), Err(TokenError::BadSignature));
        // A payload swapped under a valid signature.
        let (header, rest) = token.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let forged = format!("{header}.{}.{signature}", b64(br#"{"sub":"admin"}"#));
        assert_eq!(verify_hs(&forged), Err(TokenError::BadSignature));
        // No signature at all.
        let (message, _) = token.rsplit_once('.').unwrap();
        assert_eq!(
            verify_hs(&format!("{message}.")),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let payload = b64(br#"{"sub":"admin"}"#);
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"NONE","typ":"JWT"}"#,
            r#"{"alg":""}"#,
        ] {
            let token = format!("{}.{payload}.", b64(header.as_bytes()));
            assert_eq!(
                verify_hs(&token),
                Err(TokenError::WrongAlgorithm),
                "{header}"
            );
        }
        // Without `alg`, or with a non-string one, the header is malformed.
        for header in [r#"{"typ":"JWT"}"#, r#"{"alg":null}"#, r#"{"alg":256}"#] {
            let token = format!("{}.{payload}.", b64(header.as_bytes()));
            assert_eq!(verify_hs(&token), Err(TokenError::Malformed), "{header}");
        }
    }

    #[test]
    fn other_algorithms_are_refused_even_when_validly_signed() {
        // HS512 with the right secret: a valid signature, but not the configured algorithm.
        let key = EncodingKey::from_secret(SECRET).unwrap();
        let token = encode(
            &Header::new(jsonwebtoken::Algorithm::HS512),
            &json!({"sub": "a"}),
            &key,
        )
        .unwrap();
        assert_eq!(verify_hs(&token), Err(TokenError::WrongAlgorithm));
        // An escaped "HS256" is the same JSON string and is accepted.
        let token = hs256_raw(r#"{"alg":"HS\u0032\u0035\u0036"}"#, "{}", SECRET);
        assert_eq!(verify_hs(&token), Ok(Claims::default()));
        // Two `alg` members: refused rather than picking one.
        let token = hs256_raw(r#"{"alg":"HS256","alg":"none"}"#, "{}", SECRET);
        assert_eq!(verify_hs(&token), Err(TokenError::Malformed));
    }

    #[test]
    fn hs256_token_made_with_the_rsa_public_key_is_refused_by_rs256() {
        // The classic confusion: sign HS256 using the RSA public key's PEM text as the secret.
        let token = hs256_raw(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"sub":"admin"}"#,
            RS_PUBLIC,
        );
        let rs = Verifier::rs256_pem(RS_PUBLIC).unwrap();
        assert_eq!(
            rs.verify(&token, NOW, &TokenLimits::default()),
            Err(TokenError::WrongAlgorithm)
        );
        // Same for ES256, with its key.
        let token = hs256_raw(r#"{"alg":"HS256"}"#, r#"{"sub":"admin"}"#, ES_PUBLIC);
        let es = Verifier::es256_pem(ES_PUBLIC).unwrap();
        assert_eq!(
            es.verify(&token, NOW, &TokenLimits::default()),
            Err(TokenError::WrongAlgorithm)
        );
    }

    #[test]
    fn critical_header_extensions_are_refused() {
        // RFC 7515 §4.1.11: a `crit` extension we do not understand makes the token invalid.
        let token = hs256_raw(
            r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
            r#"{"sub":"a"}"#,
            SECRET,
        );
        assert_eq!(verify_hs(&token), Err(TokenError::Malformed));
    }

    #[test]
    fn expiry_against_the_given_time_with_leeway() {
        let token = hs256(&json!({"exp": NOW}));
        let v = Verifier::hs256(SECRET).unwrap();
        let mut limits = TokenLimits::default();
        assert_eq!(v.verify(&token, NOW - 1, &limits).unwrap().exp, Some(NOW));
        assert_eq!(v.verify(&token, NOW, &limits), Err(TokenError::Expired));
        assert_eq!(
            v.verify(&token, NOW + 1000, &limits),
            Err(TokenError::Expired)
        );
        limits.leeway_s = 30;
        assert!(v.verify(&token, NOW + 29, &limits).is_ok());
        assert_eq!(
            v.verify(&token, NOW + 30, &limits),
            Err(TokenError::Expired)
        );
        assert_eq!(TokenError::Expired.code(), "token_expired");
        // A huge leeway or `exp` does not overflow.
        limits.leeway_s = u64::MAX;
        assert!(v.verify(&token, u64::MAX - 1, &limits).is_ok());
        let far = hs256(&json!({"exp": u64::MAX}));
        assert!(
            v.verify(&far, u64::MAX - 1, &TokenLimits::default())
                .is_ok()
        );
    }

    #[test]
    fn the_system_clock_is_never_consulted() {
        // Expired long ago by any real clock, but not at the time we pass.
        let token = hs256(&json!({"exp": 1_000_000}));
        let v = Verifier::hs256(SECRET).unwrap();
        assert!(v.verify(&token, 999_999, &TokenLimits::default()).is_ok());
        // Not valid for another century by any real clock, but valid at the time we pass.
        let token = hs256(&json!({"nbf": 5_000_000_000u64}));
        assert!(
            v.verify(&token, 5_000_000_000, &TokenLimits::default())
                .is_ok()
        );
    }

    #[test]
    fn not_before_with_leeway() {
        let token = hs256(&json!({"nbf": NOW + 10, "exp": NOW + 100}));
        let v = Verifier::hs256(SECRET).unwrap();
        let mut limits = TokenLimits::default();
        assert_eq!(v.verify(&token, NOW, &limits), Err(TokenError::NotYetValid));
        assert_eq!(
            v.verify(&token, NOW + 9, &limits),
            Err(TokenError::NotYetValid)
        );
        assert!(v.verify(&token, NOW + 10, &limits).is_ok());
        limits.leeway_s = 10;
        assert!(v.verify(&token, NOW, &limits).is_ok());
        assert_eq!(TokenError::NotYetValid.code(), "token_invalid");
    }

    #[test]
    fn numeric_dates_of_every_shape() {
        let v = Verifier::hs256(SECRET).unwrap();
        let limits = TokenLimits::default();
        // Fractional: `exp` rounds down, `nbf` up — each toward refusing.
        let token = hs256_raw(r#"{"alg":"HS256"}"#, r#"{"exp":1700000000.9}"#, SECRET);
        assert_eq!(v.verify(&token, NOW, &limits), Err(TokenError::Expired));
        let token = hs256_raw(r#"{"alg":"HS256"}"#, r#"{"nbf":1700000000.1}"#, SECRET);
        assert_eq!(v.verify(&token, NOW, &limits), Err(TokenError::NotYetValid));
        let token = hs256_raw(r#"{"alg":"HS256"}"#, r#"{"exp":1.8e9}"#, SECRET);
        assert_eq!(
            v.verify(&token, NOW, &limits).unwrap().exp,
            Some(1_800_000_000)
        );
        for (payload, claim) in [
            (r#"{"exp":"1800000000"}"#, "exp"),
            (r#"{"exp":-1}"#, "exp"),
            (r#"{"exp":1e300}"#, "exp"),
            (r#"{"exp":true}"#, "exp"),
            (r#"{"nbf":"soon"}"#, "nbf"),
        ] {
            let token = hs256_raw(r#"{"alg":"HS256"}"#, payload, SECRET);
            assert_eq!(
                v.verify(&token, NOW, &limits),
                Err(TokenError::BadClaims(claim)),
                "{payload}"
            );
        }
        // An array or object where the crate expects a number stops its own claims parse (see
        // `Verifier::verify`): refused all the same, as malformed.
        for payload in [r#"{"nbf":[1]}"#, r#"{"exp":{"at":1}}"#] {
            let token = hs256_raw(r#"{"alg":"HS256"}"#, payload, SECRET);
            assert_eq!(
                v.verify(&token, NOW, &limits),
                Err(TokenError::Malformed),
                "{payload}"
            );
        }
    }

    #[test]
    fn oversized_token_is_refused_before_parsing() {
        let limits = TokenLimits::default();
        // Not even a JWT: only the length is looked at.
        let junk = "x".repeat(limits.token_bytes_max + 1);
        let v = Verifier::hs256(SECRET).unwrap();
        assert_eq!(v.verify(&junk, NOW, &limits), Err(TokenError::TooLong));
        // A valid token one byte over a smaller limit.
        let token = hs256(&json!({"sub": "a"}));
        let tight = TokenLimits {
            token_bytes_max: token.len() - 1,
            ..limits
        };
        assert_eq!(v.verify(&token, NOW, &tight), Err(TokenError::TooLong));
        let exact = TokenLimits {
            token_bytes_max: token.len(),
            ..limits
        };
        assert!(v.verify(&token, NOW, &exact).is_ok());
    }

    #[test]
    fn malformed_tokens() {
        let good = hs256(&json!({"sub": "a"}));
        let (header, rest) = good.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let cases = [
            String::new(),
            ".".to_string(),
            "..".to_string(),
            "...".to_string(),
            "a.b".to_string(),
            format!("{good}."),
            format!("{good}.{signature}"),
            format!("{header}.{signature}"),
            format!("!!!.{rest}"),
            format!("{header}=.{rest}"),
            format!("{}.{rest}", b64(b"not json")),
            format!("{}.{rest}", b64(b"[\"HS256\"]")),
            format!("{}.{rest}", b64(&[0xff, 0xfe, b'{'])),
            format!(" {good}"),
            format!("{good}\n"),
        ];
        for token in &cases {
            assert_eq!(verify_hs(token), Err(TokenError::Malformed), "{token:?}");
        }
        // Correctly signed, but the claims are not a JSON object.
        for payload in [
            "[]",
            "\"sub\"",
            "42",
            "null",
            "{",
            r#"{"sub":"a","sub":"b"}"#,
        ] {
            let token = hs256_raw(r#"{"alg":"HS256"}"#, payload, SECRET);
            assert_eq!(verify_hs(&token), Err(TokenError::Malformed), "{payload}");
        }
    }

    #[test]
    fn sub_must_be_a_short_clean_string() {
        for sub in [json!(42), json!(-1.5), json!(true)] {
            let token = hs256(&json!({ "sub": sub }));
            assert_eq!(
                verify_hs(&token),
                Err(TokenError::BadClaims("sub")),
                "{sub}"
            );
        }
        // An array or object stops the crate's own claims parse first (see `Verifier::verify`).
        for sub in [json!(["a"]), json!({"id": "a"})] {
            let token = hs256(&json!({ "sub": sub }));
            assert_eq!(verify_hs(&token), Err(TokenError::Malformed), "{sub}");
        }
        for sub in ["", "a\u{0}b", "tab\there", "del\u{7f}", "c1\u{85}"] {
            let token = hs256(&json!({ "sub": sub }));
            assert_eq!(
                verify_hs(&token),
                Err(TokenError::BadClaims("sub")),
                "{sub:?}"
            );
        }
        let long = "u".repeat(SUB_BYTES_MAX + 1);
        assert_eq!(
            verify_hs(&hs256(&json!({ "sub": long }))),
            Err(TokenError::BadClaims("sub"))
        );
        let longest = "é".repeat(SUB_BYTES_MAX / 2);
        let claims = verify_hs(&hs256(&json!({ "sub": longest }))).unwrap();
        assert_eq!(claims.sub.unwrap().len(), SUB_BYTES_MAX);
    }

    #[test]
    fn info_too_big_is_refused() {
        let limits = TokenLimits::default();
        // `"` + text + `"` is exactly the limit: accepted; one more byte: refused.
        let fits = "i".repeat(limits.info_bytes_max - 2);
        let claims = verify_hs(&hs256(&json!({ "info": fits }))).unwrap();
        assert_eq!(claims.info.unwrap().len(), limits.info_bytes_max);
        let over = "i".repeat(limits.info_bytes_max - 1);
        assert_eq!(
            verify_hs(&hs256(&json!({ "info": over }))),
            Err(TokenError::BadClaims("info"))
        );
        let v = Verifier::hs256(SECRET).unwrap();
        let none = TokenLimits {
            info_bytes_max: 0,
            ..limits
        };
        let token = hs256(&json!({"info": 1}));
        assert_eq!(
            v.verify(&token, NOW, &none),
            Err(TokenError::BadClaims("info"))
        );
        assert!(v.verify(&hs256(&json!({})), NOW, &none).is_ok());
    }

    #[test]
    fn channels_too_many_or_not_strings_are_refused() {
        let limits = TokenLimits::default();
        let most: Vec<String> = (0..limits.channels_max).map(|i| format!("c{i}")).collect();
        let claims = verify_hs(&hs256(&json!({ "channels": most }))).unwrap();
        assert_eq!(claims.channels.len(), limits.channels_max);
        let over: Vec<String> = (0..=limits.channels_max).map(|i| format!("c{i}")).collect();
        assert_eq!(
            verify_hs(&hs256(&json!({ "channels": over }))),
            Err(TokenError::BadClaims("channels"))
        );
        for channels in [
            json!("news"),
            json!([1]),
            json!(["a", null]),
            json!({"a": 1}),
        ] {
            let token = hs256(&json!({ "channels": channels }));
            assert_eq!(
                verify_hs(&token),
                Err(TokenError::BadClaims("channels")),
                "{channels}"
            );
        }
    }

    #[test]
    fn audience() {
        let v = Verifier::hs256(SECRET).unwrap();
        let limits = TokenLimits::default();
        // Issued for someone named, and we have no name: refused.
        let token = hs256(&json!({"aud": "ringcast"}));
        assert_eq!(
            v.verify(&token, NOW, &limits),
            Err(TokenError::BadClaims("aud"))
        );
        let named = v.with_audience("ringcast");
        assert!(named.verify(&token, NOW, &limits).is_ok());
        let list = hs256(&json!({"aud": ["other", "ringcast"]}));
        assert!(named.verify(&list, NOW, &limits).is_ok());
        let other = hs256(&json!({"aud": "other"}));
        assert_eq!(
            named.verify(&other, NOW, &limits),
            Err(TokenError::BadClaims("aud"))
        );
        // With an audience configured, a token without one is refused.
        assert_eq!(
            named.verify(&hs256(&json!({})), NOW, &limits),
            Err(TokenError::BadClaims("aud"))
        );
    }

    #[test]
    fn rs256_good_and_bad() {
        let key = EncodingKey::from_rsa_pem(RS_PRIVATE).unwrap();
        let header = Header::new(jsonwebtoken::Algorithm::RS256);
        let token = encode(&header, &json!({"sub": "r", "exp": NOW + 1}), &key).unwrap();
        let v = Verifier::rs256_pem(RS_PUBLIC).unwrap();
        assert_eq!(v.algorithm(), Algorithm::Rs256);
        let limits = TokenLimits::default();
        let claims = v.verify(&token, NOW, &limits).unwrap();
        assert_eq!(claims.sub.as_deref(), Some("r"));
        assert_eq!(
            v.verify(&tamper_signature(&token), NOW, &limits),
            Err(TokenError::BadSignature)
        );
        assert_eq!(v.verify(&token, NOW + 1, &limits), Err(TokenError::Expired));
        let short = truncate_signature(&token);
        assert_eq!(
            v.verify(&short, NOW, &limits),
            Err(TokenError::BadSignature)
        );
        // PS256 uses the same key type but is another algorithm.
        let pss = encode(
            &Header::new(jsonwebtoken::Algorithm::PS256),
            &json!({}),
            &key,
        )
        .unwrap();
        assert_eq!(
            v.verify(&pss, NOW, &limits),
            Err(TokenError::WrongAlgorithm)
        );
        // Its token means nothing to an HS256 or ES256 verifier.
        assert_eq!(verify_hs(&token), Err(TokenError::WrongAlgorithm));
        let es = Verifier::es256_pem(ES_PUBLIC).unwrap();
        assert_eq!(
            es.verify(&token, NOW, &limits),
            Err(TokenError::WrongAlgorithm)
        );
    }

    #[test]
    fn es256_good_and_bad() {
        let key = EncodingKey::from_ec_pem(ES_PRIVATE).unwrap();
        let header = Header::new(jsonwebtoken::Algorithm::ES256);
        let token = encode(&header, &json!({"sub": "e", "channels": ["x"]}), &key).unwrap();
        let v = Verifier::es256_pem(ES_PUBLIC).unwrap();
        assert_eq!(v.algorithm(), Algorithm::Es256);
        let limits = TokenLimits::default();
        let claims = v.verify(&token, NOW, &limits).unwrap();
        assert_eq!(claims.sub.as_deref(), Some("e"));
        assert_eq!(claims.channels, ["x"]);
        assert_eq!(
            v.verify(&tamper_signature(&token), NOW, &limits),
            Err(TokenError::BadSignature)
        );
        // A signature of the wrong length for P-256.
        let short = truncate_signature(&token);
        assert_eq!(
            v.verify(&short, NOW, &limits),
            Err(TokenError::BadSignature)
        );
        // Other claims under the original signature.
        let (header_b64, rest) = token.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let forged = format!("{header_b64}.{}.{signature}", b64(br#"{"sub":"admin"}"#));
        assert_eq!(
            v.verify(&forged, NOW, &limits),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn keys_are_checked_when_the_verifier_is_built() {
        let short = Verifier::hs256(&SECRET[..31]).unwrap_err();
        assert!(short.0.contains("at least 32"), "{short}");
        assert!(Verifier::hs256(&[]).is_err());
        // Wrong kinds of key.
        assert!(Verifier::rs256_pem(ES_PUBLIC).is_err());
        assert!(Verifier::es256_pem(RS_PUBLIC).is_err());
        assert!(Verifier::rs256_pem(b"not a pem").is_err());
        assert!(Verifier::es256_pem(b"").is_err());
        // A P-384 key is an EC key, but not one ES256 can use.
        let p384 = Verifier::es256_pem(P384_PUBLIC).unwrap_err();
        assert!(p384.0.contains("ES256"), "{p384}");
        let weak = Verifier::rs256_pem(RS1024_PUBLIC).unwrap_err();
        assert!(weak.0.contains("1024 bits"), "{weak}");
        // Private keys where the public key belongs.
        assert!(Verifier::rs256_pem(RS_PRIVATE).is_err());
        assert!(Verifier::es256_pem(ES_PRIVATE).is_err());
        assert_eq!(
            Verifier::hs256(SECRET).unwrap().algorithm(),
            Algorithm::Hs256
        );
    }

    #[test]
    fn debug_output_has_no_key() {
        let debug = format!("{:?}", Verifier::hs256(SECRET).unwrap());
        assert!(!debug.contains("0123456789"), "{debug}");
        assert!(debug.contains("Hs256"));
    }

    #[test]
    fn codes_and_messages() {
        let all = [
            TokenError::TooLong,
            TokenError::Malformed,
            TokenError::BadSignature,
            TokenError::WrongAlgorithm,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::BadClaims("sub"),
            TokenError::BadClaims("aud"),
        ];
        for e in all {
            let expected = if e == TokenError::Expired {
                "token_expired"
            } else {
                "token_invalid"
            };
            assert_eq!(e.code(), expected);
            assert!(!e.message().is_empty());
            assert_eq!(e.to_string(), e.message());
        }
        assert!(TokenError::BadClaims("sub").message().contains("`sub`"));
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(token in ".{0,300}") {
            let _ = verify_hs(&token);
        }

        #[test]
        fn arbitrary_segments_never_panic(
            header in "[A-Za-z0-9_=+/-]{0,40}",
            payload in "[A-Za-z0-9_=+/-]{0,80}",
            signature in "[A-Za-z0-9_=+/-]{0,60}",
        ) {
            let token = format!("{header}.{payload}.{signature}");
            prop_assert!(verify_hs(&token).is_err());
        }

        #[test]
        fn signed_arbitrary_payloads_never_panic(payload in ".{0,200}", now_s in any::<u64>()) {
            // Past the signature check, so the claims parser sees every kind of text.
            let token = hs256_raw(r#"{"alg":"HS256"}"#, &payload, SECRET);
            let v = Verifier::hs256(SECRET).unwrap();
            let _ = v.verify(&token, now_s, &TokenLimits::default());
        }

        #[test]
        fn signed_json_claims_never_panic(
            sub in prop_oneof![Just(Value::Null), any::<i64>().prop_map(Value::from),
                               ".{0,140}".prop_map(Value::from)],
            exp in prop_oneof![Just(Value::Null), any::<i64>().prop_map(Value::from),
                               any::<f64>().prop_map(Value::from)],
            channels in proptest::collection::vec(".{0,8}", 0..70),
            now_s in any::<u64>(),
            leeway_s in any::<u64>(),
        ) {
            let token = hs256(&json!({"sub": sub, "exp": exp, "nbf": exp, "channels": channels}));
            let limits = TokenLimits { leeway_s, ..TokenLimits::default() };
            let v = Verifier::hs256(SECRET).unwrap();
            if let Ok(claims) = v.verify(&token, now_s, &limits) {
                prop_assert!(claims.channels.len() <= limits.channels_max);
                prop_assert!(claims.sub.is_none_or(|s| !s.is_empty() && s.len() <= SUB_BYTES_MAX));
            }
        }
    }
}
