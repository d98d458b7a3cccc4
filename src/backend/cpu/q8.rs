//! A frozen weight stored as 8-bit integers with one f32 scale per block of 32 values of a row
//! (llama.cpp's Q8_0 layout with an f32 instead of an f16 scale): a quarter of f32's bytes plus
//! one eighth for the scales. Used for the lm_head of a quantized base (`--lm-head q8`), where the
//! f32 head would otherwise be most of what a decode step reads (49,152 × 576 f32 = 113 MB on
//! SmolLM2 against 56 MB for all 30 NF4 layers).
//!
//! Quantization: per block, `scale = absmax / 127`, `q = round(x / scale)` (ties away from zero),
//! so each value is within `scale / 2` of the original. The last block of a row may be shorter
//! (`cols % 32 != 0`); blocks never straddle rows.
//!
//! `linear`: decode-sized inputs (≤ 16 rows) dot each quantized row directly (codes widened to
//! f32 a vector at a time, the block's scale applied once per block, at every `simd` level);
//! more rows decode panels for the dense GEMM (`frozen::linear_tiled`).

use super::frozen::{self, DecodeRows};
use super::isa::{self, Level};
use super::matmul;
use super::simd::{self, dispatch, Simd};

/// Values per scale.
pub const BLOCK: usize = 32;

/// A row-major `[rows, cols]` matrix of 8-bit codes and per-block scales.
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// `[rows, cols]` codes in -127..=127.
    pub q: Vec<i8>,
    /// `[rows, cols.div_ceil(BLOCK)]` scales.
    pub scales: Vec<f32>,
}

impl Q8Matrix {
    /// Quantizes an f32 `[rows, cols]` matrix. Non-finite values are refused (a scale would
    /// become NaN or infinite for the whole block).
    pub fn from_f32(data: &[f32], rows: usize, cols: usize) -> Result<Self, String> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(format!("{} values are not [{rows}, {cols}]", data.len()));
        }
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            return Err(format!("value {} at ({}, {}) is not finite", data[i], i / cols.max(1), i % cols.max(1)));
        }
        let bpr = cols.div_ceil(BLOCK);
        let mut q = vec![0i8; data.len()];
        let mut scales = vec![0f32; rows * bpr];
        for ((src, dst), sc) in data.chunks_exact(cols.max(1)).zip(q.chunks_exact_mut(cols.max(1))).zip(scales.chunks_exact_mut(bpr.max(1))) {
            for ((s, d), scale) in src.chunks(BLOCK).zip(dst.chunks_mut(BLOCK)).zip(sc.iter_mut()) {
                let absmax = s.iter().fold(0f32, |m, x| m.max(x.abs()));
                *scale = absmax / 127.0;
                let inv = if absmax > 0.0 { 127.0 / absmax } else { 0.0 };
                for (x, d) in s.iter().zip(d.iter_mut()) {
                    *d = (x * inv).round().clamp(-127.0, 127.0) as i8;
                }
            }
        }
        Ok(Q8Matrix { rows, cols, q, scales })
    }

    /// Bytes of the stored weight (codes and scales).
    pub fn bytes(&self) -> usize {
        self.q.len() + self.scales.len() * 4
    }

    fn blocks_per_row(&self) -> usize {
        self.cols.div_ceil(BLOCK)
    }
}

impl DecodeRows for Q8Matrix {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn decode_rows(&self, r0: usize, out: &mut [f32]) {
        let (cols, bpr) = (self.cols, self.blocks_per_row());
        for (i, row) in out.chunks_exact_mut(cols).enumerate() {
            let r = r0 + i;
            let codes = &self.q[r * cols..(r + 1) * cols];
            for ((o, c), &s) in row.chunks_mut(BLOCK).zip(codes.chunks(BLOCK)).zip(&self.scales[r * bpr..(r + 1) * bpr]) {
                for (o, &c) in o.iter_mut().zip(c) {
                    *o = c as f32 * s;
                }
            }
        }
    }
}

/// `out [t, n] = x [t, k] · Wᵀ` for a Q8 `W [n, k]`.
pub fn linear(x: &[f32], t: usize, w: &Q8Matrix, out: &mut [f32]) {
    linear_at(isa::current(), x, t, w, out)
}

/// [`linear`] at `level`: one row (the lm_head at decode: 49,152 rows) `LANES` weight rows per
/// kernel call, their sums reduced together; up to `GEMV_MAX_ROWS` rows a dot per (row, x row)
/// with one dispatch per task; more rows through decoded tiles.
pub fn linear_at(level: Level, x: &[f32], t: usize, w: &Q8Matrix, out: &mut [f32]) {
    let (n, k, bpr) = (w.rows, w.cols, w.blocks_per_row());
    assert_eq!(x.len(), t * k, "x is not [t, k]");
    assert_eq!(out.len(), t * n, "out is not [t, n]");
    if t == 0 || n == 0 {
        return;
    }
    if t > matmul::GEMV_MAX_ROWS {
        return frozen::linear_tiled(x, t, w, out);
    }
    if t == 1 && k.is_multiple_of(BLOCK) {
        let group = simd::lanes(level);
        // SAFETY: gemv1_by_row_groups hands each call j0 + o.len() <= out.len() = w.rows rows,
        // o.len() <= group = LANES; k % BLOCK == 0 and x is [k] (checked above).
        return matmul::gemv1_by_row_groups(out, group, |j0, o| dispatch!(level, s => unsafe { rows_t1(s, w, x, j0, o) }));
    }
    matmul::gemv_by_row_tasks(t, n, out, |j0, chunk| {
        dispatch!(level, s => {
            for (jj, o) in chunk.chunks_exact_mut(t).enumerate() {
                let j = j0 + jj;
                let (q, sc) = (&w.q[j * k..(j + 1) * k], &w.scales[j * bpr..(j + 1) * bpr]);
                for (ti, o) in o.iter_mut().enumerate() {
                    *o = dot_q8_simd(s, &x[ti * k..(ti + 1) * k], q, sc);
                }
            }
        })
    })
}

/// `Σ a[i] · q[i] · scales[i / BLOCK]` at the level the process runs.
#[inline]
pub fn dot_q8(a: &[f32], q: &[i8], scales: &[f32]) -> f32 {
    assert!(a.len() == q.len() && scales.len() == q.len().div_ceil(BLOCK), "dot_q8: {} values, {} codes, {} scales", a.len(), q.len(), scales.len());
    dispatch!(isa::current(), s => dot_q8_simd(s, a, q, scales))
}

/// The scalar definition (and the tail of a row whose length is not a multiple of the block).
pub fn dot_q8_scalar(a: &[f32], q: &[i8], scales: &[f32]) -> f32 {
    let mut total = 0f32;
    for ((a, q), &s) in a.chunks(BLOCK).zip(q.chunks(BLOCK)).zip(scales) {
        let block: f32 = a.iter().zip(q).map(|(&x, &c)| x * c as f32).sum();
        total += block * s;
    }
    total
}

/// One block of 32: `Σ x[i] · q[i]` as a vector (its lanes still to be summed).
///
/// # Safety
/// 32 values readable at `px` and at `pq`.
#[inline(always)]
unsafe fn block_dot<S: Simd>(s: S, px: *const f32, pq: *const i8) -> S::F {
    let l = S::LANES;
    // SAFETY: 32 values at px and pq (the contract), read in 32 / l vectors.
    unsafe {
        let mut blk = s.mul(s.load(px), s.load_i8(pq));
        for h in 1..BLOCK / l {
            blk = s.fma(s.load(px.add(h * l)), s.load_i8(pq.add(h * l)), blk);
        }
        blk
    }
}

/// [`dot_q8`] generic over the level: whole blocks scaled once each, on two chains (one FMA
/// latency per block would bound a single chain); a partial last block by the scalar loop.
#[inline(always)]
fn dot_q8_simd<S: Simd>(s: S, a: &[f32], q: &[i8], scales: &[f32]) -> f32 {
    let n = a.len().min(q.len());
    let whole = (n / BLOCK).min(scales.len());
    let (pa, pq) = (a.as_ptr(), q.as_ptr());
    let (mut acc0, mut acc1) = (s.zero(), s.zero());
    for b in 0..whole {
        // SAFETY: block b covers elements 32 b .. 32 b + 32 <= n of a and q.
        let blk = unsafe { block_dot(s, pa.add(BLOCK * b), pq.add(BLOCK * b)) };
        if b % 2 == 0 {
            acc0 = s.fma(blk, s.splat(scales[b]), acc0);
        } else {
            acc1 = s.fma(blk, s.splat(scales[b]), acc1);
        }
    }
    let mut total = s.sum(s.add(acc0, acc1));
    let tail = whole * BLOCK;
    if tail < n {
        total += dot_q8_scalar(&a[tail..n], &q[tail..n], &scales[whole..]);
    }
    total
}

/// `out[r] = dot_q8(x, row j0 + r)` for the `out.len() <= LANES` rows from `j0`, their vectors
/// reduced together (`reduce_lanes`), with no call or horizontal sum per row.
///
/// # Safety
/// `out.len() <= S::LANES`; `j0 + out.len() <= w.rows`; `w.cols % 32 == 0` and
/// `x.len() == w.cols`.
#[inline(always)]
unsafe fn rows_t1<S: Simd>(s: S, w: &Q8Matrix, x: &[f32], j0: usize, out: &mut [f32]) {
    let (k, blocks) = (w.cols, w.cols / BLOCK);
    let px = x.as_ptr();
    let mut totals = [s.zero(); 16];
    // SAFETY (all loads): row j's codes are q[j k .. (j + 1) k] and its scales
    // scales[j blocks ..][..blocks] for j < w.rows; x has k values (the contract).
    unsafe {
        for (r, total) in totals.iter_mut().enumerate().take(out.len()) {
            let pq = w.q.as_ptr().add((j0 + r) * k);
            let ps = w.scales.as_ptr().add((j0 + r) * blocks);
            simd::prefetch_ahead(s, pq as *const u8, k);
            simd::prefetch_ahead(s, ps as *const u8, 4 * blocks);
            // The row's sum in two local chains, stored once (`totals` may live on the stack).
            let (mut acc0, mut acc1) = (s.zero(), s.zero());
            for b in 0..blocks {
                let blk = block_dot(s, px.add(BLOCK * b), pq.add(BLOCK * b));
                if b % 2 == 0 {
                    acc0 = s.fma(blk, s.splat(*ps.add(b)), acc0);
                } else {
                    acc1 = s.fma(blk, s.splat(*ps.add(b)), acc1);
                }
            }
            *total = s.add(acc0, acc1);
        }
        let mut sums = [0f32; 16];
        s.store(sums.as_mut_ptr(), s.reduce_lanes(&totals[..S::LANES]));
        out.copy_from_slice(&sums[..out.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_error_is_within_half_a_step() {
        let mut rng = crate::rng::SplitMix64::new(21);
        for (rows, cols) in [(3usize, 64usize), (5, 33), (2, 7), (1, 576), (4, 100)] {
            let mut data = rng.nonzero(rows * cols, 2.0);
            data[cols / 2] = 0.0; // exact zeros stay zero
            let m = Q8Matrix::from_f32(&data, rows, cols).unwrap();
            assert_eq!(m.scales.len(), rows * cols.div_ceil(BLOCK));
            assert_eq!(m.bytes(), rows * cols + 4 * rows * cols.div_ceil(BLOCK));
            let mut dec = vec![f32::NAN; rows * cols];
            m.decode_rows(0, &mut dec);
            for (i, (&x, &d)) in data.iter().zip(&dec).enumerate() {
                let s = m.scales[(i / cols) * cols.div_ceil(BLOCK) + (i % cols) / BLOCK];
                assert!((x - d).abs() <= s * 0.5 * (1.0 + 1e-5) + 1e-12, "[{rows}, {cols}] {i}: {x} -> {d} (scale {s})");
            }
            assert_eq!(dec[cols / 2], 0.0);
        }
        assert!(Q8Matrix::from_f32(&[1.0; 5], 2, 3).is_err());
        assert!(Q8Matrix::from_f32(&[1.0, f32::NAN], 1, 2).is_err());
    }

    #[test]
    fn dot_paths_agree_and_linear_matches_the_decoded_matrix() {
        let mut rng = crate::rng::SplitMix64::new(22);
        for k in [1usize, 7, 31, 32, 33, 64, 95, 576, 1001] {
            let a = rng.nonzero(k, 1.0);
            let m = Q8Matrix::from_f32(&rng.nonzero(k, 1.0), 1, k).unwrap();
            let mut dec = vec![0.0; k];
            m.decode_rows(0, &mut dec);
            let want: f64 = a.iter().zip(&dec).map(|(&x, &y)| x as f64 * y as f64).sum();
            for (what, got) in [("dispatch", dot_q8(&a, &m.q, &m.scales)), ("scalar", dot_q8_scalar(&a, &m.q, &m.scales))] {
                assert!((got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "{what} k {k}: {got} vs {want}");
            }
        }
        // Decode (t <= 16: row groups at t = 1, per-row dots) and prefill (t > 16, tiles) against
        // f64 on the decoded W, at every level the CPU has.
        for (t, n, k) in
            [(1usize, 77usize, 100usize), (1, 141, 96), (1, 9, 64), (3, 130, 33), (4, 65, 576), (5, 200, 17), (9, 64, 64), (16, 33, 32), (17, 20, 40)]
        {
            let w = Q8Matrix::from_f32(&rng.nonzero(n * k, 0.5), n, k).unwrap();
            let mut dec = vec![0.0; n * k];
            w.decode_rows(0, &mut dec);
            let x = rng.nonzero(t * k, 1.0);
            for level in isa::available() {
                let mut out = vec![f32::NAN; t * n];
                linear_at(level, &x, t, &w, &mut out);
                for r in 0..t {
                    for j in 0..n {
                        let want: f64 = (0..k).map(|c| x[r * k + c] as f64 * dec[j * k + c] as f64).sum();
                        let g = out[r * n + j] as f64;
                        assert!((g - want).abs() <= 1e-5 * (1.0 + want.abs()), "{} [{t}, {n}, {k}] ({r}, {j}): {g} vs {want}", level.isa());
                    }
                }
            }
        }
    }
}
