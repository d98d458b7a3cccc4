//! Benchmarks of the element-wise and row-wise ops (kernels/ops.cu) and their CPU twins, at a
//! decode batch (1 row) and a small prefill/decode batch (64 rows) of a Llama-8B-sized layer:
//! hidden 4096, 32 query / 8 key heads of 128, intermediate 14336.
//!
//! Each reports `Throughput::Bytes` = bytes the op must read plus write (the roofline floor;
//! kernels/NOTES.md divides it by the device's copy bandwidth). The CUDA ops run when a device is
//! present (else one `SKIP` line); a CUDA sample is `iters` back-to-back launches on the stream
//! then one synchronisation, so launch overhead is included, as the engine will pay it. RoPE and
//! embedding copy their host positions / ids to the device on each call, as their wrappers do.
//!
//! `cargo bench --bench ops`; `cargo bench --bench ops -- --test` runs each once.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use half::bf16;
use lorafleet::backend::cpu::ops as cpu;
use lorafleet::backend::cuda::{bench_device, CudaDevice, CudaElem, RopeDims};

const HIDDEN: usize = 4096;
const INTER: usize = 14336;
const N_Q: usize = 32;
const N_K: usize = 8;
const HEAD_DIM: usize = 128;
const MAX_POS: usize = 4096;
const VOCAB: usize = 2048;
const ROWS: [usize; 2] = [1, 64];

/// Deterministic non-zero inputs in (-1, 1) (a multiplicative hash; no rand crate needed).
fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i ^ seed.wrapping_mul(0x9e37_79b9)).wrapping_mul(0x85eb_ca6b) >> 8;
            (h as f32 / (1u32 << 24) as f32) * 1.9 - 0.95 + 1e-3
        })
        .collect()
}

fn tables() -> (Vec<f32>, Vec<f32>) {
    let inv_freq: Vec<f32> = (0..HEAD_DIM / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / HEAD_DIM as f32)).collect();
    cpu::rope_tables(&inv_freq, MAX_POS)
}

fn positions(rows: usize) -> Vec<u32> {
    (0..rows as u32).map(|r| (r * 37 + 11) % MAX_POS as u32).collect()
}

fn ids(rows: usize) -> Vec<u32> {
    (0..rows as u32).map(|r| (r * 131 + 7) % VOCAB as u32).collect()
}

/// Bytes read plus written, with `e` bytes per activation element.
mod bytes {
    use super::*;
    pub fn rms_norm(rows: usize, e: usize) -> u64 {
        ((2 * rows * HIDDEN + HIDDEN) * e) as u64
    }
    pub fn rope(rows: usize, e: usize) -> u64 {
        (2 * rows * (N_Q + N_K) * HEAD_DIM * e + rows * HEAD_DIM * 4 + rows * 4) as u64
    }
    pub fn silu_mul(rows: usize, e: usize) -> u64 {
        (3 * rows * INTER * e) as u64
    }
    pub fn add(rows: usize, e: usize) -> u64 {
        (3 * rows * HIDDEN * e) as u64
    }
    pub fn embedding(rows: usize, e: usize) -> u64 {
        (2 * rows * HIDDEN * e + rows * 4) as u64
    }
}

fn cpu_benches(c: &mut Criterion) {
    // The CPU kernels run at one level per process: `LORAFLEET_CPU_ISA=avx2|portable cargo bench`
    // measures a lower one (bench/RESULTS.md gives each level's figures).
    eprintln!("{}", lorafleet::backend::cpu::isa::summary());
    let (cos, sin) = tables();
    for rows in ROWS {
        let mut g = c.benchmark_group(format!("cpu_f32/rows={rows}"));
        let x = data(rows * HIDDEN, 1);
        let w = data(HIDDEN, 2);
        let mut out = vec![0f32; rows * HIDDEN];
        g.throughput(Throughput::Bytes(bytes::rms_norm(rows, 4)));
        g.bench_function("rms_norm", |b| b.iter(|| cpu::rms_norm(black_box(&x), &w, 1e-5, &mut out)));

        let mut q = data(rows * N_Q * HEAD_DIM, 3);
        let mut k = data(rows * N_K * HEAD_DIM, 4);
        let pos = positions(rows);
        g.throughput(Throughput::Bytes(bytes::rope(rows, 4)));
        g.bench_function("rope", |b| {
            b.iter(|| {
                cpu::rope_inplace(black_box(&mut q), &pos, N_Q, HEAD_DIM, &cos, &sin);
                cpu::rope_inplace(black_box(&mut k), &pos, N_K, HEAD_DIM, &cos, &sin);
            })
        });

        let gate = data(rows * INTER, 5);
        let up = data(rows * INTER, 6);
        let mut act = vec![0f32; rows * INTER];
        g.throughput(Throughput::Bytes(bytes::silu_mul(rows, 4)));
        g.bench_function("silu_mul", |b| b.iter(|| cpu::silu_mul(black_box(&gate), &up, &mut act)));

        let mut acc = data(rows * HIDDEN, 7);
        let y = data(rows * HIDDEN, 8);
        g.throughput(Throughput::Bytes(bytes::add(rows, 4)));
        g.bench_function("add_assign", |b| b.iter(|| cpu::add_assign(black_box(&mut acc), &y)));

        let table = data(VOCAB * HIDDEN, 9);
        let tok = ids(rows);
        g.throughput(Throughput::Bytes(bytes::embedding(rows, 4)));
        g.bench_function("embedding", |b| b.iter(|| cpu::embedding(black_box(&table), HIDDEN, &tok, &mut out)));
        g.finish();
    }
}

/// `iters` launches and one synchronisation (`timed_launches`).
fn timed(ops: &CudaDevice, iters: u64, f: impl FnMut()) -> Duration {
    lorafleet::backend::cuda::timed_launches(ops, iters, f)
}

fn cuda_group<T: CudaElem>(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, ops: &CudaDevice, rows: usize, conv: fn(f32) -> T) {
    let e = std::mem::size_of::<T>();
    let up = |v: Vec<f32>| ops.upload(&v.into_iter().map(conv).collect::<Vec<T>>()).expect("upload");
    let (cos, sin) = tables();
    let (cos, sin) = (ops.upload(&cos).expect("upload"), ops.upload(&sin).expect("upload"));

    let x = up(data(rows * HIDDEN, 1));
    let w = up(data(HIDDEN, 2));
    let mut out = up(vec![0.0; rows * HIDDEN]);
    g.throughput(Throughput::Bytes(bytes::rms_norm(rows, e)));
    g.bench_function("rms_norm", |b| b.iter_custom(|n| timed(ops, n, || ops.rms_norm_into(&x, &w, &mut out, rows, HIDDEN, 1e-5).expect("rms_norm"))));

    let mut q = up(data(rows * N_Q * HEAD_DIM, 3));
    let mut k = up(data(rows * N_K * HEAD_DIM, 4));
    let pos = positions(rows);
    let dims = RopeDims { n_q_heads: N_Q, n_k_heads: N_K, head_dim: HEAD_DIM };
    g.throughput(Throughput::Bytes(bytes::rope(rows, e)));
    g.bench_function("rope", |b| b.iter_custom(|n| timed(ops, n, || ops.rope(&mut q, &mut k, &pos, &cos, &sin, dims).expect("rope"))));

    let gate = up(data(rows * INTER, 5));
    let upv = up(data(rows * INTER, 6));
    let mut act = up(vec![0.0; rows * INTER]);
    g.throughput(Throughput::Bytes(bytes::silu_mul(rows, e)));
    g.bench_function("silu_mul", |b| b.iter_custom(|n| timed(ops, n, || ops.silu_mul_into(&gate, &upv, &mut act).expect("silu_mul"))));

    let mut acc = up(data(rows * HIDDEN, 7));
    let y = up(data(rows * HIDDEN, 8));
    g.throughput(Throughput::Bytes(bytes::add(rows, e)));
    g.bench_function("add_assign", |b| b.iter_custom(|n| timed(ops, n, || ops.add_assign(&mut acc, &y).expect("add"))));

    let table = up(data(VOCAB * HIDDEN, 9));
    let tok = ids(rows);
    g.throughput(Throughput::Bytes(bytes::embedding(rows, e)));
    g.bench_function("embedding", |b| b.iter_custom(|n| timed(ops, n, || ops.embedding_into(&table, HIDDEN, &tok, &mut out).expect("embedding"))));
}

fn cuda_benches(c: &mut Criterion) {
    let Some(ops) = bench_device("bench ops (CUDA)") else { return };
    for rows in ROWS {
        let mut g = c.benchmark_group(format!("cuda_f32/rows={rows}"));
        cuda_group::<f32>(&mut g, &ops, rows, |v| v);
        g.finish();
        let mut g = c.benchmark_group(format!("cuda_bf16/rows={rows}"));
        cuda_group::<bf16>(&mut g, &ops, rows, bf16::from_f32);
        g.finish();
    }
}

criterion_group!(benches, cpu_benches, cuda_benches);
criterion_main!(benches);
