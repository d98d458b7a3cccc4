//! `lorafleet quantize`: a dense HF checkpoint directory -> the same model with its decoder
//! linear weights in bitsandbytes NF4 serialization (what transformers writes for a
//! `load_in_4bit` model): `model.safetensors` (NF4 linears; embeddings, norms, lm_head as stored),
//! `config.json` with the matching `quantization_config`, and the tokenizer files copied.

use std::path::Path;

use crate::quant::bnb::{self, RawTensor};
use crate::quant::Nf4Tensor;
use crate::weights::WeightFiles;
use crate::{Error, Result};

/// Whether `name` is a decoder linear weight (`model.layers.N.{self_attn,mlp}.*_proj.weight`):
/// the tensors that are quantized. Embeddings, norms and lm_head stay as they are.
pub fn is_decoder_linear(name: &str) -> bool {
    const PROJ: [&str; 7] = [
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    ];
    name.starts_with("model.layers.") && PROJ.iter().any(|p| name.ends_with(p))
}

/// Files copied beside the weights when present.
const COPIED: [&str; 6] = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "vocab.json", "merges.txt"];

/// Quantizes the model in `src` into `out` (created). `progress` shows a bar over the tensors.
/// Every decoder linear weight of `cfg` is in `w` with its `[rows, cols]` (NF4 weights as stored
/// by bitsandbytes carry their logical shape in their quant state, checked when loaded).
fn check_linear_shapes(w: &WeightFiles, cfg: &crate::types::ModelConfig, src: &Path) -> Result<()> {
    let (h, q, kv, ff) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
    for layer in 0..cfg.num_layers {
        for (proj, rows, cols) in [
            ("self_attn.q_proj", q, h),
            ("self_attn.k_proj", kv, h),
            ("self_attn.v_proj", kv, h),
            ("self_attn.o_proj", h, q),
            ("mlp.gate_proj", ff, h),
            ("mlp.up_proj", ff, h),
            ("mlp.down_proj", h, ff),
        ] {
            let name = format!("model.layers.{layer}.{proj}.weight");
            if !w.contains(&name) {
                return Err(Error::Config { path: src.to_path_buf(), msg: format!("tensor {name} is missing ({} layers in config.json)", cfg.num_layers) });
            }
            if bnb::is_nf4(w, &name) {
                continue;
            }
            let (_, shape, _, _) = w.raw(&name)?;
            if shape != [rows, cols] {
                return Err(Error::Config { path: src.to_path_buf(), msg: format!("tensor {name} has shape {shape:?}; config.json gives [{rows}, {cols}]") });
            }
        }
    }
    Ok(())
}

/// Writes an NF4 copy of the model folder `src` into `out` (bitsandbytes' layout, as QLoRA
/// loads it).
pub fn quantize_dir(src: &Path, out: &Path, progress: bool) -> Result<()> {
    let cfg_path = src.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let mut cfg: serde_json::Value =
        serde_json::from_str(&cfg_text).map_err(|e| Error::Config { path: cfg_path.clone(), msg: format!("not valid JSON: {e}") })?;
    // The config must be one lorafleet loads, and every decoder linear weight must be there with
    // the shape it gives: a checkpoint is only written from a model that `score` would run.
    let model_cfg = crate::types::ModelConfig::from_json_str(&cfg_text).map_err(|msg| Error::Config { path: cfg_path.clone(), msg })?;
    let w = WeightFiles::open_dir(src)?;
    check_linear_shapes(&w, &model_cfg, src)?;
    // What every loader checks, so that quantize never writes a model they would refuse.
    crate::model::check::layers(&model_cfg, &w).map_err(|msg| Error::Config { path: cfg_path.clone(), msg })?;
    let tok = crate::tokenizer::TextTokenizer::from_dir(src)?;
    crate::model::check::tokenizer_in(src, &tok, Some(model_cfg.vocab_size))?;
    let mut names: Vec<&str> = w.names().collect();
    names.sort_unstable();
    let bar = crate::progress::bar(progress, names.len() as u64, "quantizing");
    let mut tensors: Vec<RawTensor> = Vec::new();
    for name in names {
        let (_, shape, dtype, bytes) = w.raw(name)?;
        if bnb::is_nf4(&w, name) || name.contains(".quant_state.") || !is_decoder_linear(name) || shape.len() != 2 {
            // Already quantized parts, or tensors that stay dense: copied as stored.
            tensors.push((name.to_string(), dtype, shape, bytes.to_vec()));
        } else {
            let t = w.f32(name)?;
            let q = Nf4Tensor::quantize(&t.data, &shape, true);
            let dtype_name = match dtype {
                safetensors::Dtype::BF16 => "bfloat16",
                safetensors::Dtype::F16 => "float16",
                _ => "float32",
            };
            tensors.extend(bnb::serialize(name, &q, dtype_name));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Quantized tensors of already-NF4 inputs were copied above with their companions
    // (`.absmax`, ...), which are not decoder-linear names themselves.
    let compute = cfg.get("torch_dtype").and_then(|v| v.as_str()).unwrap_or("float32").to_string();
    let obj = cfg.as_object_mut().ok_or_else(|| Error::Config { path: cfg_path.clone(), msg: "not a JSON object".into() })?;
    obj.insert(
        "quantization_config".into(),
        serde_json::json!({
            "quant_method": "bitsandbytes",
            "load_in_4bit": true,
            "load_in_8bit": false,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": true,
            "bnb_4bit_compute_dtype": compute,
            "bnb_4bit_quant_storage": "uint8",
            "llm_int8_skip_modules": ["lm_head"],
        }),
    );
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    bnb::write_safetensors(&out.join("model.safetensors"), &tensors)?;
    let cfg_out = out.join("config.json");
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    std::fs::write(&cfg_out, text).map_err(|e| Error::io(&cfg_out, e))?;
    for f in COPIED {
        let p = src.join(f);
        if p.exists() {
            std::fs::copy(&p, out.join(f)).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `quantize` writes nothing from a config lorafleet would refuse or from tensors whose
    /// shapes disagree with it, and quantizes a valid model.
    #[test]
    fn quantize_refuses_invalid_configs_and_shapes() {
        let tmp = std::env::temp_dir().join(format!("lorafleet-quantize-check-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let src = tmp.join("model");
        crate::train::tiny::write_tiny_model(&src, 1).unwrap();
        let cfg_path = src.join("config.json");
        let good = std::fs::read_to_string(&cfg_path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&good).unwrap();
        let with = |k: &str, val: serde_json::Value| {
            let mut v = v.clone();
            v[k] = val;
            v.to_string()
        };
        let ff = v["intermediate_size"].as_u64().unwrap();
        for (bad, needle) in [
            (with("rms_norm_eps", serde_json::json!(-1.0)), "rms_norm_eps"),
            (with("hidden_act", serde_json::json!("gelu")), "hidden_act"),
            (with("intermediate_size", serde_json::json!(ff + 8)), "config.json gives"),
            (with("num_hidden_layers", serde_json::json!(v["num_hidden_layers"].as_u64().unwrap() + 1)), "is missing"),
            (with("num_hidden_layers", serde_json::json!(v["num_hidden_layers"].as_u64().unwrap() - 1)), "but the weights hold 2 decoder layers"),
            (with("eos_token_id", serde_json::json!(64)), "`eos_token_id` 64 is outside the vocabulary"),
        ] {
            std::fs::write(&cfg_path, &bad).unwrap();
            let out = tmp.join("out-bad");
            let e = quantize_dir(&src, &out, false).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
            assert!(!out.exists(), "{needle}: nothing is written");
        }
        std::fs::write(&cfg_path, &good).unwrap();
        // A model no loader takes (no tokenizer, or one that encodes nothing) is not quantized.
        let tok = std::fs::read(src.join("tokenizer.json")).unwrap();
        std::fs::remove_file(src.join("tokenizer.json")).unwrap();
        let e = quantize_dir(&src, &tmp.join("out-notok"), false).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json") && !tmp.join("out-notok").exists(), "{e}");
        std::fs::write(src.join("tokenizer.json"), &tok).unwrap();
        quantize_dir(&src, &tmp.join("out"), false).unwrap();
        assert!(tmp.join("out/model.safetensors").is_file());
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
