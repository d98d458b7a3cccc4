//! The heap policy of the long-running verbs (`lorafleet-train train`, `serve`, `generate`).
//!
//! A training step allocates and frees the same few dozen activation buffers (1-30 MB each:
//! tokens × 576 or × 1536 f32) every micro-batch. glibc serves such sizes with `mmap` once its
//! dynamic threshold has moved, and gives freed memory at the top of the heap back to the kernel
//! beyond 2 × that threshold: every step then faults the same pages in again (1.28 M minor faults
//! and ~5 s of system time in a 128-example run, measured; bench/RESULTS.md). Raising the mmap
//! threshold to glibc's ceiling and keeping freed memory in the process makes the next step reuse
//! it: 0.32 M faults, system time halved, wall 0.93x (farm-bench, 4 pairs).
//!
//! `lorafleet` (not the trainer) also restarts itself once with glibc's `hugetlb` tunable so its
//! heap, and the weights in it, sit on 2 MiB pages (`restart_with_huge_pages`).

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

/// Restarts the process (same pid, arguments and environment) with glibc's
/// `glibc.malloc.hugetlb=1` tunable when the kernel's transparent huge pages are in `madvise`
/// mode, so the heap and its large blocks (where a loaded model's weights live) are backed by
/// 2 MiB pages from the first touch. A decode step streams every weight once: with 4 KiB pages
/// that is a TLB miss per 4 KiB and a prefetcher restart at every page boundary. Measured: f32
/// decode +12%, NF4 +11% (bench/RESULTS.md); load time unchanged (collapsing the pages after
/// loading instead, `MADV_COLLAPSE`, cost 2 s of copying on this VM). glibc reads tunables only
/// at start, hence the exec. Call first thing in `main`, before any thread starts. Returns only
/// when no restart is needed or possible: already set, `LORAFLEET_NO_HUGE_PAGES=1`, THP `never`
/// or `always`, not glibc, or the exec failed (the process then runs as it would have).
pub fn restart_with_huge_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if std::env::var_os("LORAFLEET_NO_HUGE_PAGES").is_some_and(|v| v != "0") {
            return;
        }
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        let Some(tunables) = hugetlb_tunables(&current, &thp) else { return };
        let mut args = std::env::args_os();
        let argv0 = args.next();
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.args(args).env("GLIBC_TUNABLES", tunables);
        if let Some(a0) = argv0 {
            cmd.arg0(a0);
        }
        // exec returns only on failure; the process then carries on without the tunable.
        let _ = cmd.exec();
    }
}

/// The `GLIBC_TUNABLES` value to restart with, or None when the current one already has the
/// setting or the kernel's THP mode (`/sys/kernel/mm/transparent_hugepage/enabled`) makes it
/// moot (`[always]`: every large mapping is huge already; `[never]`: none can be).
fn hugetlb_tunables(current: &str, thp_mode: &str) -> Option<String> {
    const KEY: &str = "glibc.malloc.hugetlb";
    if current.contains(KEY) || !thp_mode.contains("[madvise]") {
        return None;
    }
    Some(if current.is_empty() { format!("{KEY}=1") } else { format!("{current}:{KEY}=1") })
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
    fn the_tunable_is_added_once_and_only_in_madvise_mode() {
        let madvise = "always [madvise] never";
        assert_eq!(super::hugetlb_tunables("", madvise).as_deref(), Some("glibc.malloc.hugetlb=1"));
        assert_eq!(super::hugetlb_tunables("glibc.malloc.arena_max=2", madvise).as_deref(), Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"));
        // Already set (the restarted process): no second restart.
        assert_eq!(super::hugetlb_tunables("glibc.malloc.hugetlb=1", madvise), None);
        assert_eq!(super::hugetlb_tunables("", "[always] madvise never"), None);
        assert_eq!(super::hugetlb_tunables("", "always madvise [never]"), None);
        assert_eq!(super::hugetlb_tunables("", ""), None);
    }
}
