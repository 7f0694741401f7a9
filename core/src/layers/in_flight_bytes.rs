//! At most N bytes of requests held through a server, all connections together. A
//! request's bytes count from the moment its gRPC length prefix arrives (before the
//! message is read into memory) until its response ends or is dropped; a request that
//! would pass the budget is refused with RESOURCE_EXHAUSTED at once, before it is read.
//! Load is shed, never queued.
//!
//! A call that sends several messages holds the bytes of its latest one. A message
//! larger than the whole budget is not counted: the message-size limit (never below
//! the budget's size, as a server sets them) refuses it in its own words.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;
use tower::{BoxError, Layer, Service};

use super::watched_body::{WatchedBody, Watcher};

/// gRPC's message prefix: a compression flag and a big-endian u32 length.
const PREFIX: usize = 5;

/// Sheds requests past `max` bytes in flight; see the module docs. Every service this
/// layer makes (tonic makes one per connection) shares its budget.
#[derive(Clone, Debug)]
pub struct InFlightBytesLayer {
    budget: BytesBudget,
}

impl InFlightBytesLayer {
    /// At most `max` bytes of requests at once.
    pub fn new(max: usize) -> InFlightBytesLayer {
        InFlightBytesLayer {
            budget: BytesBudget::new(max),
        }
    }

    /// No limit.
    pub fn unlimited() -> InFlightBytesLayer {
        InFlightBytesLayer::new(usize::MAX)
    }

    /// Bytes of requests held now.
    pub fn in_flight(&self) -> usize {
        self.budget.used.load(Ordering::Acquire)
    }
}

impl<S> Layer<S> for InFlightBytesLayer {
    type Service = InFlightBytes<S>;

    fn layer(&self, inner: S) -> InFlightBytes<S> {
        InFlightBytes {
            inner,
            budget: self.budget.clone(),
        }
    }
}

/// The bytes a server may hold, and those it holds; clones share them. Public so that
/// a server's HTTP front sheds with the same rule and words.
#[derive(Clone, Debug)]
pub struct BytesBudget {
    max: usize,
    used: Arc<AtomicUsize>,
}

impl BytesBudget {
    /// At most `max` bytes at once.
    pub fn new(max: usize) -> BytesBudget {
        BytesBudget {
            max,
            used: Arc::default(),
        }
    }

    fn unlimited(&self) -> bool {
        self.max == usize::MAX
    }

    /// Takes `bytes` until the charge is dropped, or says why not (RESOURCE_EXHAUSTED).
    pub fn try_take(&self, bytes: usize) -> Result<Charge, Status> {
        self.try_take_as(bytes, false)
    }

    /// As [`BytesBudget::try_take`], for a request of the bulk class when `bulk`: bulk
    /// requests may hold three quarters of the budget, so that under overload they are
    /// refused first and the last quarter stays for interactive ones.
    pub fn try_take_as(&self, bytes: usize, bulk: bool) -> Result<Charge, Status> {
        let limit = if bulk {
            self.max - self.max / 4
        } else {
            self.max
        };
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            });
        let max = bytesize::ByteSize(self.max as u64).display().iec();
        match taken {
            Ok(_) => Ok(Charge {
                used: self.used.clone(),
                bytes,
            }),
            Err(used) if bulk => Err(Status::resource_exhausted(format!(
                "the server holds {used} bytes of requests; this bulk request's {bytes} would \
                 pass the {limit} bytes bulk requests may hold (three quarters of {max}, \
                 --max-in-flight-bytes; the rest is kept for interactive requests); try again \
                 later"
            ))),
            Err(used) => Err(Status::resource_exhausted(format!(
                "the server holds {used} bytes of requests; this one's {bytes} would pass its \
                 limit of {} bytes ({max}; --max-in-flight-bytes); try again later",
                self.max,
            ))),
        }
    }
}

/// Bytes taken from the budget; given back on drop.
#[derive(Debug)]
pub struct Charge {
    used: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// What one call holds, shared by its request body (which takes) and its response
/// (which gives back when it ends).
#[derive(Debug, Default)]
struct Held {
    charge: Option<Charge>,
    /// The response has ended: later messages take nothing.
    ended: bool,
}

type SharedHeld = Arc<Mutex<Held>>;

fn lock(held: &SharedHeld) -> std::sync::MutexGuard<'_, Held> {
    held.lock().unwrap_or_else(|p| p.into_inner())
}

/// See [`InFlightBytesLayer`].
#[derive(Clone, Debug)]
pub struct InFlightBytes<S> {
    inner: S,
    budget: BytesBudget,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for InFlightBytes<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
{
    type Response = http::Response<ReleasingBody<ResBody>>;
    type Error = S::Error;
    type Future = ReleasingFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if self.budget.unlimited() {
            let request = request.map(tonic::body::Body::new);
            return ReleasingFuture {
                inner: self.inner.call(request),
                release: None,
            };
        }
        let held = SharedHeld::default();
        let budget = self.budget.clone();
        let counted = held.clone();
        // The class from the header only: KServe's `priority` parameter is inside the
        // message, which is not read yet.
        let bulk = request
            .headers()
            .get(crate::priority::HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("bulk"));
        let request = request.map(move |inner| {
            let counter = Counter {
                budget,
                bulk,
                held: counted,
                prefix: [0; PREFIX],
                prefix_len: 0,
                rest: 0,
            };
            tonic::body::Body::new(WatchedBody::new(inner, counter))
        });
        ReleasingFuture {
            inner: self.inner.call(request),
            release: Some(Release(held)),
        }
    }
}

/// Gives a call's bytes back when dropped.
#[derive(Debug)]
struct Release(SharedHeld);

impl Drop for Release {
    fn drop(&mut self) {
        let mut held = lock(&self.0);
        held.ended = true;
        held.charge = None;
    }
}

/// Takes each message's bytes from the budget as its length prefix passes.
struct Counter {
    budget: BytesBudget,
    /// The call is of the bulk class (its `herd-priority` header).
    bulk: bool,
    held: SharedHeld,
    prefix: [u8; PREFIX],
    prefix_len: usize,
    // Bytes of the current message still to pass.
    rest: usize,
}

impl Watcher for Counter {
    /// Follows the messages in `data`, taking each one's bytes from the budget.
    fn see(&mut self, data: &[u8]) -> Result<(), Status> {
        let mut data = data;
        while !data.is_empty() {
            if self.rest > 0 {
                let n = self.rest.min(data.len());
                self.rest -= n;
                data = &data[n..];
                continue;
            }
            let n = (PREFIX - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len < PREFIX {
                break;
            }
            self.prefix_len = 0;
            let p = self.prefix;
            let len = u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize;
            self.rest = len;
            let mut held = lock(&self.held);
            // The call's previous message is done with.
            held.charge = None;
            if held.ended || len > self.budget.max {
                continue;
            }
            held.charge = Some(self.budget.try_take_as(len, self.bulk)?);
        }
        Ok(())
    }
}

pin_project_lite::pin_project! {
    /// The service's response; the call's bytes go back when its body ends or the
    /// call is dropped.
    pub struct ReleasingFuture<F> {
        #[pin]
        inner: F,
        release: Option<Release>,
    }
}

impl<F, ResBody, E> Future for ReleasingFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<ReleasingBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.inner.poll(cx));
        let release = this.release.take();
        Poll::Ready(answer.map(|response| response.map(|inner| ReleasingBody { inner, release })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that gives its call's bytes back when it ends or is dropped.
    pub struct ReleasingBody<B> {
        #[pin]
        inner: B,
        release: Option<Release>,
    }
}

/// An empty body, for a layer's own answer.
impl<B: Default> Default for ReleasingBody<B> {
    fn default() -> Self {
        ReleasingBody {
            inner: B::default(),
            release: None,
        }
    }
}

impl<B: Body> Body for ReleasingBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        let ended = match &frame {
            Some(Ok(frame)) => frame.is_trailers(),
            Some(Err(_)) | None => true,
        };
        if ended {
            this.release.take();
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
    use crate::layers::test_support::{grpc_request, read, FrameBody};
    use tower_test::mock;

    const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

    type Frames = FrameBody;

    /// A gRPC message of `len` bytes, its prefix included.
    fn message(len: u32) -> Vec<u8> {
        let mut bytes = vec![0u8];
        bytes.extend(len.to_be_bytes());
        bytes.resize(PREFIX + len as usize, 7);
        bytes
    }

    fn call_with(frames: Vec<Vec<u8>>) -> http::Request<Frames> {
        let (parts, ()) = grpc_request(INFER, &[]).into_parts();
        http::Request::from_parts(parts, FrameBody::data(frames))
    }

    type Mock = mock::Mock<http::Request<tonic::body::Body>, http::Response<String>>;

    #[tokio::test]
    async fn requests_hold_their_bytes_until_answered_and_those_past_the_budget_are_refused() {
        let layer = InFlightBytesLayer::new(100);
        let (mut service, mut handle) = mock::spawn_with(|mock: Mock| layer.layer(mock));

        // 60 bytes, the prefix split over two frames: taken as it arrives.
        let mut first = message(60);
        let tail = first.split_off(3);
        assert!(service.poll_ready::<http::Request<Frames>>().is_ready());
        let call = service.call(call_with(vec![first, tail]));
        let (mut request, reply) = handle.next_request().await.expect("the call");
        assert_eq!(read(request.body_mut()).await.ok(), Some(65));
        assert_eq!(layer.in_flight(), 60);
        drop(request);
        assert_eq!(layer.in_flight(), 60, "held while the service works");

        // 50 more would pass 100: refused as it is read, in words naming the flag.
        assert!(service.poll_ready::<http::Request<Frames>>().is_ready());
        let refused = service.call(call_with(vec![message(50)]));
        let (mut request, _reply) = handle.next_request().await.expect("the call");
        let status = read(request.body_mut()).await.expect_err("past the budget");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "the server holds 60 bytes of requests; this one's 50 would pass its limit of \
             100 bytes (100 B; --max-in-flight-bytes); try again later"
        );
        drop(refused);

        // The answer's end gives the bytes back.
        reply.send_response(http::Response::new("done".to_string()));
        let mut response = call.await.expect("answered");
        assert_eq!(layer.in_flight(), 60, "until the body is sent");
        while std::future::poll_fn(|cx| Pin::new(response.body_mut()).poll_frame(cx))
            .await
            .is_some()
        {}
        assert_eq!(layer.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_dropped_call_gives_its_bytes_back_and_a_message_over_the_budget_is_not_counted() {
        let layer = InFlightBytesLayer::new(100);
        let (mut service, mut handle) = mock::spawn_with(|mock: Mock| layer.layer(mock));
        assert!(service.poll_ready::<http::Request<Frames>>().is_ready());
        let call = service.call(call_with(vec![message(80)]));
        let (mut request, _reply) = handle.next_request().await.expect("the call");
        assert_eq!(read(request.body_mut()).await.ok(), Some(85));
        assert_eq!(layer.in_flight(), 80);
        drop(call);
        assert_eq!(layer.in_flight(), 0);

        // Larger than the whole budget: left to the message-size limit.
        assert!(service.poll_ready::<http::Request<Frames>>().is_ready());
        let _call = service.call(call_with(vec![message(150)]));
        let (mut request, _reply) = handle.next_request().await.expect("the call");
        assert_eq!(read(request.body_mut()).await.ok(), Some(155));
        assert_eq!(layer.in_flight(), 0);
    }

    #[tokio::test]
    async fn bulk_requests_are_refused_first_leaving_a_quarter_for_interactive_ones() {
        let layer = InFlightBytesLayer::new(100);
        let (mut service, mut handle) = mock::spawn_with(|mock: Mock| layer.layer(mock));
        let bulk_call = |size| {
            let (parts, ()) =
                grpc_request(INFER, &[(crate::priority::HEADER, "bulk")]).into_parts();
            http::Request::from_parts(parts, FrameBody::data(vec![message(size)]))
        };
        assert!(service.poll_ready::<http::Request<Frames>>().is_ready());
        let _first = service.call(bulk_call(60));
        let (mut request, _reply1) = handle.next_request().await.expect("the call");
        assert_eq!(read(request.body_mut()).await.ok(), Some(65));

        // 60 + 20 passes the 75 bulk may hold: refused, saying so.
        assert!(service.poll_ready::<http::Request<Frames>>().is_ready());
        let _second = service.call(bulk_call(20));
        let (mut request, _reply2) = handle.next_request().await.expect("the call");
        let status = read(request.body_mut())
            .await
            .expect_err("past bulk's share");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status
                .message()
                .contains("this bulk request's 20 would pass the 75 bytes bulk")
                && status.message().contains("kept for interactive requests"),
            "{}",
            status.message()
        );

        // An interactive one of the same size still fits the whole budget.
        assert!(service.poll_ready::<http::Request<Frames>>().is_ready());
        let _third = service.call(call_with(vec![message(30)]));
        let (mut request, _reply3) = handle.next_request().await.expect("the call");
        assert_eq!(read(request.body_mut()).await.ok(), Some(35));
        assert_eq!(layer.in_flight(), 90);
    }

    #[tokio::test]
    async fn a_stream_of_messages_holds_its_latest() {
        let layer = InFlightBytesLayer::new(100);
        let (mut service, mut handle) = mock::spawn_with(|mock: Mock| layer.layer(mock));
        let mut both = message(70);
        both.extend(message(30));
        assert!(service.poll_ready::<http::Request<Frames>>().is_ready());
        let _call = service.call(call_with(vec![both]));
        let (mut request, _reply) = handle.next_request().await.expect("the call");
        assert_eq!(read(request.body_mut()).await.ok(), Some(110));
        assert_eq!(layer.in_flight(), 30);
    }

    #[tokio::test]
    async fn unlimited_counts_nothing() {
        let layer = InFlightBytesLayer::unlimited();
        let (mut service, mut handle) = mock::spawn_with(|mock: Mock| layer.layer(mock));
        assert!(service.poll_ready::<http::Request<Frames>>().is_ready());
        let _call = service.call(call_with(vec![message(1000)]));
        let (mut request, _reply) = handle.next_request().await.expect("the call");
        assert_eq!(read(request.body_mut()).await.ok(), Some(1005));
        assert_eq!(layer.in_flight(), 0);
    }
}
