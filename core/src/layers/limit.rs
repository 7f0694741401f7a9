//! At most N calls in flight through a server, all connections together. The next one
//! is answered RESOURCE_EXHAUSTED at once: load is shed, never queued. A call holds its
//! permit until its response future completes or is dropped (a caller gone, a
//! deadline passed); for a streaming response that is when the response headers are
//! ready, not when the stream ends.

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tower::{Layer, Service};

use super::Either;

/// Sheds calls past `max` in flight; see the module docs. Every service this layer
/// makes (tonic makes one per connection) shares its permits.
#[derive(Clone, Debug)]
pub struct InFlightLimitLayer {
    max: usize,
    permits: Arc<Semaphore>,
}

impl InFlightLimitLayer {
    /// `max` calls at once (at least 1, at most tokio's `Semaphore::MAX_PERMITS`).
    pub fn new(max: usize) -> InFlightLimitLayer {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        InFlightLimitLayer {
            max,
            permits: Arc::new(Semaphore::new(max)),
        }
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> InFlightLimit<S> {
        InFlightLimit {
            inner,
            max: self.max,
            permits: self.permits.clone(),
        }
    }
}

/// See [`InFlightLimitLayer`].
#[derive(Clone, Debug)]
pub struct InFlightLimit<S> {
    inner: S,
    max: usize,
    permits: Arc<Semaphore>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for InFlightLimit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Permitted<S::Future>, Ready<Result<S::Response, S::Error>>>;

    /// Ready whenever the inner service is: a call over the limit is refused in
    /// `call`, not held back here, so it never waits.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Either::Left {
                inner: Permitted {
                    inner: self.inner.call(request),
                    permit: Some(permit),
                },
            },
            Err(_) => {
                let status = Status::resource_exhausted(format!(
                    "the server is at its limit of {} calls in flight; try again later",
                    self.max
                ));
                Either::Right {
                    inner: ready(Ok(status.into_http())),
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's answer; the permit goes back when it is ready or dropped.
    pub struct Permitted<F> {
        #[pin]
        inner: F,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<F: Future> Future for Permitted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.inner.poll(cx));
        this.permit.take();
        Poll::Ready(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::test_support::{grpc_request, status_of};
    use tower_test::mock;

    const PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

    #[tokio::test]
    async fn calls_past_the_limit_are_refused_at_once() {
        let layer = InFlightLimitLayer::new(2);
        let (mut service, mut handle) =
            mock::spawn_layer::<_, http::Response<String>, _>(layer.clone());

        assert!(service.poll_ready().is_ready());
        let first = service.call(grpc_request(PATH, &[]));
        assert!(service.poll_ready().is_ready());
        let second = service.call(grpc_request(PATH, &[]));
        let (_, reply_first) = handle.next_request().await.expect("the first call");
        let (_, reply_second) = handle.next_request().await.expect("the second call");
        assert_eq!(layer.in_flight(), 2);

        // The third is answered without waiting and without reaching the service.
        assert!(service.poll_ready().is_ready(), "shedding, not queueing");
        let response = service
            .call(grpc_request(PATH, &[]))
            .await
            .expect("a status response");
        let status = status_of(&response).expect("a grpc-status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "the server is at its limit of 2 calls in flight; try again later"
        );
        assert!(
            handle.poll_request().is_pending(),
            "the service saw nothing"
        );

        // An answer frees its permit, and so does a call dropped unanswered.
        reply_first.send_response(http::Response::new("one".to_string()));
        assert_eq!(first.await.expect("answered").body(), "one");
        assert_eq!(layer.in_flight(), 1);
        drop(second);
        assert_eq!(layer.in_flight(), 0);
        drop(reply_second);

        assert!(service.poll_ready().is_ready());
        let third = service.call(grpc_request(PATH, &[]));
        let (_, reply) = handle.next_request().await.expect("room again");
        reply.send_response(http::Response::new("three".to_string()));
        assert_eq!(third.await.expect("answered").body(), "three");
    }

    #[tokio::test]
    async fn services_from_one_layer_share_its_permits() {
        let layer = InFlightLimitLayer::new(1);
        let (mut a, mut handle_a) =
            mock::spawn_layer::<_, http::Response<String>, _>(layer.clone());
        let (mut b, _handle_b) = mock::spawn_layer::<_, http::Response<String>, _>(layer.clone());
        assert!(a.poll_ready().is_ready());
        let _held = a.call(grpc_request(PATH, &[]));
        let (_, _reply) = handle_a.next_request().await.expect("the call");
        assert!(b.poll_ready().is_ready());
        let response = b.call(grpc_request(PATH, &[])).await.expect("a status");
        assert_eq!(
            status_of(&response).expect("a grpc-status").code(),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn a_limit_of_zero_means_one() {
        assert_eq!(InFlightLimitLayer::new(0).max, 1);
    }
}
