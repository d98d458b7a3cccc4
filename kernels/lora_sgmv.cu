// Batched LoRA over tokens that use different adapters: SGMV (segments of many tokens, prefill)
// and BGMV (one adapter index per token, decode), each as a shrink (x·Aᵀ to rank r, split-K
// partial sums in f32) and an expand (·Bᵀ, scaled, added into y). C ABI and shapes:
// csrc/lora_sgmv.h. CPU twin: src/backend/cpu/lora.rs. Launch code: src/backend/cuda/lora.rs.
//
// Storage T is bf16 (serving) or f32 (exact-parity tests); math is f32, one round-to-nearest-even
// per stored value of y.
//
// Work split (why):
// - Shrink is a skinny GEMM [tokens, d_in] x [d_in, r] with r tiny and d_in large: the work is
//   split over d_in in chunks of LF_LORA_CHUNK_BYTES (split-K), a block per (tile of tokens,
//   chunk). The block stages its tokens' x chunk in shared memory; each warp takes rank rows of A
//   and streams that row's chunk once with 16-byte loads (4 per lane, issued together), applying
//   it to every staged token; lanes reduce with shuffles. Each block writes its partial dot
//   products to `part` (no atomics): the expand sums the chunks in order, so the result is
//   deterministic and SGMV and BGMV agree.
// - Expand: a block per (tile of tokens, 256 outputs); v of the tile is staged in shared memory
//   (the chunk sums), each thread owns one output row o of B (16-byte loads along the rank) and
//   the tile's tokens, and adds scale * dot into y.
// - BGMV is the same code with a tile of one token, found through token_seg (-1: base token,
//   nothing to do), so a decode step of 64 sequences with 32 adapters runs 64 x n_chunks shrink
//   blocks and 64 x d_out/256 expand blocks; tokens sharing an adapter re-read it from L2.
// Vector paths need the row lengths (d_in for A and x, rank for B) to be multiples of 16 bytes and
// the base pointers 16-byte aligned (tested per block: uniform); anything else takes the scalar
// path, so every shape works (no fixed list of hidden sizes or ranks).

#include <cuda_bf16.h>
#include <stdint.h>

#include "common.cuh"
#include "lora_sgmv.h"

namespace {

constexpr int kTile = LF_LORA_TILE_TOKENS;

static_assert(LF_LORA_VEC_BYTES == 16, "lf::Elem moves 16-byte vectors");
using lf::aligned16;
using lf::Elem;
using lf::warp_sum;

// Whether segment s is one the Rust side could have passed (it validates all of these); a block
// given anything else writes nothing rather than reading or writing out of bounds.
template <typename T>
__device__ __forceinline__ bool segment_ok(const LfLoraSegment& s, const LfLoraParams& p) {
    return s.rank >= 1 && s.rank <= p.r_max && p.r_max <= LF_LORA_MAX_RANK && s.start >= 0 && s.len >= 1 &&
           (int64_t)s.start + s.len <= p.t_rows && p.chunk > 0 &&
           p.chunk <= (int)(LF_LORA_CHUNK_BYTES / sizeof(T)) &&
           p.chunk % (int)(32 * LF_LORA_VEC_BYTES / sizeof(T)) == 0 && s.a != 0 && s.b != 0;
}

// ---------------------------------------------------------------------------------------------
// Shrink of tokens tok0 .. tok0 + ntok (ntok <= M) of segment s over chunk c of d_in:
//   part[c, tok0 + m, k] = sum_{i in chunk c} x[tok0 + m, i] * A[k, i]     m < ntok, k < rank
// x: [t_rows, d_in]; A: [rank, d_in]; part: [n_chunks, t_rows, r_max] f32.
// Block: LF_LORA_THREADS threads (a multiple of 32); warp w takes rank rows w, w + 8, ...
template <typename T, int M>
__device__ __forceinline__ void shrink_tile(const T* __restrict__ x, const LfLoraSegment& s, const int64_t tok0,
                                            const int ntok, const int c, float* __restrict__ part,
                                            const LfLoraParams& p) {
    using E = Elem<T>;
    constexpr int N = E::N;
    constexpr int KC = LF_LORA_CHUNK_BYTES / sizeof(T);  // largest chunk: 1024 bf16, 512 f32
    constexpr int VPL = KC / N / 32;                      // vectors per lane per row chunk: <= 4
    static_assert(VPL * 32 * N == KC, "a chunk is whole vectors for every lane");
    __shared__ __align__(16) T xs[M][KC];

    const int64_t d_in = p.d_in;
    // p.chunk: a multiple of 32 vectors, <= KC (segment_ok), chosen by the Rust side.
    const int64_t k0 = (int64_t)c * p.chunk;
    const int kc = (int)min((int64_t)p.chunk, d_in - k0);  // > 0: c < n_chunks
    const T* __restrict__ A = reinterpret_cast<const T*>(s.a);
    // d_in % N == 0 makes every row of x and A (and kc) whole vectors when the bases are aligned.
    const bool vec = d_in % N == 0 && aligned16(x) && aligned16(A);

    // Stage x[tok0 .. tok0 + ntok, k0 .. k0 + kc] (rows >= ntok are never read).
    if (vec) {
        const int per_row = kc / N;
        for (int idx = threadIdx.x; idx < ntok * per_row; idx += blockDim.x) {
            const int m = idx / per_row;
            const int j = idx - m * per_row;
            *reinterpret_cast<uint4*>(&xs[m][j * N]) =
                *reinterpret_cast<const uint4*>(x + (tok0 + m) * d_in + k0 + (int64_t)j * N);
        }
    } else {
        for (int idx = threadIdx.x; idx < ntok * kc; idx += blockDim.x) {
            const int m = idx / kc;
            const int j = idx - m * kc;
            xs[m][j] = x[(tok0 + m) * d_in + k0 + j];
        }
    }
    __syncthreads();

    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int64_t r_max = p.r_max;
    float* __restrict__ out = part + ((int64_t)c * p.t_rows + tok0) * r_max;
    const int n_warps = blockDim.x >> 5;  // LF_LORA_THREADS / 32
    for (int k = warp; k < s.rank; k += n_warps) {
        float acc[M];
#pragma unroll
        for (int m = 0; m < M; ++m) acc[m] = 0.f;
        const T* __restrict__ a = A + (int64_t)k * d_in + k0;
        if (vec) {
            // All of this lane's loads of the row chunk first, so they are in flight together; kept
            // packed (4 registers per 16 bytes) and unpacked on use.
            uint4 araw[VPL];
#pragma unroll
            for (int u = 0; u < VPL; ++u) {
                const int j = lane + u * 32;
                araw[u] = j * N < kc ? __ldg(reinterpret_cast<const uint4*>(a + j * N)) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < VPL; ++u) {
                const int j = lane + u * 32;
                if (j * N < kc) {
                    float av[N];
                    E::unpack(araw[u], av);
#pragma unroll
                    for (int m = 0; m < M; ++m) {
                        if (m < ntok) {
                            float xv[N];
                            E::load(&xs[m][j * N], xv);
#pragma unroll
                            for (int q = 0; q < N; ++q) acc[m] = fmaf(xv[q], av[q], acc[m]);
                        }
                    }
                }
            }
        } else {
#pragma unroll 1
            for (int i = lane; i < kc; i += 32) {
                const float av = E::ldg1(a + i);
#pragma unroll
                for (int m = 0; m < M; ++m) {
                    if (m < ntok) acc[m] = fmaf(E::load1(&xs[m][i]), av, acc[m]);
                }
            }
        }
        // ntok is uniform over the warp, so every lane takes part in each shuffle.
#pragma unroll
        for (int m = 0; m < M; ++m) {
            if (m < ntok) acc[m] = warp_sum(acc[m]);
        }
#pragma unroll
        for (int m = 0; m < M; ++m) {
            if (m < ntok && lane == m) out[m * r_max + k] = acc[m];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Expand of tokens tok0 .. tok0 + ntok (ntok <= M) of segment s, outputs of block o_block:
//   v[m, k] = sum_c part[c, tok0 + m, k]   (chunks in order)
//   y[tok0 + m, o] += scale * sum_k v[m, k] * B[o, k]     o in o_block * blockDim.x + threadIdx.x
// y: [t_rows, d_out]; B: [d_out, rank].
template <typename T, int M>
__device__ __forceinline__ void expand_tile(T* __restrict__ y, const float* __restrict__ part,
                                            const LfLoraSegment& s, const int64_t tok0, const int ntok,
                                            const int o_block, const LfLoraParams& p) {
    using E = Elem<T>;
    constexpr int N = E::N;
    __shared__ __align__(16) float vs[M][LF_LORA_MAX_RANK];

    const int rank = s.rank;
    const int64_t r_max = p.r_max;
    const int64_t slab = (int64_t)p.t_rows * r_max;
    for (int idx = threadIdx.x; idx < ntok * rank; idx += blockDim.x) {
        const int m = idx / rank;
        const int k = idx - m * rank;
        const float* __restrict__ src = part + (tok0 + m) * r_max + k;
        float v = 0.f;
#pragma unroll 1
        for (int c = 0; c < p.n_chunks; ++c) v += src[c * slab];
        vs[m][k] = v;
    }
    __syncthreads();

    const int64_t o = (int64_t)o_block * blockDim.x + threadIdx.x;
    if (o >= p.d_out) return;  // after the only barrier
    const T* __restrict__ B = reinterpret_cast<const T*>(s.b);
    const T* __restrict__ brow = B + o * rank;
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m] = 0.f;
    if (rank % N == 0 && aligned16(B)) {
#pragma unroll 2
        for (int k = 0; k < rank; k += N) {
            float bv[N];
            E::ldg(brow + k, bv);
#pragma unroll
            for (int m = 0; m < M; ++m) {
                if (m < ntok) {
                    // Broadcast reads (every thread the same address), 16 bytes at a time.
#pragma unroll
                    for (int q = 0; q < N; q += 4) {
                        const float4 v4 = *reinterpret_cast<const float4*>(&vs[m][k + q]);
                        acc[m] = fmaf(v4.x, bv[q], acc[m]);
                        acc[m] = fmaf(v4.y, bv[q + 1], acc[m]);
                        acc[m] = fmaf(v4.z, bv[q + 2], acc[m]);
                        acc[m] = fmaf(v4.w, bv[q + 3], acc[m]);
                    }
                }
            }
        }
    } else {
#pragma unroll 1
        for (int k = 0; k < rank; ++k) {
            const float b = E::ldg1(brow + k);
#pragma unroll
            for (int m = 0; m < M; ++m) {
                if (m < ntok) acc[m] = fmaf(vs[m][k], b, acc[m]);
            }
        }
    }
    const int64_t d_out = p.d_out;
#pragma unroll
    for (int m = 0; m < M; ++m) {
        if (m < ntok) {
            T* yp = y + (tok0 + m) * d_out + o;
            E::store1(yp, E::load1(yp) + s.scale * acc[m]);
        }
    }
}

// The segment and token range of SGMV tile blockIdx.x, or false if there is nothing to do.
template <typename T>
__device__ __forceinline__ bool sgmv_tile(const LfLoraSegment* __restrict__ segs,
                                          const LfLoraTile* __restrict__ tiles, const LfLoraParams& p,
                                          LfLoraSegment& s, int64_t& tok0, int& ntok) {
    if ((int)blockIdx.x >= p.n_tiles) return false;
    const LfLoraTile t = tiles[blockIdx.x];
    if (t.segment < 0 || t.segment >= p.n_segments) return false;
    s = segs[t.segment];
    if (!segment_ok<T>(s, p) || t.token0 < s.start || t.token0 >= s.start + s.len) return false;
    tok0 = t.token0;
    ntok = min(kTile, s.start + s.len - t.token0);
    return true;
}

// The segment of BGMV token blockIdx.x, or false for a base-model token (or a bad index).
template <typename T>
__device__ __forceinline__ bool bgmv_token(const LfLoraSegment* __restrict__ segs,
                                           const int32_t* __restrict__ token_seg, const LfLoraParams& p,
                                           LfLoraSegment& s, int64_t& tok) {
    tok = blockIdx.x;
    if (tok >= p.t_rows) return false;
    const int32_t si = token_seg[tok];
    if (si < 0 || si >= p.n_segments) return false;
    s = segs[si];
    return segment_ok<T>(s, p) && tok >= s.start && tok < (int64_t)s.start + s.len;
}

template <typename T>
__device__ __forceinline__ void sgmv_shrink(const T* x, const LfLoraSegment* segs, const LfLoraTile* tiles,
                                            float* part, const LfLoraParams& p) {
    LfLoraSegment s;
    int64_t tok0;
    int ntok;
    if ((int)blockIdx.y >= p.n_chunks || !sgmv_tile<T>(segs, tiles, p, s, tok0, ntok)) return;
    shrink_tile<T, kTile>(x, s, tok0, ntok, blockIdx.y, part, p);
}

template <typename T>
__device__ __forceinline__ void sgmv_expand(T* y, const float* part, const LfLoraSegment* segs,
                                            const LfLoraTile* tiles, const LfLoraParams& p) {
    LfLoraSegment s;
    int64_t tok0;
    int ntok;
    if (!sgmv_tile<T>(segs, tiles, p, s, tok0, ntok)) return;
    expand_tile<T, kTile>(y, part, s, tok0, ntok, blockIdx.y, p);
}

template <typename T>
__device__ __forceinline__ void bgmv_shrink(const T* x, const LfLoraSegment* segs, const int32_t* token_seg,
                                            float* part, const LfLoraParams& p) {
    LfLoraSegment s;
    int64_t tok;
    if ((int)blockIdx.y >= p.n_chunks || !bgmv_token<T>(segs, token_seg, p, s, tok)) return;
    shrink_tile<T, 1>(x, s, tok, 1, blockIdx.y, part, p);
}

template <typename T>
__device__ __forceinline__ void bgmv_expand(T* y, const float* part, const LfLoraSegment* segs,
                                            const int32_t* token_seg, const LfLoraParams& p) {
    LfLoraSegment s;
    int64_t tok;
    if (!bgmv_token<T>(segs, token_seg, p, s, tok)) return;
    expand_tile<T, 1>(y, part, s, tok, 1, blockIdx.y, p);
}

}  // namespace

// =============================================================================================
// Exported kernels. Block: LF_LORA_THREADS threads. Grids: see csrc/lora_sgmv.h.

// SHRINK_MIN_BLOCKS: blocks per SM the SGMV shrink is compiled for. Without a minimum, ptxas
// (CUDA 13.0, sm_90a) squeezed the bf16 kernel into 48 registers and spilled; 3 resident blocks
// (3 x 32 KB of shared memory fits sm_80 and sm_90) compile it without spills. The f32 kernel
// (tests only: twice the registers per staged vector) needs the room of 2.

#define LF_LORA_KERNELS(T, SUFFIX, SHRINK_MIN_BLOCKS)                                                                   \
    extern "C" __global__ void __launch_bounds__(LF_LORA_THREADS, SHRINK_MIN_BLOCKS)                   \
        lf_lora_sgmv_shrink_##SUFFIX(const T* __restrict__ x,                /* [t_rows, d_in] */     \
                                     const LfLoraSegment* __restrict__ segs, /* [n_segments] */       \
                                     const LfLoraTile* __restrict__ tiles,   /* [n_tiles] */          \
                                     float* __restrict__ part, /* [n_chunks, t_rows, r_max] */        \
                                     const LfLoraParams p) {                                          \
        sgmv_shrink<T>(x, segs, tiles, part, p);                                                       \
    }                                                                                                  \
    extern "C" __global__ void __launch_bounds__(LF_LORA_THREADS)                                      \
        lf_lora_sgmv_expand_##SUFFIX(T* __restrict__ y,                      /* [t_rows, d_out] */    \
                                     const float* __restrict__ part, /* [n_chunks, t_rows, r_max] */  \
                                     const LfLoraSegment* __restrict__ segs, /* [n_segments] */       \
                                     const LfLoraTile* __restrict__ tiles,   /* [n_tiles] */          \
                                     const LfLoraParams p) {                                          \
        sgmv_expand<T>(y, part, segs, tiles, p);                                                       \
    }                                                                                                  \
    extern "C" __global__ void __launch_bounds__(LF_LORA_THREADS)                                      \
        lf_lora_bgmv_shrink_##SUFFIX(const T* __restrict__ x,                /* [t_rows, d_in] */     \
                                     const LfLoraSegment* __restrict__ segs, /* [n_segments] */       \
                                     const int32_t* __restrict__ token_seg,  /* [t_rows], -1: none */ \
                                     float* __restrict__ part, /* [n_chunks, t_rows, r_max] */        \
                                     const LfLoraParams p) {                                          \
        bgmv_shrink<T>(x, segs, token_seg, part, p);                                                   \
    }                                                                                                  \
    extern "C" __global__ void __launch_bounds__(LF_LORA_THREADS)                                      \
        lf_lora_bgmv_expand_##SUFFIX(T* __restrict__ y,                      /* [t_rows, d_out] */    \
                                     const float* __restrict__ part, /* [n_chunks, t_rows, r_max] */  \
                                     const LfLoraSegment* __restrict__ segs, /* [n_segments] */       \
                                     const int32_t* __restrict__ token_seg,  /* [t_rows], -1: none */ \
                                     const LfLoraParams p) {                                          \
        bgmv_expand<T>(y, part, segs, token_seg, p);                                                   \
    }

LF_LORA_KERNELS(__nv_bfloat16, bf16, 3)
LF_LORA_KERNELS(float, f32, 2)
