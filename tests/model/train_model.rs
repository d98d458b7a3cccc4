//! The backward through the whole decoder, on a tiny random Llama (`train::tiny`): LoRA
//! gradients from `forward_backward` against central finite differences of the loss, on an f32
//! and on an NF4 base, over a packed batch of two sequences; activation checkpointing and padded
//! batches give the same gradients as the default.

use lorafleet::lora::{LoraAdapter, LoraModule};
use lorafleet::quant::Quantization;
use lorafleet::train::{BaseFormat, LoraGrads, StepOptions, TokenizedExample, TrainBatch, TrainModel};

fn tiny(quantize: Option<Quantization>) -> TrainModel {
    // One fresh directory per call (tests run in parallel), removed when the guard drops.
    let dir_guard = tempfile::Builder::new().prefix("lorafleet-tiny-model-").tempdir().unwrap();
    let dir = dir_guard.path().to_path_buf();
    lorafleet::train::tiny::write_tiny_model(&dir, 11).expect("write tiny model");
    TrainModel::load(&dir, quantize).expect("load tiny model")
}

fn examples() -> Vec<TokenizedExample> {
    vec![TokenizedExample::new(&[1, 5, 9, 33, 7, 12], &[40, 41, 2]), TokenizedExample::new(&[1, 60, 3], &[22, 2])]
}

fn adapter(model: &TrainModel) -> LoraAdapter {
    // B non-zero (unlike a fresh init) so that every path carries gradient.
    LoraAdapter::random("t", &model.config, 4, 8.0, &LoraModule::ALL, 5, 0.3)
}

fn loss(model: &TrainModel, a: &LoraAdapter, batch: &TrainBatch, w: f32) -> f64 {
    loss_with(model, a, batch, w, StepOptions::default())
}

fn loss_with(model: &TrainModel, a: &LoraAdapter, batch: &TrainBatch, w: f32, opts: StepOptions) -> f64 {
    model.loss(a, batch, w, opts).unwrap()
}

/// Central differences on a sample of coordinates of every A and B of every module.
fn check_against_finite_differences(model: &TrainModel) {
    check_against_finite_differences_with(model, StepOptions::default())
}

fn check_against_finite_differences_with(model: &TrainModel, opts: StepOptions) {
    let loss = |model: &TrainModel, a: &LoraAdapter, batch: &TrainBatch, w: f32| loss_with(model, a, batch, w, opts);
    let ex = examples();
    let batch = TrainBatch::new(&ex.iter().collect::<Vec<_>>(), None);
    let w = 1.0 / batch.targets.len() as f32;
    let a = adapter(model);
    let mut grads = LoraGrads::zeros_like(&a);
    let l0 = model.forward_backward(&a, &batch, w, opts, &mut grads).unwrap();
    assert!((l0 - loss(model, &a, &batch, w)).abs() < 1e-6 * l0.abs(), "forward_backward and loss disagree");
    let h = 1e-2f32;
    let (mut num, mut ana) = (Vec::new(), Vec::new());
    for li in 0..model.config.num_layers {
        for m in LoraModule::ALL {
            for which in 0..2 {
                let len = {
                    let p = a.layers[li][m.index()].as_ref().unwrap();
                    if which == 0 {
                        p.a.data.len()
                    } else {
                        p.b.data.len()
                    }
                };
                let g = &grads.layers[li][m.index()].as_ref().unwrap();
                let g = if which == 0 { &g.0 } else { &g.1 };
                for k in 0..3 {
                    let idx = (k * 7919 + li * 31 + m.index() * 13) % len;
                    let mut ap = a.clone();
                    let mut am = a.clone();
                    {
                        let pp = ap.layers[li][m.index()].as_mut().unwrap();
                        let v = if which == 0 { &mut pp.a.data } else { &mut pp.b.data };
                        v[idx] += h;
                        let pm = am.layers[li][m.index()].as_mut().unwrap();
                        let v = if which == 0 { &mut pm.a.data } else { &mut pm.b.data };
                        v[idx] -= h;
                    }
                    num.push((loss(model, &ap, &batch, w) - loss(model, &am, &batch, w)) / (2.0 * h as f64));
                    ana.push(g[idx] as f64);
                }
            }
        }
    }
    let err: f64 = num.iter().zip(&ana).map(|(n, a)| (n - a).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = num.iter().map(|n| n * n).sum::<f64>().sqrt();
    assert!(norm > 1e-4, "gradients are ~0: the check would prove nothing");
    assert!(err / norm < 5e-3, "relative L2 error {} over {} coordinates (|grad| {norm})", err / norm, num.len());
}

#[test]
fn lora_gradients_match_finite_differences_f32_base() {
    check_against_finite_differences(&tiny(None));
}

#[test]
fn lora_gradients_match_finite_differences_nf4_base() {
    check_against_finite_differences(&tiny(Some(Quantization::Nf4)));
}

fn max_rel_diff(a: &LoraGrads, b: &LoraGrads) -> f64 {
    let err: f64 = a.buffers().zip(b.buffers()).flat_map(|(x, y)| x.iter().zip(y)).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let norm: f64 = a.buffers().flat_map(|x| x.iter()).map(|&x| x as f64 * x as f64).sum();
    (err / norm).sqrt()
}

#[test]
fn checkpointing_padding_and_vocab_chunks_do_not_change_the_gradients() {
    let model = tiny(None);
    let ex = examples();
    let refs: Vec<&TokenizedExample> = ex.iter().collect();
    let a = adapter(&model);
    let run = |batch: &TrainBatch, opts: StepOptions| {
        let mut g = LoraGrads::zeros_like(&a);
        let l = model.forward_backward(&a, batch, 0.2, opts, &mut g).unwrap();
        (l, g)
    };
    let packed = TrainBatch::new(&refs, None);
    let (l0, g0) = run(&packed, StepOptions::default());
    let (l1, g1) = run(&packed, StepOptions { checkpoint_activations: true, ..StepOptions::default() });
    assert_eq!(l0, l1);
    assert_eq!(max_rel_diff(&g0, &g1), 0.0, "recomputing a layer must give the same activations bit for bit");
    let (l2, g2) = run(&TrainBatch::new(&refs, Some(2)), StepOptions::default());
    assert!((l0 - l2).abs() < 1e-6 * l0.abs() && max_rel_diff(&g0, &g2) < 1e-5, "padded: loss {l2} vs {l0}, grads {}", max_rel_diff(&g0, &g2));
    let (l3, g3) = run(&packed, StepOptions { vocab_chunk: 7, ..StepOptions::default() });
    assert!((l0 - l3).abs() < 1e-6 * l0.abs() && max_rel_diff(&g0, &g3) < 1e-5, "vocab chunk 7: loss {l3} vs {l0}");
    // Two micro-batches accumulate to the gradient of the whole batch.
    let mut acc = LoraGrads::zeros_like(&a);
    let la = model.forward_backward(&a, &TrainBatch::new(&refs[..1], None), 0.2, StepOptions::default(), &mut acc).unwrap();
    let lb = model.forward_backward(&a, &TrainBatch::new(&refs[1..], None), 0.2, StepOptions::default(), &mut acc).unwrap();
    assert!((la + lb - l0).abs() < 1e-6 * l0.abs() && max_rel_diff(&g0, &acc) < 1e-5, "accumulated micro-batches differ");
}

/// Shared-prefix batches (the common prompt prefix laid out once) give the loss and LoRA
/// gradients of the packed layout, f32 and NF4 base, with and without checkpointing.
#[test]
fn shared_prefix_batches_give_the_packed_gradients() {
    // Three examples sharing a 4-token prefix (then differing), one with a longer common part.
    let ex = vec![
        TokenizedExample::new(&[1, 5, 9, 33, 7, 12], &[40, 41, 2]),
        TokenizedExample::new(&[1, 5, 9, 33, 60, 3], &[22, 2]),
        TokenizedExample::new(&[1, 5, 9, 33, 7, 12, 14], &[8, 2]),
    ];
    let refs: Vec<&TokenizedExample> = ex.iter().collect();
    let shared = TrainBatch::shared_prefix(&refs);
    assert_eq!(shared.seqs[0], lorafleet::backend::cpu::backward::SeqSpan::new(0, 4), "the common prefix is laid out once");
    assert_eq!(shared.n_tokens(), 4 + 5 + 4 + 5);
    for quantize in [None, Some(Quantization::Nf4)] {
        let model = tiny(quantize);
        let a = adapter(&model);
        let run = |batch: &TrainBatch, checkpoint_activations: bool| {
            let mut g = LoraGrads::zeros_like(&a);
            let l = model.forward_backward(&a, batch, 0.25, StepOptions { checkpoint_activations, ..StepOptions::default() }, &mut g).unwrap();
            (l, g)
        };
        let (l0, g0) = run(&TrainBatch::new(&refs, None), false);
        for ckpt in [false, true] {
            let (l1, g1) = run(&shared, ckpt);
            let d = max_rel_diff(&g0, &g1);
            assert!((l0 - l1).abs() < 1e-6 * l0.abs() && d < 1e-5, "{quantize:?} ckpt {ckpt}: loss {l1} vs {l0}, grads rel {d}");
        }
        assert!((loss(&model, &a, &shared, 0.25) - l0).abs() < 1e-6 * l0.abs());
    }
}

#[test]
fn lora_gradients_match_finite_differences_bf16_base() {
    let dir_guard = tempfile::Builder::new().prefix("lorafleet-tiny-model-").tempdir().unwrap();
    let dir = dir_guard.path().to_path_buf();
    lorafleet::train::tiny::write_tiny_model(&dir, 11).expect("write tiny model");
    let m = TrainModel::load_as(&dir, BaseFormat::Bf16).expect("load tiny model as bf16");
    let f = TrainModel::load_as(&dir, BaseFormat::F32).expect("load tiny model as f32");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(m.linear_weight_bytes() * 2, f.linear_weight_bytes(), "bf16 holds half the bytes of f32");
    // Rounded weights: a different loss, close to the f32 one.
    let ex = examples();
    let batch = TrainBatch::new(&ex.iter().collect::<Vec<_>>(), None);
    let a = adapter(&m);
    let (lb, lf) = (loss(&m, &a, &batch, 1.0), loss(&f, &a, &batch, 1.0));
    assert!(lb != lf && ((lb - lf) / lf).abs() < 1e-2, "bf16 loss {lb} vs f32 {lf}");
    check_against_finite_differences(&m);
}

/// LoRA dropout: the gradients are those of the loss under the step's masks (finite differences
/// with the same seed), the masks change the loss and differ between seeds, and a checkpointed
/// layer's recompute draws the same masks as its forward.
#[test]
fn lora_dropout_gradients_match_finite_differences_under_the_same_masks() {
    let model = tiny(None);
    let opts = StepOptions { lora_dropout: 0.3, dropout_seed: 77, ..StepOptions::default() };
    check_against_finite_differences_with(&model, opts);
    let ex = examples();
    let batch = TrainBatch::new(&ex.iter().collect::<Vec<_>>(), None);
    let a = adapter(&model);
    let l_none = loss_with(&model, &a, &batch, 1.0, StepOptions::default());
    let l_77 = loss_with(&model, &a, &batch, 1.0, opts);
    let l_78 = loss_with(&model, &a, &batch, 1.0, StepOptions { dropout_seed: 78, ..opts });
    assert!(l_77 != l_none && l_78 != l_77, "dropout must change the loss and the masks must depend on the seed: {l_none} {l_77} {l_78}");
    assert_eq!(l_77, loss_with(&model, &a, &batch, 1.0, opts), "same seed, same masks");
    let run = |o: StepOptions| {
        let mut g = LoraGrads::zeros_like(&a);
        let l = model.forward_backward(&a, &batch, 0.25, o, &mut g).unwrap();
        (l, g)
    };
    let (l1, g1) = run(opts);
    let (l2, g2) = run(StepOptions { checkpoint_activations: true, ..opts });
    assert!((l1 - l2).abs() < 1e-9 * l1.abs(), "checkpointing changed the loss: {l1} vs {l2}");
    assert!(max_rel_diff(&g1, &g2) < 1e-6, "checkpointing changed the gradients under dropout");
}
