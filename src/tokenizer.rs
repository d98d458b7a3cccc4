//! Text <-> token ids: HF `tokenizer.json` (through the `tokenizers` crate), the chat template
//! of `tokenizer_config.json` (through minijinja), and incremental detokenization for streaming.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A model's tokenizer (`tokenizer.json`) with its special tokens and chat template
/// (`tokenizer_config.json`).
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

/// One chat message.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    /// A string, or (OpenAI's newer form) a list of content parts: the text parts are joined
    /// with newlines; any other part (an image, audio) is refused.
    #[serde(deserialize_with = "content_text")]
    pub content: String,
}

impl ChatMessage {
    /// A message from `role` ("system", "user", "assistant").
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }

    /// A user's message.
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage::new("user", content)
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage::new("system", content)
    }
}

fn content_text<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    use serde::de::Error as _;
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(String),
        Parts(Vec<serde_json::Map<String, serde_json::Value>>),
        Null(()),
    }
    match Content::deserialize(d)? {
        Content::Text(s) => Ok(s),
        Content::Null(()) => Ok(String::new()),
        Content::Parts(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for p in parts {
                match (p.get("type").and_then(|t| t.as_str()), p.get("text").and_then(|t| t.as_str())) {
                    (Some("text"), Some(t)) => texts.push(t.to_string()),
                    (ty, _) => return Err(D::Error::custom(format!("content part of type {:?}: only text parts are supported", ty.unwrap_or("?")))),
                }
            }
            Ok(texts.join("\n"))
        }
    }
}

/// Runs `f`, a panic inside it turned into `Err(its message)`, with the panic hook silenced
/// meanwhile (so no "thread panicked" text reaches stderr): the `tokenizers` crate panics on
/// some malformed tokenizer.json files (0.22's decoder deserializer calls `expect("Helper")`),
/// found by trainer/tests/fuzz_parsers.rs. The hook is process-wide: the swap is serialised,
/// and a panic of another thread during it loses only its message.
fn without_panics<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static SWAP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = SWAP.lock().unwrap_or_else(|p| p.into_inner());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    r.map_err(|p| p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a panic".into()))
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::Tokenizer { path, msg: "file not found".into() });
        }
        let inner = without_panics(|| tokenizers::Tokenizer::from_file(&path))
            .map_err(|p| Error::Tokenizer { path: path.clone(), msg: format!("does not parse (the tokenizers crate panicked on it: {p})") })?
            .map_err(|e| Error::Tokenizer { path: path.clone(), msg: format!("does not parse: {e}") })?;
        let mut t = TextTokenizer { inner, chat_template: None, bos_token: None, eos_token: None };
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Tokenizer { path: cfg_path.clone(), msg: format!("not valid JSON: {e}") })?;
            // A token may be given as a string or as {"content": ...}.
            let token = |k: &str| match v.get(k) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_owned),
                None => None,
            };
            t.bos_token = token("bos_token");
            t.eos_token = token("eos_token");
            t.chat_template = match v.get("chat_template") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                // A list of named templates: take "default".
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .find(|e| e.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|e| e.get("template"))
                    .and_then(|s| s.as_str())
                    .map(str::to_owned),
                _ => None,
            };
        }
        Ok(t)
    }

    /// Token ids of `text`, with no special tokens added (special-token text in `text`, such as
    /// `<|im_start|>`, maps to its id).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` with each token's byte range in `text` (`/tokenize`).
    pub fn encode_with_offsets(&self, text: &str) -> Result<Vec<(u32, std::ops::Range<usize>)>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().iter().zip(enc.get_offsets()).map(|(&id, &(a, b))| (id, a..b)).collect())
    }

    /// One token's own text (the piece a log-probability belongs to), special tokens included.
    pub fn token_text(&self, id: u32) -> String {
        self.inner.decode(&[id], false).unwrap_or_default()
    }

    /// The text of `ids` (special tokens left out with `skip_special`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| Error::Tokenize(e.to_string()))
    }

    /// Every token's bytes, by id (a special token's text behind the 0xFF marker byte, as
    /// llguidance's token trie expects; an id with no token: empty): what a token mask is built
    /// over. Byte-level BPE (GPT-2, Llama 3, SmolLM2) and SentencePiece with byte fallback
    /// (Llama 2, Mistral) are read; another decoder is an error.
    pub fn token_bytes(&self) -> Result<Vec<Vec<u8>>> {
        let json = self.inner.to_string(false).map_err(|e| Error::Tokenize(format!("the tokenizer does not serialize: {e}")))?;
        let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| Error::Tokenize(format!("the tokenizer's JSON: {e}")))?;
        without_panics(|| llguidance::token_bytes_from_tokenizer_json(&v))
            .map_err(|p| Error::Tokenize(format!("the token bytes: {p}")))?
            .map_err(|e| Error::Tokenize(format!("the token bytes for constrained decoding: {e}")))
    }

    /// Token ids of raw bytes (invalid UTF-8 replaced), for llguidance's tokenizer interface.
    pub fn encode_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        self.encode(&String::from_utf8_lossy(bytes)).unwrap_or_default()
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token's text.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The end-of-sequence token's text.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders the chat template over `messages`, ending with the assistant's turn opener when
    /// `add_generation_prompt`.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tpl = self.chat_template.as_deref().ok_or_else(|| Error::ChatTemplate("this model's tokenizer_config.json has no chat_template".into()))?;
        let mut env = minijinja::Environment::new();
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", tpl).map_err(|e| Error::ChatTemplate(e.to_string()))?;
        let t = env.get_template("chat").map_err(|e| Error::ChatTemplate(e.to_string()))?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| Error::ChatTemplate(e.to_string()))
    }
}

/// Turns a growing list of token ids into text deltas, holding back bytes of a character that
/// is not complete yet (byte-level BPE splits UTF-8 characters across tokens). The scheme of
/// TGI / vLLM: decode a short window before the new tokens and emit what it adds.
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    /// A decoder at the start of a sequence.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token; returns the text it completes, if any.
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], false)?;
        let full = tok.decode(&self.ids[self.prefix_offset..], false)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.is_char_boundary(prefix.len()) {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(Some(delta))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod load_tests {
    use super::*;

    /// A panic inside the tokenizers crate (it panics on some malformed tokenizer.json files:
    /// trainer/tests/fuzz_parsers.rs seeds 2-22 each found one) comes back as an error, and the
    /// hook is restored after.
    #[test]
    fn panics_while_loading_become_errors() {
        assert_eq!(without_panics(|| 3), Ok(3));
        assert_eq!(without_panics(|| -> u32 { panic!("Helper") }), Err("Helper".to_string()));
        assert_eq!(without_panics(|| -> u32 { panic!("{}", String::from("owned")) }), Err("owned".to_string()));
        // (A tokenizer.json whose decoder is no decoder: train::tiny's tests.)
        let dir = tempfile::tempdir().unwrap();
        assert!(TextTokenizer::from_dir(dir.path()).is_err(), "no file: an error");
    }
}
