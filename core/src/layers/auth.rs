//! The cluster-token rule as a tower layer: which gRPC services need the token, by
//! path, and what their calls are called when one is refused. The check itself is
//! `auth::verify`, the same as [`crate::auth::RequireToken`]'s, so both answer with the
//! same UNAUTHENTICATED messages.

use std::fmt;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tower::{Layer, Service};

use super::Either;

/// Which calls need the cluster token.
///
/// Services are named as in their path (`herd.v1.Admin` for `/herd.v1.Admin/ListNodes`).
/// A service not named needs the token too (as "calls"), so a service added later is
/// closed until someone opens it on purpose. Without a token, every call is let through.
/// Printed with `{:?}`, the token itself is redacted.
#[derive(Clone)]
pub struct TokenRule {
    token: Option<Arc<str>>,
    services: Arc<Vec<Guard>>,
}

#[derive(Clone, Debug)]
struct Guard {
    /// `/<service>/`.
    prefix: String,
    /// What the calls are called in the error; `None`: open.
    what: Option<&'static str>,
}

impl fmt::Debug for TokenRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRule")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("services", &self.services)
            .finish()
    }
}

/// What calls to services the rule does not name are called in the error.
pub const OTHER_CALLS: &str = "calls";

impl TokenRule {
    /// Every call needs `token` (when one is set) until services are named with
    /// [`TokenRule::require`] or [`TokenRule::open`].
    pub fn new(token: Option<String>) -> TokenRule {
        TokenRule {
            token: token.map(Arc::from),
            services: Arc::new(Vec::new()),
        }
    }

    /// Calls to `service` (`herd.v1.Admin`) need the token; `what` names them in the
    /// error ("admin calls").
    pub fn require(self, service: &str, what: &'static str) -> TokenRule {
        self.with(service, Some(what))
    }

    /// Calls to `service` need no token.
    pub fn open(self, service: &str) -> TokenRule {
        self.with(service, None)
    }

    /// Calls to `service` need the token only `if required`.
    pub fn require_if(self, required: bool, service: &str, what: &'static str) -> TokenRule {
        if required {
            self.require(service, what)
        } else {
            self.open(service)
        }
    }

    fn with(self, service: &str, what: Option<&'static str>) -> TokenRule {
        let mut services = Arc::unwrap_or_clone(self.services);
        let prefix = format!("/{service}/");
        services.retain(|g| g.prefix != prefix);
        services.push(Guard { prefix, what });
        TokenRule {
            token: self.token,
            services: Arc::new(services),
        }
    }

    /// An agent's rule, as `herd_agent::serve` has it: inference calls need the token
    /// only when `require_token_for_inference`; `herd.v1.Agent` calls always do.
    pub fn agent(token: Option<String>, require_token_for_inference: bool) -> TokenRule {
        use herd_proto::herd::agent_server::SERVICE_NAME as AGENT;
        use herd_proto::inference::grpc_inference_service_server::SERVICE_NAME as INFERENCE;
        TokenRule::new(token)
            .require_if(require_token_for_inference, INFERENCE, "inference calls")
            .require(AGENT, "herd.v1 agent calls")
    }

    /// The scheduler's rule, as `herd_scheduler::serve` has it: inference calls need the
    /// token only when `require_token_for_inference`; joining and admin calls always do.
    pub fn scheduler(token: Option<String>, require_token_for_inference: bool) -> TokenRule {
        use herd_proto::herd::admin_server::SERVICE_NAME as ADMIN;
        use herd_proto::herd::scheduler_server::SERVICE_NAME as SCHEDULER;
        use herd_proto::inference::grpc_inference_service_server::SERVICE_NAME as INFERENCE;
        TokenRule::new(token)
            .require_if(require_token_for_inference, INFERENCE, "inference calls")
            .require(SCHEDULER, "joining the cluster")
            .require(ADMIN, "admin calls")
    }

    /// What calls to `path` are called when refused, or `None` when they need no token.
    pub fn guard(&self, path: &str) -> Option<&'static str> {
        self.token.as_ref()?;
        match self.services.iter().find(|g| path.starts_with(&g.prefix)) {
            Some(g) => g.what,
            None => Some(OTHER_CALLS),
        }
    }

    /// Lets a call to `path` with these headers through, or says why not.
    pub fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<(), Status> {
        let (Some(token), Some(what)) = (&self.token, self.guard(path)) else {
            return Ok(());
        };
        let given = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        crate::auth::verify(token, given, what)
    }
}

/// Refuses calls without the cluster token, as its [`TokenRule`] says.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    rule: TokenRule,
}

impl AuthLayer {
    pub fn new(rule: TokenRule) -> AuthLayer {
        AuthLayer { rule }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            rule: self.rule.clone(),
        }
    }
}

/// See [`AuthLayer`]. A refused call is answered with its gRPC status; the inner
/// service never sees it.
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    rule: TokenRule,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        match self.rule.check(request.uri().path(), request.headers()) {
            Ok(()) => Either::Left {
                inner: self.inner.call(request),
            },
            Err(status) => Either::Right {
                inner: ready(Ok(status.into_http())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::test_support::{grpc_request, status_of};
    use tower_test::mock;

    const INFERENCE: &str = "/inference.GRPCInferenceService/ServerLive";
    const ADMIN: &str = "/herd.v1.Admin/ListNodes";

    #[test]
    fn the_rule_names_calls_by_service() {
        let rule = TokenRule::scheduler(Some("s3cret".into()), false);
        assert_eq!(rule.guard(INFERENCE), None);
        assert_eq!(rule.guard(ADMIN), Some("admin calls"));
        assert_eq!(
            rule.guard("/herd.v1.Scheduler/Join"),
            Some("joining the cluster")
        );
        assert_eq!(rule.guard("/grpc.health.v1.Health/Check"), Some("calls"));
        let rule = TokenRule::agent(Some("s3cret".into()), true);
        assert_eq!(rule.guard(INFERENCE), Some("inference calls"));
        assert_eq!(
            rule.guard("/herd.v1.Agent/InferBatch"),
            Some("herd.v1 agent calls")
        );
        // A prefix of a service name is another service.
        assert_eq!(rule.guard("/herd.v1.AgentX/Status"), Some("calls"));
        assert_eq!(TokenRule::agent(None, true).guard(ADMIN), None);
    }

    #[test]
    fn the_token_is_not_printed() {
        let rule = TokenRule::agent(Some("s3cret".into()), true);
        let printed = format!("{:?}", AuthLayer::new(rule));
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
    }

    #[test]
    fn naming_a_service_again_replaces_its_rule() {
        let rule = TokenRule::new(Some("t".into()))
            .require("herd.v1.Admin", "admin calls")
            .open("herd.v1.Admin");
        assert_eq!(rule.guard(ADMIN), None);
    }

    #[tokio::test]
    async fn refused_calls_never_reach_the_service() {
        let rule = TokenRule::scheduler(Some("s3cret".into()), false);
        let (mut service, mut handle) =
            mock::spawn_layer::<_, http::Response<String>, _>(AuthLayer::new(rule));

        // No token.
        assert!(service.poll_ready().is_ready());
        let response = service
            .call(grpc_request(ADMIN, &[]))
            .await
            .expect("a status response");
        assert_eq!(response.status(), http::StatusCode::OK);
        let status = status_of(&response).expect("a grpc-status");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            status.message(),
            "admin calls need the cluster token (authorization: Bearer <token>; --token or HERD_TOKEN)"
        );

        // The wrong token.
        assert!(service.poll_ready().is_ready());
        let response = service
            .call(grpc_request(ADMIN, &[("authorization", "Bearer guess")]))
            .await
            .expect("a status response");
        let status = status_of(&response).expect("a grpc-status");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            status.message(),
            "admin calls need the cluster token; the one given is wrong"
        );
        assert!(
            handle.poll_request().is_pending(),
            "the service saw nothing"
        );

        // The right one goes through, and so does an open call without one.
        for (path, headers) in [
            (ADMIN, &[("authorization", "Bearer s3cret")][..]),
            (INFERENCE, &[][..]),
        ] {
            assert!(service.poll_ready().is_ready());
            let call = service.call(grpc_request(path, headers));
            let (request, reply) = handle.next_request().await.expect("the call arrives");
            assert_eq!(request.uri().path(), path);
            reply.send_response(http::Response::new("ok".to_string()));
            let response = call.await.expect("the service's response");
            assert_eq!(response.body(), "ok");
        }
    }

    #[test]
    fn the_layer_and_the_interceptor_answer_alike() {
        let rule = TokenRule::new(Some("s3cret".into())).require("herd.v1.Admin", "admin calls");
        let interceptor = crate::auth::RequireToken::new(Some("s3cret".into()), "admin calls");
        for given in [
            None,
            Some("Bearer guess"),
            Some("Bearer s3cret"),
            Some("s3cret"),
        ] {
            let mut headers = http::HeaderMap::new();
            let mut request = tonic::Request::new(());
            if let Some(v) = given {
                let value = http::HeaderValue::from_static(v);
                headers.insert(http::header::AUTHORIZATION, value.clone());
                request.metadata_mut().insert(
                    "authorization",
                    tonic::metadata::MetadataValue::from_static(v),
                );
            }
            let by_layer = rule
                .check(ADMIN, &headers)
                .map_err(|s| s.message().to_string());
            let by_interceptor = interceptor
                .check(&request)
                .map_err(|s| s.message().to_string());
            assert_eq!(by_layer, by_interceptor, "given {given:?}");
        }
    }
}
