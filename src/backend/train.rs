//! The training half of a backend: the ops the QLoRA trainer (`crate::train::TrainModel`) needs
//! beyond the serving forward. The trainer's forward is the serving ops (`Backend::linear`,
//! `rms_norm`, `silu_mul`, `add_assign`) plus the few that differ in training (whole sequences
//! of a packed batch instead of a paged cache, saved log-sum-exps, LoRA with its `x·Aᵀ` kept),
//! and its backward is the ops here. The CPU backend implements them with the functions of
//! `backend::cpu::backward` (the reference); a GPU backend with its training kernels.
//!
//! Shapes: activations `[T, width]` for the batch's `T` rows; q `[T, heads · head_dim]`,
//! k and v `[T, kv_heads · head_dim]`; LoRA A `[r, in]`, B `[out, r]` as tensors (the trainer
//! uploads the adapter each step: it changes at every update); the frozen base never gets a
//! gradient, only its inputs do.

use super::Backend;
use crate::types::config::ModelConfig;
use crate::types::TrainBatch;
use crate::Result;

/// One AdamW update's scalars (PyTorch's `torch.optim.AdamW`, computed once per update on the
/// host): per element, `g' = grad_scale · g`, `m = β1·m + (1 − β1)·g'`, `v = β2·v + (1 − β2)·g'²`,
/// `p = decay · p`, `p −= step_size · m / (√v / bc2_sqrt + eps)`, with `step_size = lr / (1 −
/// β1^t)`, `bc2_sqrt = √(1 − β2^t)`, `decay = 1 − lr · weight_decay` and `grad_scale` the
/// gradient clipping factor (1: none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// β1.
    pub beta1: f32,
    /// β2.
    pub beta2: f32,
    /// ε.
    pub eps: f32,
    /// `lr / (1 − β1^t)`.
    pub step_size: f32,
    /// `√(1 − β2^t)`.
    pub bc2_sqrt: f32,
    /// `1 − lr · weight_decay`.
    pub decay: f32,
    /// The gradient clipping factor (1: none).
    pub grad_scale: f32,
}

impl AdamWStep {
    /// The update of one element (the CPU twin of the device kernel, and the host optimizer's
    /// arithmetic): returns the new `(p, m, v)`.
    #[inline]
    pub fn apply(&self, p: f32, g: f32, m: f32, v: f32) -> (f32, f32, f32) {
        let g = g * self.grad_scale;
        let m = self.beta1 * m + (1.0 - self.beta1) * g;
        let v = self.beta2 * v + (1.0 - self.beta2) * g * g;
        let p = p * self.decay;
        (p - self.step_size * m / (v.sqrt() / self.bc2_sqrt + self.eps), m, v)
    }
}

/// What training adds to a `Backend`: the backward of every forward op, causal attention over
/// whole packed sequences, the fused lm_head cross-entropy and AdamW on the device.
pub trait TrainBackend: Backend {
    /// A packed training batch on the backend: ids, positions, sequence spans, labelled rows and
    /// targets, with the head layout; validated and (on a GPU) uploaded once per batch.
    type Batch: Send;

    /// Checks `batch` against the model (ids in the vocabulary, positions in the RoPE table,
    /// spans inside the batch, labelled rows and targets in range) and prepares it.
    fn begin_batch(&self, batch: &TrainBatch, config: &ModelConfig) -> Result<Self::Batch>;

    /// `[T, hidden]`: the rows of `table` for the batch's ids.
    fn embed_batch(&self, table: &Self::Matrix, batch: &Self::Batch) -> Result<Self::Tensor>;
    /// Rotates q and k in place at the batch's positions; `backward`: by the inverse rotation
    /// (RoPE's backward: the transpose of a rotation is its inverse), for dq and dk.
    fn rope_batch(&self, q: &mut Self::Tensor, k: &mut Self::Tensor, batch: &Self::Batch, rope: &Self::Rope, backward: bool) -> Result<()>;
    /// Causal attention of each sequence over its context and itself: `(out [T, heads · d],
    /// lse [T, heads])`, the softmax rows' log-sum-exp the backward recomputes them from.
    fn causal_attention(&self, q: &Self::Tensor, k: &Self::Tensor, v: &Self::Tensor, batch: &Self::Batch) -> Result<(Self::Tensor, Self::Tensor)>;
    /// `(dq, dk, dv)` of `causal_attention` given `dout`.
    #[allow(clippy::too_many_arguments)]
    fn causal_attention_backward(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        out: &Self::Tensor,
        lse: &Self::Tensor,
        dout: &Self::Tensor,
        batch: &Self::Batch,
    ) -> Result<(Self::Tensor, Self::Tensor, Self::Tensor)>;

    /// `dx [T, in] (+)= dy [T, out] · W`: the input gradient through a frozen weight (dense,
    /// bf16 or NF4, as `Backend::linear` reads it).
    fn linear_dx(&self, dy: &Self::Tensor, w: &Self::Matrix, dx: &mut Self::Tensor, accumulate: bool) -> Result<()>;
    /// RMSNorm backward, weight frozen: `dx (+)= d norm(x) / dx · dy`.
    fn rms_norm_backward(&self, x: &Self::Tensor, w: &Self::Vector, eps: f32, dy: &Self::Tensor, dx: &mut Self::Tensor, accumulate: bool) -> Result<()>;
    /// `(dgate, dup)` of `silu(gate) · up`.
    fn silu_mul_backward(&self, gate: &Self::Tensor, up: &Self::Tensor, dout: &Self::Tensor) -> Result<(Self::Tensor, Self::Tensor)>;

    /// One LoRA path: `xa = x · Aᵀ [T, r]`, `y += scale · xa · Bᵀ`; returns `xa` (its backward
    /// reads it).
    fn lora_forward(&self, y: &mut Self::Tensor, x: &Self::Tensor, a: &Self::Tensor, b: &Self::Tensor, scale: f32) -> Result<Self::Tensor>;
    /// Backward of `lora_forward`: `dB += s · dyᵀ · xa`, `dA += (s · dy · B)ᵀ · x`,
    /// `dx += s · dy · B · A`. dA, dB, dx accumulate.
    #[allow(clippy::too_many_arguments)]
    fn lora_backward(
        &self,
        x: &Self::Tensor,
        xa: &Self::Tensor,
        dy: &Self::Tensor,
        a: &Self::Tensor,
        b: &Self::Tensor,
        scale: f32,
        da: &mut Self::Tensor,
        db: &mut Self::Tensor,
        dx: &mut Self::Tensor,
    ) -> Result<()>;

    /// `x ⊙ mask`, elementwise (LoRA dropout).
    fn mul(&self, x: &Self::Tensor, mask: &Self::Tensor) -> Result<Self::Tensor>;
    /// `[labelled rows, width]`: the batch's labelled rows of `x`, in order.
    fn gather_label_rows(&self, x: &Self::Tensor, batch: &Self::Batch) -> Result<Self::Tensor>;
    /// `[T, width]`: zeros, with row `i` of `d` at the batch's `i`-th labelled row.
    fn scatter_label_rows(&self, d: &Self::Tensor, batch: &Self::Batch) -> Result<Self::Tensor>;
    /// Cross-entropy fused with the lm_head over the labelled rows, never holding `[rows,
    /// vocab]` logits: `h [labelled rows, hidden]` against the batch's targets, each row weighing
    /// `weight`; the vocabulary is walked `chunk` rows of `table` at a time. Returns `(Σ weight ·
    /// CE, dh)` with dh already weighted.
    fn cross_entropy(&self, h: &Self::Tensor, table: &Self::Matrix, batch: &Self::Batch, weight: f32, chunk: usize) -> Result<(f64, Self::Tensor)>;

    /// One AdamW update of a parameter tensor `p` from its gradient `g` and moments `m`, `v`
    /// (all one shape), in place (`AdamWStep::apply` per element).
    fn adamw_step(&self, p: &mut Self::Tensor, g: &Self::Tensor, m: &mut Self::Tensor, v: &mut Self::Tensor, step: &AdamWStep) -> Result<()>;
    /// `Σ x²` over the tensor, summed in f64 (the global gradient norm's part).
    fn sum_squares(&self, x: &Self::Tensor) -> Result<f64>;

    /// `[rows, cols]` of zeros.
    fn zeros(&self, rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// Sets every element of `x` to zero, in place (gradients between updates).
    fn fill_zero(&self, x: &mut Self::Tensor) -> Result<()>;
    /// A copy of `x`.
    fn copy(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
}
