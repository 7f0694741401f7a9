//! `herd up`: a scheduler and an agent in one process — the whole cluster on one
//! machine. The agent serves the scheduler's own repository (no file is copied) and
//! joins over loopback like any other; more machines join with `herd agent --scheduler`.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use herd_agent::Loader;
use herd_scheduler::SchedulerConfig;
use tokio::net::TcpListener;

#[derive(clap::Args, Debug, Clone)]
pub struct UpConfig {
    #[command(flatten)]
    pub scheduler: SchedulerConfig,

    #[command(flatten)]
    pub node: herd_agent::NodeFlags,
}

pub async fn run(
    config: UpConfig,
    loader: Arc<dyn Loader>,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let scheduler = herd_scheduler::start(&config.scheduler).await?;
    let immich = herd_scheduler::bind_immich(&config.scheduler).await?;
    let scheduler_addr = grpc.local_addr()?;
    let agent_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen for the local agent")?;
    let agent_addr = agent_listener.local_addr()?;
    let options = herd_agent::AgentOptions {
        name: config
            .node
            .name
            .clone()
            .unwrap_or_else(herd_core::paths::default_name),
        model_repository: config.scheduler.repository_dir(),
        model_defaults: config.scheduler.model_defaults.settings(),
        memory_limit: config.node.memory_limit.map(|b| b.as_u64()),
        // One --max-message-size for the gateway and the agent behind it.
        max_message_size: config.scheduler.max_message_bytes(),
        token: Some(scheduler.settings.token.clone()),
        require_token_for_inference: false,
        data_dir: Some(config.scheduler.data_dir().join("agent")),
        max_in_flight_bytes: None,
    };
    let agent = herd_agent::Agent::new(options, loader);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // The local agent's certificate comes straight from the CA: no call to make.
    let certified = match &scheduler.settings.tls {
        Some(tls) => Some((
            tls.ca.issue(&[herd_core::tls::AGENT_NAME.to_string()])?,
            tls.ca.cert_pem().to_string(),
        )),
        None => None,
    };
    let mut stop_agent = stop_rx.clone();
    let agent_server = herd_agent::serve(
        agent.clone(),
        agent_listener,
        certified.as_ref().map(|(identity, _)| identity),
        async move {
            let _ = stop_agent.wait_for(|s| *s).await;
        },
    );
    let link = herd_agent::Link {
        scheduler: scheduler_addr.to_string(),
        token: Some(scheduler.settings.token.clone()),
        advertise: Some(agent_addr.to_string()),
        listen: agent_addr,
        ca_pem: certified.as_ref().map(|(_, ca)| ca.clone()),
    };
    tracing::info!(addr = %scheduler_addr, agent = %agent_addr, "herd up: scheduler and local agent serving");
    let mut stop_immich = stop_rx.clone();
    let immich = herd_scheduler::serve_immich(scheduler.clone(), immich, async move {
        let _ = stop_immich.wait_for(|s| *s).await;
    });
    let mut stop_scheduler = stop_rx;
    let served = herd_scheduler::serve(
        scheduler,
        grpc,
        http,
        config.scheduler.require_token_for_inference,
        async move {
            let _ = stop_scheduler.wait_for(|s| *s).await;
        },
    );
    tokio::select! {
        (r, i) = async { tokio::join!(served, immich) } => Ok(r.and(i)?),
        r = agent_server => r.context("local agent"),
        r = herd_agent::join_and_report(agent, link) => Ok(r?),
    }
}
