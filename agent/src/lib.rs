//! herd's node agent: serves the ONNX models of a repository over the KServe v2 /
//! Triton gRPC protocol, loading them on demand, batching concurrent requests and
//! unloading models left idle.

pub mod batch;
pub mod batcher;
pub mod cache;
pub mod config;
pub mod error;
pub mod memory;
pub mod onnx;
pub mod probe;
pub mod process;
pub mod repository;
pub mod runner;
pub mod service;
pub mod session;
pub mod settings;
pub mod stats;
pub mod status;
pub mod tensor;
pub mod validate;
pub mod wire;
pub mod worker;

use std::future::Future;
use std::sync::Arc;

use herd_proto::herd::agent_server::AgentServer;
use herd_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

pub use cache::ModelCache;
pub use config::AgentConfig;
pub use repository::Repository;
pub use settings::ModelSettings;

/// One agent: its models and what it knows of its node.
pub struct Agent {
    pub name: String,
    pub cache: ModelCache,
    pub probe: probe::Probe,
    pub max_message_size: usize,
}

/// What an agent needs besides its inference engine; tests build it directly.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub name: String,
    pub model_repository: std::path::PathBuf,
    pub model_defaults: ModelSettings,
    pub memory_limit: Option<u64>,
    pub max_message_size: usize,
}

impl AgentOptions {
    pub fn from_config(config: &AgentConfig) -> AgentOptions {
        AgentOptions {
            name: config.name.clone().unwrap_or_else(default_name),
            model_repository: config.model_repository.clone(),
            model_defaults: config.model_defaults(),
            memory_limit: config.memory_limit.map(|b| b.as_u64()),
            max_message_size: config.max_message_size.as_u64().min(usize::MAX as u64) as usize,
        }
    }
}

fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "agent".to_string())
}

impl Agent {
    pub fn new(options: AgentOptions, loader: Arc<dyn session::Loader>) -> Arc<Agent> {
        let repo = Repository::new(options.model_repository, options.model_defaults);
        Arc::new(Agent {
            name: options.name,
            cache: ModelCache::new(repo, loader),
            probe: probe::Probe::new(options.memory_limit),
            max_message_size: options.max_message_size,
        })
    }
}

/// Serves the agent's gRPC services on `listener` until `shutdown` completes.
pub async fn serve(
    agent: Arc<Agent>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let size = agent.max_message_size;
    let inference = GrpcInferenceServiceServer::new(service::InferenceService::new(agent.clone()))
        .max_decoding_message_size(size)
        .max_encoding_message_size(size);
    let status = AgentServer::new(status::StatusService::new(agent));
    // Nagle's algorithm on accepted sockets delays replies by ~40 ms (the builder's
    // tcp_nodelay applies only to listeners it binds itself).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(inference)
        .add_service(status)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Runs an agent as `herd agent` does, loading models with `loader` (worker
/// processes, already checked), until `shutdown` completes.
pub async fn run(
    config: AgentConfig,
    loader: Arc<dyn session::Loader>,
    onnxruntime: String,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let options = AgentOptions::from_config(&config);
    let models =
        Repository::new(options.model_repository.clone(), ModelSettings::default()).names();
    tracing::info!(
        addr = %listener.local_addr().map_or_else(|_| config.listen.to_string(), |a| a.to_string()),
        name = %options.name,
        repository = %options.model_repository.display(),
        models = models.len(),
        onnxruntime = %onnxruntime,
        "agent serving"
    );
    if models.is_empty() {
        tracing::warn!(
            repository = %options.model_repository.display(),
            "no models found: expected DIR/<name>/<version>/model.onnx"
        );
    }
    let agent = Agent::new(options, loader);
    serve(agent, listener, shutdown).await
}
