//! Dense linear layers on the GPU (kernels/linear.cu, C ABI csrc/linear.h):
//! `y [m, n] = x [m, k] · W [n, k]ᵀ (+ bias [n])`, W f32 or bf16, x and y f32 or bf16 (the same
//! type), f32 accumulation. CPU twins: `cpu::matmul::linear` (f32 W), `cpu::bf16::linear` (bf16 W).
//!
//! `plan_linear` is the pure check and kernel choice (GEMV for up to 8 rows; beyond, the
//! tensor-core GEMM when x and W are both bf16, else the f32-FMA tiled GEMM; the fast GEMV and
//! tensor-core loaders when k % 8 == 0 and both x and W are 16-byte aligned), tested on any machine.

use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

use crate::Result;

use super::device::CudaDevice;
use super::dtype::{CudaElem, DType};
use super::ffi::{
    LfLinearParams, LF_LINEAR_BM, LF_LINEAR_BN, LF_LINEAR_GEMV_MAX_ROWS, LF_LINEAR_GEMV_WARPS, LF_LINEAR_TC_BM, LF_LINEAR_TC_BN, LF_LINEAR_TC_THREADS,
    LF_LINEAR_THREADS,
};
use super::launch::launch_kernel;
use super::validate::{count_i32, invalid, mul};

/// GEMV row tiles the kernels are compiled for.
const GEMV_TILES: [usize; 4] = [1, 2, 4, 8];
const GRID_YZ_MAX: usize = 65535;

/// Which kernel a linear launch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearKernel {
    /// One warp per output feature, `mt` rows of x per block; `fast`: 16-byte loads.
    Gemv {
        /// Rows of x per block.
        mt: usize,
        /// 16-byte loads (aligned buffers).
        fast: bool,
    },
    /// 64 x 64 tiles through shared memory, f32 FMAs.
    Gemm,
    /// bf16 x and W on the tensor cores (kernels/mma_gemm.cuh); `fast`: 16-byte tile loads.
    GemmTc {
        /// 16-byte tile loads (aligned buffers).
        fast: bool,
    },
}

impl LinearKernel {
    /// Threads per block of this kernel.
    pub fn block_threads(self) -> u32 {
        match self {
            LinearKernel::GemmTc { .. } => LF_LINEAR_TC_THREADS,
            _ => LF_LINEAR_THREADS,
        }
    }
}

/// A checked linear launch.
#[derive(Clone, Copy, Debug)]
pub struct LinearPlan {
    /// The kernel's parameters.
    pub params: LfLinearParams,
    /// Which kernel.
    pub kernel: LinearKernel,
    /// Grid (x, y, z).
    pub grid: (u32, u32, u32),
}

/// The lengths and alignment of a linear launch's buffers.
#[derive(Clone, Copy, Debug)]
pub struct LinearBuffers {
    /// Elements of x.
    pub x_len: usize,
    /// Elements of W.
    pub w_len: usize,
    /// Elements of y.
    pub y_len: usize,
    /// Elements of the bias, if any.
    pub bias_len: Option<usize>,
    /// x and W both 16-byte aligned.
    pub aligned16: bool,
    /// x and W both bf16: the GEMM may run on the tensor cores.
    pub bf16_pair: bool,
}

/// Checks `y [m, n] = x [m, k] · Wᵀ (+ bias)` and picks the kernel. Fails with
/// `Error::InvalidArgument` naming the first bad argument.
pub fn plan_linear(m: usize, n: usize, k: usize, bufs: LinearBuffers, force_gemm: bool) -> Result<LinearPlan> {
    const OP: &str = "linear";
    let m32 = count_i32(OP, "m (rows of x)", m)?;
    let n32 = count_i32(OP, "n (output features)", n)?;
    let k32 = count_i32(OP, "k (input features)", k)?;
    for (name, len, want, shape) in [
        ("x", bufs.x_len, mul(OP, "m * k", m, k)?, format!("[{m}, {k}]")),
        ("W", bufs.w_len, mul(OP, "n * k", n, k)?, format!("[{n}, {k}]")),
        ("y", bufs.y_len, mul(OP, "m * n", m, n)?, format!("[{m}, {n}]")),
    ] {
        if len != want {
            return Err(invalid(format!("{OP}: `{name}` has {len} elements; its shape {shape} needs {want}")));
        }
    }
    if let Some(b) = bufs.bias_len {
        if b != n {
            return Err(invalid(format!("{OP}: the bias has {b} elements; the layer has {n} output features")));
        }
    }
    let params = LfLinearParams { m: m32, n: n32, k: k32, has_bias: i32::from(bufs.bias_len.is_some()) };
    if m <= LF_LINEAR_GEMV_MAX_ROWS as usize && !force_gemm {
        let mt = GEMV_TILES.iter().copied().find(|&t| t >= m).unwrap_or(LF_LINEAR_GEMV_MAX_ROWS as usize);
        let fast = k.is_multiple_of(8) && bufs.aligned16;
        let gx = n.div_ceil(LF_LINEAR_GEMV_WARPS as usize);
        return Ok(LinearPlan { params, kernel: LinearKernel::Gemv { mt, fast }, grid: (gx as u32, m.div_ceil(mt) as u32, 1) });
    }
    let (kernel, bm, bn) = if bufs.bf16_pair {
        (LinearKernel::GemmTc { fast: k.is_multiple_of(8) && bufs.aligned16 }, LF_LINEAR_TC_BM, LF_LINEAR_TC_BN)
    } else {
        (LinearKernel::Gemm, LF_LINEAR_BM, LF_LINEAR_BN)
    };
    let gy = m.div_ceil(bm as usize);
    if gy > GRID_YZ_MAX {
        return Err(invalid(format!("{OP}: m = {m} rows make {gy} row tiles; CUDA's grid allows {GRID_YZ_MAX}")));
    }
    Ok(LinearPlan { params, kernel, grid: (n.div_ceil(bn as usize) as u32, gy as u32, 1) })
}

/// The kernels of one (activation, weight) type pair: GEMV fast and generic per row tile, GEMM.
struct LinearFns {
    gemv_fast: [CudaFunction; 4],
    gemv_generic: [CudaFunction; 4],
    gemm: CudaFunction,
    /// The tensor-core GEMM, fast and generic (bf16 x with bf16 W only).
    gemm_tc: Option<[CudaFunction; 2]>,
}

/// The dense linear module loaded on a device.
pub struct CudaLinear {
    /// Indexed by (activation dtype, weight dtype): f32/f32, f32/bf16, bf16/f32, bf16/bf16.
    fns: [LinearFns; 4],
}

fn pair_index(x: DType, w: DType) -> usize {
    match (x, w) {
        (DType::F32, DType::F32) => 0,
        (DType::F32, DType::Bf16) => 1,
        (DType::Bf16, DType::F32) => 2,
        (DType::Bf16, DType::Bf16) => 3,
    }
}

impl CudaLinear {
    /// Loads the linear (dense matmul) kernels on the device.
    pub fn new(ops: &CudaDevice) -> Result<Self> {
        let module = ops.load_embedded("linear", "dense linear")?;
        let load = |x: DType, w: DType| -> Result<LinearFns> {
            let (xs, ws) = (x.suffix(), w.suffix());
            let gemv = |kind: &str| -> Result<[CudaFunction; 4]> {
                let f = |mt: usize| module.function(&format!("lf_linear_gemv_{xs}_{ws}_m{mt}_{kind}"));
                Ok([f(1)?, f(2)?, f(4)?, f(8)?])
            };
            Ok(LinearFns {
                gemv_fast: gemv("fast")?,
                gemv_generic: gemv("generic")?,
                gemm: module.function(&format!("lf_linear_gemm_{xs}_{ws}"))?,
                gemm_tc: match (x, w) {
                    (DType::Bf16, DType::Bf16) => {
                        Some([module.function("lf_linear_gemm_tc_bf16_bf16_fast")?, module.function("lf_linear_gemm_tc_bf16_bf16_generic")?])
                    }
                    _ => None,
                },
            })
        };
        Ok(CudaLinear { fns: [load(DType::F32, DType::F32)?, load(DType::F32, DType::Bf16)?, load(DType::Bf16, DType::F32)?, load(DType::Bf16, DType::Bf16)?] })
    }

    /// `y [m, n] = x [m, k] · W [n, k]ᵀ (+ bias [n])` with `(m, n, k) = dims`, enqueued on
    /// `ops.stream()`; y is fully overwritten. Returns the kernel that ran. `force_gemm` takes the
    /// tiled path at any m.
    #[allow(clippy::too_many_arguments)]
    pub fn linear<TX: CudaElem, TW: CudaElem>(
        &self,
        ops: &CudaDevice,
        dims: (usize, usize, usize),
        x: &impl DevicePtr<TX>,
        w: &impl DevicePtr<TW>,
        bias: Option<&CudaSlice<f32>>,
        y: &mut impl DevicePtrMut<TX>,
        force_gemm: bool,
    ) -> Result<LinearKernel> {
        let (m, n, k) = dims;
        const OP: &str = "linear";
        ops.check_context(OP, "x", x)?;
        ops.check_context(OP, "W", w)?;
        ops.check_context(OP, "y", y)?;
        if let Some(b) = bias {
            ops.check_context(OP, "bias", b)?;
        }
        let stream = &ops.stream;
        let (xp, _x) = x.device_ptr(stream);
        let (wp, _w) = w.device_ptr(stream);
        let bufs = LinearBuffers {
            x_len: x.len(),
            w_len: w.len(),
            y_len: y.len(),
            bias_len: bias.map(|b| b.len()),
            aligned16: xp % 16 == 0 && wp % 16 == 0,
            bf16_pair: TX::DTYPE == DType::Bf16 && TW::DTYPE == DType::Bf16,
        };
        let plan = plan_linear(m, n, k, bufs, force_gemm)?;
        let fns = &self.fns[pair_index(TX::DTYPE, TW::DTYPE)];
        let tile = |mt: usize| GEMV_TILES.iter().position(|&t| t == mt).unwrap_or(3);
        let f = match plan.kernel {
            LinearKernel::Gemv { mt, fast: true } => &fns.gemv_fast[tile(mt)],
            LinearKernel::Gemv { mt, fast: false } => &fns.gemv_generic[tile(mt)],
            LinearKernel::Gemm => &fns.gemm,
            LinearKernel::GemmTc { fast } => match &fns.gemm_tc {
                Some(tc) => &tc[usize::from(!fast)],
                None => return Err(invalid(format!("{OP}: no tensor-core kernel for this type pair"))),
            },
        };
        let (bp, _b) = match bias {
            Some(b) => {
                let (p, s) = b.device_ptr(stream);
                (p, Some(s))
            }
            None => (0u64, None),
        };
        let (yp, _y) = y.device_ptr_mut(stream);
        let p = plan.params;
        let cfg = LaunchConfig { grid_dim: plan.grid, block_dim: (plan.kernel.block_threads(), 1, 1), shared_mem_bytes: 0 };
        // SAFETY: lf_linear_<path>_<x>_<w>(const TX* x, const TW* w, const float* bias, TX* y,
        // LfLinearParams). `plan_linear` checked x holds m * k, W n * k and y m * n elements (all
        // counts positive int32), the bias (read only when has_bias) n f32, and built the grid for
        // this kernel's tiling and block size; the fast GEMV and tensor-core loaders are chosen only
        // when k % 8 == 0 and x and W are 16-byte aligned (tested on the pointers above), which their
        // 16-byte loads need, and the tensor-core GEMM only for bf16 x and W. Every buffer is on
        // this context; y is a mutable borrow, so it aliases neither input. Each output element is
        // written by exactly one warp (GEMV) or thread (GEMM).
        unsafe { launch_kernel(stream, f, format_args!("{OP} ({:?})", plan.kernel), cfg, &[&xp, &wp, &bp, &yp, &p]) }?;
        Ok(plan.kernel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bufs(m: usize, n: usize, k: usize, aligned16: bool) -> LinearBuffers {
        LinearBuffers { x_len: m * k, w_len: n * k, y_len: m * n, bias_len: None, aligned16, bf16_pair: false }
    }

    #[test]
    fn plan_picks_gemv_tiles_and_gemm() {
        let p = plan_linear(1, 576, 576, bufs(1, 576, 576, true), false).unwrap();
        assert_eq!(p.kernel, LinearKernel::Gemv { mt: 1, fast: true });
        assert_eq!(p.grid, (72, 1, 1));
        let p = plan_linear(3, 100, 77, bufs(3, 100, 77, true), false).unwrap();
        assert_eq!(p.kernel, LinearKernel::Gemv { mt: 4, fast: false }, "k % 8 != 0: generic");
        assert_eq!(p.grid, (13, 1, 1));
        let p = plan_linear(8, 16, 64, bufs(8, 16, 64, false), false).unwrap();
        assert_eq!(p.kernel, LinearKernel::Gemv { mt: 8, fast: false }, "misaligned: generic");
        let p = plan_linear(9, 130, 64, bufs(9, 130, 64, true), false).unwrap();
        assert_eq!(p.kernel, LinearKernel::Gemm);
        assert_eq!(p.grid, (3, 1, 1));
        let p = plan_linear(2, 10, 8, bufs(2, 10, 8, true), true).unwrap();
        assert_eq!(p.kernel, LinearKernel::Gemm, "forced");
        let tc = |m, n, k, aligned| LinearBuffers { bf16_pair: true, ..bufs(m, n, k, aligned) };
        let p = plan_linear(65, 300, 64, tc(65, 300, 64, true), false).unwrap();
        assert_eq!((p.kernel, p.grid), (LinearKernel::GemmTc { fast: true }, (3, 2, 1)), "bf16 pair: 64 x 128 tiles");
        assert_eq!(p.kernel.block_threads(), 256);
        let p = plan_linear(9, 8, 30, tc(9, 8, 30, true), false).unwrap();
        assert_eq!(p.kernel, LinearKernel::GemmTc { fast: false }, "k % 8 != 0");
        let p = plan_linear(4, 8, 32, tc(4, 8, 32, true), false).unwrap();
        assert_eq!(p.kernel, LinearKernel::Gemv { mt: 4, fast: true }, "decode rows stay on the GEMV");
    }

    #[test]
    fn plan_rejects_bad_arguments() {
        let e = plan_linear(2, 3, 4, LinearBuffers { x_len: 7, ..bufs(2, 3, 4, true) }, false).unwrap_err();
        assert!(e.to_string().contains("`x` has 7 elements"), "{e}");
        let e = plan_linear(2, 3, 4, LinearBuffers { w_len: 11, ..bufs(2, 3, 4, true) }, false).unwrap_err();
        assert!(e.to_string().contains("`W` has 11 elements"), "{e}");
        let e = plan_linear(2, 3, 4, LinearBuffers { bias_len: Some(2), ..bufs(2, 3, 4, true) }, false).unwrap_err();
        assert!(e.to_string().contains("bias has 2 elements"), "{e}");
        let e = plan_linear(0, 3, 4, bufs(0, 3, 4, true), false).unwrap_err();
        assert!(e.to_string().contains("m (rows of x) is 0"), "{e}");
        let e = plan_linear(1 << 22, 3, 1, bufs(1 << 22, 3, 1, true), false).unwrap_err();
        assert!(e.to_string().contains("row tiles"), "{e}");
    }
}
