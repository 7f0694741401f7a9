//! Replica scaling, as Ray Serve's target_ongoing_requests: when requests in flight
//! per ready replica stay above the target for the upscale delay, one more replica is
//! wanted (up to max_replicas and what fits). Idle replicas go through the agents' TTL.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{Action, ClusterModel, ReplicaState};

/// Whether a model should scale up now, from its load and how long it has lasted.
pub fn should_scale(
    in_flight: usize,
    ready: usize,
    target: f64,
    busy_since: Option<Instant>,
    delay: Duration,
    now: Instant,
) -> (bool, Option<Instant>) {
    if ready == 0 || (in_flight as f64) / (ready as f64) <= target {
        return (false, None);
    }
    let since = busy_since.unwrap_or(now);
    (now.duration_since(since) >= delay, Some(since))
}

impl ClusterModel {
    /// Asks for one more replica of each model busy above `target` for `delay`, and
    /// ends extra demand for models with no work.
    pub fn scale(&mut self, target: f64, delay: Duration, now: Instant) -> Vec<Action> {
        let mut scaled_any = false;
        let names: Vec<String> = self.models.keys().cloned().collect();
        for name in names {
            let replicas = self.replicas_of(&name);
            let ready = replicas
                .iter()
                .filter(|(_, r)| r.state == ReplicaState::Ready)
                .count();
            let loading = replicas.len() - ready;
            let in_flight: usize = replicas
                .iter()
                .map(|(_, r)| r.outstanding.load(Ordering::Relaxed))
                .sum();
            let Some(m) = self.models.get_mut(&name) else {
                continue;
            };
            let (scale, since) = should_scale(in_flight, ready, target, m.busy_since, delay, now);
            m.busy_since = since;
            let room = m.policy.max_replicas == 0 || (ready as u32) < m.policy.max_replicas;
            if scale && loading == 0 && room && m.unplaceable.is_none() {
                m.scaled = ready as u32 + 1;
                m.busy_since = None;
                let msg = format!(
                    "{in_flight} requests in flight on {ready} replicas, above {target} each"
                );
                self.events.push("scaled", "", &name, msg);
                scaled_any = true;
            } else if ready > 0 && in_flight == 0 {
                // Demand for extra replicas ends; the agents' TTL removes idle ones.
                m.scaled = 0;
            }
        }
        if scaled_any {
            vec![Action::Reconcile]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_only_after_load_stays_above_target_for_the_delay() {
        let t0 = Instant::now();
        let d = Duration::from_secs(5);
        assert_eq!(should_scale(2, 1, 2.0, None, d, t0), (false, None));
        let (now, since) = should_scale(5, 1, 2.0, None, d, t0);
        assert!(!now);
        assert_eq!(since, Some(t0));
        assert!(!should_scale(5, 1, 2.0, since, d, t0 + Duration::from_secs(4)).0);
        assert!(should_scale(5, 1, 2.0, since, d, t0 + Duration::from_secs(5)).0);
        assert_eq!(
            should_scale(1, 1, 2.0, since, d, t0 + Duration::from_secs(6)),
            (false, None),
            "a dip resets it"
        );
    }
}
