//! The embedded state store: the default, needing nothing installed.
//!
//! The current state lives in memory (a `BTreeMap`) and serves every read. Every write is
//! also committed to a redb database file (an fsync) *before* it becomes visible and before
//! the call returns, and [`EmbeddedStore::open`] loads the file back, revision counter
//! included, so a restarted scheduler keeps its catalog.
//!
//! Writes are serialized by one async lock that is held until the write is both on disk and
//! applied in memory, so revisions are handed out in order and watchers see events in
//! revision order. The redb commit runs on the blocking pool together with the in-memory
//! apply, so a caller that gives up on a write (drops its future) cannot leave disk and
//! memory apart: the write either completes in both or in neither.
//!
//! Leases live in memory only and use `tokio::time`, so tests can run under
//! `tokio::time::pause()`. **Keys attached to a lease are volatile: they are never written to
//! the file** (a leased put removes any earlier durable copy of the key). A restarted process
//! has no leases and none of their keys, exactly as if every lease had expired while it was
//! down. The revision counter is persisted on every write, leased or not, so revisions never
//! go backwards across a restart.
//!
//! Expired leases are ended by one sweeper task per store, spawned on the first
//! `grant_lease`, which sleeps until the earliest deadline; it holds only a weak reference
//! and stops when the store is dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Display;
use std::io;
use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};
use tokio::time::Instant;

use super::{KeyValue, LeaseId, Revision, Store, StoreError, WatchEvent, WatchStream};

/// Durable keys: key -> encoded record (see [`encode`]).
const KV_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Store-wide values: currently only the revision counter.
const META_TABLE: TableDefinition<&str, i64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
/// Size of the record header: create_revision, mod_revision, version, as little-endian i64s.
const HEADER_LEN: usize = 24;

/// Events buffered for the slowest watcher. A watcher that falls further behind than this
/// does not slow writers down: its stream ends instead (etcd cancels such a watch with a
/// compaction error), and it should re-read with `range` and watch again.
const WATCH_BUFFER: usize = 4096;
/// Pause before the sweeper retries ending expired leases after a failed write.
const SWEEP_RETRY: Duration = Duration::from_secs(1);

/// The embedded [`Store`]: in-memory state, persisted to a redb file when opened with
/// [`EmbeddedStore::open`].
pub struct EmbeddedStore {
    shared: Arc<Shared>,
}

struct Shared {
    state: RwLock<State>,
    /// Held from computing a write until it is on disk and applied; serializes writers.
    writer: Arc<Mutex<()>>,
    /// `None` for a store that lives in memory only.
    db: Option<Database>,
    /// Every event, sent while `state` is write-locked so that subscribing under a read lock
    /// starts a watch exactly between two revisions.
    events: broadcast::Sender<WatchEvent>,
    /// Wakes the sweeper when a lease is granted (the earliest deadline may have moved) or
    /// the store is dropped.
    lease_changed: Arc<Notify>,
    sweeper_started: AtomicBool,
    closed: AtomicBool,
}

#[derive(Default)]
struct State {
    revision: Revision,
    keys: BTreeMap<String, KeyValue>,
    leases: HashMap<LeaseId, Lease>,
    last_lease: LeaseId,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

impl Lease {
    /// A lease past its deadline is dead even before the sweeper has ended it.
    fn alive(&self, now: Instant) -> bool {
        now < self.deadline
    }
}

/// The writes made under one hold of the write lock, with consecutive revisions.
struct Batch {
    changes: Vec<Change>,
    ended_leases: Vec<LeaseId>,
}

enum Change {
    Put(KeyValue),
    Delete { key: String, revision: Revision },
}

/// What a put compares before it writes, as an etcd transaction's `when`.
#[derive(Clone, Copy)]
enum Condition<'a> {
    Always,
    /// The key's mod_revision is this (0: the key does not exist).
    ModRevision(Revision),
    /// Another key exists with this create_revision.
    Fence {
        key: &'a str,
        create_revision: Revision,
    },
}

impl State {
    fn holds(&self, key: &str, condition: Condition<'_>) -> bool {
        match condition {
            Condition::Always => true,
            Condition::ModRevision(expected) => {
                self.keys.get(key).map_or(0, |kv| kv.mod_revision) == expected
            }
            Condition::Fence {
                key,
                create_revision,
            } => self
                .keys
                .get(key)
                .is_some_and(|kv| kv.create_revision == create_revision),
        }
    }

    fn lease_alive(&self, lease: LeaseId, now: Instant) -> bool {
        self.leases.get(&lease).is_some_and(|l| l.alive(now))
    }

    /// Deletes of every key of `leases`, numbered from the next revision.
    fn delete_lease_keys(&self, leases: &[LeaseId]) -> Vec<Change> {
        let keys = leases
            .iter()
            .filter_map(|id| self.leases.get(id))
            .flat_map(|lease| lease.keys.iter());
        (self.revision + 1..)
            .zip(keys)
            .map(|(revision, key)| Change::Delete {
                key: key.clone(),
                revision,
            })
            .collect()
    }

    fn apply(&mut self, batch: Batch) -> Vec<WatchEvent> {
        let mut events = Vec::with_capacity(batch.changes.len());
        for change in batch.changes {
            match change {
                Change::Put(kv) => {
                    let old_lease = self.keys.get(&kv.key).and_then(|old| old.lease);
                    if old_lease != kv.lease {
                        if let Some(old) = old_lease.and_then(|id| self.leases.get_mut(&id)) {
                            old.keys.remove(&kv.key);
                        }
                        if let Some(new) = kv.lease.and_then(|id| self.leases.get_mut(&id)) {
                            new.keys.insert(kv.key.clone());
                        }
                    }
                    self.revision = kv.mod_revision;
                    self.keys.insert(kv.key.clone(), kv.clone());
                    events.push(WatchEvent::Put(kv));
                }
                Change::Delete { key, revision } => {
                    if let Some(old) = self.keys.remove(&key) {
                        if let Some(lease) = old.lease.and_then(|id| self.leases.get_mut(&id)) {
                            lease.keys.remove(&key);
                        }
                    }
                    self.revision = revision;
                    events.push(WatchEvent::Delete { key, revision });
                }
            }
        }
        for id in batch.ended_leases {
            self.leases.remove(&id);
        }
        events
    }
}

impl EmbeddedStore {
    /// A store that lives in memory only: nothing survives the process.
    pub fn in_memory() -> EmbeddedStore {
        EmbeddedStore::new(State::default(), None)
    }

    /// Opens (or creates) the redb database at `path` and loads its keys and revision. The
    /// parent directory must exist. This blocks on file I/O: call it at startup, or from
    /// `spawn_blocking`.
    ///
    /// The file is kept 0600. A file that is not a readable state store (truncated,
    /// garbage, a record that does not decode; redb panics on some of these) is moved
    /// aside as `<name>.corrupt-<unix time>` and the store starts empty: the state is
    /// soft (agents report again what they hold, the catalog comes from the repository),
    /// and a scheduler that will not start is worse than one that forgot. A file another
    /// process holds open, or one that cannot be read at all (permissions, a missing
    /// directory), is an error instead: moving it aside would be unsafe or would not help.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        let reason = match open_file(path) {
            Ok(store) => return Ok(store),
            Err(OpenError::Corrupt(reason)) => reason,
            Err(OpenError::Failed(error)) => return Err(error),
        };
        let aside = move_aside(path)?;
        tracing::warn!(
            path = %path.display(),
            moved_to = %aside.display(),
            reason = %reason,
            "state file is corrupt: moved it aside and starting with an empty state \
             (agents report their models again)"
        );
        open_file(path).map_err(|e| match e {
            OpenError::Corrupt(reason) => StoreError::Io(format!(
                "the new state file {} is unreadable at once: {reason}",
                path.display()
            )),
            OpenError::Failed(error) => error,
        })
    }

    fn new(state: State, db: Option<Database>) -> EmbeddedStore {
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        EmbeddedStore {
            shared: Arc::new(Shared {
                state: RwLock::new(state),
                writer: Arc::new(Mutex::new(())),
                db,
                events,
                lease_changed: Arc::new(Notify::new()),
                sweeper_started: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            }),
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.lease_changed.notify_one();
    }
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        // Nothing panics while holding the lock; recover the state if something ever did.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    async fn lock_writer(&self) -> OwnedMutexGuard<()> {
        self.writer.clone().lock_owned().await
    }

    /// Makes `batch` durable, then visible, then releases the write lock.
    async fn commit(
        self: &Arc<Self>,
        writer: OwnedMutexGuard<()>,
        batch: Batch,
    ) -> Result<(), StoreError> {
        if self.db.is_none() || batch.changes.is_empty() {
            self.apply(batch);
            drop(writer);
            return Ok(());
        }
        let shared = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _writer = writer;
            if let Some(db) = &shared.db {
                persist(db, &batch)?;
            }
            shared.apply(batch);
            Ok(())
        })
        .await
        .map_err(io("state store write task failed"))?
    }

    fn apply(&self, batch: Batch) {
        let mut state = self.write();
        for event in state.apply(batch) {
            // An error only means that nobody is watching.
            let _ = self.events.send(event);
        }
    }

    async fn put(
        self: &Arc<Self>,
        key: &str,
        value: Vec<u8>,
        condition: Condition<'_>,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>, StoreError> {
        let writer = self.lock_writer().await;
        let kv = {
            let state = self.read();
            let current = state.keys.get(key);
            if !state.holds(key, condition) {
                return Ok(None);
            }
            if let Some(id) = lease {
                if !state.lease_alive(id, Instant::now()) {
                    return Err(StoreError::LeaseNotFound(id));
                }
            }
            let revision = state.revision + 1;
            KeyValue {
                key: key.to_owned(),
                value,
                create_revision: current.map_or(revision, |kv| kv.create_revision),
                mod_revision: revision,
                version: current.map_or(1, |kv| kv.version + 1),
                lease,
            }
        };
        let revision = kv.mod_revision;
        let batch = Batch {
            changes: vec![Change::Put(kv)],
            ended_leases: Vec::new(),
        };
        self.commit(writer, batch).await?;
        Ok(Some(revision))
    }

    async fn delete(
        self: &Arc<Self>,
        key: &str,
        condition: Condition<'_>,
    ) -> Result<Option<Revision>, StoreError> {
        let writer = self.lock_writer().await;
        let revision = {
            let state = self.read();
            if !state.keys.contains_key(key) || !state.holds(key, condition) {
                return Ok(None);
            }
            state.revision + 1
        };
        let batch = Batch {
            changes: vec![Change::Delete {
                key: key.to_owned(),
                revision,
            }],
            ended_leases: Vec::new(),
        };
        self.commit(writer, batch).await?;
        Ok(Some(revision))
    }

    fn grant_lease(self: &Arc<Self>, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.start_sweeper()?;
        let id = {
            let mut state = self.write();
            state.last_lease += 1;
            let id = state.last_lease;
            let lease = Lease {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            };
            state.leases.insert(id, lease);
            id
        };
        self.lease_changed.notify_one();
        Ok(id)
    }

    fn keep_alive(&self, id: LeaseId) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut state = self.write();
        match state.leases.get_mut(&id) {
            // The deadline only moves later, so the sweeper need not be woken.
            Some(lease) if lease.alive(now) => {
                lease.deadline = now + lease.ttl;
                Ok(())
            }
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    async fn revoke(self: &Arc<Self>, id: LeaseId) -> Result<(), StoreError> {
        let writer = self.lock_writer().await;
        let changes = {
            let state = self.read();
            if !state.lease_alive(id, Instant::now()) {
                return Err(StoreError::LeaseNotFound(id));
            }
            state.delete_lease_keys(&[id])
        };
        let batch = Batch {
            changes,
            ended_leases: vec![id],
        };
        self.commit(writer, batch).await
    }

    /// Ends every lease past its deadline, deleting its keys.
    async fn expire_leases(self: &Arc<Self>) -> Result<(), StoreError> {
        let writer = self.lock_writer().await;
        let batch = {
            let state = self.read();
            let now = Instant::now();
            let mut expired: Vec<LeaseId> = state
                .leases
                .iter()
                .filter(|(_, lease)| !lease.alive(now))
                .map(|(id, _)| *id)
                .collect();
            if expired.is_empty() {
                return Ok(());
            }
            expired.sort_unstable();
            Batch {
                changes: state.delete_lease_keys(&expired),
                ended_leases: expired,
            }
        };
        for id in &batch.ended_leases {
            tracing::debug!(lease = id, "lease expired");
        }
        self.commit(writer, batch).await
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.read().leases.values().map(|l| l.deadline).min()
    }

    fn start_sweeper(self: &Arc<Self>) -> Result<(), StoreError> {
        if self.sweeper_started.load(Ordering::Acquire) {
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| StoreError::Unavailable(format!("leases need a tokio runtime: {e}")))?;
        if !self.sweeper_started.swap(true, Ordering::AcqRel) {
            runtime.spawn(sweep(Arc::downgrade(self), Arc::clone(&self.lease_changed)));
        }
        Ok(())
    }

    fn watch(&self, prefix: &str) -> WatchStream {
        let events = {
            // Subscribing under the read lock starts the watch between two writes.
            let _state = self.read();
            self.events.subscribe()
        };
        let stream = futures::stream::unfold(
            (events, prefix.to_owned()),
            |(mut events, prefix)| async move {
                loop {
                    match events.recv().await {
                        Ok(event) if event.key().starts_with(&prefix) => {
                            return Some((event, (events, prefix)));
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(missed)) => {
                            tracing::warn!(
                                prefix = %prefix,
                                missed,
                                "watcher fell behind, ending its watch"
                            );
                            return None;
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        );
        Box::pin(stream)
    }
}

/// The lease sweeper: sleeps until the earliest lease deadline (or until a lease is granted)
/// and ends the expired leases. Holds the store only weakly; stops once it is dropped.
async fn sweep(shared: Weak<Shared>, lease_changed: Arc<Notify>) {
    loop {
        let next = match shared.upgrade() {
            Some(shared) if !shared.closed.load(Ordering::Acquire) => shared.next_deadline(),
            _ => return,
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = lease_changed.notified() => {}
                }
            }
            None => lease_changed.notified().await,
        }
        let Some(store) = shared.upgrade() else {
            return;
        };
        if store.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(error) = store.expire_leases().await {
            tracing::warn!(%error, "cannot end expired leases, will retry");
            drop(store);
            tokio::time::sleep(SWEEP_RETRY).await;
        }
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.shared.read().keys.get(key).cloned())
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let state = self.shared.read();
        Ok(state
            .keys
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect())
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        let revision = self
            .shared
            .put(key, value, Condition::Always, lease)
            .await?;
        revision.ok_or_else(|| StoreError::Io("unconditional put was not applied".to_owned()))
    }

    async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>, StoreError> {
        let condition = Condition::ModRevision(expected);
        self.shared.put(key, value, condition, lease).await
    }

    async fn put_fenced(
        &self,
        key: &str,
        value: Vec<u8>,
        fence_key: &str,
        fence: Revision,
    ) -> Result<Option<Revision>, StoreError> {
        let fence = Condition::Fence {
            key: fence_key,
            create_revision: fence,
        };
        self.shared.put(key, value, fence, None).await
    }

    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        self.shared.delete(key, Condition::Always).await
    }

    async fn delete_fenced(
        &self,
        key: &str,
        fence_key: &str,
        fence: Revision,
    ) -> Result<Option<Revision>, StoreError> {
        let fence = Condition::Fence {
            key: fence_key,
            create_revision: fence,
        };
        self.shared.delete(key, fence).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.shared.grant_lease(ttl)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.shared.keep_alive(lease)
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.shared.revoke(lease).await
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        Ok(self.shared.watch(prefix))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.read().revision)
    }

    fn shared(&self) -> bool {
        false
    }
}

/// Maps an error to [`StoreError::Io`], saying what failed.
fn io<E: Display>(what: impl Display) -> impl FnOnce(E) -> StoreError {
    move |error| StoreError::Io(format!("{what}: {error}"))
}

/// Why a state file did not open.
enum OpenError {
    /// The file is not a readable state store; starting afresh is the way out.
    Corrupt(String),
    /// Anything else: someone else holds the file, or it cannot be read at all.
    Failed(StoreError),
}

impl OpenError {
    /// Sorts a redb error: corruption, or a reason to stop.
    fn from_redb(what: &str, error: impl Into<redb::Error>) -> OpenError {
        let error: redb::Error = error.into();
        let corrupt = match &error {
            // Another scheduler has it open: never take a live store away from it.
            redb::Error::DatabaseAlreadyOpen => false,
            // Bad magic comes as InvalidData, a short file as UnexpectedEof; other I/O
            // errors (permissions, a missing directory, a full disk) say nothing of the
            // file's contents.
            redb::Error::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ),
            _ => true,
        };
        if corrupt {
            OpenError::Corrupt(format!("{what}: {error}"))
        } else {
            OpenError::Failed(StoreError::Io(format!("{what}: {error}")))
        }
    }
}

/// Opens the file and loads it, turning a panic inside redb into [`OpenError::Corrupt`].
fn open_file(path: &Path) -> Result<EmbeddedStore, OpenError> {
    let what = format!("cannot open state file {}", path.display());
    create_private(path).map_err(|e| OpenError::Failed(StoreError::Io(format!("{what}: {e}"))))?;
    // redb asserts its invariants on what it reads from the file, so a truncated file can
    // panic rather than fail; the panic is about the file, not about this process.
    let opened = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let db = Database::create(path).map_err(|e| OpenError::from_redb(&what, e))?;
        let state = load(&db)?;
        Ok((db, state))
    }));
    let (db, state) = match opened {
        Ok(opened) => opened?,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            return Err(OpenError::Corrupt(format!(
                "{what}: redb panicked reading it: {message}"
            )));
        }
    };
    tracing::debug!(
        path = %path.display(),
        keys = state.keys.len(),
        revision = state.revision,
        "state store loaded"
    );
    Ok(EmbeddedStore::new(state, Some(db)))
}

/// Creates the file 0600 if it is missing (redb fills an empty file), and makes an
/// existing one 0600: the state is the scheduler's alone.
fn create_private(path: &Path) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    drop(options.open(path)?);
    #[cfg(unix)]
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(())
}

/// Renames a corrupt state file to `<name>.corrupt-<unix time>` (with `-<n>` added if
/// that name is taken), keeping it for a person to look at.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{now}"));
    let mut aside = PathBuf::from(&name);
    for n in 1.. {
        if !aside.exists() {
            break;
        }
        let mut taken = name.clone();
        taken.push(format!("-{n}"));
        aside = PathBuf::from(taken);
    }
    std::fs::rename(path, &aside).map_err(|e| {
        StoreError::Io(format!(
            "the state file {} is corrupt and cannot be moved aside: {e}",
            path.display()
        ))
    })?;
    Ok(aside)
}

/// Writes `batch` to the file in one transaction (committed with an fsync).
fn persist(db: &Database, batch: &Batch) -> Result<(), StoreError> {
    let Some(last) = batch.changes.last() else {
        return Ok(());
    };
    let revision = match last {
        Change::Put(kv) => kv.mod_revision,
        Change::Delete { revision, .. } => *revision,
    };
    let txn = db
        .begin_write()
        .map_err(io("cannot begin a state file transaction"))?;
    {
        let mut keys = txn
            .open_table(KV_TABLE)
            .map_err(io("cannot open the state file's key table"))?;
        for change in &batch.changes {
            match change {
                Change::Put(kv) if kv.lease.is_none() => {
                    keys.insert(kv.key.as_str(), encode(kv).as_slice())
                        .map_err(io(format_args!("cannot write key {:?}", kv.key)))?;
                }
                // Leased keys are volatile: drop any durable copy of the key instead.
                Change::Put(KeyValue { key, .. }) | Change::Delete { key, .. } => {
                    keys.remove(key.as_str())
                        .map_err(io(format_args!("cannot delete key {key:?}")))?;
                }
            }
        }
        let mut meta = txn
            .open_table(META_TABLE)
            .map_err(io("cannot open the state file's meta table"))?;
        meta.insert(REVISION_KEY, revision)
            .map_err(io("cannot write the revision"))?;
    }
    txn.commit().map_err(io("cannot commit to the state file"))
}

/// Reads every durable key and the revision counter; creates the tables in a new file.
fn load(db: &Database) -> Result<State, OpenError> {
    let mut state = State::default();
    let txn = db
        .begin_write()
        .map_err(|e| OpenError::from_redb("cannot begin a state file transaction", e))?;
    {
        let keys = txn
            .open_table(KV_TABLE)
            .map_err(|e| OpenError::from_redb("cannot open the state file's key table", e))?;
        for entry in keys
            .iter()
            .map_err(|e| OpenError::from_redb("cannot read the state file", e))?
        {
            let (key, record) =
                entry.map_err(|e| OpenError::from_redb("cannot read the state file", e))?;
            let kv = decode(key.value(), record.value())
                .map_err(|e| OpenError::Corrupt(e.to_string()))?;
            state.revision = state.revision.max(kv.mod_revision);
            state.keys.insert(kv.key.clone(), kv);
        }
        let meta = txn
            .open_table(META_TABLE)
            .map_err(|e| OpenError::from_redb("cannot open the state file's meta table", e))?;
        let revision = meta
            .get(REVISION_KEY)
            .map_err(|e| OpenError::from_redb("cannot read the revision", e))?;
        if let Some(revision) = revision {
            state.revision = state.revision.max(revision.value());
        }
    }
    txn.commit()
        .map_err(|e| OpenError::from_redb("cannot commit to the state file", e))?;
    Ok(state)
}

/// A durable record: create_revision, mod_revision and version (little-endian i64s), then
/// the value.
fn encode(kv: &KeyValue) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER_LEN + kv.value.len());
    record.extend_from_slice(&kv.create_revision.to_le_bytes());
    record.extend_from_slice(&kv.mod_revision.to_le_bytes());
    record.extend_from_slice(&kv.version.to_le_bytes());
    record.extend_from_slice(&kv.value);
    record
}

fn decode(key: &str, record: &[u8]) -> Result<KeyValue, StoreError> {
    let corrupt = || StoreError::Io(format!("corrupt record for key {key:?} in the state file"));
    let (header, value) = record.split_at_checked(HEADER_LEN).ok_or_else(corrupt)?;
    let field = |i: usize| -> Result<i64, StoreError> {
        let bytes = header.get(i * 8..i * 8 + 8).ok_or_else(corrupt)?;
        Ok(i64::from_le_bytes(bytes.try_into().map_err(|_| corrupt())?))
    };
    Ok(KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        create_revision: field(0)?,
        mod_revision: field(1)?,
        version: field(2)?,
        lease: None,
    })
}

#[cfg(test)]
mod tests {
    use std::ops::Deref;
    use std::path::{Path, PathBuf};

    use futures::StreamExt;
    use tempfile::TempDir;

    use super::*;
    use crate::store::conformance::{next_event, store_conformance_suite};

    /// An on-disk store with the temporary directory that holds its file.
    struct OnDisk {
        store: EmbeddedStore,
        _dir: TempDir,
    }

    impl Deref for OnDisk {
        type Target = EmbeddedStore;

        fn deref(&self) -> &EmbeddedStore {
            &self.store
        }
    }

    fn on_disk() -> OnDisk {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(&dir.path().join("state.redb")).expect("open store");
        OnDisk { store, _dir: dir }
    }

    store_conformance_suite!(embedded_in_memory, async { EmbeddedStore::in_memory() });
    store_conformance_suite!(embedded_on_disk, async { on_disk() });

    #[tokio::test(start_paused = true)]
    async fn revisions_count_every_write_from_zero() {
        let store = EmbeddedStore::in_memory();
        assert_eq!(store.revision().await.expect("revision"), 0);
        assert_eq!(store.put("/a", Vec::new(), None).await.expect("put"), 1);
        assert_eq!(store.put("/a", Vec::new(), None).await.expect("put"), 2);
        // Writes that do not happen do not count.
        assert_eq!(
            store
                .put_if("/a", Vec::new(), 1, None)
                .await
                .expect("put_if"),
            None
        );
        assert_eq!(store.delete("/missing").await.expect("delete"), None);
        let lease = store
            .grant_lease(Duration::from_secs(5))
            .await
            .expect("grant");
        assert!(store.put("/x", Vec::new(), Some(lease + 1)).await.is_err());
        assert_eq!(store.revision().await.expect("revision"), 2);

        // A lease ending with three keys makes three deletes.
        for key in ["/l/1", "/l/2", "/l/3"] {
            store.put(key, Vec::new(), Some(lease)).await.expect("put");
        }
        assert_eq!(store.revision().await.expect("revision"), 5);
        let mut events = store.watch("/l/").await.expect("watch");
        tokio::time::sleep(Duration::from_secs(6)).await;
        for (key, revision) in [("/l/1", 6), ("/l/2", 7), ("/l/3", 8)] {
            assert_eq!(
                next_event(&mut events).await,
                WatchEvent::Delete {
                    key: key.to_owned(),
                    revision
                }
            );
        }
        assert_eq!(store.revision().await.expect("revision"), 8);
        assert_eq!(store.delete("/a").await.expect("delete"), Some(9));
    }

    #[tokio::test(start_paused = true)]
    async fn reopen_keeps_durable_keys_and_revision_but_not_leased_keys() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.redb");

        let store = EmbeddedStore::open(&path).expect("open");
        store
            .put("/models/a", b"a1".to_vec(), None)
            .await
            .expect("put");
        store
            .put("/models/a", b"a2".to_vec(), None)
            .await
            .expect("put");
        store
            .put("/models/b", b"b".to_vec(), None)
            .await
            .expect("put");
        store.put("/gone", b"x".to_vec(), None).await.expect("put");
        store.delete("/gone").await.expect("delete");
        let lease = store
            .grant_lease(Duration::from_secs(60))
            .await
            .expect("grant");
        store
            .put("/nodes/n1", b"up".to_vec(), Some(lease))
            .await
            .expect("leased put");
        // A durable key that becomes leased must not come back after a restart either.
        store
            .put("/models/b", b"b-leased".to_vec(), Some(lease))
            .await
            .expect("leased put");
        let a = store.get("/models/a").await.expect("get").expect("a");
        let revision = store.revision().await.expect("revision");
        drop(store);

        let store = EmbeddedStore::open(&path).expect("reopen");
        assert_eq!(store.revision().await.expect("revision"), revision);
        assert_eq!(store.get("/models/a").await.expect("get"), Some(a));
        assert_eq!(store.get("/models/b").await.expect("get"), None);
        assert_eq!(store.get("/nodes/n1").await.expect("get"), None);
        assert_eq!(store.get("/gone").await.expect("get"), None);
        assert!(matches!(
            store.keep_alive(lease).await,
            Err(StoreError::LeaseNotFound(id)) if id == lease
        ));
        // Revisions continue from where they were.
        let next = store
            .put("/models/c", b"c".to_vec(), None)
            .await
            .expect("put");
        assert_eq!(next, revision + 1);
        drop(store);

        let store = EmbeddedStore::open(&path).expect("reopen again");
        let keys: Vec<String> = store
            .range("/")
            .await
            .expect("range")
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, ["/models/a", "/models/c"]);
        assert_eq!(store.revision().await.expect("revision"), next);
    }

    #[tokio::test]
    async fn open_fails_when_the_parent_directory_is_missing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let result = EmbeddedStore::open(&dir.path().join("missing").join("state.redb"));
        assert!(matches!(result, Err(StoreError::Io(_))));
    }

    /// The files in `dir` whose names start with `prefix`.
    fn named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .collect();
        found.sort();
        found
    }

    /// A state file with a few keys, as a scheduler leaves it; returns its bytes.
    async fn written_state(path: &Path) -> Vec<u8> {
        let store = EmbeddedStore::open(path).expect("open");
        for i in 0..20 {
            store
                .put(&format!("/models/m{i}"), vec![7; 300], None)
                .await
                .expect("put");
        }
        drop(store);
        std::fs::read(path).expect("read state")
    }

    /// Opening `path` starts afresh, with the old file kept beside it (as it was, when
    /// `old` is given), and the new store works and lasts.
    async fn assert_starts_afresh(path: &Path, old: Option<&[u8]>) {
        let dir = path.parent().expect("parent");
        let store =
            EmbeddedStore::open(path).expect("a corrupt state file does not stop the store");
        assert_eq!(store.revision().await.expect("revision"), 0);
        assert!(store.range("/").await.expect("range").is_empty());
        let aside = named(dir, "state.redb.corrupt-");
        assert_eq!(aside.len(), 1, "{aside:?}");
        if let Some(old) = old {
            // Not assert_eq: a diff of two state files is no help to anyone.
            assert!(
                std::fs::read(&aside[0]).expect("read aside") == old,
                "kept as it was"
            );
        }
        store
            .put("/models/a", b"a".to_vec(), None)
            .await
            .expect("put");
        drop(store);
        let store = EmbeddedStore::open(path).expect("reopen");
        assert_eq!(
            store
                .get("/models/a")
                .await
                .expect("get")
                .map(|kv| kv.value),
            Some(b"a".to_vec())
        );
        assert_eq!(
            named(dir, "state.redb.corrupt-").len(),
            1,
            "nothing more moved"
        );
    }

    #[tokio::test]
    async fn a_truncated_state_file_is_moved_aside_and_the_store_starts_empty() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.redb");
        let whole = written_state(&path).await;
        // Cut at several places: redb fails on some and panics on others.
        for len in [whole.len() / 2, 4096, 1000, 100, 9] {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("state.redb");
            std::fs::write(&path, &whole[..len]).expect("truncate");
            assert_starts_afresh(&path, Some(&whole[..len])).await;
        }
    }

    #[tokio::test]
    async fn a_state_file_with_a_garbage_header_is_moved_aside_and_the_store_starts_empty() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.redb");
        let mut bytes = written_state(&path).await;
        bytes[..16].copy_from_slice(b"not a redb file!");
        std::fs::write(&path, &bytes).expect("write");
        assert_starts_afresh(&path, Some(&bytes)).await;

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.redb");
        let text = b"this is not a database at all\n".repeat(1000);
        std::fs::write(&path, &text).expect("write");
        assert_starts_afresh(&path, Some(&text)).await;
    }

    #[tokio::test]
    async fn a_record_that_does_not_decode_is_corruption_too() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.redb");
        {
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("txn");
            txn.open_table(KV_TABLE)
                .expect("table")
                .insert("/models/a", b"short".as_slice())
                .expect("insert");
            txn.commit().expect("commit");
        }
        assert_starts_afresh(&path, None).await;
    }

    #[tokio::test]
    async fn a_state_file_another_store_holds_open_is_left_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.redb");
        let first = EmbeddedStore::open(&path).expect("open");
        first
            .put("/models/a", b"a".to_vec(), None)
            .await
            .expect("put");
        let second = EmbeddedStore::open(&path);
        assert!(matches!(second, Err(StoreError::Io(_))));
        assert!(named(dir.path(), "state.redb.corrupt-").is_empty());
        assert!(first.get("/models/a").await.expect("get").is_some());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_state_file_is_private_to_the_scheduler() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.redb");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        drop(EmbeddedStore::open(&path).expect("open"));
        assert_eq!(mode(&path), 0o600);
        // A file an older scheduler left readable is closed on the next start.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        drop(EmbeddedStore::open(&path).expect("reopen"));
        assert_eq!(mode(&path), 0o600);
    }

    #[tokio::test]
    async fn a_lagging_watcher_ends_its_stream_without_blocking_writers() {
        let store = EmbeddedStore::in_memory();
        let mut lagging = store.watch("/").await.expect("watch");
        for i in 0..WATCH_BUFFER + 10 {
            store
                .put(&format!("/k{i}"), Vec::new(), None)
                .await
                .expect("put");
        }
        let end = tokio::time::timeout(Duration::from_secs(5), lagging.next()).await;
        assert_eq!(end.expect("stream ends"), None);
        // A new watcher works as usual.
        let mut fresh = store.watch("/").await.expect("watch");
        let revision = store.put("/k", Vec::new(), None).await.expect("put");
        assert_eq!(next_event(&mut fresh).await.revision(), revision);
    }

    #[tokio::test]
    async fn watch_ends_when_the_store_is_dropped() {
        let store = EmbeddedStore::in_memory();
        let mut events = store.watch("/").await.expect("watch");
        let _lease = store
            .grant_lease(Duration::from_secs(5))
            .await
            .expect("grant");
        drop(store);
        let end = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
        assert_eq!(end.expect("stream ends"), None);
    }
}
