//! `CudaBackend`: the `Backend` trait on the GPU, so the one forward pass of `model::llama` runs
//! on the device. Activations are device tensors of one dtype per backend (f32, or bf16 with f32
//! math inside every kernel): every linear layer's input and output, attention, the paged KV
//! cache. The residual stream (the embeddings' rows and what `add_assign` accumulates into them)
//! stays f32 on a bf16 backend: it is one `[tokens, hidden]` tensor, a sliver of the traffic, and
//! keeping it exact halves the logits' error against f32 (tests/cuda/cuda_golden.rs). Weights are
//! dense (embedding tables and the lm_head in f32, LoRA A/B and an f32 base's linears in the
//! activation dtype), bf16 or NF4 on the device; LoRA runs through SGMV/BGMV. Each op validates
//! its arguments (the launchers' pure plans) before any launch.
//!
//! What each trait op runs: embedding and `gather_rows` → `lf_embedding` (a gather of rows);
//! `rms_norm`, `rope`, `silu_mul`, `add_assign` → kernels/ops.cu; `linear` → kernels/linear.cu
//! (dense f32/bf16 weights, bias fused) or kernels/nf4_gemm.cu (+ `lf_bias_add`); `attention` →
//! `lf_reshape_and_cache` then `lf_paged_attn` (+ its reduction); `lora_apply` → kernels/lora_sgmv.cu.

use std::sync::Mutex;

use cudarc::driver::{CudaSlice, DevicePtr};
use half::bf16;

use crate::backend::{Backend, HostMatrix, HostWeight, StepSpec};
use crate::kv::KvLayout;
use crate::types::LoraModule;
use crate::{Error, Result};

use super::attention::{AttnMeta, CudaKvCache};
use super::context::CudaContext;
use super::device::CudaDevice;
use super::dtype::DType;
use super::graph::{self, Graphs};
use super::nf4::CudaNf4Weight;
use super::step::{self, CudaStep, StepArena};
use super::train_kernels::TrainKernels;
use super::validate::invalid;
use super::values::{with_dtype, CudaKv, CudaMatrix, CudaRope, CudaTensor, CudaVector, CudaWeight, DenseBuf, Typed, NEXT_KV_ID};

/// The GPU backend: one device, its kernel modules, the activation dtype, the activation buffer
/// pool and the step buffers.
pub struct CudaBackend {
    /// The device, kernels and pool (`Deref`: `be.device()`, `be.new_tensor(..)`).
    cx: CudaContext,
    /// The step buffers, kept from step to step (one step at a time).
    step_arena: Mutex<StepArena>,
    /// Decode steps replay as CUDA graphs (`set_graphs`; `--no-cuda-graphs` turns them off).
    graphs_on: std::sync::atomic::AtomicBool,
    graphs: Mutex<Graphs>,
    /// The training kernels, loaded by the first training batch (`TrainBackend`).
    pub(crate) train: std::sync::OnceLock<TrainKernels>,
}

impl std::ops::Deref for CudaBackend {
    type Target = CudaContext;
    fn deref(&self) -> &CudaContext {
        &self.cx
    }
}

impl CudaBackend {
    /// Opens device `ordinal` (a GPU, or the CPU emulator under `LORAFLEET_CUDA_EMU=1`) with every
    /// kernel module the forward pass needs, activations in `act`.
    pub fn new(ordinal: usize, act: DType) -> Result<Self> {
        let dev = CudaDevice::new(ordinal)?;
        Self::with_device(dev, act)
    }

    /// The backend on an opened device.
    pub fn with_device(dev: CudaDevice, act: DType) -> Result<Self> {
        Ok(CudaBackend {
            cx: CudaContext::new(dev, act)?,
            step_arena: Mutex::new(StepArena::default()),
            graphs_on: std::sync::atomic::AtomicBool::new(true),
            graphs: Mutex::new(Graphs::default()),
            train: std::sync::OnceLock::new(),
        })
    }

    /// Whether decode steps replay as CUDA graphs (on by default).
    pub fn set_graphs(&self, on: bool) {
        self.graphs_on.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// (captures, replays) of decode graphs so far.
    pub fn graph_stats(&self) -> (u64, u64) {
        graph::stats(&self.graphs)
    }

    /// Whether decode steps replay as CUDA graphs.
    pub fn graphs_enabled(&self) -> bool {
        self.graphs_on.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Rows of `table [vocab, cols]` for the `ids` at section `ids` of the step (`p` validated
    /// at `begin_step`).
    fn gather_t<T: Typed>(
        &self,
        table: &impl DevicePtr<T>,
        cols: usize,
        step: &CudaStep<'_>,
        ids: super::step::Section,
        p: &super::ffi::LfEmbeddingParams,
    ) -> Result<CudaTensor> {
        let n = p.n_ids as usize;
        if p.hidden as usize != cols || table.len() != p.vocab as usize * cols {
            return Err(invalid(format!("gather: the table is not [{}, {}] as the step planned", p.vocab, p.hidden)));
        }
        let mut out = self.new_tensor(T::DTYPE, n, cols)?;
        let idv = step.view::<u32>(ids, n)?;
        {
            let mut ov = out.view_mut::<T>()?;
            // SAFETY: `p` is validate::embedding (begin_step) over exactly the ids in this section
            // of the step's uploaded metadata, for a [vocab, hidden] table (re-checked above) and
            // an [n_ids, hidden] output (allocated above).
            unsafe { self.dev.embedding_planned::<T>(table, &idv, &mut ov, p)? };
        }
        Ok(out)
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Matrix = CudaMatrix;
    type Vector = CudaVector;
    type Rope = CudaRope;
    type Kv = CudaKv;
    type Step<'a> = CudaStep<'a>;

    fn name(&self) -> String {
        format!("cuda ({}, {} activations)", self.dev.device_name(), self.act.suffix())
    }

    fn kv_elem_bytes(&self) -> usize {
        self.act.size()
    }

    fn device_memory(&self) -> Option<(usize, usize)> {
        self.dev.context().mem_get_info().ok()
    }

    fn copy_bandwidth(&self, bytes: usize) -> Result<f64> {
        let bytes = bytes.max(1);
        let err = super::device::cuda_err("measuring the copy bandwidth");
        let stream = self.dev.stream();
        let src = stream.alloc_zeros::<u8>(bytes).map_err(err)?;
        let mut dst = stream.alloc_zeros::<u8>(bytes).map_err(super::device::cuda_err("measuring the copy bandwidth"))?;
        let copy = |dst: &mut CudaSlice<u8>| stream.memcpy_dtod(&src, dst).map_err(super::device::cuda_err("measuring the copy bandwidth"));
        // One warm-up copy, then the median of 5 runs of 10 back-to-back copies.
        copy(&mut dst)?;
        self.dev.synchronize()?;
        let mut runs = Vec::with_capacity(5);
        for _ in 0..5 {
            let t = std::time::Instant::now();
            for _ in 0..10 {
                copy(&mut dst)?;
            }
            self.dev.synchronize()?;
            runs.push(t.elapsed().as_secs_f64() / 10.0);
        }
        runs.sort_by(f64::total_cmp);
        Ok(2.0 * bytes as f64 / runs[2].max(1e-12) / 1e9)
    }

    fn matrix_bytes(&self, m: &CudaMatrix) -> usize {
        match &m.weight {
            CudaWeight::Dense(DenseBuf::F32(d)) => d.len() * 4,
            CudaWeight::Dense(DenseBuf::Bf16(d)) | CudaWeight::Bf16(d) => d.len() * 2,
            CudaWeight::Nf4(w) => w.bytes(),
        }
    }

    fn upload_matrix(&self, m: impl Into<HostWeight>) -> Result<CudaMatrix> {
        match m.into() {
            HostWeight::Dense(m) => {
                if m.data.len() != m.rows * m.cols {
                    return Err(invalid(format!("{}: data is not [{}, {}]", m.name, m.rows, m.cols)));
                }
                let buf = with_dtype!(self.act, T => self.upload_as::<T>(&m.data))?;
                Ok(CudaMatrix { rows: m.rows, cols: m.cols, weight: CudaWeight::Dense(buf) })
            }
            HostWeight::Bf16 { name, rows, cols, data } => {
                if data.len() != rows * cols {
                    return Err(invalid(format!("{name}: data is not [{rows}, {cols}]")));
                }
                let bits: Vec<bf16> = data.into_iter().map(bf16::from_bits).collect();
                Ok(CudaMatrix { rows, cols, weight: CudaWeight::Bf16(self.uploaded(|t| t.upload(&bits))?) })
            }
            HostWeight::Nf4 { name, tensor } => {
                let w = self.uploaded(|t| CudaNf4Weight::upload(t, &tensor)).map_err(|e| invalid(format!("{name}: {e}")))?;
                let (rows, cols) = (tensor.shape[0], tensor.shape[1]);
                Ok(CudaMatrix { rows, cols, weight: CudaWeight::Nf4(w) })
            }
            HostWeight::Random(spec) => self.uploaded(|t| super::random::create(t, &spec, self.act)),
        }
    }

    fn upload_table(&self, m: HostMatrix) -> Result<CudaMatrix> {
        if m.data.len() != m.rows * m.cols {
            return Err(invalid(format!("{}: data is not [{}, {}]", m.name, m.rows, m.cols)));
        }
        Ok(CudaMatrix { rows: m.rows, cols: m.cols, weight: CudaWeight::Dense(self.upload_as::<f32>(&m.data)?) })
    }

    fn upload_vector(&self, v: &[f32]) -> Result<CudaVector> {
        let bf16 = match self.act {
            DType::F32 => None,
            DType::Bf16 => Some(self.uploaded(|t| t.upload(&<bf16 as Typed>::from_f32(v)))?),
        };
        Ok(CudaVector { f32: self.uploaded(|t| t.upload(v))?, bf16 })
    }

    fn upload_rope(&self, cos: Vec<f32>, sin: Vec<f32>, half_dim: usize) -> Result<CudaRope> {
        if half_dim == 0 || cos.len() != sin.len() || !cos.len().is_multiple_of(half_dim) {
            return Err(invalid("bad rope tables"));
        }
        self.uploaded(|t| Ok(CudaRope { cos: t.upload(&cos)?, sin: t.upload(&sin)? }))
    }

    fn alloc_kv(&self, layout: KvLayout) -> Result<CudaKv> {
        let id = NEXT_KV_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.uploaded(|t| {
            Ok(match self.act {
                DType::F32 => CudaKv::F32(CudaKvCache::new(t, layout)?, id),
                DType::Bf16 => CudaKv::Bf16(CudaKvCache::new(t, layout)?, id),
            })
        })
    }

    fn kv_layout(&self, kv: &CudaKv) -> KvLayout {
        kv.layout()
    }

    fn kv_id(&self, kv: &CudaKv) -> u64 {
        kv.id()
    }

    fn begin_step<'a>(&'a self, spec: &StepSpec<'_, 'a, Self>) -> Result<CudaStep<'a>> {
        step::begin(&self.cx, &self.step_arena, self.graphs_enabled(), spec)
    }

    fn replay_forward(&self, step: &mut CudaStep<'_>) -> Result<Option<CudaTensor>> {
        graph::replay(&self.cx, &self.graphs, step)
    }

    fn begin_forward(&self, step: &mut CudaStep<'_>) -> Result<()> {
        graph::begin(&self.cx, &self.graphs, step)
    }

    fn end_forward(&self, step: &mut CudaStep<'_>, logits: CudaTensor) -> Result<CudaTensor> {
        graph::end(&self.cx, &self.graphs, step, logits)
    }

    fn tensor_from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<CudaTensor> {
        if data.len() != rows * cols {
            return Err(invalid(format!("{} values are not [{rows}, {cols}]", data.len())));
        }
        let mut t = self.new_tensor(self.act, rows, cols)?;
        let _compute = self.step_arena.lock().map_err(|_| Error::Cuda("the step arena's lock is poisoned".into()))?;
        with_dtype!(self.act, T => {
            let host = <T as Typed>::from_f32(data);
            let mut v = t.view_mut::<T>()?;
            self.dev.stream().memcpy_htod(&host, &mut v).map_err(super::device::cuda_err("copying a tensor to the device"))?;
        });
        Ok(t)
    }

    fn to_host(&self, t: &CudaTensor) -> Result<Vec<f32>> {
        // The compute stream belongs to a running step: wait for it (never call this inside one).
        let _compute = self.step_arena.lock().map_err(|_| Error::Cuda("the step arena's lock is poisoned".into()))?;
        self.download_f32(t)
    }

    fn dims(&self, t: &CudaTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn embedding(&self, table: &CudaMatrix, step: &CudaStep<'_>) -> Result<CudaTensor> {
        let CudaWeight::Dense(buf) = &table.weight else {
            return Err(invalid("embedding: the table must be dense, not NF4 or bf16-base weights"));
        };
        // The rows start the residual stream, which stays in the table's f32 (see `rms_norm`).
        with_dtype!(buf.dtype(), T => self.gather_t::<T>(T::of(buf)?, table.cols, step, step.ids, &step.embedding))
    }

    fn rms_norm(&self, x: &CudaTensor, w: &CudaVector, eps: f32) -> Result<CudaTensor> {
        // The input is the residual stream (f32 on every backend: see the module docs) or an
        // activation; the output is in the activation dtype.
        let mut out = self.new_tensor(self.act, x.rows, x.cols)?;
        match (x.dtype, self.act) {
            (DType::F32, DType::F32) => self.dev.rms_norm_into::<f32>(&x.view::<f32>()?, &w.f32, &mut out.view_mut::<f32>()?, x.rows, x.cols, eps)?,
            (DType::F32, DType::Bf16) => self.dev.rms_norm_f32_to_bf16(&x.view::<f32>()?, &w.f32, &mut out.view_mut::<bf16>()?, x.rows, x.cols, eps)?,
            (DType::Bf16, DType::Bf16) => {
                let wb = w.bf16.as_ref().ok_or_else(|| invalid("rms_norm: the weight has no bf16 copy"))?;
                self.dev.rms_norm_into::<bf16>(&x.view::<bf16>()?, wb, &mut out.view_mut::<bf16>()?, x.rows, x.cols, eps)?
            }
            (DType::Bf16, DType::F32) => return Err(invalid("rms_norm: a bf16 tensor on an f32 backend")),
        }
        Ok(out)
    }

    fn linear(&self, x: &CudaTensor, w: &CudaMatrix, bias: Option<&CudaVector>) -> Result<CudaTensor> {
        self.check_act("linear", x)?;
        with_dtype!(self.act, T => self.linear_t::<T>(x, w, bias))
    }

    fn rope(&self, q: &mut CudaTensor, k: &mut CudaTensor, step: &CudaStep<'_>, rope: &CudaRope) -> Result<()> {
        self.check_act("rope", q)?;
        self.check_act("rope", k)?;
        let p = step.rope;
        let cos_len = p.max_pos as usize * (p.head_dim as usize / 2);
        if rope.cos.len() != cos_len || rope.sin.len() != cos_len {
            return Err(invalid(format!("rope: the tables are not [{}, {}] as the step planned", p.max_pos, p.head_dim / 2)));
        }
        let rows = p.rows as usize;
        if q.rows != rows || k.rows != rows || q.cols != (p.n_q_heads * p.head_dim) as usize || k.cols != (p.n_k_heads * p.head_dim) as usize {
            return Err(invalid("rope: q and k are not the shapes the step planned"));
        }
        let pos = step.view::<u32>(step.positions, rows)?;
        with_dtype!(self.act, T => {
            let (mut qv, mut kv) = (q.view_mut::<T>()?, k.view_mut::<T>()?);
            // SAFETY: `p` is validate::rope (begin_step) over exactly the positions in this section
            // of the step's metadata, for q, k and tables of the shapes re-checked above.
            unsafe { self.dev.rope_planned::<T>(&mut qv, &mut kv, &pos, &rope.cos, &rope.sin, &p) }
        })
    }

    fn silu_mul(&self, gate: &CudaTensor, up: &CudaTensor) -> Result<CudaTensor> {
        if gate.rows != up.rows || gate.cols != up.cols || gate.dtype != up.dtype {
            return Err(invalid("silu_mul: shapes or dtypes differ"));
        }
        let mut out = self.new_tensor(gate.dtype, gate.rows, gate.cols)?;
        with_dtype!(gate.dtype, T => self.dev.silu_mul_into::<T>(&gate.view::<T>()?, &up.view::<T>()?, &mut out.view_mut::<T>()?))?;
        Ok(out)
    }

    fn add_assign(&self, x: &mut CudaTensor, y: &CudaTensor) -> Result<()> {
        if x.rows != y.rows || x.cols != y.cols {
            return Err(invalid("add: shapes differ"));
        }
        match (x.dtype, y.dtype) {
            (DType::F32, DType::F32) => self.dev.add_assign::<f32>(&mut x.view_mut::<f32>()?, &y.view::<f32>()?),
            (DType::Bf16, DType::Bf16) => self.dev.add_assign::<bf16>(&mut x.view_mut::<bf16>()?, &y.view::<bf16>()?),
            // The f32 residual stream takes a bf16 layer output.
            (DType::F32, DType::Bf16) => self.dev.add_bf16_into_f32(&mut x.view_mut::<f32>()?, &y.view::<bf16>()?),
            (DType::Bf16, DType::F32) => Err(invalid("add: a bf16 x cannot take an f32 y")),
        }
    }

    fn attention(&self, q: &CudaTensor, k: &CudaTensor, v: &CudaTensor, kv: &mut CudaKv, layer: usize, step: &mut CudaStep<'_>) -> Result<CudaTensor> {
        let t = step.n_tokens;
        if q.rows != t || k.rows != t || v.rows != t {
            return Err(invalid("attention: q/k/v rows do not match the batch"));
        }
        for x in [q, k, v] {
            self.check_act("attention", x)?;
        }
        let mut out = self.new_tensor(self.act, q.rows, q.cols)?;
        let slots = step.view::<u32>(step.slots, t)?;
        let meta = AttnMeta {
            row_seq: step.view::<i32>(step.row_seq, t)?,
            row_pos: step.view::<i32>(step.row_pos, t)?,
            block_table: step.view::<i32>(step.block_table, (step.attn.num_seqs * step.attn.max_blocks) as usize)?,
        };
        let work = step.attn_work();
        macro_rules! run {
            ($cache:expr, $t:ty) => {{
                let (ks, vs, qs) = (k.view::<$t>()?, v.view::<$t>()?, q.view::<$t>()?);
                let mut ov = out.view_mut::<$t>()?;
                // SAFETY: step.reshape and step.attn come from plan_reshape_and_cache and
                // plan_attention (begin_step) for this batch, this cache's layout (re-checked by the
                // planned launchers) and the model's head layout; the slots and the attention
                // arrays are exactly those plans' arrays in the step's metadata; the workspace holds
                // attn_workspace_len(partial_len, head_dim) f32 whenever the plan splits.
                unsafe {
                    self.attn.reshape_planned::<$t>(&self.dev, &ks, &vs, &slots, $cache, layer, &step.reshape)?;
                    self.attn.attention_planned::<$t, _>(&self.dev, &qs, $cache, layer, &step.attn, step.attn_kernel, &meta, work, &mut ov)?;
                }
            }};
        }
        if Some(kv.id()) != step.kv_id {
            return Err(invalid("attention: the KV cache is not the one the step was planned for"));
        }
        match kv {
            CudaKv::F32(cache, _) => run!(cache, f32),
            CudaKv::Bf16(cache, _) => run!(cache, bf16),
        }
        Ok(out)
    }

    fn gather_logit_rows(&self, x: &CudaTensor, step: &CudaStep<'_>) -> Result<CudaTensor> {
        if x.rows != step.n_tokens {
            return Err(invalid(format!("gather_rows: a {}-row tensor for a {}-token step", x.rows, step.n_tokens)));
        }
        with_dtype!(x.dtype, T => self.gather_t::<T>(&x.view::<T>()?, x.cols, step, step.rows, &step.gather))
    }

    fn sample(&self, logits: &CudaTensor, step: &mut CudaStep<'_>, samplers: &mut [&mut crate::backend::sampler::Sampler]) -> Result<Vec<u32>> {
        let sec = step.samples.ok_or_else(|| invalid("sample: the step was begun without sampling rows"))?;
        let n = logits.rows;
        if samplers.len() != n {
            return Err(invalid(format!("sample: {n} logit rows for {} samplers", samplers.len())));
        }
        let p = super::sampling::plan_sample(n, logits.cols, logits.len())?;
        // Structured output: the constrained rows' masks, in row order, as begin_step numbered
        // them (`LfSampleRow::mask_row`); uploaded with the step, applied by the kernel.
        let words = logits.cols.div_ceil(32);
        let masks: Vec<&crate::backend::sampler::TokenMask> = samplers.iter().filter_map(|s| s.mask()).collect();
        if masks.len() != step.n_masks {
            return Err(invalid(format!("sample: {} masked rows, the step was begun with {}", masks.len(), step.n_masks)));
        }
        if let Some(m) = masks.iter().find(|m| m.len() != logits.cols) {
            return Err(invalid(format!("sample: a token mask covers {} ids, the logits {}", m.len(), logits.cols)));
        }
        let packed: Vec<u32> = masks.iter().flat_map(|m| m.words()[..words].iter().copied()).collect();
        let n_masks = masks.len();
        let (meta, mask_buf, out) = if n_masks > 0 {
            let (m, k, o) = step.sample_buffers_with_masks(&packed)?;
            (m, Some(k), o)
        } else {
            let (m, o) = step.sample_buffers()?;
            (m, None, o)
        };
        let rows = meta.slice(sec.offset..sec.offset + sec.bytes);
        // SAFETY: the section holds `n` LfSampleRow (32 bytes each, packed at begin_step from rows
        // that passed sample_row_c); transmute checks it is long enough.
        let rows = unsafe { rows.transmute::<super::ffi::LfSampleRow>(n) }.ok_or_else(|| invalid("sample: the step's rows do not match the logits"))?;
        with_dtype!(logits.dtype, T => {
            // SAFETY: `p` is plan_sample for these logits; the rows passed sample_row_c and
            // begin_step numbered the masked rows' mask_row 0..n_masks, the masks just uploaded
            // in the same order (their count checked above).
            unsafe { self.sampler.sample_planned::<T>(&self.dev, &logits.view::<T>()?, &rows, mask_buf.map(|k| (k, n_masks)), out, &p)? };
        });
        let mut ids = self.dev.download(&out.slice(0..n))?;
        // Penalties and log-probabilities need the row on the host: only then are the logits
        // downloaded (one copy for the step), and only those rows are looked at. A mask alone
        // does not: the kernel applied it.
        if samplers.iter().any(|s| s.needs_host_row_after_device_mask()) {
            // Inside the step (it holds the arena): download directly, not through `to_host`.
            let host = self.download_f32(logits)?;
            for ((row, s), id) in host.chunks_exact(logits.cols).zip(samplers.iter_mut()).zip(ids.iter_mut()) {
                if s.needs_host_row_after_device_mask() {
                    *id = s.sample_host_after_device_mask(row, *id);
                }
            }
        }
        Ok(ids)
    }

    fn lora_apply(&self, y: &mut CudaTensor, x: &CudaTensor, step: &mut CudaStep<'_>, layer: usize, module: LoraModule) -> Result<()> {
        let Some(Some(l)) = step.lora.get(layer * LoraModule::ALL.len() + module.index()) else {
            return Ok(());
        };
        if x.rows != y.rows {
            return Err(invalid(format!("lora: x has {} rows, y {}", x.rows, y.rows)));
        }
        self.check_act("lora", x)?;
        self.check_act("lora", y)?;
        let plan = l.plan.clone();
        let (sec, index_offset) = (l.meta, l.index_offset);
        let (meta, part) = step.lora_buffers()?;
        let meta = meta.slice(sec.offset..sec.offset + sec.bytes);
        with_dtype!(self.act, T => {
            let (xs, mut ys) = (x.view::<T>()?, y.view_mut::<T>()?);
            // SAFETY: `plan` is plan_lora (begin_step) for this layer and module over the step's
            // runs, with x [t, d_in] and y [t, d_out] (re-checked by the launcher); its metadata is
            // this section of the step's upload; the step borrows the adapters whose A and B
            // addresses it holds; `part` holds at least the largest plan's part_len f32.
            unsafe { self.lora.apply_planned::<T>(&self.dev, &mut ys, &xs, &plan, &meta, index_offset, part) }
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cuda_backend_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<super::CudaBackend>();
        fn assert_send<T: Send>() {}
        assert_send::<super::CudaTensor>();
        assert_send::<super::CudaKv>();
    }
}
