// Internal interface between the emulator's runtime (runtime.cpp: fibers, blocks, workers,
// faults) and its driver API (driver.cpp: contexts, memory, modules, streams, graphs).
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <atomic>
#include <string>
#include <vector>

#include "include/lf_emu_runtime.h"

// The driver API's handle types (cuda.h's definitions, as far as the emulator needs them).
extern "C" {
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st* CUcontext;
typedef struct CUmod_st* CUmodule;
typedef struct CUfunc_st* CUfunction;
typedef struct CUstream_st* CUstream;
typedef struct CUevent_st* CUevent;
typedef struct CUgraph_st* CUgraph;
typedef struct CUgraphExec_st* CUgraphExec;
typedef void (*CUhostFn)(void* userData);
typedef struct {
    char bytes[16];
} CUuuid;
}

namespace lf_emu {

// A loaded kernel module (one kernels/*.cu compiled by the host compiler into a shared object).
struct Module {
    std::string stem;
    std::string path;
    void* handle = nullptr;
    const lf_emu_kernel* kernels = nullptr;
    size_t nkernels = 0;
    lf_emu_module_tls_fn module_tls = nullptr;
};

// A kernel of a loaded module (CUfunction).
struct Function {
    Module* module;
    const lf_emu_kernel* kernel;
    int max_dynamic_smem;  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
};

// What one launch runs.
struct LaunchSpec {
    const Function* fn;
    dim3 grid, block;
    size_t dyn_smem;
    void** params;
};

// Outcome of a launch: 0 (CUDA_SUCCESS) or a CUresult, with a message naming the kernel.
struct LaunchResult {
    int code = 0;
    std::string message;
};

// Runs every block of the launch to completion on the worker pool (one launch at a time per
// process). Thread-safe.
LaunchResult run_grid(const LaunchSpec& spec);

// One line describing where `addr` lies relative to the live device allocations (driver.cpp).
std::string describe_address(uintptr_t addr);

// CUresult codes the emulator returns (cuda.h's values).
enum : int {
    kSuccess = 0,
    kInvalidValue = 1,
    kOutOfMemory = 2,
    kNotInitialized = 3,
    kNoDevice = 100,
    kInvalidDevice = 101,
    kInvalidImage = 200,
    kInvalidContext = 201,
    kInvalidHandle = 400,
    kNotFound = 500,
    kNotReady = 600,
    kIllegalAddress = 700,
    kHardwareStackError = 714,
    kLaunchFailed = 719,
    kNotSupported = 801,
    kCaptureUnsupported = 900,
    kCaptureInvalidated = 901,
    kCaptureUnmatched = 903,
    kCaptureWrongThread = 908,
    kUnknown = 999,
};

// Records the detail of a failure (printed on stderr, and appended to what cuGetErrorString
// returns for that code) and returns `code`.
int fail(int code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// ---- device memory (memory.cpp) -----------------------------------------------------------------
using DevPtr = unsigned long long;  // CUdeviceptr

// A new poisoned allocation between guard pages (see memory.cpp for the placement).
int device_alloc(DevPtr* out, size_t size);
int device_free(DevPtr p);
// CUDA_ERROR_INVALID_VALUE unless [p, p + n) lies inside one live allocation.
int check_device_range(const char* op, DevPtr p, size_t n);
// After a launch: a description of the first canary overwritten past the end of an allocation that
// one of `ptrs` (the launch's parameter words) points into, or "".
std::string check_canaries(const std::vector<uintptr_t>& ptrs);
// The emulated device's memory: LORAFLEET_EMU_DEVICE_MEMORY bytes, else a quarter of the host's
// RAM, at most 2 GiB.
size_t device_total();
size_t device_used();
// A field of /proc/meminfo in bytes (0 if absent).
size_t meminfo_bytes(const char* key);
void set_tight_alignment(bool tight);

// What the driver has done since the process started (lf_emu_get_counters).
struct Counters {
    std::atomic<uint64_t> allocs{0}, frees{0}, htod{0}, dtoh{0}, dtod{0}, memsets{0}, launches{0}, graph_launches{0},
        host_allocs{0}, htod_bytes{0};
};
extern Counters g_count;

// ---- functions and streams (driver.cpp, streams.cpp) ------------------------------------------------
// Whether `f` came from cuModuleGetFunction and its module is still loaded.
bool function_live(const Function* f);
// Whether work submitted to `s` is being recorded by a stream capture.
bool stream_is_capturing(CUstream s);
// A synchronous or otherwise capture-unsafe call: fails (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED) if a
// global-mode capture, or a thread-local one of this thread, is in progress, invalidating it.
int capture_unsafe(const char* op);

// Limits the device reports and the launch checks (driver.cpp and runtime.cpp agree on them).
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kDefaultDynamicSmem = 48 * 1024;
constexpr int kMaxSharedOptin = 227 * 1024;
constexpr int kSmCount = 132;  // what an H100/H200 SXM reports; only grid-sizing code reads it

// Prints a line on stderr prefixed "lorafleet CUDA emulator: " when LORAFLEET_EMU_VERBOSE=1, and
// always for errors the caller passes `always`.
void log_line(bool always, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

}  // namespace lf_emu
