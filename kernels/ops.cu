// Element-wise and row-wise ops. CPU twins: src/backend/cpu/ops.rs.
#include "ops.h"

// One block per row. x, out: [rows, cols] f32; w: [cols] f32.
extern "C" __global__ void lf_rms_norm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                           float* __restrict__ out, LfRmsNormParams p) {
    const int row = blockIdx.x;
    if (row >= p.rows) return;
    const float* xr = x + (size_t)row * p.cols;
    float ss = 0.f;
    for (int i = threadIdx.x; i < p.cols; i += blockDim.x) ss += xr[i] * xr[i];
    __shared__ float red[32];
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        ss = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
        for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, o);
        if (threadIdx.x == 0) red[0] = ss;
    }
    __syncthreads();
    const float inv = rsqrtf(red[0] / p.cols + p.eps);
    for (int i = threadIdx.x; i < p.cols; i += blockDim.x) out[(size_t)row * p.cols + i] = w[i] * (xr[i] * inv);
}
