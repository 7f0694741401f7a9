//! The agent's KServe v2 HTTP/REST port (`--http`): the same inference service as its
//! gRPC, under the same token rule and message size limit.

use std::future::Future;
use std::sync::Arc;

use herd_core::kserve_http::{self, HttpOptions};
use herd_core::layers::TokenRule;
use tokio::net::TcpListener;

use crate::service::InferenceService;
use crate::Agent;

/// Serves KServe v2 HTTP/REST for `agent` on `listener` until `shutdown` completes,
/// over TLS with `tls`.
pub async fn serve_http(
    agent: Arc<Agent>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The same bytes backstop as the gRPC stack's (see `serve`): the runners' budget
    // plus one message.
    let in_flight_bytes = agent
        .cache
        .budget()
        .in_flight
        .limit()
        .saturating_add(agent.max_message_size as u64);
    let options = HttpOptions {
        rule: TokenRule::agent(
            agent.token.clone(),
            agent.require_token_for_inference.clone(),
        ),
        max_body: agent.max_message_size,
        max_in_flight_bytes: usize::try_from(in_flight_bytes).unwrap_or(usize::MAX),
    };
    let service = Arc::new(InferenceService::new(agent));
    kserve_http::serve(
        listener,
        kserve_http::router(service, options),
        tls,
        shutdown,
    )
    .await
}
