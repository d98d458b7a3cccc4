//! `CudaDevice`: one CUDA device with the `ops` kernels loaded: its context, the stream every op
//! runs on, and the kernel functions. The op wrappers are in `ops.rs`; this file makes the
//! device and moves data to and from it.

use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, DeviceSlice, DriverError};
use cudarc::nvrtc::Ptx;

use crate::{Error, Result};

use super::availability::check_available;
use super::dtype::DType;
use super::embedded;

/// Blocks per SM a grid-stride launch may use before its threads loop: two waves of 256-thread
/// blocks at 2048 resident threads per SM. Not tuned yet (kernels/NOTES.md).
const GRID_STRIDE_BLOCKS_PER_SM: u32 = 16;

/// Maps a driver error into the crate's error, saying what was being done.
pub(crate) fn cuda_err(what: impl Into<String>) -> impl FnOnce(DriverError) -> Error {
    let what = what.into();
    move |e| Error::Cuda(format!("{what}: {e}"))
}

/// The f32 and bf16 instantiations of one op.
#[derive(Clone)]
pub(crate) struct PerDtype {
    f32: CudaFunction,
    bf16: CudaFunction,
}

impl PerDtype {
    fn load(module: &Arc<CudaModule>, op: &str) -> Result<Self> {
        let get = |d: DType| {
            let name = format!("lf_{op}_{}", d.suffix());
            module.load_function(&name).map_err(cuda_err(format!("loading kernel {name} from the ops module")))
        };
        Ok(PerDtype { f32: get(DType::F32)?, bf16: get(DType::Bf16)? })
    }

    pub(crate) fn get(&self, d: DType) -> &CudaFunction {
        match d {
            DType::F32 => &self.f32,
            DType::Bf16 => &self.bf16,
        }
    }
}

/// The kernels of `kernels/ops.cu`.
#[derive(Clone)]
pub(crate) struct OpsKernels {
    pub(crate) rms_norm: PerDtype,
    pub(crate) rope: PerDtype,
    pub(crate) silu_mul: PerDtype,
    pub(crate) add: PerDtype,
    pub(crate) embedding: PerDtype,
    pub(crate) bias_add: PerDtype,
    /// `lf_rms_norm_f32_bf16` and `lf_add_f32_bf16`: an f32 residual stream with bf16 activations.
    pub(crate) rms_norm_f32_bf16: CudaFunction,
    pub(crate) add_f32_bf16: CudaFunction,
    /// `lf_cast_f32_bf16` and `lf_cast_bf16_f32`.
    pub(crate) cast_to_bf16: CudaFunction,
    pub(crate) cast_to_f32: CudaFunction,
}

/// A CUDA device ready to run the ops kernels. Every op is enqueued on `stream()`; results are
/// ready after `synchronize()` or a download.
pub struct CudaDevice {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) kernels: OpsKernels,
    /// Grid cap of the grid-stride kernels.
    pub(crate) max_blocks: u32,
    name: String,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice").field("device", &self.name).field("ordinal", &self.ctx.ordinal()).finish()
    }
}

/// A kernels module of this build (`kernels/<stem>.cu`), loaded on one device.
pub(crate) struct EmbeddedModule {
    module: Arc<cudarc::driver::CudaModule>,
    stem: &'static str,
}

impl EmbeddedModule {
    /// The kernel `name` of this module.
    pub(crate) fn function(&self, name: &str) -> Result<cudarc::driver::CudaFunction> {
        self.module.load_function(name).map_err(cuda_err(format!("loading kernel {name} from {}", self.stem)))
    }
}

impl CudaDevice {
    /// Opens device `ordinal` and loads the embedded `ops` module. Fails with `Error::Cuda` saying
    /// why: CUDA unavailable here (see `check_available`), or a driver call failing.
    pub fn new(ordinal: usize) -> Result<Self> {
        check_available(ordinal).map_err(|why| Error::Cuda(why.to_string()))?;
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| Error::Cuda(format!("creating a context on device {ordinal} panicked in cudarc")))?
            .map_err(cuda_err(format!("creating a context on device {ordinal}")))?;
        // A stream of our own (not the legacy default stream): CUDA graphs capture from it.
        let stream = ctx.new_stream().map_err(cuda_err("creating a stream"))?;
        let image = embedded::module_image("ops").ok_or_else(|| Error::Cuda("the ops kernels (kernels/ops.cu) are not built for this driver".into()))?;
        if image.as_ptr().align_offset(8) != 0 {
            return Err(Error::Cuda("the copy of the ops module image is not 8-byte aligned".into()));
        }
        let module = ctx.load_module(Ptx::from_binary(image)).map_err(cuda_err(
            "loading the ops module (kernels built for sm_80, sm_90a and compute_80 PTX; a driver older than the \
             CUDA 13 toolkit cannot JIT that PTX)",
        ))?;
        let kernels = OpsKernels {
            rms_norm: PerDtype::load(&module, "rms_norm")?,
            rope: PerDtype::load(&module, "rope")?,
            silu_mul: PerDtype::load(&module, "silu_mul")?,
            add: PerDtype::load(&module, "add")?,
            embedding: PerDtype::load(&module, "embedding")?,
            bias_add: PerDtype::load(&module, "bias_add")?,
            rms_norm_f32_bf16: module.load_function("lf_rms_norm_f32_bf16").map_err(cuda_err("loading kernel lf_rms_norm_f32_bf16"))?,
            add_f32_bf16: module.load_function("lf_add_f32_bf16").map_err(cuda_err("loading kernel lf_add_f32_bf16"))?,
            cast_to_bf16: module.load_function("lf_cast_f32_bf16").map_err(cuda_err("loading kernel lf_cast_f32_bf16"))?,
            cast_to_f32: module.load_function("lf_cast_bf16_f32").map_err(cuda_err("loading kernel lf_cast_bf16_f32"))?,
        };
        let sms = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_err(cuda_err("reading the SM count"))?;
        let max_blocks = u32::try_from(sms).unwrap_or(1).max(1) * GRID_STRIDE_BLOCKS_PER_SM;
        let name = ctx.name().unwrap_or_else(|_| format!("CUDA device {ordinal}"));
        Ok(CudaDevice { ctx, stream, kernels, max_blocks, name })
    }

    /// Loads the module of `kernels/<stem>.cu` (`what`: the kernels' name in the error a build
    /// without them gives): its fatbin, or its emulated twin under the emulator.
    pub(crate) fn load_embedded(&self, stem: &'static str, what: &str) -> Result<EmbeddedModule> {
        let image = embedded::module_image(stem).ok_or_else(|| Error::Cuda(format!("the {what} kernels (kernels/{stem}.cu) are not built for this driver")))?;
        let module = self.ctx.load_module(Ptx::from_binary(image)).map_err(cuda_err(format!("loading the {stem} module")))?;
        Ok(EmbeddedModule { module, stem })
    }

    /// The same device and kernels with work enqueued on a new stream of their own (e.g. uploads
    /// beside a compute stream).
    pub fn sibling(&self) -> Result<CudaDevice> {
        let stream = self.ctx.new_stream().map_err(cuda_err("creating a stream"))?;
        Ok(CudaDevice { ctx: self.ctx.clone(), stream, kernels: self.kernels.clone(), max_blocks: self.max_blocks, name: self.name.clone() })
    }

    /// The raw module of `kernels/<stem>.cu` (under the emulator also its self-test kernels,
    /// stem `selftest`), for tests and tools that launch kernels directly.
    pub fn raw_module(&self, stem: &'static str) -> Result<Arc<CudaModule>> {
        Ok(self.load_embedded(stem, stem)?.module)
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// The cudarc context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every op is enqueued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits for every op enqueued so far; reports an error any of them raised.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err("synchronizing the stream"))?;
        self.ctx.check_err().map_err(cuda_err("an earlier asynchronous CUDA call"))
    }

    /// Copies `host` into a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(host).map_err(cuda_err(format!("copying {} elements to the device", host.len())))
    }

    /// Copies a device buffer back to the host (waits for the ops that write it). Fails if any
    /// op enqueued before it raised an error, rather than returning what a faulted kernel left.
    pub fn download<T: DeviceRepr>(&self, dev: &impl DevicePtr<T>) -> Result<Vec<T>> {
        let host = self.stream.clone_dtoh(dev).map_err(cuda_err(format!("copying {} elements from the device", dev.len())))?;
        // cudarc records the error of the synchronisation that ends the copy instead of returning it.
        self.ctx.check_err().map_err(cuda_err("an asynchronous CUDA call before the copy"))?;
        Ok(host)
    }

    /// A new device buffer of `len` elements whose contents are unspecified: only for outputs a
    /// kernel overwrites entirely before anything reads them.
    pub(crate) fn alloc_for_output<T: DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>> {
        // SAFETY: the memory is uninitialised device memory. Callers pass the buffer straight to a
        // kernel that writes every element (each ops kernel does: the parity tests poison their
        // outputs with NaN to check it) and return it only if that launch was enqueued; no host
        // code reads it before, and device reads are stream-ordered after the kernel.
        unsafe { self.stream.alloc::<T>(len) }.map_err(cuda_err(format!("allocating {len} elements")))
    }

    /// Rejects a buffer that lives in another CUDA context: its pointer means nothing here.
    pub(crate) fn check_context<T>(&self, op: &str, name: &str, buf: &impl DeviceSlice<T>) -> Result<()> {
        if buf.stream().context().cu_ctx() != self.ctx.cu_ctx() {
            return Err(Error::InvalidArgument(format!("{op}: `{name}` belongs to another CUDA context")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// The engine thread owns the device and may hand it between threads.
    #[test]
    fn cuda_ops_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::CudaDevice>();
    }
}
