//! Next-token sampling on the GPU (kernels/sampling.cu, C ABI csrc/sampling.h): one block per
//! row of logits, the ids written to the device and downloaded once per step. CPU twin:
//! `backend::sampling::sample_row`.

use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, LaunchConfig};

use crate::backend::sampler::TokenMask;
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
    Ok(LfSampleRow { temperature: r.temperature, top_k, top_p: r.top_p, mask_row: -1, seed: r.seed, draw: r.draw })
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

    /// Samples every row of `logits [n_rows, vocab]` with `rows` (on the device) into `out`;
    /// a row whose `mask_row` is `m >= 0` obeys mask `m` of `masks` (`(n_masks, words)`:
    /// `n_masks` masks of `words = ceil(vocab / 32)` packed words each).
    ///
    /// # Safety
    /// `p` must be `plan_sample` for these logits; `rows` must hold `p.n_rows` rows that passed
    /// `sample_row_c`, each with `mask_row` -1 or below the `n_masks` of `masks` (None: every
    /// `mask_row` is -1).
    pub unsafe fn sample_planned<T: CudaElem>(
        &self,
        ops: &CudaDevice,
        logits: &impl DevicePtr<T>,
        rows: &impl DevicePtr<LfSampleRow>,
        masks: Option<(&impl DevicePtr<u32>, usize)>,
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
        let words = (p.vocab as usize).div_ceil(32);
        if let Some((m, n_masks)) = masks {
            if m.len() < n_masks * words {
                return Err(invalid(format!("{OP}: {} mask words for {n_masks} masks of {words}", m.len())));
            }
            ops.check_context(OP, "masks", m)?;
        }
        let s = ops.stream();
        let (lp, _l) = logits.device_ptr(s);
        let (rp, _r) = rows.device_ptr(s);
        // A null pointer: no row is masked.
        let (mp, _m) = match masks {
            Some((m, _)) => {
                let (ptr, guard) = m.device_ptr(s);
                (ptr, Some(guard))
            }
            None => (0, None),
        };
        let (op, _o) = out.device_ptr_mut(s);
        let f = match T::DTYPE {
            DType::F32 => &self.f32,
            DType::Bf16 => &self.bf16,
        };
        let cfg = LaunchConfig { grid_dim: (p.n_rows as u32, 1, 1), block_dim: (LF_SAMPLE_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: lf_sample_<T>(const T* logits, const LfSampleRow* rows, const uint32_t* masks,
        // uint32_t* out, LfSampleParams): logits hold n_rows * vocab elements, rows and out at
        // least n_rows, masks (or null) n_masks * words (checked above), every row's parameters
        // checked by sample_row_c and its mask_row below n_masks (this function's contract); one
        // block per row writes out[row] only.
        unsafe { launch_kernel(s, f, "lf_sample", cfg, &[&lp, &rp, &mp, &op, p]) }?;
        Ok(())
    }

    /// Samples `logits [rows.len(), vocab]`: uploads the rows, launches, downloads the ids.
    pub fn sample<T: CudaElem>(&self, ops: &CudaDevice, logits: &impl DevicePtr<T>, vocab: usize, rows: &[SampleRow]) -> Result<Vec<u32>> {
        self.sample_masked(ops, logits, vocab, rows, &[])
    }

    /// `sample` with a token mask per row (`masks` empty, or one entry per row; None: no mask),
    /// each covering exactly `vocab` ids.
    pub fn sample_masked<T: CudaElem>(
        &self,
        ops: &CudaDevice,
        logits: &impl DevicePtr<T>,
        vocab: usize,
        rows: &[SampleRow],
        masks: &[Option<&TokenMask>],
    ) -> Result<Vec<u32>> {
        let p = plan_sample(rows.len(), vocab, logits.len())?;
        let mut c: Vec<LfSampleRow> = rows.iter().map(sample_row_c).collect::<Result<_>>()?;
        let packed = pack_masks(masks, &mut c, vocab)?;
        let dev_rows = ops.upload(&c)?;
        let mut out = ops.alloc_for_output::<u32>(rows.len())?;
        let dev_masks = if packed.is_empty() { None } else { Some(ops.upload(&packed)?) };
        let n_masks = masks.iter().flatten().count();
        // SAFETY: `p` is plan_sample for these logits; the rows passed sample_row_c and
        // pack_masks numbered their mask_row 0..n_masks over exactly those masks.
        unsafe { self.sample_planned(ops, logits, &dev_rows, dev_masks.as_ref().map(|m| (m, n_masks)), &mut out, &p)? };
        ops.download(&out)
    }
}

/// The packed words of `masks` (one entry per row or none at all; each `vocab` ids wide), in row
/// order, numbering each masked row's `mask_row` (0, 1, ...) in `rows` and setting the others to -1.
pub fn pack_masks(masks: &[Option<&TokenMask>], rows: &mut [LfSampleRow], vocab: usize) -> Result<Vec<u32>> {
    if !masks.is_empty() && masks.len() != rows.len() {
        return Err(invalid(format!("sample: {} masks for {} rows", masks.len(), rows.len())));
    }
    let words = vocab.div_ceil(32);
    let mut packed = Vec::new();
    let mut n = 0i32;
    for (i, r) in rows.iter_mut().enumerate() {
        match masks.get(i).copied().flatten() {
            Some(m) => {
                if m.len() != vocab {
                    return Err(invalid(format!("sample: row {i}'s token mask covers {} ids, the logits {vocab}", m.len())));
                }
                packed.extend_from_slice(&m.words()[..words]);
                r.mask_row = n;
                n += 1;
            }
            None => r.mask_row = -1,
        }
    }
    Ok(packed)
}

// The device's marker for a non-finite row is the twin's.
const _: () = assert!(super::ffi::LF_SAMPLE_NON_FINITE == crate::backend::sampling::NON_FINITE);
