//! What every gRPC server of herd needs, as tower layers around tonic's router:
//! a request id and its tracing span, per-method metrics, the cluster token, a limit
//! on calls in flight and deadlines. Each is one file and is tested alone with
//! `tower_test::mock`; [`ServerStack`] stacks them in the order they belong.
//!
//! Order, outermost first, and why:
//! 1. [`RequestIdLayer`]: every call, refused or not, gets an id, a span and the
//!    `x-request-id` response header.
//! 2. [`MetricsLayer`]: counts every answer, including the refusals below.
//! 3. [`AuthLayer`]: a call without the token takes no permit and starts no timer.
//! 4. [`InFlightLimitLayer`]: sheds load before any work starts.
//! 5. [`InFlightBytesLayer`]: sheds a request that would pass the bytes the server may
//!    hold, as its length prefix arrives, before it is read into memory.
//! 6. [`EarlyRefusalLayer`]: refuses an inference request its model would refuse
//!    anyway (full, or unable to answer before the deadline) as soon as its first bytes
//!    name the model, before the rest is read.
//! 7. [`DeadlineLayer`]: times the service itself; a call past its deadline is dropped,
//!    which frees its permit and its bytes.
//! 8. [`MessageSizeLayer`]: tonic's OUT_OF_RANGE for a message over the size limit
//!    becomes RESOURCE_EXHAUSTED, as gRPC's clients expect; the layers above count it so.
//!
//! A server adds the stack with `Server::builder().layer(..)`:
//!
//! ```no_run
//! # use std::convert::Infallible;
//! # use tonic::body::Body;
//! # async fn serve<S>(listener: tokio::net::TcpListener, admin: S) -> Result<(), tonic::transport::Error>
//! # where
//! #     S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
//! #         + tonic::server::NamedService + Clone + Send + Sync + 'static,
//! #     S::Future: Send + 'static,
//! # {
//! use std::time::Duration;
//! use herd_core::layers::{GrpcMetrics, ServerStack, TokenRule};
//! # let token = Some("s3cret".to_string());
//! // The scheduler: its token rule, at most 1024 calls at once, none longer than 10 min.
//! // (The agent: `TokenRule::agent(agent.token.clone(), agent.require_token_for_inference)`.)
//! let metrics = GrpcMetrics::new(); // keep a clone for /metrics: metrics.snapshot()
//! let stack = ServerStack::new(TokenRule::scheduler(token, false))
//!     .max_in_flight(1024)
//!     .max_deadline(Duration::from_secs(600))
//!     .metrics(metrics.clone());
//! let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
//! tonic::transport::Server::builder()
//!     .layer(stack)
//!     .add_service(admin) // no interceptor: the stack checks the token
//!     .serve_with_incoming_shutdown(incoming, std::future::pending())
//!     .await
//! # }
//! ```

pub mod auth;
pub mod deadline;
pub mod early_refusal;
pub mod in_flight_bytes;
pub mod limit;
pub mod message_size;
pub mod metrics;
pub mod request_id;
mod stack;
mod watched_body;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pub use auth::{Auth, AuthLayer, TokenRule};
pub use deadline::{Deadline, DeadlineLayer};
pub use early_refusal::{EarlyRefusal, EarlyRefusalLayer};
pub use in_flight_bytes::{BytesBudget, Charge, InFlightBytes, InFlightBytesLayer};
pub use limit::{InFlightLimit, InFlightLimitLayer};
pub use message_size::{MessageSize, MessageSizeLayer, TooLarge};
pub use metrics::{GrpcMetrics, MethodMetrics, Metrics, MetricsLayer};
pub use request_id::{RequestId, RequestIdLayer, RequestIdService};
pub use stack::{ServerStack, Stacked, DEFAULT_MAX_IN_FLIGHT};

pin_project_lite::pin_project! {
    /// One of two response futures: the inner service's or a layer's own answer.
    #[project = EitherProj]
    pub enum Either<A, B> {
        Left { #[pin] inner: A },
        Right { #[pin] inner: B },
    }
}

impl<A, B, T> Future for Either<A, B>
where
    A: Future<Output = T>,
    B: Future<Output = T>,
{
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.project() {
            EitherProj::Left { inner } => inner.poll(cx),
            EitherProj::Right { inner } => inner.poll(cx),
        }
    }
}

/// Undoes grpc-message's percent-encoding.
pub(crate) fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Requests, bodies and statuses as the layers see them.

    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body::{Body, Frame};

    /// A gRPC request to `path` with these headers.
    pub fn grpc_request(path: &str, headers: &[(&'static str, &'static str)]) -> http::Request<()> {
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://localhost{path}"))
            .header(http::header::CONTENT_TYPE, "application/grpc");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).expect("a valid request")
    }

    /// A body of these frames, in order, as a server or a client would stream them.
    #[derive(Debug, Default)]
    pub struct FrameBody(VecDeque<Frame<Bytes>>);

    impl FrameBody {
        /// Data frames only: what a client sends.
        pub fn data(chunks: impl IntoIterator<Item = Vec<u8>>) -> FrameBody {
            FrameBody(
                chunks
                    .into_iter()
                    .map(|c| Frame::data(Bytes::from(c)))
                    .collect(),
            )
        }

        /// One empty message and then trailers with `status`: a whole gRPC answer.
        pub fn answer(status: &tonic::Status) -> FrameBody {
            let mut trailers = http::HeaderMap::new();
            status.add_header(&mut trailers).expect("a valid status");
            FrameBody(VecDeque::from([
                Frame::data(Bytes::from_static(b"\0\0\0\0\0")),
                Frame::trailers(trailers),
            ]))
        }
    }

    impl Body for FrameBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    /// Reads a request body as a service would: its bytes, or the first error.
    pub async fn read(body: &mut tonic::body::Body) -> Result<usize, tonic::Status> {
        let mut n = 0;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
        {
            n += frame?.into_data().map_or(0, |d| d.len());
        }
        Ok(n)
    }

    /// The status a response carries in its headers (a trailers-only answer).
    pub fn status_of<B>(response: &http::Response<B>) -> Option<tonic::Status> {
        let headers = response.headers();
        let code = tonic::Code::from_bytes(headers.get("grpc-status")?.as_bytes());
        let message = headers
            .get("grpc-message")
            .map(|v| super::percent_decode(v.as_bytes()))
            .unwrap_or_default();
        Some(tonic::Status::new(code, message))
    }
}
