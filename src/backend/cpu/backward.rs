//! Backward ops of the CPU backend, on plain slices: the CPU twins of the training kernels
//! (`kernels/lora_backward.cu` and the backward half of `kernels/ops.cu`). The trainer
//! (`crate::train`) composes them into the backward pass of the whole decoder; the CUDA parity
//! tests will call them as the reference. Only what the LoRA gradients need is computed: the
//! base is frozen, so no op here produces a gradient for a base weight, only for its input.
//!
//! All activations are row-major f32 `[rows, cols]`. "accumulate" arguments add into the output
//! (several paths feed one gradient: q/k/v into the normed input, the residual stream).
//!
//! Every op is checked by central finite differences against its forward in
//! `tests/model/train_backward_ops.rs`.

use rayon::prelude::*;

use super::isa;
use super::matmul::dot;
use super::simd::{self, dispatch, Simd};

/// Products below this many multiply-adds run single-threaded (rayon's split costs more).
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// `dst [m, n] = (dst if accumulate) + alpha · op(a) · op(b)`, row-major, where
/// `op(a) = a [m, k]`, or `aᵀ` with `a` stored `[k, m]` when `a_t`; likewise `op(b) = b [k, n]`,
/// or `bᵀ` with `b` stored `[n, k]` when `b_t`. The general product the backward pass needs
/// (`dY·W`, `Xᵀ·dY`, ...), on the `gemm` crate's blocked kernels.
#[allow(clippy::too_many_arguments)]
pub fn gemm(m: usize, n: usize, k: usize, a: &[f32], a_t: bool, b: &[f32], b_t: bool, dst: &mut [f32], accumulate: bool, alpha: f32) {
    assert_eq!(a.len(), m * k, "gemm: a is not [{m}, {k}]");
    assert_eq!(b.len(), k * n, "gemm: b is not [{k}, {n}]");
    assert_eq!(dst.len(), m * n, "gemm: dst is not [{m}, {n}]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    // (column stride, row stride) of each operand as gemm wants them.
    let (a_cs, a_rs) = if a_t { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if b_t { (k as isize, 1) } else { (1, n as isize) };
    let par = if m * n * k >= PARALLEL_MIN_FLOPS { gemm_common::Parallelism::Rayon(rayon::current_num_threads()) } else { gemm_common::Parallelism::None };
    // SAFETY: the asserts above check that every buffer holds exactly the [rows, cols] the
    // strides describe: dst [m, n] (row stride n), a as [m, k] or [k, m], b as [k, n] or [n, k].
    // dst is a unique borrow, so it does not overlap the inputs.
    unsafe {
        super::gemm::gemm_f32(
            super::isa::current(),
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0f32,
            alpha,
            par,
        )
    }
}

/// RMSNorm backward (weight frozen): `y = w ⊙ x · r`, `r = 1/sqrt(mean(x²) + eps)`, so
/// `dx = r · (w ⊙ dy) − x · r³/n · Σ(w ⊙ dy ⊙ x)`. x, dy, dx: `[rows, n]`; w: `[n]`.
pub fn rms_norm_backward(x: &[f32], w: &[f32], eps: f32, dy: &[f32], dx: &mut [f32], accumulate: bool) {
    let n = w.len();
    assert!(n > 0 && x.len() % n == 0 && dy.len() == x.len() && dx.len() == x.len(), "rms_norm_backward: shapes");
    dx.par_chunks_mut(n).zip(x.par_chunks(n).zip(dy.par_chunks(n))).for_each(|(dxr, (xr, dyr))| {
        let ss: f32 = dot(xr, xr);
        let r = 1.0 / (ss / n as f32 + eps).sqrt();
        let mut wdx = 0.0f32;
        for ((&xv, &dv), &wv) in xr.iter().zip(dyr).zip(w) {
            wdx += wv * dv * xv;
        }
        let c = r * r * r / n as f32 * wdx;
        for (((o, &xv), &dv), &wv) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
            let g = r * wv * dv - xv * c;
            if accumulate {
                *o += g
            } else {
                *o = g
            }
        }
    });
}

/// RoPE backward, in place: the forward rotates each (x1[i], x2[i]) pair by +θ, so the gradient
/// rotates by −θ: `dx1 = dy1·cos + dy2·sin`, `dx2 = dy2·cos − dy1·sin`. Same layout as
/// `ops::rope_inplace`: `[rows, n_heads * head_dim]`, cos/sin `[max_pos, head_dim / 2]`.
pub fn rope_backward_inplace(dx: &mut [f32], positions: &[u32], n_heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    let width = n_heads * head_dim;
    assert_eq!(dx.len(), positions.len() * width, "rope_backward: shape");
    dx.par_chunks_mut(width).zip(positions.par_iter()).for_each(|(row, &pos)| {
        let c = &cos[pos as usize * half..(pos as usize + 1) * half];
        let s = &sin[pos as usize * half..(pos as usize + 1) * half];
        for head in row.chunks_exact_mut(head_dim) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * c[i] + b * s[i];
                x2[i] = b * c[i] - a * s[i];
            }
        }
    });
}

/// SwiGLU backward: `out = silu(g)·u`, so `du = dout·silu(g)` and
/// `dg = dout·u·σ(g)·(1 + g·(1 − σ(g)))`. All `[rows, cols]`; dg and du are overwritten.
pub fn silu_mul_backward(gate: &[f32], up: &[f32], dout: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    let n = gate.len();
    assert!(up.len() == n && dout.len() == n && dgate.len() == n && dup.len() == n, "silu_mul_backward: shapes");
    const CHUNK: usize = 16384;
    let level = isa::current();
    dgate.par_chunks_mut(CHUNK).zip(dup.par_chunks_mut(CHUNK)).enumerate().for_each(|(ci, (dg, du))| {
        let o = ci * CHUNK;
        dispatch!(level, s => silu_mul_backward_simd(s, &gate[o..o + dg.len()], &up[o..o + dg.len()], &dout[o..o + dg.len()], dg, du))
    });
}

/// One chunk of [`silu_mul_backward`], a vector of values at a time (the vector `exp`).
#[inline(always)]
fn silu_mul_backward_simd<S: Simd>(s: S, gate: &[f32], up: &[f32], dout: &[f32], dg: &mut [f32], du: &mut [f32]) {
    let (n, l, one) = (dg.len(), S::LANES, s.splat(1.0));
    assert!(gate.len() == n && up.len() == n && dout.len() == n && du.len() == n, "silu_mul_backward: chunk shapes");
    let mut i = 0;
    // SAFETY (loads and stores): i + m <= n for all five slices (asserted equal lengths).
    unsafe {
        while i < n {
            let m = l.min(n - i);
            // load_first reads only m lanes (no closure here: see matmul::block).
            let (g, u, d) = if m == l {
                (s.load(gate.as_ptr().add(i)), s.load(up.as_ptr().add(i)), s.load(dout.as_ptr().add(i)))
            } else {
                (s.load_first(gate.as_ptr().add(i), m), s.load_first(up.as_ptr().add(i), m), s.load_first(dout.as_ptr().add(i), m))
            };
            let sig = s.div(one, s.add(one, simd::exp(s, s.sub(s.zero(), g))));
            let dgv = s.mul(s.mul(s.mul(d, u), sig), s.fma(g, s.sub(one, sig), one));
            let duv = s.mul(s.mul(d, g), sig);
            s.store_first(dg.as_mut_ptr().add(i), dgv, m);
            s.store_first(du.as_mut_ptr().add(i), duv, m);
            i += l;
        }
    }
}

pub use crate::types::layout::{SeqSpan, SeqSpans};

/// The per-(sequence, head) slices of q/k/v gathered into contiguous `[rows, head_dim]` buffers.
fn gather_head(x: &[f32], width: usize, rows: impl Iterator<Item = usize>, col: usize, head_dim: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for t in rows {
        out.extend_from_slice(&x[t * width + col..t * width + col + head_dim]);
    }
    out
}

/// Causal self-attention over each sequence of a packed batch (training: the whole sequence at
/// once, no KV cache), with grouped-query heads. q `[T, n_heads * d]`, k, v `[T, n_kv * d]`.
/// Returns `out [T, n_heads * d]` and `lse [T, n_heads]`, the log-sum-exp of each softmax row,
/// which is all the backward needs to recompute the probabilities (as flash attention does)
/// instead of keeping `[heads, T, T]` of them.
pub fn causal_attention_forward(q: &[f32], k: &[f32], v: &[f32], seqs: SeqSpans<'_>, n_heads: usize, n_kv: usize, head_dim: usize) -> (Vec<f32>, Vec<f32>) {
    let (qw, kw) = (n_heads * head_dim, n_kv * head_dim);
    let t = q.len() / qw.max(1);
    assert!(q.len() == t * qw && k.len() == t * kw && v.len() == t * kw && n_heads % n_kv == 0, "attention: shapes");
    assert!(seqs.iter().all(|s| s.in_bounds(t)), "attention: span past the batch");
    let group = n_heads / n_kv;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let level = isa::current();
    let tasks: Vec<(usize, usize)> = (0..seqs.len()).flat_map(|s| (0..n_heads).map(move |h| (s, h))).collect();
    let parts: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(si, h)| {
            let span = seqs[si];
            let (start, len, c) = (span.start, span.len, span.ctx_len);
            let kvh = h / group;
            // Keys and values: the context rows, then the sequence's own; query i is key c + i.
            let qh = gather_head(q, qw, start..start + len, h * head_dim, head_dim);
            let kh = gather_head(k, kw, span.key_rows(), kvh * head_dim, head_dim);
            let vh = gather_head(v, kw, span.key_rows(), kvh * head_dim, head_dim);
            let mut o = vec![0.0f32; len * head_dim];
            let mut lse = vec![0.0f32; len];
            let mut p = vec![0.0f32; c + len];
            for i in 0..len {
                let qi = &qh[i * head_dim..(i + 1) * head_dim];
                let mut m = f32::NEG_INFINITY;
                for j in 0..=c + i {
                    p[j] = dot(qi, &kh[j * head_dim..(j + 1) * head_dim]) * scale;
                    m = m.max(p[j]);
                }
                let sum = simd::exp_shifted_sum_at(level, &mut p[..=c + i], m);
                let oi = &mut o[i * head_dim..(i + 1) * head_dim];
                for j in 0..=c + i {
                    let w = p[j] / sum;
                    for (ov, &vv) in oi.iter_mut().zip(&vh[j * head_dim..(j + 1) * head_dim]) {
                        *ov += w * vv;
                    }
                }
                lse[i] = m + sum.ln();
            }
            (o, lse)
        })
        .collect();
    let mut out = super::zeroed(t * qw);
    let mut lse_all = super::zeroed(t * n_heads);
    for (&(si, h), (o, lse)) in tasks.iter().zip(parts) {
        let (start, len) = (seqs[si].start, seqs[si].len);
        for i in 0..len {
            let row = start + i;
            out[row * qw + h * head_dim..row * qw + (h + 1) * head_dim].copy_from_slice(&o[i * head_dim..(i + 1) * head_dim]);
            lse_all[row * n_heads + h] = lse[i];
        }
    }
    (out, lse_all)
}

/// Gradients of `causal_attention_forward` with respect to q, k, v. With `P = softmax(S)`,
/// `S = q kᵀ/√d` (causal): `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(dO ⊙ O))`,
/// `dQ = dS K/√d`, `dK = dSᵀ Q/√d`. P is recomputed from `lse`. The q heads of a group add
/// into their shared k/v head. Returns `(dq, dk, dv)`, shaped like q, k, v.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    seqs: SeqSpans<'_>,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (qw, kw) = (n_heads * head_dim, n_kv * head_dim);
    let t = q.len() / qw.max(1);
    assert!(q.len() == t * qw && k.len() == t * kw && v.len() == t * kw && n_heads % n_kv == 0, "attention_backward: shapes");
    assert!(out.len() == q.len() && dout.len() == q.len() && lse.len() == t * n_heads, "attention_backward: shapes");
    assert!(seqs.iter().all(|s| s.in_bounds(t)), "attention_backward: span past the batch");
    let group = n_heads / n_kv;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let d = head_dim;
    // Each task's plain loops (dq, dk, dv updates) compiled for the level (simd::dispatch!).
    let level = isa::current();
    let tasks: Vec<(usize, usize)> = (0..seqs.len()).flat_map(|s| (0..n_heads).map(move |h| (s, h))).collect();
    // Per (sequence, q head): its dq rows and its contribution to its kv head's dk, dv.
    let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(si, h)| {
            dispatch!(level, _s => {
                let span = seqs[si];
                let (start, len, c) = (span.start, span.len, span.ctx_len);
                let kvh = h / group;
                let own = || start..start + len;
                let qh = gather_head(q, qw, own(), h * d, d);
                let kh = gather_head(k, kw, span.key_rows(), kvh * d, d);
                let vh = gather_head(v, kw, span.key_rows(), kvh * d, d);
                let oh = gather_head(out, qw, own(), h * d, d);
                let doh = gather_head(dout, qw, own(), h * d, d);
                // dk, dv over the key rows (context first), as the forward laid them out.
                let (mut dq, mut dk, mut dv) = (vec![0.0f32; len * d], vec![0.0f32; (c + len) * d], vec![0.0f32; (c + len) * d]);
                for i in 0..len {
                    let qi = &qh[i * d..(i + 1) * d];
                    let doi = &doh[i * d..(i + 1) * d];
                    let l = lse[(start + i) * n_heads + h];
                    let di = dot(doi, &oh[i * d..(i + 1) * d]);
                    let dqi = &mut dq[i * d..(i + 1) * d];
                    for j in 0..=c + i {
                        let kj = &kh[j * d..(j + 1) * d];
                        let p = (dot(qi, kj) * scale - l).exp();
                        let dp = dot(doi, &vh[j * d..(j + 1) * d]);
                        let ds = p * (dp - di) * scale;
                        for x in 0..d {
                            dqi[x] += ds * kj[x];
                            dk[j * d + x] += ds * qi[x];
                            dv[j * d + x] += p * doi[x];
                        }
                    }
                }
                (dq, dk, dv)
            })
        })
        .collect();
    let (mut dq_all, mut dk_all, mut dv_all) = (super::zeroed(t * qw), super::zeroed(t * kw), super::zeroed(t * kw));
    for (&(si, h), (dq, dk, dv)) in tasks.iter().zip(parts) {
        let span = seqs[si];
        let kvh = h / group;
        for i in 0..span.len {
            let row = span.start + i;
            dq_all[row * qw + h * d..row * qw + (h + 1) * d].copy_from_slice(&dq[i * d..(i + 1) * d]);
        }
        // Every sequence sharing a context adds its part of the context rows' dk, dv.
        for (j, row) in span.key_rows().enumerate() {
            for x in 0..d {
                dk_all[row * kw + kvh * d + x] += dk[j * d + x];
                dv_all[row * kw + kvh * d + x] += dv[j * d + x];
            }
        }
    }
    (dq_all, dk_all, dv_all)
}

/// LoRA backward for one adapter over `t` rows (the CPU twin of the fused kernel in
/// `kernels/lora_backward.cu`). Forward: `xa = x Aᵀ [t, r]`, `y += s · xa Bᵀ`. Given `dy [t, out]`
/// and the saved `x [t, in]`, `xa`:
///   `dB [out, r] += s · dyᵀ · xa`,  `g = s · dy · B [t, r]`,
///   `dA [r, in] += gᵀ · x`,         `dx [t, in] += g · A`.
/// A `[r, in]`, B `[out, r]`. dA, dB and dx always accumulate.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    x: &[f32],
    xa: &[f32],
    dy: &[f32],
    t: usize,
    a: &[f32],
    b: &[f32],
    rank: usize,
    scale: f32,
    da: &mut [f32],
    db: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    let d_in = a.len() / rank.max(1);
    let d_out = b.len() / rank.max(1);
    assert!(a.len() == rank * d_in && b.len() == d_out * rank, "lora_backward: A/B shapes");
    assert!(x.len() == t * d_in && xa.len() == t * rank && dy.len() == t * d_out, "lora_backward: x/xa/dy shapes");
    assert!(da.len() == a.len() && db.len() == b.len(), "lora_backward: grad shapes");
    // dB += s · dyᵀ [out, t] · xa [t, r]
    gemm(d_out, rank, t, dy, true, xa, false, db, true, scale);
    // g = s · dy [t, out] · B [out, r]
    let mut g = vec![0.0f32; t * rank];
    gemm(t, rank, d_out, dy, false, b, false, &mut g, false, scale);
    // dA += gᵀ [r, t] · x [t, in]
    gemm(rank, d_in, t, &g, true, x, false, da, true, 1.0);
    if let Some(dx) = dx {
        assert_eq!(dx.len(), t * d_in, "lora_backward: dx shape");
        // dx += g [t, r] · A [r, in]
        gemm(t, d_in, rank, &g, false, a, false, dx, true, 1.0);
    }
}

/// Cross-entropy fused with the lm_head, over the rows that carry a label, without ever holding
/// the `[rows, vocab]` logits: the vocabulary is walked in chunks of `chunk` rows of `w`, once.
/// Per row it keeps the running max `m`, `z = Σ exp(logit − m)` and `S = Σ exp(logit − m) · w_v`
/// (`[hidden]`), rescaling both when the max grows (online softmax). At the end
/// `loss = m + ln z − logit[target]` and, since `d loss / d h = Σ_v p_v w_v − w_target`,
/// `dh = S / z − w_target`: one pass of two products per chunk (logits, then `e · W_chunk`)
/// instead of a second pass that recomputes the logits.
///
/// `h [n, hidden]` (the final-norm output of the labelled rows), `w [vocab, hidden]` (the
/// lm_head, frozen), `targets [n]`, `weights [n]` (each row's weight in the loss, e.g.
/// 1 / tokens of the batch). Returns `(Σ weights·loss, dh [n, hidden])` with dh already weighted.
pub fn cross_entropy_lm_head(h: &[f32], w: &[f32], hidden: usize, targets: &[u32], weights: &[f32], chunk: usize) -> (f64, Vec<f32>) {
    let n = targets.len();
    let vocab = w.len() / hidden.max(1);
    assert!(h.len() == n * hidden && w.len() == vocab * hidden && weights.len() == n && chunk > 0, "cross_entropy: shapes");
    assert!(targets.iter().all(|&t| (t as usize) < vocab), "cross_entropy: target outside the vocabulary");
    let mut m = vec![f32::NEG_INFINITY; n];
    let mut z = vec![0.0f32; n];
    let mut s = vec![0.0f32; n * hidden];
    let mut target_logit = vec![0.0f32; n];
    let mut e = Vec::new();
    let level = isa::current();
    for v0 in (0..vocab).step_by(chunk) {
        let c = chunk.min(vocab - v0);
        let wc = &w[v0 * hidden..(v0 + c) * hidden];
        e.resize(n * c, 0.0);
        // logits [n, c] = h · W_cᵀ
        gemm(n, c, hidden, h, false, wc, true, &mut e, false, 1.0);
        for r in 0..n {
            let row = &mut e[r * c..(r + 1) * c];
            let t = targets[r] as usize;
            if (v0..v0 + c).contains(&t) {
                target_logit[r] = row[t - v0];
            }
            let cmax = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let new_m = m[r].max(cmax);
            let rescale = (m[r] - new_m).exp(); // 0 on the first chunk (m = -inf)
            if rescale != 1.0 {
                z[r] *= rescale;
                for sv in &mut s[r * hidden..(r + 1) * hidden] {
                    *sv *= rescale;
                }
            }
            m[r] = new_m;
            z[r] += simd::exp_shifted_sum_at(level, row, new_m);
        }
        // S += e [n, c] · W_c [c, hidden]
        gemm(n, hidden, c, &e, false, wc, false, &mut s, true, 1.0);
    }
    let mut loss = 0.0f64;
    let mut dh = s;
    for r in 0..n {
        let l = m[r] + z[r].ln() - target_logit[r];
        loss += weights[r] as f64 * l as f64;
        let t = targets[r] as usize;
        let wt = &w[t * hidden..(t + 1) * hidden];
        let inv = 1.0 / z[r];
        for (d, &wv) in dh[r * hidden..(r + 1) * hidden].iter_mut().zip(wt) {
            *d = weights[r] * (*d * inv - wv);
        }
    }
    (loss, dh)
}
