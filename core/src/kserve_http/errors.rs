//! Errors as KServe v2 HTTP answers them: `{"error": "<message>"}` with an HTTP status
//! chosen from the gRPC code, so a refusal reads the same over both protocols.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tonic::Code;

/// One refused HTTP request: its status and the message the caller reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
}

impl HttpError {
    /// 400: the request itself is wrong (malformed JSON, bad framing, bad values).
    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

/// The HTTP status for a gRPC code, one table for every route.
///
/// RESOURCE_EXHAUSTED is 429, not Triton's 400: in herd it means "full now" (a queue,
/// the bytes in flight), which a client should retry later, and 429 is what HTTP
/// clients and proxies back off on. A body over the size limit is 413 before any
/// service sees it.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            StatusCode::BAD_REQUEST
        }
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Cancelled | Code::Unknown | Code::Internal | Code::DataLoss => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl From<tonic::Status> for HttpError {
    fn from(status: tonic::Status) -> HttpError {
        HttpError {
            status: http_status(status.code()),
            message: status.message().to_string(),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_grpc_code_has_its_http_status() {
        for (code, status) in [
            (Code::InvalidArgument, 400),
            (Code::OutOfRange, 400),
            (Code::FailedPrecondition, 400),
            (Code::NotFound, 404),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
        ] {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn a_status_keeps_its_message() {
        let e = HttpError::from(tonic::Status::not_found(
            "model 'x' is not in the model repository",
        ));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.message, "model 'x' is not in the model repository");
    }
}
