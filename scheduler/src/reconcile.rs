//! The placement loop: translate the cluster into a placement problem, solve it (a
//! pure function), and carry the solution out — loads on agents for new replicas,
//! unloads for replicas that go — recording every decision as an event.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use herd_proto::herd::{LoadModelRequest, ModelSource, UnloadModelRequest};
use tokio::time::Instant;
use tracing::warn;

use crate::cluster::{ReplicaEntry, ReplicaState};
use crate::placement::{solve, Decision};
use crate::scaling;
use crate::sender::BatchSender;
use crate::state::Scheduler;

/// Runs until the process ends: on every wake-up, and at least every report interval.
pub async fn run(scheduler: Arc<Scheduler>) {
    loop {
        let _ = tokio::time::timeout(
            scheduler.settings.report_interval,
            scheduler.reconcile.notified(),
        )
        .await;
        scheduler.check_liveness();
        scaling::update(&scheduler);
        once(&scheduler);
        crate::records::sync(&scheduler).await;
    }
}

/// One round of placement. Right after the scheduler starts, it first learns what
/// the agents hold from their reports, so that nothing they hold is loaded again.
pub fn once(scheduler: &Arc<Scheduler>) {
    if scheduler.started.elapsed() < scheduler.down_after() {
        return;
    }
    let mut c = scheduler.lock();
    let (problem, previous) = c.problem(scheduler.settings.policy, scheduler.settings.headroom);
    let solution = solve(&problem, &previous);
    let mut changed = false;

    for d in &solution.decisions {
        match d {
            Decision::Placed {
                model,
                node,
                reason,
                ..
            } => {
                let e = c.events.push("placed", node, model, reason.clone());
                if let Some(m) = c.models.get_mut(model) {
                    m.last_placement = Some(e);
                    m.unplaceable = None;
                }
            }
            Decision::Evicted {
                model,
                node,
                reason,
            } => {
                let e = c.events.push("evicted", node, model, reason.clone());
                if let Some(m) = c.models.get_mut(model) {
                    m.last_placement = Some(e);
                }
            }
            Decision::Dropped {
                model,
                node,
                reason,
            } => {
                c.events.push("dropped", node, model, reason.clone());
            }
            Decision::Unplaceable {
                model,
                needed,
                largest_free,
            } => {
                let why = format!(
                    "no node can hold model '{model}': it needs {}, the largest free space is {}",
                    bytesize::ByteSize(*needed),
                    bytesize::ByteSize(*largest_free)
                );
                let fresh = c
                    .models
                    .get(model)
                    .is_some_and(|m| m.unplaceable.as_deref() != Some(why.as_str()));
                if fresh {
                    c.events.push("unplaceable", "", model, why.clone());
                }
                if let Some(m) = c.models.get_mut(model) {
                    m.unplaceable = Some(why);
                }
                changed = true;
            }
        }
    }

    // Replicas that go: unload them on their agents.
    let evicted: Vec<String> = solution
        .decisions
        .iter()
        .filter_map(|d| match d {
            // A replica dropped from a draining or lost node moves instead: its
            // demand stays.
            Decision::Evicted { model, .. } => Some(model.clone()),
            _ => None,
        })
        .collect();
    let keep: std::collections::BTreeSet<(String, String)> = solution
        .assignments
        .iter()
        .map(|a| (a.model.clone(), a.node.clone()))
        .collect();
    let going: Vec<(String, String)> = c
        .replicas
        .keys()
        .filter(|k| !keep.contains(*k))
        .cloned()
        .collect();
    for (model, node) in going {
        c.unload_replica(&model, &node);
        changed = true;
        if let Some(n) = c.nodes.get(&node).filter(|n| !n.down) {
            let mut agent = n.link.agent.clone();
            let scheduler = scheduler.clone();
            tokio::spawn(async move {
                if let Err(e) = agent
                    .unload(UnloadModelRequest {
                        name: model.clone(),
                    })
                    .await
                {
                    warn!(model = %model, node = %node, error = %e.message(), "unload failed");
                    scheduler.lock().events.push(
                        "unload_failed",
                        &node,
                        &model,
                        e.message().to_string(),
                    );
                }
            });
        }
    }

    for model in evicted {
        c.demand_ends_if_gone(&model);
    }

    // Replicas that come: load them.
    for a in &solution.assignments {
        if c.is_assigned(a) {
            continue;
        }
        let (Some(model), Some(node)) = (c.models.get(&a.model), c.nodes.get(&a.node)) else {
            continue;
        };
        let pinned = c
            .replicas_of(&a.model)
            .iter()
            .filter(|(_, r)| r.pinned)
            .count()
            < model.policy.min_replicas as usize;
        let settings = c.settings_for(model, pinned);
        let source = ModelSource {
            name: model.name.clone(),
            version: model.version,
            digest: model.digest.clone(),
            file_bytes: model.file_bytes,
            settings: Some(herd_proto::herd::ModelSettings {
                max_batch_size: settings.max_batch_size as u32,
                max_batch_delay_us: settings.max_batch_delay.as_micros() as u64,
                ttl_ms: settings.ttl.as_millis(),
                intra_op_threads: settings.intra_op_threads as u32,
                queue_capacity: settings.queue_capacity as u32,
            }),
        };
        let link = node.link.clone();
        c.replicas.insert(
            (a.model.clone(), a.node.clone()),
            ReplicaEntry {
                state: ReplicaState::Loading,
                device: a.device.clone(),
                sender: BatchSender::start(link.agent.clone()),
                outstanding: Arc::new(AtomicUsize::new(0)),
                last_used: Instant::now(),
                pinned,
                since: Instant::now(),
            },
        );
        changed = true;
        tokio::spawn(load(
            scheduler.clone(),
            a.model.clone(),
            a.node.clone(),
            source,
            link.agent,
        ));
    }
    drop(c);
    if changed {
        scheduler.notify();
    }
}

/// Loads one replica and records the outcome.
async fn load(
    scheduler: Arc<Scheduler>,
    model: String,
    node: String,
    source: ModelSource,
    mut agent: crate::agent_link::AgentRpc,
) {
    let started = Instant::now();
    let mut request = tonic::Request::new(LoadModelRequest {
        model: Some(source),
    });
    request.set_timeout(scheduler.settings.load_timeout.max(Duration::from_secs(1)));
    let result = agent.load(request).await;
    let mut c = scheduler.lock();
    let key = (model.clone(), node.clone());
    match result {
        Ok(r) => {
            let r = r.into_inner();
            // The agent's report may have shown it ready already; the load still
            // happened and is recorded, unless the replica was let go meanwhile.
            if let Some(e) = c.replicas.get_mut(&key) {
                if e.state == ReplicaState::Loading {
                    e.state = ReplicaState::Ready;
                    e.since = Instant::now();
                }
                if let Some(m) = c.models.get_mut(&model) {
                    m.measured = m.measured.max(r.memory_bytes);
                }
                let how = if r.fetched {
                    "file fetched from the scheduler"
                } else {
                    "file already on the node"
                };
                c.events.push(
                    "loaded",
                    &node,
                    &model,
                    format!(
                        "ready in {} ms, {} ({how})",
                        started.elapsed().as_millis(),
                        bytesize::ByteSize(r.memory_bytes)
                    ),
                );
            }
        }
        Err(status) => {
            c.replicas.remove(&key);
            c.events
                .push("load_failed", &node, &model, status.message().to_string());
            if let Some(m) = c.models.get_mut(&model) {
                m.load_error = Some(format!(
                    "model '{model}' failed to load on {node}: {}",
                    status.message()
                ));
            }
            // Not placed again on its own: the next request or load call tries again.
            c.demand_ends_if_gone(&model);
            if matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown
            ) {
                drop(c);
                scheduler.node_unreachable(&node, status.message());
                return;
            }
        }
    }
    drop(c);
    scheduler.notify();
}
