//! The cluster as the scheduler sees it: nodes (from joins and reports), the model
//! catalog, and replicas (where each model is loading or ready). Plain data behind
//! one lock; the translation to and from the placement problem lives here too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hdrhistogram::Histogram;
use herd_core::settings::{ClusterPolicy, ModelSettings, Ttl};
use herd_proto::herd::{AgentStatus, Event, ModelState};
use tokio::time::Instant;

use crate::agent_link::AgentLink;
use crate::events::EventLog;
use crate::placement::{
    Assignment, Device, ModelDemand, NodeView, Policy, Problem, Replica as PlacedReplica, Want,
};
use crate::sender::BatchSender;

pub struct Node {
    pub name: String,
    pub address: String,
    pub status: AgentStatus,
    pub last_report: Instant,
    pub down: bool,
    pub draining: bool,
    pub link: AgentLink,
}

impl Node {
    pub fn schedulable(&self) -> bool {
        !self.down && !self.draining
    }

    /// Bytes of RAM herd may use for replicas here, headroom taken off.
    pub fn ram_budget(&self, headroom: f64) -> u64 {
        let r = self.status.resources.clone().unwrap_or_default();
        let herd_used: u64 = self.status.models.iter().map(|m| m.memory_bytes).sum();
        // What other programs leave free, plus what herd's own replicas hold.
        let reachable = r.memory_available_bytes.saturating_add(herd_used);
        let capacity = r.memory_capacity_bytes.min(reachable.max(herd_used));
        capacity.saturating_sub((r.memory_capacity_bytes as f64 * headroom) as u64)
    }
}

pub struct CatalogModel {
    pub name: String,
    pub version: u64,
    pub digest: String,
    pub path: PathBuf,
    pub file_bytes: u64,
    pub settings: ModelSettings,
    pub policy: ClusterPolicy,
    /// Someone asked for it (a request or a load) since the last unload.
    pub wanted: bool,
    /// Replicas wanted by scaling, beyond one.
    pub scaled: u32,
    /// Since when in-flight per replica has stayed above the target.
    pub busy_since: Option<Instant>,
    /// Largest memory a replica of it was measured to hold.
    pub measured: u64,
    pub requests_total: u64,
    pub failures_total: u64,
    pub cold_starts: u64,
    pub latency: Histogram<u64>,
    pub last_placement: Option<Event>,
    /// Why it could not be placed, while that holds.
    pub unplaceable: Option<String>,
    /// Why its last load failed; the next request tries again.
    pub load_error: Option<String>,
}

impl CatalogModel {
    /// Memory one replica needs: measured once known, else an estimate from the file
    /// (ONNX Runtime holds the weights about twice, plus a worker process). A hint is a
    /// floor: it stands for peaks (large batches) a measurement may not have seen.
    pub fn memory_needed(&self) -> u64 {
        let known = if self.measured > 0 {
            self.measured
        } else {
            self.file_bytes.saturating_mul(2).saturating_add(48 << 20)
        };
        match self.policy.memory_hint {
            Some(h) if self.measured > 0 => known.max(h),
            Some(h) => h,
            None => known,
        }
    }

    /// Replicas to have, given how many it has: one when a request waits for it and
    /// it has none, more when scaling asks, never fewer than min_replicas. A replica
    /// beyond that is kept while it is there, but may be evicted when idle.
    pub fn target(&self, replicas: u32) -> u32 {
        let wanted = if self.wanted && replicas == 0 { 1 } else { 0 };
        let target = wanted.max(self.scaled).max(self.policy.min_replicas);
        match self.policy.max_replicas {
            0 => target,
            max => target.min(max),
        }
    }

    pub fn want(&self) -> Want {
        match self.policy.device {
            herd_core::Device::Gpu => Want::Gpu,
            herd_core::Device::Any => Want::Any,
            herd_core::Device::Cpu => Want::Cpu,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaState {
    Loading,
    Ready,
}

pub struct ReplicaEntry {
    pub state: ReplicaState,
    pub device: Device,
    pub sender: BatchSender,
    /// Requests routed to it and not yet answered.
    pub outstanding: Arc<AtomicUsize>,
    pub last_used: Instant,
    /// The first replicas up to min_replicas never unload for idleness.
    pub pinned: bool,
    /// When it last changed state: a report sent before that is no news about it.
    pub since: Instant,
}

#[derive(Default)]
pub struct Cluster {
    pub nodes: BTreeMap<String, Node>,
    pub models: BTreeMap<String, CatalogModel>,
    /// (model, node) → replica.
    pub replicas: BTreeMap<(String, String), ReplicaEntry>,
    /// Replicas the scheduler unloaded, and when: a report sent before the unload
    /// finished must not bring them back.
    pub unloaded: BTreeMap<(String, String), Instant>,
    pub events: EventLog,
}

impl Cluster {
    pub fn ready_replicas(&self, model: &str) -> Vec<(String, &ReplicaEntry)> {
        self.replicas
            .range((model.to_string(), String::new())..)
            .take_while(|((m, _), _)| m == model)
            .filter(|(_, r)| r.state == ReplicaState::Ready)
            .filter(|((_, n), _)| self.nodes.get(n).is_some_and(|n| !n.down))
            .map(|((_, n), r)| (n.clone(), r))
            .collect()
    }

    pub fn replicas_of(&self, model: &str) -> Vec<(String, &ReplicaEntry)> {
        self.replicas
            .range((model.to_string(), String::new())..)
            .take_while(|((m, _), _)| m == model)
            .map(|((_, n), r)| (n.clone(), r))
            .collect()
    }

    /// Brings replicas in line with what a node reports: models it holds ready are
    /// ready replicas (adopted after a scheduler restart), models it no longer holds
    /// (unloaded for idleness, or lost in an agent restart) are replicas no more.
    /// A report may have been sent before a load finished; replicas that changed within
    /// `grace` are left alone.
    pub fn sync_replicas(
        &mut self,
        node: &str,
        status: &AgentStatus,
        grace: std::time::Duration,
        new_sender: impl Fn(&str) -> BatchSender,
    ) {
        let mut held = BTreeSet::new();
        for m in &status.models {
            let Some(model) = self.models.get_mut(&m.name) else {
                continue;
            };
            if m.digest != model.digest || m.state != ModelState::Ready as i32 {
                continue;
            }
            held.insert(m.name.clone());
            model.measured = model.measured.max(m.memory_bytes);
            let key = (m.name.clone(), node.to_string());
            if self
                .unloaded
                .get(&key)
                .is_some_and(|t| t.elapsed() <= grace)
            {
                continue;
            }
            match self.replicas.get_mut(&key) {
                Some(r) if r.state != ReplicaState::Ready => {
                    r.state = ReplicaState::Ready;
                    r.since = Instant::now();
                }
                Some(_) => {}
                None => {
                    self.replicas.insert(
                        key,
                        ReplicaEntry {
                            state: ReplicaState::Ready,
                            device: Device::Cpu,
                            sender: new_sender(&m.name),
                            outstanding: Arc::new(AtomicUsize::new(0)),
                            last_used: Instant::now(),
                            pinned: m.ttl_ms < 0,
                            since: Instant::now(),
                        },
                    );
                    self.events
                        .push("adopted", node, &m.name, "the node reports it ready");
                }
            }
        }
        let gone: Vec<(String, String)> = self
            .replicas
            .iter()
            .filter(|((m, n), r)| n == node && r.state == ReplicaState::Ready && !held.contains(m))
            .filter(|(_, r)| r.since.elapsed() > grace)
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.replicas.remove(&key);
            self.events.push(
                "unloaded",
                &key.1,
                &key.0,
                "the node no longer holds it (idle TTL or restart)",
            );
            self.demand_ends_if_gone(&key.0);
        }
    }

    /// The placement problem for the cluster as it is now.
    pub fn problem(&self, policy: Policy, headroom: f64) -> (Problem, Vec<PlacedReplica>) {
        let nodes = self
            .nodes
            .values()
            .map(|n| NodeView {
                name: n.name.clone(),
                schedulable: n.schedulable(),
                ram_budget: n.ram_budget(headroom),
                gpus: n
                    .status
                    .resources
                    .as_ref()
                    .map(|r| {
                        r.gpus
                            .iter()
                            .map(|g| crate::placement::GpuView {
                                index: g.index,
                                budget: g.memory_total_bytes.saturating_sub(
                                    (g.memory_total_bytes as f64 * headroom) as u64,
                                ),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                files: n.status.file_digests.iter().cloned().collect(),
            })
            .collect();
        let models = self
            .models
            .values()
            .map(|m| ModelDemand {
                name: m.name.clone(),
                digest: m.digest.clone(),
                memory: m.memory_needed(),
                want: m.want(),
                min_replicas: m.policy.min_replicas,
                max_replicas: m.policy.max_replicas,
                // Replicas on nodes that take no new ones (draining) are moving away.
                desired_replicas: m.target(
                    self.replicas_of(&m.name)
                        .iter()
                        .filter(|(n, _)| self.nodes.get(n).is_some_and(|n| n.schedulable()))
                        .count() as u32,
                ),
            })
            .collect();
        let previous = self
            .replicas
            .iter()
            .map(|((model, node), r)| PlacedReplica {
                model: model.clone(),
                node: node.clone(),
                device: r.device.clone(),
                in_flight: r.outstanding.load(Ordering::Relaxed) as u32,
                last_used: r.last_used.elapsed().as_millis().min(u64::MAX as u128) as u64,
                // Measured, but never below the model's hint (a floor for peaks).
                memory: self
                    .nodes
                    .get(node)
                    .and_then(|n| n.status.models.iter().find(|s| &s.name == model))
                    .map_or(0, |s| s.memory_bytes)
                    .max(
                        self.models
                            .get(model)
                            .and_then(|m| m.policy.memory_hint)
                            .unwrap_or(0),
                    ),
            })
            // last_used counts up with recency: invert elapsed time.
            .map(|mut r| {
                r.last_used = u64::MAX - r.last_used;
                r
            })
            .collect();
        (
            Problem {
                nodes,
                models,
                policy,
            },
            previous,
        )
    }

    /// The settings an agent gets for one replica: pinned replicas never unload.
    pub fn settings_for(&self, model: &CatalogModel, pinned: bool) -> ModelSettings {
        let mut s = model.settings.clone();
        if pinned {
            s.ttl = Ttl::Never;
        }
        s
    }

    /// Takes a replica out because the scheduler unloads it (evicted, dropped, asked to).
    pub fn unload_replica(&mut self, model: &str, node: &str) {
        let key = (model.to_string(), node.to_string());
        self.replicas.remove(&key);
        self.unloaded
            .retain(|_, t| t.elapsed() < std::time::Duration::from_secs(60));
        self.unloaded.insert(key, Instant::now());
    }

    /// A model whose last replica went (evicted, unloaded for idleness) is no longer
    /// wanted until a request asks again; otherwise it would be placed straight back.
    pub fn demand_ends_if_gone(&mut self, model: &str) {
        if self.replicas_of(model).is_empty() {
            if let Some(m) = self.models.get_mut(model) {
                m.wanted = false;
                m.scaled = 0;
            }
        }
    }

    pub fn is_assigned(&self, a: &Assignment) -> bool {
        self.replicas
            .contains_key(&(a.model.clone(), a.node.clone()))
    }
}
