//! SplitMix64: the crate's one seeded generator, for reproducible random weights, adapters, test
//! inputs, load-test payloads and the trainer's shuffles and LoRA init (no dependency; not for
//! anything that needs real randomness). Its whole state is one u64 (`state`, `from_state`), so
//! a training checkpoint records it exactly and a resumed run draws what an uninterrupted one
//! would. The samplers' generators seed from the same step (`splitmix64_next`).

/// One SplitMix64 step on a bare state word (Steele, Lea and Flood's constants): advances
/// `state` and returns the next output. Shared with the trainer's checkpointed generator.
pub fn splitmix64_next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64: a small, fast, seedable generator whose stream is the same everywhere.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The generator as it stands (for a checkpoint); `from_state` continues from it.
    pub fn state(&self) -> u64 {
        self.0
    }

    /// A generator that resumes from `state` (`state()`).
    pub fn from_state(state: u64) -> Self {
        SplitMix64(state)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        splitmix64_next(&mut self.0)
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn uniform_in(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit_f64() as f32
    }

    /// Uniform in [0, 1), 24 bits.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.unit() * 2.0 - 1.0
    }

    /// Uniform integer in `lo..=hi` (`lo <= hi`).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `n` test values of magnitude in [0.05, 1) · `scale` with random signs: never zero, so a
    /// kernel that skips an element cannot match by accident.
    pub fn nonzero(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let m = (0.05 + 0.95 * self.unit()) * scale;
                if self.next_u64() & 1 == 0 {
                    m
                } else {
                    -m
                }
            })
            .collect()
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_in_range() {
        let (mut a, mut b) = (SplitMix64::new(3), SplitMix64::new(3));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let u = a.uniform();
            assert!((-1.0..1.0).contains(&u));
            let r = a.range(5, 9);
            assert!((5..=9).contains(&r));
            b.uniform();
            b.range(5, 9);
        }
        assert_ne!(SplitMix64::new(3).next_u64(), SplitMix64::new(4).next_u64());
        let v = a.nonzero(1000, 2.0);
        assert!(v.iter().all(|x| (0.1..2.0).contains(&x.abs())) && v.iter().any(|&x| x < 0.0) && v.iter().any(|&x| x > 0.0));
        let mut p: Vec<usize> = (0..50).collect();
        a.shuffle(&mut p);
        assert_ne!(p, (0..50).collect::<Vec<_>>());
        p.sort();
        assert_eq!(p, (0..50).collect::<Vec<_>>());
    }
}
