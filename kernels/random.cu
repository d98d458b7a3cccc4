// Seeded random fills (csrc/random.h): random NF4 codes and scales, bf16 and f32 weights created
// where they live, so a 7B-shape model is built on the device without a host copy. Grid-stride;
// element i depends only on (seed, i). CPU twin: backend::random.

#include <cuda_bf16.h>
#include <stdint.h>

#include "common.cuh"
#include "random.h"

namespace {

using lf::splitmix64;

template <typename T>
__device__ __forceinline__ void uniform(T* __restrict__ out, const LfRandomParams p) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        const uint64_t x = splitmix64(p.seed ^ ((uint64_t)i * 0x9E3779B97F4A7C15ull));
        const float u = (float)(x >> 40) * (1.f / 16777216.f);
        out[i] = lf::from_f<T>(fmaf(p.b, u, p.a));  // one fused multiply-add, as the twin
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(LF_RANDOM_THREADS)
    lf_random_bytes(uint8_t* __restrict__ out,  // [n]
                    const LfRandomParams p) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        const uint64_t x = splitmix64(p.seed ^ ((uint64_t)(i / 8) * 0x9E3779B97F4A7C15ull));
        out[i] = (uint8_t)(x >> (8 * (i % 8)));
    }
}

extern "C" __global__ void __launch_bounds__(LF_RANDOM_THREADS)
    lf_random_uniform_f32(float* __restrict__ out,  // [n]
                          const LfRandomParams p) {
    uniform(out, p);
}

extern "C" __global__ void __launch_bounds__(LF_RANDOM_THREADS)
    lf_random_uniform_bf16(__nv_bfloat16* __restrict__ out,  // [n]
                           const LfRandomParams p) {
    uniform(out, p);
}
