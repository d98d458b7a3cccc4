//! Launch geometry of the ops kernels, as pure functions of the validated parameters (so it is
//! tested without a GPU). The shapes the kernels assume (kernels/ops.cu):
//! - rms_norm, rope, embedding: one block per row, grid.x = rows (<= i32::MAX, the grid limit);
//! - silu_mul, add: a grid-stride loop, grid.x capped at a few waves of the device;
//! - every block a multiple of 32 threads (rms_norm's block reduction needs whole warps), at
//!   most the kernel's `__launch_bounds__` (`LF_OPS_ROW_THREADS_MAX`, `LF_OPS_THREADS`).
//!
//! Block sizes follow the work of one row, counted in vector items (16 bytes) when the row length
//! allows the kernel's vector path, in elements otherwise.

use cudarc::driver::{CudaFunction, CudaStream, LaunchConfig, PushKernelArg};

use crate::Result;

use super::dtype::DType;
use super::ffi::{LfElementwiseParams, LfEmbeddingParams, LfRmsNormParams, LfRopeParams, LF_OPS_ROW_THREADS_MAX, LF_OPS_THREADS};

/// Threads for `units` independent work items: whole warps, at least one, at most `max`.
pub fn block_threads(units: usize, max: u32) -> u32 {
    let max_warps = (max / 32).max(1) as usize;
    (units.div_ceil(32).clamp(1, max_warps) * 32) as u32
}

/// Work items of a row of `len` elements: vectors when `len` is a multiple of the vector width.
fn row_units(len: usize, dtype: DType) -> usize {
    let v = dtype.vec_elems();
    if len.is_multiple_of(v) {
        len / v
    } else {
        len
    }
}

fn rows_config(rows: i32, threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// Grid and block of an RMSNorm launch: one block per row.
pub fn rms_norm(p: &LfRmsNormParams, dtype: DType) -> LaunchConfig {
    let units = row_units(p.cols.max(1) as usize, dtype);
    rows_config(p.rows, block_threads(units, LF_OPS_ROW_THREADS_MAX))
}

/// Grid and block of a RoPE launch.
pub fn rope(p: &LfRopeParams, dtype: DType) -> LaunchConfig {
    let heads = (p.n_q_heads.max(0) + p.n_k_heads.max(0)) as usize;
    let units = heads * row_units((p.head_dim / 2).max(1) as usize, dtype);
    rows_config(p.rows, block_threads(units, LF_OPS_THREADS))
}

/// Grid and block of an embedding gather.
pub fn embedding(p: &LfEmbeddingParams, dtype: DType) -> LaunchConfig {
    let units = row_units(p.hidden.max(1) as usize, dtype);
    rows_config(p.n_ids, block_threads(units, LF_OPS_THREADS))
}

/// A grid-stride element-wise launch over n elements: one thread per vector item (the tail of
/// n % vec elements is taken by the first threads), at most `max_blocks` blocks (>= 1), beyond
/// which threads loop.
pub fn elementwise(p: &LfElementwiseParams, dtype: DType, max_blocks: u32) -> LaunchConfig {
    let n = usize::try_from(p.n.max(1)).unwrap_or(usize::MAX);
    let units = (n / dtype.vec_elems()).max(1);
    let threads = block_threads(units, LF_OPS_THREADS);
    let blocks = units.div_ceil(threads as usize);
    let blocks = u32::try_from(blocks).map_or(max_blocks, |b| b.min(max_blocks)).max(1);
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// A value pushed by value into a kernel's argument list (a device pointer or a params struct).
pub(crate) trait KernelArg {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
}

impl<T: cudarc::driver::DeviceRepr> KernelArg for T {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        b.arg(self);
    }
}

/// The one launch of every kernel wrapper: enqueues `f` on `stream` with `args` in order, and
/// wraps a driver error as "launching WHAT: ...".
///
/// # Safety
/// `args` must be, in order, values whose types and meaning match `f`'s C parameters (device
/// pointers as `CUdeviceptr`, parameter structs by value), every pointer valid on the stream's
/// context for the extent the kernel touches given the parameters and `cfg`, and no buffer the
/// kernel writes aliased by another argument. Each caller states why in its `// SAFETY:`.
pub(crate) unsafe fn launch_kernel(
    stream: &CudaStream,
    f: &CudaFunction,
    what: impl std::fmt::Display,
    cfg: LaunchConfig,
    args: &[&dyn KernelArg],
) -> Result<()> {
    let mut b = stream.launch_builder(f);
    for a in args {
        a.push(&mut b);
    }
    // SAFETY: forwarded from this function's contract.
    unsafe { b.launch(cfg) }.map_err(|e| crate::Error::Cuda(format!("launching {what}: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_block(cfg: &LaunchConfig, max: u32) {
        let t = cfg.block_dim.0;
        assert!(t >= 32 && t.is_multiple_of(32) && t <= max, "block {t}");
        assert_eq!((cfg.block_dim.1, cfg.block_dim.2, cfg.grid_dim.1, cfg.grid_dim.2), (1, 1, 1, 1));
        assert!(cfg.grid_dim.0 >= 1 && cfg.grid_dim.0 <= i32::MAX as u32);
    }

    #[test]
    fn block_threads_are_whole_warps_within_bounds() {
        assert_eq!(block_threads(0, 256), 32);
        assert_eq!(block_threads(1, 256), 32);
        assert_eq!(block_threads(33, 256), 64);
        assert_eq!(block_threads(144, 1024), 160);
        assert_eq!(block_threads(1 << 40, 1024), 1024);
        assert_eq!(block_threads(usize::MAX, 256), 256);
    }

    #[test]
    fn row_kernels_one_block_per_row() {
        for (rows, cols) in [(1, 4096), (77, 7), (3, 576), (i32::MAX, 1)] {
            for d in [DType::F32, DType::Bf16] {
                let c = rms_norm(&LfRmsNormParams { rows, cols, eps: 1e-5 }, d);
                check_block(&c, LF_OPS_ROW_THREADS_MAX);
                assert_eq!(c.grid_dim.0, rows as u32);
                let c = embedding(&LfEmbeddingParams { n_ids: rows, hidden: cols, vocab: 10 }, d);
                check_block(&c, LF_OPS_THREADS);
                assert_eq!(c.grid_dim.0, rows as u32);
            }
        }
        // 4096 f32 = 1024 vectors: one per thread.
        assert_eq!(rms_norm(&LfRmsNormParams { rows: 1, cols: 4096, eps: 0.0 }, DType::F32).block_dim.0, 1024);
        // 4096 bf16 = 512 vectors of 8.
        assert_eq!(rms_norm(&LfRmsNormParams { rows: 1, cols: 4096, eps: 0.0 }, DType::Bf16).block_dim.0, 512);
        let p = LfRopeParams { rows: 5, n_q_heads: 32, n_k_heads: 8, head_dim: 128, max_pos: 10 };
        let c = rope(&p, DType::F32);
        check_block(&c, LF_OPS_THREADS);
        assert_eq!(c.grid_dim.0, 5);
    }

    #[test]
    fn elementwise_covers_n_or_loops() {
        for n in [1i64, 3, 7, 8, 1000, 4096, 64 * 14336, 1 << 34] {
            for d in [DType::F32, DType::Bf16] {
                let c = elementwise(&LfElementwiseParams { n }, d, 1056);
                check_block(&c, LF_OPS_THREADS);
                let threads = c.grid_dim.0 as i64 * c.block_dim.0 as i64;
                let v = d.vec_elems() as i64;
                // Either one thread per vector (and the tail fits in the first threads) or the
                // grid is at its cap and threads loop.
                assert!(threads >= n / v || c.grid_dim.0 == 1056, "n {n}: {threads} threads");
                assert!(threads >= n % v);
            }
        }
    }
}
