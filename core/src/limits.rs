//! Sizes and defaults every part agrees on.

/// The largest gRPC message a client, the scheduler or an agent accepts by default
/// (a 1440 px RGB float image is ~25 MiB; batches of them go in one message).
pub const MAX_MESSAGE: usize = 256 << 20;

/// The largest batch message between the scheduler and an agent.
pub const BATCH_MESSAGE: usize = 256 << 20;

/// The largest message on an agent's link to the scheduler (reports, fetched chunks).
pub const LINK_MESSAGE: usize = 64 << 20;

/// gRPC inference's port, as Triton's.
pub const GRPC_PORT: u16 = 8001;

/// Health and metrics over HTTP, as Triton's.
pub const HTTP_PORT: u16 = 8000;

/// Calls a server has in flight before it sheds more with RESOURCE_EXHAUSTED: a
/// backstop above the per-model queues, which refuse first.
pub const MAX_IN_FLIGHT: usize = 16 * 1024;
