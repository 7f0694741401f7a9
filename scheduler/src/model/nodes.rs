//! Node rows and the transitions of a node's life: it joins, reports, goes silent or
//! unreachable (down), comes back, is drained.

use std::time::Duration;

use herd_proto::herd::AgentStatus;
use tokio::time::Instant;

use super::{Action, ClusterModel};
use crate::error::SchedulerError;

pub struct Node {
    pub name: String,
    pub address: String,
    pub status: AgentStatus,
    pub last_report: Instant,
    pub down: bool,
    pub draining: bool,
    /// Loads on this node that failed in a row, since its join or its last success.
    pub load_failures: u32,
    /// Until when it takes no new replica: it kept failing loads (see [`rest_for`]).
    pub resting_until: Option<Instant>,
    /// A request to it went unanswered far longer than usual: routing prefers other
    /// replicas until it reports again.
    pub suspect: bool,
}

impl Node {
    pub fn schedulable(&self) -> bool {
        !self.down && !self.draining && self.resting_until.is_none()
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

    /// Whether it has a GPU replicas can run on.
    pub fn has_usable_gpu(&self) -> bool {
        self.status
            .resources
            .as_ref()
            .is_some_and(|r| r.gpus.iter().any(|g| g.unusable.is_empty()))
    }

    /// The GPUs replicas can run on, each with the bytes herd may use there (see
    /// [`gpu_budget`]); a GPU the node cannot run on is left out.
    pub fn usable_gpus(&self, headroom: f64) -> Vec<crate::placement::GpuView> {
        let Some(r) = &self.status.resources else {
            return Vec::new();
        };
        r.gpus
            .iter()
            .filter(|g| g.unusable.is_empty())
            .map(|g| crate::placement::GpuView {
                index: g.index,
                budget: gpu_budget(g, headroom),
            })
            .collect()
    }
}

/// Bytes of one GPU's memory herd may use for replicas, headroom taken off: what other
/// programs (and the driver) leave, plus what herd's own workers hold there.
pub fn gpu_budget(g: &herd_proto::herd::Gpu, headroom: f64) -> u64 {
    let others = g.memory_used_bytes.saturating_sub(g.herd_used_bytes);
    g.memory_total_bytes
        .saturating_sub(others)
        .saturating_sub((g.memory_total_bytes as f64 * headroom) as u64)
}

/// Loads that fail in a row before a node rests.
pub const FAILURES_BEFORE_REST: u32 = 3;

/// How long a node rests after `failures` loads failed in a row: none before
/// [`FAILURES_BEFORE_REST`], then 5 s, doubling with each further failure, at most
/// 5 minutes. Without it a node that fails every load (one the scheduler cannot call,
/// a broken runtime) was placed on again at once, over and over.
pub fn rest_for(failures: u32) -> Option<Duration> {
    let beyond = failures.checked_sub(FAILURES_BEFORE_REST)?;
    let rest = Duration::from_secs(5).saturating_mul(1 << beyond.min(16));
    Some(rest.min(Duration::from_secs(300)))
}

/// What a report was to the model.
#[derive(Debug, PartialEq)]
pub enum Reported {
    /// From a node it knows at that address: taken in.
    Known(Vec<Action>),
    /// From a node it does not know (the scheduler restarted, or the agent moved): the
    /// caller makes it a join.
    Unknown,
}

impl ClusterModel {
    /// An agent joins (or joins again). A name already taken by a live node at another
    /// address is refused, so two agents never pass for one.
    pub fn join(
        &mut self,
        name: &str,
        address: &str,
        status: AgentStatus,
        now: Instant,
    ) -> Result<Vec<Action>, SchedulerError> {
        if name.is_empty() || address.is_empty() {
            return Err(SchedulerError::JoinWithoutName);
        }
        if let Some(n) = self.nodes.get(name) {
            let live = !n.down && now.saturating_duration_since(n.last_report) < self.down_after;
            if live && n.address != address {
                return Err(SchedulerError::NameTaken {
                    name: name.to_string(),
                    address: n.address.clone(),
                });
            }
        }
        let rejoin = self.nodes.contains_key(name);
        let draining = self.nodes.get(name).is_some_and(|n| n.draining);
        self.nodes.insert(
            name.to_string(),
            Node {
                name: name.to_string(),
                address: address.to_string(),
                status: status.clone(),
                last_report: now,
                down: false,
                draining,
                load_failures: 0,
                resting_until: None,
                suspect: false,
            },
        );
        // Replicas it had before a restart are gone unless it reports them ready.
        self.sync_replicas(name, &status, now);
        let what = if rejoin { "joined again" } else { "joined" };
        self.events
            .push("joined", name, "", format!("{what} from {address}"));
        self.woke(name, now);
        self.gpu_node_back(name);
        Ok(vec![Action::Reconcile])
    }

    /// An agent was refused at join (its address proved wrong): only the log of events
    /// keeps it, under the node's name.
    pub fn join_refused(&mut self, name: &str, why: &str) {
        self.events.push("refused", name, "", why.to_string());
    }

    /// A periodic report.
    pub fn report(
        &mut self,
        name: &str,
        address: &str,
        status: AgentStatus,
        now: Instant,
    ) -> Reported {
        let Some(n) = self.nodes.get_mut(name).filter(|n| n.address == address) else {
            return Reported::Unknown;
        };
        let was_down = n.down;
        let falls_asleep = status.sleeping && !n.status.sleeping;
        n.status = status.clone();
        n.last_report = now;
        n.down = false;
        // It is heard from: whatever kept the request unanswered, its link carries.
        n.suspect = false;
        if was_down {
            self.events.push("up", name, "", "reports again");
            self.gpu_node_back(name);
        }
        if falls_asleep {
            let how = if status.wake.as_ref().is_some_and(|w| !w.mac.is_empty()) {
                "; a request that needs it wakes it"
            } else {
                " (it gave no --wake-mac: it stays down until it wakes by itself)"
            };
            self.events.push(
                "sleeping",
                name,
                "",
                format!("idle for its --sleep-after: going to sleep{how}"),
            );
        }
        self.sync_replicas(name, &status, now);
        // A node back up offers room again.
        Reported::Known(if was_down {
            vec![Action::Reconcile]
        } else {
            Vec::new()
        })
    }

    /// Marks nodes silent for too long as down; their replicas go, to be placed again.
    pub fn mark_silent_down(&mut self, now: Instant) -> Vec<Action> {
        let limit = self.down_after;
        // Checks come at least every report interval; a longer gap means the scheduler
        // itself was not listening. Nodes get a whole window from now to be heard.
        let stalled = now.saturating_duration_since(self.last_liveness_check);
        self.last_liveness_check = now;
        if stalled > self.grace {
            tracing::warn!(
                stalled_ms = stalled.as_millis() as u64,
                "the scheduler was stalled; node silence is counted again from now"
            );
            for n in self.nodes.values_mut() {
                n.last_report = n.last_report.max(now);
            }
            return Vec::new();
        }
        let silent: Vec<String> = self
            .nodes
            .values()
            .filter(|n| !n.down && now.saturating_duration_since(n.last_report) > limit)
            .map(|n| n.name.clone())
            .collect();
        let rested = self.end_rests(now);
        let mut actions = Vec::new();
        for name in &silent {
            let why = format!("no report for {} ms", limit.as_millis());
            actions.extend(self.mark_down(name, &why));
        }
        if rested || !actions.is_empty() {
            actions.push(Action::Reconcile);
        }
        actions
    }

    /// Nodes whose rest is over take replicas again; whether any did.
    fn end_rests(&mut self, now: Instant) -> bool {
        let mut rested = Vec::new();
        for n in self.nodes.values_mut() {
            if n.resting_until.is_some_and(|until| until <= now) {
                n.resting_until = None;
                rested.push(n.name.clone());
            }
        }
        for name in &rested {
            self.events
                .push("rested", name, "", "takes new replicas again");
        }
        !rested.is_empty()
    }

    /// A load on `node` failed: after [`FAILURES_BEFORE_REST`] in a row it rests, with
    /// one event that says why and for how long.
    pub(super) fn count_load_failure(&mut self, node: &str, message: &str, now: Instant) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        n.load_failures += 1;
        let Some(rest) = rest_for(n.load_failures) else {
            return;
        };
        n.resting_until = Some(now + rest);
        let failures = n.load_failures;
        self.events.push(
            "resting",
            node,
            "",
            format!(
                "{failures} loads in a row failed here (last: {message}); no new replica \
                 goes here for {} s",
                rest.as_secs()
            ),
        );
    }

    /// A request to `node` went unanswered for `why`: it is suspect (routing prefers
    /// other replicas) until it reports again, or down if its link fails. Returns
    /// whether it just became suspect.
    pub fn suspect(&mut self, node: &str, why: &str) -> bool {
        let Some(n) = self.nodes.get_mut(node).filter(|n| !n.down && !n.suspect) else {
            return false;
        };
        n.suspect = true;
        self.events.push("suspect", node, "", why.to_string());
        true
    }

    /// A call to the node failed at the transport: it counts as down at once rather than
    /// after its reports stop.
    pub fn node_unreachable(&mut self, node: &str, error: &str) -> Vec<Action> {
        if self.nodes.get(node).is_none_or(|n| n.down) {
            return Vec::new();
        }
        let mut actions = self.mark_down(node, &format!("unreachable: {error}"));
        actions.push(Action::Reconcile);
        actions
    }

    /// Takes no new replicas on a node; placement moves its replicas away. Returns the
    /// models that move.
    pub fn drain(&mut self, node: &str) -> Result<(Vec<String>, Vec<Action>), SchedulerError> {
        let n = self
            .nodes
            .get_mut(node)
            .ok_or_else(|| SchedulerError::UnknownNode(node.to_string()))?;
        n.draining = true;
        let moved: Vec<String> = self
            .replicas
            .keys()
            .filter(|(_, n)| n == node)
            .map(|(m, _)| m.clone())
            .collect();
        self.events.push(
            "draining",
            node,
            "",
            format!("drain requested; moving {} replicas", moved.len()),
        );
        Ok((moved, vec![Action::Reconcile]))
    }

    fn mark_down(&mut self, name: &str, why: &str) -> Vec<Action> {
        if let Some(n) = self.nodes.get_mut(name) {
            n.down = true;
            n.suspect = false;
        }
        self.replicas.retain(|(_, n), _| n != name);
        self.events.push("down", name, "", why.to_string());
        vec![Action::NodeDown {
            node: name.to_string(),
        }]
    }
}
