//! Reconnection delays: exponential from `min_ms`, doubling per failed attempt up to `max_ms`,
//! each drawn uniformly from the upper half of its step so that nodes that lost the same Redis
//! at the same moment do not all come back in the same millisecond. Pure: the randomness is an
//! argument.

/// The delay sequence of one outage.
#[derive(Debug, Clone)]
pub struct Backoff {
    min_ms: u64,
    max_ms: u64,
    attempt: u32,
}

impl Backoff {
    /// Delays from `min_ms` up to `max_ms` (`0 < min_ms <= max_ms`).
    pub fn new(min_ms: u64, max_ms: u64) -> Backoff {
        assert!(min_ms > 0);
        assert!(min_ms <= max_ms);
        Backoff {
            min_ms,
            max_ms,
            attempt: 0,
        }
    }

    /// The delay before the next attempt; `random` is any 64 random bits.
    pub fn next_ms(&mut self, random: u64) -> u64 {
        let step = self
            .min_ms
            .saturating_mul(1 << self.attempt.min(32))
            .min(self.max_ms);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        step - half + random % (half + 1)
    }

    /// Connected: the next outage starts from `min_ms` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A small xorshift generator for jitter (not for anything secret).
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded by the caller (e.g. the clock and the process id); a zero seed is replaced.
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// 64 pseudo-random bits.
    pub fn draw(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_bounds_with_jitter() {
        let mut b = Backoff::new(50, 2000);
        let mut jitter = Jitter::new(42);
        let steps = [50, 100, 200, 400, 800, 1600, 2000, 2000, 2000];
        for (i, step) in steps.into_iter().enumerate() {
            let d = b.next_ms(jitter.draw());
            assert!(
                d >= step / 2 && d <= step,
                "attempt {i}: {d} not in {step}/2..={step}"
            );
        }
        for _ in 0..100 {
            assert!(b.next_ms(u64::MAX) <= 2000);
        }
        b.reset();
        assert!(b.next_ms(0) <= 50);
        let mut same = Backoff::new(50, 2000);
        assert_ne!(
            (0..8)
                .map(|_| same.next_ms(jitter.draw()))
                .collect::<Vec<_>>(),
            steps[..8].to_vec(),
            "jittered"
        );
    }
}
