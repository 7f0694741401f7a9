//! The one view-model of the cluster: what `herd models`/`herd nodes` print and what
//! `herd dash` shows. Pure functions over protos, so both front ends agree on states,
//! memory, rates, TTL left and latency quantiles.
//!
//! The CLI builds views from the Admin service's list responses ([`model_views`],
//! [`node_views`]); the dashboard from the lists inside each `Watch` snapshot
//! ([`models_of`], [`nodes_of`]), with rates it measures between snapshots ([`rates`]) and
//! latency quantiles it caches ([`Quantiles`]).

use std::collections::HashMap;
use std::time::Duration;

use herd_proto::herd::{
    Event, ListModelsResponse, ListNodesResponse, ModelInfo, ModelState, NodeInfo, NodeState,
};
use serde::Serialize;

/// `MODEL_STATE_READY` → `ready`.
pub fn state_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix).unwrap_or(full).to_lowercase()
}

pub fn model_state(state: ModelState) -> String {
    state_name(state.as_str_name(), "MODEL_STATE_")
}

pub fn node_state(state: NodeState) -> String {
    state_name(state.as_str_name(), "NODE_STATE_")
}

fn serialize_model_state<S: serde::Serializer>(
    state: &ModelState,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&model_state(*state))
}

fn serialize_node_state<S: serde::Serializer>(state: &NodeState, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&node_state(*state))
}

/// Per second between two counter readings `elapsed` apart; `None` without an earlier
/// reading, and when the counter went back (its node or the scheduler restarted).
pub fn rate(now: u64, before: Option<u64>, elapsed: Option<Duration>) -> Option<f64> {
    let (before, elapsed) = (before?, elapsed?);
    let secs = elapsed.as_secs_f64();
    (secs > 0.0 && now >= before).then(|| (now - before) as f64 / secs)
}

/// A number per node, per model, and per model on each node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PerName<T> {
    pub nodes: HashMap<String, T>,
    pub models: HashMap<String, T>,
    /// By node, then by model.
    pub node_models: HashMap<String, HashMap<String, T>>,
}

impl<T: Copy> PerName<T> {
    pub fn node(&self, node: &str) -> Option<T> {
        self.nodes.get(node).copied()
    }

    pub fn model(&self, model: &str) -> Option<T> {
        self.models.get(model).copied()
    }

    pub fn node_model(&self, node: &str, model: &str) -> Option<T> {
        self.node_models.get(node)?.get(model).copied()
    }
}

/// The counters that rates come from, read from one snapshot: requests per node and per
/// model, and items inferred per model on each node.
pub type Counters = PerName<u64>;

/// Per second: requests per node and per model, items inferred per model on each node.
pub type Rates = PerName<f64>;

pub fn counters(nodes: &[NodeInfo], models: &[ModelInfo]) -> Counters {
    Counters {
        nodes: nodes
            .iter()
            .map(|n| (n.name.clone(), n.requests_total))
            .collect(),
        models: models
            .iter()
            .map(|m| (m.name.clone(), m.requests_total))
            .collect(),
        node_models: nodes
            .iter()
            .map(|n| {
                let held = n
                    .models
                    .iter()
                    .map(|m| (m.name.clone(), m.inference_count))
                    .collect();
                (n.name.clone(), held)
            })
            .collect(),
    }
}

/// Rates between two readings `elapsed` apart; what has no rate (new, or restarted) is
/// left out.
pub fn rates(now: &Counters, before: &Counters, elapsed: Duration) -> Rates {
    fn each(
        now: &HashMap<String, u64>,
        before: Option<&HashMap<String, u64>>,
        elapsed: Duration,
    ) -> HashMap<String, f64> {
        now.iter()
            .filter_map(|(name, &total)| {
                let earlier = before.and_then(|b| b.get(name)).copied();
                Some((name.clone(), rate(total, earlier, Some(elapsed))?))
            })
            .collect()
    }
    Rates {
        nodes: each(&now.nodes, Some(&before.nodes), elapsed),
        models: each(&now.models, Some(&before.models), elapsed),
        node_models: now
            .node_models
            .iter()
            .map(|(node, held)| {
                let rates = each(held, before.node_models.get(node), elapsed);
                (node.clone(), rates)
            })
            .collect(),
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
    merged_quantiles([serialized])
}

/// p50 and p99 of the merge of serialized hdrhistograms (V2 form; microseconds);
/// unreadable ones are left out, and `None` when nothing is left.
pub fn merged_quantiles<'a>(serialized: impl IntoIterator<Item = &'a [u8]>) -> Option<(u64, u64)> {
    let mut merged: Option<hdrhistogram::Histogram<u64>> = None;
    for histogram in serialized.into_iter().filter_map(decode_histogram) {
        match merged.as_mut() {
            None => {
                let mut first = histogram;
                first.auto(true);
                merged = Some(first);
            }
            Some(total) => {
                // Auto-resizing, so only a histogram with another precision can fail; it
                // is left out rather than shown wrong.
                let _ = total.add(&histogram);
            }
        }
    }
    let h = merged.filter(|h| !h.is_empty())?;
    Some((h.value_at_quantile(0.5), h.value_at_quantile(0.99)))
}

fn decode_histogram(bytes: &[u8]) -> Option<hdrhistogram::Histogram<u64>> {
    if bytes.is_empty() {
        return None;
    }
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut &bytes[..])
        .ok()
}

/// Whose latency a [`Quantiles`] is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject<'a> {
    /// A node: the merge of the histograms of the models it holds.
    Node(&'a str),
    /// A model, as the scheduler measured it.
    Model(&'a str),
}

/// How views get p50 and p99 from serialized histograms: [`Decode`] decodes them each
/// time; a long-lived viewer can keep a cache instead.
pub trait Quantiles {
    fn quantiles(&mut self, of: Subject<'_>, histograms: &[&[u8]]) -> Option<(u64, u64)>;
}

/// Decodes the histograms on every call: [`merged_quantiles`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Decode;

impl Quantiles for Decode {
    fn quantiles(&mut self, _: Subject<'_>, histograms: &[&[u8]]) -> Option<(u64, u64)> {
        merged_quantiles(histograms.iter().copied())
    }
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
    /// Sorted by node.
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

impl ModelView {
    /// At least one replica is ready.
    pub fn is_loaded(&self) -> bool {
        self.replicas.iter().any(|r| r.state == ModelState::Ready)
    }
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ReplicaView {
    pub node: String,
    #[serde(serialize_with = "serialize_model_state")]
    pub state: ModelState,
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

impl From<Event> for EventView {
    fn from(e: Event) -> EventView {
        EventView {
            time_ms: e.time_ms,
            kind: e.kind,
            node: e.node,
            model: e.model,
            message: e.message,
        }
    }
}

/// Views of `now`'s models; with an earlier response and the time between, request
/// rates too.
pub fn model_views(
    now: &ListModelsResponse,
    before: Option<(&ListModelsResponse, Duration)>,
) -> Vec<ModelView> {
    let rates = before
        .map(|(b, elapsed)| {
            rates(
                &counters(&[], &now.models),
                &counters(&[], &b.models),
                elapsed,
            )
        })
        .unwrap_or_default();
    models_of(&now.models, &rates, &mut Decode)
}

/// Views of models (a list response's, or a watch snapshot's), sorted by name, with
/// their rates from `rates` and their latency from `latency`.
pub fn models_of(
    models: &[ModelInfo],
    rates: &Rates,
    latency: &mut impl Quantiles,
) -> Vec<ModelView> {
    let mut views: Vec<ModelView> = models
        .iter()
        .map(|m| {
            let policy = m.policy.clone().unwrap_or_default();
            let latency =
                latency.quantiles(Subject::Model(&m.name), &[m.latency_histogram.as_slice()]);
            let mut replicas: Vec<ReplicaView> = m
                .replicas
                .iter()
                .map(|r| ReplicaView {
                    node: r.node.clone(),
                    state: r.state(),
                    device: r.device.clone(),
                    memory_bytes: r.memory_bytes,
                    in_flight: r.in_flight,
                    queue_length: r.queue_length,
                    mean_batch_size: r.mean_batch_size,
                    ttl_left_ms: ttl_left(r.ttl_ms, r.idle_ms),
                    idle_ms: r.idle_ms,
                })
                .collect();
            replicas.sort_by(|a, b| a.node.cmp(&b.node));
            ModelView {
                name: m.name.clone(),
                version: m.version,
                digest: m.digest.clone(),
                file_bytes: m.file_bytes,
                memory_bytes: m.memory_bytes,
                min_replicas: policy.min_replicas,
                max_replicas: policy.max_replicas,
                device: policy.device,
                replicas,
                requests_total: m.requests_total,
                failures_total: m.failures_total,
                cold_starts: m.cold_starts,
                requests_per_s: rates.model(&m.name),
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
    #[serde(serialize_with = "serialize_node_state")]
    pub state: NodeState,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    /// What the node offers to models (its total, or less with --memory-limit).
    pub memory_capacity_bytes: u64,
    pub cpu_count: u32,
    /// Busy fraction of all cores, 0..1.
    pub cpu_load: f32,
    pub gpus: Vec<GpuView>,
    /// Models loading, ready or unloading, and failed ones (not those only on disk),
    /// sorted by name.
    pub models: Vec<NodeModelView>,
    pub last_report_ms: u64,
    pub requests_total: u64,
    pub requests_per_s: Option<f64>,
    /// Requests waiting in the node's model queues.
    pub queue_length: u64,
    /// Of the merge of its models' latency histograms.
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
}

impl NodeView {
    /// Models in memory or on their way in or out (not failed ones).
    pub fn loaded_models(&self) -> usize {
        self.models
            .iter()
            .filter(|m| {
                matches!(
                    m.state,
                    ModelState::Loading | ModelState::Ready | ModelState::Unloading
                )
            })
            .count()
    }
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct GpuView {
    pub index: u32,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    /// Why no replica can run on it (the node's ONNX Runtime has no CUDA provider);
    /// empty when they can.
    pub unusable: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct NodeModelView {
    pub name: String,
    pub version: String,
    #[serde(serialize_with = "serialize_model_state")]
    pub state: ModelState,
    pub memory_bytes: u64,
    pub in_flight: u32,
    pub queue_length: u32,
    pub mean_batch_size: f64,
    /// Time left before an idle unload; null when the model is never unloaded.
    pub ttl_left_ms: Option<u64>,
    /// Items inferred per second (batched requests count each item).
    pub inferences_per_s: Option<f64>,
    pub last_error: String,
}

impl NodeModelView {
    /// Time until the idle TTL unloads the model: only while the TTL is running, that is
    /// while the model is ready, has a TTL and nothing in flight or queued.
    pub fn unloads_in_ms(&self) -> Option<u64> {
        let idle = self.in_flight == 0 && self.queue_length == 0;
        self.ttl_left_ms
            .filter(|_| idle && self.state == ModelState::Ready)
    }
}

pub fn node_views(
    now: &ListNodesResponse,
    before: Option<(&ListNodesResponse, Duration)>,
) -> Vec<NodeView> {
    let rates = before
        .map(|(b, elapsed)| {
            rates(
                &counters(&now.nodes, &[]),
                &counters(&b.nodes, &[]),
                elapsed,
            )
        })
        .unwrap_or_default();
    nodes_of(&now.nodes, &rates, &mut Decode)
}

/// Views of nodes (a list response's, or a watch snapshot's), sorted by name, with their
/// rates from `rates` and their latency from `latency`.
pub fn nodes_of(nodes: &[NodeInfo], rates: &Rates, latency: &mut impl Quantiles) -> Vec<NodeView> {
    let mut views: Vec<NodeView> = nodes
        .iter()
        .map(|n| {
            let r = n.resources.clone().unwrap_or_default();
            let held: Vec<_> = n
                .models
                .iter()
                .filter(|m| !matches!(m.state(), ModelState::Available | ModelState::Unspecified))
                .collect();
            let histograms: Vec<&[u8]> = held.iter().map(|m| &m.latency_histogram[..]).collect();
            let latency = latency.quantiles(Subject::Node(&n.name), &histograms);
            let mut models: Vec<NodeModelView> = held
                .iter()
                .map(|m| NodeModelView {
                    name: m.name.clone(),
                    version: m.version.clone(),
                    state: m.state(),
                    memory_bytes: m.memory_bytes,
                    in_flight: m.in_flight,
                    queue_length: m.queue_length,
                    mean_batch_size: m.mean_batch_size,
                    ttl_left_ms: ttl_left(m.ttl_ms, m.idle_ms),
                    inferences_per_s: rates.node_model(&n.name, &m.name),
                    last_error: m.last_error.clone(),
                })
                .collect();
            models.sort_by(|a, b| a.name.cmp(&b.name));
            NodeView {
                name: n.name.clone(),
                address: n.address.clone(),
                state: n.state(),
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
                        unusable: g.unusable.clone(),
                    })
                    .collect(),
                queue_length: held.iter().map(|m| u64::from(m.queue_length)).sum(),
                models,
                last_report_ms: n.last_report_ms,
                requests_total: n.requests_total,
                requests_per_s: rates.node(&n.name),
                latency_p50_us: latency.map(|l| l.0),
                latency_p99_us: latency.map(|l| l.1),
            }
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    views
}

/// The cluster at a glance. Down nodes count in neither memory nor traffic: their
/// figures are their last report.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub nodes_up: usize,
    pub nodes_total: usize,
    pub memory_used_bytes: u64,
    pub memory_capacity_bytes: u64,
    pub requests_per_s: f64,
    /// Models with at least one ready replica.
    pub models_loaded: usize,
    pub models_total: usize,
}

pub fn summary(nodes: &[NodeView], models: &[ModelView]) -> Summary {
    let live = || nodes.iter().filter(|n| n.state != NodeState::Down);
    Summary {
        // Suspect and resting nodes are up: they serve what they hold.
        nodes_up: nodes
            .iter()
            .filter(|n| !matches!(n.state, NodeState::Down | NodeState::Draining))
            .count(),
        nodes_total: nodes.len(),
        memory_used_bytes: live().map(|n| n.memory_used_bytes).sum(),
        memory_capacity_bytes: live().map(|n| n.memory_capacity_bytes).sum(),
        requests_per_s: live().filter_map(|n| n.requests_per_s).sum(),
        models_loaded: models.iter().filter(|m| m.is_loaded()).count(),
        models_total: models.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{models, nodes, serialized, GIB};
    use herd_proto::herd::{ModelStatus, NodeResources};

    /// `count` latencies spread between `low_us` and `high_us`.
    fn spread(low_us: u64, high_us: u64, count: u64) -> Vec<u8> {
        let values: Vec<u64> = (0..count)
            .map(|i| (low_us + (high_us - low_us) * i * i / (count * count)).max(1))
            .collect();
        serialized(&values)
    }

    fn node_model(name: &str, state: ModelState, in_flight: u32, queue: u32) -> ModelStatus {
        ModelStatus {
            name: name.into(),
            version: "1".into(),
            state: state as i32,
            in_flight,
            queue_length: queue,
            ttl_ms: 60_000,
            idle_ms: 20_000,
            ..Default::default()
        }
    }

    #[test]
    fn model_views_sort_by_name_and_compute_rates_ttl_and_latency() {
        let views = model_views(&models(1500), Some((&models(1000), Duration::from_secs(2))));
        assert_eq!(views[0].name, "alpha");
        let m = &views[1];
        assert_eq!(m.requests_per_s, Some(250.0));
        let replica = |node: &str| {
            m.replicas
                .iter()
                .find(|r| r.node == node)
                .expect("a replica")
        };
        assert_eq!(replica("nas").state, ModelState::Ready);
        assert_eq!(replica("nas").ttl_left_ms, Some(250_000));
        assert_eq!(replica("gpu-box").state, ModelState::Loading);
        assert_eq!(m.latency_p50_us, Some(300));
        assert!(m.latency_p99_us.is_some_and(|p| p >= 9_990));
        assert_eq!(ttl_left(-1, 10), None);
        assert_eq!(ttl_left(1_000, 5_000), Some(0));
    }

    #[test]
    fn replicas_are_sorted_by_node() {
        let views = model_views(&models(1), None);
        let nodes: Vec<&str> = views[1].replicas.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(nodes, ["gpu-box", "nas"]);
        assert!(views[1].is_loaded());
        assert!(!views[0].is_loaded());
    }

    #[test]
    fn model_views_serialise_for_scripts() {
        let views = model_views(&models(1), None);
        let v = serde_json::to_value(&views).expect("json");
        assert_eq!(v[1]["name"], "magika");
        assert_eq!(v[1]["replicas"][1]["node"], "nas");
        assert_eq!(v[1]["replicas"][1]["state"], "ready");
        assert_eq!(v[1]["replicas"][1]["ttl_left_ms"], 250_000);
        assert_eq!(v[1]["requests_per_s"], serde_json::Value::Null);
    }

    #[test]
    fn node_views_hold_loaded_models_only_and_serialise_for_scripts() {
        let views = node_views(&nodes(30), Some((&nodes(10), Duration::from_secs(1))));
        let names: Vec<&str> = views.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["gpu-box", "nas"]);
        let nas = &views[1];
        assert_eq!(nas.requests_per_s, Some(20.0));
        assert_eq!(nas.memory_used_bytes, 4 * GIB);
        let held: Vec<&str> = nas.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(held, ["magika"], "not the model only on disk");
        let v = serde_json::to_value(&views).expect("json");
        assert_eq!(v[0]["state"], "draining");
        assert_eq!(v[0]["gpus"][0]["memory_total_bytes"], 24 * GIB);
        assert_eq!(v[1]["models"][0]["state"], "ready");
        assert_eq!(v[1]["models"][0]["ttl_left_ms"], serde_json::Value::Null);
    }

    #[test]
    fn a_node_merges_its_models_latency_and_sums_their_queues() {
        let mut fast = node_model("b-fast", ModelState::Ready, 1, 2);
        fast.latency_histogram = spread(100, 200, 100);
        let mut slow = node_model("a-slow", ModelState::Loading, 0, 5);
        slow.latency_histogram = spread(10_000, 20_000, 100);
        let mut unknown = node_model("c-unknown", ModelState::Unspecified, 0, 9);
        unknown.latency_histogram = spread(1_000_000, 2_000_000, 100);
        let node = NodeInfo {
            name: "n".into(),
            models: vec![fast, slow, unknown],
            ..Default::default()
        };
        let views = nodes_of(&[node], &Rates::default(), &mut Decode);
        let n = &views[0];
        let held: Vec<&str> = n.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            held,
            ["a-slow", "b-fast"],
            "sorted, unknown states left out"
        );
        assert_eq!(n.queue_length, 7);
        assert_eq!(n.loaded_models(), 2);
        assert!(n.latency_p50_us.is_some_and(|p| (100..=210).contains(&p)));
        assert!(n
            .latency_p99_us
            .is_some_and(|p| (19_000..=20_100).contains(&p)));
    }

    #[test]
    fn histograms_merge_exactly() {
        let fast = spread(100, 200, 100);
        let slow = spread(10_000, 20_000, 100);
        let (p50, p99) = merged_quantiles([fast.as_slice(), slow.as_slice()]).expect("data");
        // Half the requests are fast: the median is at the top of the fast ones.
        assert!((100..=210).contains(&p50), "p50 {p50}");
        assert!((19_000..=20_100).contains(&p99), "p99 {p99}");
        assert_eq!(merged_quantiles([&[][..]]), None);
        assert_eq!(merged_quantiles([&b"garbage"[..]]), None);
        assert!(merged_quantiles([&[][..], fast.as_slice()]).is_some());
        assert_eq!(
            latency_quantiles(&fast),
            merged_quantiles([fast.as_slice()])
        );
    }

    #[test]
    fn quantiles_are_asked_for_by_subject() {
        #[derive(Default)]
        struct Record(Vec<String>);
        impl Quantiles for Record {
            fn quantiles(&mut self, of: Subject<'_>, histograms: &[&[u8]]) -> Option<(u64, u64)> {
                self.0.push(format!("{of:?} {}", histograms.len()));
                Some((1, 2))
            }
        }
        let mut record = Record::default();
        let views = nodes_of(&nodes(0).nodes, &Rates::default(), &mut record);
        assert_eq!(views[1].latency_p99_us, Some(2));
        let models = models_of(&models(0).models, &Rates::default(), &mut record);
        assert_eq!(models[0].latency_p50_us, Some(1));
        assert_eq!(
            record.0,
            [
                "Node(\"nas\") 1",
                "Node(\"gpu-box\") 0",
                "Model(\"magika\") 1",
                "Model(\"alpha\") 1"
            ]
        );
    }

    #[test]
    fn rates_leave_out_new_and_restarted_counters() {
        let node = |name: &str, requests: u64, inferences: u64| NodeInfo {
            name: name.into(),
            requests_total: requests,
            models: vec![ModelStatus {
                name: "m".into(),
                inference_count: inferences,
                ..Default::default()
            }],
            ..Default::default()
        };
        let before = counters(&[node("a", 100, 1_000), node("restarted", 500, 0)], &[]);
        let now = counters(
            &[
                node("a", 300, 1_400),
                node("restarted", 10, 0),
                node("new", 50, 0),
            ],
            &[],
        );
        let r = rates(&now, &before, Duration::from_secs(2));
        assert_eq!(r.node("a"), Some(100.0));
        assert_eq!(r.node_model("a", "m"), Some(200.0));
        assert_eq!(r.node("restarted"), None, "a counter that went back");
        assert_eq!(r.node("new"), None);
        assert_eq!(r.node_model("new", "m"), None);
        assert_eq!(rate(5, Some(10), Some(Duration::from_secs(1))), None);
        assert_eq!(rate(5, Some(1), Some(Duration::ZERO)), None);
    }

    #[test]
    fn the_ttl_runs_only_while_ready_and_idle() {
        let node = NodeInfo {
            name: "n".into(),
            models: vec![
                node_model("busy", ModelState::Ready, 1, 0),
                node_model("idle", ModelState::Ready, 0, 0),
                node_model("loading", ModelState::Loading, 0, 0),
                node_model("queued", ModelState::Ready, 0, 3),
            ],
            ..Default::default()
        };
        let views = nodes_of(&[node], &Rates::default(), &mut Decode);
        let unloads_in: Vec<(&str, Option<u64>)> = views[0]
            .models
            .iter()
            .map(|m| (m.name.as_str(), m.unloads_in_ms()))
            .collect();
        assert_eq!(
            unloads_in,
            [
                ("busy", None),
                ("idle", Some(40_000)),
                ("loading", None),
                ("queued", None)
            ]
        );
        // The TTL left itself is there for every model that has one.
        assert!(views[0]
            .models
            .iter()
            .all(|m| m.ttl_left_ms == Some(40_000)));
    }

    #[test]
    fn the_summary_leaves_down_nodes_out() {
        let node = |name: &str, state: NodeState, used_gib: u64, requests: u64| NodeInfo {
            name: name.into(),
            state: state as i32,
            resources: Some(NodeResources {
                memory_total_bytes: 16 * GIB,
                memory_available_bytes: (16 - used_gib) * GIB,
                memory_capacity_bytes: 10 * GIB,
                ..Default::default()
            }),
            requests_total: requests,
            ..Default::default()
        };
        let before = [
            node("up", NodeState::Up, 1, 0),
            node("draining", NodeState::Draining, 2, 0),
            node("down", NodeState::Down, 4, 0),
        ];
        let now = [
            node("up", NodeState::Up, 1, 10),
            node("draining", NodeState::Draining, 2, 20),
            node("down", NodeState::Down, 4, 40),
        ];
        let rates = rates(
            &counters(&now, &[]),
            &counters(&before, &[]),
            Duration::from_secs(1),
        );
        let nodes = nodes_of(&now, &rates, &mut Decode);
        let models = model_views(&models(0), None);
        assert_eq!(
            summary(&nodes, &models),
            Summary {
                nodes_up: 1,
                nodes_total: 3,
                memory_used_bytes: 3 * GIB,
                memory_capacity_bytes: 20 * GIB,
                requests_per_s: 30.0,
                models_loaded: 1,
                models_total: 2,
            }
        );
    }
}
