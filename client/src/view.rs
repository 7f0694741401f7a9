//! The one view-model of the cluster, built from the Admin service's responses: what
//! `herd models`/`herd nodes` print and what the dashboard shows. Pure functions over
//! protos, so both front ends agree on rates, TTL left and latency quantiles.

use std::collections::HashMap;
use std::time::Duration;

use herd_proto::herd::{
    Event, ListModelsResponse, ListNodesResponse, ModelInfo, ModelState, NodeInfo,
};
use serde::Serialize;

/// `MODEL_STATE_READY` → `ready`.
pub fn state_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix).unwrap_or(full).to_lowercase()
}

pub fn model_state(state: ModelState) -> String {
    state_name(state.as_str_name(), "MODEL_STATE_")
}

/// Requests per second between two counter readings `elapsed` apart.
pub fn rate(now: u64, before: Option<u64>, elapsed: Option<Duration>) -> Option<f64> {
    let (before, elapsed) = (before?, elapsed?);
    let secs = elapsed.as_secs_f64();
    (secs > 0.0).then(|| now.saturating_sub(before) as f64 / secs)
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ModelView {
    pub name: String,
    pub version: u64,
    pub digest: String,
    pub file_bytes: u64,
    /// Memory one replica needs.
    pub memory_bytes: u64,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub device: String,
    pub replicas: Vec<ReplicaView>,
    pub requests_total: u64,
    pub failures_total: u64,
    pub cold_starts: u64,
    /// Over the sampling window; null without one.
    pub requests_per_s: Option<f64>,
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
    pub last_placement: Option<EventView>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ReplicaView {
    pub node: String,
    pub state: String,
    pub device: String,
    pub memory_bytes: u64,
    pub in_flight: u32,
    pub queue_length: u32,
    pub mean_batch_size: f64,
    /// Time left before an idle unload; null when the model is never unloaded.
    pub ttl_left_ms: Option<u64>,
    pub idle_ms: u64,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct EventView {
    pub time_ms: u64,
    pub kind: String,
    pub node: String,
    pub model: String,
    pub message: String,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> EventView {
        EventView {
            time_ms: e.time_ms,
            kind: e.kind.clone(),
            node: e.node.clone(),
            model: e.model.clone(),
            message: e.message.clone(),
        }
    }
}

/// `ttl_ms` minus `idle_ms`, or `None` for a model never unloaded (negative TTL).
pub fn ttl_left(ttl_ms: i64, idle_ms: u64) -> Option<u64> {
    u64::try_from(ttl_ms)
        .ok()
        .map(|ttl| ttl.saturating_sub(idle_ms))
}

/// p50 and p99 of a serialized hdrhistogram; `None` when empty or unreadable.
pub fn latency_quantiles(serialized: &[u8]) -> Option<(u64, u64)> {
    if serialized.is_empty() {
        return None;
    }
    let h: hdrhistogram::Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut &serialized[..])
        .ok()?;
    (!h.is_empty()).then(|| (h.value_at_quantile(0.5), h.value_at_quantile(0.99)))
}

/// Views of `now`'s models; with an earlier snapshot and the time between, request
/// rates too.
pub fn model_views(
    now: &ListModelsResponse,
    before: Option<(&ListModelsResponse, Duration)>,
) -> Vec<ModelView> {
    let earlier: HashMap<&str, u64> = before
        .map(|(b, _)| {
            b.models
                .iter()
                .map(|m| (m.name.as_str(), m.requests_total))
                .collect()
        })
        .unwrap_or_default();
    let elapsed = before.map(|(_, d)| d);
    let mut views: Vec<ModelView> = now
        .models
        .iter()
        .map(|m: &ModelInfo| {
            let policy = m.policy.clone().unwrap_or_default();
            let latency = latency_quantiles(&m.latency_histogram);
            ModelView {
                name: m.name.clone(),
                version: m.version,
                digest: m.digest.clone(),
                file_bytes: m.file_bytes,
                memory_bytes: m.memory_bytes,
                min_replicas: policy.min_replicas,
                max_replicas: policy.max_replicas,
                device: policy.device,
                replicas: m
                    .replicas
                    .iter()
                    .map(|r| ReplicaView {
                        node: r.node.clone(),
                        state: model_state(r.state()),
                        device: r.device.clone(),
                        memory_bytes: r.memory_bytes,
                        in_flight: r.in_flight,
                        queue_length: r.queue_length,
                        mean_batch_size: r.mean_batch_size,
                        ttl_left_ms: ttl_left(r.ttl_ms, r.idle_ms),
                        idle_ms: r.idle_ms,
                    })
                    .collect(),
                requests_total: m.requests_total,
                failures_total: m.failures_total,
                cold_starts: m.cold_starts,
                requests_per_s: rate(
                    m.requests_total,
                    earlier.get(m.name.as_str()).copied(),
                    elapsed,
                ),
                latency_p50_us: latency.map(|l| l.0),
                latency_p99_us: latency.map(|l| l.1),
                last_placement: m.last_placement.as_ref().map(EventView::from),
            }
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    views
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub address: String,
    pub state: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    /// What the node offers to models (its total, or less with --memory-limit).
    pub memory_capacity_bytes: u64,
    pub cpu_count: u32,
    /// Busy fraction of all cores, 0..1.
    pub cpu_load: f32,
    pub gpus: Vec<GpuView>,
    pub models: Vec<NodeModelView>,
    pub last_report_ms: u64,
    pub requests_total: u64,
    pub requests_per_s: Option<f64>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct GpuView {
    pub index: u32,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct NodeModelView {
    pub name: String,
    pub state: String,
    pub memory_bytes: u64,
    pub in_flight: u32,
    pub queue_length: u32,
    pub ttl_left_ms: Option<u64>,
}

pub fn node_views(
    now: &ListNodesResponse,
    before: Option<(&ListNodesResponse, Duration)>,
) -> Vec<NodeView> {
    let earlier: HashMap<&str, u64> = before
        .map(|(b, _)| {
            b.nodes
                .iter()
                .map(|n| (n.name.as_str(), n.requests_total))
                .collect()
        })
        .unwrap_or_default();
    let elapsed = before.map(|(_, d)| d);
    let mut views: Vec<NodeView> = now
        .nodes
        .iter()
        .map(|n: &NodeInfo| {
            let r = n.resources.clone().unwrap_or_default();
            NodeView {
                name: n.name.clone(),
                address: n.address.clone(),
                state: state_name(n.state().as_str_name(), "NODE_STATE_"),
                memory_total_bytes: r.memory_total_bytes,
                memory_used_bytes: r
                    .memory_total_bytes
                    .saturating_sub(r.memory_available_bytes),
                memory_capacity_bytes: r.memory_capacity_bytes,
                cpu_count: r.cpu_count,
                cpu_load: r.cpu_load,
                gpus: r
                    .gpus
                    .iter()
                    .map(|g| GpuView {
                        index: g.index,
                        name: g.name.clone(),
                        memory_total_bytes: g.memory_total_bytes,
                        memory_used_bytes: g.memory_used_bytes,
                    })
                    .collect(),
                models: n
                    .models
                    .iter()
                    .filter(|m| m.state() != ModelState::Available)
                    .map(|m| NodeModelView {
                        name: m.name.clone(),
                        state: model_state(m.state()),
                        memory_bytes: m.memory_bytes,
                        in_flight: m.in_flight,
                        queue_length: m.queue_length,
                        ttl_left_ms: ttl_left(m.ttl_ms, m.idle_ms),
                    })
                    .collect(),
                last_report_ms: n.last_report_ms,
                requests_total: n.requests_total,
                requests_per_s: rate(
                    n.requests_total,
                    earlier.get(n.name.as_str()).copied(),
                    elapsed,
                ),
            }
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    views
}
