//! The process's own memory: resident set size, and handing freed memory back to
//! the operating system after a model unloads.

/// Resident set size of this process in bytes (0 where /proc is missing).
pub fn rss_bytes() -> u64 {
    read_rss("/proc/self/status").unwrap_or(0)
}

/// What another process costs in memory, `None` once it has gone: its proportional
/// set size, where pages shared with other processes (ONNX Runtime's code, mapped by
/// every worker) count in part; its RSS where the kernel does not say.
pub fn process_bytes(pid: u32) -> Option<u64> {
    read_kb(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
        .or_else(|| read_kb(&format!("/proc/{pid}/status"), "VmRSS:"))
}

fn read_rss(path: &str) -> Option<u64> {
    read_kb(path, "VmRSS:")
}

/// A "Key:   1234 kB" line of a /proc file, in bytes.
fn read_kb(path: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
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

/// Makes glibc serve every large allocation (tensors, gRPC messages) from its own
/// mapping, returned to the operating system on free. By default glibc raises this
/// threshold after the first large free, after which large buffers come from heaps
/// it keeps; an agent that once served a big request then stays big.
#[allow(unsafe_code)]
pub fn return_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a glibc tunable; called before the agent serves.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}
