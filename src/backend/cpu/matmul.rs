//! Dense f32 matmul for linear layers: `out [t, n] = x [t, k] · wᵀ` with `w [n, k]` row-major
//! (the HF layout). Few rows (decode) take a GEMV path that streams each weight row once and is
//! bound by memory bandwidth; many rows (prefill) go to the `gemm` crate's blocked kernels. Both
//! run at the level `isa::current` chose (`simd`, `gemm`).

use rayon::prelude::*;

use super::isa::{self, Level};
use super::simd::{self, dispatch, Elem, Simd};

/// Up to this many rows (a decode step of up to 16 sequences), each weight row is read once and
/// dotted with every x row. The `gemm` crate packs all of W on every call, which at these row
/// counts costs more than the product: a step of 8 sequences spent ~half its time packing (perf),
/// 155 ms per token at the old bound of 4 rows, 73 ms at 16 (in-process `lorafleet bench`).
pub(crate) const GEMV_MAX_ROWS: usize = 16;
/// Weight rows per rayon task on the GEMV path (32 rows of 576 f32 = 74 KB: fits L2).
const GEMV_ROWS_PER_TASK: usize = 32;

/// [`linear`] into a new `[t, n]` buffer. On the GEMM path the buffer is never zeroed first:
/// `gemm` writes every element without reading `dst`, so a fresh allocation goes straight to it
/// (a `vec![0.0; ..]` would cost a serial memset of the whole output: the heap reuses freed
/// blocks, see `heap`, so calloc cannot hand out kernel-zeroed pages).
pub fn linear_new(x: &[f32], t: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    assert_eq!(x.len(), t * k, "x is not [t, k]");
    assert_eq!(w.len(), n * k, "w is not [n, k]");
    if t <= GEMV_MAX_ROWS || n == 0 {
        let mut out = vec![0.0; t * n];
        linear(x, t, k, w, n, &mut out);
        return out;
    }
    let mut out = Vec::<f32>::with_capacity(t * n);
    // SAFETY: `out` has capacity for t * n f32; gemm with read_dst = false (the 7th argument)
    // writes each of the t * n elements of dst [t, n] (row stride n, col stride 1) through the
    // raw pointer and reads none, so all are initialised before set_len. The inputs are the
    // buffers checked above, with the strides of `linear`.
    unsafe {
        gemm_f32_raw(out.as_mut_ptr(), n, x, t, k, w, n);
        out.set_len(t * n);
    }
    out
}

/// `dst [t, n] = x [t, k] · wᵀ` through `gemm`, `dst` not read; dst's rows are `dst_stride`
/// apart (`n` for a whole output, wider for a block of columns of one).
///
/// # Safety
/// `dst` must be valid for writes of `t` rows of `n` f32, `dst_stride >= n` apart, and not overlap
/// `x` or `w`; `x` is `[t, k]`, `w` is `[n, k]`.
pub(crate) unsafe fn gemm_f32_raw(dst: *mut f32, dst_stride: usize, x: &[f32], t: usize, k: usize, w: &[f32], n: usize) {
    debug_assert!(x.len() == t * k && w.len() == n * k && dst_stride >= n);
    // SAFETY: the caller's contract: dst [t, n] row-major (row stride dst_stride, col stride 1),
    // lhs x [t, k] (row stride k), rhs wᵀ [k, n] read from w [n, k] (row stride 1, col stride k).
    unsafe {
        super::gemm::gemm_f32(
            isa::current(),
            t,
            n,
            k,
            dst,
            1,
            dst_stride as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            gemm_common::Parallelism::Rayon(rayon::current_num_threads()),
        )
    }
}

/// [`linear`] always through the `gemm` crate (what rows above `GEMV_MAX_ROWS` take): for the
/// benchmarks' ratio of the GEMV path to it.
pub fn linear_gemm(x: &[f32], t: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    assert!(x.len() == t * k && w.len() == n * k && out.len() == t * n, "linear_gemm: shapes differ");
    if t > 0 && n > 0 {
        // SAFETY: out is [t, n] (checked above), a unique borrow, so it cannot overlap x or w.
        unsafe { gemm_f32_raw(out.as_mut_ptr(), n, x, t, k, w, n) }
    }
}

/// `out [t, n] = x [t, k] · wᵀ` at the level the process runs.
pub fn linear(x: &[f32], t: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), t * k, "x is not [t, k]");
    assert_eq!(w.len(), n * k, "w is not [n, k]");
    assert_eq!(out.len(), t * n, "out is not [t, n]");
    if t == 0 || n == 0 {
        return;
    }
    if t <= GEMV_MAX_ROWS {
        gemv(isa::current(), x, t, k, w, n, out);
    } else {
        // SAFETY: out is [t, n] (checked above), a unique borrow, so it cannot overlap x or w.
        unsafe { gemm_f32_raw(out.as_mut_ptr(), n, x, t, k, w, n) }
    }
}

/// The GEMV path, `t <= GEMV_MAX_ROWS` rows (any count works), for weights `w [n, k]` stored as
/// f32 or bf16 (`Elem`), at `level`. Tasks of `GEMV_ROWS_PER_TASK` weight rows; one row of x
/// dots each weight row (`simd::dot`), more go through register blocks (`gemv_blocks`).
pub(crate) fn gemv<E: Elem>(level: Level, x: &[f32], t: usize, k: usize, w: &[E], n: usize, out: &mut [f32]) {
    assert!(x.len() == t * k && w.len() == n * k && out.len() == t * n, "gemv: shapes differ");
    if t == 0 || n == 0 {
        return;
    }
    let task = |ci: usize, chunk: &mut [f32]| dispatch!(level, s => gemv_task(s, x, t, k, w, ci * GEMV_ROWS_PER_TASK, chunk));
    if t == 1 {
        // out [1, n] is already the task layout.
        out.par_chunks_mut(GEMV_ROWS_PER_TASK).enumerate().for_each(|(ci, chunk)| task(ci, chunk));
        return;
    }
    gemv_by_row_tasks(t, n, out, |j0, chunk| task(j0 / GEMV_ROWS_PER_TASK, chunk));
}

/// Weight rows `j0 .. j0 + chunk.len() / t` against the `t` rows of x, into `chunk [rows, t]`.
#[inline(always)]
fn gemv_task<S: Simd, E: Elem>(s: S, x: &[f32], t: usize, k: usize, w: &[E], j0: usize, chunk: &mut [f32]) {
    if t == 1 {
        for (jj, o) in chunk.iter_mut().enumerate() {
            let j = j0 + jj;
            *o = simd::dot(s, x, &w[j * k..(j + 1) * k]);
        }
    } else if S::LANES == 16 {
        gemv_blocks::<S, E, 4, 4>(s, x, t, k, w, j0, chunk)
    } else {
        gemv_blocks::<S, E, 4, 2>(s, x, t, k, w, j0, chunk)
    }
}

/// Several activation rows (a batched decode step) in blocks of `R` weight rows × `C` x rows,
/// `R · C == S::LANES` running sums reduced together at the end (`reduce_lanes`): each weight
/// vector loaded (and widened) serves `C` x rows, where the per-pair dot loaded one weight and one
/// x vector per FMA and reduced each pair on its own. 4 × 4 on AVX-512 (16 accumulators of its
/// 32 registers), 4 × 2 on the 16-register levels. Edge blocks repeat the last row and drop its
/// sums.
#[inline(always)]
fn gemv_blocks<S: Simd, E: Elem, const R: usize, const C: usize>(s: S, x: &[f32], t: usize, k: usize, w: &[E], j0: usize, chunk: &mut [f32]) {
    debug_assert_eq!(R * C, S::LANES);
    let rows = chunk.len() / t;
    for jb in (0..rows).step_by(R) {
        let wr: [&[E]; R] = std::array::from_fn(|r| {
            let j = j0 + (jb + r).min(rows - 1);
            &w[j * k..(j + 1) * k]
        });
        for tb in (0..t).step_by(C) {
            let xr: [&[f32]; C] = std::array::from_fn(|c| {
                let ti = (tb + c).min(t - 1);
                &x[ti * k..(ti + 1) * k]
            });
            let sums = block::<S, E, R, C>(s, xr, wr, k);
            for r in 0..R.min(rows - jb) {
                for c in 0..C.min(t - tb) {
                    chunk[(jb + r) * t + tb + c] = sums[r * C + c];
                }
            }
        }
    }
}

/// No closures with vector operations in the kernels (`array::from_fn` and the like): a call the
/// compiler keeps would not be compiled for the level's instructions (`simd::dispatch!`).
///
/// `sums[r * C + c] = w[r] · x[c]` over `k` values: `R · C` accumulators, each weight row
/// prefetched 4 KB ahead (as `simd::dot`), the sums reduced by one `reduce_lanes`.
#[inline(always)]
fn block<S: Simd, E: Elem, const R: usize, const C: usize>(s: S, x: [&[f32]; C], w: [&[E]; R], k: usize) -> [f32; 16] {
    assert!(x.iter().all(|r| r.len() >= k) && w.iter().all(|r| r.len() >= k), "block: rows shorter than k");
    let (px, pw) = (x.map(|r| r.as_ptr()), w.map(|r| r.as_ptr()));
    let (l, size) = (S::LANES, std::mem::size_of::<E>());
    let ahead = 4096 / size;
    let mut acc = [[s.zero(); C]; R];
    let mut i = 0;
    // SAFETY (all loads): i + l <= k, resp. the last k - i < l values; every row holds k values
    // (asserted). A prefetch never faults.
    unsafe {
        while i + l <= k {
            let mut xv = [s.zero(); C];
            for c in 0..C {
                xv[c] = s.load(px[c].add(i));
            }
            for r in 0..R {
                if (i * size) % 64 == 0 {
                    s.prefetch(pw[r].wrapping_add(i + ahead) as *const u8);
                }
                let wv = E::load(s, pw[r].add(i));
                for c in 0..C {
                    acc[r][c] = s.fma(wv, xv[c], acc[r][c]);
                }
            }
            i += l;
        }
        if i < k {
            let mut xv = [s.zero(); C];
            for c in 0..C {
                xv[c] = s.load_first(px[c].add(i), k - i);
            }
            for r in 0..R {
                let wv = E::load_first(s, pw[r].add(i), k - i);
                for c in 0..C {
                    acc[r][c] = s.fma(wv, xv[c], acc[r][c]);
                }
            }
        }
    }
    let mut flat = [s.zero(); 16];
    for r in 0..R {
        for c in 0..C {
            flat[r * C + c] = acc[r][c];
        }
    }
    let mut sums = [0f32; 16];
    // SAFETY: sums holds 16 >= LANES floats.
    unsafe { s.store(sums.as_mut_ptr(), s.reduce_lanes(&flat[..R * C])) };
    sums
}

/// The GEMV loop of formats without a register-block kernel: `out [t, n]` from tasks of
/// `GEMV_ROWS_PER_TASK` weight rows, `task(j0, chunk)` filling `chunk [rows, t]` for weight rows
/// `j0 ..` (each task owns a range of output columns; out is [t, n], so a task would write t
/// strided pieces: it writes a task-local block, scattered after).
pub(crate) fn gemv_by_row_tasks(t: usize, n: usize, out: &mut [f32], task: impl Fn(usize, &mut [f32]) + Sync) {
    let mut cols: Vec<f32> = vec![0.0; n * t]; // [n, t]
    cols.par_chunks_mut(GEMV_ROWS_PER_TASK * t).enumerate().for_each(|(ci, chunk)| task(ci * GEMV_ROWS_PER_TASK, chunk));
    scatter_cols(&cols, t, n, out);
}

/// `out [t, n]` from the task-local layout `cols [n, t]`.
fn scatter_cols(cols: &[f32], t: usize, n: usize, out: &mut [f32]) {
    for j in 0..n {
        for ti in 0..t {
            out[ti * n + j] = cols[j * t + ti];
        }
    }
}

/// One activation row's GEMV (`out [n]`, a decode step of one sequence) for kernels that take
/// `group` weight rows per call (`rows(j0, o)` fills `o`, at most `group` values, for rows
/// `j0 ..`): tasks of 64 rows. The kernels reduce their rows' vectors together
/// (`Simd::reduce_lanes`, `group` = the level's lanes) rather than one horizontal sum and one call
/// per row.
pub(crate) fn gemv1_by_row_groups(out: &mut [f32], group: usize, rows: impl Fn(usize, &mut [f32]) + Sync) {
    const ROWS_PER_TASK: usize = 64;
    out.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(ci, o)| {
        for (gi, og) in o.chunks_mut(group).enumerate() {
            rows(ci * ROWS_PER_TASK + gi * group, og);
        }
    });
}

/// Dot product at the level the process runs.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_at(isa::current(), a, b)
}

/// Dot product at `level`.
#[inline]
pub fn dot_at(level: Level, a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    dispatch!(level, s => simd::dot(s, a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn reference(x: &[f32], t: usize, k: usize, w: &[f32], n: usize) -> Vec<f64> {
        let mut o = vec![0f64; t * n];
        for i in 0..t {
            for j in 0..n {
                o[i * n + j] = (0..k).map(|l| x[i * k + l] as f64 * w[j * k + l] as f64).sum();
            }
        }
        o
    }

    fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
        let num: f64 = got.iter().zip(want).map(|(a, b)| (*a as f64 - b).powi(2)).sum();
        let den: f64 = want.iter().map(|b| b * b).sum();
        (num / den).sqrt()
    }

    #[test]
    fn linear_matches_f64_reference_on_odd_shapes() {
        for &(t, k, n) in &[
            (1, 576, 192),
            (2, 576, 192),
            (3, 77, 100),
            (4, 1, 5),
            (5, 576, 1536),
            (7, 15, 33),
            (8, 576, 131),
            (13, 100, 67),
            (16, 64, 4),
            (17, 33, 65),
            (1, 1000, 7),
        ] {
            let x = rand_vec(t * k, 1 + t as u64);
            let w = rand_vec(n * k, 2 + n as u64);
            let mut out = vec![f32::NAN; t * n];
            linear(&x, t, k, &w, n, &mut out);
            let r = reference(&x, t, k, &w, n);
            assert!(rel_l2(&out, &r) < 1e-6, "shape {t}x{k}x{n}: rel {}", rel_l2(&out, &r));
        }
    }

    /// The GEMV path (one row: dots; more: register blocks) at every level the CPU has.
    #[test]
    fn gemv_matches_f64_at_every_level() {
        for &(t, k, n) in
            &[(1, 576, 192), (2, 576, 33), (3, 77, 100), (4, 1, 5), (5, 17, 9), (7, 15, 33), (8, 576, 131), (13, 100, 67), (16, 64, 4), (16, 9, 70)]
        {
            let x = rand_vec(t * k, 3 + t as u64);
            let w = rand_vec(n * k, 4 + n as u64);
            let r = reference(&x, t, k, &w, n);
            for level in isa::available() {
                let mut out = vec![f32::NAN; t * n];
                gemv(level, &x, t, k, &w, n, &mut out);
                assert!(rel_l2(&out, &r) < 1e-6, "{} {t}x{k}x{n}: rel {}", level.isa(), rel_l2(&out, &r));
            }
        }
    }

    #[test]
    fn dot_agrees_with_f64_at_every_level() {
        for n in [0usize, 1, 7, 16, 31, 33, 576, 1001] {
            let a = rand_vec(n, 3);
            let b = rand_vec(n, 4);
            let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            for level in isa::available() {
                let d = dot_at(level, &a, &b) as f64;
                assert!((want - d).abs() <= 1e-5 * (1.0 + want.abs()), "{} n {n}: {want} vs {d}", level.isa());
            }
        }
    }
}
