//! Element types the CUDA ops store activations in: f32, and bf16 (f32 math inside the kernels).
//! The kernel of an op for a type is `lf_<op>_<DType::suffix>`.

use cudarc::driver::DeviceRepr;

/// Storage type of a kernel's activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// bfloat16.
    Bf16,
}

impl DType {
    /// Suffix of the kernel names: `lf_rms_norm_f32`, `lf_rms_norm_bf16`.
    pub fn suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 => 2,
        }
    }

    /// Elements per 16-byte vector load (`LF_OPS_VEC_BYTES`): 4 for f32, 8 for bf16.
    pub fn vec_elems(self) -> usize {
        super::ffi::LF_OPS_VEC_BYTES as usize / self.size()
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
}

/// A Rust type the ops kernels are instantiated for. Sealed: the kernels exist for these only.
pub trait CudaElem: DeviceRepr + Copy + Send + Sync + 'static + sealed::Sealed {
    /// The element type as a value.
    const DTYPE: DType;
}

impl CudaElem for f32 {
    const DTYPE: DType = DType::F32;
}

impl CudaElem for half::bf16 {
    const DTYPE: DType = DType::Bf16;
}
