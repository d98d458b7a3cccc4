//! Typed, checked launches of the `kernels/ops.cu` kernels. Each op validates every argument in
//! Rust (`validate.rs`) before the unsafe launch, so a kernel only ever sees the shapes its C
//! contract (csrc/ops.h) allows. Buffers are anything cudarc can hand a device pointer for
//! (`CudaSlice`, `CudaView`, `CudaViewMut`) on this device's context; a view that is not
//! 16-byte aligned is fine (the kernels then take their scalar path).
//!
//! Ops are enqueued on `CudaOps::stream()` and return before they run; a fault inside a kernel
//! surfaces at the next synchronisation (`synchronize`, `download`).
//!
//! `T` is the storage type (f32 or bf16, `CudaElem`); RoPE tables are f32 for both.

use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use crate::Result;

use super::device::{cuda_err, CudaOps};
use super::dtype::CudaElem;
use super::{launch, validate, validate::RopeDims};

impl CudaOps {
    /// Enqueues `f` with the given argument list. The argument list must match the kernel's C
    /// signature exactly; each op below builds it from validated parameters.
    ///
    /// # Safety
    /// `args` must be, in order, values whose types and meaning match `f`'s parameters
    /// (device pointers as `CUdeviceptr`, parameter structs by value), every pointer valid on
    /// this context for the extent the kernel touches given the parameters.
    unsafe fn enqueue(&self, f: &CudaFunction, name: &str, cfg: LaunchConfig, args: &[&dyn KernelArg]) -> Result<()> {
        let mut b = self.stream.launch_builder(f);
        for a in args {
            a.push(&mut b);
        }
        // SAFETY: forwarded from this function's contract.
        unsafe { b.launch(cfg) }.map_err(cuda_err(format!("launching {name}")))?;
        Ok(())
    }

    /// RMSNorm into `out`: `out[r] = w * (x[r] * rsqrt(mean(x[r]^2) + eps))`.
    /// x, out: `[rows, cols]`; w: `[cols]`.
    pub fn rms_norm_into<T: CudaElem>(
        &self,
        x: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        out: &mut impl DevicePtrMut<T>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        let p = validate::rms_norm(x.len(), w.len(), out.len(), rows, cols, eps)?;
        self.check_context("rms_norm", "x", x)?;
        self.check_context("rms_norm", "w", w)?;
        self.check_context("rms_norm", "out", out)?;
        let cfg = launch::rms_norm(&p, T::DTYPE);
        let (xp, _x) = x.device_ptr(&self.stream);
        let (wp, _w) = w.device_ptr(&self.stream);
        let (op, _o) = out.device_ptr_mut(&self.stream);
        // SAFETY: lf_rms_norm_<T>(const T* x, const T* w, T* out, LfRmsNormParams). `validate`
        // checked x and out hold rows * cols elements of T and w holds cols, the counts are
        // positive int32 and the grid is one block per row; the three buffers are on this
        // context, and `out` is borrowed mutably so it aliases neither input.
        unsafe { self.enqueue(self.kernels.rms_norm.get(T::DTYPE), "lf_rms_norm", cfg, &[&xp, &wp, &op, &p]) }
    }

    /// RMSNorm into a new buffer `[rows, cols]`.
    pub fn rms_norm<T: CudaElem>(
        &self,
        x: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<CudaSlice<T>> {
        validate::rms_norm(x.len(), w.len(), x.len(), rows, cols, eps)?;
        let mut out = self.alloc_for_output(x.len())?;
        self.rms_norm_into(x, w, &mut out, rows, cols, eps)?;
        Ok(out)
    }

    /// Rotary embedding (rotate-half, HF layout) in place on q and k, token r at position
    /// `positions[r]`. q: `[rows, n_q_heads * head_dim]`; k: `[rows, n_k_heads * head_dim]`;
    /// positions: `[rows]` (host; copied to the device); cos, sin: `[max_pos, head_dim / 2]` f32,
    /// e.g. from `cpu::ops::rope_tables`.
    pub fn rope<T: CudaElem>(
        &self,
        q: &mut impl DevicePtrMut<T>,
        k: &mut impl DevicePtrMut<T>,
        positions: &[u32],
        cos: &impl DevicePtr<f32>,
        sin: &impl DevicePtr<f32>,
        dims: RopeDims,
    ) -> Result<()> {
        let p = validate::rope(q.len(), k.len(), positions, cos.len(), sin.len(), dims)?;
        self.check_context("rope", "q", q)?;
        self.check_context("rope", "k", k)?;
        self.check_context("rope", "cos", cos)?;
        self.check_context("rope", "sin", sin)?;
        let pos = self.upload(positions)?;
        let cfg = launch::rope(&p, T::DTYPE);
        let (qp, _q) = q.device_ptr_mut(&self.stream);
        let (kp, _k) = k.device_ptr_mut(&self.stream);
        let (pp, _p) = pos.device_ptr(&self.stream);
        let (cp, _c) = cos.device_ptr(&self.stream);
        let (sp, _s) = sin.device_ptr(&self.stream);
        // SAFETY: lf_rope_<T>(T* q, T* k, const uint32_t* positions, const float* cos,
        // const float* sin, LfRopeParams). `validate` checked q and k hold rows * heads * head_dim
        // elements, head_dim is even, cos and sin hold max_pos * head_dim / 2 f32 and every
        // position (uploaded just above, rows of them, stream-ordered before the kernel) is
        // < max_pos; q and k are distinct mutable borrows, so they do not alias.
        unsafe { self.enqueue(self.kernels.rope.get(T::DTYPE), "lf_rope", cfg, &[&qp, &kp, &pp, &cp, &sp, &p]) }
    }

    /// SwiGLU gate into `out`: `out = silu(gate) * up`. gate, up, out: `[n]`.
    pub fn silu_mul_into<T: CudaElem>(
        &self,
        gate: &impl DevicePtr<T>,
        up: &impl DevicePtr<T>,
        out: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let p = validate::silu_mul(gate.len(), up.len(), out.len())?;
        self.check_context("silu_mul", "gate", gate)?;
        self.check_context("silu_mul", "up", up)?;
        self.check_context("silu_mul", "out", out)?;
        let cfg = launch::elementwise(&p, T::DTYPE, self.max_blocks);
        let (gp, _g) = gate.device_ptr(&self.stream);
        let (up_, _u) = up.device_ptr(&self.stream);
        let (op, _o) = out.device_ptr_mut(&self.stream);
        // SAFETY: lf_silu_mul_<T>(const T* gate, const T* up, T* out, LfElementwiseParams).
        // `validate` checked all three hold n > 0 elements of T; the grid-stride loop stays below
        // n; out is a mutable borrow, so it aliases neither input.
        unsafe { self.enqueue(self.kernels.silu_mul.get(T::DTYPE), "lf_silu_mul", cfg, &[&gp, &up_, &op, &p]) }
    }

    /// SwiGLU gate into a new buffer `[n]`.
    pub fn silu_mul<T: CudaElem>(&self, gate: &impl DevicePtr<T>, up: &impl DevicePtr<T>) -> Result<CudaSlice<T>> {
        validate::silu_mul(gate.len(), up.len(), gate.len())?;
        let mut out = self.alloc_for_output(gate.len())?;
        self.silu_mul_into(gate, up, &mut out)?;
        Ok(out)
    }

    /// Residual add in place: `x += y`. x, y: `[n]`.
    pub fn add_assign<T: CudaElem>(&self, x: &mut impl DevicePtrMut<T>, y: &impl DevicePtr<T>) -> Result<()> {
        let p = validate::add_assign(x.len(), y.len())?;
        self.check_context("add_assign", "x", x)?;
        self.check_context("add_assign", "y", y)?;
        let cfg = launch::elementwise(&p, T::DTYPE, self.max_blocks);
        let (xp, _x) = x.device_ptr_mut(&self.stream);
        let (yp, _y) = y.device_ptr(&self.stream);
        // SAFETY: lf_add_<T>(T* x, const T* y, LfElementwiseParams). `validate` checked both hold
        // n > 0 elements of T; x is a mutable borrow, so it does not alias y.
        unsafe { self.enqueue(self.kernels.add.get(T::DTYPE), "lf_add", cfg, &[&xp, &yp, &p]) }
    }

    /// Embedding gather into `out`: `out[i] = table[ids[i]]`. table: `[vocab, hidden]`;
    /// ids: `[n]` (host; copied to the device), each < vocab; out: `[n, hidden]`.
    pub fn embedding_into<T: CudaElem>(
        &self,
        table: &impl DevicePtr<T>,
        hidden: usize,
        ids: &[u32],
        out: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let p = validate::embedding(table.len(), hidden, ids, out.len())?;
        self.check_context("embedding", "table", table)?;
        self.check_context("embedding", "out", out)?;
        let dev_ids = self.upload(ids)?;
        let cfg = launch::embedding(&p, T::DTYPE);
        let (tp, _t) = table.device_ptr(&self.stream);
        let (ip, _i) = dev_ids.device_ptr(&self.stream);
        let (op, _o) = out.device_ptr_mut(&self.stream);
        // SAFETY: lf_embedding_<T>(const T* table, const uint32_t* ids, T* out,
        // LfEmbeddingParams). `validate` checked table holds vocab * hidden elements, every id
        // (uploaded just above, n_ids of them, stream-ordered before the kernel) is < vocab and
        // out holds n_ids * hidden; out is a mutable borrow, so it does not alias the table.
        unsafe { self.enqueue(self.kernels.embedding.get(T::DTYPE), "lf_embedding", cfg, &[&tp, &ip, &op, &p]) }
    }

    /// Embedding gather into a new buffer `[ids.len(), hidden]`.
    pub fn embedding<T: CudaElem>(
        &self,
        table: &impl DevicePtr<T>,
        hidden: usize,
        ids: &[u32],
    ) -> Result<CudaSlice<T>> {
        let p = validate::embedding(table.len(), hidden, ids, ids.len().saturating_mul(hidden))?;
        let mut out = self.alloc_for_output(p.n_ids as usize * hidden)?;
        self.embedding_into(table, hidden, ids, &mut out)?;
        Ok(out)
    }
}

/// A value pushed by value into a kernel's argument list (a device pointer or a params struct).
trait KernelArg {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
}

impl<T: cudarc::driver::DeviceRepr> KernelArg for T {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        b.arg(self);
    }
}
