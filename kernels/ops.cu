// Element-wise and row-wise ops of the forward pass: RMSNorm, RoPE (rotate-half), SiLU*mul,
// embedding gather, residual add. C ABI: csrc/ops.h. CPU twins: src/backend/cpu/ops.rs.
//
// Every op exists for two storage types, written once as a template over the element type:
//   *_f32:  f32 in memory, f32 math;
//   *_bf16: bf16 in memory, f32 math, one round-to-nearest-even per stored value.
// Loads and stores are 16 bytes wide (4 f32 or 8 bf16) when the row length (or, for the flat
// ops, the buffer) allows and the base pointers are 16-byte aligned; anything else takes the
// scalar path, so every shape works. The alignment test is made once per thread on kernel
// arguments, so it is uniform across the grid and costs nothing measurable.
//
// All of these ops are memory bound: their cost is bytes moved (see kernels/NOTES.md).

#include <cuda_bf16.h>
#include <stdint.h>

#include "common.cuh"
#include "ops.h"

namespace {

// Quiet NaN, written where an index passed to a kernel is out of range (the Rust side never
// passes one), so that a bypassed check shows up in the output instead of as a wild read.
__device__ __forceinline__ float nan_f32() { return __int_as_float(0x7fc00000); }

static_assert(LF_OPS_VEC_BYTES == 16, "lf::Elem moves 16-byte vectors");
using lf::aligned16;
using lf::Elem;

// M f32 values (M a multiple of 4) from a 16-byte aligned p, in 16-byte loads: the RoPE tables
// are f32 whatever the activation type.
template <int M>
__device__ __forceinline__ void load_f32(const float* p, float (&f)[M]) {
    static_assert(M % 4 == 0, "whole 16-byte vectors");
#pragma unroll
    for (int j = 0; j < M; j += 4) {
        const uint4 u = *reinterpret_cast<const uint4*>(p + j);
        f[j] = __uint_as_float(u.x);
        f[j + 1] = __uint_as_float(u.y);
        f[j + 2] = __uint_as_float(u.z);
        f[j + 3] = __uint_as_float(u.w);
    }
}

// Sum of v over the block, returned to every thread. blockDim.x is a multiple of 32 (at most
// 1024) and every thread of the block calls this exactly once per kernel.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float warp_sums[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    // Every warp reduces the per-warp sums itself: all threads get the total without a second
    // barrier.
    v = lane < (int)(blockDim.x >> 5) ? warp_sums[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// ---------------------------------------------------------------------------------------------
// RMSNorm. One block per row; the row is read twice (sum of squares, then scale), the second
// read hitting L1/L2 (a 4096-wide f32 row is 16 KiB).
// x, out: [rows, cols]; w: [cols].
template <typename T>
__device__ __forceinline__ void rms_norm(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out,
                                         const LfRmsNormParams p) {
    using E = Elem<T>;
    constexpr int N = E::N;
    const int64_t row = blockIdx.x;
    if (row >= p.rows) return;  // uniform over the block: no thread reaches block_sum
    const int64_t cols = p.cols;
    const T* xr = x + row * cols;
    T* orow = out + row * cols;
    const bool vec = cols % N == 0 && aligned16(x) && aligned16(w) && aligned16(out);

    float ss = 0.f;
    if (vec) {
        for (int64_t i = (int64_t)threadIdx.x * N; i < cols; i += (int64_t)blockDim.x * N) {
            float f[N];
            E::load(xr + i, f);
#pragma unroll
            for (int j = 0; j < N; ++j) ss += f[j] * f[j];
        }
    } else {
        for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
            const float v = E::load1(xr + i);
            ss += v * v;
        }
    }
    // Same expression as the CPU twin: w * (x * rsqrt(mean + eps)).
    const float inv = rsqrtf(block_sum(ss) / (float)cols + p.eps);

    if (vec) {
        for (int64_t i = (int64_t)threadIdx.x * N; i < cols; i += (int64_t)blockDim.x * N) {
            float f[N], g[N];
            E::load(xr + i, f);
            E::load(w + i, g);
#pragma unroll
            for (int j = 0; j < N; ++j) f[j] = g[j] * (f[j] * inv);
            E::store(orow + i, f);
        }
    } else {
        for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
            E::store1(orow + i, E::load1(w + i) * (E::load1(xr + i) * inv));
        }
    }
}

// RMSNorm from an f32 residual stream into bf16 activations (a bf16 backend keeps its residual in
// f32): x, w f32; out bf16, one rounding per element. Same math as rms_norm<float>.
// x: [rows, cols] f32; w: [cols] f32; out: [rows, cols] bf16.
__device__ __forceinline__ void rms_norm_to_bf16(const float* __restrict__ x, const float* __restrict__ w,
                                                 __nv_bfloat16* __restrict__ out, const LfRmsNormParams p) {
    const int64_t row = blockIdx.x;
    if (row >= p.rows) return;  // uniform over the block
    const int64_t cols = p.cols;
    const float* xr = x + row * cols;
    __nv_bfloat16* orow = out + row * cols;
    float ss = 0.f;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = xr[i];
        ss += v * v;
    }
    const float inv = rsqrtf(block_sum(ss) / (float)cols + p.eps);
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) orow[i] = __float2bfloat16_rn(w[i] * (xr[i] * inv));
}

// x += y with an f32 x (the residual stream) and bf16 y (a layer's output); x, y: [n].
__device__ __forceinline__ void add_bf16_into_f32(float* __restrict__ x, const __nv_bfloat16* __restrict__ y,
                                                  const LfElementwiseParams p) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) x[i] += __bfloat162float(y[i]);
}

// ---------------------------------------------------------------------------------------------
// RoPE, rotate-half, in place on q and k of one token per block. A work item is N consecutive
// pairs (x[i..i+N], x[i+h..i+h+N]) of one head, h = head_dim / 2; the vector path needs h % N == 0
// (then every head, row and table offset is a multiple of N elements, so 16-byte aligned).
// q: [rows, n_q_heads * head_dim]; k: [rows, n_k_heads * head_dim]; positions: [rows];
// cos_t, sin_t: [max_pos, head_dim / 2].
template <typename T>
__device__ __forceinline__ void rope(T* __restrict__ q, T* __restrict__ k, const uint32_t* __restrict__ positions,
                                     const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                     const LfRopeParams p) {
    using E = Elem<T>;
    constexpr int N = E::N;
    const int64_t row = blockIdx.x;
    if (row >= p.rows) return;
    const int head_dim = p.head_dim;
    const int half = head_dim / 2;
    const int n_q = p.n_q_heads;
    // Row widths fit in int32 (checked by the Rust side), so all in-row indices are int32.
    T* qr = q + row * ((int64_t)n_q * head_dim);
    T* kr = k + row * ((int64_t)p.n_k_heads * head_dim);
    const uint32_t pos = positions[row];
    if (pos >= (uint32_t)p.max_pos) {
        for (int i = threadIdx.x; i < n_q * head_dim; i += blockDim.x) E::store1(qr + i, nan_f32());
        for (int i = threadIdx.x; i < p.n_k_heads * head_dim; i += blockDim.x) E::store1(kr + i, nan_f32());
        return;
    }
    const float* c = cos_t + (int64_t)pos * half;
    const float* s = sin_t + (int64_t)pos * half;
    const int n_heads = n_q + p.n_k_heads;

    const bool vec = half % N == 0 && aligned16(q) && aligned16(k) && aligned16(cos_t) && aligned16(sin_t);
    if (vec) {
        const int per_head = half / N;
        const int items = n_heads * per_head;
        for (int it = threadIdx.x; it < items; it += blockDim.x) {
            const int head = it / per_head;
            const int i = (it - head * per_head) * N;
            T* xh = head < n_q ? qr + head * head_dim : kr + (head - n_q) * head_dim;
            float a[N], b[N], cc[N], sn[N];
            E::load(xh + i, a);
            E::load(xh + i + half, b);
            load_f32<N>(c + i, cc);
            load_f32<N>(s + i, sn);
#pragma unroll
            for (int j = 0; j < N; ++j) {
                const float x1 = a[j], x2 = b[j];
                a[j] = x1 * cc[j] - x2 * sn[j];
                b[j] = x2 * cc[j] + x1 * sn[j];
            }
            E::store(xh + i, a);
            E::store(xh + i + half, b);
        }
    } else {
        const int items = n_heads * half;
        for (int it = threadIdx.x; it < items; it += blockDim.x) {
            const int head = it / half;
            const int i = it - head * half;
            T* xh = head < n_q ? qr + head * head_dim : kr + (head - n_q) * head_dim;
            const float x1 = E::load1(xh + i), x2 = E::load1(xh + i + half);
            const float cv = c[i], sv = s[i];
            E::store1(xh + i, x1 * cv - x2 * sv);
            E::store1(xh + i + half, x2 * cv + x1 * sv);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Flat element-wise ops: a grid-stride loop over N-element vectors when every pointer is 16-byte
// aligned, then the n % N tail (or all of n when not aligned) element by element.

// SwiGLU gate as the CPU twin computes it: g / (1 + exp(-g)) * u (expf, not __expf: the op is
// memory bound, and the accurate exp keeps f32 parity at 1e-5).
__device__ __forceinline__ float silu_mul1(float g, float u) { return g / (1.f + expf(-g)) * u; }

// gate, up, out: [n].
template <typename T>
__device__ __forceinline__ void silu_mul(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out,
                                         const LfElementwiseParams p) {
    using E = Elem<T>;
    constexpr int N = E::N;
    const int64_t n = p.n;
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int64_t n_vec = aligned16(gate) && aligned16(up) && aligned16(out) ? n / N : 0;
    for (int64_t v = tid; v < n_vec; v += stride) {
        float g[N], u[N];
        E::load(gate + v * N, g);
        E::load(up + v * N, u);
#pragma unroll
        for (int j = 0; j < N; ++j) g[j] = silu_mul1(g[j], u[j]);
        E::store(out + v * N, g);
    }
    // The tail is short (< N elements when aligned): no unrolling, which would cost a 64-bit
    // trip-count division.
#pragma unroll 1
    for (int64_t i = n_vec * N + tid; i < n; i += stride) E::store1(out + i, silu_mul1(E::load1(gate + i), E::load1(up + i)));
}

// x, y: [n]; x += y.
template <typename T>
__device__ __forceinline__ void add_assign(T* __restrict__ x, const T* __restrict__ y, const LfElementwiseParams p) {
    using E = Elem<T>;
    constexpr int N = E::N;
    const int64_t n = p.n;
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int64_t n_vec = aligned16(x) && aligned16(y) ? n / N : 0;
    for (int64_t v = tid; v < n_vec; v += stride) {
        float a[N], b[N];
        E::load(x + v * N, a);
        E::load(y + v * N, b);
#pragma unroll
        for (int j = 0; j < N; ++j) a[j] += b[j];
        E::store(x + v * N, a);
    }
#pragma unroll 1
    for (int64_t i = n_vec * N + tid; i < n; i += stride) E::store1(x + i, E::load1(x + i) + E::load1(y + i));
}

// ---------------------------------------------------------------------------------------------
// Embedding gather, one block per id: a raw copy of the row (no conversion), 16 bytes at a time
// when hidden % N == 0 and both base pointers are aligned.
// table: [vocab, hidden]; ids: [n_ids]; out: [n_ids, hidden].
template <typename T>
__device__ __forceinline__ void embedding(const T* __restrict__ table, const uint32_t* __restrict__ ids,
                                          T* __restrict__ out, const LfEmbeddingParams p) {
    constexpr int N = Elem<T>::N;
    const int64_t r = blockIdx.x;
    if (r >= p.n_ids) return;
    const int64_t hidden = p.hidden;
    T* o = out + r * hidden;
    const uint32_t id = ids[r];
    if (id >= (uint32_t)p.vocab) {
        for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) Elem<T>::store1(o + i, nan_f32());
        return;
    }
    const T* src = table + (int64_t)id * hidden;
    if (hidden % N == 0 && aligned16(table) && aligned16(out)) {
        const uint4* s4 = reinterpret_cast<const uint4*>(src);
        uint4* o4 = reinterpret_cast<uint4*>(o);
        for (int64_t i = threadIdx.x; i < hidden / N; i += blockDim.x) o4[i] = s4[i];
    } else {
        for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = src[i];
    }
}

// ---------------------------------------------------------------------------------------------
// Casts between the storage types (grid-stride): f32 -> bf16 rounds to nearest even, bf16 -> f32
// is exact. in, out: [n].
template <typename TI, typename TO>
__device__ __forceinline__ void cast(const TI* __restrict__ in, TO* __restrict__ out, const LfElementwiseParams p) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        Elem<TO>::store1(out + i, Elem<TI>::load1(in + i));
    }
}

// y[r, c] += bias[c]; y: [rows, cols] as n = rows * cols elements; bias: [cols] f32.
template <typename T>
__device__ __forceinline__ void bias_add(T* __restrict__ y, const float* __restrict__ bias, const LfBiasParams p) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        Elem<T>::store1(y + i, Elem<T>::load1(y + i) + bias[i % p.cols]);
    }
}

}  // namespace

// =============================================================================================
// Exported kernels. Launch shapes (src/backend/cuda/launch.rs):
//   rms_norm, rope, embedding: grid (rows or n_ids, 1, 1);
//   silu_mul, add:             grid-stride, grid (<= a few waves, 1, 1);
//   block (multiple of 32, <= LF_OPS_ROW_THREADS_MAX for rms_norm, <= LF_OPS_THREADS otherwise).

extern "C" __global__ void __launch_bounds__(LF_OPS_ROW_THREADS_MAX)
    lf_rms_norm_f32(const float* __restrict__ x,  // [rows, cols]
                    const float* __restrict__ w,  // [cols]
                    float* __restrict__ out,      // [rows, cols]
                    const LfRmsNormParams p) {
    rms_norm(x, w, out, p);
}

extern "C" __global__ void __launch_bounds__(LF_OPS_ROW_THREADS_MAX)
    lf_rms_norm_bf16(const __nv_bfloat16* __restrict__ x,  // [rows, cols]
                     const __nv_bfloat16* __restrict__ w,  // [cols]
                     __nv_bfloat16* __restrict__ out,      // [rows, cols]
                     const LfRmsNormParams p) {
    rms_norm(x, w, out, p);
}

extern "C" __global__ void __launch_bounds__(LF_OPS_THREADS)
    lf_rope_f32(float* __restrict__ q,                  // [rows, n_q_heads * head_dim], in place
                float* __restrict__ k,                  // [rows, n_k_heads * head_dim], in place
                const uint32_t* __restrict__ positions, // [rows], each < max_pos
                const float* __restrict__ cos_t,        // [max_pos, head_dim / 2]
                const float* __restrict__ sin_t,        // [max_pos, head_dim / 2]
                const LfRopeParams p) {
    rope(q, k, positions, cos_t, sin_t, p);
}

extern "C" __global__ void __launch_bounds__(LF_OPS_THREADS)
    lf_rope_bf16(__nv_bfloat16* __restrict__ q,           // [rows, n_q_heads * head_dim], in place
                 __nv_bfloat16* __restrict__ k,           // [rows, n_k_heads * head_dim], in place
                 const uint32_t* __restrict__ positions,  // [rows], each < max_pos
                 const float* __restrict__ cos_t,         // [max_pos, head_dim / 2], f32
                 const float* __restrict__ sin_t,         // [max_pos, head_dim / 2], f32
                 const LfRopeParams p) {
    rope(q, k, positions, cos_t, sin_t, p);
}

extern "C" __global__ void __launch_bounds__(LF_OPS_THREADS)
    lf_silu_mul_f32(const float* __restrict__ gate,  // [n]
                    const float* __restrict__ up,    // [n]
                    float* __restrict__ out,         // [n]
                    const LfElementwiseParams p) {
    silu_mul(gate, up, out, p);
}

extern "C" __global__ void __launch_bounds__(LF_OPS_THREADS)
    lf_silu_mul_bf16(const __nv_bfloat16* __restrict__ gate,  // [n]
                     const __nv_bfloat16* __restrict__ up,    // [n]
                     __nv_bfloat16* __restrict__ out,         // [n]
                     const LfElementwiseParams p) {
    silu_mul(gate, up, out, p);
}

extern "C" __global__ void __launch_bounds__(LF_OPS_THREADS)
    lf_add_f32(float* __restrict__ x,        // [n], x += y
               const float* __restrict__ y,  // [n]
               const LfElementwiseParams p) {
    add_assign(x, y, p);
}

extern "C" __global__ void __launch_bounds__(LF_OPS_THREADS)
    lf_add_bf16(__nv_bfloat16* __restrict__ x,        // [n], x += y
                const __nv_bfloat16* __restrict__ y,  // [n]
                const LfElementwiseParams p) {
    add_assign(x, y, p);
}

extern "C" __global__ void __launch_bounds__(LF_OPS_THREADS)
    lf_embedding_f32(const float* __restrict__ table,   // [vocab, hidden]
                     const uint32_t* __restrict__ ids,  // [n_ids], each < vocab
                     float* __restrict__ out,           // [n_ids, hidden]
                     const LfEmbeddingParams p) {
    embedding(table, ids, out, p);
}

extern "C" __global__ void __launch_bounds__(LF_OPS_THREADS)
    lf_embedding_bf16(const __nv_bfloat16* __restrict__ table,  // [vocab, hidden]
                      const uint32_t* __restrict__ ids,         // [n_ids], each < vocab
                      __nv_bfloat16* __restrict__ out,          // [n_ids, hidden]
                      const LfEmbeddingParams p) {
    embedding(table, ids, out, p);
}

extern "C" __global__ void __launch_bounds__(LF_OPS_THREADS)
    lf_cast_f32_bf16(const float* __restrict__ in,     // [n]
                     __nv_bfloat16* __restrict__ out,  // [n]
                     const LfElementwiseParams p) {
    cast(in, out, p);
}

extern "C" __global__ void __launch_bounds__(LF_OPS_THREADS)
    lf_cast_bf16_f32(const __nv_bfloat16* __restrict__ in,  // [n]
                     float* __restrict__ out,               // [n]
                     const LfElementwiseParams p) {
    cast(in, out, p);
}

extern "C" __global__ void __launch_bounds__(LF_OPS_THREADS)
    lf_bias_add_f32(float* __restrict__ y,           // [rows, cols], in place
                    const float* __restrict__ bias,  // [cols]
                    const LfBiasParams p) {
    bias_add(y, bias, p);
}

extern "C" __global__ void __launch_bounds__(LF_OPS_THREADS)
    lf_bias_add_bf16(__nv_bfloat16* __restrict__ y,  // [rows, cols], in place
                     const float* __restrict__ bias, // [cols], f32
                     const LfBiasParams p) {
    bias_add(y, bias, p);
}

extern "C" __global__ void __launch_bounds__(LF_OPS_ROW_THREADS_MAX)
    lf_rms_norm_f32_bf16(const float* __restrict__ x,      // [rows, cols] f32 (the residual stream)
                         const float* __restrict__ w,      // [cols] f32
                         __nv_bfloat16* __restrict__ out,  // [rows, cols] bf16
                         const LfRmsNormParams p) {
    rms_norm_to_bf16(x, w, out, p);
}

extern "C" __global__ void __launch_bounds__(LF_OPS_THREADS)
    lf_add_f32_bf16(float* __restrict__ x,                // [n] f32, x += y
                    const __nv_bfloat16* __restrict__ y,  // [n] bf16
                    const LfElementwiseParams p) {
    add_bf16_into_f32(x, y, p);
}
