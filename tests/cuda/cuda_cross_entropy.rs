//! Parity of the fused lm_head cross-entropy (kernels/cross_entropy.cu, `CudaCrossEntropy`) with
//! its CPU twin (`backend::cpu::backward::cross_entropy_lm_head`).
//!
//! GPU cases, fresh seeded random h, w, targets and weights (never zeros), (rows, hidden, vocab,
//! chunk): SmolLM2's lm_head (576 x 49152) in chunks of 8192 and in one chunk; Mistral's
//! (4096 x 32000) in chunks of 4096; odd shapes with edge tiles everywhere (100 x 777 by 300) and
//! a chunk of one vocabulary row (64 x 50 by 1). Tolerance: the loss within 1e-5 relative, dh
//! within 1e-4 relative L2 (f32 on both sides, summed over up to 49152 terms in another order).
//!
//! Without a GPU they print `SKIP <test>: <reason>` and pass, unless LORAFLEET_REQUIRE_GPU=1,
//! where they fail.

use lorafleet::backend::cpu::backward as bw;
use lorafleet::backend::cuda::cross_entropy::CudaCrossEntropy;
use lorafleet::backend::cuda::test_device;
use lorafleet::rng::SplitMix64 as Rng;

use crate::common::rel_l2_f32 as rel_l2;

#[test]
fn cross_entropy_matches_the_cpu_twin() {
    let Some(ops) = test_device("cross_entropy_matches_the_cpu_twin") else { return };
    let k = CudaCrossEntropy::new(&ops).expect("the cross_entropy module loads");
    let mut rng = Rng::new(0xce_1a6e);
    for &(rows, hidden, vocab, chunk) in &[
        (1usize, 576usize, 49152usize, 8192usize),
        (37, 576, 49152, 8192),
        (7, 576, 49152, 49152),
        (40, 4096, 32000, 4096),
        (65, 100, 777, 300),
        (33, 64, 50, 1),
    ] {
        let what = format!("rows {rows}, hidden {hidden}, vocab {vocab}, chunk {chunk}");
        let h = rng.nonzero(rows * hidden, 1.0);
        // Logits of spread ~ a few units, as a trained head gives.
        let w = rng.nonzero(vocab * hidden, 3.0 / (hidden as f32).sqrt());
        let targets: Vec<u32> = (0..rows).map(|_| rng.below(vocab) as u32).collect();
        let weights: Vec<f32> = (0..rows).map(|_| (0.5 + rng.unit()) / rows as f32).collect();
        let (loss_c, dh_c) = bw::cross_entropy_lm_head(&h, &w, hidden, &targets, &weights, chunk);
        let (hg, wg) = (ops.upload(&h).unwrap(), ops.upload(&w).unwrap());
        let (loss_g, dh_g) = k.run(&ops, &hg, &wg, hidden, &targets, &weights, chunk).expect("cross-entropy runs");
        let dh_g = ops.download(&dh_g).unwrap();
        let rel = ((loss_g - loss_c) / loss_c).abs();
        assert!(rel < 1e-5, "{what}: loss {loss_g} vs the CPU's {loss_c} ({rel:.2e} relative)");
        let e = rel_l2(&dh_g, &dh_c, &format!("dh {what}"));
        assert!(e < 1e-4, "dh {what}: rel L2 {e:.2e}");
    }
}

#[test]
fn a_target_outside_the_vocabulary_fails_that_call_only() {
    let Some(ops) = test_device("a_target_outside_the_vocabulary_fails_that_call_only") else { return };
    let k = CudaCrossEntropy::new(&ops).expect("the cross_entropy module loads");
    let (h, w) = (ops.upload(&[0.5f32; 2 * 8]).unwrap(), ops.upload(&[0.1f32; 10 * 8]).unwrap());
    let err = k.run(&ops, &h, &w, 8, &[3, 10], &[0.5, 0.5], 4).expect_err("target 10 of a 10-token vocabulary is refused");
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    // All logits equal: the loss is ln(vocab) per row, whatever the target.
    let (loss, _) = k.run(&ops, &h, &w, 8, &[3, 9], &[0.5, 0.5], 4).expect("a good call after a bad one");
    assert!((loss - (10f64).ln()).abs() < 1e-5, "uniform logits: loss {loss}, want ln 10");
}
