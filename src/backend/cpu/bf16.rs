//! A frozen weight stored as bfloat16 (the upper 16 bits of an f32: same exponent range, 8 bits of
//! mantissa), half the memory of f32, decoded to f32 a tile at a time for the products
//! (`frozen::DecodeRows`). Rounding from f32 is round-to-nearest-even, as PyTorch's
//! `tensor.to(torch.bfloat16)`; NaN stays NaN.
//!
//! `linear`: decode-sized inputs (≤ 16 rows) take the GEMV path of f32 weights (`matmul::gemv`,
//! generic over the weight element), converting in registers, so decode reads half the bytes of
//! f32 and writes no decoded weight; more rows decode panels for the dense GEMM
//! (`frozen::linear_tiled`).

use super::frozen::{self, DecodeRows};
use super::simd::{self, dispatch};

pub use crate::backend::numeric::{bf16_to_f32, f32_to_bf16};

/// A row-major `[rows, cols]` bf16 matrix.
#[derive(Debug, Clone)]
pub struct Bf16Matrix {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// `[rows, cols]` row-major bf16 bits.
    pub data: Vec<u16>,
}

impl Bf16Matrix {
    /// Rounds an f32 `[rows, cols]` matrix to bf16.
    pub fn from_f32(data: &[f32], rows: usize, cols: usize) -> Result<Self, String> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(format!("{} values are not [{rows}, {cols}]", data.len()));
        }
        Ok(Bf16Matrix { rows, cols, data: data.iter().map(|&x| f32_to_bf16(x)).collect() })
    }

    /// Bytes of the stored weight.
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }
}

impl DecodeRows for Bf16Matrix {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn decode_rows(&self, r0: usize, out: &mut [f32]) {
        let (start, n) = (r0 * self.cols, out.len());
        let src = &self.data[start..start + n];
        // A plain loop, vectorised by the compiler for the level it is dispatched to.
        dispatch!(super::isa::current(), _s => {
            for (o, &b) in out.iter_mut().zip(src) {
                *o = bf16_to_f32(b);
            }
        })
    }
}

/// `out [t, n] = x [t, k] · Wᵀ` for a bf16 `W [n, k]`: up to `GEMV_MAX_ROWS` rows through the
/// GEMV path (weights widened in registers), more through decoded tiles.
pub fn linear(x: &[f32], t: usize, w: &Bf16Matrix, out: &mut [f32]) {
    if t > super::matmul::GEMV_MAX_ROWS {
        return frozen::linear_tiled(x, t, w, out);
    }
    super::matmul::gemv(super::isa::current(), x, t, w.cols, &w.data, w.rows, out)
}

/// `Σ a[i] · bf16(b[i])` at the level the process runs.
#[inline]
pub fn dot_bf16(a: &[f32], b: &[u16]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    dispatch!(super::isa::current(), s => simd::dot(s, a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_nearest_even() {
        // Exactly representable values are kept.
        for x in [0.0f32, -0.0, 1.0, -2.5, 0.15625, f32::INFINITY, f32::NEG_INFINITY, 3.3895314e38] {
            let r = bf16_to_f32(f32_to_bf16(x));
            assert_eq!(r, x, "{x} -> {r}");
        }
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1). 1 + 3·2^-8 is halfway
        // between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 2f32.powi(-8))), 1.0);
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8))), 1.0 + 2f32.powi(-6));
        // Just above halfway rounds up; just below rounds down.
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20))), 1.0 + 2f32.powi(-7));
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 2f32.powi(-8) - 2f32.powi(-20))), 1.0);
        // Past the largest finite bf16 (3.3895e38) by more than half an ulp: infinity.
        assert!(bf16_to_f32(f32_to_bf16(f32::MAX)).is_infinite());
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        // Relative error of a round trip is at most the unit roundoff 2^-8 (8 significant bits).
        let mut rng = crate::rng::SplitMix64::new(9);
        for x in rng.nonzero(10_000, 100.0) {
            let r = bf16_to_f32(f32_to_bf16(x));
            assert!(((r - x) / x).abs() <= 2f32.powi(-8), "{x} -> {r}");
        }
    }

    #[test]
    fn dot_paths_agree_and_linear_matches_the_decoded_matrix() {
        let mut rng = crate::rng::SplitMix64::new(10);
        for n in [0usize, 1, 7, 16, 31, 33, 576, 1001] {
            let a = rng.nonzero(n, 1.0);
            let b: Vec<u16> = rng.nonzero(n, 1.0).into_iter().map(f32_to_bf16).collect();
            let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * bf16_to_f32(y) as f64).sum();
            let got = dot_bf16(&a, &b);
            assert!((got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "n {n}: {got} vs {want}");
        }
        // Decode (t <= 16: per-row dots, 4x4 blocks) and prefill (t > 16, tiles) against f64 on the decoded W.
        for (t, n, k) in [(1usize, 77usize, 100usize), (2, 33, 576), (3, 130, 33), (4, 65, 576), (5, 200, 17), (9, 64, 64), (16, 37, 100), (17, 40, 40)] {
            let w = Bf16Matrix::from_f32(&rng.nonzero(n * k, 0.5), n, k).unwrap();
            let x = rng.nonzero(t * k, 1.0);
            let mut runs = Vec::new();
            let mut out = vec![f32::NAN; t * n];
            linear(&x, t, &w, &mut out);
            runs.push(("linear".to_string(), out));
            if t <= crate::backend::cpu::matmul::GEMV_MAX_ROWS {
                // The GEMV path at every level the CPU has.
                for level in crate::backend::cpu::isa::available() {
                    let mut out = vec![f32::NAN; t * n];
                    crate::backend::cpu::matmul::gemv(level, &x, t, k, &w.data, n, &mut out);
                    runs.push((level.isa().to_string(), out));
                }
            }
            for (what, out) in &runs {
                for r in 0..t {
                    for j in 0..n {
                        let want: f64 = (0..k).map(|c| x[r * k + c] as f64 * bf16_to_f32(w.data[j * k + c]) as f64).sum();
                        let g = out[r * n + j] as f64;
                        assert!((g - want).abs() <= 1e-5 * (1.0 + want.abs()), "{what} [{t}, {n}, {k}] ({r}, {j}): {g} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn shapes_are_checked_and_rows_decode() {
        assert!(Bf16Matrix::from_f32(&[1.0; 5], 2, 3).is_err());
        let m = Bf16Matrix::from_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2).unwrap();
        assert_eq!(m.bytes(), 12);
        let mut out = [0.0f32; 4];
        m.decode_rows(1, &mut out);
        assert_eq!(out, [3.0, 4.0, 5.0, 6.0]);
    }
}
