// The fused LoRA backward (C ABI and the math: csrc/lora_backward.h; CPU twin:
// src/backend/cpu/backward.rs, lora_backward). Two passes, each reading its big operand once:
//   pass 1 walks dy in [ROWS x TILE] tiles: per tile it adds the tile's share of
//     g = scale * dy B (a partial sum over the tile's dy columns) and of
//     dB = scale * dy^T xa (a partial sum over the tile's rows);
//   pass 2 walks x in [ROWS x TILE] tiles: per tile it adds the tile's share of dA = g^T x and
//     writes dx = g A for the tile's (row, column) cells, which no other block touches.
// Shared memory per block: 3 tiles of at most 64 x 64 f32 (32 KB). f32 storage and math.
// Status: compile-checked only (no GPU was available when it was written); the Rust launcher
// and the GPU parity test against the CPU twin are the next step.

#include <stdint.h>

#include "lora_backward.h"

namespace {

constexpr int ROWS = LF_LORA_BWD_ROWS;
constexpr int TILE = LF_LORA_BWD_TILE;
constexpr int RMAX = LF_LORA_BWD_MAX_RANK;

}  // namespace

// Pass 1. Block (bx, by): dy columns o0 = bx * TILE .. +TILE, rows t0 = by * ROWS .. +ROWS.
extern "C" __global__ void __launch_bounds__(LF_LORA_BWD_THREADS)
    lf_lora_bwd_dy_f32(const float* __restrict__ dy, const float* __restrict__ xa, const float* __restrict__ b,
                       float* __restrict__ g, float* __restrict__ db, LfLoraBwdParams p) {
    __shared__ float s_dy[ROWS][TILE];
    __shared__ float s_b[TILE][RMAX];
    __shared__ float s_xa[ROWS][RMAX];
    const int o0 = blockIdx.x * TILE;
    const int t0 = blockIdx.y * ROWS;
    const int r = p.rank;
    // Stage the tiles (zero outside the matrices so the sums below need no bounds checks).
    for (int e = threadIdx.x; e < ROWS * TILE; e += blockDim.x) {
        const int t = e / TILE, o = e % TILE;
        s_dy[t][o] = (t0 + t < p.rows && o0 + o < p.d_out) ? dy[(int64_t)(t0 + t) * p.d_out + o0 + o] : 0.0f;
    }
    for (int e = threadIdx.x; e < TILE * r; e += blockDim.x) {
        const int o = e / r, k = e % r;
        s_b[o][k] = (o0 + o < p.d_out) ? b[(int64_t)(o0 + o) * r + k] : 0.0f;
    }
    for (int e = threadIdx.x; e < ROWS * r; e += blockDim.x) {
        const int t = e / r, k = e % r;
        s_xa[t][k] = (t0 + t < p.rows) ? xa[(int64_t)(t0 + t) * r + k] : 0.0f;
    }
    __syncthreads();
    // g[t, k] += scale * sum over this tile's columns o of dy[t, o] B[o, k].
    for (int e = threadIdx.x; e < ROWS * r; e += blockDim.x) {
        const int t = e / r, k = e % r;
        if (t0 + t >= p.rows) continue;
        float acc = 0.0f;
#pragma unroll 8
        for (int o = 0; o < TILE; ++o) acc += s_dy[t][o] * s_b[o][k];
        atomicAdd(&g[(int64_t)(t0 + t) * r + k], p.scale * acc);
    }
    // dB[o, k] += scale * sum over this tile's rows t of dy[t, o] xa[t, k].
    for (int e = threadIdx.x; e < TILE * r; e += blockDim.x) {
        const int o = e / r, k = e % r;
        if (o0 + o >= p.d_out) continue;
        float acc = 0.0f;
#pragma unroll 8
        for (int t = 0; t < ROWS; ++t) acc += s_dy[t][o] * s_xa[t][k];
        atomicAdd(&db[(int64_t)(o0 + o) * r + k], p.scale * acc);
    }
}

// Pass 2. Block (bx, by): x columns i0 = bx * TILE .. +TILE, rows t0 = by * ROWS .. +ROWS.
// dx may be null (the first layer's input needs no gradient).
extern "C" __global__ void __launch_bounds__(LF_LORA_BWD_THREADS)
    lf_lora_bwd_x_f32(const float* __restrict__ x, const float* __restrict__ g, const float* __restrict__ a,
                      float* __restrict__ da, float* __restrict__ dx, LfLoraBwdParams p) {
    __shared__ float s_x[ROWS][TILE];
    __shared__ float s_g[ROWS][RMAX];
    __shared__ float s_a[RMAX][TILE];
    const int i0 = blockIdx.x * TILE;
    const int t0 = blockIdx.y * ROWS;
    const int r = p.rank;
    for (int e = threadIdx.x; e < ROWS * TILE; e += blockDim.x) {
        const int t = e / TILE, i = e % TILE;
        s_x[t][i] = (t0 + t < p.rows && i0 + i < p.d_in) ? x[(int64_t)(t0 + t) * p.d_in + i0 + i] : 0.0f;
    }
    for (int e = threadIdx.x; e < ROWS * r; e += blockDim.x) {
        const int t = e / r, k = e % r;
        s_g[t][k] = (t0 + t < p.rows) ? g[(int64_t)(t0 + t) * r + k] : 0.0f;
    }
    for (int e = threadIdx.x; e < r * TILE; e += blockDim.x) {
        const int k = e / TILE, i = e % TILE;
        s_a[k][i] = (i0 + i < p.d_in) ? a[(int64_t)k * p.d_in + i0 + i] : 0.0f;
    }
    __syncthreads();
    // dA[k, i] += sum over this tile's rows t of g[t, k] x[t, i].
    for (int e = threadIdx.x; e < r * TILE; e += blockDim.x) {
        const int k = e / TILE, i = e % TILE;
        if (i0 + i >= p.d_in) continue;
        float acc = 0.0f;
#pragma unroll 8
        for (int t = 0; t < ROWS; ++t) acc += s_g[t][k] * s_x[t][i];
        atomicAdd(&da[(int64_t)k * p.d_in + i0 + i], acc);
    }
    if (dx == nullptr) return;
    // dx[t, i] += sum over k of g[t, k] A[k, i]: this block owns these cells.
    for (int e = threadIdx.x; e < ROWS * TILE; e += blockDim.x) {
        const int t = e / TILE, i = e % TILE;
        if (t0 + t >= p.rows || i0 + i >= p.d_in) continue;
        float acc = 0.0f;
        for (int k = 0; k < r; ++k) acc += s_g[t][k] * s_a[k][i];
        dx[(int64_t)(t0 + t) * p.d_in + i0 + i] += acc;
    }
}
