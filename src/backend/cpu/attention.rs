//! Paged attention on the CPU: the reference for `kernels/paged_attention.cu`.
//!
//! Cache layout, per layer: K and V each `[num_blocks * block_size, kv_heads * head_dim]`; the
//! cache row of token `p` of a sequence is `blocks[p / block_size] * block_size + p % block_size`.

use rayon::prelude::*;

use super::isa::{self, Level};
use super::matmul::dot;
use super::simd::{self, dispatch, Simd};
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
///
/// Tasks (`plan_tasks`): with enough tokens, the query heads of one kv head for up to 4 tokens of
/// a sequence (each K and V row loaded serves all of them); else one per (token, query head).
/// Key offsets are computed once per sequence and call. A task runs the vector kernel
/// (`attend_group`: scores, a vector exp, the weighted sum of V, head_dim in registers) at the
/// level `isa::current` chose, where `head_dim` is a supported multiple of its lanes, else the
/// scalar twin `attend_scalar` per query; the tests hold both, at every level the CPU has and
/// under both plans, to an f64 loop.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(q: &[f32], k_cache: &[f32], v_cache: &[f32], batch: &BatchLayout, n_heads: usize, n_kv_heads: usize, head_dim: usize, out: &mut [f32]) {
    paged_attention_with(plan_kernel(isa::current(), head_dim), None, q, k_cache, v_cache, batch, n_heads, n_kv_heads, head_dim, out)
}

/// Which attention kernel runs.
#[derive(Clone, Copy)]
enum Kernel {
    /// `attend_scalar` per query: the twin the vector kernel is held to, and the path for head
    /// sizes it is not instantiated for.
    Scalar,
    /// `attend_group` at `level`, with `head_dim / LANES` vectors per row.
    Simd(Level, usize),
}

/// The kernel for `head_dim` at `level`: the vector one where `head_dim` is a supported multiple
/// of the level's lanes.
fn plan_kernel(level: Level, head_dim: usize) -> Kernel {
    let lanes = simd::lanes(level);
    if head_dim.is_multiple_of(lanes) && supported_vectors(head_dim / lanes) {
        Kernel::Simd(level, head_dim / lanes)
    } else {
        Kernel::Scalar
    }
}

/// Head sizes (in vectors) the kernel is instantiated for: 16..256 floats in the steps real
/// models use, at 16 or 8 lanes.
fn supported_vectors(c: usize) -> bool {
    matches!(c, 1 | 2 | 3 | 4 | 5 | 6 | 8 | 10 | 12 | 16 | 32)
}

#[allow(clippy::too_many_arguments)]
fn paged_attention_with(
    kernel: Kernel,
    grouped: Option<bool>,
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
    // Every key's cache row, per sequence, computed and checked once here (not per token and
    // head), as the element offset of the row: rows of K and V are kv_dim wide.
    let rows = k_cache.len() / kv_dim.max(1);
    assert!(k_cache.len() == v_cache.len() && k_cache.len() == rows * kv_dim, "k/v caches are not [rows, kv_dim]");
    let seq_rows: Vec<Vec<usize>> = batch
        .seqs
        .iter()
        .map(|s| {
            (0..s.context_len + s.n_new)
                .map(|p| {
                    let r = s.blocks[p / bs] as usize * bs + p % bs;
                    assert!(r < rows, "cache row {r} of {rows}");
                    r * kv_dim
                })
                .collect()
        })
        .collect();
    let grouped = grouped.unwrap_or(t * n_kv_heads >= 4 * rayon::current_num_threads());
    let tasks = plan_tasks(batch, n_heads, group, grouped);
    let out_ptr = OutPtr(out.as_mut_ptr());
    tasks.par_iter().for_each_init(Scratch::default, |scratch, task| {
        let seq = &batch.seqs[task.seq];
        let pos = |row: usize| seq.context_len + (row - seq.token_start);
        let kvh = task.h0 / group;
        // The head's slice of a cache row.
        let head = kvh * head_dim;
        let keys = &seq_rows[task.seq][..=pos(task.row0 + task.rows - 1)];
        scratch.queries.clear();
        for row in task.row0..task.row0 + task.rows {
            for h in task.h0..task.h0 + task.heads {
                scratch.queries.push(Query { q: row * q_dim + h * head_dim, n_keys: pos(row) + 1 });
            }
        }
        let Scratch { queries, scores } = scratch;
        // SAFETY: the tasks partition the (row, head) pairs of out [T, n_heads, head_dim]
        // (plan_tasks), so the head_dim outputs at each query's offset (+ head_dim <= T q_dim =
        // out.len()) are written by this task alone, and nothing else touches out while the tasks run.
        let mut outs: Vec<&mut [f32]> = queries.iter().map(|qr| unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(qr.q), head_dim) }).collect();
        match kernel {
            Kernel::Scalar => {
                for (qr, o) in queries.iter().zip(outs.iter_mut()) {
                    attend_scalar(&q[qr.q..qr.q + head_dim], &k_cache[head..], &v_cache[head..], &keys[..qr.n_keys], scale, scores, o);
                }
            }
            // SAFETY: Simd(level, c) is planned only where head_dim = c LANES and c is supported
            // (plan_kernel); every key offset is r * kv_dim with r < rows, and head + head_dim <=
            // kv_dim, so off + head_dim <= k_cache.len() - head = v_cache.len() - head; each query
            // offset + head_dim <= q.len(), each n_keys <= keys.len(), each out is head_dim long.
            Kernel::Simd(level, c) => {
                dispatch!(level, s => unsafe { attend_group(s, c, q, queries, &k_cache[head..], &v_cache[head..], keys, scale, scores, &mut outs) })
            }
        }
    });
}

/// Consecutive tokens of one sequence a task takes when heads are grouped.
const TILE_TOKENS: usize = 4;

/// One task: rows `row0 .. row0 + rows` (tokens of sequence `seq`) times query heads
/// `h0 .. h0 + heads`, all reading one kv head.
#[derive(Clone, Copy, Debug)]
struct Task {
    seq: usize,
    row0: usize,
    rows: usize,
    h0: usize,
    heads: usize,
}

/// The tasks of a call: each K and V row a task loads from the cache serves all of its queries,
/// so with enough work (prefill, batched decode) a task takes the `n_heads / n_kv_heads` query
/// heads of a kv head for `TILE_TOKENS` tokens (12 queries for SmolLM2: a twelfth of the K reads
/// and a quarter of the V reads of one task per query). With few tokens (a single decode) that
/// would leave a thread idle, so tasks stay one per (token, head) (`grouped` false).
fn plan_tasks(batch: &BatchLayout, n_heads: usize, group: usize, grouped: bool) -> Vec<Task> {
    let (tile, heads) = if grouped { (TILE_TOKENS, group.max(1)) } else { (1, 1) };
    let mut tasks = Vec::new();
    for (seq, s) in batch.seqs.iter().enumerate() {
        for row0 in (s.token_start..s.token_start + s.n_new).step_by(tile) {
            let rows = tile.min(s.token_start + s.n_new - row0);
            for h0 in (0..n_heads).step_by(heads) {
                tasks.push(Task { seq, row0, rows, h0, heads });
            }
        }
    }
    tasks
}

/// A query of a task: its offset in `q` (and in `out`, the same `[T, n_heads, head_dim]` layout)
/// and how many of the task's keys it sees (causal: its position + 1).
#[derive(Clone, Copy)]
struct Query {
    q: usize,
    n_keys: usize,
}

/// A task's reusable buffers (one per rayon worker, kept across tasks).
#[derive(Default)]
struct Scratch {
    queries: Vec<Query>,
    scores: Vec<f32>,
}

/// The output's base pointer, shared by the tasks, which write disjoint parts of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: only used to form the disjoint per-query output slices of paged_attention_with's tasks.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}
impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// One query head against the keys at `offs` (element offsets of each key's head slice in the
/// caches): `o = softmax(q · K^T · scale) · V`.
fn attend_scalar(qv: &[f32], k_cache: &[f32], v_cache: &[f32], offs: &[usize], scale: f32, scores: &mut Vec<f32>, o: &mut [f32]) {
    let hd = qv.len();
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for &off in offs {
        let s = dot(qv, &k_cache[off..off + hd]) * scale;
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
    for (&off, &w) in offs.iter().zip(scores.iter()) {
        let w = w * inv;
        for (o, &vv) in o.iter_mut().zip(&v_cache[off..off + hd]) {
            *o += w * vv;
        }
    }
}

/// `attend_queries::<S, C>` for `c` vectors per head.
///
/// # Safety
/// `supported_vectors(c)`; each query's `q + c · LANES <= q_all.len()` and `n_keys <=
/// offs.len()`; `outs` has one `c · LANES`-long slice per query; every `off + c · LANES <=
/// k.len()` and `<= v.len()`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_group<S: Simd>(
    s: S,
    c: usize,
    q_all: &[f32],
    queries: &[Query],
    k: &[f32],
    v: &[f32],
    offs: &[usize],
    scale: f32,
    scores: &mut Vec<f32>,
    outs: &mut [&mut [f32]],
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match c {
            1 => attend_queries::<S, 1>(s, q_all, queries, k, v, offs, scale, scores, outs),
            2 => attend_queries::<S, 2>(s, q_all, queries, k, v, offs, scale, scores, outs),
            3 => attend_queries::<S, 3>(s, q_all, queries, k, v, offs, scale, scores, outs),
            4 => attend_queries::<S, 4>(s, q_all, queries, k, v, offs, scale, scores, outs),
            5 => attend_queries::<S, 5>(s, q_all, queries, k, v, offs, scale, scores, outs),
            6 => attend_queries::<S, 6>(s, q_all, queries, k, v, offs, scale, scores, outs),
            8 => attend_queries::<S, 8>(s, q_all, queries, k, v, offs, scale, scores, outs),
            10 => attend_queries::<S, 10>(s, q_all, queries, k, v, offs, scale, scores, outs),
            12 => attend_queries::<S, 12>(s, q_all, queries, k, v, offs, scale, scores, outs),
            16 => attend_queries::<S, 16>(s, q_all, queries, k, v, offs, scale, scores, outs),
            32 => attend_queries::<S, 32>(s, q_all, queries, k, v, offs, scale, scores, outs),
            _ => unreachable!("unsupported head size {c} vectors"),
        }
    }
}

/// The queries of one task (all reading the same kv head) against the keys at `offs`, query
/// `i` seeing the first `queries[i].n_keys`: `o = softmax(q · Kᵀ · scale) · V` for each.
///
/// Scores: per block of `LANES` keys (whose K rows then sit in L1), every query's dots, reduced
/// together (`reduce_lanes`, ~3 instructions a score instead of ~9 for one reduction each); a
/// query's keys past its own count stay -inf, so they weigh 0. The weighted sum of V: sets of
/// queries accumulate together, so each V row is loaded once per set; the set is as large as
/// the level's registers hold (`C` vectors per query, and the V row).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_queries<S: Simd, const C: usize>(
    s: S,
    q_all: &[f32],
    queries: &[Query],
    k: &[f32],
    v: &[f32],
    offs: &[usize],
    scale: f32,
    scores: &mut Vec<f32>,
    outs: &mut [&mut [f32]],
) {
    let (n, l) = (offs.len(), S::LANES);
    // Score rows are whole vectors: the pad lanes stay -inf.
    let stride = n.div_ceil(l) * l;
    // SAFETY (all loads and stores): queries' q offsets + C l are within q_all, each off + C l
    // within k and v, each out C l long (the caller's contract); scores holds queries.len() rows
    // of `stride` floats after the resize, and key indices stay below n.
    unsafe {
        scores.clear();
        scores.resize(queries.len() * stride, f32::NEG_INFINITY);
        let ps = scores.as_mut_ptr();
        let scalev = s.splat(scale);
        for i in (0..n).step_by(l) {
            for (qi, qr) in queries.iter().enumerate() {
                let valid = qr.n_keys.saturating_sub(i).min(l);
                if valid == 0 {
                    continue;
                }
                let pq = q_all.as_ptr().add(qr.q);
                // Loops, not closures (`array::from_fn`): see matmul::block.
                let mut qv = [s.zero(); C];
                for c in 0..C {
                    qv[c] = s.load(pq.add(l * c));
                }
                let mut a = [s.zero(); 16];
                for j in 0..valid {
                    let pk = k.as_ptr().add(*offs.get_unchecked(i + j));
                    let mut acc = s.mul(qv[0], s.load(pk));
                    for c in 1..C {
                        acc = s.fma(qv[c], s.load(pk.add(l * c)), acc);
                    }
                    a[j] = acc;
                }
                s.store_first(ps.add(qi * stride + i), s.mul(s.reduce_lanes(&a[..l]), scalev), valid);
            }
        }
        // Softmax of each query's row, unnormalised; 1 / sum kept for the end.
        let mut inv = Vec::with_capacity(queries.len());
        for (qi, qr) in queries.iter().enumerate() {
            let row = ps.add(qi * stride);
            let used = qr.n_keys.div_ceil(l) * l;
            let mut maxv = s.splat(f32::NEG_INFINITY);
            for i in (0..used).step_by(l) {
                maxv = s.max(maxv, s.load(row.add(i)));
            }
            let max = s.splat(s.max_lane(maxv));
            let mut sumv = s.zero();
            for i in (0..stride).step_by(l) {
                // Blocks past the query's keys become exact zeros (exp(-inf)).
                let e = if i < used { simd::exp(s, s.sub(s.load(row.add(i)), max)) } else { s.zero() };
                s.store(row.add(i), e);
                sumv = s.add(sumv, e);
            }
            inv.push(1.0 / s.sum(sumv));
        }
        // Queries per set: C vectors of accumulators each, as the AVX-512 level measured them
        // (4 sets of 4 vectors at head_dim 64), counted in that level's 32 registers.
        let qmax = match C * 32 / S::REGISTERS {
            1..=4 => 4,
            5..=6 => 3,
            7..=8 => 2,
            _ => 1,
        };
        let mut first = 0;
        while first < queries.len() {
            let m = (queries.len() - first).min(qmax);
            let n_set = queries[first..first + m].iter().map(|qr| qr.n_keys).max().unwrap_or(0);
            let (w, inv, o) = (ps.add(first * stride), &inv[first..first + m], &mut outs[first..first + m]);
            match m {
                1 if 2 * C + 2 <= S::REGISTERS => weigh_v_one::<S, C>(s, v, &offs[..n_set], w, inv[0], o),
                1 => weigh_v::<S, C, 1>(s, v, &offs[..n_set], w, stride, inv, o),
                2 => weigh_v::<S, C, 2>(s, v, &offs[..n_set], w, stride, inv, o),
                3 => weigh_v::<S, C, 3>(s, v, &offs[..n_set], w, stride, inv, o),
                _ => weigh_v::<S, C, 4>(s, v, &offs[..n_set], w, stride, inv, o),
            }
            first += m;
        }
    }
}

/// `o[q] = inv[q] · Σ_j w[q][j] V[offs[j]]` for `Q` queries at once (weight rows `stride` apart
/// from `w`): each V row is loaded once and feeds `Q · C` independent FMA chains.
///
/// # Safety
/// `w` holds `Q` rows of at least `offs.len()` floats, `stride` apart; each `off + C · LANES <=
/// v.len()`; `inv` and `o` have `Q` entries, each `o` `C · LANES` long.
#[inline(always)]
unsafe fn weigh_v<S: Simd, const C: usize, const Q: usize>(s: S, v: &[f32], offs: &[usize], w: *const f32, stride: usize, inv: &[f32], o: &mut [&mut [f32]]) {
    let l = S::LANES;
    // SAFETY: the contract above.
    unsafe {
        let mut acc = [[s.zero(); C]; Q];
        for (j, &off) in offs.iter().enumerate() {
            let pv = v.as_ptr().add(off);
            let mut vr = [s.zero(); C];
            for c in 0..C {
                vr[c] = s.load(pv.add(l * c));
            }
            for (q, a) in acc.iter_mut().enumerate() {
                let wq = s.splat(*w.add(q * stride + j));
                for c in 0..C {
                    a[c] = s.fma(wq, vr[c], a[c]);
                }
            }
        }
        for q in 0..Q {
            let invv = s.splat(inv[q]);
            let po = o[q].as_mut_ptr();
            for (c, a) in acc[q].iter().enumerate() {
                s.store(po.add(l * c), s.mul(*a, invv));
            }
        }
    }
}

/// [`weigh_v`] for one query, over two sets of accumulators (even and odd keys): with one set
/// each accumulator is a chain of one FMA per key, and the FMA's latency, not its throughput,
/// bounds the loop. Only where both sets fit the registers.
///
/// # Safety
/// As `weigh_v` with `Q = 1`.
#[inline(always)]
unsafe fn weigh_v_one<S: Simd, const C: usize>(s: S, v: &[f32], offs: &[usize], w: *const f32, inv: f32, o: &mut [&mut [f32]]) {
    let l = S::LANES;
    // SAFETY: the contract above.
    unsafe {
        let n = offs.len();
        let mut acc = [s.zero(); C];
        let mut acc2 = [s.zero(); C];
        for p in 0..n / 2 {
            let (o0, o1) = (*offs.get_unchecked(2 * p), *offs.get_unchecked(2 * p + 1));
            let (pv0, pv1) = (v.as_ptr().add(o0), v.as_ptr().add(o1));
            let (w0, w1) = (s.splat(*w.add(2 * p)), s.splat(*w.add(2 * p + 1)));
            for c in 0..C {
                acc[c] = s.fma(w0, s.load(pv0.add(l * c)), acc[c]);
                acc2[c] = s.fma(w1, s.load(pv1.add(l * c)), acc2[c]);
            }
        }
        if n % 2 == 1 {
            let pv = v.as_ptr().add(*offs.get_unchecked(n - 1));
            let wv = s.splat(*w.add(n - 1));
            for (c, a) in acc.iter_mut().enumerate() {
                *a = s.fma(wv, s.load(pv.add(l * c)), *a);
            }
        }
        let invv = s.splat(inv);
        let po = o[0].as_mut_ptr();
        for c in 0..C {
            s.store(po.add(l * c), s.mul(s.add(acc[c], acc2[c]), invv));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::SeqView;
    use crate::rng::SplitMix64;

    /// Sequences `(context_len, n_new)` over a shuffled block table of block size `bs`.
    fn layout(seqs: &[(usize, usize)], bs: usize) -> (BatchLayout, usize) {
        let need: usize = seqs.iter().map(|&(c, n)| (c + n).div_ceil(bs)).sum();
        let num_blocks = need + 3;
        // i -> i * 5 mod num_blocks is a permutation when 5 does not divide num_blocks.
        let stride = if num_blocks.is_multiple_of(5) { 1 } else { 5 };
        let ids: Vec<u32> = (0..num_blocks).map(|i| ((i * stride) % num_blocks) as u32).collect();
        let mut l = BatchLayout { block_size: bs, ..Default::default() };
        let mut next = 0;
        for &(ctx, n_new) in seqs {
            let nb = (ctx + n_new).div_ceil(bs);
            let blocks = ids[next..next + nb].to_vec();
            next += nb;
            let token_start = l.positions.len();
            for p in ctx..ctx + n_new {
                l.positions.push(p as u32);
                l.slots.push(blocks[p / bs] * bs as u32 + (p % bs) as u32);
            }
            l.seqs.push(SeqView { token_start, n_new, context_len: ctx, blocks });
        }
        (l, num_blocks)
    }

    /// Causal attention in f64, walking each sequence's block table directly: the oracle.
    fn reference_f64(q: &[f32], kc: &[f32], vc: &[f32], b: &BatchLayout, nh: usize, nkv: usize, hd: usize) -> Vec<f64> {
        let (q_dim, kv_dim, group) = (nh * hd, nkv * hd, nh / nkv);
        let mut out = vec![0f64; q.len()];
        for seq in &b.seqs {
            for row in seq.token_start..seq.token_start + seq.n_new {
                let pos = seq.context_len + (row - seq.token_start);
                for h in 0..nh {
                    let qv = &q[row * q_dim + h * hd..][..hd];
                    let off = |p: usize| (seq.blocks[p / b.block_size] as usize * b.block_size + p % b.block_size) * kv_dim + (h / group) * hd;
                    let s: Vec<f64> = (0..=pos).map(|p| (0..hd).map(|d| qv[d] as f64 * kc[off(p) + d] as f64).sum::<f64>() / (hd as f64).sqrt()).collect();
                    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for d in 0..hd {
                        out[row * q_dim + h * hd + d] = (0..=pos).map(|p| e[p] / sum * vc[off(p) + d] as f64).sum();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn kernels_match_the_reference_on_odd_shapes() {
        let mut rng = SplitMix64::new(77);
        // (head_dim, heads, kv heads, block size, sequences): decode, prefill, mixed, GQA and
        // MHA, head sizes with and without a vector kernel (16 lanes: 24 and 40 take the scalar
        // one; 8 lanes: 24 and 40 take the vector one, 3 and 5 vectors).
        let cases: &[(usize, usize, usize, usize, &[(usize, usize)])] = &[
            (64, 9, 3, 16, &[(0, 37)]),
            (64, 9, 3, 16, &[(130, 1), (0, 1), (17, 1)]),
            (128, 4, 1, 7, &[(5, 3), (40, 19)]),
            (16, 2, 2, 1, &[(0, 5), (3, 2)]),
            (48, 6, 2, 5, &[(11, 4)]),
            (80, 3, 3, 16, &[(33, 2)]),
            (256, 2, 1, 16, &[(0, 18)]),
            (24, 4, 2, 3, &[(9, 4)]),
            (40, 2, 1, 8, &[(1, 30)]),
            (96, 6, 2, 16, &[(20, 7), (0, 2)]),
            (64, 9, 3, 16, &[(5, 6), (40, 9), (3, 1)]),
        ];
        for &(hd, nh, nkv, bs, seqs) in cases {
            let (b, nb) = layout(seqs, bs);
            let kv_dim = nkv * hd;
            // Spread scores (scale up q) so the softmax is far from uniform.
            let kc = rng.nonzero(nb * bs * kv_dim, 1.0);
            let vc = rng.nonzero(nb * bs * kv_dim, 1.0);
            let q: Vec<f32> = rng.nonzero(b.n_tokens() * nh * hd, 1.0).iter().map(|x| x * 4.0).collect();
            let want = reference_f64(&q, &kc, &vc, &b, nh, nkv, hd);
            let mut runs = Vec::new();
            // Both task plans (one task per (token, head), and grouped heads x token tiles) on
            // the scalar kernel and the vector one at every level the CPU has, whatever the
            // thread count picks by default.
            let mut kernels = vec![(Kernel::Scalar, "scalar".to_string())];
            for level in isa::available() {
                kernels.push((plan_kernel(level, hd), level.isa().to_string()));
            }
            for grouped in [false, true] {
                for (kernel, name) in kernels.iter().cloned() {
                    let mut got = vec![f32::NAN; q.len()];
                    paged_attention_with(kernel, Some(grouped), &q, &kc, &vc, &b, nh, nkv, hd, &mut got);
                    runs.push((format!("{name} grouped={grouped}"), got));
                }
            }
            let mut default = vec![f32::NAN; q.len()];
            paged_attention(&q, &kc, &vc, &b, nh, nkv, hd, &mut default);
            runs.push(("default".into(), default));
            for (what, got) in &runs {
                for (i, (f, w)) in got.iter().zip(&want).enumerate() {
                    assert!((*f as f64 - w).abs() <= 2e-6 * (1.0 + w.abs()), "{what} hd {hd} heads {nh}/{nkv} bs {bs} {seqs:?} [{i}]: {f} vs {w}");
                }
            }
        }
    }
}
