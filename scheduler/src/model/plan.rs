//! Placement as a plan step: the model gives a snapshot of itself as a placement
//! problem; `placement::solve` runs on it, and [`Snapshot::changes`] turns the solution
//! into what differs, both without the model (so outside any lock); the model applies
//! the changes, returning the loads and unloads to carry out.
//!
//! The model may change while solve runs (a node goes down, a request asks for a model,
//! an admin unloads one). Applying stays safe: only replicas that were in the snapshot
//! are unloaded, a replica that went since is not brought back, and a new replica is
//! loaded only on a node that still takes one, for a model that still wants one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use herd_immich::stage::StageKind;
use herd_proto::herd::ModelSource;
use tokio::time::Instant;

use super::replicas::{Replica, ReplicaState};
use super::{Action, ClusterModel, Key};
use crate::placement::{
    Decision, Device, ModelDemand, NodeView, Policy, Problem, Replica as PlacedReplica, Solution,
};

/// The cluster as a placement problem, and the replicas it had then.
pub struct Snapshot {
    pub problem: Problem,
    pub previous: Vec<PlacedReplica>,
}

/// What a solution changes in its snapshot: usually little, so that applying it holds
/// the lock briefly however large the cluster.
#[derive(Debug, Default)]
pub struct Changes {
    /// Placed, Evicted, Dropped and Unplaceable, as solve gave them.
    pub decisions: Vec<Decision>,
    /// Replicas of the snapshot the solution lets go.
    pub going: Vec<Key>,
    /// Replicas the solution adds, and where on their node.
    pub coming: Vec<(Key, Device)>,
}

impl Snapshot {
    /// The difference between the snapshot's replicas and `solution`'s. Pure: runs
    /// outside the lock.
    pub fn changes(&self, solution: Solution) -> Changes {
        let before: HashSet<(&str, &str)> = self
            .previous
            .iter()
            .map(|r| (r.model.as_str(), r.node.as_str()))
            .collect();
        let keep: HashSet<(&str, &str)> = solution
            .assignments
            .iter()
            .map(|a| (a.model.as_str(), a.node.as_str()))
            .collect();
        let mut going: Vec<Key> = before
            .difference(&keep)
            .map(|(m, n)| (m.to_string(), n.to_string()))
            .collect();
        going.sort();
        let coming = solution
            .assignments
            .iter()
            .filter(|a| !before.contains(&(a.model.as_str(), a.node.as_str())))
            .map(|a| ((a.model.clone(), a.node.clone()), a.device.clone()))
            .collect();
        Changes {
            decisions: solution.decisions,
            going,
            coming,
        }
    }
}

impl ClusterModel {
    /// The file digest of the other stage of an Immich model's task, when the catalog
    /// has it (see `ModelDemand::affinity`).
    fn partner_digest(&self, m: &super::catalog::CatalogModel) -> Option<String> {
        let stage = &m.immich.as_ref()?.stage;
        let partner = StageKind::parse(&stage.stage)?.partner()?;
        let (task, kind) = partner.parts();
        let name = StageKind::catalog_name(task, kind, &stage.model);
        self.models.get(&name).map(|p| p.digest.clone())
    }

    /// The placement problem for the cluster as it is at `now`; none right after a
    /// start, while the model learns from reports what agents hold, so that nothing they
    /// hold is loaded again.
    pub fn snapshot(&self, policy: Policy, headroom: f64, now: Instant) -> Option<Snapshot> {
        if now < self.learn_until {
            return None;
        }
        let mut nodes: Vec<NodeView> = self
            .nodes
            .values()
            .map(|n| NodeView {
                name: n.name.clone(),
                schedulable: n.schedulable(),
                ram_budget: n.ram_budget(headroom),
                gpus: n.usable_gpus(headroom),
                files: n.status.file_digests.iter().cloned().collect(),
            })
            .collect();
        // A node with a replica of an Immich model holds its file, or soon will: its
        // partner stage prefers that node before the node's next report lists the file.
        // Only these: the snapshot is taken under the lock.
        let immich_placed: Vec<(&str, &str)> = self
            .replicas
            .keys()
            .filter_map(|(model, node)| {
                let m = self.models.get(model).filter(|m| m.immich.is_some())?;
                Some((node.as_str(), m.digest.as_str()))
            })
            .collect();
        if !immich_placed.is_empty() {
            let by_name: HashMap<String, usize> = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.clone(), i))
                .collect();
            for (node, digest) in immich_placed {
                if let Some(&i) = by_name.get(node) {
                    nodes[i].files.insert(digest.to_string());
                }
            }
        }
        // Models and replicas are both ordered by model name: one merged walk gives each
        // model its replicas without a lookup per replica (the snapshot is taken under
        // the lock, so its cost is what routing may wait).
        // One hash lookup per replica: a BTreeMap lookup compares (and fetches) a dozen
        // names, which at 20,000 replicas is most of the snapshot's time.
        let schedulable_nodes: HashSet<&str> = self
            .nodes
            .values()
            .filter(|n| n.schedulable())
            .map(|n| n.name.as_str())
            .collect();
        let mut models = Vec::with_capacity(self.models.len());
        let mut previous = Vec::with_capacity(self.replicas.len());
        let mut replicas = self.replicas.iter().peekable();
        for m in self.models.values() {
            // Replicas of models the catalog no longer has: solve drops them.
            while let Some((key, r)) = replicas.next_if(|((rm, _), _)| *rm < m.name) {
                previous.push(placed(key, r, 0, now));
            }
            // Those on draining nodes are moving away: they do not count; nor do CPU
            // stand-ins whose GPU is back (solve drops them).
            let mut schedulable = 0;
            let want = m.placement_want();
            while let Some((key, r)) = replicas.next_if(|((rm, _), _)| *rm == m.name) {
                let moving = want.misplaced(&r.device);
                if schedulable_nodes.contains(key.1.as_str()) && !moving {
                    schedulable += 1;
                }
                let hint = m.policy.memory_hint.unwrap_or(0);
                previous.push(placed(key, r, hint, now));
            }
            models.push(ModelDemand {
                name: m.name.clone(),
                digest: m.digest.clone(),
                memory: m.memory_needed(),
                want,
                min_replicas: m.policy.min_replicas,
                max_replicas: m.policy.max_replicas,
                desired_replicas: m.target(schedulable),
                affinity: self.partner_digest(m),
            });
        }
        for (key, r) in replicas {
            previous.push(placed(key, r, 0, now));
        }
        Some(Snapshot {
            problem: Problem {
                nodes,
                models,
                policy,
            },
            previous,
        })
    }

    /// Replicas of a model on nodes that take new ones: those on draining nodes are
    /// moving away.
    fn schedulable_replicas(&self, model: &str) -> u32 {
        self.replicas
            .range((model.to_string(), String::new())..)
            .take_while(|((m, _), _)| m == model)
            .filter(|((_, n), _)| self.nodes.get(n).is_some_and(|n| n.schedulable()))
            .count() as u32
    }

    /// Carries a solution's changes into the model: records its decisions, lets go of
    /// the replicas that go and adds the ones that come, as loading. Returns the unloads
    /// and loads to carry out.
    pub fn apply(&mut self, changes: &Changes, now: Instant) -> Vec<Action> {
        // Models short of their target last round and not this one are whole again: a
        // later shortage is news and is logged.
        let short: HashSet<&str> = changes
            .decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Unplaceable { model, .. } => Some(model.as_str()),
                _ => None,
            })
            .collect();
        for m in self.models.values_mut() {
            if m.short_logged.is_some() && !short.contains(m.name.as_str()) {
                m.short_logged = None;
            }
        }
        let mut placed: BTreeMap<Key, String> = BTreeMap::new();
        let mut evicted = Vec::new();
        for d in &changes.decisions {
            match d {
                Decision::Placed {
                    model,
                    node,
                    reason,
                    ..
                } => {
                    placed.insert((model.clone(), node.clone()), reason.clone());
                }
                Decision::Evicted {
                    model,
                    node,
                    reason,
                } => {
                    let e = self.events.push("evicted", node, model, reason.clone());
                    if let Some(m) = self.models.get_mut(model) {
                        m.last_placement = Some(e);
                    }
                    // A replica dropped from a draining or lost node moves instead: its
                    // demand stays.
                    evicted.push(model.clone());
                }
                Decision::Dropped {
                    model,
                    node,
                    reason,
                } => {
                    self.events.push("dropped", node, model, reason.clone());
                }
                Decision::Unplaceable {
                    model,
                    needed,
                    largest_free,
                    have,
                    target,
                } => self.unplaceable(model, *needed, *largest_free, *have, *target),
            }
        }

        let mut actions = Vec::new();
        for (model, node) in &changes.going {
            if !self.replicas.contains_key(&(model.clone(), node.clone())) {
                continue;
            }
            self.unload_replica(model, node, now);
            if self.nodes.get(node).is_some_and(|n| !n.down) {
                actions.push(Action::Unload {
                    model: model.clone(),
                    node: node.clone(),
                });
            }
        }
        for model in evicted {
            self.demand_ends_if_gone(&model);
        }

        for (key, device) in &changes.coming {
            if self.replicas.contains_key(key) {
                continue;
            }
            if let Some(load) = self.start_load(key, device.clone(), now) {
                if let Some(reason) = placed.get(key) {
                    let e = self.events.push("placed", &key.1, &key.0, reason.clone());
                    if let Some(m) = self.models.get_mut(&key.0) {
                        m.last_placement = Some(e);
                        m.unplaceable = None;
                    }
                }
                actions.push(load);
            }
        }
        actions
    }

    /// Adds a loading replica, if its node still takes one and its model still wants
    /// one, and says what to load.
    fn start_load(&mut self, key: &Key, device: Device, now: Instant) -> Option<Action> {
        let (model, node) = key;
        if !self.nodes.get(node).is_some_and(|n| n.schedulable()) {
            return None;
        }
        let have = self.schedulable_replicas(model);
        let m = self.models.get(model)?;
        if have >= m.target(have) {
            return None;
        }
        let pinned = self
            .replicas_of(model)
            .iter()
            .filter(|(_, r)| r.pinned)
            .count()
            < m.policy.min_replicas as usize;
        let settings = m.settings_for(pinned);
        let source = ModelSource {
            name: m.name.clone(),
            version: m.version,
            digest: m.digest.clone(),
            file_bytes: m.file_bytes,
            settings: Some(super::catalog::settings_message(&settings)),
            immich: m.immich.as_ref().map(|i| i.stage.clone()),
            device: device.name(),
        };
        self.replicas.insert(
            key.clone(),
            Replica::new(ReplicaState::Loading, device, pinned, now),
        );
        Some(Action::Load {
            model: model.clone(),
            node: node.clone(),
            source,
        })
    }

    /// A model ends below its target. The event says why, once while the reason
    /// holds; requests are failed with it only when the model has no replica at all
    /// (with one ready or loading, they are served or wait for it).
    fn unplaceable(&mut self, model: &str, needed: u64, largest_free: u64, have: u32, target: u32) {
        let up = self.nodes.values().filter(|n| n.schedulable()).count();
        let why = if up == 0 {
            // "The largest free space is 0 B" would blame memory.
            format!(
                "no node can hold model '{model}': no node is up and taking replicas ({} known)",
                self.nodes.len()
            )
        } else if let Some(why) = self.no_gpu_reason(model) {
            why
        } else {
            unplaceable_reason(model, needed, largest_free, have, target)
        };
        let Some(m) = self.models.get_mut(model) else {
            return;
        };
        if m.short_logged.as_deref() != Some(why.as_str()) {
            self.events.push("unplaceable", "", model, why.clone());
        }
        if let Some(m) = self.models.get_mut(model) {
            m.short_logged = Some(why.clone());
            m.unplaceable = (have == 0).then_some(why);
        }
    }
}

impl ClusterModel {
    /// Why a model that runs only on a GPU cannot be placed, when no node up offers a
    /// GPU it can run on (with a node's reason for GPUs it cannot use).
    fn no_gpu_reason(&self, model: &str) -> Option<String> {
        if self.models.get(model)?.want() != crate::placement::Want::Gpu {
            return None;
        }
        let up = || self.nodes.values().filter(|n| n.schedulable());
        if up().any(|n| n.has_usable_gpu()) {
            return None;
        }
        let unusable = up().find_map(|n| {
            let r = n.status.resources.as_ref()?;
            let g = r.gpus.iter().find(|g| !g.unusable.is_empty())?;
            Some(format!(" (node '{}': {})", n.name, g.unusable))
        });
        Some(format!(
            "no node can hold model '{model}': it has device = \"gpu\" and no node up \
             offers a GPU it can run on{}",
            unusable.unwrap_or_default()
        ))
    }
}

/// Why a model has fewer replicas than it wants, in words that are true: no room, or
/// room only on nodes that hold a replica already (a node holds one per model).
pub(crate) fn unplaceable_reason(
    model: &str,
    needed: u64,
    largest_free: u64,
    have: u32,
    target: u32,
) -> String {
    let needed_text = bytesize::ByteSize(needed);
    if have > 0 && largest_free >= needed {
        return format!(
            "model '{model}' wants {target} replicas and has {have}: every node with room \
             ({needed_text} free) holds one already, and a node holds one replica of a model"
        );
    }
    let which = if have > 0 {
        format!(" for replica {} of {target}", have + 1)
    } else {
        String::new()
    };
    format!(
        "no node can hold model '{model}'{which}: it needs {needed_text}, the largest free space \
         is {}",
        bytesize::ByteSize(largest_free)
    )
}

/// A replica as placement sees it. Its memory is as measured, but never below the
/// model's hint (a floor for peaks).
fn placed((model, node): &Key, r: &Replica, hint: u64, now: Instant) -> PlacedReplica {
    PlacedReplica {
        model: model.clone(),
        node: node.clone(),
        device: r.device.clone(),
        in_flight: r.outstanding.load(Ordering::Relaxed) as u32,
        // Counts up with recency: the inverse of the time since last use.
        last_used: u64::MAX
            - now
                .saturating_duration_since(r.last_used)
                .as_millis()
                .min(u64::MAX as u128) as u64,
        memory: r.memory.max(hint),
        pinned: r.pinned,
    }
}
