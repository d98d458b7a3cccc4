// Device helpers shared by the kernels/*.cu files: element conversion between the storage types
// (f32, bf16) and the f32 math every kernel does (`to_f`, `from_f`, `Elem<T>`), 8-element aligned
// loads, warp sums and maxima, the 16-byte alignment test, and dynamic shared memory. On the CPU emulator (LF_CUDA_EMU) the same code compiles against
// kernels/emu/include/lf_emu_device.h.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

#ifndef LF_CUDA_EMU
// Dynamic shared memory (the launch's sharedMemBytes), as a T*. The emulator defines its own.
#define LF_EXTERN_SHARED(T, name)                                     \
    extern __shared__ __align__(16) unsigned char lf_dyn_smem_##name[]; \
    T* name = reinterpret_cast<T*>(lf_dyn_smem_##name)
#endif

namespace lf {

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(bf16 v) { return __bfloat162float(v); }

// f32 -> storage type, one round-to-nearest-even for bf16.
template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ bf16 from_f<bf16>(float v) {
    return __float2bfloat16_rn(v);
}

// Elements p[0..8) as f32; p 16-byte aligned (one 16-byte load for bf16, two for f32), through the
// read-only cache. bf16 -> f32 is exact: the 16 bits are the f32's top half, and the
// lower-addressed element is the low half of each 32-bit word (little endian).
__device__ __forceinline__ void load8(const bf16* p, float (&f)[8]) {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}
__device__ __forceinline__ void load8(const float* p, float (&f)[8]) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    const float4 b = __ldg(reinterpret_cast<const float4*>(p + 4));
    f[0] = a.x;
    f[1] = a.y;
    f[2] = a.z;
    f[3] = a.w;
    f[4] = b.x;
    f[5] = b.y;
    f[6] = b.z;
    f[7] = b.w;
}

// Sum of v over the 32 lanes of a full warp, returned to every lane.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Maximum of v over the 32 lanes of a full warp, returned to every lane.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// SplitMix64's output function (Steele et al.): the counter-based generator of the random fills
// and of sampling's draws; the host twin is crate::rng::SplitMix64.
__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Element access for one storage type (f32 or bf16), converting to and from the f32 math: scalar
// load/store, and 16-byte vectors of N elements (plain loads/stores for global or shared memory,
// `ldg` through the read-only cache for global weights whose addresses the compiler cannot prove
// read-only, e.g. LoRA A/B pointers taken from metadata). Vector pointers must be 16-byte aligned.
template <typename T>
struct Elem;

template <>
struct Elem<float> {
    static constexpr int N = 16 / sizeof(float);  // 4
    static __device__ __forceinline__ float load1(const float* p) { return *p; }
    static __device__ __forceinline__ float ldg1(const float* p) { return __ldg(p); }
    static __device__ __forceinline__ void store1(float* p, float v) { *p = v; }
    static __device__ __forceinline__ void unpack(const uint4& u, float (&f)[N]) {
        f[0] = __uint_as_float(u.x);
        f[1] = __uint_as_float(u.y);
        f[2] = __uint_as_float(u.z);
        f[3] = __uint_as_float(u.w);
    }
    static __device__ __forceinline__ void load(const float* p, float (&f)[N]) { unpack(*reinterpret_cast<const uint4*>(p), f); }
    static __device__ __forceinline__ void ldg(const float* p, float (&f)[N]) { unpack(__ldg(reinterpret_cast<const uint4*>(p)), f); }
    static __device__ __forceinline__ void store(float* p, const float (&f)[N]) {
        *reinterpret_cast<uint4*>(p) =
            make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
    }
};

template <>
struct Elem<bf16> {
    static constexpr int N = 16 / sizeof(bf16);  // 8
    static __device__ __forceinline__ float load1(const bf16* p) { return __bfloat162float(*p); }
    static __device__ __forceinline__ float ldg1(const bf16* p) { return __bfloat162float(__ldg(p)); }
    static __device__ __forceinline__ void store1(bf16* p, float v) { *p = __float2bfloat16_rn(v); }
    // bf16 -> f32 is exact: the 16 bits are the top half of the f32. Each 32-bit word holds two
    // elements, the lower-addressed one in the low half (little endian).
    static __device__ __forceinline__ void unpack2(uint32_t w, float& lo, float& hi) {
        lo = __uint_as_float(w << 16);
        hi = __uint_as_float(w & 0xffff0000u);
    }
    static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
        return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
               ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16);
    }
    static __device__ __forceinline__ void unpack(const uint4& u, float (&f)[N]) {
        unpack2(u.x, f[0], f[1]);
        unpack2(u.y, f[2], f[3]);
        unpack2(u.z, f[4], f[5]);
        unpack2(u.w, f[6], f[7]);
    }
    static __device__ __forceinline__ void load(const bf16* p, float (&f)[N]) { unpack(*reinterpret_cast<const uint4*>(p), f); }
    static __device__ __forceinline__ void ldg(const bf16* p, float (&f)[N]) { unpack(__ldg(reinterpret_cast<const uint4*>(p)), f); }
    static __device__ __forceinline__ void store(bf16* p, const float (&f)[N]) {
        *reinterpret_cast<uint4*>(p) =
            make_uint4(pack2(f[0], f[1]), pack2(f[2], f[3]), pack2(f[4], f[5]), pack2(f[6], f[7]));
    }
};

}  // namespace lf
