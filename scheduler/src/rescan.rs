//! The repository, read again: every `--rescan-interval` the scheduler looks for new
//! models, new versions, replaced files and edited herd.toml files, and brings the
//! catalog in line (`ClusterModel::refresh_model`). A file is hashed again only when
//! its size or modification time changed, so a rescan of an unchanged repository
//! costs a few `stat` calls per model.
//!
//! A request for a model the catalog does not know looks in the repository once
//! before it is refused, so a model directory added a moment ago loads on its first
//! request.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use herd_core::digest::sha256_file;
use herd_core::Repository;
use tokio::time::Instant;

use crate::error::SchedulerError;
use crate::model::CatalogModel;
use crate::state::Scheduler;

/// A file's identity as `stat` tells it, and the sha256 it had then.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    len: u64,
    modified: Option<SystemTime>,
    digest: String,
}

/// Digests of model files by path, so that an unchanged file is not hashed again.
#[derive(Default)]
pub struct DigestCache {
    seen: Mutex<HashMap<PathBuf, Seen>>,
}

impl DigestCache {
    /// The sha256 of `path`, from the cache while its size and mtime are unchanged.
    fn digest(&self, path: &std::path::Path) -> std::io::Result<String> {
        let meta = std::fs::metadata(path)?;
        let (len, modified) = (meta.len(), meta.modified().ok());
        if let Some(seen) = self.lock().get(path) {
            if seen.len == len && seen.modified == modified && modified.is_some() {
                return Ok(seen.digest.clone());
            }
        }
        let digest = sha256_file(path)?;
        self.lock().insert(
            path.to_path_buf(),
            Seen {
                len,
                modified,
                digest: digest.clone(),
            },
        );
        Ok(digest)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Seen>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads one model of the repository as the catalog holds it.
fn read(
    repo: &Repository,
    digests: &DigestCache,
    name: &str,
) -> Result<CatalogModel, SchedulerError> {
    let files = repo
        .find(name)
        .map_err(|e| SchedulerError::NotInRepository(e.to_string()))?;
    let digest = digests.digest(&files.path).map_err(|e| {
        SchedulerError::NotInRepository(format!("cannot read {}: {e}", files.path.display()))
    })?;
    Ok(CatalogModel::new(files, digest))
}

/// Every model of the repository; models that cannot be read are logged and left out.
pub fn scan(repo: &Repository, digests: &DigestCache) -> Vec<CatalogModel> {
    repo.names()
        .into_iter()
        .filter_map(|name| match read(repo, digests, &name) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(model = %name, error = %e, "model left out of the catalog");
                None
            }
        })
        .collect()
}

/// The repository's models and those of the Immich model cache, when there is one.
pub fn scan_all(
    repo: &Repository,
    immich: Option<&std::path::Path>,
    digests: &DigestCache,
) -> Vec<CatalogModel> {
    let mut models = scan(repo, digests);
    if let Some(dir) = immich {
        let digest = |p: &std::path::Path| digests.digest(p);
        models.extend(crate::immich::cache::scan(dir, repo.defaults(), &digest));
    }
    models
}

fn repository(scheduler: &Scheduler) -> Repository {
    Repository::new(
        scheduler.repository.clone(),
        scheduler.settings.model_defaults.clone(),
    )
}

/// Reads the whole repository again and applies what changed. Returns how many
/// models changed (or were added).
pub async fn once(scheduler: &Arc<Scheduler>) -> usize {
    let repo = repository(scheduler);
    let digests = scheduler.digests.clone();
    let immich = scheduler.settings.immich_models.clone();
    let read_all =
        tokio::task::spawn_blocking(move || scan_all(&repo, immich.as_deref(), &digests)).await;
    let Ok(models) = read_all else {
        return 0;
    };
    let mut changed = 0;
    let mut actions = Vec::new();
    {
        let mut c = scheduler.lock();
        let now = Instant::now();
        for m in models {
            let done = c.refresh_model(m, now);
            if !done.is_empty() {
                changed += 1;
            }
            actions.extend(done);
        }
    }
    if changed > 0 {
        scheduler.execute(actions);
        scheduler.notify();
    }
    changed
}

/// Rescans every `interval` until the process ends. Followers too: each scheduler
/// routes from its own catalog; what a change loads or unloads is the leader's to do.
pub async fn run(scheduler: Arc<Scheduler>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let changed = once(&scheduler).await;
        if changed > 0 {
            tracing::info!(changed, "model repository changed");
        }
    }
}

/// A model the catalog does not know, looked for in the repository: added when it is
/// there now. Names are checked (plain directory names) before any path is built.
pub async fn find_new(scheduler: &Scheduler, model: &str) -> Result<(), SchedulerError> {
    if scheduler.lock().model(model).is_some() {
        return Ok(());
    }
    if model.starts_with("immich.") {
        if let Some(dir) = scheduler.settings.immich_models.clone() {
            // Added a moment ago to the Immich cache: its own folder is read.
            let repo = repository(scheduler);
            let digests = scheduler.digests.clone();
            let name = model.to_string();
            let found = tokio::task::spawn_blocking(move || {
                let digest = |p: &std::path::Path| digests.digest(p);
                crate::immich::cache::find(&dir, &name, repo.defaults(), &digest)
            })
            .await
            .map_err(|e| SchedulerError::NotInRepository(e.to_string()))?;
            if let Some(m) = found {
                let mut c = scheduler.lock();
                if c.model(model).is_none() {
                    c.add_model(m, true);
                }
                return Ok(());
            }
        }
    }
    let repo = repository(scheduler);
    let digests = scheduler.digests.clone();
    let name = model.to_string();
    let entry = tokio::task::spawn_blocking(move || read(&repo, &digests, &name))
        .await
        .map_err(|e| SchedulerError::NotInRepository(e.to_string()))??;
    // New: it joins the catalog, and the caller asks for it as for any model.
    scheduler.lock().add_model(entry, true);
    Ok(())
}
