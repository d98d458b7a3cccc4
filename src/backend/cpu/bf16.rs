//! A frozen weight stored as bfloat16 (the upper 16 bits of an f32: same exponent range, 8 bits of
//! mantissa), half the memory of f32, decoded to f32 a tile at a time for the products
//! (`frozen::DecodeRows`). Rounding from f32 is round-to-nearest-even, as PyTorch's
//! `tensor.to(torch.bfloat16)`; NaN stays NaN.

use super::frozen::DecodeRows;

/// f32 → bf16 bits, round to nearest, ties to even; NaN stays a (quiet) NaN.
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    // Adding 0x7fff plus the lowest kept bit rounds ties to even; a carry into the exponent is
    // the correct rounding (up to the next binade, or to infinity past bf16's largest finite).
    let bias = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(bias) >> 16) as u16
}

pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// A row-major `[rows, cols]` bf16 matrix.
#[derive(Debug, Clone)]
pub struct Bf16Matrix {
    pub rows: usize,
    pub cols: usize,
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
        for (o, &b) in out.iter_mut().zip(&self.data[start..start + n]) {
            *o = bf16_to_f32(b);
        }
    }
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
    fn shapes_are_checked_and_rows_decode() {
        assert!(Bf16Matrix::from_f32(&[1.0; 5], 2, 3).is_err());
        let m = Bf16Matrix::from_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2).unwrap();
        assert_eq!(m.bytes(), 12);
        let mut out = [0.0f32; 4];
        m.decode_rows(1, &mut out);
        assert_eq!(out, [3.0, 4.0, 5.0, 6.0]);
    }
}
