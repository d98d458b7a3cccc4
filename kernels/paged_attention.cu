// Paged KV cache write and paged attention over a ragged batch. C ABI: csrc/paged_attention.h.
// CPU twin: src/backend/cpu/attention.rs (write_kv, paged_attention).
//
// Attention is computed per query row (token): decode rows (one per sequence) and prefill rows
// (many per sequence, each with its own causal horizon) go through the same kernel. A block serves
// the query heads that share one kv head (up to LF_ATTN_MAX_HEADS_PER_BLOCK), so K and V are read
// once for the whole GQA group, over one partition of LF_ATTN_PARTITION keys (flash-decoding: long
// contexts spread over more blocks; lf_paged_attn_reduce_* combines the partitions).
//
// Per block: (1) q of its heads into shared memory (f32); (2) scores: groups of 4 lanes take one
// key each, each lane 16-byte chunks of the head (hd-specialised kernels) or single elements
// (generic kernel), partial dots reduced by shuffles; (3) softmax in f32 (max, exp, sum) per head
// in shared memory; (4) P·V: threads own 16-byte column chunks of the head, the keys split over
// "token lanes", partials reduced through shared memory.

#include <cuda_bf16.h>
#include <stdint.h>

#include "paged_attention.h"

namespace {

constexpr int NT = LF_ATTN_THREADS;
constexpr int NWARPS = NT / 32;
constexpr int G = 4;  // lanes per key in the score phase
constexpr int HPB = LF_ATTN_MAX_HEADS_PER_BLOCK;
constexpr int PART = LF_ATTN_PARTITION;
// Partial P·V sums: token lanes * heads * head_dim <= NT * (elements per chunk) * HPB.
constexpr int RED_FLOATS = NT * 8 * HPB > HPB * LF_ATTN_MAX_HEAD_DIM ? NT * 8 * HPB : HPB * LF_ATTN_MAX_HEAD_DIM;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & (LF_ATTN_VEC_BYTES - 1)) == 0;
}

// E consecutive elements at p (16-byte aligned when E > 1) as f32.
template <typename T, int E>
struct Load;

template <typename T>
struct Load<T, 1> {
    static __device__ __forceinline__ void run(const T* p, float (&f)[1]) { f[0] = to_f(*p); }
};

template <>
struct Load<float, 4> {
    static __device__ __forceinline__ void run(const float* p, float (&f)[4]) {
        const float4 u = *reinterpret_cast<const float4*>(p);
        f[0] = u.x;
        f[1] = u.y;
        f[2] = u.z;
        f[3] = u.w;
    }
};

template <>
struct Load<__nv_bfloat16, 8> {
    // bf16 -> f32 is exact: the 16 bits are the top half of the f32; the lower-addressed element
    // of each 32-bit word is its low half (little endian).
    static __device__ __forceinline__ void run(const __nv_bfloat16* p, float (&f)[8]) {
        const uint4 u = *reinterpret_cast<const uint4*>(p);
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
};

// Cache row of key position kp of sequence seq.
__device__ __forceinline__ int64_t cache_row(const int32_t* __restrict__ block_table, const LfPagedAttnParams& p,
                                             int seq, int kp) {
    const int32_t blk = block_table[(int64_t)seq * p.max_blocks + kp / p.block_size];
    return (int64_t)blk * p.block_size + kp % p.block_size;
}

// HD: head_dim at compile time, or 0 for the runtime p.head_dim (generic). E: elements per load.
template <typename T, int HD, int E>
__device__ void paged_attn(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                           const int32_t* __restrict__ row_seq, const int32_t* __restrict__ row_pos,
                           const int32_t* __restrict__ block_table, T* __restrict__ out, float* __restrict__ part_max,
                           float* __restrict__ part_sum, float* __restrict__ part_out, const LfPagedAttnParams p) {
    __shared__ float s_q[HPB * LF_ATTN_MAX_HEAD_DIM];
    __shared__ float s_scores[HPB * PART];
    __shared__ float s_red[RED_FLOATS];
    __shared__ float s_max[HPB];
    __shared__ float s_sum[HPB];

    const int hd = HD > 0 ? HD : p.head_dim;
    const int row = blockIdx.x;
    const int part = blockIdx.z;
    const int seq = row_seq[row];
    const int n_keys = row_pos[row] + 1;
    const int k0 = part * p.partition_size;
    if (k0 >= n_keys) return;  // past this row's context (the reduce reads only live partitions)
    const int n_part = min(p.partition_size, n_keys - k0);

    const int group = p.n_heads / p.n_kv_heads;
    const int hpb = p.heads_per_block;
    const int subs = group / hpb;
    const int kvh = blockIdx.y / subs;
    const int head0 = kvh * group + (blockIdx.y % subs) * hpb;
    const int64_t q_dim = (int64_t)p.n_heads * hd;
    const int64_t kv_dim = (int64_t)p.n_kv_heads * hd;
    const int tid = threadIdx.x;
    const int warp = tid / 32;
    const int lane = tid % 32;

    // (1) q of this block's heads, f32.
    const T* qrow = q + (int64_t)row * q_dim + (int64_t)head0 * hd;
    for (int i = tid; i < hpb * hd; i += NT) s_q[i] = to_f(qrow[i]);
    __syncthreads();

    // (2) scores. 32 / G keys per warp step; the loop bound is warp-uniform so every lane joins
    // the shuffles.
    const int units = hd / E;
    const int lg = lane % G;
    for (int base = warp * (32 / G); base < n_part; base += NWARPS * (32 / G)) {
        const int t = base + lane / G;
        const bool valid = t < n_part;
        float acc[HPB];
#pragma unroll
        for (int h = 0; h < HPB; ++h) acc[h] = 0.f;
        if (valid) {
            const T* kp = k_cache + cache_row(block_table, p, seq, k0 + t) * kv_dim + (int64_t)kvh * hd;
#pragma unroll
            for (int c = lg; c < units; c += G) {
                float kf[E];
                Load<T, E>::run(kp + c * E, kf);
#pragma unroll
                for (int h = 0; h < HPB; ++h) {
                    if (h < hpb) {
                        const float* qh = s_q + h * hd + c * E;
#pragma unroll
                        for (int e = 0; e < E; ++e) acc[h] = fmaf(qh[e], kf[e], acc[h]);
                    }
                }
            }
        }
#pragma unroll
        for (int h = 0; h < HPB; ++h) {
#pragma unroll
            for (int m = 1; m < G; m *= 2) acc[h] += __shfl_xor_sync(0xffffffffu, acc[h], m);
        }
        if (valid && lg == 0) {
#pragma unroll
            for (int h = 0; h < HPB; ++h)
                if (h < hpb) s_scores[h * PART + t] = acc[h] * p.scale;
        }
    }
    __syncthreads();

    // (3) softmax per head: warp h takes head h.
    for (int h = warp; h < hpb; h += NWARPS) {
        float* s = s_scores + h * PART;
        float m = -INFINITY;
        for (int t = lane; t < n_part; t += 32) m = fmaxf(m, s[t]);
#pragma unroll
        for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        float sum = 0.f;
        for (int t = lane; t < n_part; t += 32) {
            const float e = expf(s[t] - m);
            s[t] = e;
            sum += e;
        }
#pragma unroll
        for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (lane == 0) {
            s_max[h] = m;
            s_sum[h] = sum;
        }
    }
    __syncthreads();

    // (4) P·V: work item = (token lane, column chunk).
    const int tl_n = NT >= units ? NT / units : 1;
    for (int w = tid; w < units * tl_n; w += NT) {
        const int col = w % units;
        const int tl = w / units;
        float acc[HPB][E];
#pragma unroll
        for (int h = 0; h < HPB; ++h)
#pragma unroll
            for (int e = 0; e < E; ++e) acc[h][e] = 0.f;
        for (int t = tl; t < n_part; t += tl_n) {
            const T* vp = v_cache + cache_row(block_table, p, seq, k0 + t) * kv_dim + (int64_t)kvh * hd + col * E;
            float vf[E];
            Load<T, E>::run(vp, vf);
#pragma unroll
            for (int h = 0; h < HPB; ++h) {
                if (h < hpb) {
                    const float pw = s_scores[h * PART + t];
#pragma unroll
                    for (int e = 0; e < E; ++e) acc[h][e] = fmaf(pw, vf[e], acc[h][e]);
                }
            }
        }
#pragma unroll
        for (int h = 0; h < HPB; ++h)
            if (h < hpb)
#pragma unroll
                for (int e = 0; e < E; ++e) s_red[(tl * hpb + h) * hd + col * E + e] = acc[h][e];
    }
    __syncthreads();

    for (int i = tid; i < hpb * hd; i += NT) {
        const int h = i / hd;
        const int d = i % hd;
        float o = 0.f;
        for (int tl = 0; tl < tl_n; ++tl) o += s_red[(tl * hpb + h) * hd + d];
        const int head = head0 + h;
        if (p.max_partitions == 1) {
            out[(int64_t)row * q_dim + (int64_t)head * hd + d] = from_f<T>(o / s_sum[h]);
        } else {
            const int64_t pi = ((int64_t)row * p.n_heads + head) * p.max_partitions + part;
            part_out[pi * hd + d] = o;
            if (d == 0) {
                part_max[pi] = s_max[h];
                part_sum[pi] = s_sum[h];
            }
        }
    }
}

// Combines the live partitions of one (row, head): out = sum_p e^(m_p - M) o_p / sum_p e^(m_p - M) l_p.
template <typename T>
__device__ void paged_attn_reduce(const int32_t* __restrict__ row_pos, const float* __restrict__ part_max,
                                  const float* __restrict__ part_sum, const float* __restrict__ part_out,
                                  T* __restrict__ out, const LfPagedAttnParams p) {
    const int row = blockIdx.x;
    const int head = blockIdx.y;
    const int hd = p.head_dim;
    const int n_parts = (row_pos[row] + 1 + p.partition_size - 1) / p.partition_size;
    const int64_t base = ((int64_t)row * p.n_heads + head) * p.max_partitions;
    float m = -INFINITY;
    for (int i = 0; i < n_parts; ++i) m = fmaxf(m, part_max[base + i]);
    float total = 0.f;
    for (int i = 0; i < n_parts; ++i) total += expf(part_max[base + i] - m) * part_sum[base + i];
    const float inv = 1.f / total;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.f;
        for (int i = 0; i < n_parts; ++i) o += expf(part_max[base + i] - m) * part_out[(base + i) * hd + d];
        out[((int64_t)row * p.n_heads + head) * hd + d] = from_f<T>(o * inv);
    }
}

template <typename T>
__device__ void reshape_and_cache(const T* __restrict__ k, const T* __restrict__ v, const uint32_t* __restrict__ slots,
                                  T* __restrict__ k_cache, T* __restrict__ v_cache, const LfReshapeCacheParams p) {
    const int i = blockIdx.x;
    const int64_t slot = slots[i];
    const int64_t n = p.kv_dim;
    if (slot >= p.cache_rows) return;  // never passed by the Rust side
    const T* ks = k + i * n;
    const T* vs = v + i * n;
    T* kd = k_cache + slot * n;
    T* vd = v_cache + slot * n;
    constexpr int VE = LF_ATTN_VEC_BYTES / sizeof(T);
    if (n % VE == 0 && aligned16(ks) && aligned16(vs) && aligned16(kd) && aligned16(vd)) {
        for (int64_t j = threadIdx.x; j < n / VE; j += blockDim.x) {
            reinterpret_cast<uint4*>(kd)[j] = reinterpret_cast<const uint4*>(ks)[j];
            reinterpret_cast<uint4*>(vd)[j] = reinterpret_cast<const uint4*>(vs)[j];
        }
    } else {
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
            kd[j] = ks[j];
            vd[j] = vs[j];
        }
    }
}

}  // namespace

#define LF_ATTN_ARGS(T)                                                                                          \
    const T *__restrict__ q, const T *__restrict__ k_cache, const T *__restrict__ v_cache,                       \
        const int32_t *__restrict__ row_seq, const int32_t *__restrict__ row_pos,                               \
        const int32_t *__restrict__ block_table, T *__restrict__ out, float *__restrict__ part_max,             \
        float *__restrict__ part_sum, float *__restrict__ part_out, const LfPagedAttnParams p
#define LF_ATTN_CALL q, k_cache, v_cache, row_seq, row_pos, block_table, out, part_max, part_sum, part_out, p

#define LF_ATTN_KERNEL(NAME, T, HD, E)                                                           \
    extern "C" __global__ void __launch_bounds__(NT) NAME(LF_ATTN_ARGS(T)) {                    \
        paged_attn<T, HD, E>(LF_ATTN_CALL);                                                       \
    }

LF_ATTN_KERNEL(lf_paged_attn_f32_hd64, float, 64, 4)
LF_ATTN_KERNEL(lf_paged_attn_f32_hd96, float, 96, 4)
LF_ATTN_KERNEL(lf_paged_attn_f32_hd128, float, 128, 4)
LF_ATTN_KERNEL(lf_paged_attn_f32_generic, float, 0, 1)
LF_ATTN_KERNEL(lf_paged_attn_bf16_hd64, __nv_bfloat16, 64, 8)
LF_ATTN_KERNEL(lf_paged_attn_bf16_hd96, __nv_bfloat16, 96, 8)
LF_ATTN_KERNEL(lf_paged_attn_bf16_hd128, __nv_bfloat16, 128, 8)
LF_ATTN_KERNEL(lf_paged_attn_bf16_generic, __nv_bfloat16, 0, 1)

#define LF_ATTN_REDUCE_KERNEL(NAME, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(NT)                                                          \
        NAME(const int32_t* __restrict__ row_pos, const float* __restrict__ part_max,                          \
             const float* __restrict__ part_sum, const float* __restrict__ part_out, T* __restrict__ out,     \
             const LfPagedAttnParams p) {                                                                      \
        paged_attn_reduce<T>(row_pos, part_max, part_sum, part_out, out, p);                                   \
    }

LF_ATTN_REDUCE_KERNEL(lf_paged_attn_reduce_f32, float)
LF_ATTN_REDUCE_KERNEL(lf_paged_attn_reduce_bf16, __nv_bfloat16)

#define LF_RESHAPE_KERNEL(NAME, T)                                                                              \
    extern "C" __global__ void __launch_bounds__(NT)                                                          \
        NAME(const T* __restrict__ k, const T* __restrict__ v, const uint32_t* __restrict__ slots,             \
             T* __restrict__ k_cache, T* __restrict__ v_cache, const LfReshapeCacheParams p) {                 \
        reshape_and_cache<T>(k, v, slots, k_cache, v_cache, p);                                                 \
    }

LF_RESHAPE_KERNEL(lf_reshape_and_cache_f32, float)
LF_RESHAPE_KERNEL(lf_reshape_and_cache_bf16, __nv_bfloat16)
