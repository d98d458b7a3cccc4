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

/// Backs the process's anonymous memory (the heap and the large mmapped blocks, where a loaded
/// model's weights live) with 2 MiB pages: `madvise(MADV_HUGEPAGE)` then `MADV_COLLAPSE`
/// (Linux 6.1+) on every anonymous read-write mapping of at least 2 MiB. A decode step streams
/// every weight once; with 4 KiB pages that is a TLB miss per 4 KiB and the hardware prefetcher
/// stops at every page boundary. Call once after loading. Returns the bytes the kernel collapsed
/// (0 where it cannot: another OS, THP disabled, an older kernel); never fails.
pub fn collapse_to_huge_pages() -> usize {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        const MADV_HUGEPAGE: std::os::raw::c_int = 14;
        const MADV_COLLAPSE: std::os::raw::c_int = 25;
        unsafe extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: std::os::raw::c_int) -> std::os::raw::c_int;
        }
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return 0 };
        let mut collapsed = 0;
        for line in maps.lines() {
            // "start-end perms offset dev inode [path]": anonymous private rw memory only (no
            // file, or the [heap]); never stacks or special mappings.
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms)) = (f.next(), f.next()) else { continue };
            let path = f.nth(3).unwrap_or("");
            if !perms.starts_with("rw") || !(path.is_empty() || path == "[heap]") {
                continue;
            }
            let Some((a, b)) = range.split_once('-') else { continue };
            let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else { continue };
            let (start, end) = (a.next_multiple_of(HUGE), b / HUGE * HUGE);
            if end <= start {
                continue;
            }
            // SAFETY: [start, end) lies inside a mapping of this process (read from its own maps);
            // MADV_HUGEPAGE and MADV_COLLAPSE change only how the pages are backed, never their
            // contents, so no Rust object in the range is affected.
            unsafe {
                madvise(start as *mut _, end - start, MADV_HUGEPAGE);
                if madvise(start as *mut _, end - start, MADV_COLLAPSE) == 0 {
                    collapsed += end - start;
                }
            }
        }
        collapsed
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
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

    #[test]
    #[cfg(target_os = "linux")]
    fn collapsing_keeps_every_byte() {
        // 8 MiB of known contents (at least one whole 2 MiB page inside); whatever the kernel
        // collapses, the values must read back the same.
        let v: Vec<u32> = (0..(2u32 << 20)).map(|i| i.wrapping_mul(2654435761)).collect();
        let n = super::collapse_to_huge_pages();
        eprintln!("collapsed {} MiB", n >> 20);
        assert!(n % (2 << 20) == 0, "only whole 2 MiB pages are collapsed: {n}");
        assert!(v.iter().enumerate().all(|(i, &x)| x == (i as u32).wrapping_mul(2654435761)));
    }
}
