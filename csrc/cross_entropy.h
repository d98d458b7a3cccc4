/* C ABI of kernels/cross_entropy.cu: cross-entropy fused with the (frozen) lm_head over the rows
 * that carry a label, chunked over the vocabulary so the [rows, vocab] logits never exist; f32.
 * CPU twin: backend::cpu::backward::cross_entropy_lm_head (the same online-softmax recurrence).
 *
 *   h: [rows, hidden] (final-norm output of the labelled rows), w: [vocab, hidden] (lm_head),
 *   targets, weights: [rows]. Per row the running max m, z = sum exp(logit - m) and
 *   S = sum exp(logit - m) w_v ([hidden]) give loss = m + ln z - logit[target] and
 *   dh = weight * (S / z - w_target).
 *
 * Per chunk of `chunk` vocabulary rows starting at v0 (the Rust side loops):
 *   lf_ce_logits_f32(h, w + v0 * hidden, e, LfGemmParams{m = rows, n = chunk, k = hidden}):
 *     e [rows, chunk] = h W_c^T (tiled SGEMM, "NT").
 *   lf_ce_chunk_f32(e, targets, m, z, rescale, target_logit, LfCeParams): one block per row:
 *     m' = max(m, max e), rescale = exp(m - m'), z = z * rescale + sum exp(e - m'),
 *     e = exp(e - m') in place, target_logit = e[target - v0] before that when the target is in
 *     the chunk.
 *   lf_ce_accumulate_f32(e, w + v0 * hidden, s, rescale, LfGemmParams{m = rows, n = hidden,
 *     k = chunk}): S [rows, hidden] = rescale[row] * S + e W_c (tiled SGEMM, "NN").
 * Then lf_ce_finish_f32(w, targets, weights, m, z, target_logit, s -> dh in place, loss,
 *   LfCeParams): loss[row] = weights[row] * (m + ln z - target_logit), dh as above. One block
 *   per row.
 *
 * m starts at -inf, z and S at 0. Every count is validated by the Rust side
 * (src/backend/cuda/cross_entropy.rs): positive and within int32, targets < vocab, weights
 * finite, every buffer exactly its shape. */
#pragma once
#include <stdint.h>

#define LF_CE_THREADS 256  /* threads per block of every kernel */
#define LF_GEMM_TILE_M 64  /* rows of C per SGEMM block */
#define LF_GEMM_TILE_N 64  /* columns of C per SGEMM block */
#define LF_GEMM_TILE_K 16  /* depth of each staged A / B slice */

typedef struct {
    int32_t m;   /* rows of A and C */
    int32_t n;   /* columns of C */
    int32_t k;   /* the contraction */
} LfGemmParams;

typedef struct {
    int32_t rows;   /* labelled rows */
    int32_t hidden; /* columns of h, w, S, dh */
    int32_t v0;     /* first vocabulary row of this chunk (lf_ce_chunk_f32) */
    int32_t chunk;  /* vocabulary rows of this chunk (lf_ce_chunk_f32): columns of e */
} LfCeParams;
