// Next-token sampling on the device: one block per row of a step's logits, the sampled id of each
// row written to `out`, so a step syncs with the host once, for the ids. The rule (greedy, then
// temperature, top-k, top-p and one seeded draw in index order) is csrc/sampling.h's; the CPU twin
// (backend::sampling::sample_row) follows the same arithmetic in the same order.
//
// Every reduction is in two fixed stages: each thread folds a contiguous chunk of the row, in
// index order, then thread 0 folds the per-thread results in thread order. That is slower than a
// tree but makes every sum the same f32 operations in the same order as the twin's, so the
// thresholds and the draw agree with it exactly (on the emulator; to the last bit of expf on a
// GPU). A row is 32-128K logits: the kernel is a few passes over them, far below the step's cost.

#include <cuda_bf16.h>
#include <float.h>
#include <stdint.h>

#include "common.cuh"
#include "sampling.h"

namespace {

constexpr int NT = LF_SAMPLE_THREADS;

// Float bits whose unsigned order is the float order.
__device__ __forceinline__ uint32_t order_key(float f) {
    const uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

using lf::splitmix64;

// Sum of `v` over the block in the fixed two-stage order; every thread gets it.
__device__ __forceinline__ float block_sum_ordered(float v, float* s_part) {
    s_part[threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.f;
        for (int i = 0; i < NT; ++i) t += s_part[i];
        s_part[NT] = t;
    }
    __syncthreads();
    const float r = s_part[NT];
    __syncthreads();
    return r;
}

// Logit `i` as the rule reads it: -FLT_MAX where `mask` (none: every token allowed) does not
// allow token `i`.
template <typename T>
__device__ __forceinline__ float masked_logit(const T* __restrict__ l, const uint32_t* __restrict__ mask, int i) {
    const float v = lf::to_f(l[i]);
    return (mask == nullptr || ((mask[i >> 5] >> (i & 31)) & 1u)) ? v : -FLT_MAX;
}

template <typename T>
__device__ void sample_row(const T* __restrict__ logits, const LfSampleRow* __restrict__ rows, const uint32_t* __restrict__ masks,
                           uint32_t* __restrict__ out, const LfSampleParams p) {
    __shared__ float s_part[NT + 1];
    __shared__ uint32_t s_idx[NT + 1];
    const int row = blockIdx.x;
    if (row >= p.n_rows) return;  // uniform over the block
    const int vocab = p.vocab;
    const T* l = logits + (int64_t)row * vocab;
    const LfSampleRow r = rows[row];
    const int chunk = (vocab + NT - 1) / NT;
    const int lo = min(vocab, (int)threadIdx.x * chunk);
    const int hi = min(vocab, lo + chunk);
    // The row's mask, if any: a disallowed token reads as -FLT_MAX everywhere below.
    const uint32_t* mask = (masks != nullptr && r.mask_row >= 0) ? masks + (int64_t)r.mask_row * ((vocab + 31) / 32) : nullptr;

    // Largest logit and its first index; and whether the row holds a NaN or an infinity.
    __shared__ int s_bad[NT];
    float best = -INFINITY;
    uint32_t best_i = 0xffffffffu;
    int bad = 0;
    for (int i = lo; i < hi; ++i) {
        bad |= !isfinite(lf::to_f(l[i]));
        const float v = masked_logit(l, mask, i);
        if (best_i == 0xffffffffu || v > best) {
            best = v;
            best_i = (uint32_t)i;
        }
    }
    s_part[threadIdx.x] = best;
    s_idx[threadIdx.x] = best_i;
    s_bad[threadIdx.x] = bad;
    __syncthreads();
    if (threadIdx.x == 0) {
        float m = -INFINITY;
        uint32_t mi = 0xffffffffu;
        int any_bad = 0;
        for (int t = 0; t < NT; ++t) {
            any_bad |= s_bad[t];
            if (s_idx[t] != 0xffffffffu && (mi == 0xffffffffu || s_part[t] > m)) {
                m = s_part[t];
                mi = s_idx[t];
            }
        }
        s_part[NT] = m;
        s_idx[NT] = any_bad ? LF_SAMPLE_NON_FINITE : mi;
    }
    __syncthreads();
    const float mx = s_part[NT];
    const uint32_t argmax = s_idx[NT];
    __syncthreads();
    if (argmax == LF_SAMPLE_NON_FINITE) {  // uniform over the block
        if (threadIdx.x == 0) out[row] = LF_SAMPLE_NON_FINITE;
        return;
    }
    if (r.temperature == 0.f) {
        if (threadIdx.x == 0) out[row] = argmax;
        return;
    }

    // top-k: the largest key threshold that keeps at least k logits.
    uint32_t kth = 0;
    if (r.top_k > 0 && r.top_k < vocab) {
        for (int bit = 31; bit >= 0; --bit) {
            const uint32_t cand = kth | (1u << bit);
            float cnt = 0.f;
            for (int i = lo; i < hi; ++i) cnt += order_key(masked_logit(l, mask, i)) >= cand ? 1.f : 0.f;
            if (block_sum_ordered(cnt, s_part) >= (float)r.top_k) kth = cand;
        }
    }
    const float inv_t = 1.f / r.temperature;
    // Kept mass after top-k.
    float mass = 0.f;
    for (int i = lo; i < hi; ++i) {
        const float v = masked_logit(l, mask, i);
        if (order_key(v) >= kth) mass += expf((v - mx) * inv_t);
    }
    float total = block_sum_ordered(mass, s_part);
    // top-p: the largest weight threshold whose kept mass still reaches top_p of the total.
    uint32_t wth = 0;
    if (r.top_p < 1.f) {
        const float need = r.top_p * total;
        for (int bit = 30; bit >= 0; --bit) {
            const uint32_t cand = wth | (1u << bit);
            float m = 0.f;
            for (int i = lo; i < hi; ++i) {
                const float v = masked_logit(l, mask, i);
                const float w = expf((v - mx) * inv_t);
                if (order_key(v) >= kth && __float_as_uint(w) >= cand) m += w;
            }
            if (block_sum_ordered(m, s_part) >= need) wth = cand;
        }
        mass = 0.f;
        for (int i = lo; i < hi; ++i) {
            const float v = masked_logit(l, mask, i);
            const float w = expf((v - mx) * inv_t);
            if (order_key(v) >= kth && __float_as_uint(w) >= wth) mass += w;
        }
        total = block_sum_ordered(mass, s_part);
    }
    // One draw, located in index order: thread 0 scans the per-thread masses, the owning thread
    // walks its chunk.
    const uint64_t x = splitmix64(r.seed ^ (r.draw * 0x9E3779B97F4A7C15ull));
    const float target = (float)(x >> 40) * (1.f / 16777216.f) * total;
    s_part[threadIdx.x] = mass;
    __syncthreads();
    if (threadIdx.x == 0) {
        float cum = 0.f;
        int owner = -1, last = -1;
        for (int t = 0; t < NT; ++t) {
            if (s_part[t] > 0.f) last = t;
            if (owner < 0 && s_part[t] > 0.f && target < cum + s_part[t]) {
                owner = t;
                s_part[NT] = cum;
            }
            if (owner < 0) cum += s_part[t];
        }
        if (owner < 0) {
            // Rounding left the target at the very end: the last chunk with mass.
            owner = last;
            s_part[NT] = cum - (last >= 0 ? s_part[last] : 0.f);
        }
        s_idx[NT] = (uint32_t)owner;
    }
    __syncthreads();
    if ((int)threadIdx.x == (int)s_idx[NT]) {
        float cum = s_part[NT];
        uint32_t pick = 0xffffffffu;
        for (int i = lo; i < hi; ++i) {
            const float v = masked_logit(l, mask, i);
            const float w = expf((v - mx) * inv_t);
            if (order_key(v) >= kth && __float_as_uint(w) >= wth) {
                pick = (uint32_t)i;
                cum += w;
                if (target < cum) break;
            }
        }
        out[row] = pick == 0xffffffffu ? argmax : pick;
    }
    if (s_idx[NT] == 0xffffffffu && threadIdx.x == 0) out[row] = argmax;  // no mass at all
}

}  // namespace

extern "C" __global__ void __launch_bounds__(NT, 1) lf_sample_f32(const float* __restrict__ logits,      // [n_rows, vocab]
                                                               const LfSampleRow* __restrict__ rows,  // [n_rows]
                                                               const uint32_t* __restrict__ masks,    // [n_masks, ceil(vocab / 32)] or null
                                                               uint32_t* __restrict__ out,            // [n_rows]
                                                               const LfSampleParams p) {
    sample_row(logits, rows, masks, out, p);
}

extern "C" __global__ void __launch_bounds__(NT, 1) lf_sample_bf16(const __nv_bfloat16* __restrict__ logits,  // [n_rows, vocab]
                                                                const LfSampleRow* __restrict__ rows,     // [n_rows]
                                                                const uint32_t* __restrict__ masks,       // [n_masks, ceil(vocab / 32)] or null
                                                                uint32_t* __restrict__ out,               // [n_rows]
                                                                const LfSampleParams p) {
    sample_row(logits, rows, masks, out, p);
}
