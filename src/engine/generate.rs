//! Batched generation: several prompts run as one ragged batch over the paged KV cache (one
//! prefill step for all prompts, then one decode step per token for the sequences still going).
//! Single-prompt generation is the same path with one sequence.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::output::{FinishReason, GenerateOptions, SeqOutput};

use super::step::{run_step, StepSeq};
use crate::backend::Backend;
use crate::constrain::ConstraintCompiler;
use crate::kv::{BlockPool, BlockTable, DEFAULT_BLOCK_SIZE};
use crate::lora::LoadedAdapter;
use crate::model::Llama;
use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};

/// One sequence for `Generator`.
#[derive(Debug, Clone)]
pub struct SeqRequest {
    /// The prompt's ids.
    pub prompt_ids: Vec<u32>,
    /// How it is generated.
    pub options: GenerateOptions,
}

/// What `Generator` produced for one sequence.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationOutput {
    /// The prompt's ids.
    pub prompt_ids: Vec<u32>,
    /// The generated ids.
    pub token_ids: Vec<u32>,
    /// The generated text.
    pub text: String,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// Time of the prefill step (which also yields the first token) for the whole batch.
    pub prefill_ms: f64,
    /// Time of this sequence's decode steps.
    pub decode_ms: f64,
    /// Prompt tokens per second of the prefill.
    pub prefill_tokens_per_s: f64,
    /// New tokens after the first, per second of decode (batch 1: the decode speed).
    pub decode_tokens_per_s: f64,
}

struct Seq {
    table: BlockTable,
    out: SeqOutput,
    /// The token to feed next.
    next: u32,
    /// Set when the sequence failed alone (e.g. the KV cache ran out); its blocks are freed.
    error: Option<Error>,
    decode_ms: f64,
}

/// Offline generation on one thread, batch by batch, without the serving engine (the CLI's
/// `generate`, `eval`, tests).
pub struct Generator<'a, B: Backend> {
    /// The model.
    pub model: &'a Llama<B>,
    /// The backend it runs on.
    pub be: &'a B,
    /// Its tokenizer.
    pub tokenizer: &'a TextTokenizer,
    /// KV cache size in bytes; None = exactly what the batch needs.
    pub kv_cache_bytes: Option<usize>,
    /// The adapter of every request when `generate` is given none per request (None = base).
    pub adapter: Option<&'a LoadedAdapter<B>>,
    /// Structured output's compiler, built by the first call with a constrained request and
    /// kept for the next calls (an eval's batches).
    constraints: std::sync::OnceLock<std::result::Result<ConstraintCompiler, String>>,
}

impl<'a, B: Backend> Generator<'a, B> {
    /// A generator over the base model.
    pub fn new(model: &'a Llama<B>, be: &'a B, tokenizer: &'a TextTokenizer) -> Self {
        Generator { model, be, tokenizer, kv_cache_bytes: None, adapter: None, constraints: std::sync::OnceLock::new() }
    }

    /// Runs every request through `adapter` (unless `generate_with_adapters` names others).
    pub fn with_adapter(mut self, adapter: Option<&'a LoadedAdapter<B>>) -> Self {
        self.adapter = adapter;
        self
    }

    /// Sizes the KV pool from a byte budget instead of the batch's need. A sequence that then
    /// cannot get blocks fails alone with `KvError::OutOfBlocks`; the others run on.
    pub fn with_kv_cache_bytes(mut self, bytes: Option<usize>) -> Self {
        self.kv_cache_bytes = bytes;
        self
    }

    /// Checks a request against the model before any work is done.
    pub fn validate(&self, r: &SeqRequest) -> Result<()> {
        if r.prompt_ids.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let c = &self.model.config;
        let total = r.prompt_ids.len() + r.options.max_new_tokens;
        if total > c.max_position_embeddings {
            return Err(Error::PromptTooLong { tokens: r.prompt_ids.len(), new_tokens: r.options.max_new_tokens, context: c.max_position_embeddings });
        }
        if let Some(&bad) = r.prompt_ids.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::BadRequest(format!("token id {bad} is outside the vocabulary of {}", c.vocab_size)));
        }
        r.options.sampling.validate()
    }

    /// Runs every request to completion as one batch. `on_text(i, delta)` receives each
    /// sequence's text as it is produced (stop strings held back and cut).
    /// Returns one result per request: a sequence that fails alone (the KV cache ran out) gives
    /// its error there; an error of the whole step (bad request, backend failure) is the outer one.
    pub fn generate(&self, reqs: &[SeqRequest], on_text: impl FnMut(usize, &str)) -> Result<Vec<Result<GenerationOutput>>> {
        self.generate_with_adapters(reqs, &[], on_text)
    }

    /// `generate` where `adapters[i]` is request i's LoRA adapter (None = the base); empty =
    /// the base for all. Each step's sequences are ordered by adapter, so every adapter is one
    /// segment of the batched LoRA op.
    pub fn generate_with_adapters(
        &self,
        reqs: &[SeqRequest],
        adapters: &[Option<&LoadedAdapter<B>>],
        mut on_text: impl FnMut(usize, &str),
    ) -> Result<Vec<Result<GenerationOutput>>> {
        for r in reqs {
            self.validate(r)?;
        }
        if !adapters.is_empty() && adapters.len() != reqs.len() {
            return Err(Error::InvalidArgument(format!("{} adapters for {} requests", adapters.len(), reqs.len())));
        }
        let adapter_of = |i: usize| if adapters.is_empty() { self.adapter } else { adapters.get(i).copied().flatten() };
        let bs = DEFAULT_BLOCK_SIZE;
        let blocks: usize = match self.kv_cache_bytes {
            // The CPU backend stores K/V in f32.
            Some(bytes) => self.model.kv_layout(bs, 0).with_budget(bytes, self.be.kv_elem_bytes())?.num_blocks,
            None => reqs.iter().map(|r| (r.prompt_ids.len() + r.options.max_new_tokens).div_ceil(bs)).sum::<usize>().max(1),
        };
        // The cache first: its fit check must come before anything sized by the block count.
        let mut kv = self.be.alloc_kv(self.model.kv_layout(bs, blocks))?;
        let pool = BlockPool::new(blocks, bs);
        let eos = &self.model.config.eos_token_ids;
        // Structured output: one compiler for the call, a parser state per request.
        let compiler = match reqs.iter().any(|r| r.options.constraint.is_some()) {
            true => Some(
                self.constraints
                    .get_or_init(|| ConstraintCompiler::new(Arc::new(self.tokenizer.clone()), self.model.config.vocab_size, eos).map_err(|e| e.to_string()))
                    .as_ref()
                    .map_err(|e| Error::InvalidRequest { field: "constraint", msg: format!("structured output is not available for this model: {e}") })?,
            ),
            false => None,
        };
        let mut seqs: Vec<Seq> = Vec::with_capacity(reqs.len());
        for r in reqs {
            let constraint = match (compiler, &r.options.constraint) {
                (Some(c), Some(spec)) => Some(c.compile(spec)?),
                _ => None,
            };
            seqs.push(Seq {
                table: BlockTable::new(&pool),
                out: SeqOutput::new(r.options.clone()).with_prompt(&r.prompt_ids).with_constraint(constraint),
                next: 0,
                error: None,
                decode_ms: 0.0,
            });
        }

        // Prefill: every prompt in one ragged batch; then decode, one token per running sequence
        // per step. Both are `step::run_step`, as in the serving engine.
        let t0 = Instant::now();
        let mut prompt_tokens = 0;
        let mut prefill_ms = 0.0;
        for prefill in std::iter::once(true).chain(std::iter::repeat(false)) {
            let t = Instant::now();
            // Each running sequence's blocks for this step, then the step itself.
            let mut active: Vec<usize> = Vec::new();
            let mut step: Vec<StepSeq<'_, B>> = Vec::new();
            for (i, s) in seqs.iter_mut().enumerate() {
                if s.out.is_finished() {
                    continue;
                }
                let n = if prefill { reqs[i].prompt_ids.len() } else { 1 };
                if let Err(e) = s.table.reserve(n) {
                    fail(s, e.into());
                    continue;
                }
                let Seq { table, out, next, .. } = s;
                let tokens: &[u32] = if prefill { &reqs[i].prompt_ids } else { std::slice::from_ref(&*next) };
                step.push(StepSeq { table, tokens, adapter: adapter_of(i), sampler: Some(out.sampler_mut()) });
                active.push(i);
            }
            if step.is_empty() && !prefill {
                break;
            }
            if prefill {
                prompt_tokens = step.iter().map(|s| s.tokens.len()).sum();
            }
            let next = run_step(self.model, self.be, &mut kv, bs, &mut step)?;
            drop(step);
            for (&i, token) in active.iter().zip(next) {
                // A sequence whose token cannot be taken (non-finite logits, a tokenizer error)
                // fails alone.
                let r = token.ok_or_else(|| Error::InvalidArgument("a sequence of the step sampled no token".into()));
                if let Err(e) = r.and_then(|token| self.accept(&mut seqs[i], eos, token, i, &mut on_text)) {
                    fail(&mut seqs[i], e);
                }
            }
            if prefill {
                prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
            } else {
                let dt = t.elapsed().as_secs_f64() * 1e3;
                for &i in &active {
                    seqs[i].decode_ms += dt;
                }
            }
        }

        Ok(seqs
            .into_iter()
            .zip(reqs)
            .map(|(s, r)| {
                if let Some(e) = s.error {
                    return Err(e);
                }
                let n_dec = s.out.tokens.len().saturating_sub(1);
                Ok(GenerationOutput {
                    prompt_ids: r.prompt_ids.clone(),
                    text: s.out.text().to_string(),
                    finish_reason: s.out.finish.unwrap_or(FinishReason::Length),
                    token_ids: s.out.tokens,
                    prefill_ms,
                    decode_ms: s.decode_ms,
                    prefill_tokens_per_s: prompt_tokens as f64 / (prefill_ms / 1e3),
                    decode_tokens_per_s: if s.decode_ms > 0.0 { n_dec as f64 / (s.decode_ms / 1e3) } else { 0.0 },
                })
            })
            .collect())
    }

    /// Records a sampled token, streams its text and decides whether the sequence is done.
    fn accept(&self, s: &mut Seq, eos: &[u32], token: u32, i: usize, on_text: &mut impl FnMut(usize, &str)) -> Result<()> {
        let a = s.out.accept_token(self.tokenizer, eos, token)?;
        s.next = a.token;
        if !a.text.is_empty() {
            on_text(i, &a.text);
        }
        Ok(())
    }
}

/// Ends a sequence with an error of its own and gives its blocks back at once.
fn fail(s: &mut Seq, e: Error) {
    s.out.finish = Some(FinishReason::Length);
    s.error = Some(e);
    s.table.truncate(0);
}
