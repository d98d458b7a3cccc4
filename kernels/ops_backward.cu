// Backward passes of the decoder's row-wise and element-wise ops, for training: RMSNorm (weight
// frozen), RoPE (rotate-half), SiLU*mul. C ABI and the math: csrc/ops_backward.h. CPU twins:
// src/backend/cpu/backward.rs. f32 storage and math (the trainer's activations are f32); scalar
// loads: all three are memory bound and read each element once (RMSNorm twice, the second time
// from L1/L2), see kernels/NOTES.md.
//
// Status: compile-checked only (no GPU was lent when this was written); parity tests:
// tests/cuda_ops_backward.rs.

#include <stdint.h>

#include "ops_backward.h"

namespace {

// Quiet NaN, written where a position is out of range (the Rust side never passes one).
__device__ __forceinline__ float nan_f32() { return __int_as_float(0x7fc00000); }

// Both sums over the block, returned to every thread. blockDim.x is a multiple of 32 (at most
// 1024) and every thread of the block calls this exactly once per kernel.
__device__ __forceinline__ float2 block_sum2(float a, float b) {
    __shared__ float2 warp_sums[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, o);
        b += __shfl_xor_sync(0xffffffffu, b, o);
    }
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    if (lane == 0) warp_sums[warp] = make_float2(a, b);
    __syncthreads();
    float2 v = lane < (int)(blockDim.x >> 5) ? warp_sums[lane] : make_float2(0.f, 0.f);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        v.x += __shfl_xor_sync(0xffffffffu, v.x, o);
        v.y += __shfl_xor_sync(0xffffffffu, v.y, o);
    }
    return v;
}

}  // namespace

// RMSNorm backward. x, dy, dx: [rows, cols]; w: [cols]. One block per row: pass 1 sums x^2 and
// w*dy*x, pass 2 writes dx.
extern "C" __global__ void __launch_bounds__(LF_OPS_ROW_THREADS_MAX)
    lf_rms_norm_bwd_f32(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ dy,
                        float* __restrict__ dx, const LfRmsNormBwdParams p) {
    const int64_t row = blockIdx.x;
    if (row >= p.rows) return;  // uniform over the block: no thread reaches block_sum2
    const int64_t cols = p.cols;
    const float* xr = x + row * cols;
    const float* dyr = dy + row * cols;
    float* dxr = dx + row * cols;
    float ss = 0.f, wdx = 0.f;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
        const float xv = xr[i];
        ss += xv * xv;
        wdx += w[i] * dyr[i] * xv;
    }
    const float2 s = block_sum2(ss, wdx);
    const float r = rsqrtf(s.x / (float)cols + p.eps);
    const float c = r * r * r / (float)cols * s.y;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
        const float g = r * w[i] * dyr[i] - xr[i] * c;
        dxr[i] = p.accumulate ? dxr[i] + g : g;
    }
}

// RoPE backward, in place on dq and dk of one token per block; a work item is one (head, i)
// pair. dq: [rows, n_q_heads * head_dim]; dk: [rows, n_k_heads * head_dim]; positions: [rows];
// cos_t, sin_t: [max_pos, head_dim / 2].
extern "C" __global__ void __launch_bounds__(LF_OPS_THREADS)
    lf_rope_bwd_f32(float* __restrict__ dq, float* __restrict__ dk, const uint32_t* __restrict__ positions,
                    const float* __restrict__ cos_t, const float* __restrict__ sin_t, const LfRopeParams p) {
    const int64_t row = blockIdx.x;
    if (row >= p.rows) return;
    const int half = p.head_dim / 2;
    const uint32_t pos = positions[row];
    const bool bad = pos >= (uint32_t)p.max_pos;
    const int items = (p.n_q_heads + p.n_k_heads) * half;
    for (int it = threadIdx.x; it < items; it += blockDim.x) {
        const int head = it / half, i = it % half;
        float* base = head < p.n_q_heads
                          ? dq + row * (int64_t)p.n_q_heads * p.head_dim + (int64_t)head * p.head_dim
                          : dk + row * (int64_t)p.n_k_heads * p.head_dim + (int64_t)(head - p.n_q_heads) * p.head_dim;
        if (bad) {
            base[i] = nan_f32();
            base[i + half] = nan_f32();
            continue;
        }
        const float c = cos_t[(int64_t)pos * half + i];
        const float s = sin_t[(int64_t)pos * half + i];
        const float a = base[i], b = base[i + half];
        base[i] = a * c + b * s;
        base[i + half] = b * c - a * s;
    }
}

// SiLU*mul backward over n elements, grid-stride. gate, up, dout, dgate, dup: [n].
extern "C" __global__ void __launch_bounds__(LF_OPS_THREADS)
    lf_silu_mul_bwd_f32(const float* __restrict__ gate, const float* __restrict__ up, const float* __restrict__ dout,
                        float* __restrict__ dgate, float* __restrict__ dup, const LfElementwiseParams p) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        const float g = gate[i], u = up[i], d = dout[i];
        const float sig = 1.f / (1.f + expf(-g));
        dup[i] = d * g * sig;
        dgate[i] = d * u * sig * (1.f + g * (1.f - sig));
    }
}
