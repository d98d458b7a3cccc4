//! HF `config.json` for the Llama family: Llama 2/3, Mistral, SmolLM2, Qwen2 (q/k/v bias).

use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// The model family (their forward passes differ only in biases and RoPE scaling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2 / 3 (and SmolLM2).
    Llama,
    /// Mistral.
    Mistral,
    /// Qwen2 (q/k/v biases).
    Qwen2,
}

/// Llama-3 style RoPE frequency scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3RopeScaling {
    /// Llama 3's RoPE `factor`.
    pub factor: f32,
    /// `low_freq_factor`.
    pub low_freq_factor: f32,
    /// `high_freq_factor`.
    pub high_freq_factor: f32,
    /// `original_max_position_embeddings`.
    pub original_max_position_embeddings: usize,
}

/// A model's shape and constants, from its HF `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The family.
    pub arch: Arch,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// The context: most positions one sequence may hold.
    pub max_position_embeddings: usize,
    /// RMSNorm's epsilon.
    pub rms_norm_eps: f32,
    /// RoPE's base.
    pub rope_theta: f32,
    /// Llama 3's RoPE scaling, if any.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// The lm_head shares the embedding table.
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub attention_bias: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens.
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Reads a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text).map_err(|msg| Error::Config { path: path.to_path_buf(), msg })
    }

    /// Parses a `config.json`'s text.
    pub fn from_json_str(text: &str) -> std::result::Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let archs: Vec<&str> = v.get("architectures").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let arch = match (model_type, archs.first().copied()) {
            ("llama", _) | (_, Some("LlamaForCausalLM")) => Arch::Llama,
            ("mistral", _) | (_, Some("MistralForCausalLM")) => Arch::Mistral,
            ("qwen2", _) | (_, Some("Qwen2ForCausalLM")) => Arch::Qwen2,
            _ => {
                return Err(format!(
                    "unknown architecture (model_type {model_type:?}, architectures {archs:?}); \
                     lorafleet runs llama, mistral and qwen2"
                ))
            }
        };
        let usize_field = |k: &str| -> std::result::Result<usize, String> {
            v.get(k).and_then(Value::as_u64).map(|x| x as usize).ok_or_else(|| format!("missing or non-integer `{k}`"))
        };
        let hidden_size = usize_field("hidden_size")?;
        let num_heads = usize_field("num_attention_heads")?;
        let num_kv_heads = v.get("num_key_value_heads").and_then(Value::as_u64).map(|x| x as usize).unwrap_or(num_heads);
        let head_dim = v.get("head_dim").and_then(Value::as_u64).map(|x| x as usize).unwrap_or(hidden_size.checked_div(num_heads).unwrap_or(0));
        let f32_field = |k: &str, d: f32| v.get(k).and_then(Value::as_f64).map(|x| x as f32).unwrap_or(d);
        let rope_scaling = match v.get("rope_scaling") {
            None | Some(Value::Null) => None,
            Some(rs) => {
                let ty = rs.get("rope_type").or_else(|| rs.get("type")).and_then(Value::as_str).unwrap_or("");
                match ty {
                    "llama3" => {
                        let g = |k: &str| rs.get(k).and_then(Value::as_f64).ok_or_else(|| format!("rope_scaling.{k} missing"));
                        Some(Llama3RopeScaling {
                            factor: g("factor")? as f32,
                            low_freq_factor: g("low_freq_factor")? as f32,
                            high_freq_factor: g("high_freq_factor")? as f32,
                            original_max_position_embeddings: g("original_max_position_embeddings")? as usize,
                        })
                    }
                    "default" | "" => None,
                    other => return Err(format!("rope_scaling type {other:?} is not supported (llama3 is)")),
                }
            }
        };
        // Special token ids: absent or null is none; anything else must be token ids (a negative
        // or fractional one used to be dropped without a word, and generation then never
        // stopped at EOS).
        let ids = |k: &str| -> std::result::Result<Vec<u32>, String> {
            let one = |x: &Value| -> std::result::Result<u32, String> {
                x.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| format!("`{k}` holds {x}; a token id is an integer from 0"))
            };
            match v.get(k) {
                None | Some(Value::Null) => Ok(vec![]),
                Some(Value::Array(a)) => a.iter().map(one).collect(),
                Some(x) => one(x).map(|i| vec![i]),
            }
        };
        // The MLP activation: SiLU is what the forward pass computes (Llama, Mistral, Qwen2).
        match v.get("hidden_act").or_else(|| v.get("hidden_activation")) {
            None | Some(Value::Null) => {}
            Some(Value::String(a)) if a == "silu" || a == "swish" => {}
            Some(other) => return Err(format!("hidden_act {other} is not supported (lorafleet computes silu)")),
        }
        // A number that is present must be one (a string or NaN-like value would silently become
        // the default otherwise).
        for k in ["rms_norm_eps", "rope_theta"] {
            if let Some(x) = v.get(k) {
                if !x.is_number() {
                    return Err(format!("`{k}` is {x}, not a number"));
                }
            }
        }
        let cfg = ModelConfig {
            arch,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            num_layers: usize_field("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: usize_field("vocab_size")?,
            max_position_embeddings: v.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(4096) as usize,
            rms_norm_eps: f32_field("rms_norm_eps", 1e-6),
            rope_theta: f32_field("rope_theta", 10000.0),
            rope_scaling,
            tie_word_embeddings: v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            attention_bias: v.get("attention_bias").and_then(Value::as_bool).unwrap_or(arch == Arch::Qwen2),
            bos_token_id: ids("bos_token_id")?.first().copied(),
            eos_token_ids: ids("eos_token_id")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let nz = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((k, _)) = nz.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{k}` must be positive"));
        }
        // Upper bounds, checked before anything is allocated from these sizes: far above every
        // released model (Llama-3.1-405B: 126 layers, hidden 16384, intermediate 53248, vocab
        // 128256; 1M-token contexts), far below what would exhaust memory by itself.
        let caps = [
            ("hidden_size", self.hidden_size, 1 << 17),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_layers, 1024),
            ("num_attention_heads", self.num_heads, 1024),
            ("num_key_value_heads", self.num_kv_heads, 1024),
            ("head_dim", self.head_dim, 1024),
            ("vocab_size", self.vocab_size, 1 << 22),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 21),
        ];
        if let Some((k, v, cap)) = caps.iter().find(|(_, v, cap)| v > cap) {
            return Err(format!("`{k}` is {v}, above the limit of {cap}"));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(format!("`rms_norm_eps` is {}; it must be a finite number above 0", self.rms_norm_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!("`rope_theta` is {}; it must be a finite number above 0", self.rope_theta));
        }
        if let Some(r) = &self.rope_scaling {
            let ok = [r.factor, r.low_freq_factor, r.high_freq_factor].iter().all(|x| x.is_finite() && *x > 0.0)
                && r.high_freq_factor > r.low_freq_factor
                && r.original_max_position_embeddings > 0;
            if !ok {
                return Err(format!("rope_scaling {r:?}: factors must be finite and positive, high_freq_factor above low_freq_factor"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!("num_attention_heads {} is not a multiple of num_key_value_heads {}", self.num_heads, self.num_kv_heads));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        for (k, id) in self.bos_token_id.iter().map(|&b| ("bos_token_id", b)).chain(self.eos_token_ids.iter().map(|&e| ("eos_token_id", e))) {
            if id as usize >= self.vocab_size {
                return Err(format!("`{k}` {id} is outside the vocabulary (vocab_size {})", self.vocab_size));
            }
        }
        Ok(())
    }

    /// Query features (`num_heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    /// Key (or value) features (`num_kv_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// RoPE inverse frequencies `[head_dim / 2]`, as HF computes them in f32, with Llama-3
    /// scaling applied when configured.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let mut inv: Vec<f32> = (0..d / 2).map(|i| 1.0f32 / self.rope_theta.powf((2 * i) as f32 / d as f32)).collect();
        if let Some(s) = &self.rope_scaling {
            // transformers' _compute_llama3_parameters.
            let old = s.original_max_position_embeddings as f32;
            let low_wavelen = old / s.low_freq_factor;
            let high_wavelen = old / s.high_freq_factor;
            for f in inv.iter_mut() {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= s.factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                }
            }
        }
        inv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":576,
        "intermediate_size":1536,"num_attention_heads":9,"num_key_value_heads":3,"num_hidden_layers":30,
        "vocab_size":49152,"rms_norm_eps":1e-5,"rope_theta":100000.0,"tie_word_embeddings":true,
        "max_position_embeddings":8192,"bos_token_id":1,"eos_token_id":2}"#;

    #[test]
    fn parses_smollm2() {
        let c = ModelConfig::from_json_str(SMOL).unwrap();
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.kv_dim(), 192);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert!(c.tie_word_embeddings);
        let inv = c.rope_inv_freq();
        assert_eq!(inv.len(), 32);
        assert_eq!(inv[0], 1.0);
        assert!((inv[31] - 1.0 / 100000f32.powf(62.0 / 64.0)).abs() < 1e-12);
    }

    /// Sizes past sane caps (which would allocate without end), non-positive or non-finite
    /// eps and theta (NaN logits), and an activation other than SiLU (silently wrong output) are
    /// refused, naming the field.
    #[test]
    fn rejects_sizes_past_the_caps_bad_numerics_and_other_activations() {
        for (from, to, needle) in [
            ("\"num_hidden_layers\":30", "\"num_hidden_layers\":1000000000", "`num_hidden_layers` is 1000000000, above the limit"),
            ("\"max_position_embeddings\":8192", "\"max_position_embeddings\":4611686018427387904", "`max_position_embeddings` is 4611686018427387904"),
            ("\"vocab_size\":49152", "\"vocab_size\":100000000", "`vocab_size` is 100000000"),
            ("\"rms_norm_eps\":1e-5", "\"rms_norm_eps\":-1e-5", "`rms_norm_eps` is -0.00001"),
            ("\"rms_norm_eps\":1e-5", "\"rms_norm_eps\":\"small\"", "`rms_norm_eps` is \"small\", not a number"),
            ("\"rope_theta\":100000.0", "\"rope_theta\":0", "`rope_theta` is 0"),
            ("\"rope_theta\":100000.0", "\"rope_theta\":-5", "`rope_theta` is -5"),
            ("\"rope_theta\":100000.0", "\"rope_theta\":1e300", "`rope_theta` is inf"),
            ("\"model_type\":\"llama\"", "\"model_type\":\"llama\",\"hidden_act\":\"gelu\"", "hidden_act \"gelu\" is not supported"),
            // Special token ids: inside the vocabulary, non-negative integers.
            ("\"eos_token_id\":2", "\"eos_token_id\":49152", "`eos_token_id` 49152 is outside the vocabulary (vocab_size 49152)"),
            ("\"eos_token_id\":2", "\"eos_token_id\":[2, 60000]", "`eos_token_id` 60000 is outside the vocabulary"),
            ("\"eos_token_id\":2", "\"eos_token_id\":-1", "`eos_token_id` holds -1; a token id is an integer from 0"),
            ("\"eos_token_id\":2", "\"eos_token_id\":2.5", "`eos_token_id` holds 2.5"),
            ("\"bos_token_id\":1", "\"bos_token_id\":-7", "`bos_token_id` holds -7"),
            ("\"bos_token_id\":1", "\"bos_token_id\":1000000", "`bos_token_id` 1000000 is outside the vocabulary"),
        ] {
            let bad = SMOL.replace(from, to);
            assert_ne!(bad, SMOL, "{from}");
            let e = ModelConfig::from_json_str(&bad).unwrap_err();
            assert!(e.contains(needle), "{to}: {e}");
        }
        let silu = SMOL.replace("\"model_type\":\"llama\"", "\"model_type\":\"llama\",\"hidden_act\":\"silu\"");
        ModelConfig::from_json_str(&silu).unwrap();
        // No special ids (absent or null) is allowed: generation then stops only at its limits.
        let none = SMOL.replace(",\"bos_token_id\":1,\"eos_token_id\":2", ",\"bos_token_id\":null");
        assert_ne!(none, SMOL);
        let c = ModelConfig::from_json_str(&none).unwrap();
        assert!(c.bos_token_id.is_none() && c.eos_token_ids.is_empty());
    }

    #[test]
    fn rejects_unknown_arch_and_bad_heads() {
        let e = ModelConfig::from_json_str(r#"{"model_type":"gpt2","architectures":["GPT2LMHeadModel"]}"#).unwrap_err();
        assert!(e.contains("unknown architecture"), "{e}");
        let bad = SMOL.replace("\"num_key_value_heads\":3", "\"num_key_value_heads\":4");
        assert!(ModelConfig::from_json_str(&bad).unwrap_err().contains("multiple"));
        assert!(ModelConfig::from_json_str("{not json").unwrap_err().contains("JSON"));
    }

    #[test]
    fn llama3_scaling_changes_only_low_frequencies() {
        let j = SMOL.replace(
            "\"tie_word_embeddings\":true",
            "\"tie_word_embeddings\":true,\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\
             \"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}",
        );
        let scaled = ModelConfig::from_json_str(&j).unwrap().rope_inv_freq();
        let plain = ModelConfig::from_json_str(SMOL).unwrap().rope_inv_freq();
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[31] - plain[31] / 8.0).abs() <= plain[31] * 1e-6);
    }
}
