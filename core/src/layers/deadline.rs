//! Deadlines on the server side: a call ends with DEADLINE_EXCEEDED when the caller's
//! `grpc-timeout` (or the server's own maximum, whichever is shorter) passes before the
//! service answers. The service's future is dropped then, so its work stops at its
//! next await point and whatever it holds (a limit's permit) is freed.

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;
use tonic::Status;
use tower::{Layer, Service};

use super::Either;

/// The request header that carries the caller's deadline (gRPC over HTTP/2).
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Ends calls that run past their deadline; see the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer {
    max: Option<Duration>,
}

impl DeadlineLayer {
    /// Honours the caller's `grpc-timeout`, with no limit of the server's own.
    pub fn new() -> DeadlineLayer {
        DeadlineLayer { max: None }
    }

    /// Also ends any call that runs longer than `max`.
    pub fn with_max(max: Duration) -> DeadlineLayer {
        DeadlineLayer { max: Some(max) }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            max: self.max,
        }
    }
}

/// See [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    max: Option<Duration>,
}

/// Whose deadline a call has, for the message when it passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Limit {
    Caller(Duration),
    Server(Duration),
}

impl Limit {
    fn duration(self) -> Duration {
        match self {
            Limit::Caller(d) | Limit::Server(d) => d,
        }
    }

    fn exceeded(self) -> Status {
        let message = match self {
            Limit::Caller(d) => format!(
                "the call's deadline of {} (grpc-timeout) passed before it was answered",
                humantime::format_duration(d)
            ),
            Limit::Server(d) => format!(
                "the call ran past the server's limit of {} per call",
                humantime::format_duration(d)
            ),
        };
        Status::deadline_exceeded(message)
    }
}

/// The shorter of the caller's deadline and the server's maximum.
fn limit_of(caller: Option<Duration>, server: Option<Duration>) -> Option<Limit> {
    match (caller, server) {
        (Some(c), Some(s)) if s < c => Some(Limit::Server(s)),
        (Some(c), _) => Some(Limit::Caller(c)),
        (None, Some(s)) => Some(Limit::Server(s)),
        (None, None) => None,
    }
}

/// Parses a `grpc-timeout` value: 1 to 8 digits and a unit, `H`, `M`, `S`, `m`
/// (milliseconds), `u` (microseconds) or `n` (nanoseconds).
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Deadline<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<DeadlineFuture<S::Future>, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let caller = match request.headers().get(GRPC_TIMEOUT) {
            None => None,
            Some(value) => match parse_grpc_timeout(value.as_bytes()) {
                Some(d) => Some(d),
                None => {
                    let status = Status::invalid_argument(format!(
                        "malformed {GRPC_TIMEOUT} header {value:?}: expected 1 to 8 digits and a unit (H, M, S, m, u, n)"
                    ));
                    return Either::Right {
                        inner: ready(Ok(status.into_http())),
                    };
                }
            },
        };
        let limit = limit_of(caller, self.max);
        Either::Left {
            inner: DeadlineFuture {
                inner: self.inner.call(request),
                timer: limit.map(|l| (Box::pin(tokio::time::sleep(l.duration())), l)),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's answer, or DEADLINE_EXCEEDED when the timer fires first.
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: F,
        timer: Option<(Pin<Box<Sleep>>, Limit)>,
    }
}

impl<F, ResBody, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: Default,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Poll::Ready(answer) = this.inner.poll(cx) {
            return Poll::Ready(answer);
        }
        match this.timer {
            Some((sleep, limit)) => match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Ok(limit.exceeded().into_http())),
                Poll::Pending => Poll::Pending,
            },
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::test_support::{grpc_request, status_of};
    use tower_test::mock;

    const PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

    #[test]
    fn grpc_timeout_values_parse() {
        assert_eq!(parse_grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout(b"10S"), Some(Duration::from_secs(10)));
        assert_eq!(
            parse_grpc_timeout(b"250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_grpc_timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout(b"5n"), Some(Duration::from_nanos(5)));
        for bad in [
            &b""[..],
            b"S",
            b"100",
            b"100x",
            b"123456789S",
            b"-1S",
            b"1.5S",
            b"\xffS",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_shorter_deadline_wins() {
        let s = Duration::from_secs;
        assert_eq!(limit_of(Some(s(1)), Some(s(5))), Some(Limit::Caller(s(1))));
        assert_eq!(limit_of(Some(s(9)), Some(s(5))), Some(Limit::Server(s(5))));
        assert_eq!(limit_of(None, Some(s(5))), Some(Limit::Server(s(5))));
        assert_eq!(limit_of(Some(s(9)), None), Some(Limit::Caller(s(9))));
        assert_eq!(limit_of(None, None), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_the_callers_deadline_is_answered_deadline_exceeded() {
        let (mut service, mut handle) =
            mock::spawn_layer::<_, http::Response<String>, _>(DeadlineLayer::new());
        assert!(service.poll_ready().is_ready());
        let call = service.call(grpc_request(PATH, &[(GRPC_TIMEOUT, "250m")]));
        // The service takes the call and never answers.
        let (_request, reply) = handle.next_request().await.expect("the call arrives");
        let started = tokio::time::Instant::now();
        let response = call.await.expect("a status response");
        // Paused time: the clock moved exactly as far as the timer (to the millisecond).
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited <= Duration::from_millis(251),
            "{waited:?}"
        );
        let status = status_of(&response).expect("a grpc-status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            status.message(),
            "the call's deadline of 250ms (grpc-timeout) passed before it was answered"
        );
        drop(reply);
    }

    #[tokio::test(start_paused = true)]
    async fn the_servers_maximum_applies_to_calls_without_a_deadline() {
        let (mut service, mut handle) = mock::spawn_layer::<_, http::Response<String>, _>(
            DeadlineLayer::with_max(Duration::from_secs(30)),
        );
        for headers in [&[][..], &[(GRPC_TIMEOUT, "1H")][..]] {
            assert!(service.poll_ready().is_ready());
            let call = service.call(grpc_request(PATH, headers));
            let (_request, _reply) = handle.next_request().await.expect("the call arrives");
            let response = call.await.expect("a status response");
            let status = status_of(&response).expect("a grpc-status");
            assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
            assert_eq!(
                status.message(),
                "the call ran past the server's limit of 30s per call"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_goes_through_and_no_deadline_means_no_timer() {
        let (mut service, mut handle) =
            mock::spawn_layer::<_, http::Response<String>, _>(DeadlineLayer::new());
        for headers in [&[(GRPC_TIMEOUT, "1S")][..], &[][..]] {
            assert!(service.poll_ready().is_ready());
            let call = service.call(grpc_request(PATH, headers));
            tokio::pin!(call);
            let (_request, reply) = handle.next_request().await.expect("the call arrives");
            let waited = Duration::from_millis(999);
            let limit = if headers.is_empty() {
                Duration::from_secs(24 * 3600)
            } else {
                waited
            };
            assert!(
                tokio::time::timeout(limit, &mut call).await.is_err(),
                "still waiting for the service"
            );
            reply.send_response(http::Response::new("ok".to_string()));
            let response = call.await.expect("the service's response");
            assert_eq!(response.body(), "ok");
            assert!(status_of(&response).is_none());
        }
    }

    #[tokio::test]
    async fn a_malformed_grpc_timeout_is_refused() {
        let (mut service, mut handle) =
            mock::spawn_layer::<_, http::Response<String>, _>(DeadlineLayer::new());
        assert!(service.poll_ready().is_ready());
        let response = service
            .call(grpc_request(PATH, &[(GRPC_TIMEOUT, "soon")]))
            .await
            .expect("a status response");
        let status = status_of(&response).expect("a grpc-status");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("grpc-timeout"),
            "{}",
            status.message()
        );
        assert!(
            handle.poll_request().is_pending(),
            "the service saw nothing"
        );
    }
}
