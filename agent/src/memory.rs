//! The process's own memory: resident set size, and handing freed memory back to
//! the operating system after a model unloads.

/// Resident set size of this process in bytes (0 where /proc is missing).
pub fn rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Returns free heap pages to the operating system. glibc keeps freed memory in its
/// arenas; without this, RSS stays high after a model unloads (the complaint users
/// have about other ML servers).
#[allow(unsafe_code)]
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap structures under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
