//! The model catalog's sources: the scheduler's repository on disk (same layout and
//! herd.toml as an agent's), each file known by its sha256; and the catalog's record
//! in the state store, so that a restarted scheduler remembers which models were
//! loaded.

use serde::{Deserialize, Serialize};

use crate::model::CatalogModel;

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
