//! GGUF -> HF model directory: hyper-parameters and `config.json`, tensor names and layouts
//! (including undoing llama.cpp's q/k row permutation), and the conversion driver.

use std::path::Path;

use serde_json::{json, Map, Value};

pub use super::output::OutDType;
use super::output::{write_safetensors, OutTensor, StagingDir};
use super::reader::{GgufFile, GgufValue, TensorInfo};
use super::tokenizer::{build_tokenizer_config_json, build_tokenizer_json};
use super::GgufError;

/// Undoes llama.cpp's RoPE row permutation of `attn_q` / `attn_k` (weights or biases).
///
/// `data` is row-major [n_rows, cols] with n_rows = n_head * head_dim. llama.cpp's convert does
/// `w.reshape(n_head, 2, head_dim/2, cols).swapaxes(1, 2).reshape(n_rows, cols)`, i.e. GGUF row
/// `h*head_dim + 2*i + s` holds HF row `h*head_dim + s*head_dim/2 + i` (s in {0, 1}), which
/// turns HF's rotate-half pairs (i, i + head_dim/2) into GGML's adjacent pairs (2i, 2i+1).
/// `None` when the shape does not split into `n_head` heads of even size.
pub fn unpermute_rows(data: &[f32], n_rows: usize, n_head: usize) -> Option<Vec<f32>> {
    if n_head == 0 || n_rows == 0 || !n_rows.is_multiple_of(2 * n_head) || !data.len().is_multiple_of(n_rows) {
        return None;
    }
    let cols = data.len() / n_rows;
    let head_dim = n_rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for s in 0..2 {
            for i in 0..half {
                let src = (h * head_dim + 2 * i + s) * cols;
                let dst = (h * head_dim + s * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    Some(out)
}

/// Architectures this importer knows. Both use llama.cpp's tensor names; they differ in the
/// q/k permutation (llama only), q/k/v biases (qwen2) and the HF class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arch {
    Llama,
    Qwen2,
}

/// The hyper-parameters `config.json` needs, read from `<arch>.*` metadata.
#[derive(Debug)]
struct Hparams {
    arch: Arch,
    arch_name: String,
    n_layer: usize,
    hidden: usize,
    ffn: usize,
    n_head: usize,
    n_kv: usize,
    head_dim: usize,
    rms_eps: f64,
    rope_theta: f64,
    ctx: usize,
    vocab: usize,
    tied: bool,
    rope_scaling: Option<Value>,
}

/// An f32 metadata value as the decimal it was written from (1e-5, not 9.99999974e-6), so that
/// config.json reads like the HF original; f64 values pass through.
fn decimal(v: &GgufValue) -> Option<f64> {
    match *v {
        GgufValue::F32(x) => format!("{x}").parse().ok(),
        GgufValue::F64(x) => Some(x),
        _ => None,
    }
}

fn model_err(g: &GgufFile, msg: String) -> GgufError {
    GgufError::Model { path: g.path().to_path_buf(), msg }
}

fn get_decimal(g: &GgufFile, key: &str) -> Result<Option<f64>, GgufError> {
    g.get_f64(key)?; // type check with a clear error
    Ok(g.get(key).and_then(decimal))
}

fn read_hparams(g: &GgufFile) -> Result<Hparams, GgufError> {
    let arch_name = g.req_str("general.architecture")?.to_string();
    let arch = match arch_name.as_str() {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        _ => return Err(GgufError::UnsupportedArch { path: g.path().to_path_buf(), arch: arch_name }),
    };
    let a = &arch_name;
    let usize_key = |k: &str| g.req_u64(&format!("{a}.{k}")).map(|v| v as usize);
    if g.get_u64(&format!("{a}.expert_count"))?.unwrap_or(0) > 0 {
        return Err(model_err(g, "mixture-of-experts models are not supported".into()));
    }
    let n_layer = usize_key("block_count")?;
    // The layers the file holds, from its tensor names: a block_count that disagrees (e.g. 1e9)
    // must not drive any loop or allocation.
    let present = g.tensors().iter().filter_map(|t| t.name.strip_prefix("blk.")?.split_once('.')?.0.parse::<usize>().ok()).max().map_or(0, |m| m + 1);
    if n_layer != present {
        return Err(model_err(g, format!("{a}.block_count is {n_layer} but the file holds tensors of {present} layers")));
    }
    let hidden = usize_key("embedding_length")?;
    let ffn = usize_key("feed_forward_length")?;
    let n_head = usize_key("attention.head_count")?;
    let n_kv = g.get_u64(&format!("{a}.attention.head_count_kv"))?.map_or(n_head, |v| v as usize);
    let ctx = usize_key("context_length")?;
    let eps_key = format!("{a}.attention.layer_norm_rms_epsilon");
    let rms_eps = get_decimal(g, &eps_key)?.ok_or_else(|| GgufError::MissingKey { path: g.path().to_path_buf(), key: eps_key })?;
    // llama.cpp's default when the key is absent.
    let rope_theta = get_decimal(g, &format!("{a}.rope.freq_base"))?.unwrap_or(10000.0);
    if n_head == 0 || n_kv == 0 || n_head % n_kv != 0 {
        return Err(model_err(g, format!("bad head counts: {n_head} attention heads, {n_kv} key/value heads")));
    }
    let head_dim = match g.get_u64(&format!("{a}.attention.key_length"))? {
        Some(d) => d as usize,
        None if hidden % n_head == 0 => hidden / n_head,
        None => return Err(model_err(g, format!("embedding_length {hidden} is not a multiple of head_count {n_head}"))),
    };
    if head_dim % 2 != 0 {
        return Err(model_err(g, format!("head dimension {head_dim} is odd (RoPE needs pairs)")));
    }
    if let Some(v) = g.get_u64(&format!("{a}.attention.value_length"))? {
        if v as usize != head_dim {
            return Err(model_err(g, format!("value_length {v} differs from key_length {head_dim}")));
        }
    }
    if let Some(r) = g.get_u64(&format!("{a}.rope.dimension_count"))? {
        if r as usize != head_dim {
            return Err(model_err(g, format!("partial rotary embeddings (rope.dimension_count {r} < head_dim {head_dim}) are not supported")));
        }
    }

    let embed = g.tensor("token_embd.weight").ok_or_else(|| model_err(g, "missing tensor token_embd.weight".into()))?;
    let vocab = match embed.dims.as_slice() {
        [cols, rows] if *cols as usize == hidden => *rows as usize,
        d => return Err(model_err(g, format!("token_embd.weight has ne {d:?}, expected [{hidden}, vocab]"))),
    };
    if let Some(v) = g.get_u64(&format!("{a}.vocab_size"))? {
        if v as usize != vocab {
            return Err(model_err(g, format!("{a}.vocab_size is {v} but token_embd.weight has {vocab} rows")));
        }
    }
    let tied = g.tensor("output.weight").is_none();
    let rope_scaling = read_rope_scaling(g, a)?;
    Ok(Hparams { arch, arch_name: arch_name.clone(), n_layer, hidden, ffn, n_head, n_kv, head_dim, rms_eps, rope_theta, ctx, vocab, tied, rope_scaling })
}

/// HF `rope_scaling` from `<arch>.rope.scaling.*` (or the older `rope.scale_linear`).
fn read_rope_scaling(g: &GgufFile, a: &str) -> Result<Option<Value>, GgufError> {
    let ty = g.get_str(&format!("{a}.rope.scaling.type"))?;
    let factor = get_decimal(g, &format!("{a}.rope.scaling.factor"))?;
    let legacy = get_decimal(g, &format!("{a}.rope.scale_linear"))?;
    let orig = g.get_u64(&format!("{a}.rope.scaling.original_context_length"))?;
    Ok(match (ty, factor, legacy) {
        (Some("none"), _, _) => None,
        (Some("linear"), Some(f), _) | (None, None, Some(f)) if f != 1.0 => Some(json!({ "type": "linear", "rope_type": "linear", "factor": f })),
        (Some("yarn"), Some(f), _) => {
            let mut m = Map::new();
            m.insert("type".into(), json!("yarn"));
            m.insert("rope_type".into(), json!("yarn"));
            m.insert("factor".into(), json!(f));
            if let Some(o) = orig {
                m.insert("original_max_position_embeddings".into(), json!(o));
            }
            Some(Value::Object(m))
        }
        (Some(t), _, _) if t != "linear" && t != "yarn" => {
            return Err(model_err(g, format!("rope scaling type `{t}` is not supported (supported: none, linear, yarn)")))
        }
        (Some(t), None, _) => return Err(model_err(g, format!("rope scaling type `{t}` without {a}.rope.scaling.factor"))),
        _ => None,
    })
}

fn config_json(h: &Hparams, g: &GgufFile, dtype: OutDType) -> Result<Value, GgufError> {
    let (class, model_type) = match h.arch {
        Arch::Llama => ("LlamaForCausalLM", "llama"),
        Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
    };
    let mut c = Map::new();
    c.insert("architectures".into(), json!([class]));
    c.insert("model_type".into(), json!(model_type));
    c.insert("hidden_size".into(), json!(h.hidden));
    c.insert("intermediate_size".into(), json!(h.ffn));
    c.insert("num_attention_heads".into(), json!(h.n_head));
    c.insert("num_key_value_heads".into(), json!(h.n_kv));
    c.insert("num_hidden_layers".into(), json!(h.n_layer));
    c.insert("head_dim".into(), json!(h.head_dim));
    c.insert("rms_norm_eps".into(), json!(h.rms_eps));
    c.insert("rope_theta".into(), json!(h.rope_theta));
    c.insert("rope_scaling".into(), h.rope_scaling.clone().unwrap_or(Value::Null));
    c.insert("vocab_size".into(), json!(h.vocab));
    c.insert("max_position_embeddings".into(), json!(h.ctx));
    c.insert("tie_word_embeddings".into(), json!(h.tied));
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("initializer_range".into(), json!(0.02));
    c.insert("attention_dropout".into(), json!(0.0));
    c.insert("use_cache".into(), json!(true));
    c.insert("torch_dtype".into(), json!(dtype.torch_dtype()));
    match h.arch {
        Arch::Llama => {
            let bias = g.tensor("blk.0.attn_q.bias").is_some();
            c.insert("attention_bias".into(), json!(bias));
            c.insert("mlp_bias".into(), json!(false));
            c.insert("pretraining_tp".into(), json!(1));
        }
        Arch::Qwen2 => {
            c.insert("use_sliding_window".into(), json!(false));
            c.insert("sliding_window".into(), json!(h.ctx));
            c.insert("max_window_layers".into(), json!(h.n_layer));
        }
    }
    for (key, gkey) in
        [("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id"), ("pad_token_id", "tokenizer.ggml.padding_token_id")]
    {
        if let Some(id) = g.get_u64(gkey)? {
            c.insert(key.into(), json!(id));
        }
    }
    Ok(Value::Object(c))
}

fn generation_config_json(g: &GgufFile) -> Result<Value, GgufError> {
    let mut c = Map::new();
    c.insert("_from_model_config".into(), json!(true));
    for (key, gkey) in
        [("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id"), ("pad_token_id", "tokenizer.ggml.padding_token_id")]
    {
        if let Some(id) = g.get_u64(gkey)? {
            c.insert(key.into(), json!(id));
        }
    }
    Ok(Value::Object(c))
}

/// One tensor of the output: where it comes from and how to lay it out.
struct Planned<'a> {
    /// Sort key: (0 embed | 1 layers | 2 final norm | 3 lm_head, layer, position in layer).
    order: (u8, usize, usize),
    hf_name: String,
    src: &'a TensorInfo,
    /// Row-major HF shape.
    shape: Vec<usize>,
    /// `Some(n_head)`: undo the q/k RoPE permutation with this many heads.
    unpermute: Option<usize>,
}

/// Per-layer tensors: (GGUF suffix, HF suffix, required).
const LAYER_TENSORS: &[(&str, &str, bool)] = &[
    ("attn_norm.weight", "input_layernorm.weight", true),
    ("attn_q.weight", "self_attn.q_proj.weight", true),
    ("attn_q.bias", "self_attn.q_proj.bias", false),
    ("attn_k.weight", "self_attn.k_proj.weight", true),
    ("attn_k.bias", "self_attn.k_proj.bias", false),
    ("attn_v.weight", "self_attn.v_proj.weight", true),
    ("attn_v.bias", "self_attn.v_proj.bias", false),
    ("attn_output.weight", "self_attn.o_proj.weight", true),
    ("ffn_norm.weight", "post_attention_layernorm.weight", true),
    ("ffn_gate.weight", "mlp.gate_proj.weight", true),
    ("ffn_up.weight", "mlp.up_proj.weight", true),
    ("ffn_down.weight", "mlp.down_proj.weight", true),
];

/// Maps every GGUF tensor to its HF name and checks shapes against the hyper-parameters.
fn plan<'a>(g: &'a GgufFile, h: &Hparams) -> Result<Vec<Planned<'a>>, GgufError> {
    let (q_rows, kv_rows) = (h.n_head * h.head_dim, h.n_kv * h.head_dim);
    let mut out = Vec::new();
    for t in g.tensors() {
        let shape = t.shape();
        let (order, hf_name, expected, unpermute): ((u8, usize, usize), String, Vec<usize>, Option<usize>) = match t.name.as_str() {
            "token_embd.weight" => ((0, 0, 0), "model.embed_tokens.weight".into(), vec![h.vocab, h.hidden], None),
            "output_norm.weight" => ((2, 0, 0), "model.norm.weight".into(), vec![h.hidden], None),
            "output.weight" => ((3, 0, 0), "lm_head.weight".into(), vec![h.vocab, h.hidden], None),
            "rope_freqs.weight" => {
                // Llama-3.1 style frequency factors: HF computes them from rope_scaling,
                // which GGUF does not record; long-context outputs would differ.
                eprintln!("warning: {}: ignoring rope_freqs.weight (llama3 RoPE frequency factors are not carried over)", g.path().display());
                continue;
            }
            name => {
                let unknown = || model_err(g, format!("tensor {name} is not part of a {} model", h.arch_name));
                let rest = name.strip_prefix("blk.").ok_or_else(unknown)?;
                let (layer, suffix) = rest.split_once('.').ok_or_else(unknown)?;
                let layer: usize = layer.parse().map_err(|_| unknown())?;
                if layer >= h.n_layer {
                    return Err(model_err(g, format!("tensor {name}: layer {layer} >= block_count {}", h.n_layer)));
                }
                let pos = LAYER_TENSORS.iter().position(|e| e.0 == suffix).ok_or_else(unknown)?;
                let hf = format!("model.layers.{layer}.{}", LAYER_TENSORS[pos].1);
                let is_llama = h.arch == Arch::Llama;
                let (expected, unpermute) = match suffix {
                    "attn_norm.weight" | "ffn_norm.weight" => (vec![h.hidden], None),
                    "attn_q.weight" => (vec![q_rows, h.hidden], is_llama.then_some(h.n_head)),
                    "attn_k.weight" => (vec![kv_rows, h.hidden], is_llama.then_some(h.n_kv)),
                    "attn_v.weight" => (vec![kv_rows, h.hidden], None),
                    "attn_q.bias" => (vec![q_rows], is_llama.then_some(h.n_head)),
                    "attn_k.bias" => (vec![kv_rows], is_llama.then_some(h.n_kv)),
                    "attn_v.bias" => (vec![kv_rows], None),
                    "attn_output.weight" => (vec![h.hidden, q_rows], None),
                    "ffn_gate.weight" | "ffn_up.weight" => (vec![h.ffn, h.hidden], None),
                    _ => (vec![h.hidden, h.ffn], None), // ffn_down.weight
                };
                ((1, layer, pos), hf, expected, unpermute)
            }
        };
        if shape != expected {
            return Err(model_err(g, format!("tensor {} has shape {shape:?}, expected {expected:?} from the metadata", t.name)));
        }
        out.push(Planned { order, hf_name, src: t, shape, unpermute });
    }
    let mut missing: Vec<String> = Vec::new();
    for name in ["token_embd.weight", "output_norm.weight"] {
        if g.tensor(name).is_none() {
            missing.push(name.into());
        }
    }
    for layer in 0..h.n_layer {
        for (gguf, _, required) in LAYER_TENSORS {
            let name = format!("blk.{layer}.{gguf}");
            if *required && g.tensor(&name).is_none() {
                missing.push(name);
            }
        }
    }
    if !missing.is_empty() {
        let shown: Vec<_> = missing.iter().take(5).cloned().collect();
        let more = if missing.len() > 5 { format!(" and {} more", missing.len() - 5) } else { String::new() };
        return Err(model_err(g, format!("missing tensors: {}{more}", shown.join(", "))));
    }
    out.sort_by_key(|p| p.order);
    Ok(out)
}

/// Converts a GGUF file into an HF-layout model directory at `out_dir` (see the module docs).
/// Everything is validated and the small files built before the weights are written; the
/// directory appears atomically (staged beside `out_dir`, then renamed).
pub fn convert_gguf(gguf: &Path, out_dir: &Path, dtype: OutDType, show_progress: bool) -> Result<(), GgufError> {
    let g = GgufFile::open(gguf)?;
    // Unsupported tensor types first: the most likely failure, named with the tensor.
    if let Some(t) = g.tensors().iter().find(|t| !t.ggml_type.is_supported()) {
        return Err(GgufError::UnsupportedTensorType {
            path: g.path().to_path_buf(),
            name: t.name.clone(),
            type_name: t.ggml_type.name().to_string(),
            type_id: t.ggml_type.0,
        });
    }
    let h = read_hparams(&g)?;
    let planned = plan(&g, &h)?;
    let config = config_json(&h, &g, dtype)?;
    // The config must be one lorafleet loads (sizes within the caps, finite positive eps and theta).
    crate::types::ModelConfig::from_json_str(&config.to_string()).map_err(|msg| model_err(&g, format!("the converted config.json: {msg}")))?;
    let gen_config = generation_config_json(&g)?;
    let tokenizer = build_tokenizer_json(&g)?;
    let tokenizer_config = build_tokenizer_config_json(&g)?;

    let staging = StagingDir::new(out_dir)?;
    let pretty = |v: &Value| serde_json::to_string_pretty(v).map(|s| s + "\n").map_err(|e| GgufError::Other(e.to_string()));
    staging.write("config.json", pretty(&config)?.as_bytes())?;
    staging.write("generation_config.json", pretty(&gen_config)?.as_bytes())?;
    staging.write("tokenizer.json", pretty(&tokenizer)?.as_bytes())?;
    staging.write("tokenizer_config.json", pretty(&tokenizer_config)?.as_bytes())?;

    let tensors: Vec<OutTensor<'_>> = planned
        .iter()
        .map(|p| {
            let g = &g;
            OutTensor {
                name: p.hf_name.clone(),
                shape: p.shape.clone(),
                produce: Box::new(move || {
                    let v = g.dequantize(p.src)?;
                    match p.unpermute {
                        None => Ok(v),
                        Some(n_head) => unpermute_rows(&v, p.shape[0], n_head)
                            .ok_or_else(|| model_err(g, format!("tensor {}: cannot split {:?} into {n_head} heads", p.src.name, p.shape))),
                    }
                }),
            }
        })
        .collect();
    let total: u64 = planned.iter().map(|p| p.shape.iter().product::<usize>() as u64 * if dtype == OutDType::F32 { 4 } else { 2 }).sum();
    let pb = crate::progress::bytes_bar(show_progress, total, &format!("converting to {dtype}"));
    let st_path = staging.path.join("model.safetensors");
    write_safetensors(&st_path, &tensors, dtype, &|name, n| {
        pb.set_message(name.to_string());
        pb.inc(n);
    })?;
    pb.finish_and_clear();
    staging.commit()
}
