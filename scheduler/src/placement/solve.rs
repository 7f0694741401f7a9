//! The solver: keep what may stay, then give each model, by name, its missing replicas.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use bytesize::ByteSize;

use super::{
    Assignment, Decision, Device, ModelDemand, NodeView, Policy, Problem, Replica, Solution, Want,
};

/// Pool 0 of a node is its RAM; pool g + 1 is its g-th GPU by index.
pub(super) const RAM: usize = 0;

/// Which kind of memory a replica goes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Ram,
    Gpu,
}

/// The kinds a model may use, in order of preference.
pub(super) fn kinds(want: Want) -> &'static [Kind] {
    match want {
        Want::Cpu => &[Kind::Ram],
        Want::Gpu => &[Kind::Gpu],
        Want::Any => &[Kind::Gpu, Kind::Ram],
    }
}

/// One memory budget: a node's RAM or one of its GPUs.
pub(super) struct Pool {
    pub budget: u64,
    pub used: u64,
    /// Replicas eviction may take here, least recently used first (some may have become
    /// unevictable since: see [`Live::evictable`]).
    pub idle: Vec<usize>,
    /// What evicting every replica it may take here would free: lets eviction skip pools
    /// where it cannot make room at once, so a full cluster does not make solve slow.
    pub idle_memory: u64,
}

impl Pool {
    fn new(budget: u64) -> Self {
        Self {
            budget,
            used: 0,
            idle: Vec::new(),
            idle_memory: 0,
        }
    }

    /// None while the previous placement overcommits it: then nothing new goes here.
    pub fn free(&self) -> Option<u64> {
        self.budget.checked_sub(self.used)
    }

    pub fn fits(&self, memory: u64) -> bool {
        self.used.saturating_add(memory) <= self.budget
    }
}

pub(super) struct Node<'a> {
    pub view: &'a NodeView,
    /// `pools[RAM]`, then one per GPU in `gpu_index` order.
    pub pools: Vec<Pool>,
    /// GPU indices, sorted, without duplicates.
    pub gpu_index: Vec<u32>,
}

impl Node<'_> {
    /// The pools a replica of this kind may use.
    pub fn slots(&self, kind: Kind) -> std::ops::Range<usize> {
        match kind {
            Kind::Ram => RAM..RAM + 1,
            Kind::Gpu => 1..self.pools.len(),
        }
    }

    pub(super) fn device(&self, slot: usize) -> Device {
        match slot.checked_sub(1).and_then(|g| self.gpu_index.get(g)) {
            Some(&index) => Device::Gpu(index),
            None => Device::Cpu,
        }
    }
}

pub(super) struct Model<'a> {
    pub view: &'a ModelDemand,
    pub target: u32,
    /// Eviction never takes the model to fewer replicas than this: its target, and at least
    /// min_replicas. So only replicas beyond what a model wants can be evicted.
    pub floor: u32,
    /// Replicas it has now, kept and placed.
    pub count: u32,
    /// Its replicas (in `State::live`).
    pub replicas: Vec<usize>,
}

/// A replica in the solution being built.
pub(super) struct Live {
    pub model: usize,
    pub node: usize,
    pub slot: usize,
    pub memory: u64,
    pub last_used: u64,
    /// Kept, without work, of a model above its floor: eviction may take it. Never true for
    /// replicas placed by this solve; false again once its model is down to its floor.
    pub evictable: bool,
    pub evicted: bool,
}

/// Position of a pool in a free-memory index: the best candidate under the policy first, then
/// by node name (nodes are numbered in name order), then by GPU index.
type Key = (u64, usize, usize);

pub(super) struct State<'a> {
    pub policy: Policy,
    /// Sorted by name, so a node's number is its rank by name.
    pub nodes: Vec<Node<'a>>,
    /// Sorted by name: the order models are placed in.
    pub models: Vec<Model<'a>>,
    pub live: Vec<Live>,
    /// Pools of schedulable nodes that are not overcommitted, so that finding the best fit
    /// does not scan every node for every replica.
    ram_index: BTreeSet<Key>,
    gpu_index: BTreeSet<Key>,
    /// Schedulable nodes holding a file, by digest, in name order.
    holders: HashMap<&'a str, Vec<usize>>,
    /// `marks[node] == model + 1` while placing `model` if the node has a replica of it.
    pub marks: Vec<usize>,
    pub decisions: Vec<Decision>,
}

/// A pool chosen for a new replica.
struct Fit {
    node: usize,
    slot: usize,
    free: u64,
    holder: bool,
}

/// The place of every previous replica, to be kept or dropped.
struct Candidate<'p> {
    replica: &'p Replica,
    model: usize,
    node: usize,
    slot: usize,
    memory: u64,
}

impl Candidate<'_> {
    /// Which replicas to keep first: ones with work, then the most recently used.
    fn keep_order(&self) -> (Reverse<bool>, Reverse<u64>, usize) {
        (
            Reverse(self.replica.in_flight > 0),
            Reverse(self.replica.last_used),
            self.node,
        )
    }
}

/// Decide where every replica goes: see `README.md` for the rules.
#[must_use]
pub fn solve(problem: &Problem, previous: &[Replica]) -> Solution {
    let mut state = State::new(problem);
    state.keep(previous);
    state.build_index();
    for model in 0..state.models.len() {
        state.place_model(model);
    }
    let solution = state.finish();
    debug_assert_eq!(super::check(problem, previous, &solution), Ok(()));
    solution
}

pub(super) fn key(policy: Policy, node: usize, slot: usize, free: u64) -> Key {
    match policy {
        Policy::Spread => (u64::MAX - free, node, slot),
        Policy::Binpack => (free, node, slot),
    }
}

fn key_free(policy: Policy, key: &Key) -> u64 {
    match policy {
        Policy::Spread => u64::MAX - key.0,
        Policy::Binpack => key.0,
    }
}

pub(super) fn bytes(n: u64) -> String {
    ByteSize(n).display().iec().to_string()
}

impl<'a> State<'a> {
    pub(super) fn new(problem: &'a Problem) -> Self {
        // Names are keys: with duplicates, the first in the problem counts (stable sort).
        let mut node_views: Vec<&NodeView> = problem.nodes.iter().collect();
        node_views.sort_by(|a, b| a.name.cmp(&b.name));
        node_views.dedup_by(|b, a| a.name == b.name);
        let mut model_views: Vec<&ModelDemand> = problem.models.iter().collect();
        model_views.sort_by(|a, b| a.name.cmp(&b.name));
        model_views.dedup_by(|b, a| a.name == b.name);

        let nodes: Vec<Node> = node_views
            .into_iter()
            .map(|view| {
                let mut gpus: Vec<_> = view.gpus.iter().collect();
                gpus.sort_by_key(|g| g.index);
                gpus.dedup_by_key(|g| g.index);
                let mut pools = vec![Pool::new(view.ram_budget)];
                pools.extend(gpus.iter().map(|g| Pool::new(g.budget)));
                Node {
                    view,
                    pools,
                    gpu_index: gpus.iter().map(|g| g.index).collect(),
                }
            })
            .collect();
        let models: Vec<Model> = model_views
            .into_iter()
            .map(|view| {
                let target = view.target();
                Model {
                    view,
                    target,
                    floor: target.max(view.min_replicas),
                    count: 0,
                    replicas: Vec::new(),
                }
            })
            .collect();

        // Walk each node's files once rather than asking every node about every digest.
        let mut holders: HashMap<&str, Vec<usize>> = models
            .iter()
            .flat_map(|m| std::iter::once(m.view.digest.as_str()).chain(m.view.affinity.as_deref()))
            .map(|digest| (digest, Vec::new()))
            .collect();
        for (n, node) in nodes.iter().enumerate() {
            if !node.view.schedulable {
                continue;
            }
            for file in &node.view.files {
                if let Some(list) = holders.get_mut(file.as_str()) {
                    list.push(n);
                }
            }
        }
        // A model with an affinity is held, for placement, where its partner's file is.
        for m in &models {
            let Some(partner) = m.view.affinity.as_deref() else {
                continue;
            };
            let with_partner = holders.get(partner).cloned().unwrap_or_default();
            if let Some(list) = holders.get_mut(m.view.digest.as_str()) {
                for n in with_partner {
                    if !list.contains(&n) {
                        list.push(n);
                    }
                }
            }
        }

        Self {
            policy: problem.policy,
            marks: vec![0; nodes.len()],
            nodes,
            models,
            live: Vec::new(),
            ram_index: BTreeSet::new(),
            gpu_index: BTreeSet::new(),
            holders,
            decisions: Vec::new(),
        }
    }

    /// Replicas kept for min_replicas never unload for idleness: past the model's
    /// target (a copy adopted back after a partition healed, beside the one placed
    /// meanwhile), the surplus among them goes, those with work and the most recently
    /// used staying. Replicas that are not pinned are left to their idle TTL.
    fn drop_pinned_surplus(&mut self, kept: &mut Vec<Candidate<'_>>) {
        let Some(first) = kept.first() else { return };
        let view = self.models[first.model].view;
        let surplus = kept.len().saturating_sub(view.target() as usize);
        let pinned = kept.iter().filter(|c| c.replica.pinned).count();
        let over_min = pinned.saturating_sub(view.min_replicas as usize);
        let mut going = surplus.min(over_min);
        if going == 0 {
            return;
        }
        let total = kept.len();
        kept.sort_by_key(Candidate::keep_order);
        let mut i = kept.len();
        while going > 0 && i > 0 {
            i -= 1;
            if kept[i].replica.pinned {
                let c = kept.remove(i);
                self.drop_replica(
                    c.replica,
                    format!(
                        "a surplus copy: {total} replicas, the target is {} (min_replicas {})",
                        view.target(),
                        view.min_replicas
                    ),
                );
                going -= 1;
            }
        }
    }

    fn drop_replica(&mut self, replica: &Replica, reason: String) {
        self.decisions.push(Decision::Dropped {
            model: replica.model.clone(),
            node: replica.node.clone(),
            reason,
        });
    }

    /// Rule 1: keep every previous replica that may stay, where it is.
    pub(super) fn keep(&mut self, previous: &[Replica]) {
        let node_by_name: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.view.name.as_str(), i))
            .collect();
        let model_by_name: HashMap<&str, usize> = self
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.view.name.as_str(), i))
            .collect();

        let mut per_model: Vec<Vec<Candidate>> = Vec::new();
        per_model.resize_with(self.models.len(), Vec::new);
        for replica in previous {
            let Some(&model) = model_by_name.get(replica.model.as_str()) else {
                self.drop_replica(replica, "model left the catalog".into());
                continue;
            };
            let Some(&node) = node_by_name.get(replica.node.as_str()) else {
                self.drop_replica(replica, "node is gone".into());
                continue;
            };
            let n = &self.nodes[node];
            if !n.view.schedulable {
                self.drop_replica(replica, "node is not schedulable (down or draining)".into());
                continue;
            }
            let slot = match replica.device {
                Device::Cpu => RAM,
                Device::Gpu(index) => match n.gpu_index.binary_search(&index) {
                    Ok(g) => g + 1,
                    Err(_) => {
                        self.drop_replica(replica, format!("node no longer has GPU {index}"));
                        continue;
                    }
                },
            };
            // A GPU-only model's replica in RAM (a CPU stand-in whose GPU is back, a
            // changed herd.toml) goes, for one on a GPU.
            if self.models[model].view.want.misplaced(&replica.device) {
                let why = "the model runs on a GPU (device = \"gpu\"): its CPU replica goes";
                self.drop_replica(replica, why.into());
                continue;
            }
            let memory = if replica.memory > 0 {
                replica.memory
            } else {
                self.models[model].view.memory
            };
            per_model[model].push(Candidate {
                replica,
                model,
                node,
                slot,
                memory,
            });
        }

        for mut group in per_model {
            // One replica of a model per node: a second one is a leftover, drop it.
            group.sort_by_key(|c| (c.node, c.keep_order()));
            let mut kept: Vec<Candidate> = Vec::with_capacity(group.len());
            for c in group {
                if kept.last().is_some_and(|k| k.node == c.node) {
                    self.drop_replica(c.replica, "another replica of it is on this node".into());
                } else {
                    kept.push(c);
                }
            }
            let Some(first) = kept.first() else { continue };
            let max = self.models[first.model].view.max_replicas as usize;
            if max > 0 && kept.len() > max {
                kept.sort_by_key(Candidate::keep_order);
                for c in kept.split_off(max) {
                    self.drop_replica(
                        c.replica,
                        format!("above max_replicas ({max}): least recently used"),
                    );
                }
            }
            self.drop_pinned_surplus(&mut kept);
            for c in kept {
                self.add(
                    c.model,
                    c.node,
                    c.slot,
                    c.memory,
                    c.replica.last_used,
                    c.replica.in_flight == 0,
                );
            }
        }

        // Only now are the counts known that say which replicas are not wanted.
        for (id, r) in self.live.iter_mut().enumerate() {
            let m = &self.models[r.model];
            r.evictable &= m.count > m.floor && r.memory > 0;
            if r.evictable {
                let pool = &mut self.nodes[r.node].pools[r.slot];
                pool.idle.push(id);
                pool.idle_memory = pool.idle_memory.saturating_add(r.memory);
            }
        }
        let live = &self.live;
        for node in &mut self.nodes {
            for pool in &mut node.pools {
                pool.idle
                    .sort_by_key(|&id| (live[id].last_used, live[id].model));
            }
        }
    }

    /// Record a replica; the caller keeps the free-memory index up to date.
    fn add(
        &mut self,
        model: usize,
        node: usize,
        slot: usize,
        memory: u64,
        last_used: u64,
        idle: bool,
    ) {
        let id = self.live.len();
        self.live.push(Live {
            model,
            node,
            slot,
            memory,
            last_used,
            evictable: idle,
            evicted: false,
        });
        let pool = &mut self.nodes[node].pools[slot];
        pool.used = pool.used.saturating_add(memory);
        let m = &mut self.models[model];
        m.count += 1;
        m.replicas.push(id);
    }

    fn index_of(&mut self, slot: usize) -> &mut BTreeSet<Key> {
        if slot == RAM {
            &mut self.ram_index
        } else {
            &mut self.gpu_index
        }
    }

    /// Take a pool out of the index before its use changes...
    pub(super) fn unindex(&mut self, node: usize, slot: usize) {
        let n = &self.nodes[node];
        if let (true, Some(free)) = (n.view.schedulable, n.pools[slot].free()) {
            let k = key(self.policy, node, slot, free);
            self.index_of(slot).remove(&k);
        }
    }

    /// ...and put it back after.
    pub(super) fn index(&mut self, node: usize, slot: usize) {
        let n = &self.nodes[node];
        if let (true, Some(free)) = (n.view.schedulable, n.pools[slot].free()) {
            let k = key(self.policy, node, slot, free);
            self.index_of(slot).insert(k);
        }
    }

    pub(super) fn build_index(&mut self) {
        for node in 0..self.nodes.len() {
            for slot in 0..self.nodes[node].pools.len() {
                self.index(node, slot);
            }
        }
    }

    /// Rules 2-4 for one model.
    pub(super) fn place_model(&mut self, model: usize) {
        let m = &self.models[model];
        if m.count >= m.target {
            return;
        }
        for &id in &m.replicas {
            self.marks[self.live[id].node] = model + 1;
        }
        while self.models[model].count < self.models[model].target {
            if !self.place_one(model) {
                let view = self.models[model].view;
                let largest_free = kinds(view.want)
                    .iter()
                    .map(|&k| self.largest_free(k))
                    .max()
                    .unwrap_or(0);
                let m = &self.models[model];
                self.decisions.push(Decision::Unplaceable {
                    model: view.name.clone(),
                    needed: view.memory,
                    largest_free,
                    have: m.count,
                    target: m.target,
                });
                return;
            }
        }
    }

    fn place_one(&mut self, model: usize) -> bool {
        let view = self.models[model].view;
        let kinds = kinds(view.want);
        for &kind in kinds {
            if let Some(fit) = self.best_fit(model, kind) {
                let mut reason = self.fit_reason(&fit);
                if view.want == Want::Any && kind == Kind::Ram {
                    let why = if self.nodes.iter().all(|n| n.pools.len() == 1) {
                        "no node up offers a GPU it can run on".to_string()
                    } else {
                        format!(
                            "no GPU has room for it ({} needed, largest free GPU memory {})",
                            bytes(view.memory),
                            bytes(self.largest_free(Kind::Gpu))
                        )
                    };
                    reason = format!("on the CPU: {why}; {reason}");
                }
                self.place(model, fit.node, fit.slot, reason);
                return true;
            }
        }
        if let Some(plan) = self.plan_eviction(model, kinds) {
            let (node, slot, evicted) = (plan.node, plan.slot, plan.victims.len());
            self.evict(model, plan);
            let reason = match evicted {
                1 => "made room by evicting 1 idle replica".to_string(),
                n => format!("made room by evicting {n} idle replicas"),
            };
            self.place(model, node, slot, reason);
            return true;
        }
        false
    }

    fn place(&mut self, model: usize, node: usize, slot: usize, reason: String) {
        self.unindex(node, slot);
        let memory = self.models[model].view.memory;
        self.add(model, node, slot, memory, 0, false);
        self.index(node, slot);
        self.marks[node] = model + 1;
        let n = &self.nodes[node];
        self.decisions.push(Decision::Placed {
            model: self.models[model].view.name.clone(),
            node: n.view.name.clone(),
            device: n.device(slot),
            reason,
        });
    }

    /// The best pool of this kind with room, on a node without a replica of the model:
    /// nodes holding the model's file first, then by policy, then by name.
    fn best_fit(&self, model: usize, kind: Kind) -> Option<Fit> {
        let view = self.models[model].view;
        let (memory, mark) = (view.memory, model + 1);

        // Few nodes hold a given file, so look at each of them.
        let mut best: Option<Key> = None;
        for &n in self.holders.get(view.digest.as_str()).into_iter().flatten() {
            if self.marks[n] == mark {
                continue;
            }
            for slot in self.nodes[n].slots(kind) {
                let pool = &self.nodes[n].pools[slot];
                if let (true, Some(free)) = (pool.fits(memory), pool.free()) {
                    let k = key(self.policy, n, slot, free);
                    if best.is_none_or(|b| k < b) {
                        best = Some(k);
                    }
                }
            }
        }
        if let Some(k) = best {
            return Some(Fit {
                node: k.1,
                slot: k.2,
                free: key_free(self.policy, &k),
                holder: true,
            });
        }

        // Otherwise the best in the index, skipping the few nodes that have a replica.
        let index = match kind {
            Kind::Ram => &self.ram_index,
            Kind::Gpu => &self.gpu_index,
        };
        let found = match self.policy {
            Policy::Spread => index
                .iter()
                .take_while(|k| key_free(self.policy, k) >= memory)
                .find(|k| self.marks[k.1] != mark),
            Policy::Binpack => index
                .range((memory, 0, 0)..)
                .find(|k| self.marks[k.1] != mark),
        };
        found.map(|k| Fit {
            node: k.1,
            slot: k.2,
            free: key_free(self.policy, k),
            holder: false,
        })
    }

    fn fit_reason(&self, fit: &Fit) -> String {
        let node = &self.nodes[fit.node];
        let what = match node.device(fit.slot) {
            Device::Cpu => "RAM".to_string(),
            Device::Gpu(index) => format!("memory on GPU {index}"),
        };
        let free = bytes(fit.free);
        let why = match self.policy {
            Policy::Spread => format!("spread: most free {what} ({free})"),
            Policy::Binpack => format!("binpack: least free {what} that fits ({free})"),
        };
        if fit.holder {
            format!("holds the file; {why}")
        } else {
            why
        }
    }

    /// Largest free memory of a kind over schedulable nodes (overcommitted pools have none).
    fn largest_free(&self, kind: Kind) -> u64 {
        let index = match kind {
            Kind::Ram => &self.ram_index,
            Kind::Gpu => &self.gpu_index,
        };
        let top = match self.policy {
            Policy::Spread => index.first(),
            Policy::Binpack => index.last(),
        };
        top.map_or(0, |k| key_free(self.policy, k))
    }

    fn finish(self) -> Solution {
        let mut assignments: Vec<Assignment> = self
            .live
            .iter()
            .filter(|r| !r.evicted)
            .map(|r| {
                let node = &self.nodes[r.node];
                Assignment {
                    model: self.models[r.model].view.name.clone(),
                    node: node.view.name.clone(),
                    device: node.device(r.slot),
                }
            })
            .collect();
        assignments.sort_unstable();
        Solution {
            assignments,
            decisions: self.decisions,
        }
    }
}
