//! The process's resident memory, for `Stats`.

/// The resident set size of this process in bytes, or 0 where it cannot be read (it is read
/// from `/proc/self/status`, so Linux only).
pub(crate) fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn reads_a_plausible_resident_size() {
        let bytes = super::resident_bytes();
        assert!(bytes > 100 * 1024, "{bytes}");
    }
}
