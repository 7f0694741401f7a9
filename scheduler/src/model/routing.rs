//! Choosing a replica for one request: power-of-two-choices on outstanding work among
//! ready replicas; a model with none is asked for (placed and loaded by the next
//! placement round), and the request waits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::ClusterModel;
use crate::error::SchedulerError;

/// What a request does next.
#[derive(Debug)]
pub enum Pick {
    /// Go to this replica; its outstanding count already includes this request.
    Ready {
        node: String,
        outstanding: Arc<AtomicUsize>,
    },
    /// The model was asked for: run placement, then look again.
    Asked,
    /// Wait for the model to change, then look again.
    Wait,
}

/// Power of two choices: of two replicas drawn at random, the one with less work.
/// Cheaper than tracking every replica's load exactly, and nearly as good. On a tie
/// the one used last wins: its caches are warm, and at low load the others go idle
/// (and their memory back, through the TTL).
pub fn choose(loads: &[(usize, Instant)], rng: &mut impl Rng) -> usize {
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

/// Requests measured before a model's latency says when one is overdue.
const HEDGE_SAMPLES: u64 = 100;
/// An attempt overdue by this much is left to the link's keepalive, which fails it
/// within `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT` if the node is cut off: a second
/// attempt after longer would only add load.
const HEDGE_LIMIT: Duration = Duration::from_secs(3);

/// How long an attempt may go unanswered before the request is sent to a second
/// replica as well: four times the p99 latency of `samples` measured requests, at least
/// 200 ms; none while too few were measured, or past [`HEDGE_LIMIT`].
pub fn hedge_delay(samples: u64, p99: Duration) -> Option<Duration> {
    if samples < HEDGE_SAMPLES {
        return None;
    }
    let delay = (p99 * 4).max(Duration::from_millis(200));
    (delay < HEDGE_LIMIT).then_some(delay)
}

impl ClusterModel {
    /// When an attempt at `model` is overdue (see [`hedge_delay`]).
    pub fn hedge_after(&self, model: &str) -> Option<Duration> {
        self.models.get(model)?.hedge
    }

    /// A ready replica of `model`, not on `avoid`. `asked` says whether this request
    /// has asked for the model already: then a reason it cannot be placed or loaded is
    /// its answer. `stand_ins`: whether a CPU stand-in of a GPU-only model may take it.
    pub fn pick(
        &mut self,
        model: &str,
        avoid: Option<&str>,
        asked: bool,
        stand_ins: bool,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Result<Pick, SchedulerError> {
        let Some(m) = self.models.get(model) else {
            return Err(SchedulerError::UnknownModel(model.to_string()));
        };
        if asked {
            if let Some(why) = &m.unplaceable {
                return Err(SchedulerError::Unplaceable(why.clone()));
            }
            if let Some(why) = &m.load_error {
                return Err(SchedulerError::LoadFailed(why.clone()));
            }
        }
        let mut ready: Vec<(String, (usize, Instant))> = self
            .ready_replicas(model)
            .into_iter()
            .filter(|(n, _)| Some(n.as_str()) != avoid)
            .filter(|(_, r)| stand_ins || !self.is_stand_in(model, &r.device))
            .map(|(n, r)| (n, (r.outstanding.load(Ordering::Relaxed), r.last_used)))
            .collect();
        // A suspect node gets requests only when no other replica can take them.
        let suspect = |n: &str| self.nodes.get(n).is_some_and(|n| n.suspect);
        if ready.iter().any(|(n, _)| !suspect(n)) {
            ready.retain(|(n, _)| !suspect(n));
        }
        if !ready.is_empty() {
            let loads: Vec<(usize, Instant)> = ready.iter().map(|(_, l)| *l).collect();
            let chosen = choose(&loads, rng);
            let node = ready[chosen].0.clone();
            let key = (model.to_string(), node.clone());
            if let Some(r) = self.replicas.get_mut(&key) {
                r.outstanding.fetch_add(1, Ordering::Relaxed);
                r.last_used = now;
                tracing::debug!(
                    node = %node,
                    outstanding = loads[chosen].0,
                    candidates = loads.len(),
                    "replica chosen"
                );
                return Ok(Pick::Ready {
                    node,
                    outstanding: r.outstanding.clone(),
                });
            }
        }
        if asked {
            return Ok(Pick::Wait);
        }
        let placed = !self.replicas_of(model).is_empty();
        if let Some(m) = self.models.get_mut(model) {
            if !m.wanted && !placed {
                m.cold_starts += 1;
            }
            m.wanted = true;
            m.unplaceable = None;
            m.load_error = None;
        }
        tracing::debug!(placed, "no ready replica; asking for one");
        Ok(Pick::Asked)
    }
}
