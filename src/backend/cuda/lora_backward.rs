//! The fused LoRA backward on the GPU (kernels/lora_backward.cu, C ABI csrc/lora_backward.h) for
//! one adapter over a batch of token rows. CPU twin: `backend::cpu::backward::lora_backward`.
//!
//! From the saved `x [rows, d_in]`, `xa = x·Aᵀ [rows, rank]` and the upstream `dy [rows, d_out]`:
//!   pass 1 (reads dy once): `g = s·dy·B [rows, rank]`, `dB += s·dyᵀ·xa [d_out, rank]`;
//!   pass 2 (reads x once):  `dA += gᵀ·x [rank, d_in]`, `dx += g·A [rows, d_in]` (optional).
//! A `[rank, d_in]`, B `[d_out, rank]` (PEFT's lora_A / lora_B). dA, dB and dx accumulate, as
//! the CPU twin's do, so micro-batches and the base path's `dy·W` add into the same buffers.
//!
//! `plan_lora_backward` is a pure function of the shape and the buffer lengths (run and tested on
//! any machine): every count positive and within int32, the rank within the kernels' shared-memory
//! tiles, the scale finite, each buffer exactly its shape, the grids within CUDA's limits. A
//! launch only uses what it returned.

use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, LaunchConfig};

use crate::Result;

use super::device::{cuda_err, CudaDevice};
use super::ffi::{LfLoraBwdParams, LF_LORA_BWD_MAX_RANK, LF_LORA_BWD_ROWS, LF_LORA_BWD_THREADS, LF_LORA_BWD_TILE};
use super::launch::launch_kernel;
use super::validate::{count_i32, invalid, mul};

// SAFETY: a `#[repr(C)]` struct of int32 and f32 fields generated from csrc/lora_backward.h, no
// pointers, so its bytes passed by value are exactly the kernel's C struct parameter.
unsafe impl cudarc::driver::DeviceRepr for LfLoraBwdParams {}

/// Largest grid y (row chunks of either pass).
const MAX_GRID_Y: usize = 65535;

/// Shapes of one LoRA backward: `rows` token rows, `d_in -> d_out`, rank `rank`, scale `scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraBackwardShape {
    /// Rows of the batch.
    pub rows: usize,
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
    /// The pair's rank.
    pub rank: usize,
    /// The factor the product is multiplied by.
    pub scale: f32,
}

/// Element counts of the buffers of one call, in the order of `CudaLoraBackward::run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraBackwardLens {
    /// Elements of x.
    pub x: usize,
    /// Elements of x·Aᵀ.
    pub xa: usize,
    /// Elements of dy.
    pub dy: usize,
    /// Elements of A.
    pub a: usize,
    /// Elements of B.
    pub b: usize,
    /// Elements of dA.
    pub da: usize,
    /// Elements of dB.
    pub db: usize,
    /// `None`: no input gradient wanted.
    pub dx: Option<usize>,
}

impl LoraBackwardLens {
    /// The lengths `shape` needs (what a caller allocates).
    pub fn for_shape(s: &LoraBackwardShape, with_dx: bool) -> Self {
        LoraBackwardLens {
            x: s.rows * s.d_in,
            xa: s.rows * s.rank,
            dy: s.rows * s.d_out,
            a: s.rank * s.d_in,
            b: s.d_out * s.rank,
            da: s.rank * s.d_in,
            db: s.d_out * s.rank,
            dx: with_dx.then_some(s.rows * s.d_in),
        }
    }
}

/// A checked LoRA backward: the kernels' parameters and the two grids.
#[derive(Clone, Copy, Debug)]
pub struct LoraBackwardPlan {
    /// The kernels' parameters.
    pub params: LfLoraBwdParams,
    /// Pass 1: `(ceil(d_out / TILE), ceil(rows / ROWS), 1)`.
    pub dy_grid: (u32, u32, u32),
    /// Pass 2: `(ceil(d_in / TILE), ceil(rows / ROWS), 1)`.
    pub x_grid: (u32, u32, u32),
    /// Elements of the `g [rows, rank]` workspace.
    pub g_len: usize,
}

/// Checks one LoRA backward (see the module comment) and returns what its launches use.
pub fn plan_lora_backward(s: &LoraBackwardShape, lens: &LoraBackwardLens) -> Result<LoraBackwardPlan> {
    const OP: &str = "lora backward";
    let rows = count_i32(OP, "rows", s.rows)?;
    let d_in = count_i32(OP, "d_in", s.d_in)?;
    let d_out = count_i32(OP, "d_out", s.d_out)?;
    if s.rank == 0 || s.rank > LF_LORA_BWD_MAX_RANK as usize {
        return Err(invalid(format!("{OP}: rank {} is outside 1..={LF_LORA_BWD_MAX_RANK} (the kernels' tiles)", s.rank)));
    }
    if !s.scale.is_finite() {
        return Err(invalid(format!("{OP}: the scale {} is not finite", s.scale)));
    }
    let want = |name: &str, len: usize, a: (&str, usize), b: (&str, usize)| -> Result<()> {
        let n = mul(OP, &format!("{} * {}", a.0, b.0), a.1, b.1)?;
        // Row-major widths the kernels index with 64-bit offsets, but whole buffers must still be
        // addressable and their element counts must match the shape exactly.
        if len != n {
            return Err(invalid(format!("{OP}: `{name}` has {len} elements; its shape [{}, {}] needs {n}", a.1, b.1)));
        }
        Ok(())
    };
    want("x", lens.x, ("rows", s.rows), ("d_in", s.d_in))?;
    want("xa", lens.xa, ("rows", s.rows), ("rank", s.rank))?;
    want("dy", lens.dy, ("rows", s.rows), ("d_out", s.d_out))?;
    want("A", lens.a, ("rank", s.rank), ("d_in", s.d_in))?;
    want("B", lens.b, ("d_out", s.d_out), ("rank", s.rank))?;
    want("dA", lens.da, ("rank", s.rank), ("d_in", s.d_in))?;
    want("dB", lens.db, ("d_out", s.d_out), ("rank", s.rank))?;
    if let Some(dx) = lens.dx {
        want("dx", dx, ("rows", s.rows), ("d_in", s.d_in))?;
    }
    let row_blocks = s.rows.div_ceil(LF_LORA_BWD_ROWS as usize);
    if row_blocks > MAX_GRID_Y {
        return Err(invalid(format!(
            "{OP}: {} rows need {row_blocks} row blocks of {LF_LORA_BWD_ROWS}, over the grid limit {MAX_GRID_Y}; split the batch",
            s.rows
        )));
    }
    let tiles = |n: usize| n.div_ceil(LF_LORA_BWD_TILE as usize) as u32;
    Ok(LoraBackwardPlan {
        params: LfLoraBwdParams { rows, d_in, d_out, rank: s.rank as i32, scale: s.scale },
        dy_grid: (tiles(s.d_out), row_blocks as u32, 1),
        x_grid: (tiles(s.d_in), row_blocks as u32, 1),
        g_len: s.rows * s.rank,
    })
}

/// The LoRA backward module loaded on a `CudaDevice` device.
pub struct CudaLoraBackward {
    dy_pass: CudaFunction,
    x_pass: CudaFunction,
}

impl CudaLoraBackward {
    /// Loads the LoRA backward kernels on the device.
    pub fn new(ops: &CudaDevice) -> Result<Self> {
        let module = ops.load_embedded("lora_backward", "LoRA backward")?;
        let get = |name: &str| module.function(name);
        Ok(CudaLoraBackward { dy_pass: get("lf_lora_bwd_dy_f32")?, x_pass: get("lf_lora_bwd_x_f32")? })
    }

    /// `dB += s·dyᵀ·xa`, `dA += (s·dy·B)ᵀ·x`, and `dx += (s·dy·B)·A` when `dx` is given; f32
    /// storage and math. Shapes as in the module comment; every length is checked first.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        ops: &CudaDevice,
        shape: &LoraBackwardShape,
        x: &impl DevicePtr<f32>,
        xa: &impl DevicePtr<f32>,
        dy: &impl DevicePtr<f32>,
        a: &impl DevicePtr<f32>,
        b: &impl DevicePtr<f32>,
        da: &mut impl DevicePtrMut<f32>,
        db: &mut impl DevicePtrMut<f32>,
        dx: Option<&mut impl DevicePtrMut<f32>>,
    ) -> Result<()> {
        const OP: &str = "lora backward";
        let lens =
            LoraBackwardLens { x: x.len(), xa: xa.len(), dy: dy.len(), a: a.len(), b: b.len(), da: da.len(), db: db.len(), dx: dx.as_ref().map(|d| d.len()) };
        let plan = plan_lora_backward(shape, &lens)?;
        ops.check_context(OP, "x", x)?;
        ops.check_context(OP, "xa", xa)?;
        ops.check_context(OP, "dy", dy)?;
        ops.check_context(OP, "A", a)?;
        ops.check_context(OP, "B", b)?;
        ops.check_context(OP, "dA", da)?;
        ops.check_context(OP, "dB", db)?;
        if let Some(d) = &dx {
            ops.check_context(OP, "dx", *d)?;
        }
        let stream = &ops.stream;
        // g is a sum over column tiles of dy (atomicAdd): it starts at zero.
        let mut g = stream.alloc_zeros::<f32>(plan.g_len).map_err(cuda_err(format!("allocating {} elements", plan.g_len)))?;
        let p = plan.params;
        let block = (LF_LORA_BWD_THREADS, 1, 1);
        {
            let (dyp, _dy) = dy.device_ptr(stream);
            let (xap, _xa) = xa.device_ptr(stream);
            let (bp, _b) = b.device_ptr(stream);
            let (gp, _g) = g.device_ptr_mut(stream);
            let (dbp, _db) = db.device_ptr_mut(stream);
            let cfg = LaunchConfig { grid_dim: plan.dy_grid, block_dim: block, shared_mem_bytes: 0 };
            // SAFETY: lf_lora_bwd_dy_f32(const float* dy, const float* xa, const float* b, float* g,
            // float* db, LfLoraBwdParams). plan_lora_backward checked dy = rows * d_out, xa = rows *
            // rank, B = dB = d_out * rank elements (0 < rank <= LF_LORA_BWD_MAX_RANK, the kernel's
            // shared tiles), all on this context; g (rows * rank, zeroed above) is owned here; dB
            // is borrowed mutably, so it aliases no input. The grid covers d_out by TILE columns and
            // rows by ROWS rows, as the kernel indexes; it bounds-checks every edge tile.
            unsafe { launch_kernel(stream, &self.dy_pass, "lf_lora_bwd_dy_f32", cfg, &[&dyp, &xap, &bp, &gp, &dbp, &p]) }?;
        }
        let (xp, _x) = x.device_ptr(stream);
        let (gp, _g) = g.device_ptr(stream);
        let (ap, _a) = a.device_ptr(stream);
        let (dap, _da) = da.device_ptr_mut(stream);
        let mut dx_guard = None;
        let dxp: u64 = match dx {
            Some(d) => {
                let (ptr, guard) = d.device_ptr_mut(stream);
                dx_guard = Some(guard);
                ptr
            }
            None => 0, // the kernel skips dx on a null pointer
        };
        let cfg = LaunchConfig { grid_dim: plan.x_grid, block_dim: block, shared_mem_bytes: 0 };
        // SAFETY: lf_lora_bwd_x_f32(const float* x, const float* g, const float* a, float* da,
        // float* dx, LfLoraBwdParams). x = rows * d_in, A = dA = rank * d_in, dx (if not null) =
        // rows * d_in elements, checked by plan_lora_backward, on this context; g was written by
        // pass 1, enqueued before on the same stream; dA and dx are borrowed mutably (distinct
        // buffers, no alias with the inputs); each block owns its dx cells, so the plain += in the
        // kernel does not race.
        unsafe { launch_kernel(stream, &self.x_pass, "lf_lora_bwd_x_f32", cfg, &[&xp, &gp, &ap, &dap, &dxp, &p]) }?;
        drop(dx_guard);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(rows: usize, d_in: usize, d_out: usize, rank: usize) -> LoraBackwardShape {
        LoraBackwardShape { rows, d_in, d_out, rank, scale: 2.0 }
    }

    #[test]
    fn grids_cover_the_matrices() {
        let s = shape(300, 4096, 14336, 16);
        let p = plan_lora_backward(&s, &LoraBackwardLens::for_shape(&s, true)).unwrap();
        assert_eq!(p.dy_grid, (14336 / 64, 300usize.div_ceil(32) as u32, 1));
        assert_eq!(p.x_grid, (64, 10, 1));
        assert_eq!(p.g_len, 300 * 16);
        let s = shape(1, 77, 100, 3);
        let p = plan_lora_backward(&s, &LoraBackwardLens::for_shape(&s, false)).unwrap();
        assert_eq!((p.dy_grid, p.x_grid), ((2, 1, 1), (2, 1, 1)));
    }

    #[test]
    fn bad_arguments_are_refused() {
        let s = shape(7, 64, 32, 8);
        let ok = LoraBackwardLens::for_shape(&s, true);
        assert!(plan_lora_backward(&s, &ok).is_ok());
        for (what, s2, lens) in [
            ("rank 0", shape(7, 64, 32, 0), LoraBackwardLens::for_shape(&shape(7, 64, 32, 0), true)),
            ("rank 65", shape(7, 64, 32, 65), LoraBackwardLens::for_shape(&shape(7, 64, 32, 65), true)),
            ("no rows", shape(0, 64, 32, 8), LoraBackwardLens::for_shape(&shape(0, 64, 32, 8), true)),
            ("short x", s, LoraBackwardLens { x: ok.x - 1, ..ok }),
            ("long dB", s, LoraBackwardLens { db: ok.db + 1, ..ok }),
            ("dx of another shape", s, LoraBackwardLens { dx: Some(5), ..ok }),
            ("NaN scale", LoraBackwardShape { scale: f32::NAN, ..s }, ok),
            ("rows over int32", shape(1 << 31, 1, 1, 1), LoraBackwardLens { x: 1 << 31, xa: 1 << 31, dy: 1 << 31, a: 1, b: 1, da: 1, db: 1, dx: None }),
            ("too many row blocks", shape(32 * 65536, 1, 1, 1), LoraBackwardLens::for_shape(&shape(32 * 65536, 1, 1, 1), false)),
        ] {
            assert!(plan_lora_backward(&s2, &lens).is_err(), "{what} must be refused");
        }
    }
}
