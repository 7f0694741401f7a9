//! What this node has: RAM and CPU through sysinfo, GPUs through NVML. No NVIDIA
//! driver means no GPUs, not an error. A GPU is offered for replicas only when the
//! node's ONNX Runtime can run on it (its GPU build); otherwise it is reported with
//! the reason, so that the dashboard still shows it.

use std::collections::HashMap;
use std::sync::Mutex;

use herd_proto::herd::{Gpu, NodeResources};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use tracing::{debug, info, warn};

/// GPUs reported without NVML, for tests of GPU placement on machines without one:
/// their sizes, comma-separated ("8GiB,8GiB"). Replicas placed on them run on the CPU
/// (the model workers inherit the variable: see `worker::serve`).
pub const FAKE_GPUS_ENV: &str = "HERD_TEST_FAKE_GPUS";

/// GPU memory held by processes, by pid: (GPU index, bytes).
pub type GpuUse = HashMap<u32, (u32, u64)>;

pub struct Probe {
    system: Option<Mutex<sysinfo::System>>,
    nvml: Option<Nvml>,
    memory_limit: Option<u64>,
    /// Why replicas cannot run on this node's GPUs; `None` when they can.
    gpu_unusable: Option<String>,
    /// Sizes of fake GPUs ([`FAKE_GPUS_ENV`]); empty normally.
    fake_gpus: Vec<u64>,
}

/// Parses [`FAKE_GPUS_ENV`]'s value.
fn parse_fake_gpus(value: &str) -> Result<Vec<u64>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|e| format!("{FAKE_GPUS_ENV}: {s:?} is not a size: {e}"))
        })
        .collect()
}

impl Probe {
    /// `gpu_support` says whether the model workers can run on a GPU (see
    /// `Loader::gpu_support`).
    pub fn new(memory_limit: Option<u64>, gpu_support: Result<(), String>) -> Probe {
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
        let fake_gpus = match std::env::var(FAKE_GPUS_ENV) {
            Ok(v) => parse_fake_gpus(&v).unwrap_or_else(|e| {
                warn!(error = %e, "fake GPUs ignored");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        let gpu_unusable = if fake_gpus.is_empty() {
            gpu_support.err()
        } else {
            info!(
                gpus = fake_gpus.len(),
                "reporting fake GPUs ({FAKE_GPUS_ENV}); replicas placed on them run on the CPU"
            );
            None
        };
        let probe = Probe {
            system,
            nvml,
            memory_limit,
            gpu_unusable,
            fake_gpus,
        };
        if let Some(why) = &probe.gpu_unusable {
            let seen = probe.gpus(&GpuUse::new()).len();
            if seen > 0 {
                warn!(gpus = seen, reason = %why, "NVIDIA GPUs found, but no replica can run on them");
            }
        }
        probe
    }

    /// GPU memory each process on this machine holds, through NVML.
    pub fn gpu_use(&self) -> GpuUse {
        let Some(nvml) = &self.nvml else {
            return GpuUse::new();
        };
        let count = nvml.device_count().unwrap_or(0);
        let mut by_process = GpuUse::new();
        for index in 0..count {
            let Ok(device) = nvml.device_by_index(index) else {
                continue;
            };
            for p in device.running_compute_processes().unwrap_or_default() {
                if let UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                    by_process.insert(p.pid, (index, bytes));
                }
            }
        }
        by_process
    }

    /// The memory this node offers: --memory-limit when below the host's memory, else
    /// the host's; 0 when neither is known.
    pub fn offered_memory(&self) -> u64 {
        let total = self.system.as_ref().map_or(0, |s| {
            s.lock().unwrap_or_else(|p| p.into_inner()).total_memory()
        });
        offered(self.memory_limit, total)
    }

    /// A fresh reading. CPU load is measured since the previous reading; `workers` is
    /// the GPU memory herd's model workers hold (from [`Probe::gpu_use`]).
    pub fn sample(&self, workers: &GpuUse) -> NodeResources {
        let mut r = NodeResources {
            agent_rss_bytes: crate::memory::rss_bytes(),
            gpus: self.gpus(workers),
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

    /// The GPUs as reported: NVML's (or the fake ones), with why they cannot be used.
    pub fn gpus(&self, workers: &GpuUse) -> Vec<Gpu> {
        let herd_used = |index: u32| -> u64 {
            workers
                .values()
                .filter(|(gpu, _)| *gpu == index)
                .map(|(_, bytes)| bytes)
                .sum()
        };
        if !self.fake_gpus.is_empty() {
            return (0..)
                .zip(&self.fake_gpus)
                .map(|(index, &total)| Gpu {
                    index,
                    name: "fake GPU".into(),
                    memory_total_bytes: total,
                    ..Default::default()
                })
                .collect();
        }
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
                    unusable: self.gpu_unusable.clone().unwrap_or_default(),
                    herd_used_bytes: herd_used(index),
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
    fn fake_gpus_are_read_as_sizes_and_bad_ones_named() {
        assert_eq!(parse_fake_gpus("8GiB, 16GiB"), Ok(vec![8 << 30, 16 << 30]));
        assert_eq!(parse_fake_gpus(""), Ok(vec![]));
        let e = parse_fake_gpus("8GiB,lots").expect_err("refused");
        assert!(e.contains("\"lots\" is not a size"), "{e}");
    }

    #[test]
    fn a_node_offers_its_limit_up_to_the_hosts_memory() {
        assert_eq!(offered(Some(2 << 30), 16 << 30), 2 << 30);
        assert_eq!(offered(Some(64 << 30), 16 << 30), 16 << 30);
        assert_eq!(offered(None, 16 << 30), 16 << 30);
        assert_eq!(offered(Some(1 << 30), 0), 1 << 30, "host memory unknown");
        assert_eq!(offered(None, 0), 0);
    }
}
