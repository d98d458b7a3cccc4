/* C ABI of kernels/random.cu: seeded random fills on the device, for full-size models without
 * checkpoints (`--random-weights`). Element i of a fill depends only on (seed, i): with
 * x = splitmix64(seed ^ (i * 0x9E3779B97F4A7C15)),
 *   lf_random_bytes:      out[i] = byte (i % 8) of splitmix64(seed ^ ((i / 8) * 0x9E3779B97F4A7C15))
 *   lf_random_uniform_*:  out[i] = fma(b, u, a), u = (x >> 40) * 2^-24 in [0, 1), rounded once to
 *                         the output type (bf16: nearest even).
 * CPU twin: backend::random (which materialises the same values on the host). */
#pragma once
#include <stdint.h>

#define LF_RANDOM_THREADS 256

typedef struct {
    int64_t n;     /* elements of out */
    uint64_t seed;
    float a;       /* offset */
    float b;       /* scale of u in [0, 1) */
} LfRandomParams;
