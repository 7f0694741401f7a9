//! herd's Rust client: talk to the scheduler (or an agent serving alone) over the
//! KServe v2 / Triton gRPC protocol and herd's Admin service, with typed tensors; and
//! the client commands of the `herd` binary: `infer`, `models`, `nodes` and `bench`,
//! the project's load generator.

pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod error;
pub mod infer;
pub mod inputs;
pub mod table;
pub mod tensor;

pub use client::{Client, ConnectOptions};
pub use error::ClientError;
pub use tensor::{NamedTensor, TensorData};

// Types of these crates appear in this API (`TensorData` holds ndarray arrays,
// `to_json` returns a `serde_json::Value`).
pub use ndarray;
pub use serde_json;
