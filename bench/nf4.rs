//! CPU NF4 matmul (`backend::cpu::nf4::linear`: the fused nibble-table GEMV at 1-4 rows, tile
//! dequantize + dense kernel above) against the dense f32 matmul on the same shape, at decode
//! (1 row), batched decode (4, 8, 16 rows: the f32 4x4-block GEMV, beside the `gemm` crate's
//! packed GEMM it replaced there, `f32_gemm`) and prefill (64 rows), for SmolLM2-135M's MLP
//! (576 -> 1536) and a Llama-8B-sized projection (4096 -> 4096).
//!
//! `Throughput::Bytes` = the weight bytes the op must read (NF4: packed + f32 absmax, ~0.53 byte
//! per weight; f32: 4 bytes per weight), so GB/s compares each with the memory roofline;
//! kernels/NOTES.md ("NF4 on the CPU") records the floors.
//!
//! `cargo bench --bench nf4`; `cargo bench --bench nf4 -- --test` runs each once.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lorafleet::backend::cpu::matmul;
use lorafleet::backend::cpu::nf4::{self, Nf4Matrix};
use lorafleet::quant::Nf4Tensor;

/// Deterministic non-zero inputs in (-1, 1) (a multiplicative hash; no rand crate needed).
fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i ^ seed.wrapping_mul(0x9e37_79b9)).wrapping_mul(0x85eb_ca6b) >> 8;
            (h as f32 / (1u32 << 24) as f32) * 1.9 - 0.95 + 1e-3
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    // The CPU kernels run at one level per process: `LORAFLEET_CPU_ISA=avx2|portable cargo bench`
    // measures a lower one (bench/RESULTS.md gives each level's figures).
    eprintln!("{}", lorafleet::backend::cpu::isa::summary());
    // (out n, in k)
    for (n, k) in [(1536, 576), (4096, 4096)] {
        let w = data(n * k, 1);
        let q = Nf4Matrix::new(&Nf4Tensor::quantize(&w, &[n, k], true)).expect("2-D");
        let nf4_bytes = (q.packed.len() + 4 * q.absmax.len()) as u64;
        for t in [1usize, 4, 8, 16, 64] {
            let x = data(t * k, 2);
            let mut out = vec![0.0; t * n];
            let mut g = c.benchmark_group(format!("linear_{n}x{k}_t{t}"));
            g.throughput(Throughput::Bytes(nf4_bytes));
            g.bench_function("nf4", |b| b.iter(|| nf4::linear(black_box(&x), t, &q, &mut out)));
            if t <= nf4::gemv::MAX_ROWS {
                // The tiled path the fused GEMV replaced at decode, for the ratio.
                g.bench_function("nf4_tiled", |b| b.iter(|| nf4::linear_tiled(black_box(&x), t, &q, &mut out)));
            }
            g.throughput(Throughput::Bytes((4 * n * k) as u64));
            g.bench_function("f32", |b| b.iter(|| matmul::linear(black_box(&x), t, k, &w, n, &mut out)));
            if (2..=16).contains(&t) {
                g.bench_function("f32_gemm", |b| b.iter(|| matmul::linear_gemm(black_box(&x), t, k, &w, n, &mut out)));
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
