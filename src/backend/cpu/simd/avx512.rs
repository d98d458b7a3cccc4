//! [`Simd`] on AVX-512F: 16 lanes, 32 registers, masked loads and stores, `vpermps` over a
//! 16-entry table, `scalef`.

use std::arch::x86_64::*;

use super::Simd;

/// The AVX-512 level. Only made by `dispatch!` from a checked `isa::Level`.
#[derive(Clone, Copy, Debug)]
pub struct Avx512(());

impl Avx512 {
    /// # Safety
    /// The CPU has AVX-512F, AVX2 and FMA.
    #[inline(always)]
    pub unsafe fn new_unchecked() -> Self {
        Avx512(())
    }
}

/// Every method below runs intrinsics the CPU has: an `Avx512` exists only where it has
/// AVX-512F, AVX2 and FMA (`new_unchecked`'s contract), so each `unsafe` block that only runs
/// register intrinsics is sound by that; pointer methods add the caller's contract.
impl Simd for Avx512 {
    const LANES: usize = 16;
    const REGISTERS: usize = 32;
    type F = __m512;
    type Lut16 = __m512;

    #[inline(always)]
    fn zero(self) -> __m512 {
        // SAFETY: AVX-512F (the type's invariant).
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        // SAFETY: AVX-512F (the type's invariant).
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F (the type's invariant).
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F (the type's invariant).
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F (the type's invariant).
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F (the type's invariant).
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F (the type's invariant).
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F (the type's invariant).
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: AVX-512F (the type's invariant).
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn fnma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: AVX-512F (the type's invariant).
        unsafe { _mm512_fnmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn round(self, a: __m512) -> __m512 {
        // SAFETY: AVX-512F (the type's invariant).
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn scale_pow2(self, x: __m512, n: __m512) -> __m512 {
        // SAFETY: AVX-512F (the type's invariant).
        unsafe { _mm512_scalef_ps(x, n) }
    }
    #[inline(always)]
    fn keep_nan(self, x: __m512, y: __m512) -> __m512 {
        // SAFETY: AVX-512F (the type's invariant).
        unsafe { _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), y, x) }
    }
    #[inline(always)]
    fn interleave(self, a: __m512, b: __m512) -> (__m512, __m512) {
        // SAFETY: AVX-512F (the type's invariant).
        unsafe {
            // Index i < 16 picks a[i], 16 + i picks b[i].
            let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
            (_mm512_permutex2var_ps(a, lo, b), _mm512_permutex2var_ps(a, hi, b))
        }
    }
    #[inline(always)]
    fn sum(self, a: __m512) -> f32 {
        // SAFETY: AVX-512F (the type's invariant).
        unsafe { _mm512_reduce_add_ps(a) }
    }
    #[inline(always)]
    fn max_lane(self, a: __m512) -> f32 {
        // SAFETY: AVX-512F (the type's invariant).
        unsafe { _mm512_reduce_max_ps(a) }
    }
    /// A transpose-and-add tree: pairs within 128-bit lanes, then quads, then across the four
    /// 128-bit lanes.
    #[inline(always)]
    fn reduce_lanes(self, a: &[__m512]) -> __m512 {
        let a: &[__m512; 16] = a.try_into().expect("reduce_lanes takes 16 vectors");
        // SAFETY: AVX-512F (the type's invariant).
        unsafe {
            // No closures or `array::from_fn` here or in the kernels: a function that is not
            // inlined into the target-feature caller would keep its intrinsics as calls.
            // b[p], per 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3] for x = a[2p], y = a[2p+1].
            let mut b = [_mm512_setzero_ps(); 8];
            for p in 0..8 {
                b[p] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * p], a[2 * p + 1]), _mm512_unpackhi_ps(a[2 * p], a[2 * p + 1]));
            }
            // c[q], per 128-bit lane: that lane's sums of a[4q], a[4q+1], a[4q+2], a[4q+3].
            let mut c = [_mm512_setzero_ps(); 4];
            for q in 0..4 {
                c[q] = _mm512_add_ps(_mm512_shuffle_ps::<0b01_00_01_00>(b[2 * q], b[2 * q + 1]), _mm512_shuffle_ps::<0b11_10_11_10>(b[2 * q], b[2 * q + 1]));
            }
            // Sum the four 128-bit lanes: e0 = [c0.L0+L1, c0.L2+L3, c1.L0+L1, c1.L2+L3], e1 likewise.
            let e0 = _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(c[0], c[1]), _mm512_shuffle_f32x4::<0b11_01_11_01>(c[0], c[1]));
            let e1 = _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(c[2], c[3]), _mm512_shuffle_f32x4::<0b11_01_11_01>(c[2], c[3]));
            _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(e0, e1), _mm512_shuffle_f32x4::<0b11_01_11_01>(e0, e1))
        }
    }

    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m512 {
        // SAFETY: 16 readable f32 at p (the contract); AVX-512F.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_first(self, p: *const f32, len: usize) -> __m512 {
        // SAFETY: the mask covers only the len < 16 readable values (the contract).
        unsafe { _mm512_maskz_loadu_ps(((1u32 << len) - 1) as u16, p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, a: __m512) {
        // SAFETY: 16 writable f32 at p (the contract).
        unsafe { _mm512_storeu_ps(p, a) }
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, a: __m512, len: usize) {
        // SAFETY: the mask covers only the len <= 16 writable values (the contract).
        unsafe { _mm512_mask_storeu_ps(p, ((1u32 << len) - 1) as u16, a) }
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u16) -> __m512 {
        // SAFETY: 16 readable u16 at p: 32 bytes, unaligned load (the contract).
        unsafe {
            let h = _mm256_loadu_si256(p as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
    #[inline(always)]
    unsafe fn load_i8(self, p: *const i8) -> __m512 {
        // SAFETY: 16 readable bytes at p (the contract).
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i))) }
    }
    #[inline(always)]
    fn lut16(self, code: &[f32; 16]) -> __m512 {
        // SAFETY: code holds 16 f32.
        unsafe { _mm512_loadu_ps(code.as_ptr()) }
    }
    /// 16 bytes zero-extended to dwords `d`; `vpermps` reads only the low 4 bits of each index,
    /// so `d >> 4` picks the high nibbles' levels and `d` itself the low ones'.
    #[inline(always)]
    unsafe fn nf4_levels(self, lut: __m512, p: *const u8) -> (__m512, __m512) {
        // SAFETY: 16 readable bytes at p (the contract).
        unsafe {
            let d = _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i));
            (_mm512_permutexvar_ps(_mm512_srli_epi32::<4>(d), lut), _mm512_permutexvar_ps(d, lut))
        }
    }
    #[inline(always)]
    fn prefetch(self, p: *const u8) {
        // SAFETY: a prefetch reads nothing architecturally and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
    }
}
