//! Request routing: a request goes to a ready replica the model picks (power of two
//! choices); a model with no ready replica is asked for and the request waits for the
//! load (one load however many requests wait); a request whose replica fails on the
//! way is retried once on another.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herd_proto::inference::{ModelInferRequest, ModelInferResponse};
use tokio::time::Instant;
use tracing::debug;

use crate::agent_link::AgentLink;
use crate::error::SchedulerError;
use crate::model::Pick;
use crate::sender::{BatchSender, SendError};
use crate::state::Scheduler;

/// A replica chosen for one request; counts as outstanding work until dropped.
pub struct Picked {
    pub node: String,
    pub sender: BatchSender,
    pub link: AgentLink,
    outstanding: Arc<AtomicUsize>,
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a failed attempt is tried again, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The node could not be reached: it is marked down, and another replica tried.
    Elsewhere,
    /// The replica's agent answered UNAVAILABLE (its model worker died or was
    /// unloaded under the request): any replica, the same one included (the agent loads
    /// the model afresh).
    Anywhere,
}

/// Whether a failed attempt is worth another; the request's own failures (invalid
/// input, its deadline) are not.
pub fn retry(e: &SendError) -> Option<Retry> {
    match e {
        SendError::Transport(e) if e.is_unreachable() => Some(Retry::Elsewhere),
        SendError::Answer(e) if e.code() == tonic::Code::Unavailable => Some(Retry::Anywhere),
        _ => None,
    }
}

impl Scheduler {
    /// A ready replica of `model`, not on `avoid`; places and waits for one if needed.
    pub async fn pick(
        &self,
        model: &str,
        avoid: Option<&str>,
        deadline: Instant,
    ) -> Result<Picked, SchedulerError> {
        let mut changes = self.changes();
        let mut asked = false;
        let mut looked_on_disk = false;
        loop {
            let pick = self
                .lock()
                .pick(model, avoid, asked, Instant::now(), &mut rand::rng());
            let pick = match pick {
                // A model directory added since the last rescan loads on its first
                // request. The answer stays NOT_FOUND naming only the model: a reason
                // from the disk could carry server paths.
                Err(e @ SchedulerError::UnknownModel(_)) if !looked_on_disk => {
                    looked_on_disk = true;
                    if crate::rescan::find_new(self, model).await.is_err() {
                        return Err(e);
                    }
                    continue;
                }
                other => other?,
            };
            match pick {
                Pick::Ready { node, outstanding } => {
                    let (sender, link) = {
                        let mut links = self.links();
                        (links.sender(model, &node), links.link(&node).cloned())
                    };
                    let picked = |sender, link| Picked {
                        node: node.clone(),
                        sender,
                        link,
                        outstanding: outstanding.clone(),
                    };
                    match (sender, link) {
                        (Some(sender), Some(link)) => return Ok(picked(sender, link)),
                        // No connection (yet) to a node the model knows: count the pick
                        // out and wait for a change.
                        _ => {
                            outstanding.fetch_sub(1, Ordering::Relaxed);
                            debug!(node = %node, "no connection to the chosen node");
                        }
                    }
                }
                Pick::Asked => {
                    asked = true;
                    self.changed_and_reconcile();
                    continue;
                }
                Pick::Wait => {}
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(SchedulerError::Stopping),
                Err(_) => {
                    return Err(SchedulerError::NoReplicaYet {
                        model: model.to_string(),
                        waited_s: self.settings.load_timeout.as_secs(),
                    })
                }
            }
        }
    }

    /// Routes one inference request, retrying once on another replica when the first
    /// fails on the way (connection lost, agent down). Runs in the request's span.
    pub async fn infer(
        self: &Arc<Self>,
        request: ModelInferRequest,
        timeout: Option<Duration>,
        request_id: &str,
    ) -> Result<ModelInferResponse, SchedulerError> {
        let started = Instant::now();
        let model = request.model_name.clone();
        let deadline = started + timeout.unwrap_or(self.settings.load_timeout);
        let attempt = self.infer_once(&request, None, deadline, timeout, request_id);
        // The caller's deadline bounds the whole request, load and retry included.
        let result = match timeout {
            Some(t) => match tokio::time::timeout(t, attempt).await {
                Ok(r) => r,
                Err(_) => Err((
                    None,
                    SendError::Answer(SchedulerError::DeadlineExceeded(t.as_millis())),
                )),
            },
            None => attempt.await,
        };
        let result = match result {
            Err((Some(node), e)) => match retry(&e) {
                Some(again) => {
                    debug!(node = %node, error = %e.as_inner(), ?again, "retrying");
                    let avoid = match again {
                        Retry::Elsewhere => {
                            self.node_unreachable(&node, &e.as_inner().to_string());
                            Some(node.as_str())
                        }
                        Retry::Anywhere => None,
                    };
                    self.infer_once(
                        &request,
                        avoid,
                        deadline,
                        timeout.map(|t| t.saturating_sub(started.elapsed())),
                        request_id,
                    )
                    .await
                    .map_err(|(_, e)| e)
                }
                None => Err(e),
            },
            other => other.map_err(|(_, e)| e),
        };
        let micros = started.elapsed().as_micros().min(u64::MAX as u128) as u64;
        self.lock().request_done(&model, result.is_ok(), micros);
        result.map_err(SendError::into_inner)
    }

    async fn infer_once(
        &self,
        request: &ModelInferRequest,
        avoid: Option<&str>,
        deadline: Instant,
        timeout: Option<Duration>,
        request_id: &str,
    ) -> Result<ModelInferResponse, (Option<String>, SendError)> {
        let picked = self
            .pick(&request.model_name, avoid, deadline)
            .await
            .map_err(|e| (None, SendError::Answer(e)))?;
        debug!(node = %picked.node, "routed");
        let remaining = timeout.map(|_| deadline.saturating_duration_since(Instant::now()));
        picked
            .sender
            .send(request.clone(), remaining, request_id)
            .await
            .map_err(|e| (Some(picked.node.clone()), e))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn agent(code: Code) -> SchedulerError {
        SchedulerError::Agent {
            code,
            message: "m".into(),
        }
    }

    #[test]
    fn only_failures_of_the_way_or_the_worker_are_tried_again() {
        assert_eq!(
            retry(&SendError::Transport(agent(Code::Unavailable))),
            Some(Retry::Elsewhere)
        );
        assert_eq!(
            retry(&SendError::Answer(agent(Code::Unavailable))),
            Some(Retry::Anywhere),
            "a worker that died under the request"
        );
        for code in [
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Internal,
        ] {
            assert_eq!(retry(&SendError::Answer(agent(code))), None, "{code:?}");
        }
        assert_eq!(
            retry(&SendError::Transport(SchedulerError::SenderStopped)),
            None
        );
    }
}
