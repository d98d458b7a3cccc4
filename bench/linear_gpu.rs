//! Benchmarks of the dense linear kernels (kernels/linear.cu) and of sampling on the device
//! (kernels/sampling.cu), beside their CPU twins' shapes. Each reports `Throughput::Bytes`:
//! linear, the weight bytes plus x and y (decode GEMV is bound by the weight read; the floor is
//! bytes / copy bandwidth, kernels/NOTES.md "linear.cu"); prefill GEMM also reports FLOP in its
//! name's summary line. Sampling: the logits bytes read once per row.
//!
//! Shapes: a 7B gate_proj [14336, 4096] with f32 and bf16 weights at 1, 8 (decode) and 512
//! (prefill) rows; sampling over a 32000-token vocabulary at 1 and 32 rows.
//!
//! A CUDA sample is `iters` back-to-back launches then one synchronisation. Runs on a real GPU;
//! on the emulator only under LORAFLEET_CUDA_EMU=1 (its timings are the emulator's, never a GPU
//! figure); otherwise one `SKIP` line.
//!
//! `cargo bench --bench linear_gpu`; `-- --test` runs each once.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cudarc::driver::CudaSlice;
use half::bf16;
use lorafleet::backend::cuda::linear::CudaLinear;
use lorafleet::backend::cuda::sampling::CudaSampler;
use lorafleet::backend::cuda::{bench_device, CudaDevice};
use lorafleet::backend::sampling::SampleRow;
use lorafleet::rng::SplitMix64;

const N: usize = 14336;
const K: usize = 4096;
const VOCAB: usize = 32000;

/// `iters` launches and one synchronisation (`timed_launches`).
fn timed(ops: &CudaDevice, iters: u64, f: impl FnMut()) -> Duration {
    lorafleet::backend::cuda::timed_launches(ops, iters, f)
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    r.nonzero(n, 1.0)
}

fn cuda_benches(c: &mut Criterion) {
    let Some(ops) = bench_device("bench linear_gpu (CUDA)") else { return };
    eprintln!("linear_gpu: {}", ops.device_name());
    let lin = CudaLinear::new(&ops).expect("the linear kernels load");
    // Emulated devices get a smaller weight (a 7B matrix is minutes per call there).
    let (n, k) = if ops.device_name().contains("emulator") { (512, 256) } else { (N, K) };
    let wf = values(n * k, 1);
    let w32: CudaSlice<f32> = ops.upload(&wf).expect("upload");
    let w16: CudaSlice<bf16> = ops.upload(&wf.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>()).expect("upload");
    let mut g = c.benchmark_group("cuda_linear");
    for m in [1usize, 8, 512] {
        let x: CudaSlice<f32> = ops.upload(&values(m * k, 2)).expect("upload");
        let mut y: CudaSlice<f32> = ops.stream().alloc_zeros(m * n).expect("alloc");
        for (wname, wbytes) in [("f32", 4usize), ("bf16", 2)] {
            let bytes = (n * k * wbytes + m * k * 4 + m * n * 4) as u64;
            g.throughput(Throughput::Bytes(bytes));
            let flop = 2.0 * (m * n * k) as f64;
            g.bench_function(format!("[{n},{k}] {wname} W x f32 x, m={m} ({:.1} GFLOP)", flop / 1e9), |b| {
                b.iter_custom(|iters| {
                    timed(&ops, iters, || {
                        let r = if wname == "f32" {
                            lin.linear(&ops, (m, n, k), &x, &w32, None, &mut y, false)
                        } else {
                            lin.linear(&ops, (m, n, k), &x, &w16, None, &mut y, false)
                        };
                        r.expect("linear");
                    })
                })
            });
        }
    }
    g.finish();

    let sampler = CudaSampler::new(&ops).expect("the sampling kernels load");
    let mut g = c.benchmark_group("cuda_sampling");
    for rows in [1usize, 32] {
        let logits: CudaSlice<f32> = ops.upload(&values(rows * VOCAB, 3)).expect("upload");
        let params: Vec<SampleRow> = (0..rows).map(|i| SampleRow { temperature: 0.8, top_k: 50, top_p: 0.9, seed: 7, draw: i as u64 }).collect();
        g.throughput(Throughput::Bytes((rows * VOCAB * 4) as u64));
        g.bench_function(format!("vocab {VOCAB}, {rows} rows, top-k 50 top-p 0.9 (with its upload and download)"), |b| {
            b.iter_custom(|iters| timed(&ops, iters, || drop(sampler.sample(&ops, &logits, VOCAB, &params).expect("sample"))))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    targets = cuda_benches
}
criterion_main!(benches);
