// The emulator's work submission: kernel launches, copies and memsets, streams and events, and
// stream capture into graphs that replay. Everything runs synchronously when submitted (a launch
// or copy has finished when the call returns), unless its stream is capturing, where it is
// recorded as a graph node instead. See driver.cpp for the rest of the API.

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "emu_internal.h"

using namespace lf_emu;

namespace {

std::mutex g_obj_mu;  // streams and their captures

struct Node {
    enum Kind { kKernel, kHtoD, kDtoH, kDtoD, kMemset, kHost } kind;
    explicit Node(Kind k) : kind(k) {}
    // kernel
    const Function* fn = nullptr;
    dim3 grid, block;
    size_t smem = 0;
    std::vector<unsigned char> args;
    std::vector<size_t> arg_offsets;
    // copies and memsets
    uintptr_t dst = 0, src = 0;
    size_t bytes = 0;
    uint32_t value = 0;
    unsigned elem = 1;
    // host function
    CUhostFn host_fn = nullptr;
    void* user = nullptr;
};

enum CaptureMode { kGlobal = 0, kThreadLocal = 1, kRelaxed = 2 };

struct Stream {
    bool capturing = false;
    bool invalidated = false;
    int mode = kGlobal;
    std::thread::id thread;
    std::vector<Node> nodes;
};
std::set<Stream*> g_streams;

struct Event {
    bool recorded = false;
    std::chrono::steady_clock::time_point t;
};

struct Graph {
    std::vector<Node> nodes;
};

// The capture a call on `s` records into, or null (run now). Streams 0x0 (legacy default) and 0x1,
// 0x2 (per-thread defaults) are never captured.
Stream* capturing(CUstream s) {
    if ((uintptr_t)s <= 2) return nullptr;
    auto* st = reinterpret_cast<Stream*>(s);
    return st->capturing ? st : nullptr;
}

CUresult check_stream(CUstream s) {
    if ((uintptr_t)s <= 2) return kSuccess;
    std::lock_guard<std::mutex> g(g_obj_mu);
    if (!g_streams.count(reinterpret_cast<Stream*>(s))) return fail(kInvalidHandle, "unknown stream %p", (void*)s);
    return kSuccess;
}

// A synchronous or otherwise capture-unsafe call: fails if a global-mode capture (or a
// thread-local one of this thread) is in progress, invalidating it, as the driver does.
}  // namespace

int lf_emu::capture_unsafe(const char* op) {
    std::unique_lock<std::mutex> g(g_obj_mu);
    for (Stream* s : g_streams) {
        if (!s->capturing) continue;
        if (s->mode == kGlobal || (s->mode == kThreadLocal && s->thread == std::this_thread::get_id())) {
            s->invalidated = true;
            g.unlock();
            return fail(kCaptureUnsupported, "%s while stream %p is capturing (the capture is invalidated)", op, (void*)s);
        }
    }
    return kSuccess;
}

namespace {

// ---- running the operations -------------------------------------------------------------------------

CUresult launch_now(const Function* fn, dim3 grid, dim3 block, size_t smem, void** params) {
    LaunchSpec spec{fn, grid, block, smem, params};
    const LaunchResult r = run_grid(spec);
    g_count.launches++;
    if (r.code != 0) return fail(r.code, "%s", r.message.c_str());
    // Every 8-byte word of the parameters may be a device pointer the kernel wrote through.
    std::vector<uintptr_t> words;
    for (size_t i = 0; i < fn->kernel->nparams; ++i) {
        const size_t sz = fn->kernel->param_sizes[i];
        for (size_t off = 0; off + 8 <= sz; off += 8) {
            uintptr_t v;
            memcpy(&v, static_cast<const char*>(params[i]) + off, 8);
            words.push_back(v);
        }
    }
    const std::string overrun = check_canaries(words);
    if (!overrun.empty()) return fail(kIllegalAddress, "kernel %s: %s", fn->kernel->name, overrun.c_str());
    return kSuccess;
}

CUresult run_node(const Node& n) {
    switch (n.kind) {
        case Node::kKernel: {
            std::vector<void*> ptrs(n.arg_offsets.size());
            for (size_t i = 0; i < ptrs.size(); ++i) ptrs[i] = const_cast<unsigned char*>(n.args.data()) + n.arg_offsets[i];
            return launch_now(n.fn, n.grid, n.block, n.smem, ptrs.data());
        }
        case Node::kHtoD:
            if (CUresult r = check_device_range("cuMemcpyHtoD (graph)", n.dst, n.bytes)) return r;
            memcpy((void*)n.dst, (const void*)n.src, n.bytes);
            g_count.htod++;
            g_count.htod_bytes += n.bytes;
            return kSuccess;
        case Node::kDtoH:
            if (CUresult r = check_device_range("cuMemcpyDtoH (graph)", n.src, n.bytes)) return r;
            memcpy((void*)n.dst, (const void*)n.src, n.bytes);
            g_count.dtoh++;
            return kSuccess;
        case Node::kDtoD:
            if (CUresult r = check_device_range("cuMemcpyDtoD (graph), source", n.src, n.bytes)) return r;
            if (CUresult r = check_device_range("cuMemcpyDtoD (graph), destination", n.dst, n.bytes)) return r;
            memmove((void*)n.dst, (const void*)n.src, n.bytes);
            g_count.dtod++;
            return kSuccess;
        case Node::kMemset: {
            if (CUresult r = check_device_range("cuMemset", n.dst, n.bytes * n.elem)) return r;
            auto* d = reinterpret_cast<unsigned char*>(n.dst);
            for (size_t i = 0; i < n.bytes; ++i) memcpy(d + i * n.elem, &n.value, n.elem);
            g_count.memsets++;
            return kSuccess;
        }
        case Node::kHost:
            n.host_fn(n.user);
            return kSuccess;
    }
    return kUnknown;
}

// Runs `n` now, or appends it to the capture of stream `s`.
CUresult submit(CUstream s, Node&& n) {
    if (CUresult r = check_stream(s)) return r;
    if (Stream* st = capturing(s)) {
        std::lock_guard<std::mutex> g(g_obj_mu);
        if (st->invalidated) return kCaptureInvalidated;
        st->nodes.push_back(std::move(n));
        return kSuccess;
    }
    return run_node(n);
}

CUresult memset_common(const char* op, CUdeviceptr dst, uint32_t value, unsigned elem, size_t n, CUstream s, bool sync) {
    if (sync) {
        if (CUresult r = capture_unsafe(op)) return r;
    }
    Node node(Node::kMemset);
    node.dst = dst;
    node.value = value;
    node.elem = elem;
    node.bytes = n;  // elements
    return submit(s, std::move(node));
}

CUresult copy_common(Node::Kind kind, const char* op, uintptr_t dst, uintptr_t src, size_t n, CUstream s, bool sync) {
    if (sync) {
        if (CUresult r = capture_unsafe(op)) return r;
    }
    if (n == 0) return kSuccess;
    if (kind != Node::kHtoD && !capturing(s)) {
        if (CUresult r = check_device_range(op, src, n)) return r;
    }
    if (kind != Node::kDtoH && !capturing(s)) {
        if (CUresult r = check_device_range(op, dst, n)) return r;
    }
    Node node(kind);
    node.dst = dst;
    node.src = src;
    node.bytes = n;
    return submit(s, std::move(node));
}

}  // namespace

bool lf_emu::stream_is_capturing(CUstream s) { return capturing(s) != nullptr; }

extern "C" {

#define API __attribute__((visibility("default"))) CUresult

API cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    return copy_common(Node::kHtoD, "cuMemcpyHtoD", dst, (uintptr_t)src, n, nullptr, true);
}
API cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    return copy_common(Node::kDtoH, "cuMemcpyDtoH", (uintptr_t)dst, src, n, nullptr, true);
}
API cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    return copy_common(Node::kDtoD, "cuMemcpyDtoD", dst, src, n, nullptr, true);
}
API cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
    return copy_common(Node::kHtoD, "cuMemcpyHtoDAsync", dst, (uintptr_t)src, n, s, false);
}
API cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) {
    return copy_common(Node::kDtoH, "cuMemcpyDtoHAsync", (uintptr_t)dst, src, n, s, false);
}
API cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    return copy_common(Node::kDtoD, "cuMemcpyDtoDAsync", dst, src, n, s, false);
}
API cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { return memset_common("cuMemsetD8", d, v, 1, n, nullptr, true); }
API cuMemsetD16_v2(CUdeviceptr d, unsigned short v, size_t n) {
    return memset_common("cuMemsetD16", d, v, 2, n, nullptr, true);
}
API cuMemsetD32_v2(CUdeviceptr d, unsigned v, size_t n) { return memset_common("cuMemsetD32", d, v, 4, n, nullptr, true); }
API cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream s) {
    return memset_common("cuMemsetD8Async", d, v, 1, n, s, false);
}
API cuMemsetD16Async(CUdeviceptr d, unsigned short v, size_t n, CUstream s) {
    return memset_common("cuMemsetD16Async", d, v, 2, n, s, false);
}
API cuMemsetD32Async(CUdeviceptr d, unsigned v, size_t n, CUstream s) {
    return memset_common("cuMemsetD32Async", d, v, 4, n, s, false);
}

API cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem,
                   CUstream s, void** params, void** extra) {
    if (!f) return fail(kInvalidHandle, "cuLaunchKernel: null function");
    const auto* fn = reinterpret_cast<const Function*>(f);
    if (!function_live(fn)) return fail(kInvalidHandle, "cuLaunchKernel: unknown or unloaded function");
    const char* name = fn->kernel->name;
    if (extra) return fail(kNotSupported, "%s: the `extra` launch argument is not emulated", name);
    if (bx == 0 || by == 0 || bz == 0 || gx == 0 || gy == 0 || gz == 0) {
        return fail(kInvalidValue, "%s: empty launch, grid (%u,%u,%u) block (%u,%u,%u)", name, gx, gy, gz, bx, by, bz);
    }
    if (bx > 1024 || by > 1024 || bz > 64 || (uint64_t)bx * by * bz > (uint64_t)kMaxThreadsPerBlock) {
        return fail(kInvalidValue, "%s: block (%u,%u,%u) exceeds the device limits (1024 threads; 1024, 1024, 64)", name,
                    bx, by, bz);
    }
    if (gx > 2147483647u || gy > 65535 || gz > 65535) {
        return fail(kInvalidValue, "%s: grid (%u,%u,%u) exceeds the device limits (2^31 - 1, 65535, 65535)", name, gx, gy,
                    gz);
    }
    if ((int)smem > fn->max_dynamic_smem) {
        return fail(kInvalidValue,
                    "%s: %u bytes of dynamic shared memory exceed the function limit of %d (raise it with "
                    "cuFuncSetAttribute MAX_DYNAMIC_SHARED_SIZE_BYTES, up to %d)",
                    name, smem, fn->max_dynamic_smem, kMaxSharedOptin);
    }
    const size_t np = fn->kernel->nparams;
    if (np > 0 && !params) return fail(kInvalidValue, "%s takes %zu parameters; kernelParams is null", name, np);
    for (size_t i = 0; i < np; ++i) {
        if (!params[i]) return fail(kInvalidValue, "%s: kernelParams[%zu] is null", name, i);
    }
    if (CUresult r = check_stream(s)) return r;
    if (Stream* st = capturing(s)) {
        Node n(Node::kKernel);
        n.fn = fn;
        n.grid = dim3(gx, gy, gz);
        n.block = dim3(bx, by, bz);
        n.smem = smem;
        for (size_t i = 0; i < np; ++i) {
            const size_t sz = fn->kernel->param_sizes[i];
            const size_t off = (n.args.size() + 15) / 16 * 16;
            n.args.resize(off + sz);
            memcpy(n.args.data() + off, params[i], sz);
            n.arg_offsets.push_back(off);
        }
        std::lock_guard<std::mutex> g(g_obj_mu);
        if (st->invalidated) return kCaptureInvalidated;
        st->nodes.push_back(std::move(n));
        return kSuccess;
    }
    return launch_now(fn, dim3(gx, gy, gz), dim3(bx, by, bz), smem, params);
}

API cuLaunchHostFunc(CUstream s, CUhostFn fn, void* user) {
    if (!fn) return kInvalidValue;
    Node n(Node::kHost);
    n.host_fn = fn;
    n.user = user;
    return submit(s, std::move(n));
}

// -- streams and events
API cuStreamCreate(CUstream* out, unsigned) {
    if (!out) return kInvalidValue;
    auto* s = new Stream();
    std::lock_guard<std::mutex> g(g_obj_mu);
    g_streams.insert(s);
    *out = reinterpret_cast<CUstream>(s);
    return kSuccess;
}
API cuStreamCreateWithPriority(CUstream* out, unsigned flags, int) { return cuStreamCreate(out, flags); }
API cuStreamDestroy_v2(CUstream s) {
    if ((uintptr_t)s <= 2) return kInvalidHandle;
    std::lock_guard<std::mutex> g(g_obj_mu);
    auto* st = reinterpret_cast<Stream*>(s);
    if (!g_streams.erase(st)) return kInvalidHandle;
    delete st;
    return kSuccess;
}
API cuStreamSynchronize(CUstream s) {
    if (CUresult r = check_stream(s)) return r;
    if (Stream* st = capturing(s)) {
        {
            std::lock_guard<std::mutex> g(g_obj_mu);
            st->invalidated = true;
        }
        return fail(kCaptureUnsupported, "cuStreamSynchronize on a capturing stream");
    }
    return capture_unsafe("cuStreamSynchronize");
}
API cuStreamQuery(CUstream s) { return check_stream(s); }
API cuStreamWaitEvent(CUstream s, CUevent, unsigned) { return check_stream(s); }
API cuStreamBeginCapture_v2(CUstream s, int mode) {
    if ((uintptr_t)s <= 2) return fail(kNotSupported, "the legacy and per-thread default streams cannot be captured");
    if (CUresult r = check_stream(s)) return r;
    if (mode < 0 || mode > 2) return kInvalidValue;
    std::unique_lock<std::mutex> g(g_obj_mu);
    auto* st = reinterpret_cast<Stream*>(s);
    if (st->capturing) {
        g.unlock();
        return fail(kInvalidValue, "stream %p is already capturing", (void*)s);
    }
    st->capturing = true;
    st->invalidated = false;
    st->mode = mode;
    st->thread = std::this_thread::get_id();
    st->nodes.clear();
    return kSuccess;
}
API cuStreamBeginCapture(CUstream s, int mode) { return cuStreamBeginCapture_v2(s, mode); }
API cuStreamEndCapture(CUstream s, CUgraph* out) {
    if (!out) return kInvalidValue;
    if (CUresult r = check_stream(s)) return r;
    if ((uintptr_t)s <= 2) return kCaptureUnmatched;
    std::lock_guard<std::mutex> g(g_obj_mu);
    auto* st = reinterpret_cast<Stream*>(s);
    if (!st->capturing) return kCaptureUnmatched;
    if (st->mode == kThreadLocal && st->thread != std::this_thread::get_id()) return kCaptureWrongThread;
    st->capturing = false;
    if (st->invalidated) {
        st->nodes.clear();
        *out = nullptr;
        return kCaptureInvalidated;
    }
    auto* gr = new Graph();
    gr->nodes = std::move(st->nodes);
    st->nodes.clear();
    *out = reinterpret_cast<CUgraph>(gr);
    return kSuccess;
}
API cuStreamIsCapturing(CUstream s, int* status) {
    if (!status) return kInvalidValue;
    if (CUresult r = check_stream(s)) return r;
    Stream* st = capturing(s);
    // CU_STREAM_CAPTURE_STATUS_NONE 0, ACTIVE 1, INVALIDATED 2
    *status = st ? (st->invalidated ? 2 : 1) : 0;
    return kSuccess;
}
API cuGraphInstantiateWithFlags(CUgraphExec* out, CUgraph graph, unsigned long long) {
    if (!out || !graph) return kInvalidValue;
    auto* exec = new Graph(*reinterpret_cast<Graph*>(graph));
    *out = reinterpret_cast<CUgraphExec>(exec);
    return kSuccess;
}
API cuGraphUpload(CUgraphExec exec, CUstream s) { return exec ? check_stream(s) : kInvalidValue; }
API cuGraphLaunch(CUgraphExec exec, CUstream s) {
    if (!exec) return kInvalidValue;
    if (CUresult r = check_stream(s)) return r;
    if (capturing(s)) return fail(kNotSupported, "launching a graph into a capture is not emulated");
    g_count.graph_launches++;
    for (const Node& n : reinterpret_cast<Graph*>(exec)->nodes) {
        if (CUresult r = run_node(n)) return r;
    }
    return kSuccess;
}
API cuGraphExecDestroy(CUgraphExec exec) {
    delete reinterpret_cast<Graph*>(exec);
    return kSuccess;
}
API cuGraphDestroy(CUgraph graph) {
    delete reinterpret_cast<Graph*>(graph);
    return kSuccess;
}

API cuEventCreate(CUevent* out, unsigned) {
    if (!out) return kInvalidValue;
    *out = reinterpret_cast<CUevent>(new Event());
    return kSuccess;
}
API cuEventDestroy_v2(CUevent e) {
    delete reinterpret_cast<Event*>(e);
    return kSuccess;
}
API cuEventRecord(CUevent e, CUstream s) {
    if (!e) return kInvalidHandle;
    if (CUresult r = check_stream(s)) return r;
    auto* ev = reinterpret_cast<Event*>(e);
    ev->recorded = true;
    ev->t = std::chrono::steady_clock::now();
    return kSuccess;
}
API cuEventRecordWithFlags(CUevent e, CUstream s, unsigned) { return cuEventRecord(e, s); }
API cuEventSynchronize(CUevent e) { return e ? kSuccess : kInvalidHandle; }
API cuEventQuery(CUevent e) { return e ? kSuccess : kInvalidHandle; }
// Host wall time between the events: the emulator's, never a GPU's (the device name says so).
API cuEventElapsedTime(float* ms, CUevent a, CUevent b) {
    if (!ms || !a || !b) return kInvalidValue;
    auto* ea = reinterpret_cast<Event*>(a);
    auto* eb = reinterpret_cast<Event*>(b);
    if (!ea->recorded || !eb->recorded) return kNotReady;
    *ms = std::chrono::duration<float, std::milli>(eb->t - ea->t).count();
    return kSuccess;
}
API cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) { return cuEventElapsedTime(ms, a, b); }

}  // extern "C"
