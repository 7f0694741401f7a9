//! herd's Rust client library, for applications that offload ML work: a connection to
//! the scheduler (or an agent serving alone) over the KServe v2 / Triton gRPC protocol
//! and herd's Admin service, typed tensors, errors that say what failed and where, and
//! the one view-model of the cluster that the CLI and the dashboard share. No ONNX
//! Runtime inside.

pub mod client;
mod connect;
pub mod error;
pub mod failover;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod table;
pub mod tensor;
pub mod trust;
pub mod view;
pub mod why;

pub use client::{Client, ConnectOptions};
pub use error::ClientError;
pub use tensor::{NamedTensor, TensorData, TensorError};
pub use trust::{local_ca, trusted_ca};

// Types of these crates appear in this API (`TensorData` holds ndarray arrays,
// `to_json` returns a `serde_json::Value`).
pub use ndarray;
pub use serde_json;
