//! The device the CUDA tests and benchmarks run on, or a loud skip.
//!
//! Tests ([`test_device`]) run on a real GPU where there is one, else on the CPU emulator of the
//! driver and device (kernels/emu) where it is built, so `cargo test` executes every kernel on any
//! machine; `LORAFLEET_CUDA_EMU=0` turns that fallback off, `LORAFLEET_CUDA_EMU=1` forces the
//! emulator. Benchmarks ([`bench_device`]) never fall back: an emulator timing is not a GPU figure,
//! so they use the emulator only when `LORAFLEET_CUDA_EMU=1` asks for it.

use std::sync::OnceLock;

use super::availability::{check_available, Unavailable};
use super::device::CudaDevice;
use super::emu;

/// Environment variable that turns every skip into a failure: set it to 1 on a GPU machine (and
/// in CI, where the emulator runs), so a run that silently tested nothing cannot pass.
pub const REQUIRE_GPU_ENV: &str = "LORAFLEET_REQUIRE_GPU";

fn require_gpu() -> bool {
    std::env::var(REQUIRE_GPU_ENV).is_ok_and(|v| v == "1")
}

/// Whether the tests of this process may fall back to the emulator (not `LORAFLEET_CUDA_EMU=0`).
fn fallback_allowed() -> bool {
    std::env::var(emu::EMU_ENV).map_or(true, |v| v != "0")
}

/// The driver this process's CUDA tests use, decided once: a real GPU, else the emulator.
fn tests_driver() -> &'static Result<(), Unavailable> {
    static DECISION: OnceLock<Result<(), Unavailable>> = OnceLock::new();
    DECISION.get_or_init(|| {
        if emu::requested() {
            return check_available(0);
        }
        match check_available(0) {
            Ok(()) => Ok(()),
            Err(real) if fallback_allowed() && emu::built() => {
                emu::force();
                let r = check_available(0);
                if r.is_ok() {
                    eprintln!("note: no GPU here ({real}): the CUDA tests run on the CPU emulator (kernels/emu)");
                }
                r
            }
            Err(real) => Err(real),
        }
    })
}

/// Device 0 with the ops kernels loaded, for the test named `test`: a real GPU, else the CPU
/// emulator (see the module docs).
///
/// Where neither is available this prints `SKIP <test>: <reason>` to stderr and returns `None`,
/// unless `LORAFLEET_REQUIRE_GPU=1`, where it panics with the reason. Where a device is present but
/// the kernels fail to load, it panics in any case: that is a broken setup, not a missing device.
pub fn test_device(test: &str) -> Option<CudaDevice> {
    open(test, tests_driver().clone())
}

/// Device 0 for the benchmark named `bench`: a real GPU, or the emulator only when
/// `LORAFLEET_CUDA_EMU=1` (its timings are the emulator's, and its device name says so).
/// Skips (or, under `LORAFLEET_REQUIRE_GPU=1`, panics) as [`test_device`] does.
pub fn bench_device(bench: &str) -> Option<CudaDevice> {
    open(bench, check_available(0))
}

/// `LORAFLEET_BIG_SHAPES=1` runs the full-size (7B-layer) test shapes on the emulator too.
pub const BIG_SHAPES_ENV: &str = "LORAFLEET_BIG_SHAPES";

/// Whether the CUDA tests run their full-size shapes (e.g. 4096 x 14336 weights): always on a real
/// GPU, on the emulator only under `LORAFLEET_BIG_SHAPES=1` (each takes minutes there; smaller
/// shapes reach every kernel path, fast and generic, in CI).
pub fn big_shapes() -> bool {
    std::env::var(BIG_SHAPES_ENV).is_ok_and(|v| v == "1") || !tests_on_emulator()
}

/// Whether this process's CUDA tests run on the emulator (decides it if not yet decided).
pub fn tests_on_emulator() -> bool {
    tests_driver().is_ok() && emu::requested()
}

fn open(what: &str, available: Result<(), Unavailable>) -> Option<CudaDevice> {
    match available {
        Err(why) if require_gpu() => panic!("{what}: {REQUIRE_GPU_ENV}=1 but CUDA is unavailable: {why}"),
        Err(why) => {
            eprintln!("SKIP {what}: {why}");
            None
        }
        Ok(()) => match CudaDevice::new(0) {
            Ok(ops) => Some(ops),
            Err(e) => panic!("{what}: a CUDA device is present but the ops kernels do not load: {e}"),
        },
    }
}

/// Wall time of `iters` back-to-back calls of `f` (each enqueueing work on `dev`'s stream) and
/// one synchronisation, the stream drained first: what a criterion `iter_custom` sample of a
/// CUDA bench measures (launch overhead included, as the engine pays it).
pub fn timed_launches(dev: &CudaDevice, iters: u64, mut f: impl FnMut()) -> std::time::Duration {
    dev.synchronize().expect("synchronize before timing");
    let t = std::time::Instant::now();
    for _ in 0..iters {
        f();
    }
    dev.synchronize().expect("synchronize after timing");
    t.elapsed()
}
