// The tensor-core GEMM both bf16 GEMMs share (NF4 weights in kernels/nf4_gemm.cu, bf16 weights in
// kernels/linear.cu): y[M, N] = x[M, K] · Wᵀ (+ bias), x and W tiles bf16 in shared memory, f32
// accumulation, y bf16. Tiles of 64 rows of x by 128 output features by 64 input features; 8 warps,
// each a 32 x 32 piece of the output tile as 2 x 4 mma.sync m16n8k16 bf16 -> f32. Fragments come
// from shared memory by ldmatrix; rows are padded to 72 bf16 (144 B) so the 8 rows of an 8x8
// matrix fall in distinct banks. What differs between the two is the tile loader (a struct with
// load(k0): issue the global loads of tile k0 into registers, and store(sa, sb): write it to
// shared memory as bf16 [rows][LDS]), so the next tile's loads overlap the current tile's MMAs
// (register double buffering, one shared stage of 27 KB).
//
// Tails of M, N and K are the loaders' business (zero fill); the epilogue checks M and N.
#pragma once

#include "common.cuh"

namespace lf {
namespace tc {

constexpr int BM = 64;
constexpr int BN = 128;
constexpr int BK = 64;
constexpr int THREADS = 256;
constexpr int LDS = BK + 8;  // shared row stride in bf16: 144 bytes, 16-byte aligned, conflict-free ldmatrix

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16);
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16* smem) {
#ifdef LF_CUDA_EMU
    LF_EMU_LDMATRIX(r, smem);
#else
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
#endif
}

// c += a · b: a 16x16 (row-major fragment), b 16x8 (column-major fragment), c 16x8 f32.
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef LF_CUDA_EMU
    const uint32_t b[2] = {b0, b1};
    const float c_in[4] = {c[0], c[1], c[2], c[3]};
    LF_EMU_MMA_M16N8K16_BF16(c, a, b, c_in);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// One BM x BN tile of y at (blockIdx.y * BM, blockIdx.x * BN), K in steps of BK through `ld`.
// bias: [n] f32, or null. Every thread of the block (THREADS) calls this once.
template <typename Loader>
__device__ __forceinline__ void gemm(Loader& ld, bf16* __restrict__ y, const float* __restrict__ bias, int m, int n,
                                     int64_t k) {
    __shared__ __align__(16) bf16 sa[BM * LDS];
    __shared__ __align__(16) bf16 sb[BN * LDS];

    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int wm = (warp >> 2) * 32;  // warp's rows in the tile: 2 warps down
    const int wn = (warp & 3) * 32;   // warp's columns: 4 warps across
    const int ktiles = (int)((k + BK - 1) / BK);

    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.f;

    ld.load(0);
    __syncthreads();  // whatever the caller staged in shared memory for the loader (NF4's code table)
    ld.store(sa, sb);
    __syncthreads();

    // ldmatrix lane addresses. A (x tile, [m][k]): matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7),
    // (rows 0-7, k 8-15), (rows 8-15, k 8-15) = fragment registers a0..a3. B (W tile, [n][k], i.e.
    // column-major B): (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) = b0, b1
    // of two n8 tiles.
    const int a_row = lane & 15;
    const int a_col = (lane >> 4) * 8;
    const int b_row = (lane & 7) + ((lane >> 4) << 3);
    const int b_col = ((lane >> 3) & 1) * 8;

#pragma unroll 1
    for (int kt = 0; kt < ktiles; ++kt) {
        const bool more = kt + 1 < ktiles;
        if (more) ld.load((int64_t)(kt + 1) * BK);
#pragma unroll
        for (int ks = 0; ks < BK; ks += 16) {
            uint32_t af[2][4];
#pragma unroll
            for (int i = 0; i < 2; ++i) ldmatrix_x4(af[i], sa + (wm + i * 16 + a_row) * LDS + ks + a_col);
            uint32_t bfr[2][4];
#pragma unroll
            for (int jj = 0; jj < 2; ++jj) ldmatrix_x4(bfr[jj], sb + (wn + jj * 16 + b_row) * LDS + ks + b_col);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    mma_bf16_16816(acc[i][j], af[i], bfr[j >> 1][(j & 1) * 2], bfr[j >> 1][(j & 1) * 2 + 1]);
        }
        __syncthreads();
        if (more) {
            ld.store(sa, sb);
            __syncthreads();
        }
    }

    // Accumulator layout: c0, c1 at (row g, cols 2t, 2t + 1), c2, c3 at (row g + 8, same cols),
    // g = lane / 4, t = lane % 4.
    const int g = lane >> 2;
    const int tc = (lane & 3) * 2;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = n0 + wn + j * 8 + tc;
            const float b0 = bias != nullptr && col < n ? bias[col] : 0.f;
            const float b1 = bias != nullptr && col + 1 < n ? bias[col + 1] : 0.f;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = m0 + wm + i * 16 + g + h * 8;
                if (row < m) {
                    bf16* yr = y + (int64_t)row * n;
                    if (col < n) yr[col] = __float2bfloat16_rn(acc[i][j][2 * h] + b0);
                    if (col + 1 < n) yr[col + 1] = __float2bfloat16_rn(acc[i][j][2 * h + 1] + b1);
                }
            }
        }
    }
}

// The x tile (BM rows by BK, bf16 [m, k] row-major) as the loaders need it: the fast form in two
// 16-byte loads per thread (k % 8 == 0, x 16-byte aligned), the generic one element by element.
struct XTileFast {
    uint4 v[2];
    __device__ __forceinline__ void load(const bf16* x, int m, int64_t k, int m0, int64_t k0) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int idx = threadIdx.x + i * THREADS;
            const int r = m0 + (idx >> 3);
            const int64_t kk = k0 + (idx & 7) * 8;
            v[i] = (r < m && kk < k) ? __ldg(reinterpret_cast<const uint4*>(x + (int64_t)r * k + kk)) : make_uint4(0u, 0u, 0u, 0u);
        }
    }
    __device__ __forceinline__ void store(bf16* sa) const {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int idx = threadIdx.x + i * THREADS;
            *reinterpret_cast<uint4*>(sa + (idx >> 3) * LDS + (idx & 7) * 8) = v[i];
        }
    }
};

// Thread t: row t / 4 of the tile, elements (t % 4) * 16 .. + 16, straight to shared memory.
__device__ __forceinline__ void store_x_tile_generic(bf16* sa, const bf16* x, int m, int64_t k, int m0, int64_t k0) {
    const int t = threadIdx.x;
    const int r = m0 + (t >> 2);
    const int64_t kb = k0 + (t & 3) * 16;
    bf16* row = sa + (t >> 2) * LDS + (t & 3) * 16;
#pragma unroll 4
    for (int i = 0; i < 16; ++i) row[i] = (r < m && kb + i < k) ? x[(int64_t)r * k + kb + i] : __float2bfloat16_rn(0.f);
}

}  // namespace tc
}  // namespace lf
