//! Replica rows and what changes them apart from placement: what agents report they
//! hold (adoption, idle unloads, restarts) and how loads and unloads turn out.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use herd_proto::herd::{AgentStatus, ModelState};
use tokio::time::Instant;

use super::{Action, ClusterModel};
use crate::placement::Device;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaState {
    Loading,
    Ready,
}

pub struct Replica {
    pub state: ReplicaState,
    pub device: Device,
    /// Requests routed to it and not yet answered. Shared with each request's guard,
    /// which counts itself out when dropped.
    pub outstanding: Arc<AtomicUsize>,
    pub last_used: Instant,
    /// The first replicas up to min_replicas never unload for idleness.
    pub pinned: bool,
    /// When it last changed state: a report sent before that is no news about it.
    pub since: Instant,
    /// Bytes it uses as its node last reported; 0 = not reported yet. Kept here so
    /// that a placement snapshot (taken under the lock) need not search reports.
    pub memory: u64,
}

impl Replica {
    pub(crate) fn new(state: ReplicaState, device: Device, pinned: bool, now: Instant) -> Replica {
        Replica {
            state,
            device,
            outstanding: Arc::new(AtomicUsize::new(0)),
            last_used: now,
            pinned,
            since: now,
            memory: 0,
        }
    }
}

/// How long the scheduler remembers an unload it made.
const REMEMBER_UNLOADS: Duration = Duration::from_secs(60);

impl ClusterModel {
    /// Brings replicas in line with what a node reports: models it holds ready are
    /// ready replicas (adopted after a scheduler restart), models it no longer holds
    /// (unloaded for idleness, or lost in an agent restart) are replicas no more.
    /// A report may have been sent before a load finished; replicas that changed within
    /// the grace period are left alone.
    pub(super) fn sync_replicas(&mut self, node: &str, status: &AgentStatus, now: Instant) {
        let grace = self.grace;
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
            let unloaded_lately = self
                .unloaded
                .get(&key)
                .is_some_and(|t| now.saturating_duration_since(*t) <= grace);
            if unloaded_lately {
                continue;
            }
            match self.replicas.get_mut(&key) {
                Some(r) if r.state != ReplicaState::Ready => {
                    r.state = ReplicaState::Ready;
                    r.since = now;
                }
                Some(_) => {}
                None => {
                    let device = Device::from_reported(&m.device);
                    let replica = Replica::new(ReplicaState::Ready, device, m.ttl_ms < 0, now);
                    self.replicas.insert(key, replica);
                    self.events
                        .push("adopted", node, &m.name, "the node reports it ready");
                }
            }
        }
        let gone: Vec<(String, String)> = self
            .replicas
            .iter()
            .filter(|((m, n), r)| n == node && r.state == ReplicaState::Ready && !held.contains(m))
            .filter(|(_, r)| now.saturating_duration_since(r.since) > grace)
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
        for m in &status.models {
            if let Some(r) = self.replicas.get_mut(&(m.name.clone(), node.to_string())) {
                r.memory = pool_bytes(&r.device, m);
            }
        }
    }

    /// Takes a replica out because the scheduler unloads it (evicted, dropped, asked to).
    pub(super) fn unload_replica(&mut self, model: &str, node: &str, now: Instant) {
        let key = (model.to_string(), node.to_string());
        self.replicas.remove(&key);
        self.unloaded
            .retain(|_, t| now.saturating_duration_since(*t) < REMEMBER_UNLOADS);
        self.unloaded.insert(key, now);
    }

    /// A model whose last replica went (evicted, unloaded for idleness) is no longer
    /// wanted until a request asks again; otherwise it would be placed straight back.
    pub(super) fn demand_ends_if_gone(&mut self, model: &str) {
        if self.replicas_of(model).is_empty() {
            if let Some(m) = self.models.get_mut(model) {
                m.wanted = false;
                m.scaled = 0;
            }
        }
    }

    /// A load finished. The agent's report may have shown it ready already; the load
    /// still happened and is recorded, unless the replica was let go meanwhile.
    pub fn loaded(
        &mut self,
        model: &str,
        node: &str,
        memory_bytes: u64,
        fetched: bool,
        took: Duration,
        now: Instant,
    ) {
        let key = (model.to_string(), node.to_string());
        let Some(r) = self.replicas.get_mut(&key) else {
            return;
        };
        if r.state == ReplicaState::Loading {
            r.state = ReplicaState::Ready;
            r.since = now;
        }
        if let Some(n) = self.nodes.get_mut(node) {
            n.load_failures = 0;
        }
        if let Some(m) = self.models.get_mut(model) {
            m.measured = m.measured.max(memory_bytes);
        }
        let how = if fetched {
            "file fetched from the scheduler"
        } else {
            "file already on the node"
        };
        self.events.push(
            "loaded",
            node,
            model,
            format!(
                "ready in {} ms, {} ({how})",
                took.as_millis(),
                bytesize::ByteSize(memory_bytes)
            ),
        );
    }

    /// A load failed. The model is not placed again on its own: the next request or
    /// load call tries again. A node that could not be reached counts as down.
    pub fn load_failed(
        &mut self,
        model: &str,
        node: &str,
        message: &str,
        unreachable: bool,
        now: Instant,
    ) -> Vec<Action> {
        let removed = self.replicas.remove(&(model.to_string(), node.to_string()));
        if let Some(Device::Gpu(index)) = removed.map(|r| r.device) {
            if !unreachable && self.gpu_failed(model, node, index, message) {
                self.count_load_failure(node, message, now);
                return vec![Action::Reconcile];
            }
        }
        // "transport error" or "http2 error" alone does not say that nothing arrived.
        let message = if unreachable {
            let at = self
                .nodes
                .get(node)
                .map(|n| format!(" at {}", n.address))
                .unwrap_or_default();
            format!("the scheduler cannot reach node '{node}'{at}: {message}")
        } else {
            message.to_string()
        };
        let message = message.as_str();
        self.events
            .push("load_failed", node, model, message.to_string());
        self.count_load_failure(node, message, now);
        if let Some(m) = self.models.get_mut(model) {
            m.load_error = Some(format!(
                "model '{model}' failed to load on {node}: {message}"
            ));
        }
        self.demand_ends_if_gone(model);
        if unreachable {
            self.node_unreachable(node, message)
        } else {
            Vec::new()
        }
    }

    /// A running replica took new settings (`how`: live, or through a new worker).
    pub fn reconfigured(&mut self, model: &str, node: &str, how: &str) {
        self.events
            .push("reconfigured", node, model, format!("new settings {how}"));
    }

    /// A running replica did not take new settings: it keeps its old ones until it
    /// loads again.
    pub fn reconfigure_failed(&mut self, model: &str, node: &str, message: &str) {
        self.events.push(
            "reconfigure_failed",
            node,
            model,
            format!("new settings not applied (it keeps the old until it loads again): {message}"),
        );
    }

    /// An unload the scheduler asked for failed; the replica is gone from the model
    /// all the same (the agent's TTL or a restart frees it), so only the log says so.
    pub fn unload_failed(&mut self, model: &str, node: &str, message: &str) {
        self.events
            .push("unload_failed", node, model, message.to_string());
    }
}

/// The bytes a replica holds in its pool: GPU memory for one on a GPU (its RAM is
/// counted in the node's available memory), else its worker's RAM. A GPU replica whose
/// GPU memory is not measured (yet) counts its RAM, the best guess at hand.
fn pool_bytes(device: &Device, m: &herd_proto::herd::ModelStatus) -> u64 {
    match device {
        Device::Gpu(_) if m.gpu_memory_bytes > 0 => m.gpu_memory_bytes,
        _ => m.memory_bytes,
    }
}
