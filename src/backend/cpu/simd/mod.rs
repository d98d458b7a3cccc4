//! One kernel body, three instruction sets. The CPU kernels are written once, generic over
//! [`Simd`] (a vector of `LANES` f32 and the operations they need), and [`dispatch!`] runs the
//! body at the level [`isa::current`](super::isa::current) chose:
//!
//! | level | type | lanes | built as |
//! |---|---|---:|---|
//! | `avx512` | [`Avx512`] | 16 | inside a `#[target_feature(enable = "avx512f,avx2,fma")]` function |
//! | `avx2` | [`Avx2`] | 8 | inside a `#[target_feature(enable = "avx2,fma")]` function |
//! | `portable` | [`Portable`] | 8 | plain Rust over `[f32; 8]`, vectorised by the compiler for the baseline target |
//!
//! The trait's methods are `#[inline(always)]`, and so is the closure `dispatch!` wraps the body
//! in, so the whole body is compiled inside the target-feature function of its level and each
//! method becomes its one or two instructions there (the approach of `pulp`, which `gemm` uses;
//! written here because the kernels need a few operations pulp does not have: the NF4 table
//! lookup, bf16 and i8 widening, a many-vector reduction, `scalef`).
//!
//! Also here: what every level shares on top of the trait: the vector `exp` (one polynomial for
//! all levels, within 2 ulp of `expf`), [`silu_mul`], [`dot`] over f32 or bf16 weights.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod portable;

#[cfg(target_arch = "x86_64")]
pub use avx2::Avx2;
#[cfg(target_arch = "x86_64")]
pub use avx512::Avx512;
pub use portable::{Portable, F8};

use super::isa::{self, Level};

/// A vector of `LANES` f32 and what the CPU kernels do with it. Implemented by [`Avx512`],
/// [`Avx2`] and [`Portable`]; a value of an x86 type exists only where the CPU has its
/// instructions (they are made by [`dispatch!`] from a checked [`Level`]), which is what makes
/// their safe methods sound.
///
/// Pointer methods are `unsafe`: the caller guarantees the memory they name.
pub trait Simd: Copy + Send + Sync + 'static {
    /// f32 per vector.
    const LANES: usize;
    /// Vector registers the level has (the kernels size their register blocks by it).
    const REGISTERS: usize;
    /// The vector of f32 lanes.
    type F: Copy;
    /// The 16 NF4 levels, held as [`Simd::nf4_levels`] wants them.
    type Lut16: Copy;

    /// All lanes 0.
    fn zero(self) -> Self::F;
    /// All lanes `x`.
    fn splat(self, x: f32) -> Self::F;
    /// Lane-wise a + b.
    fn add(self, a: Self::F, b: Self::F) -> Self::F;
    /// Lane-wise a - b.
    fn sub(self, a: Self::F, b: Self::F) -> Self::F;
    /// Lane-wise a * b.
    fn mul(self, a: Self::F, b: Self::F) -> Self::F;
    /// Lane-wise a / b.
    fn div(self, a: Self::F, b: Self::F) -> Self::F;
    /// Lane-wise maximum.
    fn max(self, a: Self::F, b: Self::F) -> Self::F;
    /// Lane-wise minimum.
    fn min(self, a: Self::F, b: Self::F) -> Self::F;
    /// `a * b + c` (fused on the x86 levels; a multiply and an add on the portable one).
    fn fma(self, a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// `c - a * b`.
    fn fnma(self, a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// Round to the nearest integer, ties to even (|x| < 2^22).
    fn round(self, a: Self::F) -> Self::F;
    /// `x · 2^n` for integral `n` in [-152, 130] (subnormal and infinite results as `ldexpf`
    /// gives them).
    fn scale_pow2(self, x: Self::F, n: Self::F) -> Self::F;
    /// `x` in the lanes where `x` is NaN, else `y`.
    fn keep_nan(self, x: Self::F, y: Self::F) -> Self::F;
    /// `[a0, b0, a1, b1, ...]`: its first `LANES` values and its last `LANES`.
    fn interleave(self, a: Self::F, b: Self::F) -> (Self::F, Self::F);
    /// The sum of the lanes.
    fn sum(self, a: Self::F) -> f32;
    /// The largest lane (NaN lanes ignored unless all are).
    fn max_lane(self, a: Self::F) -> f32;
    /// `a.len() == LANES` vectors in, lane `j` of the result the sum of the lanes of `a[j]`: many
    /// horizontal sums for about the price of one (a transpose-and-add tree).
    fn reduce_lanes(self, a: &[Self::F]) -> Self::F;

    /// # Safety
    /// `LANES` f32 readable at `p`.
    unsafe fn load(self, p: *const f32) -> Self::F;
    /// The first `len < LANES` values at `p`, zero in the other lanes.
    ///
    /// # Safety
    /// `len` f32 readable at `p`.
    unsafe fn load_first(self, p: *const f32, len: usize) -> Self::F;
    /// # Safety
    /// `LANES` f32 writable at `p`.
    unsafe fn store(self, p: *mut f32, a: Self::F);
    /// The first `len <= LANES` lanes to `p`.
    ///
    /// # Safety
    /// `len` f32 writable at `p`.
    unsafe fn store_first(self, p: *mut f32, a: Self::F, len: usize);
    /// `LANES` bf16 values (upper halves of f32) widened.
    ///
    /// # Safety
    /// `LANES` u16 readable at `p`.
    unsafe fn load_bf16(self, p: *const u16) -> Self::F;
    /// `LANES` signed bytes widened.
    ///
    /// # Safety
    /// `LANES` bytes readable at `p`.
    unsafe fn load_i8(self, p: *const i8) -> Self::F;
    /// The 16-entry table `code` in the form `lookup16` reads.
    fn lut16(self, code: &[f32; 16]) -> Self::Lut16;
    /// `LANES` packed NF4 bytes: (the levels of their high nibbles, of their low nibbles).
    ///
    /// # Safety
    /// `LANES` bytes readable at `p`.
    unsafe fn nf4_levels(self, lut: Self::Lut16, p: *const u8) -> (Self::F, Self::F);
    /// Asks for the cache line at `p` (never faults, whatever the address).
    fn prefetch(self, p: *const u8);
}

/// A weight element the kernels widen to f32 a vector at a time: f32 itself, or bf16 bits
/// (`u16`).
pub trait Elem: Copy + Send + Sync + 'static {
    /// # Safety
    /// `S::LANES` values readable at `p`.
    unsafe fn load<S: Simd>(s: S, p: *const Self) -> S::F;
    /// The first `len < S::LANES` values, zero in the other lanes.
    ///
    /// # Safety
    /// `len` values readable at `p`.
    unsafe fn load_first<S: Simd>(s: S, p: *const Self, len: usize) -> S::F;
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load<S: Simd>(s: S, p: *const f32) -> S::F {
        // SAFETY: the contract.
        unsafe { s.load(p) }
    }
    #[inline(always)]
    unsafe fn load_first<S: Simd>(s: S, p: *const f32, len: usize) -> S::F {
        // SAFETY: the contract.
        unsafe { s.load_first(p, len) }
    }
}

impl Elem for u16 {
    #[inline(always)]
    unsafe fn load<S: Simd>(s: S, p: *const u16) -> S::F {
        // SAFETY: the contract.
        unsafe { s.load_bf16(p) }
    }
    #[inline(always)]
    unsafe fn load_first<S: Simd>(s: S, p: *const u16, len: usize) -> S::F {
        let mut tail = [0u16; 16];
        debug_assert!(len < S::LANES && S::LANES <= 16);
        // SAFETY: len < LANES <= 16 values readable at p (the contract) into a 16-value buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(p, tail.as_mut_ptr(), len);
            s.load_bf16(tail.as_ptr())
        }
    }
}

/// Runs `$body` with `$s` bound to the [`Simd`] type of `$level` (an [`isa::Level`]), the body
/// compiled for that level's instructions. The body is an expression (a `return` in it leaves
/// the body, not the enclosing function).
///
/// ```ignore
/// let total = dispatch!(isa::current(), s => simd::dot(s, &a, &b));
/// ```
macro_rules! dispatch {
    ($level:expr, $s:ident => $body:expr) => {{
        #[allow(unused_imports)]
        use $crate::backend::cpu::simd::Simd as _;
        match $level.isa() {
            #[cfg(target_arch = "x86_64")]
            $crate::backend::cpu::isa::Isa::Avx512 => {
                // SAFETY: a Level exists only for a level the CPU supports (isa::Level::of).
                let $s = unsafe { $crate::backend::cpu::simd::Avx512::new_unchecked() };
                // The closure is made outside the unsafe block, so the body's own unsafe
                // operations still need (and say) their own.
                let body = $crate::backend::cpu::simd::closure(
                    #[inline(always)]
                    || $body,
                );
                // SAFETY: as above: the CPU has AVX-512F, AVX2 and FMA.
                unsafe { $crate::backend::cpu::simd::run_avx512(body) }
            }
            #[cfg(target_arch = "x86_64")]
            $crate::backend::cpu::isa::Isa::Avx2 => {
                // SAFETY: a Level exists only for a level the CPU supports (isa::Level::of).
                let $s = unsafe { $crate::backend::cpu::simd::Avx2::new_unchecked() };
                let body = $crate::backend::cpu::simd::closure(
                    #[inline(always)]
                    || $body,
                );
                // SAFETY: as above: the CPU has AVX2 and FMA.
                unsafe { $crate::backend::cpu::simd::run_avx2(body) }
            }
            _ => {
                let $s = $crate::backend::cpu::simd::Portable;
                $body
            }
        }
    }};
}
pub(crate) use dispatch;

/// The identity: lets `dispatch!` put `#[inline(always)]` on its closure (an attribute on a
/// closure is allowed in argument position only) while making it outside an `unsafe` block.
#[inline(always)]
pub fn closure<R, F: FnOnce() -> R>(f: F) -> F {
    f
}

/// Runs `f` compiled with AVX-512F (plus AVX2 and FMA): everything inlined into it is.
///
/// # Safety
/// The CPU has AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Runs `f` compiled with AVX2 and FMA.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// The lanes of `level`'s vectors (how many rows the row-group kernels take per call).
pub fn lanes(level: Level) -> usize {
    dispatch!(level, s => lanes_of(s))
}

#[inline(always)]
fn lanes_of<S: Simd>(_: S) -> usize {
    S::LANES
}

/// `e^x` per lane, within 2 ulp of `expf` over [-87, 88]: x = n ln2 + r with |r| <= ln2 / 2 (ln2
/// split in two for an exact product), Cephes' degree-6 polynomial for e^r, then `· 2^n`. Below
/// -104 it returns 0 or a subnormal, above 88.72 infinity, as `expf` does (the clamps only keep n
/// in range); NaN stays NaN.
#[inline(always)]
pub fn exp<S: Simd>(s: S, x: S::F) -> S::F {
    let xc = s.min(s.max(x, s.splat(-104.0)), s.splat(89.0));
    let n = s.round(s.mul(xc, s.splat(std::f32::consts::LOG2_E)));
    let r = s.fnma(n, s.splat(0.693_359_4), xc);
    let r = s.fnma(n, s.splat(-2.121_944_4e-4), r);
    let mut p = s.splat(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = s.fma(p, r, s.splat(c));
    }
    let e = s.fma(s.mul(p, r), r, s.add(r, s.splat(1.0)));
    // max/min above turned a NaN into a number: put it back.
    s.keep_nan(x, s.scale_pow2(e, n))
}

/// `Σ a[i] · b[i]` over `min(a.len(), b.len())` values, the weights `b` f32 or bf16: two
/// accumulator chains, the weights prefetched 4 KB ahead (weights stream from memory at decode
/// and the hardware prefetcher stops at each 4 KB page; f32 decode +6%, bench/RESULTS.md).
#[inline(always)]
pub fn dot<S: Simd, E: Elem>(s: S, a: &[f32], b: &[E]) -> f32 {
    let n = a.len().min(b.len());
    let l = S::LANES;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let ahead = 4096 / std::mem::size_of::<E>();
    let (mut acc0, mut acc1) = (s.zero(), s.zero());
    let mut i = 0;
    // SAFETY (all loads): i + 2 l <= n, resp. i + l <= n, resp. the last n - i < l values.
    unsafe {
        while i + 2 * l <= n {
            let bytes = 2 * l * std::mem::size_of::<E>();
            for off in (0..bytes).step_by(64) {
                s.prefetch((pb.wrapping_add(i + ahead) as *const u8).wrapping_add(off));
            }
            acc0 = s.fma(s.load(pa.add(i)), E::load(s, pb.add(i)), acc0);
            acc1 = s.fma(s.load(pa.add(i + l)), E::load(s, pb.add(i + l)), acc1);
            i += 2 * l;
        }
        if i + l <= n {
            acc0 = s.fma(s.load(pa.add(i)), E::load(s, pb.add(i)), acc0);
            i += l;
        }
        if i < n {
            acc1 = s.fma(s.load_first(pa.add(i), n - i), E::load_first(s, pb.add(i), n - i), acc1);
        }
    }
    s.sum(s.add(acc0, acc1))
}

/// Asks for the cache lines of the `len` bytes that lie 4 KB after `p` (the weights a GEMV kernel
/// reads a few rows from now): weights that stream from memory outrun the hardware prefetcher,
/// which stops at each 4 KB page. A prefetch never faults, so the addresses may lie past the
/// matrix.
#[inline(always)]
pub fn prefetch_ahead<S: Simd>(s: S, p: *const u8, len: usize) {
    const PREFETCH_BYTES: usize = 4096;
    let mut off = 0;
    while off < len {
        s.prefetch(p.wrapping_add(PREFETCH_BYTES + off));
        off += 64;
    }
}

/// `out = silu(gate) * up` with `silu(g) = g / (1 + e^-g)`, all `[n]`, at the level the process
/// runs.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_at(isa::current(), gate, up, out)
}

/// [`silu_mul`] at `level` (the tests run every level the CPU has).
pub fn silu_mul_at(level: Level, gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && gate.len() == out.len(), "silu_mul: lengths differ");
    dispatch!(level, s => silu_mul_simd(s, gate, up, out))
}

#[inline(always)]
fn silu_mul_simd<S: Simd>(s: S, gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = gate.len().min(up.len()).min(out.len());
    let (pg, pu, po) = (gate.as_ptr(), up.as_ptr(), out.as_mut_ptr());
    let (l, one) = (S::LANES, s.splat(1.0));
    let mut i = 0;
    // SAFETY (loads and stores): i + l <= n, resp. the last n - i < l values, of all three slices.
    unsafe {
        while i < n {
            let m = l.min(n - i);
            let (g, u) = if m == l { (s.load(pg.add(i)), s.load(pu.add(i))) } else { (s.load_first(pg.add(i), m), s.load_first(pu.add(i), m)) };
            let e = exp(s, s.sub(s.zero(), g));
            let v = s.mul(s.div(g, s.add(one, e)), u);
            if m == l {
                s.store(po.add(i), v);
            } else {
                s.store_first(po.add(i), v, m);
            }
            i += l;
        }
    }
}

/// `x[i] = e^(x[i] - m)` in place, returning `Σ x[i]`: a softmax row's numerators and their sum
/// (`m` its max), the loop of the trainer's attention and cross-entropy.
#[inline(always)]
pub fn exp_shifted_sum<S: Simd>(s: S, x: &mut [f32], m: f32) -> f32 {
    let (n, l, mv) = (x.len(), S::LANES, s.splat(m));
    let p = x.as_mut_ptr();
    let mut sum = s.zero();
    let mut i = 0;
    // SAFETY (loads and stores): i + l <= n, resp. the last n - i < l values.
    unsafe {
        while i + l <= n {
            let e = exp(s, s.sub(s.load(p.add(i)), mv));
            s.store(p.add(i), e);
            sum = s.add(sum, e);
            i += l;
        }
        if i < n {
            let e = exp(s, s.sub(s.load_first(p.add(i), n - i), mv));
            s.store_first(p.add(i), e, n - i);
            // The lanes past the row hold e^(0 - m): not part of the sum.
            let mut tail = [0f32; 16];
            s.store(tail.as_mut_ptr(), e);
            return s.sum(sum) + tail[..n - i].iter().sum::<f32>();
        }
    }
    s.sum(sum)
}

/// [`exp_shifted_sum`] at `level`.
pub fn exp_shifted_sum_at(level: Level, x: &mut [f32], m: f32) -> f32 {
    dispatch!(level, s => exp_shifted_sum(s, x, m))
}

/// The scalar definition [`silu_mul`] is held to.
pub fn silu_mul_scalar(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

#[cfg(test)]
mod tests;
