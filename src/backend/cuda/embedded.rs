//! The kernel modules of this build: the fatbins `OUT_DIR/kernels.rs` lists (each `kernels/*.cu`
//! by file stem; empty when the build found no nvcc, no `has_kernels` cfg), or, under the CPU
//! emulator (`LORAFLEET_CUDA_EMU=1`), the emulated modules of the same sources.

use super::emu;

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
