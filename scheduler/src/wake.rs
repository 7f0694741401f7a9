//! Waking sleeping nodes: the magic packet for a request whose model no node up can
//! hold (see `model::waking` for which nodes and when), and by hand
//! (`herd nodes wake NAME`).

use herd_proto::herd::WakeOnLan;
use tokio::time::Instant;

use crate::error::SchedulerError;
use crate::state::Scheduler;

impl Scheduler {
    /// Wakes what `model` needs; whether a wake is in progress (then the request waits
    /// for the node to join instead of failing). A packet that cannot be sent is no
    /// wake to wait for.
    pub async fn wake_for(&self, model: &str) -> bool {
        let timeout = self.settings.wake_timeout;
        let plan = self.lock().plan_wake(Instant::now(), timeout);
        for (node, wake) in &plan.send {
            let why = format!("model '{model}' needs it (no node up can hold it)");
            // Logged there; the wake then does not count.
            let _ = self.send_wake(node, wake, &why).await;
        }
        plan.waiting && self.lock().waking_now()
    }

    /// Wakes `node` by hand.
    pub async fn wake_node(&self, node: &str) -> Result<WakeOnLan, SchedulerError> {
        let wake = {
            let cluster = self.lock();
            if cluster.node(node).is_none()
                && !cluster.sleeping_wakeable().iter().any(|n| n == node)
            {
                return Err(SchedulerError::UnknownNode(node.to_string()));
            }
            cluster
                .wake_target(node)
                .ok_or_else(|| SchedulerError::NotWakeable(node.to_string()))?
        };
        self.send_wake(node, &wake, "asked by hand").await?;
        Ok(wake)
    }

    async fn send_wake(
        &self,
        node: &str,
        wake: &WakeOnLan,
        why: &str,
    ) -> Result<(), SchedulerError> {
        let sent = match wake.mac.parse::<herd_core::wake::Mac>() {
            Ok(mac) => herd_core::wake::send(mac, &wake.address)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match sent {
            Ok(_) => {
                tracing::info!(node, mac = %wake.mac, address = %wake.address, why, "sent the Wake-on-LAN packet");
                self.lock().wake_sent(node, wake, why, Instant::now());
                self.notify();
                Ok(())
            }
            Err(e) => {
                tracing::warn!(node, mac = %wake.mac, address = %wake.address, error = %e, "cannot send the Wake-on-LAN packet");
                Err(SchedulerError::WakeFailed {
                    node: node.to_string(),
                    reason: e,
                })
            }
        }
    }
}
