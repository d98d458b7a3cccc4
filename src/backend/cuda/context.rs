//! `CudaContext`: the device, its two streams, the kernel modules, the activation dtype and the
//! buffer pool, with the tensor plumbing every part of the CUDA backend shares (new tensors from
//! the pool, copies, uploads, downloads, the dense/NF4 linear). Below `step`, `graph`, `train`
//! and `backend` in `backend::cuda`'s house.

use std::sync::{Arc, Mutex};

use half::bf16;

use crate::{Error, Result};

use super::attention::CudaAttention;
use super::device::CudaDevice;
use super::dtype::DType;
use super::linear::CudaLinear;
use super::lora::CudaLora;
use super::nf4::CudaNf4;
use super::pool::{self, SharedPool};
use super::sampling::CudaSampler;
use super::validate::invalid;
use super::values::{with_dtype, CudaMatrix, CudaTensor, CudaVector, CudaWeight, DenseBuf, Typed};

/// The device side of the backend that every part of it works over: the compute and transfer
/// streams, the kernel modules, the activation dtype and the activation buffer pool. The step
/// (`step`), CUDA graphs (`graph`) and training (`train`) code take it (or the backend, which
/// derefs to it) and never the backend's own state.
pub struct CudaContext {
    /// The compute stream: a forward's kernels, and only those while a step runs (a CUDA graph
    /// capture records everything enqueued on it).
    pub(crate) dev: CudaDevice,
    /// Weights, adapters and the KV cache are uploaded on their own stream, synchronized before
    /// the upload returns, so they neither wait for nor leak into a decode step.
    pub(crate) transfer: CudaDevice,
    pub(crate) attn: CudaAttention,
    pub(crate) nf4: CudaNf4,
    pub(crate) lora: CudaLora,
    pub(crate) linear: CudaLinear,
    pub(crate) sampler: CudaSampler,
    pub(crate) act: DType,
    /// Where new tensors' buffers come from (a graph capture swaps in its private pool).
    pool: Mutex<SharedPool>,
}

impl CudaContext {
    /// The kernels' modules on an opened device, activations in `act`.
    pub(crate) fn new(dev: CudaDevice, act: DType) -> Result<Self> {
        // Ordering between the two streams is explicit (uploads synchronize before they return;
        // the compute stream is the only one a step uses), so cudarc's per-buffer events are not
        // needed, and a capture must not wait on events recorded outside it.
        // SAFETY: no buffer of this context is written on one stream and read on another without
        // a synchronization in between (see `transfer`); turning the tracking off only removes
        // cudarc's automatic waits.
        unsafe { dev.context().disable_event_tracking() };
        let transfer = dev.sibling()?;
        let attn = CudaAttention::new(&dev)?;
        let nf4 = CudaNf4::new(&dev)?;
        let lora = CudaLora::new(&dev)?;
        let linear = CudaLinear::new(&dev)?;
        let sampler = super::sampling::CudaSampler::new(&dev)?;
        Ok(CudaContext { dev, transfer, attn, nf4, lora, linear, sampler, act, pool: Mutex::new(Arc::new(Mutex::new(pool::BufPool::default()))) })
    }

    /// `t` as f32 on the host (the device stream syncs in the download).
    pub(crate) fn download_f32(&self, t: &CudaTensor) -> Result<Vec<f32>> {
        with_dtype!(t.dtype, T => {
            let v = t.view::<T>()?;
            Ok(<T as Typed>::to_f32(&self.dev.download(&v)?))
        })
    }

    /// The device and its kernel modules.
    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    /// The activation (and KV cache) dtype.
    pub fn act_dtype(&self) -> DType {
        self.act
    }

    /// Makes `pool` the source of new tensors; returns the previous one.
    pub(crate) fn swap_pool(&self, pool: SharedPool) -> Result<SharedPool> {
        let mut p = self.pool.lock().map_err(|_| Error::Cuda("the pool's lock is poisoned".into()))?;
        Ok(std::mem::replace(&mut *p, pool))
    }

    /// A copy of `t` in a new tensor (device to device).
    pub(crate) fn copy_tensor(&self, t: &CudaTensor) -> Result<CudaTensor> {
        let mut out = self.new_tensor(t.dtype, t.rows, t.cols)?;
        with_dtype!(t.dtype, T => {
            let src = t.view::<T>()?;
            let mut dst = out.view_mut::<T>()?;
            self.dev.stream().memcpy_dtod(&src, &mut dst).map_err(super::device::cuda_err("copying a tensor on the device"))?;
        });
        Ok(out)
    }

    /// Buffers the current activation pool has allocated so far (steady steps allocate none).
    pub fn pool_allocations(&self) -> usize {
        self.pool.lock().ok().and_then(|p| p.lock().ok().map(|p| p.allocated)).unwrap_or(0)
    }

    /// Frees the activation buffers the pool caches (e.g. before loading more adapters).
    pub fn trim_pool(&self) {
        if let Ok(p) = self.pool.lock() {
            pool::trim(&p);
        }
    }

    pub(crate) fn upload_as<T: Typed>(&self, v: &[f32]) -> Result<DenseBuf> {
        self.uploaded(|t| Ok(T::wrap(t.upload(&T::from_f32(v))?)))
    }

    /// Runs `f` on the transfer stream and waits for it: what it uploaded is ready for any stream.
    pub(crate) fn uploaded<R>(&self, f: impl FnOnce(&CudaDevice) -> Result<R>) -> Result<R> {
        let r = f(&self.transfer)?;
        self.transfer.synchronize()?;
        Ok(r)
    }

    /// A new tensor `[rows, cols]` of `dtype` from the pool; its contents are whatever the buffer
    /// held: every caller overwrites it whole before anything reads it.
    pub(crate) fn new_tensor(&self, dtype: DType, rows: usize, cols: usize) -> Result<CudaTensor> {
        let n = rows.checked_mul(cols).ok_or_else(|| invalid(format!("a [{rows}, {cols}] tensor overflows")))?;
        let pool = self.pool.lock().map_err(|_| Error::Cuda("the pool's lock is poisoned".into()))?.clone();
        let buf = pool::take(&self.dev, &pool, n.max(1) * dtype.size())?;
        Ok(CudaTensor { buf, dtype, rows, cols })
    }

    pub(crate) fn check_act(&self, what: &str, t: &CudaTensor) -> Result<()> {
        if t.dtype != self.act {
            return Err(invalid(format!("{what}: a {:?} tensor on a {:?} backend", t.dtype, self.act)));
        }
        Ok(())
    }

    pub(crate) fn linear_t<T: Typed>(&self, x: &CudaTensor, w: &CudaMatrix, bias: Option<&CudaVector>) -> Result<CudaTensor> {
        let (m, k, n) = (x.rows, x.cols, w.rows);
        if k != w.cols {
            return Err(invalid(format!("linear: x has {k} columns, the weight [{}, {}] expects {}", w.rows, w.cols, w.cols)));
        }
        let mut y = self.new_tensor(T::DTYPE, m, n)?;
        let xs = x.view::<T>()?;
        let mut ys = y.view_mut::<T>()?;
        let b = bias.map(|b| &b.f32);
        match &w.weight {
            CudaWeight::Dense(DenseBuf::F32(ws)) => {
                self.linear.linear::<T, f32>(&self.dev, (m, n, k), &xs, ws, b, &mut ys, false)?;
            }
            CudaWeight::Dense(DenseBuf::Bf16(ws)) | CudaWeight::Bf16(ws) => {
                self.linear.linear::<T, bf16>(&self.dev, (m, n, k), &xs, ws, b, &mut ys, false)?;
            }
            CudaWeight::Nf4(nw) => {
                self.nf4.linear::<T>(&self.dev, &xs, m, nw, &mut ys)?;
                if let Some(b) = b {
                    self.dev.bias_add::<T>(&mut ys, b)?;
                }
            }
        }
        drop(ys);
        Ok(y)
    }
}
