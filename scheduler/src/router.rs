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

use herd_core::priority::Priority;

use crate::agent_link::AgentLink;
use crate::error::SchedulerError;
use crate::forward::{forwarded, leader_gone, LeaderLink, Route};
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
    /// An interactive request may use a CPU stand-in for a GPU-only model while its GPU
    /// node wakes (see `model::stand_in`); a bulk one waits for the GPU.
    pub async fn pick(
        &self,
        model: &str,
        avoid: Option<&str>,
        deadline: Instant,
        priority: Priority,
    ) -> Result<Picked, SchedulerError> {
        let mut changes = self.changes();
        let mut asked = false;
        let mut looked_on_disk = false;
        let mut waited_on_wake = false;
        let interactive = priority == Priority::Interactive;
        let mut stood_in = false;
        loop {
            let pick = self.lock().pick(
                model,
                avoid,
                asked,
                interactive,
                Instant::now(),
                &mut rand::rng(),
            );
            // Only the leader places (or wakes): a follower with no ready replica hands
            // the call to it.
            if !self.role().is_leader()
                && matches!(
                    pick,
                    Ok(Pick::Asked | Pick::Wait) | Err(SchedulerError::Unplaceable(_))
                )
            {
                return Err(SchedulerError::ToLeader);
            }
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
                // No node up can hold the model: one asleep may, once woken. Once it
                // has joined, placement is asked again (its last answer predates the
                // join).
                Err(e @ SchedulerError::Unplaceable(_)) => {
                    if self.wake_for(model).await {
                        if interactive && !std::mem::replace(&mut stood_in, true) {
                            let mut cluster = self.lock();
                            let waking = cluster.waking_names();
                            let standing = cluster.stand_in(model, &waking);
                            drop(cluster);
                            if standing {
                                asked = false;
                                continue;
                            }
                        }
                        waited_on_wake = true;
                        Pick::Wait
                    } else if std::mem::take(&mut waited_on_wake) {
                        asked = false;
                        continue;
                    } else {
                        return Err(e);
                    }
                }
                other => other?,
            };
            match pick {
                Pick::Ready { node, outstanding } => {
                    if let Some(picked) = self.connected(model, node, outstanding) {
                        return Ok(picked);
                    }
                    // No connection (yet) to a node the model knows: wait for a change.
                }
                Pick::Asked => {
                    asked = true;
                    self.changed_and_reconcile();
                    continue;
                }
                Pick::Wait => {
                    // Bulk work held off a CPU stand-in waits for the GPU node's wake,
                    // and keeps it going.
                    if !interactive && self.lock().model(model).is_some_and(|m| m.stand_in) {
                        waited_on_wake |= self.wake_for(model).await;
                    }
                }
            }
            // A wake sends its packet again now and then, whether or not anything changes
            // meanwhile (a cluster whose only node sleeps hears nothing).
            let until = if waited_on_wake {
                deadline.min(Instant::now() + crate::model::RESEND_EVERY)
            } else {
                deadline
            };
            match tokio::time::timeout_at(until, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(SchedulerError::Stopping),
                Err(_) if until < deadline => {}
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
    /// fails on the way (connection lost, agent down), and sending it to a second
    /// replica as well when the first is overdue. Runs in the request's span.
    pub async fn infer(
        self: &Arc<Self>,
        request: ModelInferRequest,
        timeout: Option<Duration>,
        request_id: &str,
        priority: Priority,
        forwarded: bool,
    ) -> Result<ModelInferResponse, SchedulerError> {
        let started = Instant::now();
        let model = request.model_name.clone();
        // Without a deadline of its own, a request may wait out a wake as well as a load.
        let waits = self.settings.load_timeout.max(self.settings.wake_timeout);
        let deadline = started + timeout.unwrap_or(waits);
        let attempt = Attempt {
            request: &request,
            deadline,
            timed: timeout.is_some(),
            request_id,
            priority,
            forwarded,
        };
        let routed = self.route(&attempt);
        // The caller's deadline bounds the whole request, load and retry included.
        let result = match timeout {
            Some(t) => match tokio::time::timeout(t, routed).await {
                Ok(r) => r,
                Err(_) => Err(SendError::Answer(SchedulerError::DeadlineExceeded(
                    t.as_millis(),
                ))),
            },
            None => routed.await,
        };
        let micros = started.elapsed().as_micros().min(u64::MAX as u128) as u64;
        self.lock().request_done(&model, result.is_ok(), micros);
        result.map_err(SendError::into_inner)
    }

    /// Here when a replica is ready (or this scheduler leads), else at the leader; a
    /// leader lost under a forwarded request is waited out and the request sent again,
    /// here or at the next leader.
    async fn route(
        self: &Arc<Self>,
        attempt: &Attempt<'_>,
    ) -> Result<ModelInferResponse, SendError> {
        loop {
            match self.route_here(attempt).await {
                Err(SendError::Answer(SchedulerError::ToLeader)) => {}
                done => return done,
            }
            let route = self
                .leader_route(attempt.forwarded, attempt.deadline)
                .await
                .map_err(SendError::Answer)?;
            let Route::Leader(leader) = route else {
                continue;
            };
            debug!(leader = %leader.address, "no ready replica here; forwarded to the leader");
            match attempt.forward(&leader).await {
                Ok(answer) => return Ok(answer),
                Err(status) if leader_gone(&status) => {
                    if !self.leader_moved(&leader.address, attempt.deadline).await {
                        return Err(SendError::Answer(SchedulerError::agent(&status)));
                    }
                }
                Err(status) => return Err(SendError::Answer(SchedulerError::agent(&status))),
            }
        }
    }

    /// The first attempt, a second one if the first is overdue, a retry if the first
    /// fails on the way.
    async fn route_here(
        self: &Arc<Self>,
        attempt: &Attempt<'_>,
    ) -> Result<ModelInferResponse, SendError> {
        let model = &attempt.request.model_name;
        let first = self
            .pick(model, None, attempt.deadline, attempt.priority)
            .await
            .map_err(SendError::Answer)?;
        debug!(node = %first.node, "routed");
        let mut sent = Box::pin(attempt.send(&first));
        let hedge = self.lock().hedge_after(model);
        let outcome = match hedge {
            None => (&mut sent).await,
            Some(after) => match tokio::time::timeout(after, &mut sent).await {
                Ok(outcome) => outcome,
                Err(_) => match self.overdue(model, &first.node, after) {
                    None => (&mut sent).await,
                    Some(second) => {
                        debug!(node = %first.node, other = %second.node, "overdue; sent to a second replica as well");
                        let other = attempt.send(&second);
                        return self.first_answer(sent, &first.node, other).await;
                    }
                },
            },
        };
        let e = match outcome {
            Err(e) => e,
            ok => return ok,
        };
        let Some(again) = retry(&e) else {
            return Err(e);
        };
        debug!(node = %first.node, error = %e.as_inner(), ?again, "retrying");
        let avoid = match again {
            Retry::Elsewhere => {
                self.node_unreachable(&first.node, &e.as_inner().to_string());
                Some(first.node.as_str())
            }
            Retry::Anywhere => None,
        };
        let second = self
            .pick(model, avoid, attempt.deadline, attempt.priority)
            .await
            .map_err(SendError::Answer)?;
        // The first replica's count of outstanding work goes before the retry.
        drop(sent);
        drop(first);
        attempt.send(&second).await
    }

    /// The first attempt at `model` on `node` is `after` overdue: the node is suspect,
    /// and another ready replica, if there is one now, takes the request as well. None
    /// is waited for or loaded: that would only add load while the keepalive decides.
    fn overdue(&self, model: &str, node: &str, after: Duration) -> Option<Picked> {
        let why = format!(
            "a request for model '{model}' went unanswered for {} ms (4 times its p99 latency)",
            after.as_millis()
        );
        let pick = {
            let mut c = self.lock();
            c.suspect(node, &why);
            let stand_ins = true;
            match c.pick(
                model,
                Some(node),
                true,
                stand_ins,
                Instant::now(),
                &mut rand::rng(),
            ) {
                // Every replica overdue is overload, not a dead link: a second copy of
                // each request would only double it.
                Ok(Pick::Ready { node, outstanding })
                    if c.node(&node).is_some_and(|n| n.suspect) =>
                {
                    outstanding.fetch_sub(1, Ordering::Relaxed);
                    None
                }
                Ok(Pick::Ready { node, outstanding }) => Some((node, outstanding)),
                _ => None,
            }
        };
        self.notify();
        let (node, outstanding) = pick?;
        self.connected(model, node, outstanding)
    }

    /// The chosen replica with its sender and link, or None, the pick counted out
    /// again, when the scheduler has no connection to its node (yet).
    fn connected(
        &self,
        model: &str,
        node: String,
        outstanding: Arc<AtomicUsize>,
    ) -> Option<Picked> {
        let (sender, link) = {
            let mut links = self.links();
            (links.sender(model, &node), links.link(&node).cloned())
        };
        match (sender, link) {
            (Some(sender), Some(link)) => Some(Picked {
                node,
                sender,
                link,
                outstanding,
            }),
            _ => {
                outstanding.fetch_sub(1, Ordering::Relaxed);
                debug!(node = %node, "no connection to the chosen node");
                None
            }
        }
    }

    /// The first success of two attempts, or the later failure. A first attempt that
    /// failed on the way marks its node down, as a retried one does.
    async fn first_answer(
        self: &Arc<Self>,
        first: impl std::future::Future<Output = Result<ModelInferResponse, SendError>>,
        first_node: &str,
        second: impl std::future::Future<Output = Result<ModelInferResponse, SendError>>,
    ) -> Result<ModelInferResponse, SendError> {
        tokio::pin!(first, second);
        tokio::select! {
            r = &mut first => match r {
                Ok(answer) => Ok(answer),
                Err(e) => {
                    if retry(&e) == Some(Retry::Elsewhere) {
                        self.node_unreachable(first_node, &e.as_inner().to_string());
                    }
                    second.await
                }
            },
            r = &mut second => match r {
                Ok(answer) => Ok(answer),
                Err(_) => first.await,
            },
        }
    }
}

/// One request as its attempts send it.
struct Attempt<'a> {
    request: &'a ModelInferRequest,
    deadline: Instant,
    /// Whether the caller set a deadline: the agent is told what is left of it.
    timed: bool,
    request_id: &'a str,
    priority: Priority,
    /// Another scheduler sent it here: it is not sent on.
    forwarded: bool,
}

impl Attempt<'_> {
    /// Sends the request to the leader's gateway, with what is left of its deadline
    /// and its class.
    async fn forward(&self, leader: &LeaderLink) -> Result<ModelInferResponse, tonic::Status> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let mut request = forwarded(self.request.clone(), Some(remaining));
        if let Ok(v) = self.request_id.parse() {
            request
                .metadata_mut()
                .insert(herd_core::layers::request_id::REQUEST_ID_HEADER, v);
        }
        if let Ok(v) = self.priority.as_str().parse() {
            request
                .metadata_mut()
                .insert(herd_core::priority::HEADER, v);
        }
        let mut inference = leader.inference.clone();
        Ok(inference.model_infer(request).await?.into_inner())
    }

    async fn send(&self, picked: &Picked) -> Result<ModelInferResponse, SendError> {
        let remaining = self
            .timed
            .then(|| self.deadline.saturating_duration_since(Instant::now()));
        picked
            .sender
            .send_as(
                self.request.clone(),
                remaining,
                self.request_id,
                self.priority,
            )
            .await
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
