// Kernels that test the CPU emulator itself (tests/cuda_emu.rs); built only for the emulator.
// Each exercises one check of the emulator: it must catch the fault, the divergence or the bad
// mask, and its PTX twins must follow the documented fragment layouts.

#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

// y[0] = x[idx]: with idx = len(x), a one-past-the-end read.
extern "C" __global__ void lf_emu_test_read(const float* x, float* y, int64_t idx) {
    if (threadIdx.x == 0) y[0] = x[idx];
}

// y[idx] = v: with idx = len(y), a one-past-the-end write.
extern "C" __global__ void lf_emu_test_write(float* y, int64_t idx, float v) {
    if (threadIdx.x == 0) y[idx] = v;
}

// mode 0: every thread passes the same barrier (valid). mode 1: threads below `split` take a
// barrier the others skip (they return). mode 2: two halves wait at two different barriers.
extern "C" __global__ void lf_emu_test_barrier(float* y, int mode, int split) {
    const int t = threadIdx.x;
    if (mode == 0) {
        __syncthreads();
    } else if (mode == 1) {
        if (t < split) __syncthreads();
    } else {
        if (t < split) {
            __syncthreads();
        } else {
            __syncthreads();
        }
    }
    y[blockIdx.x * blockDim.x + t] = 1.0f;
}

// Sum of x[0..blockDim.x) by a shared-memory tree; blockDim.x a power of two <= 256. With
// `first_barrier` 0 the barrier between the stores and the first reads is missing.
extern "C" __global__ void lf_emu_test_block_sum(const float* x, float* out, int first_barrier) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    s[t] = x[t];
    if (first_barrier) __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) out[0] = s[0];
}

// y[t] = value of lane t ^ 1, shuffled by the lanes below `active` with `mask`.
extern "C" __global__ void lf_emu_test_shfl_xor(float* y, unsigned mask, int active) {
    const int t = threadIdx.x;
    float v = (float)t;
    if ((t & 31) < active) v = __shfl_xor_sync(mask, v, 1);
    y[t] = v;
}

// out[lane] = the sum of (lane + 1) over the warp by butterfly shuffles, and down/up/idx
// shuffles: out[32 + lane] = lane + 3 (or lane past the end), out[64 + lane] = lane - 2 (or
// lane), out[96 + lane] = lane 7's value, out[128 + lane] = the ballot of odd lanes.
extern "C" __global__ void lf_emu_test_shfl_all(float* out) {
    const int lane = threadIdx.x & 31;
    float v = (float)(lane + 1);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[lane] = v;
    out[32 + lane] = __shfl_down_sync(0xffffffffu, (float)lane, 3);
    out[64 + lane] = __shfl_up_sync(0xffffffffu, (float)lane, 2);
    out[96 + lane] = __shfl_sync(0xffffffffu, (float)lane, 7);
    out[128 + lane] = (float)__ballot_sync(0xffffffffu, lane & 1);
}

// y[i] = bits of __float2bfloat16_rn(x[i]).
extern "C" __global__ void lf_emu_test_f2bf(const float* x, uint16_t* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x[i]));
}

// acc[0] += 1 from every thread of every block.
extern "C" __global__ void lf_emu_test_atomic(float* acc) { atomicAdd(acc, 1.0f); }

// y[t] = a never-written static __shared__ value (the poison shows as NaN). The store under
// `never` (0 at run time) keeps the host compiler from folding the reads of a variable it would
// otherwise see never written (and so zero).
extern "C" __global__ void lf_emu_test_shared_poison(float* y, int never) {
    __shared__ float s[64];
    if (never) s[threadIdx.x] = 1.0f;
    y[threadIdx.x] = s[threadIdx.x];
}

// Dynamic shared memory: each thread writes s[t + extra] (extra = 0 in bounds; extra past the
// launch's dynamic size faults), then y[t] = s[(t + 1) % n].
extern "C" __global__ void lf_emu_test_dyn_smem(float* y, int extra) {
    LF_EXTERN_SHARED(float, s);
    const int t = threadIdx.x;
    const int n = blockDim.x;
    s[t + extra] = (float)(t * 2);
    __syncthreads();
    y[t] = s[(t + 1) % n];
}

// ldmatrix .x4 (.trans when trans != 0): src holds 4 row-major 8x8 bf16 matrices, copied to
// shared memory with a row stride of 8 + pad elements; lane l gives the address of row l % 8 of
// matrix l / 8. out[l * 4 + i] = register i of lane l.
extern "C" __global__ void lf_emu_test_ldmatrix(const bf16* src, uint32_t* out, int trans) {
    constexpr int LD = 8 + 8;  // padded row: 32 bytes, keeps 16-byte alignment
    __shared__ __align__(16) bf16 tile[4 * 8 * LD];
    const int lane = threadIdx.x;
    for (int e = lane; e < 4 * 64; e += 32) tile[(e / 8) * LD + (e % 8)] = src[e];
    __syncthreads();
    const bf16* row = tile + ((lane / 8) * 8 + (lane % 8)) * LD;
    uint32_t r[4];
    if (trans) {
        LF_EMU_LDMATRIX_TRANS(r, row);
    } else {
        LF_EMU_LDMATRIX(r, row);
    }
    for (int i = 0; i < 4; ++i) out[lane * 4 + i] = r[i];
}

// D = A * B + C through the mma.m16n8k16 twin, the fragments built by the documented layout
// from A [16][16] (row-major), B [16][8] (B[k][n], row-major), C [16][8]; D [16][8]. With
// wrong_layout != 0, A's fragment is built transposed (rows and columns swapped): a twin that
// honours the layout must then give a different product.
extern "C" __global__ void lf_emu_test_mma(const bf16* A, const bf16* B, const float* C, float* D, int wrong_layout) {
    const int lane = threadIdx.x;
    const int g = lane / 4, t = lane % 4;
    uint32_t a[4], b[2];
    float c[4], d[4];
    for (int i = 0; i < 8; i += 2) {
        uint16_t h[2];
        for (int j = 0; j < 2; ++j) {
            const int e = i + j;
            const int row = g + 8 * ((e / 2) % 2);
            const int col = 2 * t + (e % 2) + 8 * (e / 4);
            h[j] = __bfloat16_as_ushort(wrong_layout ? A[col * 16 + row] : A[row * 16 + col]);
        }
        a[i / 2] = (uint32_t)h[0] | ((uint32_t)h[1] << 16);
    }
    for (int i = 0; i < 4; i += 2) {
        uint16_t h[2];
        for (int j = 0; j < 2; ++j) {
            const int e = i + j;
            const int k = 2 * t + (e % 2) + 8 * (e / 2);
            h[j] = __bfloat16_as_ushort(B[k * 8 + g]);
        }
        b[i / 2] = (uint32_t)h[0] | ((uint32_t)h[1] << 16);
    }
    for (int i = 0; i < 4; ++i) c[i] = C[(g + 8 * (i / 2)) * 8 + 2 * t + (i % 2)];
    LF_EMU_MMA_M16N8K16_BF16(d, a, b, c);
    for (int i = 0; i < 4; ++i) D[(g + 8 * (i / 2)) * 8 + 2 * t + (i % 2)] = d[i];
}

// ld.global.nc.v4.u32 twin: out[0..4) = the four words at p + offset bytes.
extern "C" __global__ void lf_emu_test_ld_nc(const uint8_t* p, int64_t offset, uint32_t* out) {
    uint32_t w[4];
    ::lf_emu::ptx::ld_global_nc_v4_u32(p + offset, w);
    if (threadIdx.x == 0) {
        for (int i = 0; i < 4; ++i) out[i] = w[i];
    }
}
