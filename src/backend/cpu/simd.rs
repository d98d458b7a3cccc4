//! Vector math the CPU kernels share (AVX-512, chosen at run time by their callers): `exp`,
//! `reduce16` (16 horizontal sums at once), and
//! the SwiGLU gate built on it. Each has a scalar twin the tests hold it to.

/// `out = silu(gate) * up` with `silu(g) = g / (1 + e^-g)`, all `[n]`: AVX-512 where the CPU has
/// it (16 lanes, the vector `exp` below, an exact division), else the scalar loop.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && gate.len() == out.len(), "silu_mul: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above); the lengths are equal (asserted).
            return unsafe { x86::silu_mul(gate, up, out) };
        }
    }
    silu_mul_portable(gate, up, out)
}

pub fn silu_mul_portable(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{exp, reduce16};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Lane `j` of the result is the sum of the 16 lanes of `a[j]`: a transpose-and-add tree
    /// (pairs within 128-bit lanes, then quads, then across the four 128-bit lanes).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn reduce16(a: &[__m512; 16]) -> __m512 {
        // b[p], per 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3] for x = a[2p], y = a[2p+1].
        let b: [__m512; 8] = std::array::from_fn(|p| _mm512_add_ps(_mm512_unpacklo_ps(a[2 * p], a[2 * p + 1]), _mm512_unpackhi_ps(a[2 * p], a[2 * p + 1])));
        // c[q], per 128-bit lane: that lane's sums of a[4q], a[4q+1], a[4q+2], a[4q+3].
        let c: [__m512; 4] = std::array::from_fn(|q| {
            _mm512_add_ps(_mm512_shuffle_ps::<0b01_00_01_00>(b[2 * q], b[2 * q + 1]), _mm512_shuffle_ps::<0b11_10_11_10>(b[2 * q], b[2 * q + 1]))
        });
        // Sum the four 128-bit lanes: e0 = [c0.L0+L1, c0.L2+L3, c1.L0+L1, c1.L2+L3], e1 likewise.
        let pairs = |x: __m512, y: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(x, y), _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y));
        pairs(pairs(c[0], c[1]), pairs(c[2], c[3]))
    }


    /// `e^x`, 16 lanes, within 2 ulp of `expf` over [-87, 88]: x = n ln2 + r with |r| <= ln2 / 2
    /// (ln2 split in two for an exact product), Cephes' degree-6 polynomial for e^r, `scalef` by
    /// 2^n. Below -104 it returns 0 or a subnormal, above 88.72 infinity, as `expf` does (the
    /// clamps only keep n in scalef's range); NaN stays NaN.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn exp(x: __m512) -> __m512 {
        let xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0)), _mm512_set1_ps(89.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E)));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), xc);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let e = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        let y = _mm512_scalef_ps(e, n);
        // NaN in, NaN out (max/min above turned it into a number).
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        _mm512_mask_blend_ps(nan, y, x)
    }

    /// # Safety
    /// The CPU has AVX-512F; the three slices have the same length.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = gate.len();
        let (pg, pu, po) = (gate.as_ptr(), up.as_ptr(), out.as_mut_ptr());
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        // SAFETY (loads and stores): i + 16 <= n for all three slices.
        unsafe {
            while i + 16 <= n {
                let g = _mm512_loadu_ps(pg.add(i));
                let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
                let s = _mm512_div_ps(g, _mm512_add_ps(one, e));
                _mm512_storeu_ps(po.add(i), _mm512_mul_ps(s, _mm512_loadu_ps(pu.add(i))));
                i += 16;
            }
        }
        super::silu_mul_portable(&gate[i..], &up[i..], &mut out[i..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_is_within_two_ulp_of_expf() {
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("SKIP: no AVX-512F on this CPU");
            return;
        }
        use std::arch::x86_64::*;
        let mut xs: Vec<f32> = (-2000..=1770).map(|i| i as f32 * 0.05).collect();
        xs.extend([-0.0, -1e-7, 1e-7, -87.0, -88.5, -103.0, -150.0, 88.7, 88.8, 200.0, f32::NEG_INFINITY, f32::INFINITY, f32::NAN]);
        for chunk in xs.chunks(16) {
            let mut lanes = [0f32; 16];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F checked above; both arrays hold 16 floats.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp(_mm512_loadu_ps(lanes.as_ptr()))) };
            for (&x, &g) in chunk.iter().zip(&got) {
                let want = x.exp();
                if x.is_nan() {
                    assert!(g.is_nan(), "exp(NaN) = {g}");
                } else if want.is_infinite() {
                    assert_eq!(g, want, "exp({x})");
                } else if want < 1e-37 {
                    assert!(g < 1e-37, "exp({x}) = {g}, want {want}");
                } else {
                    assert!((g - want).abs() <= 2.0 * f32::EPSILON * want, "exp({x}) = {g}, want {want}");
                }
            }
        }
    }

    #[test]
    fn silu_mul_matches_the_scalar_loop() {
        let mut rng = crate::rng::SplitMix64::new(31);
        for n in [0usize, 1, 15, 16, 17, 1536, 1000] {
            // Gates over [-40, 40]: both tails of the sigmoid.
            let g = rng.nonzero(n, 40.0);
            let u = rng.nonzero(n, 2.0);
            let mut want = vec![f32::NAN; n];
            silu_mul_portable(&g, &u, &mut want);
            let mut got = vec![f32::NAN; n];
            silu_mul(&g, &u, &mut got);
            for i in 0..n {
                assert!((got[i] - want[i]).abs() <= 4.0 * f32::EPSILON * want[i].abs() + 1e-30, "n {n} [{i}] silu({})*{}: {} vs {}", g[i], u[i], got[i], want[i]);
            }
        }
    }
}
