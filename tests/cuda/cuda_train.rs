//! The trainer (`TrainModel`, written once against `TrainBackend`) on the CUDA backend against
//! the CPU backend, its oracle: a tiny random Llama (`train::tiny`) with f32, bf16 and NF4 bases;
//! packed, shared-prefix and padded batches; LoRA dropout and activation checkpointing. The loss
//! within 1e-5 relative and every LoRA gradient within 1e-4 relative L2 of the CPU's, and a short
//! AdamW run (20 updates) on both backends follows the same loss curve within 1e-4.
//!
//! Runs on a GPU, else on the CPU emulator (kernels/emu); skips only where neither exists.

use lorafleet::backend::cuda::{test_device, CudaBackend, DType};
use lorafleet::backend::train::TrainBackend;
use lorafleet::lora::{LoraAdapter, LoraModule};
use lorafleet::train::{BaseFormat, LoraGrads, StepOptions, TokenizedExample, TrainBatch, TrainModel};

use crate::common::rel_l2;

/// The tiny model on the CPU and on the device (None: no device, the test skips).
fn models(test: &str, format: BaseFormat) -> Option<(TrainModel, TrainModel<CudaBackend>)> {
    let ops = test_device(test)?;
    let dir = tempfile::Builder::new().prefix("lorafleet-cuda-train-").tempdir().unwrap();
    lorafleet::train::tiny::write_tiny_model(dir.path(), 11).expect("write tiny model");
    let cpu = TrainModel::load_as(dir.path(), format).expect("load on the CPU");
    let be = CudaBackend::with_device(ops, DType::F32).expect("the CUDA backend's kernels load");
    let cuda = TrainModel::load_on(be, dir.path(), format).expect("load on the device");
    Some((cpu, cuda))
}

fn examples() -> Vec<TokenizedExample> {
    vec![
        TokenizedExample::new(&[1, 5, 9, 33, 7, 12, 14], &[40, 41, 2]),
        TokenizedExample::new(&[1, 5, 9, 33, 60, 3], &[22, 2]),
        TokenizedExample::new(&[1, 5, 9, 8, 17], &[23, 24, 25, 2]),
    ]
}

fn adapter(model: &TrainModel, seed: u64) -> LoraAdapter {
    // B non-zero (unlike a fresh init) so that every path carries gradient.
    LoraAdapter::random("t", &model.config, 4, 8.0, &LoraModule::ALL, seed, 0.3)
}

fn grads_of<B: TrainBackend>(model: &TrainModel<B>, a: &LoraAdapter, batch: &TrainBatch, opts: StepOptions) -> (f64, LoraGrads) {
    let mut g = LoraGrads::zeros_like(a);
    let w = 1.0 / batch.targets.len() as f32;
    let loss = model.forward_backward(a, batch, w, opts, &mut g).expect("forward_backward");
    (loss, g)
}

/// The loss and every gradient of the CUDA model against the CPU's.
fn check_parity(test: &str, format: BaseFormat) {
    let Some((cpu, cuda)) = models(test, format) else { return };
    let ex = examples();
    let refs: Vec<&TokenizedExample> = ex.iter().collect();
    let layouts = [("packed", TrainBatch::new(&refs, None)), ("shared prefix", TrainBatch::shared_prefix(&refs)), ("padded", TrainBatch::new(&refs, Some(0)))];
    let option_sets = [
        ("default", StepOptions::default()),
        ("dropout + checkpointing + small vocab chunks", StepOptions { checkpoint_activations: true, vocab_chunk: 37, lora_dropout: 0.25, dropout_seed: 99 }),
    ];
    let a = adapter(&cpu, 5);
    for (layout, batch) in &layouts {
        for (what, opts) in &option_sets {
            let (l_cpu, g_cpu) = grads_of(&cpu, &a, batch, *opts);
            let (l_cuda, g_cuda) = grads_of(&cuda, &a, batch, *opts);
            let rel = (l_cuda - l_cpu).abs() / l_cpu.abs();
            assert!(rel < 1e-5, "{format:?} {layout} {what}: loss {l_cuda} on CUDA vs {l_cpu} on the CPU ({rel:.2e} relative)");
            let named_cpu = g_cpu.named(&a);
            let named_cuda = g_cuda.named(&a);
            assert_eq!(named_cpu.len(), 2 * 7 * cpu.config.num_layers, "every A and B of every module");
            let mut worst = 0.0f64;
            for ((name, _, want), (_, _, got)) in named_cpu.iter().zip(&named_cuda) {
                assert!(want.iter().any(|&v| v != 0.0), "{name}: the CPU gradient is all zeros (the check would prove nothing)");
                let e = rel_l2(got, want);
                assert!(e < 1e-4, "{format:?} {layout} {what}: {name} is {e:.2e} relative L2 from the CPU's");
                worst = worst.max(e);
            }
            // The loss through `loss()` (forward only) agrees too.
            let w = 1.0 / batch.targets.len() as f32;
            let l_fwd = cuda.loss(&a, batch, w, *opts).expect("loss");
            assert!((l_fwd - l_cuda).abs() <= 1e-6 * l_cuda.abs(), "{format:?} {layout} {what}: loss() {l_fwd} vs forward_backward {l_cuda}");
            eprintln!("{format:?} {layout} {what}: loss {l_cuda:.7} (CPU {l_cpu:.7}), worst gradient {worst:.2e} relative L2");
        }
    }
}

#[test]
fn gradients_match_the_cpu_f32_base() {
    check_parity("cuda_train f32", BaseFormat::F32);
}

#[test]
fn gradients_match_the_cpu_bf16_base() {
    check_parity("cuda_train bf16", BaseFormat::Bf16);
}

#[test]
fn gradients_match_the_cpu_nf4_base() {
    check_parity("cuda_train nf4", BaseFormat::Nf4);
}

/// Plain AdamW (PyTorch's defaults but lr) over every LoRA parameter: the same update on both
/// backends, so the curves differ only by the backends' gradients.
fn adamw_run<B: TrainBackend>(model: &TrainModel<B>, batch: &TrainBatch, steps: usize) -> Vec<f64> {
    let mut a = LoraAdapter::random("t", &model.config, 4, 8.0, &LoraModule::ALL, 21, 0.05);
    let (lr, b1, b2, eps, wd) = (1e-2f32, 0.9f32, 0.999f32, 1e-8f32, 0.01f32);
    let sizes: Vec<usize> = LoraGrads::zeros_like(&a).buffers().map(|b| b.len()).collect();
    let mut m: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
    let mut v = m.clone();
    let mut curve = Vec::new();
    for step in 1..=steps {
        let mut g = LoraGrads::zeros_like(&a);
        let w = 1.0 / batch.targets.len() as f32;
        curve.push(model.forward_backward(&a, batch, w, StepOptions::default(), &mut g).expect("forward_backward"));
        let params = a.layers.iter_mut().flatten().flatten().flat_map(|p| [&mut p.a.data, &mut p.b.data]);
        for (((p, g), m), v) in params.zip(g.buffers()).zip(&mut m).zip(&mut v) {
            let (c1, c2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
            for i in 0..p.len() {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                p[i] -= lr * (m[i] / c1 / ((v[i] / c2).sqrt() + eps) + wd * p[i]);
            }
        }
    }
    curve
}

#[test]
fn twenty_updates_follow_the_cpu_loss_curve() {
    let Some((cpu, cuda)) = models("cuda_train 20 updates", BaseFormat::F32) else { return };
    let ex = examples();
    let batch = TrainBatch::new(&ex.iter().collect::<Vec<_>>(), None);
    let (c_cpu, c_cuda) = (adamw_run(&cpu, &batch, 20), adamw_run(&cuda, &batch, 20));
    assert!(c_cpu[19] < c_cpu[0] * 0.9, "the run learns (loss {} -> {})", c_cpu[0], c_cpu[19]);
    for (i, (a, b)) in c_cpu.iter().zip(&c_cuda).enumerate() {
        assert!((a - b).abs() <= 1e-4 * a.abs(), "update {i}: loss {b} on CUDA vs {a} on the CPU");
    }
    eprintln!("20 updates: loss {:.5} -> {:.5} on the CPU, {:.5} -> {:.5} on CUDA", c_cpu[0], c_cpu[19], c_cuda[0], c_cuda[19]);
}
