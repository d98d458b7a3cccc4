//! The Llama-family decoder (Llama 2/3, Mistral, SmolLM2, Qwen2), written once against
//! `Backend`: RMSNorm, RoPE (rotate-half), grouped-query attention over the paged KV cache,
//! SwiGLU MLP, tied or untied lm_head. One forward call runs one step of a ragged batch.

use std::path::Path;

use crate::backend::numeric::rope_tables;
use crate::backend::{Backend, HostMatrix, HostWeight, LoraRun, StepSpec};
use crate::kv::{BatchLayout, KvLayout};
use crate::lora::{LoadedAdapter, LoraModule};
use crate::quant::{bnb, Nf4Tensor, Quantization};
use crate::types::{HeadFormat, ModelConfig};
use crate::weights::WeightFiles;
use crate::{Error, Result};

/// One decoder layer's weights (serving and the trainer's frozen base share it).
pub(crate) struct Layer<B: Backend> {
    pub(crate) input_norm: B::Vector,
    pub(crate) q: B::Matrix,
    pub(crate) k: B::Matrix,
    pub(crate) v: B::Matrix,
    pub(crate) o: B::Matrix,
    pub(crate) q_bias: Option<B::Vector>,
    pub(crate) k_bias: Option<B::Vector>,
    pub(crate) v_bias: Option<B::Vector>,
    pub(crate) post_norm: B::Vector,
    pub(crate) gate: B::Matrix,
    pub(crate) up: B::Matrix,
    pub(crate) down: B::Matrix,
}

/// Where `Llama::from_source` gets its weights, by HF tensor name.
pub trait WeightSource {
    /// A dense table (embeddings, lm_head) `[rows, cols]`.
    fn dense(&self, name: &str, rows: usize, cols: usize) -> Result<HostMatrix>;
    /// A decoder linear weight `[rows, cols]`: dense or NF4.
    fn linear(&self, name: &str, rows: usize, cols: usize) -> Result<HostWeight>;
    /// A 1-D tensor of `n` f32 values.
    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>>;
    /// Whether the weights hold `name`.
    fn contains(&self, name: &str) -> bool;
    /// How the lm_head is held (`LoadOptions::head`); f32 unless the source says otherwise.
    fn head_format(&self) -> HeadFormat {
        HeadFormat::F32
    }
}

/// A checkpoint: NF4 weights as stored, else the linear weights as `opts.format` says.
pub(crate) struct FileSource<'a> {
    pub(crate) w: &'a WeightFiles,
    pub(crate) opts: LoadOptions,
}

impl WeightSource for FileSource<'_> {
    fn dense(&self, name: &str, rows: usize, cols: usize) -> Result<HostMatrix> {
        let t = self.w.f32_shaped(name, &[rows, cols])?;
        Ok(HostMatrix { name: name.to_string(), rows, cols, data: t.data })
    }

    fn linear(&self, name: &str, rows: usize, cols: usize) -> Result<HostWeight> {
        let w = self.w;
        Ok(if bnb::is_nf4(w, name) {
            let tensor = bnb::read(w, name)?;
            if tensor.shape != [rows, cols] {
                return Err(Error::Shape { name: name.to_string(), expected: vec![rows, cols], found: tensor.shape });
            }
            HostWeight::Nf4 { name: name.to_string(), tensor }
        } else {
            match self.opts.format {
                BaseFormat::Nf4 => {
                    let t = w.f32_shaped(name, &[rows, cols])?;
                    HostWeight::Nf4 { name: name.to_string(), tensor: Nf4Tensor::quantize(&t.data, &[rows, cols], true) }
                }
                BaseFormat::Bf16 => {
                    let t = w.f32_shaped(name, &[rows, cols])?;
                    let data = t.data.iter().map(|&x| crate::backend::numeric::f32_to_bf16(x)).collect();
                    HostWeight::Bf16 { name: name.to_string(), rows, cols, data }
                }
                BaseFormat::F32 => HostWeight::Dense(self.dense(name, rows, cols)?),
            }
        })
    }

    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        Ok(self.w.f32_shaped(name, &[n])?.data)
    }

    fn contains(&self, name: &str) -> bool {
        self.w.contains(name)
    }

    fn head_format(&self) -> HeadFormat {
        self.opts.head
    }
}

/// Ids of loaded models, unique in the process (a backend may key what it caches per model).
static NEXT_MODEL_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The Llama-family decoder (Llama, Mistral, Qwen2) on a backend: embeddings, layers, final norm,
/// lm_head; its forward pass is written once against `Backend`.
pub struct Llama<B: Backend> {
    /// Its shape.
    pub config: ModelConfig,
    /// Unique in the process.
    pub id: u64,
    /// `[vocab, hidden]`; also the lm_head when the embeddings are tied.
    pub(crate) embed: B::Matrix,
    pub(crate) lm_head: Option<B::Matrix>,
    pub(crate) norm: B::Vector,
    pub(crate) layers: Vec<Layer<B>>,
    pub(crate) rope: B::Rope,
}

/// How the decoder's linear weights (q, k, v, o, gate, up, down) are held in memory; embeddings,
/// norms and the lm_head stay f32. Weights stored as bitsandbytes NF4 in the checkpoint stay NF4
/// whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BaseFormat {
    /// f32 as loaded.
    #[default]
    F32,
    /// Rounded to bf16 (nearest, ties to even) while loading: half the memory; the math stays f32.
    Bf16,
    /// Quantized to NF4 (block 64, double-quantized absmax) while loading: QLoRA.
    Nf4,
}

impl BaseFormat {
    /// From the command-line flags `--quantize` and `--base-dtype bf16` (a quantization wins).
    pub fn from_flags(quantize: Option<Quantization>, bf16: bool) -> Self {
        match (quantize, bf16) {
            (Some(Quantization::Nf4), _) => BaseFormat::Nf4,
            (None, true) => BaseFormat::Bf16,
            (None, false) => BaseFormat::F32,
        }
    }
}

impl From<Option<Quantization>> for BaseFormat {
    fn from(q: Option<Quantization>) -> Self {
        BaseFormat::from_flags(q, false)
    }
}

/// How `Llama::load_with` loads a checkpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// How the dense decoder linear weights are held (quantized or rounded while loading).
    pub format: BaseFormat,
    /// How the lm_head is held.
    pub head: HeadFormat,
    /// A progress bar while loading.
    pub progress: bool,
}

impl<B: Backend> Llama<B> {
    /// Loads `config.json` and the safetensors weights of an HF model directory.
    pub fn load(be: &B, dir: &Path, show_progress: bool) -> Result<Self> {
        Self::load_with(be, dir, LoadOptions { progress: show_progress, ..LoadOptions::default() })
    }

    /// `load` with options (quantization while loading).
    pub fn load_with(be: &B, dir: &Path, opts: LoadOptions) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let weights = WeightFiles::open_dir(dir)?;
        Self::from_weights_with(be, config, &weights, opts)
    }

    /// The model from already-opened weight files.
    pub fn from_weights(be: &B, config: ModelConfig, w: &WeightFiles, show_progress: bool) -> Result<Self> {
        Self::from_weights_with(be, config, w, LoadOptions { progress: show_progress, ..LoadOptions::default() })
    }

    /// The model from already-opened weight files, with `opts`.
    pub fn from_weights_with(be: &B, config: ModelConfig, w: &WeightFiles, opts: LoadOptions) -> Result<Self> {
        super::check::layers(&config, w).map_err(Error::InvalidArgument)?;
        let progress = opts.progress;
        Self::from_source(be, config, &FileSource { w, opts }, progress)
    }

    /// Weight bytes one decode step reads whatever its batch: every layer's seven linear
    /// weights and the lm_head (norms, biases and the embedding rows are a rounding error). Over
    /// the device's copy bandwidth this is batch-1 decode's floor.
    pub fn decode_weight_bytes(&self, be: &B) -> usize {
        let layers: usize =
            self.layers.iter().map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].iter().map(|m| be.matrix_bytes(m)).sum::<usize>()).sum();
        layers + be.matrix_bytes(self.lm_head.as_ref().unwrap_or(&self.embed))
    }

    /// Builds the model from any source of named weights (a checkpoint, or seeded random
    /// weights of a config's shape: `model::random`).
    pub fn from_source(be: &B, config: ModelConfig, src: &dyn WeightSource, show_progress: bool) -> Result<Self> {
        let c = &config;
        let (h, qd, kvd, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        // Each tensor is read into host memory as f32 (at most) before the backend takes it:
        // checked against what this process may still allocate first, so a model past a memory
        // limit (`ulimit -v`, a cgroup) is a clean error at the tensor it stops at, not an abort.
        let room = |name: &str, rows: usize, cols: usize| -> Result<()> {
            crate::backend::host_memory::check_fits(&format!("loading {name} ([{rows}, {cols}] as f32)"), rows.checked_mul(cols).and_then(|n| n.checked_mul(4)))
                .map_err(Error::InvalidArgument)
        };
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<B::Matrix> {
            room(name, rows, cols)?;
            be.upload_table(src.dense(name, rows, cols)?)
        };
        let linear = |name: &str, rows: usize, cols: usize| -> Result<B::Matrix> {
            room(name, rows, cols)?;
            be.upload_matrix(src.linear(name, rows, cols)?)
        };
        let vector = |name: &str, n: usize| -> Result<B::Vector> { be.upload_vector(&src.vector(name, n)?) };
        let bar = crate::progress::bar(show_progress, c.num_layers as u64, "loading layers");
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let bias = |n: &str, len: usize| -> Result<Option<B::Vector>> {
                let name = format!("{p}.self_attn.{n}_proj.bias");
                if c.attention_bias {
                    vector(&name, len).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                input_norm: vector(&format!("{p}.input_layernorm.weight"), h)?,
                q: linear(&format!("{p}.self_attn.q_proj.weight"), qd, h)?,
                k: linear(&format!("{p}.self_attn.k_proj.weight"), kvd, h)?,
                v: linear(&format!("{p}.self_attn.v_proj.weight"), kvd, h)?,
                o: linear(&format!("{p}.self_attn.o_proj.weight"), h, qd)?,
                q_bias: bias("q", qd)?,
                k_bias: bias("k", kvd)?,
                v_bias: bias("v", kvd)?,
                post_norm: vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
                gate: linear(&format!("{p}.mlp.gate_proj.weight"), ff, h)?,
                up: linear(&format!("{p}.mlp.up_proj.weight"), ff, h)?,
                down: linear(&format!("{p}.mlp.down_proj.weight"), h, ff)?,
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        let embed = matrix("model.embed_tokens.weight", c.vocab_size, h)?;
        let head_name = if c.tie_word_embeddings && !src.contains("lm_head.weight") { "model.embed_tokens.weight" } else { "lm_head.weight" };
        let lm_head = match (src.head_format(), head_name) {
            // Tied and f32: the head is the embedding table itself.
            (HeadFormat::F32, "model.embed_tokens.weight") => None,
            (format, name) => {
                room(name, c.vocab_size, h)?;
                Some(be.upload_head(src.dense(name, c.vocab_size, h)?, format)?)
            }
        };
        let norm = vector("model.norm.weight", h)?;
        let (cos, sin) = rope_tables(&c.rope_inv_freq(), c.max_position_embeddings);
        let rope = be.upload_rope(cos, sin, c.head_dim / 2)?;
        let id = NEXT_MODEL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Llama { config, id, embed, lm_head, norm, layers, rope })
    }

    /// The KV storage shape for this model.
    pub fn kv_layout(&self, block_size: usize, num_blocks: usize) -> KvLayout {
        KvLayout { num_layers: self.config.num_layers, num_kv_heads: self.config.num_kv_heads, head_dim: self.config.head_dim, block_size, num_blocks }
    }

    /// One step: `ids [T]` are the batch's new tokens, laid out by `batch`; their K/V are
    /// written into `kv`. Returns the logits `[logit_rows.len(), vocab]` of the selected rows.
    pub fn forward(&self, be: &B, ids: &[u32], batch: &BatchLayout, kv: &mut B::Kv, logit_rows: &[usize]) -> Result<B::Tensor> {
        self.forward_lora(be, ids, batch, kv, logit_rows, &[])
    }

    /// `forward` with LoRA: `adapters[i]` is sequence i's adapter (None = the base); an empty
    /// slice means the base for every sequence. Consecutive sequences with the same adapter form
    /// one segment, so a batch sorted by adapter runs one SGMV segment per adapter.
    pub fn forward_lora(
        &self,
        be: &B,
        ids: &[u32],
        batch: &BatchLayout,
        kv: &mut B::Kv,
        logit_rows: &[usize],
        adapters: &[Option<&LoadedAdapter<B>>],
    ) -> Result<B::Tensor> {
        let runs = self.check_step(ids, batch, adapters)?;
        let mut step = be.begin_step(&self.step_spec(be, kv, ids, batch, logit_rows, &runs, &[], &[]))?;
        self.forward_step(be, &mut step, kv)
    }

    /// The step's description for `Backend::begin_step` (shared by every forward entry point).
    #[allow(clippy::too_many_arguments)]
    fn step_spec<'s, 'a>(
        &'s self,
        be: &B,
        kv: &B::Kv,
        ids: &'s [u32],
        batch: &'s BatchLayout,
        logit_rows: &'s [usize],
        runs: &'s [LoraRun<'a, B>],
        samples: &'s [crate::backend::sampling::SampleRow],
        masked: &'s [bool],
    ) -> StepSpec<'s, 'a, B> {
        StepSpec { config: &self.config, model_id: self.id, kv: be.kv_layout(kv), kv_id: be.kv_id(kv), batch, ids, logit_rows, lora: runs, samples, masked }
    }

    /// `forward_lora`, then the next token of each logit row, one sampler per row: on a GPU the
    /// sampling runs on the device and the step syncs once, for the ids.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_sample(
        &self,
        be: &B,
        ids: &[u32],
        batch: &BatchLayout,
        kv: &mut B::Kv,
        logit_rows: &[usize],
        adapters: &[Option<&LoadedAdapter<B>>],
        samplers: &mut [&mut crate::backend::sampler::Sampler],
    ) -> Result<Vec<u32>> {
        if samplers.len() != logit_rows.len() {
            return Err(Error::InvalidArgument(format!("{} samplers for {} logit rows", samplers.len(), logit_rows.len())));
        }
        let runs = self.check_step(ids, batch, adapters)?;
        let samples: Vec<crate::backend::sampling::SampleRow> = samplers.iter_mut().map(|s| s.next_device_row()).collect();
        let masked: Vec<bool> = samplers.iter().map(|s| s.mask().is_some()).collect();
        let mut step = be.begin_step(&self.step_spec(be, kv, ids, batch, logit_rows, &runs, &samples, &masked))?;
        let logits = self.forward_step(be, &mut step, kv)?;
        be.sample(&logits, &mut step, samplers)
    }

    /// Checks a step's arguments and returns its LoRA runs: consecutive sequences with the same
    /// adapter form one run.
    fn check_step<'a>(&self, ids: &[u32], batch: &BatchLayout, adapters: &[Option<&'a LoadedAdapter<B>>]) -> Result<Vec<LoraRun<'a, B>>> {
        let c = &self.config;
        if ids.len() != batch.n_tokens() {
            return Err(Error::InvalidArgument(format!("{} ids for a batch of {} tokens", ids.len(), batch.n_tokens())));
        }
        if !adapters.is_empty() && adapters.len() != batch.seqs.len() {
            return Err(Error::InvalidArgument(format!("{} adapters for a batch of {} sequences", adapters.len(), batch.seqs.len())));
        }
        if let Some(a) = adapters.iter().flatten().find(|a| a.layers.len() != c.num_layers) {
            return Err(Error::Adapter { id: a.id.clone(), msg: format!("has {} layers, the model {}", a.layers.len(), c.num_layers) });
        }
        if let Some(&p) = batch.positions.iter().find(|&&p| p as usize >= c.max_position_embeddings) {
            return Err(Error::PromptTooLong { tokens: p as usize + 1, new_tokens: 0, context: c.max_position_embeddings });
        }
        let mut runs: Vec<LoraRun<'a, B>> = Vec::new();
        for (s, a) in batch.seqs.iter().zip(adapters) {
            let Some(a) = a else { continue };
            match runs.last_mut() {
                Some(r) if std::ptr::eq(r.adapter, *a) && r.start + r.len == s.token_start => r.len += s.n_new,
                _ => runs.push(LoraRun { start: s.token_start, len: s.n_new, adapter: a }),
            }
        }
        Ok(runs)
    }

    /// The decoder over a begun step: the logits of its logit rows.
    fn forward_step<'a>(&self, be: &'a B, step: &mut B::Step<'a>, kv: &mut B::Kv) -> Result<B::Tensor> {
        let c = &self.config;
        // A decode step of a shape the backend has captured (CUDA graphs) runs as one replay.
        if let Some(logits) = be.replay_forward(step)? {
            return Ok(logits);
        }
        be.begin_forward(step)?;
        let mut x = be.embedding(&self.embed, step)?;
        for (li, l) in self.layers.iter().enumerate() {
            // Attention block.
            let hn = be.rms_norm(&x, &l.input_norm, c.rms_norm_eps)?;
            let [mut q, mut k, mut v] = exactly(be.linears(&hn, &[(&l.q, l.q_bias.as_ref()), (&l.k, l.k_bias.as_ref()), (&l.v, l.v_bias.as_ref())])?)?;
            be.lora_apply(&mut q, &hn, step, li, LoraModule::Q)?;
            be.lora_apply(&mut k, &hn, step, li, LoraModule::K)?;
            be.lora_apply(&mut v, &hn, step, li, LoraModule::V)?;
            be.rope(&mut q, &mut k, step, &self.rope)?;
            let a = be.attention(&q, &k, &v, kv, li, step)?;
            let mut o = be.linear(&a, &l.o, None)?;
            be.lora_apply(&mut o, &a, step, li, LoraModule::O)?;
            be.add_assign(&mut x, &o)?;
            // MLP block.
            let hn = be.rms_norm(&x, &l.post_norm, c.rms_norm_eps)?;
            let [mut g, mut u] = exactly(be.linears(&hn, &[(&l.gate, None), (&l.up, None)])?)?;
            be.lora_apply(&mut g, &hn, step, li, LoraModule::Gate)?;
            be.lora_apply(&mut u, &hn, step, li, LoraModule::Up)?;
            let m = be.silu_mul(&g, &u)?;
            let mut d = be.linear(&m, &l.down, None)?;
            be.lora_apply(&mut d, &m, step, li, LoraModule::Down)?;
            be.add_assign(&mut x, &d)?;
        }
        // Only the rows whose logits are wanted go through the final norm and the lm_head.
        let sel = be.gather_logit_rows(&x, step)?;
        let hn = be.rms_norm(&sel, &self.norm, c.rms_norm_eps)?;
        let logits = be.linear(&hn, self.lm_head.as_ref().unwrap_or(&self.embed), None)?;
        be.end_forward(step, logits)
    }
}

/// The results of a `Backend::linears` call of `N` weights, or an error if the backend returned
/// another count.
fn exactly<T, const N: usize>(v: Vec<T>) -> Result<[T; N]> {
    let got = v.len();
    v.try_into().map_err(|_| crate::Error::InvalidArgument(format!("linears returned {got} results for {N} weights")))
}
