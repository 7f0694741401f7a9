//! The agent's link to its scheduler: join the cluster, then report every interval. An
//! unreachable scheduler is retried with backoff (the agent keeps serving what it
//! holds meanwhile); a refusal (a wrong token, a name another node holds) ends the
//! agent with the scheduler's reason instead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herd_proto::herd::scheduler_client::SchedulerClient;
use herd_proto::herd::{JoinRequest, ReportRequest};
use tonic::transport::Endpoint;
use tonic::Code;
use tracing::{info, warn};

use crate::control::snapshot;
use crate::{Agent, SchedulerRpc};
use herd_core::auth::SendToken;

pub struct Link {
    pub scheduler: String,
    pub token: Option<String>,
    pub advertise: Option<String>,
    pub listen: SocketAddr,
}

const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The scheduler will not have this agent (a wrong token, a bad address, a name a live
/// node at another address holds); retrying cannot help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the scheduler at {scheduler} refused this agent: {message}")]
pub struct JoinRefused {
    pub scheduler: String,
    pub message: String,
}

/// Joins and reports until the scheduler refuses the agent (an error) — never
/// returns otherwise.
pub async fn join_and_report(agent: Arc<Agent>, link: Link) -> Result<(), JoinRefused> {
    let address = advertised(&link);
    let mut backoff = Duration::from_millis(100);
    loop {
        match session(&agent, &link, &address).await {
            Err(status) if is_refusal(status.code()) => {
                return Err(JoinRefused {
                    scheduler: link.scheduler.clone(),
                    message: status.message().to_string(),
                });
            }
            Err(status) => {
                warn!(scheduler = %link.scheduler, error = %status.message(), retry_in_ms = backoff.as_millis() as u64, "scheduler unreachable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Ok(()) => backoff = Duration::from_millis(100),
        }
    }
}

/// Whether the scheduler's answer refuses this agent for good. ALREADY_EXISTS: a node
/// at another address still reports under this agent's name after the scheduler waited
/// for its reports to be overdue (as they would be from this agent's previous life):
/// another agent was given the same --name, and waiting would only hide that.
fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::Unauthenticated | Code::InvalidArgument | Code::AlreadyExists
    )
}

/// One connection's worth: join, then report until a report fails.
async fn session(agent: &Arc<Agent>, link: &Link, address: &str) -> Result<(), tonic::Status> {
    let mut client = connect(link).await?;
    let status = status_now(agent).await?;
    let joined = client
        .join(JoinRequest {
            name: agent.name.clone(),
            address: address.to_string(),
            status: Some(status),
        })
        .await?
        .into_inner();
    agent.set_scheduler_client(client.clone());
    // Before "joined" is logged: from then on, the agent's port holds to the
    // scheduler's rule. Never turned off here: the agent's own flag may have set it.
    if joined.require_token_for_inference && !agent.require_token_for_inference.is_required() {
        agent.require_token_for_inference.require();
        info!(scheduler = %link.scheduler, "inference calls need the cluster token, as the scheduler requires");
    }
    let interval = Duration::from_millis(joined.report_interval_ms.max(50));
    info!(scheduler = %link.scheduler, name = %agent.name, address, interval_ms = interval.as_millis() as u64, "joined the cluster");
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let status = status_now(agent).await?;
        client
            .report(ReportRequest {
                name: agent.name.clone(),
                address: address.to_string(),
                status: Some(status),
            })
            .await?;
    }
}

async fn status_now(agent: &Arc<Agent>) -> Result<herd_proto::herd::AgentStatus, tonic::Status> {
    let agent = agent.clone();
    tokio::task::spawn_blocking(move || snapshot(&agent))
        .await
        .map_err(|e| tonic::Status::internal(format!("status probe failed: {e}")))
}

async fn connect(link: &Link) -> Result<SchedulerRpc, tonic::Status> {
    let url = herd_proto::grpc_url(&link.scheduler);
    let endpoint = Endpoint::from_shared(url)
        .map_err(|e| {
            tonic::Status::invalid_argument(format!("scheduler address {:?}: {e}", link.scheduler))
        })?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(|e| {
        tonic::Status::unavailable(format!(
            "cannot reach the scheduler at {}: {e}",
            link.scheduler
        ))
    })?;
    let token = SendToken::new(link.token.as_deref())
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    Ok(SchedulerClient::with_interceptor(channel, token)
        .max_decoding_message_size(1 << 30)
        .max_encoding_message_size(herd_core::limits::LINK_MESSAGE))
}

/// The address the scheduler should call this agent at.
fn advertised(link: &Link) -> String {
    if let Some(a) = &link.advertise {
        return a.clone();
    }
    if !link.listen.ip().is_unspecified() {
        return link.listen.to_string();
    }
    // Listening on every interface: use the one that routes to the scheduler. A UDP
    // "connect" sends nothing; it only picks the route.
    let host = link
        .scheduler
        .rsplit_once(':')
        .map_or(link.scheduler.as_str(), |(h, _)| h)
        .trim_start_matches("http://")
        .to_string();
    let ip = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect((host.as_str(), 9))?;
            s.local_addr()
        })
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".to_string());
    format!("{ip}:{}", link.listen.port())
}
