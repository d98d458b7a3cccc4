// Causal self-attention for training over a packed batch of whole sequences, forward (keeping the
// softmax log-sum-exp) and backward, f32, grouped-query heads, shared-prefix contexts. C ABI, the
// math and the layouts: csrc/attention_train.h. CPU twins: src/backend/cpu/backward.rs
// (causal_attention_forward, causal_attention_backward).
//
// The flash-attention scheme in f32 on CUDA cores: neither pass ever holds a [T, T] score matrix.
//   forward: a block owns `tile` query rows of one (sequence, head); it walks the keys they can
//     see in tiles of `tile` rows (K and V staged in shared memory), keeps per row the running
//     max m and sum l (online softmax, one warp per row, one lane per key) and its output rows in
//     registers (tile * head_dim <= 2048 elements: 8 per thread), and writes out = acc / l and
//     lse = m + ln l.
//   backward: a block owns `tile` key rows of one (sequence, q head) and keeps their dK, dV in
//     registers; it walks the query tiles that see them, recomputes P = exp(S - lse) and
//     dS = P (dP - delta) scale for the [tile x tile] pair in shared memory, adds P^T dO and
//     dS^T Q into its dK, dV, and atomically adds dS K into dq. dk, dv are added atomically at
//     the end: the q heads of a group and the sequences sharing a context all feed the same rows.
// Shared tiles are padded to head_dim + 1 floats per row so the score loops (lanes over keys,
// same query) read K conflict-free. Per-block shared memory: forward ~29 KB, backward ~42 KB.
//
// Status: compile-checked only (no GPU was lent when this was written); parity tests against the
// CPU twins: tests/cuda_attention_train.rs; bench: bench/train_gpu.rs; floors: kernels/NOTES.md.

#include <math.h>
#include <stdint.h>

#include "attention_train.h"
#include "common.cuh"

namespace {

constexpr int NT = LF_ATTN_TRAIN_THREADS;
constexpr int NWARPS = NT / 32;
constexpr int MAXT = LF_ATTN_TRAIN_MAX_TILE;
constexpr int ELEMS = LF_ATTN_TRAIN_TILE_ELEMS;
constexpr int PER_THREAD = ELEMS / NT;    // register elements of a [tile, head_dim] tile per thread
constexpr int TILE_FLOATS = ELEMS + MAXT;  // a [tile, head_dim + 1] padded tile
static_assert(ELEMS % NT == 0, "a tile splits evenly over the threads");
static_assert(MAXT <= 32, "one lane per key of a tile");

// Global row of key coordinate kk of a span: the context rows first, then the sequence's own.
__device__ __forceinline__ int64_t key_row(const LfSeqSpan& s, int kk) {
    return kk < s.ctx_len ? (int64_t)s.ctx_start + kk : (int64_t)s.start + (kk - s.ctx_len);
}

// Stages `tile` rows of one head (columns col0 .. col0 + d of a [*, width] matrix) into a padded
// [tile][d + 1] shared tile; rows >= valid are zeroed. row_of(r): the global row of tile row r.
template <class RowOf>
__device__ __forceinline__ void load_tile(float* dst, const float* __restrict__ src, int64_t width, int64_t col0, int d,
                                          int tile, int valid, RowOf row_of) {
    for (int e = threadIdx.x; e < tile * d; e += NT) {
        const int r = e / d, x = e - (e / d) * d;
        dst[r * (d + 1) + x] = r < valid ? src[row_of(r) * width + col0 + x] : 0.0f;
    }
}

using lf::warp_max;
using lf::warp_sum;

__device__ __forceinline__ float dot_padded(const float* a, const float* b, int d) {
    float acc = 0.0f;
#pragma unroll 8
    for (int x = 0; x < d; ++x) acc += a[x] * b[x];
    return acc;
}

}  // namespace

// Forward. Block (bx, h, s): query rows bx * tile .. + tile of sequence s, q head h.
extern "C" __global__ void __launch_bounds__(NT, 2)
    lf_attn_train_fwd_f32(const float* __restrict__ q,            // [rows, n_heads * d]
                          const float* __restrict__ k,            // [rows, n_kv_heads * d]
                          const float* __restrict__ v,            // [rows, n_kv_heads * d]
                          const LfSeqSpan* __restrict__ spans,    // [n_seqs]
                          float* __restrict__ out,                // [rows, n_heads * d]
                          float* __restrict__ lse,                // [rows, n_heads]
                          const LfAttnTrainParams p) {
    const LfSeqSpan s = spans[blockIdx.z];
    const int tile = p.tile, d = p.head_dim, dp = d + 1;
    const int i0 = blockIdx.x * tile;
    if (i0 >= s.len) return;  // uniform over the block
    const int h = blockIdx.y;
    const int kvh = h / (p.n_heads / p.n_kv_heads);
    const int64_t qw = (int64_t)p.n_heads * d, kw = (int64_t)p.n_kv_heads * d;
    const int nq = min(tile, s.len - i0);  // valid query rows of this tile

    __shared__ float s_q[TILE_FLOATS], s_k[TILE_FLOATS], s_v[TILE_FLOATS];
    __shared__ float s_p[MAXT][MAXT + 1];
    __shared__ float s_m[MAXT], s_l[MAXT], s_alpha[MAXT];

    load_tile(s_q, q, qw, (int64_t)h * d, d, tile, nq, [=](int r) { return (int64_t)s.start + i0 + r; });
    for (int r = threadIdx.x; r < MAXT; r += NT) {
        s_m[r] = -INFINITY;
        s_l[r] = 0.0f;
        s_alpha[r] = 1.0f;
    }
    float acc[PER_THREAD];
#pragma unroll
    for (int t = 0; t < PER_THREAD; ++t) acc[t] = 0.0f;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n_keys = s.ctx_len + i0 + nq;  // keys the tile's last query sees
    for (int j0 = 0; j0 < n_keys; j0 += tile) {
        const int nk = min(tile, n_keys - j0);
        __syncthreads();  // the previous tile's readers are done with s_k, s_v, s_p
        load_tile(s_k, k, kw, (int64_t)kvh * d, d, tile, nk, [=](int r) { return key_row(s, j0 + r); });
        load_tile(s_v, v, kw, (int64_t)kvh * d, d, tile, nk, [=](int r) { return key_row(s, j0 + r); });
        __syncthreads();
        // Scores, -inf where the key is past the query (or either is past its tile's end).
        for (int e = threadIdx.x; e < tile * tile; e += NT) {
            const int i = e / tile, j = e - (e / tile) * tile;
            float sc = -INFINITY;
            if (i < nq && j < nk && j0 + j <= s.ctx_len + i0 + i) sc = dot_padded(s_q + i * dp, s_k + j * dp, d) * p.scale;
            s_p[i][j] = sc;
        }
        __syncthreads();
        // Online softmax: one warp per query row, one lane per key. Key 0 is visible to every
        // query, so after the first key tile m is finite and exp(-inf - m) = 0 masks.
        for (int i = warp; i < nq; i += NWARPS) {
            const float sc = lane < tile ? s_p[i][lane] : -INFINITY;
            const float m_old = s_m[i];
            const float m_new = fmaxf(m_old, warp_max(sc));
            const float e = lane < tile ? expf(sc - m_new) : 0.0f;
            const float sum = warp_sum(e);
            if (lane < tile) s_p[i][lane] = e;
            if (lane == 0) {
                const float alpha = expf(m_old - m_new);  // 0 on the first tile (m_old = -inf)
                s_alpha[i] = alpha;
                s_l[i] = s_l[i] * alpha + sum;
                s_m[i] = m_new;
            }
        }
        __syncthreads();
        // acc = acc * alpha + P V for this thread's (row, column) cells.
#pragma unroll
        for (int t = 0; t < PER_THREAD; ++t) {
            const int e = threadIdx.x + t * NT;
            if (e < nq * d) {
                const int i = e / d, x = e - (e / d) * d;
                float a = acc[t] * s_alpha[i];
                for (int j = 0; j < nk; ++j) a += s_p[i][j] * s_v[j * dp + x];
                acc[t] = a;
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (int t = 0; t < PER_THREAD; ++t) {
        const int e = threadIdx.x + t * NT;
        if (e < nq * d) {
            const int i = e / d, x = e - (e / d) * d;
            out[((int64_t)s.start + i0 + i) * qw + (int64_t)h * d + x] = acc[t] / s_l[i];
        }
    }
    for (int i = threadIdx.x; i < nq; i += NT) lse[((int64_t)s.start + i0 + i) * p.n_heads + h] = s_m[i] + logf(s_l[i]);
}

// delta[r, h] = dot(dout[r, h, :], out[r, h, :]): one warp per (row, head), grid-stride.
extern "C" __global__ void __launch_bounds__(NT, 2)
    lf_attn_train_delta_f32(const float* __restrict__ out,   // [rows, n_heads * d]
                            const float* __restrict__ dout,  // [rows, n_heads * d]
                            float* __restrict__ delta,       // [rows, n_heads]
                            const LfAttnTrainParams p) {
    const int64_t n = (int64_t)p.rows * p.n_heads;
    const int lane = threadIdx.x & 31;
    const int64_t stride = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; w < n; w += stride) {
        // Row r, head h sits at (r * n_heads + h) * d = w * d.
        const float* o = out + w * p.head_dim;
        const float* g = dout + w * p.head_dim;
        float acc = 0.0f;
        for (int x = lane; x < p.head_dim; x += 32) acc += o[x] * g[x];
        acc = warp_sum(acc);
        if (lane == 0) delta[w] = acc;
    }
}

// Backward. Block (bx, h, s): key coordinates bx * tile .. + tile of sequence s, q head h.
extern "C" __global__ void __launch_bounds__(NT, 2)
    lf_attn_train_bwd_f32(const float* __restrict__ q,          // [rows, n_heads * d]
                          const float* __restrict__ k,          // [rows, n_kv_heads * d]
                          const float* __restrict__ v,          // [rows, n_kv_heads * d]
                          const float* __restrict__ dout,       // [rows, n_heads * d]
                          const float* __restrict__ lse,        // [rows, n_heads]
                          const float* __restrict__ delta,      // [rows, n_heads]
                          const LfSeqSpan* __restrict__ spans,  // [n_seqs]
                          float* __restrict__ dq,               // [rows, n_heads * d], += (zeroed first)
                          float* __restrict__ dk,               // [rows, n_kv_heads * d], +=
                          float* __restrict__ dv,               // [rows, n_kv_heads * d], +=
                          const LfAttnTrainParams p) {
    const LfSeqSpan s = spans[blockIdx.z];
    const int tile = p.tile, d = p.head_dim, dp = d + 1;
    const int n_keys = s.ctx_len + s.len;
    const int j0 = blockIdx.x * tile;
    if (j0 >= n_keys) return;  // uniform over the block
    const int nk = min(tile, n_keys - j0);
    const int h = blockIdx.y;
    const int kvh = h / (p.n_heads / p.n_kv_heads);
    const int64_t qw = (int64_t)p.n_heads * d, kw = (int64_t)p.n_kv_heads * d;

    __shared__ float s_k[TILE_FLOATS], s_v[TILE_FLOATS], s_q[TILE_FLOATS], s_do[TILE_FLOATS];
    __shared__ float s_p[MAXT][MAXT + 1], s_ds[MAXT][MAXT + 1];
    __shared__ float s_lse[MAXT], s_delta[MAXT];

    load_tile(s_k, k, kw, (int64_t)kvh * d, d, tile, nk, [=](int r) { return key_row(s, j0 + r); });
    load_tile(s_v, v, kw, (int64_t)kvh * d, d, tile, nk, [=](int r) { return key_row(s, j0 + r); });
    float dk_acc[PER_THREAD], dv_acc[PER_THREAD];
#pragma unroll
    for (int t = 0; t < PER_THREAD; ++t) dk_acc[t] = dv_acc[t] = 0.0f;

    // Own query i sees key kk when kk <= ctx_len + i: the first that sees j0 is j0 - ctx_len.
    for (int i0 = max(0, j0 - s.ctx_len); i0 < s.len; i0 += tile) {
        const int nq = min(tile, s.len - i0);
        __syncthreads();  // the previous query tile's readers are done
        load_tile(s_q, q, qw, (int64_t)h * d, d, tile, nq, [=](int r) { return (int64_t)s.start + i0 + r; });
        load_tile(s_do, dout, qw, (int64_t)h * d, d, tile, nq, [=](int r) { return (int64_t)s.start + i0 + r; });
        for (int r = threadIdx.x; r < tile; r += NT) {
            const int64_t at = ((int64_t)s.start + i0 + r) * p.n_heads + h;
            s_lse[r] = r < nq ? lse[at] : 0.0f;
            s_delta[r] = r < nq ? delta[at] : 0.0f;
        }
        __syncthreads();
        for (int e = threadIdx.x; e < tile * tile; e += NT) {
            const int i = e / tile, j = e - (e / tile) * tile;
            float pv = 0.0f, dsv = 0.0f;
            if (i < nq && j < nk && j0 + j <= s.ctx_len + i0 + i) {
                pv = expf(dot_padded(s_q + i * dp, s_k + j * dp, d) * p.scale - s_lse[i]);
                dsv = pv * (dot_padded(s_do + i * dp, s_v + j * dp, d) - s_delta[i]) * p.scale;
            }
            s_p[i][j] = pv;
            s_ds[i][j] = dsv;
        }
        __syncthreads();
        // dV[j] += sum_i P[i, j] dO[i];  dK[j] += sum_i dS[i, j] Q[i]  (this thread's cells).
#pragma unroll
        for (int t = 0; t < PER_THREAD; ++t) {
            const int e = threadIdx.x + t * NT;
            if (e < nk * d) {
                const int j = e / d, x = e - (e / d) * d;
                float a = dv_acc[t], b = dk_acc[t];
                for (int i = 0; i < nq; ++i) {
                    a += s_p[i][j] * s_do[i * dp + x];
                    b += s_ds[i][j] * s_q[i * dp + x];
                }
                dv_acc[t] = a;
                dk_acc[t] = b;
            }
        }
        // dQ[i] += sum_j dS[i, j] K[j]: a partial sum over this block's keys.
        for (int e = threadIdx.x; e < nq * d; e += NT) {
            const int i = e / d, x = e - (e / d) * d;
            float a = 0.0f;
            for (int j = 0; j < nk; ++j) a += s_ds[i][j] * s_k[j * dp + x];
            atomicAdd(&dq[((int64_t)s.start + i0 + i) * qw + (int64_t)h * d + x], a);
        }
    }
#pragma unroll
    for (int t = 0; t < PER_THREAD; ++t) {
        const int e = threadIdx.x + t * NT;
        if (e < nk * d) {
            const int j = e / d, x = e - (e / d) * d;
            const int64_t at = key_row(s, j0 + j) * kw + (int64_t)kvh * d + x;
            atomicAdd(&dk[at], dk_acc[t]);
            atomicAdd(&dv[at], dv_acc[t]);
        }
    }
}
