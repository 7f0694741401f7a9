//! CPU stand-ins for GPU-only models while a GPU node wakes: a user's search should
//! not wait a minute for a sleeping GPU box when a CPU can answer it.
//!
//! An interactive request for a model with `device = "gpu"` that no node up can hold,
//! while a wake is in progress, lets the model stand in on a CPU: placement may put it
//! in RAM (as for `device = "any"`), and interactive requests use that replica. Bulk
//! requests never use a stand-in: they wait for the GPU. When a node with a GPU it can
//! run on comes back, the stand-ins end: placement drops the CPU replica (a GPU-only
//! model's replica in RAM is not kept) and places one on the GPU.

use super::ClusterModel;
use crate::placement::{Device, Want};

impl ClusterModel {
    /// Lets `model` stand in on a CPU (an interactive request found it unplaceable while
    /// a GPU node wakes). Whether it may: only a GPU-only model does.
    pub fn stand_in(&mut self, model: &str, waking: &str) -> bool {
        let Some(m) = self.models.get_mut(model) else {
            return false;
        };
        if m.want() != Want::Gpu {
            return false;
        }
        if !m.stand_in {
            m.stand_in = true;
            // Placed again with the CPU allowed: the old answer no longer holds.
            m.unplaceable = None;
            self.events.push(
                "stand-in",
                "",
                model,
                format!(
                    "no GPU is up ({waking}): interactive requests run on a CPU replica \
                     meanwhile, bulk requests wait for the GPU"
                ),
            );
        }
        true
    }

    /// Whether a replica of `model` on `device` is a CPU stand-in, which bulk requests
    /// leave alone.
    pub fn is_stand_in(&self, model: &str, device: &Device) -> bool {
        self.models
            .get(model)
            .is_some_and(|m| m.want().misplaced(device))
    }

    /// A load of `model` on GPU `index` of `node` failed with `message`. A model that
    /// may run anywhere falls back to the CPU (placed again at once, the request that
    /// asked for it waiting for that); whether it did.
    pub(super) fn gpu_failed(
        &mut self,
        model: &str,
        node: &str,
        index: u32,
        message: &str,
    ) -> bool {
        let Some(m) = self.models.get_mut(model) else {
            return false;
        };
        if m.want() != Want::Any {
            return false;
        }
        let why = format!("loading it on GPU {index} of node '{node}' failed: {message}");
        m.gpu_failed = Some(why.clone());
        m.unplaceable = None;
        self.events.push(
            "fallback",
            node,
            model,
            format!("{why}; it runs on the CPU until a node with a GPU joins again"),
        );
        true
    }

    /// `node` is up: if it has a GPU replicas can run on, stand-ins end and their models
    /// go back to GPUs, and models whose GPU load failed may try a GPU again.
    pub(super) fn gpu_node_back(&mut self, node: &str) {
        if !self.nodes.get(node).is_some_and(|n| n.has_usable_gpu()) {
            return;
        }
        for m in self.models.values_mut() {
            m.gpu_failed = None;
        }
        for m in self.models.values_mut().filter(|m| m.stand_in) {
            m.stand_in = false;
            self.events.push(
                "stand-in ended",
                node,
                &m.name,
                "a GPU node is up: the model moves back to a GPU (its CPU replica goes)",
            );
        }
    }
}
