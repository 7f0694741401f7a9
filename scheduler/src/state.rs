//! The scheduler's shared state: the model behind one lock, the live connections behind
//! another, and the transitions that come from outside (agents joining and reporting,
//! nodes going silent), each a model transition followed by its actions.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herd_proto::herd::AgentStatus;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::agent_link::AgentLink;
use crate::error::SchedulerError;
use crate::links::Links;
use crate::model::{ClusterModel, Reported};
use crate::placement::Policy;
use crate::store::Store;

pub struct Settings {
    pub token: String,
    pub report_interval: Duration,
    pub down_after: u32,
    pub policy: Policy,
    pub headroom: f64,
    pub load_timeout: Duration,
    pub target_ongoing_requests: f64,
    pub upscale_delay: Duration,
    /// Settings of models whose herd.toml is silent.
    pub model_defaults: herd_core::ModelSettings,
    /// How often the repository is read again; zero: never (only at start, and for a
    /// request naming a model the catalog lacks).
    pub rescan_interval: Duration,
    /// Largest inference message the gateway takes or sends (--max-message-size).
    pub max_message_size: usize,
    /// Bytes of requests the gateway holds at once (--max-in-flight-bytes).
    pub max_in_flight_bytes: usize,
    /// How long a request waits for a node it woke to join (--wake-timeout).
    pub wake_timeout: Duration,
    /// The cluster CA and this scheduler's certificate; `None`: plain text (--tls off).
    pub tls: Option<std::sync::Arc<crate::cluster_tls::ClusterTls>>,
    /// What this scheduler tells its peers to call it at (--advertise).
    pub advertise: crate::advertise::Advertise,
    /// The Immich model cache (--immich-models), read with the repository.
    pub immich_models: Option<std::path::PathBuf>,
}

impl Settings {
    /// The cluster CA's certificate, which agents' certificates come from.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca.cert_pem())
    }
}

pub struct Scheduler {
    model: Mutex<ClusterModel>,
    links: Mutex<Links>,
    /// Bumped on every change that a waiter or watcher may care about.
    changed: watch::Sender<u64>,
    /// Wakes the placement loop.
    pub reconcile: Notify,
    /// Placement rounds finished: lets a test wait for a round instead of a while.
    rounds: watch::Sender<u64>,
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    pub repository: std::path::PathBuf,
    /// Calls to the scheduler's gRPC services, by method and status, for /metrics.
    pub grpc_metrics: herd_core::layers::GrpcMetrics,
    /// Model file digests by path, so that reading the repository again hashes only
    /// files that changed.
    pub digests: Arc<crate::rescan::DigestCache>,
    /// This scheduler's part in the election (see `serve`): what it may write.
    role: watch::Sender<crate::leader::Role>,
    /// The link a follower forwards to the leader on.
    pub(crate) leader_links: crate::forward::LeaderLinks,
}

impl Scheduler {
    pub fn new(
        model: ClusterModel,
        settings: Settings,
        store: Arc<dyn Store>,
        repository: std::path::PathBuf,
    ) -> Arc<Scheduler> {
        Scheduler::with_digests(model, settings, store, repository, Arc::default())
    }

    /// As `new`, keeping the digests the catalog was read with.
    pub fn with_digests(
        model: ClusterModel,
        settings: Settings,
        store: Arc<dyn Store>,
        repository: std::path::PathBuf,
        digests: Arc<crate::rescan::DigestCache>,
    ) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            model: Mutex::new(model),
            links: Mutex::new(Links::default()),
            changed: watch::Sender::new(0),
            reconcile: Notify::new(),
            rounds: watch::Sender::new(0),
            settings,
            store,
            repository,
            grpc_metrics: herd_core::layers::GrpcMetrics::new(),
            digests,
            // The sole scheduler of a store until an election says otherwise.
            role: watch::Sender::new(crate::leader::Role::Leader { revision: 0 }),
            leader_links: Default::default(),
        })
    }

    /// The model. Held briefly: never across an await or a placement solve.
    pub fn lock(&self) -> MutexGuard<'_, ClusterModel> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn links(&self) -> MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This scheduler's part in the election now.
    pub fn role(&self) -> crate::leader::Role {
        self.role.borrow().clone()
    }

    /// This scheduler's part in the election, as it changes.
    pub fn roles(&self) -> watch::Receiver<crate::leader::Role> {
        self.role.subscribe()
    }

    /// Follows the election's roles until it ends.
    pub(crate) async fn follow_roles(&self, mut roles: watch::Receiver<crate::leader::Role>) {
        loop {
            self.role.send_replace(roles.borrow_and_update().clone());
            if roles.changed().await.is_err() {
                return;
            }
        }
    }

    pub fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// An agent joins (or joins again).
    pub fn join(
        self: &Arc<Self>,
        name: &str,
        address: &str,
        status: AgentStatus,
    ) -> Result<(), SchedulerError> {
        // Checked before the address is parsed, so that an empty one gets this answer.
        if name.is_empty() || address.is_empty() {
            return Err(SchedulerError::JoinWithoutName);
        }
        let link = AgentLink::new(
            address,
            Some(&self.settings.token),
            self.settings.max_message_size,
            self.settings.ca_pem(),
        )?;
        let actions = self.lock().join(name, address, status, Instant::now())?;
        self.links().connect(name, address, link);
        self.execute(actions);
        Ok(())
    }

    /// A periodic report. One from a node the scheduler does not know (it restarted)
    /// counts as a join.
    pub fn report(
        self: &Arc<Self>,
        name: &str,
        address: &str,
        status: AgentStatus,
    ) -> Result<(), SchedulerError> {
        let reported = self
            .lock()
            .report(name, address, status.clone(), Instant::now());
        match reported {
            Reported::Known(actions) => {
                self.execute(actions);
                Ok(())
            }
            Reported::Unknown => self.join(name, address, status),
        }
    }

    /// Marks nodes silent for too long as down; their replicas go, to be placed again.
    pub fn check_liveness(self: &Arc<Self>) {
        let actions = self.lock().mark_silent_down(Instant::now());
        if !actions.is_empty() {
            self.execute(actions);
        }
    }

    /// A call to the node failed at the transport: treat it as down at once rather than
    /// waiting for its reports to stop.
    pub fn node_unreachable(self: &Arc<Self>, node: &str, error: &str) {
        let actions = self.lock().node_unreachable(node, error);
        if !actions.is_empty() {
            self.execute(actions);
        }
    }

    /// Counts placement rounds as they finish.
    pub fn placement_rounds(&self) -> watch::Receiver<u64> {
        self.rounds.subscribe()
    }

    pub(crate) fn round_done(&self) {
        self.rounds.send_modify(|n| *n += 1);
    }

    pub fn changed_and_reconcile(&self) {
        self.notify();
        self.reconcile.notify_one();
    }
}
