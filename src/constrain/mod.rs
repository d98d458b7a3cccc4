//! Structured output: a request's output held to a JSON schema, a regular expression, one of a
//! list of strings, or a Lark grammar, by masking the tokens that cannot continue it before each
//! draw.
//!
//! The masks come from llguidance (the library vLLM, SGLang, llama.cpp and mistral.rs use): a
//! token trie over the tokenizer's bytes, an Earley parser over the grammar, and a lexer of
//! derivatives that walks the trie once per step. `ConstraintCompiler` holds the trie and the
//! parser factory (built once per tokenizer: ~0.1 s for a 49k vocabulary); `SeqConstraint` is
//! one sequence's parser state, fed each accepted token, with the mask of the next draw computed
//! as soon as a token is accepted (`backend::sampler::TokenMask`: packed bits, applied before
//! temperature / top-k / top-p).
//!
//! Why llguidance over outlines-core (the other Rust candidate): outlines-core compiles a regex
//! (a JSON schema becomes one) into a token-level automaton ahead of time, whose size grows with
//! the schema and the vocabulary and which cannot express recursive schemas or context-free
//! grammars; llguidance computes masks lazily per step (tens of microseconds for JSON at a 128k
//! vocabulary, no compile-time blow-up), takes Lark grammars, and is what the peers ship. The
//! measured cost here is in bench/RESULTS.md ("Structured output").

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::backend::sampler::TokenMask;
use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};

/// What a request's output must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Any JSON object (OpenAI `response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid against this JSON schema (OpenAI `json_schema`, vLLM `guided_json`, LoRAX
    /// `response_format` with a schema).
    JsonSchema(serde_json::Value),
    /// Text matching this regular expression, whole (vLLM `guided_regex`).
    Regex(String),
    /// Exactly one of these strings (vLLM `guided_choice`; `eval`'s label sets).
    Choice(Vec<String>),
    /// Text of this Lark grammar (vLLM `guided_grammar`, llguidance's Lark dialect).
    Lark(String),
}

impl Constraint {
    /// What it is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Constraint::JsonObject => "JSON object",
            Constraint::JsonSchema(_) => "JSON schema",
            Constraint::Regex(_) => "regex",
            Constraint::Choice(_) => "choice list",
            Constraint::Lark(_) => "Lark grammar",
        }
    }

    fn grammar(&self) -> Result<TopLevelGrammar> {
        Ok(match self {
            Constraint::JsonObject => TopLevelGrammar::from_json_schema(compact_json(serde_json::json!({ "type": "object" }))),
            Constraint::JsonSchema(s) => {
                if !s.is_object() && !s.is_boolean() {
                    return Err(invalid(format!("the JSON schema must be an object, got {}", json_kind(s))));
                }
                TopLevelGrammar::from_json_schema(compact_json(s.clone()))
            }
            Constraint::Regex(r) => TopLevelGrammar::from_regex(r),
            Constraint::Choice(c) => {
                if c.is_empty() {
                    return Err(invalid("the choice list is empty".into()));
                }
                // Each choice a Lark string literal (JSON string syntax).
                let alts: Vec<String> = c.iter().map(|s| serde_json::Value::String(s.clone()).to_string()).collect();
                TopLevelGrammar::from_lark(format!("start: {}\n", alts.join(" | ")))
            }
            Constraint::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        })
    }
}

/// JSON written one way: `{"a": 1, "b": [2, 3]}` (one space after `:` and `,`, no other
/// whitespace). llguidance's default lets whitespace run anywhere between tokens, and a small
/// model greedy-decoding a long object can then loop on newlines until its token budget ends
/// (vLLM grew `disable_any_whitespace` for the same reason). A schema's own `x-guidance` options
/// are kept as given.
fn compact_json(schema: serde_json::Value) -> serde_json::Value {
    let mut schema = match schema {
        serde_json::Value::Bool(true) => serde_json::json!({}),
        s => s,
    };
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance").or_insert_with(|| serde_json::json!({ "whitespace_flexible": false, "item_separator": ", ", "key_separator": ": " }));
    }
    schema
}

fn invalid(msg: String) -> Error {
    Error::InvalidRequest { field: "constraint", msg }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// llguidance's view of our tokenizer: the trie, and tokenization of bytes by the HF tokenizer.
struct TokEnvOf {
    trie: TokTrie,
    tokenizer: Arc<TextTokenizer>,
}

impl TokenizerEnv for TokEnvOf {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        self.tokenizer.encode_bytes(s)
    }
}

/// Compiles constraints for one model: its tokenizer's token trie, its vocabulary width (the
/// logits' width, which may pass the tokenizer's), and its end-of-sequence ids.
pub struct ConstraintCompiler {
    factory: ParserFactory,
    vocab: usize,
    eos: Vec<u32>,
}

impl std::fmt::Debug for ConstraintCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintCompiler").field("vocab", &self.vocab).field("eos", &self.eos).finish()
    }
}

impl ConstraintCompiler {
    /// The compiler for a model whose logits are `vocab` wide and whose end-of-sequence ids are
    /// `eos` (the first is the one the grammar allows where the output may end).
    pub fn new(tokenizer: Arc<TextTokenizer>, vocab: usize, eos: &[u32]) -> Result<Self> {
        let Some(&first_eos) = eos.first() else {
            return Err(Error::Tokenize("constrained decoding needs the model's end-of-sequence token (config.json eos_token_id)".into()));
        };
        let mut bytes = tokenizer.token_bytes()?;
        if bytes.len() > vocab {
            return Err(Error::Tokenize(format!("the tokenizer has {} tokens, more than the model's vocabulary of {vocab}", bytes.len())));
        }
        // Ids past the tokenizer (padding rows of the embedding) have no bytes: never allowed.
        bytes.resize(vocab, Vec::new());
        let info = TokRxInfo::new(vocab as u32, first_eos);
        let trie = TokTrie::from(&info, &bytes);
        let env: llguidance::toktrie::TokEnv = Arc::new(TokEnvOf { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| Error::Tokenize(format!("constrained decoding: {e}")))?;
        factory.quiet();
        Ok(ConstraintCompiler { factory, vocab, eos: eos.to_vec() })
    }

    /// One sequence's constraint, with the mask of its first token computed. A constraint that
    /// does not compile, or that no token can start, is `Error::InvalidRequest` naming the
    /// problem.
    pub fn compile(&self, c: &Constraint) -> Result<SeqConstraint> {
        let grammar = c.grammar()?;
        let matcher = Matcher::new(self.factory.create_parser(grammar));
        if let Some(e) = matcher.get_error() {
            return Err(invalid(format!("the {} does not compile: {e}", c.kind())));
        }
        let mut s = SeqConstraint { matcher, vocab: self.vocab, eos: self.eos.clone(), mask: None, state: ConstraintState::Open };
        s.next_mask();
        match &s.state {
            ConstraintState::Open => Ok(s),
            ConstraintState::DeadEnd(why) => Err(invalid(format!("the {} admits no output: {why}", c.kind()))),
            ConstraintState::Complete => Err(invalid(format!("the {} admits only the empty output", c.kind()))),
        }
    }
}

/// Where a constrained output stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintState {
    /// More tokens may come; `SeqConstraint::mask` says which.
    Open,
    /// The output is complete and nothing can follow it.
    Complete,
    /// No token can continue the output and it is not complete (why).
    DeadEnd(String),
}

/// One sequence's constraint: the parser state after the tokens accepted so far, and the mask
/// of the next draw.
pub struct SeqConstraint {
    matcher: Matcher,
    vocab: usize,
    eos: Vec<u32>,
    mask: Option<TokenMask>,
    state: ConstraintState,
}

impl Clone for SeqConstraint {
    fn clone(&self) -> Self {
        SeqConstraint { matcher: self.matcher.deep_clone(), vocab: self.vocab, eos: self.eos.clone(), mask: self.mask.clone(), state: self.state.clone() }
    }
}

impl std::fmt::Debug for SeqConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqConstraint").field("state", &self.state).field("allowed", &self.mask.as_ref().map(TokenMask::count)).finish()
    }
}

impl SeqConstraint {
    /// The tokens the next draw may take (None once the output is complete or dead).
    pub fn mask(&self) -> Option<&TokenMask> {
        self.mask.as_ref()
    }

    /// Where the output stands.
    pub fn state(&self) -> &ConstraintState {
        &self.state
    }

    /// Feeds an accepted token and computes the next mask. An end-of-sequence token ends the
    /// output (it was allowed only where the output is complete).
    pub fn commit(&mut self, token: u32) -> &ConstraintState {
        if self.state != ConstraintState::Open {
            return &self.state;
        }
        if self.eos.contains(&token) {
            self.state = ConstraintState::Complete;
            self.mask = None;
            return &self.state;
        }
        if let Err(e) = self.matcher.consume_token(token) {
            self.state = ConstraintState::DeadEnd(format!("token {token} was not allowed: {e}"));
            self.mask = None;
            return &self.state;
        }
        self.next_mask();
        &self.state
    }

    /// The mask after the tokens so far (or the end: complete, or a dead end).
    fn next_mask(&mut self) {
        self.mask = None;
        if self.matcher.is_stopped() {
            self.state = match self.matcher.get_error() {
                Some(e) => ConstraintState::DeadEnd(e),
                None => ConstraintState::Complete,
            };
            return;
        }
        let vob = match self.matcher.compute_mask() {
            Ok(v) => v,
            Err(e) => {
                self.state = ConstraintState::DeadEnd(e.to_string());
                return;
            }
        };
        let mut words = vob.as_slice().to_vec();
        words.resize(self.vocab.div_ceil(32), 0);
        // Where the grammar allows the end, every end-of-sequence id of the model may end it.
        if vob.is_allowed(self.eos[0]) {
            for &e in &self.eos {
                if (e as usize) < self.vocab {
                    words[e as usize / 32] |= 1 << (e % 32);
                }
            }
        }
        let Ok(mask) = TokenMask::from_words(words, self.vocab) else {
            self.state = ConstraintState::DeadEnd("the mask does not cover the vocabulary".into());
            return;
        };
        if mask.count() == 0 {
            self.state = ConstraintState::DeadEnd("no token of the vocabulary can continue the output".into());
            return;
        }
        self.mask = Some(mask);
    }
}

#[cfg(test)]
mod tests;
