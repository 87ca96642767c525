//! A seeded smoke run of the control protocol inside `cargo test`: the committed fuzz seeds of
//! `fuzz/seeds/control` plus thousands of deterministic mutations through the line splitter and
//! the request parser, with the fuzz target's checks (the real fuzzing is `cargo fuzz run
//! control`, see docs/testing.md).

use ringcast::control::{LineSplitter, parse};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, no dependency.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn lines(chunks: &[&[u8]], max: usize) -> Vec<Option<Vec<u8>>> {
    let mut splitter = LineSplitter::default();
    let mut out = Vec::new();
    for chunk in chunks {
        splitter.feed(chunk, max, &mut |line| {
            out.push(line.ok().map(<[u8]>::to_vec))
        });
        assert!(splitter.buffered() <= max);
    }
    out
}

fn check(data: &[u8]) {
    let Some((&m, stream)) = data.split_first() else {
        return;
    };
    let max = 16 + usize::from(m) * 16;
    let whole = lines(&[stream], max);
    for cut in [
        stream.len() / 3,
        stream.len() / 2,
        stream.len().saturating_sub(1),
    ] {
        assert_eq!(
            lines(&[&stream[..cut], &stream[cut..]], max),
            whole,
            "cut at {cut}"
        );
    }
    for line in whole.into_iter().flatten() {
        assert!(line.len() <= max);
        match parse(&line) {
            Ok(request) => assert!(request.id.is_none_or(|id| id.len() <= 64)),
            Err(e) => assert!(
                matches!(
                    e.code.as_str(),
                    "bad_json" | "unknown_method" | "bad_params"
                ),
                "{e:?}"
            ),
        }
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/control");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    let seeds: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(seeds.len() >= 5, "seeds missing in {}", dir.display());
    seeds
}

#[test]
fn seeds_and_mutations() {
    let seeds = seeds();
    for seed in &seeds {
        check(seed);
    }
    let mut rng = Rng(0x5eed_c0de);
    let alphabet =
        b"{}[]\":,\\\n\r 0123456789aeflnrstu-.ABmethodpublishchannelidtextb64datanoreply";
    for _ in 0..5000 {
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(5) {
            let at = rng.below(input.len() + 1);
            match rng.below(4) {
                0 if at < input.len() => {
                    input.remove(at);
                }
                1 => input.insert(at, alphabet[rng.below(alphabet.len())]),
                2 if at < input.len() => input[at] = (rng.next() & 0xff) as u8,
                _ => {
                    let from = rng.below(input.len());
                    let len = rng.below(32).min(input.len() - from);
                    let piece = input[from..from + len].to_vec();
                    input.splice(at..at, piece);
                }
            }
        }
        check(&input);
    }
}
