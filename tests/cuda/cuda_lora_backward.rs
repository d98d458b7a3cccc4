//! Parity of the fused LoRA backward (kernels/lora_backward.cu, `CudaLoraBackward`) with its CPU
//! twin (`backend::cpu::backward::lora_backward`), and the checks in front of it
//! (`plan_lora_backward`, which run everywhere).
//!
//! GPU cases: fresh seeded random x, A, B, dy (never zeros; xa = x·Aᵀ computed on the host as the
//! forward saves it) and random non-zero starting dA, dB, dx (they accumulate); ranks 8, 16, 64
//! and the odd 3; rows 1, 7, 33 (one past a row block), 300; projections 576 -> 1536 (SmolLM2's
//! gate/up), 1536 -> 576 (down), 100 -> 77 (odd, edge tiles everywhere) and 4096 -> 4096; with
//! and without dx. Tolerance: relative L2 < 1e-5 on each of dA, dB, dx against the CPU twin (f32
//! both; the kernels sum in another order, with atomics), checked on the updates (result minus
//! the starting value) so a wrong term cannot hide under the starting values.
//!
//! Without a GPU they print `SKIP <test>: <reason>` and pass, unless LORAFLEET_REQUIRE_GPU=1,
//! where they fail.

use lorafleet::backend::cpu::backward as bw;
use lorafleet::backend::cuda::lora_backward::{plan_lora_backward, CudaLoraBackward, LoraBackwardLens, LoraBackwardShape};
use lorafleet::backend::cuda::{test_device, CudaDevice};
use lorafleet::rng::SplitMix64 as Rng;
use lorafleet::Error;

use crate::common::rel_l2_f32 as rel_l2;

fn minus(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

fn device(test: &str) -> Option<(CudaDevice, CudaLoraBackward)> {
    let ops = test_device(test)?;
    let k = CudaLoraBackward::new(&ops).expect("the lora_backward module loads");
    Some((ops, k))
}

fn case(ops: &CudaDevice, k: &CudaLoraBackward, rng: &mut Rng, rows: usize, d_in: usize, d_out: usize, rank: usize, with_dx: bool) {
    let scale = 16.0 / rank as f32;
    let x = rng.nonzero(rows * d_in, 1.0);
    let a = rng.nonzero(rank * d_in, 1.0 / (d_in as f32).sqrt());
    let b = rng.nonzero(d_out * rank, 0.1);
    let dy = rng.nonzero(rows * d_out, 0.01);
    let mut xa = vec![0.0f32; rows * rank];
    bw::gemm(rows, rank, d_in, &x, false, &a, true, &mut xa, false, 1.0);
    let da0 = rng.nonzero(rank * d_in, 0.01);
    let db0 = rng.nonzero(d_out * rank, 0.01);
    let dx0 = rng.nonzero(rows * d_in, 0.01);
    // CPU twin.
    let (mut da_c, mut db_c, mut dx_c) = (da0.clone(), db0.clone(), dx0.clone());
    bw::lora_backward(&x, &xa, &dy, rows, &a, &b, rank, scale, &mut da_c, &mut db_c, with_dx.then_some(&mut dx_c[..]));
    // GPU.
    let up = |v: &[f32]| ops.upload(v).expect("upload");
    let (xg, xag, dyg, ag, bg) = (up(&x), up(&xa), up(&dy), up(&a), up(&b));
    let (mut dag, mut dbg, mut dxg) = (up(&da0), up(&db0), up(&dx0));
    let shape = LoraBackwardShape { rows, d_in, d_out, rank, scale };
    k.run(ops, &shape, &xg, &xag, &dyg, &ag, &bg, &mut dag, &mut dbg, with_dx.then_some(&mut dxg)).expect("lora backward runs");
    let (da_g, db_g, dx_g) = (ops.download(&dag).unwrap(), ops.download(&dbg).unwrap(), ops.download(&dxg).unwrap());
    let what = format!("rows {rows}, {d_in} -> {d_out}, rank {rank}, dx {with_dx}");
    for (name, g, c, start) in [("dA", &da_g, &da_c, &da0), ("dB", &db_g, &db_c, &db0)] {
        let e = rel_l2(&minus(g, start), &minus(c, start), &format!("{name} {what}"));
        assert!(e < 1e-5, "{name} {what}: rel L2 of the update {e:.2e}");
    }
    if with_dx {
        let e = rel_l2(&minus(&dx_g, &dx0), &minus(&dx_c, &dx0), &format!("dx {what}"));
        assert!(e < 1e-5, "dx {what}: rel L2 of the update {e:.2e}");
    } else {
        assert_eq!(dx_g, dx0, "{what}: dx must be untouched when not asked for");
    }
}

#[test]
fn lora_backward_matches_the_cpu_twin() {
    let Some((ops, k)) = device("lora_backward_matches_the_cpu_twin") else { return };
    let mut rng = Rng::new(0x10ba_c4a2d);
    for &(d_in, d_out) in &[(576, 1536), (1536, 576), (100, 77), (4096, 4096)] {
        for &rank in &[8usize, 16, 64, 3] {
            for &rows in &[1usize, 7, 33, 300] {
                case(&ops, &k, &mut rng, rows, d_in, d_out, rank, true);
            }
        }
        case(&ops, &k, &mut rng, 33, d_in, d_out, 8, false);
    }
}

#[test]
fn plan_refuses_bad_arguments_with_clear_messages() {
    let s = LoraBackwardShape { rows: 5, d_in: 64, d_out: 32, rank: 8, scale: 2.0 };
    let ok = LoraBackwardLens::for_shape(&s, true);
    assert!(plan_lora_backward(&s, &ok).is_ok());
    let msg = |r: lorafleet::Result<_>| match r {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    assert!(msg(plan_lora_backward(&LoraBackwardShape { rank: 65, ..s }, &LoraBackwardLens::for_shape(&LoraBackwardShape { rank: 65, ..s }, true)))
        .contains("rank 65"));
    assert!(msg(plan_lora_backward(&s, &LoraBackwardLens { dy: ok.dy + 3, ..ok })).contains("`dy` has"));
    assert!(msg(plan_lora_backward(&LoraBackwardShape { scale: f32::INFINITY, ..s }, &ok)).contains("not finite"));
}
