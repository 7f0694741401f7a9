//! Model files by content: the sha256 of every model file this node holds (its
//! repository and its cache of files fetched from the scheduler), and fetching a file
//! the scheduler assigns when the node has no good copy.
//!
//! A cached file is named by its digest, but a name proves nothing about the bytes
//! (a disk error, a person editing it): before a cached file is handed to a load it is
//! checked against its digest. Hashing a large model on every load would be slow, so a
//! marker beside the file (`<digest>.onnx.verified`) records the size and mtime it had
//! when it was last found good; the file is hashed again only when either moved.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{BoxStream, StreamExt};
use herd_proto::herd::ModelChunk;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use herd_core::digest::{sha256_file, valid_digest, FileStamp};
use herd_core::repository::Repository;

use crate::error::AgentError;

/// Why a fetched model file was not kept. The words may reach clients, so they name no
/// directory of this node; [`FileError::path`] is for the log.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("this agent has no data directory to keep fetched models in")]
    NoDataDir,
    #[error("cannot create the agent's directory for fetched models: {error}")]
    CreateDir { dir: PathBuf, error: io::Error },
    #[error("cannot write in the agent's directory for fetched models: {error}")]
    TempFile { dir: PathBuf, error: io::Error },
    #[error("cannot write the model file: {0}")]
    Write(io::Error),
    #[error("the fetched file's sha256 is {got}, not {expected}; it was discarded")]
    DigestMismatch { got: String, expected: String },
    #[error("cannot keep the fetched model file {}: {error}", file_name(.path))]
    Persist { path: PathBuf, error: io::Error },
    #[error("chunk at offset {offset} where {expected} was expected")]
    OutOfOrder { offset: u64, expected: u64 },
    #[error("fetched {got} bytes of a {expected}-byte model file")]
    Incomplete { got: u64, expected: u64 },
}

impl FileError {
    /// The directory or file the error is about, for the log.
    pub fn path(&self) -> Option<&Path> {
        match self {
            FileError::CreateDir { dir, .. } | FileError::TempFile { dir, .. } => Some(dir),
            FileError::Persist { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// A file's name without its directory.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The chunks of one file in order, as the scheduler's `FetchModel` sends them.
pub type Chunks = BoxStream<'static, Result<ModelChunk, AgentError>>;

/// A model file on this node: where it is, and whether it had to be fetched for this load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Local {
    pub path: PathBuf,
    pub fetched: bool,
}

/// The one lookup (and fetch, if needed) of a digest, awaited by every load that needs it.
type Obtaining = Shared<BoxFuture<'static, Result<Local, AgentError>>>;

pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where fetched files go: `<dir>/<sha256>.onnx`. None: the agent keeps no cache.
    cache_dir: Option<PathBuf>,
    /// Digests of repository files, by path, valid while size and mtime are unchanged.
    known: Mutex<HashMap<PathBuf, (FileStamp, String)>>,
    /// Digests being looked up or fetched now.
    in_flight: Mutex<HashMap<String, Obtaining>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FileStore {
    pub fn new(cache_dir: Option<PathBuf>) -> FileStore {
        FileStore {
            inner: Arc::new(Inner {
                cache_dir,
                known: Mutex::new(HashMap::new()),
                in_flight: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// sha256 of a file, remembered while its size and mtime stay the same.
    pub fn digest_of(&self, path: &Path) -> Option<String> {
        self.inner.digest_of(path)
    }

    /// The files fetched into the cache, digest → path, by name (unchecked: a load
    /// checks the bytes).
    pub fn cached(&self) -> HashMap<String, PathBuf> {
        let mut files = HashMap::new();
        if let Some(dir) = &self.inner.cache_dir {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.filter_map(|e| e.ok()) {
                    let name = e.file_name().to_string_lossy().to_string();
                    if let Some(d) = name.strip_suffix(".onnx").filter(|d| valid_digest(d)) {
                        files.insert(d.to_string(), e.path());
                    }
                }
            }
        }
        files
    }

    /// Where a fetched file with this digest lives (or will).
    pub fn cache_path(&self, digest: &str) -> Option<PathBuf> {
        self.inner.cache_path(digest)
    }

    /// Writes a fetched file into the cache: chunks go to a temporary file, which is
    /// kept only if its sha256 is `digest`.
    pub fn writer(&self, digest: &str) -> Result<CacheWriter, FileError> {
        self.inner.writer(digest)
    }

    /// A good local copy of the file with `digest`: the repository's, else the cache's
    /// once checked, else fetched from the chunks `fetch` opens (a cached copy that fails
    /// its check is deleted and fetched again).
    ///
    /// Loads that need one digest at the same time share one lookup and one fetch, so a
    /// large file is not fetched twice at once. The work runs as its own task: a load
    /// that gives up does not cancel a fetch others wait on, and a fetch once begun
    /// leaves its file for the next load.
    pub fn obtain<F, Fut>(
        &self,
        digest: &str,
        expected_bytes: u64,
        repo: Repository,
        fetch: F,
    ) -> impl Future<Output = Result<Local, AgentError>> + Send + 'static
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Chunks, AgentError>> + Send + 'static,
    {
        let mut in_flight = lock(&self.inner.in_flight);
        if let Some(under_way) = in_flight.get(digest) {
            debug!(digest, "model file already being obtained; waiting for it");
            return under_way.clone();
        }
        let inner = self.inner.clone();
        let wanted = digest.to_string();
        // Spawned while the map is locked: the task's own removal of its entry (which
        // needs the lock) cannot come before the entry is in.
        let task = tokio::spawn(async move {
            let _done = Done {
                inner: inner.clone(),
                digest: wanted.clone(),
            };
            inner
                .find_or_fetch(wanted, expected_bytes, repo, fetch)
                .await
        });
        let shared = async move {
            task.await
                .unwrap_or_else(|e| Err(AgentError::task("obtaining a model file", e)))
        }
        .boxed()
        .shared();
        in_flight.insert(digest.to_string(), shared.clone());
        shared
    }
}

/// Ends a digest's turn in the in-flight map however its task ends (a panic included),
/// so that the next load looks again.
struct Done {
    inner: Arc<Inner>,
    digest: String,
}

impl Drop for Done {
    fn drop(&mut self) {
        lock(&self.inner.in_flight).remove(&self.digest);
    }
}

impl Inner {
    fn digest_of(&self, path: &Path) -> Option<String> {
        let stamp = FileStamp::read(path)?;
        let mut known = lock(&self.known);
        if let Some((was, digest)) = known.get(path) {
            if *was == stamp {
                return Some(digest.clone());
            }
        }
        let digest = sha256_file(path).ok()?;
        known.insert(path.to_path_buf(), (stamp, digest.clone()));
        Some(digest)
    }

    fn cache_path(&self, digest: &str) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("{digest}.onnx")))
    }

    fn writer(&self, digest: &str) -> Result<CacheWriter, FileError> {
        let Some(dir) = &self.cache_dir else {
            return Err(FileError::NoDataDir);
        };
        create_private_dir(dir).map_err(|error| FileError::CreateDir {
            dir: dir.clone(),
            error,
        })?;
        // Created 0600: the models are this node's alone.
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|error| FileError::TempFile {
            dir: dir.clone(),
            error,
        })?;
        Ok(CacheWriter {
            digest: digest.to_string(),
            target: dir.join(format!("{digest}.onnx")),
            tmp,
            hasher: Sha256::new(),
            bytes: 0,
        })
    }

    /// The repository's file with `digest`, else the cached one if it passes its check.
    /// Blocks on file I/O (hashing).
    fn find_local(&self, digest: &str, repo: &Repository) -> Option<PathBuf> {
        // The repository's files are this node's own: what counts is what they hold now.
        for name in repo.names() {
            if let Ok(f) = repo.find(&name) {
                if self.digest_of(&f.path).as_deref() == Some(digest) {
                    return Some(f.path);
                }
            }
        }
        let path = self.cache_path(digest)?;
        self.holds(digest, &path).then_some(path)
    }

    /// Whether the cached file at `path` holds `digest`: trusted without reading while
    /// its size and mtime are what its marker recorded, hashed otherwise. A file that
    /// fails is deleted, so that it is fetched again.
    fn holds(&self, digest: &str, path: &Path) -> bool {
        let Ok(meta) = std::fs::metadata(path) else {
            return false;
        };
        // Taken before hashing: a file that changes while it is read gets a marker that
        // no longer fits it, and is hashed again next time.
        let stamp = FileStamp::of(&meta);
        let marker = marker_path(path);
        let recorded = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|text| FileStamp::decode(&text));
        if stamp.is_some() && recorded == stamp {
            return true;
        }
        match sha256_file(path) {
            Ok(got) if got == digest => {
                if let Some(stamp) = stamp {
                    record_good(&marker, stamp);
                }
                debug!(digest, path = %path.display(), "cached model file checked");
                true
            }
            Ok(got) => {
                warn!(
                    digest,
                    got = %got,
                    path = %path.display(),
                    "cached model file no longer matches its digest; deleting it and fetching it again"
                );
                discard(path);
                false
            }
            Err(error) => {
                warn!(
                    digest,
                    path = %path.display(),
                    %error,
                    "cannot read cached model file; deleting it and fetching it again"
                );
                discard(path);
                false
            }
        }
    }

    async fn find_or_fetch<F, Fut>(
        self: Arc<Self>,
        digest: String,
        expected_bytes: u64,
        repo: Repository,
        fetch: F,
    ) -> Result<Local, AgentError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Chunks, AgentError>>,
    {
        let inner = self.clone();
        let wanted = digest.clone();
        let found = tokio::task::spawn_blocking(move || inner.find_local(&wanted, &repo))
            .await
            .map_err(|e| AgentError::task("looking for the model file", e))?;
        if let Some(path) = found {
            return Ok(Local {
                path,
                fetched: false,
            });
        }
        let mut chunks = fetch().await?;
        let mut writer = self.writer(&digest)?;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if chunk.offset != writer.bytes {
                return Err(FileError::OutOfOrder {
                    offset: chunk.offset,
                    expected: writer.bytes,
                }
                .into());
            }
            writer.write(&chunk.data)?;
        }
        if expected_bytes > 0 && writer.bytes != expected_bytes {
            return Err(FileError::Incomplete {
                got: writer.bytes,
                expected: expected_bytes,
            }
            .into());
        }
        let bytes = writer.bytes;
        let path = tokio::task::spawn_blocking(move || writer.finish())
            .await
            .map_err(|e| AgentError::task("saving the model file", e))??;
        info!(digest, bytes, path = %path.display(), "model file fetched");
        Ok(Local {
            path,
            fetched: true,
        })
    }
}

/// Creates `dir` (and missing parents) 0700, and makes an existing one 0700: it is the
/// agent's own (`<data dir>/models`), and what it holds is nobody else's to read.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700).create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    builder.create(dir)
}

fn marker_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".verified");
    PathBuf::from(name)
}

/// Records that the file was found good with this size and mtime. Failing to is no
/// harm: the file is hashed again next time.
fn record_good(marker: &Path, stamp: FileStamp) {
    if let Err(error) = std::fs::write(marker, stamp.encode()) {
        warn!(
            marker = %marker.display(),
            %error,
            "cannot record that the model file was checked; it will be hashed again on its next load"
        );
    }
}

/// Deletes a cached file that failed its check, and its marker.
fn discard(path: &Path) {
    let _ = std::fs::remove_file(marker_path(path));
    if let Err(error) = std::fs::remove_file(path) {
        // The fetched copy replaces it all the same (a rename over it).
        warn!(path = %path.display(), %error, "cannot delete the bad model file");
    }
}

pub struct CacheWriter {
    digest: String,
    target: PathBuf,
    tmp: tempfile::NamedTempFile,
    hasher: Sha256,
    pub bytes: u64,
}

impl CacheWriter {
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), FileError> {
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        self.tmp.write_all(chunk).map_err(FileError::Write)
    }

    /// Checks the digest and moves the file into place, marked good as it now is.
    pub fn finish(self) -> Result<PathBuf, FileError> {
        let got = hex::encode(self.hasher.finalize());
        if got != self.digest {
            return Err(FileError::DigestMismatch {
                got,
                expected: self.digest,
            });
        }
        let marker = marker_path(&self.target);
        // A marker left from an earlier copy must not vouch for this one even briefly.
        let _ = std::fs::remove_file(&marker);
        self.tmp
            .persist(&self.target)
            .map_err(|e| FileError::Persist {
                path: self.target.clone(),
                error: e.error,
            })?;
        if let Some(stamp) = FileStamp::read(&self.target) {
            record_good(&marker, stamp);
        }
        Ok(self.target)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn digest(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn no_repo(dir: &Path) -> Repository {
        Repository::new(dir.join("no-repository"), Default::default())
    }

    /// A fetch that serves `bytes` in two chunks and counts how often it was asked.
    fn serving(
        bytes: &'static [u8],
        calls: &Arc<AtomicUsize>,
    ) -> impl FnOnce() -> futures::future::Ready<Result<Chunks, AgentError>> + Send + 'static {
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let (a, b) = bytes.split_at(bytes.len() / 2);
            let chunks = vec![
                Ok(ModelChunk {
                    offset: 0,
                    data: a.to_vec(),
                    total_bytes: bytes.len() as u64,
                }),
                Ok(ModelChunk {
                    offset: a.len() as u64,
                    data: b.to_vec(),
                    total_bytes: bytes.len() as u64,
                }),
            ];
            futures::future::ready(Ok(futures::stream::iter(chunks).boxed()))
        }
    }

    /// Changes one byte of a file in place, keeping its size; with `mtime`, sets the
    /// file's mtime to it (filesystems keep mtimes coarsely, so a test sets it rather
    /// than wait for the clock to move).
    fn corrupt(path: &Path, mtime: Option<std::time::SystemTime>) {
        let mut bytes = std::fs::read(path).expect("read");
        bytes[0] = bytes[0].wrapping_add(1);
        let before = std::fs::metadata(path)
            .expect("stat")
            .modified()
            .expect("mtime");
        std::fs::write(path, &bytes).expect("write");
        let file = std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open");
        file.set_modified(mtime.unwrap_or(before))
            .expect("set mtime");
    }

    #[test]
    fn a_fetched_file_is_kept_only_when_its_digest_matches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(Some(dir.path().join("cache")));
        let good = digest(b"model bytes");
        let mut w = store.writer(&good).expect("writer");
        w.write(b"model ").expect("write");
        w.write(b"bytes").expect("write");
        let path = w.finish().expect("digest matches");
        assert_eq!(std::fs::read(&path).expect("read"), b"model bytes");
        let mut w = store.writer(&"0".repeat(64)).expect("writer");
        w.write(b"other").expect("write");
        assert!(w
            .finish()
            .expect_err("wrong digest")
            .to_string()
            .contains("discarded"));
        // Only the good file counts; its marker and no temporary file is taken for one.
        let cached = store.cached();
        assert_eq!(cached.len(), 1);
        assert_eq!(cached.get(&good), Some(&path));
        assert!(!valid_digest("../etc/passwd") && valid_digest(&good));
    }

    #[cfg(unix)]
    #[test]
    fn the_cache_directory_is_private_to_the_agent_and_so_are_its_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("data").join("models");
        let store = FileStore::new(Some(cache.clone()));
        let good = digest(b"model bytes");
        let mut w = store.writer(&good).expect("writer");
        w.write(b"model bytes").expect("write");
        let path = w.finish().expect("kept");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&cache), 0o700);
        assert_eq!(mode(&dir.path().join("data")), 0o700, "a parent it created");
        assert_eq!(mode(&path), 0o600);
        // A directory an older agent left open is closed on the next fetch.
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        store.writer(&good).expect("writer");
        assert_eq!(mode(&cache), 0o700);
    }

    #[test]
    fn a_cached_file_is_checked_once_and_again_only_when_its_size_or_mtime_moves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(Some(dir.path().join("cache")));
        let good = digest(b"model bytes");
        let mut w = store.writer(&good).expect("writer");
        w.write(b"model bytes").expect("write");
        let path = w.finish().expect("kept");
        let repo = no_repo(dir.path());
        let inner = &store.inner;
        assert!(inner.find_local(&good, &repo).is_some());

        // Changed where neither size nor mtime shows it: the marker is believed, and the
        // file is not read. (The price of not hashing 400 MB on every load.)
        corrupt(&path, None);
        assert_eq!(inner.find_local(&good, &repo), Some(path.clone()));

        // Changed with a new mtime: hashed, found bad, deleted with its marker.
        corrupt(&path, Some(UNIX_EPOCH + Duration::from_secs(1_000_000)));
        assert_eq!(inner.find_local(&good, &repo), None);
        assert!(!path.exists());
        assert!(!marker_path(&path).exists());
    }

    #[test]
    fn a_cached_file_without_a_marker_is_hashed_and_a_bad_one_is_deleted_with_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("cache");
        let store = FileStore::new(Some(cache.clone()));
        let good = digest(b"model bytes");
        std::fs::create_dir_all(&cache).expect("mkdir");
        // As an older agent left it: the right name, no marker.
        let path = cache.join(format!("{good}.onnx"));
        std::fs::write(&path, b"model bytes").expect("write");
        let repo = no_repo(dir.path());
        assert_eq!(store.inner.find_local(&good, &repo), Some(path.clone()));
        assert!(marker_path(&path).exists(), "found good, now marked");

        // Same size, mtime kept, no marker: the bytes are read all the same.
        std::fs::remove_file(marker_path(&path)).expect("unmark");
        corrupt(&path, None);
        let logs = crate::fake::captured_logs();
        let found = store.inner.find_local(&good, &repo);
        assert_eq!(found, None);
        assert!(!path.exists());
        let logs = crate::fake::logged(&logs);
        assert!(
            logs.contains("WARN")
                && logs.contains("no longer matches its digest; deleting it and fetching it again")
                && logs.contains(&good)
                && logs.contains(&path.display().to_string()),
            "{logs}"
        );
    }

    #[tokio::test]
    async fn two_loads_of_one_digest_at_once_fetch_it_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(Some(dir.path().join("cache")));
        let bytes: &'static [u8] = b"four hundred megabytes, say";
        let good = digest(bytes);
        let repo = no_repo(dir.path());
        let calls = Arc::new(AtomicUsize::new(0));
        let len = bytes.len() as u64;
        // Both asked for before either is awaited: the second finds the first under way.
        let first = store.obtain(&good, len, repo.clone(), serving(bytes, &calls));
        let second = store.obtain(&good, len, repo.clone(), serving(bytes, &calls));
        let (first, second) = tokio::join!(first, second);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one fetch");
        let first = first.expect("obtained");
        assert!(first.fetched);
        assert_eq!(second.expect("obtained"), first);
        assert_eq!(std::fs::read(&first.path).expect("read"), bytes);
        assert!(lock(&store.inner.in_flight).is_empty());

        // The next load finds the file.
        let again = store
            .obtain(&good, len, repo.clone(), serving(bytes, &calls))
            .await
            .expect("obtained");
        assert_eq!(
            (again.fetched, calls.load(Ordering::SeqCst)),
            (false, 1),
            "no fetch"
        );

        // Spoiled on disk (same size, new mtime): deleted and fetched again.
        corrupt(
            &first.path,
            Some(UNIX_EPOCH + Duration::from_secs(1_000_000)),
        );
        let refetched = store
            .obtain(&good, len, repo, serving(bytes, &calls))
            .await
            .expect("obtained");
        assert_eq!((refetched.fetched, calls.load(Ordering::SeqCst)), (true, 2));
        assert_eq!(std::fs::read(&refetched.path).expect("read"), bytes);
    }

    #[tokio::test]
    async fn a_failed_fetch_fails_every_load_waiting_on_it_and_the_next_load_tries_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(Some(dir.path().join("cache")));
        let bytes: &'static [u8] = b"model bytes";
        let good = digest(bytes);
        let repo = no_repo(dir.path());
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let unreachable = move || {
            counted.fetch_add(1, Ordering::SeqCst);
            futures::future::ready(Err::<Chunks, _>(AgentError::NoFileSource))
        };
        let first = store.obtain(&good, 0, repo.clone(), unreachable);
        let second = store.obtain(&good, 0, repo.clone(), serving(bytes, &calls));
        let (first, second) = tokio::join!(first, second);
        assert!(matches!(first, Err(AgentError::NoFileSource)), "{first:?}");
        assert!(
            matches!(second, Err(AgentError::NoFileSource)),
            "{second:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let next = store
            .obtain(&good, 0, repo, serving(bytes, &calls))
            .await
            .expect("fetched this time");
        assert!(next.fetched);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_short_or_disordered_fetch_keeps_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(Some(dir.path().join("cache")));
        let bytes: &'static [u8] = b"model bytes";
        let good = digest(bytes);
        let repo = no_repo(dir.path());
        let calls = Arc::new(AtomicUsize::new(0));
        let short = store
            .obtain(&good, 100, repo.clone(), serving(bytes, &calls))
            .await;
        assert!(
            matches!(&short, Err(AgentError::File(e)) if matches!(**e, FileError::Incomplete { got: 11, expected: 100 })),
            "{short:?}"
        );
        let gap = || {
            let chunk = ModelChunk {
                offset: 3,
                data: b"x".to_vec(),
                total_bytes: 4,
            };
            futures::future::ready(Ok(futures::stream::iter(vec![Ok(chunk)]).boxed()))
        };
        let gap = store.obtain(&good, 0, repo, gap).await;
        assert!(
            matches!(&gap, Err(AgentError::File(e)) if matches!(**e, FileError::OutOfOrder { offset: 3, expected: 0 })),
            "{gap:?}"
        );
        assert!(store.cached().is_empty());
    }
}
