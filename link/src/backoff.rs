//! Reconnect delays: capped exponential backoff with full jitter.
//!
//! After the n-th failed attempt the edge waits a uniformly random time in
//! `[0, min(cap, base * 2^n)]` ("full jitter"), so that thousands of edges
//! cut off by one hub restart come back spread out, not as a herd.

use std::time::Duration;

/// Backoff state for one link.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// A backoff starting at `base`, never above `cap`. `seed` makes the
    /// jitter differ per process (any value but zero works).
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// The delay before the next attempt; each call counts one failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .checked_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.cap)
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(self.random_unit())
    }

    /// The link came up and stayed: start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failures counted since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// xorshift64*: plenty for spreading reconnects, no dependency.
    fn random_unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (r >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A random number from the operating system, for jitter seeds and
/// [`crate::frame::BatchHeader::sender`]. Falls back to the clock and pid,
/// which still differ per process, if the system source fails.
pub fn random_seed() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 8];
    if SystemRandom::new().fill(&mut bytes).is_ok() {
        return u64::from_le_bytes(bytes);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 42);
        let delays: Vec<_> = (0..40).map(|_| b.next_delay()).collect();
        for (n, d) in delays.iter().enumerate() {
            let ceiling = Duration::from_secs(1u64 << n.min(6)).min(Duration::from_secs(60));
            assert!(*d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
        }
        // Jitter: late delays are not all equal to the cap.
        let distinct: std::collections::BTreeSet<_> = delays[10..].iter().collect();
        assert!(distinct.len() > 20);
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn spread_is_uniform_enough() {
        // 10,000 edges with different seeds: no second of the first 8 s gets
        // more than twice its share (a herd would put them all in one).
        let mut buckets = [0u32; 8];
        for seed in 0..10_000u64 {
            let mut b = Backoff::new(
                Duration::from_secs(8),
                Duration::from_secs(8),
                seed * 7919 + 1,
            );
            b.next_delay();
            let d = b.next_delay();
            buckets[(d.as_secs() as usize).min(7)] += 1;
        }
        for n in buckets {
            assert!(n < 2 * 10_000 / 8, "{buckets:?}");
        }
    }
}
