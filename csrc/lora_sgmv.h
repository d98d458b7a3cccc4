/* C ABI of kernels/lora_sgmv.cu: batched LoRA over a batch of tokens that use different adapters
 * (S-LoRA / Punica's SGMV and BGMV). Shared by the kernels and, through bindgen, by the Rust
 * launch code (src/backend/cuda/lora.rs). CPU twin: src/backend/cpu/lora.rs.
 *
 * For each segment s of consecutive token rows sharing an adapter (A_s [rank_s, d_in],
 * B_s [d_out, rank_s], scale_s), and each token t of the segment:
 *   shrink: v[t, k] = sum_i x[t, i] * A_s[k, i]            k < rank_s
 *   expand: y[t, o] += scale_s * sum_k v[t, k] * B_s[o, k]  o < d_out
 * Rows outside every segment (base-model tokens) are neither read nor written.
 *
 * Tensors (T = storage type: bf16, or f32 for exact-parity tests; f32 math inside):
 *   x:    [t_rows, d_in]  T, row-major
 *   y:    [t_rows, d_out] T, updated in place
 *   A_s:  [rank_s, d_in]  T   (PEFT lora_A.weight)
 *   B_s:  [d_out, rank_s] T   (PEFT lora_B.weight)
 *   part: [n_chunks, t_rows, r_max] f32: the shrink's split-K partial sums of v, one slab per
 *         chunk of `chunk` elements of each x row. Only (chunk, t, k < rank of t's segment)
 *         entries of covered tokens are written, and only those are read: the expand sums the
 *         chunks in order while it stages v, so the split-K reduction needs no atomics, no
 *         zeroing, and its result does not depend on scheduling (deterministic).
 *
 * Metadata (device memory, written by the Rust side after validation):
 *   segs:      [n_segments] LfLoraSegment
 *   tiles:     [n_tiles] LfLoraTile (SGMV): up to LF_LORA_TILE_TOKENS consecutive tokens of one
 *              segment each
 *   token_seg: [t_rows] int32 (BGMV): the segment of each token, -1 for a base-model token
 *
 * Kernels (dtype bf16 or f32):
 *   lf_lora_sgmv_shrink_<dtype>  grid (n_tiles, n_chunks)                   block LF_LORA_THREADS
 *   lf_lora_sgmv_expand_<dtype>  grid (n_tiles, ceil(d_out / LF_LORA_THREADS))
 *   lf_lora_bgmv_shrink_<dtype>  grid (t_rows, n_chunks)
 *   lf_lora_bgmv_expand_<dtype>  grid (t_rows, ceil(d_out / LF_LORA_THREADS))
 * SGMV serves prefill (long segments: a tile of tokens shares each adapter row it loads), BGMV
 * serves decode (one token per sequence, each naming its adapter). Both compute the same sums in
 * the same order per token.
 *
 * Every count, index and pointer is validated by the Rust side before a launch (segments inside
 * the batch and disjoint, ranks in 1..=r_max <= LF_LORA_MAX_RANK, A and B buffers of exactly
 * their shapes); the kernels compute element offsets in 64 bits and skip (write nothing for) a
 * segment or token index they are never passed out of range. */
#pragma once
#include <stdint.h>

/* One segment: rows start .. start + len of x and y use adapter (a, b, rank, scale). */
typedef struct {
    uint64_t a;    /* device address of A [rank, d_in] T */
    uint64_t b;    /* device address of B [d_out, rank] T */
    int32_t start; /* first token row */
    int32_t len;   /* token rows; >= 1 */
    int32_t rank;  /* 1 ..= r_max */
    float scale;   /* lora_alpha / r (or / sqrt(r), rsLoRA) */
} LfLoraSegment;

/* One SGMV tile: tokens token0 .. min(token0 + LF_LORA_TILE_TOKENS, segment end) of `segment`. */
typedef struct {
    int32_t segment; /* index into segs */
    int32_t token0;  /* first token row of the tile; inside the segment */
} LfLoraTile;

/* Shapes shared by the four kernels of one batched LoRA step. */
typedef struct {
    int32_t t_rows;     /* token rows of x and y */
    int32_t d_in;       /* row length of x and of each A */
    int32_t d_out;      /* row length of y; rows of each B */
    int32_t r_max;      /* row length of part; >= every segment's rank, <= LF_LORA_MAX_RANK */
    int32_t n_segments; /* entries of segs */
    int32_t n_tiles;    /* entries of tiles (SGMV); 0 for BGMV */
    int32_t chunk;      /* elements of d_in per shrink chunk: a multiple of 32 * 16 bytes, at most
                           LF_LORA_CHUNK_BYTES (smaller when few tiles would leave SMs idle) */
    int32_t n_chunks;   /* ceil(d_in / chunk): slabs of part */
} LfLoraParams;

#define LF_LORA_THREADS 256        /* threads per block of every lora kernel (8 warps) */
#define LF_LORA_TILE_TOKENS 16     /* tokens per SGMV tile */
#define LF_LORA_CHUNK_BYTES 2048   /* most bytes of an x row per shrink chunk (split-K) */
#define LF_LORA_MIN_CHUNK_BYTES 512 /* fewest: one 16-byte vector per lane */
#define LF_LORA_TARGET_BLOCKS 264  /* shrink blocks to aim for: two per SM of an H100 (132) */
#define LF_LORA_MAX_RANK 256       /* largest rank (v of a tile is staged in shared memory) */
#define LF_LORA_VEC_BYTES 16       /* width of the vector loads */
