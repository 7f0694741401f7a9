//! Putting an idle machine to sleep (`--sleep-after`, `--sleep-command`): once no model
//! has been held on this node for that long, the agent says so in a report (the
//! scheduler records it as an event), then runs the command (`systemctl suspend`, say).
//! When the command returns (the machine woke, or the command only did something),
//! the idle clock starts again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::Agent;

#[derive(Clone, Debug)]
pub struct SleepPolicy {
    pub after: Duration,
    pub command: String,
}

/// How long the agent waits for its report to carry the news before it sleeps anyway
/// (a scheduler that does not answer must not keep the machine awake).
const SAY_FIRST: Duration = Duration::from_secs(5);

/// Whether a node idle for `idle` (`None`: busy) should sleep.
pub fn due(idle: Option<Duration>, after: Duration) -> bool {
    idle.is_some_and(|i| i >= after)
}

/// Watches the node's idleness until the process ends.
pub async fn run(agent: Arc<Agent>, policy: SleepPolicy) {
    let tick = (policy.after / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !due(agent.cache.idle_for(), policy.after) {
            continue;
        }
        info!(after_s = policy.after.as_secs_f64(), command = %policy.command, "idle for --sleep-after: going to sleep");
        let mut told = agent.reported_sleeping.subscribe();
        agent.sleeping.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(SAY_FIRST, told.wait_for(|said| *said)).await;
        // It may block until the machine wakes again: off the async workers.
        let command = policy.command.clone();
        let ran = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .status()
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match ran {
            Ok(s) if s.success() => info!(command = %policy.command, "the sleep command returned"),
            Ok(s) => warn!(command = %policy.command, status = %s, "the sleep command failed"),
            Err(e) => warn!(command = %policy.command, error = %e, "cannot run the sleep command"),
        }
        agent.sleeping.store(false, Ordering::Relaxed);
        agent.cache.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_node_idle_long_enough_sleeps() {
        let after = Duration::from_secs(600);
        assert!(!due(None, after), "busy");
        assert!(!due(Some(Duration::from_secs(599)), after));
        assert!(due(Some(after), after));
    }
}
