//! The process's resident memory, for `Stats`.

/// The resident set size of this process in bytes, or 0 where it cannot be read (it is read
/// from `/proc/self/status`, so Linux only).
pub(crate) fn resident_bytes() -> u64 {
    kib_field("/proc/self/status", "VmRSS:").unwrap_or(0)
}

/// The `key` line of a /proc file that gives a size in kB, in bytes.
fn kib_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The memory this process may use in bytes: its cgroup's limit (`memory.max` of cgroup v2, or
/// `memory.limit_in_bytes` of v1) when one is set, else the machine's memory; 0 where neither
/// can be read.
pub(crate) fn limit_bytes() -> u64 {
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .filter_map(|text| text.trim().parse::<u64>().ok())
    // cgroup v1 writes "no limit" as a number near 2^63.
    .find(|&limit| limit < (1 << 62));
    cgroup
        .or_else(|| kib_field("/proc/meminfo", "MemTotal:"))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn reads_a_plausible_limit() {
        let limit = super::limit_bytes();
        assert!(limit > super::resident_bytes(), "{limit}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn reads_a_plausible_resident_size() {
        let bytes = super::resident_bytes();
        assert!(bytes > 100 * 1024, "{bytes}");
    }
}
