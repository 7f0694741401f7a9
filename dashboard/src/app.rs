//! The dashboard's state: a plain struct that cluster updates, key presses and connection
//! changes update, and that rendering only reads. Nothing here touches a terminal or the
//! network, so unit tests drive it directly.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use herd_proto::herd::{ClusterSnapshot, ClusterUpdate, Event, ModelState, NodeState};
use tokio::time::Instant;

/// Seconds of requests/s history kept per node for its sparkline.
pub const HISTORY_SECONDS: usize = 60;
/// Events kept for the events pane, newest last.
pub const MAX_EVENTS: usize = 200;
/// A rate is measured over at least this much snapshot time, so it does not jitter.
const RATE_WINDOW_MS: u64 = 1000;

/// What the main pane shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Nodes,
    NodeDetail,
    Models,
}

/// What the async part must do after a key press.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    /// Unload every replica of this model.
    Unload(String),
    /// Drain this node.
    Drain(String),
}

/// The state of the watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    Connecting,
    Connected,
    Disconnected { error: String, retry_at: Instant },
}

/// One GPU of a node.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuRow {
    pub index: u32,
    pub name: String,
    pub used: u64,
    pub total: u64,
}

/// One model held by a node, as the node reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeModelRow {
    pub name: String,
    pub version: String,
    pub state: ModelState,
    pub memory: u64,
    pub in_flight: u32,
    pub queue: u32,
    pub mean_batch_size: f64,
    /// Time until the idle TTL unloads the model, when it is idle and has a TTL.
    pub ttl_left_ms: Option<i64>,
    /// Items inferred per second on this node (from the agent's inference count).
    pub rate: Option<f64>,
    pub last_error: String,
}

/// One node, with what the dashboard derives from its reports.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRow {
    pub name: String,
    pub address: String,
    pub state: NodeState,
    pub ram_used: u64,
    pub ram_capacity: u64,
    pub gpus: Vec<GpuRow>,
    /// Busy fraction of all cores, 0..1.
    pub cpu_load: f32,
    pub cpu_count: u32,
    /// Models loading, ready or unloading (and failed ones, so they show).
    pub models: Vec<NodeModelRow>,
    pub rate: Option<f64>,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// Requests waiting in the node's model queues.
    pub queue: u64,
    pub last_report_ms: u64,
}

impl NodeRow {
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

/// Where a model's replica is.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaRow {
    pub node: String,
    pub state: ModelState,
    pub device: String,
}

/// One model of the catalog.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRow {
    pub name: String,
    pub version: u64,
    pub memory: u64,
    pub replicas: Vec<ReplicaRow>,
    pub rate: Option<f64>,
    pub p99_us: Option<u64>,
    pub cold_starts: u64,
    pub failures: u64,
    pub last_placement: Option<Event>,
}

/// The line on top: the cluster at a glance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub nodes_up: usize,
    pub nodes_total: usize,
    pub memory_used: u64,
    pub memory_capacity: u64,
    pub rate: f64,
    /// Models with at least one ready replica.
    pub models_loaded: usize,
    pub models_total: usize,
}

/// An action waiting for y/n.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirm {
    pub action: Action,
    pub prompt: String,
}

/// The result of the last action, or a hint, shown in the footer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub text: String,
    pub error: bool,
}

/// A counter turned into a rate over successive snapshots.
#[derive(Clone, Debug)]
struct RateMeter {
    time_ms: u64,
    total: u64,
    rate: Option<f64>,
}

impl RateMeter {
    fn new(time_ms: u64, total: u64) -> Self {
        RateMeter {
            time_ms,
            total,
            rate: None,
        }
    }

    /// Takes a new reading; returns the new rate and the milliseconds it spans when one
    /// window has passed.
    fn update(&mut self, time_ms: u64, total: u64) -> Option<(f64, u64)> {
        if total < self.total || time_ms < self.time_ms {
            // A restarted node or a restarted scheduler: start again.
            *self = RateMeter::new(time_ms, total);
            return None;
        }
        let elapsed = time_ms - self.time_ms;
        if elapsed < RATE_WINDOW_MS {
            return None;
        }
        let rate = (total - self.total) as f64 * 1000.0 / elapsed as f64;
        self.time_ms = time_ms;
        self.total = total;
        self.rate = Some(rate);
        Some((rate, elapsed))
    }
}

/// A node's rate meter and its last minute of rates, one sample a second.
#[derive(Clone, Debug)]
struct NodeMeter {
    rate: RateMeter,
    history: VecDeque<f64>,
}

/// p50 and p99 of some serialized histograms, kept until the histograms change, and
/// recomputed at most once a second: decoding is most of the cost of an update, agents
/// report once a second, and their histograms count since the model loaded.
#[derive(Clone, Debug, Default)]
struct QuantileCache {
    inputs: Vec<Vec<u8>>,
    computed_at_ms: Option<u64>,
    quantiles: (Option<u64>, Option<u64>),
}

impl QuantileCache {
    fn quantiles(&mut self, inputs: &[&[u8]], time_ms: u64) -> (Option<u64>, Option<u64>) {
        let same = self.inputs.len() == inputs.len()
            && self
                .inputs
                .iter()
                .zip(inputs)
                .all(|(a, b)| a.as_slice() == *b);
        let due = match self.computed_at_ms {
            None => true,
            Some(at) => time_ms < at || time_ms - at >= RATE_WINDOW_MS,
        };
        if !same && due {
            self.quantiles = merged_quantiles(inputs.iter().copied());
            self.inputs = inputs.iter().map(|b| b.to_vec()).collect();
            self.computed_at_ms = Some(time_ms);
        }
        self.quantiles
    }
}

/// Everything the dashboard shows.
#[derive(Debug)]
pub struct App {
    /// The scheduler's address, for the header.
    pub scheduler: String,
    pub view: View,
    pub nodes: Vec<NodeRow>,
    pub models: Vec<ModelRow>,
    /// Newest last.
    pub events: VecDeque<Event>,
    pub summary: Summary,
    /// The last snapshot's time (ms since the epoch); 0 before the first.
    pub snapshot_time_ms: u64,
    pub has_data: bool,
    pub connection: Connection,
    /// The clock as of the last tick, for the reconnect countdown.
    pub now: Instant,
    /// Rows selected in each view, as positions in the filtered list.
    pub node_cursor: usize,
    pub detail_cursor: usize,
    pub model_cursor: usize,
    /// The node the detail view shows.
    pub detail_node: Option<String>,
    pub filter: String,
    pub editing_filter: bool,
    pub confirm: Option<Confirm>,
    pub status: Option<Status>,
    pub show_help: bool,
    /// False under NO_COLOR.
    pub color: bool,
    node_meters: HashMap<String, NodeMeter>,
    node_model_meters: HashMap<(String, String), RateMeter>,
    model_meters: HashMap<String, RateMeter>,
    node_latency: HashMap<String, QuantileCache>,
    model_latency: HashMap<String, QuantileCache>,
}

impl App {
    pub fn new(scheduler: impl Into<String>, color: bool, now: Instant) -> Self {
        App {
            scheduler: scheduler.into(),
            view: View::Nodes,
            nodes: Vec::new(),
            models: Vec::new(),
            events: VecDeque::new(),
            summary: Summary::default(),
            snapshot_time_ms: 0,
            has_data: false,
            connection: Connection::Connecting,
            now,
            node_cursor: 0,
            detail_cursor: 0,
            model_cursor: 0,
            detail_node: None,
            filter: String::new(),
            editing_filter: false,
            confirm: None,
            status: None,
            show_help: false,
            color,
            node_meters: HashMap::new(),
            node_model_meters: HashMap::new(),
            model_meters: HashMap::new(),
            node_latency: HashMap::new(),
            model_latency: HashMap::new(),
        }
    }

    /// Takes in an update from the watch stream.
    pub fn apply_update(&mut self, update: ClusterUpdate, now: Instant) {
        self.now = now;
        self.connection = Connection::Connected;
        if let Some(snapshot) = update.snapshot {
            self.apply_snapshot(snapshot);
        }
        for event in update.events {
            if self.events.len() == MAX_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(event);
        }
        self.clamp_cursors();
    }

    fn apply_snapshot(&mut self, snapshot: ClusterSnapshot) {
        let time = snapshot.time_ms;
        self.snapshot_time_ms = time;
        self.has_data = true;

        let mut nodes = Vec::with_capacity(snapshot.nodes.len());
        let mut node_meters = HashMap::with_capacity(snapshot.nodes.len());
        let mut node_model_meters = HashMap::new();
        let mut node_latency = HashMap::with_capacity(snapshot.nodes.len());
        for info in snapshot.nodes {
            let mut meter = self
                .node_meters
                .remove(&info.name)
                .unwrap_or_else(|| NodeMeter {
                    rate: RateMeter::new(time, info.requests_total),
                    history: VecDeque::with_capacity(HISTORY_SECONDS),
                });
            if let Some((rate, elapsed_ms)) = meter.rate.update(time, info.requests_total) {
                // One sample per second the window spanned, so gaps keep their width.
                let seconds = ((elapsed_ms + 500) / 1000).clamp(1, HISTORY_SECONDS as u64);
                for _ in 0..seconds {
                    if meter.history.len() == HISTORY_SECONDS {
                        meter.history.pop_front();
                    }
                    meter.history.push_back(rate);
                }
            }
            let state = info.state();
            let resources = info.resources.unwrap_or_default();
            let mut models = Vec::new();
            let mut queue = 0u64;
            let mut histograms: Vec<&[u8]> = Vec::new();
            for status in &info.models {
                let state = status.state();
                if matches!(state, ModelState::Available | ModelState::Unspecified) {
                    continue;
                }
                queue += u64::from(status.queue_length);
                histograms.push(&status.latency_histogram);
                let key = (info.name.clone(), status.name.clone());
                let mut model_meter = self
                    .node_model_meters
                    .remove(&key)
                    .unwrap_or_else(|| RateMeter::new(time, status.inference_count));
                model_meter.update(time, status.inference_count);
                let idle = status.in_flight == 0 && status.queue_length == 0;
                let ttl_left_ms = (status.ttl_ms >= 0 && idle && state == ModelState::Ready)
                    .then(|| (status.ttl_ms - status.idle_ms as i64).max(0));
                models.push(NodeModelRow {
                    name: status.name.clone(),
                    version: status.version.clone(),
                    state,
                    memory: status.memory_bytes,
                    in_flight: status.in_flight,
                    queue: status.queue_length,
                    mean_batch_size: status.mean_batch_size,
                    ttl_left_ms,
                    rate: model_meter.rate,
                    last_error: status.last_error.clone(),
                });
                node_model_meters.insert(key, model_meter);
            }
            models.sort_by(|a, b| a.name.cmp(&b.name));
            let mut latency = self.node_latency.remove(&info.name).unwrap_or_default();
            let (p50_us, p99_us) = latency.quantiles(&histograms, time);
            node_latency.insert(info.name.clone(), latency);
            nodes.push(NodeRow {
                state,
                ram_used: resources
                    .memory_total_bytes
                    .saturating_sub(resources.memory_available_bytes),
                ram_capacity: resources.memory_capacity_bytes,
                gpus: resources
                    .gpus
                    .iter()
                    .map(|g| GpuRow {
                        index: g.index,
                        name: g.name.clone(),
                        used: g.memory_used_bytes,
                        total: g.memory_total_bytes,
                    })
                    .collect(),
                cpu_load: resources.cpu_load,
                cpu_count: resources.cpu_count,
                models,
                rate: meter.rate.rate,
                p50_us,
                p99_us,
                queue,
                last_report_ms: info.last_report_ms,
                address: info.address,
                name: info.name.clone(),
            });
            node_meters.insert(info.name, meter);
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        // Meters of nodes and models that left go with them: nothing grows without bound.
        self.node_meters = node_meters;
        self.node_model_meters = node_model_meters;
        self.node_latency = node_latency;

        let mut models = Vec::with_capacity(snapshot.models.len());
        let mut model_meters = HashMap::with_capacity(snapshot.models.len());
        let mut model_latency = HashMap::with_capacity(snapshot.models.len());
        for info in snapshot.models {
            let mut meter = self
                .model_meters
                .remove(&info.name)
                .unwrap_or_else(|| RateMeter::new(time, info.requests_total));
            meter.update(time, info.requests_total);
            let mut latency = self.model_latency.remove(&info.name).unwrap_or_default();
            let (_, p99_us) = latency.quantiles(&[info.latency_histogram.as_slice()], time);
            model_latency.insert(info.name.clone(), latency);
            let mut replicas: Vec<ReplicaRow> = info
                .replicas
                .iter()
                .map(|r| ReplicaRow {
                    node: r.node.clone(),
                    state: r.state(),
                    device: r.device.clone(),
                })
                .collect();
            replicas.sort_by(|a, b| a.node.cmp(&b.node));
            models.push(ModelRow {
                version: info.version,
                memory: info.memory_bytes,
                replicas,
                rate: meter.rate,
                p99_us,
                cold_starts: info.cold_starts,
                failures: info.failures_total,
                last_placement: info.last_placement,
                name: info.name.clone(),
            });
            model_meters.insert(info.name, meter);
        }
        models.sort_by(|a, b| a.name.cmp(&b.name));
        self.model_meters = model_meters;
        self.model_latency = model_latency;

        let up: Vec<&NodeRow> = nodes
            .iter()
            .filter(|n| n.state != NodeState::Down)
            .collect();
        self.summary = Summary {
            nodes_up: nodes.iter().filter(|n| n.state == NodeState::Up).count(),
            nodes_total: nodes.len(),
            memory_used: up.iter().map(|n| n.ram_used).sum(),
            memory_capacity: up.iter().map(|n| n.ram_capacity).sum(),
            rate: up.iter().filter_map(|n| n.rate).sum(),
            models_loaded: models
                .iter()
                .filter(|m| m.replicas.iter().any(|r| r.state == ModelState::Ready))
                .count(),
            models_total: models.len(),
        };
        self.nodes = nodes;
        self.models = models;
    }

    /// The watch stream broke; the connection retries after `retry_in`. The last data
    /// stays, shown greyed.
    pub fn on_disconnected(&mut self, error: impl Into<String>, retry_in: Duration, now: Instant) {
        self.now = now;
        self.connection = Connection::Disconnected {
            error: error.into(),
            retry_at: now + retry_in,
        };
    }

    /// The watch stream is being opened.
    pub fn on_connecting(&mut self, now: Instant) {
        self.now = now;
        self.connection = Connection::Connecting;
    }

    /// The clock moved; true when what is shown changed (the reconnect countdown).
    pub fn tick(&mut self, now: Instant) -> bool {
        let before = self.retry_in_seconds();
        self.now = now;
        before != self.retry_in_seconds()
    }

    /// Whole seconds until the next reconnect attempt, while disconnected.
    pub fn retry_in_seconds(&self) -> Option<u64> {
        match &self.connection {
            Connection::Disconnected { retry_at, .. } => {
                let left = retry_at.saturating_duration_since(self.now);
                Some(left.as_millis().div_ceil(1000) as u64)
            }
            _ => None,
        }
    }

    /// The last data is from before a disconnection.
    pub fn is_stale(&self) -> bool {
        !matches!(self.connection, Connection::Connected)
    }

    /// An unload or drain finished; `Ok` carries what happened, `Err` why it failed.
    pub fn on_action_result(&mut self, result: Result<String, String>) {
        self.status = Some(match result {
            Ok(text) => Status { text, error: false },
            Err(text) => Status { text, error: true },
        });
    }

    fn matches_filter(&self, name: &str, other: &str) -> bool {
        self.filter.is_empty()
            || contains_ignore_case(name, &self.filter)
            || contains_ignore_case(other, &self.filter)
    }

    /// The nodes the nodes view lists, after the filter.
    pub fn visible_nodes(&self) -> Vec<&NodeRow> {
        self.nodes
            .iter()
            .filter(|n| self.matches_filter(&n.name, &n.address))
            .collect()
    }

    /// The node the detail view shows.
    pub fn detail(&self) -> Option<&NodeRow> {
        let name = self.detail_node.as_deref()?;
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The detail view's models, after the filter.
    pub fn visible_detail_models(&self) -> Vec<&NodeModelRow> {
        self.detail()
            .map(|node| {
                node.models
                    .iter()
                    .filter(|m| self.matches_filter(&m.name, ""))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The models view's models, after the filter.
    pub fn visible_models(&self) -> Vec<&ModelRow> {
        self.models
            .iter()
            .filter(|m| {
                let nodes_match = !self.filter.is_empty()
                    && m.replicas
                        .iter()
                        .any(|r| contains_ignore_case(&r.node, &self.filter));
                nodes_match || self.matches_filter(&m.name, "")
            })
            .collect()
    }

    /// The last minute of a node's requests/s, oldest first.
    pub fn node_history(&self, node: &str) -> impl Iterator<Item = f64> + Clone + '_ {
        self.node_meters
            .get(node)
            .into_iter()
            .flat_map(|m| m.history.iter().copied())
    }

    /// The node under the cursor (nodes view) or shown (detail view).
    pub fn selected_node(&self) -> Option<&NodeRow> {
        match self.view {
            View::Nodes => self.visible_nodes().get(self.node_cursor).copied(),
            View::NodeDetail => self.detail(),
            View::Models => None,
        }
    }

    /// The model under the cursor (detail or models view).
    pub fn selected_model(&self) -> Option<String> {
        match self.view {
            View::Nodes => None,
            View::NodeDetail => self
                .visible_detail_models()
                .get(self.detail_cursor)
                .map(|m| m.name.clone()),
            View::Models => self
                .visible_models()
                .get(self.model_cursor)
                .map(|m| m.name.clone()),
        }
    }

    /// Rows in the current view's list.
    pub fn row_count(&self) -> usize {
        match self.view {
            View::Nodes => self.visible_nodes().len(),
            View::NodeDetail => self.visible_detail_models().len(),
            View::Models => self.visible_models().len(),
        }
    }

    pub(crate) fn cursor_mut(&mut self) -> &mut usize {
        match self.view {
            View::Nodes => &mut self.node_cursor,
            View::NodeDetail => &mut self.detail_cursor,
            View::Models => &mut self.model_cursor,
        }
    }

    pub(crate) fn clamp_cursors(&mut self) {
        let nodes = self.visible_nodes().len();
        let detail = self.visible_detail_models().len();
        let models = self.visible_models().len();
        self.node_cursor = self.node_cursor.min(nodes.saturating_sub(1));
        self.detail_cursor = self.detail_cursor.min(detail.saturating_sub(1));
        self.model_cursor = self.model_cursor.min(models.saturating_sub(1));
    }
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

/// Decodes an hdrhistogram in its V2 serialized form; `None` for empty or bad bytes.
pub fn decode_histogram(bytes: &[u8]) -> Option<Histogram<u64>> {
    if bytes.is_empty() {
        return None;
    }
    let mut reader = bytes;
    Deserializer::new().deserialize::<u64, _>(&mut reader).ok()
}

/// p50 and p99 (microseconds) of the merge of serialized histograms; `None` without data.
pub fn merged_quantiles<'a>(
    serialized: impl IntoIterator<Item = &'a [u8]>,
) -> (Option<u64>, Option<u64>) {
    let mut merged: Option<Histogram<u64>> = None;
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
    match merged {
        Some(h) if !h.is_empty() => (
            Some(h.value_at_quantile(0.5)),
            Some(h.value_at_quantile(0.99)),
        ),
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, cluster, histogram, T0};

    fn app() -> App {
        App::new("sched:8001", true, Instant::now())
    }

    #[test]
    fn a_snapshot_fills_nodes_models_and_summary() {
        let mut app = app();
        let now = app.now;
        app.apply_update(cluster(0), now);
        assert!(app.has_data);
        assert_eq!(app.connection, Connection::Connected);
        let names: Vec<&str> = app.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["node-a", "node-b", "node-c"], "sorted by name");
        let a = &app.nodes[0];
        assert_eq!(a.ram_used, 24 * fixtures::GIB);
        assert_eq!(a.ram_capacity, 60 * fixtures::GIB);
        assert_eq!(a.gpus.len(), 2);
        assert_eq!(a.queue, 7);
        // The repository's available model is not a loaded one.
        assert_eq!(a.loaded_models(), 2);
        assert!(a.models.iter().all(|m| m.name != "tiny-add"));
        assert_eq!(app.nodes[2].state, NodeState::Down);
        assert_eq!(
            app.summary,
            Summary {
                nodes_up: 2,
                nodes_total: 3,
                // The down node's memory is not counted.
                memory_used: (24 + 13) * fixtures::GIB,
                memory_capacity: (60 + 14) * fixtures::GIB,
                rate: 0.0,
                models_loaded: 2,
                models_total: 5,
            }
        );
        assert_eq!(app.events.len(), 8);
        // No rate from a single snapshot.
        assert_eq!(app.nodes[0].rate, None);
    }

    #[test]
    fn rates_come_from_successive_snapshots() {
        let mut app = app();
        let now = app.now;
        let mut update = cluster(0);
        let set_totals = |u: &mut ClusterUpdate, time: u64, node_total: u64, model_total: u64| {
            let snapshot = u.snapshot.as_mut().expect("snapshot");
            snapshot.time_ms = time;
            for node in &mut snapshot.nodes {
                if node.name == "node-a" {
                    node.requests_total = node_total;
                    for m in &mut node.models {
                        if m.name == "resnet50" {
                            m.inference_count = node_total * 2;
                        }
                    }
                }
            }
            for model in &mut snapshot.models {
                if model.name == "resnet50" {
                    model.requests_total = model_total;
                }
            }
        };
        set_totals(&mut update, T0, 1_000, 500);
        app.apply_update(update.clone(), now);
        // Half a second later: too soon for a steady rate.
        set_totals(&mut update, T0 + 500, 1_050, 520);
        app.apply_update(update.clone(), now);
        assert_eq!(app.nodes[0].rate, None);
        // Two seconds after the first: 200 requests in 2 s.
        set_totals(&mut update, T0 + 2_000, 1_200, 600);
        app.apply_update(update.clone(), now);
        assert_eq!(app.nodes[0].rate, Some(100.0));
        let resnet = app
            .models
            .iter()
            .find(|m| m.name == "resnet50")
            .expect("resnet50");
        assert_eq!(resnet.rate, Some(50.0));
        let on_node = app.nodes[0]
            .models
            .iter()
            .find(|m| m.name == "resnet50")
            .expect("model");
        assert_eq!(on_node.rate, Some(200.0));
        // The 2 s window fills two one-second samples of the sparkline.
        assert_eq!(
            app.node_history("node-a").collect::<Vec<_>>(),
            [100.0, 100.0]
        );
        assert_eq!(app.summary.rate, 100.0 + app.nodes[1].rate.unwrap_or(0.0));
        // A restarted node counts from zero again: no negative rate.
        set_totals(&mut update, T0 + 3_000, 10, 600);
        app.apply_update(update, now);
        assert_eq!(app.nodes[0].rate, None);
    }

    #[test]
    fn history_is_bounded_to_a_minute() {
        let mut app = app();
        let now = app.now;
        for step in 0..200 {
            app.apply_update(cluster(step), now);
        }
        assert_eq!(app.node_history("node-a").count(), HISTORY_SECONDS);
        // A long gap fills at most the whole window.
        app.apply_update(cluster(10_000), now);
        assert_eq!(app.node_history("node-a").count(), HISTORY_SECONDS);
    }

    #[test]
    fn nodes_that_leave_take_their_meters_with_them() {
        let mut app = app();
        let now = app.now;
        app.apply_update(cluster(0), now);
        app.apply_update(cluster(2), now);
        assert!(app.node_history("node-b").count() > 0);
        let mut update = cluster(4);
        if let Some(s) = update.snapshot.as_mut() {
            s.nodes.retain(|n| n.name != "node-b");
        }
        app.apply_update(update, now);
        assert_eq!(app.node_history("node-b").count(), 0);
        assert_eq!(app.nodes.len(), 2);
    }

    #[test]
    fn events_are_bounded() {
        let mut app = app();
        let now = app.now;
        for i in 0..(MAX_EVENTS as u64 + 50) {
            app.apply_update(
                ClusterUpdate {
                    snapshot: None,
                    events: vec![Event {
                        time_ms: i,
                        kind: "placed".into(),
                        ..Event::default()
                    }],
                },
                now,
            );
        }
        assert_eq!(app.events.len(), MAX_EVENTS);
        assert_eq!(
            app.events.back().map(|e| e.time_ms),
            Some(MAX_EVENTS as u64 + 49)
        );
    }

    #[test]
    fn ttl_left_only_for_idle_models_with_a_ttl() {
        let mut app = app();
        let now = app.now;
        app.apply_update(cluster(0), now);
        let b = &app.nodes[1];
        let ttl = |name: &str| {
            b.models
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| m.ttl_left_ms)
        };
        assert_eq!(ttl("magika"), Some(300_000 - 49_000), "idle and ready");
        assert_eq!(ttl("resnet50"), None, "busy");
        assert_eq!(ttl("ppocr-rec"), None, "unloading");
        let c = &app.nodes[2];
        assert_eq!(c.models[0].ttl_left_ms, None, "no TTL");
    }

    #[test]
    fn histograms_merge_exactly() {
        let fast = histogram(100, 200, 100);
        let slow = histogram(10_000, 20_000, 100);
        let (p50, p99) = merged_quantiles([fast.as_slice(), slow.as_slice()]);
        let p50 = p50.expect("p50");
        let p99 = p99.expect("p99");
        // Half the requests are fast: the median is at the top of the fast ones.
        assert!((100..=210).contains(&p50), "p50 {p50}");
        assert!((19_000..=20_100).contains(&p99), "p99 {p99}");
        assert_eq!(merged_quantiles([&[][..]]), (None, None));
        assert_eq!(merged_quantiles([&b"garbage"[..]]), (None, None));
        let (only, _) = merged_quantiles([&[][..], fast.as_slice()]);
        assert!(only.is_some());
    }

    #[test]
    fn latency_is_recomputed_when_histograms_change_at_most_once_a_second() {
        let fast = histogram(100, 200, 100);
        let slow = histogram(50_000, 60_000, 100);
        let mut cache = QuantileCache::default();
        let first = cache.quantiles(&[fast.as_slice()], T0);
        assert!(first.1.is_some_and(|p99| p99 < 1_000));
        // New data 250 ms later waits for the second to pass.
        assert_eq!(cache.quantiles(&[slow.as_slice()], T0 + 250), first);
        let later = cache.quantiles(&[slow.as_slice()], T0 + 1_000);
        assert!(later.1.is_some_and(|p99| p99 > 50_000));
        assert_eq!(cache.quantiles(&[], T0 + 2_000), (None, None));
    }

    #[test]
    fn disconnection_keeps_the_data_and_counts_down() {
        let mut app = app();
        let start = app.now;
        app.apply_update(cluster(0), start);
        assert!(!app.is_stale());
        app.on_disconnected("connection refused", Duration::from_secs(4), start);
        assert!(app.is_stale());
        assert!(app.has_data);
        assert_eq!(app.nodes.len(), 3);
        assert_eq!(app.retry_in_seconds(), Some(4));
        assert!(!app.tick(start + Duration::from_millis(200)));
        assert!(app.tick(start + Duration::from_millis(1_500)));
        assert_eq!(app.retry_in_seconds(), Some(3));
        app.tick(start + Duration::from_secs(10));
        assert_eq!(app.retry_in_seconds(), Some(0));
        app.on_connecting(start + Duration::from_secs(10));
        assert_eq!(app.retry_in_seconds(), None);
        app.apply_update(cluster(1), start + Duration::from_secs(11));
        assert!(!app.is_stale());
    }

    #[test]
    fn cursors_stay_in_range_when_rows_go() {
        let mut app = app();
        let now = app.now;
        app.apply_update(cluster(0), now);
        app.node_cursor = 2;
        let mut update = cluster(1);
        if let Some(s) = update.snapshot.as_mut() {
            s.nodes.truncate(1);
        }
        app.apply_update(update, now);
        assert_eq!(app.node_cursor, 0);
    }
}
