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
//! `linear`: decode-sized inputs (≤ 4 rows) dot each quantized row directly (`dot_q8`: AVX-512
//! widens 16 codes to f32 per step and applies the block's scale once per block); more rows
//! decode 64-row tiles for the dense GEMM (`frozen::linear_tiled`).

use super::frozen::{self, DecodeRows};

/// Values per scale.
pub const BLOCK: usize = 32;

/// A row-major `[rows, cols]` matrix of 8-bit codes and per-block scales.
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    pub rows: usize,
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
    let (k, bpr) = (w.cols, w.blocks_per_row());
    #[cfg(target_arch = "x86_64")]
    if t == 1 && k.is_multiple_of(BLOCK) && x.len() == k && out.len() == w.rows && is_x86_feature_detected!("avx512f") {
        // Decode of one sequence (the lm_head's usual call: 49,152 rows).
        // SAFETY: AVX-512F checked above; matmul hands each call j0 + o.len() <= out.len() =
        // w.rows; k % BLOCK == 0 and x is [k].
        super::matmul::gemv1_by_16_rows(out, |j0, o| unsafe { x86::rows16_avx512(w, x, j0, o) });
        return;
    }
    frozen::linear_by_rows(x, t, w, out, |xr, j| dot_q8(xr, &w.q[j * k..(j + 1) * k], &w.scales[j * bpr..(j + 1) * bpr]))
}

/// `Σ a[i] · q[i] · scales[i / BLOCK]`, SIMD where the CPU has it (checked at run time).
#[inline]
pub fn dot_q8(a: &[f32], q: &[i8], scales: &[f32]) -> f32 {
    assert!(a.len() == q.len() && scales.len() == q.len().div_ceil(BLOCK), "dot_q8: {} values, {} codes, {} scales", a.len(), q.len(), scales.len());
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above); lengths checked above.
            return unsafe { x86::dot_q8_avx512(a, q, scales) };
        }
    }
    dot_q8_portable(a, q, scales)
}

pub fn dot_q8_portable(a: &[f32], q: &[i8], scales: &[f32]) -> f32 {
    let mut total = 0f32;
    for ((a, q), &s) in a.chunks(BLOCK).zip(q.chunks(BLOCK)).zip(scales) {
        let mut acc = [0f32; 8];
        let (ca, cq) = (a.chunks_exact(8), q.chunks_exact(8));
        let (ra, rq) = (ca.remainder(), cq.remainder());
        for (x, y) in ca.zip(cq) {
            for i in 0..8 {
                acc[i] += x[i] * y[i] as f32;
            }
        }
        let mut block: f32 = acc.iter().sum();
        for (x, &y) in ra.iter().zip(rq) {
            block += x * y as f32;
        }
        total += block * s;
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 16 codes at `p` widened to f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const i8) -> __m512 {
        // SAFETY: the caller guarantees 16 readable bytes at p (unaligned load).
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(unsafe { _mm_loadu_si128(p as *const __m128i) }))
    }

    /// `out[r] = dot_q8(x, row j0 + r)` for the `out.len() <= 16` rows from `j0`, their vectors
    /// reduced together (`reduce16`), with no call or horizontal sum per row.
    ///
    /// # Safety
    /// AVX-512F; `out.len() <= 16`; `j0 + out.len() <= w.rows`; `w.cols % 32 == 0` and
    /// `x.len() == w.cols`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn rows16_avx512(w: &super::Q8Matrix, x: &[f32], j0: usize, out: &mut [f32]) {
        let (k, blocks) = (w.cols, w.cols / super::BLOCK);
        let px = x.as_ptr();
        // SAFETY (all loads): row j's codes are q[j k .. (j + 1) k] and its scales
        // scales[j blocks ..][..blocks] for j < w.rows; x has k values (the contract).
        unsafe {
            let mut totals = [_mm512_setzero_ps(); 16];
            for (r, total) in totals.iter_mut().enumerate().take(out.len()) {
                let pq = w.q.as_ptr().add((j0 + r) * k);
                let ps = w.scales.as_ptr().add((j0 + r) * blocks);
                crate::backend::cpu::matmul::prefetch_ahead(pq as *const u8, k);
                crate::backend::cpu::matmul::prefetch_ahead(ps as *const u8, 4 * blocks);
                // The row's sum in two local chains (one FMA latency per block would bound a single
                // chain; `totals` may live on the stack), stored once.
                let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                for b in 0..blocks {
                    let e0 = 32 * b;
                    let blk = _mm512_fmadd_ps(_mm512_loadu_ps(px.add(e0)), load16(pq.add(e0)), _mm512_mul_ps(_mm512_loadu_ps(px.add(e0 + 16)), load16(pq.add(e0 + 16))));
                    if b % 2 == 0 {
                        acc0 = _mm512_fmadd_ps(blk, _mm512_set1_ps(*ps.add(b)), acc0);
                    } else {
                        acc1 = _mm512_fmadd_ps(blk, _mm512_set1_ps(*ps.add(b)), acc1);
                    }
                }
                *total = _mm512_add_ps(acc0, acc1);
            }
            let mut sums = [0f32; 16];
            _mm512_storeu_ps(sums.as_mut_ptr(), crate::backend::cpu::simd::reduce16(&totals));
            out.copy_from_slice(&sums[..out.len()]);
        }
    }

    /// # Safety
    /// The CPU has AVX-512F; `a.len() == q.len()` and `scales.len() == q.len().div_ceil(32)`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_q8_avx512(a: &[f32], q: &[i8], scales: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pq) = (a.as_ptr(), q.as_ptr());
        let whole = n / super::BLOCK;
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        // SAFETY (all loads): block b covers elements 32 b .. 32 b + 32 <= n for b < whole.
        unsafe {
            let mut b = 0;
            while b + 2 <= whole {
                let (e0, e1) = (32 * b, 32 * b + 32);
                let blk0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(e0)), load16(pq.add(e0)), _mm512_mul_ps(_mm512_loadu_ps(pa.add(e0 + 16)), load16(pq.add(e0 + 16))));
                let blk1 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(e1)), load16(pq.add(e1)), _mm512_mul_ps(_mm512_loadu_ps(pa.add(e1 + 16)), load16(pq.add(e1 + 16))));
                acc0 = _mm512_fmadd_ps(blk0, _mm512_set1_ps(*scales.get_unchecked(b)), acc0);
                acc1 = _mm512_fmadd_ps(blk1, _mm512_set1_ps(*scales.get_unchecked(b + 1)), acc1);
                b += 2;
            }
            if b < whole {
                let e0 = 32 * b;
                let blk = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(e0)), load16(pq.add(e0)), _mm512_mul_ps(_mm512_loadu_ps(pa.add(e0 + 16)), load16(pq.add(e0 + 16))));
                acc0 = _mm512_fmadd_ps(blk, _mm512_set1_ps(*scales.get_unchecked(b)), acc0);
            }
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        let tail = whole * super::BLOCK;
        if tail < n {
            s += super::dot_q8_portable(&a[tail..], &q[tail..], &scales[whole..]);
        }
        s
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
            for (what, got) in [("dispatch", dot_q8(&a, &m.q, &m.scales)), ("portable", dot_q8_portable(&a, &m.q, &m.scales))] {
                assert!((got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "{what} k {k}: {got} vs {want}");
            }
        }
        // Decode (t <= 4, per-row dots) and prefill (t > 4, tiles) against f64 on the decoded W.
        for (t, n, k) in [(1usize, 77usize, 100usize), (1, 141, 96), (3, 130, 33), (4, 65, 576), (5, 200, 17), (9, 64, 64)] {
            let w = Q8Matrix::from_f32(&rng.nonzero(n * k, 0.5), n, k).unwrap();
            let mut dec = vec![0.0; n * k];
            w.decode_rows(0, &mut dec);
            let x = rng.nonzero(t * k, 1.0);
            let mut out = vec![f32::NAN; t * n];
            linear(&x, t, &w, &mut out);
            for r in 0..t {
                for j in 0..n {
                    let want: f64 = (0..k).map(|c| x[r * k + c] as f64 * dec[j * k + c] as f64).sum();
                    let g = out[r * n + j] as f64;
                    assert!((g - want).abs() <= 1e-5 * (1.0 + want.abs()), "[{t}, {n}, {k}] ({r}, {j}): {g} vs {want}");
                }
            }
        }
    }
}
