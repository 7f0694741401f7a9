//! The client's one error type: every message says what failed and where.

use std::path::PathBuf;

/// What went wrong, with the server's role and address or the file involved.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid {role} address {addr:?}: {reason}")]
    Address {
        role: String,
        addr: String,
        reason: String,
    },
    #[error("invalid token: {0}")]
    Token(String),
    #[error("cannot reach {role} at {addr}: {reason}")]
    Connect {
        role: String,
        addr: String,
        reason: String,
    },
    #[error("{role} at {addr} refused the token: {message}")]
    Unauthenticated {
        role: String,
        addr: String,
        message: String,
    },
    #[error("{role} at {addr}: {}{hint}", status_text(status))]
    Rpc {
        role: String,
        addr: String,
        status: tonic::Status,
        /// Extra advice, e.g. that an agent does not serve the admin service.
        hint: String,
    },
    #[error("{role} at {addr} sent a malformed response: {reason}")]
    Response {
        role: String,
        addr: String,
        reason: String,
    },
    /// An input that does not match the model's metadata.
    #[error("{0}")]
    Input(String),
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("{role} at {addr}: {reason}")]
    Tls {
        role: String,
        addr: String,
        reason: String,
    },
}

impl ClientError {
    /// The gRPC code the server answered with, when the failure was a status.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rpc { status, .. } => Some(status.code()),
            ClientError::Unauthenticated { .. } => Some(tonic::Code::Unauthenticated),
            _ => None,
        }
    }

    pub fn file(path: impl Into<PathBuf>, reason: impl ToString) -> ClientError {
        ClientError::File {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

/// `NOT_FOUND: model 'x' is not in the repository`.
pub fn status_text(status: &tonic::Status) -> String {
    let message = status.message().trim();
    if message.is_empty() {
        code_name(status.code()).to_string()
    } else {
        format!("{}: {}", code_name(status.code()), one_line(message))
    }
}

/// A gRPC code as the protocol spells it (`UNAVAILABLE`), which is what people search for.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(crate) use herd_core::connect_error::connect_reason;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_show_code_and_message_on_one_line() {
        let e = ClientError::Rpc {
            role: "scheduler".into(),
            addr: "10.0.0.2:8001".into(),
            status: tonic::Status::not_found("model 'x'\nis not known"),
            hint: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "scheduler at 10.0.0.2:8001: NOT_FOUND: model 'x' is not known"
        );
        assert_eq!(e.code(), Some(tonic::Code::NotFound));
    }

    #[test]
    fn io_causes_are_reduced_to_their_kind() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(connect_reason(&e), "connection refused");
    }
}
