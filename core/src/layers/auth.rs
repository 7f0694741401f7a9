//! The cluster-token rule as a tower layer: which gRPC services and methods need the
//! token, by path, and what their calls are called when one is refused. The check itself is
//! `auth::verify`, the same as [`crate::auth::RequireToken`]'s, so both answer with the
//! same UNAUTHENTICATED messages.

use std::fmt;
use std::future::{ready, Ready};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tower::{Layer, Service};

use super::Either;

/// Which calls need the cluster token.
///
/// Services are named as in their path (`herd.v1.Admin` for `/herd.v1.Admin/ListNodes`);
/// a rule for one method of a service overrides the service's. A service not named
/// needs the token too (as "calls"), so a service added later is closed until someone
/// opens it on purpose. Without a token, every call is let through. Printed with
/// `{:?}`, the token itself is redacted.
#[derive(Clone)]
pub struct TokenRule {
    token: Option<Arc<str>>,
    guards: Arc<Vec<Guard>>,
}

#[derive(Clone, Debug)]
struct Guard {
    /// `/<service>/` for a whole service, `/<service>/<method>` for one method.
    path: String,
    access: Access,
}

#[derive(Clone, Debug)]
enum Access {
    Open,
    /// Needs the token; the str names the calls in the error.
    Token(&'static str),
    /// Needs the token while the switch is on.
    Switched(TokenSwitch, &'static str),
}

impl Access {
    fn what(&self) -> Option<&'static str> {
        match self {
            Access::Open => None,
            Access::Token(what) => Some(what),
            Access::Switched(switch, what) => switch.is_required().then_some(*what),
        }
    }
}

/// Whether some calls need the token, changeable while the server runs: an agent
/// learns at join, after it started serving, whether its scheduler requires the token
/// for inference. Clones share the setting.
#[derive(Clone, Default)]
pub struct TokenSwitch(Arc<AtomicBool>);

impl TokenSwitch {
    pub fn new(required: bool) -> TokenSwitch {
        TokenSwitch(Arc::new(AtomicBool::new(required)))
    }

    /// From now on, the calls need the token.
    pub fn require(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_required(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl From<bool> for TokenSwitch {
    fn from(required: bool) -> TokenSwitch {
        TokenSwitch::new(required)
    }
}

impl fmt::Debug for TokenSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSwitch({})", self.is_required())
    }
}

impl fmt::Debug for TokenRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRule")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("guards", &self.guards)
            .finish()
    }
}

/// What calls to services the rule does not name are called in the error.
pub const OTHER_CALLS: &str = "calls";

/// What Triton's repository load and unload calls are called in the error.
pub const REPOSITORY_CALLS: &str = "repository load and unload calls";

impl TokenRule {
    /// Every call needs `token` (when one is set) until services are named with
    /// [`TokenRule::require`] or [`TokenRule::open`].
    pub fn new(token: Option<String>) -> TokenRule {
        TokenRule {
            token: token.map(Arc::from),
            guards: Arc::new(Vec::new()),
        }
    }

    /// Calls to `service` (`herd.v1.Admin`) need the token; `what` names them in the
    /// error ("admin calls").
    pub fn require(self, service: &str, what: &'static str) -> TokenRule {
        self.with(format!("/{service}/"), Access::Token(what))
    }

    /// Calls to `service` need no token.
    pub fn open(self, service: &str) -> TokenRule {
        self.with(format!("/{service}/"), Access::Open)
    }

    /// Calls to `service` need the token only `if required`.
    pub fn require_if(self, required: bool, service: &str, what: &'static str) -> TokenRule {
        if required {
            self.require(service, what)
        } else {
            self.open(service)
        }
    }

    /// Calls to `service` need the token while `switch` is on.
    pub fn require_while(
        self,
        switch: TokenSwitch,
        service: &str,
        what: &'static str,
    ) -> TokenRule {
        self.with(format!("/{service}/"), Access::Switched(switch, what))
    }

    /// Calls to `method` of `service` need the token, whatever the service's rule.
    pub fn require_method(self, service: &str, method: &str, what: &'static str) -> TokenRule {
        self.with(format!("/{service}/{method}"), Access::Token(what))
    }

    /// Calls to `method` of `service` need no token, whatever the service's rule.
    pub fn open_method(self, service: &str, method: &str) -> TokenRule {
        self.with(format!("/{service}/{method}"), Access::Open)
    }

    fn with(self, path: String, access: Access) -> TokenRule {
        let mut guards = Arc::unwrap_or_clone(self.guards);
        guards.retain(|g| g.path != path);
        guards.push(Guard { path, access });
        TokenRule {
            token: self.token,
            guards: Arc::new(guards),
        }
    }

    /// The inference service as agents and schedulers alike serve it: open unless
    /// `inference` requires the token, except liveness and readiness, which probes
    /// call without one, and repository load and unload, which change what is served
    /// and so always need it.
    fn inference(self, inference: TokenSwitch) -> TokenRule {
        use herd_proto::inference::grpc_inference_service_server::SERVICE_NAME as INFERENCE;
        self.require_while(inference, INFERENCE, "inference calls")
            .open_method(INFERENCE, "ServerLive")
            .open_method(INFERENCE, "ServerReady")
            .require_method(INFERENCE, "RepositoryModelLoad", REPOSITORY_CALLS)
            .require_method(INFERENCE, "RepositoryModelUnload", REPOSITORY_CALLS)
    }

    /// An agent's rule, as `herd_agent::serve` has it: inference calls need the token
    /// while `require_token_for_inference` is on (a joined agent turns it on when its
    /// scheduler says so); `herd.v1.Agent` calls always do.
    pub fn agent(
        token: Option<String>,
        require_token_for_inference: impl Into<TokenSwitch>,
    ) -> TokenRule {
        use herd_proto::herd::agent_server::SERVICE_NAME as AGENT;
        TokenRule::new(token)
            .inference(require_token_for_inference.into())
            .require(AGENT, "herd.v1 agent calls")
    }

    /// The scheduler's rule, as `herd_scheduler::serve` has it: inference calls need the
    /// token only when `require_token_for_inference`; joining and admin calls always do.
    pub fn scheduler(
        token: Option<String>,
        require_token_for_inference: impl Into<TokenSwitch>,
    ) -> TokenRule {
        use herd_proto::herd::admin_server::SERVICE_NAME as ADMIN;
        use herd_proto::herd::scheduler_server::SERVICE_NAME as SCHEDULER;
        TokenRule::new(token)
            .inference(require_token_for_inference.into())
            .require(SCHEDULER, "joining the cluster")
            .require(ADMIN, "admin calls")
    }

    /// What calls to `path` are called when refused, or `None` when they need no token.
    pub fn guard(&self, path: &str) -> Option<&'static str> {
        self.token.as_ref()?;
        let method = self.guards.iter().find(|g| g.path == path);
        let service = || {
            self.guards
                .iter()
                .find(|g| g.path.ends_with('/') && path.starts_with(&g.path))
        };
        match method.or_else(service) {
            Some(g) => g.access.what(),
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

    const INFERENCE: &str = "/inference.GRPCInferenceService/ModelInfer";
    const LIVE: &str = "/inference.GRPCInferenceService/ServerLive";
    const READY: &str = "/inference.GRPCInferenceService/ServerReady";
    const LOAD: &str = "/inference.GRPCInferenceService/RepositoryModelLoad";
    const UNLOAD: &str = "/inference.GRPCInferenceService/RepositoryModelUnload";
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
    fn repository_load_and_unload_need_the_token_even_when_inference_is_open() {
        for rule in [
            TokenRule::agent(Some("s3cret".into()), false),
            TokenRule::scheduler(Some("s3cret".into()), false),
        ] {
            assert_eq!(rule.guard(INFERENCE), None);
            assert_eq!(rule.guard(LOAD), Some(REPOSITORY_CALLS));
            assert_eq!(rule.guard(UNLOAD), Some(REPOSITORY_CALLS));
            // A method rule is the method's only: a longer name is not it.
            assert_eq!(rule.guard(&format!("{LOAD}X")), None);
        }
        assert_eq!(TokenRule::agent(None, false).guard(UNLOAD), None);
    }

    #[test]
    fn probes_need_no_token_even_when_inference_does() {
        for rule in [
            TokenRule::agent(Some("s3cret".into()), true),
            TokenRule::scheduler(Some("s3cret".into()), true),
        ] {
            assert_eq!(rule.guard(INFERENCE), Some("inference calls"));
            assert_eq!(rule.guard(LIVE), None);
            assert_eq!(rule.guard(READY), None);
        }
    }

    #[test]
    fn a_switch_turned_on_after_the_rule_was_built_closes_inference() {
        let switch = TokenSwitch::new(false);
        let rule = TokenRule::agent(Some("s3cret".into()), switch.clone());
        let layer = AuthLayer::new(rule.clone());
        assert_eq!(rule.guard(INFERENCE), None);
        switch.require();
        assert_eq!(rule.guard(INFERENCE), Some("inference calls"));
        // Layers and services built from the rule share the switch.
        assert_eq!(layer.rule.guard(INFERENCE), Some("inference calls"));
        assert_eq!(rule.guard(LIVE), None);
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
