//! Request ids and the spans that carry them, so that one request can be followed
//! through the agent's logs (`HERD_LOG=herd_agent=debug`): its span goes with it into
//! the model's queue, and the batch it runs in names it.

use std::fmt;

use tracing::Span;

/// The gRPC metadata key a caller may set to name its request.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest request id taken from a caller; a longer one is replaced.
pub(crate) const MAX_REQUEST_ID_LEN: usize = 128;

/// A request's id: the caller's when it gave a usable one, else a fresh one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// A fresh id: 16 hex digits.
    pub fn generate() -> RequestId {
        RequestId(format!("{:016x}", rand::random::<u64>()))
    }

    /// The caller's id if it is 1 to 128 printable ASCII characters, else a fresh
    /// one: what a caller sends ends up in logs, so it is bounded and plain.
    pub fn from_caller(given: Option<&str>) -> RequestId {
        match given {
            Some(id) if usable(id) => RequestId(id.to_string()),
            _ => RequestId::generate(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn usable(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The span one request runs in, from arrival to answer.
pub(crate) fn request_span(id: &RequestId, model: &str) -> Span {
    tracing::info_span!("request", request_id = %id, model = %model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_id_is_kept_when_short_and_printable_else_replaced() {
        assert_eq!(RequestId::from_caller(Some("req-42")).as_str(), "req-42");
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        for bad in ["", "two words", "new\nline", "caf\u{e9}", long.as_str()] {
            let id = RequestId::from_caller(Some(bad));
            assert_ne!(id.as_str(), bad, "{bad:?} must be replaced");
            assert_eq!(id.as_str().len(), 16, "{id}");
        }
        assert_eq!(RequestId::from_caller(None).as_str().len(), 16);
    }

    #[test]
    fn generated_ids_differ() {
        assert_ne!(RequestId::generate(), RequestId::generate());
    }
}
