//! The `herd.v1.Agent` service: the node's resources and its models, for the
//! scheduler and for people.

use std::sync::Arc;

use herd_proto::herd::agent_server::Agent as AgentRpc;
use herd_proto::herd::{AgentStatus, ModelState, ModelStatus, StatusRequest};
use tonic::{Request, Response, Status};

use crate::cache::State;
use crate::Agent;

pub struct StatusService {
    agent: Arc<Agent>,
}

impl StatusService {
    pub fn new(agent: Arc<Agent>) -> StatusService {
        StatusService { agent }
    }
}

/// The agent's status right now.
pub fn snapshot(agent: &Agent) -> AgentStatus {
    let models = agent
        .cache
        .views()
        .into_iter()
        .map(|v| {
            let mut m = ModelStatus {
                state: match v.state {
                    State::Available => ModelState::Available,
                    State::Loading => ModelState::Loading,
                    State::Ready => ModelState::Ready,
                    State::Unloading => ModelState::Unloading,
                    State::Failed => ModelState::Failed,
                } as i32,
                version: v.version.map(|v| v.to_string()).unwrap_or_default(),
                memory_bytes: v.memory_bytes,
                in_flight: v.in_flight as u32,
                queue_length: v.queue_len as u32,
                ttl_ms: v.ttl.map_or(0, |t| t.as_millis()),
                idle_ms: v.idle.map_or(0, |d| d.as_millis() as u64),
                file_bytes: v.file_bytes,
                name: v.name,
                ..Default::default()
            };
            if let Some(stats) = &v.stats {
                m.latency_histogram = stats.serialized_latency();
                let c = stats.lock();
                m.runs = c.execution_count;
                m.inference_count = c.inference_count;
                m.mean_batch_size = if c.execution_count > 0 {
                    c.inference_count as f64 / c.execution_count as f64
                } else {
                    0.0
                };
                m.loads = c.loads;
                m.last_error = c.last_error.clone().unwrap_or_default();
            }
            m
        })
        .collect();
    AgentStatus {
        name: agent.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        resources: Some(agent.probe.sample()),
        models,
    }
}

#[tonic::async_trait]
impl AgentRpc for StatusService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<AgentStatus>, Status> {
        let agent = self.agent.clone();
        // Reading /proc and NVML blocks briefly; keep it off the async workers.
        let status = tokio::task::spawn_blocking(move || snapshot(&agent))
            .await
            .map_err(|e| Status::internal(format!("status probe failed: {e}")))?;
        Ok(Response::new(status))
    }
}
