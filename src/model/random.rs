//! Full-size models without checkpoints: named shapes (`mistral-7b`, `llama-3-8b`, ...) and
//! seeded random weights of a config's shape, dense or NF4, so full-size benchmarks run where
//! no checkpoint can be brought. NF4 weights are drawn as random 4-bit codes with one plain
//! absmax per block (no f32 matrix is ever made), so a 7B model is built in seconds.
//!
//! Scales keep activations well-behaved through many layers: linear weights ~ U(-1, 1) /
//! sqrt(in), norms 1, embeddings ~ U(-1, 1) · 0.02.

use super::config::ModelConfig;
use super::llama::WeightSource;
use crate::backend::{HostMatrix, HostWeight};
use crate::quant::nf4::{Absmax, Nf4Tensor, NF4_BLOCK, NF4_CODE};
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// Named shapes, as their HF `config.json`s give them.
pub const NAMED_SHAPES: &[(&str, &str)] = &[
    (
        "mistral-7b",
        r#"{"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "tie_word_embeddings": false,
            "bos_token_id": 1, "eos_token_id": 2}"#,
    ),
    (
        "llama-3-8b",
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": false,
            "bos_token_id": 128000, "eos_token_id": 128001}"#,
    ),
    (
        "smollm2-135m",
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": true,
            "bos_token_id": 1, "eos_token_id": 2}"#,
    ),
];

/// A named shape, or a `config.json` path.
pub fn config_named_or_file(name_or_path: &str) -> Result<ModelConfig> {
    if let Some((_, json)) = NAMED_SHAPES.iter().find(|(n, _)| *n == name_or_path) {
        return ModelConfig::from_json_str(json).map_err(|msg| Error::InvalidArgument(format!("built-in shape {name_or_path}: {msg}")));
    }
    let p = std::path::Path::new(name_or_path);
    if p.is_file() {
        return ModelConfig::from_file(p);
    }
    let names: Vec<&str> = NAMED_SHAPES.iter().map(|(n, _)| *n).collect();
    Err(Error::InvalidArgument(format!("--config {name_or_path:?}: not a file and not a known shape ({})", names.join(", "))))
}

/// Seeded random weights. Each tensor's values depend only on (seed, name), so two loads
/// with the same seed are identical whatever the order.
pub struct RandomWeights {
    pub seed: u64,
    /// Decoder linear weights in NF4 (else dense f32).
    pub nf4: bool,
}

impl RandomWeights {
    fn rng(&self, name: &str) -> SplitMix64 {
        // FNV-1a of the name, mixed with the seed.
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        SplitMix64::new(self.seed ^ h)
    }
}

impl WeightSource for RandomWeights {
    fn dense(&self, name: &str, rows: usize, cols: usize) -> Result<HostMatrix> {
        let mut rng = self.rng(name);
        // Embedding / lm_head scale.
        let data = (0..rows * cols).map(|_| rng.uniform() * 0.02).collect();
        Ok(HostMatrix { name: name.to_string(), rows, cols, data })
    }

    fn linear(&self, name: &str, rows: usize, cols: usize) -> Result<HostWeight> {
        let mut rng = self.rng(name);
        let scale = 1.0 / (cols as f32).sqrt();
        if !self.nf4 {
            let data = (0..rows * cols).map(|_| rng.uniform() * scale).collect();
            return Ok(HostWeight::Dense(HostMatrix { name: name.to_string(), rows, cols, data }));
        }
        let numel = rows * cols;
        let mut packed = vec![0u8; numel.div_ceil(2)];
        for chunk in packed.chunks_mut(8) {
            let r = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        // NF4 levels span [-1, 1] times absmax; absmax = scale keeps U(-1,1)/sqrt(in)'s range.
        let absmax = (0..numel.div_ceil(NF4_BLOCK)).map(|_| scale * (0.75 + 0.25 * rng.unit())).collect();
        let tensor = Nf4Tensor { shape: vec![rows, cols], blocksize: NF4_BLOCK, packed, absmax: Absmax::Plain(absmax), code: NF4_CODE };
        Ok(HostWeight::Nf4 { name: name.to_string(), tensor })
    }

    fn vector(&self, _name: &str, n: usize) -> Result<Vec<f32>> {
        Ok(vec![1.0; n])
    }

    fn contains(&self, name: &str) -> bool {
        // Untied configs get an lm_head; tied ones share the embeddings.
        name == "lm_head.weight"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_shapes_parse() {
        let m = config_named_or_file("mistral-7b").unwrap();
        assert_eq!((m.hidden_size, m.intermediate_size, m.num_layers, m.num_kv_heads, m.head_dim, m.vocab_size), (4096, 14336, 32, 8, 128, 32000));
        let l = config_named_or_file("llama-3-8b").unwrap();
        assert_eq!(l.vocab_size, 128256);
        assert!(config_named_or_file("gpt-5").unwrap_err().to_string().contains("mistral-7b"));
    }

    #[test]
    fn random_weights_are_seeded_per_name_and_nf4_valid() {
        let r = RandomWeights { seed: 5, nf4: true };
        let HostWeight::Nf4 { tensor: a, .. } = r.linear("x", 100, 77).unwrap() else { panic!("not nf4") };
        let HostWeight::Nf4 { tensor: b, .. } = r.linear("x", 100, 77).unwrap() else { panic!("not nf4") };
        assert_eq!(a, b);
        a.validate().unwrap();
        let d = a.dequantize();
        assert!(d.iter().all(|v| v.abs() <= 1.0 / 77f32.sqrt() + 1e-6));
        assert!(d.iter().filter(|v| **v != 0.0).count() > d.len() / 2);
        let HostWeight::Nf4 { tensor: c, .. } = r.linear("y", 100, 77).unwrap() else { panic!("not nf4") };
        assert_ne!(a.packed, c.packed);
    }

    #[test]
    fn a_random_model_runs_dense_and_nf4() {
        use crate::backend::cpu::CpuBackend;
        use crate::model::Llama;
        let cfg = ModelConfig::from_json_str(
            r#"{"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
                "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": false}"#,
        )
        .unwrap();
        let be = CpuBackend::new();
        let ids: Vec<u32> = (0..20).map(|i| (i * 37 % 300) as u32).collect();
        for nf4 in [false, true] {
            let m = Llama::from_source(&be, cfg.clone(), &RandomWeights { seed: 1, nf4 }, false).unwrap();
            let s = crate::engine::score(&m, &be, &ids).unwrap();
            assert!(s.last_logits.iter().all(|v| v.is_finite()));
            let spread = s.last_logits.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!(spread > 1e-4, "logits all ~0: the random model is degenerate");
        }
    }
}
