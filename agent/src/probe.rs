//! What this node has: RAM and CPU through sysinfo, GPUs through NVML. No NVIDIA
//! driver means no GPUs, not an error.

use std::sync::Mutex;

use herd_proto::herd::{Gpu, NodeResources};
use nvml_wrapper::Nvml;
use tracing::{debug, warn};

pub struct Probe {
    system: Option<Mutex<sysinfo::System>>,
    nvml: Option<Nvml>,
    memory_limit: Option<u64>,
}

impl Probe {
    pub fn new(memory_limit: Option<u64>) -> Probe {
        let system = match sysinfo::System::new() {
            Ok(mut s) => {
                s.refresh_memory();
                s.refresh_cpu_usage();
                Some(Mutex::new(s))
            }
            Err(e) => {
                warn!(error = %e, "cannot read system resources; reporting none");
                None
            }
        };
        let nvml = match Nvml::init() {
            Ok(n) => Some(n),
            Err(e) => {
                debug!(error = %e, "no NVIDIA GPUs (NVML unavailable)");
                None
            }
        };
        Probe {
            system,
            nvml,
            memory_limit,
        }
    }

    /// The memory this node offers: --memory-limit when below the host's memory, else
    /// the host's; 0 when neither is known.
    pub fn offered_memory(&self) -> u64 {
        let total = self.system.as_ref().map_or(0, |s| {
            s.lock().unwrap_or_else(|p| p.into_inner()).total_memory()
        });
        offered(self.memory_limit, total)
    }

    /// A fresh reading. CPU load is measured since the previous reading.
    pub fn sample(&self) -> NodeResources {
        let mut r = NodeResources {
            agent_rss_bytes: crate::memory::rss_bytes(),
            gpus: self.gpus(),
            ..Default::default()
        };
        if let Some(system) = &self.system {
            let mut s = system.lock().unwrap_or_else(|p| p.into_inner());
            s.refresh_memory();
            s.refresh_cpu_usage();
            r.memory_total_bytes = s.total_memory();
            r.memory_available_bytes = s.available_memory();
            r.cpu_count = s.cpus().len() as u32;
            r.cpu_load = s.global_cpu_usage() / 100.0;
        }
        if r.cpu_count == 0 {
            r.cpu_count = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        }
        r.memory_capacity_bytes = offered(self.memory_limit, r.memory_total_bytes);
        r
    }

    fn gpus(&self) -> Vec<Gpu> {
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        let count = nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let device = nvml.device_by_index(index).ok()?;
                let memory = device.memory_info().ok()?;
                Some(Gpu {
                    index,
                    name: device.name().unwrap_or_default(),
                    memory_total_bytes: memory.total,
                    memory_used_bytes: memory.used,
                })
            })
            .collect()
    }
}

/// The memory a node offers: its limit, when below the host's `total` (0 = unknown).
fn offered(limit: Option<u64>, total: u64) -> u64 {
    match limit {
        Some(limit) if total > 0 => limit.min(total),
        Some(limit) => limit,
        None => total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_offers_its_limit_up_to_the_hosts_memory() {
        assert_eq!(offered(Some(2 << 30), 16 << 30), 2 << 30);
        assert_eq!(offered(Some(64 << 30), 16 << 30), 16 << 30);
        assert_eq!(offered(None, 16 << 30), 16 << 30);
        assert_eq!(offered(Some(1 << 30), 0), 1 << 30, "host memory unknown");
        assert_eq!(offered(None, 0), 0);
    }
}
