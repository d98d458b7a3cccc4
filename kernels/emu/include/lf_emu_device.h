// CUDA device code on the host C++ compiler: the shim every kernels/*.cu file is compiled with
// for the CPU emulator (build.rs passes `-include lf_emu_device.h -DLF_CUDA_EMU`). It defines the
// CUDA keywords, built-in variables, vector and bf16 types, math intrinsics, warp shuffles,
// barriers and atomics the kernels use, each with CUDA's documented semantics (see
// kernels/NOTES.md, "The CUDA emulator", for what this proves and what it cannot).
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <atomic>
#include <type_traits>

#include "lf_emu_runtime.h"

#define LF_CUDA_EMU 1

// ---- keywords -------------------------------------------------------------------------------
#ifdef LF_EMU_SCAN
// build.rs preprocesses each .cu with LF_EMU_SCAN to find its kernels by this marker.
#define __global__ __lf_emu_global__
#else
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// A block-scope thread_local is static: one instance per worker thread, which the fibers of the
// block that worker runs share. The runtime poisons them before each block.
#define __shared__ thread_local
#define __constant__ const
// Dynamic shared memory (`extern __shared__` in CUDA): kernels declare it with this macro, which
// kernels/common.cuh defines for nvcc as `extern __shared__ __align__(16) unsigned char[]`.
#define LF_EXTERN_SHARED(T, name) T* name = reinterpret_cast<T*>(::lf_emu::tls_fiber->block->dyn_smem)

// ---- built-in variables ---------------------------------------------------------------------
#define threadIdx (::lf_emu::tls_fiber->tid)
#define blockIdx (::lf_emu::tls_fiber->block->idx)
#define blockDim (::lf_emu::tls_fiber->block->dim)
#define gridDim (::lf_emu::tls_fiber->block->grid)
#define warpSize 32

// ---- vector types ---------------------------------------------------------------------------
#define LF_EMU_VEC2(T, N, A)                                     \
    struct alignas(A) N {                                        \
        T x, y;                                                  \
    };                                                           \
    static inline N make_##N(T x, T y) { return N{x, y}; }
#define LF_EMU_VEC4(T, N, A)                                     \
    struct alignas(A) N {                                        \
        T x, y, z, w;                                            \
    };                                                           \
    static inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
LF_EMU_VEC2(float, float2, 8)
LF_EMU_VEC4(float, float4, 16)
LF_EMU_VEC2(int, int2, 8)
LF_EMU_VEC4(int, int4, 16)
LF_EMU_VEC2(unsigned int, uint2, 8)
LF_EMU_VEC4(unsigned int, uint4, 16)
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }
#undef LF_EMU_VEC2
#undef LF_EMU_VEC4

// ---- bit casts and integer intrinsics --------------------------------------------------------
template <typename To, typename From>
static inline To lf_emu_bitcast(From v) {
    static_assert(sizeof(To) == sizeof(From), "bit cast between types of one size");
    To t;
    memcpy(&t, &v, sizeof t);
    return t;
}
static inline float __int_as_float(int v) { return lf_emu_bitcast<float>(v); }
static inline int __float_as_int(float v) { return lf_emu_bitcast<int>(v); }
static inline float __uint_as_float(unsigned v) { return lf_emu_bitcast<float>(v); }
static inline unsigned __float_as_uint(float v) { return lf_emu_bitcast<unsigned>(v); }
// PTX prmt (default mode): bytes 0-3 of x and 4-7 of y; result byte n is the byte the low three
// bits of selector nibble n name.
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t bytes = (uint64_t)x | ((uint64_t)y << 32);
    unsigned r = 0;
    for (int n = 0; n < 4; ++n) {
        const unsigned sel = (s >> (4 * n)) & 7u;
        r |= (unsigned)((bytes >> (8 * sel)) & 0xffu) << (8 * n);
    }
    return r;
}
static inline int __popc(unsigned v) { return __builtin_popcount(v); }
static inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned)v); }
static inline int __ffs(int v) { return __builtin_ffs(v); }

// ---- min / max over the integer and float types the kernels mix --------------------------------
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline long min(long a, long b) { return a < b ? a : b; }
static inline long max(long a, long b) { return a > b ? a : b; }
static inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
static inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }

// ---- float intrinsics (the host's correctly rounded or libm versions; CUDA's fast-math variants
// differ in the last bits, which the parity tests' tolerances allow) ------------------------------
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
// glibc declares its own __expf and __logf: CUDA's are macros here.
#define __expf(x) expf(x)
#define __logf(x) logf(x)
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __saturatef(float x) { return x != x ? 0.f : (x < 0.f ? 0.f : (x > 1.f ? 1.f : x)); }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }

// ---- bf16 (cuda_bf16.h) -----------------------------------------------------------------------
// f32 -> bf16 round to nearest even, as cvt.rn.bf16.f32: NaN becomes the canonical 0x7fff,
// infinities and subnormals convert exactly like other values (no flush to zero).
static inline unsigned short lf_emu_f32_to_bf16_rn(float f) {
    const uint32_t u = lf_emu_bitcast<uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)((u + rounding) >> 16);
}
struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(lf_emu_f32_to_bf16_rn(f)) {}
    operator float() const { return lf_emu_bitcast<float>((uint32_t)__x << 16); }
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;
static_assert(sizeof(__nv_bfloat16) == 2 && std::is_trivially_default_constructible<__nv_bfloat16>::value,
              "bf16 is a trivial 16-bit type, so __shared__ arrays of it need no constructor");
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short v) {
    __nv_bfloat16 b;
    b.__x = v;
    return b;
}
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __ushort_as_bfloat16(lf_emu_f32_to_bf16_rn(f)); }
static inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
static inline float __bfloat162float(__nv_bfloat16 b) { return lf_emu_bitcast<float>((uint32_t)b.__x << 16); }
static inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
static inline float2 __bfloat1622float2(__nv_bfloat162 v) {
    return float2{__bfloat162float(v.x), __bfloat162float(v.y)};
}

// ---- memory -----------------------------------------------------------------------------------
// __ldg: a load through the read-only cache; on the host, a load.
template <typename T>
static inline T __ldg(const T* p) {
    return *p;
}
// Shared-window address of a generic pointer; the emulated ldmatrix takes the generic pointer
// itself (kernels/emu/include/lf_emu_ptx.h), so this only has to round-trip.
static inline size_t __cvta_generic_to_shared(const void* p) { return (size_t)p; }
static inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
static inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---- atomics: safe across blocks running on parallel workers ------------------------------------
static inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
static inline double atomicAdd(double* p, double v) { return std::atomic_ref<double>(*p).fetch_add(v); }
static inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
static inline unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }
static inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}
static inline int atomicMax(int* p, int v) {
    std::atomic_ref<int> a(*p);
    int old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
static inline int atomicMin(int* p, int v) {
    std::atomic_ref<int> a(*p);
    int old = a.load();
    while (old > v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
static inline unsigned atomicMax(unsigned* p, unsigned v) {
    std::atomic_ref<unsigned> a(*p);
    unsigned old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
static inline int atomicCAS(int* p, int cmp, int v) {
    std::atomic_ref<int>(*p).compare_exchange_strong(cmp, v);
    return cmp;
}
static inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) {
    std::atomic_ref<unsigned>(*p).compare_exchange_strong(cmp, v);
    return cmp;
}
static inline int atomicExch(int* p, int v) { return std::atomic_ref<int>(*p).exchange(v); }
static inline float atomicExch(float* p, float v) { return std::atomic_ref<float>(*p).exchange(v); }

// ---- barriers ---------------------------------------------------------------------------------
#define __syncthreads() ::lf_emu::syncthreads(__FILE__, __LINE__)

// ---- warp collectives -------------------------------------------------------------------------
// Every lane named in the mask must arrive at the same collective with the same mask; the
// runtime checks that and that each arriving lane is itself in its mask.
namespace lf_emu {

enum class ShflMode : int { Idx, Up, Down, Xor };
struct ShflArg {
    ShflMode mode;
    int arg;    // source lane, delta or lane mask
    int width;  // power of two <= 32
    size_t bytes;
};

// The documented source lane of each shuffle (CUDA C++ Programming Guide, warp shuffle
// functions): lanes are split into groups of `width`; a source outside the caller's group (up,
// down) leaves the caller's own value.
static inline void shfl_complete(Fiber* const lanes[kWarpSize], unsigned mask, const void* varg) {
    const ShflArg& a = *static_cast<const ShflArg*>(varg);
    for (int l = 0; l < kWarpSize; ++l) {
        if (!(mask & (1u << l))) continue;
        const int group = l & ~(a.width - 1);
        int src;
        switch (a.mode) {
            case ShflMode::Idx: src = group + (a.arg & (a.width - 1)); break;
            case ShflMode::Up: src = (l - group) >= a.arg ? l - a.arg : l; break;
            case ShflMode::Down: src = (l - group) + a.arg < a.width ? l + a.arg : l; break;
            default: src = l ^ a.arg; if (src >= group + a.width || src < group) src = l; break;
        }
        if (!(mask & (1u << src)) || lanes[src] == nullptr) {
            device_error("warp shuffle: lane %d reads lane %d, which the mask 0x%08x does not name (undefined in CUDA)", l,
                         src, mask);
        }
        memcpy(lanes[l]->result, lanes[src]->payload, a.bytes);
    }
}

template <typename T>
static inline T shfl(const char* name, const char* file, int line, unsigned mask, T v, ShflMode mode, int arg,
                     int width) {
    static_assert(sizeof(T) <= kWarpPayload && std::is_trivially_copyable<T>::value, "shuffle of a plain value");
    if (width <= 0 || width > kWarpSize || (width & (width - 1)) != 0) {
        device_error("%s: width %d is not a power of two in [1, 32]", name, width);
    }
    const ShflArg a{mode, arg, width, sizeof(T)};
    T out;
    memcpy(&out, warp_collective(name, file, line, mask, &v, sizeof v, shfl_complete, &a), sizeof out);
    return out;
}

enum class VoteMode : int { Ballot, Any, All };
static inline void vote_complete(Fiber* const lanes[kWarpSize], unsigned mask, const void* varg) {
    const VoteMode m = *static_cast<const VoteMode*>(varg);
    unsigned ballot = 0;
    for (int l = 0; l < kWarpSize; ++l) {
        if ((mask & (1u << l)) && lanes[l]->payload[0]) ballot |= 1u << l;
    }
    const unsigned r = m == VoteMode::Ballot ? ballot : m == VoteMode::Any ? (ballot != 0) : (ballot == mask);
    for (int l = 0; l < kWarpSize; ++l) {
        if (mask & (1u << l)) memcpy(lanes[l]->result, &r, sizeof r);
    }
}
static inline unsigned vote(const char* name, const char* file, int line, unsigned mask, int pred, VoteMode m) {
    const unsigned char p = pred != 0;
    unsigned r;
    memcpy(&r, warp_collective(name, file, line, mask, &p, 1, vote_complete, &m), sizeof r);
    return r;
}
static inline void syncwarp_complete(Fiber* const[kWarpSize], unsigned, const void*) {}

}  // namespace lf_emu

namespace lf_emu {
// A shuffle call site: the macros below capture __FILE__ and __LINE__, then `go` takes CUDA's
// arguments (width defaults to warpSize).
struct ShflSite {
    const char* name;
    const char* file;
    int line;
    ShflMode mode;
    template <typename T>
    T go(unsigned mask, T v, int arg, int width = kWarpSize) const {
        return shfl(name, file, line, mask, v, mode, arg, width);
    }
};
struct VoteSite {
    const char* name;
    const char* file;
    int line;
    VoteMode mode;
    unsigned go(unsigned mask, int pred) const { return vote(name, file, line, mask, pred, mode); }
};
struct SyncwarpSite {
    const char* file;
    int line;
    void go(unsigned mask = 0xffffffffu) const {
        (void)warp_collective("__syncwarp", file, line, mask, nullptr, 0, syncwarp_complete, nullptr);
    }
};
}  // namespace lf_emu

#define __shfl_sync(...) (::lf_emu::ShflSite{"__shfl_sync", __FILE__, __LINE__, ::lf_emu::ShflMode::Idx}.go(__VA_ARGS__))
#define __shfl_up_sync(...) (::lf_emu::ShflSite{"__shfl_up_sync", __FILE__, __LINE__, ::lf_emu::ShflMode::Up}.go(__VA_ARGS__))
#define __shfl_down_sync(...) \
    (::lf_emu::ShflSite{"__shfl_down_sync", __FILE__, __LINE__, ::lf_emu::ShflMode::Down}.go(__VA_ARGS__))
#define __shfl_xor_sync(...) (::lf_emu::ShflSite{"__shfl_xor_sync", __FILE__, __LINE__, ::lf_emu::ShflMode::Xor}.go(__VA_ARGS__))
#define __ballot_sync(...) (::lf_emu::VoteSite{"__ballot_sync", __FILE__, __LINE__, ::lf_emu::VoteMode::Ballot}.go(__VA_ARGS__))
#define __any_sync(...) (::lf_emu::VoteSite{"__any_sync", __FILE__, __LINE__, ::lf_emu::VoteMode::Any}.go(__VA_ARGS__))
#define __all_sync(...) (::lf_emu::VoteSite{"__all_sync", __FILE__, __LINE__, ::lf_emu::VoteMode::All}.go(__VA_ARGS__))
#define __syncwarp(...) (::lf_emu::SyncwarpSite{__FILE__, __LINE__}.go(__VA_ARGS__))

#include "lf_emu_ptx.h"
