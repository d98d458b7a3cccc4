// The emulator's device runtime: a block's threads as cooperative fibers on one worker thread,
// blocks on a small persistent pool of workers, barriers and warp collectives with their checks,
// poisoned shared memory, and memory faults turned into a failed launch that names the kernel.
// See include/lf_emu_runtime.h for the model.

#include <dlfcn.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "emu_internal.h"

#if !defined(__x86_64__)
#error "the CUDA emulator's fiber switch is written for x86-64"
#endif

// ---- fiber context switch (x86-64 System V) ----------------------------------------------------
// lf_emu_switch(save, load): saves the callee-saved registers, MXCSR and the x87 control word on
// the current stack, stores the stack pointer in *save, switches to `load` and restores the same
// from there. lf_emu_fiber_entry is where a new fiber starts: r12 holds its Fiber*, r13 the
// function to call with it.
asm(R"(
    .text
    .p2align 4
    .globl lf_emu_switch
    .hidden lf_emu_switch
    .type lf_emu_switch,@function
lf_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size lf_emu_switch, .-lf_emu_switch

    .p2align 4
    .globl lf_emu_fiber_entry
    .hidden lf_emu_fiber_entry
    .type lf_emu_fiber_entry,@function
lf_emu_fiber_entry:
    movq %r12, %rdi
    andq $-16, %rsp
    callq *%r13
    ud2
    .size lf_emu_fiber_entry, .-lf_emu_fiber_entry
)");
extern "C" void lf_emu_switch(void** save, void* load);
extern "C" void lf_emu_fiber_entry();

namespace lf_emu {

thread_local Fiber* tls_fiber __attribute__((tls_model("initial-exec"))) = nullptr;

namespace {

enum FiberState : uint32_t { kReady, kAtBarrier, kAtWarp, kDone, kFailed };

size_t page_size() {
    static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

size_t env_size(const char* name, size_t dflt, size_t lo, size_t hi) {
    const char* v = getenv(name);
    if (!v || !*v) return dflt;
    char* end = nullptr;
    const unsigned long long x = strtoull(v, &end, 10);
    if (*end || x < lo || x > hi) {
        log_line(true, "%s=%s is not a number in [%zu, %zu]; using %zu", name, v, lo, hi, dflt);
        return dflt;
    }
    return (size_t)x;
}

uint64_t splitmix64(uint64_t& s) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// A warp's collective in progress: the first lane to arrive sets it up, the last completes it.
struct WarpState {
    bool active = false;
    const char* name = nullptr;
    const char* file = nullptr;
    int line = 0;
    unsigned mask = 0, arrived = 0;
    WarpCompleteFn complete = nullptr;
    const void* arg = nullptr;
};

struct Launch;

// Per OS worker thread: fiber stacks, the scheduler's context, fault recovery.
struct Worker {
    void* sched_sp = nullptr;
    char* stacks = nullptr;  // kMaxThreadsPerBlock stacks, each below a guard page
    size_t stack_bytes = 0;
    std::vector<Fiber> fibers;
    std::vector<Fiber*> order;
    WarpState warps[kMaxThreadsPerBlock / kWarpSize];
    Block block{};
    Launch* launch = nullptr;
    uint32_t nthreads = 0;
    // The running block's seeded generator: the scheduler's order, and which warp-mate a lane hands
    // over to at a collective.
    uint64_t rng = 0;
    // Failure of the running block, and the thread that failed.
    const Fiber* fail_fiber = nullptr;
    bool failed = false;
    int fail_code = 0;
    std::string fail_message;
    // Fault recovery.
    sigjmp_buf fault_jmp;
    volatile sig_atomic_t in_kernel = 0;
    uintptr_t fault_addr = 0;
    bool fault_write = false;
    bool fault_stack = false;
    // Dynamic shared memory: a region whose end touches a guard page.
    unsigned char* dyn_region = nullptr;
    size_t dyn_region_bytes = 0;
    // Static shared memory of the running module (this thread's instance of its TLS).
    const Module* tls_module = nullptr;
    unsigned char* tls_begin = nullptr;
    size_t tls_bytes = 0;
    struct TlsCache {
        const Module* m;
        unsigned char* begin;
        size_t bytes;
    };
    std::vector<TlsCache> tls_cache;
};

thread_local Worker* tls_worker __attribute__((tls_model("initial-exec"))) = nullptr;

struct Launch {
    LaunchSpec spec;
    uint64_t seq = 0;
    uint64_t seed = 0;
    uint64_t nblocks = 0;
    std::atomic<uint64_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex mu;
    LaunchResult result;  // first failure
};

void fail_launch(Launch& l, int code, const std::string& msg) {
    std::lock_guard<std::mutex> g(l.mu);
    if (!l.failed.load()) {
        l.result.code = code;
        l.result.message = msg;
        l.failed.store(true);
    }
}

// ---- fibers -------------------------------------------------------------------------------------

[[noreturn]] void fiber_yield_forever(Fiber* f) {
    lf_emu_switch(&f->sp, tls_worker->sched_sp);
    __builtin_unreachable();
}

void fiber_main(Fiber* f) {
    Worker& w = *tls_worker;
    const LaunchSpec& s = w.launch->spec;
    s.fn->kernel->call(s.fn->kernel->fn, s.params);
    f->state = kDone;
    fiber_yield_forever(f);
}

void yield_to_scheduler(Fiber* f) { lf_emu_switch(&f->sp, tls_worker->sched_sp); }

void resume(Worker& w, Fiber* f) {
    tls_fiber = f;
    lf_emu_switch(&w.sched_sp, f->sp);
    tls_fiber = nullptr;
}

// The initial frame of a fiber: what lf_emu_switch pops, then lf_emu_fiber_entry as the return
// address.
void init_fiber_stack(Worker& w, Fiber* f, uint32_t i) {
    char* top = w.stacks + (size_t)(i + 1) * w.stack_bytes;  // stacks grow down to their guard page
    uintptr_t sp = ((uintptr_t)top - 16) & ~(uintptr_t)15;
    uint64_t* frame = reinterpret_cast<uint64_t*>(sp) - 9;
    uint32_t mxcsr = 0;
    uint16_t fpucw = 0;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    frame[0] = (uint64_t)mxcsr | ((uint64_t)fpucw << 32);
    frame[1] = 0;                                   // r15
    frame[2] = 0;                                   // r14
    frame[3] = (uint64_t)(uintptr_t)&fiber_main;   // r13
    frame[4] = (uint64_t)(uintptr_t)f;             // r12
    frame[5] = 0;                                   // rbx
    frame[6] = 0;                                   // rbp
    frame[7] = (uint64_t)(uintptr_t)&lf_emu_fiber_entry;
    frame[8] = 0;
    f->sp = frame;
}

// ---- per-worker set-up ------------------------------------------------------------------------

void worker_init(Worker& w) {
    const size_t page = page_size();
    w.stack_bytes = env_size("LORAFLEET_EMU_STACK_KB", 128, 16, 65536) * 1024;
    w.stack_bytes = (w.stack_bytes + page - 1) / page * page + page;  // + the guard page at the bottom
    const size_t total = w.stack_bytes * kMaxThreadsPerBlock;
    void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        log_line(true, "cannot map %zu bytes of fiber stacks", total);
        abort();
    }
    w.stacks = static_cast<char*>(m);
    for (int i = 0; i < kMaxThreadsPerBlock; ++i) mprotect(w.stacks + (size_t)i * w.stack_bytes, page, PROT_NONE);
    w.fibers.resize(kMaxThreadsPerBlock);
    w.order.reserve(kMaxThreadsPerBlock);
    // Dynamic shared memory, up to the opt-in limit, ending at a guard page.
    w.dyn_region_bytes = ((size_t)kMaxSharedOptin + page - 1) / page * page;
    constexpr size_t kDynGuard = 64 * 1024;  // an overrun up to 64 KiB past the end faults
    m = mmap(nullptr, w.dyn_region_bytes + kDynGuard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        log_line(true, "cannot map the dynamic shared memory");
        abort();
    }
    w.dyn_region = static_cast<unsigned char*>(m);
    mprotect(w.dyn_region + w.dyn_region_bytes, kDynGuard, PROT_NONE);
    // The fault handler runs on an alternate stack (a fiber's own may be what overflowed).
    stack_t ss{};
    ss.ss_size = 64 * 1024;
    ss.ss_sp = malloc(ss.ss_size);
    ss.ss_flags = 0;
    sigaltstack(&ss, nullptr);
}

// This worker's instance of module m's thread-local storage (its static __shared__ variables).
void bind_module_tls(Worker& w, const Module* m) {
    if (w.tls_module == m) return;
    for (const auto& c : w.tls_cache) {
        if (c.m == m) {
            w.tls_module = m;
            w.tls_begin = c.begin;
            w.tls_bytes = c.bytes;
            return;
        }
    }
    void* b = nullptr;
    size_t n = 0;
    if (m->module_tls) m->module_tls(&b, &n);
    w.tls_cache.push_back({m, static_cast<unsigned char*>(b), n});
    w.tls_module = m;
    w.tls_begin = static_cast<unsigned char*>(b);
    w.tls_bytes = n;
}

// ---- faults -------------------------------------------------------------------------------------

struct sigaction g_old_segv, g_old_bus;

void on_fault(int sig, siginfo_t* si, void* uctx) {
    Worker* w = tls_worker;
    if (w && w->in_kernel) {
        w->in_kernel = 0;
        w->fault_addr = (uintptr_t)si->si_addr;
        const ucontext_t* uc = static_cast<const ucontext_t*>(uctx);
        w->fault_write = (uc->uc_mcontext.gregs[REG_ERR] & 2) != 0;
        const uintptr_t a = w->fault_addr;
        const uintptr_t lo = (uintptr_t)w->stacks, hi = lo + w->stack_bytes * kMaxThreadsPerBlock;
        w->fault_stack = a >= lo && a < hi && ((a - lo) % w->stack_bytes) < page_size();
        siglongjmp(w->fault_jmp, 1);
    }
    // Not ours: hand it to whoever handled it before (Rust's stack-overflow handler, the default).
    const struct sigaction& old = sig == SIGBUS ? g_old_bus : g_old_segv;
    if (old.sa_flags & SA_SIGINFO) {
        if (old.sa_sigaction) {
            old.sa_sigaction(sig, si, uctx);
            return;
        }
    } else if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN) {
        old.sa_handler(sig);
        return;
    }
    signal(sig, SIG_DFL);  // returning re-executes the access, which now terminates the process
}

void install_fault_handler() {
    struct sigaction sa{};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
}

std::string where(const Worker& w, const Fiber* f) {
    char buf[256];
    snprintf(buf, sizeof buf, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u)", w.block.kernel, w.block.idx.x,
             w.block.idx.y, w.block.idx.z, f ? f->tid.x : 0, f ? f->tid.y : 0, f ? f->tid.z : 0);
    return buf;
}

// ---- blocks -------------------------------------------------------------------------------------

std::string lanes_str(unsigned m) {
    std::string s;
    for (int l = 0; l < kWarpSize; ++l) {
        if (m & (1u << l)) {
            if (!s.empty()) s += ",";
            s += std::to_string(l);
        }
    }
    return s.empty() ? "none" : s;
}

// Nothing can run and the block has not finished: a divergent barrier or a collective some lanes
// never reach. Describes it.
std::string describe_stall(Worker& w) {
    uint32_t done = 0, at_barrier = 0;
    const Fiber* barrier_fiber = nullptr;
    for (uint32_t i = 0; i < w.nthreads; ++i) {
        const Fiber& f = w.fibers[i];
        if (f.state == kDone) ++done;
        if (f.state == kAtBarrier) {
            ++at_barrier;
            barrier_fiber = &f;
        }
    }
    char buf[512];
    std::string msg;
    if (at_barrier > 0) {
        snprintf(buf, sizeof buf,
                 "divergent __syncthreads: %u of %u threads wait at %s:%d (thread %u first), %u returned without "
                 "reaching it",
                 at_barrier, w.nthreads, barrier_fiber->site_file, barrier_fiber->site_line, barrier_fiber->linear, done);
        msg = buf;
    }
    for (uint32_t wi = 0; wi < (w.nthreads + kWarpSize - 1) / kWarpSize; ++wi) {
        const WarpState& ws = w.warps[wi];
        if (!ws.active) continue;
        unsigned missing = ws.mask & ~ws.arrived;
        std::string why;
        for (int l = 0; l < kWarpSize; ++l) {
            if (!(missing & (1u << l))) continue;
            const uint32_t t = wi * kWarpSize + l;
            if (t >= w.nthreads) continue;
            const Fiber& f = w.fibers[t];
            snprintf(buf, sizeof buf, " lane %d %s;", l,
                     f.state == kDone        ? "returned"
                     : f.state == kAtBarrier ? "waits at __syncthreads"
                                             : "waits at another collective");
            why += buf;
        }
        snprintf(buf, sizeof buf, "%swarp %u waits at %s (%s:%d) with mask 0x%08x: lanes %s never arrive:%s",
                 msg.empty() ? "" : "; ", wi, ws.name, ws.file, ws.line, ws.mask, lanes_str(missing).c_str(), why.c_str());
        msg += buf;
    }
    if (msg.empty()) msg = "the block's threads stopped making progress";
    return msg;
}

// Runs block `linear` of the launch on this worker. Returns false if it failed (recorded in the
// launch).
bool run_block(Worker& w, Launch& l, uint64_t linear) {
    const LaunchSpec& s = l.spec;
    w.launch = &l;
    w.block.dim = s.block;
    w.block.grid = s.grid;
    w.block.idx = uint3{(unsigned)(linear % s.grid.x), (unsigned)((linear / s.grid.x) % s.grid.y),
                        (unsigned)(linear / ((uint64_t)s.grid.x * s.grid.y))};
    w.block.kernel = s.fn->kernel->name;
    w.nthreads = s.block.x * s.block.y * s.block.z;
    w.failed = false;
    w.fail_message.clear();
    for (auto& ws : w.warps) ws = WarpState{};

    // Poison shared memory: static (this module's TLS) and dynamic.
    bind_module_tls(w, s.fn->module);
    if (w.tls_begin) memset(w.tls_begin, 0xff, w.tls_bytes);
    const size_t dyn = (s.dyn_smem + 15) / 16 * 16;
    w.block.dyn_smem = w.dyn_region + w.dyn_region_bytes - dyn;
    w.block.dyn_smem_bytes = s.dyn_smem;
    if (dyn) memset(w.block.dyn_smem, 0xff, dyn);

    for (uint32_t i = 0; i < w.nthreads; ++i) {
        Fiber& f = w.fibers[i];
        f.tid = uint3{i % s.block.x, (i / s.block.x) % s.block.y, i / (s.block.x * s.block.y)};
        f.linear = i;
        f.lane = i % kWarpSize;
        f.warp = i / kWarpSize;
        f.state = kReady;
        f.site_file = nullptr;
        f.site_line = 0;
        f.block = &w.block;
        init_fiber_stack(w, &f, i);
    }
    w.rng = l.seed ^ (l.seq * 0x9e3779b97f4a7c15ull) ^ (linear * 0xd1b54a32d192ed03ull);
    w.fail_fiber = nullptr;

    if (sigsetjmp(w.fault_jmp, 1)) {
        const Fiber* f = tls_fiber;
        tls_fiber = nullptr;
        std::string msg;
        int code = kIllegalAddress;
        char buf[128];
        if (w.fault_stack) {
            code = kHardwareStackError;
            snprintf(buf, sizeof buf, "stack overflow (fiber stacks are %zu KiB: LORAFLEET_EMU_STACK_KB)",
                     (w.stack_bytes - page_size()) / 1024);
            msg = buf;
        } else {
            snprintf(buf, sizeof buf, "invalid %s at 0x%lx: ", w.fault_write ? "write" : "read",
                     (unsigned long)w.fault_addr);
            msg = buf + describe_address(w.fault_addr);
        }
        fail_launch(l, code, where(w, f) + ": " + msg);
        return false;
    }
    w.in_kernel = 1;
    for (;;) {
        w.order.clear();
        for (uint32_t i = 0; i < w.nthreads; ++i) {
            if (w.fibers[i].state == kReady) w.order.push_back(&w.fibers[i]);
        }
        if (w.order.empty()) {
            uint32_t done = 0, at_barrier = 0;
            for (uint32_t i = 0; i < w.nthreads; ++i) {
                done += w.fibers[i].state == kDone;
                at_barrier += w.fibers[i].state == kAtBarrier;
            }
            if (done == w.nthreads) break;
            if (at_barrier == w.nthreads) {
                // Everyone arrived: the same __syncthreads for all, or it is divergent.
                const Fiber& f0 = w.fibers[0];
                for (uint32_t i = 1; i < w.nthreads; ++i) {
                    const Fiber& f = w.fibers[i];
                    if (f.site_line != f0.site_line || strcmp(f.site_file, f0.site_file) != 0) {
                        char buf[512];
                        snprintf(buf, sizeof buf,
                                 "divergent __syncthreads: thread %u waits at %s:%d, thread %u at %s:%d", f0.linear,
                                 f0.site_file, f0.site_line, f.linear, f.site_file, f.site_line);
                        w.in_kernel = 0;
                        fail_launch(l, kLaunchFailed, where(w, &f) + ": " + buf);
                        return false;
                    }
                }
                for (uint32_t i = 0; i < w.nthreads; ++i) w.fibers[i].state = kReady;
                continue;
            }
            w.in_kernel = 0;
            fail_launch(l, kLaunchFailed, where(w, nullptr) + ": " + describe_stall(w));
            return false;
        }
        // A seeded random order between synchronisation points: a missing barrier shows.
        for (size_t i = w.order.size(); i > 1; --i) std::swap(w.order[i - 1], w.order[splitmix64(w.rng) % i]);
        for (Fiber* f : w.order) {
            if (f->state != kReady) continue;
            resume(w, f);
            if (w.failed) {
                w.in_kernel = 0;
                fail_launch(l, w.fail_code, where(w, w.fail_fiber ? w.fail_fiber : f) + ": " + w.fail_message);
                return false;
            }
        }
    }
    w.in_kernel = 0;
    return true;
}

// ---- the worker pool ----------------------------------------------------------------------------

struct Pool {
    std::mutex launch_mu;  // one launch at a time
    std::mutex mu;
    std::condition_variable cv_work, cv_done;
    Launch* current = nullptr;
    uint64_t generation = 0;
    int busy = 0;
    int nworkers = 0;
    std::vector<std::thread> threads;
};

Pool& pool() {
    static Pool* p = [] {
        auto* p = new Pool();
        install_fault_handler();
        const size_t hw = std::max(1u, std::thread::hardware_concurrency());
        p->nworkers = (int)env_size("LORAFLEET_EMU_WORKERS", std::min<size_t>(hw, 8), 1, 256);
        for (int i = 0; i < p->nworkers; ++i) {
            p->threads.emplace_back([p] {
                auto* w = new Worker();  // lives as long as the process
                worker_init(*w);
                tls_worker = w;
                uint64_t seen = 0;
                for (;;) {
                    Launch* l;
                    {
                        std::unique_lock<std::mutex> g(p->mu);
                        p->cv_work.wait(g, [&] { return p->generation != seen; });
                        seen = p->generation;
                        l = p->current;
                    }
                    for (;;) {
                        if (l->failed.load()) break;
                        const uint64_t b = l->next.fetch_add(1);
                        if (b >= l->nblocks) break;
                        run_block(*w, *l, b);
                    }
                    std::lock_guard<std::mutex> g(p->mu);
                    if (--p->busy == 0) p->cv_done.notify_all();
                }
            });
            p->threads.back().detach();
        }
        return p;
    }();
    return *p;
}

std::atomic<uint64_t> g_launch_seq{0};

}  // namespace

// ---- the interface of include/lf_emu_runtime.h ------------------------------------------------------

void syncthreads(const char* file, int line) {
    Fiber* f = tls_fiber;
    f->site_file = file;
    f->site_line = line;
    f->state = kAtBarrier;
    yield_to_scheduler(f);
}

[[noreturn]] void device_error(const char* fmt, ...) {
    Fiber* f = tls_fiber;
    Worker& w = *tls_worker;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    w.failed = true;
    w.fail_fiber = f;
    w.fail_code = kLaunchFailed;
    w.fail_message = buf;
    f->state = kFailed;
    fiber_yield_forever(f);
}

const void* warp_collective(const char* name, const char* file, int line, unsigned mask, const void* payload, size_t n,
                            WarpCompleteFn complete, const void* arg) {
    Fiber* f = tls_fiber;
    Worker& w = *tls_worker;
    const uint32_t first = f->warp * kWarpSize;
    const uint32_t width = std::min<uint32_t>(kWarpSize, w.nthreads - first);
    const unsigned exists = width == kWarpSize ? 0xffffffffu : ((1u << width) - 1u);
    if (!(mask & (1u << f->lane))) {
        device_error("%s at %s:%d: lane %u executes it with mask 0x%08x, which does not name it", name, file, line, f->lane,
                     mask);
    }
    if (mask & ~exists) {
        device_error("%s at %s:%d: mask 0x%08x names lanes %s, which warp %u does not have (it has %u threads)", name, file,
                     line, mask, lanes_str(mask & ~exists).c_str(), f->warp, width);
    }
    if (n > kWarpPayload) device_error("%s: payload of %zu bytes", name, n);
    WarpState& ws = w.warps[f->warp];
    if (ws.active) {
        if ((ws.name != name && strcmp(ws.name, name) != 0) || ws.mask != mask) {
            device_error("warp %u: lane %u reaches %s (%s:%d) with mask 0x%08x while lanes %s wait at %s (%s:%d) with mask "
                         "0x%08x",
                         f->warp, f->lane, name, file, line, mask, lanes_str(ws.arrived).c_str(), ws.name, ws.file, ws.line,
                         ws.mask);
        }
    } else {
        ws = WarpState{true, name, file, line, mask, 0u, complete, arg};
    }
    if (n) memcpy(f->payload, payload, n);
    f->site_file = file;
    f->site_line = line;
    ws.arrived |= 1u << f->lane;
    if (ws.arrived == mask) {
        Fiber* lanes[kWarpSize];
        for (int l = 0; l < kWarpSize; ++l) lanes[l] = (mask & (1u << l)) ? &w.fibers[first + l] : nullptr;
        const WarpCompleteFn fn = ws.complete;
        const void* a = ws.arg;  // on the first lane's stack, which waits in this collective
        fn(lanes, mask, a);
        ws.active = false;
        for (int l = 0; l < kWarpSize; ++l) {
            if (lanes[l] && lanes[l] != f) lanes[l]->state = kReady;
        }
        return f->result;
    }
    f->state = kAtWarp;
    // Warp-synchronous fast path: hand the OS thread straight to a warp-mate that has yet to
    // arrive (one chosen at random from the seeded generator), instead of a round trip through
    // the block's scheduler. Whoever switches into a fiber sets tls_fiber to it first.
    Fiber* next = nullptr;
    unsigned pending = mask & ~ws.arrived;
    const unsigned r = (unsigned)(splitmix64(w.rng) & 31u);
    while (pending) {
        // The first pending lane at or after a random lane, cyclically.
        const unsigned rot = r ? ((pending >> r) | (pending << (32u - r))) : pending;
        const unsigned lane = (__builtin_ctz(rot) + r) & 31u;
        Fiber* g = &w.fibers[first + lane];
        if (g->state == kReady) {
            next = g;
            break;
        }
        pending &= ~(1u << lane);
    }
    if (next) {
        tls_fiber = next;
        lf_emu_switch(&f->sp, next->sp);
    } else {
        yield_to_scheduler(f);
    }
    return f->result;
}

bool is_shared(const void* p, size_t n) {
    const Worker* w = tls_worker;
    const auto* a = static_cast<const unsigned char*>(p);
    if (w->tls_begin && a >= w->tls_begin && a + n <= w->tls_begin + w->tls_bytes) return true;
    const unsigned char* d = w->block.dyn_smem;
    return d && a >= d && a + n <= d + w->block.dyn_smem_bytes;
}

LaunchResult run_grid(const LaunchSpec& spec) {
    Pool& p = pool();
    std::lock_guard<std::mutex> one_at_a_time(p.launch_mu);
    Launch l;
    l.spec = spec;
    l.seq = g_launch_seq.fetch_add(1);
    l.seed = env_size("LORAFLEET_EMU_SEED", 0x5eed, 0, ~(size_t)0);
    l.nblocks = (uint64_t)spec.grid.x * spec.grid.y * spec.grid.z;
    {
        std::unique_lock<std::mutex> g(p.mu);
        p.current = &l;
        p.busy = p.nworkers;
        ++p.generation;
        p.cv_work.notify_all();
        p.cv_done.wait(g, [&] { return p.busy == 0; });
        p.current = nullptr;
    }
    return l.result;
}

void log_line(bool always, const char* fmt, ...) {
    static const bool verbose = [] {
        const char* v = getenv("LORAFLEET_EMU_VERBOSE");
        return v && strcmp(v, "1") == 0;
    }();
    if (!always && !verbose) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "lorafleet CUDA emulator: %s\n", buf);
}

}  // namespace lf_emu
