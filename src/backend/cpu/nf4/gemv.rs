//! Fused NF4 GEMV for decode (1–4 activation rows): `out [t, n] = x [t, k] · Wᵀ` straight from the
//! packed nibbles, never writing a dequantized weight anywhere. Per weight row and block of
//! `blocksize` elements it accumulates `Σ code[q_i] · x_i` (the 16-level table, unscaled) and adds
//! `absmax[block] ·` that to the row's total, so the scale costs one FMA per block, and each
//! packed byte is read once for all `t` rows.
//!
//! Layout trick: a packed byte holds element `2i` (high nibble) and `2i + 1` (low nibble). Rather
//! than interleave the decoded values, `x` is de-interleaved once per call into groups of 32
//! elements `[x0, x2, .., x30, x1, x3, .., x31]`, so the 16 high nibbles of 16 bytes dot the first
//! half and the 16 low nibbles the second.
//!
//! Kernels: AVX-512 (16 nibbles → 16 floats with one `vpermps` over the 16-entry table in a
//! register), AVX2 (two 8-entry `vpermps` and a blend on bit 3), and a portable scalar loop;
//! chosen at run time. All need `cols % blocksize == 0` and `blocksize % 32 == 0` (every block
//! starts a 32-element group; bitsandbytes' 64 qualifies); `supports` says so, and other shapes
//! take the tiled path in `nf4.rs`.

use rayon::prelude::*;

use super::Nf4Matrix;

/// Elements per de-interleaved group (16 packed bytes).
const GROUP: usize = 32;
/// Weight rows per rayon task (32 rows of 576 columns = 9 KB of packed weights): small enough
/// that SmolLM2's 192- and 576-row products split evenly over two threads (6 and 18 tasks; with
/// 64 rows, 3 and 9 tasks left one thread a task more than the other).
const ROWS_PER_TASK: usize = 32;
/// Activation columns per pass over a task's rows (a multiple of the block is used).
const K_CHUNK: usize = 1024;
/// The most activation rows the fused kernels take (decode and small batches).
pub const MAX_ROWS: usize = 4;

/// Whether `w` has the layout the fused kernels need.
pub fn supports(w: &Nf4Matrix) -> bool {
    w.blocksize.is_multiple_of(GROUP) && w.cols.is_multiple_of(w.blocksize) && w.blocksize > 0
}

/// `x [t, k]` to groups of 32: `[x0, x2, .., x30, x1, x3, .., x31]` per group, rows after each other.
fn deinterleave(x: &[f32], t: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0.0; t * k];
    for (src, dst) in x.chunks_exact(k).zip(out.chunks_exact_mut(k)) {
        for (s, d) in src.chunks_exact(GROUP).zip(dst.chunks_exact_mut(GROUP)) {
            for i in 0..GROUP / 2 {
                d[i] = s[2 * i];
                d[GROUP / 2 + i] = s[2 * i + 1];
            }
        }
    }
    out
}

/// Which kernel the CPU runs (checked once per call; the check is cached by std).
#[derive(Clone, Copy)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// `out [t, w.rows] = x [t, w.cols] · wᵀ` for `1 <= t <= MAX_ROWS` and `supports(w)`.
pub fn linear(x: &[f32], t: usize, w: &Nf4Matrix, out: &mut [f32]) {
    linear_many_with(detect(), x, t, &[w], &mut [out])
}

/// [`linear`] of one `x` through several matrices of its width at once (a layer's q, k, v; its
/// gate and up): `outs[i] [t, ws[i].rows]`. One parallel loop over all their rows instead of
/// one per matrix: a decode step's small products (k and v are 192 rows for SmolLM2, ~10 µs)
/// each paid a fork and a join, and a loop of a few tasks left a thread idle at its end.
pub fn linear_many(x: &[f32], t: usize, ws: &[&Nf4Matrix], outs: &mut [&mut [f32]]) {
    linear_many_with(detect(), x, t, ws, outs)
}

/// The portable kernel only (tests compare the SIMD kernels with it).
pub fn linear_portable(x: &[f32], t: usize, w: &Nf4Matrix, out: &mut [f32]) {
    linear_many_with(Isa::Portable, x, t, &[w], &mut [out])
}

fn linear_many_with(isa: Isa, x: &[f32], t: usize, ws: &[&Nf4Matrix], outs: &mut [&mut [f32]]) {
    assert_eq!(ws.len(), outs.len(), "one output per matrix");
    let Some(k) = ws.first().map(|w| w.cols) else { return };
    assert!((1..=MAX_ROWS).contains(&t), "fused NF4 GEMV takes 1..={MAX_ROWS} rows, got {t}");
    assert_eq!(x.len(), t * k, "x is not [t, k]");
    for (w, out) in ws.iter().zip(outs.iter()) {
        let n = w.rows;
        assert!(supports(w), "fused NF4 GEMV: cols {} / blocksize {} not supported", w.cols, w.blocksize);
        assert_eq!(w.cols, k, "matrices of different widths");
        assert_eq!(out.len(), t * n, "out is not [t, n]");
        assert_eq!(w.packed.len(), n * k / 2, "packed is not [n, k / 2]");
        assert_eq!(w.absmax.len(), n * k / w.blocksize, "absmax is not one per block");
    }
    let xd = deinterleave(x, t, k);
    // One task computes ROWS_PER_TASK output columns of one matrix for all t rows into its
    // [rows, t] block of that matrix's `cols`; the blocks are scattered into out [t, n] at the
    // end (for t = 1 that is a plain copy).
    let mut cols: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; w.rows * t]).collect();
    let tasks: Vec<(&Nf4Matrix, usize, &mut [f32])> = ws
        .iter()
        .zip(cols.iter_mut())
        .flat_map(|(&w, c)| c.chunks_mut(ROWS_PER_TASK * t).enumerate().map(move |(ci, chunk)| (w, ci * ROWS_PER_TASK, chunk)))
        .collect();
    tasks.into_par_iter().for_each(|(w, r0, chunk)| task(isa, &xd, t, w, r0, chunk));
    for (c, out) in cols.iter().zip(outs.iter_mut()) {
        if t == 1 {
            out.copy_from_slice(c);
        } else {
            let n = c.len() / t;
            for j in 0..n {
                for ti in 0..t {
                    out[ti * n + j] = c[j * t + ti];
                }
            }
        }
    }
}

/// Rows `r0 .. r0 + chunk.len() / t` of `w` against the `t` de-interleaved activation rows
/// `xd [t, k]`, into `chunk [rows, t]`.
fn task(isa: Isa, xd: &[f32], t: usize, w: &Nf4Matrix, r0: usize, chunk: &mut [f32]) {
    let k = w.cols;
    let row_bytes = k / 2;
    let blocks_per_row = k / w.blocksize;
    // Columns per pass: a task runs its rows over one chunk of k, then the next, so the t
    // activation rows of a chunk (t * K_CHUNK * 4 bytes, 16 KB at t = 4) stay in L1 while the
    // weights stream; with whole rows, 4 rows of x at k = 4096 (64 KB) spill to L2.
    let chunk_len = w.blocksize * (K_CHUNK / w.blocksize).max(1);
    let rows = chunk.len() / t;
    let mut acc = [[0f32; MAX_ROWS]; ROWS_PER_TASK];
    for c0 in (0..k).step_by(chunk_len) {
        let c1 = (c0 + chunk_len).min(k);
        // Offsets into x stay relative to c0: the kernels index xd[ti * k + e] for e < c1 - c0.
        let xd = &xd[c0..];
        #[cfg(target_arch = "x86_64")]
        if let (Isa::Avx512, 1) = (isa, t) {
            for jj in (0..rows).step_by(16) {
                let m = 16.min(rows - jj);
                // SAFETY: Avx512 is chosen only where the CPU has AVX-512F; rows r0 + jj ..
                // r0 + jj + m <= n (this task's rows); c0 < c1 <= k, whole blocks; xd, from
                // c0, holds k - c0 >= c1 - c0 activations; packed and absmax are [n, k/2]
                // and [n, k/blocksize] (asserted by the caller).
                unsafe { x86::rows16_t1_avx512(w, xd, r0 + jj, c0, c1, &mut acc[jj..jj + m]) };
            }
            continue;
        }
        for (jj, a) in acc.iter_mut().enumerate().take(rows) {
            let j = r0 + jj;
            let packed = &w.packed[j * row_bytes + c0 / 2..j * row_bytes + c1 / 2];
            let absmax = &w.absmax[j * blocks_per_row + c0 / w.blocksize..j * blocks_per_row + c1 / w.blocksize];
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: Avx512 is chosen only where the CPU has AVX-512F; packed holds
                // (c1 - c0) / 2 bytes, absmax (c1 - c0) / blocksize scales, and xd, from c0,
                // (t - 1) * k + (k - c0) >= (t - 1) * k + (c1 - c0) activations.
                Isa::Avx512 => unsafe { x86::row_avx512(packed, absmax, &w.code, xd, t, k, w.blocksize, a) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: Avx2 is chosen only where the CPU has AVX2 and FMA; lengths as above.
                Isa::Avx2 => unsafe { x86::row_avx2(packed, absmax, &w.code, xd, t, k, w.blocksize, a) },
                Isa::Portable => row_portable(packed, absmax, &w.code, xd, t, k, w.blocksize, a),
            }
        }
    }
    for (o, a) in chunk.chunks_exact_mut(t).zip(&acc) {
        o.copy_from_slice(&a[..t]);
    }
}

/// One weight row (a run of whole blocks) against `t` de-interleaved activation rows (row stride
/// `k`), adding into `acc`. The SIMD kernels below do the same.
#[allow(clippy::too_many_arguments)]
fn row_portable(
    packed: &[u8],
    absmax: &[f32],
    code: &[f32; 16],
    xd: &[f32],
    t: usize,
    k: usize,
    blocksize: usize,
    acc: &mut [f32; MAX_ROWS],
) {
    for (b, (bytes, &scale)) in packed.chunks_exact(blocksize / 2).zip(absmax).enumerate() {
        let e0 = b * blocksize;
        for (ti, a) in acc.iter_mut().enumerate().take(t) {
            let x = &xd[ti * k + e0..ti * k + e0 + blocksize];
            let mut block = 0f32;
            for (g, xg) in bytes.chunks_exact(GROUP / 2).zip(x.chunks_exact(GROUP)) {
                let (xe, xo) = xg.split_at(GROUP / 2);
                for i in 0..GROUP / 2 {
                    block += code[(g[i] >> 4) as usize] * xe[i] + code[(g[i] & 0xf) as usize] * xo[i];
                }
            }
            *a += scale * block;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{GROUP, MAX_ROWS};
    use std::arch::x86_64::*;

    /// One activation row against up to 16 consecutive weight rows `j0 .. j0 + acc.len()` over
    /// columns `c0 .. c1`, each row's sum added to its `acc[..][0]`: the `row_avx512_n::<1>`
    /// loop for each row, without a call per row, and the 16 rows' vectors reduced together
    /// (`reduce16`) instead of one horizontal sum each (a row of 576 columns is only 18 groups,
    /// so a call and a reduction per row cost about a fifth of the kernel).
    ///
    /// # Safety
    /// AVX-512F; `acc.len() <= 16`; rows `j0 + acc.len() <= w.rows`; `c0 < c1 <= w.cols`, both
    /// multiples of `w.blocksize` (a multiple of 32); `xd` holds `c1 - c0` de-interleaved
    /// activations from column `c0`; `w.packed`, `w.absmax` are `[rows, cols / 2]` and
    /// `[rows, cols / blocksize]`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn rows16_t1_avx512(w: &super::Nf4Matrix, xd: &[f32], j0: usize, c0: usize, c1: usize, acc: &mut [[f32; MAX_ROWS]]) {
        let (k, bs) = (w.cols, w.blocksize);
        let (row_bytes, blocks_per_row) = (k / 2, k / bs);
        let (groups_per_block, blocks) = (bs / GROUP, (c1 - c0) / bs);
        // SAFETY (all loads): row j's bytes of columns c0..c1 are packed[j row_bytes + c0/2 ..
        // + (c1 - c0)/2], its scales absmax[j blocks_per_row + c0/bs .. + blocks], and element e
        // < c1 - c0 of xd is read; all within the slices per the contract.
        unsafe {
            let lut = _mm512_loadu_ps(w.code.as_ptr());
            let px = xd.as_ptr();
            let mut totals = [_mm512_setzero_ps(); 16];
            for (r, total) in totals.iter_mut().enumerate().take(acc.len()) {
                let pp = w.packed.as_ptr().add((j0 + r) * row_bytes + c0 / 2);
                let pa = w.absmax.as_ptr().add((j0 + r) * blocks_per_row + c0 / bs);
                crate::backend::cpu::matmul::prefetch_ahead(pp, (c1 - c0) / 2);
                crate::backend::cpu::matmul::prefetch_ahead(pa as *const u8, 4 * blocks);
                // The row's sum in a local, stored once (`totals` may live on the stack).
                let mut row_total = _mm512_setzero_ps();
                for b in 0..blocks {
                    let mut hi_acc = _mm512_setzero_ps();
                    let mut lo_acc = _mm512_setzero_ps();
                    for g in 0..groups_per_block {
                        let e0 = (b * groups_per_block + g) * GROUP;
                        let d = _mm512_cvtepu8_epi32(_mm_loadu_si128(pp.add(e0 / 2) as *const __m128i));
                        hi_acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32::<4>(d), lut), _mm512_loadu_ps(px.add(e0)), hi_acc);
                        lo_acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(d, lut), _mm512_loadu_ps(px.add(e0 + 16)), lo_acc);
                    }
                    row_total = _mm512_fmadd_ps(_mm512_add_ps(hi_acc, lo_acc), _mm512_set1_ps(*pa.add(b)), row_total);
                }
                *total = row_total;
            }
            let mut sums = [0f32; 16];
            _mm512_storeu_ps(sums.as_mut_ptr(), crate::backend::cpu::simd::reduce16(&totals));
            for (a, s) in acc.iter_mut().zip(sums) {
                a[0] += s;
            }
        }
    }

    /// AVX-512: per 16 packed bytes, zero-extend to 16 dwords `d`; `vpermps` reads only the low
    /// 4 bits of each index, so `d >> 4` picks the high-nibble levels and `d` itself the low.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn row_avx512(
        packed: &[u8],
        absmax: &[f32],
        code: &[f32; 16],
        xd: &[f32],
        t: usize,
        k: usize,
        blocksize: usize,
        acc: &mut [f32; MAX_ROWS],
    ) {
        // SAFETY: forwarded from the caller; T = t.
        unsafe {
            match t {
                1 => row_avx512_n::<1>(packed, absmax, code, xd, k, blocksize, acc),
                2 => row_avx512_n::<2>(packed, absmax, code, xd, k, blocksize, acc),
                3 => row_avx512_n::<3>(packed, absmax, code, xd, k, blocksize, acc),
                _ => row_avx512_n::<4>(packed, absmax, code, xd, k, blocksize, acc),
            }
        }
    }

    /// `row_avx512` for `T` activation rows: with `T` a constant the per-row accumulators are
    /// whole registers (with a run-time `t` they were arrays on the stack, and every FMA's
    /// accumulator went through a store and a reload). hi and lo nibbles accumulate separately,
    /// two independent FMA chains per row.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn row_avx512_n<const T: usize>(
        packed: &[u8],
        absmax: &[f32],
        code: &[f32; 16],
        xd: &[f32],
        k: usize,
        blocksize: usize,
        acc: &mut [f32; MAX_ROWS],
    ) {
        let lut = _mm512_loadu_ps(code.as_ptr());
        let mut total = [_mm512_setzero_ps(); T];
        let groups_per_block = blocksize / GROUP;
        let px = xd.as_ptr();
        for (b, &scale) in absmax.iter().enumerate() {
            let mut block_hi = [_mm512_setzero_ps(); T];
            let mut block_lo = [_mm512_setzero_ps(); T];
            for g in 0..groups_per_block {
                let e0 = (b * groups_per_block + g) * GROUP;
                // SAFETY: e0 < absmax.len() * blocksize = 2 * packed.len() (the caller's slices), so
                // e0 / 2 + 16 <= packed.len().
                let d = _mm512_cvtepu8_epi32(_mm_loadu_si128(packed.as_ptr().add(e0 / 2) as *const __m128i));
                let hi = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(d), lut);
                let lo = _mm512_permutexvar_ps(d, lut);
                for ti in 0..T {
                    // SAFETY: ti * k + e0 + 32 <= (t - 1) * k + 2 * packed.len() <= xd.len() (caller).
                    let xe = _mm512_loadu_ps(px.add(ti * k + e0));
                    let xo = _mm512_loadu_ps(px.add(ti * k + e0 + 16));
                    block_hi[ti] = _mm512_fmadd_ps(hi, xe, block_hi[ti]);
                    block_lo[ti] = _mm512_fmadd_ps(lo, xo, block_lo[ti]);
                }
            }
            let s = _mm512_set1_ps(scale);
            for ti in 0..T {
                total[ti] = _mm512_fmadd_ps(_mm512_add_ps(block_hi[ti], block_lo[ti]), s, total[ti]);
            }
        }
        for ti in 0..T {
            acc[ti] += _mm512_reduce_add_ps(total[ti]);
        }
    }

    /// AVX2: 8 dwords at a time; the low 8 levels and the high 8 levels are each one `vpermps`
    /// (index bits 0–2), and bit 3 of the nibble, shifted into the sign bit, blends them.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn row_avx2(
        packed: &[u8],
        absmax: &[f32],
        code: &[f32; 16],
        xd: &[f32],
        t: usize,
        k: usize,
        blocksize: usize,
        acc: &mut [f32; MAX_ROWS],
    ) {
        let lut_lo = _mm256_loadu_ps(code.as_ptr());
        let lut_hi = _mm256_loadu_ps(code.as_ptr().add(8));
        let mut total = [_mm256_setzero_ps(); MAX_ROWS];
        let groups_per_block = blocksize / GROUP;
        let px = xd.as_ptr();
        for (b, &scale) in absmax.iter().enumerate() {
            let mut block = [_mm256_setzero_ps(); MAX_ROWS];
            for g in 0..groups_per_block {
                let e0 = (b * groups_per_block + g) * GROUP;
                for half in 0..2 {
                    // 8 packed bytes: elements e0 + 16 * half .. + 16.
                    // SAFETY: e0 / 2 + 8 * half + 8 <= e0 / 2 + 16 <= packed.len() (as in row_avx512).
                    let raw = _mm_loadl_epi64(packed.as_ptr().add(e0 / 2 + 8 * half) as *const __m128i);
                    let d = _mm256_cvtepu8_epi32(raw);
                    let dh = _mm256_srli_epi32::<4>(d);
                    // High nibble: bit 3 of d >> 4 is bit 7 of d; low nibble: bit 3 of d.
                    let hi = _mm256_blendv_ps(
                        _mm256_permutevar8x32_ps(lut_lo, dh),
                        _mm256_permutevar8x32_ps(lut_hi, dh),
                        _mm256_castsi256_ps(_mm256_slli_epi32::<24>(d)),
                    );
                    let lo = _mm256_blendv_ps(
                        _mm256_permutevar8x32_ps(lut_lo, d),
                        _mm256_permutevar8x32_ps(lut_hi, d),
                        _mm256_castsi256_ps(_mm256_slli_epi32::<28>(d)),
                    );
                    for (ti, acc_t) in block.iter_mut().enumerate().take(t) {
                        // SAFETY: ti * k + e0 + 8 * half + 24 <= (t - 1) * k + 2 * packed.len() <= xd.len().
                        let base = px.add(ti * k + e0 + 8 * half);
                        let xe = _mm256_loadu_ps(base);
                        let xo = _mm256_loadu_ps(base.add(GROUP / 2));
                        *acc_t = _mm256_fmadd_ps(hi, xe, _mm256_fmadd_ps(lo, xo, *acc_t));
                    }
                }
            }
            let s = _mm256_set1_ps(scale);
            for ti in 0..t {
                total[ti] = _mm256_fmadd_ps(block[ti], s, total[ti]);
            }
        }
        for ti in 0..t {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), total[ti]);
            acc[ti] += lanes.iter().sum::<f32>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::matmul;
    use crate::quant::Nf4Tensor;

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    fn check(isa: Isa, what: &str) {
        for (t, n, k) in [(1, 77, 576), (2, 130, 128), (3, 65, 1536), (4, 200, 64), (1, 1, 64)] {
            let w = Nf4Tensor::quantize(&rand_vec(n * k, 1 + n as u64), &[n, k], true);
            let m = Nf4Matrix::new(&w).unwrap();
            assert!(supports(&m));
            let x = rand_vec(t * k, 2 + t as u64);
            let mut got = vec![f32::NAN; t * n];
            linear_many_with(isa, &x, t, &[&m], &mut [&mut got]);
            let mut want = vec![0.0; t * n];
            matmul::linear(&x, t, k, &w.dequantize(), n, &mut want);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{what} [{t}, {n}, {k}] [{i}]: {g} vs {w}");
            }
        }
    }

    #[test]
    fn portable_matches_dense_matmul_of_the_dequantized_matrix() {
        check(Isa::Portable, "portable");
    }

    #[test]
    fn simd_kernels_match_dense_matmul_where_the_cpu_has_them() {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                check(Isa::Avx512, "avx512");
            } else {
                eprintln!("SKIPPED avx512 kernel: the CPU has no AVX-512F");
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                check(Isa::Avx2, "avx2");
            } else {
                eprintln!("SKIPPED avx2 kernel: the CPU has no AVX2+FMA");
            }
        }
        // Whatever the CPU, the dispatching entry point agrees too.
        check(detect(), "detected");
    }

    #[test]
    fn many_matrices_at_once_match_one_at_a_time() {
        for t in [1, 3] {
            let k = 128;
            let ms: Vec<Nf4Matrix> = [70usize, 33, 200]
                .iter()
                .map(|&n| Nf4Matrix::new(&Nf4Tensor::quantize(&rand_vec(n * k, 7 + n as u64), &[n, k], true)).unwrap())
                .collect();
            let x = rand_vec(t * k, 11);
            let mut many: Vec<Vec<f32>> = ms.iter().map(|m| vec![f32::NAN; t * m.rows]).collect();
            let mut outs: Vec<&mut [f32]> = many.iter_mut().map(|v| v.as_mut_slice()).collect();
            linear_many(&x, t, &ms.iter().collect::<Vec<_>>(), &mut outs);
            for (m, got) in ms.iter().zip(&many) {
                let mut want = vec![f32::NAN; t * m.rows];
                linear(&x, t, m, &mut want);
                assert_eq!(got, &want, "t {t}, {} rows", m.rows);
            }
        }
    }

    #[test]
    fn unsupported_layouts_are_reported() {
        let w = Nf4Tensor::quantize(&rand_vec(100 * 77, 3), &[100, 77], false);
        assert!(!supports(&Nf4Matrix::new(&w).unwrap()));
    }
}
