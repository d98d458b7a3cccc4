//! Whether the CUDA backend can run here, and if not, why. The checks go from cheapest to most
//! expensive and never panic: cudarc panics when a driver call is made without the driver
//! library, so its presence is tested first (`is_culib_present`), then the device count.

use std::fmt;

use cudarc::driver::{sys, CudaContext};

use super::{embedded, emu};

/// Why the CUDA backend cannot run on this machine. Each is an expected state of a machine (a
/// laptop, CI), not an error of the program: the CUDA tests skip on these and fail on anything
/// else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// The build found no nvcc, so no kernels are embedded (no `has_kernels` cfg).
    NoKernels,
    /// No CUDA driver library (libcuda.so) can be loaded.
    NoDriver,
    /// The driver loads but reports no device, or fewer devices than the ordinal asked for.
    NoDevice {
        /// The device asked for.
        ordinal: usize,
        /// Devices the driver reports.
        count: usize,
    },
    /// The driver library loads but cannot initialise (e.g. a stub library, a driver too old).
    DriverInit(String),
    /// `LORAFLEET_CUDA_EMU=1`, but the CPU emulator is not built or does not load.
    Emulator(String),
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NoKernels if cfg!(not(feature = "cuda")) => {
                write!(f, "no CUDA kernels built into this binary (it was built without lorafleet's `cuda` feature)")
            }
            Unavailable::NoKernels => write!(
                f,
                "no CUDA kernels built into this binary (nvcc was not found at build time: set NVCC, CUDA_HOME or PATH; \
                 scripts/install-cuda-toolchain.sh installs one)"
            ),
            Unavailable::NoDriver => write!(f, "no CUDA driver library (libcuda.so) on this machine"),
            Unavailable::NoDevice { ordinal, count } => {
                write!(f, "no CUDA device {ordinal}: the driver reports {count} device(s)")
            }
            Unavailable::DriverInit(e) => write!(f, "the CUDA driver does not initialise: {e}"),
            Unavailable::Emulator(e) => write!(f, "{}=1 but {e}", emu::EMU_ENV),
        }
    }
}

/// `Ok` when kernels are built in, the driver loads and device `ordinal` exists; otherwise the
/// first reason it cannot run. Creates no context. Under `LORAFLEET_CUDA_EMU=1` the driver and the
/// kernels are the CPU emulator's.
pub fn check_available(ordinal: usize) -> Result<(), Unavailable> {
    // Under the emulator its driver must be loaded before cudarc looks for libcuda.so.
    if emu::requested() {
        emu::ensure_loaded().map_err(Unavailable::Emulator)?;
    }
    if !embedded::built() {
        return Err(Unavailable::NoKernels);
    }
    // SAFETY: `is_culib_present` only tries to dlopen the driver library by its usual names and
    // drops the handle; it calls no driver function.
    if !unsafe { sys::is_culib_present() } {
        return Err(Unavailable::NoDriver);
    }
    // The library loaded, so cudarc's driver calls will not panic on a missing symbol table;
    // catch a panic anyway (e.g. a library too old to export a symbol cudarc looks up).
    let count = match std::panic::catch_unwind(CudaContext::device_count) {
        Ok(Ok(n)) => usize::try_from(n).unwrap_or(0),
        Ok(Err(e)) if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE => 0,
        Ok(Err(e)) => return Err(Unavailable::DriverInit(e.to_string())),
        Err(_) => return Err(Unavailable::DriverInit("the driver library panicked cudarc on load".into())),
    };
    if ordinal >= count {
        return Err(Unavailable::NoDevice { ordinal, count });
    }
    Ok(())
}
