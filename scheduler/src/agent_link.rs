//! Connections from the scheduler to one agent: its herd.v1 service (load, unload,
//! batches) and its inference service (metadata, statistics), with the cluster token.

use std::time::Duration;

use herd_core::auth::SendToken;
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

use herd_core::limits::MAX_MESSAGE;

impl AgentLink {
    /// Connects lazily: the first call opens the connection, and a dropped one is
    /// opened again on the next call.
    pub fn new(address: &str, token: Option<&str>) -> Result<AgentLink, String> {
        let url = herd_proto::grpc_url(address);
        let channel = Endpoint::from_shared(url)
            .map_err(|e| format!("agent address {address:?}: {e}"))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        let token = SendToken::new(token).map_err(|e| e.to_string())?;
        Ok(AgentLink {
            agent: AgentClient::with_interceptor(channel.clone(), token.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            inference: GrpcInferenceServiceClient::with_interceptor(channel, token)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        })
    }
}
