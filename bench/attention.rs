//! Benchmarks of paged attention (kernels/paged_attention.cu) and its CPU twin.
//!
//! CUDA (when a device is present, else one `SKIP` line), bf16 cache, Llama-8B-sized heads
//! (32 query / 8 KV heads of 128), block_size 16, shuffled block tables:
//! - decode: batch 32, context 2048 each: `Throughput::Bytes` = K + V bytes read
//!   (32 · 2048 · 8 · 128 · 2 B · 2 = 268 MB; floor at 3.0 TB/s: 89.5 µs; goal ≥ 70% of copy
//!   bandwidth, kernels/NOTES.md);
//! - prefill: 4 sequences of 512 new tokens, no earlier context: `Throughput::Elements` = causal
//!   attention FLOP (4 · head_dim · n_heads per (query, key) pair, keys 0..=pos), so criterion's
//!   "elem/s" reads as FLOP/s.
//!
//! A CUDA sample is `iters` back-to-back launches then one synchronisation (the metadata upload
//! of each call included, as the engine pays it). The CPU twin runs small shapes (this machine
//! may have 2 cores). `cargo bench --bench attention -- --test` runs each once.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;
use lorafleet::backend::cpu::attention as cpu;
use lorafleet::backend::cuda::{bench_device, CudaAttention, CudaDevice, CudaKvCache};
use lorafleet::kv::{BatchLayout, KvLayout, SeqView};

const N_Q: usize = 32;
const N_KV: usize = 8;
const HEAD_DIM: usize = 128;
const BS: usize = 16;

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i ^ seed.wrapping_mul(0x9e37_79b9)).wrapping_mul(0x85eb_ca6b) >> 8;
            (h as f32 / (1u32 << 24) as f32) * 1.9 - 0.95 + 1e-3
        })
        .collect()
}

/// A batch of `(context_len, n_new)` sequences over blocks spread by a fixed stride permutation.
/// Returns the layout, every token's cache row, and the number of blocks.
fn batch(seqs: &[(usize, usize)]) -> (BatchLayout, Vec<u32>, usize) {
    let need: usize = seqs.iter().map(|&(c, n)| (c + n).div_ceil(BS)).sum();
    let num_blocks = need + 1;
    // 7919 is prime, so i -> i * 7919 mod num_blocks is a permutation unless num_blocks is a multiple.
    let stride = if num_blocks.is_multiple_of(7919) { 1 } else { 7919 };
    let ids: Vec<u32> = (0..num_blocks).map(|i| ((i * stride) % num_blocks) as u32).collect();
    let mut l = BatchLayout { block_size: BS, ..Default::default() };
    let mut all = Vec::new();
    let mut next = 0;
    for &(ctx, n_new) in seqs {
        let nb = (ctx + n_new).div_ceil(BS);
        let blocks = ids[next..next + nb].to_vec();
        next += nb;
        let slot = |p: usize| blocks[p / BS] * BS as u32 + (p % BS) as u32;
        let token_start = l.positions.len();
        for p in ctx..ctx + n_new {
            l.positions.push(p as u32);
            l.slots.push(slot(p));
        }
        all.extend((0..ctx + n_new).map(slot));
        l.seqs.push(SeqView { token_start, n_new, context_len: ctx, blocks });
    }
    (l, all, num_blocks)
}

/// Causal attention FLOP: 2 matmuls of 2·head_dim FLOP per (query head, query, key).
fn flop(seqs: &[(usize, usize)], n_heads: usize, head_dim: usize) -> u64 {
    let pairs: usize = seqs.iter().map(|&(c, n)| (c..c + n).map(|p| p + 1).sum::<usize>()).sum();
    (4 * head_dim * n_heads * pairs) as u64
}

fn cpu_benches(c: &mut Criterion) {
    // The CPU kernels run at one level per process: `LORAFLEET_CPU_ISA=avx2|portable cargo bench`
    // measures a lower one (bench/RESULTS.md gives each level's figures).
    eprintln!("{}", lorafleet::backend::cpu::isa::summary());
    let (n_q, n_kv, hd) = (8, 2, 64);
    for (name, seqs) in [("decode b4 ctx256", vec![(255, 1); 4]), ("prefill 1x64", vec![(0, 64)])] {
        let (b, all, nb) = batch(&seqs);
        let kv_dim = n_kv * hd;
        let kc = data(nb * BS * kv_dim, 1);
        let vc = data(nb * BS * kv_dim, 2);
        let q = data(b.n_tokens() * n_q * hd, 3);
        let mut out = vec![0f32; q.len()];
        let mut g = c.benchmark_group("cpu_f32_attention");
        g.throughput(Throughput::Elements(flop(&seqs, n_q, hd)));
        g.bench_function(name, |bn| bn.iter(|| cpu::paged_attention(black_box(&q), &kc, &vc, &b, n_q, n_kv, hd, &mut out)));
        let k = data(all.len() * kv_dim, 4);
        let mut kc2 = kc.clone();
        let mut vc2 = vc.clone();
        g.bench_function(format!("{name} write_kv"), |bn| bn.iter(|| cpu::write_kv(black_box(&k), &k, &all, kv_dim, &mut kc2, &mut vc2)));
        g.finish();
    }
}

/// `iters` launches and one synchronisation (`timed_launches`).
fn timed(ops: &CudaDevice, iters: u64, f: impl FnMut()) -> Duration {
    lorafleet::backend::cuda::timed_launches(ops, iters, f)
}

fn cuda_case(c: &mut Criterion, ops: &CudaDevice, attn: &CudaAttention, name: &str, seqs: &[(usize, usize)], tp: Throughput) {
    let (b, all, nb) = batch(seqs);
    let kv_dim = N_KV * HEAD_DIM;
    let layout = KvLayout { num_layers: 1, num_kv_heads: N_KV, head_dim: HEAD_DIM, block_size: BS, num_blocks: nb };
    let mut cache = CudaKvCache::<bf16>::new(ops, layout).expect("cache");
    let k: Vec<bf16> = data(all.len() * kv_dim, 5).into_iter().map(bf16::from_f32).collect();
    let v: Vec<bf16> = data(all.len() * kv_dim, 6).into_iter().map(bf16::from_f32).collect();
    let (dk, dv) = (ops.upload(&k).expect("upload"), ops.upload(&v).expect("upload"));
    attn.reshape_and_cache(ops, &dk, &dv, &all, &mut cache, 0).expect("reshape_and_cache");
    let q: Vec<bf16> = data(b.n_tokens() * N_Q * HEAD_DIM, 7).into_iter().map(bf16::from_f32).collect();
    let dq = ops.upload(&q).expect("upload");
    let mut out = ops.upload(&q).expect("upload");
    let mut g = c.benchmark_group("cuda_bf16_attention");
    g.throughput(tp);
    g.bench_function(name, |bn| bn.iter_custom(|n| timed(ops, n, || attn.paged_attention(ops, &dq, &cache, 0, &b, N_Q, &mut out).expect("paged_attention"))));
    g.finish();
}

fn cuda_benches(c: &mut Criterion) {
    let Some(ops) = bench_device("bench attention (CUDA)") else { return };
    let attn = CudaAttention::new(&ops).expect("the paged_attention kernels load");
    let decode = vec![(2047, 1); 32];
    let kv_bytes = (32 * 2048 * N_KV * HEAD_DIM * 2 * 2) as u64;
    cuda_case(c, &ops, &attn, "decode b32 ctx2048 (KV bytes)", &decode, Throughput::Bytes(kv_bytes));
    let prefill = vec![(0, 512); 4];
    cuda_case(c, &ops, &attn, "prefill 4x512 (FLOP)", &prefill, Throughput::Elements(flop(&prefill, N_Q, HEAD_DIM)));
}

criterion_group!(benches, cpu_benches, cuda_benches);
criterion_main!(benches);
