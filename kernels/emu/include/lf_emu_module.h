// The entry points of one emulated kernel module. build.rs compiles each kernels/<stem>.cu into a
// shared object through a generated translation unit that includes the .cu file, then this header,
// then one LF_EMU_KERNEL(name) per `extern "C" __global__` function it found, then
// LF_EMU_MODULE_END.
#pragma once

#include <dlfcn.h>
#include <link.h>
#include <string.h>

#include <type_traits>
#include <utility>

namespace lf_emu_module {

template <typename... A, size_t... I>
static void call_impl(void* fn, void** params, std::index_sequence<I...>) {
    // cuLaunchKernel's kernelParams[i] points at argument i.
    reinterpret_cast<void (*)(A...)>(fn)(*static_cast<std::remove_cv_t<A>*>(params[I])...);
}
template <typename... A>
static void call(void* fn, void** params) {
    call_impl<A...>(fn, params, std::index_sequence_for<A...>{});
}
template <typename... A>
static const size_t param_sizes[] = {sizeof(A)..., 0};

template <typename... A>
static lf_emu_kernel make(const char* name, void (*fn)(A...)) {
    static_assert((std::is_trivially_copyable<std::remove_cv_t<A>>::value && ...),
                  "kernel parameters are passed by value as bytes");
    return lf_emu_kernel{name, reinterpret_cast<void*>(fn), &call<A...>, sizeof...(A), param_sizes<A...>};
}

// Forces this thread's instance of the module's TLS block to exist.
static thread_local volatile char tls_marker;

struct TlsQuery {
    const char* path;
    void* begin;
    size_t size;
};

static int find_tls(struct dl_phdr_info* info, size_t, void* data) {
    auto* q = static_cast<TlsQuery*>(data);
    if (!info->dlpi_name || strcmp(info->dlpi_name, q->path) != 0) return 0;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        if (info->dlpi_phdr[i].p_type == PT_TLS) {
            q->begin = info->dlpi_tls_data;
            q->size = info->dlpi_phdr[i].p_memsz;
        }
    }
    return 1;
}

}  // namespace lf_emu_module

#define LF_EMU_KERNEL(name) ::lf_emu_module::make(#name, &name),

#define LF_EMU_MODULE_BEGIN static const lf_emu_kernel lf_emu_module_table[] = {
#define LF_EMU_MODULE_END                                                                                        \
    }                                                                                                            \
    ;                                                                                                            \
    extern "C" __attribute__((visibility("default"))) const lf_emu_kernel* lf_emu_kernels(size_t* n) {         \
        *n = sizeof lf_emu_module_table / sizeof lf_emu_module_table[0];                                        \
        return lf_emu_module_table;                                                                              \
    }                                                                                                            \
    /* This thread's instance of the module's TLS block: its static __shared__ variables (the shim  \
       defines __shared__ as thread_local, and nothing else in the module is thread-local). */      \
    extern "C" __attribute__((visibility("default"))) void lf_emu_module_tls(void** begin, size_t* size) {     \
        ::lf_emu_module::tls_marker = 1;                                                                         \
        Dl_info info;                                                                                            \
        ::lf_emu_module::TlsQuery q{nullptr, nullptr, 0};                                                        \
        if (dladdr(reinterpret_cast<void*>(&lf_emu_module_tls), &info)) {                                        \
            q.path = info.dli_fname;                                                                             \
            dl_iterate_phdr(::lf_emu_module::find_tls, &q);                                                      \
        }                                                                                                        \
        *begin = q.begin;                                                                                        \
        *size = q.begin ? q.size : 0;                                                                            \
    }
