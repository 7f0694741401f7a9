//! The model catalog's sources: the scheduler's repository on disk (same layout and
//! herd.toml as an agent's), each file known by its sha256; and the catalog's record
//! in the state store, so that a restarted scheduler remembers which models were
//! loaded.

use std::path::Path;

use herd_core::digest::sha256_file;
use herd_core::settings::ModelSettings;
use herd_core::Repository;
use serde::{Deserialize, Serialize};

use crate::model::CatalogModel;

/// Reads one model of the repository: its files, settings and digest.
pub fn read_model(repo: &Repository, name: &str) -> Result<CatalogModel, String> {
    let files = repo.find(name).map_err(|e| e.to_string())?;
    let digest = sha256_file(&files.path)
        .map_err(|e| format!("cannot read {}: {e}", files.path.display()))?;
    Ok(CatalogModel::new(files, digest))
}

/// Every model of the repository; models that cannot be read are logged and left out.
pub fn scan(root: &Path, defaults: &ModelSettings) -> Vec<CatalogModel> {
    let repo = Repository::new(root.to_path_buf(), defaults.clone());
    repo.names()
        .into_iter()
        .filter_map(|name| match read_model(&repo, &name) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(model = %name, error = %e, "model left out of the catalog");
                None
            }
        })
        .collect()
}

/// What the store keeps of a catalog entry.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Record {
    pub name: String,
    pub version: u64,
    pub digest: String,
    pub wanted: bool,
    pub measured: u64,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub device: String,
}

impl Record {
    pub fn of(m: &CatalogModel) -> Record {
        Record {
            name: m.name.clone(),
            version: m.version,
            digest: m.digest.clone(),
            wanted: m.wanted,
            measured: m.measured,
            min_replicas: m.policy.min_replicas,
            max_replicas: m.policy.max_replicas,
            device: m.policy.device.to_string(),
        }
    }

    /// Applies what the store remembers to a model read from the repository: whether it
    /// was wanted, and its measured size when the file is the same.
    pub fn restore(&self, m: &mut CatalogModel) {
        m.wanted = self.wanted;
        if self.digest == m.digest {
            m.measured = self.measured;
        }
    }
}

pub const PREFIX: &str = "/herd/catalog/";

pub fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}
