//! The scheduler's shared state and what changes it: agents joining and reporting,
//! nodes going down, and notifying whoever waits for a change.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herd_proto::herd::AgentStatus;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tonic::Status;

use crate::agent_link::AgentLink;
use crate::cluster::{Cluster, Node};
use crate::placement::Policy;
use crate::sender::BatchSender;
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
}

pub struct Scheduler {
    cluster: Mutex<Cluster>,
    /// Bumped on every change that a waiter or watcher may care about.
    changed: watch::Sender<u64>,
    /// Wakes the placement loop.
    pub reconcile: Notify,
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    pub repository: std::path::PathBuf,
    pub started: Instant,
}

impl Scheduler {
    pub fn new(
        cluster: Cluster,
        settings: Settings,
        store: Arc<dyn Store>,
        repository: std::path::PathBuf,
    ) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            cluster: Mutex::new(cluster),
            changed: watch::Sender::new(0),
            reconcile: Notify::new(),
            settings,
            store,
            repository,
            started: Instant::now(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// An agent joins (or joins again). A name already taken by a live node at another
    /// address is refused, so two agents never pass for one.
    pub fn join(&self, name: &str, address: &str, status: AgentStatus) -> Result<(), Status> {
        if name.is_empty() || address.is_empty() {
            return Err(Status::invalid_argument(
                "join: the agent must give its name and address",
            ));
        }
        let link = AgentLink::new(address, Some(&self.settings.token))
            .map_err(Status::invalid_argument)?;
        let mut c = self.lock();
        if let Some(n) = c.nodes.get(name) {
            if !n.down && n.address != address && n.last_report.elapsed() < self.down_after() {
                return Err(Status::already_exists(format!(
                    "a node named {name:?} is already in the cluster at {}; give this agent another --name",
                    n.address
                )));
            }
        }
        let rejoin = c.nodes.contains_key(name);
        let draining = c.nodes.get(name).is_some_and(|n| n.draining);
        c.nodes.insert(
            name.to_string(),
            Node {
                name: name.to_string(),
                address: address.to_string(),
                status: status.clone(),
                last_report: Instant::now(),
                down: false,
                draining,
                link: link.clone(),
            },
        );
        // Replicas it had before a restart are gone unless it reports them ready.
        c.sync_replicas(name, &status, self.grace(), |_| {
            BatchSender::start(link.agent.clone())
        });
        let what = if rejoin { "joined again" } else { "joined" };
        c.events
            .push("joined", name, "", format!("{what} from {address}"));
        drop(c);
        self.changed_and_reconcile();
        Ok(())
    }

    /// A periodic report. One from a node the scheduler does not know (it restarted)
    /// counts as a join.
    pub fn report(&self, name: &str, address: &str, status: AgentStatus) -> Result<(), Status> {
        let known = self
            .lock()
            .nodes
            .get(name)
            .is_some_and(|n| n.address == address);
        if !known {
            return self.join(name, address, status);
        }
        let mut c = self.lock();
        let link = match c.nodes.get_mut(name) {
            Some(n) => {
                let was_down = n.down;
                n.status = status.clone();
                n.last_report = Instant::now();
                n.down = false;
                if was_down {
                    c.events.push("up", name, "", "reports again");
                }
                c.nodes.get(name).map(|n| n.link.clone())
            }
            None => None,
        };
        if let Some(link) = link {
            c.sync_replicas(name, &status, self.grace(), |_| {
                BatchSender::start(link.agent.clone())
            });
        }
        drop(c);
        self.notify();
        Ok(())
    }

    /// How old news a report can be: a report is taken a while before it arrives.
    fn grace(&self) -> Duration {
        self.settings.report_interval * 2
    }

    pub fn down_after(&self) -> Duration {
        self.settings.report_interval * self.settings.down_after.max(1)
    }

    /// Marks nodes silent for too long as down; their replicas go, to be placed again.
    pub fn check_liveness(&self) {
        let limit = self.down_after();
        let mut c = self.lock();
        let silent: Vec<String> = c
            .nodes
            .values()
            .filter(|n| !n.down && n.last_report.elapsed() > limit)
            .map(|n| n.name.clone())
            .collect();
        if silent.is_empty() {
            return;
        }
        for name in &silent {
            mark_down(
                &mut c,
                name,
                &format!("no report for {} ms", limit.as_millis()),
            );
        }
        drop(c);
        self.changed_and_reconcile();
    }

    /// A call to the node failed at the transport: treat it as down at once rather than
    /// waiting for its reports to stop.
    pub fn node_unreachable(&self, node: &str, error: &str) {
        let mut c = self.lock();
        if c.nodes.get(node).is_some_and(|n| !n.down) {
            mark_down(&mut c, node, &format!("unreachable: {error}"));
            drop(c);
            self.changed_and_reconcile();
        }
    }

    pub fn changed_and_reconcile(&self) {
        self.notify();
        self.reconcile.notify_one();
    }
}

fn mark_down(c: &mut Cluster, name: &str, why: &str) {
    if let Some(n) = c.nodes.get_mut(name) {
        n.down = true;
    }
    let keys: Vec<(String, String)> = c
        .replicas
        .keys()
        .filter(|(_, n)| n == name)
        .cloned()
        .collect();
    for k in keys {
        c.replicas.remove(&k);
    }
    c.events.push("down", name, "", why.to_string());
}
