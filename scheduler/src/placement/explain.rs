//! Why a model is where it is, or nowhere: the solver's own state read at the model's
//! turn (every model before it by name placed, as solve places them), and solve's own
//! answer for one replica more. No second copy of the rules: what this says is what
//! solve does.

use super::solve::{bytes, key, kinds, solve, State};
use super::{Decision, Device, Policy, Problem, Replica};

/// One memory pool (a node's RAM or one of its GPUs) as the model's next replica sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolFit {
    pub node: String,
    pub device: Device,
    pub schedulable: bool,
    pub budget: u64,
    /// None: the replicas there already use more than the budget.
    pub free: Option<u64>,
    pub fits: bool,
    pub holds_file: bool,
    pub has_replica: bool,
    /// Its place among the pools a new replica could go to, 1 = solve's first choice
    /// (before any eviction); None where one cannot go.
    pub rank: Option<usize>,
}

impl PoolFit {
    /// Why a new replica goes here or not, in words.
    pub fn verdict(&self, memory: u64, policy: Policy) -> String {
        let free = self.free.unwrap_or(0);
        if self.has_replica {
            "holds a replica".to_string()
        } else if !self.schedulable {
            "takes no new replica".to_string()
        } else if self.free.is_none() {
            "over its budget already".to_string()
        } else if !self.fits {
            format!("too small: needs {}, {} free", bytes(memory), bytes(free))
        } else {
            let order = match policy {
                Policy::Spread => "most free first",
                Policy::Binpack => "least free that fits first",
            };
            let holder = if self.holds_file {
                ", holds the file"
            } else {
                ""
            };
            match self.rank {
                Some(1) => format!("first choice ({order}{holder})"),
                Some(n) => format!("fits; choice {n} ({order}{holder})"),
                None => "fits".to_string(),
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub model: String,
    /// Bytes one replica needs (as asked, or as the scheduler counts it).
    pub memory: u64,
    pub target: u32,
    /// Replicas it has now.
    pub replicas: u32,
    pub pools: Vec<PoolFit>,
    /// What solve decides for one replica more than the model has: where it goes
    /// (`Placed`, perhaps after evicting idle replicas), or why nowhere (`Unplaceable`).
    pub next: Option<Decision>,
}

/// How placement sees `model`, one replica needing `memory` bytes if given; None when
/// the problem has no such model.
pub fn explain(
    problem: &Problem,
    previous: &[Replica],
    model: &str,
    memory: Option<u64>,
) -> Option<Explanation> {
    let mut problem = problem.clone();
    let demand = problem.models.iter_mut().find(|m| m.name == model)?;
    if let Some(memory) = memory {
        demand.memory = memory;
    }
    let target = demand.target();
    let replicas = previous.iter().filter(|r| r.model == model).count() as u32;
    // One more than it has: where would it go?
    demand.desired_replicas = replicas + 1;
    demand.max_replicas = 0;
    let (memory, want, digest) = (demand.memory, demand.want, demand.digest.clone());

    let mut state = State::new(&problem);
    state.keep(previous);
    state.build_index();
    let index = state.models.iter().position(|m| m.view.name == model)?;
    for earlier in 0..index {
        state.place_model(earlier);
    }
    let holding: Vec<usize> = state.models[index]
        .replicas
        .iter()
        .map(|&id| state.live[id].node)
        .collect();
    let mut pools = Vec::new();
    let mut order = Vec::new();
    for (preference, &kind) in kinds(want).iter().enumerate() {
        for (n, node) in state.nodes.iter().enumerate() {
            for slot in node.slots(kind) {
                let pool = &node.pools[slot];
                let fit = PoolFit {
                    node: node.view.name.clone(),
                    device: node.device(slot),
                    schedulable: node.view.schedulable,
                    budget: pool.budget,
                    free: pool.free(),
                    fits: pool.fits(memory),
                    holds_file: node.view.files.contains(&digest),
                    has_replica: holding.contains(&n),
                    rank: None,
                };
                if fit.schedulable && !fit.has_replica && fit.fits {
                    if let Some(free) = fit.free {
                        // As solve's best_fit: kinds in preference order, holders of the
                        // file first, then by policy and name.
                        let k = key(state.policy, n, slot, free);
                        order.push(((preference, !fit.holds_file, k), pools.len()));
                    }
                }
                pools.push(fit);
            }
        }
    }
    order.sort();
    for (rank, (_, i)) in order.into_iter().enumerate() {
        pools[i].rank = Some(rank + 1);
    }
    let next = solve(&problem, previous)
        .decisions
        .into_iter()
        .find(|d| match d {
            Decision::Placed { model: m, .. } | Decision::Unplaceable { model: m, .. } => {
                m == model
            }
            _ => false,
        });
    Some(Explanation {
        model: model.to_string(),
        memory,
        target,
        replicas,
        pools,
        next,
    })
}
