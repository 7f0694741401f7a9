//! The cluster CA as the scheduler keeps it: made on the first start, kept in the store
//! (so every scheduler sharing the store shares it), and the files beside the token that
//! let agents and tools on this machine trust it: `ca.pem` and `join-token`.

use std::path::{Path, PathBuf};

use herd_core::tls::{ClusterCa, Identity, JoinToken, SCHEDULER_NAME};
use serde::{Deserialize, Serialize};

use crate::store::Store;
use crate::StartError;

const KEY: &str = "/herd/tls/ca";

/// The CA and this scheduler's certificate from it.
pub struct ClusterTls {
    pub ca: ClusterCa,
    pub identity: Identity,
}

#[derive(Serialize, Deserialize)]
struct Kept {
    cert_pem: String,
    key_pem: String,
}

impl ClusterTls {
    pub async fn load_or_create(store: &dyn Store) -> Result<ClusterTls, StartError> {
        let ca = load_or_create_ca(store).await?;
        let identity = ca.issue(&serving_names()).map_err(tls_error)?;
        Ok(ClusterTls { ca, identity })
    }

    /// The join token for `secret`: it pins this CA.
    pub fn join_token(&self, secret: &str) -> String {
        JoinToken {
            secret: secret.to_string(),
            pin: Some(self.ca.pin()),
        }
        .encode()
    }
}

fn tls_error(e: herd_core::tls::TlsError) -> StartError {
    StartError::Tls(e.to_string())
}

async fn load_or_create_ca(store: &dyn Store) -> Result<ClusterCa, StartError> {
    if let Some(ca) = read(store).await? {
        return Ok(ca);
    }
    let made = ClusterCa::generate().map_err(tls_error)?;
    let kept = serde_json::to_vec(&Kept {
        cert_pem: made.cert_pem().to_string(),
        key_pem: made.key_pem().to_string(),
    })
    .map_err(|e| StartError::Tls(e.to_string()))?;
    // Only when nobody made one meanwhile: schedulers starting together share the first.
    match store.put_if(KEY, kept, 0, None).await? {
        Some(_) => {
            tracing::info!(pin = %made.pin(), "made the cluster CA");
            Ok(made)
        }
        None => read(store)
            .await?
            .ok_or_else(|| StartError::Tls("the cluster CA vanished from the store".into())),
    }
}

async fn read(store: &dyn Store) -> Result<Option<ClusterCa>, StartError> {
    let Some(kv) = store.get(KEY).await? else {
        return Ok(None);
    };
    let kept: Kept = serde_json::from_slice(&kv.value)
        .map_err(|e| StartError::Tls(format!("the cluster CA in the store: {e}")))?;
    ClusterCa::from_pem(&kept.cert_pem, &kept.key_pem)
        .map(Some)
        .map_err(tls_error)
}

/// The names this scheduler's certificate carries: its role, and what a client on this
/// host dials (clients that check the address they dialled, such as tritonclient).
fn serving_names() -> Vec<String> {
    let mut names = vec![
        SCHEDULER_NAME.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(host) = sysinfo::System::host_name().ok().filter(|h| !h.is_empty()) {
        if !names.contains(&host) {
            names.push(host);
        }
    }
    names
}

/// Writes `ca.pem` (public) and `join-token` (0600: it holds the secret) into the data
/// directory; returns the token's path.
pub fn write_client_files(
    data_dir: &Path,
    tls: &ClusterTls,
    secret: &str,
) -> Result<PathBuf, StartError> {
    let write = |name: &str, contents: &str| -> Result<PathBuf, StartError> {
        let path = data_dir.join(name);
        write_private(&path, contents).map_err(|source| StartError::WriteToken {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    };
    write("ca.pem", tls.ca.cert_pem())?;
    write("join-token", &tls.join_token(secret))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    #[tokio::test]
    async fn the_ca_is_made_once_and_read_back() {
        let store = EmbeddedStore::in_memory();
        let first = ClusterTls::load_or_create(&store).await.expect("made");
        let second = ClusterTls::load_or_create(&store).await.expect("read back");
        assert_eq!(first.ca.pin(), second.ca.pin());
        let token = JoinToken::parse(&first.join_token("s3cret"));
        assert_eq!(token.secret, "s3cret");
        assert_eq!(token.pin, Some(first.ca.pin()));
    }

    #[test]
    fn the_client_files_are_written_and_the_token_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate().expect("CA");
        let identity = ca.issue(&serving_names()).expect("identity");
        let tls = ClusterTls { ca, identity };
        let path = write_client_files(dir.path(), &tls, "s3cret").expect("written");
        let token = std::fs::read_to_string(&path).expect("token");
        assert_eq!(JoinToken::parse(&token).pin, Some(tls.ca.pin()));
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).expect("ca");
        assert_eq!(ca_pem, tls.ca.cert_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
    }
}
