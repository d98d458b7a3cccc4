/* C ABI of kernels/ops_backward.cu: the backward passes of the row-wise and element-wise ops of
 * the decoder (training; f32 storage and math). CPU twins: src/backend/cpu/backward.rs
 * (rms_norm_backward, rope_backward_inplace, silu_mul_backward). Every count is validated by the
 * Rust side (src/backend/cuda/ops_backward.rs) before a launch, as for csrc/ops.h.
 *
 *   lf_rms_norm_bwd_f32(x, w, dy, dx, LfRmsNormBwdParams): the weight frozen,
 *     y = w * x * r, r = rsqrt(mean(x^2) + eps), so
 *     dx = r * (w * dy) - x * r^3 / cols * sum(w * dy * x)          (= or += by `accumulate`)
 *     x, dy, dx: [rows, cols]; w: [cols]. One block per row.
 *   lf_rope_bwd_f32(dq, dk, positions, cos, sin, LfRopeParams): in place, the rotation by -theta
 *     dx[i] = dy[i] * c + dy[i + h] * s,  dx[i + h] = dy[i + h] * c - dy[i] * s
 *     shapes as lf_rope_* (csrc/ops.h). One block per row.
 *   lf_silu_mul_bwd_f32(gate, up, dout, dgate, dup, LfElementwiseParams): out = silu(g) * u, so
 *     dup = dout * silu(g), dgate = dout * u * sigmoid(g) * (1 + g * (1 - sigmoid(g)))
 *     all [n]; dgate and dup are overwritten. Grid-stride. */
#pragma once
#include <stdint.h>

#include "ops.h"

typedef struct {
    int32_t rows;       /* rows of x, dy, dx; the grid's x dimension */
    int32_t cols;       /* row length of x, dy, dx, and length of w */
    float eps;          /* as the forward's */
    int32_t accumulate; /* 0: dx = the gradient; 1: dx += the gradient */
} LfRmsNormBwdParams;
