//! The CPU emulator of the CUDA driver and device (kernels/emu; what it proves and what it cannot:
//! kernels/NOTES.md, "The CUDA emulator").
//!
//! `LORAFLEET_CUDA_EMU=1` makes any lorafleet process use it instead of a real driver: before
//! cudarc first looks for `libcuda.so`, [`ensure_loaded`] loads the emulator's stand-in (whose
//! SONAME is `libcuda.so`) by absolute path, so cudarc's own `dlopen("libcuda.so")` returns it.
//! Kernel modules are then the `kernels/*.cu` sources compiled by the host C++ compiler
//! ([`module_image`] names one for `cuModuleLoadData`) instead of fatbins, so none of this needs
//! nvcc. The emulated device names itself "lorafleet CPU emulator of sm_90 (not a GPU)": no
//! timing taken on it is a GPU figure.

use std::path::PathBuf;
use std::sync::OnceLock;

include!(concat!(env!("OUT_DIR"), "/emu.rs"));

/// `LORAFLEET_CUDA_EMU=1` selects the emulator.
pub const EMU_ENV: &str = "LORAFLEET_CUDA_EMU";
/// Overrides the folder of the emulator's shared objects (default: where build.rs built them).
pub const EMU_DIR_ENV: &str = "LORAFLEET_CUDA_EMU_DIR";

/// The magic that starts an emulator module image (kernels/emu/driver.cpp, `kImageMagic`).
const IMAGE_MAGIC: &[u8] = b"lorafleet-emu-module\0";

static FORCED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process runs CUDA on the emulator: `LORAFLEET_CUDA_EMU=1`, or the tests chose it
/// for want of a GPU ([`force`]).
pub fn requested() -> bool {
    FORCED.load(std::sync::atomic::Ordering::SeqCst) || std::env::var(EMU_ENV).is_ok_and(|v| v == "1")
}

/// Selects the emulator for the rest of the process (`testing::test_device` on a machine without
/// a GPU). Must come before any cudarc driver call has loaded a real driver.
pub fn force() {
    FORCED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The folder holding `libcuda.so` and the `lf_<stem>.so` modules, if the emulator was built.
pub fn dir() -> Option<PathBuf> {
    match std::env::var_os(EMU_DIR_ENV) {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => BUILT_DIR.map(PathBuf::from),
    }
}

/// Whether the emulator's objects exist (the build found a C++ compiler).
pub fn built() -> bool {
    dir().is_some_and(|d| d.join("libcuda.so").is_file())
}

static LOADED: OnceLock<Result<libloading::os::unix::Library, String>> = OnceLock::new();

/// Loads the emulator's `libcuda.so` once, globally, so that cudarc's later lookup of the driver
/// finds it. Must run before any cudarc driver call (`check_available` calls it first).
pub fn ensure_loaded() -> Result<(), String> {
    let r = LOADED.get_or_init(|| {
        let d = dir().ok_or_else(|| "the CUDA emulator was not built (build.rs found no C++ compiler; set CXX)".to_string())?;
        let lib = d.join("libcuda.so");
        if !lib.is_file() {
            return Err(format!("the CUDA emulator's driver {} does not exist", lib.display()));
        }
        // SAFETY: loading our own shared object, built by build.rs from kernels/emu; its
        // initialisers only set up static state. RTLD_GLOBAL | RTLD_NOW make its symbols resolve
        // now and its SONAME (libcuda.so) match cudarc's later dlopen.
        unsafe { libloading::os::unix::Library::open(Some(&lib), libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL) }
            .map_err(|e| format!("loading the CUDA emulator {}: {e}", lib.display()))
    });
    r.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// The `cuModuleLoadData` image of the emulated module `kernels/<stem>.cu` (the magic, the stem
/// and the module's path, each NUL-terminated), or `None` if it was not built.
pub fn module_image(stem: &str) -> Option<Vec<u8>> {
    let path = dir()?.join(format!("lf_{stem}.so"));
    if !path.is_file() {
        return None;
    }
    let mut image = IMAGE_MAGIC.to_vec();
    image.extend_from_slice(stem.as_bytes());
    image.push(0);
    image.extend_from_slice(path.to_string_lossy().as_bytes());
    image.push(0);
    Some(image)
}

/// The emulated driver's totals since the process started.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Device allocations.
    pub allocs: u64,
    /// Device frees.
    pub frees: u64,
    /// Host-to-device copies executed (direct, async, and inside replayed graphs).
    pub htod: u64,
    /// Device-to-host copies.
    pub dtoh: u64,
    /// Device-to-device copies.
    pub dtod: u64,
    /// Memsets.
    pub memsets: u64,
    /// Kernels executed (a replayed graph's kernels included).
    pub launches: u64,
    /// Graph launches (replays).
    pub graph_launches: u64,
    /// Pinned host allocations.
    pub host_allocs: u64,
    /// Bytes copied host to device.
    pub htod_bytes: u64,
}

/// The counters, if the emulator is loaded in this process.
pub fn counters() -> Option<Counters> {
    let lib = LOADED.get()?.as_ref().ok()?;
    // SAFETY: `lf_emu_get_counters` is defined in kernels/emu/driver.cpp with exactly this
    // signature, writing a `struct lf_emu_counters` whose layout `Counters` mirrors (ten u64).
    unsafe {
        let f: libloading::os::unix::Symbol<unsafe extern "C" fn(*mut Counters)> = lib.get(b"lf_emu_get_counters\0").ok()?;
        let mut c = Counters::default();
        f(&mut c);
        Some(c)
    }
}

/// Places new allocations flush against their guard page whatever their size (`true`; also
/// `LORAFLEET_EMU_ALIGN=tight`), or at CUDA's 256-byte alignment (`false`, the default), where the
/// bytes up to the next 256-byte boundary are a canary checked after every launch. No effect
/// unless the emulator is loaded.
pub fn set_tight_alignment(tight: bool) {
    let Some(Ok(lib)) = LOADED.get() else { return };
    // SAFETY: `lf_emu_set_tight_alignment(int)` is defined in kernels/emu/driver.cpp with this
    // signature; it stores a flag.
    unsafe {
        if let Ok(f) = lib.get::<unsafe extern "C" fn(i32)>(b"lf_emu_set_tight_alignment\0") {
            f(i32::from(tight));
        }
    }
}
