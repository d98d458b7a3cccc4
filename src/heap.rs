//! The heap policy of the long-running verbs (`lorafleet-train train`, `serve`, `generate`).
//!
//! A training step allocates and frees the same few dozen activation buffers (1-30 MB each:
//! tokens × 576 or × 1536 f32) every micro-batch. glibc serves such sizes with `mmap` once its
//! dynamic threshold has moved, and gives freed memory at the top of the heap back to the kernel
//! beyond 2 × that threshold: every step then faults the same pages in again (1.28 M minor faults
//! and ~5 s of system time in a 128-example run, measured; bench/RESULTS.md). Raising the mmap
//! threshold to glibc's ceiling and keeping freed memory in the process makes the next step reuse
//! it: 0.32 M faults, system time halved, wall 0.93x (farm-bench, 4 pairs).

/// Keep large freed blocks in the process for reuse (glibc only; a no-op elsewhere). Call once,
/// first thing in `main`, before threads start. Returns whether the allocator took the settings.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // <malloc.h>: the parameters of mallopt(3).
        const M_TRIM_THRESHOLD: std::os::raw::c_int = -1;
        const M_TOP_PAD: std::os::raw::c_int = -2;
        const M_MMAP_THRESHOLD: std::os::raw::c_int = -3;
        // glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit).
        const MMAP_THRESHOLD: std::os::raw::c_int = 32 << 20;
        // Free memory at the heap's top is returned to the kernel only past 1 GiB.
        const TRIM_THRESHOLD: std::os::raw::c_int = 1 << 30;
        // Each heap growth asks for 64 MiB more than needed: fewer brk calls.
        const TOP_PAD: std::os::raw::c_int = 64 << 20;
        unsafe extern "C" {
            fn mallopt(param: std::os::raw::c_int, value: std::os::raw::c_int) -> std::os::raw::c_int;
        }
        // SAFETY: mallopt only changes glibc's allocator parameters; these three are documented
        // (mallopt(3)), the values are in their accepted ranges, and it is called before any
        // other thread of this process allocates.
        unsafe { mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 && mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 && mallopt(M_TOP_PAD, TOP_PAD) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_settings() {
        assert!(super::keep_freed_memory(), "mallopt refused a parameter");
        // The heap still works after the change, for blocks on both sides of the threshold.
        let small = vec![1u8; 1 << 20];
        let large = vec![2u8; 48 << 20];
        assert_eq!(small.iter().map(|&b| b as usize).sum::<usize>(), 1 << 20);
        assert_eq!(large[large.len() - 1], 2);
    }
}
