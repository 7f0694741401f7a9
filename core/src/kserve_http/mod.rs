//! KServe v2 HTTP/REST, Triton's HTTP protocol, in front of any
//! `GrpcInferenceService`: the agent's and the scheduler's alike. Each route becomes
//! the gRPC call it corresponds to, made in-process on the same service, so what is
//! accepted, refused and said about it is gRPC's; only the framing is HTTP's.
//!
//! - `tensors`: tensor data as JSON, to and from raw bytes.
//! - `binary`: Triton's binary tensor data extension (`Inference-Header-Content-Length`).
//! - `infer`: an inference request and response, HTTP to gRPC and back.
//! - `replies`: the other answers (metadata, config, statistics, repository) as JSON.
//! - `errors`: `{"error": ...}` with the HTTP status for each gRPC code.
//! - `routes`: the axum routes, the token check and the in-process calls.
//!
//! A caller's deadline is the inference request's `timeout` parameter, in
//! microseconds (Triton's; what tritonclient.http's `infer(timeout=...)` sends).

mod binary;
mod errors;
mod infer;
mod replies;
mod routes;
mod tensors;
mod tls_serve;

pub use binary::HEADER_LENGTH;
pub use errors::{http_status, HttpError};
pub use routes::{router, HttpOptions};

use std::future::Future;

use axum::serve::ListenerExt;

/// Serves `router` over HTTP/1.1 on `listener` until `shutdown` completes, over TLS
/// with `tls`, without Nagle's delay on the accepted sockets (a reply's last segment
/// would otherwise wait for the client's delayed ACK).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(tls) = tls {
        return tls_serve::serve(listener, router, tls, shutdown).await;
    }
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
