//! Full-size models without checkpoints: named shapes (`mistral-7b`, `llama-3-8b`, ...) and
//! seeded random weights of a config's shape, dense or NF4, so full-size benchmarks run where
//! no checkpoint can be brought. NF4 weights are drawn as random 4-bit codes with one plain
//! absmax per block (no f32 matrix is ever made), so a 7B model is built in seconds.
//!
//! Scales keep activations well-behaved through many layers: linear weights ~ U(-1, 1) /
//! sqrt(in), norms 1, embeddings ~ U(-1, 1) · 0.02.

use super::llama::WeightSource;
use crate::backend::random::{RandomFormat, RandomSpec};
use crate::backend::{HostMatrix, HostWeight};
use crate::rng::SplitMix64;
use crate::types::config::ModelConfig;
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
    Err(Error::InvalidArgument(format!("random weights {name_or_path:?} (option `random_weights`): not a file and not a known shape ({})", names.join(", "))))
}

/// Seeded random weights. Each tensor's values depend only on (seed, name), so two loads with the
/// same seed are identical whatever the order or the backend: decoder linear weights are
/// described (`HostWeight::Random`) and created by the backend where they live (on the device for
/// CUDA: kernels/random.cu), tables are made on the host with the same generator.
pub struct RandomWeights {
    /// The seed every tensor's values derive from.
    pub seed: u64,
    /// Decoder linear weights in NF4 (else dense f32, or bf16 with `bf16`).
    pub nf4: bool,
}

impl RandomWeights {
    /// Linear weights in `format`.
    pub fn with_format(seed: u64, format: RandomFormat) -> RandomFormatWeights {
        RandomFormatWeights { seed, format }
    }

    fn seed_of(seed: u64, name: &str) -> u64 {
        // FNV-1a of the name, mixed with the seed.
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        SplitMix64::new(seed ^ h).next_u64()
    }
}

/// Random weights whose linear layers are in any `RandomFormat` (NF4, bf16 or f32).
pub struct RandomFormatWeights {
    /// The seed every tensor's values derive from.
    pub seed: u64,
    /// How the linear layers are held.
    pub format: RandomFormat,
}

fn dense_table(seed: u64, name: &str, rows: usize, cols: usize) -> HostMatrix {
    // Embedding / lm_head scale.
    let data = crate::backend::random::uniform(RandomWeights::seed_of(seed, name), rows * cols, -0.02, 0.04);
    HostMatrix { name: name.to_string(), rows, cols, data }
}

fn random_linear(seed: u64, format: RandomFormat, name: &str, rows: usize, cols: usize) -> HostWeight {
    HostWeight::Random(RandomSpec {
        name: name.to_string(),
        rows,
        cols,
        format,
        seed: RandomWeights::seed_of(seed, name),
        // U(-1, 1) / sqrt(in): activations stay O(1) through the layers; NF4 block scales span
        // [0.75, 1] of it.
        scale: 1.0 / (cols as f32).sqrt(),
    })
}

impl WeightSource for RandomWeights {
    fn dense(&self, name: &str, rows: usize, cols: usize) -> Result<HostMatrix> {
        Ok(dense_table(self.seed, name, rows, cols))
    }

    fn linear(&self, name: &str, rows: usize, cols: usize) -> Result<HostWeight> {
        Ok(random_linear(self.seed, if self.nf4 { RandomFormat::Nf4 } else { RandomFormat::F32 }, name, rows, cols))
    }

    fn vector(&self, _name: &str, n: usize) -> Result<Vec<f32>> {
        Ok(vec![1.0; n])
    }

    fn contains(&self, name: &str) -> bool {
        // Untied configs get an lm_head; tied ones share the embeddings.
        name == "lm_head.weight"
    }
}

impl WeightSource for RandomFormatWeights {
    fn dense(&self, name: &str, rows: usize, cols: usize) -> Result<HostMatrix> {
        Ok(dense_table(self.seed, name, rows, cols))
    }

    fn linear(&self, name: &str, rows: usize, cols: usize) -> Result<HostWeight> {
        Ok(random_linear(self.seed, self.format, name, rows, cols))
    }

    fn vector(&self, _name: &str, n: usize) -> Result<Vec<f32>> {
        Ok(vec![1.0; n])
    }

    fn contains(&self, name: &str) -> bool {
        name == "lm_head.weight"
    }
}

/// A whole model of seeded random weights (`--random-weights SHAPE --random-seed S`): full-size
/// shapes where no checkpoint can be brought (benchmarks, memory sizing).
#[derive(Debug, Clone)]
pub struct RandomModel {
    /// What `--random-weights` named (a built-in shape or a config.json path).
    pub name: String,
    /// The shape.
    pub config: ModelConfig,
    /// The seed.
    pub seed: u64,
}

impl RandomModel {
    /// `name_or_path`: a built-in shape (`NAMED_SHAPES`) or a `config.json` path.
    pub fn new(name_or_path: &str, seed: u64) -> Result<Self> {
        Ok(RandomModel { name: name_or_path.to_string(), config: config_named_or_file(name_or_path)?, seed })
    }

    /// The linear weights' format for a base format flag (f32, bf16 or NF4).
    pub fn linear_format(format: crate::model::BaseFormat) -> RandomFormat {
        match format {
            crate::model::BaseFormat::F32 => RandomFormat::F32,
            crate::model::BaseFormat::Bf16 => RandomFormat::Bf16,
            crate::model::BaseFormat::Nf4 => RandomFormat::Nf4,
        }
    }

    /// Builds the model on `be`: linear weights are created where they live (on a CUDA device by
    /// kernels/random.cu), so a 7B NF4 model never passes through host memory.
    pub fn load<B: crate::backend::Backend>(&self, be: &B, format: crate::model::BaseFormat, progress: bool) -> Result<crate::model::Llama<B>> {
        let src = RandomWeights::with_format(self.seed, Self::linear_format(format));
        crate::model::Llama::from_source(be, self.config.clone(), &src, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::random::materialize;

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
        let nf4 = |w: HostWeight| match w {
            HostWeight::Random(spec) => match materialize(&spec) {
                HostWeight::Nf4 { tensor, .. } => tensor,
                _ => panic!("not nf4"),
            },
            _ => panic!("not a random spec"),
        };
        let a = nf4(r.linear("x", 100, 77).unwrap());
        let b = nf4(r.linear("x", 100, 77).unwrap());
        assert_eq!(a, b);
        a.validate().unwrap();
        let d = a.dequantize();
        assert!(d.iter().all(|v| v.abs() <= 1.0 / 77f32.sqrt() + 1e-6));
        assert!(d.iter().filter(|v| **v != 0.0).count() > d.len() / 2);
        let c = nf4(r.linear("y", 100, 77).unwrap());
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
