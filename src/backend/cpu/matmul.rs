//! Dense f32 matmul for linear layers: `out [t, n] = x [t, k] · wᵀ` with `w [n, k]` row-major
//! (the HF layout). Few rows (decode) take a GEMV path that streams each weight row once and is
//! bound by memory bandwidth; many rows (prefill) go to the `gemm` crate's blocked kernels.

use rayon::prelude::*;

/// Up to this many rows (a decode step of up to 16 sequences), each weight row is read once and
/// dotted with every x row. The `gemm` crate packs all of W on every call, which at these row
/// counts costs more than the product: a step of 8 sequences spent ~half its time packing (perf),
/// 155 ms per token at the old bound of 4 rows, 73 ms at 16 (in-process `lorafleet bench`).
pub(crate) const GEMV_MAX_ROWS: usize = 16;
/// Weight rows per rayon task on the GEMV path (64 rows of 576 f32 = 147 KB: fits L2).
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
        gemm::gemm(
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
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
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

pub fn linear(x: &[f32], t: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), t * k, "x is not [t, k]");
    assert_eq!(w.len(), n * k, "w is not [n, k]");
    assert_eq!(out.len(), t * n, "out is not [t, n]");
    if t == 0 || n == 0 {
        return;
    }
    if t <= GEMV_MAX_ROWS {
        gemv(x, t, k, w, n, out);
    } else {
        // SAFETY: out is [t, n] (checked above), a unique borrow, so it cannot overlap x or w.
        unsafe { gemm_f32_raw(out.as_mut_ptr(), n, x, t, k, w, n) }
    }
}

fn gemv(x: &[f32], t: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if t >= 2 && is_x86_feature_detected!("avx512f") {
            return gemv_blocked(x, t, k, w, n, out);
        }
    }
    gemv_by_rows(t, n, out, |j, ti| dot(&x[ti * k..(ti + 1) * k], &w[j * k..(j + 1) * k]));
}

/// Several activation rows (a batched decode step, 2 ..= `GEMV_MAX_ROWS`) through a weight
/// `w [n, k]` stored as f32 or bf16 (`x86::Lanes16`): blocks of 4 weight rows × 4 x rows, 16
/// running sums reduced together at the end. Each weight vector loaded (and widened) serves 4 x
/// rows (the per-pair dot loaded one weight and one x vector per FMA, and reduced each pair on
/// its own). Edge blocks repeat the last row and drop its sums. The caller checks AVX-512F.
#[cfg(target_arch = "x86_64")]
pub(crate) fn gemv_blocked<E: x86::Lanes16>(x: &[f32], t: usize, k: usize, w: &[E], n: usize, out: &mut [f32]) {
    assert!(x.len() == t * k && w.len() == n * k && out.len() == t * n, "gemv_blocked: shapes differ");
    assert!(is_x86_feature_detected!("avx512f"), "gemv_blocked: the CPU lacks AVX-512F");
    if t == 0 || n == 0 {
        return;
    }
    let mut cols: Vec<f32> = vec![0.0; n * t]; // [n, t]
    cols.par_chunks_mut(GEMV_ROWS_PER_TASK * t).enumerate().for_each(|(ci, chunk)| {
        let (j0, rows) = (ci * GEMV_ROWS_PER_TASK, chunk.len() / t);
        for jb in (0..rows).step_by(4) {
            let wr: [&[E]; 4] = std::array::from_fn(|r| {
                let j = j0 + (jb + r).min(rows - 1);
                &w[j * k..(j + 1) * k]
            });
            for tb in (0..t).step_by(4) {
                let xr: [&[f32]; 4] = std::array::from_fn(|c| {
                    let ti = (tb + c).min(t - 1);
                    &x[ti * k..(ti + 1) * k]
                });
                // SAFETY: the CPU has AVX-512F (asserted above); all eight rows hold k values.
                let sums = unsafe { x86::block4x4_avx512(xr, wr, k) };
                for r in 0..4.min(rows - jb) {
                    for c in 0..4.min(t - tb) {
                        chunk[(jb + r) * t + tb + c] = sums[r * 4 + c];
                    }
                }
            }
        }
    });
    scatter_cols(&cols, t, n, out);
}

/// The GEMV loop of every weight format: `out [t, n]`, `out[ti, j] = dot_row(j, ti)` (weight row
/// j against x row ti). Each task owns a range of output columns j; out is [t, n], so a task
/// would write t strided pieces: it computes into a task-local [rows, t] block, scattered after.
pub(crate) fn gemv_by_rows(t: usize, n: usize, out: &mut [f32], dot_row: impl Fn(usize, usize) -> f32 + Sync) {
    let mut cols: Vec<f32> = vec![0.0; n * t]; // [n, t]
    cols.par_chunks_mut(GEMV_ROWS_PER_TASK * t).enumerate().for_each(|(ci, chunk)| {
        let j0 = ci * GEMV_ROWS_PER_TASK;
        for (jj, o) in chunk.chunks_exact_mut(t).enumerate() {
            for (ti, o) in o.iter_mut().enumerate() {
                *o = dot_row(j0 + jj, ti);
            }
        }
    });
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
/// 16 weight rows per call (`rows16(j0, o)` fills `o`, at most 16 values, for rows `j0 ..`):
/// tasks of 64 rows, each 4 kernel calls. The kernels reduce their 16 rows' vectors together
/// (`simd::reduce16`) rather than one horizontal sum and one call per row.
pub(crate) fn gemv1_by_16_rows(out: &mut [f32], rows16: impl Fn(usize, &mut [f32]) + Sync) {
    const ROWS_PER_TASK: usize = 64;
    out.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(ci, o)| {
        for (gi, o16) in o.chunks_mut(16).enumerate() {
            rows16(ci * ROWS_PER_TASK + gi * 16, o16);
        }
    });
}

/// Asks for the cache lines of the `len` bytes that lie `PREFETCH_BYTES` after `p` (the weights
/// a GEMV kernel reads a few rows from now): weights that stream from memory outrun the hardware
/// prefetcher, which stops at each 4 KB page. A prefetch never faults, so the addresses may lie
/// past the matrix.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_ahead(p: *const u8, len: usize) {
    const PREFETCH_BYTES: usize = 4096;
    let mut off = 0;
    while off < len {
        // SAFETY: prefetch reads nothing architecturally and never faults, whatever the address
        // (wrapping_add computes it without creating an out-of-bounds reference).
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.wrapping_add(PREFETCH_BYTES + off) as *const i8) };
        off += 64;
    }
}

/// Dot product, SIMD where the CPU has it (checked at run time, so one binary runs anywhere).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { x86::dot_avx512(a, b) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { x86::dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

#[inline]
pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;
    /// How far ahead of the `b` row being read (`dot`'s weight) the AVX-512 dot prefetches:
    /// 4 KB. An f32 model (540 MB for SmolLM2) streams from memory at decode, and the hardware
    /// prefetcher stops at each 4 KB page; asking for the lines a page ahead kept more loads in
    /// flight (f32 decode +6%, 5 interleaved pairs, bench/RESULTS.md).
    const PREFETCH_FLOATS: usize = 1024;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY (all loads): i + 32 <= n, resp. i + 16 <= n, resp. the mask covers only i..n.
        while i + 32 <= n {
            // A prefetch never faults, so running past the row's end is harmless.
            _mm_prefetch::<_MM_HINT_T0>(pb.wrapping_add(i + PREFETCH_FLOATS) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(pb.wrapping_add(i + PREFETCH_FLOATS + 16) as *const i8);
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + 16)), _mm512_loadu_ps(pb.add(i + 16)), acc1);
            i += 32;
        }
        while i + 16 <= n {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = (1u32 << (n - i)) as u16 - 1;
            acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, pa.add(i)), _mm512_maskz_loadu_ps(m, pb.add(i)), acc1);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }

    /// A weight element the block kernel widens to f32, 16 lanes at a time: f32 itself, or bf16
    /// bits (`u16`, the upper half of an f32).
    pub trait Lanes16: Copy + Sync {
        /// 16 values at `p`.
        ///
        /// # Safety
        /// The CPU has AVX-512F; 16 values are readable at `p`.
        unsafe fn load16(p: *const Self) -> __m512;
        /// The first `len < 16` values at `p`, zero in the other lanes.
        ///
        /// # Safety
        /// The CPU has AVX-512F; `len` values are readable at `p`.
        unsafe fn load_first(p: *const Self, len: usize) -> __m512;
    }

    impl Lanes16 for f32 {
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load16(p: *const f32) -> __m512 {
            // SAFETY: the contract (16 readable f32 at p).
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load_first(p: *const f32, len: usize) -> __m512 {
            // SAFETY: the mask covers only the len readable values (the contract).
            unsafe { _mm512_maskz_loadu_ps(((1u32 << len) - 1) as u16, p) }
        }
    }

    impl Lanes16 for u16 {
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load16(p: *const u16) -> __m512 {
            // SAFETY: the contract (16 readable u16 at p: 32 bytes, unaligned load).
            let h = unsafe { _mm256_loadu_si256(p as *const __m256i) };
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load_first(p: *const u16, len: usize) -> __m512 {
            let mut tail = [0u16; 16];
            // SAFETY: len < 16 values readable at p (the contract) into a 16-value buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(p, tail.as_mut_ptr(), len);
                Self::load16(tail.as_ptr())
            }
        }
    }

    /// `sums[r * 4 + c] = w[r] · x[c]` for 4 weight rows and 4 activation rows of `k` values each:
    /// 16 accumulators (8 loads per 16 FMAs), each weight row prefetched 4 KB ahead as in
    /// `dot_avx512`, the 16 sums reduced by one `reduce16`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, and every row must hold at least `k` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn block4x4_avx512<E: Lanes16>(x: [&[f32]; 4], w: [&[E]; 4], k: usize) -> [f32; 16] {
        debug_assert!(x.iter().all(|r| r.len() >= k) && w.iter().all(|r| r.len() >= k));
        let (px, pw) = (x.map(|r| r.as_ptr()), w.map(|r| r.as_ptr()));
        let ahead = 4096 / std::mem::size_of::<E>();
        let mut acc = [_mm512_setzero_ps(); 16];
        let mut i = 0;
        // SAFETY (all loads): i + 16 <= k, resp. the last k - i < 16 values; every row holds k
        // values (the contract). A prefetch never faults.
        unsafe {
            while i + 16 <= k {
                let xv: [__m512; 4] = std::array::from_fn(|c| _mm512_loadu_ps(px[c].add(i)));
                for r in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(pw[r].wrapping_add(i + ahead) as *const i8);
                    let wv = E::load16(pw[r].add(i));
                    for c in 0..4 {
                        acc[r * 4 + c] = _mm512_fmadd_ps(wv, xv[c], acc[r * 4 + c]);
                    }
                }
                i += 16;
            }
            if i < k {
                let xv: [__m512; 4] = std::array::from_fn(|c| f32::load_first(px[c].add(i), k - i));
                for r in 0..4 {
                    let wv = E::load_first(pw[r].add(i), k - i);
                    for c in 0..4 {
                        acc[r * 4 + c] = _mm512_fmadd_ps(wv, xv[c], acc[r * 4 + c]);
                    }
                }
            }
            let mut sums = [0f32; 16];
            _mm512_storeu_ps(sums.as_mut_ptr(), crate::backend::cpu::simd::reduce16(&acc));
            sums
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY (all loads): i + 16 <= n, resp. i + 8 <= n.
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), acc1);
            i += 16;
        }
        while i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
        let v = _mm256_add_ps(acc0, acc1);
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), v);
        let mut s: f32 = lanes.iter().sum();
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }
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

    #[test]
    fn linear_matches_f64_reference_on_odd_shapes() {
        for &(t, k, n) in &[(1, 576, 192), (2, 576, 192), (3, 77, 100), (4, 1, 5), (5, 576, 1536), (7, 15, 33), (8, 576, 131), (13, 100, 67), (16, 64, 4), (17, 33, 65), (1, 1000, 7)] {
            let x = rand_vec(t * k, 1 + t as u64);
            let w = rand_vec(n * k, 2 + n as u64);
            let mut out = vec![f32::NAN; t * n];
            linear(&x, t, k, &w, n, &mut out);
            let r = reference(&x, t, k, &w, n);
            let num: f64 = out.iter().zip(&r).map(|(a, b)| (*a as f64 - b).powi(2)).sum();
            let den: f64 = r.iter().map(|b| b * b).sum();
            assert!((num / den).sqrt() < 1e-6, "shape {t}x{k}x{n}: rel {}", (num / den).sqrt());
        }
    }

    #[test]
    fn dot_paths_agree() {
        for n in [0usize, 1, 7, 16, 31, 33, 576, 1001] {
            let a = rand_vec(n, 3);
            let b = rand_vec(n, 4);
            let p = dot_portable(&a, &b);
            let d = dot(&a, &b);
            assert!((p - d).abs() <= 1e-5 * (1.0 + p.abs()), "n {n}: {p} vs {d}");
        }
    }
}
