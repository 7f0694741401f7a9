//! Replica scaling, as Ray Serve's target_ongoing_requests: when requests in flight
//! per ready replica stay above the target for the upscale delay, one more replica is
//! wanted (up to max_replicas and what fits). Idle replicas go through the agents' TTL.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use crate::cluster::ReplicaState;
use crate::state::Scheduler;

/// Whether a model should scale up now, from its load and how long it has lasted.
pub fn should_scale(
    in_flight: usize,
    ready: usize,
    target: f64,
    busy_since: Option<Instant>,
    delay: std::time::Duration,
    now: Instant,
) -> (bool, Option<Instant>) {
    if ready == 0 || (in_flight as f64) / (ready as f64) <= target {
        return (false, None);
    }
    let since = busy_since.unwrap_or(now);
    (now.duration_since(since) >= delay, Some(since))
}

pub fn update(scheduler: &Scheduler) {
    let settings = &scheduler.settings;
    let mut c = scheduler.lock();
    let now = Instant::now();
    let names: Vec<String> = c.models.keys().cloned().collect();
    for name in names {
        let replicas = c.replicas_of(&name);
        let ready = replicas
            .iter()
            .filter(|(_, r)| r.state == ReplicaState::Ready)
            .count();
        let loading = replicas.len() - ready;
        let in_flight: usize = replicas
            .iter()
            .map(|(_, r)| r.outstanding.load(Ordering::Relaxed))
            .sum();
        let Some(m) = c.models.get_mut(&name) else {
            continue;
        };
        let (scale, since) = should_scale(
            in_flight,
            ready,
            settings.target_ongoing_requests,
            m.busy_since,
            settings.upscale_delay,
            now,
        );
        m.busy_since = since;
        let room = m.policy.max_replicas == 0 || (ready as u32) < m.policy.max_replicas;
        if scale && loading == 0 && room && m.unplaceable.is_none() {
            m.scaled = ready as u32 + 1;
            m.busy_since = None;
            let msg = format!(
                "{in_flight} requests in flight on {ready} replicas, above {} each",
                settings.target_ongoing_requests
            );
            c.events.push("scaled", "", &name, msg);
        } else if ready > 0 && in_flight == 0 {
            // Demand for extra replicas ends; the agents' TTL removes idle ones.
            m.scaled = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
