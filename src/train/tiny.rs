//! A tiny Llama with random weights, written as an HF model directory (`config.json` +
//! `model.safetensors`): tests of the trainer (finite differences through the whole decoder,
//! resume) run on it in milliseconds instead of loading the real model.

use std::path::Path;

use crate::train::grads::write_f32_safetensors;
use crate::{Error, Result};

/// Shape of the tiny model: 2 layers, hidden 32, 4 query heads over 2 KV heads of 8, MLP 48,
/// vocabulary 64, tied embeddings.
pub const CONFIG_JSON: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":32,
"intermediate_size":48,"num_attention_heads":4,"num_key_value_heads":2,"num_hidden_layers":2,"head_dim":8,
"vocab_size":64,"rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":true,
"max_position_embeddings":128,"bos_token_id":1,"eos_token_id":2}"#;

/// A word-level tokenizer over the tiny vocabulary (`[UNK]`, `<s>`, `</s>`, then `w3` .. `w63`,
/// split on whitespace): enough for the directory to be a model every loader accepts.
pub fn tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["[UNK]", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(t.to_string(), i.into());
    }
    for i in 3..64 {
        vocab.insert(format!("w{i}"), i.into());
    }
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": { "type": "Whitespace" }, "post_processor": null, "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]" }
    })
    .to_string()
}

/// Writes the tiny model with weights drawn from `seed` into `dir`.
pub fn write_tiny_model(dir: &Path, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    std::fs::write(dir.join("config.json"), CONFIG_JSON).map_err(|e| Error::io(dir.join("config.json"), e))?;
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).map_err(|e| Error::io(dir.join("tokenizer.json"), e))?;
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rand = |n: usize, scale: f32, offset: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                offset + scale * (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            })
            .collect()
    };
    let (h, ff, qd, kvd, vocab) = (32usize, 48usize, 32usize, 16usize, 64usize);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> =
        vec![("model.embed_tokens.weight".into(), vec![vocab, h], rand(vocab * h, 1.0, 0.0)), ("model.norm.weight".into(), vec![h], rand(h, 0.2, 1.0))];
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        // Weights ~ U(-1, 1)/sqrt(in), so activations stay O(1) through the layers.
        for (name, rows, cols) in [
            ("self_attn.q_proj", qd, h),
            ("self_attn.k_proj", kvd, h),
            ("self_attn.v_proj", kvd, h),
            ("self_attn.o_proj", h, qd),
            ("mlp.gate_proj", ff, h),
            ("mlp.up_proj", ff, h),
            ("mlp.down_proj", h, ff),
        ] {
            tensors.push((format!("{p}.{name}.weight"), vec![rows, cols], rand(rows * cols, 1.0 / (cols as f32).sqrt(), 0.0)));
        }
        tensors.push((format!("{p}.input_layernorm.weight"), vec![h], rand(h, 0.2, 1.0)));
        tensors.push((format!("{p}.post_attention_layernorm.weight"), vec![h], rand(h, 0.2, 1.0)));
    }
    let views: Vec<(String, Vec<usize>, &[f32])> = tensors.iter().map(|(n, s, v)| (n.clone(), s.clone(), &v[..])).collect();
    write_f32_safetensors(&dir.join("model.safetensors"), &views)
}

#[cfg(test)]
mod tests {
    use crate::tokenizer::TextTokenizer;

    /// The tiny tokenizer loads; the same file with a decoder that is no decoder is a clean error
    /// from `TextTokenizer::from_dir` (the tokenizers crate panics on it), not a panic.
    #[test]
    fn the_tiny_tokenizer_loads_and_a_broken_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&super::tokenizer_json()).unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), v.to_string()).unwrap();
        assert!(TextTokenizer::from_dir(dir.path()).is_ok());
        v["decoder"] = serde_json::json!(5);
        std::fs::write(dir.path().join("tokenizer.json"), v.to_string()).unwrap();
        let e = TextTokenizer::from_dir(dir.path()).err().expect("refused").to_string();
        assert!(e.contains("does not parse"), "{e}");
    }
}
