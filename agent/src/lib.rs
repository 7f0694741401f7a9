//! herd's node agent: serves ONNX models over the KServe v2 / Triton gRPC protocol,
//! loading them on demand, batching concurrent requests and unloading models left
//! idle; alone on a model repository, or as a node of a scheduler's cluster.

mod batch;
mod batcher;
mod cache;
pub mod certify;
mod config;
mod control;
mod error;
mod execution;
#[cfg(test)]
mod fake;
mod files;
mod http;
mod idle;
mod immich;
mod isolate;
mod memory;
mod onnx;
mod onnx_metadata;
mod probe;
mod process;
mod runner;
mod scheduler_link;
mod service;
mod session;
mod sleep;
mod stats;
mod trace;
mod validate;
mod wire;
mod worker;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use herd_core::incoming::{incoming, raise_open_file_limit, ConnectionLimits};
use herd_proto::herd::agent_server::AgentServer;
use herd_proto::herd::scheduler_client::SchedulerClient;
use herd_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

// The agent's entry points; everything else stays inside the crate.
pub use batch::NotBatched;
pub use cache::{CachedModel, Lease, LoadState, Loaded, ModelCache, NodeBudget};
pub use config::{AgentConfig, ConfigError, NodeFlags};
pub use error::{AgentError, BatchError, RunError};
pub use files::FileError;
pub use herd_core::{ModelSettings, Repository};
pub use http::serve_http;
pub use memory::return_large_allocations;
pub use onnx::{OrtError, OrtRuntime};
pub use process::{ProcessLoader, WorkerError, WorkerProgram};
pub use runner::admission::TooLate;
pub use runner::budget::{ByteBudget, OverBudget, Scope as BudgetScope};
pub use runner::Runner;
pub use scheduler_link::{join_and_report, JoinRefused, Link};
pub use session::{LoadError, Loader, Session, SessionError};
pub use trace::{RequestId, REQUEST_ID_HEADER};
pub use validate::{validate, validate_within, RequestLimits, ValidRequest};
pub use worker::serve as serve_worker;

pub(crate) type SchedulerRpc =
    SchedulerClient<InterceptedService<Channel, herd_core::auth::SendToken>>;

/// One agent: its models and what it knows of its node.
pub struct Agent {
    pub name: String,
    /// Random, one per process: the scheduler checks an advertised address by asking it
    /// for this.
    pub instance: String,
    pub cache: ModelCache,
    pub probe: probe::Probe,
    pub files: files::FileStore,
    pub model_defaults: ModelSettings,
    pub max_message_size: usize,
    pub token: Option<String>,
    /// On when inference calls need the token: by --require-token-for-inference, or once
    /// the scheduler says so at join.
    pub require_token_for_inference: herd_core::layers::auth::TokenSwitch,
    /// The scheduler's connection once joined: model files are fetched through it.
    /// Connections to the schedulers it has joined, by address, latest last: model
    /// files come from the latest (all of one cluster serve the same repository).
    scheduler: Mutex<Vec<(String, SchedulerRpc)>>,
    /// How the scheduler wakes this machine from sleep (--wake-mac), told in every
    /// status.
    pub wake: std::sync::OnceLock<herd_proto::herd::WakeOnLan>,
    /// About to sleep (--sleep-after), told in every status meanwhile.
    pub sleeping: std::sync::atomic::AtomicBool,
    /// Whether the last report the scheduler took said `sleeping`.
    pub reported_sleeping: tokio::sync::watch::Sender<bool>,
    /// Immich's processing for the models of an Immich cache loaded here.
    pub(crate) recipes: immich::Recipes,
}

/// What an agent needs besides its inference engine; tests build it directly.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub name: String,
    /// Empty path: no repository (models come from the scheduler).
    pub model_repository: PathBuf,
    pub model_defaults: ModelSettings,
    pub memory_limit: Option<u64>,
    pub max_message_size: usize,
    pub token: Option<String>,
    pub require_token_for_inference: bool,
    /// Fetched model files go to `<data_dir>/models`.
    pub data_dir: Option<PathBuf>,
    /// Bytes of inputs requests in flight may hold, all models together; `None`: a
    /// quarter of the memory the node offers.
    pub max_in_flight_bytes: Option<u64>,
}

impl AgentOptions {
    pub fn from_config(config: &AgentConfig) -> AgentOptions {
        AgentOptions {
            name: config.node.name.clone().unwrap_or_else(default_name),
            model_repository: config.model_repository.clone().unwrap_or_default(),
            model_defaults: config.model_defaults(),
            memory_limit: config.node.memory_limit.map(|b| b.as_u64()),
            max_message_size: config.max_message_size.as_u64().min(usize::MAX as u64) as usize,
            token: config.token.clone(),
            require_token_for_inference: config.require_token_for_inference,
            data_dir: Some(config.data_dir.clone().unwrap_or_else(default_data_dir)),
            max_in_flight_bytes: config.max_in_flight_bytes.map(|b| b.as_u64()),
        }
    }
}

pub use herd_core::paths::{default_data_dir, default_name};

impl Agent {
    pub fn new(options: AgentOptions, loader: Arc<dyn session::Loader>) -> Arc<Agent> {
        let repo = Repository::new(options.model_repository, options.model_defaults.clone());
        let probe = probe::Probe::new(options.memory_limit, loader.gpu_support());
        let budget = NodeBudget::new(probe.offered_memory(), options.max_in_flight_bytes);
        Arc::new(Agent {
            name: options.name,
            instance: format!("{:016x}", rand::random::<u64>()),
            cache: ModelCache::with_budget(repo, loader, budget),
            probe,
            files: files::FileStore::new(options.data_dir.map(|d| d.join("models"))),
            model_defaults: options.model_defaults,
            max_message_size: options.max_message_size,
            token: options.token,
            require_token_for_inference: options.require_token_for_inference.into(),
            scheduler: Mutex::new(Vec::new()),
            wake: std::sync::OnceLock::new(),
            sleeping: std::sync::atomic::AtomicBool::new(false),
            reported_sleeping: tokio::sync::watch::Sender::new(false),
            recipes: Default::default(),
        })
    }

    pub fn scheduler_client(&self) -> Option<SchedulerRpc> {
        let clients = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
        clients.last().map(|(_, c)| c.clone())
    }

    /// The scheduler at `address` was joined.
    pub fn set_scheduler_client(&self, address: &str, client: SchedulerRpc) {
        let mut clients = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain(|(a, _)| a != address);
        clients.push((address.to_string(), client));
    }

    /// The scheduler at `address` stopped answering: files come from another.
    pub fn forget_scheduler_client(&self, address: &str) {
        let mut clients = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() > 1 {
            clients.retain(|(a, _)| a != address);
        }
    }
}

use herd_core::limits::batch_message;

/// Serves the agent's gRPC services on `listener` until `shutdown` completes; over TLS
/// with `tls` (the certificate the scheduler gave this agent).
pub async fn serve(
    agent: Arc<Agent>,
    listener: TcpListener,
    tls: Option<&herd_core::tls::Identity>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let size = agent.max_message_size;
    let inference = GrpcInferenceServiceServer::new(service::InferenceService::new(agent.clone()))
        .max_decoding_message_size(size)
        .max_encoding_message_size(size);
    // A scheduler's batch carries many requests at once.
    let control = AgentServer::new(control::ControlService::new(agent.clone()))
        .max_decoding_message_size(batch_message(size))
        .max_encoding_message_size(batch_message(size));
    // Token, request id, metrics, an in-flight backstop and deadlines, for every call.
    // The bytes backstop sheds requests before they are read into memory: the runners'
    // budget of bytes in flight (which names the model and the budget when it refuses)
    // plus one message, for what is read but not yet counted there.
    let in_flight_bytes = agent
        .cache
        .budget()
        .in_flight
        .limit()
        .saturating_add(size as u64);
    let layers = herd_core::layers::ServerStack::new(herd_core::layers::TokenRule::agent(
        agent.token.clone(),
        agent.require_token_for_inference.clone(),
    ))
    .max_in_flight(herd_core::limits::MAX_IN_FLIGHT)
    .max_in_flight_bytes(usize::try_from(in_flight_bytes).unwrap_or(usize::MAX))
    .early_refusal(early_refusal(agent.cache.clone()));
    // Connections bounded, idle ones closed, accept errors backed off; the accepted
    // sockets without Nagle's delay (~40 ms per reply otherwise).
    let limits = ConnectionLimits::for_open_files(raise_open_file_limit());
    let mut builder = herd_core::incoming::server_builder();
    if let Some(identity) = tls {
        builder = builder.tls_config(herd_core::tls::tonic_server(identity))?;
    }
    builder
        .layer(layers)
        .add_service(inference)
        .add_service(control)
        .serve_with_incoming_shutdown(incoming(listener, limits), shutdown)
        .await
}

/// Refuses, from its first bytes, a request its loaded model would refuse once read:
/// under overload that is most requests, and reading each whole first took the CPU
/// the model needed. A model not loaded yet is left to the service.
fn early_refusal(cache: cache::ModelCache) -> herd_core::layers::early_refusal::Admit {
    Arc::new(move |peek| match cache.loaded_now(peek.model) {
        Some(loaded) => Ok(loaded.runner.check_admission(peek.bytes, peek.timeout)?),
        None => Ok(()),
    })
}

/// Runs an agent as `herd agent` does, loading models with `loader` (worker
/// processes, already checked), until `shutdown` completes. With --scheduler it joins
/// the cluster; a refused token ends it with an error, and so do per-model default
/// flags, which only an agent alone uses.
pub async fn run(
    config: AgentConfig,
    loader: Arc<dyn session::Loader>,
    onnxruntime: String,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    config.check()?;
    let mut config = config.with_token_from_file()?;
    // A join token authenticates with its secret and pins the CA.
    let token = config
        .token
        .as_deref()
        .map(herd_core::tls::JoinToken::parse);
    config.token = token.as_ref().map(|t| t.secret.clone());
    let ca_file = match &config.ca_cert {
        Some(path) => Some(herd_core::tls::read_ca_file(path).map_err(ConfigError::from)?),
        None => None,
    };
    let trust = herd_core::tls::Trust::from_parts(ca_file, token.as_ref());
    // With a scheduler to trust, the agent serves TLS with the certificate it gives.
    let schedulers = config.schedulers();
    let certified = if !schedulers.is_empty() && trust.is_tls() {
        tracing::info!(
            scheduler = %schedulers.join(","),
            "getting this agent's certificate from the scheduler"
        );
        Some(certify::certify(&schedulers, config.token.as_deref(), &trust).await?)
    } else {
        None
    };
    let options = AgentOptions::from_config(&config);
    let local = listener.local_addr().map_err(RunError::Address)?;
    let http = match config.http {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| RunError::Http(addr, e))?,
        ),
        None => None,
    };
    let http_addr = match &http {
        Some(l) => Some(l.local_addr().map_err(RunError::Address)?),
        None => None,
    };
    let models =
        Repository::new(options.model_repository.clone(), ModelSettings::default()).names();
    tracing::info!(
        addr = %local,
        http = %http_addr.map_or("off".to_string(), |a| a.to_string()),
        name = %options.name,
        repository = %options.model_repository.display(),
        models = models.len(),
        onnxruntime = %onnxruntime,
        scheduler = config.scheduler.as_deref().unwrap_or("none"),
        tls = certified.is_some(),
        "agent serving"
    );
    if models.is_empty() && config.scheduler.is_none() {
        tracing::warn!(
            repository = %options.model_repository.display(),
            "no models found: expected DIR/<name>/<version>/model.onnx"
        );
    }
    let agent = Agent::new(options, loader);
    if let Some(mac) = config.wake_mac {
        let _ = agent.wake.set(herd_proto::herd::WakeOnLan {
            mac: mac.to_string(),
            address: config.wake_address.clone(),
        });
        tracing::info!(mac = %mac, address = %config.wake_address, "the scheduler may wake this machine with Wake-on-LAN");
    }
    if let (Some(after), Some(command)) = (config.sleep_after, config.sleep_command.clone()) {
        tokio::spawn(sleep::run(
            agent.clone(),
            sleep::SleepPolicy { after, command },
        ));
    }
    let budget = agent.cache.budget();
    tracing::info!(
        memory_offered_mb = budget.offered_memory / (1 << 20),
        max_in_flight_mb = budget.in_flight.limit() / (1 << 20),
        "request byte budget"
    );
    let http_tls = match &certified {
        Some(c) => {
            Some(herd_core::tls::http_server_config(&c.identity).map_err(ConfigError::from)?)
        }
        None => None,
    };
    // HTTP/REST, when asked for, ends with the gRPC server (its future is dropped).
    let http_server = {
        let agent = agent.clone();
        async move {
            match http {
                Some(l) => serve_http(agent, l, http_tls, std::future::pending()).await,
                None => std::future::pending().await,
            }
        }
    };
    let grpc_server = serve(
        agent.clone(),
        listener,
        certified.as_ref().map(|c| &c.identity),
        shutdown,
    );
    let server = async {
        tokio::select! {
            r = grpc_server => Ok(r?),
            r = http_server => r.map_err(|e| RunError::Http(http_addr.unwrap_or(local), e)),
        }
    };
    if schedulers.is_empty() {
        return server.await;
    }
    // One session per scheduler: each reports to it on its own, so a scheduler that
    // dies or is cut off takes nothing from the others. A refusal from any ends the
    // agent (a wrong token or a taken name is so for all of them).
    let sessions = schedulers.into_iter().map(|scheduler| {
        let link = Link {
            scheduler,
            token: config.token.clone(),
            advertise: config.advertise.clone(),
            listen: local,
            ca_pem: certified.as_ref().map(|c| c.ca_pem.clone()),
        };
        Box::pin(join_and_report(agent.clone(), link))
    });
    tokio::select! {
        served = server => served,
        (joined, _, _) = futures::future::select_all(sessions) => Ok(joined?),
    }
}
