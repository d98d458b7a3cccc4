//! Load-time checks that every verb opening a model directory runs (generate, score, eval, serve,
//! bench, quantize, the trainer), so a checkpoint that would run wrong is refused at load with
//! what is wrong, not accepted: the weights hold no decoder layer past `num_hidden_layers`, and
//! the tokenizer has a vocabulary, encodes text, and gives only ids inside the model's vocabulary.
//! (The special token ids of config.json are checked when it parses: `ModelConfig`.)

use crate::tokenizer::TextTokenizer;
use crate::types::ModelConfig;
use crate::weights::WeightFiles;

/// The highest decoder layer index the weights hold (`model.layers.N.*`), if any.
fn highest_layer(w: &WeightFiles) -> Option<usize> {
    w.names().filter_map(|n| n.strip_prefix("model.layers.")?.split('.').next()?.parse::<usize>().ok()).max()
}

/// The weights hold no layer past the config's `num_hidden_layers` (a config that declares fewer
/// layers than the checkpoint holds would run a truncated model without a word; one that
/// declares more fails on the missing tensor when it loads).
pub fn layers(config: &ModelConfig, w: &WeightFiles) -> Result<(), String> {
    match highest_layer(w) {
        Some(top) if top >= config.num_layers => Err(format!(
            "config.json gives num_hidden_layers = {}, but the weights hold {} decoder layers (model.layers.0 .. model.layers.{top})",
            config.num_layers,
            top + 1
        )),
        _ => Ok(()),
    }
}

/// Text the tokenizer must turn into ids: words, punctuation, digits.
const PROBE: &str = "The quick brown fox jumps over the lazy dog, 0123456789 times!";

/// The tokenizer has a vocabulary and encodes text into at least one id, each below `vocab_size`
/// when given (the model's; `None` for random weights of a named shape, whose vocabulary the
/// prompts are checked against one by one).
pub fn tokenizer(tok: &TextTokenizer, vocab_size: Option<usize>) -> Result<(), String> {
    if tok.vocab_size() == 0 {
        return Err("tokenizer.json has an empty vocabulary".into());
    }
    let ids = tok.encode(PROBE).map_err(|e| format!("tokenizer.json cannot encode text ({e})"))?;
    if ids.is_empty() {
        return Err(format!("tokenizer.json encodes text into no tokens (the probe {PROBE:?} gave none)"));
    }
    if let Some(v) = vocab_size {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= v) {
            return Err(format!("tokenizer.json gives token id {bad}, outside the model's vocabulary (vocab_size {v} in config.json)"));
        }
    }
    Ok(())
}

/// [`tokenizer`] for the model directory `dir`, as the crate's error (naming the file).
pub fn tokenizer_in(dir: &std::path::Path, tok: &TextTokenizer, vocab_size: Option<usize>) -> crate::Result<()> {
    tokenizer(tok, vocab_size).map_err(|msg| crate::Error::Tokenizer { path: dir.join("tokenizer.json"), msg })
}
