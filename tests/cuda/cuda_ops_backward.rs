//! Parity of the backward ops kernels (kernels/ops_backward.cu, `CudaOpsBackward`) with their CPU
//! twins (`backend::cpu::backward::{rms_norm_backward, rope_backward_inplace, silu_mul_backward}`).
//!
//! GPU cases, fresh seeded random inputs (never zeros): RMSNorm rows 1, 7, 33 × cols 576 (SmolLM2),
//! 4096, 100 and 3, overwriting and accumulating into a random dx (checked on the update);
//! RoPE rows 1, 5, 64 with SmolLM2's heads (9 q, 3 kv, 64 wide), Mistral's (32, 8, 128) and a small
//! odd layout (3, 1, 6), random positions; SiLU·mul n = 1, 7, 1000 and 2^20 + 3 (past one grid
//! wave), gates up to ±8. Tolerance: relative L2 < 1e-5 (f32 on both sides; the GPU sums RMSNorm
//! rows in another order and uses rsqrtf / expf).
//!
//! Without a GPU they print `SKIP <test>: <reason>` and pass, unless LORAFLEET_REQUIRE_GPU=1,
//! where they fail.

use lorafleet::backend::cpu::{backward as bw, ops};
use lorafleet::backend::cuda::ops_backward::CudaOpsBackward;
use lorafleet::backend::cuda::{test_device, CudaDevice, RopeDims};
use lorafleet::rng::SplitMix64 as Rng;

use crate::common::rel_l2_f32 as rel_l2;

fn check(got: &[f32], want: &[f32], what: &str) {
    let e = rel_l2(got, want, what);
    assert!(e < 1e-5, "{what}: rel L2 {e:.2e}");
}

fn device(test: &str) -> Option<(CudaDevice, CudaOpsBackward)> {
    let ops = test_device(test)?;
    let k = CudaOpsBackward::new(&ops).expect("the ops_backward module loads");
    Some((ops, k))
}

#[test]
fn rms_norm_backward_matches_the_cpu_twin() {
    let Some((ops, k)) = device("rms_norm_backward_matches_the_cpu_twin") else { return };
    let mut rng = Rng::new(71);
    for &cols in &[576usize, 4096, 100, 3] {
        for &rows in &[1usize, 7, 33] {
            for accumulate in [false, true] {
                let x = rng.nonzero(rows * cols, 2.0);
                let w = rng.nonzero(cols, 1.0);
                let dy = rng.nonzero(rows * cols, 0.1);
                let dx0 = rng.nonzero(rows * cols, 0.1);
                let mut want = dx0.clone();
                bw::rms_norm_backward(&x, &w, 1e-5, &dy, &mut want, accumulate);
                let (xg, wg, dyg) = (ops.upload(&x).unwrap(), ops.upload(&w).unwrap(), ops.upload(&dy).unwrap());
                let mut dxg = ops.upload(&dx0).unwrap();
                k.rms_norm_backward(&ops, &xg, &wg, &dyg, &mut dxg, rows, cols, 1e-5, accumulate).unwrap();
                let got = ops.download(&dxg).unwrap();
                let what = format!("rms_norm_backward rows {rows} cols {cols} accumulate {accumulate}");
                if accumulate {
                    let upd = |v: &[f32]| v.iter().zip(&dx0).map(|(a, b)| a - b).collect::<Vec<f32>>();
                    check(&upd(&got), &upd(&want), &what);
                } else {
                    check(&got, &want, &what);
                }
            }
        }
    }
}

#[test]
fn rope_backward_matches_the_cpu_twin() {
    let Some((ops, k)) = device("rope_backward_matches_the_cpu_twin") else { return };
    let mut rng = Rng::new(72);
    for &(nq, nk, hd) in &[(9usize, 3usize, 64usize), (32, 8, 128), (3, 1, 6)] {
        let max_pos = 300;
        let inv_freq: Vec<f32> = (0..hd / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32)).collect();
        let (cos, sin) = ops::rope_tables(&inv_freq, max_pos);
        let (cg, sg) = (ops.upload(&cos).unwrap(), ops.upload(&sin).unwrap());
        for &rows in &[1usize, 5, 64] {
            let positions: Vec<u32> = (0..rows).map(|_| rng.below(max_pos) as u32).collect();
            let dq = rng.nonzero(rows * nq * hd, 1.0);
            let dk = rng.nonzero(rows * nk * hd, 1.0);
            let (mut wq, mut wk) = (dq.clone(), dk.clone());
            bw::rope_backward_inplace(&mut wq, &positions, nq, hd, &cos, &sin);
            bw::rope_backward_inplace(&mut wk, &positions, nk, hd, &cos, &sin);
            let (mut qg, mut kg) = (ops.upload(&dq).unwrap(), ops.upload(&dk).unwrap());
            let dims = RopeDims { n_q_heads: nq, n_k_heads: nk, head_dim: hd };
            k.rope_backward(&ops, &mut qg, &mut kg, &positions, &cg, &sg, dims).unwrap();
            let what = format!("rope_backward rows {rows} heads {nq}/{nk}x{hd}");
            check(&ops.download(&qg).unwrap(), &wq, &format!("{what} dq"));
            check(&ops.download(&kg).unwrap(), &wk, &format!("{what} dk"));
        }
    }
}

#[test]
fn silu_mul_backward_matches_the_cpu_twin() {
    let Some((ops, k)) = device("silu_mul_backward_matches_the_cpu_twin") else { return };
    let mut rng = Rng::new(73);
    for &n in &[1usize, 7, 1000, (1 << 20) + 3] {
        let gate = rng.nonzero(n, 8.0);
        let up = rng.nonzero(n, 2.0);
        let dout = rng.nonzero(n, 0.5);
        let (mut wg, mut wu) = (vec![0.0f32; n], vec![0.0f32; n]);
        bw::silu_mul_backward(&gate, &up, &dout, &mut wg, &mut wu);
        let (gg, ug, dg) = (ops.upload(&gate).unwrap(), ops.upload(&up).unwrap(), ops.upload(&dout).unwrap());
        // Poisoned outputs: the kernel must write every element.
        let (mut dgate, mut dup) = (ops.upload(&vec![f32::NAN; n]).unwrap(), ops.upload(&vec![f32::NAN; n]).unwrap());
        k.silu_mul_backward(&ops, &gg, &ug, &dg, &mut dgate, &mut dup).unwrap();
        check(&ops.download(&dgate).unwrap(), &wg, &format!("silu_mul_backward n {n} dgate"));
        check(&ops.download(&dup).unwrap(), &wu, &format!("silu_mul_backward n {n} dup"));
    }
}
