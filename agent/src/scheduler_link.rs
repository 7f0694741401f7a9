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

#[derive(Clone)]
pub struct Link {
    pub scheduler: String,
    pub token: Option<String>,
    pub advertise: Option<String>,
    pub listen: SocketAddr,
    /// The cluster CA's certificate: the scheduler is reached over TLS and must
    /// present a certificate from it. `None`: plain text.
    pub ca_pem: Option<String>,
}

/// Short: a restarted scheduler learns what the cluster holds from agents' reports for
/// only a few report intervals before it may lead, and a connection attempt is cheap.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why a plain-text agent cannot join a scheduler that serves TLS.
const TLS_WANTED: &str = "the scheduler serves TLS and this agent has nothing to verify it with: \
     give the join token (herd1.…, in the scheduler's DATA_DIR/join-token) with --token or \
     --token-file, or the CA with --ca-cert DATA_DIR/ca.pem";

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
    let mut backoff = Duration::from_millis(100);
    loop {
        // Worked out again on every attempt: a network that was not up at the start
        // (no route yet) gives its real address once it is, never loopback for good.
        // A host name is looked up: off the async workers.
        let l = link.clone();
        let address = tokio::task::spawn_blocking(move || advertised(&l))
            .await
            .unwrap_or_else(|e| Err(format!("working out the address failed: {e}")));
        let address = match address {
            Ok(a) => a,
            Err(e) => {
                warn!(scheduler = %link.scheduler, error = %e, retry_in_ms = backoff.as_millis() as u64, "no address to advertise yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let ended = session(&agent, &link, &address).await;
        if ended.is_err() {
            agent.forget_scheduler_client(&link.scheduler);
        }
        match ended {
            Err(status) if is_refusal(status.code()) => {
                return Err(JoinRefused {
                    scheduler: link.scheduler.clone(),
                    message: status.message().to_string(),
                });
            }
            // The scheduler is there but cannot call this agent back at `address`:
            // a firewall, or a network still coming up, may yet let it.
            Err(status) if status.code() == Code::FailedPrecondition => {
                warn!(scheduler = %link.scheduler, address, error = %status.message(), retry_in_ms = backoff.as_millis() as u64, "the scheduler cannot reach this agent at its advertised address; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
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
    agent.set_scheduler_client(&link.scheduler, client.clone());
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
        let sleeping = status.sleeping;
        client
            .report(ReportRequest {
                name: agent.name.clone(),
                address: address.to_string(),
                status: Some(status),
            })
            .await?;
        agent.reported_sleeping.send_replace(sleeping);
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
    let endpoint = match &link.ca_pem {
        Some(ca) => Endpoint::from_shared(url.replacen("http://", "https://", 1)).and_then(|e| {
            e.tls_config(herd_core::tls::tonic_client(
                ca,
                herd_core::tls::SCHEDULER_NAME,
            ))
        }),
        None => Endpoint::from_shared(url),
    };
    let endpoint = endpoint
        .map_err(|e| {
            tonic::Status::invalid_argument(format!("scheduler address {:?}: {e}", link.scheduler))
        })?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true);
    // A scheduler serving TLS would answer plain text by closing the connection, and
    // this agent's configuration is what is wrong: waiting does not mend it.
    if link.ca_pem.is_none() && herd_core::tls::serves_tls(&link.scheduler).await {
        return Err(tonic::Status::invalid_argument(TLS_WANTED));
    }
    let channel = endpoint.connect().await.map_err(|e| {
        tonic::Status::unavailable(format!(
            "cannot reach the scheduler at {}: {}",
            link.scheduler,
            herd_core::connect_error::connect_reason(&e)
        ))
    })?;
    let token = SendToken::new(link.token.as_deref())
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    Ok(SchedulerClient::with_interceptor(channel, token)
        .max_decoding_message_size(1 << 30)
        .max_encoding_message_size(herd_core::limits::LINK_MESSAGE))
}

/// The address the scheduler should call this agent at: `--advertise`, else the
/// listening address, else (listening on every interface) this host's address on the
/// route to the scheduler.
fn advertised(link: &Link) -> Result<String, String> {
    if let Some(a) = &link.advertise {
        return Ok(a.clone());
    }
    herd_core::route::toward(&link.scheduler, link.listen)
        .map(|a| a.to_string())
        .map_err(|e| {
            format!(
                "cannot work out this node's address toward the scheduler at {}: {e} \
                 (is the network up?); give one with --advertise HOST:PORT",
                link.scheduler
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(scheduler: &str, listen: &str, advertise: Option<&str>) -> Link {
        Link {
            scheduler: scheduler.to_string(),
            token: None,
            advertise: advertise.map(str::to_string),
            listen: listen.parse().expect("listen address"),
            ca_pem: None,
        }
    }

    #[test]
    fn the_advertised_address_is_the_flag_then_the_listen_address_then_the_route() {
        let given = link("10.0.0.1:8001", "0.0.0.0:8001", Some("box:9000"));
        assert_eq!(advertised(&given).as_deref(), Ok("box:9000"));
        let bound = link("10.0.0.1:8001", "192.168.1.5:8001", None);
        assert_eq!(advertised(&bound).as_deref(), Ok("192.168.1.5:8001"));
        // The route to a scheduler on loopback is loopback, and that is right.
        let local = link("http://127.0.0.1:8001", "0.0.0.0:7000", None);
        assert_eq!(advertised(&local).as_deref(), Ok("127.0.0.1:7000"));
    }

    #[test]
    fn no_route_to_the_scheduler_is_an_error_naming_it_not_loopback() {
        let nowhere = link("no-such-host.invalid:8001", "0.0.0.0:7000", None);
        let e = advertised(&nowhere).expect_err("no route");
        assert!(e.contains("no-such-host.invalid:8001"), "{e}");
        assert!(e.contains("--advertise"), "{e}");
    }
}
