//! What can go wrong in the scheduler, as one typed error. Domain code returns it; the
//! gRPC services turn it into a `tonic::Status` at their edge, through one table.

use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error("join: the agent must give its name and address")]
    JoinWithoutName,
    #[error("{0}")]
    BadAgentAddress(String),
    /// The advertised address of an agent on another host is its own loopback: the
    /// scheduler would call itself, or another agent on its own host.
    #[error("agent {name:?} advertises {address}, a loopback address, but joins from {peer}: the scheduler cannot reach it there; start the agent with --advertise HOST:PORT (an address this host can be reached at)")]
    LoopbackAdvertised {
        name: String,
        address: String,
        peer: String,
    },
    /// Nothing answered at the advertised address (or not in time).
    #[error("agent {name:?} advertises {address}, but the scheduler cannot reach it there: {error}; check --advertise (and --listen) and that this host can reach the agent's port")]
    AdvertisedUnreachable {
        name: String,
        address: String,
        error: String,
    },
    /// Something else answers at the advertised address: another agent, another
    /// cluster's, or not an agent at all.
    #[error("agent {name:?} advertises {address}, but {found} answers there; start the agent with --advertise HOST:PORT naming its own address")]
    AdvertisedIsAnother {
        name: String,
        address: String,
        found: String,
    },
    #[error("a node named {name:?} is already in the cluster at {address}; give this agent another --name")]
    NameTaken { name: String, address: String },
    #[error("model '{}' is not in the catalog", herd_core::limits::quoted_name(.0))]
    UnknownModel(String),
    /// The repository has no such model, or cannot read it (the reason as it says it).
    #[error("{0}")]
    NotInRepository(String),
    #[error("no node named {0:?}")]
    UnknownNode(String),
    #[error("node {0:?} did not say how to wake it: start its agent with --wake-mac MAC")]
    NotWakeable(String),
    #[error("cannot wake node {node:?}: {reason}")]
    WakeFailed { node: String, reason: String },
    #[error("no model file with digest {0}")]
    UnknownDigest(String),
    /// Nothing fits: the reason names the need and the largest free space.
    #[error("{0}")]
    Unplaceable(String),
    /// The model's last load failed; the next ask tries again.
    #[error("{0}")]
    LoadFailed(String),
    #[error("model '{model}' has no ready replica yet (waited {waited_s} s); try again")]
    NoReplicaYet { model: String, waited_s: u64 },
    #[error("the scheduler started moments ago and is still learning from reports what agents hold; ask again in a few seconds")]
    StillLearning,
    /// The priority the caller named is not one.
    #[error("{0}")]
    BadPriority(String),
    #[error("the scheduler is stopping")]
    Stopping,
    /// Only the leader places: the caller takes the call there (see `forward.rs`).
    #[error("{}", crate::forward::NOT_LEADER)]
    ToLeader,
    #[error(
        "no scheduler leads the cluster now (an election is under way); ask again in a few seconds"
    )]
    NoLeader,
    #[error("the request's deadline ({0} ms) passed")]
    DeadlineExceeded(u128),
    #[error("the replica's sender stopped")]
    SenderStopped,
    #[error("the agent sent fewer results than requests")]
    ShortAnswer,
    /// An agent's answer, or the failure to reach it: its code is passed on as it is.
    #[error("{message}")]
    Agent { code: Code, message: String },
    #[error("unload on a node failed: {message}")]
    UnloadFailed { code: Code, message: String },
    #[error("{0}")]
    File(String),
    /// The scheduler's own token cannot go in a header: its fault, not the caller's.
    #[error("the cluster token cannot be sent: {0}")]
    Token(String),
}

/// Why the scheduler could not start, or stopped serving: said once, to whoever ran it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the token to {}: {source}", path.display())]
    WriteToken {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    TokenFile(#[from] herd_core::auth::TokenFileError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("reading the model repository failed: {0}")]
    Repository(String),
    #[error("gRPC server: {0}")]
    Grpc(#[source] tonic::transport::Error),
    #[error("HTTP server: {0}")]
    Http(#[source] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
}

impl SchedulerError {
    /// The one table from error kinds to gRPC codes.
    pub fn code(&self) -> Code {
        use SchedulerError::*;
        match self {
            JoinWithoutName
            | BadPriority(_)
            | BadAgentAddress(_)
            | LoopbackAdvertised { .. }
            | AdvertisedIsAnother { .. } => Code::InvalidArgument,
            // The agent retries: a network still coming up may yet carry the call.
            AdvertisedUnreachable { .. } => Code::FailedPrecondition,
            NameTaken { .. } => Code::AlreadyExists,
            UnknownModel(_) | NotInRepository(_) | UnknownNode(_) | UnknownDigest(_) => {
                Code::NotFound
            }
            Unplaceable(_) => Code::ResourceExhausted,
            NotWakeable(_) => Code::FailedPrecondition,
            WakeFailed { .. } => Code::Unavailable,
            LoadFailed(_) => Code::FailedPrecondition,
            NoReplicaYet { .. }
            | StillLearning
            | Stopping
            | SenderStopped
            | ToLeader
            | NoLeader => Code::Unavailable,
            DeadlineExceeded(_) => Code::DeadlineExceeded,
            ShortAnswer | File(_) | Token(_) => Code::Internal,
            Agent { code, .. } | UnloadFailed { code, .. } => *code,
        }
    }

    /// An agent's status, kept with its code. tonic's own refusal of a message over the
    /// link's size limit (OUT_OF_RANGE) is RESOURCE_EXHAUSTED, as a server says it.
    pub fn agent(status: &Status) -> SchedulerError {
        if let Some(too_large) = herd_core::layers::TooLarge::of(status) {
            use herd_core::layers::message_size::Direction;
            let what = match too_large.direction {
                Direction::Sent => "the batch for the agent",
                Direction::Received => "the agent's answer",
            };
            return SchedulerError::Agent {
                code: Code::ResourceExhausted,
                message: format!(
                    "{what} is {} bytes, over the limit of {} bytes between the scheduler \
                     and its agents",
                    too_large.len, too_large.limit
                ),
            };
        }
        SchedulerError::Agent {
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    /// A failure on the way to a replica that another replica may well not have: the
    /// connection failed, not the request. (A deadline or a cancellation is the
    /// request's own, and says nothing of the node.)
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            SchedulerError::Agent {
                code: Code::Unavailable | Code::Unknown,
                ..
            }
        )
    }
}

/// Words that may quote a file of this machine (the repository's, read for a request;
/// an agent's answer, passed on) name it as the repository does, never where it is:
/// they reach whoever called. The log keeps the whole path.
impl From<SchedulerError> for Status {
    fn from(e: SchedulerError) -> Status {
        use SchedulerError::*;
        let message = e.to_string();
        let message = match &e {
            NotInRepository(_) | LoadFailed(_) | File(_) | Agent { .. } | UnloadFailed { .. } => {
                let client = herd_core::repository::without_server_paths(&message);
                if client != message {
                    tracing::warn!(error = %message, "request failed");
                }
                client
            }
            _ => message,
        };
        Status::new(e.code(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_keep_the_code_and_the_message() {
        let s = Status::from(SchedulerError::UnknownModel("m".into()));
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "model 'm' is not in the catalog");
        let s = Status::from(SchedulerError::Unplaceable("no node can hold it".into()));
        assert_eq!(s.code(), Code::ResourceExhausted);
        let s = Status::from(SchedulerError::UnloadFailed {
            code: Code::Unavailable,
            message: "gone".into(),
        });
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unavailable, "unload on a node failed: gone")
        );
    }

    #[test]
    fn statuses_name_no_server_path() {
        let e = SchedulerError::NotInRepository(
            "cannot read /srv/models/m/2/model.onnx: permission denied".into(),
        );
        assert_eq!(
            Status::from(e).message(),
            "cannot read m/2/model.onnx: permission denied"
        );
    }

    #[test]
    fn a_message_too_large_for_the_link_is_resource_exhausted() {
        let status = Status::out_of_range(
            "Error, decoded message length too large: found 300 bytes, the limit is: 200 bytes",
        );
        let s = Status::from(SchedulerError::agent(&status));
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::ResourceExhausted,
                "the agent's answer is 300 bytes, over the limit of 200 bytes between the \
                 scheduler and its agents"
            )
        );
        let own = SchedulerError::agent(&Status::out_of_range("index 7 of 5"));
        assert_eq!(own.code(), Code::OutOfRange);
    }

    #[test]
    fn only_a_failed_connection_is_unreachable() {
        let unavailable = SchedulerError::agent(&Status::unavailable("x"));
        assert!(unavailable.is_unreachable());
        let deadline = SchedulerError::agent(&Status::deadline_exceeded("x"));
        assert!(!deadline.is_unreachable());
        assert!(!SchedulerError::LoadFailed("x".into()).is_unreachable());
    }
}
