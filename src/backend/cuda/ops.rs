//! Typed, checked launches of the `kernels/ops.cu` kernels. Each op validates every argument in
//! Rust (`validate.rs`) before the unsafe launch, so a kernel only ever sees the shapes its C
//! contract (csrc/ops.h) allows. Buffers are anything cudarc can hand a device pointer for
//! (`CudaSlice`, `CudaView`, `CudaViewMut`) on this device's context; a view that is not
//! 16-byte aligned is fine (the kernels then take their scalar path).
//!
//! Ops are enqueued on `CudaDevice::stream()` and return before they run; a fault inside a kernel
//! surfaces at the next synchronisation (`synchronize`, `download`).
//!
//! `T` is the storage type (f32 or bf16, `CudaElem`); RoPE tables are f32 for both.

use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, DeviceSlice, LaunchConfig};

use crate::Result;

use super::ffi::{LfBiasParams, LfElementwiseParams, LfEmbeddingParams, LfRmsNormParams, LfRopeParams};

use super::device::CudaDevice;
use super::dtype::{CudaElem, DType};
use super::launch::{launch_kernel, KernelArg};
use super::{launch, validate, validate::RopeDims};

impl CudaDevice {
    /// Enqueues `f` on this device's stream (`launch::launch_kernel`).
    ///
    /// # Safety
    /// As `launch_kernel`: `args` match `f`'s C parameters, every pointer valid on this context
    /// for the extent the kernel touches.
    unsafe fn enqueue(&self, f: &CudaFunction, name: &str, cfg: LaunchConfig, args: &[&dyn KernelArg]) -> Result<()> {
        // SAFETY: forwarded from this function's contract.
        unsafe { launch_kernel(&self.stream, f, name, cfg, args) }
    }

    /// The checks every RMSNorm launch makes before it runs: the shapes (`validate::rms_norm`)
    /// and that the three buffers live on this device's context.
    fn rms_norm_params<X, W, O>(
        &self,
        x: &impl DeviceSlice<X>,
        w: &impl DeviceSlice<W>,
        out: &impl DeviceSlice<O>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<LfRmsNormParams> {
        let p = validate::rms_norm(x.len(), w.len(), out.len(), rows, cols, eps)?;
        self.check_context("rms_norm", "x", x)?;
        self.check_context("rms_norm", "w", w)?;
        self.check_context("rms_norm", "out", out)?;
        Ok(p)
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
        let p = self.rms_norm_params(x, w, out, rows, cols, eps)?;
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
    pub fn rms_norm<T: CudaElem>(&self, x: &impl DevicePtr<T>, w: &impl DevicePtr<T>, rows: usize, cols: usize, eps: f32) -> Result<CudaSlice<T>> {
        validate::rms_norm(x.len(), w.len(), x.len(), rows, cols, eps)?;
        let mut out = self.alloc_for_output(x.len())?;
        self.rms_norm_into(x, w, &mut out, rows, cols, eps)?;
        Ok(out)
    }

    /// Rotary embedding (rotate-half, HF layout) in place on q and k, token r at position
    /// `positions[r]`. q: `[rows, n_q_heads * head_dim]`; k: `[rows, n_k_heads * head_dim]`;
    /// positions: `[rows]` (host; copied to the device); cos, sin: `[max_pos, head_dim / 2]` f32,
    /// e.g. from `backend::numeric::rope_tables`.
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
        let pos = self.upload(positions)?;
        // SAFETY: `p` is validate::rope over exactly the positions uploaded into `pos`.
        unsafe { self.rope_planned(q, k, &pos, cos, sin, &p) }
    }

    /// `rope` with the positions already on the device (a forward step's metadata).
    ///
    /// # Safety
    /// `p` must be what `validate::rope` returned for `q.len()`, `k.len()`, the `p.rows` u32
    /// positions `pos` holds (each checked < max_pos), `cos.len()`, `sin.len()` and the dims.
    pub unsafe fn rope_planned<T: CudaElem>(
        &self,
        q: &mut impl DevicePtrMut<T>,
        k: &mut impl DevicePtrMut<T>,
        pos: &impl DevicePtr<u32>,
        cos: &impl DevicePtr<f32>,
        sin: &impl DevicePtr<f32>,
        p: &LfRopeParams,
    ) -> Result<()> {
        self.check_context("rope", "q", q)?;
        self.check_context("rope", "k", k)?;
        self.check_context("rope", "positions", pos)?;
        self.check_context("rope", "cos", cos)?;
        self.check_context("rope", "sin", sin)?;
        if pos.len() < p.rows as usize {
            return Err(crate::Error::InvalidArgument(format!("rope: {} positions for {} rows", pos.len(), p.rows)));
        }
        let cfg = launch::rope(p, T::DTYPE);
        let (qp, _q) = q.device_ptr_mut(&self.stream);
        let (kp, _k) = k.device_ptr_mut(&self.stream);
        let (pp, _p) = pos.device_ptr(&self.stream);
        let (cp, _c) = cos.device_ptr(&self.stream);
        let (sp, _s) = sin.device_ptr(&self.stream);
        // SAFETY: lf_rope_<T>(T* q, T* k, const uint32_t* positions, const float* cos,
        // const float* sin, LfRopeParams). By this function's contract `validate` checked q and k
        // hold rows * heads * head_dim elements, head_dim is even, cos and sin hold max_pos *
        // head_dim / 2 f32 and every position (rows of them, on the device, stream-ordered before
        // the kernel) is < max_pos; q and k are distinct mutable borrows, so they do not alias.
        unsafe { self.enqueue(self.kernels.rope.get(T::DTYPE), "lf_rope", cfg, &[&qp, &kp, &pp, &cp, &sp, p]) }
    }

    /// SwiGLU gate into `out`: `out = silu(gate) * up`. gate, up, out: `[n]`.
    pub fn silu_mul_into<T: CudaElem>(&self, gate: &impl DevicePtr<T>, up: &impl DevicePtr<T>, out: &mut impl DevicePtrMut<T>) -> Result<()> {
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
    pub fn embedding_into<T: CudaElem>(&self, table: &impl DevicePtr<T>, hidden: usize, ids: &[u32], out: &mut impl DevicePtrMut<T>) -> Result<()> {
        let p = validate::embedding(table.len(), hidden, ids, out.len())?;
        let dev_ids = self.upload(ids)?;
        // SAFETY: `p` is validate::embedding over exactly the ids uploaded into `dev_ids`.
        unsafe { self.embedding_planned(table, &dev_ids, out, &p) }
    }

    /// `embedding_into` with the ids already on the device (a forward step's metadata).
    ///
    /// # Safety
    /// `p` must be what `validate::embedding` returned for `table.len()`, the hidden size, the
    /// `p.n_ids` ids `ids` holds (each checked < vocab) and `out.len()`.
    pub unsafe fn embedding_planned<T: CudaElem>(
        &self,
        table: &impl DevicePtr<T>,
        ids: &impl DevicePtr<u32>,
        out: &mut impl DevicePtrMut<T>,
        p: &LfEmbeddingParams,
    ) -> Result<()> {
        self.check_context("embedding", "table", table)?;
        self.check_context("embedding", "ids", ids)?;
        self.check_context("embedding", "out", out)?;
        if ids.len() < p.n_ids as usize {
            return Err(crate::Error::InvalidArgument(format!("embedding: {} ids on the device for {}", ids.len(), p.n_ids)));
        }
        let cfg = launch::embedding(p, T::DTYPE);
        let (tp, _t) = table.device_ptr(&self.stream);
        let (ip, _i) = ids.device_ptr(&self.stream);
        let (op, _o) = out.device_ptr_mut(&self.stream);
        // SAFETY: lf_embedding_<T>(const T* table, const uint32_t* ids, T* out,
        // LfEmbeddingParams). By this function's contract `validate` checked table holds vocab *
        // hidden elements, every id (n_ids of them, on the device, stream-ordered before the
        // kernel) is < vocab and out holds n_ids * hidden; out is a mutable borrow, so it does not
        // alias the table.
        unsafe { self.enqueue(self.kernels.embedding.get(T::DTYPE), "lf_embedding", cfg, &[&tp, &ip, &op, p]) }
    }

    /// Embedding gather into a new buffer `[ids.len(), hidden]`.
    pub fn embedding<T: CudaElem>(&self, table: &impl DevicePtr<T>, hidden: usize, ids: &[u32]) -> Result<CudaSlice<T>> {
        let p = validate::embedding(table.len(), hidden, ids, ids.len().saturating_mul(hidden))?;
        let mut out = self.alloc_for_output(p.n_ids as usize * hidden)?;
        self.embedding_into(table, hidden, ids, &mut out)?;
        Ok(out)
    }
}

impl CudaDevice {
    /// `out = in` converted between f32 and bf16 (f32 -> bf16 rounds to nearest even, bf16 -> f32
    /// is exact). in, out: `[n]`.
    pub fn cast_into<TI: CudaElem, TO: CudaElem>(&self, input: &impl DevicePtr<TI>, out: &mut impl DevicePtrMut<TO>) -> Result<()> {
        let p = validate::elementwise("cast", &[("in", input.len()), ("out", out.len())])?;
        self.check_context("cast", "in", input)?;
        self.check_context("cast", "out", out)?;
        let f = match (TI::DTYPE, TO::DTYPE) {
            (DType::F32, DType::Bf16) => &self.kernels.cast_to_bf16,
            (DType::Bf16, DType::F32) => &self.kernels.cast_to_f32,
            (a, b) => return Err(crate::Error::InvalidArgument(format!("cast: {a:?} to {b:?} is a copy, not a cast"))),
        };
        let cfg = launch::elementwise(&p, DType::F32, self.max_blocks);
        let (ip, _i) = input.device_ptr(&self.stream);
        let (op, _o) = out.device_ptr_mut(&self.stream);
        // SAFETY: lf_cast_<from>_<to>(const TI* in, TO* out, LfElementwiseParams): `validate`
        // checked both hold n > 0 elements; the kernel is the one for (TI, TO); out is a mutable
        // borrow, so it does not alias in.
        unsafe { self.enqueue(f, "lf_cast", cfg, &[&ip, &op, &p]) }
    }
}

impl CudaDevice {
    /// RMSNorm of an f32 residual stream into bf16: `out = bf16(w * (x * rsqrt(mean(x^2) + eps)))`.
    /// x: `[rows, cols]` f32; w: `[cols]` f32; out: `[rows, cols]` bf16.
    pub fn rms_norm_f32_to_bf16(
        &self,
        x: &impl DevicePtr<f32>,
        w: &impl DevicePtr<f32>,
        out: &mut impl DevicePtrMut<half::bf16>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        let p = self.rms_norm_params(x, w, out, rows, cols, eps)?;
        let cfg = launch::rms_norm(&p, DType::F32);
        let (xp, _x) = x.device_ptr(&self.stream);
        let (wp, _w) = w.device_ptr(&self.stream);
        let (op, _o) = out.device_ptr_mut(&self.stream);
        // SAFETY: lf_rms_norm_f32_bf16(const float* x, const float* w, bf16* out, LfRmsNormParams):
        // `validate` checked x and out hold rows * cols elements and w cols, counts positive int32,
        // one block per row; out is a mutable borrow of another type, so it aliases neither input.
        unsafe { self.enqueue(&self.kernels.rms_norm_f32_bf16, "lf_rms_norm_f32_bf16", cfg, &[&xp, &wp, &op, &p]) }
    }

    /// `x += y` with x f32 (a residual stream) and y bf16. x, y: `[n]`.
    pub fn add_bf16_into_f32(&self, x: &mut impl DevicePtrMut<f32>, y: &impl DevicePtr<half::bf16>) -> Result<()> {
        let p = validate::add_assign(x.len(), y.len())?;
        self.check_context("add_assign", "x", x)?;
        self.check_context("add_assign", "y", y)?;
        let cfg = launch::elementwise(&p, DType::F32, self.max_blocks);
        let (xp, _x) = x.device_ptr_mut(&self.stream);
        let (yp, _y) = y.device_ptr(&self.stream);
        // SAFETY: lf_add_f32_bf16(float* x, const bf16* y, LfElementwiseParams): `validate` checked
        // both hold n > 0 elements; x is a mutable borrow, so it does not alias y.
        unsafe { self.enqueue(&self.kernels.add_f32_bf16, "lf_add_f32_bf16", cfg, &[&xp, &yp, &p]) }
    }

    /// `y[r, c] += bias[c]`. y: `[rows, cols]` (`rows * cols` = y.len()); bias: `[cols]` f32.
    pub fn bias_add<T: CudaElem>(&self, y: &mut impl DevicePtrMut<T>, bias: &impl DevicePtr<f32>) -> Result<()> {
        const OP: &str = "bias_add";
        let cols = bias.len();
        let n = y.len();
        if cols == 0 || n == 0 || !n.is_multiple_of(cols) {
            return Err(crate::Error::InvalidArgument(format!("{OP}: y has {n} elements, not a positive multiple of the bias length {cols}")));
        }
        let p = LfBiasParams {
            n: i64::try_from(n).map_err(|_| crate::Error::InvalidArgument(format!("{OP}: {n} elements")))?,
            cols: validate::count_i32(OP, "cols", cols)?,
            reserved: 0,
        };
        self.check_context(OP, "y", y)?;
        self.check_context(OP, "bias", bias)?;
        let cfg = launch::elementwise(&LfElementwiseParams { n: p.n }, DType::F32, self.max_blocks);
        let (yp, _y) = y.device_ptr_mut(&self.stream);
        let (bp, _b) = bias.device_ptr(&self.stream);
        // SAFETY: lf_bias_add_<T>(T* y, const float* bias, LfBiasParams): y holds n elements, a
        // positive multiple of cols = bias.len() (checked above), and the grid-stride loop reads
        // bias[i % cols] only; both are on this context and y's mutable borrow excludes aliasing.
        unsafe { self.enqueue(self.kernels.bias_add.get(T::DTYPE), "lf_bias_add", cfg, &[&yp, &bp, &p]) }
    }
}
