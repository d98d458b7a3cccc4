// Linear layer against a bitsandbytes NF4 weight: y[M, N] = x[M, K] · Wᵀ, W[N, K] stored as packed
// 4-bit codes (two per byte, even element in the high nibble) and one f32 absmax per block of
// `blocksize` elements of the flattened W. C ABI: csrc/nf4_gemm.h. CPU twin: src/backend/cpu/nf4.rs.
//
// Two paths, each with a fast and a generic kernel:
//
// GEMV (decode, M <= 16 rows of x; CUDA cores). Memory bound: every weight byte is read once, with
// 16-byte streaming loads that do not allocate in L1, so L1 keeps x (read through the non-coherent
// cache; x is at most 16 rows, shared by every block). A block computes R = LF_NF4_GEMV_ROWS(MT)
// output features for MT rows of x; its threads split K: thread t takes the 32-element chunks
// t, t + blockDim, ... of all R weight rows, so each x chunk is loaded once per R rows and each
// dequantized weight is used for MT rows of x. Per chunk the absmax is factored out of the dot
// (sum code[q] * x, then one FMA with absmax): one table lookup (16 f32 in shared memory, no bank
// conflicts: 16 entries in 16 banks) and MT FMAs per weight. Partial sums: warp shuffles, then
// shared memory across warps.
//
// GEMM (prefill, M > 16; bf16; tensor cores). Tiles of 64 rows of x by 128 output features by 64
// input features; 8 warps, each a 32 x 32 piece of the output tile as 2 x 4 mma.sync m16n8k16
// bf16 -> f32. W tiles are dequantized (f32 code * absmax, rounded once to bf16) into shared memory
// by the threads that load them; the next tile's global loads are issued into registers before the
// current tile's MMAs (register double buffering, one shared stage of 27 KB). Fragments come from
// shared memory by ldmatrix; rows are padded to 72 bf16 (144 B) so the 8 rows of an 8x8 matrix
// fall in distinct banks.
//
// The _fast kernels need K % 32 == 0, a power-of-two blocksize >= 32 and 16-byte aligned packed
// and x: a 32-element chunk is then 16 bytes of packed, inside one absmax block, and every row of
// x is 16-byte aligned. The _generic kernels read element by element (any K, blocksize, alignment).
// Tails of M, N and K are handled by predication (zero fill) in every kernel.

#include <cuda_bf16.h>
#include <stdint.h>

#include "mma_gemm.cuh"
#include "nf4_gemm.h"

namespace {

using lf::bf16;

constexpr int GEMV_THREADS = LF_NF4_GEMV_THREADS;
constexpr int GEMV_WARPS = GEMV_THREADS / 32;

using lf::from_f;
using lf::load8;
using lf::to_f;

// 16 bytes of the weight stream: read-only (non-coherent path), read once, so no L1 allocation.
__device__ __forceinline__ void ld_stream(const uint8_t* p, uint32_t (&w)[4]) {
#ifdef LF_CUDA_EMU
    ::lf_emu::ptx::ld_global_nc_v4_u32(p, w);
#else
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
        : "l"(p));
#endif
}

// The 8 levels of a little-endian 32-bit word of packed codes (elements 0..7: element 2j is the
// high nibble of byte j, element 2j + 1 its low nibble), looked up in the
// 16-entry shared table. Both nibbles of every byte are first moved to bits 2..5 (byte offsets
// into the table) with two shifts and masks per word; each element's offset is then one byte
// permute, so a weight costs a PRMT and an LDS instead of a shift, a mask and an LDS.
__device__ __forceinline__ void levels8(uint32_t w, const float* s_code, float (&f)[8]) {
    const uint32_t hi = (w >> 2) & 0x3c3c3c3cu;  // even elements (high nibbles), times 4
    const uint32_t lo = (w << 2) & 0x3c3c3c3cu;  // odd elements (low nibbles), times 4
    const char* base = reinterpret_cast<const char*>(s_code);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        // Byte j of hi / lo into byte 0, zeros above (selector nibbles 4: byte 0 of the zero word).
        f[2 * j] = *reinterpret_cast<const float*>(base + __byte_perm(hi, 0u, 0x4440u | j));
        f[2 * j + 1] = *reinterpret_cast<const float*>(base + __byte_perm(lo, 0u, 0x4440u | j));
    }
}

// Code index of flattened element e of W.
__device__ __forceinline__ uint32_t code_at(const uint8_t* __restrict__ packed, int64_t e) {
    const uint32_t b = __ldg(packed + (e >> 1));
    return (e & 1) ? (b & 15u) : (b >> 4);
}

// The 16 levels into shared memory. Constant indices: a dynamic index into the parameter struct
// would make the compiler copy it to the stack. The caller synchronises before use.
__device__ __forceinline__ void load_code(const LfNf4GemmParams& p, float* s_code) {
    if (threadIdx.x == 0) {
#pragma unroll
        for (int i = 0; i < 16; ++i) s_code[i] = p.code[i];
    }
}

// Sum of acc[m][r] over the block, written to y[m0 + m, n0 + r] for the valid m, r. Every thread
// of the block calls this once; blockDim.x is a multiple of 32, at most GEMV_THREADS.
template <typename T, int MT, int R>
__device__ __forceinline__ void gemv_reduce_store(float (&acc)[MT][R], float (&red)[GEMV_WARPS][MT * R], T* y,
                                                  const LfNf4GemmParams& p, int m0, int n0) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float v = acc[m][r];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) red[warp][m * R + r] = v;
        }
    }
    __syncthreads();
    const int t = threadIdx.x;
    if (t < MT * R) {
        const int m = t / R;
        const int r = t % R;
        const int nwarps = blockDim.x >> 5;
        float v = 0.f;
        for (int w = 0; w < nwarps; ++w) v += red[w][t];
        if (m0 + m < p.m && n0 + r < p.n) y[(int64_t)(m0 + m) * p.n + (n0 + r)] = from_f<T>(v);
    }
}

// ---------------------------------------------------------------------------------------------
// GEMV, fast path. Grid (ceil(N / R), ceil(M / MT)). packed, x: 16-byte aligned; K % 32 == 0;
// blocksize a power of two >= 32 (so a 32-element chunk lies in one absmax block).
template <typename T, int MT>
__device__ __forceinline__ void gemv_fast(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                                          const T* __restrict__ x, T* __restrict__ y, const LfNf4GemmParams& p) {
    constexpr int R = LF_NF4_GEMV_ROWS(MT);
    __shared__ float s_code[16];
    __shared__ float s_red[GEMV_WARPS][MT * R];
    load_code(p, s_code);
    __syncthreads();

    const int64_t K = p.k;
    const int n0 = blockIdx.x * R;
    const int m0 = blockIdx.y * MT;
    const int mrows = min(MT, p.m - m0);  // uniform over the block
    const int nrows = min(R, p.n - n0);
    const int chunks = p.k >> 5;
    const int bl2 = p.blocksize_log2;
    const T* xb = x + (int64_t)m0 * K;

    float acc[MT][R];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[m][r] = 0.f;

#pragma unroll 1
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        const int64_t k0 = (int64_t)c << 5;
        // Issue the R weight loads (and their scales) before any use: R * 16 bytes in flight.
        uint32_t w[R][4];
        float s[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (r < nrows) {
                const int64_t e = (int64_t)(n0 + r) * K + k0;
                ld_stream(packed + (e >> 1), w[r]);
                s[r] = __ldg(absmax + (e >> bl2));
            } else {
                w[r][0] = w[r][1] = w[r][2] = w[r][3] = 0u;
                s[r] = 0.f;
            }
        }
        // Small MT: absmax factored out of the chunk's dot (MT * R more accumulators, one FMUL per
        // weight less); large MT: the weights are scaled once, which keeps the registers in check.
        constexpr bool kFactor = MT <= 4;
        float part[kFactor ? MT : 1][R];
        if (kFactor) {
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int r = 0; r < R; ++r) part[kFactor ? m : 0][r] = 0.f;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            // Elements k0 + 8j .. k0 + 8j + 8 of every row: their levels (scaled unless kFactor).
            float wv[R][8];
#pragma unroll
            for (int r = 0; r < R; ++r) {
                levels8(w[r][j], s_code, wv[r]);
                if (!kFactor) {
#pragma unroll
                    for (int i = 0; i < 8; ++i) wv[r][i] *= s[r];
                }
            }
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                if (m < mrows) {
                    float xf[8];
                    load8(xb + (int64_t)m * K + k0 + 8 * j, xf);
#pragma unroll
                    for (int r = 0; r < R; ++r) {
                        float& a = kFactor ? part[kFactor ? m : 0][r] : acc[m][r];
#pragma unroll
                        for (int i = 0; i < 8; ++i) a = fmaf(wv[r][i], xf[i], a);
                    }
                }
            }
        }
        if (kFactor) {
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int r = 0; r < R; ++r) acc[m][r] = fmaf(s[r], part[kFactor ? m : 0][r], acc[m][r]);
        }
    }
    gemv_reduce_store<T, MT, R>(acc, s_red, y, p, m0, n0);
}

// GEMV, generic path: any K, blocksize, alignment. Thread t takes the elements t, t + blockDim, ...
// of each of the block's R weight rows.
template <typename T, int MT>
__device__ __forceinline__ void gemv_generic(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                                             const T* __restrict__ x, T* __restrict__ y, const LfNf4GemmParams& p) {
    constexpr int R = LF_NF4_GEMV_ROWS(MT);
    __shared__ float s_code[16];
    __shared__ float s_red[GEMV_WARPS][MT * R];
    load_code(p, s_code);
    __syncthreads();

    const int64_t K = p.k;
    const int n0 = blockIdx.x * R;
    const int m0 = blockIdx.y * MT;
    const int mrows = min(MT, p.m - m0);
    const int nrows = min(R, p.n - n0);
    const T* xb = x + (int64_t)m0 * K;

    float acc[MT][R];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[m][r] = 0.f;

    // Element e = (n0 + r) * K + k of row r and its absmax block b = e / blocksize, kept as
    // (b, e - b * blocksize) and advanced by blockDim.x without a 64-bit division in the loop.
    const int64_t bs = p.blocksize;
    const int64_t step = blockDim.x;
    const int64_t step_blocks = step / bs;
    const int64_t step_rem = step - step_blocks * bs;
    int64_t blk[R], rem[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int64_t e = (int64_t)(n0 + r) * K + threadIdx.x;
        blk[r] = e / bs;
        rem[r] = e - blk[r] * bs;
    }

#pragma unroll 1
    for (int64_t k = threadIdx.x; k < K; k += step) {
        float wv[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (r < nrows) {
                const int64_t e = (int64_t)(n0 + r) * K + k;
                wv[r] = s_code[code_at(packed, e)] * __ldg(absmax + blk[r]);
            } else {
                wv[r] = 0.f;
            }
            blk[r] += step_blocks;
            rem[r] += step_rem;
            if (rem[r] >= bs) {
                rem[r] -= bs;
                blk[r] += 1;
            }
        }
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            if (m < mrows) {
                const float xv = to_f(xb[(int64_t)m * K + k]);
#pragma unroll
                for (int r = 0; r < R; ++r) acc[m][r] = fmaf(wv[r], xv, acc[m][r]);
            }
        }
    }
    gemv_reduce_store<T, MT, R>(acc, s_red, y, p, m0, n0);
}

// ---------------------------------------------------------------------------------------------
// GEMM on the tensor cores.

// The shared tensor-core GEMM (kernels/mma_gemm.cuh); the NF4 part is the tile loaders below,
// which dequantize W (f32 code * absmax, rounded once to bf16) into shared memory.
using lf::tc::LDS;
using lf::tc::pack_bf16x2;
constexpr int GEMM_THREADS = LF_NF4_GEMM_THREADS;
static_assert(LF_NF4_GEMM_BM == lf::tc::BM && LF_NF4_GEMM_BN == lf::tc::BN && LF_NF4_GEMM_BK == lf::tc::BK &&
                  GEMM_THREADS == lf::tc::THREADS,
              "csrc/nf4_gemm.h describes mma_gemm.cuh's tiling");

// The scalars of LfNf4GemmParams the tile loaders use (copied out, so no pointer to the kernel
// parameter is taken: that would put the parameter struct on the stack).
struct Dims {
    int m, n;
    int64_t k;
    int blocksize, blocksize_log2;
};

// Block of flattened element e (any blocksize).
__device__ __forceinline__ int64_t block_of(int64_t e, const Dims& d) {
    return d.blocksize_log2 >= 0 ? (e >> d.blocksize_log2) : (e / d.blocksize);
}

// Tile loader of the fast path: load() issues the global loads of tile k0 into registers, store()
// dequantizes and writes them to shared memory. W: thread t takes row t / 2 of the tile, elements
// (t % 2) * 32 .. + 32 (one 16-byte load); x: 2 of the 64 x 8 16-byte chunks of the tile.
struct FastLoader {
    const uint8_t* packed;
    const float* absmax;
    const bf16* x;
    const float* code;  // the 16 levels, in shared memory
    Dims d;
    int m0, n0;
    uint32_t w[4];
    float s;
    lf::tc::XTileFast xt;

    __device__ __forceinline__ void load(int64_t k0) {
        const int t = threadIdx.x;
        const int n = n0 + (t >> 1);
        const int64_t k = k0 + (t & 1) * 32;
        if (n < d.n && k < d.k) {
            const int64_t e = (int64_t)n * d.k + k;
            ld_stream(packed + (e >> 1), w);
            s = __ldg(absmax + (e >> d.blocksize_log2));
        } else {
            w[0] = w[1] = w[2] = w[3] = 0u;
            s = 0.f;
        }
        xt.load(x, d.m, d.k, m0, k0);
    }

    __device__ __forceinline__ void store(bf16* sa, bf16* sb) {
        const int t = threadIdx.x;
        bf16* row = sb + (t >> 1) * LDS + (t & 1) * 32;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            float c[8];
            levels8(w[j], code, c);
            uint32_t o[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) o[i] = pack_bf16x2(c[2 * i] * s, c[2 * i + 1] * s);
            *reinterpret_cast<uint4*>(row + 8 * j) = make_uint4(o[0], o[1], o[2], o[3]);
        }
        xt.store(sa);
    }
};

// Tile loader of the generic path: element by element, straight to shared memory in store().
// W: thread t takes row t / 2, elements (t % 2) * 32 .. + 32; x: row t / 4, elements
// (t % 4) * 16 .. + 16.
struct GenericLoader {
    const uint8_t* packed;
    const float* absmax;
    const bf16* x;
    const float* code;  // the 16 levels, in shared memory
    Dims d;
    int m0, n0;
    int64_t k0;

    __device__ __forceinline__ void load(int64_t k) { k0 = k; }

    __device__ __forceinline__ void store(bf16* sa, bf16* sb) {
        const int t = threadIdx.x;
        const int64_t K = d.k;
        {
            const int n = n0 + (t >> 1);
            const int64_t kb = k0 + (t & 1) * 32;
            bf16* row = sb + (t >> 1) * LDS + (t & 1) * 32;
            // The run's first element and its block; later elements advance (b, rem) by one.
            const int64_t e0 = (int64_t)n * K + kb;
            int64_t b = block_of(e0, d);
            int64_t rem = e0 - b * d.blocksize;
#pragma unroll 4
            for (int i = 0; i < 32; ++i) {
                float v = 0.f;
                if (n < d.n && kb + i < K) v = code[code_at(packed, e0 + i)] * __ldg(absmax + b);
                row[i] = __float2bfloat16_rn(v);
                if (++rem == d.blocksize) {
                    rem = 0;
                    ++b;
                }
            }
        }
        lf::tc::store_x_tile_generic(sa, x, d.m, K, m0, k0);
    }
};

// Grid (ceil(N / BN), ceil(M / BM)); block GEMM_THREADS.
template <typename Loader>
__device__ __forceinline__ void gemm(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                                     const bf16* __restrict__ x, bf16* __restrict__ y, const LfNf4GemmParams& p) {
    __shared__ float s_code[16];
    load_code(p, s_code);  // lf::tc::gemm synchronises before the first store()
    Loader ld;
    ld.packed = packed;
    ld.absmax = absmax;
    ld.x = x;
    ld.code = s_code;
    ld.d = Dims{p.m, p.n, (int64_t)p.k, p.blocksize, p.blocksize_log2};
    ld.m0 = blockIdx.y * lf::tc::BM;
    ld.n0 = blockIdx.x * lf::tc::BN;
    lf::tc::gemm(ld, y, nullptr, p.m, p.n, (int64_t)p.k);
}

}  // namespace

// MINB: resident blocks of LF_NF4_GEMV_THREADS per SM the register allocation must allow
// (__launch_bounds__' second argument); it sets the register budget (65536 / (256 * MINB)) so that
// ptxas neither spills to reach a higher occupancy nor uses more registers than the path needs.
#define LF_NF4_GEMV(T, TN, MT, MINB)                                                                             \
    extern "C" __global__ void __launch_bounds__(LF_NF4_GEMV_THREADS, MINB) lf_nf4_gemv_##TN##_m##MT##_fast(    \
        const uint8_t* __restrict__ packed, const float* __restrict__ absmax, const T* __restrict__ x,          \
        T* __restrict__ y, const LfNf4GemmParams p) {                                                          \
        gemv_fast<T, MT>(packed, absmax, x, y, p);                                                             \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(LF_NF4_GEMV_THREADS, MINB) lf_nf4_gemv_##TN##_m##MT##_generic( \
        const uint8_t* __restrict__ packed, const float* __restrict__ absmax, const T* __restrict__ x,          \
        T* __restrict__ y, const LfNf4GemmParams p) {                                                          \
        gemv_generic<T, MT>(packed, absmax, x, y, p);                                                          \
    }

// MINB1: bf16 x at MT = 1 fits 64 registers (4 blocks, 1024 threads per SM, for the memory-bound
// decode); f32 x needs a few more (at 64 it spills), so 3 blocks.
#define LF_NF4_GEMV_ALL(T, TN, MINB1) \
    LF_NF4_GEMV(T, TN, 1, MINB1)  \
    LF_NF4_GEMV(T, TN, 2, 2)   \
    LF_NF4_GEMV(T, TN, 4, 2)   \
    LF_NF4_GEMV(T, TN, 8, 1)   \
    LF_NF4_GEMV(T, TN, 16, 1)

LF_NF4_GEMV_ALL(bf16, bf16, 4)
LF_NF4_GEMV_ALL(float, f32, 3)

extern "C" __global__ void __launch_bounds__(LF_NF4_GEMM_THREADS)
    lf_nf4_gemm_bf16_fast(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                          const bf16* __restrict__ x, bf16* __restrict__ y, const LfNf4GemmParams p) {
    gemm<FastLoader>(packed, absmax, x, y, p);
}

extern "C" __global__ void __launch_bounds__(LF_NF4_GEMM_THREADS)
    lf_nf4_gemm_bf16_generic(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                             const bf16* __restrict__ x, bf16* __restrict__ y, const LfNf4GemmParams p) {
    gemm<GenericLoader>(packed, absmax, x, y, p);
}
