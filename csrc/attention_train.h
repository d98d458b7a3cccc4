/* C ABI of kernels/attention_train.cu: causal self-attention for training, over a packed batch of
 * whole sequences (no KV cache), grouped-query heads, f32. CPU twins:
 * backend::cpu::backward::{causal_attention_forward, causal_attention_backward}.
 *
 * A batch is `rows` token rows; q, out, dout, dq: [rows, n_heads * head_dim]; k, v, dk, dv:
 * [rows, n_kv_heads * head_dim]; lse, delta: [rows, n_heads]. Sequence s (LfSeqSpan) owns rows
 * start .. start + len and continues the context rows ctx_start .. ctx_start + ctx_len (a prompt
 * prefix laid out once and shared by several sequences; ctx_len = 0: none). Its queries see, in
 * "key coordinates" kk = 0 .. ctx_len + len, first the context rows, then its own rows causally:
 * own query i sees kk <= ctx_len + i. q head h reads kv head h / (n_heads / n_kv_heads).
 *
 *   lf_attn_train_fwd_f32(q, k, v, spans, out, lse, p): out = softmax(q k^T * scale) v per
 *     (sequence, head), lse = the log-sum-exp of each softmax row (what the backward recomputes
 *     the probabilities from). Grid (ceil(max len / tile), n_heads, n_seqs): one block per tile
 *     of `tile` query rows of one sequence and head, walking its visible keys tile by tile with
 *     the online softmax.
 *   lf_attn_train_delta_f32(out, dout, delta, p): delta[r, h] = dot(dout[r, h], out[r, h]).
 *     One warp per (row, head), grid-stride.
 *   lf_attn_train_bwd_f32(q, k, v, dout, lse, delta, spans, dq, dk, dv, p): with
 *     P = exp(q k^T * scale - lse), dV += P^T dO, dS = P * (dO V^T - delta) * scale,
 *     dK += dS^T Q, dQ += dS K. Grid (ceil(max(ctx_len + len) / tile), n_heads, n_seqs): one
 *     block per tile of `tile` key rows of one sequence and q head, walking the query tiles that
 *     see them. dq, dk, dv are sums over blocks (key tiles for dq; the q heads of a group and the
 *     sequences sharing a context for dk, dv): atomicAdd, so they must be zeroed first and the
 *     last bits vary from run to run.
 *
 * Tiles are `tile` rows of head_dim, tile a power of two <= LF_ATTN_TRAIN_MAX_TILE with
 * tile * head_dim <= LF_ATTN_TRAIN_TILE_ELEMS (static shared memory, < 48 KB). Every count is
 * validated by the Rust side (src/backend/cuda/attention_train.rs) first: spans in bounds with
 * disjoint own rows, len > 0, n_kv_heads dividing n_heads, 0 < head_dim <=
 * LF_ATTN_TRAIN_MAX_HEAD_DIM, every buffer exactly its shape. */
#pragma once
#include <stdint.h>

#define LF_ATTN_TRAIN_THREADS 256     /* threads per block (8 warps) */
#define LF_ATTN_TRAIN_MAX_TILE 32     /* most rows per query / key tile (one warp lane per key) */
#define LF_ATTN_TRAIN_TILE_ELEMS 2048 /* most tile * head_dim (registers: 8 per thread per tile) */
#define LF_ATTN_TRAIN_MAX_HEAD_DIM 2048

typedef struct {
    int32_t start;     /* first own row */
    int32_t len;       /* own rows (> 0) */
    int32_t ctx_start; /* first context row */
    int32_t ctx_len;   /* context rows (0: none) */
} LfSeqSpan;

typedef struct {
    int32_t rows;       /* token rows of the batch */
    int32_t n_seqs;     /* spans; the grid's z dimension */
    int32_t n_heads;    /* q heads; the grid's y dimension */
    int32_t n_kv_heads; /* k/v heads, dividing n_heads */
    int32_t head_dim;
    int32_t tile;       /* rows per query / key tile */
    float scale;        /* 1 / sqrt(head_dim) */
} LfAttnTrainParams;
