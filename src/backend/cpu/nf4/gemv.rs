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
//! Kernels: written once over `simd::Simd` (16 nibbles → 16 floats with one `vpermps` over the
//! 16-entry table on AVX-512, two 8-entry `vpermps` and a blend on AVX2, table lookups on the
//! portable level), at the level `isa::current` chose. All need `cols % blocksize == 0` and `blocksize % 32 == 0` (every block
//! starts a 32-element group; bitsandbytes' 64 qualifies); `supports` says so, and other shapes
//! take the tiled path in `nf4.rs`.

use rayon::prelude::*;

use super::Nf4Matrix;
use crate::backend::cpu::isa::{self, Level};
use crate::backend::cpu::simd::{self, dispatch, Simd};

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

/// `out [t, w.rows] = x [t, w.cols] · wᵀ` for `1 <= t <= MAX_ROWS` and `supports(w)`.
pub fn linear(x: &[f32], t: usize, w: &Nf4Matrix, out: &mut [f32]) {
    linear_many_at(isa::current(), x, t, &[w], &mut [out])
}

/// [`linear`] of one `x` through several matrices of its width at once (a layer's q, k, v; its
/// gate and up): `outs[i] [t, ws[i].rows]`. One parallel loop over all their rows instead of
/// one per matrix: a decode step's small products (k and v are 192 rows for SmolLM2, ~10 µs)
/// each paid a fork and a join, and a loop of a few tasks left a thread idle at its end.
pub fn linear_many(x: &[f32], t: usize, ws: &[&Nf4Matrix], outs: &mut [&mut [f32]]) {
    linear_many_at(isa::current(), x, t, ws, outs)
}

/// [`linear_many`] at `level` (the tests and benches run every level the CPU has).
pub fn linear_many_at(level: Level, x: &[f32], t: usize, ws: &[&Nf4Matrix], outs: &mut [&mut [f32]]) {
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
    tasks.into_par_iter().for_each(|(w, r0, chunk)| dispatch!(level, s => task(s, &xd, t, w, r0, chunk)));
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
#[inline(always)]
fn task<S: Simd>(s: S, xd: &[f32], t: usize, w: &Nf4Matrix, r0: usize, chunk: &mut [f32]) {
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
        if t == 1 {
            for jj in (0..rows).step_by(S::LANES) {
                let m = S::LANES.min(rows - jj);
                // SAFETY: m <= LANES; rows r0 + jj .. r0 + jj + m <= n (this task's rows);
                // c0 < c1 <= k, whole blocks; xd, from c0, holds k - c0 >= c1 - c0 activations;
                // packed and absmax are [n, k/2] and [n, k/blocksize] (asserted by the caller).
                unsafe { rows_t1(s, w, xd, r0 + jj, c0, c1, &mut acc[jj..jj + m]) };
            }
            continue;
        }
        for (jj, a) in acc.iter_mut().enumerate().take(rows) {
            let j = r0 + jj;
            let packed = &w.packed[j * row_bytes + c0 / 2..j * row_bytes + c1 / 2];
            let absmax = &w.absmax[j * blocks_per_row + c0 / w.blocksize..j * blocks_per_row + c1 / w.blocksize];
            // SAFETY: packed holds (c1 - c0) / 2 bytes of whole groups, absmax (c1 - c0) /
            // blocksize scales, and xd, from c0, (t - 1) * k + (k - c0) >= (t - 1) * k +
            // (c1 - c0) activations.
            unsafe {
                match t {
                    2 => row_n::<S, 2>(s, packed, absmax, &w.code, xd, k, w.blocksize, a),
                    3 => row_n::<S, 3>(s, packed, absmax, &w.code, xd, k, w.blocksize, a),
                    _ => row_n::<S, 4>(s, packed, absmax, &w.code, xd, k, w.blocksize, a),
                }
            }
        }
    }
    for (o, a) in chunk.chunks_exact_mut(t).zip(&acc) {
        o.copy_from_slice(&a[..t]);
    }
}

/// One activation row against up to `LANES` consecutive weight rows `j0 .. j0 + acc.len()` over
/// columns `c0 .. c1`, each row's sum added to its `acc[..][0]`: the rows' vectors are reduced
/// together (`reduce_lanes`) instead of one horizontal sum each (a row of 576 columns is only 18
/// groups, so a call and a reduction per row cost about a fifth of the kernel). hi and lo
/// nibbles on separate FMA chains.
///
/// # Safety
/// `acc.len() <= S::LANES`; rows `j0 + acc.len() <= w.rows`; `c0 < c1 <= w.cols`, both
/// multiples of `w.blocksize` (a multiple of 32); `xd` holds `c1 - c0` de-interleaved
/// activations from column `c0`; `w.packed`, `w.absmax` are `[rows, cols / 2]` and
/// `[rows, cols / blocksize]`.
#[inline(always)]
unsafe fn rows_t1<S: Simd>(s: S, w: &Nf4Matrix, xd: &[f32], j0: usize, c0: usize, c1: usize, acc: &mut [[f32; MAX_ROWS]]) {
    let (k, bs, l) = (w.cols, w.blocksize, S::LANES);
    let (row_bytes, blocks_per_row) = (k / 2, k / bs);
    let (groups_per_block, blocks) = (bs / GROUP, (c1 - c0) / bs);
    let lut = s.lut16(&w.code);
    let px = xd.as_ptr();
    let mut totals = [s.zero(); 16];
    // SAFETY (all loads): row j's bytes of columns c0..c1 are packed[j row_bytes + c0/2 ..
    // + (c1 - c0)/2], its scales absmax[j blocks_per_row + c0/bs .. + blocks], and element e
    // < c1 - c0 of xd is read; all within the slices per the contract. A group of 32 elements
    // is 16 bytes: 16 / l loads of l bytes, their high nibbles against xd[e0 + h l ..], their
    // low ones against xd[e0 + 16 + h l ..].
    unsafe {
        for (r, total) in totals.iter_mut().enumerate().take(acc.len()) {
            let pp = w.packed.as_ptr().add((j0 + r) * row_bytes + c0 / 2);
            let pa = w.absmax.as_ptr().add((j0 + r) * blocks_per_row + c0 / bs);
            simd::prefetch_ahead(s, pp, (c1 - c0) / 2);
            simd::prefetch_ahead(s, pa as *const u8, 4 * blocks);
            // The row's sum in a local, stored once (`totals` may live on the stack).
            let mut row_total = s.zero();
            for b in 0..blocks {
                let (mut hi_acc, mut lo_acc) = (s.zero(), s.zero());
                for g in 0..groups_per_block {
                    let e0 = (b * groups_per_block + g) * GROUP;
                    for h in 0..GROUP / 2 / l {
                        let (hi, lo) = s.nf4_levels(lut, pp.add(e0 / 2 + h * l));
                        hi_acc = s.fma(hi, s.load(px.add(e0 + h * l)), hi_acc);
                        lo_acc = s.fma(lo, s.load(px.add(e0 + GROUP / 2 + h * l)), lo_acc);
                    }
                }
                row_total = s.fma(s.add(hi_acc, lo_acc), s.splat(*pa.add(b)), row_total);
            }
            *total = row_total;
        }
        let mut sums = [0f32; 16];
        s.store(sums.as_mut_ptr(), s.reduce_lanes(&totals[..l]));
        for (a, s) in acc.iter_mut().zip(sums) {
            a[0] += s;
        }
    }
}

/// One weight row (a run of whole blocks) against `T` de-interleaved activation rows (row stride
/// `k`), adding into `acc`. With `T` a constant the per-row accumulators are whole registers
/// (with a run-time `t` they were arrays on the stack, and every FMA's accumulator went through a
/// store and a reload); hi and lo nibbles accumulate separately, two independent FMA chains per
/// row. Each packed byte is decoded once for all `T` rows.
///
/// # Safety
/// `packed` holds whole groups (`absmax.len() * blocksize / 2` bytes, `blocksize % 32 == 0`);
/// `xd` holds `(T - 1) * k + 2 * packed.len()` activations.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn row_n<S: Simd, const T: usize>(
    s: S,
    packed: &[u8],
    absmax: &[f32],
    code: &[f32; 16],
    xd: &[f32],
    k: usize,
    blocksize: usize,
    acc: &mut [f32; MAX_ROWS],
) {
    let l = S::LANES;
    let lut = s.lut16(code);
    let mut total = [s.zero(); T];
    let groups_per_block = blocksize / GROUP;
    let (pp, px) = (packed.as_ptr(), xd.as_ptr());
    for (b, &scale) in absmax.iter().enumerate() {
        let mut block_hi = [s.zero(); T];
        let mut block_lo = [s.zero(); T];
        for g in 0..groups_per_block {
            let e0 = (b * groups_per_block + g) * GROUP;
            for h in 0..GROUP / 2 / l {
                // SAFETY: e0 < absmax.len() * blocksize = 2 * packed.len(), so e0 / 2 + 16 <=
                // packed.len(); ti * k + e0 + 32 <= (T - 1) * k + 2 * packed.len() <= xd.len()
                // (the contract).
                unsafe {
                    let (hi, lo) = s.nf4_levels(lut, pp.add(e0 / 2 + h * l));
                    for ti in 0..T {
                        let xe = s.load(px.add(ti * k + e0 + h * l));
                        let xo = s.load(px.add(ti * k + e0 + GROUP / 2 + h * l));
                        block_hi[ti] = s.fma(hi, xe, block_hi[ti]);
                        block_lo[ti] = s.fma(lo, xo, block_lo[ti]);
                    }
                }
            }
        }
        let sc = s.splat(scale);
        for ti in 0..T {
            total[ti] = s.fma(s.add(block_hi[ti], block_lo[ti]), sc, total[ti]);
        }
    }
    for ti in 0..T {
        acc[ti] += s.sum(total[ti]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::matmul;
    use crate::quant::Nf4Tensor;

    /// Test values in ±[0.025, 0.5), never zero (the crate's one generator).
    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        crate::rng::SplitMix64::new(seed).nonzero(n, 0.5)
    }

    fn check(level: Level, what: &str) {
        for (t, n, k) in [(1, 77, 576), (2, 130, 128), (3, 65, 1536), (4, 200, 64), (1, 1, 64)] {
            let w = Nf4Tensor::quantize(&rand_vec(n * k, 1 + n as u64), &[n, k], true);
            let m = Nf4Matrix::new(&w).unwrap();
            assert!(supports(&m));
            let x = rand_vec(t * k, 2 + t as u64);
            let mut got = vec![f32::NAN; t * n];
            linear_many_at(level, &x, t, &[&m], &mut [&mut got]);
            let mut want = vec![0.0; t * n];
            matmul::linear(&x, t, k, &w.dequantize(), n, &mut want);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{what} [{t}, {n}, {k}] [{i}]: {g} vs {w}");
            }
        }
    }

    #[test]
    fn every_level_matches_dense_matmul_of_the_dequantized_matrix() {
        for level in isa::available() {
            check(level, level.isa().name());
        }
    }

    #[test]
    fn many_matrices_at_once_match_one_at_a_time() {
        for t in [1, 3] {
            let k = 128;
            let ms: Vec<Nf4Matrix> =
                [70usize, 33, 200].iter().map(|&n| Nf4Matrix::new(&Nf4Tensor::quantize(&rand_vec(n * k, 7 + n as u64), &[n, k], true)).unwrap()).collect();
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
