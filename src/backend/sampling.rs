//! The device sampling rule (kernels/sampling.cu, csrc/sampling.h) on the CPU: its twin, with
//! the kernel's f32 arithmetic in the kernel's order (each of `LF_SAMPLE_THREADS` threads folds a
//! contiguous chunk in index order, then the per-thread results are folded in thread order), so
//! the two agree exactly where their `expf` does.
//!
//! It is also the host's rule: `Sampler::sample` draws with it (greedy rows take the first
//! largest logit), so a seed gives the same tokens on every backend. On the host each
//! candidate's weight is computed once and kept (the kernel recomputes it in every pass; the
//! value is the same), so a top-p draw costs a few passes of adds, not 31 of `exp`.

/// Threads per row of the kernel (`LF_SAMPLE_THREADS`).
pub const SAMPLE_THREADS: usize = 256;

/// One row's parameters (`LfSampleRow`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleRow {
    /// Temperature (0: argmax).
    pub temperature: f32,
    /// Top-k (0: off).
    pub top_k: usize,
    /// Top-p (1: off).
    pub top_p: f32,
    /// The request's seed.
    pub seed: u64,
    /// The draw's counter (the token's index).
    pub draw: u64,
}

fn order_key(f: f32) -> u32 {
    let u = f.to_bits();
    if u & 0x8000_0000 != 0 {
        !u
    } else {
        u | 0x8000_0000
    }
}

/// One SplitMix64 output for the state word `x` (kernels/sampling.cu computes the same).
fn splitmix64(mut x: u64) -> u64 {
    crate::rng::splitmix64_next(&mut x)
}

/// What a row of logits holding a NaN or an infinity samples to, on every backend (csrc/sampling.h
/// `LF_SAMPLE_NON_FINITE`): never a token; the sequence fails with `Error::NonFiniteLogits`.
pub const NON_FINITE: u32 = u32::MAX;

/// The id the device samples from one row of logits.
pub fn sample_row(l: &[f32], r: &SampleRow) -> u32 {
    if l.iter().any(|v| !v.is_finite()) {
        return NON_FINITE;
    }
    let vocab = l.len();
    let chunk = vocab.div_ceil(SAMPLE_THREADS);
    let range = |t: usize| (t * chunk).min(vocab)..((t * chunk).min(vocab) + chunk).min(vocab);
    // Two-stage ordered fold of a per-element f32 term.
    let fold = |term: &dyn Fn(usize) -> f32| -> (Vec<f32>, f32) {
        let parts: Vec<f32> = (0..SAMPLE_THREADS).map(|t| range(t).fold(0f32, |a, i| a + term(i))).collect();
        let total = parts.iter().fold(0f32, |a, &p| a + p);
        (parts, total)
    };
    // Largest logit, first index.
    let mut best: Option<(f32, usize)> = None;
    for t in 0..SAMPLE_THREADS {
        let mut local: Option<(f32, usize)> = None;
        for i in range(t) {
            if local.is_none_or(|(v, _)| l[i] > v) {
                local = Some((l[i], i));
            }
        }
        if let Some((v, i)) = local {
            if best.is_none_or(|(b, _)| v > b) {
                best = Some((v, i));
            }
        }
    }
    let Some((mx, argmax)) = best else { return 0 };
    if r.temperature == 0.0 {
        return argmax as u32;
    }
    let mut kth = 0u32;
    if r.top_k > 0 && r.top_k < vocab {
        for bit in (0..32).rev() {
            let cand = kth | (1 << bit);
            let (_, cnt) = fold(&|i| if order_key(l[i]) >= cand { 1.0 } else { 0.0 });
            if cnt >= r.top_k as f32 {
                kth = cand;
            }
        }
    }
    let inv_t = 1.0 / r.temperature;
    // Each candidate's weight, once (the kernel's `expf((l - max) * inv_t)`, same value).
    let ws: Vec<f32> = (0..vocab).map(|i| if order_key(l[i]) >= kth { ((l[i] - mx) * inv_t).exp() } else { 0.0 }).collect();
    let w = |i: usize| ws[i];
    let (mut parts, mut total) = fold(&|i| if order_key(l[i]) >= kth { w(i) } else { 0.0 });
    let mut wth = 0u32;
    if r.top_p < 1.0 {
        let need = r.top_p * total;
        for bit in (0..31).rev() {
            let cand = wth | (1 << bit);
            let (_, m) = fold(&|i| if order_key(l[i]) >= kth && w(i).to_bits() >= cand { w(i) } else { 0.0 });
            if m >= need {
                wth = cand;
            }
        }
        (parts, total) = fold(&|i| if order_key(l[i]) >= kth && w(i).to_bits() >= wth { w(i) } else { 0.0 });
    }
    let x = splitmix64(r.seed ^ r.draw.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let target = (x >> 40) as f32 * (1.0 / 16_777_216.0) * total;
    let (mut cum, mut owner, mut last, mut start) = (0f32, None, None, 0f32);
    for (t, &p) in parts.iter().enumerate() {
        if p > 0.0 {
            last = Some(t);
        }
        if owner.is_none() && p > 0.0 && target < cum + p {
            owner = Some(t);
            start = cum;
        }
        if owner.is_none() {
            cum += p;
        }
    }
    let owner = match (owner, last) {
        (Some(o), _) => o,
        (None, Some(l)) => {
            start = cum - parts[l];
            l
        }
        (None, None) => return argmax as u32,
    };
    let mut cum = start;
    let mut pick = None;
    for i in range(owner) {
        if order_key(l[i]) >= kth && w(i).to_bits() >= wth {
            pick = Some(i);
            cum += w(i);
            if target < cum {
                break;
            }
        }
    }
    pick.unwrap_or(argmax) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_rows_sample_to_the_marker() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut l = vec![0.5f32; 300];
            l[123] = bad;
            for temperature in [0.0, 0.9] {
                let r = SampleRow { temperature, top_k: 0, top_p: 1.0, seed: 1, draw: 0 };
                assert_eq!(sample_row(&l, &r), NON_FINITE, "{bad} at temperature {temperature}");
            }
        }
    }

    #[test]
    fn greedy_is_the_first_largest() {
        let r = SampleRow { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, draw: 0 };
        assert_eq!(sample_row(&[1.0, 3.0, 3.0, -1.0], &r), 1);
        let mut v = vec![0.5f32; 1000];
        v[700] = 2.0;
        v[900] = 2.0;
        assert_eq!(sample_row(&v, &r), 700);
    }

    #[test]
    fn draws_are_seeded_and_respect_top_k_and_top_p() {
        let l: Vec<f32> = (0..3000).map(|i| ((i * 37) % 101) as f32 * 0.05).collect();
        let mut sorted: Vec<usize> = (0..l.len()).collect();
        sorted.sort_by(|a, b| l[*b].total_cmp(&l[*a]));
        let kth = l[sorted[9]];
        let r = SampleRow { temperature: 0.8, top_k: 10, top_p: 1.0, seed: 42, draw: 0 };
        let a: Vec<u32> = (0..200).map(|d| sample_row(&l, &SampleRow { draw: d, ..r })).collect();
        let b: Vec<u32> = (0..200).map(|d| sample_row(&l, &SampleRow { draw: d, ..r })).collect();
        assert_eq!(a, b, "a seed and draw index give the same token");
        assert!(a.iter().all(|&t| l[t as usize] >= kth), "top-k keeps the 10 largest (and ties)");
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1, "draws vary");
        // A tiny top_p keeps only the largest.
        let g = SampleRow { temperature: 0.7, top_k: 0, top_p: 1e-6, seed: 3, draw: 0 };
        // The maximum is tied (about 30 tokens share it): the kept set is those ties, so every
        // draw is one of them; with a unique maximum every draw is the greedy token.
        let top = l[sample_row(&l, &SampleRow { temperature: 0.0, ..g }) as usize];
        let drawn: Vec<u32> = (0..40).map(|d| sample_row(&l, &SampleRow { draw: d, ..g })).collect();
        assert!(drawn.iter().all(|&t| l[t as usize] == top), "tiny top_p keeps the tied maxima");
        let mut unique = l.clone();
        unique[1234] = 100.0;
        for d in 0..20 {
            assert_eq!(sample_row(&unique, &SampleRow { draw: d, ..g }), 1234);
        }
    }
}
