//! A forward step's metadata on the device (vLLM's `update_metadata`): `begin_step` validates the
//! step on the host (ids, positions, cache slots, block tables, logit rows, every layer's LoRA
//! segments), packs every array into one host buffer and uploads it in one copy into a buffer the
//! backend keeps from step to step; two more kept buffers hold the step's device-only scratch
//! (attention split partials, the LoRA split-K workspace). Every layer's ops then read views of
//! them: no upload and no allocation inside a step once the buffers have grown to the batch sizes
//! in use. A buffer that must grow is reallocated here, before any launch, and the generation
//! counter moves (a CUDA graph captured against the old addresses is then stale).

use std::sync::{Mutex, MutexGuard};

use cudarc::driver::{CudaSlice, CudaView};

use crate::backend::{Backend, LoraRun, StepSpec};
use crate::types::LoraModule;
use crate::{Error, Result};

use super::attention::{attn_workspace_len, plan_attention_padded, plan_reshape_and_cache, AttnDims, AttnKernel, AttnPad};
use super::context::CudaContext;
use super::device::CudaDevice;
use super::ffi::{LfEmbeddingParams, LfPagedAttnParams, LfReshapeCacheParams, LfRopeParams};
use super::ffi::{LF_ATTN_PARTITION, LF_LORA_MAX_RANK};
use super::lora::LoraKernel;
use super::lora::{plan_lora, LoraPlan, LoraSegmentDesc, LoraShape};
use super::pool::SharedPool;
use super::sampling::sample_row_c;
use super::validate::invalid;
use super::validate::{self, RopeDims};
use super::values::{CudaMatrix, CudaWeight};

/// What a decode graph's launches depend on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GraphKey {
    /// The model (`Llama::id`) and KV cache (`Backend::kv_id`) whose addresses the graph bakes in.
    pub model: u64,
    /// The KV cache's id.
    pub kv: u64,
    /// Rows of the step.
    pub rows: usize,
    /// Block-table width.
    pub max_blocks: usize,
    /// Most context partitions of one sequence.
    pub max_partitions: usize,
    /// One bit per (layer, module): LoRA runs there.
    pub lora: Vec<bool>,
}

/// The largest batch (decode rows) a graph is captured for; larger steps run eagerly.
pub const MAX_GRAPH_ROWS: usize = 256;

/// What the backend does with a step's forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GraphPhase {
    /// Not a graph step (a prefill, graphs off, or too many rows).
    Eager,
    /// First sight of the shape: run eagerly on the graph's private pool.
    WarmUp,
    /// Second sight: capture the forward, then replay it.
    Capture,
}

/// Section alignment inside the metadata buffer (CUDA's allocation alignment).
const ALIGN: usize = 256;

/// The backend's step buffers, kept from step to step (behind a mutex: one step at a time).
#[derive(Default)]
pub(crate) struct StepArena {
    /// The uploaded metadata.
    meta: Option<CudaSlice<u8>>,
    /// Attention split partials (device only, f32).
    attn_work: Option<CudaSlice<f32>>,
    /// The LoRA split-K workspace (device only, f32).
    lora_part: Option<CudaSlice<f32>>,
    /// The sampled ids of a step that samples on the device.
    sampled: Option<CudaSlice<u32>>,
    /// The token masks of a step's constrained rows (read by the sampling kernel only, after
    /// the forward: outside any graph, so growing it does not bump `generation`).
    masks: Option<CudaSlice<u32>>,
    /// The host staging buffer the metadata is packed into.
    host: Vec<u8>,
    /// Bumped whenever a buffer is reallocated.
    pub(crate) generation: u64,
}

/// Grows `buf` to at least `need` elements (twice that, so a slowly growing batch reallocates
/// rarely); true if it reallocated.
fn ensure<T: cudarc::driver::DeviceRepr>(dev: &CudaDevice, buf: &mut Option<CudaSlice<T>>, need: usize) -> Result<bool> {
    if need == 0 || buf.as_ref().is_some_and(|b| b.len() >= need) {
        return Ok(false);
    }
    *buf = None;
    *buf = Some(dev.alloc_for_output::<T>(2 * need)?);
    Ok(true)
}

/// A byte range of the arena buffer.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Section {
    pub(crate) offset: usize,
    pub(crate) bytes: usize,
}

/// One (layer, module)'s LoRA plan and where its metadata lies.
pub(crate) struct StepLora {
    pub(crate) plan: LoraPlan,
    pub(crate) meta: Section,
    pub(crate) index_offset: usize,
}

/// A forward step on the CUDA backend: the arena (held for the step) and every plan.
pub struct CudaStep<'a> {
    cx: &'a CudaContext,
    arena: MutexGuard<'a, StepArena>,
    /// The KV cache the step was planned for (`CudaKv::id`).
    pub(crate) kv_id: Option<u64>,
    /// The decode-graph shape of this step (None: not a graph step).
    pub(crate) graph_key: Option<GraphKey>,
    pub(crate) graph_phase: GraphPhase,
    /// The backend's pool while a graph's private pool is in use.
    pub(crate) saved_pool: Option<SharedPool>,
    pub(crate) n_tokens: usize,
    pub(crate) ids: Section,
    pub(crate) embedding: LfEmbeddingParams,
    pub(crate) positions: Section,
    pub(crate) rope: LfRopeParams,
    pub(crate) slots: Section,
    pub(crate) reshape: LfReshapeCacheParams,
    pub(crate) row_seq: Section,
    pub(crate) row_pos: Section,
    pub(crate) block_table: Section,
    pub(crate) attn: LfPagedAttnParams,
    pub(crate) attn_kernel: AttnKernel,
    pub(crate) rows: Section,
    pub(crate) gather: LfEmbeddingParams,
    /// `LfSampleRow [rows]` when the step samples on the device.
    pub(crate) samples: Option<Section>,
    /// How many of those rows carry a token mask (`LfSampleRow::mask_row` 0..n_masks, in row
    /// order).
    pub(crate) n_masks: usize,
    /// Indexed by `layer * 7 + module`.
    pub(crate) lora: Vec<Option<StepLora>>,
    /// Keeps the adapters whose A/B addresses the metadata holds borrowed for the step.
    _adapters: std::marker::PhantomData<&'a ()>,
}

/// Appends `bytes` to `host` at the next aligned offset.
fn push(host: &mut Vec<u8>, bytes: &[u8]) -> Section {
    let offset = host.len().next_multiple_of(ALIGN);
    host.resize(offset, 0);
    host.extend_from_slice(bytes);
    Section { offset, bytes: bytes.len() }
}

fn as_bytes<T: bytemuck::Pod>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// Validates and plans a forward step, packs its metadata and uploads it once into the arena
/// (held, locked, for the step). Generic over the backend only so that this file need not name
/// it: any backend whose matrices are `CudaMatrix` (the CUDA backend).
pub(crate) fn begin<'a, B: Backend<Matrix = CudaMatrix>>(
    cx: &'a CudaContext,
    step_arena: &'a Mutex<StepArena>,
    graphs_on: bool,
    spec: &StepSpec<'_, 'a, B>,
) -> Result<CudaStep<'a>> {
    let c = spec.config;
    let b = spec.batch;
    let t = b.n_tokens();
    if spec.ids.len() != t {
        return Err(invalid(format!("{} ids for a batch of {t} tokens", spec.ids.len())));
    }
    let (hidden, n_heads, n_kv, hd) = (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim);
    // Token ids into the embedding table (f32 [vocab, hidden]).
    if let Some(&bad) = spec.ids.iter().find(|&&i| i as usize >= c.vocab_size) {
        return Err(invalid(format!("token id {bad} is outside the vocabulary of {}", c.vocab_size)));
    }
    let embedding = validate::embedding(c.vocab_size * hidden, hidden, spec.ids, t * hidden)?;
    let rope = validate::rope(
        t * n_heads * hd,
        t * n_kv * hd,
        &b.positions,
        c.max_position_embeddings * (hd / 2),
        c.max_position_embeddings * (hd / 2),
        RopeDims { n_q_heads: n_heads, n_k_heads: n_kv, head_dim: hd },
    )?;
    let l = spec.kv;
    if l.num_kv_heads != n_kv || l.head_dim != hd || l.block_size != b.block_size {
        return Err(invalid(format!("the KV cache {l:?} does not fit the model and the batch")));
    }
    let reshape = plan_reshape_and_cache(t * n_kv * hd, t * n_kv * hd, &b.slots, n_kv * hd, l.num_blocks * l.block_size)?;
    // A decode step (one new token per sequence, every row's logits) replays as a CUDA graph:
    // its launch parameters must then depend only on its shape, so the attention table and
    // partitions are padded to powers of two of the longest context.
    let decode = graphs_on && (1..=MAX_GRAPH_ROWS).contains(&t) && b.seqs.iter().all(|s| s.n_new == 1) && spec.logit_rows.iter().copied().eq(0..t);
    let pad = if decode {
        let part = LF_ATTN_PARTITION as usize;
        let max_keys = b.seqs.iter().map(|s| s.context_len + 1).max().unwrap_or(1);
        let widest = b.seqs.iter().map(|s| s.blocks.len()).max().unwrap_or(1);
        let mut parts = max_keys.div_ceil(part).next_power_of_two();
        while (parts * part).div_ceil(b.block_size) < widest {
            parts *= 2;
        }
        Some(AttnPad { max_blocks: (parts * part).div_ceil(b.block_size), max_partitions: parts })
    } else {
        None
    };
    let attn = plan_attention_padded(b, AttnDims { n_heads, n_kv_heads: n_kv, head_dim: hd }, l.num_blocks, t * n_heads * hd, t * n_heads * hd, pad)?;
    if let Some(&r) = spec.logit_rows.iter().find(|&&r| r >= t) {
        return Err(invalid(format!("gather_rows: row {r} of a {t}-row batch")));
    }
    let rows: Vec<u32> = spec.logit_rows.iter().map(|&r| r as u32).collect();
    let gather = validate::embedding(t * hidden, hidden, &rows, rows.len() * hidden)?;

    // LoRA: every (layer, module) some run's adapter targets.
    let mut loras: Vec<Option<(LoraPlan, Vec<u8>, usize)>> = Vec::new();
    for layer in 0..c.num_layers {
        for m in LoraModule::ALL {
            loras.push(plan_step_lora(cx, c, spec.lora, layer, m, t, decode)?);
        }
    }
    let graph_key = pad.map(|pad| GraphKey {
        model: spec.model_id,
        kv: spec.kv_id,
        rows: t,
        max_blocks: pad.max_blocks,
        max_partitions: pad.max_partitions,
        lora: loras.iter().map(Option::is_some).collect(),
    });

    let mut arena = step_arena.lock().map_err(|_| Error::Cuda("the step arena's lock is poisoned".into()))?;
    let mut host = std::mem::take(&mut arena.host);
    host.clear();
    let ids = push(&mut host, as_bytes(spec.ids));
    let positions = push(&mut host, as_bytes(&b.positions));
    let slots = push(&mut host, as_bytes(&b.slots));
    let row_seq = push(&mut host, as_bytes(&attn.row_seq));
    let row_pos = push(&mut host, as_bytes(&attn.row_pos));
    let block_table = push(&mut host, as_bytes(&attn.block_table));
    let rows_sec = push(&mut host, as_bytes(&rows));
    // Sampling rows (one per logit row) when the step samples on the device.
    let mut n_masks = 0usize;
    let samples = if spec.samples.is_empty() {
        None
    } else {
        if spec.samples.len() != rows.len() {
            return Err(invalid(format!("{} sampling rows for {} logit rows", spec.samples.len(), rows.len())));
        }
        if !spec.masked.is_empty() && spec.masked.len() != spec.samples.len() {
            return Err(invalid(format!("{} mask flags for {} sampling rows", spec.masked.len(), spec.samples.len())));
        }
        let mut bytes = Vec::with_capacity(spec.samples.len() * 32);
        for (i, r) in spec.samples.iter().enumerate() {
            let mut c = sample_row_c(r)?;
            if spec.masked.get(i).copied().unwrap_or(false) {
                c.mask_row = i32::try_from(n_masks).map_err(|_| invalid("sample: too many masked rows"))?;
                n_masks += 1;
            } else {
                c.mask_row = -1;
            }
            bytes.extend_from_slice(&c.temperature.to_le_bytes());
            bytes.extend_from_slice(&c.top_k.to_le_bytes());
            bytes.extend_from_slice(&c.top_p.to_le_bytes());
            bytes.extend_from_slice(&c.mask_row.to_le_bytes());
            bytes.extend_from_slice(&c.seed.to_le_bytes());
            bytes.extend_from_slice(&c.draw.to_le_bytes());
        }
        Some(push(&mut host, &bytes))
    };
    let mut lora = Vec::with_capacity(loras.len());
    let mut part_len = 0usize;
    for entry in loras {
        lora.push(entry.map(|(plan, bytes, index_offset)| {
            part_len = part_len.max(plan.part_len());
            let meta = push(&mut host, &bytes);
            StepLora { plan, meta, index_offset }
        }));
    }
    let upload_bytes = host.len();
    let np = attn.partial_len();
    let dev = cx.device();
    let mut grew = ensure(dev, &mut arena.meta, upload_bytes.max(ALIGN))?;
    grew |= ensure(dev, &mut arena.attn_work, if np > 0 { attn_workspace_len(np, hd) } else { 0 })?;
    grew |= ensure(dev, &mut arena.lora_part, part_len)?;
    grew |= ensure(dev, &mut arena.sampled, if samples.is_some() { rows.len() } else { 0 })?;
    if grew {
        arena.generation += 1;
    }
    {
        let meta = arena.meta.as_mut().expect("just ensured");
        let mut dst = meta.slice_mut(0..upload_bytes);
        dev.stream().memcpy_htod(&host, &mut dst).map_err(super::device::cuda_err(format!("uploading the step's {upload_bytes} bytes of metadata")))?;
    }
    arena.host = host;
    Ok(CudaStep {
        cx,
        kv_id: Some(spec.kv_id),
        arena,
        graph_key,
        graph_phase: GraphPhase::Eager,
        saved_pool: None,
        n_tokens: t,
        ids,
        embedding,
        positions,
        rope,
        slots,
        reshape,
        row_seq,
        row_pos,
        block_table,
        attn: attn.params,
        attn_kernel: attn.kernel,
        rows: rows_sec,
        gather,
        samples,
        n_masks,
        lora,
        _adapters: std::marker::PhantomData,
    })
}

/// The plan of module `m` of `layer` over the step's runs (None if no run's adapter targets
/// it), with its metadata bytes and index offset.
fn plan_step_lora<B: Backend<Matrix = CudaMatrix>>(
    cx: &CudaContext,
    c: &crate::types::config::ModelConfig,
    runs: &[LoraRun<'_, B>],
    layer: usize,
    m: LoraModule,
    t: usize,
    for_graph: bool,
) -> Result<Option<(LoraPlan, Vec<u8>, usize)>> {
    let (d_out, d_in) = m.dims(c);
    let mut descs = Vec::new();
    for r in runs {
        let Some(p) = r.adapter.pair(layer, m) else { continue };
        let (CudaWeight::Dense(a), CudaWeight::Dense(b)) = (&p.a.weight, &p.b.weight) else {
            return Err(invalid(format!("adapter `{}`: LoRA A and B must be dense matrices", r.adapter.id)));
        };
        if a.dtype() != cx.act_dtype() || b.dtype() != cx.act_dtype() {
            return Err(invalid(format!("adapter `{}`: A and B are not in the activation dtype", r.adapter.id)));
        }
        if p.a.cols != d_in || p.b.rows != d_out || p.b.cols != p.a.rows {
            return Err(invalid(format!(
                "adapter `{}`: {} of layer {layer}: A [{}, {}] and B [{}, {}] do not fit [{d_in}] -> [{d_out}]",
                r.adapter.id,
                m.name(),
                p.a.rows,
                p.a.cols,
                p.b.rows,
                p.b.cols
            )));
        }
        descs.push(LoraSegmentDesc {
            start: r.start,
            len: r.len,
            rank: p.a.rows,
            scale: p.scale,
            a_len: a.len(),
            b_len: b.len(),
            a_ptr: a.device_address(cx.device()),
            b_ptr: b.device_address(cx.device()),
        });
    }
    if descs.is_empty() {
        return Ok(None);
    }
    let kernel = for_graph.then_some(LoraKernel::Bgmv);
    let mut plan = plan_lora(cx.act_dtype(), LoraShape { t_rows: t, d_in, d_out }, t * d_in, t * d_out, &descs, kernel)?;
    if for_graph {
        // Parameters independent of the adapters in use: one segment slot per row, the
        // kernels' largest rank.
        plan.pad_for_graph(t, LF_LORA_MAX_RANK as usize)?;
    } else if plan.is_empty() {
        return Ok(None);
    }
    let (bytes, index_offset) = plan.metadata_bytes();
    Ok(Some((plan, bytes, index_offset)))
}

impl CudaStep<'_> {
    /// Section `s` of the uploaded metadata viewed as `len` elements of `T`.
    pub(crate) fn view<T: bytemuck::Pod>(&self, s: Section, len: usize) -> Result<CudaView<'_, T>> {
        let need = len * std::mem::size_of::<T>();
        if need > s.bytes || s.offset % ALIGN != 0 {
            return Err(Error::Cuda(format!("a step section of {} bytes cannot hold {len} elements", s.bytes)));
        }
        let meta = self.arena.meta.as_ref().ok_or_else(|| Error::Cuda("the step arena has no metadata buffer".into()))?;
        let bytes = meta.slice(s.offset..s.offset + need.max(1));
        // SAFETY: the section lies inside the metadata buffer (sliced above, which checks the
        // bounds), starts 256-byte aligned, and T is a plain integer or float type
        // (bytemuck::Pod): every bit pattern is a value.
        unsafe { bytes.transmute::<T>(len) }.ok_or_else(|| Error::Cuda("a step section is too short".into()))
    }

    /// The metadata buffer and the sampled-ids buffer, together.
    pub(crate) fn sample_buffers(&mut self) -> Result<(&CudaSlice<u8>, &mut CudaSlice<u32>)> {
        let a = &mut *self.arena;
        match (a.meta.as_ref(), a.sampled.as_mut()) {
            (Some(m), Some(o)) => Ok((m, o)),
            _ => Err(Error::Cuda("the step arena has no sampling buffers".into())),
        }
    }

    /// Uploads the step's token masks (`n_masks * words` packed words, in row order) into the
    /// arena's mask buffer and returns it with the metadata and the ids' buffer.
    pub(crate) fn sample_buffers_with_masks(&mut self, masks: &[u32]) -> Result<(&CudaSlice<u8>, &CudaSlice<u32>, &mut CudaSlice<u32>)> {
        let dev = self.cx.device();
        let a = &mut *self.arena;
        ensure(dev, &mut a.masks, masks.len())?;
        let buf = a.masks.as_mut().ok_or_else(|| Error::Cuda("the step arena has no mask buffer".into()))?;
        let mut dst = buf.slice_mut(0..masks.len());
        dev.stream().memcpy_htod(masks, &mut dst).map_err(super::device::cuda_err("copying the token masks to the device"))?;
        match (a.meta.as_ref(), a.masks.as_ref(), a.sampled.as_mut()) {
            (Some(m), Some(k), Some(o)) => Ok((m, k, o)),
            _ => Err(Error::Cuda("the step arena has no sampling buffers".into())),
        }
    }

    /// The attention split workspace (None when the step does not split).
    pub(crate) fn attn_work(&self) -> Option<&CudaSlice<f32>> {
        self.arena.attn_work.as_ref()
    }

    /// The metadata buffer and the LoRA workspace, together (a LoRA launch reads one and writes
    /// the other).
    pub(crate) fn lora_buffers(&mut self) -> Result<(&CudaSlice<u8>, &mut CudaSlice<f32>)> {
        let a = &mut *self.arena;
        match (a.meta.as_ref(), a.lora_part.as_mut()) {
            (Some(m), Some(p)) => Ok((m, p)),
            _ => Err(Error::Cuda("the step arena has no LoRA workspace".into())),
        }
    }

    /// The arena generation this step's addresses belong to.
    pub fn generation(&self) -> u64 {
        self.arena.generation
    }
}

impl Drop for CudaStep<'_> {
    /// A forward that failed half-way through a graph warm-up or capture: end the capture (its
    /// graph is discarded) and give the backend its pool back.
    fn drop(&mut self) {
        if self.graph_phase == GraphPhase::Capture {
            let _ = self.cx.device().stream().end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
        }
        if let Some(p) = self.saved_pool.take() {
            let _ = self.cx.swap_pool(p);
        }
    }
}
