//! Sizes and defaults every part agrees on.

/// The largest gRPC message herd's client library accepts or sends (a 1440 px RGB float
/// image is ~25 MiB; batches of them go in one message). Servers take theirs from
/// --max-message-size.
pub const MAX_MESSAGE: usize = 256 << 20;

/// The largest batch message between the scheduler and an agent, at least.
pub const BATCH_MESSAGE: usize = 256 << 20;

/// Bytes of requests that travel together in one batch from the scheduler to an agent;
/// a larger request travels alone.
pub const BATCH_BYTES: usize = 32 << 20;

/// What a batch adds around one request (its id, its deadline, the framing), and more.
const BATCH_ITEM_OVERHEAD: usize = 1 << 20;

/// The largest batch message between the scheduler and an agent when one request may
/// be `max_message` bytes: a batch is at most [`BATCH_BYTES`] of requests, or one
/// request alone.
pub fn batch_message(max_message: usize) -> usize {
    BATCH_MESSAGE.max(max_message.saturating_add(BATCH_ITEM_OVERHEAD))
}

/// The largest message on an agent's link to the scheduler (reports, fetched chunks).
pub const LINK_MESSAGE: usize = 64 << 20;

/// gRPC inference's port, as Triton's.
pub const GRPC_PORT: u16 = 8001;

/// Health and metrics over HTTP, as Triton's.
pub const HTTP_PORT: u16 = 8000;

/// Calls a server has in flight before it sheds more with RESOURCE_EXHAUSTED: a
/// backstop above the per-model queues, which refuse first.
pub const MAX_IN_FLIGHT: usize = 16 * 1024;

/// Longest name (of a model, an input, an output) quoted whole in an error message.
pub const QUOTED_NAME: usize = 64;

/// A caller's name as an error message quotes it: whole when short, else its start and
/// its length, so that a 10,000-character name does not come back 10,000 characters
/// long (nor fill the logs).
pub fn quoted_name(name: &str) -> String {
    if name.chars().count() <= QUOTED_NAME {
        return name.to_string();
    }
    let start: String = name.chars().take(QUOTED_NAME).collect();
    format!("{start}… ({} bytes)", name.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_quoted_by_their_start_and_length() {
        assert_eq!(quoted_name("tiny_mlp"), "tiny_mlp");
        let long = "x".repeat(10_000);
        let quoted = quoted_name(&long);
        assert_eq!(quoted, format!("{}… (10000 bytes)", "x".repeat(64)));
        // Whole characters, never a split one.
        assert!(quoted_name(&"é".repeat(100)).starts_with(&"é".repeat(64)));
    }
}
