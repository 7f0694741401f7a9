//! herd's Rust client: talk to an agent (and, later, the scheduler) over the KServe v2
//! / Triton gRPC protocol, and `herd bench`, the project's load generator.

pub mod bench;
pub mod client;
pub mod inputs;

pub use client::{Client, ClientError};
