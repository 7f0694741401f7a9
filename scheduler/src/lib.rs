//! herd's scheduler: the cluster's node registry, model catalog, placement, routing
//! toward agents and the client-facing gateway.

pub mod address_proof;
pub mod admin;
pub mod advertise;
pub mod agent_link;
pub mod catalog;
pub mod cluster_tls;
pub mod config;
pub mod error;
pub mod events;
mod executor;
pub mod explain;
pub mod exposition;
mod fenced;
pub mod forward;
pub mod gateway;
mod http;
pub mod immich;
pub mod joins;
pub mod leader;
mod links;
pub mod metrics;
pub mod model;
pub mod placement;
pub mod reconcile;
pub mod records;
pub mod rescan;
pub mod router;
pub mod sender;
pub mod state;
pub mod store;
pub mod token;
mod wake;

use std::future::Future;
use std::sync::Arc;

use herd_core::incoming::{raise_open_file_limit, ConnectionLimits};
use herd_proto::herd::admin_server::AdminServer;
use herd_proto::herd::scheduler_server::SchedulerServer;
use herd_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use tokio::net::TcpListener;

pub use config::SchedulerConfig;
pub use error::{SchedulerError, StartError};
pub use state::Scheduler;

use crate::model::ClusterModel;
use crate::placement::Policy;

/// Builds the scheduler's state: token, store, catalog (the repository, with what the
/// store remembers).
pub async fn start(config: &SchedulerConfig) -> Result<Arc<Scheduler>, StartError> {
    let data_dir = config.data_dir();
    create_private_dir(&data_dir).map_err(|source| StartError::CreateDir {
        path: data_dir.clone(),
        source,
    })?;
    let given = config.given_token()?;
    let token = token::load_or_create(given, &data_dir, config.tls_on())?;
    // A state file that cannot be read is moved aside there and the state starts empty
    // (it is soft); only one that cannot be opened at all stops the start, as does an
    // etcd (--store) that does not answer in time.
    let store = store::open(config.store.as_ref(), &data_dir).await?;
    let (token, tls) = secret_and_tls(config, &data_dir, &token, store.as_ref()).await?;
    let mut cluster = ClusterModel::new(
        tokio::time::Instant::now(),
        config.report_interval,
        config.down_after,
    );
    let model_defaults = config.model_defaults.settings();
    let repository = herd_core::Repository::new(config.repository_dir(), model_defaults.clone());
    let digests = Arc::new(rescan::DigestCache::default());
    let scan_digests = digests.clone();
    let immich_models = config.immich_models.clone();
    let scanned = tokio::task::spawn_blocking(move || {
        rescan::scan_all(&repository, immich_models.as_deref(), &scan_digests)
    })
    .await
    .map_err(|e| StartError::Repository(e.to_string()))?;
    // Nodes that said how to wake them, so that one asleep since before this start
    // can be woken too.
    for (name, wake) in records::wakeable(&store.range(records::NODES).await?) {
        cluster.remember_wakeable(&name, wake);
    }
    let remembered = store.range(catalog::PREFIX).await?;
    for mut m in scanned {
        if let Some(kv) = remembered.iter().find(|kv| kv.key == catalog::key(&m.name)) {
            if let Ok(record) = serde_json::from_slice::<catalog::Record>(&kv.value) {
                record.restore(&mut m);
            }
        }
        cluster.add_model(m, false);
    }
    tracing::info!(
        models = cluster.models().count(),
        remembered = remembered.len(),
        repository = %config.repository_dir().display(),
        data_dir = %data_dir.display(),
        "catalog ready"
    );
    let settings = state::Settings {
        token,
        report_interval: config.report_interval,
        down_after: config.down_after,
        policy: match config.policy {
            config::PolicyArg::Spread => Policy::Spread,
            config::PolicyArg::Binpack => Policy::Binpack,
        },
        headroom: config.headroom.clamp(0.0, 0.9),
        load_timeout: config.load_timeout,
        target_ongoing_requests: config.target_ongoing_requests,
        upscale_delay: config.upscale_delay,
        model_defaults,
        rescan_interval: config.rescan_interval,
        max_message_size: config.max_message_bytes(),
        max_in_flight_bytes: config.max_in_flight_bytes(),
        wake_timeout: config.wake_timeout,
        tls,
        advertise: advertise::Advertise::new(
            config.advertise.clone(),
            config.store.as_ref().map_or(&[][..], |s| &s.endpoints),
        ),
        immich_models: config.immich_models.clone(),
    };
    Ok(Scheduler::with_digests(
        cluster,
        settings,
        store,
        config.repository_dir(),
        digests,
    ))
}

/// The secret agents authenticate with (a join token given to the scheduler counts
/// for its secret, and must pin this cluster's CA), and the CA unless TLS is off
/// (--tls off, or --tls auto with every port on loopback).
async fn secret_and_tls(
    config: &SchedulerConfig,
    data_dir: &std::path::Path,
    token: &str,
    store: &dyn store::Store,
) -> Result<(String, Option<Arc<cluster_tls::ClusterTls>>), StartError> {
    let given = herd_core::tls::JoinToken::parse(token);
    if !config.tls_on() {
        // Left from a run with TLS, they would send clients to TLS that is not there.
        for stale in ["ca.pem", "join-token"] {
            let _ = std::fs::remove_file(data_dir.join(stale));
        }
        if config.tls == config::TlsArg::Off {
            tracing::warn!(
                "TLS is off (--tls off): tokens, requests and model files cross the network in plain text"
            );
        } else {
            tracing::info!(
                "plain text: every port listens on loopback only; TLS comes on with a port \
                 other machines can reach, or with --tls on"
            );
        }
        return Ok((given.secret, None));
    }
    let tls = cluster_tls::ClusterTls::load_or_create(store).await?;
    if given.pin.is_some_and(|pin| pin != tls.ca.pin()) {
        return Err(StartError::Tls(
            "the given token pins a CA other than the one in the store (another cluster's?)".into(),
        ));
    }
    let path = cluster_tls::write_client_files(data_dir, &tls, &given.secret)?;
    tracing::info!(
        join_token = %path.display(),
        ca = %data_dir.join("ca.pem").display(),
        "TLS on: agents and tools trust the cluster CA through the join token (--token-file) or --ca-cert"
    );
    Ok((given.secret, Some(Arc::new(tls))))
}

/// Creates the data directory (and missing parents) 0700: it holds the token and the
/// state. An existing directory keeps its mode (it may be one a person chose and shares),
/// but one open to others is worth a word.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700).create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                data_dir = %dir.display(),
                mode = format_args!("{mode:o}"),
                "the data directory is open to other users; its files are kept 0600"
            );
        }
        Ok(())
    }
    #[cfg(not(unix))]
    builder.create(dir)
}

impl Scheduler {
    /// Records a model's catalog entry in the store.
    pub async fn persist(&self, model: &str) {
        let record = self.lock().model(model).map(catalog::Record::of);
        if let Some(record) = record {
            if let Ok(value) = serde_json::to_vec(&record) {
                if let Err(e) = self.write_state(&catalog::key(model), value).await {
                    tracing::warn!(model, error = %e, "cannot record the catalog entry");
                }
            }
        }
    }
}

/// Serves the scheduler's gRPC services on `grpc` and HTTP (metrics, health, KServe v2
/// HTTP/REST) on `http` until `shutdown`.
pub async fn serve(
    scheduler: Arc<Scheduler>,
    grpc: TcpListener,
    http: TcpListener,
    require_token_for_inference: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    // A message over the limit is refused as its length prefix arrives, before it is
    // read into memory (RESOURCE_EXHAUSTED, by the stack's message-size layer).
    let max_message = scheduler.settings.max_message_size;
    let inference = GrpcInferenceServiceServer::new(gateway::Gateway::new(scheduler.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let joins = joins::JoinService::new(scheduler.clone(), require_token_for_inference);
    let joins = SchedulerServer::new(joins);
    let admin = AdminServer::new(admin::AdminService::new(scheduler.clone()));
    // Token, request id, metrics, in-flight backstops (calls, and the bytes of the
    // requests held while they wait for a replica) and deadlines, for every call.
    let layers = herd_core::layers::ServerStack::new(herd_core::layers::TokenRule::scheduler(
        Some(scheduler.settings.token.clone()),
        require_token_for_inference,
    ))
    .max_in_flight(herd_core::limits::MAX_IN_FLIGHT)
    .max_in_flight_bytes(scheduler.settings.max_in_flight_bytes)
    .metrics(scheduler.grpc_metrics.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // Several schedulers on one etcd elect one to place; the embedded store has one.
    let election = if scheduler.store.shared() {
        let address = grpc
            .local_addr()
            .map(|a| scheduler.settings.advertise.address(a))
            .unwrap_or_default();
        tracing::info!(advertise = %address, "campaigning to lead the cluster");
        let me = leader::Candidate::new(address);
        leader::Election::start(scheduler.store.clone(), me, leader::TTL).await
    } else {
        leader::Election::sole()
    };
    let roles = {
        let scheduler = scheduler.clone();
        let roles = election.role();
        tokio::spawn(async move { scheduler.follow_roles(roles).await })
    };
    let mut stop_http = stop_rx.clone();
    let http_tls = match &scheduler.settings.tls {
        Some(tls) => Some(
            herd_core::tls::http_server_config(&tls.identity)
                .map_err(|e| StartError::Tls(e.to_string()))?,
        ),
        None => None,
    };
    let http_server = herd_core::kserve_http::serve(
        http,
        http::router(
            scheduler.clone(),
            require_token_for_inference,
            election.role(),
        ),
        http_tls,
        async move {
            let _ = stop_http.wait_for(|s| *s).await;
        },
    );
    let placement = tokio::spawn(reconcile::run(scheduler.clone(), election.role()));
    let rescans = (!scheduler.settings.rescan_interval.is_zero()).then(|| {
        tokio::spawn(rescan::run(
            scheduler.clone(),
            scheduler.settings.rescan_interval,
        ))
    });
    let mut stop_grpc = stop_rx;
    // Connections bounded, idle ones closed, accept errors backed off.
    let limits = ConnectionLimits::for_open_files(raise_open_file_limit());
    let (incoming, closed) = herd_core::incoming::incoming_until_closed(grpc, limits);
    let mut builder = herd_core::incoming::server_builder();
    if let Some(tls) = &scheduler.settings.tls {
        builder = builder
            .tls_config(herd_core::tls::tonic_server(&tls.identity))
            .map_err(StartError::Grpc)?;
    }
    let grpc_server = builder
        .layer(layers)
        .add_service(inference)
        .add_service(joins)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_grpc.wait_for(|s| *s).await;
        });
    let result = tokio::select! {
        r = grpc_server => r.map_err(StartError::Grpc),
        r = http_server => r.map_err(StartError::Http),
    };
    // The port is free once this returns: a scheduler may be started on it again.
    closed.await;
    placement.abort();
    if let Some(rescans) = rescans {
        rescans.abort();
    }
    // A follower takes over now rather than when the lease would have ended.
    election.resign().await;
    roles.abort();
    result
}

/// Listens on --immich-listen when it is given.
pub async fn bind_immich(config: &SchedulerConfig) -> Result<Option<TcpListener>, StartError> {
    let Some(addr) = config.immich_listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        StartError::Http(std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} for the Immich API (--immich-listen): {e}"),
        ))
    })?;
    Ok(Some(listener))
}

/// Serves Immich's machine-learning API on `listener` until `shutdown`; without a
/// listener it waits for `shutdown` alone, so that callers can always select on it.
pub async fn serve_immich(
    scheduler: Arc<Scheduler>,
    listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let Some(listener) = listener else {
        shutdown.await;
        return Ok(());
    };
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        immich_models = ?scheduler.settings.immich_models,
        "immich machine-learning API serving"
    );
    let predict = Arc::new(immich::pipeline::ClusterPredict::new(
        scheduler,
        herd_immich::decode::DEFAULT_MAX_PIXELS,
    ));
    let router = immich::http::router(predict, &immich::http::ImmichHttpConfig::default());
    immich::http::serve(listener, router, shutdown)
        .await
        .map_err(StartError::Http)
}

/// Runs `herd scheduler`.
pub async fn run(
    config: SchedulerConfig,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let scheduler = start(&config).await?;
    let immich = bind_immich(&config).await?;
    tracing::info!(
        addr = %grpc.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        http = %http.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = scheduler.settings.tls.is_some(),
        "scheduler serving"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let immich = serve_immich(scheduler.clone(), immich, stopped(stop_rx.clone()));
    let served = serve(
        scheduler,
        grpc,
        http,
        config.require_token_for_inference,
        stopped(stop_rx),
    );
    let (served, immich) = tokio::join!(served, immich);
    served.and(immich)
}
