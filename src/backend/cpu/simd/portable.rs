//! [`Simd`] in plain Rust: 8 lanes as `[f32; 8]`, each operation a loop over the lanes that the
//! compiler turns into vector instructions of the baseline target (two SSE2 registers on x86-64,
//! two NEON registers on aarch64). The level every CPU runs, and the one a CPU without AVX2
//! gets. `fma` is a multiply and an add (a fused one would be a libm call on SSE2).

use super::Simd;

/// The portable level (always available).
#[derive(Clone, Copy, Debug, Default)]
pub struct Portable;

/// 8 lanes of f32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct F8(pub [f32; 8]);

// Plain loops, no `array::from_fn` (a call the compiler may keep, as on the x86 levels).
#[inline(always)]
fn map(a: F8, f: impl Fn(f32) -> f32) -> F8 {
    let mut r = [0.0; 8];
    for i in 0..8 {
        r[i] = f(a.0[i]);
    }
    F8(r)
}

#[inline(always)]
fn zip(a: F8, b: F8, f: impl Fn(f32, f32) -> f32) -> F8 {
    let mut r = [0.0; 8];
    for i in 0..8 {
        r[i] = f(a.0[i], b.0[i]);
    }
    F8(r)
}

impl Simd for Portable {
    const LANES: usize = 8;
    /// 16 SSE2 / 32 NEON registers of 4 lanes: counted as 8 of these vectors (the register
    /// blocks of the kernels are sized for the 16-register AVX2 level).
    const REGISTERS: usize = 16;
    type F = F8;
    type Lut16 = [f32; 16];

    #[inline(always)]
    fn zero(self) -> F8 {
        F8([0.0; 8])
    }
    #[inline(always)]
    fn splat(self, x: f32) -> F8 {
        F8([x; 8])
    }
    #[inline(always)]
    fn add(self, a: F8, b: F8) -> F8 {
        zip(a, b, |x, y| x + y)
    }
    #[inline(always)]
    fn sub(self, a: F8, b: F8) -> F8 {
        zip(a, b, |x, y| x - y)
    }
    #[inline(always)]
    fn mul(self, a: F8, b: F8) -> F8 {
        zip(a, b, |x, y| x * y)
    }
    #[inline(always)]
    fn div(self, a: F8, b: F8) -> F8 {
        zip(a, b, |x, y| x / y)
    }
    #[inline(always)]
    fn max(self, a: F8, b: F8) -> F8 {
        zip(a, b, |x, y| if x > y { x } else { y })
    }
    #[inline(always)]
    fn min(self, a: F8, b: F8) -> F8 {
        zip(a, b, |x, y| if x < y { x } else { y })
    }
    #[inline(always)]
    fn fma(self, a: F8, b: F8, c: F8) -> F8 {
        let mut r = c.0;
        for i in 0..8 {
            r[i] += a.0[i] * b.0[i];
        }
        F8(r)
    }
    #[inline(always)]
    fn fnma(self, a: F8, b: F8, c: F8) -> F8 {
        let mut r = c.0;
        for i in 0..8 {
            r[i] -= a.0[i] * b.0[i];
        }
        F8(r)
    }
    /// Adding and subtracting 1.5 · 2^23 leaves the nearest integer (ties to even) for |x| < 2^22.
    #[inline(always)]
    fn round(self, a: F8) -> F8 {
        const MAGIC: f32 = 12_582_912.0;
        map(a, |x| (x + MAGIC) - MAGIC)
    }
    /// `x · 2^n1 · 2^n2`, `n1 = floor(n / 2)`: as the AVX2 level.
    #[inline(always)]
    fn scale_pow2(self, x: F8, n: F8) -> F8 {
        let pow2 = |m: f32| f32::from_bits(((m as i32 + 127) << 23) as u32);
        let mut r = [0.0; 8];
        for i in 0..8 {
            let n1 = (n.0[i] * 0.5).floor();
            r[i] = x.0[i] * pow2(n1) * pow2(n.0[i] - n1);
        }
        F8(r)
    }
    #[inline(always)]
    fn keep_nan(self, x: F8, y: F8) -> F8 {
        zip(x, y, |x, y| if x.is_nan() { x } else { y })
    }
    #[inline(always)]
    fn interleave(self, a: F8, b: F8) -> (F8, F8) {
        let (mut lo, mut hi) = ([0.0; 8], [0.0; 8]);
        for i in 0..4 {
            lo[2 * i] = a.0[i];
            lo[2 * i + 1] = b.0[i];
            hi[2 * i] = a.0[4 + i];
            hi[2 * i + 1] = b.0[4 + i];
        }
        (F8(lo), F8(hi))
    }
    #[inline(always)]
    fn sum(self, a: F8) -> f32 {
        let a = a.0;
        ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
    }
    #[inline(always)]
    fn max_lane(self, a: F8) -> f32 {
        a.0.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
    }
    #[inline(always)]
    fn reduce_lanes(self, a: &[F8]) -> F8 {
        assert_eq!(a.len(), 8, "reduce_lanes takes 8 vectors");
        let mut r = [0.0; 8];
        for j in 0..8 {
            r[j] = self.sum(a[j]);
        }
        F8(r)
    }

    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> F8 {
        // SAFETY: 8 readable f32 at p (the contract); unaligned read.
        F8(unsafe { std::ptr::read_unaligned(p as *const [f32; 8]) })
    }
    #[inline(always)]
    unsafe fn load_first(self, p: *const f32, len: usize) -> F8 {
        let mut v = [0.0; 8];
        // SAFETY: len < 8 readable f32 at p (the contract).
        unsafe { std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), len) };
        F8(v)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, a: F8) {
        // SAFETY: 8 writable f32 at p (the contract); unaligned write.
        unsafe { std::ptr::write_unaligned(p as *mut [f32; 8], a.0) }
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, a: F8, len: usize) {
        // SAFETY: len <= 8 writable f32 at p (the contract).
        unsafe { std::ptr::copy_nonoverlapping(a.0.as_ptr(), p, len) }
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u16) -> F8 {
        // SAFETY: 8 readable u16 at p (the contract).
        let h = unsafe { std::ptr::read_unaligned(p as *const [u16; 8]) };
        F8(h.map(|b| f32::from_bits((b as u32) << 16)))
    }
    #[inline(always)]
    unsafe fn load_i8(self, p: *const i8) -> F8 {
        // SAFETY: 8 readable bytes at p (the contract).
        let q = unsafe { std::ptr::read_unaligned(p as *const [i8; 8]) };
        F8(q.map(|c| c as f32))
    }
    #[inline(always)]
    fn lut16(self, code: &[f32; 16]) -> [f32; 16] {
        *code
    }
    #[inline(always)]
    unsafe fn nf4_levels(self, lut: [f32; 16], p: *const u8) -> (F8, F8) {
        // SAFETY: 8 readable bytes at p (the contract).
        let b = unsafe { std::ptr::read_unaligned(p as *const [u8; 8]) };
        (F8(b.map(|b| lut[(b >> 4) as usize])), F8(b.map(|b| lut[(b & 0xf) as usize])))
    }
    #[inline(always)]
    fn prefetch(self, p: *const u8) {
        // SSE's prefetch is part of the x86-64 baseline; elsewhere the hardware prefetcher alone.
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch reads nothing architecturally and never faults.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = p;
    }
}
