//! The CPU twin of the batched LoRA kernels (`kernels/lora_sgmv.cu`): for segments of
//! consecutive tokens that share an adapter,
//!   shrink: `v[t, :r] = x[t] · Aᵀ`            (x `[T, d_in]`, A `[r, d_in]`, v `[T, r_max]`)
//!   expand: `y[t] += scale · v[t, :r] · Bᵀ`   (B `[d_out, r]`, y `[T, d_out]`)
//! Tokens outside every segment (the base model's) are left alone. SGMV (prefill: long segments)
//! and BGMV (decode: one token per segment) compute exactly this; they differ only in how a GPU
//! schedules the work, so one twin serves both.

use super::isa;
use super::matmul;
use super::simd::{self, dispatch};
use crate::{Error, Result};

/// One segment, borrowed from the adapter's weights.
#[derive(Debug, Clone, Copy)]
pub struct LoraSegmentRef<'a> {
    /// First token row.
    pub start: usize,
    /// Token rows in the segment.
    pub len: usize,
    /// `[rank, d_in]` row-major.
    pub a: &'a [f32],
    /// `[d_out, rank]` row-major.
    pub b: &'a [f32],
    /// The pair's rank.
    pub rank: usize,
    /// The factor the product is multiplied by.
    pub scale: f32,
}

/// Checks that every segment fits `[t_rows, d_in] -> [t_rows, d_out]`, lies inside the batch,
/// does not overlap the previous one, and has A, B of its rank. Shared with the CUDA path.
pub fn validate_segments(segs: &[LoraSegmentRef<'_>], t_rows: usize, d_in: usize, d_out: usize, r_max: usize) -> Result<()> {
    let shapes = segs.iter().map(|s| LoraSegmentShape { start: s.start, len: s.len, rank: s.rank, a_len: s.a.len(), b_len: s.b.len() });
    validate_segment_shapes(shapes, t_rows, d_in, d_out, r_max)
}

pub use crate::types::layout::{validate_segment_shapes, LoraSegmentShape};

/// `v [T, r_max]`: each segment's rows get `x · Aᵀ` in their first `rank` columns; every other
/// value of `v` is left as it was.
pub fn lora_shrink(x: &[f32], d_in: usize, segs: &[LoraSegmentRef<'_>], v: &mut [f32], r_max: usize) {
    let mut tmp = Vec::new();
    for s in segs {
        tmp.resize(s.len * s.rank, 0.0);
        matmul::linear(&x[s.start * d_in..(s.start + s.len) * d_in], s.len, d_in, s.a, s.rank, &mut tmp);
        for (row, t) in tmp.chunks_exact(s.rank).enumerate() {
            let dst = (s.start + row) * r_max;
            v[dst..dst + s.rank].copy_from_slice(t);
        }
    }
}

/// `y [T, d_out] += scale · v[:, :rank] · Bᵀ` over each segment's rows.
pub fn lora_expand(v: &[f32], r_max: usize, segs: &[LoraSegmentRef<'_>], y: &mut [f32], d_out: usize) {
    let (mut vin, mut tmp) = (Vec::new(), Vec::new());
    for s in segs {
        vin.clear();
        for row in s.start..s.start + s.len {
            vin.extend_from_slice(&v[row * r_max..row * r_max + s.rank]);
        }
        tmp.resize(s.len * d_out, 0.0);
        matmul::linear(&vin, s.len, s.rank, s.b, d_out, &mut tmp);
        for (yv, &t) in y[s.start * d_out..(s.start + s.len) * d_out].iter_mut().zip(&tmp) {
            *yv += s.scale * t;
        }
    }
}

/// Segments up to this many rows take the per-row path (decode: BGMV-like); longer ones the
/// blocked matmul (prefill: SGMV-like).
const ROWS_PER_ROW_PATH: usize = 4;

/// Shrink then expand: `y += scale · (x Aᵀ) Bᵀ` per segment. Validates first.
///
/// Segments run in parallel (each owns its rows of `y`), so a decode batch of many one-token
/// segments costs about one pass over the adapters' weights, not one thread fork per segment.
pub fn lora_apply(x: &[f32], d_in: usize, segs: &[LoraSegmentRef<'_>], y: &mut [f32], d_out: usize) -> Result<()> {
    use rayon::prelude::*;
    let t_rows = if d_in == 0 { 0 } else { x.len() / d_in };
    if x.len() != t_rows * d_in || y.len() != t_rows * d_out {
        return Err(Error::InvalidArgument(format!("lora: x has {} values, y {}, for d_in {d_in}, d_out {d_out}", x.len(), y.len())));
    }
    let r_max = segs.iter().map(|s| s.rank).max().unwrap_or(0);
    validate_segments(segs, t_rows, d_in, d_out, r_max)?;
    // Disjoint row ranges of y, one per segment, in order (validated: sorted, no overlap).
    let mut parts: Vec<(&LoraSegmentRef<'_>, &mut [f32])> = Vec::with_capacity(segs.len());
    let mut rest = y;
    let mut row = 0;
    for s in segs {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut((s.start - row) * d_out);
        let (mine, tail) = tail.split_at_mut(s.len * d_out);
        parts.push((s, mine));
        rest = tail;
        row = s.start + s.len;
    }
    let (short, long): (Vec<_>, Vec<_>) = parts.into_iter().partition(|(s, _)| s.len <= ROWS_PER_ROW_PATH);
    short.into_par_iter().for_each(|(s, y)| {
        let mut v = [0f32; 256];
        for (r, yr) in y.chunks_exact_mut(d_out).enumerate() {
            let xr = &x[(s.start + r) * d_in..(s.start + r + 1) * d_in];
            apply_row(xr, s, &mut v, yr);
        }
    });
    for (s, y) in long {
        let one = LoraSegmentRef { start: 0, ..*s };
        let xs = &x[s.start * d_in..(s.start + s.len) * d_in];
        let mut v = vec![0.0; s.len * s.rank];
        lora_shrink(xs, d_in, &[one], &mut v, s.rank);
        lora_expand(&v, s.rank, &[one], y, d_out);
    }
    Ok(())
}

/// One row: `v = x · Aᵀ` (rank values), then `y += scale · v · Bᵀ`. Ranks above 256 take a
/// heap buffer.
fn apply_row(x: &[f32], s: &LoraSegmentRef<'_>, stack: &mut [f32; 256], y: &mut [f32]) {
    let mut heap;
    let v: &mut [f32] = if s.rank <= stack.len() {
        &mut stack[..s.rank]
    } else {
        heap = vec![0.0; s.rank];
        &mut heap
    };
    let d_in = x.len();
    // One dispatch per row: the expand is d_out dots of `rank` values each.
    dispatch!(isa::current(), lv => {
        for (k, vk) in v.iter_mut().enumerate() {
            *vk = s.scale * simd::dot(lv, x, &s.a[k * d_in..(k + 1) * d_in]);
        }
        for (yo, b) in y.iter_mut().zip(s.b.chunks_exact(s.rank)) {
            *yo += simd::dot(lv, v, b);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain triple loop, the definition.
    fn naive(x: &[f32], d_in: usize, segs: &[LoraSegmentRef<'_>], y: &mut [f32], d_out: usize) {
        for s in segs {
            for t in s.start..s.start + s.len {
                let xv = &x[t * d_in..(t + 1) * d_in];
                let v: Vec<f64> = (0..s.rank).map(|k| (0..d_in).map(|i| xv[i] as f64 * s.a[k * d_in + i] as f64).sum()).collect();
                for o in 0..d_out {
                    let dot: f64 = (0..s.rank).map(|k| v[k] * s.b[o * s.rank + k] as f64).sum();
                    y[t * d_out + o] += (s.scale as f64 * dot) as f32;
                }
            }
        }
    }

    fn rand(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_definition_with_mixed_ranks_and_gaps() {
        let mut seed = 7;
        for &(t, d_in, d_out) in &[(13usize, 37usize, 29usize), (64, 96, 160), (5, 1, 3)] {
            let x = rand(t * d_in, &mut seed);
            let y0 = rand(t * d_out, &mut seed);
            let ranks = [8usize, 3, 16];
            let ws: Vec<(Vec<f32>, Vec<f32>)> = ranks.iter().map(|&r| (rand(r * d_in, &mut seed), rand(d_out * r, &mut seed))).collect();
            // Segments with a gap (base-model rows) between them, one of length 1 (decode).
            let bounds = [(0usize, t / 3), (t / 3 + 1, 1), (t / 3 + 3, t - t / 3 - 3)];
            let segs: Vec<LoraSegmentRef<'_>> = bounds
                .iter()
                .zip(&ws)
                .zip(ranks)
                .filter(|(((s, l), _), _)| *l > 0 && s + l <= t)
                .map(|(((start, len), (a, b)), rank)| LoraSegmentRef { start: *start, len: *len, a, b, rank, scale: 0.5 + rank as f32 })
                .collect();
            let (mut y, mut want) = (y0.clone(), y0.clone());
            lora_apply(&x, d_in, &segs, &mut y, d_out).unwrap();
            naive(&x, d_in, &segs, &mut want, d_out);
            let err: f32 = y.iter().zip(&want).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
            let norm: f32 = want.iter().map(|a| a * a).sum::<f32>().sqrt();
            assert!(err / norm < 1e-6, "t={t} d_in={d_in} d_out={d_out}: rel {}", err / norm);
            // Rows outside every segment are untouched.
            let covered = |r: usize| segs.iter().any(|s| r >= s.start && r < s.start + s.len);
            for r in (0..t).filter(|&r| !covered(r)) {
                assert_eq!(&y[r * d_out..(r + 1) * d_out], &y0[r * d_out..(r + 1) * d_out]);
            }
        }
    }

    #[test]
    fn rejects_bad_segments() {
        let a = vec![0.5; 4 * 3];
        let b = vec![0.5; 2 * 4];
        let x = vec![1.0; 5 * 3];
        let mut y = vec![0.0; 5 * 2];
        let seg = |start, len| LoraSegmentRef { start, len, a: &a, b: &b, rank: 4, scale: 1.0 };
        assert!(lora_apply(&x, 3, &[seg(0, 3), seg(2, 2)], &mut y, 2).is_err(), "overlap");
        assert!(lora_apply(&x, 3, &[seg(4, 2)], &mut y, 2).is_err(), "past the batch");
        let short = LoraSegmentRef { start: 0, len: 1, a: &a[..8], b: &b, rank: 4, scale: 1.0 };
        assert!(lora_apply(&x, 3, &[short], &mut y, 2).is_err(), "A too short");
        assert!(lora_apply(&x, 3, &[seg(0, 5)], &mut y, 2).is_ok());
    }
}
