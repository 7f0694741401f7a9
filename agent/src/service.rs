//! The KServe v2 / Triton gRPC inference service of one agent.

use std::sync::Arc;

use herd_core::layers::deadline::{parse_grpc_timeout, GRPC_TIMEOUT};
use herd_core::priority::{self, Priority};
use herd_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use herd_proto::inference::model_infer_response::InferOutputTensor;
use herd_proto::inference::model_metadata_response::TensorMetadata;
use herd_proto::inference::repository_index_response::ModelIndex;
use herd_proto::inference::*;
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use tracing::{debug, warn, Instrument};

use crate::cache::{Lease, LoadState};
use crate::error::AgentError;
use crate::trace::{request_span, RequestId, REQUEST_ID_HEADER};
use crate::validate::{validate_within, RequestLimits};
use crate::Agent;
use herd_core::tensor::TensorSpec;

pub struct InferenceService {
    agent: Arc<Agent>,
}

impl InferenceService {
    pub fn new(agent: Arc<Agent>) -> InferenceService {
        InferenceService { agent }
    }

    fn lease(&self, name: &str, version: &str) -> Result<Lease, AgentError> {
        lease(&self.agent, name, version)
    }
}

fn metadata(specs: &[TensorSpec]) -> Vec<TensorMetadata> {
    specs
        .iter()
        .map(|s| TensorMetadata {
            name: s.name.clone(),
            datatype: s.dtype.as_str().to_string(),
            shape: s.shape.clone(),
        })
        .collect()
}

/// Runs one inference request: the model loaded if needed, the request validated,
/// batched with others and answered, by `deadline` when one is given (the model's
/// runner refuses at once what it cannot answer by then). Also used for each item of a
/// scheduler's batch. It runs in a span of its own, named by `id`.
pub async fn infer(
    agent: &Agent,
    r: ModelInferRequest,
    id: RequestId,
    deadline: Option<Instant>,
    priority: Priority,
) -> Result<ModelInferResponse, AgentError> {
    let span = request_span(&id, &r.model_name, priority);
    let run = infer_in_span(agent, r, id, deadline, priority);
    let result = match deadline {
        None => run.instrument(span.clone()).await,
        Some(deadline) => tokio::time::timeout_at(deadline, run)
            .instrument(span.clone())
            .await
            .unwrap_or(Err(AgentError::DeadlineExceeded)),
    };
    if let Err(e) = &result {
        span.in_scope(|| match e.code() {
            Code::Internal | Code::FailedPrecondition | Code::Unavailable => {
                warn!(error = %e, "request failed")
            }
            _ => debug!(error = %e, "request refused"),
        });
    }
    result
}

async fn infer_in_span(
    agent: &Agent,
    r: ModelInferRequest,
    id: RequestId,
    deadline: Option<Instant>,
    priority: Priority,
) -> Result<ModelInferResponse, AgentError> {
    let lease = lease(agent, &r.model_name, &r.model_version)?;
    let loaded = lease.ready().await?;
    let model_name = r.model_name.clone();
    let response_id = r.id.clone();
    let limits = RequestLimits {
        max_batch_size: loaded.max_batch_size,
        max_item_elements: loaded
            .max_item_elements
            .load(std::sync::atomic::Ordering::Relaxed),
    };
    let valid = validate_within(&model_name, &loaded.spec, limits, r)?;
    let requested = valid.outputs.clone();
    let reply = loaded.runner.submit_as(valid, id, deadline, priority)?;
    let outputs = reply
        .await
        .map_err(|_| AgentError::Stopped(model_name.clone()))??;
    let mut response = ModelInferResponse {
        model_name,
        model_version: lease.files().version.to_string(),
        id: response_id,
        ..Default::default()
    };
    for (index, tensor) in requested.into_iter().zip(outputs) {
        response.outputs.push(InferOutputTensor {
            name: loaded.spec.outputs[index].name.clone(),
            datatype: tensor.dtype.as_str().to_string(),
            shape: tensor.shape,
            ..Default::default()
        });
        response.raw_output_contents.push(tensor.data);
    }
    Ok(response)
}

/// A hold on the model a request names, checking the version if one is given.
fn lease(agent: &Agent, name: &str, version: &str) -> Result<Lease, AgentError> {
    let lease = agent.cache.lease(name)?;
    let served = lease.files().version;
    if !version.is_empty() && version != served.to_string() {
        return Err(AgentError::VersionNotFound {
            model: name.to_string(),
            version: version.to_string(),
            served,
        });
    }
    Ok(lease)
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
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
        let ready = self.agent.cache.is_loaded(&r.name)
            && (r.version.is_empty()
                || self
                    .agent
                    .cache
                    .find(&r.name)
                    .is_ok_and(|f| f.version.to_string() == r.version));
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
        let r = request.into_inner();
        let lease = self.lease(&r.name, &r.version)?;
        let loaded = lease.ready().await?;
        Ok(Response::new(ModelMetadataResponse {
            name: r.name,
            versions: vec![lease.files().version.to_string()],
            platform: "onnxruntime_onnx".to_string(),
            inputs: metadata(&loaded.spec.inputs),
            outputs: metadata(&loaded.spec.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        // The server's request-id layer has already chosen this call's id; keep it, so
        // the `grpc` span and the `request` span name the same request.
        let id = RequestId::of(&request);
        let header = id.as_str().parse().ok();
        // The caller's deadline: the server's deadline layer ends the call then; the
        // runner needs it too, to refuse at once what it cannot answer in time.
        let deadline = request
            .metadata()
            .get(GRPC_TIMEOUT)
            .and_then(|v| parse_grpc_timeout(v.as_bytes()))
            .and_then(|timeout| Instant::now().checked_add(timeout));
        let named = request
            .metadata()
            .get(priority::HEADER)
            .map(|v| v.as_bytes());
        let class =
            priority::of(named, &request.get_ref().parameters).map_err(AgentError::BadPriority)?;
        let r = request.into_inner();
        let mut response = Response::new(infer(&self.agent, r, id, deadline, class).await?);
        if let Some(header) = header {
            response.metadata_mut().insert(REQUEST_ID_HEADER, header);
        }
        Ok(response)
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let lease = self.lease(&r.name, &r.version)?;
        let loaded = lease.ready().await?;
        let batched = loaded.spec.batchable();
        // Triton leaves the batch dimension out of `dims` when max_batch_size > 0.
        let dims = |s: &TensorSpec| s.shape[usize::from(batched)..].to_vec();
        let settings = &lease.files().settings;
        let config = ModelConfig {
            name: r.name,
            platform: "onnxruntime_onnx".to_string(),
            backend: "onnxruntime".to_string(),
            max_batch_size: if batched {
                loaded.max_batch_size as i32
            } else {
                0
            },
            input: loaded
                .spec
                .inputs
                .iter()
                .map(|s| ModelInput {
                    name: s.name.clone(),
                    data_type: s.dtype.config_type() as i32,
                    dims: dims(s),
                })
                .collect(),
            output: loaded
                .spec
                .outputs
                .iter()
                .map(|s| ModelOutput {
                    name: s.name.clone(),
                    data_type: s.dtype.config_type() as i32,
                    dims: dims(s),
                })
                .collect(),
            dynamic_batching: batched.then(|| ModelDynamicBatching {
                preferred_batch_size: Vec::new(),
                max_queue_delay_microseconds: settings.max_batch_delay.as_micros() as u64,
            }),
        };
        Ok(Response::new(ModelConfigResponse {
            config: Some(config),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let names: Vec<(String, String)> = if r.name.is_empty() {
            self.agent
                .cache
                .views()
                .into_iter()
                .filter(|v| v.stats.is_some())
                .map(|v| (v.name, v.version.map(|v| v.to_string()).unwrap_or_default()))
                .collect()
        } else {
            let files = self.agent.cache.find(&r.name)?;
            vec![(r.name.clone(), files.version.to_string())]
        };
        let model_stats = names
            .into_iter()
            .map(|(name, version)| {
                let stats = self.agent.cache.stats(&name).unwrap_or_default();
                let c = stats.lock();
                let d = |t: crate::stats::Total| StatisticDuration {
                    count: t.count,
                    ns: t.ns,
                };
                ModelStatistics {
                    name,
                    version,
                    last_inference: c.last_inference_ms,
                    inference_count: c.inference_count,
                    execution_count: c.execution_count,
                    inference_stats: Some(InferStatistics {
                        success: Some(d(c.success)),
                        fail: Some(d(c.fail)),
                        queue: Some(d(c.queue)),
                        compute_infer: Some(d(c.compute_infer)),
                        ..Default::default()
                    }),
                    batch_stats: c
                        .batches
                        .iter()
                        .map(|(&batch_size, &t)| InferBatchStatistics {
                            batch_size,
                            compute_infer: Some(d(t)),
                            ..Default::default()
                        })
                        .collect(),
                    memory_usage: vec![MemoryUsage {
                        r#type: "CPU".to_string(),
                        id: 0,
                        byte_size: c.memory_bytes,
                    }],
                }
            })
            .collect();
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let only_ready = request.into_inner().ready;
        let models = self
            .agent
            .cache
            .views()
            .into_iter()
            .filter(|v| !only_ready || v.state == LoadState::Ready)
            .map(|v| {
                let (state, reason) = match v.state {
                    LoadState::Ready => ("READY", String::new()),
                    LoadState::Loading => ("LOADING", String::new()),
                    LoadState::Unloading => ("UNLOADING", String::new()),
                    LoadState::Available => ("UNAVAILABLE", "unloaded".to_string()),
                    LoadState::Failed => (
                        "UNAVAILABLE",
                        v.stats
                            .as_ref()
                            .and_then(|s| s.lock().last_error.clone())
                            .unwrap_or_default(),
                    ),
                };
                let version = v
                    .version
                    .or_else(|| self.agent.cache.find(&v.name).ok().map(|f| f.version))
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                ModelIndex {
                    name: v.name,
                    version,
                    state: state.to_string(),
                    reason,
                }
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        let r = request.into_inner();
        self.agent.cache.load(&r.model_name).await?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let r = request.into_inner();
        self.agent.cache.unload(&r.model_name).await?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}
