//! Carries out what the model's transitions return: loads and unloads on agents (each
//! a task that reports its outcome back to the model), connections dropped for nodes
//! that went down, and wake-ups for placement and for whoever waits on a change.

use std::sync::Arc;
use std::time::Duration;

use herd_proto::herd::{LoadModelRequest, ModelSource, ReconfigureRequest, UnloadModelRequest};
use tokio::time::Instant;
use tracing::warn;

use crate::agent_link::AgentRpc;
use crate::error::SchedulerError;
use crate::model::Action;
use crate::state::Scheduler;

impl Scheduler {
    /// Carries out `actions`, then tells watchers the model changed.
    pub fn execute(self: &Arc<Self>, actions: Vec<Action>) {
        let mut reconcile = false;
        // Only the leader loads, unloads and reconfigures: a follower's model (from the
        // same reports) may come to the same conclusions, and must not act on them.
        let leads = self.role().is_leader();
        for action in actions {
            let acts_on_agents = matches!(
                action,
                Action::Load { .. } | Action::Unload { .. } | Action::Reconfigure { .. }
            );
            if acts_on_agents && !leads {
                tracing::debug!(?action, "not the leader: left to it");
                continue;
            }
            match action {
                Action::Load {
                    model,
                    node,
                    source,
                } => {
                    let agent = self.links().link(&node).map(|l| l.agent.clone());
                    match agent {
                        Some(agent) => {
                            tokio::spawn(load(self.clone(), model, node, source, agent));
                        }
                        None => {
                            let more = self.lock().load_failed(
                                &model,
                                &node,
                                "no connection to the node",
                                false,
                                Instant::now(),
                            );
                            reconcile |= !more.is_empty();
                        }
                    }
                }
                Action::Unload { model, node } => {
                    let agent = {
                        let mut links = self.links();
                        links.forget_sender(&model, &node);
                        links.link(&node).map(|l| l.agent.clone())
                    };
                    if let Some(agent) = agent {
                        tokio::spawn(unload_in_background(self.clone(), model, node, agent));
                    }
                }
                Action::Reconfigure {
                    model,
                    node,
                    settings,
                } => {
                    let agent = self.links().link(&node).map(|l| l.agent.clone());
                    if let Some(agent) = agent {
                        tokio::spawn(reconfigure(self.clone(), model, node, settings, agent));
                    }
                }
                Action::NodeDown { node } => self.links().forget_senders(&node),
                Action::Reconcile => reconcile = true,
            }
        }
        self.notify();
        if reconcile {
            self.reconcile.notify_one();
        }
    }
}

/// Unloads one replica on its agent.
pub(crate) async fn unload(mut agent: AgentRpc, model: &str) -> Result<(), SchedulerError> {
    agent
        .unload(UnloadModelRequest {
            name: model.to_string(),
        })
        .await
        .map(|_| ())
        .map_err(|s| SchedulerError::UnloadFailed {
            code: s.code(),
            message: s.message().to_string(),
        })
}

async fn unload_in_background(
    scheduler: Arc<Scheduler>,
    model: String,
    node: String,
    agent: AgentRpc,
) {
    if let Err(e) = unload(agent, &model).await {
        let SchedulerError::UnloadFailed { message, .. } = &e else {
            return;
        };
        warn!(model = %model, node = %node, error = %message, "unload failed");
        scheduler.lock().unload_failed(&model, &node, message);
        scheduler.notify();
    }
}

/// Gives one running replica new settings; the outcome is an event.
async fn reconfigure(
    scheduler: Arc<Scheduler>,
    model: String,
    node: String,
    settings: herd_proto::herd::ModelSettings,
    mut agent: AgentRpc,
) {
    let request = ReconfigureRequest {
        name: model.clone(),
        settings: Some(settings),
    };
    let result = agent.reconfigure(request).await;
    let mut c = scheduler.lock();
    match result {
        Ok(r) => {
            let how = match r.into_inner().applied.as_str() {
                "live" => "applied live".to_string(),
                "new worker" => {
                    "its worker restarts with them once its queue drains (threads or the arena changed)"
                        .to_string()
                }
                other => format!("the replica was {other}: its next load uses them"),
            };
            c.reconfigured(&model, &node, &how);
        }
        Err(status) => {
            warn!(model = %model, node = %node, error = %status.message(), "reconfigure failed");
            c.reconfigure_failed(&model, &node, status.message());
        }
    }
    drop(c);
    scheduler.notify();
}

/// Loads one replica and reports the outcome to the model.
async fn load(
    scheduler: Arc<Scheduler>,
    model: String,
    node: String,
    source: ModelSource,
    mut agent: AgentRpc,
) {
    let started = Instant::now();
    let mut request = tonic::Request::new(LoadModelRequest {
        model: Some(source),
    });
    request.set_timeout(scheduler.settings.load_timeout.max(Duration::from_secs(1)));
    let result = agent.load(request).await;
    let actions = {
        let mut c = scheduler.lock();
        match result {
            Ok(r) => {
                let r = r.into_inner();
                let now = Instant::now();
                c.loaded(
                    &model,
                    &node,
                    r.memory_bytes,
                    r.fetched,
                    now.saturating_duration_since(started),
                    now,
                );
                Vec::new()
            }
            Err(status) => {
                let unreachable = SchedulerError::agent(&status).is_unreachable();
                c.load_failed(&model, &node, status.message(), unreachable, Instant::now())
            }
        }
    };
    scheduler.execute(actions);
}
