//! The KServe v2 HTTP/REST routes as Triton serves them, each turned into the gRPC call
//! it corresponds to on the same service, in-process: validation, limits and messages
//! are the service's own. The token is checked by the same [`TokenRule`] as gRPC's,
//! under the gRPC method's path, before the body is read.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use herd_proto::inference::grpc_inference_service_server::{GrpcInferenceService, SERVICE_NAME};
use herd_proto::inference::*;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::Value;
use tonic::Status;

use super::binary::HEADER_LENGTH;
use super::errors::HttpError;
use super::{infer, replies};
use crate::layers::deadline::GRPC_TIMEOUT;
use crate::layers::request_id::REQUEST_ID_HEADER;
use crate::layers::{BytesBudget, Charge, RequestId, TokenRule};

/// What the HTTP front needs besides the service.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// The server's gRPC token rule.
    pub rule: TokenRule,
    /// The largest body accepted: the server's --max-message-size.
    pub max_body: usize,
    /// Bytes of request bodies held at once, as the gRPC stack's budget (a budget of
    /// its own, the same size: the two protocols together may hold twice it).
    pub max_in_flight_bytes: usize,
}

struct Front<T> {
    service: Arc<T>,
    options: HttpOptions,
    bytes: BytesBudget,
}

type Shared<T> = State<Arc<Front<T>>>;

/// The KServe v2 HTTP/REST routes in front of `service`.
pub fn router<T: GrpcInferenceService>(service: Arc<T>, options: HttpOptions) -> Router {
    let model = |rest: &str| {
        [
            format!("/v2/models/{{name}}{rest}"),
            format!("/v2/models/{{name}}/versions/{{version}}{rest}"),
        ]
    };
    let mut router = Router::new()
        .route("/v2/health/live", get(live::<T>))
        .route("/v2/health/ready", get(ready::<T>))
        .route("/v2", get(server_metadata::<T>))
        .route("/v2/models/stats", get(all_statistics::<T>))
        .route("/v2/repository/index", post(repository_index::<T>))
        .route("/v2/repository/models/{name}/load", post(load::<T>))
        .route("/v2/repository/models/{name}/unload", post(unload::<T>));
    for path in model("") {
        router = router.route(&path, get(model_metadata::<T>));
    }
    for path in model("/ready") {
        router = router.route(&path, get(model_ready::<T>));
    }
    for path in model("/infer") {
        router = router.route(&path, post(model_infer::<T>));
    }
    for path in model("/config") {
        router = router.route(&path, get(model_config::<T>));
    }
    for path in model("/stats") {
        router = router.route(&path, get(model_statistics::<T>));
    }
    router
        .fallback(no_such_endpoint)
        .with_state(Arc::new(Front {
            bytes: BytesBudget::new(options.max_in_flight_bytes),
            service,
            options,
        }))
}

/// A model route's path: its name and, on `/versions/{version}` routes, a version.
#[derive(Deserialize)]
struct ModelPath {
    name: String,
    version: Option<String>,
}

impl ModelPath {
    fn version(&self) -> String {
        self.version.clone().unwrap_or_default()
    }
}

impl<T: GrpcInferenceService> Front<T> {
    /// Refuses a call without the token where gRPC's `method` needs it.
    fn check(&self, method: &str, headers: &HeaderMap) -> Result<(), HttpError> {
        let path = format!("/{SERVICE_NAME}/{method}");
        Ok(self.options.rule.check(&path, headers)?)
    }

    /// Reads the body, up to the server's limit, uncompressed only, once its declared
    /// length (else the limit) is taken from the bytes budget: a request past it is shed
    /// before it is read, as over gRPC. The charge is held until the answer is built.
    async fn body(&self, headers: &HeaderMap, body: Body) -> Result<(Bytes, Charge), HttpError> {
        if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
            if encoding.as_bytes() != b"identity" {
                return Err(HttpError {
                    status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    message: format!(
                        "Content-Encoding {:?} is not supported; send the body uncompressed",
                        String::from_utf8_lossy(encoding.as_bytes())
                    ),
                });
            }
        }
        let max = self.options.max_body;
        let too_large = || {
            HttpError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "the request body is larger than the server's limit of {max} bytes (--max-message-size)"
            ),
        }
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let charge = self.bytes.try_take(declared.unwrap_or(max))?;
        match Limited::new(body, max).collect().await {
            Ok(collected) => Ok((collected.to_bytes(), charge)),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
            Err(e) => Err(HttpError::bad_request(format!(
                "cannot read the request body: {e}"
            ))),
        }
    }
}

/// A gRPC request as the service would get it from the stack: the caller's token and
/// request id, and its deadline as `grpc-timeout`.
fn grpc_request<M>(
    headers: &HeaderMap,
    message: M,
    timeout: Option<Duration>,
) -> tonic::Request<M> {
    let mut metadata = HeaderMap::new();
    for name in [
        header::AUTHORIZATION.as_str(),
        REQUEST_ID_HEADER,
        crate::priority::HEADER,
    ] {
        if let Some(value) = headers.get(name) {
            metadata.insert(name, value.clone());
        }
    }
    if let Some(value) = timeout.and_then(grpc_timeout) {
        metadata.insert(GRPC_TIMEOUT, value);
    }
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(metadata);
    request
        .extensions_mut()
        .insert(RequestId::from_headers(headers));
    request
}

/// A duration as a `grpc-timeout` value (at most 8 digits, the coarsest unit that fits).
fn grpc_timeout(d: Duration) -> Option<HeaderValue> {
    const MAX: u128 = 99_999_999;
    let value = [
        (d.as_nanos(), "n"),
        (d.as_micros(), "u"),
        (d.as_millis(), "m"),
        (u128::from(d.as_secs()), "S"),
    ]
    .into_iter()
    .find(|(n, _)| *n <= MAX)
    .map(|(n, unit)| format!("{n}{unit}"))?;
    HeaderValue::from_str(&value).ok()
}

/// Runs a call, ended with DEADLINE_EXCEEDED when `timeout` passes first (the gRPC
/// stack's deadline layer does this for gRPC calls; these skip the stack).
async fn run<R>(
    call: impl Future<Output = Result<tonic::Response<R>, Status>>,
    timeout: Option<Duration>,
) -> Result<R, HttpError> {
    let answer = match timeout {
        None => call.await,
        Some(d) => tokio::time::timeout(d, call).await.unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "the call's deadline of {} (timeout parameter) passed before it was answered",
                humantime::format_duration(d)
            )))
        }),
    };
    Ok(answer?.into_inner())
}

fn json(value: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// Health and readiness answer by status alone, with an empty body (KServe v2).
fn yes_no(yes: bool) -> Response {
    if yes {
        StatusCode::OK.into_response()
    } else {
        StatusCode::BAD_REQUEST.into_response()
    }
}

async fn live<T: GrpcInferenceService>(
    State(f): Shared<T>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    f.check("ServerLive", &headers)?;
    let r = run(
        f.service
            .server_live(grpc_request(&headers, ServerLiveRequest {}, None)),
        None,
    )
    .await?;
    Ok(yes_no(r.live))
}

async fn ready<T: GrpcInferenceService>(
    State(f): Shared<T>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    f.check("ServerReady", &headers)?;
    let r = run(
        f.service
            .server_ready(grpc_request(&headers, ServerReadyRequest {}, None)),
        None,
    )
    .await?;
    Ok(yes_no(r.ready))
}

async fn server_metadata<T: GrpcInferenceService>(
    State(f): Shared<T>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    f.check("ServerMetadata", &headers)?;
    let request = grpc_request(&headers, ServerMetadataRequest {}, None);
    let r = run(f.service.server_metadata(request), None).await?;
    Ok(json(replies::server_metadata(r)))
}

async fn model_metadata<T: GrpcInferenceService>(
    State(f): Shared<T>,
    Path(m): Path<ModelPath>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    f.check("ModelMetadata", &headers)?;
    let message = ModelMetadataRequest {
        version: m.version(),
        name: m.name,
    };
    let r = run(
        f.service
            .model_metadata(grpc_request(&headers, message, None)),
        None,
    )
    .await?;
    Ok(json(replies::model_metadata(r)))
}

async fn model_ready<T: GrpcInferenceService>(
    State(f): Shared<T>,
    Path(m): Path<ModelPath>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    f.check("ModelReady", &headers)?;
    let message = ModelReadyRequest {
        version: m.version(),
        name: m.name,
    };
    let r = run(
        f.service.model_ready(grpc_request(&headers, message, None)),
        None,
    )
    .await?;
    Ok(yes_no(r.ready))
}

async fn model_infer<T: GrpcInferenceService>(
    State(f): Shared<T>,
    Path(m): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    f.check("ModelInfer", &headers)?;
    let (body, _held) = f.body(&headers, body).await?;
    let header_length = headers.get(HEADER_LENGTH).map(HeaderValue::as_bytes);
    let parsed = infer::parse(&m.name, &m.version(), body, header_length)?;
    let request = grpc_request(&headers, parsed.request, parsed.timeout);
    let id = request.extensions().get::<RequestId>().cloned();
    let answer = run(f.service.model_infer(request), parsed.timeout).await?;
    let (body, json_length) = infer::render(answer, &parsed.binary);
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    let content_type = match json_length {
        Some(length) => {
            headers.insert(HEADER_LENGTH, HeaderValue::from(length));
            "application/octet-stream"
        }
        None => "application/json",
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(value) = id.and_then(|id| HeaderValue::from_str(id.as_str()).ok()) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    Ok(response)
}

async fn model_config<T: GrpcInferenceService>(
    State(f): Shared<T>,
    Path(m): Path<ModelPath>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    f.check("ModelConfig", &headers)?;
    let message = ModelConfigRequest {
        version: m.version(),
        name: m.name,
    };
    let r = run(
        f.service
            .model_config(grpc_request(&headers, message, None)),
        None,
    )
    .await?;
    Ok(json(replies::model_config(r)))
}

async fn statistics<T: GrpcInferenceService>(
    f: &Front<T>,
    headers: &HeaderMap,
    message: ModelStatisticsRequest,
) -> Result<Response, HttpError> {
    f.check("ModelStatistics", headers)?;
    let r = run(
        f.service
            .model_statistics(grpc_request(headers, message, None)),
        None,
    )
    .await?;
    Ok(json(replies::model_statistics(r)))
}

async fn model_statistics<T: GrpcInferenceService>(
    State(f): Shared<T>,
    Path(m): Path<ModelPath>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let message = ModelStatisticsRequest {
        version: m.version(),
        name: m.name,
    };
    statistics(&f, &headers, message).await
}

async fn all_statistics<T: GrpcInferenceService>(
    State(f): Shared<T>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    statistics(&f, &headers, ModelStatisticsRequest::default()).await
}

async fn repository_index<T: GrpcInferenceService>(
    State(f): Shared<T>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    f.check("RepositoryIndex", &headers)?;
    let (body, _held) = f.body(&headers, body).await?;
    let message = replies::index_request(&body)?;
    let r = run(
        f.service
            .repository_index(grpc_request(&headers, message, None)),
        None,
    )
    .await?;
    Ok(json(replies::repository_index(r)))
}

#[derive(Deserialize)]
struct RepositoryPath {
    name: String,
}

async fn load<T: GrpcInferenceService>(
    State(f): Shared<T>,
    Path(p): Path<RepositoryPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    f.check("RepositoryModelLoad", &headers)?;
    let (body, _held) = f.body(&headers, body).await?;
    let message = RepositoryModelLoadRequest {
        repository_name: String::new(),
        model_name: p.name,
        parameters: replies::repository_parameters(&body)?,
    };
    run(
        f.service
            .repository_model_load(grpc_request(&headers, message, None)),
        None,
    )
    .await?;
    Ok(StatusCode::OK.into_response())
}

async fn unload<T: GrpcInferenceService>(
    State(f): Shared<T>,
    Path(p): Path<RepositoryPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    f.check("RepositoryModelUnload", &headers)?;
    let (body, _held) = f.body(&headers, body).await?;
    let message = RepositoryModelUnloadRequest {
        repository_name: String::new(),
        model_name: p.name,
        parameters: replies::repository_parameters(&body)?,
    };
    run(
        f.service
            .repository_model_unload(grpc_request(&headers, message, None)),
        None,
    )
    .await?;
    Ok(StatusCode::OK.into_response())
}

async fn no_such_endpoint(method: Method, uri: Uri) -> HttpError {
    HttpError {
        status: StatusCode::NOT_FOUND,
        message: format!("no such endpoint: {method} {}", uri.path()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_travel_as_grpc_timeouts_of_at_most_eight_digits() {
        let value = |d| grpc_timeout(d).expect("a value");
        assert_eq!(value(Duration::from_micros(2500)), "2500000n");
        assert_eq!(value(Duration::from_secs(5)), "5000000u");
        assert_eq!(value(Duration::from_secs(3600)), "3600000m");
        let parsed = crate::layers::deadline::parse_grpc_timeout(
            value(Duration::from_millis(1234)).as_bytes(),
        );
        assert_eq!(parsed, Some(Duration::from_millis(1234)));
    }
}
