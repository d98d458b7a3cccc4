//! The CUDA backend's activation buffers: a caching pool, so that a forward step, after the first
//! ones, allocates nothing on the device (every tensor of a step takes a buffer some earlier step
//! returned). Buffers are raw bytes in power-of-two size classes (at most twice what a tensor
//! needs; few classes, so reuse is high whatever the batch shape); a tensor views its buffer as
//! f32 or bf16. Dropping a tensor returns its buffer. A CUDA graph captures with a private pool
//! of its own, so the buffers its replays write are never handed to anyone else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr};

use crate::{Error, Result};

use super::device::CudaDevice;
use super::dtype::CudaElem;

/// Smallest size class: 256 bytes (CUDA's allocation alignment).
const MIN_CLASS: usize = 256;

/// Free buffers by size class.
#[derive(Default)]
pub(crate) struct BufPool {
    free: HashMap<usize, Vec<CudaSlice<u8>>>,
    /// Buffers this pool ever allocated (for tests: steady steps allocate none).
    pub(crate) allocated: usize,
    /// Bytes held by this pool's free lists.
    pub(crate) cached_bytes: usize,
}

pub(crate) type SharedPool = Arc<Mutex<BufPool>>;

fn class_of(bytes: usize) -> usize {
    bytes.max(MIN_CLASS).next_power_of_two()
}

/// A device buffer checked out of a pool; returned to it on drop.
pub struct PooledBuf {
    buf: Option<CudaSlice<u8>>,
    class: usize,
    pool: SharedPool,
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            if let Ok(mut p) = self.pool.lock() {
                p.cached_bytes += self.class;
                p.free.entry(self.class).or_default().push(b);
            }
        }
    }
}

impl PooledBuf {
    fn raw(&self) -> &CudaSlice<u8> {
        self.buf.as_ref().expect("a pooled buffer is present until dropped")
    }

    fn raw_mut(&mut self) -> &mut CudaSlice<u8> {
        self.buf.as_mut().expect("a pooled buffer is present until dropped")
    }

    /// The first `len` elements as `T`.
    pub fn view<T: CudaElem>(&self, len: usize) -> Result<CudaView<'_, T>> {
        // SAFETY: the buffer is device memory of `class` >= len * size_of::<T>() bytes (checked by
        // transmute, which returns None otherwise); T is f32 or bf16, for which every bit pattern
        // is a value, and the buffer's alignment (256) exceeds T's.
        unsafe { self.raw().transmute::<T>(len) }.ok_or_else(|| Error::Cuda(format!("a pooled buffer of {} bytes is too small for {len} elements", self.class)))
    }

    pub fn view_mut<T: CudaElem>(&mut self, len: usize) -> Result<CudaViewMut<'_, T>> {
        let class = self.class;
        // SAFETY: as `view`; the mutable borrow of self makes this the only view.
        unsafe { self.raw_mut().transmute_mut::<T>(len) }
            .ok_or_else(|| Error::Cuda(format!("a pooled buffer of {class} bytes is too small for {len} elements")))
    }

    /// The device address (for tests of address stability).
    pub fn device_address(&self, dev: &CudaDevice) -> u64 {
        self.raw().device_ptr(dev.stream()).0
    }
}

/// Takes a buffer of at least `bytes` from `pool`, allocating one on `dev` if its class is empty.
pub(crate) fn take(dev: &CudaDevice, pool: &SharedPool, bytes: usize) -> Result<PooledBuf> {
    let class = class_of(bytes);
    let reused = {
        let mut p = pool.lock().map_err(|_| Error::Cuda("the buffer pool's lock is poisoned".into()))?;
        let b = p.free.get_mut(&class).and_then(Vec::pop);
        if b.is_some() {
            p.cached_bytes -= class;
        }
        b
    };
    let buf = match reused {
        Some(b) => b,
        None => {
            let b = dev.alloc_for_output::<u8>(class)?;
            if let Ok(mut p) = pool.lock() {
                p.allocated += 1;
            }
            b
        }
    };
    Ok(PooledBuf { buf: Some(buf), class, pool: pool.clone() })
}

/// Frees every cached buffer of `pool` (when memory is needed elsewhere).
pub(crate) fn trim(pool: &SharedPool) {
    if let Ok(mut p) = pool.lock() {
        p.free.clear();
        p.cached_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn classes_are_powers_of_two_from_256() {
        assert_eq!(super::class_of(0), 256);
        assert_eq!(super::class_of(1), 256);
        assert_eq!(super::class_of(256), 256);
        assert_eq!(super::class_of(257), 512);
        assert_eq!(super::class_of(3 << 20), 4 << 20);
    }
}
