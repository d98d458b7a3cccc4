//! Parity of the training attention kernels (kernels/attention_train.cu, `CudaAttentionTrain`)
//! with their CPU twins (`backend::cpu::backward::{causal_attention_forward,
//! causal_attention_backward}`).
//!
//! GPU cases, fresh seeded random q, k, v, dout (never zeros): head layouts of SmolLM2 (9 q heads,
//! 3 kv, 64 wide), Mistral (32, 8, 128), an odd one (4, 4, 7; tile 32) and (6, 2, 48; tile 32 with
//! padding); batches of one row, of one 77-row sequence (tiles cut mid-way), of three packed
//! sequences with two uncovered rows between them (must stay 0), and two shared-prefix batches
//! (a 19-row context continued by 30, 33 and 5 rows; a 45-row context, longer than a tile,
//! continued by 3 and 70 rows). The backward runs on the CPU twin's out and lse, so each kernel
//! is checked on its own. Tolerance: relative L2 < 1e-5 for out and lse, 2e-5 for dq, dk, dv
//! (f32 on both sides; the kernels sum in another order, the backward with atomics).
//!
//! Without a GPU they print `SKIP <test>: <reason>` and pass, unless LORAFLEET_REQUIRE_GPU=1,
//! where they fail.

use lorafleet::backend::cpu::backward::{self as bw, SeqSpan};
use lorafleet::backend::cuda::attention_train::{AttnTrainDims, CudaAttentionTrain};
use lorafleet::backend::cuda::{test_device, CudaDevice};
use lorafleet::rng::SplitMix64 as Rng;

use crate::common::rel_l2_f32 as rel_l2;

/// The batches: (name, rows, spans).
fn batches() -> Vec<(&'static str, usize, Vec<SeqSpan>)> {
    vec![
        ("one row", 1, vec![SeqSpan::new(0, 1)]),
        ("one 77-row sequence", 77, vec![SeqSpan::new(0, 77)]),
        ("packed 13 + 40 + 1 with gaps", 56, vec![SeqSpan::new(0, 13), SeqSpan::new(14, 40), SeqSpan::new(55, 1)]),
        (
            "context 19, continuations 30, 33, 5",
            87,
            vec![SeqSpan::new(0, 19), SeqSpan::with_context(19, 30, 0, 19), SeqSpan::with_context(49, 33, 0, 19), SeqSpan::with_context(82, 5, 0, 19)],
        ),
        ("context 45, continuations 3, 70", 118, vec![SeqSpan::new(0, 45), SeqSpan::with_context(45, 3, 0, 45), SeqSpan::with_context(48, 70, 0, 45)]),
    ]
}

const LAYOUTS: &[(usize, usize, usize)] = &[(9, 3, 64), (32, 8, 128), (4, 4, 7), (6, 2, 48)];

fn device(test: &str) -> Option<(CudaDevice, CudaAttentionTrain)> {
    let ops = test_device(test)?;
    let k = CudaAttentionTrain::new(&ops).expect("the attention_train module loads");
    Some((ops, k))
}

#[test]
fn attention_forward_and_backward_match_the_cpu_twins() {
    let Some((ops, k)) = device("attention_forward_and_backward_match_the_cpu_twins") else { return };
    let mut rng = Rng::new(0xa77e_2024);
    for &(n_heads, n_kv, d) in LAYOUTS {
        for (name, rows, spans) in batches() {
            let what = format!("{name}, heads {n_heads}/{n_kv} x {d}");
            let (qw, kw) = (n_heads * d, n_kv * d);
            let q = rng.nonzero(rows * qw, 1.0);
            let kk = rng.nonzero(rows * kw, 1.0);
            let v = rng.nonzero(rows * kw, 1.0);
            let dout = rng.nonzero(rows * qw, 1.0);
            let (out_c, lse_c) = bw::causal_attention_forward(&q, &kk, &v, &spans, n_heads, n_kv, d);
            let (dq_c, dk_c, dv_c) = bw::causal_attention_backward(&q, &kk, &v, &out_c, &lse_c, &dout, &spans, n_heads, n_kv, d);

            let up = |x: &[f32]| ops.upload(x).expect("upload");
            let (qg, kg, vg) = (up(&q), up(&kk), up(&v));
            let dims = AttnTrainDims { rows, n_heads, n_kv_heads: n_kv, head_dim: d };
            let (out_g, lse_g) = k.forward(&ops, &dims, &spans, &qg, &kg, &vg).expect("forward runs");
            let (out_g, lse_g) = (ops.download(&out_g).unwrap(), ops.download(&lse_g).unwrap());
            for (n, g, c) in [("out", &out_g, &out_c), ("lse", &lse_g, &lse_c)] {
                let e = rel_l2(g, c, &format!("{n} {what}"));
                assert!(e < 1e-5, "{n} {what}: rel L2 {e:.2e}");
            }
            // Rows outside every span: zero on both sides.
            let covered = |r: usize| spans.iter().any(|s| (s.start..s.start + s.len).contains(&r));
            for r in (0..rows).filter(|&r| !covered(r)) {
                assert!(out_g[r * qw..(r + 1) * qw].iter().all(|&x| x == 0.0), "{what}: uncovered row {r} written");
            }

            let (dq_g, dk_g, dv_g) = k.backward(&ops, &dims, &spans, &qg, &kg, &vg, &up(&out_c), &up(&lse_c), &up(&dout)).expect("backward runs");
            for (n, g, c) in [("dq", dq_g, &dq_c), ("dk", dk_g, &dk_c), ("dv", dv_g, &dv_c)] {
                let g = ops.download(&g).unwrap();
                if c.iter().all(|&x| x == 0.0) {
                    // A batch of one-row sequences: each row attends to itself only, so its
                    // softmax is 1 and dS = P (dP - delta) = 0: dq and dk are exactly zero.
                    let worst = g.iter().fold(0f32, |m, &x| m.max(x.abs()));
                    assert!(worst < 1e-5, "{n} {what}: the reference is zero, the kernel gives up to {worst:e}");
                    continue;
                }
                let e = rel_l2(&g, c, &format!("{n} {what}"));
                assert!(e < 2e-5, "{n} {what}: rel L2 {e:.2e}");
            }
        }
    }
}

#[test]
fn bad_spans_fail_that_call_only() {
    let Some((ops, k)) = device("bad_spans_fail_that_call_only") else { return };
    let dims = AttnTrainDims { rows: 8, n_heads: 2, n_kv_heads: 1, head_dim: 16 };
    let q = ops.upload(&vec![0.5f32; 8 * 32]).unwrap();
    let kv = ops.upload(&vec![0.25f32; 8 * 16]).unwrap();
    let err = k.forward(&ops, &dims, &[SeqSpan::new(4, 5)], &q, &kv, &kv).expect_err("a span past the batch is refused");
    assert!(err.to_string().contains("past the batch"), "{err}");
    // The device is still usable afterwards.
    let (out, _) = k.forward(&ops, &dims, &[SeqSpan::new(0, 8)], &q, &kv, &kv).expect("a good call after a bad one");
    let out = ops.download(&out).unwrap();
    assert!(out.iter().all(|&x| (x - 0.25).abs() < 1e-6), "uniform v: every output is v");
}
