//! Benchmarks of batched LoRA: the CPU twin (`backend::cpu::lora`, f32, always) and the CUDA
//! kernels (kernels/lora_sgmv.cu, bf16, when a device is present; else one `SKIP` line).
//!
//! Shapes (issue 5): a batch of 64 tokens, hidden 4096 -> 4096, ranks 8, 16 and 64, with 1, 8
//! and 32 distinct adapters, in two layouts:
//! - prefill (SGMV): n segments of 64 / n consecutive tokens, one per adapter;
//! - decode (BGMV): 64 segments of one token each, adapters assigned round robin.
//!
//! `Throughput::Bytes` = the adapter weights the step reads (each distinct adapter once) plus the
//! activations, e = bytes per element (4 f32, 2 bf16), T = 64, d = 4096:
//!   shrink: n · r · d · e (A) + T · d · e (x read)
//!   expand: n · d · r · e (B) + 2 · T · d · e (y read and written)
//!   apply (shrink + expand): the sum.
//! The f32 split-K workspace (T · r · 4 bytes per chunk) and the metadata are not counted. Floors
//! and the goal: kernels/NOTES.md (lora_sgmv section).
//!
//! A CUDA sample is `iters` back-to-back launches then one synchronisation. `shrink` and `expand`
//! time one kernel each on a prepared step; `apply` includes `prepare` (checks, metadata upload,
//! workspace allocation), as the engine pays it per layer today. `cargo bench --bench lora --
//! --test` runs each once.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use cudarc::driver::CudaSlice;
use half::bf16;
use lorafleet::backend::cpu::lora::{self as cpu, LoraSegmentRef};
use lorafleet::backend::cuda::lora::{CudaLora, CudaLoraSegment, LoraKernel, LoraShape};
use lorafleet::backend::cuda::{bench_device, CudaDevice};

const TOKENS: usize = 64;
const HIDDEN: usize = 4096;
const RANKS: [usize; 3] = [8, 16, 64];
const ADAPTERS: [usize; 3] = [1, 8, 32];

fn data(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i ^ seed.wrapping_mul(0x9e37_79b9)).wrapping_mul(0x85eb_ca6b) >> 8;
            ((h as f32 / (1u32 << 24) as f32) * 1.9 - 0.95 + 1e-3) * scale
        })
        .collect()
}

/// `(start, len, adapter)` segments of the two layouts.
fn layout(kernel: LoraKernel, n_adapters: usize) -> Vec<(usize, usize, usize)> {
    match kernel {
        LoraKernel::Sgmv => {
            let len = TOKENS / n_adapters;
            (0..n_adapters).map(|i| (i * len, len, i)).collect()
        }
        LoraKernel::Bgmv => (0..TOKENS).map(|t| (t, 1, t % n_adapters)).collect(),
    }
}

fn layout_name(kernel: LoraKernel) -> &'static str {
    match kernel {
        LoraKernel::Sgmv => "sgmv",
        LoraKernel::Bgmv => "bgmv",
    }
}

/// Bytes of (shrink, expand) at element size e.
fn bytes(rank: usize, n_adapters: usize, e: usize) -> (u64, u64) {
    let w = n_adapters * rank * HIDDEN * e;
    ((w + TOKENS * HIDDEN * e) as u64, (w + 2 * TOKENS * HIDDEN * e) as u64)
}

fn cpu_benches(c: &mut Criterion) {
    // The CPU kernels run at one level per process: `LORAFLEET_CPU_ISA=avx2|portable cargo bench`
    // measures a lower one (bench/RESULTS.md gives each level's figures).
    eprintln!("{}", lorafleet::backend::cpu::isa::summary());
    let x = data(TOKENS * HIDDEN, 1, 1.0);
    let mut y = data(TOKENS * HIDDEN, 2, 1.0);
    let mut g = c.benchmark_group("cpu_f32_lora");
    for rank in RANKS {
        let adapters: Vec<(Vec<f32>, Vec<f32>)> = (0..32u32).map(|i| (data(rank * HIDDEN, 10 + i, 0.02), data(HIDDEN * rank, 100 + i, 0.2))).collect();
        for n in ADAPTERS {
            for kernel in [LoraKernel::Sgmv, LoraKernel::Bgmv] {
                let segs: Vec<LoraSegmentRef<'_>> = layout(kernel, n)
                    .into_iter()
                    .map(|(start, len, i)| LoraSegmentRef { start, len, a: &adapters[i].0, b: &adapters[i].1, rank, scale: 2.0 })
                    .collect();
                let (bs, be) = bytes(rank, n, 4);
                let name = format!("{} layout r{rank} x{n} adapters", layout_name(kernel));
                g.throughput(Throughput::Bytes(bs + be));
                g.bench_function(format!("apply {name}"), |b| b.iter(|| cpu::lora_apply(black_box(&x), HIDDEN, &segs, &mut y, HIDDEN).expect("lora_apply")));
            }
        }
    }
    g.finish();
}

/// `iters` launches and one synchronisation (`timed_launches`).
fn timed(ops: &CudaDevice, iters: u64, f: impl FnMut()) -> Duration {
    lorafleet::backend::cuda::timed_launches(ops, iters, f)
}

#[allow(clippy::too_many_arguments)]
fn cuda_case(
    g: &mut BenchmarkGroup<'_, WallTime>,
    ops: &CudaDevice,
    lora: &CudaLora,
    adapters: &[(CudaSlice<bf16>, CudaSlice<bf16>)],
    x: &CudaSlice<bf16>,
    y: &mut CudaSlice<bf16>,
    rank: usize,
    n: usize,
    kernel: LoraKernel,
) {
    let segs: Vec<CudaLoraSegment<'_, bf16>> = layout(kernel, n)
        .into_iter()
        .map(|(start, len, i)| CudaLoraSegment { start, len, a: adapters[i].0.as_view(), b: adapters[i].1.as_view(), rank, scale: 2.0 })
        .collect();
    let shape = LoraShape { t_rows: TOKENS, d_in: HIDDEN, d_out: HIDDEN };
    let mut prep = lora.prepare(ops, shape, &segs, Some(kernel)).expect("prepare");
    lora.shrink(ops, x, &mut prep).expect("shrink");
    let (bs, be) = bytes(rank, n, 2);
    let name = format!("{} r{rank} x{n} adapters", layout_name(kernel));
    g.throughput(Throughput::Bytes(bs));
    g.bench_function(format!("shrink {name}"), |b| b.iter_custom(|it| timed(ops, it, || lora.shrink(ops, x, &mut prep).expect("shrink"))));
    g.throughput(Throughput::Bytes(be));
    g.bench_function(format!("expand {name}"), |b| b.iter_custom(|it| timed(ops, it, || lora.expand(ops, y, &prep).expect("expand"))));
    g.throughput(Throughput::Bytes(bs + be));
    g.bench_function(format!("apply {name} (with prepare)"), |b| {
        b.iter_custom(|it| timed(ops, it, || lora.apply(ops, y, x, shape, &segs, Some(kernel)).expect("apply")))
    });
}

fn cuda_benches(c: &mut Criterion) {
    let Some(ops) = bench_device("bench lora (CUDA)") else { return };
    let lora = CudaLora::new(&ops).expect("the lora_sgmv kernels load");
    let up = |v: Vec<f32>| ops.upload(&v.into_iter().map(bf16::from_f32).collect::<Vec<_>>()).expect("upload");
    let x = up(data(TOKENS * HIDDEN, 1, 1.0));
    let mut y = up(data(TOKENS * HIDDEN, 2, 1.0));
    let mut g = c.benchmark_group("cuda_bf16_lora");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for rank in RANKS {
        let adapters: Vec<(CudaSlice<bf16>, CudaSlice<bf16>)> =
            (0..32u32).map(|i| (up(data(rank * HIDDEN, 10 + i, 0.02)), up(data(HIDDEN * rank, 100 + i, 0.2)))).collect();
        for n in ADAPTERS {
            for kernel in [LoraKernel::Sgmv, LoraKernel::Bgmv] {
                cuda_case(&mut g, &ops, &lora, &adapters, &x, &mut y, rank, n, kernel);
            }
        }
    }
    g.finish();
}

criterion_group!(benches, cpu_benches, cuda_benches);
criterion_main!(benches);
