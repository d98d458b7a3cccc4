//! The backend trait: the ops the model (and later the trainer) needs, implemented by `cpu`
//! (the reference, f32) and `cuda` (the kernels). The forward pass in `model::llama` is written
//! once against this trait.
//!
//! Activations are 2-D row-major `[rows, cols]` tensors (rows = tokens of the flattened ragged
//! batch). The backend chooses how it stores them; the model never looks inside.

pub mod adapter;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod host_memory;
pub mod numeric;
pub mod random;
pub mod sampler;
pub mod sampling;
pub mod train;

use crate::kv::{BatchLayout, KvLayout};
use crate::types::{HeadFormat, LoraModule, ModelConfig};
use crate::Result;
pub use adapter::{LoadedAdapter, LoadedPair};

/// A weight matrix as loaded from disk, `[rows, cols]` row-major f32 (rows = output features
/// for a linear layer, tokens for an embedding table).
#[derive(Debug, Clone)]
pub struct HostMatrix {
    /// The tensor's name in its file.
    pub name: String,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows * cols` values.
    pub data: Vec<f32>,
}

/// A weight matrix as handed to a backend: dense f32, NF4-quantized (bitsandbytes layout,
/// `[rows, cols]` = `tensor.shape`) or bf16. Embeddings are always dense f32.
#[derive(Debug, Clone)]
pub enum HostWeight {
    /// f32 values.
    Dense(HostMatrix),
    /// NF4-quantized (bitsandbytes' layout).
    Nf4 {
        /// The tensor's name in its file.
        name: String,
        /// The packed codes and scales.
        tensor: crate::quant::Nf4Tensor,
    },
    /// `[rows, cols]` row-major bf16 bits (`backend::cpu::bf16::f32_to_bf16`).
    Bf16 {
        /// The tensor's name in its file.
        name: String,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// `rows * cols` bf16 bits.
        data: Vec<u16>,
    },
    /// Seeded random weights, created by the backend where they live (`backend::random`).
    Random(random::RandomSpec),
}

impl From<HostMatrix> for HostWeight {
    fn from(m: HostMatrix) -> Self {
        HostWeight::Dense(m)
    }
}

/// Consecutive batch rows `start .. start + len` that share an adapter (a batch sorted by adapter
/// has one run per adapter).
pub struct LoraRun<'a, B: Backend> {
    /// First row.
    pub start: usize,
    /// Rows.
    pub len: usize,
    /// The adapter of these rows.
    pub adapter: &'a LoadedAdapter<B>,
}

impl<B: Backend> Clone for LoraRun<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for LoraRun<'_, B> {}

/// What `Backend::begin_step` needs to know of a forward step.
pub struct StepSpec<'s, 'a, B: Backend> {
    /// The model's shape.
    pub config: &'s ModelConfig,
    /// The model's id, unique in the process (`Llama::id`).
    pub model_id: u64,
    /// The KV cache's shape (`Backend::kv_layout`) and id (`Backend::kv_id`).
    pub kv: KvLayout,
    /// The KV cache's id.
    pub kv_id: u64,
    /// The step's sequences and rows.
    pub batch: &'s BatchLayout,
    /// `[n_tokens]` the step's new tokens.
    pub ids: &'s [u32],
    /// Rows whose logits the step returns, in order.
    pub logit_rows: &'s [usize],
    /// The LoRA runs (empty: the base for every row).
    pub lora: &'s [LoraRun<'a, B>],
    /// One row per logit row when the step samples on the device (`Backend::sample`); else empty.
    pub samples: &'s [sampling::SampleRow],
    /// Per sample row: its sampler holds a token mask (structured output), which a device that
    /// samples applies itself (`Sampler::mask`, in the same order); empty: none.
    pub masked: &'s [bool],
}

/// What a device must do to run the model: upload weights, hold the paged KV cache, and the
/// forward ops over `[rows, features]` tensors. The model's forward pass (`model::llama`) is
/// written once against it; `cpu::CpuBackend` is the reference, `cuda::CudaBackend` the kernels.
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
    /// One forward step's metadata (token ids, positions, cache slots, block tables, logit rows,
    /// LoRA segments), validated and, on a GPU, uploaded once by `begin_step`; every layer's ops
    /// read it. It borrows the step's adapters.
    type Step<'a>
    where
        Self: 'a;

    /// The backend's name ("cpu", "cuda:0", ...).
    fn name(&self) -> String;

    /// Runs `step` (one engine step: hundreds of ops) where this backend's ops are cheapest to
    /// issue. The CPU backend runs it on a thread of its pool (`cpu::on_pool`): an op issued from
    /// a pool thread splits its parallel loop in place, while one issued from any other thread is
    /// handed to the pool and waited on, once per op. One hand-off per step instead; the pool
    /// thread is held for the step only, so several engines (or other pool users) in one process
    /// still take turns. Other backends run `step` where they are.
    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R
    where
        Self: Sized,
    {
        step()
    }

    /// Bytes of one K or V element in this backend's cache (the KV pool is sized with it).
    fn kv_elem_bytes(&self) -> usize;

    /// (free, total) bytes of the device's memory; None on the host (the CPU backend).
    fn device_memory(&self) -> Option<(usize, usize)> {
        None
    }

    /// Takes a `HostMatrix` (dense) or a `HostWeight` (dense or NF4). A backend may reject NF4
    /// where an op needs dense rows (e.g. an embedding table), at that op.
    fn upload_matrix(&self, m: impl Into<HostWeight>) -> Result<Self::Matrix>;
    /// An embedding table or lm_head `[vocab, hidden]`: kept in f32 whatever the activation dtype
    /// (bf16 activations still gather and project through f32 tables). Defaults to `upload_matrix`.
    fn upload_table(&self, m: HostMatrix) -> Result<Self::Matrix> {
        self.upload_matrix(m)
    }
    /// The lm_head `[vocab, hidden]` held as `format` says (`--lm-head`): f32 is `upload_table`,
    /// bf16 a bf16 weight; a backend without a format refuses it here, at load.
    fn upload_head(&self, m: HostMatrix, format: HeadFormat) -> Result<Self::Matrix>
    where
        Self: Sized,
    {
        upload_head_default(self, m, format)
    }
    /// A 1-D parameter (a norm weight, a bias) on the backend.
    fn upload_vector(&self, v: &[f32]) -> Result<Self::Vector>;
    /// Measured copy bandwidth in GB/s (bytes read plus bytes written, per second, as CUDA's
    /// bandwidthTest counts) over buffers of `bytes`: the roofline a decode step's weight reads
    /// are held to. The default times a host `memcpy` on one thread.
    fn copy_bandwidth(&self, bytes: usize) -> Result<f64> {
        let src = vec![1u8; bytes.max(1)];
        let mut dst = vec![0u8; bytes.max(1)];
        dst.copy_from_slice(&src);
        let reps = 5;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
        }
        Ok((2 * reps * bytes.max(1)) as f64 / t.elapsed().as_secs_f64().max(1e-9) / 1e9)
    }

    /// Bytes a stored matrix takes (what a matmul through it reads: NF4 codes and scales).
    fn matrix_bytes(&self, m: &Self::Matrix) -> usize;
    /// cos, sin: `[max_pos, head_dim / 2]`.
    fn upload_rope(&self, cos: Vec<f32>, sin: Vec<f32>, half_dim: usize) -> Result<Self::Rope>;
    /// A zeroed KV cache of `layout`.
    fn alloc_kv(&self, layout: KvLayout) -> Result<Self::Kv>;
    /// The shape of `kv`.
    fn kv_layout(&self, kv: &Self::Kv) -> KvLayout;
    /// An id of the cache unique in the process (0 where the backend does not need one).
    fn kv_id(&self, _kv: &Self::Kv) -> u64 {
        0
    }

    /// Checks a step against the model and cache shapes and prepares its metadata (one upload on
    /// a GPU). Bad ids, positions past the context, rows past the batch or adapters that do not
    /// fit fail here, before any op runs.
    fn begin_step<'a>(&'a self, spec: &StepSpec<'_, 'a, Self>) -> Result<Self::Step<'a>>
    where
        Self: Sized;

    /// A `[rows, cols]` tensor from host values.
    fn tensor_from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// A tensor's values on the host.
    fn to_host(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    /// A tensor's (rows, cols).
    fn dims(&self, t: &Self::Tensor) -> (usize, usize);

    /// The step's whole forward replayed as one unit (CUDA graphs of decode steps): `Some(logits)`
    /// when the backend has a capture of this step's shape, and the model then runs none of its
    /// ops. Default: never.
    fn replay_forward(&self, _step: &mut Self::Step<'_>) -> Result<Option<Self::Tensor>> {
        Ok(None)
    }
    /// Before the forward's first op (a backend may start capturing the ops).
    fn begin_forward(&self, _step: &mut Self::Step<'_>) -> Result<()> {
        Ok(())
    }
    /// The forward's logits, after its last op (a backend that captured the ops replays the
    /// capture and returns its logits).
    fn end_forward(&self, _step: &mut Self::Step<'_>, logits: Self::Tensor) -> Result<Self::Tensor> {
        Ok(logits)
    }

    /// `[n_tokens, hidden]`: the rows of the table for the step's ids.
    fn embedding(&self, table: &Self::Matrix, step: &Self::Step<'_>) -> Result<Self::Tensor>;
    /// RMSNorm of every row of `x`, times `w`.
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Vector, eps: f32) -> Result<Self::Tensor>;
    /// `x [T, in] · wᵀ [in, out] (+ bias) -> [T, out]`.
    fn linear(&self, x: &Self::Tensor, w: &Self::Matrix, bias: Option<&Self::Vector>) -> Result<Self::Tensor>;
    /// `linear` of one input through several weights of its width (a layer's q, k, v; its gate
    /// and up): one result per weight, in order. A backend may run them as one product (the CPU
    /// does for decode on NF4 weights: one parallel loop over all their rows); the default runs
    /// `linear` for each.
    fn linears(&self, x: &Self::Tensor, ws: &[(&Self::Matrix, Option<&Self::Vector>)]) -> Result<Vec<Self::Tensor>> {
        ws.iter().map(|&(w, b)| self.linear(x, w, b)).collect()
    }
    /// Rotates each head of `q [T, n_heads * head_dim]` and `k [T, n_kv_heads * head_dim]` in
    /// place at the step's positions (one launch for both on the GPU).
    fn rope(&self, q: &mut Self::Tensor, k: &mut Self::Tensor, step: &Self::Step<'_>, rope: &Self::Rope) -> Result<()>;
    /// `silu(gate) * up`, elementwise.
    fn silu_mul(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor>;
    /// `x += y`, elementwise.
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
        step: &mut Self::Step<'_>,
    ) -> Result<Self::Tensor>;
    /// The step's logit rows of `x`, in order.
    fn gather_logit_rows(&self, x: &Self::Tensor, step: &Self::Step<'_>) -> Result<Self::Tensor>;
    /// The next token of each of the step's logit rows (`logits [rows, vocab]`), one sampler per
    /// row. The default samples on the host with the samplers (`Sampler::sample_host`); a GPU
    /// samples on the device with the rows `StepSpec::samples` uploaded, and syncs once for the
    /// ids; rows whose sampler `needs_host_row` (penalties, log-probabilities) then come to the
    /// host for `Sampler::sample_host`.
    fn sample(&self, logits: &Self::Tensor, _step: &mut Self::Step<'_>, samplers: &mut [&mut sampler::Sampler]) -> Result<Vec<u32>> {
        let host = self.to_host(logits)?;
        let (rows, vocab) = self.dims(logits);
        if rows != samplers.len() || rows == 0 {
            return Err(crate::Error::InvalidArgument(format!("sample: {rows} logit rows for {} samplers", samplers.len())));
        }
        Ok(host.chunks_exact(vocab).zip(samplers.iter_mut()).map(|(row, s)| s.sample_host(row, None)).collect())
    }

    /// Batched LoRA (SGMV / BGMV) for projection `module` of `layer`: for each of the step's runs
    /// whose adapter targets it, `y[rows] += scale · (x[rows] · Aᵀ) · Bᵀ`. `x [T, in]`,
    /// `y [T, out]`; rows outside every run are left alone.
    fn lora_apply(&self, y: &mut Self::Tensor, x: &Self::Tensor, step: &mut Self::Step<'_>, layer: usize, module: LoraModule) -> Result<()>;
}

/// One segment of a batched LoRA step: rows `start..start + len` use the pair (`a`, `b`).
#[derive(Debug)]
pub struct LoraSegment<'a, M> {
    /// First row.
    pub start: usize,
    /// Rows.
    pub len: usize,
    /// `[rank, in]`.
    pub a: &'a M,
    /// `[out, rank]`.
    pub b: &'a M,
    /// The factor the product is multiplied by.
    pub scale: f32,
}

/// `Backend::upload_head` for the formats every backend has (f32, bf16).
pub fn upload_head_default<B: Backend>(be: &B, m: HostMatrix, format: HeadFormat) -> Result<B::Matrix> {
    match format {
        HeadFormat::F32 => be.upload_table(m),
        HeadFormat::Bf16 => {
            let data = m.data.iter().map(|&x| numeric::f32_to_bf16(x)).collect();
            be.upload_matrix(HostWeight::Bf16 { name: m.name, rows: m.rows, cols: m.cols, data })
        }
        HeadFormat::Q8 => Err(crate::Error::InvalidArgument(format!(
            "{}: the q8 lm_head (option `lm_head` q8) is a CPU format; the {} backend holds the lm_head as f32 or bf16",
            m.name,
            be.name()
        ))),
    }
}
