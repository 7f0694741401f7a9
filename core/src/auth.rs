//! The cluster token: `authorization: Bearer <token>` on calls between agents, the
//! scheduler and people's tools.

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Server side: refuses calls that do not carry `token` (when one is set).
#[derive(Clone)]
pub struct RequireToken {
    token: Option<String>,
    what: &'static str,
}

impl RequireToken {
    /// `what` names the calls in the error ("admin calls", "joining").
    pub fn new(token: Option<String>, what: &'static str) -> RequireToken {
        RequireToken { token, what }
    }

    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        verify(token, given, self.what)
    }
}

/// The token rule itself: `authorization` (the header's value, if any) must be
/// `Bearer <token>`; `what` names the calls in the error. Shared by [`RequireToken`]
/// and the tower layer in `layers::auth`, so both answer with the same words.
pub(crate) fn verify(token: &str, authorization: Option<&str>, what: &str) -> Result<(), Status> {
    match authorization.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(Status::unauthenticated(format!(
            "{what} need the cluster token; the one given is wrong"
        ))),
        None => Err(Status::unauthenticated(format!(
            "{what} need the cluster token (authorization: Bearer <token>; --token or HERD_TOKEN)"
        ))),
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request)?;
        Ok(request)
    }
}

/// Client side: adds the token to every call (when one is set).
#[derive(Clone)]
pub struct SendToken {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

/// A token that cannot travel in a header.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("the token must be printable ASCII")]
pub struct BadToken;

impl SendToken {
    pub fn new(token: Option<&str>) -> Result<SendToken, BadToken> {
        let header = token
            .map(|t| format!("Bearer {t}").parse().map_err(|_| BadToken))
            .transpose()?;
        Ok(SendToken { header })
    }

    /// No token: calls go out as they are.
    pub fn none() -> SendToken {
        SendToken { header: None }
    }
}

impl Interceptor for SendToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    }
}

/// Compares without stopping at the first difference, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_required_only_when_set() {
        let open = RequireToken::new(None, "admin calls");
        assert!(open.check(&Request::new(())).is_ok());
        let closed = RequireToken::new(Some("s3cret".into()), "admin calls");
        let err = closed.check(&Request::new(())).expect_err("no token");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("need the cluster token"));
        let mut wrong = Request::new(());
        SendToken::new(Some("guess"))
            .expect("ascii")
            .call(Request::new(()))
            .expect("ok");
        wrong
            .metadata_mut()
            .insert("authorization", "Bearer guess".parse().expect("ascii"));
        assert!(closed
            .check(&wrong)
            .expect_err("wrong")
            .message()
            .contains("wrong"));
        let right = SendToken::new(Some("s3cret"))
            .expect("ascii")
            .call(Request::new(()))
            .expect("ok");
        assert!(closed.check(&right).is_ok());
    }
}
