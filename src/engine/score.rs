//! Scoring a prompt: logits at every position (argmax, perplexity) in one forward pass.

use serde::Serialize;

use crate::backend::sampler::{argmax, token_logprobs, TokenLogprobs};
use crate::backend::Backend;
use crate::kv::{BatchLayout, BlockPool, BlockTable, DEFAULT_BLOCK_SIZE};
use crate::lora::LoadedAdapter;
use crate::model::Llama;
use crate::{Error, Result};

/// What `score` computes for a prompt.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreOutput {
    /// The prompt's ids.
    pub prompt_ids: Vec<u32>,
    /// Argmax token id at every prompt position.
    pub argmax: Vec<u32>,
    /// The 20 highest logits of the last position, as (token id, logit), highest first.
    pub top_logits: Vec<(u32, f32)>,
    /// exp(mean negative log-likelihood of each next prompt token); None for a 1-token prompt.
    pub perplexity: Option<f64>,
    /// The last position's logits (not serialised).
    #[serde(skip)]
    pub last_logits: Vec<f32>,
}

/// Runs the prompt through the base model and scores it.
pub fn score<B: Backend>(model: &Llama<B>, be: &B, ids: &[u32]) -> Result<ScoreOutput> {
    score_with_adapter(model, be, ids, None)
}

/// The logits at every position of `ids` (`[ids.len(), vocab]`, row-major), in one forward over
/// a KV cache of its own.
fn all_logits<B: Backend>(model: &Llama<B>, be: &B, ids: &[u32], adapter: Option<&LoadedAdapter<B>>) -> Result<Vec<f32>> {
    if ids.is_empty() {
        return Err(Error::EmptyPrompt);
    }
    let max = model.config.max_position_embeddings;
    if ids.len() > max {
        return Err(Error::PromptTooLong { tokens: ids.len(), new_tokens: 0, context: max });
    }
    let blocks = ids.len().div_ceil(DEFAULT_BLOCK_SIZE);
    let mut kv = be.alloc_kv(model.kv_layout(DEFAULT_BLOCK_SIZE, blocks))?;
    let pool = BlockPool::new(blocks, DEFAULT_BLOCK_SIZE);
    let mut table = BlockTable::new(&pool);
    table.reserve(ids.len())?;
    let batch = BatchLayout::new(DEFAULT_BLOCK_SIZE, &[(&table, ids.len())]);
    let rows: Vec<usize> = (0..ids.len()).collect();
    be.to_host(&model.forward_lora(be, ids, &batch, &mut kv, &rows, &[adapter])?)
}

/// Each prompt token's log-probability given the tokens before it (None for the first) and
/// the `top_n` most likely tokens at its position: what LoRAX's `decoder_input_details` and
/// OpenAI's `echo` + `logprobs` report. One extra forward over the prompt.
pub fn prompt_logprobs<B: Backend>(
    model: &Llama<B>,
    be: &B,
    ids: &[u32],
    adapter: Option<&LoadedAdapter<B>>,
    top_n: usize,
) -> Result<Vec<Option<TokenLogprobs>>> {
    let logits = all_logits(model, be, ids, adapter)?;
    let v = model.config.vocab_size;
    let mut out = vec![None];
    for (row, &next) in logits.chunks_exact(v).zip(&ids[1..]) {
        if row.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFiniteLogits { step: out.len() });
        }
        out.push(Some(token_logprobs(row, next, top_n)));
    }
    Ok(out)
}

/// `score` with a LoRA adapter (None = the base).
pub fn score_with_adapter<B: Backend>(model: &Llama<B>, be: &B, ids: &[u32], adapter: Option<&LoadedAdapter<B>>) -> Result<ScoreOutput> {
    let logits = all_logits(model, be, ids, adapter)?;
    let v = model.config.vocab_size;
    let mut nll = 0f64;
    let mut am = Vec::with_capacity(ids.len());
    for (t, row) in logits.chunks_exact(v).enumerate() {
        am.push(argmax(row));
        if t + 1 < ids.len() {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            nll += lse - row[ids[t + 1] as usize] as f64;
        }
    }
    let last = logits[(ids.len() - 1) * v..].to_vec();
    let mut top: Vec<(u32, f32)> = last.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(20);
    Ok(ScoreOutput {
        prompt_ids: ids.to_vec(),
        argmax: am,
        top_logits: top,
        perplexity: (ids.len() > 1).then(|| (nll / (ids.len() - 1) as f64).exp()),
        last_logits: last,
    })
}
