//! Typed, checked launches of `kernels/ops_backward.cu` (C ABI csrc/ops_backward.h): the backward
//! passes of RMSNorm (weight frozen), RoPE and SiLU·mul, f32, for training. CPU twins:
//! `backend::cpu::backward::{rms_norm_backward, rope_backward_inplace, silu_mul_backward}`.
//! Arguments are validated by the forward ops' checks (`validate.rs`, same shapes) before each
//! unsafe launch; launch geometry is the forward's (`launch.rs`).

use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, LaunchConfig};

use crate::{Error, Result};

use super::device::CudaDevice;
use super::dtype::DType;
use super::ffi::{LfElementwiseParams, LfRmsNormBwdParams, LfRmsNormParams, LfRopeParams};
use super::launch::launch_kernel;
use super::{launch, validate, validate::RopeDims};

// SAFETY: a `#[repr(C)]` struct of int32 and f32 fields generated from csrc/ops_backward.h, no
// pointers, so its bytes passed by value are exactly the kernel's C struct parameter.
unsafe impl cudarc::driver::DeviceRepr for LfRmsNormBwdParams {}

/// The checked parameters of an RMSNorm backward: x, dy, dx `[rows, cols]`, w `[cols]`.
pub fn plan_rms_norm_backward(
    x_len: usize,
    w_len: usize,
    dy_len: usize,
    dx_len: usize,
    rows: usize,
    cols: usize,
    eps: f32,
    accumulate: bool,
) -> Result<LfRmsNormBwdParams> {
    let p = validate::rms_norm(x_len, w_len, dx_len, rows, cols, eps)?;
    if dy_len != x_len {
        return Err(Error::InvalidArgument(format!("rms_norm_backward: `dy` has {dy_len} elements; its shape [{rows}, {cols}] needs {x_len}")));
    }
    Ok(LfRmsNormBwdParams { rows: p.rows, cols: p.cols, eps: p.eps, accumulate: accumulate as i32 })
}

/// The ops-backward module loaded on a `CudaDevice` device.
pub struct CudaOpsBackward {
    rms_norm: CudaFunction,
    rope: CudaFunction,
    silu_mul: CudaFunction,
}

impl CudaOpsBackward {
    /// Loads the elementwise backward kernels on the device.
    pub fn new(ops: &CudaDevice) -> Result<Self> {
        let module = ops.load_embedded("ops_backward", "backward ops")?;
        let get = |name: &str| module.function(name);
        Ok(CudaOpsBackward { rms_norm: get("lf_rms_norm_bwd_f32")?, rope: get("lf_rope_bwd_f32")?, silu_mul: get("lf_silu_mul_bwd_f32")? })
    }

    /// RMSNorm backward with the weight frozen: `dx (+)= r·(w·dy) − x·r³/cols·Σ(w·dy·x)`,
    /// `r = rsqrt(mean(x²) + eps)`. x, dy, dx: `[rows, cols]`; w: `[cols]`.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_backward(
        &self,
        ops: &CudaDevice,
        x: &impl DevicePtr<f32>,
        w: &impl DevicePtr<f32>,
        dy: &impl DevicePtr<f32>,
        dx: &mut impl DevicePtrMut<f32>,
        rows: usize,
        cols: usize,
        eps: f32,
        accumulate: bool,
    ) -> Result<()> {
        const OP: &str = "rms_norm_backward";
        let p = plan_rms_norm_backward(x.len(), w.len(), dy.len(), dx.len(), rows, cols, eps, accumulate)?;
        ops.check_context(OP, "x", x)?;
        ops.check_context(OP, "w", w)?;
        ops.check_context(OP, "dy", dy)?;
        ops.check_context(OP, "dx", dx)?;
        let cfg = launch::rms_norm(&LfRmsNormParams { rows: p.rows, cols: p.cols, eps: p.eps }, DType::F32);
        let s = &ops.stream;
        let (xp, _x) = x.device_ptr(s);
        let (wp, _w) = w.device_ptr(s);
        let (dyp, _dy) = dy.device_ptr(s);
        let (dxp, _dx) = dx.device_ptr_mut(s);
        // SAFETY: lf_rms_norm_bwd_f32(const float* x, const float* w, const float* dy, float* dx,
        // LfRmsNormBwdParams). The checks above: x, dy, dx hold rows * cols f32 and w holds cols,
        // counts positive int32, all on this context; dx is borrowed mutably, so it aliases no
        // input; the grid is one block per row, blocks whole warps <= LF_OPS_ROW_THREADS_MAX (the
        // kernel's launch bound and block_sum2's assumption).
        unsafe { launch_kernel(s, &self.rms_norm, "lf_rms_norm_bwd_f32", cfg, &[&xp, &wp, &dyp, &dxp, &p]) }?;
        Ok(())
    }

    /// RoPE backward in place on dq and dk (the rotation by −θ), token r at `positions[r]`
    /// (host; copied to the device). Shapes as `CudaDevice::rope`.
    pub fn rope_backward(
        &self,
        ops: &CudaDevice,
        dq: &mut impl DevicePtrMut<f32>,
        dk: &mut impl DevicePtrMut<f32>,
        positions: &[u32],
        cos: &impl DevicePtr<f32>,
        sin: &impl DevicePtr<f32>,
        dims: RopeDims,
    ) -> Result<()> {
        const OP: &str = "rope_backward";
        let p: LfRopeParams = validate::rope(dq.len(), dk.len(), positions, cos.len(), sin.len(), dims)?;
        ops.check_context(OP, "dq", dq)?;
        ops.check_context(OP, "dk", dk)?;
        ops.check_context(OP, "cos", cos)?;
        ops.check_context(OP, "sin", sin)?;
        let pos = ops.upload(positions)?;
        // One thread per (head, pair) up to the block limit; the kernel loops over the rest.
        let items = (p.n_q_heads as usize + p.n_k_heads as usize) * (p.head_dim as usize / 2);
        let cfg =
            LaunchConfig { grid_dim: (p.rows as u32, 1, 1), block_dim: (launch::block_threads(items, super::ffi::LF_OPS_THREADS), 1, 1), shared_mem_bytes: 0 };
        let s = &ops.stream;
        let (qp, _q) = dq.device_ptr_mut(s);
        let (kp, _k) = dk.device_ptr_mut(s);
        let (pp, _p) = pos.device_ptr(s);
        let (cp, _c) = cos.device_ptr(s);
        let (sp, _s) = sin.device_ptr(s);
        // SAFETY: lf_rope_bwd_f32(float* dq, float* dk, const uint32_t* positions, const float* cos,
        // const float* sin, LfRopeParams). validate::rope checked dq and dk hold rows * heads *
        // head_dim f32, head_dim is even, cos and sin hold max_pos * head_dim / 2 f32 and every
        // position (uploaded just above, stream-ordered before the kernel) is < max_pos; dq and dk
        // are distinct mutable borrows; the grid is one block per row.
        unsafe { launch_kernel(s, &self.rope, "lf_rope_bwd_f32", cfg, &[&qp, &kp, &pp, &cp, &sp, &p]) }?;
        Ok(())
    }

    /// SiLU·mul backward: `dup = dout·silu(g)`, `dgate = dout·u·σ(g)·(1 + g·(1 − σ(g)))`; all `[n]`,
    /// dgate and dup overwritten.
    pub fn silu_mul_backward(
        &self,
        ops: &CudaDevice,
        gate: &impl DevicePtr<f32>,
        up: &impl DevicePtr<f32>,
        dout: &impl DevicePtr<f32>,
        dgate: &mut impl DevicePtrMut<f32>,
        dup: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const OP: &str = "silu_mul_backward";
        let p: LfElementwiseParams =
            validate::elementwise(OP, &[("gate", gate.len()), ("up", up.len()), ("dout", dout.len()), ("dgate", dgate.len()), ("dup", dup.len())])?;
        ops.check_context(OP, "gate", gate)?;
        ops.check_context(OP, "up", up)?;
        ops.check_context(OP, "dout", dout)?;
        ops.check_context(OP, "dgate", dgate)?;
        ops.check_context(OP, "dup", dup)?;
        let cfg = launch::elementwise(&p, DType::F32, ops.max_blocks);
        let s = &ops.stream;
        let (gp, _g) = gate.device_ptr(s);
        let (up_, _u) = up.device_ptr(s);
        let (dp, _d) = dout.device_ptr(s);
        let (dgp, _dg) = dgate.device_ptr_mut(s);
        let (dup_, _du) = dup.device_ptr_mut(s);
        // SAFETY: lf_silu_mul_bwd_f32(const float* gate, const float* up, const float* dout,
        // float* dgate, float* dup, LfElementwiseParams). validate::elementwise checked all five
        // hold n > 0 f32, all on this context; dgate and dup are distinct mutable borrows, so they
        // alias neither each other nor an input; the grid-stride loop stays below n.
        unsafe { launch_kernel(s, &self.silu_mul, "lf_silu_mul_bwd_f32", cfg, &[&gp, &up_, &dp, &dgp, &dup_, &p]) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_backward_checks_every_buffer() {
        let p = plan_rms_norm_backward(12, 4, 12, 12, 3, 4, 1e-5, true).unwrap();
        assert_eq!((p.rows, p.cols, p.accumulate), (3, 4, 1));
        assert!(plan_rms_norm_backward(12, 4, 11, 12, 3, 4, 1e-5, false).is_err(), "short dy");
        assert!(plan_rms_norm_backward(12, 4, 12, 13, 3, 4, 1e-5, false).is_err(), "long dx");
        assert!(plan_rms_norm_backward(12, 3, 12, 12, 3, 4, 1e-5, false).is_err(), "short w");
        assert!(plan_rms_norm_backward(12, 4, 12, 12, 3, 4, f32::NAN, false).is_err(), "NaN eps");
        assert!(plan_rms_norm_backward(0, 4, 0, 0, 0, 4, 1e-5, false).is_err(), "no rows");
    }
}
