//! The layout of one forward step over a ragged batch: several sequences, each with its own
//! number of new tokens, flattened into one token dimension.

use super::BlockTable;

/// One sequence's part of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqView {
    /// First row of this sequence's new tokens in the flattened batch.
    pub token_start: usize,
    /// New tokens this step (a prefill chunk, or 1 when decoding).
    pub n_new: usize,
    /// Tokens already in the cache before this step; the new ones get positions
    /// `context_len..context_len + n_new`.
    pub context_len: usize,
    /// Block ids in token order, covering at least `context_len + n_new` tokens.
    pub blocks: Vec<u32>,
}

/// Host-side description of a step, built once and used by every layer.
#[derive(Debug, Clone, Default)]
pub struct BatchLayout {
    /// Tokens per KV block.
    pub block_size: usize,
    /// The step's sequences, in row order.
    pub seqs: Vec<SeqView>,
    /// `[n_tokens]` position of each new token.
    pub positions: Vec<u32>,
    /// `[n_tokens]` cache row of each new token: `block * block_size + offset`.
    pub slots: Vec<u32>,
}

impl BatchLayout {
    /// `parts`: each sequence's table (with room reserved for its new tokens) and new-token count.
    pub fn new(block_size: usize, parts: &[(&BlockTable, usize)]) -> Self {
        let mut l = BatchLayout { block_size, ..Default::default() };
        for (table, n_new) in parts {
            assert!(table.len() + n_new <= table.capacity(), "reserve() before building the batch");
            let token_start = l.positions.len();
            for p in table.len()..table.len() + n_new {
                l.positions.push(p as u32);
                l.slots.push(table.blocks()[p / block_size] * block_size as u32 + (p % block_size) as u32);
            }
            l.seqs.push(SeqView { token_start, n_new: *n_new, context_len: table.len(), blocks: table.blocks().to_vec() });
        }
        l
    }

    /// Rows (new tokens) of the step.
    pub fn n_tokens(&self) -> usize {
        self.positions.len()
    }

    /// Row of each sequence's last new token (where the next-token logits come from).
    pub fn last_rows(&self) -> Vec<usize> {
        self.seqs.iter().map(|s| s.token_start + s.n_new - 1).collect()
    }
}
