//! `TrainBackend` on the device: the trainer's forward and backward ops (`crate::train::TrainModel`
//! runs unchanged on it). f32 activations only (`CudaBackend::new(_, DType::F32)`): the training
//! kernels store and compute in f32, as the CPU reference does, so a CUDA run's loss and
//! gradients are held to the CPU's within f32 rounding (tests/cuda/cuda_train.rs).
//!
//! What each op runs: the fused training kernels (`attention_train`, `ops_backward`,
//! `lora_backward`, `cross_entropy`), the forward ops of `ops.rs` (embedding gather, RoPE), and
//! kernels/train_ops.cu: a general f32 GEMM (`dx = dy · W` through a frozen weight, the LoRA
//! forward `x·Aᵀ` then `+= s·xa·Bᵀ`), NF4 dequantization (an NF4 or bf16 base's `dx` goes through
//! an f32 copy of the weight, one layer's weight at a time, freed after the op), an elementwise
//! product (dropout masks) and the labelled rows' scatter.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

use super::attention_train::AttnTrainDims;
use super::backend::CudaBackend;
use super::device::{cuda_err, CudaDevice};
use super::dtype::DType;
use super::launch::launch_kernel;
use super::lora_backward::LoraBackwardShape;
use super::train_kernels::TrainKernels;
use super::validate::invalid;
use super::validate::{count_i32, RopeDims};
use super::values::{CudaMatrix, CudaRope, CudaTensor, CudaVector, CudaWeight, DenseBuf};
use crate::backend::train::{AdamWStep, TrainBackend};
use crate::types::config::ModelConfig;
use crate::types::layout::SeqSpan;
use crate::types::TrainBatch;
use crate::Result;

/// Side of the GEMM's square tiles (kernels/train_ops.cu `LF_TRAIN_TILE`).
const TILE: usize = 16;
/// Threads per block of the grid-stride and row kernels.
const THREADS: u32 = 256;

/// A training batch for the device: its layout on the host (each kernel wrapper uploads what it
/// reads, checked first) and the head layout.
pub struct CudaTrainBatch {
    ids: Vec<u32>,
    positions: Vec<u32>,
    seqs: Vec<SeqSpan>,
    label_rows: Vec<u32>,
    targets: Vec<u32>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl CudaTrainBatch {
    fn rows(&self) -> usize {
        self.ids.len()
    }

    fn attn_dims(&self) -> AttnTrainDims {
        AttnTrainDims { rows: self.rows(), n_heads: self.n_heads, n_kv_heads: self.n_kv_heads, head_dim: self.head_dim }
    }

    fn rope_dims(&self) -> RopeDims {
        RopeDims { n_q_heads: self.n_heads, n_k_heads: self.n_kv_heads, head_dim: self.head_dim }
    }
}

fn grid_stride(n: usize, dev: &CudaDevice) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, dev.max_blocks as usize) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn same_shape(what: &str, a: &CudaTensor, b: &CudaTensor) -> Result<()> {
    if a.rows != b.rows || a.cols != b.cols {
        return Err(invalid(format!("{what}: [{}, {}] vs [{}, {}]", a.rows, a.cols, b.rows, b.cols)));
    }
    Ok(())
}

impl CudaBackend {
    fn train_kernels(&self) -> Result<&TrainKernels> {
        if let Some(k) = self.train.get() {
            return Ok(k);
        }
        let k = TrainKernels::new(self.device())?;
        Ok(self.train.get_or_init(|| k))
    }

    fn check_f32(&self, what: &str, ts: &[&CudaTensor]) -> Result<()> {
        if self.act_dtype() != DType::F32 {
            return Err(invalid(format!("{what}: training on CUDA needs f32 activations (this backend's are {:?})", self.act_dtype())));
        }
        match ts.iter().find(|t| t.dtype() != DType::F32) {
            Some(t) => Err(invalid(format!("{what}: a {:?} tensor; training tensors are f32", t.dtype()))),
            None => Ok(()),
        }
    }

    fn zeros_f32(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        let mut t = self.new_tensor(DType::F32, rows, cols)?;
        {
            let mut v = t.view_mut::<f32>()?;
            self.device().stream().memset_zeros(&mut v).map_err(cuda_err("zeroing a tensor"))?;
        }
        Ok(t)
    }

    /// A fresh kernel output (a `CudaSlice`) as a tensor `[rows, cols]`.
    fn tensor_of(&self, s: &CudaSlice<f32>, rows: usize, cols: usize) -> Result<CudaTensor> {
        if s.len() != rows * cols {
            return Err(invalid(format!("internal: a kernel output of {} elements is not [{rows}, {cols}]", s.len())));
        }
        let mut t = self.new_tensor(DType::F32, rows, cols)?;
        {
            let mut v = t.view_mut::<f32>()?;
            self.device().stream().memcpy_dtod(s, &mut v).map_err(cuda_err("copying a kernel output"))?;
        }
        Ok(t)
    }

    /// `c [m, n] = beta · c + alpha · a [m, k] · op(b)`, `op(b)` = `b [k, n]`, or `bᵀ` with `b`
    /// stored `[n, k]` when `trans_b`. beta 0 overwrites `c`.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        a: &impl DevicePtr<f32>,
        b: &impl DevicePtr<f32>,
        c: &mut impl DevicePtrMut<f32>,
        (m, n, k): (usize, usize, usize),
        trans_b: bool,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        const OP: &str = "train gemm";
        let (mi, ni, ki) = (count_i32(OP, "m", m)?, count_i32(OP, "n", n)?, count_i32(OP, "k", k)?);
        if a.len() != m * k || b.len() != k * n || c.len() != m * n {
            return Err(invalid(format!("{OP}: a {}, b {}, c {} elements for m {m}, n {n}, k {k}", a.len(), b.len(), c.len())));
        }
        if m.div_ceil(TILE) > 65535 {
            return Err(invalid(format!("{OP}: {m} rows are over the grid limit")));
        }
        if m == 0 || n == 0 {
            return Ok(()); // nothing to write
        }
        let dev = self.device();
        dev.check_context(OP, "a", a)?;
        dev.check_context(OP, "b", b)?;
        dev.check_context(OP, "c", c)?;
        let kern = self.train_kernels()?;
        let cfg =
            LaunchConfig { grid_dim: (n.div_ceil(TILE) as u32, m.div_ceil(TILE) as u32, 1), block_dim: (TILE as u32, TILE as u32, 1), shared_mem_bytes: 0 };
        let s = dev.stream();
        let (ap, _a) = a.device_ptr(s);
        let (bp, _b) = b.device_ptr(s);
        let (cp, _c) = c.device_ptr_mut(s);
        let tb = trans_b as i32;
        // SAFETY: lf_train_gemm_f32(const float* a, const float* b, float* c, int m, int n, int k,
        // int trans_b, float alpha, float beta): a holds m * k f32, b k * n (either layout), c
        // m * n (all checked above, each count within int32); every tile edge is bounds-checked
        // in the kernel; c is a unique borrow, so it aliases neither input.
        unsafe { launch_kernel(s, &kern.gemm, "lf_train_gemm_f32", cfg, &[&ap, &bp, &cp, &mi, &ni, &ki, &tb, &alpha, &beta]) }
    }

    /// An f32 copy of a frozen weight `[rows, cols]` that is not stored as f32 (bf16, NF4).
    fn weight_f32(&self, w: &CudaMatrix) -> Result<CudaSlice<f32>> {
        let dev = self.device();
        let n = w.rows * w.cols;
        let mut out = dev.stream().alloc_zeros::<f32>(n).map_err(cuda_err(format!("allocating {n} f32 for a weight")))?;
        match &w.weight {
            CudaWeight::Dense(DenseBuf::Bf16(ws)) | CudaWeight::Bf16(ws) => dev.cast_into::<bf16, f32>(ws, &mut out)?,
            CudaWeight::Nf4(nw) => {
                let (packed, absmax, code) = nw.parts();
                let shape = nw.shape();
                if shape.n * shape.k != n || packed.len() != n.div_ceil(2) || absmax.len() != n.div_ceil(shape.blocksize) {
                    return Err(invalid(format!("linear_dx: the NF4 weight's buffers do not fit [{}, {}]", w.rows, w.cols)));
                }
                let bs = count_i32("nf4 dequantize", "blocksize", shape.blocksize)?;
                let code_d = dev.upload(&code[..])?;
                let kern = self.train_kernels()?;
                let s = dev.stream();
                let (pp, _p) = packed.device_ptr(s);
                let (ap, _a) = absmax.device_ptr(s);
                let (cp, _c) = code_d.device_ptr(s);
                let (op, _o) = out.device_ptr_mut(s);
                let n64 = n as i64;
                // SAFETY: lf_train_nf4_dequant_f32(const uint8_t* packed, const float* absmax,
                // const float* code, float* out, int64 n, int blocksize): packed holds ceil(n / 2)
                // bytes, absmax ceil(n / blocksize) f32 (checked above), code the 16 levels
                // (uploaded above), out n f32 (allocated here); grid-stride over i < n.
                unsafe { launch_kernel(s, &kern.nf4_dequant, "lf_train_nf4_dequant_f32", grid_stride(n, dev), &[&pp, &ap, &cp, &op, &n64, &bs]) }?;
            }
            CudaWeight::Dense(DenseBuf::F32(_)) => return Err(invalid("internal: an f32 weight needs no copy")),
        }
        Ok(out)
    }
}

impl TrainBackend for CudaBackend {
    type Batch = CudaTrainBatch;

    fn begin_batch(&self, batch: &TrainBatch, c: &ModelConfig) -> Result<CudaTrainBatch> {
        self.check_f32("training batch", &[])?;
        batch.check_against(c)?;
        count_i32("training batch", "rows", batch.ids.len())?;
        self.train_kernels()?;
        Ok(CudaTrainBatch {
            ids: batch.ids.clone(),
            positions: batch.positions.clone(),
            seqs: batch.seqs.clone(),
            label_rows: batch.label_rows.iter().map(|&r| r as u32).collect(),
            targets: batch.targets.clone(),
            n_heads: c.num_heads,
            n_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        })
    }

    fn embed_batch(&self, table: &CudaMatrix, b: &CudaTrainBatch) -> Result<CudaTensor> {
        let CudaWeight::Dense(DenseBuf::F32(ws)) = &table.weight else {
            return Err(invalid("embedding: the table must be dense f32"));
        };
        let mut out = self.new_tensor(DType::F32, b.rows(), table.cols)?;
        {
            let mut ov = out.view_mut::<f32>()?;
            self.device().embedding_into::<f32>(ws, table.cols, &b.ids, &mut ov)?;
        }
        Ok(out)
    }

    fn rope_batch(&self, q: &mut CudaTensor, k: &mut CudaTensor, b: &CudaTrainBatch, rope: &CudaRope, backward: bool) -> Result<()> {
        self.check_f32("rope", &[q, k])?;
        let (mut qv, mut kv) = (q.view_mut::<f32>()?, k.view_mut::<f32>()?);
        if backward {
            self.train_kernels()?.ops.rope_backward(self.device(), &mut qv, &mut kv, &b.positions, &rope.cos, &rope.sin, b.rope_dims())
        } else {
            self.device().rope::<f32>(&mut qv, &mut kv, &b.positions, &rope.cos, &rope.sin, b.rope_dims())
        }
    }

    fn causal_attention(&self, q: &CudaTensor, k: &CudaTensor, v: &CudaTensor, b: &CudaTrainBatch) -> Result<(CudaTensor, CudaTensor)> {
        self.check_f32("attention (training)", &[q, k, v])?;
        let (out, lse) =
            self.train_kernels()?.attention.forward(self.device(), &b.attn_dims(), &b.seqs, &q.view::<f32>()?, &k.view::<f32>()?, &v.view::<f32>()?)?;
        Ok((self.tensor_of(&out, q.rows, q.cols)?, self.tensor_of(&lse, q.rows, b.n_heads)?))
    }

    fn causal_attention_backward(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        out: &CudaTensor,
        lse: &CudaTensor,
        dout: &CudaTensor,
        b: &CudaTrainBatch,
    ) -> Result<(CudaTensor, CudaTensor, CudaTensor)> {
        self.check_f32("attention (training) backward", &[q, k, v, out, lse, dout])?;
        let (dq, dk, dv) = self.train_kernels()?.attention.backward(
            self.device(),
            &b.attn_dims(),
            &b.seqs,
            &q.view::<f32>()?,
            &k.view::<f32>()?,
            &v.view::<f32>()?,
            &out.view::<f32>()?,
            &lse.view::<f32>()?,
            &dout.view::<f32>()?,
        )?;
        Ok((self.tensor_of(&dq, q.rows, q.cols)?, self.tensor_of(&dk, k.rows, k.cols)?, self.tensor_of(&dv, v.rows, v.cols)?))
    }

    fn linear_dx(&self, dy: &CudaTensor, w: &CudaMatrix, dx: &mut CudaTensor, accumulate: bool) -> Result<()> {
        self.check_f32("linear_dx", &[dy, dx])?;
        if dy.cols != w.rows || dx.cols != w.cols || dx.rows != dy.rows {
            return Err(invalid(format!("linear_dx: dy [{}, {}] · W [{}, {}] -> dx [{}, {}]", dy.rows, dy.cols, w.rows, w.cols, dx.rows, dx.cols)));
        }
        let dims = (dy.rows, w.cols, w.rows);
        let beta = if accumulate { 1.0 } else { 0.0 };
        let (dyv, mut dxv) = (dy.view::<f32>()?, dx.view_mut::<f32>()?);
        match &w.weight {
            CudaWeight::Dense(DenseBuf::F32(ws)) => self.gemm(&dyv, ws, &mut dxv, dims, false, 1.0, beta),
            _ => self.gemm(&dyv, &self.weight_f32(w)?, &mut dxv, dims, false, 1.0, beta),
        }
    }

    fn rms_norm_backward(&self, x: &CudaTensor, w: &CudaVector, eps: f32, dy: &CudaTensor, dx: &mut CudaTensor, accumulate: bool) -> Result<()> {
        self.check_f32("rms_norm_backward", &[x, dy, dx])?;
        same_shape("rms_norm_backward: dy", dy, x)?;
        same_shape("rms_norm_backward: dx", dx, x)?;
        let (rows, cols) = (x.rows, x.cols);
        self.train_kernels()?.ops.rms_norm_backward(
            self.device(),
            &x.view::<f32>()?,
            &w.f32,
            &dy.view::<f32>()?,
            &mut dx.view_mut::<f32>()?,
            rows,
            cols,
            eps,
            accumulate,
        )
    }

    fn silu_mul_backward(&self, gate: &CudaTensor, up: &CudaTensor, dout: &CudaTensor) -> Result<(CudaTensor, CudaTensor)> {
        self.check_f32("silu_mul_backward", &[gate, up, dout])?;
        same_shape("silu_mul_backward: up", up, gate)?;
        same_shape("silu_mul_backward: dout", dout, gate)?;
        let mut dg = self.new_tensor(DType::F32, gate.rows, gate.cols)?;
        let mut du = self.new_tensor(DType::F32, gate.rows, gate.cols)?;
        self.train_kernels()?.ops.silu_mul_backward(
            self.device(),
            &gate.view::<f32>()?,
            &up.view::<f32>()?,
            &dout.view::<f32>()?,
            &mut dg.view_mut::<f32>()?,
            &mut du.view_mut::<f32>()?,
        )?;
        Ok((dg, du))
    }

    fn lora_forward(&self, y: &mut CudaTensor, x: &CudaTensor, a: &CudaTensor, b: &CudaTensor, scale: f32) -> Result<CudaTensor> {
        self.check_f32("lora (training)", &[y, x, a, b])?;
        check_lora(x, y, a, b)?;
        let (t, r) = (x.rows, a.rows);
        let mut xa = self.new_tensor(DType::F32, t, r)?;
        // xa [t, r] = x [t, in] · Aᵀ (A [r, in]); y [t, out] += s · xa · Bᵀ (B [out, r]).
        self.gemm(&x.view::<f32>()?, &a.view::<f32>()?, &mut xa.view_mut::<f32>()?, (t, r, x.cols), true, 1.0, 0.0)?;
        let out_f = y.cols;
        self.gemm(&xa.view::<f32>()?, &b.view::<f32>()?, &mut y.view_mut::<f32>()?, (t, out_f, r), true, scale, 1.0)?;
        Ok(xa)
    }

    fn lora_backward(
        &self,
        x: &CudaTensor,
        xa: &CudaTensor,
        dy: &CudaTensor,
        a: &CudaTensor,
        b: &CudaTensor,
        scale: f32,
        da: &mut CudaTensor,
        db: &mut CudaTensor,
        dx: &mut CudaTensor,
    ) -> Result<()> {
        self.check_f32("lora backward", &[x, xa, dy, a, b, da, db, dx])?;
        check_lora(x, dy, a, b)?;
        same_shape("lora_backward: dA", da, a)?;
        same_shape("lora_backward: dB", db, b)?;
        same_shape("lora_backward: dx", dx, x)?;
        let shape = LoraBackwardShape { rows: x.rows, d_in: x.cols, d_out: dy.cols, rank: a.rows, scale };
        let mut dxv = dx.view_mut::<f32>()?;
        self.train_kernels()?.lora.run(
            self.device(),
            &shape,
            &x.view::<f32>()?,
            &xa.view::<f32>()?,
            &dy.view::<f32>()?,
            &a.view::<f32>()?,
            &b.view::<f32>()?,
            &mut da.view_mut::<f32>()?,
            &mut db.view_mut::<f32>()?,
            Some(&mut dxv),
        )
    }

    fn mul(&self, x: &CudaTensor, mask: &CudaTensor) -> Result<CudaTensor> {
        self.check_f32("mul", &[x, mask])?;
        same_shape("mul", mask, x)?;
        let n = x.rows * x.cols;
        let mut out = self.new_tensor(DType::F32, x.rows, x.cols)?;
        if n == 0 {
            return Ok(out);
        }
        let dev = self.device();
        let kern = self.train_kernels()?;
        {
            let (xv, mv, mut ov) = (x.view::<f32>()?, mask.view::<f32>()?, out.view_mut::<f32>()?);
            let s = dev.stream();
            let (xp, _x) = xv.device_ptr(s);
            let (mp, _m) = mv.device_ptr(s);
            let (op, _o) = ov.device_ptr_mut(s);
            let n64 = n as i64;
            // SAFETY: lf_train_mul_f32(const float* x, const float* y, float* out, int64 n): x,
            // mask and out are three distinct tensors of n f32 each (shapes checked above);
            // grid-stride over i < n.
            unsafe { launch_kernel(s, &kern.mul, "lf_train_mul_f32", grid_stride(n, dev), &[&xp, &mp, &op, &n64]) }?;
        }
        Ok(out)
    }

    fn gather_label_rows(&self, x: &CudaTensor, b: &CudaTrainBatch) -> Result<CudaTensor> {
        self.check_f32("gather_label_rows", &[x])?;
        if x.rows != b.rows() {
            return Err(invalid(format!("gather_label_rows: {} rows for a batch of {}", x.rows, b.rows())));
        }
        let mut out = self.new_tensor(DType::F32, b.label_rows.len(), x.cols)?;
        if !b.label_rows.is_empty() {
            // The gather of embedding rows, with x as the table and the labelled rows as ids.
            let mut ov = out.view_mut::<f32>()?;
            self.device().embedding_into::<f32>(&x.view::<f32>()?, x.cols, &b.label_rows, &mut ov)?;
        }
        Ok(out)
    }

    fn scatter_label_rows(&self, d: &CudaTensor, b: &CudaTrainBatch) -> Result<CudaTensor> {
        self.check_f32("scatter_label_rows", &[d])?;
        if d.rows != b.label_rows.len() {
            return Err(invalid(format!("scatter_label_rows: {} rows for {} labelled rows", d.rows, b.label_rows.len())));
        }
        let mut out = self.zeros_f32(b.rows(), d.cols)?;
        if d.rows == 0 || d.cols == 0 {
            return Ok(out);
        }
        let width = count_i32("scatter_label_rows", "width", d.cols)?;
        let rows = count_i32("scatter_label_rows", "rows", d.rows)?;
        let dev = self.device();
        let kern = self.train_kernels()?;
        let idx = dev.upload(&b.label_rows)?;
        {
            let (dv, mut ov) = (d.view::<f32>()?, out.view_mut::<f32>()?);
            let s = dev.stream();
            let (dp, _d) = dv.device_ptr(s);
            let (ip, _i) = idx.device_ptr(s);
            let (op, _o) = ov.device_ptr_mut(s);
            let cfg = LaunchConfig { grid_dim: (d.rows as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: lf_train_scatter_rows_f32(const float* d, const uint32_t* idx, float* out,
            // int rows, int width): d holds rows * width f32, idx rows distinct increasing
            // indices each < the batch's rows (begin_batch), out [batch rows, width] (allocated
            // above); one block per row of d.
            unsafe { launch_kernel(s, &kern.scatter_rows, "lf_train_scatter_rows_f32", cfg, &[&dp, &ip, &op, &rows, &width]) }?;
        }
        Ok(out)
    }

    fn cross_entropy(&self, h: &CudaTensor, table: &CudaMatrix, b: &CudaTrainBatch, weight: f32, chunk: usize) -> Result<(f64, CudaTensor)> {
        self.check_f32("cross_entropy", &[h])?;
        let CudaWeight::Dense(DenseBuf::F32(ws)) = &table.weight else {
            return Err(invalid("cross_entropy: the lm_head must be dense f32"));
        };
        if h.rows != b.targets.len() || h.cols != table.cols {
            return Err(invalid(format!(
                "cross_entropy: h [{}, {}] for {} targets and a [{}, {}] lm_head",
                h.rows,
                h.cols,
                b.targets.len(),
                table.rows,
                table.cols
            )));
        }
        let weights = vec![weight; b.targets.len()];
        let (loss, dh) = self.train_kernels()?.cross_entropy.run(self.device(), &h.view::<f32>()?, ws, h.cols, &b.targets, &weights, chunk)?;
        Ok((loss, self.tensor_of(&dh, h.rows, h.cols)?))
    }

    fn adamw_step(&self, p: &mut CudaTensor, g: &CudaTensor, m: &mut CudaTensor, v: &mut CudaTensor, step: &AdamWStep) -> Result<()> {
        self.check_f32("adamw", &[p, g, m, v])?;
        same_shape("adamw: gradient", g, p)?;
        same_shape("adamw: first moment", m, p)?;
        same_shape("adamw: second moment", v, p)?;
        let n = p.rows * p.cols;
        if n == 0 {
            return Ok(());
        }
        let dev = self.device();
        let kern = self.train_kernels()?;
        let (mut pv, gv, mut mv, mut vv) = (p.view_mut::<f32>()?, g.view::<f32>()?, m.view_mut::<f32>()?, v.view_mut::<f32>()?);
        let s = dev.stream();
        let (pp, _p) = pv.device_ptr_mut(s);
        let (gp, _g) = gv.device_ptr(s);
        let (mp, _m) = mv.device_ptr_mut(s);
        let (vp, _v) = vv.device_ptr_mut(s);
        let n64 = n as i64;
        let a = step;
        // SAFETY: lf_train_adamw_f32(float* p, const float* g, float* m, float* v, int64 n, float
        // beta1, beta2, eps, step_size, bc2_sqrt, decay, grad_scale): p, g, m, v are four distinct
        // tensors of n f32 each (shapes checked above; p, m, v mutable borrows); grid-stride
        // over i < n.
        unsafe {
            launch_kernel(
                s,
                &kern.adamw,
                "lf_train_adamw_f32",
                grid_stride(n, dev),
                &[&pp, &gp, &mp, &vp, &n64, &a.beta1, &a.beta2, &a.eps, &a.step_size, &a.bc2_sqrt, &a.decay, &a.grad_scale],
            )
        }
    }

    fn sum_squares(&self, x: &CudaTensor) -> Result<f64> {
        self.check_f32("sum_squares", &[x])?;
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(0.0);
        }
        let dev = self.device();
        let kern = self.train_kernels()?;
        let cfg = grid_stride(n, dev);
        let blocks = cfg.grid_dim.0 as usize;
        let mut partial = dev.stream().alloc_zeros::<f64>(blocks).map_err(cuda_err("allocating the partial sums"))?;
        {
            let xv = x.view::<f32>()?;
            let s = dev.stream();
            let (xp, _x) = xv.device_ptr(s);
            let (pp, _p) = partial.device_ptr_mut(s);
            let n64 = n as i64;
            // SAFETY: lf_train_sum_squares_f32(const float* x, double* partial, int64 n): x holds n
            // f32, partial one f64 per block of this grid (allocated above); blocks of 256
            // threads (the kernel's shared array), grid-stride over i < n.
            unsafe { launch_kernel(s, &kern.sum_squares, "lf_train_sum_squares_f32", cfg, &[&xp, &pp, &n64]) }?;
        }
        Ok(dev.download(&partial)?.iter().sum())
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        self.zeros_f32(rows, cols)
    }

    fn fill_zero(&self, x: &mut CudaTensor) -> Result<()> {
        self.check_f32("fill_zero", &[x])?;
        let mut v = x.view_mut::<f32>()?;
        self.device().stream().memset_zeros(&mut v).map_err(cuda_err("zeroing a tensor"))
    }

    fn copy(&self, x: &CudaTensor) -> Result<CudaTensor> {
        self.copy_tensor(x)
    }
}

/// `x [T, in]`, `y [T, out]`, `A [r, in]`, `B [out, r]`.
fn check_lora(x: &CudaTensor, y: &CudaTensor, a: &CudaTensor, b: &CudaTensor) -> Result<()> {
    if x.rows != y.rows || a.cols != x.cols || b.rows != y.cols || b.cols != a.rows || a.rows == 0 {
        return Err(invalid(format!(
            "lora: A [{}, {}] and B [{}, {}] do not fit x [{}, {}] -> y [{}, {}]",
            a.rows, a.cols, b.rows, b.cols, x.rows, x.cols, y.rows, y.cols
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn backend_is_a_train_backend() {
        fn assert_train<B: crate::backend::train::TrainBackend>() {}
        assert_train::<super::CudaBackend>();
    }
}
