//! PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`), read and written in
//! the layout peft uses, so adapters trained by peft serve here and adapters trained here load
//! in peft.
//!
//! A targeted linear layer `y = x Wᵀ` becomes `y = x Wᵀ + s · (x Aᵀ) Bᵀ` with `A [r, in]`,
//! `B [out, r]` and `s = alpha / r` (or `alpha / sqrt(r)` with `use_rslora`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::backend::HostMatrix;
use crate::rng::SplitMix64;
use crate::types::config::ModelConfig;
use crate::weights::WeightFiles;
use crate::{Error, Result};

pub use crate::types::LoraModule;

/// The parts of `adapter_config.json` lorafleet uses.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// PEFT's `r`.
    pub r: usize,
    /// PEFT's `lora_alpha`.
    pub lora_alpha: f32,
    /// rsLoRA: scale alpha / sqrt(r) instead of alpha / r.
    pub use_rslora: bool,
    /// Module names (`q_proj`, ...) or the single entry `all-linear`.
    pub target_modules: Vec<String>,
    /// Per-module overrides, keyed by a module name or a dotted suffix of its path
    /// (`q_proj`, `layers.3.self_attn.q_proj`).
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides (PEFT's `alpha_pattern`).
    pub alpha_pattern: BTreeMap<String, f32>,
    /// The base model the adapter was trained on, as PEFT recorded it.
    pub base_model_name_or_path: Option<String>,
    /// The dropout the adapter was trained with (recorded only: inference applies none).
    pub lora_dropout: f32,
}

impl LoraConfig {
    /// A plain config: rank `r`, alpha, the given modules.
    pub fn new(r: usize, lora_alpha: f32, modules: &[LoraModule]) -> Self {
        LoraConfig {
            r,
            lora_alpha,
            use_rslora: false,
            target_modules: modules.iter().map(|m| m.name().to_string()).collect(),
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            base_model_name_or_path: None,
            lora_dropout: 0.0,
        }
    }

    fn targets(&self, m: LoraModule) -> bool {
        self.target_modules.iter().any(|t| t == "all-linear" || t == m.name())
    }

    /// peft's `get_pattern_key`: the first pattern that is the module path or a dotted suffix of it.
    fn pattern<'a, T>(pattern: &'a BTreeMap<String, T>, path: &str) -> Option<&'a T> {
        pattern.iter().find(|(k, _)| path == k.as_str() || path.ends_with(&format!(".{k}"))).map(|(_, v)| v)
    }

    /// `(rank, scale)` of one module.
    pub fn rank_and_scale(&self, layer: usize, m: LoraModule) -> (usize, f32) {
        let path = m.path(layer);
        let r = Self::pattern(&self.rank_pattern, &path).copied().unwrap_or(self.r);
        let alpha = Self::pattern(&self.alpha_pattern, &path).copied().unwrap_or(self.lora_alpha);
        let scale = if self.use_rslora { alpha / (r as f32).sqrt() } else { alpha / r as f32 };
        (r, scale)
    }

    /// Parses `adapter_config.json`, rejecting what lorafleet does not run, with the reason.
    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let obj = v.as_object().ok_or("adapter_config.json is not a JSON object")?;
        let is_set = |k: &str| match obj.get(k) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
        if let Some(t) = obj.get("peft_type").and_then(Value::as_str) {
            if t != "LORA" {
                return Err(format!("peft_type {t} is not supported (only LORA)"));
            }
        }
        for (key, what) in [
            ("use_dora", "DoRA"),
            ("modules_to_save", "modules_to_save (fully trained extra modules)"),
            ("fan_in_fan_out", "fan_in_fan_out (Conv1D-style weights)"),
            ("layers_to_transform", "layers_to_transform"),
            ("layer_replication", "layer_replication"),
            ("use_qalora", "QALoRA"),
            ("lora_bias", "lora_bias"),
            ("trainable_token_indices", "trainable_token_indices"),
            ("target_parameters", "target_parameters"),
            ("alora_invocation_tokens", "aLoRA"),
        ] {
            if is_set(key) {
                return Err(format!("{what} is not supported"));
            }
        }
        if let Some(b) = obj.get("bias").and_then(Value::as_str) {
            if b != "none" {
                return Err(format!("bias = \"{b}\" is not supported (only \"none\")"));
            }
        }
        let r = obj.get("r").and_then(Value::as_u64).ok_or("missing or non-integer `r`")? as usize;
        if r == 0 {
            return Err("r = 0".into());
        }
        let lora_alpha = obj.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0) as f32;
        let use_rslora = obj.get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
        let known: Vec<&str> = LoraModule::ALL.iter().map(|m| m.name()).collect();
        let target_modules: Vec<String> = match obj.get("target_modules") {
            Some(Value::String(s)) if s == "all-linear" => vec!["all-linear".into()],
            Some(Value::String(s)) if known.contains(&s.as_str()) => vec![s.clone()],
            Some(Value::String(s)) => return Err(format!("target_modules as a regular expression ({s:?}) is not supported; list the module names")),
            Some(Value::Array(a)) => {
                let mut out = Vec::new();
                for t in a {
                    let t = t.as_str().ok_or("target_modules holds a non-string")?;
                    if !known.contains(&t) {
                        return Err(format!("target module `{t}` is not a decoder linear projection (supported: {})", known.join(", ")));
                    }
                    out.push(t.to_string());
                }
                out
            }
            _ => return Err("missing `target_modules`".into()),
        };
        let rank_pattern = match obj.get("rank_pattern") {
            Some(Value::Object(o)) => o
                .iter()
                .map(|(k, v)| v.as_u64().filter(|&r| r > 0).map(|r| (k.clone(), r as usize)).ok_or(format!("rank_pattern[{k}] is not a positive integer")))
                .collect::<std::result::Result<_, _>>()?,
            _ => BTreeMap::new(),
        };
        let alpha_pattern = match obj.get("alpha_pattern") {
            Some(Value::Object(o)) => o
                .iter()
                .map(|(k, v)| v.as_f64().map(|a| (k.clone(), a as f32)).ok_or(format!("alpha_pattern[{k}] is not a number")))
                .collect::<std::result::Result<_, _>>()?,
            _ => BTreeMap::new(),
        };
        // A scale past this is no fine-tune: lora_alpha 1e30 overflowed the activations and the
        // NaN logits decoded as token 0 forever.
        const MAX_ALPHA: f32 = 65536.0;
        for (what, a) in std::iter::once(("lora_alpha".to_string(), lora_alpha)).chain(alpha_pattern.iter().map(|(k, a)| (format!("alpha_pattern[{k}]"), *a))) {
            if !(a.is_finite() && a > 0.0 && a <= MAX_ALPHA) {
                return Err(format!("{what} = {a} is outside (0, {MAX_ALPHA}]"));
            }
        }
        let base_model_name_or_path = obj.get("base_model_name_or_path").and_then(Value::as_str).map(str::to_string);
        let lora_dropout = obj.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32;
        if !(0.0..1.0).contains(&lora_dropout) {
            return Err(format!("lora_dropout = {lora_dropout} is outside [0, 1)"));
        }
        Ok(LoraConfig { r, lora_alpha, use_rslora, target_modules, rank_pattern, alpha_pattern, base_model_name_or_path, lora_dropout })
    }

    /// The `adapter_config.json` peft writes for this config.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model_name_or_path,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "use_rslora": self.use_rslora,
            "target_modules": self.target_modules,
            "rank_pattern": self.rank_pattern,
            "alpha_pattern": self.alpha_pattern,
            "lora_dropout": self.lora_dropout,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_dora": false,
            "modules_to_save": null,
            "init_lora_weights": true,
            "inference_mode": true,
        })
    }
}

/// One module's LoRA pair.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// `[r, in]`.
    pub a: HostMatrix,
    /// `[out, r]`.
    pub b: HostMatrix,
    /// The factor the product is multiplied by.
    pub scale: f32,
}

impl LoraPair {
    /// The pair's rank.
    pub fn rank(&self) -> usize {
        self.a.rows
    }
}

/// Per layer, per `LoraModule` (indexed by `LoraModule::index`), the pair or none.
pub type LayerLora = [Option<LoraPair>; 7];

/// A LoRA adapter in host memory.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// The id requests use (the folder name, or the path given).
    pub id: String,
    /// Its `adapter_config.json`.
    pub config: LoraConfig,
    /// Per layer, the pairs.
    pub layers: Vec<LayerLora>,
}

fn adapter_err(id: &str, msg: impl Into<String>) -> Error {
    Error::Adapter { id: id.to_string(), msg: msg.into() }
}

impl LoraAdapter {
    /// Loads a peft adapter directory for a base of shape `model`; `max_rank` is the largest
    /// rank the server is configured for.
    pub fn load(id: &str, dir: &Path, model: &ModelConfig, max_rank: usize) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                adapter_err(id, format!("{} not found (not a peft adapter directory)", cfg_path.display()))
            } else {
                Error::io(&cfg_path, e)
            }
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| adapter_err(id, format!("{}: not valid JSON: {e}", cfg_path.display())))?;
        let config = LoraConfig::from_json(&json).map_err(|m| adapter_err(id, format!("{}: {m}", cfg_path.display())))?;
        let weights_path = dir.join("adapter_model.safetensors");
        if !weights_path.is_file() {
            let hint = if dir.join("adapter_model.bin").is_file() { " (adapter_model.bin, a pickle, is not read: save with safetensors)" } else { "" };
            return Err(adapter_err(id, format!("{} not found{hint}", weights_path.display())));
        }
        let w = WeightFiles::open_files(&[weights_path.clone()])?;
        // Everything in the file must be a LoRA A/B weight of a module we run.
        let mut expected = std::collections::HashSet::new();
        let mut layers: Vec<LayerLora> = Vec::with_capacity(model.num_layers);
        for layer in 0..model.num_layers {
            let mut ll: LayerLora = Default::default();
            for m in LoraModule::ALL {
                if !config.targets(m) {
                    continue;
                }
                let (ka, kb) = (m.peft_key(layer, 'A'), m.peft_key(layer, 'B'));
                expected.insert(ka.clone());
                expected.insert(kb.clone());
                let (out_f, in_f) = m.dims(model);
                let (r, scale) = config.rank_and_scale(layer, m);
                if r > max_rank {
                    return Err(adapter_err(id, format!("rank {r} of {} is above the configured maximum {max_rank} (option `max_rank`)", m.path(layer))));
                }
                let read = |key: &str, shape: [usize; 2]| -> Result<HostMatrix> {
                    if !w.contains(key) {
                        return Err(adapter_err(id, format!("{} has no tensor `{key}`", weights_path.display())));
                    }
                    let (found, _) = w.info(key)?;
                    if found != shape {
                        return Err(adapter_err(
                            id,
                            format!("`{key}` has shape {found:?}; the base model needs {shape:?} (is this adapter for another base model?)"),
                        ));
                    }
                    let t = w.f32(key)?;
                    if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                        return Err(adapter_err(id, format!("`{key}` holds a non-finite value at index {i}")));
                    }
                    Ok(HostMatrix { name: key.to_string(), rows: shape[0], cols: shape[1], data: t.data })
                };
                let a = read(&ka, [r, in_f])?;
                let b = read(&kb, [out_f, r])?;
                ll[m.index()] = Some(LoraPair { a, b, scale });
            }
            layers.push(ll);
        }
        let mut extra: Vec<&str> = w.names().filter(|n| !expected.contains(*n)).collect();
        extra.sort_unstable();
        if let Some(first) = extra.first() {
            let why = if first.contains("lora_embedding") || first.contains("embed_tokens") || first.contains("lm_head") {
                "embedding / lm_head adapters are not supported"
            } else if first.contains("magnitude") {
                "DoRA is not supported"
            } else {
                "not a LoRA weight of a targeted decoder projection of this base model"
            };
            return Err(adapter_err(id, format!("{} holds `{first}` ({} unexpected tensors): {why}", weights_path.display(), extra.len())));
        }
        Ok(LoraAdapter { id: id.to_string(), config, layers })
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (f32) into `dir`, each
    /// through a temporary file and a rename, so a reader never sees half a file.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (layer, ll) in self.layers.iter().enumerate() {
            for m in LoraModule::ALL {
                if let Some(p) = &ll[m.index()] {
                    for (which, t) in [('A', &p.a), ('B', &p.b)] {
                        tensors.push((m.peft_key(layer, which), vec![t.rows, t.cols], bytemuck::cast_slice(&t.data).to_vec()));
                    }
                }
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(k, shape, bytes)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| Error::InvalidArgument(format!("tensor {k}: {e}")))
            })
            .collect::<Result<_>>()?;
        let bytes = safetensors::serialize(views, None).map_err(|e| Error::InvalidArgument(format!("serializing adapter: {e}")))?;
        write_atomic(&dir.join("adapter_model.safetensors"), &bytes)?;
        let cfg = serde_json::to_string_pretty(&self.config.to_json()).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        write_atomic(&dir.join("adapter_config.json"), cfg.as_bytes())
    }

    /// Checks an adapter made in memory (by the trainer, or by hand) as `load` checks a file:
    /// one entry per layer of `model`, every pair `[r, in]` / `[out, r]` of its module's
    /// dimensions with r in 1..=`max_rank`, finite values.
    pub fn check_fits(&self, model: &ModelConfig, max_rank: usize) -> Result<()> {
        let id = &self.id;
        if self.layers.len() != model.num_layers {
            return Err(adapter_err(id, format!("has {} layers; the base model has {}", self.layers.len(), model.num_layers)));
        }
        if self.pairs().next().is_none() {
            return Err(adapter_err(id, "adapts no module"));
        }
        for (layer, m, p) in self.pairs() {
            let (out_f, in_f) = m.dims(model);
            let r = p.rank();
            if r == 0 || r > max_rank {
                return Err(adapter_err(id, format!("rank {r} of {} is outside 1..={max_rank} (option `max_rank`)", m.path(layer))));
            }
            let shapes = [(p.a.rows, p.a.cols, p.a.data.len()), (p.b.rows, p.b.cols, p.b.data.len())];
            if shapes != [(r, in_f, r * in_f), (out_f, r, out_f * r)] {
                return Err(adapter_err(
                    id,
                    format!(
                        "{}: A is {}x{} and B {}x{}; the base model needs {r}x{in_f} and {out_f}x{r}",
                        m.path(layer),
                        shapes[0].0,
                        shapes[0].1,
                        shapes[1].0,
                        shapes[1].1
                    ),
                ));
            }
            if let Some(i) = p.a.data.iter().chain(&p.b.data).position(|v| !v.is_finite()) {
                return Err(adapter_err(id, format!("{} holds a non-finite value at index {i}", m.path(layer))));
            }
            if !p.scale.is_finite() {
                return Err(adapter_err(id, format!("{}: the scale {} is not finite", m.path(layer), p.scale)));
            }
        }
        Ok(())
    }

    /// Bytes of A and B (f32) over all modules.
    pub fn weight_bytes(&self) -> usize {
        self.pairs().map(|(_, _, p)| (p.a.data.len() + p.b.data.len()) * 4).sum()
    }

    /// Largest rank over the adapter's modules.
    pub fn max_rank(&self) -> usize {
        self.pairs().map(|(_, _, p)| p.rank()).max().unwrap_or(0)
    }

    /// `(layer, module, pair)` for every adapted module.
    pub fn pairs(&self) -> impl Iterator<Item = (usize, LoraModule, &LoraPair)> {
        self.layers.iter().enumerate().flat_map(|(l, ll)| LoraModule::ALL.into_iter().filter_map(move |m| ll[m.index()].as_ref().map(|p| (l, m, p))))
    }

    /// A random adapter (A ~ U(-1,1)/sqrt(in), B ~ U(-1,1)·b_scale) of rank `r` on `modules`,
    /// seeded: for load tests and tests that need many adapters. `b_scale` 0.004 keeps the
    /// model well-conditioned (as the golden adapters do).
    pub fn random(id: &str, model: &ModelConfig, r: usize, alpha: f32, modules: &[LoraModule], seed: u64, b_scale: f32) -> Self {
        let config = LoraConfig::new(r, alpha, modules);
        let mut rng = SplitMix64::new(seed);
        let layers = (0..model.num_layers)
            .map(|layer| {
                let mut ll: LayerLora = Default::default();
                for &m in modules {
                    let (out_f, in_f) = m.dims(model);
                    let (r, scale) = config.rank_and_scale(layer, m);
                    let a_scale = 1.0 / (in_f as f32).sqrt();
                    let a = HostMatrix { name: m.peft_key(layer, 'A'), rows: r, cols: in_f, data: (0..r * in_f).map(|_| rng.uniform() * a_scale).collect() };
                    let b = HostMatrix { name: m.peft_key(layer, 'B'), rows: out_f, cols: r, data: (0..out_f * r).map(|_| rng.uniform() * b_scale).collect() };
                    ll[m.index()] = Some(LoraPair { a, b, scale });
                }
                ll
            })
            .collect();
        LoraAdapter { id: id.to_string(), config, layers }
    }
}

/// Writes `bytes` to `path` through `path.tmp` and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp: PathBuf = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
