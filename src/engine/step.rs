//! One batched forward step, the one both the serving engine (`worker::Worker`) and offline
//! generation (`Generator`, under `generate` and `eval`) run: the step's sequences sorted by
//! adapter (each adapter one LoRA segment), their new tokens packed into one ragged batch over
//! their block tables, one forward, the next token sampled for each sequence that asked for one
//! (by its own sampler; on the device on a GPU, one sync for the ids), and each table advanced
//! past the tokens it ran.
//!
//! What is around a step differs and stays with the callers: the engine's scheduling,
//! preemption, prefix cache and events; the generator's fixed batch and its timings.

use crate::backend::sampler::Sampler;
use crate::backend::Backend;
use crate::kv::{BatchLayout, BlockTable};
use crate::lora::LoadedAdapter;
use crate::model::Llama;
use crate::Result;

/// One sequence's part of a step.
pub struct StepSeq<'r, B: Backend> {
    /// Its blocks: room for `tokens` already reserved; advanced by `tokens.len()` by the step.
    pub table: &'r mut BlockTable,
    /// The tokens it runs this step (a prompt chunk, or the last sampled token), `[n >= 1]`.
    pub tokens: &'r [u32],
    /// The sequence's adapter (None: the base).
    pub adapter: Option<&'r LoadedAdapter<B>>,
    /// Its sampler when the step ends on its last known token (its next token is due); None for
    /// a prefill chunk that does not reach the end of the prompt.
    pub sampler: Option<&'r mut Sampler>,
}

/// Runs one forward over `seqs` and returns, per sequence in the given order, the token it
/// sampled (None where it had no sampler). An error fails the whole step (the callers fail its
/// sequences); the tables are advanced only when the forward succeeded.
pub fn run_step<B: Backend>(model: &Llama<B>, be: &B, kv: &mut B::Kv, block_size: usize, seqs: &mut [StepSeq<'_, B>]) -> Result<Vec<Option<u32>>> {
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    // Batch order: grouped by adapter (the base first), stable within a group.
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].adapter.map_or(0, |a| a as *const LoadedAdapter<B> as usize));

    let ids: Vec<u32> = order.iter().flat_map(|&i| seqs[i].tokens.iter().copied()).collect();
    let batch = {
        let parts: Vec<(&BlockTable, usize)> = order.iter().map(|&i| (&*seqs[i].table, seqs[i].tokens.len())).collect();
        BatchLayout::new(block_size, &parts)
    };
    let adapters: Vec<Option<&LoadedAdapter<B>>> = order.iter().map(|&i| seqs[i].adapter).collect();
    let last = batch.last_rows();
    let sampled_rows: Vec<usize> = order.iter().zip(&last).filter(|(&i, _)| seqs[i].sampler.is_some()).map(|(_, &r)| r).collect();

    let mut out = vec![None; seqs.len()];
    if sampled_rows.is_empty() {
        // Prefill chunks only: K/V are written, no logits are needed (one row, since the lm_head
        // needs at least one).
        model.forward_lora(be, &ids, &batch, kv, &[0], &adapters)?;
    } else {
        let sampled: Vec<usize> = order.iter().copied().filter(|&i| seqs[i].sampler.is_some()).collect();
        let next = {
            let mut slots: Vec<Option<&mut Sampler>> = seqs.iter_mut().map(|s| s.sampler.as_deref_mut()).collect();
            let mut samplers: Vec<&mut Sampler> = sampled.iter().filter_map(|&i| slots[i].take()).collect();
            model.forward_sample(be, &ids, &batch, kv, &sampled_rows, &adapters, &mut samplers)?
        };
        for (&i, t) in sampled.iter().zip(next) {
            out[i] = Some(t);
        }
    }
    for s in seqs.iter_mut() {
        s.table.advance(s.tokens.len());
    }
    Ok(out)
}
