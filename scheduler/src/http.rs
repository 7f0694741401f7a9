//! The scheduler's HTTP port: /metrics and /health beside KServe v2 HTTP/REST (the
//! gateway's inference service, under the same token rule as its gRPC).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use herd_core::kserve_http::{self, HttpOptions};
use herd_core::layers::TokenRule;
use tokio::sync::watch;

use crate::gateway::Gateway;
use crate::leader::Role;
use crate::state::Scheduler;

pub fn router(
    scheduler: Arc<Scheduler>,
    require_token_for_inference: bool,
    role: watch::Receiver<Role>,
) -> axum::Router {
    let options = HttpOptions {
        rule: TokenRule::scheduler(
            Some(scheduler.settings.token.clone()),
            require_token_for_inference,
        ),
        max_body: scheduler.settings.max_message_size,
        max_in_flight_bytes: scheduler.settings.max_in_flight_bytes,
    };
    let gateway = Arc::new(Gateway::new(scheduler.clone()));
    let health = axum::Router::new()
        .route("/health", get(health))
        .with_state(role);
    crate::metrics::router(scheduler)
        .merge(health)
        .merge(kserve_http::router(gateway, options))
}

/// 200 whenever the scheduler serves: a follower serves the gateway too, so a load
/// balancer's check stays as it was; the role says which one places.
async fn health(State(role): State<watch::Receiver<Role>>) -> impl IntoResponse {
    let role = role.borrow().clone();
    (
        [(header::CONTENT_TYPE, "application/json")],
        health_body(&role).to_string(),
    )
}

fn health_body(role: &Role) -> serde_json::Value {
    match role {
        Role::Leader { .. } => serde_json::json!({ "status": "ok", "role": "leader" }),
        Role::Follower {
            leader: Some(leader),
        } => {
            serde_json::json!({ "status": "ok", "role": "follower", "leader": leader })
        }
        Role::Follower { leader: None } => {
            serde_json::json!({ "status": "ok", "role": "follower" })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_says_the_role_and_where_the_leader_is_when_known() {
        use serde_json::json;
        let leader = health_body(&Role::Leader { revision: 9 });
        assert_eq!(leader, json!({ "status": "ok", "role": "leader" }));
        let follower = health_body(&Role::Follower {
            leader: Some("10.0.0.1:8001".into()),
        });
        let expected = json!({ "status": "ok", "role": "follower", "leader": "10.0.0.1:8001" });
        assert_eq!(follower, expected);
        let unknown = health_body(&Role::Follower { leader: None });
        assert_eq!(unknown, json!({ "status": "ok", "role": "follower" }));
    }
}
