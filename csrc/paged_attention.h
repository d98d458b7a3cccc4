/* C ABI of kernels/paged_attention.cu: paged KV cache write and paged attention over a ragged
 * batch (src/kv: BatchLayout). Shared by the kernels and, through bindgen, by the Rust launch code
 * (src/backend/cuda/attention.rs). CPU twin: src/backend/cpu/attention.rs.
 *
 * Cache layout, per layer: K and V each [num_blocks * block_size, kv_heads * head_dim] of the
 * storage type T (f32 or bf16); token p of a sequence lives in cache row
 * block_table[seq][p / block_size] * block_size + p % block_size.
 *
 * Every count and index is validated by the Rust side before a launch (positive, within int32,
 * every slot < cache rows, every block id < num_blocks, every table covering its context); the
 * kernels compute element offsets in 64 bits.
 *
 * Kernel names:
 *   lf_reshape_and_cache_<dtype>
 *   lf_paged_attn_<dtype>_hd<64|96|128>   head_dim fixed at compile time, 16-byte loads
 *   lf_paged_attn_<dtype>_generic         any even head_dim <= LF_ATTN_MAX_HEAD_DIM, scalar loads
 *   lf_paged_attn_reduce_<dtype>          combines the context partitions (flash-decoding) */
#pragma once
#include <stdint.h>

/* Append new K/V rows into the cache: k_cache[slots[i], :] = k[i, :], likewise v.
 * k, v: [n_tokens, kv_dim] T; slots: [n_tokens] uint32; k_cache, v_cache: [cache_rows, kv_dim] T.
 * One block per token. */
typedef struct {
    int32_t n_tokens;   /* rows of k, v and slots; the grid's x dimension */
    int32_t kv_dim;     /* kv_heads * head_dim: row length of k, v and the caches */
    int64_t cache_rows; /* num_blocks * block_size; every slot is < cache_rows */
} LfReshapeCacheParams;

/* Paged causal attention, one query row (token) at a time: the query of row r, a token of sequence
 * s = row_seq[r] at position pos = row_pos[r], attends to that sequence's cached tokens 0..=pos
 * (so the cache must already hold the new tokens: reshape_and_cache first). Decode rows and
 * prefill rows mix freely in one launch.
 *
 * Device arrays (all int32):
 *   row_seq:     [n_rows]                     sequence of each query row
 *   row_pos:     [n_rows]                     position of each query row (keys 0..=pos)
 *   block_table: [num_seqs, max_blocks]       block ids in token order, padded with 0
 *   context_lens:[num_seqs]                   tokens in the cache after this step's writes
 *   query_start: [num_seqs + 1]               cu_seqlens: first row of each sequence's queries
 * Tensors (T = storage type; f32 math inside):
 *   q, out:           [n_rows, n_heads * head_dim] T
 *   k_cache, v_cache: [num_blocks * block_size, n_kv_heads * head_dim] T
 *   part_max, part_sum: [n_rows, n_heads, max_partitions] f32  (only when max_partitions > 1)
 *   part_out:           [n_rows, n_heads, max_partitions, head_dim] f32 (unnormalised)
 *
 * Grid: x = n_rows, y = n_kv_heads * (group / heads_per_block), z = max_partitions. A block
 * serves heads_per_block query heads that share one kv head (GQA/MQA: K and V are read once for
 * all of them) over one partition of partition_size keys. With max_partitions == 1 it writes out
 * directly; otherwise every block writes its partial max/sum/out and lf_paged_attn_reduce_* (grid
 * x = n_rows, y = n_heads) combines them. */
typedef struct {
    int32_t n_rows;          /* query rows (tokens) in the batch */
    int32_t num_seqs;        /* sequences in the batch */
    int32_t n_heads;         /* query heads */
    int32_t n_kv_heads;      /* key/value heads; divides n_heads */
    int32_t head_dim;        /* elements per head: even, <= LF_ATTN_MAX_HEAD_DIM */
    int32_t heads_per_block; /* query heads one block serves; divides n_heads / n_kv_heads;
                                <= LF_ATTN_MAX_HEADS_PER_BLOCK */
    int32_t block_size;      /* tokens per cache block */
    int32_t max_blocks;      /* row length of block_table */
    int32_t partition_size;  /* keys per partition: LF_ATTN_PARTITION */
    int32_t max_partitions;  /* ceil(max over rows of (pos + 1) / partition_size) */
    float scale;             /* softmax scale, 1 / sqrt(head_dim) */
} LfPagedAttnParams;

#define LF_ATTN_THREADS 128             /* threads per block of every attention kernel */
#define LF_ATTN_PARTITION 512           /* keys per partition (flash-decoding split) */
#define LF_ATTN_MAX_HEADS_PER_BLOCK 4   /* query heads one block serves at most */
#define LF_ATTN_MAX_HEAD_DIM 256        /* largest head_dim (generic kernel) */
#define LF_ATTN_VEC_BYTES 16            /* width of the K/V loads of the hd-specialised kernels */
