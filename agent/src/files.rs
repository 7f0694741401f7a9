//! Model files by content: the sha256 of every model file this node holds (its
//! repository and its cache of files fetched from the scheduler), and fetching a file
//! the scheduler assigns when the node has no copy.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use herd_core::digest::{sha256_file, valid_digest};
use herd_core::repository::Repository;

/// Why a fetched model file was not kept.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("this agent has no data directory to keep fetched models in")]
    NoDataDir,
    #[error("cannot create {}: {error}", .dir.display())]
    CreateDir { dir: PathBuf, error: io::Error },
    #[error("cannot write in {}: {error}", .dir.display())]
    TempFile { dir: PathBuf, error: io::Error },
    #[error("cannot write the model file: {0}")]
    Write(io::Error),
    #[error("the fetched file's sha256 is {got}, not {expected}; it was discarded")]
    DigestMismatch { got: String, expected: String },
    #[error("cannot keep {}: {error}", .path.display())]
    Persist { path: PathBuf, error: io::Error },
    #[error("chunk at offset {offset} where {expected} was expected")]
    OutOfOrder { offset: u64, expected: u64 },
    #[error("fetched {got} bytes of a {expected}-byte model file")]
    Incomplete { got: u64, expected: u64 },
}

pub struct FileStore {
    /// Where fetched files go: `<dir>/<sha256>.onnx`. None: the agent keeps no cache.
    cache_dir: Option<PathBuf>,
    /// Digests of repository files, by path, valid while size and mtime are unchanged.
    known: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
}

impl FileStore {
    pub fn new(cache_dir: Option<PathBuf>) -> FileStore {
        FileStore {
            cache_dir,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// sha256 of a file, remembered while its size and mtime stay the same.
    pub fn digest_of(&self, path: &Path) -> Option<String> {
        let meta = std::fs::metadata(path).ok()?;
        let stamp = (meta.len(), meta.modified().ok()?);
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((len, mtime, digest)) = known.get(path) {
            if (*len, *mtime) == stamp {
                return Some(digest.clone());
            }
        }
        let digest = sha256_file(path).ok()?;
        known.insert(path.to_path_buf(), (stamp.0, stamp.1, digest.clone()));
        Some(digest)
    }

    /// Every file this node holds, digest → path.
    pub fn inventory(&self, repo: &Repository) -> HashMap<String, PathBuf> {
        let mut files = self.cached();
        for name in repo.names() {
            if let Ok(f) = repo.find(&name) {
                if let Some(d) = self.digest_of(&f.path) {
                    files.insert(d, f.path);
                }
            }
        }
        files
    }

    /// The files fetched into the cache, digest → path.
    pub fn cached(&self) -> HashMap<String, PathBuf> {
        let mut files = HashMap::new();
        if let Some(dir) = &self.cache_dir {
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
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("{digest}.onnx")))
    }

    /// Writes a fetched file into the cache: chunks go to a temporary file, which is
    /// kept only if its sha256 is `digest`.
    pub fn writer(&self, digest: &str) -> Result<CacheWriter, FileError> {
        let Some(dir) = &self.cache_dir else {
            return Err(FileError::NoDataDir);
        };
        std::fs::create_dir_all(dir).map_err(|error| FileError::CreateDir {
            dir: dir.clone(),
            error,
        })?;
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

    /// Checks the digest and moves the file into place.
    pub fn finish(self) -> Result<PathBuf, FileError> {
        let got = hex::encode(self.hasher.finalize());
        if got != self.digest {
            return Err(FileError::DigestMismatch {
                got,
                expected: self.digest,
            });
        }
        self.tmp
            .persist(&self.target)
            .map_err(|e| FileError::Persist {
                path: self.target.clone(),
                error: e.error,
            })?;
        Ok(self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetched_file_is_kept_only_when_its_digest_matches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(Some(dir.path().join("cache")));
        let good = hex::encode(Sha256::digest(b"model bytes"));
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
        let repo = Repository::new(dir.path().join("none"), Default::default());
        let inv = store.inventory(&repo);
        assert_eq!(inv.len(), 1);
        assert!(inv.contains_key(&good));
        assert!(!valid_digest("../etc/passwd") && valid_digest(&good));
    }
}
