// The emulator's device memory: every allocation between guard pages, poisoned, with a canary up
// to the next 256-byte boundary; the registry that range-checks copies and names the allocation a
// faulting address belongs to. See driver.cpp for the API that uses it.

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "emu_internal.h"

namespace lf_emu {

Counters g_count;

namespace {
struct Alloc {
    uintptr_t user;
    size_t size;
    size_t slack;  // canary bytes between the end and the guard page
    void* base;
    size_t map_len;
};

std::mutex g_mem_mu;
std::map<uintptr_t, Alloc> g_allocs;  // by user address
std::vector<Alloc> g_freed;            // recent frees (for "use after free" reports), a ring
size_t g_freed_next = 0;
size_t g_allocated = 0;

size_t page_size() { return (size_t)sysconf(_SC_PAGESIZE); }

}  // namespace

size_t meminfo_bytes(const char* key) {
    FILE* f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    size_t kb = 0;
    const size_t klen = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            kb = strtoull(line + klen + 1, nullptr, 10);
            break;
        }
    }
    fclose(f);
    return kb * 1024;
}

size_t device_total() {
    static const size_t total = [] {
        if (const char* v = getenv("LORAFLEET_EMU_DEVICE_MEMORY")) {
            const size_t n = strtoull(v, nullptr, 10);
            if (n > 0) return n;
        }
        // A small device: a quarter of the host's RAM, at most 2 GiB (every byte of it is real
        // host memory once written, and sizes defaulted from free memory must stay modest).
        const size_t host = meminfo_bytes("MemTotal");
        const size_t cap = (size_t)2 << 30;
        return host ? std::min(host / 4, cap) : cap;
    }();
    return total;
}

namespace {

bool guard_at_start() {
    static const bool s = [] {
        const char* v = getenv("LORAFLEET_EMU_GUARD");
        return v && strcmp(v, "start") == 0;
    }();
    return s;
}

bool poison_enabled() {
    static const bool p = [] {
        const char* v = getenv("LORAFLEET_EMU_POISON");
        return !(v && strcmp(v, "0") == 0);
    }();
    return p;
}

// Allocation alignment: CUDA's 256 bytes (the default: code picks vector paths by pointer
// alignment), or "tight" (LORAFLEET_EMU_ALIGN=tight, or lf_emu_set_tight_alignment): the largest
// power of two, at most 256, dividing the size, so that every buffer ends exactly at its guard page.
std::atomic<int> g_tight_alignment{-1};
bool tight_alignment() {
    int t = g_tight_alignment.load();
    if (t < 0) {
        const char* v = getenv("LORAFLEET_EMU_ALIGN");
        t = v && strcmp(v, "tight") == 0;
        g_tight_alignment.store(t);
    }
    return t != 0;
}

constexpr unsigned char kCanary = 0xff;

// The live allocation holding [p, p + n), or null. Under g_mem_mu.
const Alloc* find_range(uintptr_t p, size_t n) {
    auto it = g_allocs.upper_bound(p);
    if (it == g_allocs.begin()) return nullptr;
    --it;
    const Alloc& a = it->second;
    if (p >= a.user && p + n <= a.user + a.size && p + n >= p) return &a;
    return nullptr;
}

}  // namespace

void set_tight_alignment(bool tight) { g_tight_alignment.store(tight); }

size_t device_used() {
    std::lock_guard<std::mutex> g(g_mem_mu);
    return g_allocated;
}

// A new allocation between two guard pages. Its end touches the upper guard page, up to the
// alignment (its start touches the lower one under LORAFLEET_EMU_GUARD=start): an access past
// the end faults, except within the few bytes between an end and the next 256-byte boundary,
// which hold a canary that every launch checks afterwards (a write there fails the launch; a read
// there returns the poison pattern).
int device_alloc(DevPtr* out, size_t size) {
    if (!out) return fail(kInvalidValue, "cuMemAlloc: null result pointer");
    if (size == 0) return fail(kInvalidValue, "cuMemAlloc of 0 bytes");
    const size_t page = page_size();
    {
        std::lock_guard<std::mutex> g(g_mem_mu);
        if (size > device_total() - std::min(g_allocated, device_total())) {
            return fail(kOutOfMemory, "cuMemAlloc of %zu bytes: %zu of the emulated device's %zu bytes are in use", size,
                        g_allocated, device_total());
        }
    }
    size_t align = 256;
    if (tight_alignment()) {
        align = size & (~size + 1);
        if (align > 256) align = 256;
    }
    const size_t data_pages = (size + align + page - 1) / page;
    const size_t map_len = (data_pages + 2) * page;
    void* base = mmap(nullptr, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) return fail(kOutOfMemory, "cuMemAlloc of %zu bytes: mmap failed", size);
    auto* b = static_cast<unsigned char*>(base);
    mprotect(b, page, PROT_NONE);
    mprotect(b + map_len - page, page, PROT_NONE);
    const uintptr_t guard = (uintptr_t)(b + map_len - page);
    const uintptr_t user = guard_at_start() ? (uintptr_t)(b + page) : ((guard - size) & ~(uintptr_t)(align - 1));
    const size_t slack = guard_at_start() ? 0 : guard - (user + size);
    if (poison_enabled()) memset((void*)user, 0xff, size);
    if (slack) memset((void*)(user + size), kCanary, slack);
    {
        std::lock_guard<std::mutex> g(g_mem_mu);
        g_allocs[user] = Alloc{user, size, slack, base, map_len};
        g_allocated += size;
    }
    g_count.allocs++;
    *out = user;
    return kSuccess;
}

// After a launch: the canary bytes past the end of every allocation the launch was given a
// pointer into (`ptrs`, the 8-byte words of its parameters) must be intact. Describes the first
// overwritten one (and restores it), or returns an empty string. Only those allocations: launches
// of other threads may be in flight between one launch and its check.
std::string check_canaries(const std::vector<uintptr_t>& ptrs) {
    std::lock_guard<std::mutex> g(g_mem_mu);
    for (uintptr_t p : ptrs) {
        auto it = g_allocs.upper_bound(p);
        if (it == g_allocs.begin()) continue;
        const Alloc& a = std::prev(it)->second;
        if (p < a.user || p >= a.user + a.size + a.slack) continue;
        const auto* c = reinterpret_cast<unsigned char*>(a.user + a.size);
        for (size_t i = 0; i < a.slack; ++i) {
            if (c[i] != kCanary) {
                char buf[256];
                snprintf(buf, sizeof buf, "invalid write at 0x%lx: %zu bytes past the end of a %zu-byte device allocation at 0x%lx "
                         "(found after the launch, in the bytes before the next 256-byte boundary)",
                         (unsigned long)(a.user + a.size + i), i, a.size, (unsigned long)a.user);
                memset(const_cast<unsigned char*>(c), kCanary, a.slack);
                return buf;
            }
        }
    }
    return std::string();
}

int device_free(DevPtr p) {
    std::unique_lock<std::mutex> g(g_mem_mu);
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end()) {
        g.unlock();
        return fail(kInvalidValue, "cuMemFree of 0x%llx, which is not the start of a live allocation", p);
    }
    const Alloc a = it->second;
    g_allocs.erase(it);
    g_allocated -= a.size;
    munmap(a.base, a.map_len);
    if (g_freed.size() < 4096) {
        g_freed.push_back(a);
    } else {
        g_freed[g_freed_next] = a;
        g_freed_next = (g_freed_next + 1) % g_freed.size();
    }
    g_count.frees++;
    return kSuccess;
}

int check_device_range(const char* op, DevPtr p, size_t n) {
    std::unique_lock<std::mutex> g(g_mem_mu);
    if (n == 0) return kSuccess;
    if (find_range((uintptr_t)p, n)) return kSuccess;
    g.unlock();
    const std::string where = describe_address((uintptr_t)p);
    return fail(kInvalidValue, "%s: device range [0x%llx, +%zu) is not inside one live allocation (its start: %s)", op, p, n,
                where.c_str());
}

std::string describe_address(uintptr_t addr) {
    std::lock_guard<std::mutex> g(g_mem_mu);
    char buf[256];
    auto it = g_allocs.upper_bound(addr);
    const Alloc* best = nullptr;
    if (it != g_allocs.end()) {
        const Alloc& a = it->second;
        if (addr >= (uintptr_t)a.base) best = &a;
    }
    if (!best && it != g_allocs.begin()) {
        const Alloc& a = std::prev(it)->second;
        if (addr < (uintptr_t)a.base + a.map_len) best = &a;
    }
    if (best) {
        const Alloc& a = *best;
        if (addr >= a.user + a.size) {
            snprintf(buf, sizeof buf, "%zu bytes past the end of a %zu-byte device allocation at 0x%lx",
                     (size_t)(addr - (a.user + a.size)), a.size, (unsigned long)a.user);
        } else if (addr < a.user) {
            snprintf(buf, sizeof buf, "%zu bytes before the start of a %zu-byte device allocation at 0x%lx",
                     (size_t)(a.user - addr), a.size, (unsigned long)a.user);
        } else {
            snprintf(buf, sizeof buf, "byte %zu of a %zu-byte device allocation at 0x%lx", (size_t)(addr - a.user), a.size,
                     (unsigned long)a.user);
        }
        return buf;
    }
    for (const Alloc& a : g_freed) {
        if (addr >= (uintptr_t)a.base && addr < (uintptr_t)a.base + a.map_len) {
            snprintf(buf, sizeof buf, "inside a freed %zu-byte device allocation at 0x%lx (use after free)", a.size,
                     (unsigned long)a.user);
            return buf;
        }
    }
    return "not in any device allocation (a host pointer, null, or a wild address)";
}

}  // namespace lf_emu
