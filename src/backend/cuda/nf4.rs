//! Linear layers against a bitsandbytes NF4 weight on the GPU (kernels/nf4_gemm.cu, C ABI
//! csrc/nf4_gemm.h): `y [m, n] = x [m, k] · Wᵀ`, `W [n, k]` NF4. CPU twin: `backend::cpu::nf4`;
//! reference dequantization: `quant::Nf4Tensor::dequantize`.
//!
//! - `CudaNf4Weight`: a weight on the device, packed codes as bitsandbytes stores them plus one
//!   f32 absmax per block (double quantization undone once at upload: `Nf4Tensor::block_absmax`).
//! - `CudaNf4`: the module's kernels; `linear` picks the path, `linear_with` can force one (tests,
//!   benchmarks).
//! - `plan_nf4_linear`: the pure check and kernel choice in front of every launch (runs, and is
//!   tested, without a GPU).
//!
//! Dispatch: at most `GEMV_MAX_ROWS` rows of x go to the GEMV kernels (CUDA cores, memory bound,
//! `MT` rows of x per block, MT the smallest of 1, 2, 4, 8, 16 covering m); more rows of bf16 go
//! to the tensor-core GEMM. f32 activations have no GEMM (the tensor cores would round them to
//! bf16): above 16 rows they run the GEMV kernel over chunks of 16 rows (grid.y), which re-reads
//! W once per chunk: correct, not fast. Each path has a fast kernel (16-byte loads; needs
//! `k % 32 == 0`, a power-of-two blocksize >= 32, 16-byte aligned packed codes and x) and a
//! generic one for every other case, including bitsandbytes blocks that span two rows of W
//! (k not a multiple of the blocksize: both kernels index blocks over the flattened W).

use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

use crate::quant::Nf4Tensor;
use crate::{Error, Result};

use super::device::CudaDevice;
use super::dtype::{CudaElem, DType};
use super::ffi::{LfNf4GemmParams, LF_NF4_GEMM_BM, LF_NF4_GEMM_BN, LF_NF4_GEMM_THREADS, LF_NF4_GEMV_THREADS};
use super::launch::block_threads;
use super::launch::launch_kernel;
use super::validate::{count_i32, invalid, mul};

// SAFETY: `#[repr(C)]` struct of fixed-width integers, f32 and an f32 array (generated from
// csrc/nf4_gemm.h), no pointers; its bytes by value are exactly the kernel's C struct parameter.
unsafe impl cudarc::driver::DeviceRepr for LfNf4GemmParams {}

/// Most rows of x the GEMV kernels take (above it: GEMM for bf16).
pub const GEMV_MAX_ROWS: usize = 16;

/// Rows of x per GEMV block the kernels are compiled for (`lf_nf4_gemv_<T>_m<MT>_*`).
pub const GEMV_ROW_TILES: [usize; 5] = [1, 2, 4, 8, 16];

/// Output features per GEMV block for `mt` rows of x: `LF_NF4_GEMV_ROWS(mt)` of csrc/nf4_gemm.h
/// (a function-like macro, which bindgen does not translate).
pub fn gemv_rows_per_block(mt: usize) -> usize {
    if mt <= 4 {
        4
    } else {
        2
    }
}

/// The two algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Nf4Path {
    /// CUDA cores, each weight byte read once per chunk of up to 16 rows of x.
    Gemv,
    /// Tensor cores (mma.sync m16n8k16 bf16), W tiles dequantized into shared memory; bf16 only.
    Gemm,
}

/// Forces a path or the generic kernel (tests and benchmarks); the default lets the plan choose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nf4Override {
    /// The path to force (GEMV or GEMM), or the plan's choice.
    pub path: Option<Nf4Path>,
    /// Use the generic (element-by-element) kernel even where the fast one applies.
    pub generic: bool,
}

/// One compiled kernel of nf4_gemm.cu.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Nf4Kernel {
    /// GEMV (few rows) or GEMM (tiles).
    pub path: Nf4Path,
    /// The activation dtype.
    pub dtype: DType,
    /// GEMV: rows of x per block (one of `GEMV_ROW_TILES`); GEMM: `LF_NF4_GEMM_BM`.
    pub rows_per_block: usize,
    /// The 16-byte-load kernel (else the generic one).
    pub fast: bool,
}

impl Nf4Kernel {
    /// The kernel's symbol, e.g. `lf_nf4_gemv_bf16_m1_fast`, `lf_nf4_gemm_bf16_generic`.
    pub fn name(&self) -> String {
        let variant = if self.fast { "fast" } else { "generic" };
        match self.path {
            Nf4Path::Gemv => format!("lf_nf4_gemv_{}_m{}_{variant}", self.dtype.suffix(), self.rows_per_block),
            Nf4Path::Gemm => format!("lf_nf4_gemm_{}_{variant}", self.dtype.suffix()),
        }
    }
}

/// A checked launch: the kernel's parameters, which kernel, and its geometry.
#[derive(Clone, Debug)]
pub struct Nf4Plan {
    /// The kernel's parameters.
    pub params: LfNf4GemmParams,
    /// Which kernel.
    pub kernel: Nf4Kernel,
    /// Grid (x, y, z).
    pub grid: (u32, u32, u32),
    /// Threads per block.
    pub block: u32,
}

/// Geometry of an NF4 weight `W [n, k]`: `n` output features, `k` input features, `blocksize`
/// elements of the flattened W per absmax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nf4Shape {
    /// Output features.
    pub n: usize,
    /// Input features.
    pub k: usize,
    /// Elements per absmax scale.
    pub blocksize: usize,
}

/// Element counts of the buffers of one launch, and whether the fast kernels' alignment holds
/// (packed codes and x at 16-byte aligned device addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nf4Buffers {
    /// Elements of x: must be `m * k`.
    pub x_len: usize,
    /// Elements of y: must be `m * n`.
    pub y_len: usize,
    /// Bytes of packed codes: must be `ceil(n * k / 2)`.
    pub packed_len: usize,
    /// f32 scales: must be `ceil(n * k / blocksize)`.
    pub absmax_len: usize,
    /// Packed codes and x sit at 16-byte aligned addresses.
    pub aligned16: bool,
}

/// CUDA's limit on grid.y (and grid.z).
const GRID_YZ_MAX: usize = 65535;

/// Checks `y [m, n] = x [m, k] · Wᵀ` for `dtype` activations and chooses its kernel and geometry.
/// Fails with `Error::InvalidArgument` naming the first bad argument: a zero or over-int32
/// dimension, a buffer whose length does not match its shape, a non-finite code level, a grid
/// beyond CUDA's limits, or a GEMM forced on f32.
pub fn plan_nf4_linear(m: usize, shape: Nf4Shape, code: &[f32; 16], bufs: Nf4Buffers, dtype: DType, force: Nf4Override) -> Result<Nf4Plan> {
    const OP: &str = "nf4_linear";
    let Nf4Shape { n, k, blocksize } = shape;
    let m32 = count_i32(OP, "m (rows of x)", m)?;
    let n32 = count_i32(OP, "n (output features, rows of W)", n)?;
    let k32 = count_i32(OP, "k (input features)", k)?;
    let bs32 = count_i32(OP, "blocksize", blocksize)?;
    let numel = mul(OP, "n * k", n, k)?;
    let expect = |name: &str, len: usize, want: usize, shape: String| -> Result<()> {
        if len != want {
            return Err(invalid(format!("{OP}: `{name}` has {len} elements; {shape} needs {want}")));
        }
        Ok(())
    };
    expect("x", bufs.x_len, mul(OP, "m * k", m, k)?, format!("its shape [{m}, {k}]"))?;
    expect("y", bufs.y_len, mul(OP, "m * n", m, n)?, format!("its shape [{m}, {n}]"))?;
    expect("packed", bufs.packed_len, numel.div_ceil(2), format!("W [{n}, {k}] at two codes per byte"))?;
    let n_blocks = numel.div_ceil(blocksize);
    expect("absmax", bufs.absmax_len, n_blocks, format!("W [{n}, {k}] in blocks of {blocksize}"))?;
    if let Some((i, c)) = code.iter().enumerate().find(|(_, c)| !c.is_finite()) {
        return Err(invalid(format!("{OP}: code level {i} is {c}; the 16 levels must be finite")));
    }
    let n_blocks = i64::try_from(n_blocks).map_err(|_| invalid(format!("{OP}: {n_blocks} absmax blocks overflow")))?;

    let path = match (force.path, dtype) {
        (Some(Nf4Path::Gemm), DType::F32) => {
            return Err(invalid(format!("{OP}: the GEMM path is bf16 only (the tensor cores would round f32 activations); use GEMV")))
        }
        (Some(p), _) => p,
        (None, DType::Bf16) if m > GEMV_MAX_ROWS => Nf4Path::Gemm,
        (None, _) => Nf4Path::Gemv,
    };
    let pow2 = blocksize.is_power_of_two();
    let fast = !force.generic && k.is_multiple_of(32) && pow2 && blocksize >= 32 && bufs.aligned16;
    let params = LfNf4GemmParams {
        m: m32,
        n: n32,
        k: k32,
        blocksize: bs32,
        blocksize_log2: if pow2 { blocksize.trailing_zeros() as i32 } else { -1 },
        reserved: 0,
        n_blocks,
        code: *code,
    };
    let (rows_per_block, grid, block) = match path {
        Nf4Path::Gemv => {
            let mt = GEMV_ROW_TILES.iter().copied().find(|&t| t >= m.min(GEMV_MAX_ROWS)).unwrap_or(GEMV_MAX_ROWS);
            let gy = m.div_ceil(mt);
            if gy > GRID_YZ_MAX {
                return Err(invalid(format!("{OP}: m = {m} rows make {gy} GEMV row chunks of {mt}; CUDA's grid allows {GRID_YZ_MAX}")));
            }
            let gx = n.div_ceil(gemv_rows_per_block(mt));
            // Fast: a thread per 32-element chunk of K; generic: a thread per element.
            let units = if fast { k / 32 } else { k };
            (mt, (gx as u32, gy as u32, 1), block_threads(units, LF_NF4_GEMV_THREADS))
        }
        Nf4Path::Gemm => {
            let (bm, bn) = (LF_NF4_GEMM_BM as usize, LF_NF4_GEMM_BN as usize);
            let gy = m.div_ceil(bm);
            if gy > GRID_YZ_MAX {
                return Err(invalid(format!("{OP}: m = {m} rows make {gy} GEMM row tiles of {bm}; CUDA's grid allows {GRID_YZ_MAX}")));
            }
            (bm, (n.div_ceil(bn) as u32, gy as u32, 1), LF_NF4_GEMM_THREADS)
        }
    };
    Ok(Nf4Plan { params, kernel: Nf4Kernel { path, dtype, rows_per_block, fast }, grid, block })
}

/// An NF4 weight `W [n, k]` on the device: `packed` `[ceil(n * k / 2)]` bytes as bitsandbytes
/// stores them, `absmax` `[ceil(n * k / blocksize)]` f32.
pub struct CudaNf4Weight {
    packed: CudaSlice<u8>,
    absmax: CudaSlice<f32>,
    shape: Nf4Shape,
    code: [f32; 16],
}

impl CudaNf4Weight {
    /// A weight from device buffers already holding `packed` (`ceil(n * k / 2)` bytes) and one
    /// f32 `absmax` per block of `blocksize` elements.
    pub(crate) fn from_parts(packed: CudaSlice<u8>, absmax: CudaSlice<f32>, shape: Nf4Shape, code: [f32; 16]) -> Result<Self> {
        let numel = shape.n * shape.k;
        if packed.len() != numel.div_ceil(2) || absmax.len() != numel.div_ceil(shape.blocksize) {
            return Err(invalid(format!("CudaNf4Weight: buffers do not fit [{}, {}]", shape.n, shape.k)));
        }
        Ok(CudaNf4Weight { packed, absmax, shape, code })
    }

    /// Uploads a 2-D NF4 tensor (as read from a bitsandbytes checkpoint or quantized here),
    /// resolving double-quantized statistics to one f32 per block. Fails on a tensor that is not
    /// 2-D or whose arrays do not match its shape.
    pub fn upload(ops: &CudaDevice, t: &Nf4Tensor) -> Result<Self> {
        let [n, k] = t.shape[..] else {
            return Err(invalid(format!("CudaNf4Weight: NF4 weight of shape {:?}; a linear weight is 2-D", t.shape)));
        };
        t.validate().map_err(|e| invalid(format!("CudaNf4Weight: inconsistent NF4 tensor [{n}, {k}]: {e}")))?;
        if n == 0 || k == 0 {
            return Err(invalid(format!("CudaNf4Weight: empty weight [{n}, {k}]")));
        }
        let absmax = t.block_absmax();
        Ok(CudaNf4Weight { packed: ops.upload(&t.packed)?, absmax: ops.upload(&absmax)?, shape: Nf4Shape { n, k, blocksize: t.blocksize }, code: t.code })
    }

    /// The packed codes and the f32 block scales, copied to the host (tests).
    pub fn download_parts(&self, ops: &CudaDevice) -> Result<(Vec<u8>, Vec<f32>)> {
        Ok((ops.download(&self.packed)?, ops.download(&self.absmax)?))
    }

    /// Its geometry.
    pub fn shape(&self) -> Nf4Shape {
        self.shape
    }

    /// The packed codes, the f32 block scales and the 16 levels, on the device (the trainer
    /// dequantizes them for the input gradient, `backend::cuda::train`).
    pub(crate) fn parts(&self) -> (&CudaSlice<u8>, &CudaSlice<f32>, &[f32; 16]) {
        (&self.packed, &self.absmax, &self.code)
    }

    /// Bytes one full read of the weight moves: packed codes plus f32 absmax.
    pub fn bytes(&self) -> usize {
        self.packed.len() + 4 * self.absmax.len()
    }
}

/// The kernels of `kernels/nf4_gemm.cu` loaded on a `CudaDevice` device.
pub struct CudaNf4 {
    /// `[dtype: f32, bf16][GEMV_ROW_TILES index][generic, fast]`.
    gemv: [[[CudaFunction; 2]; 5]; 2],
    /// `[generic, fast]`, bf16.
    gemm: [CudaFunction; 2],
}

fn dtype_index(d: DType) -> usize {
    match d {
        DType::F32 => 0,
        DType::Bf16 => 1,
    }
}

impl CudaNf4 {
    /// Loads the NF4 GEMV / GEMM kernels on the device.
    pub fn new(ops: &CudaDevice) -> Result<Self> {
        let module = ops.load_embedded("nf4_gemm", "NF4")?;
        let get = |k: Nf4Kernel| module.function(&k.name());
        let gemv_fns = |dtype: DType| -> Result<[[CudaFunction; 2]; 5]> {
            let mut v = Vec::with_capacity(5);
            for mt in GEMV_ROW_TILES {
                let k = |fast| Nf4Kernel { path: Nf4Path::Gemv, dtype, rows_per_block: mt, fast };
                v.push([get(k(false))?, get(k(true))?]);
            }
            v.try_into().map_err(|_| Error::Cuda("nf4_gemm: GEMV kernel table".into()))
        };
        let gemm = |fast| Nf4Kernel { path: Nf4Path::Gemm, dtype: DType::Bf16, rows_per_block: LF_NF4_GEMM_BM as usize, fast };
        Ok(CudaNf4 { gemv: [gemv_fns(DType::F32)?, gemv_fns(DType::Bf16)?], gemm: [get(gemm(false))?, get(gemm(true))?] })
    }

    fn function(&self, k: &Nf4Kernel) -> Result<&CudaFunction> {
        let variant = usize::from(k.fast);
        match k.path {
            Nf4Path::Gemv => {
                let i = GEMV_ROW_TILES
                    .iter()
                    .position(|&t| t == k.rows_per_block)
                    .ok_or_else(|| invalid(format!("nf4_linear: no GEMV kernel for {} rows", k.rows_per_block)))?;
                Ok(&self.gemv[dtype_index(k.dtype)][i][variant])
            }
            Nf4Path::Gemm if k.dtype == DType::Bf16 => Ok(&self.gemm[variant]),
            Nf4Path::Gemm => Err(invalid("nf4_linear: no f32 GEMM kernel")),
        }
    }

    /// `y [m, n] = x [m, k] · Wᵀ` (f32 accumulation, one rounding to `T` per output), enqueued on
    /// `ops.stream()`. x: `[m, k]`; y: `[m, n]`, fully overwritten.
    pub fn linear<T: CudaElem>(&self, ops: &CudaDevice, x: &impl DevicePtr<T>, m: usize, w: &CudaNf4Weight, y: &mut impl DevicePtrMut<T>) -> Result<Nf4Kernel> {
        self.linear_with(ops, x, m, w, y, Nf4Override::default())
    }

    /// As `linear`, with a forced path or kernel; returns the kernel that ran.
    pub fn linear_with<T: CudaElem>(
        &self,
        ops: &CudaDevice,
        x: &impl DevicePtr<T>,
        m: usize,
        w: &CudaNf4Weight,
        y: &mut impl DevicePtrMut<T>,
        force: Nf4Override,
    ) -> Result<Nf4Kernel> {
        const OP: &str = "nf4_linear";
        ops.check_context(OP, "x", x)?;
        ops.check_context(OP, "y", y)?;
        ops.check_context(OP, "packed (the weight)", &w.packed)?;
        let stream = &ops.stream;
        let (xp, _x) = x.device_ptr(stream);
        let (pp, _p) = w.packed.device_ptr(stream);
        let (ap, _a) = w.absmax.device_ptr(stream);
        let bufs =
            Nf4Buffers { x_len: x.len(), y_len: y.len(), packed_len: w.packed.len(), absmax_len: w.absmax.len(), aligned16: xp % 16 == 0 && pp % 16 == 0 };
        let plan = plan_nf4_linear(m, w.shape, &w.code, bufs, T::DTYPE, force)?;
        let f = self.function(&plan.kernel)?;
        let (yp, _y) = y.device_ptr_mut(stream);
        let cfg = LaunchConfig { grid_dim: plan.grid, block_dim: (plan.block, 1, 1), shared_mem_bytes: 0 };
        let p = plan.params;
        // SAFETY: lf_nf4_<path>_<T>_..(const uint8_t* packed, const float* absmax, const T* x, T* y,
        // LfNf4GemmParams). `plan_nf4_linear` checked packed holds ceil(n * k / 2) bytes, absmax
        // ceil(n * k / blocksize) f32, x m * k and y m * n elements of T, every count positive
        // int32, the grid within CUDA's limits and built for this kernel's tiling; the fast kernel
        // is chosen only when k % 32 == 0, the blocksize is a power of two >= 32 and packed and x
        // are 16-byte aligned (tested on the pointers above), which its 16-byte loads need. All four
        // buffers are on this context (checked above; the weight's were allocated on it); y is a
        // mutable borrow, so it aliases neither x nor the weight. The kernel writes every element
        // of y (each (row, feature) is owned by one block).
        unsafe { launch_kernel(stream, f, format_args!("{}", plan.kernel.name()), cfg, &[&pp, &ap, &xp, &yp, &p]) }?;
        Ok(plan.kernel)
    }

    /// `linear` into a new buffer `[m, n]`.
    pub fn linear_alloc<T: CudaElem>(&self, ops: &CudaDevice, x: &impl DevicePtr<T>, m: usize, w: &CudaNf4Weight) -> Result<CudaSlice<T>> {
        let len = mul("nf4_linear", "m * n", m, w.shape.n)?;
        let mut y = ops.alloc_for_output(len)?;
        self.linear(ops, x, m, w, &mut y)?;
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::nf4::NF4_CODE;

    fn bufs(m: usize, s: Nf4Shape) -> Nf4Buffers {
        let numel = s.n * s.k;
        Nf4Buffers { x_len: m * s.k, y_len: m * s.n, packed_len: numel.div_ceil(2), absmax_len: numel.div_ceil(s.blocksize), aligned16: true }
    }

    fn plan(m: usize, n: usize, k: usize, dtype: DType) -> Nf4Plan {
        let s = Nf4Shape { n, k, blocksize: 64 };
        plan_nf4_linear(m, s, &NF4_CODE, bufs(m, s), dtype, Nf4Override::default()).unwrap()
    }

    #[test]
    fn decode_rows_take_gemv_prefill_takes_gemm() {
        for (m, mt) in [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (9, 16), (16, 16)] {
            let p = plan(m, 4096, 14336, DType::Bf16);
            assert_eq!(p.kernel.path, Nf4Path::Gemv, "m {m}");
            assert_eq!(p.kernel.rows_per_block, mt, "m {m}");
            assert!(p.kernel.fast);
            assert_eq!(p.grid, ((4096 / gemv_rows_per_block(mt)) as u32, 1, 1));
            assert_eq!(p.block, 256);
            assert_eq!(p.kernel.name(), format!("lf_nf4_gemv_bf16_m{mt}_fast"));
        }
        let p = plan(17, 4096, 14336, DType::Bf16);
        assert_eq!(p.kernel.path, Nf4Path::Gemm);
        assert_eq!(p.grid, (32, 1, 1));
        assert_eq!(p.kernel.name(), "lf_nf4_gemm_bf16_fast");
        let p = plan(100, 77, 100, DType::Bf16);
        assert_eq!((p.kernel.path, p.kernel.fast, p.grid), (Nf4Path::Gemm, false, (1, 2, 1)));
        // f32 never takes the GEMM: chunks of 16 rows on grid.y.
        let p = plan(100, 576, 1536, DType::F32);
        assert_eq!((p.kernel.path, p.kernel.rows_per_block, p.grid), (Nf4Path::Gemv, 16, (288, 7, 1)));
        assert_eq!(p.kernel.name(), "lf_nf4_gemv_f32_m16_fast");
    }

    #[test]
    fn fast_kernel_needs_k_multiple_of_32_pow2_block_and_alignment() {
        let s = |n, k, blocksize| Nf4Shape { n, k, blocksize };
        let go = |m, s: Nf4Shape, aligned16, force| {
            let b = Nf4Buffers { aligned16, ..bufs(m, s) };
            plan_nf4_linear(m, s, &NF4_CODE, b, DType::Bf16, force).unwrap()
        };
        let auto = Nf4Override::default();
        assert!(go(1, s(4096, 4096, 64), true, auto).kernel.fast);
        // k = 96: blocks of 64 span rows; still whole 32-element chunks inside one block.
        assert!(go(1, s(10, 96, 64), true, auto).kernel.fast);
        assert!(go(1, s(10, 32, 128), true, auto).kernel.fast);
        assert!(!go(1, s(77, 100, 64), true, auto).kernel.fast);
        assert!(!go(1, s(10, 96, 16), true, auto).kernel.fast, "blocksize below a chunk");
        assert!(!go(1, s(10, 96, 96), true, auto).kernel.fast, "blocksize not a power of two");
        assert!(!go(1, s(4096, 4096, 64), false, auto).kernel.fast, "misaligned");
        assert!(!go(64, s(4096, 4096, 64), false, auto).kernel.fast, "misaligned GEMM");
        let generic = Nf4Override { generic: true, ..auto };
        assert!(!go(1, s(4096, 4096, 64), true, generic).kernel.fast);
        // Generic GEMV blocks cover k elements, fast ones k / 32 chunks.
        assert_eq!(go(1, s(100, 77, 64), true, auto).block, 96);
        assert_eq!(go(1, s(576, 1536, 64), true, auto).block, 64);
        let p = go(1, s(10, 96, 96), true, auto);
        assert_eq!((p.params.blocksize, p.params.blocksize_log2), (96, -1));
        let p = go(1, s(10, 96, 128), true, auto);
        assert_eq!((p.params.blocksize, p.params.blocksize_log2, p.params.n_blocks), (128, 7, 8));
    }

    #[test]
    fn forced_paths() {
        let s = Nf4Shape { n: 100, k: 64, blocksize: 64 };
        let gemm = Nf4Override { path: Some(Nf4Path::Gemm), generic: false };
        let p = plan_nf4_linear(1, s, &NF4_CODE, bufs(1, s), DType::Bf16, gemm).unwrap();
        assert_eq!((p.kernel.path, p.grid), (Nf4Path::Gemm, (1, 1, 1)));
        let e = plan_nf4_linear(1, s, &NF4_CODE, bufs(1, s), DType::F32, gemm).unwrap_err();
        assert!(e.to_string().contains("bf16 only"), "{e}");
        let gemv = Nf4Override { path: Some(Nf4Path::Gemv), generic: false };
        let p = plan_nf4_linear(100, s, &NF4_CODE, bufs(100, s), DType::Bf16, gemv).unwrap();
        assert_eq!((p.kernel.path, p.kernel.rows_per_block, p.grid), (Nf4Path::Gemv, 16, (50, 7, 1)));
    }

    #[test]
    fn rejects_bad_arguments() {
        let s = Nf4Shape { n: 8, k: 64, blocksize: 64 };
        let auto = Nf4Override::default();
        let err = |m: usize, s: Nf4Shape, b: Nf4Buffers, code: &[f32; 16]| plan_nf4_linear(m, s, code, b, DType::Bf16, auto).unwrap_err().to_string();
        assert!(err(0, s, bufs(1, s), &NF4_CODE).contains("m (rows of x) is 0"));
        let z = Nf4Shape { n: 0, ..s };
        assert!(err(1, z, bufs(1, s), &NF4_CODE).contains("n (output features"));
        let z = Nf4Shape { blocksize: 0, ..s };
        assert!(err(1, z, bufs(1, s), &NF4_CODE).contains("blocksize is 0"));
        let big = Nf4Shape { k: 1 << 31, ..s };
        assert!(err(1, big, bufs(1, s), &NF4_CODE).contains("exceeds the kernel limit"));
        let b = |f: &dyn Fn(&mut Nf4Buffers)| {
            let mut b = bufs(3, s);
            f(&mut b);
            b
        };
        assert!(err(3, s, b(&|b| b.x_len -= 1), &NF4_CODE).contains("`x` has 191 elements; its shape [3, 64] needs 192"));
        assert!(err(3, s, b(&|b| b.y_len += 1), &NF4_CODE).contains("`y` has 25"));
        assert!(err(3, s, b(&|b| b.packed_len = 512), &NF4_CODE).contains("`packed` has 512"));
        assert!(err(3, s, b(&|b| b.absmax_len = 9), &NF4_CODE).contains("`absmax` has 9"));
        let mut code = NF4_CODE;
        code[5] = f32::NAN;
        assert!(err(3, s, bufs(3, s), &code).contains("code level 5 is NaN"));
        // Odd n * k: the last byte holds one code.
        let odd = Nf4Shape { n: 7, k: 11, blocksize: 64 };
        let p = plan_nf4_linear(2, odd, &NF4_CODE, bufs(2, odd), DType::F32, auto).unwrap();
        assert_eq!((p.params.n_blocks, p.kernel.fast), (2, false));
        // Grid limits: GEMV chunks of 16 rows on grid.y.
        let m = 16 * GRID_YZ_MAX + 1;
        let e = plan_nf4_linear(m, s, &NF4_CODE, bufs(m, s), DType::F32, auto).unwrap_err().to_string();
        assert!(e.contains("grid allows 65535"), "{e}");
        let m = 16 * GRID_YZ_MAX;
        assert!(plan_nf4_linear(m, s, &NF4_CODE, bufs(m, s), DType::F32, auto).is_ok());
    }
}
