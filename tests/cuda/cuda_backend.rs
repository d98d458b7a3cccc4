//! The CUDA backend (`CudaBackend`) runs the one forward pass of `model::llama` on the device and
//! agrees with the CPU backend, its oracle: small random models (the emulator runs them in
//! seconds) with f32, bf16 and NF4 bases, a ragged batch of prefills then decodes with mixed LoRA
//! adapters, and a Qwen2-style model with attention biases; f32 activations within 1e-4 relative
//! L2 of the CPU logits, bf16 activations within 2e-2. The real SmolLM2-135M against the HF
//! goldens: tests/cuda/cuda_golden.rs.
//!
//! Runs on a GPU, else on the CPU emulator (kernels/emu); skips only where neither exists.

use lorafleet::backend::cpu::CpuBackend;
use lorafleet::backend::cuda::{test_device, CudaBackend, DType};
use lorafleet::backend::Backend;
use lorafleet::kv::{BatchLayout, BlockPool, BlockTable};
use lorafleet::lora::{LoadedAdapter, LoraAdapter, LoraModule};
use lorafleet::model::random::RandomWeights;
use lorafleet::model::Llama;

use crate::common::rel_l2_f32 as rel_l2;
use crate::common::tiny_config;

fn cuda(test: &str, act: DType) -> Option<CudaBackend> {
    let ops = test_device(test)?;
    Some(CudaBackend::with_device(ops, act).expect("the CUDA backend's kernels load"))
}

/// Biases are 1 from `RandomWeights`; give them random values so the bias path is exercised.
struct Biased(RandomWeights);

impl lorafleet::model::llama::WeightSource for Biased {
    fn dense(&self, name: &str, rows: usize, cols: usize) -> lorafleet::Result<lorafleet::backend::HostMatrix> {
        self.0.dense(name, rows, cols)
    }
    fn linear(&self, name: &str, rows: usize, cols: usize) -> lorafleet::Result<lorafleet::backend::HostWeight> {
        self.0.linear(name, rows, cols)
    }
    fn vector(&self, name: &str, n: usize) -> lorafleet::Result<Vec<f32>> {
        if name.ends_with(".bias") {
            let mut rng = lorafleet::rng::SplitMix64::new(name.len() as u64 * 7919);
            return Ok(rng.nonzero(n, 0.3));
        }
        self.0.vector(name, n)
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// The same steps on both backends: (ids, per-sequence new-token counts, logit rows); sequences
/// keep their tables from step to step.
fn run_steps<B: Backend>(be: &B, model: &Llama<B>, adapters: &[Option<&LoadedAdapter<B>>], steps: &[(Vec<u32>, Vec<usize>)]) -> Vec<Vec<f32>> {
    let pool = BlockPool::new(64, 16);
    let mut kv = be.alloc_kv(model.kv_layout(16, pool.num_blocks())).unwrap();
    let n_seqs = steps[0].1.len();
    let mut tables: Vec<BlockTable> = (0..n_seqs).map(|_| BlockTable::new(&pool)).collect();
    let mut out = Vec::new();
    for (ids, news) in steps {
        for (t, &n) in tables.iter_mut().zip(news) {
            t.reserve(n).unwrap();
        }
        let parts: Vec<(&BlockTable, usize)> = tables.iter().zip(news.iter().copied()).collect();
        let batch = BatchLayout::new(16, &parts);
        let rows: Vec<usize> = (0..ids.len()).collect();
        let logits = model.forward_lora(be, ids, &batch, &mut kv, &rows, adapters).unwrap();
        out.push(be.to_host(&logits).unwrap());
        for (t, &n) in tables.iter_mut().zip(news) {
            t.advance(n);
        }
    }
    out
}

fn steps() -> Vec<(Vec<u32>, Vec<usize>)> {
    vec![
        // Prefill: 7, 3 and 20 tokens (the third crosses a block boundary).
        ((0..30).map(|i| (i * 37 + 5) % 97).collect(), vec![7, 3, 20]),
        // Decode: one token each.
        (vec![11, 45, 96], vec![1, 1, 1]),
        (vec![3, 4, 5], vec![1, 1, 1]),
        // A second prefill chunk for the first sequence, decodes for the others.
        ((0..9).map(|i| (i * 13 + 2) % 97).collect(), vec![7, 1, 1]),
    ]
}

fn compare(what: &str, cpu: &[Vec<f32>], gpu: &[Vec<f32>], tol: f64) {
    for (s, (c, g)) in cpu.iter().zip(gpu).enumerate() {
        let e = rel_l2(g, c, &format!("{what} step {s}"));
        eprintln!("{what}: step {s}: logits rel L2 {e:.2e}");
        assert!(e < tol, "{what}: step {s}: logits rel L2 {e:.2e} (tolerance {tol:e})");
    }
}

fn parity(test: &str, act: DType, nf4: bool, bias: bool, tied: bool, with_lora: bool) {
    let Some(gpu) = cuda(test, act) else { return };
    let cfg = tiny_config(bias, tied);
    let cpu = CpuBackend::new();
    let src = Biased(RandomWeights { seed: 7, nf4 });
    let m_cpu = Llama::from_source(&cpu, cfg.clone(), &src, false).unwrap();
    let m_gpu = Llama::from_source(&gpu, cfg.clone(), &src, false).unwrap();
    let ad: Vec<LoraAdapter> = if with_lora {
        vec![
            LoraAdapter::random("a", &cfg, 4, 8.0, &LoraModule::ALL, 1, 0.5),
            LoraAdapter::random("b", &cfg, 8, 8.0, &[LoraModule::Q, LoraModule::V, LoraModule::Down], 2, 0.5),
        ]
    } else {
        vec![]
    };
    let la_cpu: Vec<LoadedAdapter<CpuBackend>> = ad.iter().map(|a| LoadedAdapter::upload(&cpu, a).unwrap()).collect();
    let la_gpu: Vec<LoadedAdapter<CudaBackend>> = ad.iter().map(|a| LoadedAdapter::upload(&gpu, a).unwrap()).collect();
    // Sequence 0 the base, 1 adapter a, 2 adapter b (or all base).
    let sel_cpu: Vec<Option<&LoadedAdapter<CpuBackend>>> = if with_lora { vec![None, Some(&la_cpu[0]), Some(&la_cpu[1])] } else { vec![] };
    let sel_gpu: Vec<Option<&LoadedAdapter<CudaBackend>>> = if with_lora { vec![None, Some(&la_gpu[0]), Some(&la_gpu[1])] } else { vec![] };
    let c = run_steps(&cpu, &m_cpu, &sel_cpu, &steps());
    let g = run_steps(&gpu, &m_gpu, &sel_gpu, &steps());
    let tol = if act == DType::F32 { 1e-4 } else { 2e-2 };
    compare(&format!("{test} ({})", gpu.name()), &c, &g, tol);
}

#[test]
fn f32_base_f32_activations_match_cpu() {
    parity("cuda_backend::f32_base_f32", DType::F32, false, false, true, false);
}

#[test]
fn nf4_base_f32_activations_with_lora_match_cpu() {
    parity("cuda_backend::nf4_base_f32_lora", DType::F32, true, false, false, true);
}

#[test]
fn f32_base_with_lora_and_qwen2_biases_match_cpu() {
    parity("cuda_backend::f32_lora_bias", DType::F32, false, true, false, true);
}

#[test]
fn nf4_base_with_biases_match_cpu() {
    parity("cuda_backend::nf4_bias", DType::F32, true, true, true, false);
}

#[test]
fn bf16_activations_with_lora_match_cpu() {
    parity("cuda_backend::bf16_lora", DType::Bf16, false, true, false, true);
}

#[test]
fn bf16_activations_nf4_base_match_cpu() {
    parity("cuda_backend::bf16_nf4", DType::Bf16, true, false, true, false);
}

#[test]
fn bad_input_fails_only_its_call() {
    let Some(gpu) = cuda("cuda_backend::bad_input", DType::F32) else { return };
    let cfg = tiny_config(false, true);
    let m = Llama::from_source(&gpu, cfg.clone(), &RandomWeights { seed: 3, nf4: false }, false).unwrap();
    let pool = BlockPool::new(8, 16);
    let mut kv = gpu.alloc_kv(m.kv_layout(16, pool.num_blocks())).unwrap();
    let mut t = BlockTable::new(&pool);
    t.reserve(3).unwrap();
    let batch = BatchLayout::new(16, &[(&t, 3)]);
    // A token id outside the vocabulary.
    let e = m.forward(&gpu, &[1, 97, 2], &batch, &mut kv, &[2]).err().expect("an id past the vocabulary");
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    // A logit row past the batch.
    let e = m.forward(&gpu, &[1, 2, 3], &batch, &mut kv, &[3]).err().expect("a row past the batch");
    assert!(e.to_string().contains("gather_rows"), "{e}");
    // The device is still usable.
    let ok = m.forward(&gpu, &[1, 2, 3], &batch, &mut kv, &[2]).unwrap();
    assert!(gpu.to_host(&ok).unwrap().iter().all(|v| v.is_finite()));
}

/// Decode steps replayed from CUDA graphs give what eager launches give: the same greedy tokens,
/// logits within 1e-5 (the graph's padded plans split attention and LoRA differently), over a
/// shape's warm-up, capture and replays, with adapters changing between steps.
#[test]
fn cuda_graphs_on_and_off_decode_the_same() {
    let Some(on) = cuda("cuda_backend::graphs_on", DType::F32) else { return };
    let off = cuda("cuda_backend::graphs_off", DType::F32).unwrap();
    off.set_graphs(false);
    let cfg = tiny_config(false, false);
    let src = RandomWeights { seed: 9, nf4: true };
    let (m_on, m_off) = (Llama::from_source(&on, cfg.clone(), &src, false).unwrap(), Llama::from_source(&off, cfg.clone(), &src, false).unwrap());
    let ad = LoraAdapter::random("a", &cfg, 8, 16.0, &LoraModule::ALL, 4, 0.5);
    let (a_on, a_off) = (LoadedAdapter::upload(&on, &ad).unwrap(), LoadedAdapter::upload(&off, &ad).unwrap());
    let mut runs: Vec<Vec<Vec<f32>>> = Vec::new();
    for (be, m, a) in [(&on, &m_on, &a_on), (&off, &m_off, &a_off)] {
        let pool = BlockPool::new(64, 16);
        let mut kv = be.alloc_kv(m.kv_layout(16, pool.num_blocks())).unwrap();
        let mut tables: Vec<BlockTable> = (0..3).map(|_| BlockTable::new(&pool)).collect();
        let mut out = Vec::new();
        let mut ids: Vec<u32> = (0..25).map(|i| (i * 11 + 4) % 97).collect();
        let mut news = vec![10, 5, 10];
        for step in 0..8 {
            // The adapters move between the sequences from step to step.
            let which: Vec<Option<&LoadedAdapter<CudaBackend>>> = (0..3).map(|s| ((s + step) % 3 != 0).then_some(a)).collect();
            for (t, &n) in tables.iter_mut().zip(&news) {
                t.reserve(n).unwrap();
            }
            let parts: Vec<(&BlockTable, usize)> = tables.iter().zip(news.iter().copied()).collect();
            let batch = BatchLayout::new(16, &parts);
            let logits = be.to_host(&m.forward_lora(be, &ids, &batch, &mut kv, &batch.last_rows(), &which).unwrap()).unwrap();
            for (t, &n) in tables.iter_mut().zip(&news) {
                t.advance(n);
            }
            // Greedy next tokens for the three sequences.
            ids = logits.chunks_exact(97).map(|r| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32).collect();
            news = vec![1, 1, 1];
            out.push(logits);
        }
        runs.push(out);
    }
    let (captures, replays) = on.graph_stats();
    eprintln!("graphs: {captures} captures, {replays} replays");
    assert!(captures >= 1 && replays >= 4, "decode steps replay from a graph ({captures} captures, {replays} replays)");
    assert_eq!(off.graph_stats(), (0, 0), "--no-cuda-graphs captures nothing");
    for (s, (g, e)) in runs[0].iter().zip(&runs[1]).enumerate() {
        let err = rel_l2(g, e, &format!("step {s}"));
        assert!(err < 1e-5, "step {s}: graph vs eager logits rel L2 {err:.2e}");
    }
}
