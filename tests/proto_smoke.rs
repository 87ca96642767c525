//! A quick, seeded fuzz run inside `cargo test`: a few thousand pseudo-random and mutated inputs
//! through `handshake::parse`, `Decoder::feed` and `auth::Verifier::verify`, starting from the
//! committed fuzz seeds in fuzz/seeds/. It catches regressions on every test run; the real fuzzing (cargo fuzz, see
//! docs/testing.md) runs for minutes. Deterministic: the same inputs on every run.

use std::ops::ControlFlow;
use std::path::Path;

use ringcast::auth::{Claims, TokenError, TokenLimits, Verifier};
use ringcast::proto::decoder::{Decoder, DecoderLimits, Message, ProtocolError};
use ringcast::proto::frame::{OpCode, encode_client};
use ringcast::proto::handshake;

/// splitmix64: tiny, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// The committed seeds of one fuzz target, sorted by name so the run is reproducible.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("seed dir entry").path())
        .collect();
    paths.sort();
    let seeds: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).expect("seed file"))
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// One random edit of the kinds a fuzzer makes: flip, overwrite, insert, delete, duplicate a
/// slice, or cut the input short.
fn mutate(input: &mut Vec<u8>, rng: &mut Rng) {
    let len = input.len();
    match rng.below(6) {
        0 if len > 0 => input[rng.below(len)] ^= 1 << rng.below(8),
        1 if len > 0 => input[rng.below(len)] = rng.byte(),
        2 => input.insert(rng.below(len + 1), rng.byte()),
        3 if len > 0 => {
            input.remove(rng.below(len));
        }
        4 if len > 0 => {
            let start = rng.below(len);
            let end = start + rng.below((len - start).min(32) + 1);
            let copy = input[start..end].to_vec();
            let at = rng.below(len + 1);
            input.splice(at..at, copy);
        }
        _ => input.truncate(rng.below(len + 1)),
    }
}

/// Runs one handshake input (fuzz target layout: 2 bytes of limit, then the buffer).
fn check_handshake(data: &[u8]) {
    let Some((max, buf)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = usize::from(u16::from_be_bytes(*max));
    let whole = handshake::parse(buf, max);
    match &whole {
        Ok(Some(request)) => {
            assert!(request.head_len <= buf.len() && request.head_len <= max);
            assert_eq!(handshake::parse(&buf[..request.head_len], max), whole);
            let protocol = request.protocols.first().map(String::as_str);
            let _ = handshake::response_101(&request.accept, protocol, request.deflate_offer);
        }
        Ok(None) => assert!(buf.len() < max),
        Err(rejection) => assert!(!rejection.response().is_empty()),
    }
    let step = buf.len() / 8 + 1;
    for end in (0..buf.len()).step_by(step) {
        let prefix = handshake::parse(&buf[..end], max);
        assert!(
            prefix == Ok(None) || prefix == whole,
            "prefix {end} of {buf:?}"
        );
    }
}

const LIMITS: [DecoderLimits; 4] = [
    DecoderLimits {
        message_bytes_max: 1 << 20,
        fragments_max: 64,
        deflate: false,
    },
    DecoderLimits {
        message_bytes_max: 100,
        fragments_max: 2,
        deflate: false,
    },
    DecoderLimits {
        message_bytes_max: 0,
        fragments_max: 1,
        deflate: false,
    },
    DecoderLimits {
        message_bytes_max: 65_536,
        fragments_max: 1_000,
        deflate: false,
    },
];

type Outcome = (Vec<(u8, Vec<u8>)>, Option<ProtocolError>);

/// Decodes `stream` in reads whose sizes come from `rng` (or whole, without one).
fn decode(stream: &[u8], limits: &DecoderLimits, mut rng: Option<&mut Rng>) -> Outcome {
    let mut decoder = Decoder::default();
    let mut messages = Vec::new();
    let mut rest = stream;
    loop {
        let take = match rng.as_deref_mut() {
            Some(rng) => (1 + rng.below(97)).min(rest.len()),
            None => rest.len(),
        };
        let (piece, tail) = rest.split_at(take);
        rest = tail;
        let result = decoder.feed(&mut piece.to_vec(), limits, &mut |m| {
            let (kind, bytes) = match m {
                Message::Text(t) => (1, t.to_vec()),
                Message::Binary(b) => (2, b.to_vec()),
                Message::Ping(p) => (9, p.to_vec()),
                Message::Pong(p) => (10, p.to_vec()),
                Message::Compressed { payload, .. } => (0x40, payload.to_vec()),
                Message::Close { code, reason } => {
                    let mut bytes = code.map(u16::to_be_bytes).unwrap_or_default().to_vec();
                    bytes.extend(reason.as_bytes());
                    (8, bytes)
                }
            };
            if kind == 1 {
                assert!(std::str::from_utf8(&bytes).is_ok());
            }
            messages.push((kind, bytes));
            if kind == 8 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert!(decoder.heap_bytes() <= limits.message_bytes_max + 125);
        if decoder.is_idle() {
            assert_eq!(decoder.heap_bytes(), 0);
        }
        if let Err(error) = result {
            assert_eq!(decoder.heap_bytes(), 0);
            return (messages, Some(error));
        }
        if rest.is_empty() {
            return (messages, None);
        }
    }
}

/// Runs one decoder input (fuzz target layout: 1 configuration byte, then the stream).
fn check_decoder(data: &[u8], rng: &mut Rng) {
    let Some((&config, stream)) = data.split_first() else {
        return;
    };
    let limits = &LIMITS[usize::from(config & 3)];
    let whole = decode(stream, limits, None);
    let pieces = decode(stream, limits, Some(rng));
    assert_eq!(whole, pieces, "stream {stream:?}");
}

/// The secret and the time of the token fuzz target (fuzz/fuzz_targets/token.rs), which signed
/// its seeds.
const TOKEN_SECRET: &[u8] = b"ringcast-fuzz-secret-0123456789ab";
const TOKEN_NOW_S: u64 = 1_700_000_000;

fn check_token_result(result: &Result<Claims, TokenError>, token: &str, limits: &TokenLimits) {
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
            assert!(claims.exp.is_none_or(|exp| exp > TOKEN_NOW_S));
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

/// Runs one token input (fuzz target layout: the token's bytes), then the same header and
/// claims correctly signed, so the claims parser sees the mutations too.
fn check_token(data: &[u8]) {
    let token = String::from_utf8_lossy(data);
    let limits = TokenLimits::default();
    let verifier = Verifier::hs256(TOKEN_SECRET).unwrap();
    check_token_result(
        &verifier.verify(&token, TOKEN_NOW_S, &limits),
        &token,
        &limits,
    );
    let mut segments = token.splitn(3, '.');
    let (Some(header), Some(payload)) = (segments.next(), segments.next()) else {
        return;
    };
    let message = format!("{header}.{payload}");
    let key = jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET).unwrap();
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .unwrap();
    let signed = format!("{message}.{signature}");
    let result = verifier.verify(&signed, TOKEN_NOW_S, &limits);
    check_token_result(&result, &signed, &limits);
    assert_ne!(result, Err(TokenError::BadSignature), "{signed}");
}

#[test]
fn seeds_pass_as_they_are() {
    let mut rng = Rng(1);
    for seed in seeds("handshake") {
        check_handshake(&seed);
    }
    for seed in seeds("decoder") {
        check_decoder(&seed, &mut rng);
    }
    for seed in seeds("token") {
        check_token(&seed);
    }
    // The seeds that are meant to be valid are, and the others are refused for their reason.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/token");
    let token = |name: &str| {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        Verifier::hs256(TOKEN_SECRET)
            .unwrap()
            .verify(&text, TOKEN_NOW_S, &TokenLimits::default())
    };
    assert_eq!(token("valid").unwrap().sub.as_deref(), Some("user-1"));
    assert_eq!(token("alg-none"), Err(TokenError::WrongAlgorithm));
    assert_eq!(token("expired"), Err(TokenError::Expired));
    assert!(token("truncated").is_err());
    let rfc = &seeds("handshake")[..];
    assert!(
        rfc.iter()
            .any(|s| matches!(handshake::parse(&s[2..], 8192), Ok(Some(_))))
    );
}

#[test]
fn mutated_handshakes() {
    let mut rng = Rng(0x5eed_0001);
    let seeds = seeds("handshake");
    for _ in 0..3000 {
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut input, &mut rng);
        }
        check_handshake(&input);
    }
}

#[test]
fn mutated_decoder_streams() {
    let mut rng = Rng(0x5eed_0002);
    let seeds = seeds("decoder");
    for _ in 0..3000 {
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut input, &mut rng);
        }
        check_decoder(&input, &mut rng);
    }
}

#[test]
fn mutated_tokens() {
    let mut rng = Rng(0x5eed_0005);
    let seeds = seeds("token");
    for _ in 0..3000 {
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut input, &mut rng);
        }
        check_token(&input);
    }
}

#[test]
fn random_decoder_streams() {
    // Random frames built from valid pieces, with random header bits, so the input gets past the
    // first header check more often than raw random bytes would.
    let mut rng = Rng(0x5eed_0003);
    let opcodes = [
        OpCode::Continuation,
        OpCode::Text,
        OpCode::Binary,
        OpCode::Close,
        OpCode::Ping,
        OpCode::Pong,
    ];
    for _ in 0..2000 {
        let mut input = vec![rng.byte()];
        for _ in 0..rng.below(6) {
            let opcode = opcodes[rng.below(opcodes.len())];
            let len = [0, 1, 2, 5, 125, 126, 300, 70_000][rng.below(8)].min(rng.below(400));
            let payload: Vec<u8> = (0..len).map(|_| rng.byte() & 0x7f).collect();
            let mask = [rng.byte(), rng.byte(), rng.byte(), rng.byte()];
            input.extend(encode_client(opcode, rng.below(3) > 0, &payload, mask));
        }
        if rng.below(2) == 0 {
            mutate(&mut input, &mut rng);
        }
        check_decoder(&input, &mut rng);
    }
}

#[test]
fn random_bytes() {
    let mut rng = Rng(0x5eed_0004);
    for _ in 0..2000 {
        let len = rng.below(300);
        let input: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        check_handshake(&input);
        check_decoder(&input, &mut rng);
        check_token(&input);
    }
}
