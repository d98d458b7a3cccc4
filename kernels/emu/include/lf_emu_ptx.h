// Emulated twins of the inline-PTX instructions the kernels use, written from the PTX ISA's
// documented semantics and fragment layouts (PTX ISA 8.x: "ldmatrix", "mma.sync m16n8k16",
// "Matrix Fragments for mma.m16n8k16 with floating point type", "ld.global.nc"), not from the
// kernels that call them. A kernel selects them behind one `#ifdef LF_CUDA_EMU` per helper.
// Unit tests: kernels/emu/selftest.cu through tests/cuda_emu.rs, against scalar references.
#pragma once

namespace lf_emu {
namespace ptx {

// ld.global.nc.v4.u32: four consecutive 32-bit words through the non-coherent (read-only) path;
// the address must be 16-byte aligned (a misaligned vector access faults on the GPU).
static inline void ld_global_nc_v4_u32(const void* p, uint32_t (&w)[4]) {
    if (((uintptr_t)p & 15u) != 0) device_error("ld.global.nc.v4.u32: address %p is not 16-byte aligned", p);
    memcpy(w, p, 16);
}

// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16. Threads 8i..8i+7 give the addresses
// of rows 0..7 of matrix i (16 bytes each, 16-byte aligned, in shared memory). Lane l receives in
// register i the two b16 elements (row l/4, columns 2(l%4) and 2(l%4)+1) of matrix i, the lower
// column in the low half; with .trans, the elements (rows 2(l%4) and 2(l%4)+1, column l/4).
struct LdmatrixArg {
    int num;  // 1, 2 or 4 matrices
    bool trans;
};
static inline void ldmatrix_complete(Fiber* const lanes[kWarpSize], unsigned, const void* varg) {
    const LdmatrixArg& a = *static_cast<const LdmatrixArg*>(varg);
    const unsigned char* row_addr[4][8];
    for (int i = 0; i < a.num; ++i) {
        for (int r = 0; r < 8; ++r) {
            const unsigned char* p;
            memcpy(&p, lanes[8 * i + r]->payload, sizeof p);
            if (((uintptr_t)p & 15u) != 0) {
                device_error("ldmatrix: lane %d's row address %p is not 16-byte aligned", 8 * i + r, (const void*)p);
            }
            if (!is_shared(p, 16)) {
                device_error("ldmatrix: lane %d's row address %p is not in the block's shared memory", 8 * i + r,
                             (const void*)p);
            }
            row_addr[i][r] = p;
        }
    }
    for (int l = 0; l < kWarpSize; ++l) {
        uint32_t regs[4] = {0, 0, 0, 0};
        for (int i = 0; i < a.num; ++i) {
            uint16_t e[2];
            for (int j = 0; j < 2; ++j) {
                const int row = a.trans ? 2 * (l % 4) + j : l / 4;
                const int col = a.trans ? l / 4 : 2 * (l % 4) + j;
                memcpy(&e[j], row_addr[i][row] + 2 * col, 2);
            }
            regs[i] = (uint32_t)e[0] | ((uint32_t)e[1] << 16);
        }
        memcpy(lanes[l]->result, regs, sizeof regs);
    }
}
template <int NUM>
static inline void ldmatrix(const char* file, int line, bool trans, uint32_t (&r)[NUM], const void* row_address) {
    static_assert(NUM == 1 || NUM == 2 || NUM == 4, "ldmatrix loads 1, 2 or 4 matrices");
    const LdmatrixArg a{NUM, trans};
    // .sync.aligned: every lane of the warp executes it (lanes past 8 * NUM give unused addresses).
    memcpy(r, warp_collective(trans ? "ldmatrix.trans" : "ldmatrix", file, line, 0xffffffffu, &row_address,
                              sizeof row_address, ldmatrix_complete, &a),
           sizeof r);
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: D[16x8] = A[16x16] * B[16x8] + C[16x8].
// With g = lane / 4 and t = lane % 4 (PTX "groupID" and "threadID_in_group"):
//   A: registers a0..a3 hold elements a0..a7, two per register, the lower-numbered in the low
//      half; element i is at row g + 8 * ((i / 2) % 2), column 2t + (i % 2) + 8 * (i / 4).
//   B: registers b0, b1 hold b0..b3; element i is at row (k) 2t + (i % 2) + 8 * (i / 2), column g.
//   C, D: c0..c3, element i at row g + 8 * (i / 2), column 2t + (i % 2).
// The products of bf16 values are exact; the emulation sums them in double and rounds once to f32
// (the tensor core's internal order and precision are not specified beyond f32 accumulation).
struct MmaPayload {
    uint32_t a[4];
    uint32_t b[2];
    float c[4];
};
static inline float bf16_bits_to_f32(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline void mma_m16n8k16_bf16_complete(Fiber* const lanes[kWarpSize], unsigned, const void*) {
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < kWarpSize; ++l) {
        MmaPayload p;
        memcpy(&p, lanes[l]->payload, sizeof p);
        const int g = l / 4, t = l % 4;
        for (int i = 0; i < 8; ++i) {
            const uint16_t h = (uint16_t)(p.a[i / 2] >> (16 * (i % 2)));
            A[g + 8 * ((i / 2) % 2)][2 * t + (i % 2) + 8 * (i / 4)] = bf16_bits_to_f32(h);
        }
        for (int i = 0; i < 4; ++i) {
            const uint16_t h = (uint16_t)(p.b[i / 2] >> (16 * (i % 2)));
            B[2 * t + (i % 2) + 8 * (i / 2)][g] = bf16_bits_to_f32(h);
        }
        for (int i = 0; i < 4; ++i) C[g + 8 * (i / 2)][2 * t + (i % 2)] = p.c[i];
    }
    for (int l = 0; l < kWarpSize; ++l) {
        const int g = l / 4, t = l % 4;
        float d[4];
        for (int i = 0; i < 4; ++i) {
            const int row = g + 8 * (i / 2), col = 2 * t + (i % 2);
            double s = C[row][col];
            for (int k = 0; k < 16; ++k) s += (double)A[row][k] * (double)B[k][col];
            d[i] = (float)s;
        }
        memcpy(lanes[l]->result, d, sizeof d);
    }
}
static inline void mma_m16n8k16_row_col_f32_bf16(const char* file, int line, float (&d)[4], const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2], const float (&c)[4]) {
    MmaPayload p;
    memcpy(p.a, a, sizeof p.a);
    memcpy(p.b, b, sizeof p.b);
    memcpy(p.c, c, sizeof p.c);
    memcpy(d, warp_collective("mma.m16n8k16.bf16", file, line, 0xffffffffu, &p, sizeof p, mma_m16n8k16_bf16_complete,
                              nullptr),
           sizeof d);
}

}  // namespace ptx
}  // namespace lf_emu

#define LF_EMU_LDMATRIX(r, p) ::lf_emu::ptx::ldmatrix(__FILE__, __LINE__, false, r, p)
#define LF_EMU_LDMATRIX_TRANS(r, p) ::lf_emu::ptx::ldmatrix(__FILE__, __LINE__, true, r, p)
#define LF_EMU_MMA_M16N8K16_BF16(d, a, b, c) ::lf_emu::ptx::mma_m16n8k16_row_col_f32_bf16(__FILE__, __LINE__, d, a, b, c)
