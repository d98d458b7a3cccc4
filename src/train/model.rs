//! The decoder for training, on any `TrainBackend`: a forward pass over a packed batch of whole
//! sequences that keeps what the backward needs, and the backward pass through every layer down
//! to the LoRA parameters (the base is frozen: no base-weight gradient is ever formed).
//!
//! The base is the serving decoder itself (`model::llama::Llama`: one loader, one layer struct)
//! and the forward is the serving ops (`Backend::linear`, `rms_norm`, `silu_mul`, `add_assign`);
//! what differs from serving is what `TrainBackend` adds: whole sequences at once (causal
//! attention per sequence, no paged cache), the saved log-sum-exps and LoRA inputs, and the
//! backward ops. Written once, run on the CPU (the reference, checked against HF's loss and
//! autograd gradients) and on the CUDA backend.
//!
//! Saved per layer (`LayerActs`), for `T` rows: the layer input `x_in` (always, it is the
//! checkpoint), the normed inputs `hn1`, `hn2` (read by the q/k/v and gate/up LoRA backward for
//! dA), `x·Aᵀ` of each LoRA (for dB), q and k after RoPE and v, the attention output and the
//! softmax log-sum-exp `[T, heads]` (the probabilities are recomputed from it, never stored),
//! the residual `x_mid` after attention (for the post-attention norm), gate, up and
//! `silu(gate)·up`, each a backend tensor. With `checkpoint_activations` only `x_in` is kept per layer and the
//! layer's forward is run again, from it, just before its backward.

use std::path::Path;

use crate::backend::cpu::CpuBackend;
use crate::backend::train::TrainBackend;
use crate::backend::Backend;
use crate::lora::{LoraAdapter, LoraModule};
use crate::model::llama::{Layer, Llama};
use crate::model::{BaseFormat, LoadOptions};
use crate::quant::Quantization;
use crate::types::config::ModelConfig;
use crate::weights::WeightFiles;
use crate::{Error, Result};

use super::grads::LoraGrads;
use crate::types::train_batch::TrainBatch;

/// The frozen base on a backend: the serving decoder's own weights (`model::llama::Llama`),
/// dense f32, bf16 or NF4 per linear weight, and the backend that runs it.
pub struct TrainModel<B: TrainBackend = CpuBackend> {
    /// The base's shape.
    pub config: ModelConfig,
    backend: B,
    base: Llama<B>,
}

/// How one forward + backward runs.
#[derive(Debug, Clone, Copy)]
pub struct StepOptions {
    /// Keep only each layer's input and recompute the layer during the backward.
    pub checkpoint_activations: bool,
    /// Vocabulary rows of the lm_head per chunk of the fused cross-entropy.
    pub vocab_chunk: usize,
    /// LoRA dropout probability (PEFT's `lora_dropout`): each LoRA path sees its input with
    /// elements zeroed with this probability and the rest scaled by 1 / (1 − p); the frozen path
    /// sees it whole. 0: none.
    pub lora_dropout: f32,
    /// Seed of this step's dropout masks: one mask per (layer, module), drawn again from it in
    /// the backward (and in a checkpointed layer's recompute) instead of being stored.
    pub dropout_seed: u64,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions { checkpoint_activations: false, vocab_chunk: 8192, lora_dropout: 0.0, dropout_seed: 0 }
    }
}

/// The dropout mask of the LoRA path (layer, m): `len` factors, 0 with probability `p`, else
/// 1 / (1 − p). `None` when `p` is 0 or the adapter has no such path. A pure function of (seed,
/// layer, module), so the backward redraws the forward's mask exactly.
fn dropout_mask(adapter: &LoraAdapter, opts: &StepOptions, layer: usize, m: LoraModule, len: usize) -> Option<Vec<f32>> {
    if opts.lora_dropout <= 0.0 || adapter.layers[layer][m.index()].is_none() {
        return None;
    }
    let p = opts.lora_dropout;
    let keep = 1.0 / (1.0 - p);
    let stream = opts.dropout_seed ^ ((layer as u64) << 8 | m.index() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut rng = crate::rng::SplitMix64::new(stream);
    Some((0..len).map(|_| if rng.unit() < p { 0.0 } else { keep }).collect())
}

/// One LoRA pair on the backend: A `[r, in]`, B `[out, r]`.
pub(super) struct StepPair<B: Backend> {
    pub(super) a: B::Tensor,
    pub(super) b: B::Tensor,
    pub(super) scale: f32,
}

/// Per layer, per `LoraModule::index`: what the backend holds of an adapter.
pub(super) type PerModule<X> = Vec<[Option<X>; 7]>;

/// One forward (+ backward) on the backend: the batch, the adapter's pairs on the backend (an
/// upload for this step, or the resident copy of `ResidentLora`), the options.
struct Step<'s, B: TrainBackend> {
    batch: B::Batch,
    /// Rows of the batch.
    t: usize,
    /// Labelled rows of the batch.
    labels: usize,
    /// The adapter's layout (which modules it has: the dropout masks); its values are `lora`'s.
    adapter: &'s LoraAdapter,
    lora: &'s PerModule<StepPair<B>>,
    opts: StepOptions,
}

/// What one layer's backward reads (see the module comment).
struct LayerActs<T> {
    hn1: T,
    /// `x·Aᵀ [T, r]` per `LoraModule::index`, where the adapter has that module.
    lora_xa: [Option<T>; 7],
    q: T,
    k: T,
    v: T,
    attn: T,
    lse: T,
    x_mid: T,
    hn2: T,
    gate: T,
    up: T,
    act: T,
}

impl TrainModel<CpuBackend> {
    /// Loads an HF model directory on the CPU; `quantize` NF4-quantizes the decoder's linear
    /// weights as they load (weights stored as bitsandbytes NF4 stay NF4 either way), as
    /// `Llama::load_with`.
    pub fn load(dir: &Path, quantize: Option<Quantization>) -> Result<Self> {
        Self::load_as(dir, quantize.into())
    }

    /// Loads an HF model directory on the CPU with its linear weights held as `format`.
    pub fn load_as(dir: &Path, format: BaseFormat) -> Result<Self> {
        Self::load_on(CpuBackend::new(), dir, format)
    }

    /// The base on the CPU from opened weights, quantized or not.
    pub fn from_weights(config: ModelConfig, w: &WeightFiles, quantize: Option<Quantization>) -> Result<Self> {
        Self::from_weights_as(config, w, quantize.into())
    }

    /// The base on the CPU from opened weights, in `format`.
    pub fn from_weights_as(config: ModelConfig, w: &WeightFiles, format: BaseFormat) -> Result<Self> {
        Self::from_weights_on(CpuBackend::new(), config, w, format)
    }
}

impl<B: TrainBackend> TrainModel<B> {
    /// Loads an HF model directory onto `backend` with its linear weights held as `format`.
    pub fn load_on(backend: B, dir: &Path, format: BaseFormat) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let w = WeightFiles::open_dir(dir)?;
        Self::from_weights_on(backend, config, &w, format)
    }

    /// The base on `backend` from opened weights, in `format`.
    pub fn from_weights_on(backend: B, config: ModelConfig, w: &WeightFiles, format: BaseFormat) -> Result<Self> {
        let base = Llama::from_weights_with(&backend, config.clone(), w, LoadOptions { format, head: crate::types::HeadFormat::F32, progress: false })?;
        Ok(TrainModel { config, backend, base })
    }

    /// The backend it runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn layer(&self, li: usize) -> &Layer<B> {
        &self.base.layers[li]
    }

    fn num_layers(&self) -> usize {
        self.base.layers.len()
    }

    fn check_adapter(&self, adapter: &LoraAdapter) -> Result<()> {
        if adapter.layers.len() != self.config.num_layers {
            return Err(Error::Adapter { id: adapter.id.clone(), msg: format!("has {} layers, the model {}", adapter.layers.len(), self.config.num_layers) });
        }
        for (li, m, p) in adapter.pairs() {
            let (out_f, in_f) = m.dims(&self.config);
            if p.a.cols != in_f || p.b.rows != out_f || p.b.cols != p.a.rows || p.a.data.len() != p.a.rows * p.a.cols || p.b.data.len() != p.b.rows * p.b.cols {
                return Err(Error::Adapter { id: adapter.id.clone(), msg: format!("{} has shapes that do not fit the model", m.path(li)) });
            }
        }
        Ok(())
    }

    /// The adapter's pairs on the backend.
    pub(super) fn upload_pairs(&self, adapter: &LoraAdapter) -> Result<PerModule<StepPair<B>>> {
        self.check_adapter(adapter)?;
        let be = &self.backend;
        adapter
            .layers
            .iter()
            .map(|ll| {
                let mut out: [Option<StepPair<B>>; 7] = Default::default();
                for (slot, p) in out.iter_mut().zip(ll) {
                    if let Some(p) = p {
                        let a = be.tensor_from_host(&p.a.data, p.a.rows, p.a.cols)?;
                        let b = be.tensor_from_host(&p.b.data, p.b.rows, p.b.cols)?;
                        *slot = Some(StepPair { a, b, scale: p.scale });
                    }
                }
                Ok(out)
            })
            .collect()
    }

    /// Zeros shaped like every A and B of `pairs`: `(dA, dB)`.
    pub(super) fn zeros_like(&self, pairs: &PerModule<StepPair<B>>) -> Result<PerModule<(B::Tensor, B::Tensor)>> {
        let be = &self.backend;
        pairs
            .iter()
            .map(|ll| {
                let mut out: [Option<(B::Tensor, B::Tensor)>; 7] = Default::default();
                for (slot, p) in out.iter_mut().zip(ll) {
                    if let Some(p) = p {
                        let ((ar, ac), (br, bc)) = (be.dims(&p.a), be.dims(&p.b));
                        *slot = Some((be.zeros(ar, ac)?, be.zeros(br, bc)?));
                    }
                }
                Ok(out)
            })
            .collect()
    }

    /// Checks the batch against the adapter's pairs and puts it on the backend.
    fn begin<'s>(&self, adapter: &'s LoraAdapter, lora: &'s PerModule<StepPair<B>>, batch: &TrainBatch, opts: StepOptions) -> Result<Step<'s, B>> {
        let fits =
            lora.len() == adapter.layers.len() && lora.iter().zip(&adapter.layers).all(|(l, a)| l.iter().zip(a).all(|(l, a)| l.is_some() == a.is_some()));
        if !fits {
            return Err(Error::Adapter { id: adapter.id.clone(), msg: "the adapter on the backend has other modules than its layout".into() });
        }
        let step_batch = self.backend.begin_batch(batch, &self.config)?;
        Ok(Step { batch: step_batch, t: batch.ids.len(), labels: batch.label_rows.len(), adapter, lora, opts })
    }

    /// The dropout mask of (layer, module) over `[T, width]` on the backend, or None.
    fn mask(&self, s: &Step<'_, B>, li: usize, m: LoraModule, width: usize) -> Result<Option<B::Tensor>> {
        match dropout_mask(s.adapter, &s.opts, li, m, s.t * width) {
            None => Ok(None),
            Some(mask) => self.backend.tensor_from_host(&mask, s.t, width).map(Some),
        }
    }

    /// A targeted projection: `y = x Wᵀ (+ bias) + s · (x' Aᵀ) Bᵀ` with `x' = x ⊙ drop` (LoRA
    /// dropout; `x` without); returns y and `x' Aᵀ`.
    fn project(
        &self,
        s: &Step<'_, B>,
        li: usize,
        m: LoraModule,
        x: &B::Tensor,
        w: &B::Matrix,
        bias: Option<&B::Vector>,
    ) -> Result<(B::Tensor, Option<B::Tensor>)> {
        let be = &self.backend;
        let mut y = be.linear(x, w, bias)?;
        let Some(p) = &s.lora[li][m.index()] else { return Ok((y, None)) };
        let xa = match self.mask(s, li, m, be.dims(x).1)? {
            None => be.lora_forward(&mut y, x, &p.a, &p.b, p.scale)?,
            Some(mask) => be.lora_forward(&mut y, &be.mul(x, &mask)?, &p.a, &p.b, p.scale)?,
        };
        Ok((y, Some(xa)))
    }

    /// Backward of `project`: `dx (+)= dy · W` plus the LoRA path, whose dA, dB accumulate. With
    /// a dropout mask the LoRA path read `x ⊙ drop`: dA comes from that, and its input gradient
    /// is masked the same way before it joins dx.
    #[allow(clippy::too_many_arguments)]
    fn project_backward(
        &self,
        s: &Step<'_, B>,
        li: usize,
        m: LoraModule,
        dy: &B::Tensor,
        x: &B::Tensor,
        w: &B::Matrix,
        a: &LayerActs<B::Tensor>,
        grads: &mut PerModule<(B::Tensor, B::Tensor)>,
        dx: &mut B::Tensor,
        accumulate: bool,
    ) -> Result<()> {
        let be = &self.backend;
        be.linear_dx(dy, w, dx, accumulate)?;
        let (Some(p), Some(xa), Some((da, db))) = (&s.lora[li][m.index()], &a.lora_xa[m.index()], grads[li][m.index()].as_mut()) else {
            return Ok(());
        };
        match self.mask(s, li, m, be.dims(x).1)? {
            None => be.lora_backward(x, xa, dy, &p.a, &p.b, p.scale, da, db, dx),
            Some(mask) => {
                let (rows, cols) = be.dims(dx);
                let mut dxd = be.zeros(rows, cols)?;
                be.lora_backward(&be.mul(x, &mask)?, xa, dy, &p.a, &p.b, p.scale, da, db, &mut dxd)?;
                be.add_assign(dx, &be.mul(&dxd, &mask)?)
            }
        }
    }

    /// One layer's forward from its input `x_in [T, hidden]`: the output and the saved activations.
    fn layer_forward(&self, s: &Step<'_, B>, li: usize, x_in: &B::Tensor) -> Result<(B::Tensor, LayerActs<B::Tensor>)> {
        let (be, c, l) = (&self.backend, &self.config, self.layer(li));
        let mut lora_xa: [Option<B::Tensor>; 7] = Default::default();
        let mut project = |m: LoraModule, x: &B::Tensor, w: &B::Matrix, bias: Option<&B::Vector>| -> Result<B::Tensor> {
            let (y, xa) = self.project(s, li, m, x, w, bias)?;
            lora_xa[m.index()] = xa;
            Ok(y)
        };
        let hn1 = be.rms_norm(x_in, &l.input_norm, c.rms_norm_eps)?;
        let mut q = project(LoraModule::Q, &hn1, &l.q, l.q_bias.as_ref())?;
        let mut k = project(LoraModule::K, &hn1, &l.k, l.k_bias.as_ref())?;
        let v = project(LoraModule::V, &hn1, &l.v, l.v_bias.as_ref())?;
        be.rope_batch(&mut q, &mut k, &s.batch, &self.base.rope, false)?;
        let (attn, lse) = be.causal_attention(&q, &k, &v, &s.batch)?;
        let o = project(LoraModule::O, &attn, &l.o, None)?;
        let mut x_mid = be.copy(x_in)?;
        be.add_assign(&mut x_mid, &o)?;
        drop(o);
        let hn2 = be.rms_norm(&x_mid, &l.post_norm, c.rms_norm_eps)?;
        let gate = project(LoraModule::Gate, &hn2, &l.gate, None)?;
        let up = project(LoraModule::Up, &hn2, &l.up, None)?;
        let act = be.silu_mul(&gate, &up)?;
        let down = project(LoraModule::Down, &act, &l.down, None)?;
        let mut x_out = be.copy(&x_mid)?;
        be.add_assign(&mut x_out, &down)?;
        Ok((x_out, LayerActs { hn1, lora_xa, q, k, v, attn, lse, x_mid, hn2, gate, up, act }))
    }

    /// One layer's backward: from `dx_out` (the gradient of the layer's output) to the gradient
    /// of its input, adding the layer's LoRA gradients into `grads`.
    fn layer_backward(
        &self,
        s: &Step<'_, B>,
        li: usize,
        x_in: &B::Tensor,
        a: &LayerActs<B::Tensor>,
        dx_out: B::Tensor,
        grads: &mut PerModule<(B::Tensor, B::Tensor)>,
    ) -> Result<B::Tensor> {
        let (be, c, l, t) = (&self.backend, &self.config, self.layer(li), s.t);
        let (h, qd, ff) = (c.hidden_size, c.q_dim(), c.intermediate_size);
        // MLP: x_out = x_mid + down(silu(gate(hn2)) · up(hn2)), hn2 = norm(x_mid).
        let mut d_act = be.zeros(t, ff)?;
        self.project_backward(s, li, LoraModule::Down, &dx_out, &a.act, &l.down, a, grads, &mut d_act, false)?;
        let (d_gate, d_up) = be.silu_mul_backward(&a.gate, &a.up, &d_act)?;
        drop(d_act);
        let mut d_hn2 = be.zeros(t, h)?;
        self.project_backward(s, li, LoraModule::Gate, &d_gate, &a.hn2, &l.gate, a, grads, &mut d_hn2, false)?;
        self.project_backward(s, li, LoraModule::Up, &d_up, &a.hn2, &l.up, a, grads, &mut d_hn2, true)?;
        let mut dx_mid = dx_out;
        be.rms_norm_backward(&a.x_mid, &l.post_norm, c.rms_norm_eps, &d_hn2, &mut dx_mid, true)?;
        // Attention: x_mid = x_in + o(attention(rope(q(hn1)), rope(k(hn1)), v(hn1))), hn1 = norm(x_in).
        let mut d_attn = be.zeros(t, qd)?;
        self.project_backward(s, li, LoraModule::O, &dx_mid, &a.attn, &l.o, a, grads, &mut d_attn, false)?;
        let (mut dq, mut dk, dv) = be.causal_attention_backward(&a.q, &a.k, &a.v, &a.attn, &a.lse, &d_attn, &s.batch)?;
        drop(d_attn);
        be.rope_batch(&mut dq, &mut dk, &s.batch, &self.base.rope, true)?;
        let mut d_hn1 = be.zeros(t, h)?;
        for (m, w, dy, acc) in [(LoraModule::Q, &l.q, &dq, false), (LoraModule::K, &l.k, &dk, true), (LoraModule::V, &l.v, &dv, true)] {
            self.project_backward(s, li, m, dy, &a.hn1, w, a, grads, &mut d_hn1, acc)?;
        }
        let mut dx_in = dx_mid;
        be.rms_norm_backward(x_in, &l.input_norm, c.rms_norm_eps, &d_hn1, &mut dx_in, true)?;
        Ok(dx_in)
    }

    /// The final norm of the labelled rows of `x [T, hidden]`: `(rows of x, normed rows)`.
    fn head_inputs(&self, s: &Step<'_, B>, x: &B::Tensor) -> Result<(B::Tensor, B::Tensor)> {
        let sel = self.backend.gather_label_rows(x, &s.batch)?;
        let normed = self.backend.rms_norm(&sel, &self.base.norm, self.config.rms_norm_eps)?;
        Ok((sel, normed))
    }

    /// `[vocab, hidden]`: the lm_head, or the embeddings when they are tied.
    fn lm_head(&self) -> &B::Matrix {
        self.base.lm_head.as_ref().unwrap_or(&self.base.embed)
    }

    /// Bytes the decoder's frozen linear weights take in memory (what `BaseFormat` changes).
    pub fn linear_weight_bytes(&self) -> usize {
        self.base.layers.iter().flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]).map(|m| self.backend.matrix_bytes(m)).sum()
    }

    /// The weighted loss `Σ_rows weight · CE` of a batch (forward only): every labelled row
    /// counts `weight` (1 / labelled rows gives the mean, as HF's causal-LM loss). With
    /// `opts.lora_dropout` it is the loss under the dropout masks `opts.dropout_seed` draws.
    pub fn loss(&self, adapter: &LoraAdapter, batch: &TrainBatch, weight: f32, opts: StepOptions) -> Result<f64> {
        let pairs = self.upload_pairs(adapter)?;
        let s = self.begin(adapter, &pairs, batch, opts)?;
        if s.labels == 0 {
            return Ok(0.0);
        }
        let mut x = self.backend.embed_batch(&self.base.embed, &s.batch)?;
        for li in 0..self.num_layers() {
            x = self.layer_forward(&s, li, &x)?.0;
        }
        let (_, normed) = self.head_inputs(&s, &x)?;
        Ok(self.backend.cross_entropy(&normed, self.lm_head(), &s.batch, weight, opts.vocab_chunk)?.0)
    }

    /// One forward + backward: adds `d (Σ weight · CE) / d θ` for every LoRA parameter θ of
    /// `adapter` into `grads` (so micro-batches accumulate) and returns the weighted loss. The
    /// adapter goes to the backend and the gradients come back for this call; a training loop
    /// keeps both on the backend instead (`ResidentLora`).
    pub fn forward_backward(&self, adapter: &LoraAdapter, batch: &TrainBatch, weight: f32, opts: StepOptions, grads: &mut LoraGrads) -> Result<f64> {
        grads.check_fits(adapter)?;
        let pairs = self.upload_pairs(adapter)?;
        let mut step_grads = self.zeros_like(&pairs)?;
        let s = self.begin(adapter, &pairs, batch, opts)?;
        let loss = self.forward_backward_step(&s, weight, &mut step_grads)?;
        // The step's gradients join the caller's (which may hold earlier micro-batches').
        let be = &self.backend;
        for (host, dev) in grads.layers.iter_mut().zip(&step_grads) {
            for (h, d) in host.iter_mut().zip(dev) {
                if let (Some((ha, hb)), Some((da, db))) = (h.as_mut(), d) {
                    for (dst, src) in [(ha, da), (hb, db)] {
                        for (o, v) in dst.iter_mut().zip(be.to_host(src)?) {
                            *o += v;
                        }
                    }
                }
            }
        }
        Ok(loss)
    }

    /// `forward_backward` on the backend's own copy of the adapter, adding into its gradients.
    pub fn forward_backward_resident(
        &self,
        adapter: &LoraAdapter,
        r: &mut super::ResidentLora<B>,
        batch: &TrainBatch,
        weight: f32,
        opts: StepOptions,
    ) -> Result<f64> {
        let (pairs, grads) = r.pairs_and_grads();
        let s = self.begin(adapter, pairs, batch, opts)?;
        self.forward_backward_step(&s, weight, grads)
    }

    /// The forward + backward of one step, adding into `step_grads` (shaped like the step's pairs).
    fn forward_backward_step(&self, s: &Step<'_, B>, weight: f32, step_grads: &mut PerModule<(B::Tensor, B::Tensor)>) -> Result<f64> {
        if s.labels == 0 {
            return Ok(0.0);
        }
        let opts = s.opts;
        let be = &self.backend;
        // Forward, keeping each layer's input (and, unless checkpointing, its activations).
        let mut inputs: Vec<B::Tensor> = Vec::with_capacity(self.num_layers());
        let mut saved: Vec<Option<LayerActs<B::Tensor>>> = Vec::with_capacity(self.num_layers());
        let mut x = be.embed_batch(&self.base.embed, &s.batch)?;
        for li in 0..self.num_layers() {
            let (x_out, acts) = self.layer_forward(s, li, &x)?;
            saved.push(if opts.checkpoint_activations { None } else { Some(acts) });
            inputs.push(std::mem::replace(&mut x, x_out));
        }
        // Head: final norm + lm_head + cross-entropy on the labelled rows only.
        let (sel, normed) = self.head_inputs(s, &x)?;
        drop(x);
        let (loss, d_normed) = be.cross_entropy(&normed, self.lm_head(), &s.batch, weight, opts.vocab_chunk)?;
        let (rows, cols) = be.dims(&sel);
        let mut d_sel = be.zeros(rows, cols)?;
        be.rms_norm_backward(&sel, &self.base.norm, self.config.rms_norm_eps, &d_normed, &mut d_sel, false)?;
        let mut dx = be.scatter_label_rows(&d_sel, &s.batch)?;
        // Backward, last layer first, freeing each layer's activations once used.
        for li in (0..self.num_layers()).rev() {
            let x_in = inputs.pop().ok_or_else(|| Error::InvalidArgument("internal: missing layer input".into()))?;
            let acts = match saved.pop().flatten() {
                Some(a) => a,
                None => self.layer_forward(s, li, &x_in)?.1,
            };
            dx = self.layer_backward(s, li, &x_in, &acts, dx, step_grads)?;
        }
        Ok(loss)
    }
}
