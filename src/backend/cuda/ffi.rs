//! The C ABI of `csrc/*.h`, as bindgen generates it (`csrc_bindings.rs` beside this file, committed;
//! build.rs regenerates it into `OUT_DIR` when libclang is present, see build.rs `bindings`):
//! the parameter structs the kernels take by value and the constants they are compiled with.
//! Built with or without nvcc, so argument validation compiles (and is tested) everywhere.

#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/csrc_bindings.rs"));

// SAFETY: each of these is a `#[repr(C)]` struct of fixed-width integers and f32 (generated from
// csrc/ops.h), with no pointers and no padding-sensitive invariants, so its bytes passed by value
// are exactly what the kernel's C struct parameter expects.
unsafe impl cudarc::driver::DeviceRepr for LfRmsNormParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for LfRopeParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for LfElementwiseParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for LfEmbeddingParams {}
// SAFETY: as above (generated from csrc/paged_attention.h: fixed-width integers and f32 only).
unsafe impl cudarc::driver::DeviceRepr for LfReshapeCacheParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for LfPagedAttnParams {}
// SAFETY: as above (generated from csrc/linear.h: fixed-width integers only).
unsafe impl cudarc::driver::DeviceRepr for LfLinearParams {}
// SAFETY: as above (csrc/ops.h: fixed-width integers only).
unsafe impl cudarc::driver::DeviceRepr for LfBiasParams {}
// SAFETY: as above (csrc/sampling.h: fixed-width integers and f32 only).
unsafe impl cudarc::driver::DeviceRepr for LfSampleRow {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for LfSampleParams {}
// SAFETY: as above (csrc/random.h: fixed-width integers and f32 only).
unsafe impl cudarc::driver::DeviceRepr for LfRandomParams {}
