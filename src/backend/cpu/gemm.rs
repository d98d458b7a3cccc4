//! The `gemm` crate's f32 GEMM at the level the process runs. `gemm::gemm` picks its kernel from
//! what the CPU has (AVX-512 where present), so `LORAFLEET_CPU_ISA=avx2` would still run
//! AVX-512 prefill and training products, and a forced level would not measure what an AVX2-only
//! CPU runs. Here each level instantiates gemm's own generic driver
//! (`gemm_common::gemm::gemm_basic_generic`) with that level's microkernels, exactly as
//! `gemm-f32`'s private `gemm_basic` per level does (gemm-common 0.19.0 `__inject_mod!`):
//!
//! | level | microkernels | lanes |
//! |---|---|---:|
//! | avx512 | `gemm_f32::microkernel::avx512f` (`V4`) | 16 |
//! | avx2 | `gemm_f32::microkernel::fma` (`V3`) | 8 |
//! | portable | x86-64: `gemm_f32::microkernel::scalar` (what gemm runs without FMA); elsewhere `gemm::gemm`'s own choice (NEON on aarch64) | 1 |
//!
//! The crates are pinned to the exact version these internals come from (Cargo.toml).

use super::isa::{Isa, Level};

/// `dst [m, n] = alpha · dst + beta · lhs [m, k] · rhs [k, n]` (gemm's argument order and
/// meaning; `alpha` is ignored when `read_dst` is false), each operand given by a base pointer, a
/// column stride and a row stride, in elements.
///
/// # Safety
/// As `gemm::gemm`: every operand valid for its strides and shape, `dst` writable and not
/// overlapping `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_cs: isize,
    dst_rs: isize,
    read_dst: bool,
    lhs: *const f32,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const f32,
    rhs_cs: isize,
    rhs_rs: isize,
    alpha: f32,
    beta: f32,
    parallelism: gemm_common::Parallelism,
) {
    // What gemm::gemm does before its dispatch (gemm 0.19.0 src/gemm.rs): its microkernels want
    // a column-major destination, so a row-major one is computed as dstᵀ = rhsᵀ · lhsᵀ (without
    // this, packing is skipped and the kernel reads strided operands: 1.8x slower at
    // 512 x 1536 x 576); negative strides are turned around.
    let (m, n, mut dst_cs, mut dst_rs, mut lhs, mut lhs_cs, mut lhs_rs, mut rhs, mut rhs_cs, mut rhs_rs) = if dst_cs.abs() < dst_rs.abs() {
        (n, m, dst_rs, dst_cs, rhs, rhs_rs, rhs_cs, lhs, lhs_rs, lhs_cs)
    } else {
        (m, n, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs)
    };
    let mut dst = dst;
    if dst_rs < 0 && m > 0 {
        dst = dst.wrapping_offset((m - 1) as isize * dst_rs);
        dst_rs = -dst_rs;
        lhs = lhs.wrapping_offset((m - 1) as isize * lhs_rs);
        lhs_rs = -lhs_rs;
    }
    if dst_cs < 0 && n > 0 {
        dst = dst.wrapping_offset((n - 1) as isize * dst_cs);
        dst_cs = -dst_cs;
        rhs = rhs.wrapping_offset((n - 1) as isize * rhs_cs);
        rhs_cs = -rhs_cs;
    }
    if lhs_cs < 0 && k > 0 {
        lhs = lhs.wrapping_offset((k - 1) as isize * lhs_cs);
        lhs_cs = -lhs_cs;
        rhs = rhs.wrapping_offset((k - 1) as isize * rhs_rs);
        rhs_rs = -rhs_rs;
    }
    macro_rules! at_level {
        ($uk:path, $simd:ty, $lanes:expr) => {{
            use gemm_common::simd::MixedSimd;
            use $uk as uk;
            let simd = <$simd as MixedSimd<f32, f32, f32, f32>>::try_new().expect("the level was checked against the CPU (isa::Level)");
            // SAFETY: the caller's contract (gemm::gemm's); the microkernels belong to `simd`'s
            // level, as in gemm-f32's own per-level instantiation.
            unsafe {
                gemm_common::gemm::gemm_basic_generic::<_, f32, { $lanes }, { uk::MR_DIV_N * $lanes }, { uk::NR }, { uk::MR_DIV_N }, { uk::H_M }, { uk::H_N }>(
                    simd,
                    m,
                    n,
                    k,
                    dst,
                    dst_cs,
                    dst_rs,
                    read_dst,
                    lhs,
                    lhs_cs,
                    lhs_rs,
                    rhs,
                    rhs_cs,
                    rhs_rs,
                    alpha,
                    beta,
                    false,
                    false,
                    false,
                    |a, b, c| a * b + c,
                    &uk::UKR,
                    &uk::H_UKR,
                    false,
                    parallelism,
                )
            }
        }};
    }
    match level.isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => at_level!(gemm_f32::microkernel::avx512f::f32, gemm_common::simd::V4, 16),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => at_level!(gemm_f32::microkernel::fma::f32, gemm_common::simd::V3, 8),
        #[cfg(target_arch = "x86_64")]
        Isa::Portable => at_level!(gemm_f32::microkernel::scalar::f32, gemm_common::simd::Scalar, 1),
        #[cfg(not(target_arch = "x86_64"))]
        _ => {
            // SAFETY: the caller's contract is gemm::gemm's.
            unsafe {
                gemm::gemm(m, n, k, dst, dst_cs, dst_rs, read_dst, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs, alpha, beta, false, false, false, parallelism)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// Every level against f64 sums, with a transposed operand, accumulation and odd shapes.
    #[test]
    fn every_level_matches_f64() {
        let mut rng = SplitMix64::new(808);
        for (m, n, k) in [(1usize, 1usize, 1usize), (3, 5, 7), (17, 33, 65), (64, 48, 100), (130, 70, 9)] {
            let a = rng.nonzero(m * k, 1.0); // [m, k]
            let b = rng.nonzero(n * k, 1.0); // [n, k], used transposed
            let base = rng.nonzero(m * n, 1.0);
            for level in super::super::isa::available() {
                let mut dst = base.clone();
                // SAFETY: dst [m, n] (row stride n), a [m, k] (row stride k), b read as bᵀ [k, n]
                // (column stride k, row stride 1); dst is its own buffer.
                unsafe {
                    gemm_f32(
                        level,
                        m,
                        n,
                        k,
                        dst.as_mut_ptr(),
                        1,
                        n as isize,
                        true,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        k as isize,
                        1,
                        1.0,
                        0.5,
                        gemm_common::Parallelism::None,
                    );
                }
                for i in 0..m {
                    for j in 0..n {
                        let want = base[i * n + j] as f64 + 0.5 * (0..k).map(|l| a[i * k + l] as f64 * b[j * k + l] as f64).sum::<f64>();
                        let got = dst[i * n + j] as f64;
                        assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{:?} [{m}, {n}, {k}] ({i}, {j}): {got} vs {want}", level.isa());
                    }
                }
            }
        }
    }
}
