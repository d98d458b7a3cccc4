//! `lorafleet quantize`: a dense HF checkpoint directory -> the same model with its decoder
//! linear weights in bitsandbytes NF4 serialization (what transformers writes for a
//! `load_in_4bit` model): `model.safetensors` (NF4 linears; embeddings, norms, lm_head as stored),
//! `config.json` with the matching `quantization_config`, and the tokenizer files copied.

use std::path::Path;

use super::bnb::{self, RawTensor};
use super::Nf4Tensor;
use crate::model::weights::WeightFiles;
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
const COPIED: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
];

/// Quantizes the model in `src` into `out` (created). `progress` shows a bar over the tensors.
pub fn quantize_dir(src: &Path, out: &Path, progress: bool) -> Result<()> {
    let cfg_path = src.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let mut cfg: serde_json::Value = serde_json::from_str(&cfg_text)
        .map_err(|e| Error::Config { path: cfg_path.clone(), msg: format!("not valid JSON: {e}") })?;
    let w = WeightFiles::open_dir(src)?;
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
