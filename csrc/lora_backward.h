/* C ABI of kernels/lora_backward.cu: the fused LoRA backward for one adapter over a batch of
 * token rows (training: every row uses the adapter being trained). Forward, per row:
 *   xa = x A^T          x: [rows, d_in], A: [rank, d_in], xa: [rows, rank] (saved)
 *   y += scale * xa B^T B: [d_out, rank], y: [rows, d_out]
 * Backward, from dy: [rows, d_out]:
 *   pass 1 (lf_lora_bwd_dy_f32, reads dy once):  g  = scale * dy B      [rows, rank]
 *                                                dB += scale * dy^T xa  [d_out, rank]
 *   pass 2 (lf_lora_bwd_x_f32, reads x once):    dA += g^T x            [rank, d_in]
 *                                                dx += g A              [rows, d_in] (optional)
 * CPU twin: backend::cpu::backward::lora_backward.
 *
 * Grids: pass 1 is (ceil(d_out / LF_LORA_BWD_TILE), ceil(rows / LF_LORA_BWD_ROWS)), pass 2 is
 * (ceil(d_in / LF_LORA_BWD_TILE), ceil(rows / LF_LORA_BWD_ROWS)); blocks of
 * LF_LORA_BWD_THREADS threads. Reductions that cross blocks (g over column tiles of dy, dB over
 * row chunks, dA over row chunks) use atomicAdd, so g must be zeroed before pass 1 and the sum
 * order (hence the last bits) varies from run to run. Every count is validated by the Rust side:
 * rows, d_in, d_out > 0 and within int32; 0 < rank <= LF_LORA_BWD_MAX_RANK. */
#pragma once
#include <stdint.h>

#define LF_LORA_BWD_MAX_RANK 64 /* largest rank the kernels take (shared-memory tiles) */
#define LF_LORA_BWD_TILE 64     /* columns of dy (pass 1) or x (pass 2) per block */
#define LF_LORA_BWD_ROWS 32     /* token rows per block */
#define LF_LORA_BWD_THREADS 256 /* threads per block */

typedef struct {
    int32_t rows;  /* token rows of x, dy, xa, g, dx */
    int32_t d_in;  /* columns of x, dx, A, dA */
    int32_t d_out; /* columns of dy; rows of B, dB */
    int32_t rank;  /* columns of xa, g, B, dB; rows of A, dA */
    float scale;   /* LoRA scale alpha / r (or alpha / sqrt(r)) */
} LfLoraBwdParams;
