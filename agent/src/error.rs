//! The agent's errors, and the one table that maps them to gRPC status codes.

use tonic::{Code, Status};

#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
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
    #[error("model '{model}' cannot be loaded: {reason}")]
    LoadFailed { model: String, reason: String },
    #[error("model '{model}' failed to run: {reason}")]
    Inference { model: String, reason: String },
    #[error("model '{0}' was unloaded before the request ran; retry")]
    Stopped(String),
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
            } => AgentError::LoadFailed {
                model,
                reason: format!("{}: {reason}", path.display()),
            },
        }
    }
}

impl AgentError {
    pub fn code(&self) -> Code {
        match self {
            AgentError::ModelNotFound(_) | AgentError::VersionNotFound { .. } => Code::NotFound,
            AgentError::InvalidModelName(_) | AgentError::InvalidInput(_) => Code::InvalidArgument,
            AgentError::QueueFull { .. } => Code::ResourceExhausted,
            AgentError::LoadFailed { .. } => Code::FailedPrecondition,
            AgentError::Inference { .. } => Code::Internal,
            AgentError::Stopped(_) => Code::Unavailable,
        }
    }
}

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}
