//! Seeded random weights described, not materialised (`HostWeight::Random`): a backend creates
//! them where they live (the CUDA backend on the device, kernels/random.cu), the CPU backend on
//! the host with this module's twin of those kernels, so both hold the same values. Element `i` of
//! a fill depends only on `(seed, i)` (csrc/random.h).

use crate::quant::nf4::{Absmax, Nf4Tensor, NF4_BLOCK, NF4_CODE};

/// How a random matrix is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RandomFormat {
    /// f32 values.
    F32,
    /// bf16 values.
    Bf16,
    /// bitsandbytes NF4, blocks of 64 with one plain f32 absmax each.
    Nf4,
}

/// A random linear weight `[rows, cols]`: values uniform in `[-scale, scale)` (dense, bf16), or
/// random 4-bit codes with block scales uniform in `[0.75 scale, scale)` (NF4).
#[derive(Clone, Debug, PartialEq)]
pub struct RandomSpec {
    /// The tensor's name (seeds are derived from it).
    pub name: String,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// How the values are held.
    pub format: RandomFormat,
    /// The seed.
    pub seed: u64,
    /// Values are uniform in `[-scale, scale]`.
    pub scale: f32,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(GOLDEN);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// `lf_random_uniform_*`: `a + b * u`, u in [0, 1), as one f32 fused multiply-add (the kernel's).
pub fn uniform(seed: u64, n: usize, a: f32, b: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = splitmix64(seed ^ (i as u64).wrapping_mul(GOLDEN));
            let u = (x >> 40) as f32 * (1.0 / 16_777_216.0);
            b.mul_add(u, a)
        })
        .collect()
}

/// `lf_random_bytes`.
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
    (0..n).map(|i| (splitmix64(seed ^ ((i / 8) as u64).wrapping_mul(GOLDEN)) >> (8 * (i % 8))) as u8).collect()
}

/// The seeds of the parts of a spec: values (or NF4 codes) and NF4 scales.
pub fn part_seeds(spec: &RandomSpec) -> (u64, u64) {
    (spec.seed, splitmix64(spec.seed ^ 0x5CA1E))
}

/// The (a, b) of the uniform draws: symmetric values, or NF4 block scales.
pub fn value_range(spec: &RandomSpec) -> (f32, f32) {
    (-spec.scale, 2.0 * spec.scale)
}
/// The (min, max) of the absmax scales an NF4 copy of `spec` has.
pub fn absmax_range(spec: &RandomSpec) -> (f32, f32) {
    (0.75 * spec.scale, 0.25 * spec.scale)
}

/// The host values of a spec, as the CUDA kernels make them.
pub fn materialize(spec: &RandomSpec) -> super::HostWeight {
    let n = spec.rows * spec.cols;
    let (vs, ss) = part_seeds(spec);
    match spec.format {
        RandomFormat::F32 => {
            let (a, b) = value_range(spec);
            super::HostWeight::Dense(super::HostMatrix { name: spec.name.clone(), rows: spec.rows, cols: spec.cols, data: uniform(vs, n, a, b) })
        }
        RandomFormat::Bf16 => {
            let (a, b) = value_range(spec);
            let data = uniform(vs, n, a, b).into_iter().map(|x| half::bf16::from_f32(x).to_bits()).collect();
            super::HostWeight::Bf16 { name: spec.name.clone(), rows: spec.rows, cols: spec.cols, data }
        }
        RandomFormat::Nf4 => {
            let (a, b) = absmax_range(spec);
            let tensor = Nf4Tensor {
                shape: vec![spec.rows, spec.cols],
                blocksize: NF4_BLOCK,
                packed: bytes(vs, n.div_ceil(2)),
                absmax: Absmax::Plain(uniform(ss, n.div_ceil(NF4_BLOCK), a, b)),
                code: NF4_CODE,
            };
            super::HostWeight::Nf4 { name: spec.name.clone(), tensor }
        }
    }
}
