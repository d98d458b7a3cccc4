//! Cross-entropy fused with the frozen lm_head on the GPU, chunked over the vocabulary
//! (kernels/cross_entropy.cu, C ABI csrc/cross_entropy.h), so the `[rows, vocab]` logits never
//! exist: per chunk, the chunk's logits, the online-softmax update, and `S += exp(·)·W_chunk`.
//! CPU twin: `backend::cpu::backward::cross_entropy_lm_head`, same inputs, same outputs.
//!
//! `plan_cross_entropy` is a pure function of the shapes, the host-side targets and weights and
//! the buffer lengths (run and tested on any machine): counts positive and within int32, every
//! target inside the vocabulary, every weight finite, h and w exactly their shapes, the grids
//! within CUDA's limits. A launch only uses what it returned.

use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

use crate::Result;

use super::device::{cuda_err, CudaDevice};
use super::ffi::{LfCeParams, LfGemmParams, LF_CE_THREADS, LF_GEMM_TILE_M, LF_GEMM_TILE_N};
use super::launch::launch_kernel;
use super::validate::{count_i32, invalid, mul};

// SAFETY: `#[repr(C)]` structs of int32 fields generated from csrc/cross_entropy.h, no pointers,
// so their bytes passed by value are exactly the kernels' C struct parameters.
unsafe impl cudarc::driver::DeviceRepr for LfGemmParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for LfCeParams {}

/// Largest grid y (row tiles of the SGEMMs).
const MAX_GRID_Y: usize = 65535;

/// A checked fused cross-entropy: the shapes and the vocabulary chunks `(v0, rows of the chunk)`.
#[derive(Clone, Debug)]
pub struct CrossEntropyPlan {
    /// Rows with a label.
    pub rows: usize,
    /// Hidden size (the lm_head's input features).
    pub hidden: usize,
    /// Vocabulary size (the lm_head's output features).
    pub vocab: usize,
    /// The chunk width the workspace is allocated for (`min(chunk, vocab)`).
    pub chunk: usize,
    /// `(start, len)` vocabulary chunks, in order.
    pub chunks: Vec<(usize, usize)>,
}

/// Checks a fused cross-entropy of `h [rows, hidden]` against `w [vocab, hidden]` (see the
/// module comment); `chunk` vocabulary rows per step.
pub fn plan_cross_entropy(h_len: usize, w_len: usize, hidden: usize, targets: &[u32], weights: &[f32], chunk: usize) -> Result<CrossEntropyPlan> {
    const OP: &str = "cross-entropy (fused lm_head)";
    let rows = targets.len();
    count_i32(OP, "rows (targets)", rows)?;
    count_i32(OP, "hidden", hidden)?;
    count_i32(OP, "chunk", chunk)?;
    if weights.len() != rows {
        return Err(invalid(format!("{OP}: {} weights for {rows} targets", weights.len())));
    }
    if let Some((i, w)) = weights.iter().enumerate().find(|(_, w)| !w.is_finite()) {
        return Err(invalid(format!("{OP}: weight {i} is {w}, not finite")));
    }
    let want_h = mul(OP, "rows * hidden", rows, hidden)?;
    if h_len != want_h {
        return Err(invalid(format!("{OP}: `h` has {h_len} elements; [{rows}, {hidden}] needs {want_h}")));
    }
    if w_len == 0 || !w_len.is_multiple_of(hidden) {
        return Err(invalid(format!("{OP}: `w` has {w_len} elements, not a positive multiple of hidden {hidden}")));
    }
    let vocab = w_len / hidden;
    count_i32(OP, "vocab", vocab)?;
    if let Some((i, t)) = targets.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
        return Err(invalid(format!("{OP}: target {i} is token {t}, outside the vocabulary of {vocab}")));
    }
    let chunk = chunk.min(vocab);
    // The workspace e [rows, chunk] and the kernels' int32 counts.
    count_i32(OP, "rows * chunk", mul(OP, "rows * chunk", rows, chunk)?)?;
    if rows.div_ceil(LF_GEMM_TILE_M as usize) > MAX_GRID_Y {
        return Err(invalid(format!("{OP}: {rows} rows are over the grid limit; split the batch")));
    }
    let chunks = (0..vocab).step_by(chunk).map(|v0| (v0, chunk.min(vocab - v0))).collect();
    Ok(CrossEntropyPlan { rows, hidden, vocab, chunk, chunks })
}

/// The fused cross-entropy module loaded on a `CudaDevice` device.
pub struct CudaCrossEntropy {
    logits: CudaFunction,
    chunk: CudaFunction,
    accumulate: CudaFunction,
    finish: CudaFunction,
}

fn gemm_cfg(m: usize, n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(LF_GEMM_TILE_N as usize) as u32, m.div_ceil(LF_GEMM_TILE_M as usize) as u32, 1),
        block_dim: (LF_CE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn row_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (LF_CE_THREADS, 1, 1), shared_mem_bytes: 0 }
}

impl CudaCrossEntropy {
    /// Loads the fused lm_head cross-entropy kernels on the device.
    pub fn new(ops: &CudaDevice) -> Result<Self> {
        let module = ops.load_embedded("cross_entropy", "fused cross-entropy")?;
        let get = |name: &str| module.function(name);
        Ok(CudaCrossEntropy {
            logits: get("lf_ce_logits_f32")?,
            chunk: get("lf_ce_chunk_f32")?,
            accumulate: get("lf_ce_accumulate_f32")?,
            finish: get("lf_ce_finish_f32")?,
        })
    }

    /// `(Σ weights·loss, dh [rows, hidden])` for `h [rows, hidden]` (labelled rows), the lm_head
    /// `w [vocab, hidden]`, `targets` and `weights` (host, one per row), `chunk` vocabulary rows
    /// per step. dh is already weighted, as the CPU twin's.
    pub fn run(
        &self,
        ops: &CudaDevice,
        h: &impl DevicePtr<f32>,
        w: &impl DevicePtr<f32>,
        hidden: usize,
        targets: &[u32],
        weights: &[f32],
        chunk: usize,
    ) -> Result<(f64, CudaSlice<f32>)> {
        const OP: &str = "cross-entropy (fused lm_head)";
        let plan = plan_cross_entropy(h.len(), w.len(), hidden, targets, weights, chunk)?;
        ops.check_context(OP, "h", h)?;
        ops.check_context(OP, "w", w)?;
        let rows = plan.rows;
        let s = &ops.stream;
        let zeros = |n: usize| s.alloc_zeros::<f32>(n).map_err(cuda_err(format!("allocating {n} elements")));
        let targets_d = ops.upload(targets)?;
        let weights_d = ops.upload(weights)?;
        let mut m = ops.upload(&vec![f32::NEG_INFINITY; rows])?;
        let (mut z, mut rescale, mut tlogit, mut loss) = (zeros(rows)?, zeros(rows)?, zeros(rows)?, zeros(rows)?);
        let mut acc = zeros(rows * hidden)?;
        let mut e = zeros(rows * plan.chunk)?;
        let (hp, _h) = h.device_ptr(s);
        let (wp, _w) = w.device_ptr(s);
        let (tp, _t) = targets_d.device_ptr(s);
        for &(v0, c) in &plan.chunks {
            // W_c: rows v0 .. v0 + c of w, in bounds (v0 + c <= vocab, checked by the plan).
            let wc = wp + (v0 * hidden * std::mem::size_of::<f32>()) as u64;
            {
                let (ep, _e) = e.device_ptr_mut(s);
                let gp = LfGemmParams { m: rows as i32, n: c as i32, k: hidden as i32 };
                // SAFETY: lf_ce_logits_f32(const float* h, const float* w_chunk, float* e,
                // LfGemmParams{m, n, k}). h holds rows * hidden f32 and w_chunk points at c * hidden
                // f32 inside w (plan_cross_entropy: w = vocab * hidden, v0 + c <= vocab); e holds
                // rows * chunk >= rows * c f32, owned here; the kernel bounds-checks every tile edge.
                unsafe { launch_kernel(s, &self.logits, "lf_ce_logits_f32", gemm_cfg(rows, c), &[&hp, &wc, &ep, &gp]) }?;
            }
            let cp = LfCeParams { rows: rows as i32, hidden: hidden as i32, v0: v0 as i32, chunk: c as i32 };
            {
                let (ep, _e) = e.device_ptr_mut(s);
                let (mp, _m) = m.device_ptr_mut(s);
                let (zp, _z) = z.device_ptr_mut(s);
                let (rp, _r) = rescale.device_ptr_mut(s);
                let (lp, _l) = tlogit.device_ptr_mut(s);
                // SAFETY: lf_ce_chunk_f32(float* e, const uint32_t* targets, float* m, float* z,
                // float* rescale, float* target_logit, LfCeParams). e holds rows * c f32 as laid out
                // by the logits kernel (row stride c), the per-row buffers rows elements, all owned
                // here; one block per row.
                unsafe { launch_kernel(s, &self.chunk, "lf_ce_chunk_f32", row_cfg(rows), &[&ep, &tp, &mp, &zp, &rp, &lp, &cp]) }?;
            }
            {
                let (ep, _e) = e.device_ptr(s);
                let (ap, _a) = acc.device_ptr_mut(s);
                let (rp, _r) = rescale.device_ptr(s);
                let gp = LfGemmParams { m: rows as i32, n: hidden as i32, k: c as i32 };
                // SAFETY: lf_ce_accumulate_f32(const float* e, const float* w_chunk, float* s,
                // const float* rescale, LfGemmParams{m, n, k}). e: rows * c f32 (row stride c),
                // w_chunk: c * hidden f32 inside w, s: rows * hidden and rescale: rows, owned here;
                // bounds-checked tiles.
                unsafe { launch_kernel(s, &self.accumulate, "lf_ce_accumulate_f32", gemm_cfg(rows, hidden), &[&ep, &wc, &ap, &rp, &gp]) }?;
            }
        }
        {
            let cp = LfCeParams { rows: rows as i32, hidden: hidden as i32, v0: 0, chunk: plan.chunk as i32 };
            let (wtp, _wt) = weights_d.device_ptr(s);
            let (mp, _m) = m.device_ptr(s);
            let (zp, _z) = z.device_ptr(s);
            let (lp, _l) = tlogit.device_ptr(s);
            let (ap, _a) = acc.device_ptr_mut(s);
            let (op, _o) = loss.device_ptr_mut(s);
            // SAFETY: lf_ce_finish_f32(const float* w, const uint32_t* targets, const float* weights,
            // const float* m, const float* z, const float* target_logit, float* s, float* loss,
            // LfCeParams). Every target < vocab (checked), so w[target * hidden ..] is inside w; the
            // per-row buffers hold rows elements and s rows * hidden; one block per row.
            unsafe { launch_kernel(s, &self.finish, "lf_ce_finish_f32", row_cfg(rows), &[&wp, &tp, &wtp, &mp, &zp, &lp, &ap, &op, &cp]) }?;
        }
        let per_row = ops.download(&loss)?;
        let total = per_row.iter().zip(weights).map(|(&l, &w)| w as f64 * l as f64).sum();
        Ok((total, acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_vocabulary() {
        let p = plan_cross_entropy(3 * 8, 10 * 8, 8, &[0, 9, 4], &[1.0, 0.5, 0.25], 4).unwrap();
        assert_eq!((p.rows, p.vocab, p.chunk), (3, 10, 4));
        assert_eq!(p.chunks, vec![(0, 4), (4, 4), (8, 2)]);
        let p = plan_cross_entropy(8, 10 * 8, 8, &[3], &[1.0], 8192).unwrap();
        assert_eq!((p.chunk, p.chunks.clone()), (10, vec![(0, 10)]));
    }

    #[test]
    fn bad_arguments_are_refused() {
        let ok = |h: usize, w: usize, hidden: usize, t: &[u32], wt: &[f32], c: usize| plan_cross_entropy(h, w, hidden, t, wt, c).is_ok();
        assert!(ok(16, 80, 8, &[1, 2], &[1.0, 1.0], 3));
        assert!(!ok(16, 80, 8, &[1, 10], &[1.0, 1.0], 3), "target outside the vocabulary");
        assert!(!ok(16, 80, 8, &[1, 2], &[1.0], 3), "a weight missing");
        assert!(!ok(16, 80, 8, &[1, 2], &[1.0, f32::NAN], 3), "NaN weight");
        assert!(!ok(15, 80, 8, &[1, 2], &[1.0, 1.0], 3), "short h");
        assert!(!ok(16, 81, 8, &[1, 2], &[1.0, 1.0], 3), "w not [vocab, hidden]");
        assert!(!ok(16, 80, 8, &[1, 2], &[1.0, 1.0], 0), "chunk 0");
        assert!(!ok(0, 80, 8, &[], &[], 3), "no rows");
        assert!(!ok(0, 0, 0, &[1], &[1.0], 3), "hidden 0");
    }
}
