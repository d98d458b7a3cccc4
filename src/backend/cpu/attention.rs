//! Paged attention on the CPU: the reference for `kernels/paged_attention.cu`.
//!
//! Cache layout, per layer: K and V each `[num_blocks * block_size, kv_heads * head_dim]`; the
//! cache row of token `p` of a sequence is `blocks[p / block_size] * block_size + p % block_size`.

use rayon::prelude::*;

use super::matmul::dot;
use crate::kv::BatchLayout;

/// Writes the new tokens' `k, v [T, kv_dim]` into cache rows `slots [T]`.
pub fn write_kv(k: &[f32], v: &[f32], slots: &[u32], kv_dim: usize, k_cache: &mut [f32], v_cache: &mut [f32]) {
    for (i, &s) in slots.iter().enumerate() {
        let s = s as usize;
        k_cache[s * kv_dim..(s + 1) * kv_dim].copy_from_slice(&k[i * kv_dim..(i + 1) * kv_dim]);
        v_cache[s * kv_dim..(s + 1) * kv_dim].copy_from_slice(&v[i * kv_dim..(i + 1) * kv_dim]);
    }
}

/// Causal attention of `q [T, n_heads * head_dim]` over each sequence's cached context
/// (positions `0..=p` for a new token at position `p`), GQA: query head `h` reads kv head
/// `h / (n_heads / n_kv_heads)`. f32 softmax, scale `1/sqrt(head_dim)`. `out [T, n_heads * head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    batch: &BatchLayout,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    out: &mut [f32],
) {
    let t = batch.n_tokens();
    let q_dim = n_heads * head_dim;
    let kv_dim = n_kv_heads * head_dim;
    assert_eq!(q.len(), t * q_dim);
    assert_eq!(out.len(), t * q_dim);
    let group = n_heads / n_kv_heads;
    let bs = batch.block_size;
    let scale = 1.0 / (head_dim as f32).sqrt();
    // Row -> sequence index.
    let mut seq_of = vec![0usize; t];
    for (si, s) in batch.seqs.iter().enumerate() {
        seq_of[s.token_start..s.token_start + s.n_new].fill(si);
    }
    // One task per (token, head): out is [T, n_heads, head_dim].
    out.par_chunks_mut(head_dim).enumerate().for_each_init(Vec::<f32>::new, |scores, (i, o)| {
        let (row, h) = (i / n_heads, i % n_heads);
        let seq = &batch.seqs[seq_of[row]];
        let pos = seq.context_len + (row - seq.token_start);
        let kvh = h / group;
        let qv = &q[row * q_dim + h * head_dim..row * q_dim + (h + 1) * head_dim];
        let slot = |p: usize| seq.blocks[p / bs] as usize * bs + p % bs;
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for p in 0..=pos {
            let off = slot(p) * kv_dim + kvh * head_dim;
            let s = dot(qv, &k_cache[off..off + head_dim]) * scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        o.fill(0.0);
        for (p, &w) in scores.iter().enumerate() {
            let off = slot(p) * kv_dim + kvh * head_dim;
            let w = w * inv;
            for (o, &vv) in o.iter_mut().zip(&v_cache[off..off + head_dim]) {
                *o += w * vv;
            }
        }
    });
}
