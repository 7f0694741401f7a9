//! A message over a service's size limit (`max_decoding_message_size`,
//! `max_encoding_message_size`) is refused by tonic with OUT_OF_RANGE; gRPC's own
//! implementations, and so Triton's clients, expect RESOURCE_EXHAUSTED. This layer
//! rewrites tonic's answer, in words that say what to change: a request too large is
//! refused before the service runs (a trailers-only response: the status is in the
//! headers), a response too large to send ends in trailers that say so.
//!
//! Only tonic's own size errors are rewritten: a service's OUT_OF_RANGE of its own
//! passes as it is.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tonic::{Code, Status};
use tower::{Layer, Service};

/// The flag that sets the limit, named in the answer.
const FLAG: &str = "--max-message-size";

/// Which way a message too large was going, as tonic's error says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Received ("decoded"): on a server, the request.
    Received,
    /// Sent ("encoded"): on a server, the response.
    Sent,
}

/// One of tonic's size errors, read back from its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge {
    pub direction: Direction,
    /// The message's length in bytes.
    pub len: u64,
    /// The limit it passed.
    pub limit: u64,
}

impl TooLarge {
    /// The size error `status` is, when it is one of tonic's ("Error, decoded message
    /// length too large: found N bytes, the limit is: M bytes").
    pub fn of(status: &Status) -> Option<TooLarge> {
        if status.code() != Code::OutOfRange {
            return None;
        }
        let rest = status.message().strip_prefix("Error, ")?;
        let (direction, rest) = if let Some(rest) = rest.strip_prefix("decoded") {
            (Direction::Received, rest)
        } else {
            (Direction::Sent, rest.strip_prefix("encoded")?)
        };
        let rest = rest.strip_prefix(" message length too large: found ")?;
        let (len, rest) = rest.split_once(" bytes, the limit is: ")?;
        let limit = rest.strip_suffix(" bytes")?;
        Some(TooLarge {
            direction,
            len: len.parse().ok()?,
            limit: limit.parse().ok()?,
        })
    }

    /// RESOURCE_EXHAUSTED, in a server's words: the request it received or the
    /// response it could not send.
    pub fn server_status(&self) -> Status {
        let limit = format!("{} bytes ({}; {FLAG})", self.limit, human(self.limit));
        Status::resource_exhausted(match self.direction {
            Direction::Received => format!(
                "the request is {} bytes; this server accepts at most {limit}",
                self.len
            ),
            Direction::Sent => format!(
                "the response is {} bytes; this server sends at most {limit}",
                self.len
            ),
        })
    }
}

fn human(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// Rewrites tonic's size error in `headers` (a response's, or its trailers); true when
/// it did.
fn rewrite(headers: &mut http::HeaderMap) -> bool {
    // Most answers are not OUT_OF_RANGE: that is all they cost.
    if headers.get(Status::GRPC_STATUS).map(|v| v.as_bytes()) != Some(b"11") {
        return false;
    }
    let message = headers
        .get(Status::GRPC_MESSAGE)
        .map(|v| super::percent_decode(v.as_bytes()))
        .unwrap_or_default();
    let Some(too_large) = TooLarge::of(&Status::out_of_range(message)) else {
        return false;
    };
    too_large.server_status().add_header(headers).is_ok()
}

/// Turns tonic's OUT_OF_RANGE for a message over the limit into RESOURCE_EXHAUSTED;
/// see the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct MessageSizeLayer;

impl<S> Layer<S> for MessageSizeLayer {
    type Service = MessageSize<S>;

    fn layer(&self, inner: S) -> MessageSize<S> {
        MessageSize { inner }
    }
}

/// See [`MessageSizeLayer`].
#[derive(Clone, Debug)]
pub struct MessageSize<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for MessageSize<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Body,
{
    type Response = http::Response<RewrittenBody<ResBody>>;
    type Error = S::Error;
    type Future = RewrittenFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        RewrittenFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's response, its status rewritten where it is tonic's size error.
    pub struct RewrittenFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, ResBody, E> Future for RewrittenFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: Body,
{
    type Output = Result<http::Response<RewrittenBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = std::task::ready!(self.project().inner.poll(cx))?;
        rewrite(response.headers_mut());
        Poll::Ready(Ok(response.map(|inner| RewrittenBody { inner })))
    }
}

pin_project_lite::pin_project! {
    /// A response body whose trailers are rewritten where they carry tonic's size error.
    pub struct RewrittenBody<B> {
        #[pin]
        inner: B,
    }
}

/// An empty body, for a layer's own answer.
impl<B: Default> Default for RewrittenBody<B> {
    fn default() -> Self {
        RewrittenBody {
            inner: B::default(),
        }
    }
}

impl<B: Body> Body for RewrittenBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = std::task::ready!(self.project().inner.poll_frame(cx));
        Poll::Ready(frame.map(|frame| {
            frame.map(|frame| match frame.into_trailers() {
                Ok(mut trailers) => {
                    rewrite(&mut trailers);
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            })
        }))
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
    use crate::layers::test_support::{grpc_request, status_of, FrameBody};
    use tower_test::mock;

    const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

    fn decoded(len: u64, limit: u64) -> Status {
        Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {limit} bytes"
        ))
    }

    type GrpcBody = FrameBody;

    async fn trailers_of<B: Body + Unpin>(body: &mut B) -> Option<http::HeaderMap> {
        let mut trailers = None;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
        {
            if let Ok(t) = frame.map(Frame::into_trailers) {
                trailers = t.ok();
            }
        }
        trailers
    }

    #[test]
    fn tonic_s_size_errors_are_read_and_others_are_not() {
        assert_eq!(
            TooLarge::of(&decoded(200, 100)),
            Some(TooLarge {
                direction: Direction::Received,
                len: 200,
                limit: 100
            })
        );
        let sent = Status::out_of_range(
            "Error, encoded message length too large: found 7 bytes, the limit is: 5 bytes",
        );
        assert_eq!(
            TooLarge::of(&sent).map(|t| t.direction),
            Some(Direction::Sent)
        );
        assert_eq!(TooLarge::of(&Status::out_of_range("index 7 of 5")), None);
        let wrong_code = Status::internal(decoded(200, 100).message());
        assert_eq!(TooLarge::of(&wrong_code), None);
    }

    #[tokio::test]
    async fn a_request_too_large_is_resource_exhausted_in_words_that_name_the_flag() {
        let (mut service, mut handle) =
            mock::spawn_layer::<_, http::Response<GrpcBody>, _>(MessageSizeLayer);
        assert!(service.poll_ready().is_ready());
        let call = service.call(grpc_request(INFER, &[]));
        let (_, reply) = handle.next_request().await.expect("the call");
        reply.send_response(decoded(209_715_205, 64 << 20).into_http::<GrpcBody>());
        let response = call.await.expect("answered");
        let status = status_of(&response).expect("a grpc-status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "the request is 209715205 bytes; this server accepts at most 67108864 bytes \
             (64.0 MiB; --max-message-size)"
        );
    }

    #[tokio::test]
    async fn a_response_too_large_is_rewritten_in_its_trailers_and_other_statuses_pass() {
        let (mut service, mut handle) =
            mock::spawn_layer::<_, http::Response<GrpcBody>, _>(MessageSizeLayer);
        let sent = Status::out_of_range(
            "Error, encoded message length too large: found 100 bytes, the limit is: 10 bytes",
        );
        assert!(service.poll_ready().is_ready());
        let call = service.call(grpc_request(INFER, &[]));
        let (_, reply) = handle.next_request().await.expect("the call");
        reply.send_response(http::Response::new(FrameBody::answer(&sent)));
        let mut response = call.await.expect("answered");
        let trailers = trailers_of(response.body_mut()).await.expect("trailers");
        let status = Status::from_header_map(&trailers).expect("a status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "the response is 100 bytes; this server sends at most 10 bytes \
             (10 B; --max-message-size)"
        );

        // A service's own OUT_OF_RANGE is its answer.
        let own = Status::out_of_range("index 7 of 5");
        assert!(service.poll_ready().is_ready());
        let call = service.call(grpc_request(INFER, &[]));
        let (_, reply) = handle.next_request().await.expect("the call");
        reply.send_response(http::Response::new(FrameBody::answer(&own)));
        let mut response = call.await.expect("answered");
        let trailers = trailers_of(response.body_mut()).await.expect("trailers");
        let status = Status::from_header_map(&trailers).expect("a status");
        assert_eq!(
            (status.code(), status.message()),
            (Code::OutOfRange, "index 7 of 5")
        );
    }
}
