//! The `herd.v1.Agent` service: the node's resources and models (for the scheduler and
//! for people), and what the scheduler asks of a node: load a model it placed here
//! (fetching the file by digest when the node has no copy), unload one, and run a
//! batch of inference requests.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use herd_proto::herd::agent_server::Agent as AgentRpc;
use herd_proto::herd::{
    infer_result, AgentStatus, FetchModelRequest, InferBatchRequest, InferBatchResponse,
    InferResult, LoadModelRequest, LoadModelResponse, ModelState, ModelStatus, ReconfigureRequest,
    ReconfigureResponse, RpcStatus, StatusRequest, UnloadModelRequest, UnloadModelResponse,
};
use tonic::{Request, Response, Status};

use crate::cache::{LoadState, Reconfigured};
use crate::error::AgentError;
use crate::execution::Execution;
use crate::files::Chunks;
use crate::trace::RequestId;
use crate::Agent;
use herd_core::digest::valid_digest;
use herd_core::repository::ModelFiles;
use herd_core::settings::{ClusterPolicy, ModelSettings, Ttl};

pub struct ControlService {
    agent: Arc<Agent>,
}

impl ControlService {
    pub fn new(agent: Arc<Agent>) -> ControlService {
        ControlService { agent }
    }
}

/// The agent's status right now.
pub fn snapshot(agent: &Agent) -> AgentStatus {
    // The views list every model of the repository and every assigned one, so their
    // files and the cache make the node's whole inventory: each model is looked up once.
    let views = agent.cache.views();
    let mut files = agent.files.cached();
    let digests: Vec<String> = views
        .iter()
        .map(|v| {
            let f = agent.cache.find(&v.name).ok()?;
            let digest = f
                .digest
                .clone()
                .or_else(|| agent.files.digest_of(&f.path))?;
            files.insert(digest.clone(), f.path);
            Some(digest)
        })
        .map(Option::unwrap_or_default)
        .collect();
    // GPU memory is measured per process: a model's is its worker's.
    let gpu_use = agent.probe.gpu_use();
    let workers: crate::probe::GpuUse = views
        .iter()
        .filter_map(|v| v.process_id)
        .filter_map(|pid| Some((pid, *gpu_use.get(&pid)?)))
        .collect();
    let models = views
        .into_iter()
        .zip(digests)
        .map(|(v, digest)| {
            let mut m = ModelStatus {
                state: match v.state {
                    LoadState::Available => ModelState::Available,
                    LoadState::Loading => ModelState::Loading,
                    LoadState::Ready => ModelState::Ready,
                    LoadState::Unloading => ModelState::Unloading,
                    LoadState::Failed => ModelState::Failed,
                } as i32,
                version: v.version.map(|v| v.to_string()).unwrap_or_default(),
                memory_bytes: v.memory_bytes,
                in_flight: v.in_flight as u32,
                queue_length: v.queue_len as u32,
                max_batch_size: v.max_batch_size as u32,
                ttl_ms: v.ttl.map_or(0, |t| t.as_millis()),
                idle_ms: v.idle.map_or(0, |d| d.as_millis() as u64),
                file_bytes: v.file_bytes,
                name: v.name,
                digest,
                device: Execution::from_gpu(v.gpu).to_string(),
                gpu_memory_bytes: v
                    .process_id
                    .and_then(|pid| workers.get(&pid))
                    .map_or(0, |(_, bytes)| *bytes),
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
                m.requests_total = c.success.count + c.fail.count;
                m.failures_total = c.fail.count;
                m.queue_ns_total = c.queue.ns;
                m.compute_ns_total = c.compute_infer.ns;
                m.request_ns_total = c.success.ns;
            }
            m
        })
        .collect();
    let mut file_digests: Vec<String> = files.into_keys().collect();
    file_digests.sort();
    AgentStatus {
        name: agent.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        resources: Some(agent.probe.sample(&workers)),
        models,
        file_digests,
        instance: agent.instance.clone(),
        wake: agent.wake.get().cloned(),
        sleeping: agent.sleeping.load(std::sync::atomic::Ordering::Relaxed),
    }
}

fn settings_from(
    s: Option<herd_proto::herd::ModelSettings>,
    defaults: &ModelSettings,
) -> ModelSettings {
    let Some(s) = s else {
        return defaults.clone();
    };
    ModelSettings {
        max_batch_size: (s.max_batch_size as usize).max(1),
        max_batch_delay: Duration::from_micros(s.max_batch_delay_us),
        ttl: if s.ttl_ms < 0 {
            Ttl::Never
        } else {
            Ttl::After(Duration::from_millis(s.ttl_ms as u64))
        },
        intra_op_threads: s.intra_op_threads as usize,
        queue_capacity: if s.queue_capacity == 0 {
            defaults.queue_capacity
        } else {
            s.queue_capacity as usize
        },
        max_item_elements: if s.max_item_elements == 0 {
            defaults.max_item_elements
        } else {
            s.max_item_elements
        },
        max_queue_bytes: (s.max_queue_bytes > 0)
            .then_some(s.max_queue_bytes)
            .or(defaults.max_queue_bytes),
        max_batch_bytes: (s.max_batch_bytes > 0)
            .then_some(s.max_batch_bytes)
            .or(defaults.max_batch_bytes),
        memory_arena: !s.memory_arena_off,
        intra_op_spinning: !s.intra_op_spinning_off,
    }
}

impl ControlService {
    /// The local path of the file with `digest`, fetched from the scheduler if the node
    /// holds no good copy. Returns the path and whether it was fetched.
    async fn file(
        &self,
        digest: &str,
        expected_bytes: u64,
    ) -> Result<(std::path::PathBuf, bool), AgentError> {
        let agent = self.agent.clone();
        let wanted = digest.to_string();
        let fetch = move || async move {
            let mut client = agent.scheduler_client().ok_or(AgentError::NoFileSource)?;
            let stream = client
                .fetch_model(FetchModelRequest {
                    digest: wanted,
                    offset: 0,
                })
                .await
                .map_err(AgentError::Upstream)?
                .into_inner();
            Ok::<Chunks, _>(stream.map_err(AgentError::Upstream).boxed())
        };
        let repo = self.agent.cache.repository().clone();
        let local = self
            .agent
            .files
            .obtain(digest, expected_bytes, repo, fetch)
            .await?;
        Ok((local.path, local.fetched))
    }
}

impl ControlService {
    /// Where `source` is to run: the CPU, or a GPU this node reports and can run on.
    fn execution(&self, source: &herd_proto::herd::ModelSource) -> Result<Execution, AgentError> {
        let execution: Execution = source
            .device
            .parse()
            .map_err(|e| AgentError::InvalidInput(format!("load {}: {e}", source.name)))?;
        let Some(index) = execution.gpu() else {
            return Ok(execution);
        };
        let gpus = self.agent.probe.gpus(&Default::default());
        let Some(gpu) = gpus.iter().find(|g| g.index == index) else {
            return Err(AgentError::InvalidInput(format!(
                "load {} on GPU {index}: this node has {} GPU(s)",
                source.name,
                gpus.len()
            )));
        };
        if !gpu.unusable.is_empty() {
            return Err(AgentError::InvalidInput(format!(
                "load {} on GPU {index}: {}",
                source.name, gpu.unusable
            )));
        }
        Ok(execution)
    }

    /// Fetches the files beside an Immich model and reads its processing, before the
    /// model loads: a missing tokenizer fails the load, not each request.
    async fn immich_recipe(
        &self,
        model: &str,
        stage: &herd_proto::herd::ImmichStage,
        model_path: &std::path::Path,
    ) -> Result<(), AgentError> {
        let mut files = std::collections::HashMap::new();
        for side in &stage.files {
            if !valid_digest(&side.digest) {
                return Err(AgentError::InvalidInput(format!(
                    "load {model}: digest {:?} of {} is not a sha256 in hex",
                    side.digest, side.name
                )));
            }
            let (path, _) = self.file(&side.digest, side.file_bytes).await?;
            files.insert(side.name.clone(), path);
        }
        let stage = stage.clone();
        let model_path = model_path.to_path_buf();
        let recipe =
            tokio::task::spawn_blocking(move || crate::immich::recipe(&stage, &files, &model_path))
                .await
                .map_err(|e| AgentError::task("reading an Immich model's files", e))??;
        tracing::info!(
            model,
            stage = recipe.kind.as_str(),
            "immich processing ready"
        );
        self.agent.recipes.insert(model, recipe);
        Ok(())
    }
}

#[tonic::async_trait]
impl AgentRpc for ControlService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<AgentStatus>, Status> {
        let agent = self.agent.clone();
        // Reading /proc and NVML blocks briefly; keep it off the async workers.
        let status = tokio::task::spawn_blocking(move || snapshot(&agent))
            .await
            .map_err(|e| AgentError::task("status probe", e))?;
        Ok(Response::new(status))
    }

    async fn load(
        &self,
        request: Request<LoadModelRequest>,
    ) -> Result<Response<LoadModelResponse>, Status> {
        let source = request
            .into_inner()
            .model
            .ok_or_else(|| AgentError::InvalidInput("load: no model given".into()))?;
        if !valid_digest(&source.digest) {
            return Err(AgentError::InvalidInput(format!(
                "load {}: digest {:?} is not a sha256 in hex",
                source.name, source.digest
            ))
            .into());
        }
        let gpu = self.execution(&source)?.gpu();
        let (path, fetched) = self.file(&source.digest, source.file_bytes).await?;
        if let Some(stage) = &source.immich {
            self.immich_recipe(&source.name, stage, &path).await?;
        }
        let files = ModelFiles {
            name: source.name.clone(),
            version: source.version,
            file_bytes: source.file_bytes,
            settings: settings_from(source.settings, &self.agent.model_defaults),
            policy: ClusterPolicy::default(),
            digest: Some(source.digest.clone()),
            path,
            gpu,
        };
        self.agent.cache.assign(files).await?;
        let loaded = self.agent.cache.load(&source.name).await?;
        Ok(Response::new(LoadModelResponse {
            memory_bytes: loaded.memory_now(),
            fetched,
        }))
    }

    async fn unload(
        &self,
        request: Request<UnloadModelRequest>,
    ) -> Result<Response<UnloadModelResponse>, Status> {
        let name = request.into_inner().name;
        let was_loaded = self.agent.cache.unload(&name).await?;
        Ok(Response::new(UnloadModelResponse { was_loaded }))
    }

    async fn reconfigure(
        &self,
        request: Request<ReconfigureRequest>,
    ) -> Result<Response<ReconfigureResponse>, Status> {
        let r = request.into_inner();
        let settings = settings_from(r.settings, &self.agent.model_defaults);
        let applied = match self.agent.cache.reconfigure(&r.name, settings).await? {
            Reconfigured::Live => "live",
            Reconfigured::NewWorker => "new worker",
            Reconfigured::NotLoaded => "not loaded",
        };
        Ok(Response::new(ReconfigureResponse {
            applied: applied.to_string(),
        }))
    }

    async fn infer_batch(
        &self,
        request: Request<InferBatchRequest>,
    ) -> Result<Response<InferBatchResponse>, Status> {
        let items = request.into_inner().items;
        // All items go in at once, so the model's batcher can run them together.
        let runs = items.into_iter().map(|item| {
            let agent = self.agent.clone();
            async move {
                let Some(request) = item.request else {
                    return Err(AgentError::InvalidInput("empty batch item".into()));
                };
                let id = RequestId::from_caller(Some(&item.request_id));
                // A deadline too far to name is none.
                let deadline = (item.timeout_us > 0)
                    .then(|| {
                        tokio::time::Instant::now()
                            .checked_add(Duration::from_micros(item.timeout_us))
                    })
                    .flatten();
                let priority = herd_core::priority::Priority::from_u32(item.priority);
                if crate::immich::stage_of(&request).is_some() {
                    return crate::immich::infer(&agent, request, id, deadline, priority).await;
                }
                crate::service::infer(&agent, request, id, deadline, priority).await
            }
        });
        let results = futures::future::join_all(runs)
            .await
            .into_iter()
            .map(|r| InferResult {
                result: Some(match r {
                    Ok(response) => infer_result::Result::Response(response),
                    Err(e) => infer_result::Result::Error(RpcStatus {
                        code: e.code() as i32,
                        message: e.to_string(),
                    }),
                }),
            })
            .collect();
        Ok(Response::new(InferBatchResponse { results }))
    }
}
