//! Benchmarks of the NF4 linear kernels (kernels/nf4_gemm.cu) against the device's own copy
//! bandwidth and cuBLAS, on one GPU; without a CUDA device it prints one `SKIP` line and exits.
//!
//! Shapes are W `[n, k]` (output features, input features), Llama-3-8B-sized: 4096x14336 (MLP
//! down), 14336x4096 (gate / up), 4096x4096 (q / o), and SmolLM2's 576x1536.
//! - `d2d copy`: `cuMemcpyDtoD` of 1 GiB; `Throughput::Bytes` = bytes read + written (the
//!   convention of CUDA's bandwidthTest), the ceiling the GEMV is measured against.
//! - `nf4 gemv m1` / `m16`: `Throughput::Bytes` = packed codes + f32 absmax + x + y, i.e. what one
//!   call must move. The weights rotate over enough device copies (>= 256 MB in all) that no
//!   iteration finds its weight in the 50 MB L2: these are HBM numbers.
//! - `cublas bf16 gemv m1`: cuBLAS `gemmEx` bf16 (f32 compute) with one activation row, which
//!   cuBLAS runs as a GEMV, on the dense bf16 weight (rotated likewise); bytes = 2 n k + x + y.
//!   Skipped with a note when cudarc cannot load libcublas.
//! - `nf4 gemm m512`: `Throughput::Elements` = 2 m n k FLOP (criterion's "elem/s" reads as
//!   FLOP/s).
//!
//! A sample is `iters` back-to-back launches then one synchronisation. After criterion's groups a
//! summary prints the ratios the issue asks for, from its own timing (median of 7 runs of 50
//! launches): GEMV GB/s over the copy bandwidth, and the speedup over cuBLAS.
//! `cargo bench --bench nf4_gpu -- --test` runs each once. bench/nf4_peer_gpu.py times
//! bitsandbytes' own 4-bit GEMV and torch's cuBLAS on the same shapes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::CudaSlice;
use half::bf16;
use lorafleet::backend::cuda::nf4::{CudaNf4, CudaNf4Weight};
use lorafleet::backend::cuda::{bench_device, CudaDevice};
use lorafleet::quant::Nf4Tensor;

const SHAPES: [(usize, usize); 4] = [(4096, 14336), (14336, 4096), (4096, 4096), (576, 1536)];
const GEMM_SHAPES: [(usize, usize); 3] = [(4096, 14336), (14336, 4096), (4096, 4096)];
const GEMM_ROWS: usize = 512;
/// Device copies of a weight cycle through at least this many bytes (H100 L2: 50 MB).
const ROTATE_BYTES: usize = 256 << 20;
const COPY_BYTES: usize = 1 << 30;

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i ^ seed.wrapping_mul(0x9e37_79b9)).wrapping_mul(0x85eb_ca6b) >> 8;
            (h as f32 / (1u32 << 24) as f32) * 1.9 - 0.95 + 1e-3
        })
        .collect()
}

fn bf16s(n: usize, seed: u32) -> Vec<bf16> {
    data(n, seed).into_iter().map(bf16::from_f32).collect()
}

/// `iters` launches and one synchronisation (`timed_launches`).
fn timed(ops: &CudaDevice, iters: u64, f: impl FnMut()) -> Duration {
    lorafleet::backend::cuda::timed_launches(ops, iters, f)
}

/// Seconds per call: the median of 7 runs of 50 back-to-back calls, after a warm-up run.
fn seconds_per_call(ops: &CudaDevice, mut f: impl FnMut()) -> f64 {
    timed(ops, 10, &mut f);
    let mut runs: Vec<f64> = (0..7).map(|_| timed(ops, 50, &mut f).as_secs_f64() / 50.0).collect();
    runs.sort_by(f64::total_cmp);
    runs[3]
}

/// Enough copies of `bytes` to cover `ROTATE_BYTES` (at least 2).
fn copies(bytes: usize) -> usize {
    ROTATE_BYTES.div_ceil(bytes).max(2)
}

/// One line of the summary.
struct Row {
    what: String,
    bytes: f64,
    secs: f64,
}

impl Row {
    fn gbs(&self) -> f64 {
        self.bytes / self.secs / 1e9
    }
}

fn nf4_weights(ops: &CudaDevice, n: usize, k: usize) -> Vec<CudaNf4Weight> {
    let t = Nf4Tensor::quantize(&data(n * k, (n ^ k) as u32), &[n, k], true);
    let one = CudaNf4Weight::upload(ops, &t).expect("upload weight");
    let count = copies(one.bytes());
    let mut v = vec![one];
    for _ in 1..count {
        v.push(CudaNf4Weight::upload(ops, &t).expect("upload weight"));
    }
    v
}

fn cuda_benches(c: &mut Criterion) {
    let Some(ops) = bench_device("bench nf4_gpu (CUDA)") else { return };
    let nf4 = CudaNf4::new(&ops).expect("the nf4_gemm kernels load");
    eprintln!("nf4_gpu: {}", ops.device_name());
    let mut summary: Vec<Row> = Vec::new();

    // Device-to-device copy bandwidth.
    let src = ops.stream().alloc_zeros::<u8>(COPY_BYTES).expect("alloc");
    let mut dst = ops.stream().alloc_zeros::<u8>(COPY_BYTES).expect("alloc");
    let copy_bytes = 2 * COPY_BYTES as u64;
    {
        let mut g = c.benchmark_group("cuda_copy");
        g.throughput(Throughput::Bytes(copy_bytes));
        g.bench_function("d2d copy 1 GiB (read + write)", |b| b.iter_custom(|n| timed(&ops, n, || ops.stream().memcpy_dtod(&src, &mut dst).expect("memcpy"))));
        g.finish();
    }
    let copy_secs = seconds_per_call(&ops, || ops.stream().memcpy_dtod(&src, &mut dst).expect("memcpy"));
    let copy_gbs = copy_bytes as f64 / copy_secs / 1e9;
    drop((src, dst));

    // cuBLAS, if cudarc can load it (a missing libcublas panics inside cudarc).
    let blas = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| CudaBlas::new(ops.stream().clone())));
    let blas = match blas {
        Ok(Ok(b)) => Some(b),
        Ok(Err(e)) => {
            eprintln!("nf4_gpu: SKIP cuBLAS comparison: {e}");
            None
        }
        Err(_) => {
            eprintln!("nf4_gpu: SKIP cuBLAS comparison: cudarc could not load libcublas");
            None
        }
    };

    let mut speedups = Vec::new();
    for (n, k) in SHAPES {
        let weights = nf4_weights(&ops, n, k);
        for m in [1usize, 16] {
            let x = ops.upload(&bf16s(m * k, 1)).expect("upload");
            let mut y: CudaSlice<bf16> = ops.stream().alloc_zeros(m * n).expect("alloc");
            let bytes = weights[0].bytes() + 2 * (m * k + m * n);
            let name = format!("nf4 gemv m{m} {n}x{k}");
            let mut i = 0;
            let mut run = || {
                let w = &weights[i % weights.len()];
                i += 1;
                nf4.linear(&ops, &x, m, w, &mut y).expect("nf4 linear");
            };
            let mut g = c.benchmark_group("cuda_nf4_gemv");
            g.throughput(Throughput::Bytes(bytes as u64));
            g.bench_function(&name, |b| b.iter_custom(|iters| timed(&ops, iters, &mut run)));
            g.finish();
            let nf4_secs = seconds_per_call(&ops, &mut run);
            summary.push(Row { what: name, bytes: bytes as f64, secs: nf4_secs });

            if let (Some(blas), 1) = (&blas, m) {
                let dense_bytes = 2 * n * k;
                let wd: Vec<CudaSlice<bf16>> = (0..copies(dense_bytes)).map(|c| ops.upload(&bf16s(n * k, 10 + c as u32)).expect("upload")).collect();
                let mut j = 0;
                let mut run_blas = || {
                    let w = &wd[j % wd.len()];
                    j += 1;
                    // Column-major: y^T [n, m] = W [k, n]^T · x^T [k, m], W row-major [n, k] read
                    // as column-major [k, n] with lda = k.
                    let cfg = GemmConfig {
                        transa: cublasOperation_t::CUBLAS_OP_T,
                        transb: cublasOperation_t::CUBLAS_OP_N,
                        m: n as i32,
                        n: m as i32,
                        k: k as i32,
                        alpha: bf16::ONE,
                        lda: k as i32,
                        ldb: k as i32,
                        beta: bf16::ZERO,
                        ldc: n as i32,
                    };
                    // SAFETY: w holds n * k bf16 (k x n column-major, lda = k), x holds m * k
                    // (k x m, ldb = k) and y m * n (n x m, ldc = n): every operand covers the
                    // extent cuBLAS reads or writes for these dimensions; all on ops' stream.
                    unsafe { blas.gemm(cfg, w, &x, &mut y) }.expect("cublas gemm");
                };
                let name = format!("cublas bf16 gemv m1 {n}x{k}");
                let bytes = dense_bytes + 2 * (k + n);
                let mut g = c.benchmark_group("cuda_cublas_gemv");
                g.throughput(Throughput::Bytes(bytes as u64));
                g.bench_function(&name, |b| b.iter_custom(|iters| timed(&ops, iters, &mut run_blas)));
                g.finish();
                let blas_secs = seconds_per_call(&ops, &mut run_blas);
                summary.push(Row { what: name, bytes: bytes as f64, secs: blas_secs });
                speedups.push((format!("{n}x{k}"), blas_secs / nf4_secs));
            }
        }
    }

    let mut gemm_rows = Vec::new();
    for (n, k) in GEMM_SHAPES {
        let weights = nf4_weights(&ops, n, k);
        let m = GEMM_ROWS;
        let x = ops.upload(&bf16s(m * k, 2)).expect("upload");
        let mut y: CudaSlice<bf16> = ops.stream().alloc_zeros(m * n).expect("alloc");
        let flop = 2.0 * (m * n * k) as f64;
        let mut i = 0;
        let mut run = || {
            let w = &weights[i % weights.len()];
            i += 1;
            nf4.linear(&ops, &x, m, w, &mut y).expect("nf4 linear");
        };
        let name = format!("nf4 gemm m{m} {n}x{k}");
        let mut g = c.benchmark_group("cuda_nf4_gemm");
        g.throughput(Throughput::Elements(flop as u64));
        g.bench_function(&name, |b| b.iter_custom(|iters| timed(&ops, iters, &mut run)));
        g.finish();
        let secs = seconds_per_call(&ops, &mut run);
        gemm_rows.push((name, flop / secs / 1e12, secs));
    }

    eprintln!("\nnf4_gpu summary on {} (own timing: median of 7 x 50 back-to-back calls)", ops.device_name());
    eprintln!("  d2d copy: {copy_gbs:.0} GB/s (read + write, 1 GiB)");
    for r in &summary {
        eprintln!("  {:34} {:9.2} us  {:7.0} GB/s  {:5.1}% of copy bandwidth", r.what, r.secs * 1e6, r.gbs(), 100.0 * r.gbs() / copy_gbs);
    }
    for (shape, s) in &speedups {
        eprintln!("  nf4 gemv m1 {shape}: {s:.2}x faster than cuBLAS bf16 GEMV");
    }
    for (name, tflops, secs) in &gemm_rows {
        eprintln!("  {name:34} {:9.2} us  {tflops:7.1} TFLOP/s", secs * 1e6);
    }
    black_box(&summary);
}

criterion_group!(benches, cuda_benches);
criterion_main!(benches);
