//! Next-token sampling on the GPU (kernels/sampling.cu, C ABI csrc/sampling.h): one block per
//! row of logits, the ids written to the device and downloaded once per step. CPU twin:
//! `backend::sampling::sample_row`.

use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, LaunchConfig};

use crate::backend::sampling::SampleRow;
use crate::Result;

use super::device::CudaDevice;
use super::dtype::{CudaElem, DType};
use super::ffi::{LfSampleParams, LfSampleRow, LF_SAMPLE_THREADS};
use super::launch::launch_kernel;
use super::validate::{count_i32, invalid};

/// The C row of a `SampleRow`, checked: a finite temperature >= 0, top_p in (0, 1], top_k within
/// int32.
pub fn sample_row_c(r: &SampleRow) -> Result<LfSampleRow> {
    if !(r.temperature >= 0.0 && r.temperature.is_finite()) {
        return Err(invalid(format!("sample: temperature {} is not a finite number >= 0", r.temperature)));
    }
    if !(r.top_p > 0.0 && r.top_p <= 1.0) {
        return Err(invalid(format!("sample: top_p {} is not in (0, 1]", r.top_p)));
    }
    let top_k = i32::try_from(r.top_k).map_err(|_| invalid(format!("sample: top_k {} exceeds int32", r.top_k)))?;
    Ok(LfSampleRow { temperature: r.temperature, top_k, top_p: r.top_p, reserved: 0, seed: r.seed, draw: r.draw })
}

/// Checks a sampling launch: `logits_len` = n_rows * vocab.
pub fn plan_sample(n_rows: usize, vocab: usize, logits_len: usize) -> Result<LfSampleParams> {
    const OP: &str = "sample";
    let n = count_i32(OP, "rows", n_rows)?;
    let v = count_i32(OP, "vocab", vocab)?;
    if logits_len != n_rows * vocab {
        return Err(invalid(format!("{OP}: logits hold {logits_len} values; [{n_rows}, {vocab}] needs {}", n_rows * vocab)));
    }
    Ok(LfSampleParams { n_rows: n, vocab: v })
}

/// The sampling kernels loaded on a device.
pub struct CudaSampler {
    f32: CudaFunction,
    bf16: CudaFunction,
}

impl CudaSampler {
    /// Loads the sampling kernels on the device.
    pub fn new(ops: &CudaDevice) -> Result<Self> {
        let m = ops.load_embedded("sampling", "sampling")?;
        Ok(CudaSampler { f32: m.function("lf_sample_f32")?, bf16: m.function("lf_sample_bf16")? })
    }

    /// Samples every row of `logits [n_rows, vocab]` with `rows` (on the device) into `out`.
    ///
    /// # Safety
    /// `p` must be `plan_sample` for these logits; `rows` must hold `p.n_rows` rows that passed
    /// `sample_row_c`.
    pub unsafe fn sample_planned<T: CudaElem>(
        &self,
        ops: &CudaDevice,
        logits: &impl DevicePtr<T>,
        rows: &impl DevicePtr<LfSampleRow>,
        out: &mut impl DevicePtrMut<u32>,
        p: &LfSampleParams,
    ) -> Result<()> {
        const OP: &str = "sample";
        let n = p.n_rows as usize;
        if logits.len() != n * p.vocab as usize || rows.len() < n || out.len() < n {
            return Err(invalid(format!("{OP}: buffers shorter than the plan's {n} rows")));
        }
        ops.check_context(OP, "logits", logits)?;
        ops.check_context(OP, "rows", rows)?;
        ops.check_context(OP, "out", out)?;
        let s = ops.stream();
        let (lp, _l) = logits.device_ptr(s);
        let (rp, _r) = rows.device_ptr(s);
        let (op, _o) = out.device_ptr_mut(s);
        let f = match T::DTYPE {
            DType::F32 => &self.f32,
            DType::Bf16 => &self.bf16,
        };
        let cfg = LaunchConfig { grid_dim: (p.n_rows as u32, 1, 1), block_dim: (LF_SAMPLE_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: lf_sample_<T>(const T* logits, const LfSampleRow* rows, uint32_t* out,
        // LfSampleParams): logits hold n_rows * vocab elements, rows and out at least n_rows
        // (checked above), every row's parameters checked by sample_row_c (this function's
        // contract); one block per row writes out[row] only.
        unsafe { launch_kernel(s, f, "lf_sample", cfg, &[&lp, &rp, &op, p]) }?;
        Ok(())
    }

    /// Samples `logits [rows.len(), vocab]`: uploads the rows, launches, downloads the ids.
    pub fn sample<T: CudaElem>(&self, ops: &CudaDevice, logits: &impl DevicePtr<T>, vocab: usize, rows: &[SampleRow]) -> Result<Vec<u32>> {
        let p = plan_sample(rows.len(), vocab, logits.len())?;
        let c: Vec<LfSampleRow> = rows.iter().map(sample_row_c).collect::<Result<_>>()?;
        let dev_rows = ops.upload(&c)?;
        let mut out = ops.alloc_for_output::<u32>(rows.len())?;
        // SAFETY: `p` is plan_sample for these logits and the rows passed sample_row_c.
        unsafe { self.sample_planned(ops, logits, &dev_rows, &mut out, &p)? };
        ops.download(&out)
    }
}

// The device's marker for a non-finite row is the twin's.
const _: () = assert!(super::ffi::LF_SAMPLE_NON_FINITE == crate::backend::sampling::NON_FINITE);
