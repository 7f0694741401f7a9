//! `ExplainModel`: placement's own view of one model (`placement::explain`), in the
//! Admin API's words, with each node's state from the cluster model.

use std::collections::HashMap;

use herd_proto::herd::{ExplainModelResponse, NodeState, PoolFit};
use tokio::time::Instant;

use crate::admin::node_state;
use crate::error::SchedulerError;
use crate::model::unplaceable_reason;
use crate::placement::{explain, Decision, Policy};
use crate::state::Scheduler;

/// Why `model` is where it is, one replica needing `memory` bytes if given. The lock
/// is held for the snapshot only: placement runs outside it, as the placement loop's.
pub fn explain_model(
    scheduler: &Scheduler,
    model: &str,
    memory: Option<u64>,
) -> Result<ExplainModelResponse, SchedulerError> {
    let policy = scheduler.settings.policy;
    let (snapshot, states) = {
        let c = scheduler.lock();
        if c.model(model).is_none() {
            return Err(SchedulerError::UnknownModel(model.to_string()));
        }
        let snapshot = c.snapshot(policy, scheduler.settings.headroom, Instant::now());
        let states: HashMap<String, NodeState> =
            c.nodes().map(|n| (n.name.clone(), node_state(n))).collect();
        (snapshot, states)
    };
    let snapshot = snapshot.ok_or(SchedulerError::StillLearning)?;
    let e = explain(&snapshot.problem, &snapshot.previous, model, memory)
        .ok_or_else(|| SchedulerError::UnknownModel(model.to_string()))?;
    let pools = e
        .pools
        .iter()
        .map(|p| {
            let state = states.get(&p.node).copied().unwrap_or_default();
            let mut verdict = p.verdict(e.memory, policy);
            if !p.schedulable && !p.has_replica {
                verdict = format!("{verdict} (node is {})", state_word(state));
            }
            PoolFit {
                node: p.node.clone(),
                device: p.device.name(),
                state: state as i32,
                budget_bytes: p.budget,
                free_bytes: p.free.unwrap_or(0),
                overcommitted: p.free.is_none(),
                fits: p.fits,
                holds_file: p.holds_file,
                has_replica: p.has_replica,
                rank: p.rank.unwrap_or(0) as u32,
                verdict,
            }
        })
        .collect();
    let next = match &e.next {
        Some(Decision::Placed {
            node,
            device,
            reason,
            ..
        }) => format!(
            "one more replica would go to {node} ({}): {reason}",
            device.name()
        ),
        Some(Decision::Unplaceable {
            needed,
            largest_free,
            have,
            ..
        }) => unplaceable_reason(model, *needed, *largest_free, *have, have + 1),
        _ => String::new(),
    };
    Ok(ExplainModelResponse {
        model: e.model,
        memory_bytes: e.memory,
        policy: match policy {
            Policy::Spread => "spread",
            Policy::Binpack => "binpack",
        }
        .to_string(),
        target_replicas: e.target,
        replicas: e.replicas,
        pools,
        next,
    })
}

fn state_word(state: NodeState) -> String {
    state
        .as_str_name()
        .trim_start_matches("NODE_STATE_")
        .to_ascii_lowercase()
}
