//! The decoder for training on the CPU: a forward pass over a packed batch of whole sequences
//! that keeps what the backward needs, and the backward pass through every layer down to the
//! LoRA parameters (the base is frozen: no base-weight gradient is ever formed).
//!
//! Why a second forward next to `model::llama`: serving runs one step of a ragged batch over a
//! paged KV cache and keeps nothing; training runs whole sequences at once (causal attention
//! per sequence, no cache) and must keep, per layer, the activations each backward op reads.
//! The ops are the same CPU functions (`backend::cpu::{ops, matmul, nf4}` forward,
//! `backend::cpu::{backward, frozen}` backward), so the two forwards compute the same
//! function (the golden test checks this one against HF's loss and autograd gradients).
//!
//! Saved per layer (`LayerActs`), for `T` rows: the layer input `x_in` (always, it is the
//! checkpoint), the normed inputs `hn1`, `hn2` (read by the q/k/v and gate/up LoRA backward for
//! dA), `x·Aᵀ` of each LoRA (for dB), q and k after RoPE and v, the attention output and the
//! softmax log-sum-exp `[T, heads]` (the probabilities are recomputed from it, never stored),
//! the residual `x_mid` after attention (for the post-attention norm), gate, up and
//! `silu(gate)·up`. With `checkpoint_activations` only `x_in` is kept per layer and the
//! layer's forward is run again, from it, just before its backward.

use std::path::Path;

use crate::backend::cpu::{backward as bw, bf16, frozen, matmul, nf4, ops, CpuBackend, CpuMatrix, CpuWeight};
use crate::lora::{LoraAdapter, LoraModule, LoraPair};
use crate::model::config::ModelConfig;
use crate::model::llama::{Layer, Llama};
use crate::model::weights::WeightFiles;
use crate::model::{BaseFormat, LoadOptions};
use crate::quant::Quantization;
use crate::{Error, Result};

use super::batch::TrainBatch;
use super::grads::LoraGrads;

/// The frozen base on the CPU: the serving decoder's own weights (`model::llama::Llama` on the
/// CPU backend: one loader and one layer struct for serving and training), dense f32, bf16 or
/// NF4 per linear weight.
pub struct TrainModel {
    pub config: ModelConfig,
    base: Llama<CpuBackend>,
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

fn masked(x: &[f32], mask: &[f32]) -> Vec<f32> {
    x.iter().zip(mask).map(|(a, b)| a * b).collect()
}

/// What one layer's backward reads (see the module comment).
struct LayerActs {
    hn1: Vec<f32>,
    /// `x·Aᵀ [T, r]` per `LoraModule::index`, where the adapter has that module.
    lora_xa: [Option<Vec<f32>>; 7],
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    lse: Vec<f32>,
    x_mid: Vec<f32>,
    hn2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
}

/// `y [t, out] = x [t, in] · Wᵀ` for a dense or NF4 frozen weight.
fn linear(x: &[f32], t: usize, w: &CpuMatrix) -> Vec<f32> {
    let mut y = vec![0.0; t * w.rows];
    match &w.weight {
        CpuWeight::Dense(d) => matmul::linear(x, t, w.cols, d, w.rows, &mut y),
        CpuWeight::Nf4(m) => nf4::linear(x, t, m, &mut y),
        CpuWeight::Bf16(m) => bf16::linear(x, t, m, &mut y),
    }
    y
}

/// `dx [t, in] (+)= dy [t, out] · W`: the input gradient through a frozen weight.
fn linear_dx(dy: &[f32], t: usize, w: &CpuMatrix, dx: &mut [f32], accumulate: bool) {
    match &w.weight {
        CpuWeight::Dense(d) => bw::gemm(t, w.cols, w.rows, dy, false, d, false, dx, accumulate, 1.0),
        CpuWeight::Nf4(m) => frozen::linear_backward_dx(dy, t, m, dx, accumulate),
        CpuWeight::Bf16(m) => frozen::linear_backward_dx(dy, t, m, dx, accumulate),
    }
}

/// A targeted projection: `y = x Wᵀ (+ bias) + s · (x' Aᵀ) Bᵀ` with `x' = x ⊙ drop` (LoRA
/// dropout; `x` without); returns y and `x' Aᵀ`.
fn project(x: &[f32], t: usize, w: &CpuMatrix, bias: Option<&Vec<f32>>, pair: Option<&LoraPair>, drop: Option<&[f32]>) -> (Vec<f32>, Option<Vec<f32>>) {
    let mut y = linear(x, t, w);
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(w.rows) {
            for (o, &bv) in row.iter_mut().zip(b) {
                *o += bv;
            }
        }
    }
    let xa = pair.map(|p| {
        let r = p.rank();
        let mut xa = vec![0.0; t * r];
        let xd = drop.map(|m| masked(x, m));
        matmul::linear(xd.as_deref().unwrap_or(x), t, w.cols, &p.a.data, r, &mut xa);
        bw::gemm(t, w.rows, r, &xa, false, &p.b.data, true, &mut y, true, p.scale);
        xa
    });
    (y, xa)
}

/// Backward of `project`: `dx (+)= dy · W` plus the LoRA path, whose dA, dB accumulate. With a
/// dropout mask the LoRA path read `x ⊙ drop`: dA comes from that, and its input gradient is
/// masked the same way before it joins dx.
#[allow(clippy::too_many_arguments)]
fn project_backward(
    dy: &[f32],
    x: &[f32],
    t: usize,
    w: &CpuMatrix,
    pair: Option<&LoraPair>,
    xa: Option<&Vec<f32>>,
    grad: Option<&mut (Vec<f32>, Vec<f32>)>,
    drop: Option<&[f32]>,
    dx: &mut [f32],
    accumulate: bool,
) {
    linear_dx(dy, t, w, dx, accumulate);
    if let (Some(p), Some(xa), Some((da, db))) = (pair, xa, grad) {
        match drop {
            None => bw::lora_backward(x, xa, dy, t, &p.a.data, &p.b.data, p.rank(), p.scale, da, db, Some(dx)),
            Some(mask) => {
                let mut dxd = vec![0.0; dx.len()];
                bw::lora_backward(&masked(x, mask), xa, dy, t, &p.a.data, &p.b.data, p.rank(), p.scale, da, db, Some(&mut dxd));
                for ((d, g), m) in dx.iter_mut().zip(&dxd).zip(mask) {
                    *d += g * m;
                }
            }
        }
    }
}

/// The f32 data of a dense table (embeddings, lm_head: `Llama` uploads them with
/// `upload_table`, which the CPU backend keeps dense).
fn dense(m: &CpuMatrix) -> &[f32] {
    match &m.weight {
        CpuWeight::Dense(d) => d,
        CpuWeight::Nf4(_) | CpuWeight::Bf16(_) => unreachable!("the CPU backend keeps tables dense"),
    }
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    ops::rms_norm(x, w, eps, &mut out);
    out
}

impl TrainModel {
    /// Loads an HF model directory; `quantize` NF4-quantizes the decoder's linear weights as
    /// they load (weights stored as bitsandbytes NF4 stay NF4 either way), as `Llama::load_with`.
    pub fn load(dir: &Path, quantize: Option<Quantization>) -> Result<Self> {
        Self::load_as(dir, quantize.into())
    }

    /// Loads an HF model directory with its linear weights held as `format`.
    pub fn load_as(dir: &Path, format: BaseFormat) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let w = WeightFiles::open_dir(dir)?;
        Self::from_weights_as(config, &w, format)
    }

    pub fn from_weights(config: ModelConfig, w: &WeightFiles, quantize: Option<Quantization>) -> Result<Self> {
        Self::from_weights_as(config, w, quantize.into())
    }

    pub fn from_weights_as(config: ModelConfig, w: &WeightFiles, format: BaseFormat) -> Result<Self> {
        let base = Llama::from_weights_with(&CpuBackend::new(), config.clone(), w, LoadOptions { format, progress: false })?;
        Ok(TrainModel { config, base })
    }

    fn layer(&self, li: usize) -> &Layer<CpuBackend> {
        &self.base.layers[li]
    }

    fn num_layers(&self) -> usize {
        self.base.layers.len()
    }

    /// `[max_pos, head_dim / 2]` cos and sin tables.
    fn rope(&self) -> (&[f32], &[f32]) {
        self.base.rope.tables()
    }

    /// `[vocab, hidden]` f32 (the loader keeps embeddings and lm_head dense).
    fn embed(&self) -> &[f32] {
        dense(&self.base.embed)
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

    fn check_batch(&self, batch: &TrainBatch) -> Result<()> {
        let c = &self.config;
        if let Some(&bad) = batch.ids.iter().find(|&&i| i as usize >= c.vocab_size) {
            return Err(Error::InvalidArgument(format!("token id {bad} is outside the vocabulary of {}", c.vocab_size)));
        }
        if let Some(&p) = batch.positions.iter().find(|&&p| p as usize >= c.max_position_embeddings) {
            return Err(Error::PromptTooLong { tokens: p as usize + 1, max: c.max_position_embeddings });
        }
        batch.validate()
    }

    /// One layer's forward from its input `x_in [T, hidden]`: the output and the saved activations.
    fn layer_forward(&self, li: usize, x_in: &[f32], batch: &TrainBatch, adapter: &LoraAdapter, opts: &StepOptions) -> (Vec<f32>, LayerActs) {
        let c = &self.config;
        let l = self.layer(li);
        let (rope_cos, rope_sin) = self.rope();
        let t = batch.ids.len();
        let pair = |m: LoraModule| adapter.layers[li][m.index()].as_ref();
        let dropout = |m: LoraModule, width: usize| dropout_mask(adapter, opts, li, m, t * width);
        let project = |x: &[f32], w: &CpuMatrix, bias: Option<&Vec<f32>>, m: LoraModule| project(x, t, w, bias, pair(m), dropout(m, w.cols).as_deref());
        let hn1 = rms_norm(x_in, &l.input_norm, c.rms_norm_eps);
        let mut lora_xa: [Option<Vec<f32>>; 7] = Default::default();
        let (mut q, xa) = project(&hn1, &l.q, l.q_bias.as_ref(), LoraModule::Q);
        lora_xa[LoraModule::Q.index()] = xa;
        let (mut k, xa) = project(&hn1, &l.k, l.k_bias.as_ref(), LoraModule::K);
        lora_xa[LoraModule::K.index()] = xa;
        let (v, xa) = project(&hn1, &l.v, l.v_bias.as_ref(), LoraModule::V);
        lora_xa[LoraModule::V.index()] = xa;
        ops::rope_inplace(&mut q, &batch.positions, c.num_heads, c.head_dim, rope_cos, rope_sin);
        ops::rope_inplace(&mut k, &batch.positions, c.num_kv_heads, c.head_dim, rope_cos, rope_sin);
        let (attn, lse) = bw::causal_attention_forward(&q, &k, &v, &batch.seqs, c.num_heads, c.num_kv_heads, c.head_dim);
        let (o, xa) = project(&attn, &l.o, None, LoraModule::O);
        lora_xa[LoraModule::O.index()] = xa;
        let mut x_mid = x_in.to_vec();
        ops::add_assign(&mut x_mid, &o);
        let hn2 = rms_norm(&x_mid, &l.post_norm, c.rms_norm_eps);
        let (gate, xa) = project(&hn2, &l.gate, None, LoraModule::Gate);
        lora_xa[LoraModule::Gate.index()] = xa;
        let (up, xa) = project(&hn2, &l.up, None, LoraModule::Up);
        lora_xa[LoraModule::Up.index()] = xa;
        let mut act = vec![0.0; gate.len()];
        ops::silu_mul(&gate, &up, &mut act);
        let (down, xa) = project(&act, &l.down, None, LoraModule::Down);
        lora_xa[LoraModule::Down.index()] = xa;
        let mut x_out = x_mid.clone();
        ops::add_assign(&mut x_out, &down);
        (x_out, LayerActs { hn1, lora_xa, q, k, v, attn, lse, x_mid, hn2, gate, up, act })
    }

    /// One layer's backward: from `dx_out` (the gradient of the layer's output) to the gradient
    /// of its input, adding the layer's LoRA gradients into `grads`.
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        li: usize,
        x_in: &[f32],
        a: &LayerActs,
        dx_out: Vec<f32>,
        batch: &TrainBatch,
        adapter: &LoraAdapter,
        grads: &mut LoraGrads,
        opts: &StepOptions,
    ) -> Vec<f32> {
        let c = &self.config;
        let l = self.layer(li);
        let (rope_cos, rope_sin) = self.rope();
        let t = batch.ids.len();
        let (h, qd, kvd, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let pair = |m: LoraModule| adapter.layers[li][m.index()].as_ref();
        // The forward's dropout masks, drawn again.
        let dropout = |m: LoraModule, width: usize| dropout_mask(adapter, opts, li, m, t * width);
        let g = &mut grads.layers[li];
        // MLP: x_out = x_mid + down(silu(gate(hn2)) · up(hn2)), hn2 = norm(x_mid).
        let mut d_act = vec![0.0; t * ff];
        let m = LoraModule::Down;
        project_backward(&dx_out, &a.act, t, &l.down, pair(m), a.lora_xa[m.index()].as_ref(), g[m.index()].as_mut(), dropout(m, ff).as_deref(), &mut d_act, false);
        let (mut d_gate, mut d_up) = (vec![0.0; t * ff], vec![0.0; t * ff]);
        bw::silu_mul_backward(&a.gate, &a.up, &d_act, &mut d_gate, &mut d_up);
        drop(d_act);
        let mut d_hn2 = vec![0.0; t * h];
        let m = LoraModule::Gate;
        project_backward(&d_gate, &a.hn2, t, &l.gate, pair(m), a.lora_xa[m.index()].as_ref(), g[m.index()].as_mut(), dropout(m, h).as_deref(), &mut d_hn2, false);
        let m = LoraModule::Up;
        project_backward(&d_up, &a.hn2, t, &l.up, pair(m), a.lora_xa[m.index()].as_ref(), g[m.index()].as_mut(), dropout(m, h).as_deref(), &mut d_hn2, true);
        let mut dx_mid = dx_out;
        bw::rms_norm_backward(&a.x_mid, &l.post_norm, c.rms_norm_eps, &d_hn2, &mut dx_mid, true);
        // Attention: x_mid = x_in + o(attention(rope(q(hn1)), rope(k(hn1)), v(hn1))), hn1 = norm(x_in).
        let mut d_attn = vec![0.0; t * qd];
        let m = LoraModule::O;
        project_backward(&dx_mid, &a.attn, t, &l.o, pair(m), a.lora_xa[m.index()].as_ref(), g[m.index()].as_mut(), dropout(m, qd).as_deref(), &mut d_attn, false);
        let (mut dq, mut dk, dv) =
            bw::causal_attention_backward(&a.q, &a.k, &a.v, &a.attn, &a.lse, &d_attn, &batch.seqs, c.num_heads, c.num_kv_heads, c.head_dim);
        debug_assert_eq!(dk.len(), t * kvd);
        bw::rope_backward_inplace(&mut dq, &batch.positions, c.num_heads, c.head_dim, rope_cos, rope_sin);
        bw::rope_backward_inplace(&mut dk, &batch.positions, c.num_kv_heads, c.head_dim, rope_cos, rope_sin);
        let mut d_hn1 = vec![0.0; t * h];
        for (m, w, dy, acc) in [(LoraModule::Q, &l.q, &dq, false), (LoraModule::K, &l.k, &dk, true), (LoraModule::V, &l.v, &dv, true)] {
            project_backward(dy, &a.hn1, t, w, pair(m), a.lora_xa[m.index()].as_ref(), g[m.index()].as_mut(), dropout(m, h).as_deref(), &mut d_hn1, acc);
        }
        let mut dx_in = dx_mid;
        bw::rms_norm_backward(x_in, &l.input_norm, c.rms_norm_eps, &d_hn1, &mut dx_in, true);
        dx_in
    }

    /// The final norm of the labelled rows of `x [T, hidden]`: `(rows of x, normed rows)`.
    fn head_inputs(&self, x: &[f32], batch: &TrainBatch) -> (Vec<f32>, Vec<f32>) {
        let h = self.config.hidden_size;
        let mut sel = Vec::with_capacity(batch.label_rows.len() * h);
        for &r in &batch.label_rows {
            sel.extend_from_slice(&x[r * h..(r + 1) * h]);
        }
        let normed = rms_norm(&sel, &self.base.norm, self.config.rms_norm_eps);
        (sel, normed)
    }

    fn lm_head(&self) -> &[f32] {
        self.base.lm_head.as_ref().map_or_else(|| self.embed(), dense)
    }

    /// Bytes the decoder's frozen linear weights take in memory (what `BaseFormat` changes).
    pub fn linear_weight_bytes(&self) -> usize {
        self.base.layers.iter().flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]).map(|m| m.weight.bytes()).sum()
    }

    /// The weighted loss `Σ_rows weight · CE` of a batch (forward only): every labelled row
    /// counts `weight` (1 / labelled rows gives the mean, as HF's causal-LM loss). With
    /// `opts.lora_dropout` it is the loss under the dropout masks `opts.dropout_seed` draws.
    pub fn loss(&self, adapter: &LoraAdapter, batch: &TrainBatch, weight: f32, opts: StepOptions) -> Result<f64> {
        self.check_adapter(adapter)?;
        self.check_batch(batch)?;
        if batch.label_rows.is_empty() {
            return Ok(0.0);
        }
        let mut x = self.embed_rows(&batch.ids);
        for li in 0..self.num_layers() {
            x = self.layer_forward(li, &x, batch, adapter, &opts).0;
        }
        let (_, normed) = self.head_inputs(&x, batch);
        let weights = vec![weight; batch.targets.len()];
        Ok(bw::cross_entropy_lm_head(&normed, self.lm_head(), self.config.hidden_size, &batch.targets, &weights, opts.vocab_chunk).0)
    }

    fn embed_rows(&self, ids: &[u32]) -> Vec<f32> {
        let h = self.config.hidden_size;
        let mut x = vec![0.0; ids.len() * h];
        ops::embedding(self.embed(), h, ids, &mut x);
        x
    }

    /// One forward + backward: adds `d (Σ weight · CE) / d θ` for every LoRA parameter θ of
    /// `adapter` into `grads` (so micro-batches accumulate) and returns the weighted loss.
    pub fn forward_backward(&self, adapter: &LoraAdapter, batch: &TrainBatch, weight: f32, opts: StepOptions, grads: &mut LoraGrads) -> Result<f64> {
        self.check_adapter(adapter)?;
        self.check_batch(batch)?;
        grads.check_fits(adapter)?;
        if batch.label_rows.is_empty() {
            return Ok(0.0);
        }
        let (h, t) = (self.config.hidden_size, batch.ids.len());
        // Forward, keeping each layer's input (and, unless checkpointing, its activations).
        let mut inputs: Vec<Vec<f32>> = Vec::with_capacity(self.num_layers());
        let mut saved: Vec<Option<LayerActs>> = Vec::with_capacity(self.num_layers());
        let mut x = self.embed_rows(&batch.ids);
        for li in 0..self.num_layers() {
            let (x_out, acts) = self.layer_forward(li, &x, batch, adapter, &opts);
            saved.push(if opts.checkpoint_activations { None } else { Some(acts) });
            inputs.push(std::mem::replace(&mut x, x_out));
        }
        // Head: final norm + lm_head + cross-entropy on the labelled rows only.
        let (sel, normed) = self.head_inputs(&x, batch);
        drop(x);
        let weights = vec![weight; batch.targets.len()];
        let (loss, d_normed) = bw::cross_entropy_lm_head(&normed, self.lm_head(), h, &batch.targets, &weights, opts.vocab_chunk);
        let mut d_sel = vec![0.0; sel.len()];
        bw::rms_norm_backward(&sel, &self.base.norm, self.config.rms_norm_eps, &d_normed, &mut d_sel, false);
        let mut dx = vec![0.0; t * h];
        for (i, &r) in batch.label_rows.iter().enumerate() {
            for (d, &v) in dx[r * h..(r + 1) * h].iter_mut().zip(&d_sel[i * h..(i + 1) * h]) {
                *d += v;
            }
        }
        // Backward, last layer first, freeing each layer's activations once used.
        for li in (0..self.num_layers()).rev() {
            let x_in = inputs.pop().ok_or_else(|| Error::InvalidArgument("internal: missing layer input".into()))?;
            let acts = match saved.pop().flatten() {
                Some(a) => a,
                None => self.layer_forward(li, &x_in, batch, adapter, &opts).1,
            };
            dx = self.layer_backward(li, &x_in, &acts, dx, batch, adapter, grads, &opts);
        }
        Ok(loss)
    }
}
