//! Connections from the scheduler to one agent: its herd.v1 service (load, unload,
//! batches) and its inference service (metadata, statistics), with the cluster token.

use std::time::Duration;

use herd_core::auth::SendToken;

use crate::SchedulerError;
use herd_proto::herd::agent_client::AgentClient;
use herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub type AgentRpc = AgentClient<InterceptedService<Channel, SendToken>>;
pub type InferenceRpc = GrpcInferenceServiceClient<InterceptedService<Channel, SendToken>>;

#[derive(Clone)]
pub struct AgentLink {
    pub agent: AgentRpc,
    pub inference: InferenceRpc,
}

/// How long a link to an agent may be silent before it is pinged.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a ping may go unanswered before the link counts as dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

impl AgentLink {
    /// Connects lazily: the first call opens the connection, and a dropped one is
    /// opened again on the next call. `max_message` is the gateway's limit on one
    /// request: a batch carries at most `limits::BATCH_BYTES` of requests or one
    /// request alone, so the link takes [`herd_core::limits::batch_message`]. With
    /// `ca_pem`, over TLS: the agent must present a certificate from that CA.
    pub fn new(
        address: &str,
        token: Option<&str>,
        max_message: usize,
        ca_pem: Option<&str>,
    ) -> Result<AgentLink, SchedulerError> {
        let max = herd_core::limits::batch_message(max_message);
        let bad_address = |e: tonic::transport::Error| {
            SchedulerError::BadAgentAddress(format!("agent address {address:?}: {e}"))
        };
        let channel =
            lazy_channel(address, ca_pem, herd_core::tls::AGENT_NAME).map_err(bad_address)?;
        let token = SendToken::new(token).map_err(|e| SchedulerError::Token(e.to_string()))?;
        Ok(AgentLink {
            agent: AgentClient::with_interceptor(channel.clone(), token.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            inference: GrpcInferenceServiceClient::with_interceptor(channel, token)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        })
    }
}

/// A channel to a herd server (an agent, or a scheduler: `name` is what its
/// certificate must say) that connects on its first call and again after a drop. With
/// `ca_pem`, over TLS verified with it.
pub(crate) fn lazy_channel(
    address: &str,
    ca_pem: Option<&str>,
    name: &str,
) -> Result<Channel, tonic::transport::Error> {
    let url = herd_proto::grpc_url(address);
    let endpoint = match ca_pem {
        Some(ca) => Endpoint::from_shared(url.replacen("http://", "https://", 1))
            .and_then(|e| e.tls_config(herd_core::tls::tonic_client(ca, name))),
        None => Endpoint::from_shared(url),
    }?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        // A link cut without a reset (a dead switch port, a host gone) shows only
        // as silence: a ping after a second without a frame, unanswered for two
        // more, fails the calls in flight on it as UNAVAILABLE, which the gateway
        // retries on another replica. Ten seconds left requests hanging that long.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .connect_lazy())
}
