//! The agent's errors, and the one table that maps them to gRPC status codes.

use std::path::PathBuf;
use std::sync::Arc;

use herd_core::settings::SettingsError;
use tonic::{Code, Status};

use crate::batch::NotBatched;
use crate::files::FileError;
use crate::isolate::Blame;
use crate::session::{LoadError, SessionError};

/// Why `herd agent` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot read the listening address: {0}")]
    Address(std::io::Error),
    #[error("{0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("HTTP on {0}: {1}")]
    Http(std::net::SocketAddr, std::io::Error),
    #[error(transparent)]
    Refused(#[from] crate::scheduler_link::JoinRefused),
    #[error(transparent)]
    NotCertified(#[from] crate::certify::CertifyRefused),
}

/// Why a batch failed as a whole.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    NotBatched(#[from] NotBatched),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// A model file the scheduler assigned could not be fetched and kept.
    #[error(transparent)]
    File(Arc<FileError>),
    #[error("model '{0}' is not in the model repository")]
    ModelNotFound(String),
    #[error("model '{model}' has no version '{version}' (serving version {served})")]
    VersionNotFound {
        model: String,
        version: String,
        served: u64,
    },
    #[error("invalid model name {0:?}: use a plain directory name of the model repository")]
    InvalidModelName(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("model '{model}' has {capacity} requests queued, its limit; try again later")]
    QueueFull { model: String, capacity: usize },
    /// A bulk request while the queue holds what bulk may fill: the rest is kept for
    /// interactive requests.
    #[error("model '{model}' is three quarters full ({queued} of {capacity} requests queued, or of its bytes); the rest is kept for interactive requests, so this bulk request is refused: try again later")]
    BulkShed {
        model: String,
        queued: usize,
        capacity: usize,
    },
    /// The priority the caller named is not one.
    #[error("{0}")]
    BadPriority(String),
    /// Named as the repository names it; `path`, the whole one, is for the log.
    #[error("model '{model}' cannot be loaded: {model}/herd.toml: {reason}")]
    BadSettings {
        model: String,
        path: PathBuf,
        reason: SettingsError,
    },
    /// The engine's words may quote the model file's path: cut to what the repository
    /// calls it. (The load logs `reason` whole.)
    #[error(
        "model '{model}' cannot be loaded: {}",
        herd_core::repository::without_server_paths(&.reason.to_string())
    )]
    LoadFailed { model: String, reason: LoadError },
    #[error("model '{model}' failed to run: {reason}")]
    Inference { model: String, reason: BatchError },
    #[error("model '{0}' was unloaded before the request ran; retry")]
    Stopped(String),
    #[error("the request's deadline passed before it ran")]
    DeadlineExceeded,
    #[error("no copy of the model file here, and no scheduler to fetch it from")]
    NoFileSource,
    /// The scheduler's own answer to a call the agent made for this request.
    #[error("{}", .0.message())]
    Upstream(Status),
    /// A task of the agent's ended without an answer (it panicked).
    #[error("{what} failed: {error}")]
    Task { what: &'static str, error: String },
    /// Past a byte budget: the agent's in flight, or the model's queue.
    #[error(transparent)]
    OverBudget(#[from] crate::runner::budget::OverBudget),
    /// The model cannot answer before the request's deadline: refused at admission.
    #[error(transparent)]
    TooLate(#[from] crate::runner::admission::TooLate),
    /// A queued request that could not finish before its deadline even if it ran now.
    #[error(
        "model '{model}': the request's deadline is {} ms away and the run it would join \
         takes about {} ms; dropped before running",
        .left.as_millis(),
        .own.as_millis()
    )]
    WontFinish {
        model: String,
        left: std::time::Duration,
        own: std::time::Duration,
    },
}

impl From<herd_core::RepositoryError> for AgentError {
    fn from(e: herd_core::RepositoryError) -> AgentError {
        use herd_core::RepositoryError as R;
        match e {
            R::ModelNotFound(name) => AgentError::ModelNotFound(name),
            R::InvalidModelName(name) => AgentError::InvalidModelName(name),
            R::BadSettings {
                model,
                path,
                reason,
            } => AgentError::BadSettings {
                model,
                path,
                reason,
            },
        }
    }
}

impl From<FileError> for AgentError {
    fn from(e: FileError) -> AgentError {
        AgentError::File(Arc::new(e))
    }
}

impl AgentError {
    pub fn task(what: &'static str, error: tokio::task::JoinError) -> AgentError {
        AgentError::Task {
            what,
            error: error.to_string(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            AgentError::DeadlineExceeded => Code::DeadlineExceeded,
            AgentError::NoFileSource => Code::FailedPrecondition,
            AgentError::Upstream(status) => status.code(),
            AgentError::Task { .. } => Code::Internal,
            AgentError::File(e) => match **e {
                FileError::NoDataDir => Code::FailedPrecondition,
                FileError::DigestMismatch { .. } => Code::DataLoss,
                FileError::CreateDir { .. } | FileError::TempFile { .. } => {
                    Code::FailedPrecondition
                }
                FileError::Write(_) => Code::Internal,
                FileError::Persist { .. }
                | FileError::OutOfOrder { .. }
                | FileError::Incomplete { .. } => Code::DataLoss,
            },
            AgentError::ModelNotFound(_) | AgentError::VersionNotFound { .. } => Code::NotFound,
            AgentError::InvalidModelName(_) | AgentError::InvalidInput(_) => Code::InvalidArgument,
            AgentError::QueueFull { .. } | AgentError::BulkShed { .. } => Code::ResourceExhausted,
            AgentError::BadPriority(_) => Code::InvalidArgument,
            AgentError::BadSettings { .. } | AgentError::LoadFailed { .. } => {
                Code::FailedPrecondition
            }
            AgentError::Inference { reason, .. } => reason.code(),
            AgentError::Stopped(_) => Code::Unavailable,
            AgentError::OverBudget(_) | AgentError::TooLate(_) => Code::ResourceExhausted,
            AgentError::WontFinish { .. } => Code::DeadlineExceeded,
        }
    }
}

impl BatchError {
    /// How a failed run bears on the requests in it (isolate.rs).
    pub fn blame(&self) -> Blame {
        match self {
            BatchError::Session(SessionError::WorkerDied { .. } | SessionError::Broken(_)) => {
                Blame::Fatal
            }
            // The engine's words may quote any request's data. Outputs that do not
            // split by rows still serve requests run alone.
            BatchError::Session(SessionError::Failed(_)) | BatchError::NotBatched(_) => {
                Blame::Split
            }
            BatchError::Session(SessionError::BadReply(_)) => Blame::Shared,
        }
    }

    /// A failed run's code as its requests hear it. The runner hands the engine's own
    /// failure (`Failed`) only to a request that ran alone (isolate.rs), so it is that
    /// request's doing (an index out of range, a shape ONNX Runtime refuses):
    /// INVALID_ARGUMENT, in the engine's words. A model that fails every input hears
    /// the same; the words say which. A dead worker is the node's trouble, not the
    /// request's: UNAVAILABLE, which callers retry (the gateway on another replica).
    /// INTERNAL stays for what is about no request: a reply the agent cannot read, a
    /// model whose outputs do not split by rows.
    pub fn code(&self) -> Code {
        match self {
            BatchError::Session(SessionError::Failed(_)) => Code::InvalidArgument,
            BatchError::Session(SessionError::WorkerDied { .. } | SessionError::Broken(_)) => {
                Code::Unavailable
            }
            BatchError::Session(SessionError::BadReply(_)) | BatchError::NotBatched(_) => {
                Code::Internal
            }
        }
    }
}

/// The words of every error name no server path (they reach whoever called, token or
/// not); where one had a path, the log gets it whole here.
impl From<AgentError> for Status {
    fn from(e: AgentError) -> Status {
        match &e {
            AgentError::BadSettings {
                model,
                path,
                reason,
            } => tracing::warn!(
                model = %model,
                path = %path.display(),
                error = %reason,
                "the model's herd.toml cannot be read"
            ),
            AgentError::File(error) => {
                if let Some(path) = error.path() {
                    tracing::warn!(path = %path.display(), error = %error, "model file error");
                }
            }
            _ => {}
        }
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_error_has_its_code_and_keeps_its_words() {
        let died = SessionError::WorkerDied {
            pid: 7,
            how: "signal: 9 (SIGKILL)".into(),
        };
        let cases = [
            (
                AgentError::Inference {
                    model: "m".into(),
                    reason: died.into(),
                },
                Code::Unavailable,
                "model 'm' failed to run: the model worker (pid 7) died: signal: 9 (SIGKILL)",
            ),
            (
                AgentError::Inference {
                    model: "m".into(),
                    reason: SessionError::Broken("answered out of turn".into()).into(),
                },
                Code::Unavailable,
                "model 'm' failed to run: answered out of turn",
            ),
            (
                AgentError::Inference {
                    model: "m".into(),
                    reason: SessionError::Failed("idx=1000 out of range".into()).into(),
                },
                Code::InvalidArgument,
                "model 'm' failed to run: idx=1000 out of range",
            ),
            (
                AgentError::Inference {
                    model: "m".into(),
                    reason: SessionError::BadReply("an empty reply".into()).into(),
                },
                Code::Internal,
                "model 'm' failed to run: an empty reply",
            ),
            (
                AgentError::Inference {
                    model: "m".into(),
                    reason: NotBatched { rows: 1, total: 2 }.into(),
                },
                Code::Internal,
                "model 'm' failed to run: an output has 1 rows for a batch of 2; \
                 the model does not batch along its first dimension",
            ),
            (
                AgentError::LoadFailed {
                    model: "m".into(),
                    reason: LoadError::Engine("bad protobuf".into()),
                },
                Code::FailedPrecondition,
                "model 'm' cannot be loaded: bad protobuf",
            ),
            (
                AgentError::LoadFailed {
                    model: "m".into(),
                    reason: LoadError::Engine(
                        "Load model from /srv/models/m/1/model.onnx failed:Protobuf parsing failed"
                            .into(),
                    ),
                },
                Code::FailedPrecondition,
                "model 'm' cannot be loaded: Load model from m/1/model.onnx \
                 failed:Protobuf parsing failed",
            ),
            (
                FileError::CreateDir {
                    dir: "/var/lib/herd/agent/models".into(),
                    error: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
                }
                .into(),
                Code::FailedPrecondition,
                "cannot create the agent's directory for fetched models: permission denied",
            ),
            (
                AgentError::DeadlineExceeded,
                Code::DeadlineExceeded,
                "the request's deadline passed before it ran",
            ),
            (
                AgentError::Upstream(Status::not_found("no file with that digest")),
                Code::NotFound,
                "no file with that digest",
            ),
            (
                FileError::Incomplete {
                    got: 3,
                    expected: 5,
                }
                .into(),
                Code::DataLoss,
                "fetched 3 bytes of a 5-byte model file",
            ),
        ];
        for (error, code, message) in cases {
            let status = Status::from(error);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }
}
