//! A quick, seeded fuzz run inside `cargo test`: the committed seeds of `fuzz/seeds/http` and a
//! few thousand deterministic mutations of them, through the same checks as
//! `fuzz/fuzz_targets/http.rs` (keep the two in step). The real fuzzing runs for minutes with
//! `cargo fuzz run http fuzz/seeds/http`.

use std::path::Path;

use super::fuzz::check;
use super::*;

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
}

/// The committed seeds, sorted by name so the run is reproducible.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/http");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("seed dir entry").path())
        .collect();
    paths.sort();
    let seeds: Vec<(String, Vec<u8>)> = paths
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(p).expect("seed file"))
        })
        .collect();
    assert!(seeds.len() >= 8, "seeds missing in {}", dir.display());
    seeds
}

#[test]
fn seeds_give_their_expected_outcome() {
    for (name, seed) in seeds() {
        let (requests, error, _) = check(&seed);
        let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
        let status = error.map(HttpError::status);
        let expected: (&[&str], Option<u16>) = match name.as_str() {
            "bare-lf" => (&["/healthz"], None),
            "chunked" => (&[], Some(411)),
            "expect-continue" => (&["/api/publish"], None),
            "get-metrics" => (&["/metrics"], None),
            "head-too-large" => (&[], Some(431)),
            "http10" => (&["/a", "/b"], None),
            "http2-preface" => (&[], Some(505)),
            "pipelined-three" => (&["/healthz", "/api/publish", "/readyz"], None),
            "post-split" => (&["/api/publish"], Some(413)),
            "te-and-cl" => (&[], Some(400)),
            other => panic!("seed {other} has no expected outcome here"),
        };
        assert_eq!((&paths[..], status), expected, "seed {name}");
    }
}

#[test]
fn seeds_and_mutations() {
    let seeds = seeds();
    let mut rng = Rng(0x5eed_4477);
    for _ in 0..4000 {
        let mut input = seeds[rng.below(seeds.len())].1.clone();
        for _ in 0..1 + rng.below(4) {
            let len = input.len();
            match rng.below(6) {
                0 if len > 0 => input[rng.below(len)] ^= 1 << rng.below(8),
                1 if len > 0 => input[rng.below(len)] = rng.next() as u8,
                2 => input.insert(rng.below(len + 1), rng.next() as u8),
                3 if len > 0 => {
                    input.remove(rng.below(len));
                }
                4 if len > 0 => {
                    let start = rng.below(len);
                    let end = start + rng.below((len - start).min(48) + 1);
                    let copy = input[start..end].to_vec();
                    let at = rng.below(len + 1);
                    input.splice(at..at, copy);
                }
                _ => input.truncate(rng.below(len + 1)),
            }
        }
        check(&input);
    }
}
