//! The kernel modules of this build: the fatbins `OUT_DIR/kernels.rs` lists (each `kernels/*.cu`
//! by file stem; empty when the build found no nvcc, no `has_kernels` cfg), or, under the CPU
//! emulator (`LORAFLEET_CUDA_EMU=1`), the emulated modules of the same sources.

use super::emu;

/// One kernel's resources on one architecture, as ptxas reported them at build time (`-v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelResources {
    /// The module (`kernels/<module>.cu`).
    pub module: &'static str,
    /// The `extern "C" __global__` function.
    pub kernel: &'static str,
    /// `sm_80`, `sm_90a`.
    pub arch: &'static str,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory per block, bytes (dynamic shared memory comes on top, per launch).
    pub shared_static: u32,
    /// Stack frame per thread, bytes.
    pub stack: u32,
    /// Register spills to local memory, bytes stored and loaded per thread.
    pub spill_stores: u32,
    /// Bytes loaded back from spills per thread.
    pub spill_loads: u32,
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The `cuModuleLoadData` image of `kernels/<stem>.cu` for the driver in use: the emulator's
/// module image under the emulator, else the fatbin (a heap copy: the driver reads the fatbin
/// header in place and wants it aligned, which `include_bytes!` data does not promise).
pub fn module_image(stem: &str) -> Option<Vec<u8>> {
    if emu::requested() {
        return emu::module_image(stem);
    }
    MODULES.iter().find(|(s, _)| *s == stem).map(|(_, bytes)| bytes.to_vec())
}

/// Whether kernels exist for the driver in use: the emulated modules under the emulator, else the
/// fatbins (nvcc was found by build.rs).
pub fn built() -> bool {
    if emu::requested() {
        return emu::built();
    }
    cfg!(has_kernels) && !MODULES.is_empty()
}
