// Cross-entropy fused with the lm_head, chunked over the vocabulary (C ABI, the recurrence and
// the shapes: csrc/cross_entropy.h; CPU twin: src/backend/cpu/backward.rs,
// cross_entropy_lm_head). Per chunk of vocabulary rows: the logits of the chunk (SGEMM "NT"), the
// online-softmax update of each row's max and sum with the chunk's exponentials written in place,
// and S = rescale * S + exp(logits - m) W_chunk (SGEMM "NN"): two products per chunk, one read of
// W; the [rows, vocab] logits never exist, only [rows, chunk].
//
// The SGEMMs are plain f32 CUDA-core tiles (64 x 64 outputs per 256-thread block, 4 x 4 per
// thread, K staged 16 deep in shared memory), bounds-checked everywhere (odd shapes are the
// generic path, not a special case). f32 so the result tracks the CPU twin; a TF32 or bf16
// tensor-core version is the next step once this one is measured (kernels/NOTES.md).
//
// Status: compile-checked only (no GPU was lent when this was written); parity tests:
// tests/cuda_cross_entropy.rs; bench: bench/train_gpu.rs.

#include <math.h>
#include <stdint.h>

#include "cross_entropy.h"

namespace {

constexpr int NT = LF_CE_THREADS;
constexpr int TM = LF_GEMM_TILE_M, TN = LF_GEMM_TILE_N, TK = LF_GEMM_TILE_K;
static_assert(NT == (TM / 4) * (TN / 4), "one thread per 4 x 4 block of outputs");

// C [m, n] = A [m, k] · op(B)  (+ rowscale[row] · C when ACCUM), A row-major.
// B_NT: B is [n, k] row-major (C = A Bᵀ); otherwise B is [k, n] row-major.
template <bool B_NT, bool ACCUM>
__device__ __forceinline__ void sgemm(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
                                      const float* __restrict__ rowscale, const LfGemmParams p) {
    __shared__ float as[TK][TM + 4];  // as[kk][row]
    __shared__ float bs[TK][TN + 4];  // bs[kk][col]
    const int m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
    const int tx = threadIdx.x % (TN / 4), ty = threadIdx.x / (TN / 4);
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < p.k; k0 += TK) {
        for (int e = threadIdx.x; e < TM * TK; e += NT) {
            const int r = e / TK, kk = e % TK;
            as[kk][r] = (m0 + r < p.m && k0 + kk < p.k) ? a[(int64_t)(m0 + r) * p.k + k0 + kk] : 0.0f;
        }
        if (B_NT) {
            for (int e = threadIdx.x; e < TN * TK; e += NT) {
                const int col = e / TK, kk = e % TK;
                bs[kk][col] = (n0 + col < p.n && k0 + kk < p.k) ? b[(int64_t)(n0 + col) * p.k + k0 + kk] : 0.0f;
            }
        } else {
            for (int e = threadIdx.x; e < TN * TK; e += NT) {
                const int kk = e / TN, col = e % TN;
                bs[kk][col] = (k0 + kk < p.k && n0 + col < p.n) ? b[(int64_t)(k0 + kk) * p.n + n0 + col] : 0.0f;
            }
        }
        __syncthreads();
        // Two-level sum (the tile's TK products, then the tile into acc): the accumulate pass
        // sums a whole vocabulary chunk (8192 rows) per output, and dh = S / z - w_target cancels,
        // so S's rounding error is what the gradients near the head see.
        float part[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) part[i][j] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < TK; ++kk) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) av[i] = as[kk][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) bv[j] = bs[kk][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) part[i][j] = fmaf(av[i], bv[j], part[i][j]);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] += part[i][j];
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = m0 + ty * 4 + i;
        if (row >= p.m) continue;
        const float sc = ACCUM ? rowscale[row] : 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = n0 + tx * 4 + j;
            if (col >= p.n) continue;
            float* out = c + (int64_t)row * p.n + col;
            *out = ACCUM ? sc * *out + acc[i][j] : acc[i][j];
        }
    }
}

// A block-wide reduction (sum or max) returned to every thread; every thread of the block calls
// it. The leading barrier makes back-to-back calls safe with the one shared scratch array.
template <bool MAX>
__device__ __forceinline__ float block_reduce(float v) {
    __shared__ float warp_vals[NT / 32];
    __syncthreads();
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? fmaxf(v, w) : v + w;
    }
    if ((threadIdx.x & 31) == 0) warp_vals[threadIdx.x >> 5] = v;
    __syncthreads();
    v = warp_vals[0];
#pragma unroll
    for (int i = 1; i < NT / 32; ++i) v = MAX ? fmaxf(v, warp_vals[i]) : v + warp_vals[i];
    return v;
}

}  // namespace

// e [rows, chunk] = h [rows, hidden] · W_cᵀ, W_c = w + v0 * hidden: [chunk, hidden].
// Grid (ceil(chunk / TN), ceil(rows / TM)).
extern "C" __global__ void __launch_bounds__(NT)
    lf_ce_logits_f32(const float* __restrict__ h, const float* __restrict__ w_chunk, float* __restrict__ e,
                     const LfGemmParams p) {
    sgemm<true, false>(h, w_chunk, e, nullptr, p);
}

// S [rows, hidden] = rescale[row] · S + e [rows, chunk] · W_c [chunk, hidden].
// Grid (ceil(hidden / TN), ceil(rows / TM)).
extern "C" __global__ void __launch_bounds__(NT)
    lf_ce_accumulate_f32(const float* __restrict__ e, const float* __restrict__ w_chunk, float* __restrict__ s,
                         const float* __restrict__ rescale, const LfGemmParams p) {
    sgemm<false, true>(e, w_chunk, s, rescale, p);
}

// The online-softmax step of one chunk, one block per row (see the header).
extern "C" __global__ void __launch_bounds__(NT)
    lf_ce_chunk_f32(float* __restrict__ e,                // [rows, chunk], logits in, exp(logit - m') out
                    const uint32_t* __restrict__ targets,  // [rows]
                    float* __restrict__ m,                // [rows], running max
                    float* __restrict__ z,                // [rows], running sum
                    float* __restrict__ rescale,          // [rows], out: exp(m - m')
                    float* __restrict__ target_logit,     // [rows]
                    const LfCeParams p) {
    const int64_t row = blockIdx.x;
    if (row >= p.rows) return;  // uniform over the block
    float* er = e + row * p.chunk;
    const int64_t t = (int64_t)targets[row] - p.v0;
    // Read before the exponentials overwrite it; block_reduce's barrier orders the two.
    if (threadIdx.x == 0 && t >= 0 && t < p.chunk) target_logit[row] = er[t];
    float mx = -INFINITY;
    for (int c = threadIdx.x; c < p.chunk; c += NT) mx = fmaxf(mx, er[c]);
    mx = block_reduce<true>(mx);
    const float m_old = m[row];
    const float m_new = fmaxf(m_old, mx);
    float sum = 0.0f;
    for (int c = threadIdx.x; c < p.chunk; c += NT) {
        const float v = expf(er[c] - m_new);
        er[c] = v;
        sum += v;
    }
    sum = block_reduce<false>(sum);
    if (threadIdx.x == 0) {
        const float r = expf(m_old - m_new);  // 0 on the first chunk (m_old = -inf)
        rescale[row] = r;
        z[row] = z[row] * r + sum;
        m[row] = m_new;
    }
}

// loss[row] = m + ln z - target_logit (unweighted; the host sums weight * loss in f64) and
// dh = weight * (S / z - w[target]) in place of S. One block per row.
extern "C" __global__ void __launch_bounds__(NT)
    lf_ce_finish_f32(const float* __restrict__ w,             // [vocab, hidden]
                     const uint32_t* __restrict__ targets,     // [rows]
                     const float* __restrict__ weights,        // [rows]
                     const float* __restrict__ m,              // [rows]
                     const float* __restrict__ z,              // [rows]
                     const float* __restrict__ target_logit,   // [rows]
                     float* __restrict__ s,                    // [rows, hidden]: S in, dh out
                     float* __restrict__ loss,                 // [rows]
                     const LfCeParams p) {
    const int64_t row = blockIdx.x;
    if (row >= p.rows) return;
    const float inv = 1.0f / z[row];
    const float wt = weights[row];
    const float* wr = w + (int64_t)targets[row] * p.hidden;
    float* sr = s + row * p.hidden;
    for (int c = threadIdx.x; c < p.hidden; c += NT) sr[c] = wt * (sr[c] * inv - wr[c]);
    if (threadIdx.x == 0) loss[row] = m[row] + logf(z[row]) - target_logit[row];
}
