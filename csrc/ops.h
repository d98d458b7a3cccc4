/* C ABI of kernels/ops.cu: element-wise and row-wise ops. Shared by the kernels and, through
 * bindgen, by the Rust launch code, so both sides agree on every field by construction. */
#pragma once
#include <stdint.h>

/* RMSNorm over rows: out[r, :] = w * x[r, :] * rsqrt(mean(x[r, :]^2) + eps). */
typedef struct {
    int32_t rows; /* number of rows of x and out */
    int32_t cols; /* row length = length of w */
    float eps;
} LfRmsNormParams;
