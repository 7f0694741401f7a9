//! The `herd.v1.Admin` service: list nodes and models, load, unload, drain, and watch
//! the cluster (the dashboard's feed).

use std::sync::Arc;
use std::time::Duration;

use herd_proto::herd::admin_server::Admin;
use herd_proto::herd::*;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::SchedulerError;
use crate::events::now_ms;
use crate::forward::{election_deadline, forwarded, was_forwarded, LeaderAdmin, Route};
use crate::model::{ClusterModel, ReplicaState};
use crate::state::Scheduler;

pub struct AdminService {
    scheduler: Arc<Scheduler>,
}

impl AdminService {
    pub fn new(scheduler: Arc<Scheduler>) -> AdminService {
        AdminService { scheduler }
    }

    /// The leader's admin service when this scheduler does not lead: calls that change
    /// the cluster are made there.
    async fn leader<T>(&self, request: &Request<T>) -> Result<Option<LeaderAdmin>, Status> {
        let route = self
            .scheduler
            .leader_route(was_forwarded(request), election_deadline())
            .await?;
        Ok(match route {
            Route::Here => None,
            Route::Leader(link) => Some(link.admin),
        })
    }
}

pub fn node_state(n: &crate::model::Node) -> NodeState {
    if n.down {
        NodeState::Down
    } else if n.draining {
        NodeState::Draining
    } else if n.resting_until.is_some() {
        NodeState::Resting
    } else if n.suspect {
        NodeState::Suspect
    } else {
        NodeState::Up
    }
}

pub fn nodes(c: &ClusterModel, now: Instant) -> Vec<NodeInfo> {
    c.nodes()
        .map(|n| NodeInfo {
            name: n.name.clone(),
            address: n.address.clone(),
            state: node_state(n) as i32,
            resources: n.status.resources.clone(),
            models: n.status.models.clone(),
            last_report_ms: now.saturating_duration_since(n.last_report).as_millis() as u64,
            requests_total: n.status.models.iter().map(|m| m.requests_total).sum(),
        })
        .collect()
}

pub fn models(c: &ClusterModel) -> Vec<ModelInfo> {
    c.models()
        .map(|m| {
            let replicas = c
                .replicas_of(&m.name)
                .into_iter()
                .map(|(node, r)| {
                    let status = c
                        .node(&node)
                        .and_then(|n| n.status.models.iter().find(|s| s.name == m.name).cloned())
                        .unwrap_or_default();
                    Replica {
                        node,
                        state: match r.state {
                            ReplicaState::Loading => ModelState::Loading,
                            ReplicaState::Ready => ModelState::Ready,
                        } as i32,
                        memory_bytes: status.memory_bytes,
                        in_flight: status.in_flight,
                        queue_length: status.queue_length,
                        mean_batch_size: status.mean_batch_size,
                        ttl_ms: status.ttl_ms,
                        idle_ms: status.idle_ms,
                        device: r.device.name(),
                    }
                })
                .collect();
            let mut latency = Vec::new();
            let _ = hdrhistogram::serialization::Serializer::serialize(
                &mut hdrhistogram::serialization::V2Serializer::new(),
                &m.latency,
                &mut latency,
            );
            ModelInfo {
                name: m.name.clone(),
                version: m.version,
                digest: m.digest.clone(),
                file_bytes: m.file_bytes,
                settings: Some(ModelSettings {
                    max_batch_size: m.settings.max_batch_size as u32,
                    max_batch_delay_us: m.settings.max_batch_delay.as_micros() as u64,
                    ttl_ms: m.settings.ttl.as_millis(),
                    intra_op_threads: m.settings.intra_op_threads as u32,
                    queue_capacity: m.settings.queue_capacity as u32,
                    max_item_elements: m.settings.max_item_elements,
                    max_queue_bytes: m.settings.max_queue_bytes.unwrap_or(0),
                    max_batch_bytes: m.settings.max_batch_bytes.unwrap_or(0),
                    memory_arena_off: !m.settings.memory_arena,
                    intra_op_spinning_off: !m.settings.intra_op_spinning,
                }),
                policy: Some(ModelPolicy {
                    min_replicas: m.policy.min_replicas,
                    max_replicas: m.policy.max_replicas,
                    device: m.policy.device.to_string(),
                    memory_hint_bytes: m.policy.memory_hint.unwrap_or(0),
                }),
                replicas,
                memory_bytes: m.memory_needed(),
                requests_total: m.requests_total,
                failures_total: m.failures_total,
                cold_starts: m.cold_starts,
                latency_histogram: latency,
                last_placement: m.last_placement.clone(),
            }
        })
        .collect()
}

/// Wants a model (at least one replica, or min_replicas) and waits until one is ready.
pub async fn load(scheduler: &Arc<Scheduler>, model: &str) -> Result<Vec<String>, SchedulerError> {
    crate::rescan::find_new(scheduler, model).await?;
    let actions = scheduler.lock().want_model(model)?;
    scheduler.persist(model).await;
    scheduler.execute(actions);
    let deadline = Instant::now() + scheduler.settings.load_timeout;
    // A load asks for the model where it belongs: never a CPU stand-in.
    let bulk = herd_core::priority::Priority::Bulk;
    drop(scheduler.pick(model, None, deadline, bulk).await?);
    let c = scheduler.lock();
    Ok(c.ready_replicas(model)
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// Unloads every replica of a model; it stays in the catalog, and the next request
/// loads it again. Waits for the agents, so that a failure is the caller's answer.
pub async fn unload(
    scheduler: &Arc<Scheduler>,
    model: &str,
) -> Result<Vec<String>, SchedulerError> {
    let (nodes, actions) = scheduler.lock().unload_model(model, Instant::now())?;
    scheduler.persist(model).await;
    let mut agents = Vec::new();
    {
        let mut links = scheduler.links();
        for action in &actions {
            if let crate::model::Action::Unload { node, .. } = action {
                links.forget_sender(model, node);
                agents.extend(links.link(node).map(|l| l.agent.clone()));
            }
        }
    }
    let rest: Vec<_> = actions
        .into_iter()
        .filter(|a| !matches!(a, crate::model::Action::Unload { .. }))
        .collect();
    for agent in agents {
        crate::executor::unload(agent, model).await?;
    }
    scheduler.execute(rest);
    Ok(nodes)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        Ok(Response::new(ListNodesResponse {
            nodes: nodes(&self.scheduler.lock(), Instant::now()),
        }))
    }

    async fn list_models(
        &self,
        _: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        Ok(Response::new(ListModelsResponse {
            models: models(&self.scheduler.lock()),
        }))
    }

    async fn load_model(
        &self,
        request: Request<AdminLoadRequest>,
    ) -> Result<Response<AdminLoadResponse>, Status> {
        if let Some(mut leader) = self.leader(&request).await? {
            return leader
                .load_model(forwarded(request.into_inner(), None))
                .await;
        }
        let nodes = load(&self.scheduler, &request.into_inner().model).await?;
        Ok(Response::new(AdminLoadResponse { nodes }))
    }

    async fn unload_model(
        &self,
        request: Request<AdminUnloadRequest>,
    ) -> Result<Response<AdminUnloadResponse>, Status> {
        if let Some(mut leader) = self.leader(&request).await? {
            return leader
                .unload_model(forwarded(request.into_inner(), None))
                .await;
        }
        let nodes = unload(&self.scheduler, &request.into_inner().model).await?;
        Ok(Response::new(AdminUnloadResponse { nodes }))
    }

    async fn drain_node(
        &self,
        request: Request<DrainNodeRequest>,
    ) -> Result<Response<DrainNodeResponse>, Status> {
        if let Some(mut leader) = self.leader(&request).await? {
            return leader
                .drain_node(forwarded(request.into_inner(), None))
                .await;
        }
        let node = request.into_inner().node;
        let (moved_models, actions) = self.scheduler.lock().drain(&node)?;
        self.scheduler.execute(actions);
        Ok(Response::new(DrainNodeResponse { moved_models }))
    }

    async fn wake_node(
        &self,
        request: Request<WakeNodeRequest>,
    ) -> Result<Response<WakeNodeResponse>, Status> {
        if let Some(mut leader) = self.leader(&request).await? {
            return leader
                .wake_node(forwarded(request.into_inner(), None))
                .await;
        }
        let node = request.into_inner().node;
        let wake = self.scheduler.wake_node(&node).await?;
        Ok(Response::new(WakeNodeResponse { wake: Some(wake) }))
    }

    async fn rescan(
        &self,
        request: Request<RescanRequest>,
    ) -> Result<Response<RescanResponse>, Status> {
        // Every scheduler reads its own copy of the repository; the leader's reading
        // is the one that loads and unloads.
        let leader = self.leader(&request).await?;
        let mut changed = crate::rescan::once(&self.scheduler).await as u32;
        if let Some(mut leader) = leader {
            let there = leader.rescan(forwarded(RescanRequest {}, None)).await?;
            changed = changed.max(there.into_inner().changed);
        }
        tracing::info!(changed, "model repository read again on request");
        Ok(Response::new(RescanResponse { changed }))
    }

    async fn explain_model(
        &self,
        request: Request<ExplainModelRequest>,
    ) -> Result<Response<ExplainModelResponse>, Status> {
        let r = request.into_inner();
        let memory = (r.memory_bytes > 0).then_some(r.memory_bytes);
        let scheduler = self.scheduler.clone();
        // Placement is CPU work on a large cluster: off the async workers.
        let answer = tokio::task::spawn_blocking(move || {
            crate::explain::explain_model(&scheduler, &r.model, memory)
        })
        .await
        .map_err(|e| Status::internal(format!("explaining failed: {e}")))??;
        Ok(Response::new(answer))
    }

    type WatchStream = ReceiverStream<Result<ClusterUpdate, Status>>;

    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let scheduler = self.scheduler.clone();
        tokio::spawn(async move {
            let mut changes = scheduler.changes();
            let mut next_event = 0;
            loop {
                let update = {
                    let c = scheduler.lock();
                    let (events, next) = c.events().since(next_event);
                    next_event = next;
                    ClusterUpdate {
                        snapshot: Some(ClusterSnapshot {
                            time_ms: now_ms(),
                            nodes: nodes(&c, Instant::now()),
                            models: models(&c),
                        }),
                        events,
                    }
                };
                if tx.send(Ok(update)).await.is_err() {
                    return;
                }
                // At most four updates a second; at least one a second (rates move).
                tokio::time::sleep(Duration::from_millis(250)).await;
                let _ = tokio::time::timeout(Duration::from_millis(750), changes.changed()).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
