//! How much host memory this process may still take: the kernel's estimate of what can be
//! allocated without swapping (`MemAvailable`), bounded by the cgroup's limit when one is set
//! (a container or a systemd unit with `MemoryMax=`). With memory overcommit an allocation far
//! beyond it succeeds and the process is killed later, while touching the pages: a command
//! that needs a known amount checks this first.

/// Bytes still available to this process, when the system says.
pub(crate) fn available() -> Option<u64> {
    let system = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_available(&text));
    let cgroup = cgroup_room();
    match (system, cgroup) {
        (Some(s), Some(c)) => Some(s.min(c)),
        (s, c) => s.or(c),
    }
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The cgroup v2 limit less what the cgroup uses, when a limit is set.
fn cgroup_room() -> Option<u64> {
    let read = |name: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{name}")).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?; // "max": no limit
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

#[cfg(test)]
mod tests {
    #[test]
    fn mem_available_is_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(super::mem_available(text), Some(23_000_000 * 1024));
        assert_eq!(super::mem_available("MemTotal: 1 kB\n"), None);
    }
}
