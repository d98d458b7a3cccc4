//! Numerics every backend shares, so the CPU and the device compute from the same values: RoPE's
//! cos/sin tables (made once on the host, uploaded by a device backend) and f32 ↔ bf16 through
//! `half` (round to nearest, ties to even, as PyTorch's `.to(torch.bfloat16)`; NaN stays NaN).

/// Cos/sin tables for RoPE, `[max_pos, head_dim / 2]` each, computed as HF does:
/// `inv_freq[i] = 1 / theta^(2i / head_dim)` in f32 (or given, e.g. after Llama-3 scaling),
/// angle = `pos * inv_freq[i]` in f32; cos and sin are evaluated in f64 and rounded.
pub fn rope_tables(inv_freq: &[f32], max_pos: usize) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(max_pos * half);
    let mut sin = Vec::with_capacity(max_pos * half);
    for pos in 0..max_pos {
        for &f in inv_freq {
            let angle = (pos as f32 * f) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// f32 → bf16 bits, round to nearest, ties to even; NaN stays a (quiet) NaN.
pub fn f32_to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// A bf16 (its bits) as f32, exactly.
pub fn bf16_to_f32(b: u16) -> f32 {
    half::bf16::from_bits(b).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nan() {
        // 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to even.
        assert_eq!(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 0x3f81);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert_eq!(f32_to_bf16(f32::MAX), 0x7f80, "past bf16's largest finite rounds to infinity");
        for x in [0.0f32, -0.0, 1.5, -3.25, 2f32.powi(-100), 65280.0] {
            assert_eq!(bf16_to_f32(f32_to_bf16(x)), x);
        }
    }

    #[test]
    fn rope_tables_start_at_angle_zero() {
        let (cos, sin) = rope_tables(&[1.0, 0.5], 3);
        assert_eq!((cos.len(), &cos[..2], &sin[..2]), (6, &[1.0f32, 1.0][..], &[0.0f32, 0.0][..]));
        assert!((sin[2] - 1f32.sin()).abs() < 1e-7 && (cos[5] - 1f32.cos()).abs() < 1e-7);
    }
}
