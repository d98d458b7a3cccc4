//! Element-wise and row-wise ops of the CPU backend, on plain slices. These are the CPU twins of
//! the kernels in `kernels/ops.cu`: the CUDA parity tests call them as the reference.
//! All activations are row-major f32 `[rows, cols]`.

use rayon::prelude::*;

use super::isa::{self, Level};
use super::simd::{self, dispatch, Simd};

/// Rows per rayon task for the row-wise ops: enough work per task to amortise the scheduling.
fn rows_per_task(cols: usize) -> usize {
    (16384 / cols.max(1)).max(1)
}

/// RMSNorm as HF Llama computes it: `w * (x * rsqrt(mean(x^2) + eps))`, in f32.
/// x, out: `[rows, cols]`; w: `[cols]`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_at(isa::current(), x, w, eps, out)
}

/// [`rms_norm`] at `level` (one dispatch per task of rows).
pub fn rms_norm_at(level: Level, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let cols = w.len();
    assert_eq!(x.len(), out.len());
    assert_eq!(x.len() % cols, 0);
    let chunk = rows_per_task(cols) * cols;
    out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(o, xi)| {
        dispatch!(level, s => {
            for (orow, xrow) in o.chunks_exact_mut(cols).zip(xi.chunks_exact(cols)) {
                rms_norm_row_simd(s, xrow, w, eps, orow);
            }
        })
    });
}

/// One row at the level the process runs.
#[inline]
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    dispatch!(isa::current(), s => rms_norm_row_simd(s, x, w, eps, out))
}

#[inline(always)]
fn rms_norm_row_simd<S: Simd>(s: S, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss = simd::dot(s, x, x);
    let inv = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    // A plain loop: compiled inside the level's target-feature function, so the compiler
    // vectorises it for that level.
    for ((o, &xv), &wv) in out.iter_mut().zip(x).zip(w) {
        *o = wv * (xv * inv);
    }
}

/// Rotary embedding, rotate-half convention (HF layout), in place.
/// x: `[rows, n_heads * head_dim]`; positions: `[rows]`; cos, sin: `[max_pos, head_dim / 2]`.
pub fn rope_inplace(x: &mut [f32], positions: &[u32], n_heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    let width = n_heads * head_dim;
    assert_eq!(x.len(), positions.len() * width);
    let level = isa::current();
    x.par_chunks_mut(width).zip(positions.par_iter()).for_each(|(row, &pos)| {
        let c = &cos[pos as usize * half..(pos as usize + 1) * half];
        let s = &sin[pos as usize * half..(pos as usize + 1) * half];
        // Plain loops, vectorised by the compiler for the level they are dispatched to.
        dispatch!(level, _s => {
            for head in row.chunks_exact_mut(head_dim) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    x1[i] = a * c[i] - b * s[i];
                    x2[i] = b * c[i] + a * s[i];
                }
            }
        })
    });
}

/// SwiGLU gate: `out = silu(gate) * up`, silu(g) = g / (1 + exp(-g)). All `[rows, cols]`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert_eq!(gate.len(), up.len());
    assert_eq!(gate.len(), out.len());
    out.par_chunks_mut(16384).zip(gate.par_chunks(16384).zip(up.par_chunks(16384))).for_each(|(o, (g, u))| super::simd::silu_mul(g, u, o));
}

/// Embedding gather: `out[i] = table[ids[i]]`. table: `[vocab, hidden]`; out: `[ids.len(), hidden]`.
/// The caller validates ids against the vocabulary.
pub fn embedding(table: &[f32], hidden: usize, ids: &[u32], out: &mut [f32]) {
    assert_eq!(out.len(), ids.len() * hidden);
    for (row, &id) in out.chunks_exact_mut(hidden).zip(ids) {
        let id = id as usize;
        row.copy_from_slice(&table[id * hidden..(id + 1) * hidden]);
    }
}

/// `x += y`, element-wise.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len());
    let level = isa::current();
    x.par_chunks_mut(16384).zip(y.par_chunks(16384)).for_each(|(a, b)| {
        dispatch!(level, _s => {
            for (a, &b) in a.iter_mut().zip(b) {
                *a += b;
            }
        })
    });
}

pub use crate::backend::numeric::rope_tables;
