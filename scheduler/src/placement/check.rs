//! The post-conditions of a solution, as code: tests and debug builds hold solve to them.

use std::collections::{HashMap, HashSet};

use super::{Device, Problem, Replica, Solution};

/// A way a solution breaks the rules of placement.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("{model} is not in the catalog but has a replica on {node}")]
    UnknownModel { model: String, node: String },
    #[error("{model} has a replica on {node}, which is gone or not schedulable")]
    NotSchedulable { model: String, node: String },
    #[error("{model} has a replica on {device:?} of {node}, which has no such device")]
    NoDevice {
        model: String,
        node: String,
        device: Device,
    },
    #[error("{node} holds two replicas of {model}")]
    TwoOnOneNode { model: String, node: String },
    #[error("{device:?} of {node} is overcommitted by new replicas: {used} of {budget} bytes")]
    Overcommitted {
        node: String,
        device: Device,
        used: u64,
        budget: u64,
    },
}

/// Check that a solution only uses schedulable nodes and devices they have, holds at most one
/// replica of a model per node, and overcommits no device except where the previous placement
/// already did and nothing new went there.
pub fn check(
    problem: &Problem,
    previous: &[Replica],
    solution: &Solution,
) -> Result<(), Violation> {
    // As solve does: with duplicate names, the first counts.
    let mut nodes = HashMap::new();
    for n in &problem.nodes {
        nodes.entry(n.name.as_str()).or_insert(n);
    }
    let mut models = HashMap::new();
    for m in &problem.models {
        models.entry(m.name.as_str()).or_insert(m);
    }
    // Memory of what was there before, as solve counts it; the smallest if a replica is
    // listed twice, so that an odd previous placement never makes a good solution look bad.
    let mut before: HashMap<(&str, &str, &Device), u64> = HashMap::new();
    for r in previous {
        let memory = match models.get(r.model.as_str()) {
            Some(_) if r.memory > 0 => r.memory,
            Some(m) => m.memory,
            None => continue,
        };
        let m = before
            .entry((r.model.as_str(), r.node.as_str(), &r.device))
            .or_insert(u64::MAX);
        *m = (*m).min(memory);
    }

    let mut seen = HashSet::new();
    // (node, device) -> (bytes used, whether a new replica is there)
    let mut used: HashMap<(&str, &Device), (u64, bool)> = HashMap::new();
    for a in &solution.assignments {
        let Some(model) = models.get(a.model.as_str()) else {
            return Err(Violation::UnknownModel {
                model: a.model.clone(),
                node: a.node.clone(),
            });
        };
        let node = match nodes.get(a.node.as_str()) {
            Some(n) if n.schedulable => n,
            _ => {
                return Err(Violation::NotSchedulable {
                    model: a.model.clone(),
                    node: a.node.clone(),
                })
            }
        };
        if let Device::Gpu(index) = a.device {
            if !node.gpus.iter().any(|g| g.index == index) {
                return Err(Violation::NoDevice {
                    model: a.model.clone(),
                    node: a.node.clone(),
                    device: a.device.clone(),
                });
            }
        }
        if !seen.insert((a.model.as_str(), a.node.as_str())) {
            return Err(Violation::TwoOnOneNode {
                model: a.model.clone(),
                node: a.node.clone(),
            });
        }
        let kept = before.get(&(a.model.as_str(), a.node.as_str(), &a.device));
        let entry = used.entry((a.node.as_str(), &a.device)).or_default();
        entry.0 = entry
            .0
            .saturating_add(kept.copied().unwrap_or(model.memory));
        entry.1 |= kept.is_none();
    }

    for ((name, device), (bytes, has_new)) in used {
        let Some(node) = nodes.get(name) else {
            continue;
        };
        let budget = match device {
            Device::Cpu => node.ram_budget,
            Device::Gpu(index) => node
                .gpus
                .iter()
                .find(|g| g.index == *index)
                .map_or(0, |g| g.budget),
        };
        if bytes > budget && has_new {
            return Err(Violation::Overcommitted {
                node: name.to_string(),
                device: device.clone(),
                used: bytes,
                budget,
            });
        }
    }
    Ok(())
}
