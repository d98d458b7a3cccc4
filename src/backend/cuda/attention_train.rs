//! Causal self-attention for training on the GPU (kernels/attention_train.cu, C ABI
//! csrc/attention_train.h): the forward over a packed batch of whole sequences that keeps the
//! softmax log-sum-exp, and its backward, f32, grouped-query heads, shared-prefix contexts
//! (`SeqSpan::with_context`). CPU twins: `backend::cpu::backward::{causal_attention_forward,
//! causal_attention_backward}`, same spans, same outputs.
//!
//! `plan_attention_train` is a pure function of the dimensions, the spans and the buffer lengths
//! (run and tested on any machine): counts positive and within int32, n_kv_heads dividing
//! n_heads, head_dim within the kernels' tiles, every span inside the batch with its own rows
//! disjoint from every other span's (each output row has one writer), every buffer exactly its
//! shape, the grids within CUDA's limits. A launch only uses what it returned.

use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

use crate::types::layout::SeqSpan;
use crate::Result;

use super::device::{cuda_err, CudaDevice};
use super::ffi::{LfAttnTrainParams, LfSeqSpan, LF_ATTN_TRAIN_MAX_HEAD_DIM, LF_ATTN_TRAIN_MAX_TILE, LF_ATTN_TRAIN_THREADS, LF_ATTN_TRAIN_TILE_ELEMS};
use super::launch::launch_kernel;
use super::validate::{count_i32, invalid, mul};

// SAFETY: `#[repr(C)]` structs of int32 and f32 fields generated from csrc/attention_train.h, no
// pointers, so their bytes are exactly the kernels' C structs (the params by value, the spans as
// an array the kernels read).
unsafe impl cudarc::driver::DeviceRepr for LfAttnTrainParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for LfSeqSpan {}

/// Largest grid y and z (heads, sequences).
const MAX_GRID_YZ: usize = 65535;

/// Head layout of a training attention: q `[rows, n_heads * head_dim]`, k and v
/// `[rows, n_kv_heads * head_dim]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnTrainDims {
    /// Rows of the packed batch.
    pub rows: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
}

impl AttnTrainDims {
    fn q_len(&self) -> usize {
        self.rows * self.n_heads * self.head_dim
    }
    fn kv_len(&self) -> usize {
        self.rows * self.n_kv_heads * self.head_dim
    }
}

/// A checked training attention: the kernels' parameters, the spans as the kernels read them and
/// the grids.
#[derive(Clone, Debug)]
pub struct AttnTrainPlan {
    /// The kernels' parameters.
    pub params: LfAttnTrainParams,
    /// The sequences of the packed batch.
    pub spans: Vec<LfSeqSpan>,
    /// Forward: `(ceil(max len / tile), n_heads, n_seqs)`.
    pub fwd_grid: (u32, u32, u32),
    /// Backward: `(ceil(max(ctx_len + len) / tile), n_heads, n_seqs)`.
    pub bwd_grid: (u32, u32, u32),
}

/// Rows per query / key tile for `head_dim`: the largest power of two <= MAX_TILE whose tile fits
/// TILE_ELEMS (the kernels' shared tiles and per-thread registers).
pub fn tile_rows(head_dim: usize) -> usize {
    let mut t = LF_ATTN_TRAIN_MAX_TILE as usize;
    while t > 1 && t * head_dim > LF_ATTN_TRAIN_TILE_ELEMS as usize {
        t /= 2;
    }
    t
}

/// Checks a training attention over `spans` (see the module comment). `bufs`: each buffer's
/// `(name, length)`; the length it must have follows from its name and the dims: `q`, `out`,
/// `dout`, `dq` `[rows, n_heads * head_dim]`; `k`, `v`, `dk`, `dv` `[rows, n_kv_heads *
/// head_dim]`; `lse`, `delta` `[rows, n_heads]`.
pub fn plan_attention_train(dims: &AttnTrainDims, spans: &[SeqSpan], bufs: &[(&str, usize)]) -> Result<AttnTrainPlan> {
    const OP: &str = "attention (training)";
    let rows = count_i32(OP, "rows", dims.rows)?;
    let n_heads = count_i32(OP, "n_heads", dims.n_heads)?;
    let n_kv = count_i32(OP, "n_kv_heads", dims.n_kv_heads)?;
    let d = count_i32(OP, "head_dim", dims.head_dim)?;
    if !dims.n_heads.is_multiple_of(dims.n_kv_heads) {
        return Err(invalid(format!("{OP}: n_kv_heads {} does not divide n_heads {}", dims.n_kv_heads, dims.n_heads)));
    }
    if dims.head_dim > LF_ATTN_TRAIN_MAX_HEAD_DIM as usize {
        return Err(invalid(format!("{OP}: head_dim {} is over the kernels' limit {LF_ATTN_TRAIN_MAX_HEAD_DIM}", dims.head_dim)));
    }
    if dims.n_heads > MAX_GRID_YZ {
        return Err(invalid(format!("{OP}: {} heads are over the grid limit {MAX_GRID_YZ}", dims.n_heads)));
    }
    // Every row-major width must fit the kernels' int32 counts; the offsets are 64-bit.
    mul(OP, "rows * n_heads * head_dim", mul(OP, "rows * n_heads", dims.rows, dims.n_heads)?, dims.head_dim)?;
    count_i32(OP, "n_heads * head_dim", dims.n_heads * dims.head_dim)?;
    if spans.is_empty() {
        return Err(invalid(format!("{OP}: no sequences")));
    }
    if spans.len() > MAX_GRID_YZ {
        return Err(invalid(format!("{OP}: {} sequences are over the grid limit {MAX_GRID_YZ}; split the batch", spans.len())));
    }
    let mut own: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    let (mut max_len, mut max_keys) = (0usize, 0usize);
    for (i, s) in spans.iter().enumerate() {
        let end = s.start.checked_add(s.len);
        let ctx_end = s.ctx_start.checked_add(s.ctx_len);
        if s.len == 0 {
            return Err(invalid(format!("{OP}: sequence {i} is empty")));
        }
        if end.is_none_or(|e| e > dims.rows) || ctx_end.is_none_or(|e| e > dims.rows) {
            return Err(invalid(format!(
                "{OP}: sequence {i} (rows {}..+{}, context {}..+{}) reaches past the batch's {} rows",
                s.start, s.len, s.ctx_start, s.ctx_len, dims.rows
            )));
        }
        own.push((s.start, s.start + s.len));
        max_len = max_len.max(s.len);
        max_keys = max_keys.max(s.ctx_len + s.len);
    }
    own.sort_unstable();
    if let Some(w) = own.windows(2).find(|w| w[1].0 < w[0].1) {
        return Err(invalid(format!("{OP}: sequences overlap (rows {}..{} and {}..{})", w[0].0, w[0].1, w[1].0, w[1].1)));
    }
    let expect = |name: &str| -> Result<usize> {
        match name {
            "q" | "out" | "dout" | "dq" => Ok(dims.q_len()),
            "k" | "v" | "dk" | "dv" => Ok(dims.kv_len()),
            "lse" | "delta" => Ok(dims.rows * dims.n_heads),
            other => Err(invalid(format!("{OP}: no buffer is called `{other}`"))),
        }
    };
    for &(name, len) in bufs {
        let want = expect(name)?;
        if len != want {
            return Err(invalid(format!("{OP}: `{name}` has {len} elements; the dims {dims:?} need {want}")));
        }
    }
    let tile = tile_rows(dims.head_dim);
    let spans_c =
        spans.iter().map(|s| LfSeqSpan { start: s.start as i32, len: s.len as i32, ctx_start: s.ctx_start as i32, ctx_len: s.ctx_len as i32 }).collect();
    let blocks = |n: usize| n.div_ceil(tile) as u32;
    Ok(AttnTrainPlan {
        params: LfAttnTrainParams {
            rows,
            n_seqs: spans.len() as i32,
            n_heads,
            n_kv_heads: n_kv,
            head_dim: d,
            tile: tile as i32,
            scale: 1.0 / (dims.head_dim as f32).sqrt(),
        },
        spans: spans_c,
        fwd_grid: (blocks(max_len), dims.n_heads as u32, spans.len() as u32),
        bwd_grid: (blocks(max_keys), dims.n_heads as u32, spans.len() as u32),
    })
}

/// The training-attention module loaded on a `CudaDevice` device.
pub struct CudaAttentionTrain {
    fwd: CudaFunction,
    delta: CudaFunction,
    bwd: CudaFunction,
}

fn block() -> (u32, u32, u32) {
    (LF_ATTN_TRAIN_THREADS, 1, 1)
}

impl CudaAttentionTrain {
    /// Loads the training-attention kernels on the device.
    pub fn new(ops: &CudaDevice) -> Result<Self> {
        let module = ops.load_embedded("attention_train", "training attention")?;
        let get = |name: &str| module.function(name);
        Ok(CudaAttentionTrain { fwd: get("lf_attn_train_fwd_f32")?, delta: get("lf_attn_train_delta_f32")?, bwd: get("lf_attn_train_bwd_f32")? })
    }

    fn zeros(ops: &CudaDevice, len: usize) -> Result<CudaSlice<f32>> {
        ops.stream.alloc_zeros::<f32>(len).map_err(cuda_err(format!("allocating {len} elements")))
    }

    /// Forward: returns `(out [rows, n_heads * head_dim], lse [rows, n_heads])`; rows outside
    /// every span are 0 in both, as the CPU twin leaves them.
    pub fn forward(
        &self,
        ops: &CudaDevice,
        dims: &AttnTrainDims,
        spans: &[SeqSpan],
        q: &impl DevicePtr<f32>,
        k: &impl DevicePtr<f32>,
        v: &impl DevicePtr<f32>,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
        const OP: &str = "attention (training) forward";
        let plan = plan_attention_train(dims, spans, &[("q", q.len()), ("k", k.len()), ("v", v.len())])?;
        ops.check_context(OP, "q", q)?;
        ops.check_context(OP, "k", k)?;
        ops.check_context(OP, "v", v)?;
        let spans_d = ops.upload(&plan.spans)?;
        let mut out = Self::zeros(ops, dims.q_len())?;
        let mut lse = Self::zeros(ops, dims.rows * dims.n_heads)?;
        let s = &ops.stream;
        {
            let (qp, _q) = q.device_ptr(s);
            let (kp, _k) = k.device_ptr(s);
            let (vp, _v) = v.device_ptr(s);
            let (sp, _s) = spans_d.device_ptr(s);
            let (op, _o) = out.device_ptr_mut(s);
            let (lp, _l) = lse.device_ptr_mut(s);
            let p = plan.params;
            let cfg = LaunchConfig { grid_dim: plan.fwd_grid, block_dim: block(), shared_mem_bytes: 0 };
            // SAFETY: lf_attn_train_fwd_f32(const float* q, const float* k, const float* v,
            // const LfSeqSpan* spans, float* out, float* lse, LfAttnTrainParams).
            // plan_attention_train checked q holds rows * n_heads * head_dim f32 and k, v rows *
            // n_kv_heads * head_dim, every span (uploaded just above, stream-ordered before the
            // kernel) lies inside the rows with disjoint own rows, n_kv_heads divides n_heads and
            // tile * head_dim fits the kernel's static tiles; out and lse are fresh buffers of the
            // q and [rows, n_heads] shapes, owned here. The grid's z is the span count.
            unsafe { launch_kernel(s, &self.fwd, "lf_attn_train_fwd_f32", cfg, &[&qp, &kp, &vp, &sp, &op, &lp, &p]) }?;
        }
        Ok((out, lse))
    }

    /// Backward: returns `(dq, dk, dv)` shaped like q, k, v (the forward's inputs), from the
    /// forward's `out` and `lse` and the upstream `dout`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        ops: &CudaDevice,
        dims: &AttnTrainDims,
        spans: &[SeqSpan],
        q: &impl DevicePtr<f32>,
        k: &impl DevicePtr<f32>,
        v: &impl DevicePtr<f32>,
        out: &impl DevicePtr<f32>,
        lse: &impl DevicePtr<f32>,
        dout: &impl DevicePtr<f32>,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)> {
        const OP: &str = "attention (training) backward";
        let bufs = [("q", q.len()), ("k", k.len()), ("v", v.len()), ("out", out.len()), ("lse", lse.len()), ("dout", dout.len())];
        let plan = plan_attention_train(dims, spans, &bufs)?;
        ops.check_context(OP, "q", q)?;
        ops.check_context(OP, "k", k)?;
        ops.check_context(OP, "v", v)?;
        ops.check_context(OP, "out", out)?;
        ops.check_context(OP, "lse", lse)?;
        ops.check_context(OP, "dout", dout)?;
        let spans_d = ops.upload(&plan.spans)?;
        let mut delta = Self::zeros(ops, dims.rows * dims.n_heads)?;
        // Sums over blocks (atomicAdd): they start at zero.
        let mut dq = Self::zeros(ops, dims.q_len())?;
        let mut dk = Self::zeros(ops, dims.kv_len())?;
        let mut dv = Self::zeros(ops, dims.kv_len())?;
        let s = &ops.stream;
        let p = plan.params;
        {
            let (op, _o) = out.device_ptr(s);
            let (gp, _g) = dout.device_ptr(s);
            let (dp, _d) = delta.device_ptr_mut(s);
            let warps = dims.rows * dims.n_heads;
            let per_block = (LF_ATTN_TRAIN_THREADS / 32) as usize;
            let grid = warps.div_ceil(per_block).min(ops.max_blocks as usize).max(1) as u32;
            let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: block(), shared_mem_bytes: 0 };
            // SAFETY: lf_attn_train_delta_f32(const float* out, const float* dout, float* delta,
            // LfAttnTrainParams). out and dout hold rows * n_heads * head_dim f32 (checked above)
            // and delta rows * n_heads (allocated here); the grid-stride loop over warps stays
            // below rows * n_heads.
            unsafe { launch_kernel(s, &self.delta, "lf_attn_train_delta_f32", cfg, &[&op, &gp, &dp, &p]) }?;
        }
        {
            let (qp, _q) = q.device_ptr(s);
            let (kp, _k) = k.device_ptr(s);
            let (vp, _v) = v.device_ptr(s);
            let (gp, _g) = dout.device_ptr(s);
            let (lp, _l) = lse.device_ptr(s);
            let (dlp, _dl) = delta.device_ptr(s);
            let (sp, _s) = spans_d.device_ptr(s);
            let (dqp, _dq) = dq.device_ptr_mut(s);
            let (dkp, _dk) = dk.device_ptr_mut(s);
            let (dvp, _dv) = dv.device_ptr_mut(s);
            let cfg = LaunchConfig { grid_dim: plan.bwd_grid, block_dim: block(), shared_mem_bytes: 0 };
            // SAFETY: lf_attn_train_bwd_f32(q, k, v, dout, lse, delta, spans, dq, dk, dv,
            // LfAttnTrainParams). Shapes and spans checked by plan_attention_train as for the
            // forward; lse has rows * n_heads f32 (checked) and delta was written by the kernel
            // just above on the same stream; dq, dk, dv are fresh zeroed buffers owned here, only
            // added to with atomicAdd.
            unsafe { launch_kernel(s, &self.bwd, "lf_attn_train_bwd_f32", cfg, &[&qp, &kp, &vp, &gp, &lp, &dlp, &sp, &dqp, &dkp, &dvp, &p]) }?;
        }
        Ok((dq, dk, dv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(rows: usize, n_heads: usize, n_kv_heads: usize, head_dim: usize) -> AttnTrainDims {
        AttnTrainDims { rows, n_heads, n_kv_heads, head_dim }
    }

    #[test]
    fn tiles_fit_the_kernels() {
        assert_eq!(tile_rows(64), 32);
        assert_eq!(tile_rows(128), 16);
        assert_eq!(tile_rows(96), 16);
        assert_eq!(tile_rows(7), 32);
        assert_eq!(tile_rows(2048), 1);
        for d in 1..=LF_ATTN_TRAIN_MAX_HEAD_DIM as usize {
            let t = tile_rows(d);
            assert!(t.is_power_of_two() && t * d <= LF_ATTN_TRAIN_TILE_ELEMS as usize, "head_dim {d}: tile {t}");
        }
    }

    #[test]
    fn grids_cover_the_longest_sequence() {
        // SmolLM2: 9 heads, 3 kv heads, head_dim 64. A shared context of 19 rows and three
        // continuations of 30, 33 and 5 rows.
        let spans = [SeqSpan::new(0, 19), SeqSpan::with_context(19, 30, 0, 19), SeqSpan::with_context(49, 33, 0, 19), SeqSpan::with_context(82, 5, 0, 19)];
        let d = dims(87, 9, 3, 64);
        let p = plan_attention_train(&d, &spans, &[("q", 87 * 576), ("k", 87 * 192), ("lse", 87 * 9)]).unwrap();
        assert_eq!(p.params.tile, 32);
        assert_eq!(p.fwd_grid, (2, 9, 4)); // 33 rows
        assert_eq!(p.bwd_grid, (2, 9, 4)); // 19 + 33 keys
        let s2 = p.spans[2];
        assert_eq!((s2.start, s2.len, s2.ctx_start, s2.ctx_len), (49, 33, 0, 19));
        assert!((p.params.scale - 0.125).abs() < 1e-7);
    }

    #[test]
    fn bad_arguments_are_refused() {
        let d = dims(10, 4, 2, 8);
        let ok = [SeqSpan::new(0, 4), SeqSpan::with_context(4, 6, 0, 2)];
        assert!(plan_attention_train(&d, &ok, &[("q", 320), ("v", 160), ("delta", 40)]).is_ok());
        let cases: Vec<(&str, AttnTrainDims, Vec<SeqSpan>, Vec<(&str, usize)>)> = vec![
            ("no rows", dims(0, 4, 2, 8), ok.to_vec(), vec![]),
            ("kv not dividing", dims(10, 4, 3, 8), ok.to_vec(), vec![]),
            ("head_dim too large", dims(10, 1, 1, 4096), vec![SeqSpan::new(0, 10)], vec![]),
            ("no spans", d, vec![], vec![]),
            ("empty span", d, vec![SeqSpan::new(0, 0)], vec![]),
            ("span past the end", d, vec![SeqSpan::new(5, 6)], vec![]),
            ("context past the end", d, vec![SeqSpan::with_context(0, 4, 8, 3)], vec![]),
            ("overlapping spans", d, vec![SeqSpan::new(0, 5), SeqSpan::new(4, 3)], vec![]),
            ("short q", d, ok.to_vec(), vec![("q", 319)]),
            ("long dk", d, ok.to_vec(), vec![("dk", 161)]),
            ("short lse", d, ok.to_vec(), vec![("lse", 39)]),
            ("span start overflow", d, vec![SeqSpan::new(usize::MAX, 2)], vec![]),
            ("unknown buffer", d, ok.to_vec(), vec![("x", 320)]),
        ];
        for (what, dd, spans, bufs) in cases {
            assert!(plan_attention_train(&dd, &spans, &bufs).is_err(), "{what} must be refused");
        }
    }
}
