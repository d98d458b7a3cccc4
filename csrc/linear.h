/* C ABI of kernels/linear.cu: dense linear layers y[m, n] = x[m, k] · W[n, k]ᵀ (+ bias[n]) with
 * f32 or bf16 weights and f32 or bf16 activations (y has the activations' type; f32 accumulate,
 * one rounding per output). Shared by the kernels and, through bindgen, by the Rust launch code
 * (src/backend/cuda/linear.rs), so both sides agree on every field by construction.
 *
 * Two paths, each with a fast kernel (16-byte loads) and a generic one (any shape, any alignment):
 *   GEMV (m <= LF_LINEAR_GEMV_MAX_ROWS: decode): one warp per output feature, the block's warps on
 *     consecutive features; each weight element is read once for up to MT rows of x.
 *     Kernels lf_linear_gemv_<x>_<w>_m<MT>_{fast,generic}, MT in {1, 2, 4, 8}; grid
 *     (ceil(n / LF_LINEAR_GEMV_WARPS), ceil(m / MT)), block LF_LINEAR_THREADS.
 *     Fast: k % 8 == 0 and x, W 16-byte aligned.
 *   GEMM on the tensor cores (prefill with bf16 x and bf16 W): tiles of LF_LINEAR_TC_BM rows by
 *     LF_LINEAR_TC_BN features by LF_LINEAR_TC_BK, mma.sync m16n8k16 bf16 -> f32 (the GEMM of
 *     kernels/mma_gemm.cuh, shared with NF4's). Kernels lf_linear_gemm_tc_bf16_bf16_{fast,generic};
 *     grid (ceil(n / TC_BN), ceil(m / TC_BM)), block LF_LINEAR_TC_THREADS. Fast: k % 8 == 0 and x,
 *     W 16-byte aligned.
 *   GEMM (prefill, any other pair): block tiles of LF_LINEAR_BM rows by LF_LINEAR_BN features, k in
 *     steps of LF_LINEAR_BK through shared memory, 4 x 4 outputs per thread, f32 FMA (CUDA cores).
 *     Kernel lf_linear_gemm_<x>_<w>; grid (ceil(n / BN), ceil(m / BM)), block LF_LINEAR_THREADS.
 * <x>, <w>: f32 or bf16. */
#pragma once
#include <stdint.h>

#define LF_LINEAR_THREADS 256
#define LF_LINEAR_GEMV_MAX_ROWS 8
#define LF_LINEAR_GEMV_WARPS (LF_LINEAR_THREADS / 32)
#define LF_LINEAR_BM 64
#define LF_LINEAR_BN 64
#define LF_LINEAR_BK 16
#define LF_LINEAR_TC_BM 64
#define LF_LINEAR_TC_BN 128
#define LF_LINEAR_TC_BK 64
#define LF_LINEAR_TC_THREADS 256

typedef struct {
    int32_t m;        /* rows of x and y */
    int32_t n;        /* output features: rows of W, columns of y */
    int32_t k;        /* input features: columns of x and W */
    int32_t has_bias; /* 1: add bias[n] (f32) to every row of y; 0: bias is not read (may be null) */
} LfLinearParams;
