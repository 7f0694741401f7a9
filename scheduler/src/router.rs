//! Request routing: a request goes to a ready replica chosen by power-of-two-choices
//! on outstanding work; a model with no ready replica is placed and loaded first (one
//! load however many requests wait); a request whose replica fails on the way is
//! retried once on another.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herd_proto::inference::{ModelInferRequest, ModelInferResponse};
use rand::Rng;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::agent_link::AgentLink;
use crate::sender::{BatchSender, SendError};
use crate::state::Scheduler;

/// A replica chosen for one request; counts as outstanding work until dropped.
pub struct Picked {
    pub node: String,
    pub sender: BatchSender,
    pub link: AgentLink,
    outstanding: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Power of two choices: of two replicas drawn at random, the one with less work.
/// Cheaper than tracking every replica's load exactly, and nearly as good. On a tie
/// the one used last wins: its caches are warm, and at low load the others go idle
/// (and their memory back, through the TTL).
fn choose(loads: &[(usize, Instant)], rng: &mut impl Rng) -> usize {
    if loads.len() < 2 {
        return 0;
    }
    let a = rng.random_range(0..loads.len());
    let mut b = rng.random_range(0..loads.len() - 1);
    if b >= a {
        b += 1;
    }
    let (la, ua) = loads[a];
    let (lb, ub) = loads[b];
    if lb < la || (lb == la && ub > ua) {
        b
    } else {
        a
    }
}

impl Scheduler {
    /// A ready replica of `model`, not on `avoid`; places and waits for one if needed.
    pub async fn pick(
        &self,
        model: &str,
        avoid: Option<&str>,
        deadline: Instant,
    ) -> Result<Picked, Status> {
        let mut changes = self.changes();
        let mut asked = false;
        loop {
            {
                let mut c = self.lock();
                let Some(m) = c.models.get(model) else {
                    return Err(Status::not_found(format!(
                        "model '{model}' is not in the catalog"
                    )));
                };
                // Once this request has asked for a placement, the answer may be that
                // nothing fits, or that the load failed.
                if asked {
                    if let Some(why) = &m.unplaceable {
                        return Err(Status::resource_exhausted(why.clone()));
                    }
                    if let Some(why) = &m.load_error {
                        return Err(Status::failed_precondition(why.clone()));
                    }
                }
                let ready: Vec<(String, (usize, Instant))> = c
                    .ready_replicas(model)
                    .into_iter()
                    .filter(|(n, _)| Some(n.as_str()) != avoid)
                    .map(|(n, r)| (n, (r.outstanding.load(Ordering::Relaxed), r.last_used)))
                    .collect();
                if !ready.is_empty() {
                    let loads: Vec<(usize, Instant)> = ready.iter().map(|(_, l)| *l).collect();
                    let node = ready[choose(&loads, &mut rand::rng())].0.clone();
                    let key = (model.to_string(), node.clone());
                    let link = c.nodes.get(&node).map(|n| n.link.clone());
                    if let (Some(r), Some(link)) = (c.replicas.get_mut(&key), link) {
                        r.outstanding.fetch_add(1, Ordering::Relaxed);
                        r.last_used = Instant::now();
                        return Ok(Picked {
                            node,
                            sender: r.sender.clone(),
                            link,
                            outstanding: r.outstanding.clone(),
                        });
                    }
                }
                if !asked {
                    asked = true;
                    let placed = !c.replicas_of(model).is_empty();
                    if let Some(m) = c.models.get_mut(model) {
                        if !m.wanted && !placed {
                            m.cold_starts += 1;
                        }
                        m.wanted = true;
                        m.unplaceable = None;
                        m.load_error = None;
                    }
                    drop(c);
                    self.changed_and_reconcile();
                    continue;
                }
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Status::unavailable("the scheduler is stopping")),
                Err(_) => {
                    return Err(Status::unavailable(format!(
                        "model '{model}' has no ready replica yet (waited {} s); try again",
                        self.settings.load_timeout.as_secs()
                    )))
                }
            }
        }
    }

    /// Routes one inference request, retrying once on another replica when the first
    /// fails on the way (connection lost, agent down).
    pub async fn infer(
        &self,
        request: ModelInferRequest,
        timeout: Option<Duration>,
    ) -> Result<ModelInferResponse, Status> {
        let started = Instant::now();
        let model = request.model_name.clone();
        let deadline = started + timeout.unwrap_or(self.settings.load_timeout);
        let attempt = self.infer_once(&request, None, deadline, timeout);
        // The caller's deadline bounds the whole request, load and retry included.
        let result = match timeout {
            Some(t) => match tokio::time::timeout(t, attempt).await {
                Ok(r) => r,
                Err(_) => Err((
                    None,
                    SendError::Answer(Status::deadline_exceeded(format!(
                        "the request's deadline ({} ms) passed",
                        t.as_millis()
                    ))),
                )),
            },
            None => attempt.await,
        };
        let result = match result {
            Err((Some(node), SendError::Transport(status))) if retryable(&status) => {
                self.node_unreachable(&node, status.message());
                self.infer_once(
                    &request,
                    Some(&node),
                    deadline,
                    timeout.map(|t| t.saturating_sub(started.elapsed())),
                )
                .await
                .map_err(|(_, e)| e)
            }
            other => other.map_err(|(_, e)| e),
        };
        let mut c = self.lock();
        if let Some(m) = c.models.get_mut(&model) {
            m.requests_total += 1;
            match &result {
                Ok(_) => {
                    let _ = m
                        .latency
                        .record(started.elapsed().as_micros().max(1) as u64);
                }
                Err(_) => m.failures_total += 1,
            }
        }
        drop(c);
        result.map_err(|e| match e {
            SendError::Answer(s) | SendError::Transport(s) => s,
        })
    }

    async fn infer_once(
        &self,
        request: &ModelInferRequest,
        avoid: Option<&str>,
        deadline: Instant,
        timeout: Option<Duration>,
    ) -> Result<ModelInferResponse, (Option<String>, SendError)> {
        let picked = self
            .pick(&request.model_name, avoid, deadline)
            .await
            .map_err(|s| (None, SendError::Answer(s)))?;
        let remaining = timeout.map(|_| deadline.saturating_duration_since(Instant::now()));
        picked
            .sender
            .send(request.clone(), remaining)
            .await
            .map_err(|e| (Some(picked.node.clone()), e))
    }
}

fn retryable(status: &Status) -> bool {
    // The connection failed, not the request: another replica may well answer. (A
    // deadline or a cancellation is the request's own, and says nothing of the node.)
    matches!(status.code(), Code::Unavailable | Code::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_choices_prefer_the_less_loaded_replica() {
        let mut rng = rand::rng();
        let t = Instant::now();
        let loads = [(10, t), (0, t), (10, t), (10, t)];
        let picks: Vec<usize> = (0..2000).map(|_| choose(&loads, &mut rng)).collect();
        let idle = picks.iter().filter(|&&i| i == 1).count();
        // Replica 1 is chosen whenever it is drawn: with probability 1/2, not 1/4.
        assert!(idle > 800, "{idle} of 2000");
        assert_eq!(choose(&[(3, t)], &mut rng), 0);
    }

    #[test]
    fn on_equal_load_the_replica_used_last_wins() {
        let mut rng = rand::rng();
        let t = Instant::now();
        let later = t + std::time::Duration::from_millis(1);
        let loads = [(0, t), (0, later)];
        assert!((0..100).all(|_| choose(&loads, &mut rng) == 1));
    }
}
