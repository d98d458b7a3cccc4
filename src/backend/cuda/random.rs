//! Seeded random weights created on the device (kernels/random.cu, C ABI csrc/random.h) for
//! `HostWeight::Random`: a full-size model without a checkpoint and without a host copy. The
//! values equal the host twin's (`backend::random::materialize`).

use cudarc::driver::{CudaSlice, DevicePtrMut, LaunchConfig};
use half::bf16;

use crate::backend::random::{absmax_range, part_seeds, value_range, RandomFormat, RandomSpec};
use crate::quant::nf4::{NF4_BLOCK, NF4_CODE};
use crate::Result;

use super::device::CudaDevice;
use super::dtype::{CudaElem, DType};
use super::ffi::{LfRandomParams, LF_RANDOM_THREADS};
use super::launch::launch_kernel;
use super::nf4::{CudaNf4Weight, Nf4Shape};
use super::validate::invalid;
use super::values::{CudaMatrix, CudaWeight, DenseBuf};

fn launch(ops: &CudaDevice, kernel: &str, out: &mut impl DevicePtrMut<u8>, p: LfRandomParams) -> Result<()> {
    let m = ops.load_embedded("random", "random fill")?;
    let f = m.function(kernel)?;
    let blocks = (p.n as u64).div_ceil(LF_RANDOM_THREADS as u64).clamp(1, 65535) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (LF_RANDOM_THREADS, 1, 1), shared_mem_bytes: 0 };
    let s = ops.stream();
    let (op, _o) = out.device_ptr_mut(s);
    // SAFETY: lf_random_<kind>(T* out, LfRandomParams): `out` holds at least n elements of the
    // kernel's type (the callers pass p.n = the buffer's element count); the grid-stride loop
    // writes out[0..n) only.
    unsafe { launch_kernel(s, &f, format_args!("{kernel}"), cfg, &[&op, &p]) }?;
    Ok(())
}

fn uniform<T: CudaElem>(ops: &CudaDevice, n: usize, seed: u64, (a, b): (f32, f32)) -> Result<CudaSlice<T>> {
    let mut out = ops.alloc_for_output::<T>(n)?;
    let kernel = match T::DTYPE {
        DType::F32 => "lf_random_uniform_f32",
        DType::Bf16 => "lf_random_uniform_bf16",
    };
    let p = LfRandomParams { n: n as i64, seed, a, b };
    // SAFETY: the bytes of `out` (n elements of T) are what the kernel writes as T.
    let mut bytes = unsafe { out.transmute_mut::<u8>(n * T::DTYPE.size()) }.ok_or_else(|| invalid("random: a view"))?;
    launch(ops, kernel, &mut bytes, p)?;
    drop(bytes);
    Ok(out)
}

/// The matrix `spec` describes, created on the device. Dense f32 specs follow the activation
/// dtype `act` (as `upload_matrix` stores dense weights).
pub fn create(ops: &CudaDevice, spec: &RandomSpec, act: DType) -> Result<CudaMatrix> {
    let n = spec
        .rows
        .checked_mul(spec.cols)
        .filter(|&n| n > 0 && i64::try_from(n).is_ok())
        .ok_or_else(|| invalid(format!("{}: [{}, {}] is empty or too large", spec.name, spec.rows, spec.cols)))?;
    let (vs, ss) = part_seeds(spec);
    let weight = match spec.format {
        RandomFormat::F32 => match act {
            DType::F32 => CudaWeight::Dense(DenseBuf::F32(uniform::<f32>(ops, n, vs, value_range(spec))?)),
            DType::Bf16 => CudaWeight::Dense(DenseBuf::Bf16(uniform::<bf16>(ops, n, vs, value_range(spec))?)),
        },
        RandomFormat::Bf16 => CudaWeight::Bf16(uniform::<bf16>(ops, n, vs, value_range(spec))?),
        RandomFormat::Nf4 => {
            let mut packed = ops.alloc_for_output::<u8>(n.div_ceil(2))?;
            launch(ops, "lf_random_bytes", &mut packed, LfRandomParams { n: n.div_ceil(2) as i64, seed: vs, a: 0.0, b: 0.0 })?;
            let absmax = uniform::<f32>(ops, n.div_ceil(NF4_BLOCK), ss, absmax_range(spec))?;
            CudaWeight::Nf4(CudaNf4Weight::from_parts(packed, absmax, Nf4Shape { n: spec.rows, k: spec.cols, blocksize: NF4_BLOCK }, NF4_CODE)?)
        }
    };
    Ok(CudaMatrix { rows: spec.rows, cols: spec.cols, weight })
}
