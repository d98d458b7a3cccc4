//! The storage types the CUDA kernels' parity tests run in (f32 and bf16) and the helpers
//! every kernel test shares: conversions, the tolerance against the f32 CPU twin, guard
//! elements around views, and the check that a bad argument is refused before any launch.

use half::bf16;
use lorafleet::backend::cuda::CudaElem;
use lorafleet::Error;

/// A storage type under test.
pub trait TestElem: CudaElem + cudarc::driver::ValidAsZeroBits + std::fmt::Debug + PartialEq {
    const NAME: &'static str;
    /// Relative L2 error a kernel's output in this type may have against its f32 CPU twin
    /// (bf16: every stored value keeps 8 bits of mantissa).
    const TOL: f64;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    fn nan() -> Self;
}

impl TestElem for f32 {
    const NAME: &'static str = "f32";
    const TOL: f64 = 1e-5;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn nan() -> Self {
        f32::NAN
    }
}

impl TestElem for bf16 {
    const NAME: &'static str = "bf16";
    const TOL: f64 = 1e-2;
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn nan() -> Self {
        bf16::NAN
    }
}

/// The values in T, and the same values back in f32 (what the CPU twin is given).
pub fn quantize<T: TestElem>(v: &[f32]) -> (Vec<T>, Vec<f32>) {
    let t: Vec<T> = v.iter().map(|&x| T::from_f32(x)).collect();
    let f = t.iter().map(|&x| x.to_f32()).collect();
    (t, f)
}

/// Guard elements before and after every view a kernel writes (poisoned, checked untouched).
pub const GUARD: usize = 24;

/// `r` is `Error::InvalidArgument` whose message holds `needle`.
pub fn is_invalid_argument<T>(r: lorafleet::Result<T>, needle: &str) {
    match r {
        Err(Error::InvalidArgument(m)) => assert!(m.contains(needle), "message {m:?} lacks {needle:?}"),
        Err(e) => panic!("expected InvalidArgument containing {needle:?}, got {e}"),
        Ok(_) => panic!("expected InvalidArgument containing {needle:?}, got Ok"),
    }
}
