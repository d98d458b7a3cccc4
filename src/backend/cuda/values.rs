//! The CUDA backend's values: device tensors, weights, vectors, RoPE tables and the KV cache,
//! and the element-type dispatch (`with_dtype!`, `Typed`) the backend's ops use. The leaf of
//! `backend::cuda`'s own house: it imports kernels' types, never the backend.

use cudarc::driver::{CudaSlice, DevicePtr, ValidAsZeroBits};
use half::bf16;

use crate::kv::KvLayout;
use crate::Result;

use super::attention::CudaKvCache;
use super::device::CudaDevice;
use super::dtype::{CudaElem, DType};
use super::nf4::CudaNf4Weight;
use super::pool::PooledBuf;
use super::validate::invalid;

/// A weight's device buffer in one of the storage types (allocated once, exactly).
pub enum DenseBuf {
    /// f32 elements.
    F32(CudaSlice<f32>),
    /// bf16 elements.
    Bf16(CudaSlice<bf16>),
}

impl DenseBuf {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            DenseBuf::F32(_) => DType::F32,
            DenseBuf::Bf16(_) => DType::Bf16,
        }
    }

    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            DenseBuf::F32(s) => s.len(),
            DenseBuf::Bf16(s) => s.len(),
        }
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its device address (for metadata the kernels read).
    pub fn device_address(&self, dev: &CudaDevice) -> u64 {
        match self {
            DenseBuf::F32(s) => s.device_ptr(dev.stream()).0,
            DenseBuf::Bf16(s) => s.device_ptr(dev.stream()).0,
        }
    }
}

/// Activations `[rows, cols]` on the device, in a pooled buffer (returned to the pool on drop).
pub struct CudaTensor {
    pub(crate) buf: PooledBuf,
    pub(crate) dtype: DType,
    /// Rows (tokens).
    pub rows: usize,
    /// Columns (features).
    pub cols: usize,
}

impl CudaTensor {
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub(crate) fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub(crate) fn view<T: CudaElem>(&self) -> Result<cudarc::driver::CudaView<'_, T>> {
        if T::DTYPE != self.dtype {
            return Err(invalid(format!("a {:?} tensor read as {:?}", self.dtype, T::DTYPE)));
        }
        self.buf.view::<T>(self.len())
    }

    pub(crate) fn view_mut<T: CudaElem>(&mut self) -> Result<cudarc::driver::CudaViewMut<'_, T>> {
        if T::DTYPE != self.dtype {
            return Err(invalid(format!("a {:?} tensor written as {:?}", self.dtype, T::DTYPE)));
        }
        let n = self.len();
        self.buf.view_mut::<T>(n)
    }

    /// The device address of the tensor's buffer.
    pub fn device_address(&self, dev: &CudaDevice) -> u64 {
        self.buf.device_address(dev)
    }
}

/// How a weight matrix is held on the device.
pub enum CudaWeight {
    /// `[rows, cols]`: f32 for embedding tables and the lm_head (`upload_table`), else the
    /// activation dtype (LoRA A/B, an f32 base's linears).
    Dense(DenseBuf),
    /// `[rows, cols]` bf16 (a bf16 base's linear weights, whatever the activation dtype).
    Bf16(CudaSlice<bf16>),
    /// bitsandbytes NF4.
    Nf4(CudaNf4Weight),
}

/// A weight matrix `[rows, cols]` on the device.
pub struct CudaMatrix {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// The values on the device (dense or NF4).
    pub weight: CudaWeight,
}

/// A 1-D parameter: f32 (biases are always added in f32), and its bf16 copy when activations are
/// bf16 (the bf16 norm kernel reads weights in the activation type).
pub struct CudaVector {
    /// The f32 values.
    pub f32: CudaSlice<f32>,
    /// Their bf16 copy, with bf16 activations.
    pub bf16: Option<CudaSlice<bf16>>,
}

/// RoPE tables `[max_pos, half_dim]` f32.
pub struct CudaRope {
    pub(crate) cos: CudaSlice<f32>,
    pub(crate) sin: CudaSlice<f32>,
}

/// The paged K/V cache of every layer, in the activation dtype, with an id unique in the process
/// (a CUDA graph bakes in its addresses: graphs are keyed by it).
pub enum CudaKv {
    /// f32 K/V, and the cache's id.
    F32(CudaKvCache<f32>, u64),
    /// bf16 K/V, and the cache's id.
    Bf16(CudaKvCache<bf16>, u64),
}

pub(crate) static NEXT_KV_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl CudaKv {
    /// The cache's shape.
    pub fn layout(&self) -> KvLayout {
        match self {
            CudaKv::F32(c, _) => *c.layout(),
            CudaKv::Bf16(c, _) => *c.layout(),
        }
    }

    /// The cache's id, unique in the process.
    pub fn id(&self) -> u64 {
        match self {
            CudaKv::F32(_, id) | CudaKv::Bf16(_, id) => *id,
        }
    }
}

/// Runs `$body` with `$t` bound to the Rust element type of `$dtype` (f32 or bf16).
macro_rules! with_dtype {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::Bf16 => {
                type $t = bf16;
                $body
            }
        }
    };
}
pub(crate) use with_dtype;

/// The `CudaSlice<T>` of a weight buffer of the matching type, and host conversions.
pub(crate) trait Typed: CudaElem + ValidAsZeroBits + bytemuck::Pod {
    fn of(b: &DenseBuf) -> Result<&CudaSlice<Self>>;
    fn wrap(s: CudaSlice<Self>) -> DenseBuf;
    fn from_f32(v: &[f32]) -> Vec<Self>;
    fn to_f32(v: &[Self]) -> Vec<f32>;
}

impl Typed for f32 {
    fn of(b: &DenseBuf) -> Result<&CudaSlice<f32>> {
        match b {
            DenseBuf::F32(s) => Ok(s),
            DenseBuf::Bf16(_) => Err(invalid("a bf16 weight where f32 was expected")),
        }
    }
    fn wrap(s: CudaSlice<f32>) -> DenseBuf {
        DenseBuf::F32(s)
    }
    fn from_f32(v: &[f32]) -> Vec<f32> {
        v.to_vec()
    }
    fn to_f32(v: &[f32]) -> Vec<f32> {
        v.to_vec()
    }
}

impl Typed for bf16 {
    fn of(b: &DenseBuf) -> Result<&CudaSlice<bf16>> {
        match b {
            DenseBuf::Bf16(s) => Ok(s),
            DenseBuf::F32(_) => Err(invalid("an f32 weight where bf16 was expected")),
        }
    }
    fn wrap(s: CudaSlice<bf16>) -> DenseBuf {
        DenseBuf::Bf16(s)
    }
    fn from_f32(v: &[f32]) -> Vec<bf16> {
        v.iter().map(|&x| bf16::from_f32(x)).collect()
    }
    fn to_f32(v: &[bf16]) -> Vec<f32> {
        v.iter().map(|x| x.to_f32()).collect()
    }
}
