//! CUDA backend: the kernels of `kernels/*.cu`, embedded at build time as fatbins (sm_80, sm_90a
//! and compute_80 PTX), loaded with cudarc and launched through typed wrappers that validate
//! every argument in Rust first.
//!
//! - `backend`: `CudaBackend`, the `Backend` trait on the device (the whole forward pass).
//! - `availability`: whether CUDA can run here, and why not (no kernels built, no driver, no
//!   device); never panics.
//! - `device`: `CudaDevice`, one device with the ops module loaded, plus upload/download.
//! - `ops`: the op wrappers (`rms_norm`, `rope`, `silu_mul`, `add_assign`, `embedding`), f32 and
//!   bf16 (`CudaElem`).
//! - `validate`, `launch`: the argument checks and launch geometry, pure functions tested
//!   without a GPU.
//! - `ffi`: the bindgen'd C ABI of `csrc/*.h`; `embedded`: the fatbins (or the emulated modules).
//! - `emu`: the CPU emulator of the driver and device (`LORAFLEET_CUDA_EMU=1`), kernels/emu.
//! - `attention`: paged attention (`CudaAttention`: `reshape_and_cache`, `paged_attention`),
//!   `CudaKvCache`, and the pure checks `plan_attention`, `plan_reshape_and_cache`.
//! - `attention_train`: causal attention over packed training batches, forward (keeping the
//!   log-sum-exp) and backward (`CudaAttentionTrain`, pure check `plan_attention_train`).
//! - `cross_entropy`: cross-entropy fused with the lm_head, chunked over the vocabulary
//!   (`CudaCrossEntropy`, pure check `plan_cross_entropy`).
//! - `ops_backward`: the backward passes of RMSNorm, RoPE and SiLU·mul (training, f32).
//! - `lora`, `lora_backward`: batched LoRA (SGMV/BGMV) and the fused LoRA backward of training,
//!   each with its pure check (`plan_lora`, `plan_lora_backward`).
//! - `linear`: dense linear layers, f32 or bf16 weights (`CudaLinear`, pure check `plan_linear`).
//! - `nf4`: linear layers against bitsandbytes NF4 weights (`CudaNf4`, `CudaNf4Weight`: GEMV for
//!   decode, tensor-core GEMM for prefill) and the pure check `plan_nf4_linear`.
//! - `train`: `TrainBackend` on the device (the trainer's forward and backward ops), over the
//!   training kernels above and kernels/train_ops.cu (GEMM, NF4 dequantization, row scatter).
//! - `testing`: `test_device` (a GPU, else the CPU emulator, else a loud skip) and `bench_device`
//!   (a GPU, or the emulator only when asked for).
//!
//! Everything here compiles without nvcc (no `has_kernels` cfg): `check_available` then reports
//! `Unavailable::NoKernels`.

pub mod attention;
pub mod attention_train;
mod availability;
pub mod backend;
pub mod context;
pub mod cross_entropy;
mod device;
mod dtype;
mod embedded;
pub mod emu;
pub mod ffi;
mod graph;
pub mod launch;
pub mod linear;
pub mod lora;
pub mod lora_backward;
pub mod nf4;
mod ops;
pub mod ops_backward;
mod pool;
pub mod random;
pub mod sampling;
pub mod step;
mod testing;
pub mod train;
mod train_kernels;
pub mod validate;
pub mod values;

pub use attention::{AttnDims, AttnKernel, AttnPlan, CudaAttention, CudaKvCache};
pub use availability::{check_available, Unavailable};
pub use backend::CudaBackend;
pub use context::CudaContext;
pub use device::CudaDevice;
pub use dtype::{CudaElem, DType};
/// ptxas's resource report of every embedded kernel, per architecture (build.rs; empty without nvcc).
pub use embedded::{KernelResources, NVCC_RELEASE, RESOURCES as KERNEL_RESOURCES};
pub use nf4::{CudaNf4, CudaNf4Weight};
pub use testing::{bench_device, big_shapes, test_device, tests_on_emulator, timed_launches, BIG_SHAPES_ENV, REQUIRE_GPU_ENV};
pub use validate::RopeDims;
pub use values::{CudaKv, CudaMatrix, CudaRope, CudaTensor, CudaVector, CudaWeight, DenseBuf};

/// Whether kernels exist for the driver in use: the fatbins (build.rs found nvcc), or under
/// `LORAFLEET_CUDA_EMU=1` the emulated modules (build.rs found a C++ compiler).
pub fn kernels_built() -> bool {
    embedded::built()
}
