//! Per gRPC method: answers by status code and a latency histogram (microseconds,
//! [`crate::histogram::latency_histogram`]), read through a cloneable [`GrpcMetrics`]
//! handle so a Prometheus endpoint can export them.
//!
//! A call's status is in the response headers when it was refused or failed before
//! answering (a trailers-only response), otherwise in the trailers after the body; the
//! call is counted, and its latency taken, when the status is known. A response body
//! dropped before its trailers (the caller went away) counts as CANCELLED.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hdrhistogram::Histogram;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;
use tonic::Code;
use tower::{Layer, Service};

/// At most this many methods are kept apart; calls to further paths (a scanner trying
/// paths, say) are counted together under [`OTHER_METHOD`], so memory stays bounded.
pub const MAX_METHODS: usize = 256;

/// Where calls past [`MAX_METHODS`] distinct paths are counted.
pub const OTHER_METHOD: &str = "other";

/// gRPC has codes 0 (OK) to 16 (UNAUTHENTICATED).
const CODES: usize = 17;

/// One method's answers so far.
#[derive(Clone, Debug)]
pub struct MethodMetrics {
    codes: [u64; CODES],
    latency_us: Histogram<u64>,
}

impl MethodMetrics {
    fn new() -> MethodMetrics {
        MethodMetrics {
            codes: [0; CODES],
            latency_us: crate::histogram::latency_histogram(),
        }
    }

    /// Calls answered with `code`.
    pub fn count(&self, code: Code) -> u64 {
        self.codes.get(code as usize).copied().unwrap_or(0)
    }

    /// Calls answered, whatever the code.
    pub fn total(&self) -> u64 {
        self.codes.iter().sum()
    }

    /// The codes seen, with their counts, in code order.
    pub fn codes(&self) -> impl Iterator<Item = (Code, u64)> + '_ {
        self.codes
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(code, n)| (Code::from_i32(code as i32), *n))
    }

    /// Time from the call's arrival to its status, microseconds.
    pub fn latency_us(&self) -> &Histogram<u64> {
        &self.latency_us
    }

    fn record(&mut self, code: Code, micros: u64) {
        if let Some(n) = self.codes.get_mut(code as usize) {
            *n += 1;
        }
        self.latency_us.saturating_record(micros.max(1));
    }
}

/// The metrics of one server, shared by its layer and whoever exports them.
#[derive(Clone, Debug, Default)]
pub struct GrpcMetrics {
    methods: Arc<Mutex<BTreeMap<String, MethodMetrics>>>,
}

impl GrpcMetrics {
    pub fn new() -> GrpcMetrics {
        GrpcMetrics::default()
    }

    /// A copy of every method's metrics, by path (`/herd.v1.Admin/ListNodes`).
    pub fn snapshot(&self) -> BTreeMap<String, MethodMetrics> {
        self.lock().clone()
    }

    /// A layer that records into these metrics.
    pub fn layer(&self) -> MetricsLayer {
        MetricsLayer {
            metrics: self.clone(),
        }
    }

    fn record(&self, method: &str, code: Code, micros: u64) {
        let mut methods = self.lock();
        let key = if methods.contains_key(method) || methods.len() < MAX_METHODS {
            method
        } else {
            OTHER_METHOD
        };
        match methods.get_mut(key) {
            Some(m) => m.record(code, micros),
            None => {
                let mut m = MethodMetrics::new();
                m.record(code, micros);
                methods.insert(key.to_string(), m);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, MethodMetrics>> {
        self.methods.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Records every call into a [`GrpcMetrics`]; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct MetricsLayer {
    metrics: GrpcMetrics,
}

impl MetricsLayer {
    pub fn new(metrics: GrpcMetrics) -> MetricsLayer {
        MetricsLayer { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`MetricsLayer`].
#[derive(Clone, Debug)]
pub struct Metrics<S> {
    inner: S,
    metrics: GrpcMetrics,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Metrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Body,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let meter = Meter {
            metrics: self.metrics.clone(),
            method: request.uri().path().to_string(),
            start: Instant::now(),
            done: false,
        };
        MeteredFuture {
            inner: self.inner.call(request),
            meter: Some(meter),
        }
    }
}

/// One call being timed. Dropped before it is finished, it counts as CANCELLED.
struct Meter {
    metrics: GrpcMetrics,
    method: String,
    start: Instant,
    done: bool,
}

impl Meter {
    fn finish(mut self, code: Code) {
        self.record(code);
    }

    fn record(&mut self, code: Code) {
        if !self.done {
            self.done = true;
            let micros = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.metrics.record(&self.method, code, micros);
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// The `grpc-status` in these headers, if any.
fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

pin_project_lite::pin_project! {
    /// The service's response, its body metered.
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        meter: Option<Meter>,
    }
}

impl<F, ResBody, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: Body,
{
    type Output = Result<http::Response<MeteredBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.inner.poll(cx));
        let meter = this.meter.take();
        Poll::Ready(match answer {
            Ok(response) => {
                let ended = match status_in(response.headers()) {
                    Some(code) => Some(code),
                    // Nothing more will come to say how the call ended.
                    None if response.body().is_end_stream() => Some(Code::Unknown),
                    None => None,
                };
                let meter = match (meter, ended) {
                    (Some(meter), Some(code)) => {
                        meter.finish(code);
                        None
                    }
                    (meter, _) => meter,
                };
                Ok(response.map(|inner| MeteredBody { inner, meter }))
            }
            Err(e) => {
                if let Some(meter) = meter {
                    meter.finish(Code::Unknown);
                }
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the call when its trailers pass.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        meter: Option<Meter>,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        let ended = match &frame {
            Some(Ok(frame)) => frame
                .trailers_ref()
                .map(|t| status_in(t).unwrap_or(Code::Unknown)),
            Some(Err(_)) => Some(Code::Unknown),
            None => Some(Code::Unknown),
        };
        if let Some(code) = ended {
            if let Some(meter) = this.meter.take() {
                meter.finish(code);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::test_support::{grpc_request, FrameBody};
    use std::time::Duration;
    use tower_test::mock;

    const LIVE: &str = "/inference.GRPCInferenceService/ServerLive";
    const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

    type GrpcBody = FrameBody;

    /// A whole gRPC answer with `code`.
    fn answer(code: Code) -> GrpcBody {
        FrameBody::answer(&tonic::Status::new(code, ""))
    }

    async fn read_to_end<B: Body + Unpin>(body: &mut B) {
        while std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .is_some()
        {}
    }

    async fn read_one_frame<B: Body + Unpin>(body: &mut B) {
        let _ = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn calls_are_counted_by_method_and_code_with_their_latency() {
        let metrics = GrpcMetrics::new();
        let (mut service, mut handle) =
            mock::spawn_layer::<_, http::Response<GrpcBody>, _>(metrics.layer());

        // An answer whose status comes in the trailers, after 5 ms.
        assert!(service.poll_ready().is_ready());
        let call = service.call(grpc_request(LIVE, &[]));
        let (_, reply) = handle.next_request().await.expect("the call");
        tokio::time::advance(Duration::from_millis(5)).await;
        reply.send_response(http::Response::new(answer(Code::Ok)));
        let mut response = call.await.expect("answered");
        assert!(metrics.snapshot().is_empty(), "no status yet");
        read_to_end(response.body_mut()).await;

        // A refusal: the status in the headers, no body.
        assert!(service.poll_ready().is_ready());
        let call = service.call(grpc_request(LIVE, &[]));
        let (_, reply) = handle.next_request().await.expect("the call");
        reply.send_response(tonic::Status::unauthenticated("no token").into_http::<GrpcBody>());
        drop(call.await.expect("answered"));

        // Another method, failing in its trailers.
        assert!(service.poll_ready().is_ready());
        let call = service.call(grpc_request(INFER, &[]));
        let (_, reply) = handle.next_request().await.expect("the call");
        reply.send_response(http::Response::new(answer(Code::NotFound)));
        read_to_end(call.await.expect("answered").body_mut()).await;

        let snapshot = metrics.snapshot();
        let live = &snapshot[LIVE];
        assert_eq!(live.count(Code::Ok), 1);
        assert_eq!(live.count(Code::Unauthenticated), 1);
        assert_eq!(live.total(), 2);
        assert_eq!(
            live.codes().collect::<Vec<_>>(),
            vec![(Code::Ok, 1), (Code::Unauthenticated, 1)]
        );
        assert_eq!(live.latency_us().len(), 2);
        assert!(live.latency_us().equivalent(live.latency_us().max(), 5_000));
        let infer = &snapshot[INFER];
        assert_eq!(infer.count(Code::NotFound), 1);
        assert_eq!(infer.total(), 1);
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_status_counts_as_cancelled_and_one_without_as_unknown() {
        let metrics = GrpcMetrics::new();
        let (mut service, mut handle) =
            mock::spawn_layer::<_, http::Response<GrpcBody>, _>(metrics.layer());

        // The body is dropped after its first frame, before the trailers.
        assert!(service.poll_ready().is_ready());
        let call = service.call(grpc_request(INFER, &[]));
        let (_, reply) = handle.next_request().await.expect("the call");
        reply.send_response(http::Response::new(answer(Code::Ok)));
        let mut response = call.await.expect("answered");
        read_one_frame(response.body_mut()).await;
        drop(response);

        // The call itself is dropped before the service answers.
        assert!(service.poll_ready().is_ready());
        drop(service.call(grpc_request(INFER, &[])));
        let (_, _gone) = handle.next_request().await.expect("the dropped call");

        // The service fails.
        assert!(service.poll_ready().is_ready());
        let call = service.call(grpc_request(INFER, &[]));
        let (_, reply) = handle.next_request().await.expect("the call");
        reply.send_error("the connection broke");
        assert!(call.await.is_err());

        // An answer with no status at all, and nothing more to come.
        assert!(service.poll_ready().is_ready());
        let call = service.call(grpc_request(INFER, &[]));
        let (_, reply) = handle.next_request().await.expect("the call");
        reply.send_response(http::Response::new(GrpcBody::default()));
        drop(call.await.expect("answered"));

        let snapshot = metrics.snapshot();
        assert_eq!(snapshot[INFER].count(Code::Cancelled), 2);
        assert_eq!(snapshot[INFER].count(Code::Unknown), 2);
    }

    #[test]
    fn paths_past_the_cap_are_counted_together() {
        let metrics = GrpcMetrics::new();
        for i in 0..MAX_METHODS + 10 {
            metrics.record(&format!("/scan.S/M{i}"), Code::Unimplemented, 10);
        }
        metrics.record("/scan.S/M0", Code::Unimplemented, 10);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.len(), MAX_METHODS + 1);
        assert_eq!(snapshot[OTHER_METHOD].total(), 10);
        assert_eq!(snapshot["/scan.S/M0"].total(), 2);
    }
}
