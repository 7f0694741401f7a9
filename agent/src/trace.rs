//! Request ids and the spans that carry them, so that one request can be followed
//! through the agent's logs (`HERD_LOG=herd_agent=debug`): its span goes with it into
//! the model's queue, and the batch it runs in names it. The id is herd-core's, the
//! same one the server's request-id layer gives every call.

use tracing::Span;

pub use herd_core::layers::request_id::{RequestId, REQUEST_ID_HEADER};

/// The span one request runs in, from arrival to answer.
pub(crate) fn request_span(
    id: &RequestId,
    model: &str,
    priority: herd_core::priority::Priority,
) -> Span {
    tracing::info_span!("request", request_id = %id, model = %model, priority = priority.as_str())
}
