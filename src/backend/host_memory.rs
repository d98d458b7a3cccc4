//! How much host memory this process may still allocate, for the checks made before an
//! allocation that scales with a flag or a file (the KV cache of `--kv-cache-bytes`): a check
//! against the machine's free memory alone let a process under a limit of its own (`ulimit -v`,
//! `prlimit --as`, a container's cgroup) go on to an allocation that aborts it.
//!
//! The least of: `MemAvailable` (/proc/meminfo); the address-space limit (`RLIMIT_AS`, from
//! /proc/self/limits) less the address space in use (`VmSize`, /proc/self/status); and for each
//! cgroup the process is in, v2 (`memory.max` less `memory.current`, up the hierarchy) or v1
//! (`memory.limit_in_bytes` less `memory.usage_in_bytes`). Linux only; None where none of
//! these can be read.

use std::path::Path;

/// Bytes this process may still allocate (see the module doc), or None when unknown.
pub fn allocatable() -> Option<usize> {
    [mem_available(), address_space_left(), cgroup_left()].into_iter().flatten().min()
}

/// `MemAvailable` of /proc/meminfo, in bytes.
pub fn mem_available() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&text, "MemAvailable:")
}

/// A `Name:   N kB` line of a /proc file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<usize> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse::<usize>().ok()?.checked_mul(1024)
}

/// The soft `RLIMIT_AS` less `VmSize`; None when unlimited or unreadable.
fn address_space_left() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let soft = parse_address_space_limit(&limits)?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let used = kib_field(&status, "VmSize:")?;
    Some(soft.saturating_sub(used))
}

/// The soft limit of the "Max address space" line of /proc/self/limits, in bytes; None when
/// "unlimited".
fn parse_address_space_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max address space"))?;
    let soft = line.trim_start_matches("Max address space").split_whitespace().next()?;
    soft.parse().ok()
}

/// The tightest `limit - usage` over the cgroups of this process (v2 walks up the hierarchy:
/// every ancestor's `memory.max` binds too).
fn cgroup_left() -> Option<usize> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup_left_in(Path::new("/sys/fs/cgroup"), &own)
}

fn cgroup_left_in(root: &Path, proc_self_cgroup: &str) -> Option<usize> {
    let read = |p: &Path| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    let mut best: Option<usize> = None;
    let mut consider = |left: usize| best = Some(best.map_or(left, |b| b.min(left)));
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            // cgroup v2: this cgroup and every ancestor.
            let mut dir = root.join(rel);
            loop {
                if let (Some(max), Some(cur)) = (read(&dir.join("memory.max")), read(&dir.join("memory.current"))) {
                    if let (Ok(max), Ok(cur)) = (max.parse::<usize>(), cur.parse::<usize>()) {
                        consider(max.saturating_sub(cur));
                    }
                }
                if dir == root || !dir.pop() || !dir.starts_with(root) {
                    break;
                }
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            // cgroup v1: "unlimited" reads as a huge number, which `min` ignores.
            let dir = root.join("memory").join(rel);
            if let (Some(lim), Some(used)) = (read(&dir.join("memory.limit_in_bytes")), read(&dir.join("memory.usage_in_bytes"))) {
                if let (Ok(lim), Ok(used)) = (lim.parse::<usize>(), used.parse::<usize>()) {
                    consider(lim.saturating_sub(used));
                }
            }
        }
    }
    best
}

/// Whether `bytes` more can be allocated: refuses (with the limit in words) when they exceed what
/// [`allocatable`] reports; passes when nothing can be read.
pub fn check_fits(what: &str, bytes: Option<usize>) -> Result<(), String> {
    let Some(bytes) = bytes else { return Err(format!("{what}: the size overflows")) };
    match allocatable() {
        Some(left) if bytes > left => Err(format!(
            "{what} needs {bytes} bytes, more than the {left} bytes this process may still allocate \
             (the least of the machine's available memory, the address-space limit and the cgroup's memory limit)"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_address_space_line() {
        let unlimited = "Limit                     Soft Limit           Hard Limit           Units\nMax address space         unlimited            unlimited            bytes\n";
        assert_eq!(parse_address_space_limit(unlimited), None);
        let limited = "Max cpu time              unlimited            unlimited            seconds\nMax address space         8589934592           unlimited            bytes\n";
        assert_eq!(parse_address_space_limit(limited), Some(8 << 30));
    }

    #[test]
    fn cgroup_limits_bind_up_the_hierarchy_and_in_v1() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // v2: /a/b with an unlimited own max, a parent limited to 1000 bytes, 400 in use.
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/memory.max"), "max\n").unwrap();
        std::fs::write(r.join("a/b/memory.current"), "100\n").unwrap();
        std::fs::write(r.join("a/memory.max"), "1000\n").unwrap();
        std::fs::write(r.join("a/memory.current"), "400\n").unwrap();
        assert_eq!(cgroup_left_in(r, "0::/a/b\n"), Some(600));
        // v1: the memory controller's files.
        std::fs::create_dir_all(r.join("memory/job")).unwrap();
        std::fs::write(r.join("memory/job/memory.limit_in_bytes"), "5000\n").unwrap();
        std::fs::write(r.join("memory/job/memory.usage_in_bytes"), "1000\n").unwrap();
        assert_eq!(cgroup_left_in(r, "4:memory:/job\n3:cpu,cpuacct:/job\n"), Some(4000));
        // Nothing readable: unknown.
        assert_eq!(cgroup_left_in(r, "0::/nowhere\n"), None);
    }

    #[test]
    fn this_process_has_a_finite_allocatable_amount() {
        let a = allocatable().expect("Linux: /proc/meminfo is readable");
        // Bounded by the machine's memory (MemAvailable itself moves while other tests allocate,
        // so a second reading of it is no bound on the first).
        let total = kib_field(&std::fs::read_to_string("/proc/meminfo").unwrap(), "MemTotal:").unwrap();
        assert!(a > 0 && a <= total, "{a} of {total}");
        assert!(check_fits("a test", Some(1)).is_ok());
        let e = check_fits("a KV cache of 3 blocks", Some(usize::MAX)).unwrap_err();
        assert!(e.contains("a KV cache of 3 blocks needs"), "{e}");
        assert!(check_fits("x", None).unwrap_err().contains("overflows"));
    }
}
