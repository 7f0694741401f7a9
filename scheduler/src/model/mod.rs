//! The scheduler's state as a model: nodes, the catalog, replicas and the event log in
//! private tables, changed only through named transitions that take `now` and return
//! what to do ([`Action`]: load here, unload there, a node went down). No clients, no
//! tasks, no clock inside: the executor (`crate::executor`) does the I/O, and unit tests
//! drive the model directly.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::events::EventLog;

mod actions;
mod catalog;
mod nodes;
mod plan;
mod replicas;
mod routing;
mod scaling;
mod stand_in;
mod waking;
pub use waking::{WakePlan, RESEND_EVERY};
#[cfg(test)]
mod gpu_tests;
#[cfg(test)]
mod tests;

pub use actions::Action;
pub use catalog::CatalogModel;
pub use nodes::{Node, Reported};
pub(crate) use plan::unplaceable_reason;
pub use plan::{Changes, Snapshot};
pub use replicas::{Replica, ReplicaState};
pub use routing::{choose, Pick};
pub use scaling::should_scale;

/// (model, node).
pub type Key = (String, String);

/// The cluster as the scheduler sees it.
pub struct ClusterModel {
    nodes: BTreeMap<String, Node>,
    models: BTreeMap<String, CatalogModel>,
    /// (model, node) → replica.
    replicas: BTreeMap<Key, Replica>,
    /// Replicas the scheduler unloaded, and when: a report sent before the unload
    /// finished must not bring them back.
    unloaded: BTreeMap<Key, Instant>,
    events: EventLog,
    /// How old news a report can be: a report is taken a while before it arrives.
    grace: Duration,
    /// Silence after which a node counts as down.
    down_after: Duration,
    /// Placement waits this long after a start, to learn from reports what agents hold.
    learn_until: Instant,
    /// When liveness was last checked: a scheduler that was stalled (paused, swapped
    /// out) heard nothing meanwhile, and that silence is its own, not the nodes'.
    last_liveness_check: Instant,
    /// How to wake nodes the store remembers from before this start (until they join).
    wakeable: BTreeMap<String, herd_proto::herd::WakeOnLan>,
    /// Wakes in progress, by node.
    waking: BTreeMap<String, waking::Waking>,
}

impl ClusterModel {
    /// An empty cluster started at `now`, whose agents report every `report_interval`
    /// and count as down after missing `down_after` reports.
    pub fn new(now: Instant, report_interval: Duration, down_after: u32) -> ClusterModel {
        let down_after = report_interval * down_after.max(1);
        ClusterModel {
            nodes: BTreeMap::new(),
            models: BTreeMap::new(),
            replicas: BTreeMap::new(),
            unloaded: BTreeMap::new(),
            events: EventLog::default(),
            grace: report_interval * 2,
            down_after,
            learn_until: now + down_after,
            last_liveness_check: now,
            wakeable: BTreeMap::new(),
            waking: BTreeMap::new(),
        }
    }

    pub fn down_after(&self) -> Duration {
        self.down_after
    }

    /// Placement waits again as after a start: a scheduler that has just become leader
    /// may not yet have heard from every agent (one reconnecting to it after its own
    /// restart), and placing now could load again what such an agent holds.
    pub fn learn_again(&mut self, now: Instant) {
        self.learn_until = self.learn_until.max(now + self.down_after);
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub fn models(&self) -> impl Iterator<Item = &CatalogModel> {
        self.models.values()
    }

    pub fn model(&self, name: &str) -> Option<&CatalogModel> {
        self.models.get(name)
    }

    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// Every replica, as ((model, node), replica), by model then node.
    pub fn replicas(&self) -> impl Iterator<Item = (&Key, &Replica)> {
        self.replicas.iter()
    }

    pub fn replica(&self, model: &str, node: &str) -> Option<&Replica> {
        self.replicas.get(&(model.to_string(), node.to_string()))
    }

    /// The replicas of `model`, with their nodes.
    pub fn replicas_of(&self, model: &str) -> Vec<(String, &Replica)> {
        self.replicas
            .range((model.to_string(), String::new())..)
            .take_while(|((m, _), _)| m == model)
            .map(|((_, n), r)| (n.clone(), r))
            .collect()
    }

    /// The replicas of `model` that can take requests: ready, on a node that is up.
    pub fn ready_replicas(&self, model: &str) -> Vec<(String, &Replica)> {
        self.replicas_of(model)
            .into_iter()
            .filter(|(_, r)| r.state == ReplicaState::Ready)
            .filter(|(n, _)| self.nodes.get(n).is_some_and(|n| !n.down))
            .collect()
    }
}
