//! One sequence's output side: sampling the next token, EOS / stop-string / length checks and
//! incremental detokenization. Shared by the batch `Generator` and the continuous-batching
//! engine, so both turn logits into tokens and text in exactly the same way.

use serde::Serialize;

use super::stop::StopMatcher;
use crate::backend::sampler::{Sampler, SamplingParams};
use crate::constrain::{Constraint, ConstraintState, SeqConstraint};
use crate::tokenizer::{IncrementalDecoder, TextTokenizer};
use crate::Result;

/// What a sequence asks of its output: length, sampling, stop strings, log-probabilities.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Exactly this many tokens unless EOS or a stop string ends the sequence first.
    pub max_new_tokens: usize,
    /// How tokens are drawn.
    pub sampling: SamplingParams,
    /// Stop strings: generation ends before the first one (not included).
    pub stop: Vec<String>,
    /// Keep going past the end-of-sequence token.
    pub ignore_eos: bool,
    /// Report each generated token's log-probability and this many top alternatives
    /// (`Event::Token::logprobs`); None: none.
    pub logprobs: Option<usize>,
    /// Report the prompt's log-probabilities (`Event::Prompt`) with `logprobs.unwrap_or(0)`
    /// alternatives each: one extra forward over the prompt.
    pub prompt_logprobs: bool,
    /// Hold the output to a JSON schema, regex, choice list or grammar (structured output):
    /// tokens that cannot continue it are masked before each draw. Checked when the request is
    /// submitted (`Error::InvalidRequest` with field `constraint` when it does not compile).
    pub constraint: Option<Constraint>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            sampling: SamplingParams::greedy(),
            stop: vec![],
            ignore_eos: false,
            logprobs: None,
            prompt_logprobs: false,
            constraint: None,
        }
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// The end-of-sequence token.
    Eos,
    /// A stop string.
    Stop,
    /// The constraint's output is complete and nothing can follow it (a closed JSON value, a
    /// whole choice).
    GrammarComplete,
    /// No token could continue the constrained output, and it was not complete.
    GrammarDeadEnd,
}

/// One sequence's output so far: tokens, text released, and whether it finished.
#[derive(Debug, Clone)]
pub struct SeqOutput {
    /// Its options.
    pub options: GenerateOptions,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    constraint: Option<SeqConstraint>,
    /// A token already fed to the constraint by `precommit` (accept_token then does not feed it
    /// again).
    precommitted: Option<u32>,
    /// Generated token ids so far.
    pub tokens: Vec<u32>,
    /// Why it finished, once it has.
    pub finish: Option<FinishReason>,
}

/// What one accepted token produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The token.
    pub token: u32,
    /// Text released by this token (may be empty: an incomplete UTF-8 character, a possible
    /// stop-string prefix held back, or an EOS token).
    pub text: String,
    /// The token is an end-of-sequence token (its text is never emitted).
    pub special: bool,
}

impl SeqOutput {
    /// An empty output for `options`.
    pub fn new(options: GenerateOptions) -> Self {
        let finish = if options.max_new_tokens == 0 { Some(FinishReason::Length) } else { None };
        SeqOutput {
            sampler: Sampler::new(options.sampling.clone()).with_logprobs(options.logprobs),
            decoder: IncrementalDecoder::new(),
            stop: StopMatcher::new(options.stop.clone()),
            constraint: None,
            precommitted: None,
            tokens: Vec::new(),
            finish,
            options,
        }
    }

    /// The prompt (a repetition penalty counts its tokens).
    pub fn with_prompt(mut self, ids: &[u32]) -> Self {
        self.sampler.set_prompt(ids);
        self
    }

    /// Holds the output to a compiled constraint (`ConstraintCompiler::compile` of
    /// `options.constraint`): its first mask goes to the sampler now, each next one as tokens
    /// are accepted.
    pub fn with_constraint(mut self, c: Option<SeqConstraint>) -> Self {
        self.sampler.set_mask(c.as_ref().and_then(|c| c.mask().cloned()));
        self.constraint = c;
        self
    }

    /// Whether the output is held to a constraint.
    pub fn is_constrained(&self) -> bool {
        self.constraint.is_some()
    }

    /// Feeds `token` to the constraint and computes the next mask now (the costly part of
    /// structured output: the engine runs it for all of a step's constrained sequences at once
    /// on the pool); `accept_token` with the same token then only reads the result.
    pub fn precommit(&mut self, token: u32) {
        if let (Some(c), None) = (&mut self.constraint, self.precommitted) {
            if token != crate::backend::sampling::NON_FINITE {
                c.commit(token);
                self.precommitted = Some(token);
            }
        }
    }

    /// Why the constrained output stopped at a dead end (None otherwise).
    pub fn dead_end(&self) -> Option<&str> {
        match self.constraint.as_ref().map(SeqConstraint::state) {
            Some(ConstraintState::DeadEnd(why)) => Some(why),
            _ => None,
        }
    }

    /// Whether it finished.
    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// The text so far (cut before a stop string once one was hit).
    pub fn text(&self) -> &str {
        self.stop.text()
    }

    /// Samples from `logits`, records the token, and decides whether the sequence is done.
    pub fn accept(&mut self, tokenizer: &TextTokenizer, eos: &[u32], logits: &[f32]) -> Result<Accepted> {
        let tok = self.sampler.sample(logits);
        self.accept_token(tokenizer, eos, tok)
    }

    /// The sequence's sampler (a backend samples with it: `Llama::forward_sample`).
    pub fn sampler_mut(&mut self) -> &mut Sampler {
        &mut self.sampler
    }

    /// Records a sampled token and decides whether the sequence is done.
    pub fn accept_token(&mut self, tokenizer: &TextTokenizer, eos: &[u32], tok: u32) -> Result<Accepted> {
        if tok == crate::backend::sampling::NON_FINITE {
            return Err(crate::Error::NonFiniteLogits { step: self.tokens.len() });
        }
        self.tokens.push(tok);
        self.sampler.observe(tok);
        let is_eos = eos.contains(&tok);
        let mut text = String::new();
        if !self.options.ignore_eos && is_eos {
            self.finish = Some(FinishReason::Eos);
        } else if let Some(delta) = self.decoder.push(tokenizer, tok)? {
            let (out, hit) = self.stop.push(&delta);
            text = out;
            if hit {
                self.finish = Some(FinishReason::Stop);
            }
        }
        if let Some(c) = &mut self.constraint {
            // Fed every token (here, or before by `precommit`), so the mask of the next draw
            // follows the output.
            let state = match self.precommitted.take() {
                Some(t) if t == tok => c.state(),
                _ => c.commit(tok),
            };
            match state {
                ConstraintState::Open => self.sampler.set_mask(c.mask().cloned()),
                ConstraintState::Complete => {
                    self.sampler.set_mask(None);
                    if self.finish.is_none() {
                        self.finish = Some(FinishReason::GrammarComplete);
                    }
                }
                ConstraintState::DeadEnd(_) => {
                    self.sampler.set_mask(None);
                    if self.finish.is_none() {
                        self.finish = Some(FinishReason::GrammarDeadEnd);
                    }
                }
            }
        }
        if self.finish.is_none() && self.tokens.len() >= self.options.max_new_tokens {
            self.finish = Some(FinishReason::Length);
        }
        if self.finish.is_some() && self.finish != Some(FinishReason::Stop) {
            text.push_str(&self.stop.flush());
        }
        Ok(Accepted { token: tok, text, special: is_eos })
    }
}
