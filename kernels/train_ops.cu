// The small ops the trainer's backward needs beside the fused training kernels
// (lora_backward.cu, ops_backward.cu, attention_train.cu, cross_entropy.cu): a general f32 GEMM
// (the input gradient through a frozen weight, dx = dy · W, and the LoRA forward that keeps
// x · Aᵀ), NF4 dequantization into f32 (so an NF4 base's dx goes through that GEMM), an
// elementwise product (LoRA dropout masks), AdamW on the device, a sum of squares (the global
// gradient norm) and the scatter of the labelled rows' gradient (their
// gather is lf_embedding's).
// Launcher and argument checks: src/backend/cuda/train.rs (every argument is a scalar or a
// pointer, checked there before the launch). CPU twins: src/backend/cpu/train.rs.
//
// f32 storage and math. The GEMM is a plain 16 x 16 shared-memory tiling on the CUDA cores:
// correct for any shape, not tuned (training on the GPU is new; kernels/NOTES.md tracks it).
//
// Status: run on the CPU emulator only (no GPU was lent when this was written).

#include <stdint.h>

#define LF_TRAIN_TILE 16

// C [m, n] = beta · C + alpha · A [m, k] · op(B), op(B) = B [k, n], or Bᵀ with B stored [n, k]
// when trans_b. beta 0 never reads C (it may hold anything). Grid (ceil(n / 16), ceil(m / 16)),
// block 16 x 16.
extern "C" __global__ void __launch_bounds__(LF_TRAIN_TILE * LF_TRAIN_TILE)
    lf_train_gemm_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c, int32_t m,
                      int32_t n, int32_t k, int32_t trans_b, float alpha, float beta) {
    __shared__ float sa[LF_TRAIN_TILE][LF_TRAIN_TILE];
    __shared__ float sb[LF_TRAIN_TILE][LF_TRAIN_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int64_t row = (int64_t)blockIdx.y * LF_TRAIN_TILE + ty;
    const int64_t col = (int64_t)blockIdx.x * LF_TRAIN_TILE + tx;
    float acc = 0.0f;
    for (int64_t k0 = 0; k0 < k; k0 += LF_TRAIN_TILE) {
        // sa[ty][tx] = A[row, k0 + tx]; sb[ty][tx] = op(B)[k0 + ty, col].
        const int64_t ka = k0 + tx, kb = k0 + ty;
        sa[ty][tx] = (row < m && ka < k) ? a[row * k + ka] : 0.0f;
        float bv = 0.0f;
        if (col < n && kb < k) bv = trans_b ? b[col * k + kb] : b[kb * n + col];
        sb[ty][tx] = bv;
        __syncthreads();
        // Two-level sum (the tile's 16 products, then the tile into acc): rounding grows with
        // 16 + k / 16 additions, not k (the trainer's gradients are held to PyTorch's within 1e-4).
        float part = 0.0f;
#pragma unroll
        for (int i = 0; i < LF_TRAIN_TILE; ++i) part = fmaf(sa[ty][i], sb[i][tx], part);
        acc += part;
        __syncthreads();
    }
    if (row < m && col < n) {
        float* out = c + row * n + col;
        *out = beta == 0.0f ? alpha * acc : beta * *out + alpha * acc;
    }
}

// out [n] = packed NF4 codes (two per byte, even element in the high nibble) decoded through
// `code` [16] and scaled by absmax [ceil(n / blocksize)]. Grid-stride over the elements.
extern "C" __global__ void __launch_bounds__(256)
    lf_train_nf4_dequant_f32(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                             const float* __restrict__ code, float* __restrict__ out, int64_t n, int32_t blocksize) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const uint8_t byte = packed[i >> 1];
        const int q = (i & 1) ? (byte & 0xf) : (byte >> 4);
        out[i] = code[q] * absmax[i / blocksize];
    }
}

// out [n] = x [n] · y [n]. Grid-stride.
extern "C" __global__ void __launch_bounds__(256)
    lf_train_mul_f32(const float* __restrict__ x, const float* __restrict__ y, float* __restrict__ out, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        out[i] = x[i] * y[i];
    }
}

// out [dst_rows, width] (zeroed by the caller): row idx[i] = d row i, for i < rows. The indices
// are distinct (checked on the host), so no two blocks write one row. One block per row of d.
extern "C" __global__ void __launch_bounds__(256)
    lf_train_scatter_rows_f32(const float* __restrict__ d, const uint32_t* __restrict__ idx, float* __restrict__ out,
                              int32_t rows, int32_t width) {
    const int64_t r = blockIdx.x;
    if (r >= rows) return;
    float* dst = out + (int64_t)idx[r] * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) dst[c] = d[r * width + c];
}

// One AdamW update (PyTorch's torch.optim.AdamW; the scalars come from the host, per update),
// in place over n elements of a parameter p, its gradient g and its moments m, v. Grid-stride.
// The arithmetic is backend::train::AdamWStep::apply's (nvcc may fuse its multiply-adds: the
// last bit can differ from the CPU's).
extern "C" __global__ void __launch_bounds__(256)
    lf_train_adamw_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
                       int64_t n, float beta1, float beta2, float eps, float step_size, float bc2_sqrt, float decay,
                       float grad_scale) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float gi = g[i] * grad_scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        p[i] = p[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
        m[i] = mi;
        v[i] = vi;
    }
}

// partial [gridDim.x] = per block, the f64 sum of x² over its grid-stride share of n elements
// (the host adds the partials). Block 256.
extern "C" __global__ void __launch_bounds__(256)
    lf_train_sum_squares_f32(const float* __restrict__ x, double* __restrict__ partial, int64_t n) {
    __shared__ double s[256];
    double acc = 0.0;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const double xi = x[i];
        acc += xi * xi;
    }
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}
