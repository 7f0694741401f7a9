//! The state store: an etcd-shaped key-value store with revisions, leases and watches.
//!
//! The scheduler keeps its whole state (model catalog, placements, node records) behind
//! [`Store`]. The embedded implementation ([`EmbeddedStore`]) needs nothing installed and
//! survives a restart; [`EtcdStore`] keeps the state in an etcd cluster instead, off the
//! scheduler's machine. Every implementation runs the same conformance suite
//! (`conformance.rs`); the etcd one against a real etcd (`etcd_tests.rs`).
//!
//! The state is soft: agents report what they hold and the catalog is read from the
//! repository, so a state file that cannot be read is moved aside and the store starts
//! empty rather than keep the scheduler from starting (see [`EmbeddedStore::open`]).
//!
//! Semantics follow etcd v3:
//! - one global revision counter, incremented by every put and every delete; a lease ending
//!   deletes its keys at one revision or more (etcd does it in one, the embedded store gives
//!   each delete its own), so callers count on neither;
//! - `create_revision`, `mod_revision` and `version` per key; `version` starts again at 1 when
//!   a deleted key is created again;
//! - a key put with a lease is deleted when the lease ends (expiry or revoke); a put without a
//!   lease detaches the key from the lease it had;
//! - keys are plain strings and a prefix is a plain string prefix (`"/a"` matches `"/ab"`).

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub mod embedded;
pub mod etcd;
pub mod etcd_url;

#[cfg(test)]
pub(crate) mod conformance;
#[cfg(test)]
pub(crate) mod etcd_tests;
#[cfg(any(test, feature = "testing"))]
pub mod test_etcd;

pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;
pub use etcd_url::EtcdUrl;

/// Bounds the scheduler's first call to etcd, so that a wrong --store fails the start
/// instead of hanging it, and each call after.
pub const ETCD_TIMEOUT: Duration = Duration::from_secs(5);

/// The store `--store` names: etcd when given, else the embedded store's file in the data
/// directory.
pub async fn open(etcd: Option<&EtcdUrl>, data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    let Some(url) = etcd else {
        return Ok(Arc::new(EmbeddedStore::open(&data_dir.join("state.redb"))?));
    };
    let store = EtcdStore::connect(&url.endpoints, &url.prefix, ETCD_TIMEOUT).await?;
    tracing::info!(store = %url, "state store in etcd");
    Ok(Arc::new(store))
}

/// A point in the store's history: the revision of the write that produced it.
pub type Revision = i64;
/// Identifies a lease granted by [`Store::grant_lease`]. Never 0 (etcd's "no lease").
pub type LeaseId = i64;

/// A key with its value and history, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the put that created the key (since it last did not exist).
    pub create_revision: Revision,
    /// Revision of the last put to the key.
    pub mod_revision: Revision,
    /// Number of puts since the key was created (1 after the first).
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// A change seen by a watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, revision: Revision },
}

impl WatchEvent {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The revision of the write that produced the event.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// The events of one watch, in revision order. The stream ends when the watch can no longer
/// be served without a gap (the watcher lagged, or the store went away); the watcher should
/// then read the current state with [`Store::range`] and watch again.
pub type WatchStream = Pin<Box<dyn futures::Stream<Item = WatchEvent> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    #[error("state store: {0}")]
    Io(String),
}

/// An etcd-shaped key-value store: keys, revisions, leases and watches.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key starting with `prefix`, sorted by key.
    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;

    /// Returns the revision of the write. With a lease, the key is deleted when the lease ends.
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError>;

    /// Puts only when the key's current mod_revision equals `expected` (0 = the key must not
    /// exist), as an etcd transaction would; Ok(None) when the comparison fails. (Leader
    /// election uses this.) The lease is checked only when the comparison succeeds.
    async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>, StoreError>;

    /// Puts only while `fence_key` exists with create_revision `fence` (a revision > 0), in
    /// one transaction; Ok(None) when it does not. A leader passes its leadership key and
    /// the revision that created it: once that key is gone (its lease ended) or belongs to
    /// another (created again), the leader's writes are refused, so a deposed leader that
    /// has not noticed yet cannot overwrite its successor's.
    async fn put_fenced(
        &self,
        key: &str,
        value: Vec<u8>,
        fence_key: &str,
        fence: Revision,
    ) -> Result<Option<Revision>, StoreError>;

    /// Deletes `key` only while `fence_key` exists with create_revision `fence`, as
    /// [`Store::put_fenced`] puts; Ok(None) when the fence does not hold or there was no
    /// such key.
    async fn delete_fenced(
        &self,
        key: &str,
        fence_key: &str,
        fence: Revision,
    ) -> Result<Option<Revision>, StoreError>;

    /// Ok(None) when there was no such key.
    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError>;

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Renews the lease for another ttl.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Ends the lease now, deleting its keys.
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Events for keys under `prefix` that happen after this call, in revision order.
    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError>;

    /// The store's current revision (the revision of the last write; 0 before any).
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// Whether other schedulers may use this store at the same time (etcd), so that they
    /// must elect a leader; the embedded store is one process's own.
    fn shared(&self) -> bool;
}
