//! The backend trait: the ops the model (and later the trainer) needs, implemented by `cpu`
//! (the reference, f32) and `cuda` (the kernels). The forward pass in `model::llama` is written
//! once against this trait.
//!
//! Activations are 2-D row-major `[rows, cols]` tensors (rows = tokens of the flattened ragged
//! batch). The backend chooses how it stores them; the model never looks inside.

pub mod cpu;
pub mod cuda;

use crate::kv::{BatchLayout, KvLayout};
use crate::Result;

/// A weight matrix as loaded from disk, `[rows, cols]` row-major f32 (rows = output features
/// for a linear layer, tokens for an embedding table).
#[derive(Debug, Clone)]
pub struct HostMatrix {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

/// A weight matrix as handed to a backend: dense f32, NF4-quantized (bitsandbytes layout,
/// `[rows, cols]` = `tensor.shape`) or bf16. Embeddings are always dense f32.
#[derive(Debug, Clone)]
pub enum HostWeight {
    Dense(HostMatrix),
    Nf4 { name: String, tensor: crate::quant::Nf4Tensor },
    /// `[rows, cols]` row-major bf16 bits (`backend::cpu::bf16::f32_to_bf16`).
    Bf16 { name: String, rows: usize, cols: usize, data: Vec<u16> },
}

impl From<HostMatrix> for HostWeight {
    fn from(m: HostMatrix) -> Self {
        HostWeight::Dense(m)
    }
}

pub trait Backend: Send + Sync + 'static {
    /// Activations `[rows, cols]`.
    type Tensor: Send;
    /// A weight matrix `[out, in]` (also used as an embedding table `[vocab, hidden]`).
    type Matrix: Send + Sync;
    /// A 1-D parameter (norm weights, biases).
    type Vector: Send + Sync;
    /// RoPE cos/sin tables.
    type Rope: Send + Sync;
    /// The paged K/V storage of every layer.
    type Kv: Send;

    fn name(&self) -> String;

    /// Takes a `HostMatrix` (dense) or a `HostWeight` (dense or NF4). A backend may reject NF4
    /// where an op needs dense rows (e.g. an embedding table), at that op.
    fn upload_matrix(&self, m: impl Into<HostWeight>) -> Result<Self::Matrix>;
    fn upload_vector(&self, v: &[f32]) -> Result<Self::Vector>;
    /// cos, sin: `[max_pos, head_dim / 2]`.
    fn upload_rope(&self, cos: Vec<f32>, sin: Vec<f32>, half_dim: usize) -> Result<Self::Rope>;
    fn alloc_kv(&self, layout: KvLayout) -> Result<Self::Kv>;

    fn tensor_from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Tensor>;
    fn to_host(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    fn dims(&self, t: &Self::Tensor) -> (usize, usize);

    /// `[ids.len(), hidden]` rows of the table. Ids must be < vocab (checked).
    fn embedding(&self, table: &Self::Matrix, ids: &[u32]) -> Result<Self::Tensor>;
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Vector, eps: f32) -> Result<Self::Tensor>;
    /// `x [T, in] · wᵀ [in, out] (+ bias) -> [T, out]`.
    fn linear(&self, x: &Self::Tensor, w: &Self::Matrix, bias: Option<&Self::Vector>) -> Result<Self::Tensor>;
    /// Rotates each head of `x [T, n_heads * head_dim]` in place at `positions [T]`.
    fn rope(&self, x: &mut Self::Tensor, n_heads: usize, head_dim: usize, positions: &[u32], rope: &Self::Rope) -> Result<()>;
    fn silu_mul(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor>;
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;
    /// Writes the step's new `k, v [T, kv_heads * head_dim]` into the pages of `layer`, then
    /// computes causal attention of `q [T, heads * head_dim]` over each sequence's whole
    /// context (earlier pages + the new tokens). Returns `[T, heads * head_dim]`.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        kv: &mut Self::Kv,
        layer: usize,
        batch: &BatchLayout,
    ) -> Result<Self::Tensor>;
    /// The selected rows of `x`, in order.
    fn gather_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor>;
    /// Batched LoRA (SGMV / BGMV): for each segment of consecutive rows sharing an adapter,
    /// `y[rows] += scale · (x[rows] · Aᵀ) · Bᵀ`. `x [T, in]`, `y [T, out]`; A `[r, in]` and
    /// B `[out, r]` are dense matrices uploaded with `upload_matrix`. Segments are in row
    /// order and do not overlap; rows outside every segment are left alone.
    fn lora_apply(&self, y: &mut Self::Tensor, x: &Self::Tensor, segments: &[LoraSegment<'_, Self::Matrix>]) -> Result<()>;
}

/// One segment of a batched LoRA step: rows `start..start + len` use the pair (`a`, `b`).
#[derive(Debug)]
pub struct LoraSegment<'a, M> {
    pub start: usize,
    pub len: usize,
    /// `[rank, in]`.
    pub a: &'a M,
    /// `[out, rank]`.
    pub b: &'a M,
    pub scale: f32,
}
