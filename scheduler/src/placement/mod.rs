//! Placement: which model replicas go on which nodes.
//!
//! A pure function over plain data: [`solve`] takes the cluster as the scheduler sees it
//! ([`Problem`]) and the replicas it has now, and returns the replicas it should have, with a
//! [`Decision`] for each change. No I/O, no clocks: the async code translates cluster state in
//! and the solution out. The goals and rules are in `README.md` beside this file; [`check`]
//! states the post-conditions as code.

use std::collections::BTreeSet;

mod check;
mod evict;
mod explain;
mod solve;
#[cfg(test)]
mod tests;

pub use check::{check, Violation};
pub use explain::{explain, Explanation, PoolFit};
pub use solve::solve;

/// Where a replica lives on its node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Device {
    Cpu,
    /// The GPU with this index (as the node's [`GpuView::index`]).
    Gpu(u32),
}

impl Device {
    /// As nodes, the CLI and the dashboard write it: "cpu" or "gpu:N".
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".to_string(),
            Device::Gpu(i) => format!("gpu:{i}"),
        }
    }

    /// From a node's report ("gpu:N"); anything else, none included, is the CPU.
    pub fn from_reported(name: &str) -> Device {
        name.strip_prefix("gpu:")
            .and_then(|i| i.parse().ok())
            .map_or(Device::Cpu, Device::Gpu)
    }
}

/// What a model asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Want {
    /// RAM only.
    #[default]
    Cpu,
    /// GPU memory only.
    Gpu,
    /// A GPU if one fits anywhere, else RAM.
    Any,
}

impl Want {
    /// Whether a replica on `device` is out of place for a model that wants this: a
    /// GPU-only model's replica in RAM (a CPU stand-in, or one from before its herd.toml
    /// changed). A CPU model's replica adopted on a GPU stays.
    pub fn misplaced(self, device: &Device) -> bool {
        self == Want::Gpu && *device == Device::Cpu
    }
}

/// How new replicas are laid out over the nodes that fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// Most free memory first: spreads load and leaves room everywhere.
    #[default]
    Spread,
    /// Least free memory that still fits first: keeps whole nodes free for big models.
    Binpack,
}

/// One GPU of a node.
#[derive(Clone, Debug)]
pub struct GpuView {
    pub index: u32,
    /// Bytes of GPU memory herd may use on this GPU in all.
    pub budget: u64,
}

/// A node as the scheduler sees it.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub name: String,
    /// Accepts new replicas (up and not draining). Replicas on a node that is not schedulable
    /// are not kept.
    pub schedulable: bool,
    /// Bytes of RAM herd may use for replicas on this node in all, headroom already taken off
    /// (includes what its current replicas use).
    pub ram_budget: u64,
    pub gpus: Vec<GpuView>,
    /// sha256 digests of the model files the node holds on disk.
    pub files: BTreeSet<String>,
}

/// A model of the catalog.
#[derive(Clone, Debug)]
pub struct ModelDemand {
    pub name: String,
    pub digest: String,
    /// Bytes one replica needs.
    pub memory: u64,
    pub want: Want,
    pub min_replicas: u32,
    /// 0 means no upper bound.
    pub max_replicas: u32,
    /// Replicas wanted now (from demand and scaling); solve uses max(min_replicas, desired)
    /// capped by max_replicas.
    pub desired_replicas: u32,
    /// Another model's file digest: nodes that hold it count as holding this model's
    /// file. The stages of an Immich pipeline (a detection and its recognition) so land
    /// on one node where they fit, and run there in one call.
    pub affinity: Option<String>,
}

impl ModelDemand {
    /// How many replicas solve aims for.
    #[must_use]
    pub fn target(&self) -> u32 {
        let want = self.min_replicas.max(self.desired_replicas);
        if self.max_replicas > 0 {
            want.min(self.max_replicas)
        } else {
            want
        }
    }
}

/// A replica as the cluster has it now (the previous placement), with its activity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    pub model: String,
    pub node: String,
    pub device: Device,
    /// Requests queued or running on it; a replica with work is never evicted.
    pub in_flight: u32,
    /// When it last served, any monotonic number (ms); smaller = used longer ago.
    pub last_used: u64,
    /// Bytes it uses now as measured; 0 = unknown (then the model's `memory` counts).
    pub memory: u64,
    /// Loaded for min_replicas: it never unloads for idleness, so one beyond what the
    /// model wants (two copies after a partition heals) would stay forever.
    pub pinned: bool,
}

/// Everything solve looks at besides the previous placement.
#[derive(Clone, Debug)]
pub struct Problem {
    pub nodes: Vec<NodeView>,
    pub models: Vec<ModelDemand>,
    pub policy: Policy,
}

/// One replica of the solution.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Assignment {
    pub model: String,
    pub node: String,
    pub device: Device,
}

/// What solve decided, with reasons, for the event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Placed {
        model: String,
        node: String,
        device: Device,
        reason: String,
    },
    Evicted {
        model: String,
        node: String,
        reason: String,
    },
    /// Kept replicas dropped because their node is gone/unschedulable, their model left the
    /// catalog, or above max_replicas.
    Dropped {
        model: String,
        node: String,
        reason: String,
    },
    /// The model ends below its target: `have` replicas of `target`.
    Unplaceable {
        model: String,
        needed: u64,
        largest_free: u64,
        have: u32,
        target: u32,
    },
}

/// The placement solve wants, and why it differs from the previous one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Solution {
    /// Every replica the cluster should have, sorted.
    pub assignments: Vec<Assignment>,
    /// In the order solve took them: drops first, then models by name.
    pub decisions: Vec<Decision>,
}
