//! [`Simd`] on AVX2 + FMA (x86-64-v3): 8 lanes, 16 registers. What AVX-512 does in one
//! instruction takes a few here: masked loads through a lane-index compare, the 16-entry NF4
//! table as two 8-entry `vpermps` and a blend, `2^n` built in the exponent bits.

use std::arch::x86_64::*;

use super::Simd;

/// The AVX2 + FMA level. Only made by `dispatch!` from a checked `isa::Level`.
#[derive(Clone, Copy, Debug)]
pub struct Avx2(());

impl Avx2 {
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline(always)]
    pub unsafe fn new_unchecked() -> Self {
        Avx2(())
    }
}

/// `2^m` for integral `m` in [-126, 127], from its exponent bits.
#[inline(always)]
fn pow2(m: __m256) -> __m256 {
    // SAFETY: AVX2 (only called from the methods of Avx2, whose values exist only where the CPU
    // has it).
    unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(m), _mm256_set1_epi32(127)))) }
}

/// A mask of the first `len` lanes (all bits set in each), for `maskload` / `maskstore`.
#[inline(always)]
fn first_lanes(len: usize) -> __m256i {
    // SAFETY: AVX2 (as `pow2`).
    unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
}

/// Every method below runs intrinsics the CPU has: an `Avx2` exists only where it has AVX2 and
/// FMA (`new_unchecked`'s contract), so each `unsafe` block that only runs register intrinsics is
/// sound by that; pointer methods add the caller's contract.
impl Simd for Avx2 {
    const LANES: usize = 8;
    const REGISTERS: usize = 16;
    type F = __m256;
    /// Levels 0-7 and 8-15.
    type Lut16 = (__m256, __m256);

    #[inline(always)]
    fn zero(self) -> __m256 {
        // SAFETY: AVX (the type's invariant).
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        // SAFETY: AVX (the type's invariant).
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX (the type's invariant).
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX (the type's invariant).
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX (the type's invariant).
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX (the type's invariant).
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX (the type's invariant).
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX (the type's invariant).
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: FMA (the type's invariant).
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn fnma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: FMA (the type's invariant).
        unsafe { _mm256_fnmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn round(self, a: __m256) -> __m256 {
        // SAFETY: AVX (the type's invariant).
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    /// `x · 2^n1 · 2^n2` with `n1 = floor(n / 2)`, `n2 = n - n1` (each within a normal exponent),
    /// so only the last product rounds, as `scalef` does.
    #[inline(always)]
    fn scale_pow2(self, x: __m256, n: __m256) -> __m256 {
        // SAFETY: AVX (the type's invariant).
        unsafe {
            let n1 = _mm256_floor_ps(_mm256_mul_ps(n, _mm256_set1_ps(0.5)));
            let n2 = _mm256_sub_ps(n, n1);
            _mm256_mul_ps(_mm256_mul_ps(x, pow2(n1)), pow2(n2))
        }
    }
    #[inline(always)]
    fn keep_nan(self, x: __m256, y: __m256) -> __m256 {
        // SAFETY: AVX (the type's invariant).
        unsafe { _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x)) }
    }
    #[inline(always)]
    fn interleave(self, a: __m256, b: __m256) -> (__m256, __m256) {
        // SAFETY: AVX (the type's invariant).
        unsafe {
            // Within 128-bit lanes: [a0 b0 a1 b1 | a4 b4 a5 b5] and [a2 b2 a3 b3 | a6 b6 a7 b7].
            let (lo, hi) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
            (_mm256_permute2f128_ps::<0x20>(lo, hi), _mm256_permute2f128_ps::<0x31>(lo, hi))
        }
    }
    #[inline(always)]
    fn sum(self, a: __m256) -> f32 {
        // SAFETY: AVX (the type's invariant).
        unsafe {
            let x = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
            _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps::<0b01>(x, x)))
        }
    }
    #[inline(always)]
    fn max_lane(self, a: __m256) -> f32 {
        // SAFETY: AVX (the type's invariant).
        unsafe {
            let x = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let x = _mm_max_ps(x, _mm_movehl_ps(x, x));
            _mm_cvtss_f32(_mm_max_ss(x, _mm_shuffle_ps::<0b01>(x, x)))
        }
    }
    /// The AVX-512 tree with two 128-bit lanes: pairs, quads, then the two halves.
    #[inline(always)]
    fn reduce_lanes(self, a: &[__m256]) -> __m256 {
        let a: &[__m256; 8] = a.try_into().expect("reduce_lanes takes 8 vectors");
        // SAFETY: AVX (the type's invariant).
        unsafe {
            // No closures or `array::from_fn` (see the AVX-512 level).
            let mut b = [_mm256_setzero_ps(); 4];
            for p in 0..4 {
                b[p] = _mm256_add_ps(_mm256_unpacklo_ps(a[2 * p], a[2 * p + 1]), _mm256_unpackhi_ps(a[2 * p], a[2 * p + 1]));
            }
            // c[q], per 128-bit lane: that lane's sums of a[4q] .. a[4q+3].
            let mut c = [_mm256_setzero_ps(); 2];
            for q in 0..2 {
                c[q] = _mm256_add_ps(_mm256_shuffle_ps::<0b01_00_01_00>(b[2 * q], b[2 * q + 1]), _mm256_shuffle_ps::<0b11_10_11_10>(b[2 * q], b[2 * q + 1]));
            }
            _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(c[0], c[1]), _mm256_permute2f128_ps::<0x31>(c[0], c[1]))
        }
    }

    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m256 {
        // SAFETY: 8 readable f32 at p (the contract).
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_first(self, p: *const f32, len: usize) -> __m256 {
        // SAFETY: the mask reads only the len < 8 readable values (the contract); masked-off
        // lanes never fault.
        unsafe { _mm256_maskload_ps(p, first_lanes(len)) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, a: __m256) {
        // SAFETY: 8 writable f32 at p (the contract).
        unsafe { _mm256_storeu_ps(p, a) }
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, a: __m256, len: usize) {
        // SAFETY: the mask writes only the len <= 8 writable values (the contract).
        unsafe { _mm256_maskstore_ps(p, first_lanes(len), a) }
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u16) -> __m256 {
        // SAFETY: 8 readable u16 at p (the contract).
        unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)))) }
    }
    #[inline(always)]
    unsafe fn load_i8(self, p: *const i8) -> __m256 {
        // SAFETY: 8 readable bytes at p (the contract).
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))) }
    }
    #[inline(always)]
    fn lut16(self, code: &[f32; 16]) -> (__m256, __m256) {
        // SAFETY: code holds 16 f32.
        unsafe { (_mm256_loadu_ps(code.as_ptr()), _mm256_loadu_ps(code.as_ptr().add(8))) }
    }
    /// 8 bytes zero-extended to dwords `d`; levels 0-7 and 8-15 are each one `vpermps` (index
    /// bits 0-2), and bit 3 of the nibble, shifted into the sign bit, blends them.
    #[inline(always)]
    unsafe fn nf4_levels(self, (lo8, hi8): (__m256, __m256), p: *const u8) -> (__m256, __m256) {
        // SAFETY: 8 readable bytes at p (the contract).
        unsafe {
            let d = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
            let dh = _mm256_srli_epi32::<4>(d);
            // High nibble: bit 3 of d >> 4 is bit 7 of d; low nibble: bit 3 of d.
            let hi = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo8, dh), _mm256_permutevar8x32_ps(hi8, dh), _mm256_castsi256_ps(_mm256_slli_epi32::<24>(d)));
            let lo = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo8, d), _mm256_permutevar8x32_ps(hi8, d), _mm256_castsi256_ps(_mm256_slli_epi32::<28>(d)));
            (hi, lo)
        }
    }
    #[inline(always)]
    fn prefetch(self, p: *const u8) {
        // SAFETY: a prefetch reads nothing architecturally and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
    }
}
