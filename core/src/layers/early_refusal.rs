//! Refuses an inference request as soon as its first bytes say which model it is for
//! and how large it is, when the server would refuse it anyway once read (its model's
//! queue is full or cannot answer before the caller's deadline). Under overload most
//! requests are refused; reading each one whole first (megabytes of tensors, copied
//! from the socket into fresh pages) took the CPU the model needed, and the refusal
//! came only after the upload. Dropping the body resets the stream, so the client
//! stops sending too.
//!
//! Only `ModelInfer` is looked at. The model name is protobuf field 1 of
//! `ModelInferRequest`, which every protobuf encoder writes first; a message that does
//! not start with it, or is compressed, passes untouched, and the service's own checks
//! (which this never replaces) decide it.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use tonic::Status;
use tower::{BoxError, Layer, Service};

use super::deadline::{parse_grpc_timeout, GRPC_TIMEOUT};
use super::watched_body::{WatchedBody, Watcher};

/// The one method looked at.
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// gRPC's message prefix: a compression flag and a big-endian u32 length.
const PREFIX: usize = 5;

/// Longest model name looked for; a longer one passes to the service's checks.
const MAX_NAME: usize = 1024;

/// What the first bytes of an inference request say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peek<'a> {
    pub model: &'a str,
    /// The message's length, tensors and all.
    pub bytes: u64,
    /// Time the caller gave the call (`grpc-timeout`), if it said.
    pub timeout: Option<Duration>,
}

/// Decides a peeked request: `Err` refuses it with that status.
pub type Admit = Arc<dyn Fn(Peek<'_>) -> Result<(), Status> + Send + Sync>;

/// Refuses `ModelInfer` requests early as `admit` decides; see the module docs.
#[derive(Clone, Default)]
pub struct EarlyRefusalLayer {
    admit: Option<Admit>,
}

impl std::fmt::Debug for EarlyRefusalLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarlyRefusalLayer")
            .field("admit", &self.admit.is_some())
            .finish()
    }
}

impl EarlyRefusalLayer {
    /// Asks `admit` about each inference request once its first bytes are in.
    pub fn new(admit: Admit) -> EarlyRefusalLayer {
        EarlyRefusalLayer { admit: Some(admit) }
    }

    /// Refuses nothing early.
    pub fn off() -> EarlyRefusalLayer {
        EarlyRefusalLayer { admit: None }
    }
}

impl<S> Layer<S> for EarlyRefusalLayer {
    type Service = EarlyRefusal<S>;

    fn layer(&self, inner: S) -> EarlyRefusal<S> {
        EarlyRefusal {
            inner,
            admit: self.admit.clone(),
        }
    }
}

/// See [`EarlyRefusalLayer`].
#[derive(Clone)]
pub struct EarlyRefusal<S> {
    inner: S,
    admit: Option<Admit>,
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for EarlyRefusal<S>
where
    S: Service<http::Request<tonic::body::Body>>,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let admit = match &self.admit {
            Some(admit) if request.uri().path() == MODEL_INFER => admit.clone(),
            _ => return self.inner.call(request.map(tonic::body::Body::new)),
        };
        let timeout = request
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| parse_grpc_timeout(v.as_bytes()));
        let request = request.map(move |inner| {
            let peeker = Peeker {
                admit: Some(admit),
                timeout,
                head: Vec::new(),
            };
            tonic::body::Body::new(WatchedBody::new(inner, peeker))
        });
        self.inner.call(request)
    }
}

/// Where the first bytes of a message leave the model's name.
#[derive(Debug, PartialEq, Eq)]
enum Head<'a> {
    /// More bytes are needed to tell.
    Short,
    /// Not a message this looks into.
    Other,
    /// The model's name and the message's length.
    Named(&'a str, u64),
}

/// Reads the prefix and field 1 of a gRPC message from its first bytes.
fn read_head(head: &[u8]) -> Head<'_> {
    if head.len() < PREFIX + 1 {
        return Head::Short;
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as u64;
    // Compressed, or not starting with field 1 as a length-delimited value.
    if head[0] != 0 || head[PREFIX] != 0x0a {
        return Head::Other;
    }
    let mut name_len = 0usize;
    let mut at = PREFIX + 1;
    for shift in (0..).step_by(7).take(2) {
        let Some(&byte) = head.get(at) else {
            return Head::Short;
        };
        name_len |= usize::from(byte & 0x7f) << shift;
        at += 1;
        if byte & 0x80 == 0 {
            if name_len > MAX_NAME || (at + name_len) as u64 > PREFIX as u64 + len {
                return Head::Other;
            }
            return match head.get(at..at + name_len) {
                None => Head::Short,
                Some(name) => match std::str::from_utf8(name) {
                    Ok(name) => Head::Named(name, len),
                    Err(_) => Head::Other,
                },
            };
        }
    }
    Head::Other
}

/// Asks `admit` once the first message's name has passed.
struct Peeker {
    // None once asked (or given up).
    admit: Option<Admit>,
    timeout: Option<Duration>,
    // The first bytes of the body, kept until the name is read.
    head: Vec<u8>,
}

impl Watcher for Peeker {
    fn see(&mut self, data: &[u8]) -> Result<(), Status> {
        let Some(admit) = &self.admit else {
            return Ok(());
        };
        let wanted = (PREFIX + 3 + MAX_NAME).saturating_sub(self.head.len());
        self.head.extend_from_slice(&data[..data.len().min(wanted)]);
        let verdict = match read_head(&self.head) {
            Head::Short => return Ok(()),
            Head::Other => Ok(()),
            Head::Named(model, bytes) => admit(Peek {
                model,
                bytes,
                timeout: self.timeout,
            }),
        };
        self.admit = None;
        self.head = Vec::new();
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::test_support::{grpc_request, read, FrameBody};
    use std::sync::Mutex;
    use tower_test::mock;

    /// A gRPC ModelInferRequest naming `model`, `tensor` bytes after the name.
    fn message(model: &str, tensor: usize) -> Vec<u8> {
        let mut body = vec![0x0a, model.len() as u8];
        body.extend(model.as_bytes());
        body.resize(body.len() + tensor, 9);
        let mut bytes = vec![0u8];
        bytes.extend((body.len() as u32).to_be_bytes());
        bytes.extend(body);
        bytes
    }

    fn call(
        path: &str,
        timeout: Option<&'static str>,
        frames: Vec<Vec<u8>>,
    ) -> http::Request<FrameBody> {
        let headers: Vec<_> = timeout.map(|t| (GRPC_TIMEOUT, t)).into_iter().collect();
        let (parts, ()) = grpc_request(path, &headers).into_parts();
        http::Request::from_parts(parts, FrameBody::data(frames))
    }

    type Mock = mock::Mock<http::Request<tonic::body::Body>, http::Response<String>>;
    /// What the layer asked about: model, bytes and timeout, per call.
    type Asked = Arc<Mutex<Vec<(String, u64, Option<Duration>)>>>;

    /// A layer refusing model "busy", recording what it was asked.
    fn layer() -> (EarlyRefusalLayer, Asked) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        let admit: Admit = Arc::new(move |peek: Peek<'_>| {
            seen.lock().expect("not poisoned").push((
                peek.model.to_string(),
                peek.bytes,
                peek.timeout,
            ));
            if peek.model == "busy" {
                Err(Status::resource_exhausted("model 'busy' is full"))
            } else {
                Ok(())
            }
        });
        (EarlyRefusalLayer::new(admit), asked)
    }

    #[tokio::test]
    async fn a_refused_model_is_refused_at_its_first_frame_and_others_pass_whole() {
        let (layer, asked) = layer();
        let (mut service, mut handle) = mock::spawn_with(|mock: Mock| layer.layer(mock));

        // The name split over frames; the rest of the body is never read.
        let mut first = message("busy", 1000);
        let rest = first.split_off(8);
        let tail = rest[..].to_vec();
        assert!(service.poll_ready::<http::Request<FrameBody>>().is_ready());
        let _call = service.call(call(MODEL_INFER, Some("5S"), vec![first, tail]));
        let (mut request, _reply) = handle.next_request().await.expect("the call");
        let status = read(request.body_mut()).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.message(), "model 'busy' is full");
        assert_eq!(
            asked.lock().expect("not poisoned").as_slice(),
            &[("busy".to_string(), 1006, Some(Duration::from_secs(5)))]
        );

        assert!(service.poll_ready::<http::Request<FrameBody>>().is_ready());
        let whole = message("idle", 500);
        let _call = service.call(call(MODEL_INFER, None, vec![whole.clone()]));
        let (mut request, _reply) = handle.next_request().await.expect("the call");
        assert_eq!(read(request.body_mut()).await.ok(), Some(whole.len()));
        assert_eq!(
            asked.lock().expect("not poisoned").len(),
            2,
            "asked once per call"
        );
    }

    #[tokio::test]
    async fn other_methods_and_messages_it_cannot_read_pass_unasked() {
        let (layer, asked) = layer();
        let (mut service, mut handle) = mock::spawn_with(|mock: Mock| layer.layer(mock));
        let mut compressed = message("busy", 10);
        compressed[0] = 1;
        let mut other_field = message("busy", 10);
        other_field[PREFIX] = 0x12;
        for (path, body) in [
            (
                "/inference.GRPCInferenceService/ModelMetadata",
                message("busy", 10),
            ),
            (MODEL_INFER, compressed),
            (MODEL_INFER, other_field),
        ] {
            assert!(service.poll_ready::<http::Request<FrameBody>>().is_ready());
            let _call = service.call(call(path, None, vec![body.clone()]));
            let (mut request, _reply) = handle.next_request().await.expect("the call");
            assert_eq!(
                read(request.body_mut()).await.ok(),
                Some(body.len()),
                "{path}"
            );
        }
        assert!(asked.lock().expect("not poisoned").is_empty());
    }

    #[test]
    fn heads_are_read_only_when_whole_and_sane() {
        let m = message("magika", 3);
        assert_eq!(read_head(&m[..PREFIX]), Head::Short);
        assert_eq!(read_head(&m[..PREFIX + 4]), Head::Short);
        assert_eq!(read_head(&m), Head::Named("magika", 11));
        // A name longer than its message, or not UTF-8.
        let mut long = message("magika", 0);
        long[PREFIX + 1] = 100;
        assert_eq!(read_head(&long), Head::Other);
        let mut bad = message("ab", 0);
        bad[PREFIX + 2] = 0xff;
        assert_eq!(read_head(&bad), Head::Other);
        // A two-byte length: a 200-byte name.
        let name = "n".repeat(200);
        let mut two = vec![0u8];
        let body_len = 3 + 200;
        two.extend((body_len as u32).to_be_bytes());
        two.extend([0x0a, 0xc8, 0x01]);
        two.extend(name.as_bytes());
        assert_eq!(read_head(&two), Head::Named(&name, body_len as u64));
    }
}
