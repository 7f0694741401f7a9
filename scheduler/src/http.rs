//! The scheduler's HTTP port: /metrics and /health beside KServe v2 HTTP/REST (the
//! gateway's inference service, under the same token rule as its gRPC).

use std::sync::Arc;

use herd_core::kserve_http::{self, HttpOptions};
use herd_core::layers::TokenRule;

use crate::gateway::Gateway;
use crate::state::Scheduler;

pub fn router(scheduler: Arc<Scheduler>, require_token_for_inference: bool) -> axum::Router {
    let options = HttpOptions {
        rule: TokenRule::scheduler(
            Some(scheduler.settings.token.clone()),
            require_token_for_inference,
        ),
        max_body: scheduler.settings.max_message_size,
        max_in_flight_bytes: scheduler.settings.max_in_flight_bytes,
    };
    let gateway = Arc::new(Gateway::new(scheduler.clone()));
    crate::metrics::router(scheduler).merge(kserve_http::router(gateway, options))
}
