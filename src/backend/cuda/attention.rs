//! Paged attention on the GPU (kernels/paged_attention.cu, C ABI csrc/paged_attention.h): the KV
//! cache write (`reshape_and_cache`) and causal attention over a ragged batch (`paged_attention`),
//! checked launches in front of them, and `CudaKvCache`, the per-layer K/V device buffers.
//! CPU twin: `backend::cpu::attention::{write_kv, paged_attention}`, same cache layout:
//! per layer, K and V each `[num_blocks * block_size, kv_heads * head_dim]`.
//!
//! The checks (`plan_attention`, `plan_reshape_and_cache`) are pure functions of the host batch
//! description and buffer lengths: they run, and are tested, on any machine. Each returns what the
//! launch uses (parameter struct, flat metadata arrays), so a launch cannot use an unchecked value.

use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

use crate::kv::{BatchLayout, KvLayout};
use crate::Result;

use super::device::{cuda_err, CudaDevice};
use super::dtype::{CudaElem, DType};
use super::ffi::{LfPagedAttnParams, LfReshapeCacheParams, LF_ATTN_MAX_HEADS_PER_BLOCK, LF_ATTN_MAX_HEAD_DIM, LF_ATTN_PARTITION, LF_ATTN_THREADS};
use super::launch::launch_kernel;

/// Head layout of an attention layer: q/out `[T, n_heads * head_dim]`, K/V `[.., n_kv_heads * head_dim]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (GQA: a divisor of `n_heads`).
    pub n_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
}

/// Which attention kernel a head_dim runs on: specialised (16-byte loads) or the generic fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnKernel {
    /// Specialised for head_dim 64.
    Hd64,
    /// Specialised for head_dim 96.
    Hd96,
    /// Specialised for head_dim 128.
    Hd128,
    /// Any head_dim (loops over it).
    Generic,
}

impl AttnKernel {
    /// The kernel specialised for `head_dim`, else the generic one.
    pub fn for_head_dim(head_dim: usize) -> Self {
        match head_dim {
            64 => AttnKernel::Hd64,
            96 => AttnKernel::Hd96,
            128 => AttnKernel::Hd128,
            _ => AttnKernel::Generic,
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            AttnKernel::Hd64 => "hd64",
            AttnKernel::Hd96 => "hd96",
            AttnKernel::Hd128 => "hd128",
            AttnKernel::Generic => "generic",
        }
    }
}

/// A checked attention launch: parameters, kernel choice and the flat device metadata
/// (csrc/paged_attention.h): `row_seq`, `row_pos` `[n_rows]`; `block_table`
/// `[num_seqs, max_blocks]` padded with 0; `context_lens` `[num_seqs]` (tokens after this step);
/// `query_start` `[num_seqs + 1]`.
#[derive(Clone, Debug)]
pub struct AttnPlan {
    /// The kernel's parameters.
    pub params: LfPagedAttnParams,
    /// Which kernel.
    pub kernel: AttnKernel,
    /// `[n_rows]` the sequence of each query row.
    pub row_seq: Vec<i32>,
    /// `[n_rows]` the position of each query row.
    pub row_pos: Vec<i32>,
    /// `[num_seqs, max_blocks]` block ids, -1 padded.
    pub block_table: Vec<i32>,
    /// `[num_seqs]` tokens in each sequence's cache after this step.
    pub context_lens: Vec<i32>,
    /// `[num_seqs + 1]` first query row of each sequence.
    pub query_start: Vec<i32>,
}

impl AttnPlan {
    /// Grid of the attention kernel: (rows, kv heads * head groups, partitions).
    pub fn grid(&self) -> (u32, u32, u32) {
        let p = &self.params;
        (p.n_rows as u32, (p.n_heads / p.heads_per_block) as u32, p.max_partitions as u32)
    }

    /// f32 elements of each partial buffer (max/sum; out is this times head_dim); 0 without a split.
    pub fn partial_len(&self) -> usize {
        let p = &self.params;
        if p.max_partitions == 1 {
            0
        } else {
            p.n_rows as usize * p.n_heads as usize * p.max_partitions as usize
        }
    }
}

use super::validate::{count_i32, invalid, mul};

/// Largest divisor of `group` that is at most `LF_ATTN_MAX_HEADS_PER_BLOCK`.
pub fn heads_per_block(group: usize) -> usize {
    (1..=(LF_ATTN_MAX_HEADS_PER_BLOCK as usize).min(group)).rev().find(|d| group.is_multiple_of(*d)).unwrap_or(1)
}

/// Checks an attention launch over `batch` and builds its metadata. `num_blocks`: blocks of the
/// cache (each layer's K and V hold `num_blocks * block_size` rows); `q_len`, `out_len`: elements
/// of q and out, each `[n_tokens, n_heads * head_dim]`.
pub fn plan_attention(batch: &BatchLayout, dims: AttnDims, num_blocks: usize, q_len: usize, out_len: usize) -> Result<AttnPlan> {
    plan_attention_padded(batch, dims, num_blocks, q_len, out_len, None)
}

/// Fixed table width and partition count for a plan that a CUDA graph replays over steps whose
/// contexts differ (the kernel skips partitions past a row's context; the reduce reads only live
/// ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttnPad {
    /// Block-table width (most blocks of one sequence).
    pub max_blocks: usize,
    /// Most context partitions of one sequence (split-K decode).
    pub max_partitions: usize,
}

/// `plan_attention` with the block table `pad.max_blocks` wide and `pad.max_partitions` partitions
/// (each at least what the batch needs), so that the launch parameters depend only on the pad.
pub fn plan_attention_padded(batch: &BatchLayout, dims: AttnDims, num_blocks: usize, q_len: usize, out_len: usize, pad: Option<AttnPad>) -> Result<AttnPlan> {
    const OP: &str = "paged_attention";
    let AttnDims { n_heads, n_kv_heads, head_dim } = dims;
    let nh = count_i32(OP, "n_heads", n_heads)?;
    let nkv = count_i32(OP, "n_kv_heads", n_kv_heads)?;
    let hd = count_i32(OP, "head_dim", head_dim)?;
    if !n_heads.is_multiple_of(n_kv_heads) {
        return Err(invalid(format!("{OP}: n_heads = {n_heads} is not a multiple of n_kv_heads = {n_kv_heads}")));
    }
    if head_dim % 2 != 0 || head_dim > LF_ATTN_MAX_HEAD_DIM as usize {
        return Err(invalid(format!("{OP}: head_dim = {head_dim} is not supported (even and at most {LF_ATTN_MAX_HEAD_DIM})")));
    }
    let bs = count_i32(OP, "block_size", batch.block_size)?;
    count_i32(OP, "num_blocks", num_blocks)?;
    mul(OP, "num_blocks * block_size", num_blocks, batch.block_size)?;
    count_i32(OP, "n_heads * head_dim", mul(OP, "n_heads * head_dim", n_heads, head_dim)?)?;
    let num_seqs = count_i32(OP, "number of sequences", batch.seqs.len())?;
    let n_tokens = batch.n_tokens();
    let n_rows = count_i32(OP, "n_tokens", n_tokens)?;
    let want = mul(OP, "n_tokens * n_heads * head_dim", n_tokens, n_heads * head_dim)?;
    for (name, len) in [("q", q_len), ("out", out_len)] {
        if len != want {
            return Err(invalid(format!("{OP}: `{name}` has {len} elements; its shape [{n_tokens}, {n_heads} * {head_dim}] needs {want}")));
        }
    }
    if batch.slots.len() != n_tokens {
        return Err(invalid(format!("{OP}: {} slots for {n_tokens} tokens", batch.slots.len())));
    }
    let mut max_blocks = batch.seqs.iter().map(|s| s.blocks.len()).max().unwrap_or(0).max(1);
    if let Some(pad) = pad {
        if pad.max_blocks < max_blocks {
            return Err(invalid(format!("{OP}: a table of {max_blocks} blocks exceeds the pad of {}", pad.max_blocks)));
        }
        max_blocks = pad.max_blocks;
    }
    let table_len = mul(OP, "num_seqs * max_blocks", batch.seqs.len(), max_blocks)?;
    count_i32(OP, "num_seqs * max_blocks", table_len)?;
    let mut plan = AttnPlan {
        params: LfPagedAttnParams::default(),
        kernel: AttnKernel::for_head_dim(head_dim),
        row_seq: Vec::with_capacity(n_tokens),
        row_pos: Vec::with_capacity(n_tokens),
        block_table: vec![0; table_len],
        context_lens: Vec::with_capacity(batch.seqs.len()),
        query_start: Vec::with_capacity(batch.seqs.len() + 1),
    };
    let mut max_keys = 0usize;
    for (si, s) in batch.seqs.iter().enumerate() {
        if s.token_start != plan.row_seq.len() {
            return Err(invalid(format!(
                "{OP}: sequence {si} starts at row {}, expected {} (rows must be contiguous, in sequence order)",
                s.token_start,
                plan.row_seq.len()
            )));
        }
        let total = s.context_len.checked_add(s.n_new).ok_or_else(|| invalid(format!("{OP}: sequence {si} length overflows")))?;
        count_i32(OP, &format!("sequence {si} context_len + n_new"), total.max(1))?;
        let needed = total.div_ceil(batch.block_size);
        if s.blocks.len() < needed {
            return Err(invalid(format!("{OP}: sequence {si} has {} blocks; {total} tokens at block_size {} need {needed}", s.blocks.len(), batch.block_size)));
        }
        if let Some((i, &b)) = s.blocks.iter().enumerate().find(|&(_, &b)| b as usize >= num_blocks) {
            return Err(invalid(format!("{OP}: sequence {si} block {i} = {b} is outside the cache ({num_blocks} blocks)")));
        }
        for (i, &b) in s.blocks.iter().enumerate() {
            plan.block_table[si * max_blocks + i] = b as i32;
        }
        plan.query_start.push(s.token_start as i32);
        plan.context_lens.push(total as i32);
        for i in 0..s.n_new {
            plan.row_seq.push(si as i32);
            plan.row_pos.push((s.context_len + i) as i32);
        }
        if s.n_new > 0 {
            max_keys = max_keys.max(total);
        }
    }
    if plan.row_seq.len() != n_tokens {
        return Err(invalid(format!("{OP}: the sequences cover {} rows of {n_tokens}", plan.row_seq.len())));
    }
    plan.query_start.push(n_tokens as i32);
    let mut max_partitions = max_keys.div_ceil(LF_ATTN_PARTITION as usize).max(1);
    if let Some(pad) = pad {
        if pad.max_partitions < max_partitions {
            return Err(invalid(format!("{OP}: {max_partitions} partitions exceed the pad of {}", pad.max_partitions)));
        }
        max_partitions = pad.max_partitions;
    }
    let hpb = heads_per_block(n_heads / n_kv_heads);
    if n_heads / hpb > 65535 || max_partitions > 65535 {
        return Err(invalid(format!("{OP}: grid ({n_tokens}, {}, {max_partitions}) exceeds the CUDA grid limits", n_heads / hpb)));
    }
    plan.params = LfPagedAttnParams {
        n_rows,
        num_seqs,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        heads_per_block: hpb as i32,
        block_size: bs,
        max_blocks: max_blocks as i32,
        partition_size: LF_ATTN_PARTITION as i32,
        max_partitions: max_partitions as i32,
        scale: 1.0 / (head_dim as f32).sqrt(),
    };
    Ok(plan)
}

/// Checks a cache write: k, v `[slots.len(), kv_dim]`; every slot < `cache_rows`.
pub fn plan_reshape_and_cache(k_len: usize, v_len: usize, slots: &[u32], kv_dim: usize, cache_rows: usize) -> Result<LfReshapeCacheParams> {
    const OP: &str = "reshape_and_cache";
    let n = count_i32(OP, "n_tokens (slots.len())", slots.len())?;
    let d = count_i32(OP, "kv_dim", kv_dim)?;
    count_i32(OP, "cache_rows", cache_rows)?;
    let want = mul(OP, "n_tokens * kv_dim", slots.len(), kv_dim)?;
    for (name, len) in [("k", k_len), ("v", v_len)] {
        if len != want {
            return Err(invalid(format!("{OP}: `{name}` has {len} elements; its shape [{}, {kv_dim}] needs {want}", slots.len())));
        }
    }
    if let Some((i, &s)) = slots.iter().enumerate().find(|&(_, &s)| s as usize >= cache_rows) {
        return Err(invalid(format!("{OP}: slots[{i}] = {s} is outside the cache ({cache_rows} rows)")));
    }
    Ok(LfReshapeCacheParams { n_tokens: n, kv_dim: d, cache_rows: cache_rows as i64 })
}

/// K and V device buffers of every layer, each `[num_blocks * block_size, kv_heads * head_dim]`
/// of `T` (f32 or bf16), zero-initialised.
pub struct CudaKvCache<T: CudaElem> {
    layout: KvLayout,
    k: Vec<CudaSlice<T>>,
    v: Vec<CudaSlice<T>>,
}

impl<T: CudaElem> CudaKvCache<T> {
    /// Allocates K and V of every layer for `layout` on the device, zeroed.
    pub fn new(ops: &CudaDevice, layout: KvLayout) -> Result<Self>
    where
        T: cudarc::driver::ValidAsZeroBits,
    {
        let n = layout.layer_elems();
        if n == 0 || layout.num_layers == 0 {
            return Err(invalid(format!("CudaKvCache: empty layout {layout:?}")));
        }
        let mut k = Vec::with_capacity(layout.num_layers);
        let mut v = Vec::with_capacity(layout.num_layers);
        for _ in 0..layout.num_layers {
            k.push(ops.stream.alloc_zeros::<T>(n).map_err(cuda_err(format!("allocating {n} K cache elements")))?);
            v.push(ops.stream.alloc_zeros::<T>(n).map_err(cuda_err(format!("allocating {n} V cache elements")))?);
        }
        Ok(CudaKvCache { layout, k, v })
    }

    /// The cache's shape.
    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    /// K and V of `layer`.
    pub fn layer(&self, layer: usize) -> (&CudaSlice<T>, &CudaSlice<T>) {
        (&self.k[layer], &self.v[layer])
    }

    fn check_layer(&self, op: &str, layer: usize) -> Result<()> {
        if layer >= self.layout.num_layers {
            return Err(invalid(format!("{op}: layer {layer} of a cache with {} layers", self.layout.num_layers)));
        }
        Ok(())
    }
}

/// The kernels of `kernels/paged_attention.cu` for one storage type.
struct AttnFns {
    reshape: CudaFunction,
    attn: [CudaFunction; 4],
    reduce: CudaFunction,
}

/// The paged-attention module loaded on a `CudaDevice` device.
pub struct CudaAttention {
    f32: AttnFns,
    bf16: AttnFns,
}

impl CudaAttention {
    /// Loads the paged-attention kernels on the device.
    pub fn new(ops: &CudaDevice) -> Result<Self> {
        let module = ops.load_embedded("paged_attention", "paged attention")?;
        let get = |name: String| module.function(&name);
        let fns = |d: DType| -> Result<AttnFns> {
            let s = d.suffix();
            Ok(AttnFns {
                reshape: get(format!("lf_reshape_and_cache_{s}"))?,
                attn: [
                    get(format!("lf_paged_attn_{s}_{}", AttnKernel::Hd64.suffix()))?,
                    get(format!("lf_paged_attn_{s}_{}", AttnKernel::Hd96.suffix()))?,
                    get(format!("lf_paged_attn_{s}_{}", AttnKernel::Hd128.suffix()))?,
                    get(format!("lf_paged_attn_{s}_{}", AttnKernel::Generic.suffix()))?,
                ],
                reduce: get(format!("lf_paged_attn_reduce_{s}"))?,
            })
        };
        Ok(CudaAttention { f32: fns(DType::F32)?, bf16: fns(DType::Bf16)? })
    }

    fn fns(&self, d: DType) -> &AttnFns {
        match d {
            DType::F32 => &self.f32,
            DType::Bf16 => &self.bf16,
        }
    }

    /// Writes the new tokens' `k, v [slots.len(), kv_heads * head_dim]` into cache rows `slots`
    /// of `layer` (as `cpu::attention::write_kv`).
    pub fn reshape_and_cache<T: CudaElem>(
        &self,
        ops: &CudaDevice,
        k: &impl DevicePtr<T>,
        v: &impl DevicePtr<T>,
        slots: &[u32],
        cache: &mut CudaKvCache<T>,
        layer: usize,
    ) -> Result<()> {
        const OP: &str = "reshape_and_cache";
        cache.check_layer(OP, layer)?;
        let l = cache.layout;
        let p = plan_reshape_and_cache(k.len(), v.len(), slots, l.num_kv_heads * l.head_dim, l.num_blocks * l.block_size)?;
        let dev_slots = ops.upload(slots)?;
        // SAFETY: `p` is plan_reshape_and_cache over exactly the slots uploaded into `dev_slots`,
        // for this cache's layout.
        unsafe { self.reshape_planned(ops, k, v, &dev_slots, cache, layer, &p) }
    }

    /// `reshape_and_cache` with the slots already on the device (a forward step's metadata).
    ///
    /// # Safety
    /// `p` must be what `plan_reshape_and_cache` returned for `k.len()`, `v.len()`, the
    /// `p.n_tokens` slots `slots` holds (each checked < cache rows), this cache's kv_dim and rows.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn reshape_planned<T: CudaElem>(
        &self,
        ops: &CudaDevice,
        k: &impl DevicePtr<T>,
        v: &impl DevicePtr<T>,
        slots: &impl DevicePtr<u32>,
        cache: &mut CudaKvCache<T>,
        layer: usize,
        p: &LfReshapeCacheParams,
    ) -> Result<()> {
        const OP: &str = "reshape_and_cache";
        cache.check_layer(OP, layer)?;
        let l = cache.layout;
        if p.cache_rows as usize != l.num_blocks * l.block_size || p.kv_dim as usize != l.num_kv_heads * l.head_dim {
            return Err(invalid(format!("{OP}: the plan was made for another cache layout")));
        }
        if slots.len() < p.n_tokens as usize {
            return Err(invalid(format!("{OP}: {} slots on the device for {} tokens", slots.len(), p.n_tokens)));
        }
        ops.check_context(OP, "k", k)?;
        ops.check_context(OP, "v", v)?;
        ops.check_context(OP, "slots", slots)?;
        let cfg = LaunchConfig { grid_dim: (p.n_tokens as u32, 1, 1), block_dim: (LF_ATTN_THREADS, 1, 1), shared_mem_bytes: 0 };
        let stream = &ops.stream;
        let (kp, _k) = k.device_ptr(stream);
        let (vp, _v) = v.device_ptr(stream);
        let (sp, _s) = slots.device_ptr(stream);
        let (kc, vc) = (&mut cache.k[layer], &mut cache.v[layer]);
        let (kcp, _kc) = kc.device_ptr_mut(stream);
        let (vcp, _vc) = vc.device_ptr_mut(stream);
        // SAFETY: lf_reshape_and_cache_<T>(const T* k, const T* v, const uint32_t* slots, T* k_cache,
        // T* v_cache, LfReshapeCacheParams). By this function's contract the plan checked k and v
        // hold n_tokens * kv_dim elements and the n_tokens slots (on the device, stream-ordered
        // before the kernel) are each < cache_rows, which is this layer's buffers' row count
        // (checked above), owned mutably here.
        unsafe { launch_kernel(stream, &self.fns(T::DTYPE).reshape, "lf_reshape_and_cache", cfg, &[&kp, &vp, &sp, &kcp, &vcp, p]) }?;
        Ok(())
    }

    /// Causal paged attention of `q [T, n_heads * head_dim]` over layer `layer` of the cache
    /// (which must already hold this step's new tokens) into `out [T, n_heads * head_dim]`
    /// (as `cpu::attention::paged_attention`).
    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention<T: CudaElem>(
        &self,
        ops: &CudaDevice,
        q: &impl DevicePtr<T>,
        cache: &CudaKvCache<T>,
        layer: usize,
        batch: &BatchLayout,
        n_heads: usize,
        out: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        const OP: &str = "paged_attention";
        cache.check_layer(OP, layer)?;
        let l = cache.layout;
        if batch.block_size != l.block_size {
            return Err(invalid(format!("{OP}: batch block_size {} != cache block_size {}", batch.block_size, l.block_size)));
        }
        let dims = AttnDims { n_heads, n_kv_heads: l.num_kv_heads, head_dim: l.head_dim };
        let plan = plan_attention(batch, dims, l.num_blocks, q.len(), out.len())?;
        let meta = AttnMeta { row_seq: ops.upload(&plan.row_seq)?, row_pos: ops.upload(&plan.row_pos)?, block_table: ops.upload(&plan.block_table)? };
        let np = plan.partial_len();
        let partials = if np > 0 { Some(ops.alloc_for_output::<f32>(attn_workspace_len(np, l.head_dim))?) } else { None };
        // SAFETY: `plan` is plan_attention over this batch and cache layout; `meta` holds exactly
        // its arrays; `partials` holds attn_workspace_len(partial_len, head_dim) f32 when it splits.
        unsafe { self.attention_planned(ops, q, cache, layer, &plan.params, plan.kernel, &meta, partials.as_ref(), out) }
    }

    /// `paged_attention` with its metadata already on the device (a forward step's) and a
    /// caller-owned workspace for the split's partial results.
    ///
    /// # Safety
    /// `params` and `kernel` must come from `plan_attention` for this cache's layout, q's and
    /// out's lengths; `meta` must hold that plan's row_seq, row_pos and block_table (at least as
    /// many elements); when `params.max_partitions > 1`, `partials` must hold at least
    /// `attn_workspace_len(partial_len, head_dim)` f32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn attention_planned<T: CudaElem, M: DevicePtr<i32>>(
        &self,
        ops: &CudaDevice,
        q: &impl DevicePtr<T>,
        cache: &CudaKvCache<T>,
        layer: usize,
        params: &LfPagedAttnParams,
        kernel: AttnKernel,
        meta: &AttnMeta<M>,
        partials: Option<&CudaSlice<f32>>,
        out: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        const OP: &str = "paged_attention";
        cache.check_layer(OP, layer)?;
        let p = *params;
        let l = cache.layout;
        if p.head_dim as usize != l.head_dim || p.n_kv_heads as usize != l.num_kv_heads || p.block_size as usize != l.block_size {
            return Err(invalid(format!("{OP}: the plan was made for another cache layout")));
        }
        let rows = p.n_rows as usize;
        let width = p.n_heads as usize * l.head_dim;
        if q.len() != rows * width || out.len() != rows * width {
            return Err(invalid(format!("{OP}: q and out must be [{rows}, {width}] as planned")));
        }
        if meta.row_seq.len() < rows || meta.row_pos.len() < rows || meta.block_table.len() < p.num_seqs as usize * p.max_blocks as usize {
            return Err(invalid(format!("{OP}: the device metadata is shorter than the plan")));
        }
        let np = if p.max_partitions == 1 { 0 } else { rows * p.n_heads as usize * p.max_partitions as usize };
        if np > 0 && partials.is_none_or(|w| w.len() < attn_workspace_len(np, l.head_dim)) {
            return Err(invalid(format!(
                "{OP}: the split over {} partitions needs a workspace of {} f32",
                p.max_partitions,
                attn_workspace_len(np, l.head_dim)
            )));
        }
        ops.check_context(OP, "q", q)?;
        ops.check_context(OP, "out", out)?;
        ops.check_context(OP, "row_seq", &meta.row_seq)?;
        let stream = &ops.stream;
        let fns = self.fns(T::DTYPE);
        let f = &fns.attn[match kernel {
            AttnKernel::Hd64 => 0,
            AttnKernel::Hd96 => 1,
            AttnKernel::Hd128 => 2,
            AttnKernel::Generic => 3,
        }];
        let (qp, _q) = q.device_ptr(stream);
        let (kc, vc) = cache.layer(layer);
        let (kcp, _kc) = kc.device_ptr(stream);
        let (vcp, _vc) = vc.device_ptr(stream);
        let (rsp, _rs) = meta.row_seq.device_ptr(stream);
        let (rpp, _rp) = meta.row_pos.device_ptr(stream);
        let (tp, _t) = meta.block_table.device_ptr(stream);
        let (op, _o) = out.device_ptr_mut(stream);
        let (wp, _w) = match partials {
            Some(w) => {
                let (p, s) = w.device_ptr(stream);
                (p, Some(s))
            }
            None => (0u64, None),
        };
        // The workspace: part_max, part_sum, part_out, each starting on a 256-byte boundary.
        let r = np.next_multiple_of(64) as u64;
        let (mp, sp, pp) = if np > 0 { (wp, wp + 4 * r, wp + 8 * r) } else { (0, 0, 0) };
        let cfg = LaunchConfig {
            grid_dim: (p.n_rows as u32, (p.n_heads / p.heads_per_block) as u32, p.max_partitions as u32),
            block_dim: (LF_ATTN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: lf_paged_attn_<T>_<kernel>(const T* q, const T* k_cache, const T* v_cache,
        // const int32_t* row_seq, const int32_t* row_pos, const int32_t* block_table, T* out,
        // float* part_max, float* part_sum, float* part_out, LfPagedAttnParams). By this
        // function's contract plan_attention checked every row's sequence and position, every
        // table entry < num_blocks and every table covering its positions, for this layout
        // (re-checked above), and the metadata holds its arrays (lengths checked above); q and
        // out hold n_rows * n_heads * head_dim elements (checked above); the caches are this
        // layer's buffers; the workspace holds the partials whenever max_partitions > 1 (checked
        // above) and is unused (null) otherwise.
        unsafe { launch_kernel(stream, f, "lf_paged_attn", cfg, &[&qp, &kcp, &vcp, &rsp, &rpp, &tp, &op, &mp, &sp, &pp, &p]) }?;
        if np > 0 {
            let cfg = LaunchConfig { grid_dim: (p.n_rows as u32, p.n_heads as u32, 1), block_dim: (LF_ATTN_THREADS, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: lf_paged_attn_reduce_<T>(const int32_t* row_pos, const float* part_max,
            // const float* part_sum, const float* part_out, T* out, LfPagedAttnParams): the buffers
            // of the launch above, whose live partitions it wrote (stream-ordered before this).
            unsafe { launch_kernel(stream, &fns.reduce, "lf_paged_attn_reduce", cfg, &[&rpp, &mp, &sp, &pp, &op, &p]) }?;
        }
        Ok(())
    }
}

/// f32 elements of the workspace of an attention split with `np` partial rows (`AttnPlan::
/// partial_len`): part_max `[np]`, part_sum `[np]` and part_out `[np, head_dim]`, each starting on
/// a 256-byte boundary.
pub fn attn_workspace_len(np: usize, head_dim: usize) -> usize {
    2 * np.next_multiple_of(64) + np * head_dim
}

/// An attention plan's metadata on the device: `row_seq`, `row_pos` `[n_rows]`, `block_table`
/// `[num_seqs, max_blocks]` (i32).
pub struct AttnMeta<M> {
    /// `[n_rows]` i32.
    pub row_seq: M,
    /// `[n_rows]` i32.
    pub row_pos: M,
    /// `[num_seqs, max_blocks]` i32.
    pub block_table: M,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_per_block_divides_group() {
        assert_eq!(heads_per_block(1), 1);
        assert_eq!(heads_per_block(3), 3);
        assert_eq!(heads_per_block(4), 4);
        assert_eq!(heads_per_block(8), 4);
        assert_eq!(heads_per_block(6), 3);
        assert_eq!(heads_per_block(7), 1);
        assert_eq!(heads_per_block(32), 4);
    }
}
