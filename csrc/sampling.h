/* C ABI of kernels/sampling.cu: the next token of each row of a step's logits, on the device, so
 * a step syncs with the host once, for the sampled ids. CPU twin: backend::sampling.
 *
 * Per row (one block of LF_SAMPLE_THREADS each):
 *   temperature == 0: greedy, the index of the largest logit, the lowest one on ties (torch.argmax
 *     and the CPU sampler's rule);
 *   else: weights w_i = exp((l_i - max) / temperature); top_k > 0 keeps the logits at or above the
 *     k-th largest (ties at the threshold are all kept); top_p < 1 then keeps the tokens whose
 *     weight is at or above the largest threshold that still holds top_p of the kept mass; one draw
 *     r in [0, 1) from splitmix64(seed ^ (draw * 0x9E3779B97F4A7C15)) picks the token whose
 *     interval of the cumulative kept mass, in index order, contains r * mass.
 * A row holding a NaN or an infinity gets LF_SAMPLE_NON_FINITE instead of a token (the request
 * fails with that reason; no token comes out of broken numerics).
 * A row with a token mask (structured output; mask_row >= 0) is sampled as if every token its
 * mask does not allow had the logit -FLT_MAX (the lowest finite value: weight 0 at any
 * temperature), by the same rule; the NaN / infinity check still reads the raw row. Masks are
 * packed bits, ceil(vocab / 32) uint32 words a mask, bit t % 32 of word t / 32 for token t. */
#pragma once
#include <stdint.h>

#define LF_SAMPLE_THREADS 256
#define LF_SAMPLE_NON_FINITE 0xffffffffu

/* One row's sampling parameters. */
typedef struct {
    float temperature; /* 0: greedy */
    int32_t top_k;     /* 0: off */
    float top_p;       /* 1: off; in (0, 1] */
    int32_t mask_row;  /* the row of the launch's masks holding this row's allowed tokens; -1: none */
    uint64_t seed;     /* the sequence's seed */
    uint64_t draw;     /* how many draws the sequence has made before this one */
} LfSampleRow;

typedef struct {
    int32_t n_rows; /* rows of logits, rows, out */
    int32_t vocab;  /* row length of logits */
} LfSampleParams;
