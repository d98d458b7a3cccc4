/* C ABI of kernels/ops.cu: element-wise and row-wise ops (RMSNorm, RoPE, SiLU*mul, embedding
 * gather, add). Shared by the kernels and, through bindgen, by the Rust launch code
 * (src/backend/cuda/), so both sides agree on every field by construction.
 *
 * Each kernel takes its device pointers as separate arguments and one of these structs by value.
 * Every count is validated by the Rust side before a launch: positive, within int32 where the
 * type is int32_t, and consistent with the buffer lengths. Offsets inside the kernels are computed
 * in 64 bits, so rows * cols may exceed 2^31.
 *
 * Kernel names: lf_<op>_<dtype>, dtype f32 (f32 storage) or bf16 (bf16 storage, f32 math). */
#pragma once
#include <stdint.h>

/* Width in bytes of the vector loads and stores of every ops.cu kernel: a row (or a flat buffer)
 * takes the vector path when its length is a multiple of LF_OPS_VEC_BYTES / sizeof(element) and
 * its base pointers are 16-byte aligned, the scalar path otherwise. */
#define LF_OPS_VEC_BYTES 16

/* RMSNorm over rows: out[r, :] = w * (x[r, :] * rsqrt(mean(x[r, :]^2) + eps)).
 * x, out: [rows, cols]; w: [cols]. One block per row. */
typedef struct {
    int32_t rows; /* number of rows of x and out; the grid's x dimension */
    int32_t cols; /* row length of x and out, and length of w */
    float eps;    /* added to the mean square before the reciprocal square root, e.g. 1e-5 */
} LfRmsNormParams;

/* Rotary position embedding, rotate-half convention (HF Llama layout), in place on q and k:
 * for each head, with h = head_dim / 2, i < h, c = cos[pos, i], s = sin[pos, i]:
 *   x[i]     = x[i] * c - x[i + h] * s
 *   x[i + h] = x[i + h] * c + x[i] * s
 * q: [rows, n_q_heads * head_dim]; k: [rows, n_k_heads * head_dim]; positions: [rows] uint32;
 * cos, sin: [max_pos, head_dim / 2] f32. One block per row (token). A position >= max_pos
 * (never passed by the Rust side) makes the kernel write NaN into that row instead of reading
 * outside the tables. */
typedef struct {
    int32_t rows;      /* number of tokens: rows of q and k, length of positions */
    int32_t n_q_heads; /* query heads per row of q */
    int32_t n_k_heads; /* key heads per row of k (GQA: fewer than n_q_heads) */
    int32_t head_dim;  /* elements per head; even */
    int32_t max_pos;   /* rows of the cos and sin tables; every position is < max_pos */
} LfRopeParams;

/* Element-wise ops over a flat buffer of n elements:
 *   lf_silu_mul_*: out = silu(gate) * up, silu(g) = g / (1 + exp(-g)); gate, up, out: [n]
 *   lf_add_*:      x += y;                                              x, y: [n]
 *   lf_cast_f32_bf16, lf_cast_bf16_f32: out = in converted (f32 -> bf16 rounds to nearest even,
 *                  bf16 -> f32 is exact);                              in, out: [n]
 * A grid-stride loop covers any n. */
typedef struct {
    int64_t n; /* number of elements of every buffer */
} LfElementwiseParams;

/* Bias add over rows (Qwen2's q/k/v biases after an NF4 product): y[r, c] += bias[c].
 * y: [rows, cols] (f32 or bf16); bias: [cols] f32. Grid-stride over rows * cols. */
typedef struct {
    int64_t n;    /* rows * cols */
    int32_t cols; /* length of bias and of each row of y */
    int32_t reserved;
} LfBiasParams;

/* Embedding gather: out[i, :] = table[ids[i], :].
 * table: [vocab, hidden]; ids: [n_ids] uint32; out: [n_ids, hidden]. One block per id. An id >=
 * vocab (never passed by the Rust side) makes the kernel write NaN into that row of out instead
 * of reading outside the table. */
typedef struct {
    int32_t n_ids;  /* number of ids: rows of out */
    int32_t hidden; /* row length of table and out */
    int32_t vocab;  /* rows of table */
} LfEmbeddingParams;

/* Block sizes the kernels are compiled for (__launch_bounds__) and the launch code may use. */
#define LF_OPS_ROW_THREADS_MAX 1024 /* lf_rms_norm_*: one block per row, a multiple of 32 */
#define LF_OPS_THREADS 256          /* every other ops.cu kernel */
