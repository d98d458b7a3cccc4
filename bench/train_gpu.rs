//! Benchmarks of the training kernels on one GPU (kernels/lora_backward.cu, ops_backward.cu,
//! attention_train.cu, cross_entropy.cu); without a CUDA device it prints one `SKIP` line and
//! exits.
//!
//! Shapes: 512 token rows of a Mistral-7B layer (hidden 4096, 32 + 8 heads of 128, intermediate
//! 14336) and of SmolLM2-135M (576, 9 + 3 × 64, 1536); LoRA rank 16 (Mistral) / 8 (SmolLM2).
//! `Throughput::Bytes` = what one call must move at least (kernels/NOTES.md gives the floors):
//! - `lora backward`: dy and x read once, dx read and written, A, B, dA, dB, xa;
//! - `rms_norm backward`: x, dy read, dx read and written (accumulating);
//! - `rope backward`: dq, dk read and written;
//! - `silu_mul backward`: gate, up, dout read, dgate, dup written.
//! The compute-bound ones report `Throughput::Elements` = useful FLOP (masked pairs not counted):
//! - `attention forward` / `backward`: one causal 512-row sequence, all heads; 4·d and 10·d FLOP
//!   per visible (query, key) pair (QKᵀ, PV; then S, dP, dV, dK, dQ);
//! - `cross-entropy`: the 512 rows against the whole lm_head (vocab 32000 / 49152), chunks of
//!   8192: 4·rows·vocab·hidden FLOP (the logits and S += e·W).
//! - `linear_dx` (kernels/train_ops.cu through `TrainBackend`): dx = dy · W of the down projection
//!   `[hidden, intermediate]`, 2·rows·hidden·intermediate FLOP, f32 weights and NF4 weights (NF4:
//!   dequantized to f32 first, counted in the time, not in the FLOP);
//! - `lora forward`: x·Aᵀ then y += s·xa·Bᵀ on the down projection, 2·rows·r·(in + out) FLOP.
//! After criterion's groups a summary prints, per call (median of 7 runs of 50 launches), MB and
//! GB/s or GFLOP and TFLOP/s, to set against the floors in kernels/NOTES.md. `cargo bench --bench train_gpu --
//! --test` runs each once.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cudarc::driver::CudaSlice;
use lorafleet::backend::cpu::backward::SeqSpan;
use lorafleet::backend::cpu::ops as cpu_ops;
use lorafleet::backend::cuda::attention_train::{AttnTrainDims, CudaAttentionTrain};
use lorafleet::backend::cuda::cross_entropy::CudaCrossEntropy;
use lorafleet::backend::cuda::lora_backward::{CudaLoraBackward, LoraBackwardShape};
use lorafleet::backend::cuda::ops_backward::CudaOpsBackward;
use lorafleet::backend::cuda::{bench_device, CudaBackend, CudaDevice, DType, RopeDims};
use lorafleet::backend::train::TrainBackend;
use lorafleet::backend::{Backend, HostMatrix, HostWeight};
use lorafleet::rng::SplitMix64;

const ROWS: usize = 512;

/// (name, hidden, q heads, kv heads, head_dim, intermediate, lora rank, vocab)
const MODELS: [(&str, usize, usize, usize, usize, usize, usize, usize); 2] =
    [("mistral-7b", 4096, 32, 8, 128, 14336, 16, 32000), ("smollm2-135m", 576, 9, 3, 64, 1536, 8, 49152)];

/// What a summary line measures: bytes moved (memory-bound kernels) or FLOP (compute-bound).
#[derive(Clone, Copy)]
enum Work {
    Bytes(f64),
    Flop(f64),
}

fn up(ops: &CudaDevice, rng: &mut SplitMix64, n: usize) -> CudaSlice<f32> {
    ops.upload(&rng.nonzero(n, 1.0)).expect("upload")
}

fn seconds_per_call(ops: &CudaDevice, mut f: impl FnMut()) -> f64 {
    let run = |f: &mut dyn FnMut(), n: u32| {
        ops.synchronize().expect("synchronize");
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        ops.synchronize().expect("synchronize");
        t.elapsed().as_secs_f64() / n as f64
    };
    run(&mut f, 10);
    let mut v: Vec<f64> = (0..7).map(|_| run(&mut f, 50)).collect();
    v.sort_by(f64::total_cmp);
    v[3]
}

fn bench(c: &mut Criterion) {
    let Some(ops) = bench_device("bench train_gpu") else { return };
    let lora = CudaLoraBackward::new(&ops).expect("lora_backward module");
    let bw = CudaOpsBackward::new(&ops).expect("ops_backward module");
    let attn = CudaAttentionTrain::new(&ops).expect("attention_train module");
    let ce = CudaCrossEntropy::new(&ops).expect("cross_entropy module");
    // The trainer's own ops run through the backend (its own stream on the same device).
    let be = CudaBackend::with_device(ops.sibling().expect("a second stream"), DType::F32).expect("the CUDA backend");
    let mut rng = SplitMix64::new(5);
    let mut summary = Vec::new();
    let f = 4.0; // bytes per f32
    for (name, h, nq, nk, hd, ff, r, vocab) in MODELS {
        let mut g = c.benchmark_group(format!("train_gpu {name}"));
        // LoRA backward of the MLP down projection (ff -> h): the largest d_in.
        let s = LoraBackwardShape { rows: ROWS, d_in: ff, d_out: h, rank: r, scale: 2.0 };
        let (x, xa, dy, a, b) =
            (up(&ops, &mut rng, ROWS * ff), up(&ops, &mut rng, ROWS * r), up(&ops, &mut rng, ROWS * h), up(&ops, &mut rng, r * ff), up(&ops, &mut rng, h * r));
        let (mut da, mut db, mut dx) = (up(&ops, &mut rng, r * ff), up(&ops, &mut rng, h * r), up(&ops, &mut rng, ROWS * ff));
        let bytes = f * (ROWS * h + ROWS * ff + 2 * ROWS * ff + ROWS * r + 3 * (r * ff + h * r)) as f64;
        g.throughput(Throughput::Bytes(bytes as u64));
        let mut call = || lora.run(&ops, &s, &x, &xa, &dy, &a, &b, &mut da, &mut db, Some(&mut dx)).expect("lora backward");
        g.bench_function("lora backward (down proj)", |bn| bn.iter(|| black_box(call())));
        summary.push((format!("{name} lora backward {ff}->{h} r{r}"), Work::Bytes(bytes), seconds_per_call(&ops, call)));
        // RMSNorm backward, accumulating.
        let (xr, w, dyr) = (up(&ops, &mut rng, ROWS * h), up(&ops, &mut rng, h), up(&ops, &mut rng, ROWS * h));
        let mut dxr = up(&ops, &mut rng, ROWS * h);
        let bytes = f * (4 * ROWS * h + h) as f64;
        g.throughput(Throughput::Bytes(bytes as u64));
        let mut call = || bw.rms_norm_backward(&ops, &xr, &w, &dyr, &mut dxr, ROWS, h, 1e-5, true).expect("rms_norm backward");
        g.bench_function("rms_norm backward", |bn| bn.iter(|| black_box(call())));
        summary.push((format!("{name} rms_norm backward"), Work::Bytes(bytes), seconds_per_call(&ops, call)));
        // RoPE backward.
        let inv: Vec<f32> = (0..hd / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32)).collect();
        let (cos, sin) = cpu_ops::rope_tables(&inv, 4096);
        let (cg, sg) = (ops.upload(&cos).expect("upload"), ops.upload(&sin).expect("upload"));
        let (mut dq, mut dk) = (up(&ops, &mut rng, ROWS * nq * hd), up(&ops, &mut rng, ROWS * nk * hd));
        let positions: Vec<u32> = (0..ROWS as u32).collect();
        let dims = RopeDims { n_q_heads: nq, n_k_heads: nk, head_dim: hd };
        let bytes = f * (2 * ROWS * (nq + nk) * hd) as f64;
        g.throughput(Throughput::Bytes(bytes as u64));
        let mut call = || bw.rope_backward(&ops, &mut dq, &mut dk, &positions, &cg, &sg, dims).expect("rope backward");
        g.bench_function("rope backward", |bn| bn.iter(|| black_box(call())));
        summary.push((format!("{name} rope backward"), Work::Bytes(bytes), seconds_per_call(&ops, call)));
        // SiLU·mul backward.
        let n = ROWS * ff;
        let (gt, u, d) = (up(&ops, &mut rng, n), up(&ops, &mut rng, n), up(&ops, &mut rng, n));
        let (mut dg, mut du) = (up(&ops, &mut rng, n), up(&ops, &mut rng, n));
        let bytes = f * (5 * n) as f64;
        g.throughput(Throughput::Bytes(bytes as u64));
        let mut call = || bw.silu_mul_backward(&ops, &gt, &u, &d, &mut dg, &mut du).expect("silu_mul backward");
        g.bench_function("silu_mul backward", |bn| bn.iter(|| black_box(call())));
        summary.push((format!("{name} silu_mul backward"), Work::Bytes(bytes), seconds_per_call(&ops, call)));
        // Causal attention over one 512-row sequence, forward then backward.
        let dims = AttnTrainDims { rows: ROWS, n_heads: nq, n_kv_heads: nk, head_dim: hd };
        let spans = [SeqSpan::new(0, ROWS)];
        let (q, k, v, dout) =
            (up(&ops, &mut rng, ROWS * nq * hd), up(&ops, &mut rng, ROWS * nk * hd), up(&ops, &mut rng, ROWS * nk * hd), up(&ops, &mut rng, ROWS * nq * hd));
        let pairs = (ROWS * (ROWS + 1) / 2 * nq) as f64;
        let flop = 4.0 * hd as f64 * pairs;
        g.throughput(Throughput::Elements(flop as u64));
        let call = || attn.forward(&ops, &dims, &spans, &q, &k, &v).expect("attention forward");
        g.bench_function("attention forward", |bn| bn.iter(|| black_box(call())));
        summary.push((format!("{name} attention forward 512"), Work::Flop(flop), seconds_per_call(&ops, || drop(call()))));
        let (out, lse) = call();
        let flop = 10.0 * hd as f64 * pairs;
        g.throughput(Throughput::Elements(flop as u64));
        let call = || attn.backward(&ops, &dims, &spans, &q, &k, &v, &out, &lse, &dout).expect("attention backward");
        g.bench_function("attention backward", |bn| bn.iter(|| black_box(call())));
        summary.push((format!("{name} attention backward 512"), Work::Flop(flop), seconds_per_call(&ops, || drop(call()))));
        // Cross-entropy fused with the lm_head over every row.
        let (hs, w) = (up(&ops, &mut rng, ROWS * h), ops.upload(&rng.nonzero(vocab * h, 0.05)).expect("upload"));
        let targets: Vec<u32> = (0..ROWS).map(|_| rng.below(vocab) as u32).collect();
        let weights = vec![1.0 / ROWS as f32; ROWS];
        let flop = 4.0 * (ROWS * vocab * h) as f64;
        g.throughput(Throughput::Elements(flop as u64));
        let call = || ce.run(&ops, &hs, &w, h, &targets, &weights, 8192).expect("cross-entropy");
        g.bench_function("cross-entropy (lm_head)", |bn| bn.iter(|| black_box(call())));
        summary.push((format!("{name} cross-entropy vocab {vocab}"), Work::Flop(flop), seconds_per_call(&ops, || drop(call()))));
        // dx = dy · W through the frozen down projection W [h, ff], f32 and NF4.
        let wd = rng.nonzero(h * ff, 0.05);
        let dy_t = be.tensor_from_host(&rng.nonzero(ROWS * h, 1.0), ROWS, h).expect("upload");
        let mut dx_t = be.zeros(ROWS, ff).expect("zeros");
        let flop = 2.0 * (ROWS * h * ff) as f64;
        g.throughput(Throughput::Elements(flop as u64));
        for (kind, hw) in [
            ("f32", HostWeight::Dense(HostMatrix { name: "down".into(), rows: h, cols: ff, data: wd.clone() })),
            ("nf4", HostWeight::Nf4 { name: "down".into(), tensor: lorafleet::quant::Nf4Tensor::quantize(&wd, &[h, ff], true) }),
        ] {
            let w = be.upload_matrix(hw).expect("upload weight");
            let mut call = || be.linear_dx(&dy_t, &w, &mut dx_t, false).expect("linear_dx");
            g.bench_function(format!("linear_dx {kind} (down proj)"), |bn| bn.iter(|| black_box(call())));
            summary.push((format!("{name} linear_dx {kind} {h}x{ff}"), Work::Flop(flop), seconds_per_call(be.device(), call)));
        }
        // LoRA forward on the down projection, keeping x·Aᵀ.
        let x_t = be.tensor_from_host(&rng.nonzero(ROWS * ff, 1.0), ROWS, ff).expect("upload");
        let a_t = be.tensor_from_host(&rng.nonzero(r * ff, 0.05), r, ff).expect("upload");
        let b_t = be.tensor_from_host(&rng.nonzero(h * r, 0.05), h, r).expect("upload");
        let mut y_t = be.zeros(ROWS, h).expect("zeros");
        let flop = 2.0 * (ROWS * r * (ff + h)) as f64;
        g.throughput(Throughput::Elements(flop as u64));
        let mut call = || be.lora_forward(&mut y_t, &x_t, &a_t, &b_t, 2.0).expect("lora forward");
        g.bench_function("lora forward (down proj)", |bn| bn.iter(|| black_box(drop(call()))));
        summary.push((format!("{name} lora forward {ff}->{h} r{r}"), Work::Flop(flop), seconds_per_call(be.device(), || drop(call()))));
        g.finish();
    }
    println!("\n{:<48} {:>14} {:>10} {:>14}", "kernel", "MB | GFLOP", "µs", "GB/s | TFLOP/s");
    for (what, work, s) in summary {
        match work {
            Work::Bytes(b) => println!("{what:<48} {:>11.2} MB {:>10.2} {:>9.0} GB/s", b / 1e6, s * 1e6, b / s / 1e9),
            Work::Flop(f) => println!("{what:<48} {:>8.2} GFLOP {:>10.2} {:>6.2} TFLOP/s", f / 1e9, s * 1e6, f / s / 1e12),
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
