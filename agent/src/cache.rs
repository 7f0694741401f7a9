//! The model cache: which models are in memory. A model loads on first use, once
//! however many requests ask for it at the same moment, off the serving path; it is
//! unloaded when idle for its TTL and nobody holds it (the policy is `idle.rs`; a
//! watcher task per loaded model sleeps until the deadline it names).
//!
//! Every request holds a `Lease` from before the load until its answer. Leases are
//! taken under the same lock that unloading takes, so an idle model is never
//! unloaded under a request that has just arrived.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn, Instrument};

use crate::error::AgentError;
use crate::idle::{self, Activity};
use crate::memory;
use crate::runner::budget::{self, ByteBudget, Scope};
use crate::runner::{BatchPolicy, Runner};
use crate::session::{LoadError, Loader};
use crate::stats::ModelStats;
use herd_core::repository::{ModelFiles, Repository};
use herd_core::settings::{ModelSettings, Ttl};
use herd_core::tensor::ModelSpec;

/// How a reconfigure reached a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconfigured {
    /// Not in memory: its next load uses the new settings.
    NotLoaded,
    /// Applied to the running model.
    Live,
    /// Its worker was let go once its queue drained; the next request starts a new one.
    NewWorker,
}

/// A model in memory.
pub struct Loaded {
    pub spec: ModelSpec,
    pub runner: Runner,
    /// Resident memory the load added, measured once it finished.
    pub memory_bytes: u64,
    /// The worker process holding the session, when it has one of its own.
    pub process_id: Option<u32>,
    /// The batch size the model really takes: 1 when it cannot batch.
    pub max_batch_size: usize,
    /// Elements one item of an input may have along the model's dynamic dimensions
    /// (changed live by a reconfigure).
    pub max_item_elements: AtomicU64,
}

impl Loaded {
    /// Resident memory the model holds now: its worker's whole RSS, which grows as
    /// ONNX Runtime allocates for larger batches; else what the load added.
    pub fn memory_now(&self) -> u64 {
        self.process_id
            .and_then(memory::process_bytes)
            .unwrap_or(self.memory_bytes)
    }
}

struct Slot {
    files: ModelFiles,
    /// Its settings now: `files.settings` at first, then as reconfigured live.
    settings: watch::Sender<ModelSettings>,
    stats: Arc<ModelStats>,
    loaded: Mutex<Option<Arc<Loaded>>>,
    /// Held while loading: the one load that concurrent first requests share.
    load_lock: Arc<tokio::sync::Mutex<()>>,
    /// Loads finished, failed or not; counted before the load lock is released.
    attempts: AtomicU64,
    last_failure: Mutex<Option<AgentError>>,
    activity: watch::Sender<Activity>,
}

impl Slot {
    /// The model in memory, if it is there and can still run. A model whose session
    /// died (its worker process crashed) is let go here, so the next request loads it
    /// afresh.
    fn loaded(&self) -> Option<Arc<Loaded>> {
        let mut loaded = lock(&self.loaded);
        if loaded.as_ref().is_some_and(|l| !l.runner.is_alive()) {
            warn!(model = %self.files.name, "model can no longer run; dropping it");
            *loaded = None;
        }
        loaded.clone()
    }
}

/// Where a model stands, for status and the repository index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadState {
    Available,
    Loading,
    Ready,
    Unloading,
    Failed,
}

/// A model as the cache sees it, for status reports.
pub struct CachedModel {
    pub name: String,
    pub version: Option<u64>,
    pub state: LoadState,
    pub stats: Option<Arc<ModelStats>>,
    pub in_flight: usize,
    pub queue_len: usize,
    /// The batch size it runs with now; 0 when not in memory.
    pub max_batch_size: usize,
    pub memory_bytes: u64,
    pub file_bytes: u64,
    pub ttl: Option<Ttl>,
    pub idle: Option<std::time::Duration>,
    /// The GPU it runs on (or will, once loaded); `None` for the CPU.
    pub gpu: Option<u32>,
    /// Its worker process, when loaded in one.
    pub process_id: Option<u32>,
}

/// What the node gives its models: the memory it offers, from which each model's
/// budgets default, and the agent's budget of bytes in flight, which they share.
#[derive(Clone, Debug)]
pub struct NodeBudget {
    /// Bytes; 0 when unknown.
    pub offered_memory: u64,
    pub in_flight: Arc<ByteBudget>,
}

impl NodeBudget {
    /// `max_in_flight` bytes of requests at once, else a share of `offered_memory`.
    pub fn new(offered_memory: u64, max_in_flight: Option<u64>) -> NodeBudget {
        let limit = max_in_flight.unwrap_or_else(|| budget::default_in_flight(offered_memory));
        NodeBudget {
            offered_memory,
            in_flight: Arc::new(ByteBudget::new(limit, Scope::Agent)),
        }
    }

    /// No limits of the node's: only the models' own settings bound them.
    pub fn unlimited() -> NodeBudget {
        NodeBudget::new(0, None)
    }
}

struct Inner {
    repo: Repository,
    budget: NodeBudget,
    /// Models the scheduler assigned (files from its catalog); they shadow the repository.
    assigned: Mutex<HashMap<String, ModelFiles>>,
    loader: Arc<dyn Loader>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    stats: Mutex<HashMap<String, Arc<ModelStats>>>,
    unloading: Mutex<HashSet<String>>,
    loads: AtomicU64,
    /// Every model's leases together: whether the node as a whole is idle, and since
    /// when (the agent's --sleep-after).
    node_activity: Mutex<Activity>,
}

#[derive(Clone)]
pub struct ModelCache {
    inner: Arc<Inner>,
}

/// A request's hold on a model: while any lease is alive, the model stays loaded.
pub struct Lease {
    slot: Arc<Slot>,
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ModelCache {
    /// A cache whose models have no byte budgets but their own settings.
    pub fn new(repo: Repository, loader: Arc<dyn Loader>) -> ModelCache {
        ModelCache::with_budget(repo, loader, NodeBudget::unlimited())
    }

    /// A cache whose models share `budget`.
    pub fn with_budget(
        repo: Repository,
        loader: Arc<dyn Loader>,
        budget: NodeBudget,
    ) -> ModelCache {
        ModelCache {
            inner: Arc::new(Inner {
                repo,
                budget,
                assigned: Mutex::new(HashMap::new()),
                loader,
                slots: Mutex::new(HashMap::new()),
                stats: Mutex::new(HashMap::new()),
                unloading: Mutex::new(HashSet::new()),
                loads: AtomicU64::new(0),
                node_activity: Mutex::new(Activity::new(Instant::now())),
            }),
        }
    }

    pub fn repository(&self) -> &Repository {
        &self.inner.repo
    }

    /// The node's memory and in-flight budget its models share.
    pub fn budget(&self) -> &NodeBudget {
        &self.inner.budget
    }

    /// A model's files: as the scheduler assigned them, else from the repository.
    pub fn find(&self, name: &str) -> Result<ModelFiles, AgentError> {
        if let Some(files) = lock(&self.inner.assigned).get(name) {
            return Ok(files.clone());
        }
        Ok(self.inner.repo.find(name)?)
    }

    /// Serves `files` under its name from now on. A model already in memory from other
    /// files (another digest or settings) is unloaded first, so the next request loads
    /// the new one.
    pub async fn assign(&self, files: ModelFiles) -> Result<(), AgentError> {
        herd_core::repository::check_name(&files.name)?;
        let name = files.name.clone();
        let (other_file, settings) = {
            let slots = lock(&self.inner.slots);
            match slots.get(&name) {
                // Another GPU (or the CPU) needs another session: a new worker.
                Some(s) => (
                    s.files.path != files.path || s.files.gpu != files.gpu,
                    *s.settings.borrow() != files.settings,
                ),
                None => (false, false),
            }
        };
        let new_settings = files.settings.clone();
        lock(&self.inner.assigned).insert(name.clone(), files);
        if other_file {
            self.unload(&name).await?;
        } else if settings {
            self.reconfigure(&name, new_settings).await?;
        }
        Ok(())
    }

    /// New settings for a model: live for a model in memory where its session can keep
    /// them (batching, TTL, queue limits), else through a new worker once what is queued
    /// is done; either way loads from now on use them.
    pub async fn reconfigure(
        &self,
        name: &str,
        new: ModelSettings,
    ) -> Result<Reconfigured, AgentError> {
        if let Some(files) = lock(&self.inner.assigned).get_mut(name) {
            files.settings = new.clone();
        }
        let slot = lock(&self.inner.slots).get(name).cloned();
        let Some(slot) = slot else {
            return Ok(Reconfigured::NotLoaded);
        };
        let old = slot.settings.borrow().clone();
        if herd_core::settings_change::needs_new_session(&old, &new) {
            let was_loaded = self.unload(name).await?;
            info!(model = %name, "reconfigured: a new worker takes the new session settings");
            // Started at once, not on the next request: the model is back as soon as it can be.
            if was_loaded {
                let (cache, name) = (self.clone(), name.to_string());
                tokio::spawn(async move {
                    if let Err(e) = cache.load(&name).await {
                        warn!(model = %name, error = %e, "the new worker failed to load");
                    }
                });
            }
            return Ok(Reconfigured::NewWorker);
        }
        if let Some(loaded) = slot.loaded() {
            let policy = self.inner.policy(&new, loaded.spec.batchable());
            loaded.runner.set_policy(policy);
            loaded
                .max_item_elements
                .store(new.max_item_elements, Ordering::Relaxed);
        }
        let changes = herd_core::settings_change::differences(&old, &new).join(", ");
        slot.settings.send_replace(new);
        info!(model = %name, changes, "reconfigured live");
        Ok(Reconfigured::Live)
    }

    /// Model loads started since the agent began (successful or not).
    pub fn loads_started(&self) -> u64 {
        self.inner.loads.load(Ordering::Relaxed)
    }

    /// How long no model has been held (no request queued, running or waiting for a
    /// load) on this node; `None` while one is.
    pub fn idle_for(&self) -> Option<std::time::Duration> {
        let activity = *lock(&self.inner.node_activity);
        (activity.leases == 0).then(|| activity.idle_since.elapsed())
    }

    /// Starts the node's idle clock again, as if a request had just finished.
    pub fn touch(&self) {
        let mut activity = lock(&self.inner.node_activity);
        if activity.leases == 0 {
            activity.idle_since = Instant::now();
        }
    }

    /// Takes a hold on a model, finding it in the repository if it is not in memory.
    pub fn lease(&self, name: &str) -> Result<Lease, AgentError> {
        let mut slots = lock(&self.inner.slots);
        let slot = match slots.get(name) {
            Some(slot) => slot.clone(),
            None => {
                let files = self.find(name)?;
                let stats = lock(&self.inner.stats)
                    .entry(name.to_string())
                    .or_default()
                    .clone();
                let slot = Arc::new(Slot {
                    settings: watch::Sender::new(files.settings.clone()),
                    files,
                    stats,
                    loaded: Mutex::new(None),
                    load_lock: Arc::new(tokio::sync::Mutex::new(())),
                    attempts: AtomicU64::new(0),
                    last_failure: Mutex::new(None),
                    activity: watch::Sender::new(Activity::new(Instant::now())),
                });
                slots.insert(name.to_string(), slot.clone());
                slot
            }
        };
        slot.activity.send_modify(Activity::lease);
        lock(&self.inner.node_activity).lease();
        Ok(Lease {
            slot,
            inner: self.inner.clone(),
        })
    }

    /// Loads a model now (RepositoryModelLoad); its TTL starts counting at once.
    pub async fn load(&self, name: &str) -> Result<Arc<Loaded>, AgentError> {
        self.lease(name)?.ready().await
    }

    /// Unloads a model now. Requests already queued for it still finish; new ones
    /// load it again. Returns once its memory is freed, or false if it was not loaded.
    pub async fn unload(&self, name: &str) -> Result<bool, AgentError> {
        let slot = lock(&self.inner.slots).remove(name);
        match slot {
            Some(slot) => {
                let loaded = lock(&slot.loaded).take();
                Ok(match loaded {
                    Some(loaded) => {
                        self.inner.finish_unload(name, loaded, "requested").await;
                        true
                    }
                    None => false,
                })
            }
            None => {
                self.find(name)?;
                Ok(false)
            }
        }
    }

    /// Every model in the repository or in memory, with its state.
    pub fn views(&self) -> Vec<CachedModel> {
        let slots: Vec<(String, Arc<Slot>)> = lock(&self.inner.slots)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let unloading = lock(&self.inner.unloading).clone();
        let stats = lock(&self.inner.stats).clone();
        let mut names: Vec<String> = self.inner.repo.names();
        names.extend(lock(&self.inner.assigned).keys().cloned());
        names.extend(slots.iter().map(|(n, _)| n.clone()));
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let slot = slots.iter().find(|(n, _)| *n == name).map(|(_, s)| s);
                let mut view = CachedModel {
                    state: if unloading.contains(&name) {
                        LoadState::Unloading
                    } else {
                        LoadState::Available
                    },
                    stats: stats.get(&name).cloned(),
                    version: None,
                    in_flight: 0,
                    queue_len: 0,
                    max_batch_size: 0,
                    memory_bytes: 0,
                    file_bytes: 0,
                    ttl: None,
                    idle: None,
                    gpu: None,
                    process_id: None,
                    name,
                };
                if let Some(slot) = slot {
                    let activity = *slot.activity.borrow();
                    view.version = Some(slot.files.version);
                    view.file_bytes = slot.files.file_bytes;
                    view.gpu = slot.files.gpu;
                    view.ttl = Some(slot.settings.borrow().ttl);
                    view.in_flight = activity.leases;
                    if activity.leases == 0 {
                        view.idle = Some(activity.idle_since.elapsed());
                    }
                    view.state = match slot.loaded() {
                        Some(loaded) => {
                            view.queue_len = loaded.runner.queue_len();
                            view.max_batch_size = loaded.runner.policy().max_batch_size;
                            view.memory_bytes = loaded.memory_now();
                            view.process_id = loaded.process_id;
                            LoadState::Ready
                        }
                        None if slot.load_lock.try_lock().is_err() => LoadState::Loading,
                        None if lock(&slot.last_failure).is_some() => LoadState::Failed,
                        None => view.state,
                    };
                }
                view
            })
            .collect()
    }

    pub fn stats(&self, name: &str) -> Option<Arc<ModelStats>> {
        lock(&self.inner.stats).get(name).cloned()
    }

    /// The model if it is loaded now; never loads it.
    pub fn loaded_now(&self, name: &str) -> Option<Arc<Loaded>> {
        let slot = lock(&self.inner.slots).get(name)?.clone();
        slot.loaded()
    }

    pub fn is_loaded(&self, name: &str) -> bool {
        lock(&self.inner.slots)
            .get(name)
            .is_some_and(|s| s.loaded().is_some())
    }
}

impl Lease {
    pub fn files(&self) -> &ModelFiles {
        &self.slot.files
    }

    /// The loaded model, loading it first if needed. Concurrent callers share one load.
    /// The load runs in a task of its own, so a caller that gives up does not abandon
    /// it half-way (and cause a second load).
    pub async fn ready(&self) -> Result<Arc<Loaded>, AgentError> {
        let slot = &self.slot;
        if let Some(loaded) = slot.loaded() {
            return Ok(loaded);
        }
        let attempt = slot.attempts.load(Ordering::Acquire);
        let guard = slot.load_lock.clone().lock_owned().await;
        if let Some(loaded) = slot.loaded() {
            return Ok(loaded);
        }
        if slot.attempts.load(Ordering::Acquire) != attempt {
            // The load this caller waited for failed; share its answer.
            if let Some(e) = lock(&slot.last_failure).clone() {
                return Err(e);
            }
        }
        self.inner.loads.fetch_add(1, Ordering::Relaxed);
        let inner = self.inner.clone();
        let slot = slot.clone();
        // The load logs in the span of the request that started it.
        let task = tokio::spawn(
            async move {
                let _guard = guard;
                let result = inner.load_into(&slot).await;
                // Counted once finished, under the load lock: a caller that began
                // waiting while this load ran sees the count move and shares its answer.
                slot.attempts.fetch_add(1, Ordering::AcqRel);
                result
            }
            .in_current_span(),
        );
        task.await.unwrap_or_else(|e| {
            Err(AgentError::LoadFailed {
                model: self.slot.files.name.clone(),
                reason: LoadError::Stopped(e.to_string()),
            })
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let now = Instant::now();
        self.slot.activity.send_modify(|a| a.release(now));
        lock(&self.inner.node_activity).release(now);
    }
}

impl Inner {
    /// Loads the model and records the outcome in its slot. Called with the slot's
    /// load lock held.
    async fn load_into(self: &Arc<Self>, slot: &Arc<Slot>) -> Result<Arc<Loaded>, AgentError> {
        match self.load(slot).await {
            Ok(loaded) => {
                *lock(&slot.last_failure) = None;
                *lock(&slot.loaded) = Some(loaded.clone());
                // Watched even with no TTL: a reconfigure may give it one.
                tokio::spawn(watch_idle(Arc::downgrade(self), slot.clone()));
                Ok(loaded)
            }
            Err(e) => {
                slot.stats.lock().last_error = Some(e.to_string());
                *lock(&slot.last_failure) = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn load(&self, slot: &Slot) -> Result<Arc<Loaded>, AgentError> {
        let files = slot.files.clone();
        let name = files.name.clone();
        info!(model = %name, version = files.version, path = %files.path.display(), "loading model");
        let started = Instant::now();
        let before = memory::rss_bytes();
        let loader = self.loader.clone();
        let loaded = tokio::task::spawn_blocking(move || loader.load(&files))
            .await
            .unwrap_or_else(|e| Err(LoadError::Stopped(e.to_string())));
        let (spec, session) = loaded.map_err(|reason| {
            warn!(model = %name, error = %reason, "model failed to load");
            AgentError::LoadFailed {
                model: name.clone(),
                reason,
            }
        })?;
        let process_id = session.process_id();
        let memory_bytes = match process_id {
            Some(pid) => memory::process_bytes(pid).unwrap_or(0),
            None => memory::rss_bytes().saturating_sub(before),
        };
        let settings = slot.settings.borrow().clone();
        let policy = self.policy(&settings, spec.batchable());
        let max_batch_size = policy.max_batch_size;
        let node = &self.budget;
        let runner = Runner::start(
            &name,
            session,
            policy,
            slot.stats.clone(),
            node.in_flight.clone(),
        );
        {
            let mut stats = slot.stats.lock();
            stats.loads += 1;
            stats.memory_bytes = memory_bytes;
        }
        info!(
            model = %name,
            millis = started.elapsed().as_millis() as u64,
            memory_mb = memory_bytes / (1 << 20),
            max_batch_size,
            max_queue_mb = policy.max_queue_bytes / (1 << 20),
            max_batch_mb = policy.max_batch_bytes / (1 << 20),
            "model ready"
        );
        Ok(Arc::new(Loaded {
            spec,
            runner,
            memory_bytes,
            process_id,
            max_batch_size,
            max_item_elements: AtomicU64::new(settings.max_item_elements),
        }))
    }

    /// The batching policy `settings` give a model on this node.
    fn policy(&self, settings: &ModelSettings, batchable: bool) -> BatchPolicy {
        let node = &self.budget;
        BatchPolicy {
            max_batch_size: if batchable {
                settings.max_batch_size
            } else {
                1
            },
            max_batch_delay: settings.max_batch_delay,
            queue_capacity: settings.queue_capacity,
            max_queue_bytes: budget::queue_bytes(settings.max_queue_bytes, node.in_flight.limit()),
            max_batch_bytes: budget::batch_bytes(settings.max_batch_bytes, node.offered_memory),
        }
    }

    /// Drops the cache's hold and waits until the runner has ended and freed its memory.
    async fn finish_unload(&self, name: &str, loaded: Arc<Loaded>, reason: &str) {
        lock(&self.unloading).insert(name.to_string());
        let mut stopped = loaded.runner.stopped();
        drop(loaded);
        let _ = stopped.wait_for(|s| *s).await;
        lock(&self.unloading).remove(name);
        info!(model = %name, reason, rss_mb = memory::rss_bytes() / (1 << 20), "model unloaded");
    }

    /// Removes the slot if it is still the current one for its model and is due for
    /// unloading now; returns what it held.
    fn take_if_idle(&self, slot: &Arc<Slot>, ttl: Ttl) -> Option<Arc<Loaded>> {
        let mut slots = lock(&self.slots);
        let current = slots.get(&slot.files.name)?;
        if !Arc::ptr_eq(current, slot) {
            return None;
        }
        // Leases are taken under the slots lock held here, so none can arrive between
        // this check and the removal.
        if !idle::is_due(*slot.activity.borrow(), ttl, Instant::now()) {
            return None;
        }
        slots.remove(&slot.files.name);
        lock(&slot.loaded).take()
    }

    fn is_current(&self, slot: &Arc<Slot>) -> bool {
        lock(&self.slots)
            .get(&slot.files.name)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
    }
}

/// Unloads the model once nobody has used it for `ttl`.
async fn watch_idle(inner: Weak<Inner>, slot: Arc<Slot>) {
    let mut activity = slot.activity.subscribe();
    let mut settings = slot.settings.subscribe();
    loop {
        let ttl = settings.borrow_and_update().ttl;
        let Some(due) = idle::unload_at(*activity.borrow_and_update(), ttl) else {
            tokio::select! {
                changed = activity.changed() => if changed.is_err() { return },
                changed = settings.changed() => if changed.is_err() { return },
            }
            if !inner.upgrade().is_some_and(|i| i.is_current(&slot)) {
                return;
            }
            continue;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {
                let Some(inner) = inner.upgrade() else { return };
                if let Some(loaded) = inner.take_if_idle(&slot, ttl) {
                    inner.finish_unload(&slot.files.name, loaded, "idle ttl").await;
                    return;
                }
                if !inner.is_current(&slot) {
                    return;
                }
            }
            changed = activity.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            // A new TTL: the deadline is worked out again.
            changed = settings.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::sleep;

    use super::*;
    use crate::fake::{self, FakeLoader};
    use herd_core::settings::ModelSettings;

    async fn cache_with(fake: &Arc<FakeLoader>, ttl: Ttl) -> ModelCache {
        let cache = ModelCache::new(
            Repository::new(Default::default(), ModelSettings::default()),
            fake.clone(),
        );
        let settings = ModelSettings {
            ttl,
            ..Default::default()
        };
        cache
            .assign(fake::files("m", settings))
            .await
            .expect("a valid name");
        cache
    }

    fn state(cache: &ModelCache) -> LoadState {
        cache
            .views()
            .into_iter()
            .find(|v| v.name == "m")
            .expect("listed")
            .state
    }

    const TEN_S: Ttl = Ttl::After(Duration::from_secs(10));

    #[tokio::test(start_paused = true)]
    async fn concurrent_first_requests_share_one_load() {
        let fake = FakeLoader::new();
        let gate = fake.gate_loads();
        let cache = cache_with(&fake, TEN_S).await;
        let leases: Vec<Lease> = (0..3).map(|_| cache.lease("m").expect("lease")).collect();
        let (loaded, ()) = tokio::join!(
            futures::future::join_all(leases.iter().map(Lease::ready)),
            async {
                gate.reached(1).await;
                assert_eq!(state(&cache), LoadState::Loading);
                assert_eq!(fake.loads(), 1, "the others wait for the first load");
                gate.open();
            }
        );
        let loaded: Vec<Arc<Loaded>> = loaded.into_iter().map(|l| l.expect("loads")).collect();
        assert!(loaded.iter().all(|l| Arc::ptr_eq(l, &loaded[0])));
        assert_eq!(fake.loads(), 1);
        assert_eq!(cache.loads_started(), 1);
        assert_eq!(state(&cache), LoadState::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconfigure_applies_live_where_the_session_allows_and_else_starts_a_new_worker() {
        let fake = FakeLoader::new();
        let cache = cache_with(&fake, Ttl::Never).await;
        let loaded = cache.load("m").await.expect("load");
        // A TTL and smaller batches, live: the same session, the new policy, and the
        // model now unloads when idle.
        let live = ModelSettings {
            ttl: TEN_S,
            max_batch_size: 4,
            ..Default::default()
        };
        assert_eq!(
            cache.reconfigure("m", live.clone()).await.expect("applies"),
            Reconfigured::Live
        );
        assert_eq!(loaded.runner.policy().max_batch_size, 4);
        assert_eq!(fake.loads(), 1, "no reload");
        drop(loaded);
        sleep(Duration::from_secs(11)).await;
        assert!(!cache.is_loaded("m"), "the new TTL took effect");
        // Threads need a new session: the worker goes, the next load has them.
        cache.load("m").await.expect("load again");
        let threads = ModelSettings {
            intra_op_threads: 2,
            ..live
        };
        assert_eq!(
            cache
                .reconfigure("m", threads.clone())
                .await
                .expect("applies"),
            Reconfigured::NewWorker
        );
        cache.load("m").await.expect("a new worker");
        assert_eq!(cache.find("m").expect("assigned").settings, threads);
        // The same settings again through a load from the scheduler change nothing.
        cache
            .assign(fake::files("m", threads))
            .await
            .expect("assign");
        assert!(cache.is_loaded("m"));
        assert_eq!(fake.loads(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_model_unloads_after_its_ttl_and_its_session_is_dropped() {
        let fake = FakeLoader::new();
        let cache = cache_with(&fake, TEN_S).await;
        cache.load("m").await.expect("load");
        sleep(Duration::from_secs(9)).await;
        assert!(cache.is_loaded("m"), "9 s idle is under the TTL");
        sleep(Duration::from_secs(2)).await;
        assert!(!cache.is_loaded("m"), "11 s idle is over it");
        fake.live_sessions(0).await;
        assert_eq!(state(&cache), LoadState::Available);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_lease_keeps_the_model_and_the_ttl_counts_from_its_release() {
        let fake = FakeLoader::new();
        let cache = cache_with(&fake, TEN_S).await;
        let lease = cache.lease("m").expect("lease");
        lease.ready().await.expect("load");
        sleep(Duration::from_secs(3600)).await;
        assert!(cache.is_loaded("m"), "unloaded under a held lease");
        drop(lease);
        sleep(Duration::from_secs(9)).await;
        assert!(cache.is_loaded("m"), "the TTL counts from the release");
        sleep(Duration::from_secs(2)).await;
        assert!(!cache.is_loaded("m"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_the_idle_window_restarts_the_ttl() {
        let fake = FakeLoader::new();
        let cache = cache_with(&fake, TEN_S).await;
        cache.load("m").await.expect("load");
        sleep(Duration::from_secs(8)).await;
        drop(cache.lease("m").expect("lease"));
        sleep(Duration::from_secs(8)).await;
        assert!(cache.is_loaded("m"), "16 s since load, 8 s since last use");
        sleep(Duration::from_secs(3)).await;
        assert!(!cache.is_loaded("m"));
        assert_eq!(fake.loads(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_zero_unloads_after_use_and_never_keeps_the_model() {
        let fake = FakeLoader::new();
        let cache = cache_with(&fake, Ttl::After(Duration::ZERO)).await;
        cache.load("m").await.expect("load");
        fake.live_sessions(0).await;
        assert!(!cache.is_loaded("m"));

        let fake = FakeLoader::new();
        let cache = cache_with(&fake, Ttl::Never).await;
        cache.load("m").await.expect("load");
        sleep(Duration::from_secs(365 * 24 * 3600)).await;
        assert!(cache.is_loaded("m"), "ttl = never keeps the model");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_load_answers_every_waiter_and_the_next_request_retries() {
        let fake = FakeLoader::new();
        fake.fail_loads(1);
        let gate = fake.gate_loads();
        let cache = cache_with(&fake, TEN_S).await;
        let leases: Vec<Lease> = (0..2).map(|_| cache.lease("m").expect("lease")).collect();
        let (results, ()) = tokio::join!(
            futures::future::join_all(leases.iter().map(Lease::ready)),
            async {
                gate.reached(1).await;
                gate.open();
            }
        );
        for r in results {
            let Err(err) = r else {
                panic!("the load failed, yet a waiter got a model")
            };
            assert_eq!(
                err.to_string(),
                "model 'm' cannot be loaded: the fake engine refused the model"
            );
            assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        }
        assert_eq!(fake.loads(), 1, "waiters share the failed load's answer");
        drop(leases);
        assert_eq!(state(&cache), LoadState::Failed);
        cache.load("m").await.expect("the next request loads it");
        assert_eq!(fake.loads(), 2);
        assert_eq!(state(&cache), LoadState::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn a_model_whose_session_died_is_loaded_afresh_on_the_next_request() {
        let fake = FakeLoader::new();
        let cache = cache_with(&fake, TEN_S).await;
        let lease = cache.lease("m").expect("lease");
        let loaded = lease.ready().await.expect("load");
        fake.die_on_next_run();
        let valid = crate::validate::ValidRequest {
            inputs: vec![fake::input(1, 1.0)],
            rows: 1,
            key: vec![vec![4]],
            outputs: vec![0],
        };
        let reply = loaded
            .runner
            .submit(valid, crate::trace::RequestId::generate())
            .expect("queued");
        let err = reply.await.expect("answered").expect_err("died");
        assert!(err.to_string().contains("died"), "{err}");
        assert!(!cache.is_loaded("m"), "a dead model is let go");
        drop((loaded, lease));
        fake.live_sessions(0).await;
        let again = cache.load("m").await.expect("loads afresh");
        assert!(again.runner.is_alive());
        assert_eq!(fake.loads(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn unload_frees_the_session_and_the_next_request_loads_again() {
        let fake = FakeLoader::new();
        let cache = cache_with(&fake, Ttl::Never).await;
        cache.load("m").await.expect("load");
        assert!(cache.unload("m").await.expect("known model"));
        fake.live_sessions(0).await;
        assert!(!cache.unload("m").await.expect("known model"), "not loaded");
        cache.load("m").await.expect("load");
        assert_eq!(fake.loads(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_model_without_a_batch_dimension_takes_one_request_per_run() {
        let mut spec = fake::spec();
        spec.inputs[0].shape = vec![2, 4];
        let fake = FakeLoader::with_spec(spec.clone());
        let cache = cache_with(&fake, TEN_S).await;
        let loaded = cache.load("m").await.expect("load");
        assert_eq!(loaded.spec, spec, "the spec the engine gave");
        assert_eq!(loaded.max_batch_size, 1, "its settings say 32");
    }
}
