//! The cluster token: given, or kept in the data directory (generated on first start,
//! when herd says where it is kept but never prints the token itself: stderr ends up
//! in logs and terminals' scrollback).

use std::io::Write;
use std::path::Path;

use rand::Rng;

use crate::StartError;

/// With `tls`, the notice of a generated token points at the join token (which the
/// start writes next to it) rather than at the bare token.
pub fn load_or_create(
    given: Option<String>,
    data_dir: &Path,
    tls: bool,
) -> Result<String, StartError> {
    if let Some(t) = given.filter(|t| !t.is_empty()) {
        return Ok(t);
    }
    let path = data_dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let token: String = (0..32)
        .map(|_| format!("{:x}", rand::rng().random_range(0..16u8)))
        .collect();
    std::fs::create_dir_all(data_dir).map_err(|source| StartError::CreateDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let write_error = |source| StartError::WriteToken {
        path: path.clone(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(write_error)?;
    file.write_all(token.as_bytes()).map_err(write_error)?;
    eprintln!("{}", generated_notice(&path, tls));
    Ok(token)
}

/// What herd says once it has generated a token: where it is and how to use it, never
/// the token itself.
fn generated_notice(path: &Path, tls: bool) -> String {
    let join_token = path.with_file_name("join-token");
    let (path, join_token) = (path.display(), join_token.display());
    if tls {
        format!(
            "herd: generated the cluster token, kept in {path} (readable only by you); \
             agents and tools read it with --token-file {join_token} (or HERD_TOKEN_FILE): \
             the token with the cluster CA's hash, so they verify this scheduler over TLS; \
             `cat {join_token}` shows it"
        )
    } else {
        format!(
            "herd: generated the cluster token, kept in {path} (readable only by you); \
             agents and tools read it with --token-file {path} (or HERD_TOKEN_FILE), \
             and `cat {path}` shows it"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_is_kept_and_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = load_or_create(None, dir.path(), false).expect("generated");
        assert_eq!(token.len(), 32);
        let kept = std::fs::read_to_string(dir.path().join("token")).expect("kept");
        assert_eq!(kept, token);
        assert_eq!(
            load_or_create(None, dir.path(), false).expect("read again"),
            token
        );
        assert_eq!(
            load_or_create(Some("given".into()), dir.path(), false).expect("given"),
            "given"
        );
    }

    #[test]
    fn the_notice_says_where_the_token_is_and_how_to_use_it() {
        let notice = generated_notice(Path::new("/data/token"), true);
        assert!(notice.contains("kept in /data/token"), "{notice}");
        assert!(notice.contains("--token-file /data/join-token"), "{notice}");
        let plain = generated_notice(Path::new("/data/token"), false);
        assert!(plain.contains("--token-file /data/token"), "{plain}");
        assert!(!plain.contains("join-token"), "{plain}");
    }
}
