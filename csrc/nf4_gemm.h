/* C ABI of kernels/nf4_gemm.cu: a linear layer against a bitsandbytes NF4 weight,
 *   y[M, N] = x[M, K] · Wᵀ,   W[N, K] NF4 (N output features, K input features).
 * Shared by the kernels and, through bindgen, by the Rust launch code (src/backend/cuda/nf4.rs).
 * CPU twin: src/backend/cpu/nf4.rs; reference dequantization: `quant::Nf4Tensor::dequantize`.
 *
 * Weight layout (bitsandbytes quantize_4bit, quant_type="nf4"), on the device:
 *   packed: [ceil(N * K / 2)] uint8   W flattened row-major; element e in byte e / 2, the even
 *                                     element in the HIGH nibble, the odd one in the low nibble
 *   absmax: [n_blocks] f32            one scale per block of `blocksize` consecutive elements of
 *                                     the flattened W, n_blocks = ceil(N * K / blocksize); a block
 *                                     spans two rows when K is not a multiple of blocksize. Double
 *                                     quantization (bitsandbytes compress_statistics) is undone
 *                                     once at upload, so the kernels only see f32 scales.
 *   W[n, k] = code[q(n * K + k)] * absmax[(n * K + k) / blocksize]   (f32)
 * Activations: x [M, K], y [M, N], row-major, T = bf16 or f32; f32 accumulation throughout.
 *
 * Kernels (every count validated by the Rust side: positive, within int32; offsets are 64-bit):
 *   lf_nf4_gemv_<T>_m<MT>_fast      decode / skinny GEMM, MT in {1, 2, 4, 8, 16} rows of x per
 *   lf_nf4_gemv_<T>_m<MT>_generic   block (grid.y = ceil(M / MT)); CUDA cores.
 *       Grid (ceil(N / LF_NF4_GEMV_ROWS(MT)), ceil(M / MT)); block: a multiple of 32 threads,
 *       <= LF_NF4_GEMV_THREADS.
 *   lf_nf4_gemm_bf16_fast           prefill GEMM on the tensor cores (mma.sync m16n8k16 bf16,
 *   lf_nf4_gemm_bf16_generic        f32 accumulate), W tiles dequantized into shared memory.
 *       Grid (ceil(N / LF_NF4_GEMM_BN), ceil(M / LF_NF4_GEMM_BM)); block LF_NF4_GEMM_THREADS.
 * The _fast kernels need K % 32 == 0, blocksize a power of two >= 32 (blocksize_log2 >= 5) and
 * 16-byte aligned packed, x (and, for GEMV f32, nothing else); they read W with 16-byte loads.
 * The _generic kernels take any K, any blocksize and any alignment (scalar loads). Both handle
 * any M and N. Signatures:
 *   (const uint8_t* packed, const float* absmax, const T* x, T* y, LfNf4GemmParams p) */
#pragma once
#include <stdint.h>

/* Threads per block of the GEMV kernels (upper bound; __launch_bounds__). */
#define LF_NF4_GEMV_THREADS 256
/* Output features (rows of W) one GEMV block computes for MT rows of x: 4 for MT <= 4, else 2
 * (the block keeps MT * rows f32 accumulators per thread). */
#define LF_NF4_GEMV_ROWS(mt) ((mt) <= 4 ? 4 : 2)
/* GEMM tile: BM rows of x by BN output features by BK input features per step; 8 warps, each
 * 32 x 32 of the BM x BN output tile. */
#define LF_NF4_GEMM_BM 64
#define LF_NF4_GEMM_BN 128
#define LF_NF4_GEMM_BK 64
#define LF_NF4_GEMM_THREADS 256

typedef struct {
    int32_t m;              /* rows of x and y (tokens) */
    int32_t n;              /* output features: rows of W, row length of y */
    int32_t k;              /* input features: row length of x and of W */
    int32_t blocksize;      /* elements of flattened W per absmax scale (bitsandbytes: 64) */
    int32_t blocksize_log2; /* log2(blocksize) when it is a power of two, else -1 */
    int32_t reserved;       /* 0; keeps n_blocks 8-byte aligned on both sides */
    int64_t n_blocks;       /* length of absmax: ceil(n * k / blocksize) */
    float code[16];         /* the 16 NF4 levels (Nf4Tensor::code; bitsandbytes' quant_map) */
} LfNf4GemmParams;
