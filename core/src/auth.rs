//! The cluster token: `authorization: Bearer <token>` on calls between agents, the
//! scheduler and people's tools, and the file it is kept in.

use std::path::{Path, PathBuf};

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

/// A token file that gives no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the token file {}: {reason}", .path.display())]
    Read { path: PathBuf, reason: String },
    #[error("the token file {} is empty", .path.display())]
    Empty { path: PathBuf },
}

/// The token kept in the file at `path`, without surrounding whitespace (the newline
/// an editor or `echo` leaves).
pub fn read_token_file(path: &Path) -> Result<String, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| TokenFileError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// The token a command was given: `--token` (`token`), else the one in `--token-file`
/// (`file`), else none. An empty `--token` counts as none.
pub fn given_token(
    token: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>, TokenFileError> {
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        return Ok(Some(t.to_string()));
    }
    file.map(read_token_file).transpose()
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

    #[test]
    fn a_token_file_gives_its_token_without_the_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").expect("write");
        assert_eq!(read_token_file(&path), Ok("s3cret".to_string()));
        assert_eq!(
            given_token(None, Some(&path)),
            Ok(Some("s3cret".to_string()))
        );
        assert_eq!(
            given_token(Some("given"), Some(&path)),
            Ok(Some("given".to_string()))
        );
        assert_eq!(given_token(Some(""), None), Ok(None));
    }

    #[test]
    fn an_empty_or_missing_token_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").expect("write");
        assert_eq!(
            read_token_file(&empty),
            Err(TokenFileError::Empty {
                path: empty.clone()
            })
        );
        let missing = dir.path().join("missing");
        let err = given_token(None, Some(&missing)).expect_err("no such file");
        assert!(
            err.to_string().starts_with(&format!(
                "cannot read the token file {}: ",
                missing.display()
            )),
            "{err}"
        );
    }
}
