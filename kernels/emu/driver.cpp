// The emulator's CUDA driver API: the subset of libcuda.so that cudarc reaches for lorafleet,
// over host memory. This file: errors, the device and its attributes, contexts, memory
// allocation (memory.cpp holds the allocations), modules and functions; streams.cpp: launches,
// copies, memsets, streams, events, stream capture and graphs. Built as a shared object whose SONAME is libcuda.so, so that once
// lorafleet has loaded it by absolute path (LORAFLEET_CUDA_EMU=1), cudarc's own dlopen of
// "libcuda.so" returns it.
//
// Execution is synchronous: a launch or copy runs to completion before the call returns, so
// stream order holds trivially; a kernel's failure is returned by the launch itself (and is not
// sticky, unlike a real context after an illegal address).
//
// Strictness over convenience: device memory sits between guard pages and is poisoned (0xFF) on
// allocation; copies and memsets must lie inside one live allocation; launches are checked
// against the device limits; synchronous calls during a global-mode stream capture fail and
// invalidate the capture, as on a GPU.

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "emu_internal.h"

using namespace lf_emu;

namespace lf_emu {

namespace {
const char* kDeviceName = "lorafleet CPU emulator of sm_90 (not a GPU)";

// ---- errors: the standard text, and the emulator's detail of the latest failure of each code ---

std::mutex g_err_mu;
std::map<int, const char*> g_err_detail;  // code -> "standard text [detail]" (never freed)

const char* std_error_string(CUresult e) {
    switch (e) {
        case kSuccess: return "no error";
        case kInvalidValue: return "invalid argument";
        case kOutOfMemory: return "out of memory";
        case kNotInitialized: return "initialization error";
        case kNoDevice: return "no CUDA-capable device is detected";
        case kInvalidDevice: return "invalid device ordinal";
        case kInvalidImage: return "device kernel image is invalid";
        case kInvalidContext: return "invalid device context";
        case kInvalidHandle: return "invalid resource handle";
        case kNotFound: return "named symbol not found";
        case kNotReady: return "device not ready";
        case kIllegalAddress: return "an illegal memory access was encountered";
        case kHardwareStackError: return "an illegal memory access was encountered (stack)";
        case kLaunchFailed: return "unspecified launch failure";
        case kNotSupported: return "operation not supported";
        case kCaptureUnsupported: return "operation not permitted when stream is capturing";
        case kCaptureInvalidated: return "operation failed due to a previous error during capture";
        case kCaptureUnmatched: return "capture was not initiated in this stream";
        case kCaptureWrongThread: return "attempt to terminate a thread-local capture sequence from another thread";
        default: return "unknown error";
    }
}

}  // namespace

int fail(int code, const char* fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_line(true, "%s", buf);
    std::string full = std::string(std_error_string(code)) + " [lorafleet CUDA emulator: " + buf + "]";
    std::lock_guard<std::mutex> g(g_err_mu);
    g_err_detail[code] = strdup(full.c_str());
    return code;
}

}  // namespace lf_emu

namespace {

// ---- contexts, modules, functions, streams, events, graphs -------------------------------------------

struct Context {
    int device = 0;
};
Context g_primary;
std::atomic<int> g_primary_refs{0};
std::atomic<bool> g_initialized{false};
thread_local CUcontext tls_current = nullptr;

std::mutex g_fn_mu;
std::set<const Function*> g_functions;  // live functions (of loaded modules)

// ---- modules ------------------------------------------------------------------------------------------

// The image lorafleet passes to cuModuleLoadData under the emulator (src/backend/cuda/emu.rs):
// the magic, the module's stem and the absolute path of its shared object, each NUL-terminated.
const char kImageMagic[] = "lorafleet-emu-module";

std::mutex g_mod_mu;
std::map<std::string, void*> g_handles;  // path -> dlopen handle (never closed: workers cache TLS)

struct ModuleObj {
    Module m;
    std::map<std::string, std::unique_ptr<Function>> functions;
};

int device_attribute(int attr) {
    switch (attr) {
        case 1: return kMaxThreadsPerBlock;  // MAX_THREADS_PER_BLOCK
        case 2: return 1024;                 // MAX_BLOCK_DIM_X
        case 3: return 1024;
        case 4: return 64;
        case 5: return 2147483647;  // MAX_GRID_DIM_X
        case 6: return 65535;
        case 7: return 65535;
        case 8: return kDefaultDynamicSmem;  // MAX_SHARED_MEMORY_PER_BLOCK
        case 9: return 65536;                // TOTAL_CONSTANT_MEMORY
        case 10: return 32;                  // WARP_SIZE
        case 12: return 65536;               // MAX_REGISTERS_PER_BLOCK
        case 13: return 1980000;             // CLOCK_RATE (kHz)
        case 16: return kSmCount;            // MULTIPROCESSOR_COUNT
        case 18: return 0;                   // INTEGRATED
        case 19: return 1;                   // CAN_MAP_HOST_MEMORY
        case 31: return 1;                   // CONCURRENT_KERNELS
        case 33: return 0;                   // PCI_BUS_ID
        case 36: return 2619000;             // MEMORY_CLOCK_RATE
        case 37: return 5120;                // GLOBAL_MEMORY_BUS_WIDTH
        case 38: return 50 << 20;            // L2_CACHE_SIZE
        case 39: return 2048;                // MAX_THREADS_PER_MULTIPROCESSOR
        case 40: return 2;                   // ASYNC_ENGINE_COUNT
        case 41: return 1;                   // UNIFIED_ADDRESSING
        case 75: return 9;                   // COMPUTE_CAPABILITY_MAJOR
        case 76: return 0;                   // COMPUTE_CAPABILITY_MINOR
        case 81: return 228 * 1024;          // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        case 82: return 65536;               // MAX_REGISTERS_PER_MULTIPROCESSOR
        case 83: return 0;                   // MANAGED_MEMORY
        case 97: return kMaxSharedOptin;     // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        case 106: return 32;                 // MAX_BLOCKS_PER_MULTIPROCESSOR
        case 115: return 0;                  // MEMORY_POOLS_SUPPORTED: cudarc then uses cuMemAlloc
        default:
            log_line(false, "cuDeviceGetAttribute(%d): not modelled, reporting 0", attr);
            return 0;
    }
}

}  // namespace

bool lf_emu::function_live(const Function* f) {
    std::lock_guard<std::mutex> g(g_fn_mu);
    return g_functions.count(f) != 0;
}

// ---- the driver API ---------------------------------------------------------------------------------------

extern "C" {

struct lf_emu_counters {
    uint64_t allocs, frees, htod, dtoh, dtod, memsets, launches, graph_launches, host_allocs, htod_bytes;
};

// Totals since the process started (tests count copies and allocations per decode step).
__attribute__((visibility("default"))) void lf_emu_get_counters(lf_emu_counters* c) {
    c->allocs = g_count.allocs;
    c->frees = g_count.frees;
    c->htod = g_count.htod;
    c->dtoh = g_count.dtoh;
    c->dtod = g_count.dtod;
    c->memsets = g_count.memsets;
    c->launches = g_count.launches;
    c->graph_launches = g_count.graph_launches;
    c->host_allocs = g_count.host_allocs;
    c->htod_bytes = g_count.htod_bytes;
}

// Switches the placement of new allocations (see tight_alignment): tests of the emulator use it
// to show exact out-of-bounds reads on buffers of any size.
__attribute__((visibility("default"))) void lf_emu_set_tight_alignment(int tight) { set_tight_alignment(tight != 0); }

// Marks this library as the emulator, for code that must tell it from a real driver.
__attribute__((visibility("default"))) const char* lf_emu_identify() { return kDeviceName; }

#define API __attribute__((visibility("default"))) CUresult

API cuInit(unsigned int flags) {
    if (flags != 0) return fail(kInvalidValue, "cuInit(%u): flags must be 0", flags);
    g_initialized = true;
    return kSuccess;
}

API cuDriverGetVersion(int* v) {
    if (!v) return kInvalidValue;
    *v = 13000;
    return kSuccess;
}

API cuGetErrorString(CUresult e, const char** s) {
    if (!s) return kInvalidValue;
    std::lock_guard<std::mutex> g(g_err_mu);
    auto it = g_err_detail.find(e);
    *s = it != g_err_detail.end() ? it->second : std_error_string(e);
    return kSuccess;
}

API cuGetErrorName(CUresult e, const char** s) {
    if (!s) return kInvalidValue;
    switch (e) {
        case kSuccess: *s = "CUDA_SUCCESS"; break;
        case kInvalidValue: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case kOutOfMemory: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case kNotInitialized: *s = "CUDA_ERROR_NOT_INITIALIZED"; break;
        case kNoDevice: *s = "CUDA_ERROR_NO_DEVICE"; break;
        case kInvalidDevice: *s = "CUDA_ERROR_INVALID_DEVICE"; break;
        case kInvalidImage: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
        case kInvalidContext: *s = "CUDA_ERROR_INVALID_CONTEXT"; break;
        case kInvalidHandle: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
        case kNotFound: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case kNotReady: *s = "CUDA_ERROR_NOT_READY"; break;
        case kIllegalAddress: *s = "CUDA_ERROR_ILLEGAL_ADDRESS"; break;
        case kHardwareStackError: *s = "CUDA_ERROR_HARDWARE_STACK_ERROR"; break;
        case kLaunchFailed: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
        case kNotSupported: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
        case kCaptureUnsupported: *s = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"; break;
        case kCaptureInvalidated: *s = "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"; break;
        case kCaptureUnmatched: *s = "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED"; break;
        case kCaptureWrongThread: *s = "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD"; break;
        default: *s = "CUDA_ERROR_UNKNOWN"; break;
    }
    return kSuccess;
}

// -- devices
API cuDeviceGetCount(int* n) {
    if (!n) return kInvalidValue;
    if (!g_initialized) return kNotInitialized;
    *n = 1;
    return kSuccess;
}
API cuDeviceGet(CUdevice* d, int ordinal) {
    if (!d) return kInvalidValue;
    if (!g_initialized) return kNotInitialized;
    if (ordinal != 0) return fail(kInvalidDevice, "device %d: the emulator has one device, 0", ordinal);
    *d = 0;
    return kSuccess;
}
API cuDeviceGetName(char* name, int len, CUdevice d) {
    if (!name || len <= 0) return kInvalidValue;
    if (d != 0) return kInvalidDevice;
    snprintf(name, (size_t)len, "%s", kDeviceName);
    return kSuccess;
}
API cuDeviceGetAttribute(int* v, int attr, CUdevice d) {
    if (!v) return kInvalidValue;
    if (d != 0) return kInvalidDevice;
    *v = device_attribute(attr);
    return kSuccess;
}
API cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    if (!bytes) return kInvalidValue;
    if (d != 0) return kInvalidDevice;
    *bytes = device_total();
    return kSuccess;
}
API cuDeviceGetUuid(CUuuid* u, CUdevice d) {
    if (!u) return kInvalidValue;
    if (d != 0) return kInvalidDevice;
    memcpy(u->bytes, "lorafleet-emu-00", 16);
    return kSuccess;
}
API cuDeviceGetUuid_v2(CUuuid* u, CUdevice d) { return cuDeviceGetUuid(u, d); }

// -- contexts: one primary context on the one device
API cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) {
    if (!c) return kInvalidValue;
    if (d != 0) return kInvalidDevice;
    g_primary_refs++;
    *c = reinterpret_cast<CUcontext>(&g_primary);
    return kSuccess;
}
API cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    if (d != 0) return kInvalidDevice;
    if (g_primary_refs.fetch_sub(1) <= 0) {
        g_primary_refs++;
        return fail(kInvalidContext, "cuDevicePrimaryCtxRelease without a retain");
    }
    return kSuccess;
}
API cuDevicePrimaryCtxGetState(CUdevice d, unsigned* flags, int* active) {
    if (d != 0) return kInvalidDevice;
    if (flags) *flags = 0;
    if (active) *active = g_primary_refs > 0;
    return kSuccess;
}
API cuDevicePrimaryCtxSetFlags_v2(CUdevice d, unsigned) { return d == 0 ? kSuccess : kInvalidDevice; }
API cuCtxSetCurrent(CUcontext c) {
    if (c && c != reinterpret_cast<CUcontext>(&g_primary)) return fail(kInvalidContext, "cuCtxSetCurrent: unknown context");
    tls_current = c;
    return kSuccess;
}
API cuCtxGetCurrent(CUcontext* c) {
    if (!c) return kInvalidValue;
    *c = tls_current;
    return kSuccess;
}
API cuCtxPushCurrent_v2(CUcontext c) { return cuCtxSetCurrent(c); }
API cuCtxPopCurrent_v2(CUcontext* c) {
    if (c) *c = tls_current;
    tls_current = nullptr;
    return kSuccess;
}
API cuCtxGetDevice(CUdevice* d) {
    if (!d) return kInvalidValue;
    *d = 0;
    return kSuccess;
}
API cuCtxSynchronize() { return capture_unsafe("cuCtxSynchronize"); }
API cuCtxSetFlags(unsigned) { return kSuccess; }
API cuCtxGetLimit(size_t* v, int) {
    if (!v) return kInvalidValue;
    *v = 0;
    return kSuccess;
}
API cuCtxSetLimit(int, size_t) { return kSuccess; }
API cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return kSuccess;
}
API cuCtxGetCacheConfig(int* c) {
    if (c) *c = 0;
    return kSuccess;
}
API cuCtxSetCacheConfig(int) { return kSuccess; }

// -- memory
API cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    if (!free_bytes || !total) return kInvalidValue;
    *total = device_total();
    *free_bytes = device_total() - std::min(device_used(), device_total());
    const size_t avail = meminfo_bytes("MemAvailable");
    if (avail && avail < *free_bytes) *free_bytes = avail;
    return kSuccess;
}
API cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
    if (CUresult r = capture_unsafe("cuMemAlloc")) return r;
    return device_alloc(p, n);
}
API cuMemFree_v2(CUdeviceptr p) {
    if (CUresult r = capture_unsafe("cuMemFree")) return r;
    return device_free(p);
}
API cuMemAllocAsync(CUdeviceptr* p, size_t n, CUstream s) {
    if (stream_is_capturing(s)) return fail(kNotSupported, "cuMemAllocAsync during stream capture is not emulated");
    return device_alloc(p, n);
}
API cuMemFreeAsync(CUdeviceptr p, CUstream s) {
    if (stream_is_capturing(s)) return fail(kNotSupported, "cuMemFreeAsync during stream capture is not emulated");
    return device_free(p);
}
API cuMemAllocHost_v2(void** p, size_t n) {
    if (!p) return kInvalidValue;
    if (CUresult r = capture_unsafe("cuMemAllocHost")) return r;
    *p = aligned_alloc(4096, (n + 4095) / 4096 * 4096);
    if (!*p) return fail(kOutOfMemory, "cuMemAllocHost of %zu bytes", n);
    g_count.host_allocs++;
    return kSuccess;
}
API cuMemHostAlloc(void** p, size_t n, unsigned) { return cuMemAllocHost_v2(p, n); }
API cuMemFreeHost(void* p) {
    free(p);
    return kSuccess;
}
API cuMemHostRegister_v2(void*, size_t, unsigned) { return kSuccess; }
API cuMemHostUnregister(void*) { return kSuccess; }


// -- modules and functions
API cuModuleLoadData(CUmodule* out, const void* image) {
    if (!out || !image) return kInvalidValue;
    const char* p = static_cast<const char*>(image);
    if (memcmp(p, kImageMagic, sizeof kImageMagic) != 0) {
        return fail(kInvalidImage,
                    "cuModuleLoadData: not an emulator module image (a real fatbin or PTX cannot run on the CPU emulator)");
    }
    const char* stem = p + sizeof kImageMagic;
    const char* path = stem + strlen(stem) + 1;
    void* h;
    {
        std::unique_lock<std::mutex> g(g_mod_mu);
        auto it = g_handles.find(path);
        if (it != g_handles.end()) {
            h = it->second;
        } else {
            h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
            if (!h) {
                const char* e = dlerror();
                const std::string why = e ? e : "?";
                g.unlock();
                return fail(kInvalidImage, "loading emulated module %s from %s: %s", stem, path, why.c_str());
            }
            g_handles[path] = h;
        }
    }
    auto kernels = reinterpret_cast<lf_emu_kernels_fn>(dlsym(h, "lf_emu_kernels"));
    auto tls = reinterpret_cast<lf_emu_module_tls_fn>(dlsym(h, "lf_emu_module_tls"));
    if (!kernels || !tls) return fail(kInvalidImage, "%s does not export the emulator's module entry points", path);
    auto* m = new ModuleObj();
    m->m.stem = stem;
    m->m.path = path;
    m->m.handle = h;
    m->m.kernels = kernels(&m->m.nkernels);
    m->m.module_tls = tls;
    *out = reinterpret_cast<CUmodule>(m);
    return kSuccess;
}
API cuModuleLoadDataEx(CUmodule* out, const void* image, unsigned, void*, void**) { return cuModuleLoadData(out, image); }
API cuModuleUnload(CUmodule mod) {
    if (!mod) return kInvalidHandle;
    auto* m = reinterpret_cast<ModuleObj*>(mod);
    std::lock_guard<std::mutex> g(g_fn_mu);
    for (auto& f : m->functions) g_functions.erase(f.second.get());
    // The shared object stays loaded (workers keep its TLS); the functions stay valid memory, but
    // launching one after the unload is refused.
    return kSuccess;
}
API cuModuleGetFunction(CUfunction* out, CUmodule mod, const char* name) {
    if (!out || !mod || !name) return kInvalidValue;
    auto* m = reinterpret_cast<ModuleObj*>(mod);
    std::unique_lock<std::mutex> g(g_fn_mu);
    auto it = m->functions.find(name);
    if (it == m->functions.end()) {
        const lf_emu_kernel* k = nullptr;
        for (size_t i = 0; i < m->m.nkernels; ++i) {
            if (strcmp(m->m.kernels[i].name, name) == 0) k = &m->m.kernels[i];
        }
        if (!k) {
            g.unlock();
            return fail(kNotFound, "module %s has no kernel %s", m->m.stem.c_str(), name);
        }
        auto f = std::make_unique<Function>(Function{&m->m, k, kDefaultDynamicSmem});
        g_functions.insert(f.get());
        it = m->functions.emplace(name, std::move(f)).first;
    }
    *out = reinterpret_cast<CUfunction>(it->second.get());
    return kSuccess;
}
API cuFuncGetAttribute(int* v, int attr, CUfunction f) {
    if (!v || !f) return kInvalidValue;
    const auto* fn = reinterpret_cast<const Function*>(f);
    switch (attr) {
        case 0: *v = kMaxThreadsPerBlock; break;  // MAX_THREADS_PER_BLOCK
        case 1: *v = 0; break;                    // SHARED_SIZE_BYTES (static; not tracked)
        case 2: *v = 0; break;                    // CONST_SIZE_BYTES
        case 3: *v = 0; break;                    // LOCAL_SIZE_BYTES
        case 4: *v = 0; break;                    // NUM_REGS (no registers on the emulator)
        case 5: *v = 90; break;                   // PTX_VERSION
        case 6: *v = 90; break;                   // BINARY_VERSION
        case 8: *v = fn->max_dynamic_smem; break;  // MAX_DYNAMIC_SHARED_SIZE_BYTES
        default: *v = 0; break;
    }
    return kSuccess;
}
API cuFuncSetAttribute(CUfunction f, int attr, int value) {
    if (!f) return kInvalidValue;
    auto* fn = reinterpret_cast<Function*>(f);
    if (attr == 8) {
        if (value < 0 || value > kMaxSharedOptin) {
            return fail(kInvalidValue, "MAX_DYNAMIC_SHARED_SIZE_BYTES %d of %s exceeds the device's %d", value,
                        fn->kernel->name, kMaxSharedOptin);
        }
        fn->max_dynamic_smem = value;
    }
    return kSuccess;
}
API cuFuncSetCacheConfig(CUfunction, int) { return kSuccess; }
API cuOccupancyMaxActiveBlocksPerMultiprocessor(int* n, CUfunction, int block, size_t) {
    if (!n || block <= 0) return kInvalidValue;
    *n = std::max(1, std::min(32, 2048 / block));
    return kSuccess;
}
API cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* n, CUfunction f, int block, size_t smem, unsigned) {
    return cuOccupancyMaxActiveBlocksPerMultiprocessor(n, f, block, smem);
}

}  // extern "C"
