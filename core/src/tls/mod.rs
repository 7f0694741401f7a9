//! TLS between the machines of a cluster, pinned by the join token.
//!
//! The scheduler keeps a cluster CA (`ca`) in its store and serves with a certificate
//! from it; agents get theirs at join, from a request signed with a key that never
//! leaves them. Nobody has to copy a file: the join token carries the CA's SHA-256
//! (`pin`), as kubeadm's discovery hash or k3s's token do, and a client that has only
//! the token learns the CA from the first handshake, accepted only when a certificate
//! in the server's chain has that hash (`discover`).
//!
//! Certificates name roles, not hosts: every scheduler's carries [`SCHEDULER_NAME`] and
//! every agent's [`AGENT_NAME`], which clients check instead of the address they dialled
//! (a cluster is reached by IP, by host name and through NAT alike, and only the CA's
//! own members hold its certificates). The scheduler's also names `localhost`, the
//! loopback addresses and the host's name, for clients that check the address (the
//! stock tritonclient on the same host).

mod ca;
mod discover;
mod pin;
mod probe;
mod refusal;
mod trust;

pub use ca::{ClusterCa, Identity, Request};
pub use discover::fetch_ca;
pub use pin::{CaPin, JoinToken};
pub use probe::serves_tls;
pub use refusal::{handshake_refusal, Refusal};
pub use trust::{http_server_config, read_ca_file, tonic_client, tonic_server, Trust};

/// How long a server waits for a client's TLS handshake to end: a socket that began one
/// and went quiet is closed then, not held.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The name every scheduler's certificate carries and clients check.
pub const SCHEDULER_NAME: &str = "scheduler.herd";
/// The name every agent's certificate carries and the scheduler checks.
pub const AGENT_NAME: &str = "agent.herd";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make a certificate: {0}")]
    Certificate(String),
    #[error("the certificate request is not valid: {0}")]
    BadRequest(String),
    #[error("cannot reach {addr} to learn its CA: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("the CA certificate {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error(
        "{addr} did not prove it belongs to the cluster the token names: {reason} \
         (a token from another cluster, a tampered token, a scheduler serving plain text, or a \
         server that is not herd's)"
    )]
    NotPinned { addr: String, reason: String },
}
