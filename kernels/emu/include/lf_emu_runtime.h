// The interface between the emulated device code (kernels compiled by the host C++ compiler with
// lf_emu_device.h) and the emulator's runtime (kernels/emu/runtime.cpp, inside the stand-in
// libcuda.so). Both sides are built by the same compiler in the same build (build.rs), so C++
// types cross the boundary.
//
// Execution model: a kernel launch runs its blocks on a small pool of worker threads; a block's
// threads are cooperative fibers on one worker. A fiber runs until it reaches a synchronisation
// point (__syncthreads, a warp collective such as a shuffle, ldmatrix or mma) or returns; the
// block's scheduler then resumes the ready fibers in a seeded random order. Static __shared__
// variables are thread_local (one copy per worker, shared by the fibers of the block it runs),
// poisoned with 0xFF before every block.
#pragma once

#include <stddef.h>
#include <stdint.h>

// CUDA's built-in vector types used for threadIdx and friends.
struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
#ifdef __cplusplus
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
#endif
};

namespace lf_emu {

constexpr int kWarpSize = 32;
// Bytes one lane may deposit into (or receive from) a warp collective: enough for an mma.sync
// m16n8k16 (4 + 2 A/B registers and 4 accumulators).
constexpr size_t kWarpPayload = 64;

struct Block;

// One CUDA thread: a fiber of its block.
struct Fiber {
    void* sp;  // saved stack pointer while switched out
    uint3 tid;
    uint32_t linear;  // threadIdx linearised (x fastest)
    uint32_t lane, warp;
    uint32_t state;  // runtime.cpp: FiberState
    const char* site_file;  // where it waits (barrier or collective)
    int site_line;
    Block* block;
    alignas(16) unsigned char payload[kWarpPayload];
    alignas(16) unsigned char result[kWarpPayload];
};

// What a block's fibers see of their launch.
struct Block {
    uint3 idx;   // blockIdx
    dim3 dim;    // blockDim
    dim3 grid;   // gridDim
    unsigned char* dyn_smem;  // dynamic shared memory (extern __shared__), dyn_smem_bytes long
    size_t dyn_smem_bytes;
    const char* kernel;  // the kernel's name, for error messages
};

// The fiber running on this OS thread (null outside a kernel).
extern thread_local Fiber* tls_fiber __attribute__((tls_model("initial-exec")));

// A warp collective's completion: called once, by the last lane to arrive, with every lane's
// fiber (null for lanes not in `mask`); it writes each participating lane's `result` from the
// lanes' `payload`s. `arg` is the collective's own argument (shuffle offset, ...).
typedef void (*WarpCompleteFn)(Fiber* const lanes[kWarpSize], unsigned mask, const void* arg);

// __syncthreads(): waits until every thread of the block arrives at this same barrier. Threads
// that returned, or that wait at a different __syncthreads, are a divergent barrier: the launch
// fails with a message naming both sites.
void syncthreads(const char* file, int line);

// A warp collective: this lane deposits `payload` (n bytes) and waits until every lane named in
// `mask` arrives at a collective of the same `name` with the same mask; then `complete` computes
// the results. Fails the launch if the calling lane is not in `mask`, if the mask names a lane
// the warp does not have, or if the lanes' names or masks differ. Returns this lane's result.
const void* warp_collective(const char* name, const char* file, int line, unsigned mask, const void* payload,
                            size_t n, WarpCompleteFn complete, const void* arg);

// Fails the launch (never returns) with a message naming the kernel, block and thread.
[[noreturn]] void device_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// Whether [p, p + n) lies inside the running block's shared memory (static or dynamic).
bool is_shared(const void* p, size_t n);

}  // namespace lf_emu

// What each emulated kernel module exports: its kernels, their parameter sizes and a trampoline
// that unpacks cuLaunchKernel's `void** kernelParams` into a typed call.
extern "C" {
typedef void (*lf_emu_trampoline)(void* fn, void** params);
struct lf_emu_kernel {
    const char* name;
    void* fn;
    lf_emu_trampoline call;
    size_t nparams;
    const size_t* param_sizes;
};
// The module's kernels (`*n` of them).
typedef const struct lf_emu_kernel* (*lf_emu_kernels_fn)(size_t* n);
// The calling OS thread's instance of the module's thread-local storage (its static __shared__
// variables and nothing else), allocating it if needed.
typedef void (*lf_emu_module_tls_fn)(void** begin, size_t* size);
}
