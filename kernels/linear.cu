// Dense linear layers: y[m, n] = x[m, k] · W[n, k]ᵀ (+ bias[n]) for f32 or bf16 weights (the f32
// lm_head and embeddings of every base, the decoder weights of f32 and bf16 bases) and f32 or
// bf16 activations. C ABI and paths: csrc/linear.h. CPU twins: backend::cpu::matmul::linear (f32
// weights) and backend::cpu::bf16::linear (bf16 weights); f32 accumulation, one rounding per
// output to the activation type.
//
// GEMV (decode, m <= 8): memory bound on W (every weight read once per launch, for up to MT rows
// of x), so a warp owns one output feature and streams its weight row with 16-byte loads while x
// (at most 8 rows, shared by every block) stays in L1/L2. The warp's partial dots are reduced by
// shuffles; no shared memory, no barrier.
//
// GEMM (prefill), bf16 activations and bf16 weights: on the tensor cores, through the GEMM NF4's
// prefill uses (kernels/mma_gemm.cuh: 64 x 128 tiles, mma.sync m16n8k16 bf16 -> f32); only the
// tile loader is this file's (16-byte loads of W and x when k % 8 == 0 and both are 16-byte
// aligned, else element by element). The inputs are exactly the bf16 values the CPU twin widens,
// so only the summation order differs.
//
// GEMM (prefill), any other pair (f32 activations or f32 weights): 64 x 64 output tiles, k in steps
// of 16 through shared memory (stored k-major so a thread's 4 rows and 4 columns are contiguous),
// 4 x 4 outputs per thread, CUDA-core f32 FMAs, so f32 activations keep f32 accuracy whatever the
// weight type (rounding them to bf16 for the tensor cores would cost ~3e-3 relative).

#include <cuda_bf16.h>
#include <stdint.h>

#include "common.cuh"
#include "linear.h"
#include "mma_gemm.cuh"

namespace {

using lf::bf16;
using lf::from_f;
using lf::to_f;

constexpr int BM = LF_LINEAR_BM;
constexpr int BN = LF_LINEAR_BN;
constexpr int BK = LF_LINEAR_BK;
constexpr int NT = LF_LINEAR_THREADS;
static_assert(BM * BK == 4 * NT && BN * BK == 4 * NT && BM == 64 && BN == 64, "the tile loaders assume this tiling");

// One output feature per warp: rows m0 .. m0 + MT of y at column n.
// x: [m, k]; w: [n, k]; bias: [n] f32 or unused; y: [m, n].
template <typename TX, typename TW, int MT, bool FAST>
__device__ __forceinline__ void gemv(const TX* __restrict__ x, const TW* __restrict__ w, const float* __restrict__ bias,
                                     TX* __restrict__ y, const LfLinearParams& p) {
    const int lane = threadIdx.x & 31;
    const int n = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int m0 = blockIdx.y * MT;
    if (n >= p.n) return;  // the whole warp: nothing below synchronises more than the warp
    const int mrows = min(MT, p.m - m0);
    const int64_t K = p.k;
    const TW* wr = w + (int64_t)n * K;
    const TX* xb = x + (int64_t)m0 * K;
    float acc[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[m] = 0.f;
    if (FAST) {
        const int64_t chunks = K >> 3;
#pragma unroll 1
        for (int64_t c = lane; c < chunks; c += 32) {
            float wv[8];
            lf::load8(wr + c * 8, wv);
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                if (m < mrows) {
                    float xv[8];
                    lf::load8(xb + m * K + c * 8, xv);
#pragma unroll
                    for (int i = 0; i < 8; ++i) acc[m] = fmaf(wv[i], xv[i], acc[m]);
                }
            }
        }
    } else {
#pragma unroll 1
        for (int64_t kk = lane; kk < K; kk += 32) {
            const float wv = to_f(__ldg(wr + kk));
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                if (m < mrows) acc[m] = fmaf(wv, to_f(__ldg(xb + m * K + kk)), acc[m]);
            }
        }
    }
    const float b = p.has_bias ? bias[n] : 0.f;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        const float v = lf::warp_sum(acc[m]);
        if (lane == 0 && m < mrows) y[(int64_t)(m0 + m) * p.n + n] = from_f<TX>(v + b);
    }
}

// A 64 x 64 tile of y at (blockIdx.y * BM, blockIdx.x * BN); any m, n, k (tails zero-filled).
template <typename TX, typename TW>
__device__ __forceinline__ void gemm(const TX* __restrict__ x, const TW* __restrict__ w, const float* __restrict__ bias,
                                     TX* __restrict__ y, const LfLinearParams& p) {
    __shared__ float xs[BK][BM + 4];  // xs[kk][row]
    __shared__ float ws[BK][BN + 4];  // ws[kk][feature]
    const int t = threadIdx.x;
    const int ty = t / 16, tx = t % 16;  // rows ty*4 .. +4, features tx*4 .. +4
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int64_t K = p.k;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

#pragma unroll 1
    for (int64_t k0 = 0; k0 < K; k0 += BK) {
        // Each thread loads 4 elements of each tile; consecutive threads read consecutive k.
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int idx = t + i * NT;
            const int r = idx / BK, c = idx % BK;
            const int64_t kk = k0 + c;
            xs[c][r] = (m0 + r < p.m && kk < K) ? to_f(x[(int64_t)(m0 + r) * K + kk]) : 0.f;
            ws[c][r] = (n0 + r < p.n && kk < K) ? to_f(__ldg(w + (int64_t)(n0 + r) * K + kk)) : 0.f;
        }
        __syncthreads();
        // Two-level sum: the tile's 16 products into `part`, then `part` into `acc`, so the
        // rounding error grows with 16 + K / 16 additions instead of K (f32 activations are the
        // trainer's: its gradients are held to PyTorch's within 1e-4).
        float part[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) part[i][j] = 0.f;
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = xs[kk][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = ws[kk][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) part[i][j] = fmaf(a[i], b[j], part[i][j]);
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
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = n0 + tx * 4 + j;
            if (col < p.n) y[(int64_t)row * p.n + col] = from_f<TX>(acc[i][j] + (p.has_bias ? bias[col] : 0.f));
        }
    }
}

// Tensor-core tile loaders (bf16 x, bf16 W). Fast: W thread t takes 4 of the tile's 128 x 8
// 16-byte chunks (k % 8 == 0, W 16-byte aligned), x as lf::tc::XTileFast.
static_assert(LF_LINEAR_TC_BM == lf::tc::BM && LF_LINEAR_TC_BN == lf::tc::BN && LF_LINEAR_TC_BK == lf::tc::BK &&
                  LF_LINEAR_TC_THREADS == lf::tc::THREADS,
              "csrc/linear.h describes mma_gemm.cuh's tiling");

struct TcFastLoader {
    const bf16* x;
    const bf16* w;
    int m, n;
    int64_t k;
    int m0, n0;
    uint4 wv[4];
    lf::tc::XTileFast xt;

    __device__ __forceinline__ void load(int64_t k0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int idx = threadIdx.x + i * lf::tc::THREADS;
            const int r = n0 + (idx >> 3);
            const int64_t kk = k0 + (idx & 7) * 8;
            wv[i] = (r < n && kk < k) ? __ldg(reinterpret_cast<const uint4*>(w + (int64_t)r * k + kk)) : make_uint4(0u, 0u, 0u, 0u);
        }
        xt.load(x, m, k, m0, k0);
    }

    __device__ __forceinline__ void store(bf16* sa, bf16* sb) const {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int idx = threadIdx.x + i * lf::tc::THREADS;
            *reinterpret_cast<uint4*>(sb + (idx >> 3) * lf::tc::LDS + (idx & 7) * 8) = wv[i];
        }
        xt.store(sa);
    }
};

// Generic: element by element, straight to shared memory in store(). W: thread t takes row t / 2,
// elements (t % 2) * 32 .. + 32.
struct TcGenericLoader {
    const bf16* x;
    const bf16* w;
    int m, n;
    int64_t k;
    int m0, n0;
    int64_t k0;

    __device__ __forceinline__ void load(int64_t kk) { k0 = kk; }

    __device__ __forceinline__ void store(bf16* sa, bf16* sb) const {
        const int t = threadIdx.x;
        const int r = n0 + (t >> 1);
        const int64_t kb = k0 + (t & 1) * 32;
        bf16* row = sb + (t >> 1) * lf::tc::LDS + (t & 1) * 32;
#pragma unroll 4
        for (int i = 0; i < 32; ++i) row[i] = (r < n && kb + i < k) ? w[(int64_t)r * k + kb + i] : __float2bfloat16_rn(0.f);
        lf::tc::store_x_tile_generic(sa, x, m, k, m0, k0);
    }
};

template <typename Loader>
__device__ __forceinline__ void gemm_tc(const bf16* __restrict__ x, const bf16* __restrict__ w, const float* __restrict__ bias,
                                        bf16* __restrict__ y, const LfLinearParams& p) {
    Loader ld;
    ld.x = x;
    ld.w = w;
    ld.m = p.m;
    ld.n = p.n;
    ld.k = p.k;
    ld.m0 = blockIdx.y * lf::tc::BM;
    ld.n0 = blockIdx.x * lf::tc::BN;
    lf::tc::gemm(ld, y, p.has_bias ? bias : nullptr, p.m, p.n, (int64_t)p.k);
}

}  // namespace

#define LF_LINEAR_GEMV(TX, XN, TW, WN, MT)                                                                         \
    extern "C" __global__ void __launch_bounds__(NT) lf_linear_gemv_##XN##_##WN##_m##MT##_fast(                    \
        const TX* __restrict__ x, const TW* __restrict__ w, const float* __restrict__ bias, TX* __restrict__ y, \
        const LfLinearParams p) {                                                                                  \
        gemv<TX, TW, MT, true>(x, w, bias, y, p);                                                                   \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(NT) lf_linear_gemv_##XN##_##WN##_m##MT##_generic(                 \
        const TX* __restrict__ x, const TW* __restrict__ w, const float* __restrict__ bias, TX* __restrict__ y, \
        const LfLinearParams p) {                                                                                  \
        gemv<TX, TW, MT, false>(x, w, bias, y, p);                                                                  \
    }

#define LF_LINEAR_ALL(TX, XN, TW, WN)                                                                              \
    LF_LINEAR_GEMV(TX, XN, TW, WN, 1)                                                                              \
    LF_LINEAR_GEMV(TX, XN, TW, WN, 2)                                                                              \
    LF_LINEAR_GEMV(TX, XN, TW, WN, 4)                                                                              \
    LF_LINEAR_GEMV(TX, XN, TW, WN, 8)                                                                              \
    extern "C" __global__ void __launch_bounds__(NT)                                                               \
        lf_linear_gemm_##XN##_##WN(const TX* __restrict__ x, const TW* __restrict__ w, const float* __restrict__ bias, \
                                   TX* __restrict__ y, const LfLinearParams p) {                                   \
        gemm<TX, TW>(x, w, bias, y, p);                                                                             \
    }

LF_LINEAR_ALL(float, f32, float, f32)
LF_LINEAR_ALL(float, f32, bf16, bf16)
LF_LINEAR_ALL(bf16, bf16, float, f32)
LF_LINEAR_ALL(bf16, bf16, bf16, bf16)

extern "C" __global__ void __launch_bounds__(LF_LINEAR_TC_THREADS)
    lf_linear_gemm_tc_bf16_bf16_fast(const bf16* __restrict__ x, const bf16* __restrict__ w, const float* __restrict__ bias,
                                     bf16* __restrict__ y, const LfLinearParams p) {
    gemm_tc<TcFastLoader>(x, w, bias, y, p);
}

extern "C" __global__ void __launch_bounds__(LF_LINEAR_TC_THREADS)
    lf_linear_gemm_tc_bf16_bf16_generic(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                        const float* __restrict__ bias, bf16* __restrict__ y, const LfLinearParams p) {
    gemm_tc<TcGenericLoader>(x, w, bias, y, p);
}
