//! The client-facing KServe v2 / Triton inference service: the cluster answers as one
//! Triton. Inference is routed to replicas; metadata comes from a replica; statistics
//! and the repository index add up over replicas.

use std::collections::BTreeMap;
use std::sync::Arc;

use herd_core::auth::RequireToken;
use herd_core::layers::deadline::{parse_grpc_timeout, GRPC_TIMEOUT};
use herd_core::layers::RequestId;
use herd_core::priority;
use herd_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use herd_proto::inference::repository_index_response::ModelIndex;
use herd_proto::inference::*;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::agent_link::InferenceRpc;
use crate::error::SchedulerError;
use crate::forward::{election_deadline, forwarded, was_forwarded, LeaderInference, Route};
use crate::model::ReplicaState;
use crate::router::Picked;
use crate::state::Scheduler;

pub struct Gateway {
    scheduler: Arc<Scheduler>,
    /// Loading and unloading through the repository API are admin calls.
    admin: RequireToken,
}

impl Gateway {
    pub fn new(scheduler: Arc<Scheduler>) -> Gateway {
        let admin = RequireToken::new(
            Some(scheduler.settings.token.clone()),
            "model load and unload calls",
        );
        Gateway { scheduler, admin }
    }

    /// The leader's inference service when this scheduler does not lead.
    async fn leader<T>(&self, request: &Request<T>) -> Result<Option<LeaderInference>, Status> {
        self.leader_of(was_forwarded(request)).await
    }

    async fn leader_of(&self, forwarded: bool) -> Result<Option<LeaderInference>, Status> {
        let route = self
            .scheduler
            .leader_route(forwarded, election_deadline())
            .await?;
        Ok(match route {
            Route::Here => None,
            Route::Leader(link) => Some(link.inference),
        })
    }

    /// Who answers a metadata or config call for model `name`: the agent of a ready
    /// replica (picked, and held while the call runs), or the leader, the call marked
    /// forwarded, when this follower sees none ready.
    async fn describer<M>(
        &self,
        name: &str,
        request: Request<M>,
    ) -> Result<(InferenceRpc, Request<M>, Option<Picked>), Status> {
        let forwarded_here = was_forwarded(&request);
        let describe = herd_core::priority::Priority::Interactive;
        match self
            .scheduler
            .pick(name, None, self.deadline(), describe)
            .await
        {
            Err(SchedulerError::ToLeader) if !forwarded_here => {
                let Some(leader) = self.leader_of(false).await? else {
                    return Err(SchedulerError::ToLeader.into());
                };
                Ok((leader, forwarded(request.into_inner(), None), None))
            }
            picked => {
                let picked = picked?;
                let inference = picked.link.inference.clone();
                Ok((inference, Request::new(request.into_inner()), Some(picked)))
            }
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.scheduler.settings.load_timeout
    }
}

/// The client's grpc-timeout, so that the deadline travels on to the agent.
fn timeout_of<T>(request: &Request<T>) -> Option<std::time::Duration> {
    parse_grpc_timeout(request.metadata().get(GRPC_TIMEOUT)?.as_bytes())
}

fn add(a: &mut Option<StatisticDuration>, b: &Option<StatisticDuration>) {
    if let Some(b) = b {
        let a = a.get_or_insert_with(StatisticDuration::default);
        a.count += b.count;
        a.ns += b.ns;
    }
}

fn merge(into: &mut ModelStatistics, s: &ModelStatistics) {
    into.last_inference = into.last_inference.max(s.last_inference);
    into.inference_count += s.inference_count;
    into.execution_count += s.execution_count;
    let i = into
        .inference_stats
        .get_or_insert_with(InferStatistics::default);
    if let Some(o) = &s.inference_stats {
        add(&mut i.success, &o.success);
        add(&mut i.fail, &o.fail);
        add(&mut i.queue, &o.queue);
        add(&mut i.compute_input, &o.compute_input);
        add(&mut i.compute_infer, &o.compute_infer);
        add(&mut i.compute_output, &o.compute_output);
    }
    for b in &s.batch_stats {
        match into
            .batch_stats
            .iter_mut()
            .find(|x| x.batch_size == b.batch_size)
        {
            Some(x) => add(&mut x.compute_infer, &b.compute_infer),
            None => into.batch_stats.push(*b),
        }
    }
    into.memory_usage.extend(s.memory_usage.iter().cloned());
}

#[tonic::async_trait]
impl GrpcInferenceService for Gateway {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let c = self.scheduler.lock();
        let ready = c
            .model(&r.name)
            .is_some_and(|m| r.version.is_empty() || r.version == m.version.to_string())
            && !c.ready_replicas(&r.name).is_empty();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(herd_core::metadata::server_metadata()))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let name = request.get_ref().name.clone();
        let (mut to, request, _picked) = self.describer(&name, request).await?;
        to.model_metadata(request).await
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let timeout = timeout_of(&request);
        // The server's request-id layer has chosen this call's id (and echoes it to the
        // client); a call that bypasses the layers gets the same rule here.
        let id = RequestId::of(&request);
        let named = request
            .metadata()
            .get(priority::HEADER)
            .map(|v| v.as_bytes());
        let class = priority::of(named, &request.get_ref().parameters)
            .map_err(SchedulerError::BadPriority)?;
        let forwarded = crate::forward::was_forwarded(&request);
        let request = request.into_inner();
        let span = tracing::info_span!("request", request_id = %id, model = %request.model_name, priority = class.as_str());
        let response = self
            .scheduler
            .infer(request, timeout, id.as_str(), class, forwarded)
            .instrument(span)
            .await?;
        Ok(Response::new(response))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        let name = request.get_ref().name.clone();
        let (mut to, request, _picked) = self.describer(&name, request).await?;
        to.model_config(request).await
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let (names, up) = {
            let c = self.scheduler.lock();
            if !r.name.is_empty() && c.model(&r.name).is_none() {
                return Err(SchedulerError::UnknownModel(r.name.clone()).into());
            }
            let names: Vec<(String, u64)> = c
                .models()
                .filter(|m| r.name.is_empty() || m.name == r.name)
                .map(|m| (m.name.clone(), m.version))
                .collect();
            let up: Vec<String> = c
                .nodes()
                .filter(|n| !n.down)
                .map(|n| n.name.clone())
                .collect();
            (names, up)
        };
        let links: Vec<_> = {
            let links = self.scheduler.links();
            up.iter().filter_map(|n| links.link(n).cloned()).collect()
        };
        let mut totals: BTreeMap<String, ModelStatistics> = names
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    ModelStatistics {
                        name: n.clone(),
                        version: v.to_string(),
                        inference_stats: Some(InferStatistics::default()),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let asks = links.into_iter().map(|link| {
            let mut inference = link.inference;
            let name = r.name.clone();
            async move {
                inference
                    .model_statistics(ModelStatisticsRequest {
                        name,
                        version: String::new(),
                    })
                    .await
                    .map(|r| r.into_inner().model_stats)
                    .unwrap_or_default()
            }
        });
        for stats in futures::future::join_all(asks).await {
            for s in stats {
                if let Some(t) = totals.get_mut(&s.name) {
                    merge(t, &s);
                }
            }
        }
        Ok(Response::new(ModelStatisticsResponse {
            model_stats: totals.into_values().collect(),
        }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let only_ready = request.into_inner().ready;
        let c = self.scheduler.lock();
        let models = c
            .models()
            .map(|m| {
                let replicas = c.replicas_of(&m.name);
                let ready = replicas.iter().any(|(_, r)| r.state == ReplicaState::Ready);
                let state = if ready {
                    "READY"
                } else if !replicas.is_empty() {
                    "LOADING"
                } else {
                    "UNAVAILABLE"
                };
                ModelIndex {
                    name: m.name.clone(),
                    version: m.version.to_string(),
                    state: state.to_string(),
                    reason: m
                        .unplaceable
                        .clone()
                        .or_else(|| m.load_error.clone())
                        .unwrap_or_default(),
                }
            })
            .filter(|i| !only_ready || i.state == "READY")
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        self.admin.check(&request)?;
        if let Some(mut leader) = self.leader(&request).await? {
            return leader
                .repository_model_load(forwarded(request.into_inner(), None))
                .await;
        }
        crate::admin::load(&self.scheduler, &request.into_inner().model_name).await?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        self.admin.check(&request)?;
        if let Some(mut leader) = self.leader(&request).await? {
            return leader
                .repository_model_unload(forwarded(request.into_inner(), None))
                .await;
        }
        crate::admin::unload(&self.scheduler, &request.into_inner().model_name).await?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}
