//! The catalog's rows (one per model of the repository) and the transitions that change
//! demand for a model: asked for, unloaded, served.

use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use herd_core::repository::ModelFiles;
use herd_core::settings::{ClusterPolicy, ModelSettings, Ttl};
use herd_proto::herd::Event;
use tokio::time::Instant;

use super::{Action, ClusterModel};
use crate::error::SchedulerError;
use crate::placement::Want;

pub struct CatalogModel {
    pub name: String,
    pub version: u64,
    pub digest: String,
    pub path: PathBuf,
    pub file_bytes: u64,
    pub settings: ModelSettings,
    pub policy: ClusterPolicy,
    /// Someone asked for it (a request or a load) since the last unload.
    pub wanted: bool,
    /// Replicas wanted by scaling, beyond one.
    pub scaled: u32,
    /// Since when in-flight per replica has stayed above the target.
    pub busy_since: Option<Instant>,
    /// Largest memory a replica of it was measured to hold.
    pub measured: u64,
    pub requests_total: u64,
    pub failures_total: u64,
    pub cold_starts: u64,
    pub latency: Histogram<u64>,
    /// When an attempt is overdue (`routing::hedge_delay` of `latency`), worked out
    /// again every [`HEDGE_EVERY`] requests: a quantile walks the histogram, too slow for
    /// every request.
    pub hedge: Option<std::time::Duration>,
    pub last_placement: Option<Event>,
    /// Why it could not be placed, while that holds and it has no replica: the
    /// answer to requests waiting for it.
    pub unplaceable: Option<String>,
    /// Why it has fewer replicas than it wants, as last logged: the event is logged
    /// when this changes, not every placement round.
    pub short_logged: Option<String>,
    /// Why its last load failed; the next request tries again.
    pub load_error: Option<String>,
    /// A model of the Immich model cache: its processing and the files beside it.
    pub immich: Option<crate::immich::cache::ImmichSource>,
    /// A GPU-only model that may run on a CPU stand-in while a GPU node wakes (see
    /// `model::stand_in`).
    pub stand_in: bool,
    /// Why a `device = "any"` model failed to load on a GPU: it runs on the CPU until a
    /// node with a GPU joins again.
    pub gpu_failed: Option<String>,
}

impl CatalogModel {
    /// A model of the repository, with its file's sha256, nobody asking for it yet.
    pub fn new(files: ModelFiles, digest: String) -> CatalogModel {
        CatalogModel {
            name: files.name,
            version: files.version,
            digest,
            path: files.path,
            file_bytes: files.file_bytes,
            settings: files.settings,
            policy: files.policy,
            wanted: false,
            scaled: 0,
            busy_since: None,
            measured: 0,
            requests_total: 0,
            failures_total: 0,
            cold_starts: 0,
            latency: herd_core::histogram::latency_histogram(),
            hedge: None,
            last_placement: None,
            unplaceable: None,
            short_logged: None,
            load_error: None,
            immich: None,
            stand_in: false,
            gpu_failed: None,
        }
    }

    /// Memory one replica needs: measured once known, else an estimate from the file
    /// (ONNX Runtime holds the weights about twice, plus a worker process). A hint is a
    /// floor: it stands for peaks (large batches) a measurement may not have seen.
    pub fn memory_needed(&self) -> u64 {
        let known = if self.measured > 0 {
            self.measured
        } else {
            self.file_bytes.saturating_mul(2).saturating_add(48 << 20)
        };
        match self.policy.memory_hint {
            Some(h) if self.measured > 0 => known.max(h),
            Some(h) => h,
            None => known,
        }
    }

    /// Replicas to have, given how many it has: one when a request waits for it and
    /// it has none, more when scaling asks, never fewer than min_replicas. A replica
    /// beyond that is kept while it is there, but may be evicted when idle.
    pub fn target(&self, replicas: u32) -> u32 {
        let wanted = if self.wanted && replicas == 0 { 1 } else { 0 };
        let target = wanted.max(self.scaled).max(self.policy.min_replicas);
        match self.policy.max_replicas {
            0 => target,
            max => target.min(max),
        }
    }

    pub fn want(&self) -> Want {
        match self.policy.device {
            herd_core::Device::Gpu => Want::Gpu,
            herd_core::Device::Any => Want::Any,
            herd_core::Device::Cpu => Want::Cpu,
        }
    }

    /// What placement gives it now: a GPU-only model standing in on a CPU may be
    /// placed in RAM while no GPU can take it; a `device = "any"` model whose GPU load
    /// failed goes to RAM.
    pub fn placement_want(&self) -> Want {
        match self.want() {
            Want::Gpu if self.stand_in => Want::Any,
            Want::Any if self.gpu_failed.is_some() => Want::Cpu,
            want => want,
        }
    }

    /// The settings an agent gets for one replica: pinned replicas never unload.
    pub fn settings_for(&self, pinned: bool) -> ModelSettings {
        let mut s = self.settings.clone();
        if pinned {
            s.ttl = Ttl::Never;
        }
        s
    }
}

/// Requests between two updates of a model's hedge delay.
const HEDGE_EVERY: u64 = 64;

/// Settings as the agent API carries them.
pub(crate) fn settings_message(settings: &ModelSettings) -> herd_proto::herd::ModelSettings {
    herd_proto::herd::ModelSettings {
        max_batch_size: settings.max_batch_size as u32,
        max_batch_delay_us: settings.max_batch_delay.as_micros() as u64,
        ttl_ms: settings.ttl.as_millis(),
        intra_op_threads: settings.intra_op_threads as u32,
        queue_capacity: settings.queue_capacity as u32,
        max_item_elements: settings.max_item_elements,
        max_queue_bytes: settings.max_queue_bytes.unwrap_or(0),
        max_batch_bytes: settings.max_batch_bytes.unwrap_or(0),
        memory_arena_off: !settings.memory_arena,
        intra_op_spinning_off: !settings.intra_op_spinning,
    }
}

impl ClusterModel {
    /// Adds a model to the catalog (at start, or found in the repository later); one
    /// already there stays as it is.
    pub fn add_model(&mut self, model: CatalogModel, announce: bool) {
        if self.models.contains_key(&model.name) {
            return;
        }
        if announce {
            self.events.push(
                "cataloged",
                "",
                &model.name,
                "added from the model repository",
            );
        }
        self.models.insert(model.name.clone(), model);
    }

    /// Brings a model in line with the repository as read again: a new model joins the
    /// catalog; a changed file (or a new version) replaces the old one, and its
    /// replicas are unloaded so that placement loads the new file where they were
    /// wanted (requests meanwhile wait for it); changed settings apply to replicas
    /// loaded from now on. Returns what to carry out.
    pub fn refresh_model(&mut self, new: CatalogModel, now: Instant) -> Vec<Action> {
        let Some(m) = self.models.get_mut(&new.name) else {
            let name = new.name.clone();
            self.add_model(new, true);
            tracing::info!(model = %name, "a new model in the repository");
            return vec![Action::Reconcile];
        };
        let mut actions = Vec::new();
        if m.settings != new.settings || m.policy != new.policy {
            let mut what = herd_core::settings_change::differences(&m.settings, &new.settings);
            what.extend(policy_differences(&m.policy, &new.policy));
            m.settings = new.settings.clone();
            m.policy = new.policy.clone();
            // Running replicas take the new settings live; placement follows the policy.
            let running: Vec<(String, bool)> = self
                .replicas_of(&new.name)
                .into_iter()
                .map(|(n, r)| (n, r.pinned))
                .collect();
            if let Some(m) = self.models.get(&new.name) {
                for (node, pinned) in &running {
                    actions.push(Action::Reconfigure {
                        model: new.name.clone(),
                        node: node.clone(),
                        settings: settings_message(&m.settings_for(*pinned)),
                    });
                }
            }
            self.events.push(
                "changed",
                "",
                &new.name,
                format!(
                    "herd.toml changed ({}): sent to {} running replicas",
                    what.join(", "),
                    running.len()
                ),
            );
            actions.push(Action::Reconcile);
        }
        let Some(m) = self.models.get_mut(&new.name) else {
            return actions;
        };
        // Files beside an Immich model are read at load: the next load takes them.
        m.immich = new.immich.clone();
        if m.digest == new.digest && m.version == new.version {
            return actions;
        }
        let why = format!(
            "the model file changed (version {} -> {}, sha256 {} -> {}): replicas load the new file",
            m.version,
            new.version,
            short(&m.digest),
            short(&new.digest)
        );
        m.version = new.version;
        m.digest = new.digest;
        m.path = new.path;
        m.file_bytes = new.file_bytes;
        m.measured = 0;
        m.load_error = None;
        // Whoever wanted the old file wants the new one: placement loads it again.
        let wanted_again = m.wanted || !self.replicas_of(&new.name).is_empty();
        self.events.push("changed", "", &new.name, why);
        let nodes: Vec<String> = self
            .replicas_of(&new.name)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for node in nodes {
            self.unload_replica(&new.name, &node, now);
            actions.push(Action::Unload {
                model: new.name.clone(),
                node,
            });
        }
        if let Some(m) = self.models.get_mut(&new.name) {
            m.wanted = wanted_again;
        }
        actions.push(Action::Reconcile);
        actions
    }

    /// The file of the catalog with this digest: only those are served to agents.
    pub fn file_with_digest(&self, digest: &str) -> Result<&Path, SchedulerError> {
        self.models
            .values()
            .find_map(|m| {
                if m.digest == digest {
                    return Some(m.path.as_path());
                }
                m.immich.as_ref()?.file_with_digest(digest)
            })
            .ok_or_else(|| SchedulerError::UnknownDigest(digest.to_string()))
    }

    /// Someone asks for a model (an admin load): it is wanted, and earlier failures
    /// are forgotten, so that placement tries again.
    pub fn want_model(&mut self, model: &str) -> Result<Vec<Action>, SchedulerError> {
        let m = self
            .models
            .get_mut(model)
            .ok_or_else(|| SchedulerError::UnknownModel(model.to_string()))?;
        m.wanted = true;
        m.unplaceable = None;
        m.load_error = None;
        Ok(vec![Action::Reconcile])
    }

    /// Unloads every replica of a model on request; it stays in the catalog, and the
    /// next request loads it again. Returns the nodes it was on.
    pub fn unload_model(
        &mut self,
        model: &str,
        now: Instant,
    ) -> Result<(Vec<String>, Vec<Action>), SchedulerError> {
        let m = self
            .models
            .get_mut(model)
            .ok_or_else(|| SchedulerError::UnknownModel(model.to_string()))?;
        m.wanted = false;
        m.scaled = 0;
        let nodes: Vec<String> = self
            .replicas_of(model)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let mut actions = Vec::new();
        for n in &nodes {
            self.unload_replica(model, n, now);
            self.events
                .push("unloaded", n, model, "unloaded on request");
            actions.push(Action::Unload {
                model: model.to_string(),
                node: n.clone(),
            });
        }
        actions.push(Action::Reconcile);
        Ok((nodes, actions))
    }

    /// A request was answered (or failed) after `micros`.
    pub fn request_done(&mut self, model: &str, ok: bool, micros: u64) {
        if let Some(m) = self.models.get_mut(model) {
            m.requests_total += 1;
            if ok {
                let _ = m.latency.record(micros.max(1));
                if m.latency.len() % HEDGE_EVERY == 0 {
                    let p99 = std::time::Duration::from_micros(m.latency.value_at_quantile(0.99));
                    m.hedge = super::routing::hedge_delay(m.latency.len(), p99);
                }
            } else {
                m.failures_total += 1;
            }
        }
    }
}

/// The placement settings that differ, as "name old -> new".
fn policy_differences(old: &ClusterPolicy, new: &ClusterPolicy) -> Vec<String> {
    let mut out = Vec::new();
    if old.min_replicas != new.min_replicas {
        out.push(format!(
            "min_replicas {} -> {}",
            old.min_replicas, new.min_replicas
        ));
    }
    if old.max_replicas != new.max_replicas {
        out.push(format!(
            "max_replicas {} -> {}",
            old.max_replicas, new.max_replicas
        ));
    }
    if old.device != new.device {
        out.push(format!("device {:?} -> {:?}", old.device, new.device));
    }
    if old.memory_hint != new.memory_hint {
        let hint = |h: Option<u64>| {
            h.map_or("none".to_string(), |b| {
                bytesize::ByteSize(b).display().iec().to_string()
            })
        };
        out.push(format!(
            "memory_hint {} -> {}",
            hint(old.memory_hint),
            hint(new.memory_hint)
        ));
    }
    out
}

/// The first characters of a digest, enough to tell two apart in a log line.
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}
