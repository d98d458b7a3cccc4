//! The device the CUDA tests and benchmarks run on, or a loud skip.

use super::availability::check_available;
use super::device::CudaOps;

/// Environment variable that turns every skip into a failure: set it to 1 on a GPU machine, so a
/// run that silently tested nothing cannot pass.
pub const REQUIRE_GPU_ENV: &str = "LORAFLEET_REQUIRE_GPU";

/// Device 0 with the ops kernels loaded, for the test (or benchmark) named `test`.
///
/// Where CUDA is unavailable (no kernels built, no driver, no device) this prints
/// `SKIP <test>: <reason>` to stderr and returns `None`, unless `LORAFLEET_REQUIRE_GPU=1`, where
/// it panics with the reason. Where CUDA is available but the device or the kernels fail to load,
/// it panics in any case: that is a broken GPU setup, not a machine without one.
pub fn test_device(test: &str) -> Option<CudaOps> {
    let require = std::env::var(REQUIRE_GPU_ENV).is_ok_and(|v| v == "1");
    match check_available(0) {
        Err(why) if require => panic!("{test}: {REQUIRE_GPU_ENV}=1 but CUDA is unavailable: {why}"),
        Err(why) => {
            eprintln!("SKIP {test}: {why}");
            None
        }
        Ok(()) => match CudaOps::new(0) {
            Ok(ops) => Some(ops),
            Err(e) => panic!("{test}: a CUDA device is present but the ops kernels do not load: {e}"),
        },
    }
}
