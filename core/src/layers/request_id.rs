//! A request id for every call: the caller's `x-request-id` when it is a sane one,
//! else a fresh one. It goes into the request's extensions (a handler reads it with
//! `request.extensions().get::<RequestId>()`), back in the response's `x-request-id`
//! header, and on the `grpc` span the call runs in, so one request can be followed
//! through the logs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};
use tracing::instrument::Instrumented;
use tracing::Instrument;

/// The header a request id travels in, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest request id taken from a caller.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// One call's id: 1 to [`MAX_REQUEST_ID_LEN`] visible ASCII characters (no spaces).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A fresh id: 32 random hex digits.
    pub fn generate() -> RequestId {
        RequestId(format!("{:032x}", rand::random::<u128>()).into())
    }

    /// A caller's id, if it is one: not empty, not too long, visible ASCII only.
    pub fn parse(value: &[u8]) -> Option<RequestId> {
        let sane = !value.is_empty()
            && value.len() <= MAX_REQUEST_ID_LEN
            && value.iter().all(u8::is_ascii_graphic);
        let text = std::str::from_utf8(value).ok().filter(|_| sane)?;
        Some(RequestId(text.into()))
    }

    /// The caller's id if it gave a sane one, else a fresh one.
    pub fn from_caller(given: Option<&str>) -> RequestId {
        given
            .and_then(|id| RequestId::parse(id.as_bytes()))
            .unwrap_or_else(RequestId::generate)
    }

    /// The caller's id from these headers, or a fresh one.
    pub fn from_headers(headers: &http::HeaderMap) -> RequestId {
        headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| RequestId::parse(v.as_bytes()))
            .unwrap_or_else(RequestId::generate)
    }

    /// A gRPC handler's id for its call: the one [`RequestIdLayer`] chose, or for a
    /// call that did not pass the layer (a service called directly), the caller's
    /// `x-request-id` or a fresh one.
    pub fn of<T>(request: &tonic::Request<T>) -> RequestId {
        match request.extensions().get::<RequestId>() {
            Some(id) => id.clone(),
            None => RequestId::from_caller(
                request
                    .metadata()
                    .get(REQUEST_ID_HEADER)
                    .and_then(|v| v.to_str().ok()),
            ),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Gives every call a [`RequestId`] and a span; see the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl RequestIdLayer {
    pub fn new() -> RequestIdLayer {
        RequestIdLayer
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> RequestIdService<S> {
        RequestIdService { inner }
    }
}

/// See [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequestIdService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = WithRequestId<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let id = RequestId::from_headers(request.headers());
        let span = tracing::info_span!("grpc", request_id = %id, method = %request.uri().path());
        request.extensions_mut().insert(id.clone());
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        WithRequestId {
            inner: inner.instrument(span),
            id,
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's response, in the call's span, with the id in its headers.
    pub struct WithRequestId<F> {
        #[pin]
        inner: Instrumented<F>,
        id: RequestId,
    }
}

impl<F, ResBody, E> Future for WithRequestId<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut answer = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &mut answer {
            // Parsed or generated as visible ASCII, so always a valid header value.
            if let Ok(value) = http::HeaderValue::from_str(this.id.as_str()) {
                response.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
        }
        Poll::Ready(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::test_support::grpc_request;
    use std::sync::Mutex;
    use tower::ServiceExt;
    use tower_test::mock;
    use tracing_subscriber::layer::SubscriberExt;

    const PATH: &str = "/inference.GRPCInferenceService/ServerLive";

    #[test]
    fn only_sane_ids_are_taken_from_callers() {
        assert_eq!(
            RequestId::parse(b"req-42").map(|id| id.to_string()),
            Some("req-42".to_string())
        );
        let longest = vec![b'a'; MAX_REQUEST_ID_LEN];
        assert!(RequestId::parse(&longest).is_some());
        let too_long = vec![b'a'; MAX_REQUEST_ID_LEN + 1];
        for bad in [
            &b""[..],
            &too_long,
            b"two words",
            b"tab\there",
            b"caf\xc3\xa9",
            b"nl\n",
        ] {
            assert!(RequestId::parse(bad).is_none(), "{bad:?}");
        }
        let fresh = RequestId::generate();
        assert_eq!(fresh.as_str().len(), 32);
        assert!(RequestId::parse(fresh.as_str().as_bytes()).is_some());
        assert_ne!(fresh, RequestId::generate());
    }

    #[test]
    fn a_handler_takes_the_layers_id_else_the_callers_else_a_fresh_one() {
        assert_eq!(RequestId::from_caller(Some("req-42")).as_str(), "req-42");
        for bad in [Some(""), Some("two words"), Some("caf\u{e9}"), None] {
            let id = RequestId::from_caller(bad);
            assert_eq!(id.as_str().len(), 32, "{bad:?} is replaced: {id}");
        }
        let mut request = tonic::Request::new(());
        assert_eq!(RequestId::of(&request).as_str().len(), 32);
        request
            .metadata_mut()
            .insert(REQUEST_ID_HEADER, "req-7".parse().expect("ascii"));
        assert_eq!(RequestId::of(&request).as_str(), "req-7");
        let layered = RequestId::generate();
        request.extensions_mut().insert(layered.clone());
        assert_eq!(RequestId::of(&request), layered);
    }

    #[tokio::test]
    async fn the_callers_id_reaches_the_service_and_comes_back() {
        let (mut service, mut handle) =
            mock::spawn_layer::<_, http::Response<String>, _>(RequestIdLayer::new());
        assert!(service.poll_ready().is_ready());
        let call = service.call(grpc_request(PATH, &[(REQUEST_ID_HEADER, "req-42")]));
        let (request, reply) = handle.next_request().await.expect("the call");
        assert_eq!(
            request
                .extensions()
                .get::<RequestId>()
                .map(RequestId::as_str),
            Some("req-42")
        );
        reply.send_response(http::Response::new(String::new()));
        let response = call.await.expect("answered");
        assert_eq!(response.headers()[REQUEST_ID_HEADER], "req-42");
    }

    #[tokio::test]
    async fn a_missing_or_bad_id_is_replaced_by_a_fresh_one() {
        let (mut service, mut handle) =
            mock::spawn_layer::<_, http::Response<String>, _>(RequestIdLayer::new());
        for headers in [&[][..], &[(REQUEST_ID_HEADER, "has spaces in it")][..]] {
            assert!(service.poll_ready().is_ready());
            let call = service.call(grpc_request(PATH, headers));
            let (request, reply) = handle.next_request().await.expect("the call");
            let id = request
                .extensions()
                .get::<RequestId>()
                .expect("an id")
                .clone();
            assert_eq!(id.as_str().len(), 32, "{id}");
            reply.send_response(http::Response::new(String::new()));
            let response = call.await.expect("answered");
            assert_eq!(response.headers()[REQUEST_ID_HEADER], id.as_str());
        }
    }

    /// Records each new span as `name field=value ...`.
    #[derive(Clone, Default)]
    struct Spans(Arc<Mutex<Vec<String>>>);

    struct Fields(String);

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            self.0.push_str(&format!(" {}={:?}", field.name(), value));
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _id: &tracing::span::Id,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut fields = Fields(attrs.metadata().name().to_string());
            attrs.record(&mut fields);
            self.0.lock().expect("not poisoned").push(fields.0);
        }
    }

    #[tokio::test]
    async fn the_service_runs_in_the_calls_span() {
        let spans = Spans::default();
        let _default =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
        let inner = tower::service_fn(|_request: http::Request<()>| async {
            let current = tracing::Span::current();
            let name = current.metadata().map(|m| m.name()).unwrap_or("none");
            Ok::<_, std::convert::Infallible>(http::Response::new(name.to_string()))
        });
        let response = RequestIdLayer::new()
            .layer(inner)
            .oneshot(grpc_request(PATH, &[(REQUEST_ID_HEADER, "req-7")]))
            .await
            .expect("answered");
        assert_eq!(response.body(), "grpc");
        assert_eq!(
            spans.0.lock().expect("not poisoned").as_slice(),
            [format!("grpc request_id=req-7 method={PATH}")]
        );
    }
}
