//! The dashboard's state: a plain struct that cluster updates, key presses and connection
//! changes update, and that rendering only reads. Nothing here touches a terminal or the
//! network, so unit tests drive it directly.
//!
//! What the cluster looks like is `herd_client::view`'s view-model, the one the CLI
//! prints; the dashboard adds only what a live screen needs: which snapshots its rates
//! are measured between, a minute of history per node, and the UI's own state.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use herd_client::view::{
    self, Counters, EventView, ModelView, NodeModelView, NodeView, Rates, Summary,
};
use herd_proto::herd::{ClusterSnapshot, ClusterUpdate};
use tokio::time::Instant;

use crate::latency::LatencyCache;

/// Seconds of requests/s history kept per node for its sparkline.
pub const HISTORY_SECONDS: usize = 60;
/// Events kept for the events pane, newest last.
pub const MAX_EVENTS: usize = 200;
/// A rate is measured over at least this much snapshot time, so it does not jitter.
pub(crate) const RATE_WINDOW_MS: u64 = 1000;

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
    /// Ask placement why this model is where it is.
    Why(String),
}

/// The state of the watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    Connecting,
    Connected,
    Disconnected { error: String, retry_at: Instant },
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

/// Where the current rate window began: the snapshot's time and its counters.
#[derive(Clone, Debug)]
struct RateWindow {
    time_ms: u64,
    counters: Counters,
}

/// Everything the dashboard shows.
#[derive(Debug)]
pub struct App {
    /// The scheduler's address, for the header.
    pub scheduler: String,
    pub view: View,
    /// Sorted by name, as the view-model gives them.
    pub nodes: Vec<NodeView>,
    pub models: Vec<ModelView>,
    /// Newest last.
    pub events: VecDeque<EventView>,
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
    /// The why popup: the model, and placement's answer (None while it is asked).
    pub why: Option<(String, Option<Result<String, String>>)>,
    /// False under NO_COLOR.
    pub color: bool,
    window: Option<RateWindow>,
    /// Measured over the last complete window, shown until the next one completes.
    rates: Rates,
    /// Per node, its last minute of requests/s, one sample a second, oldest first.
    history: HashMap<String, VecDeque<f64>>,
    latency: LatencyCache,
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
            why: None,
            color,
            window: None,
            rates: Rates::default(),
            history: HashMap::new(),
            latency: LatencyCache::default(),
        }
    }

    /// Takes in an update from the watch stream.
    pub fn apply_update(&mut self, update: ClusterUpdate, now: Instant) {
        self.now = now;
        self.connection = Connection::Connected;
        if let Some(snapshot) = update.snapshot {
            self.apply_snapshot(&snapshot);
        }
        for event in update.events {
            if self.events.len() == MAX_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(EventView::from(event));
        }
        self.clamp_cursors();
    }

    fn apply_snapshot(&mut self, snapshot: &ClusterSnapshot) {
        self.snapshot_time_ms = snapshot.time_ms;
        self.has_data = true;
        self.measure_rates(snapshot);
        self.latency.begin(snapshot.time_ms);
        self.nodes = view::nodes_of(&snapshot.nodes, &self.rates, &mut self.latency);
        self.models = view::models_of(&snapshot.models, &self.rates, &mut self.latency);
        // What nodes and models that left had goes with them: nothing grows without bound.
        self.latency.sweep();
        let nodes = &self.nodes;
        self.history.retain(|name, _| {
            nodes
                .binary_search_by(|n| n.name.as_str().cmp(name))
                .is_ok()
        });
        self.summary = view::summary(&self.nodes, &self.models);
    }

    /// Closes the rate window once it spans [`RATE_WINDOW_MS`] of snapshot time: new
    /// rates, and one sparkline sample per second it spanned, so gaps keep their width.
    fn measure_rates(&mut self, snapshot: &ClusterSnapshot) {
        let time_ms = snapshot.time_ms;
        let elapsed_ms = match &self.window {
            Some(window) if time_ms >= window.time_ms => time_ms - window.time_ms,
            // The first snapshot, or a restarted scheduler's: start again.
            _ => {
                self.rates = Rates::default();
                self.window = Some(RateWindow {
                    time_ms,
                    counters: view::counters(&snapshot.nodes, &snapshot.models),
                });
                return;
            }
        };
        if elapsed_ms < RATE_WINDOW_MS {
            return;
        }
        let counters = view::counters(&snapshot.nodes, &snapshot.models);
        if let Some(start) = &self.window {
            let elapsed = Duration::from_millis(elapsed_ms);
            self.rates = view::rates(&counters, &start.counters, elapsed);
        }
        self.window = Some(RateWindow { time_ms, counters });
        let seconds = ((elapsed_ms + 500) / 1000).clamp(1, HISTORY_SECONDS as u64);
        for (node, &rate) in &self.rates.nodes {
            let history = self
                .history
                .entry(node.clone())
                .or_insert_with(|| VecDeque::with_capacity(HISTORY_SECONDS));
            for _ in 0..seconds {
                if history.len() == HISTORY_SECONDS {
                    history.pop_front();
                }
                history.push_back(rate);
            }
        }
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
    /// Placement answered about `model`: shown if its popup is still open.
    pub fn on_why(&mut self, model: String, answer: Result<String, String>) {
        if self.why.as_ref().is_some_and(|(m, _)| *m == model) {
            self.why = Some((model, Some(answer)));
        }
    }

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
    pub fn visible_nodes(&self) -> Vec<&NodeView> {
        self.nodes
            .iter()
            .filter(|n| self.matches_filter(&n.name, &n.address))
            .collect()
    }

    /// The node the detail view shows.
    pub fn detail(&self) -> Option<&NodeView> {
        let name = self.detail_node.as_deref()?;
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The detail view's models, after the filter.
    pub fn visible_detail_models(&self) -> Vec<&NodeModelView> {
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
    pub fn visible_models(&self) -> Vec<&ModelView> {
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
        self.history
            .get(node)
            .into_iter()
            .flat_map(|h| h.iter().copied())
    }

    /// The node under the cursor (nodes view) or shown (detail view).
    pub fn selected_node(&self) -> Option<&NodeView> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, cluster, T0};
    use herd_proto::herd::{Event, NodeState};

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
        assert_eq!(a.memory_used_bytes, 24 * fixtures::GIB);
        assert_eq!(a.memory_capacity_bytes, 60 * fixtures::GIB);
        assert_eq!(a.gpus.len(), 2);
        assert_eq!(a.queue_length, 7);
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
                memory_used_bytes: (24 + 13) * fixtures::GIB,
                memory_capacity_bytes: (60 + 14) * fixtures::GIB,
                requests_per_s: 0.0,
                models_loaded: 2,
                models_total: 5,
            }
        );
        assert_eq!(app.events.len(), 8);
        // No rate from a single snapshot.
        assert_eq!(app.nodes[0].requests_per_s, None);
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
        assert_eq!(app.nodes[0].requests_per_s, None);
        // Two seconds after the first: 200 requests in 2 s.
        set_totals(&mut update, T0 + 2_000, 1_200, 600);
        app.apply_update(update.clone(), now);
        assert_eq!(app.nodes[0].requests_per_s, Some(100.0));
        let resnet = app
            .models
            .iter()
            .find(|m| m.name == "resnet50")
            .expect("resnet50");
        assert_eq!(resnet.requests_per_s, Some(50.0));
        let on_node = app.nodes[0]
            .models
            .iter()
            .find(|m| m.name == "resnet50")
            .expect("model");
        assert_eq!(on_node.inferences_per_s, Some(200.0));
        // The 2 s window fills two one-second samples of the sparkline.
        assert_eq!(
            app.node_history("node-a").collect::<Vec<_>>(),
            [100.0, 100.0]
        );
        assert_eq!(
            app.summary.requests_per_s,
            100.0 + app.nodes[1].requests_per_s.unwrap_or(0.0)
        );
        // A restarted node counts from zero again: no negative rate.
        set_totals(&mut update, T0 + 3_000, 10, 600);
        app.apply_update(update, now);
        assert_eq!(app.nodes[0].requests_per_s, None);
    }

    #[test]
    fn a_clock_that_goes_back_starts_the_rates_again() {
        let mut app = app();
        let now = app.now;
        app.apply_update(cluster(0), now);
        app.apply_update(cluster(2), now);
        assert!(app.nodes[0].requests_per_s.is_some());
        // A restarted scheduler's snapshots: no rate until a window has passed again.
        app.apply_update(cluster(1), now);
        assert_eq!(app.nodes[0].requests_per_s, None);
        app.apply_update(cluster(3), now);
        assert!(app.nodes[0].requests_per_s.is_some_and(|r| r > 0.0));
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
                .and_then(|m| m.unloads_in_ms())
        };
        assert_eq!(ttl("magika"), Some(300_000 - 49_000), "idle and ready");
        assert_eq!(ttl("resnet50"), None, "busy");
        assert_eq!(ttl("ppocr-rec"), None, "unloading");
        let c = &app.nodes[2];
        assert_eq!(c.models[0].unloads_in_ms(), None, "no TTL");
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
