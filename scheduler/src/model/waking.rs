//! Wake-on-LAN decisions: which sleeping nodes a request's model needs woken, when a
//! packet is sent again, when a wake is given up, and the events that tell it.
//!
//! A node can be woken when it said how (its last status carried `wake`) and it is
//! down, or when the store remembers it from before this scheduler started and it has
//! not joined since. A model that no node up can hold wakes every such node: what a
//! sleeping machine could hold is not known until it reports again.

use std::time::Duration;

use herd_proto::herd::WakeOnLan;
use tokio::time::Instant;

use super::ClusterModel;

/// A packet can be lost, and a machine can miss one while it settles into sleep: one
/// is sent again this often while the wake lasts.
pub const RESEND_EVERY: Duration = Duration::from_secs(15);

/// One wake in progress: when it began and when a packet last went.
#[derive(Clone, Copy, Debug)]
pub struct Waking {
    pub since: Instant,
    pub sent: Instant,
}

/// What to do for a model no node up can hold.
#[derive(Debug, Default, PartialEq)]
pub struct WakePlan {
    /// Packets to send now: (node, how).
    pub send: Vec<(String, WakeOnLan)>,
    /// Whether a wake is in progress (the request should wait for it).
    pub waiting: bool,
}

impl ClusterModel {
    /// Remembers how to wake `node`, read back from the store at start.
    pub fn remember_wakeable(&mut self, node: &str, wake: WakeOnLan) {
        self.wakeable.insert(node.to_string(), wake);
    }

    /// How to wake `node`, if it said.
    pub fn wake_target(&self, node: &str) -> Option<WakeOnLan> {
        match self.nodes.get(node) {
            Some(n) => n.status.wake.clone().filter(|w| !w.mac.is_empty()),
            None => self.wakeable.get(node).cloned(),
        }
    }

    /// Nodes that are asleep (down, or not joined since the start) and can be woken.
    pub fn sleeping_wakeable(&self) -> Vec<String> {
        let down = self
            .nodes
            .values()
            .filter(|n| n.down && self.wake_target(&n.name).is_some())
            .map(|n| n.name.clone());
        let unseen = self
            .wakeable
            .keys()
            .filter(|n| !self.nodes.contains_key(*n))
            .cloned();
        down.chain(unseen).collect()
    }

    /// The wake a model no node up can hold needs now: packets to send to the sleeping
    /// nodes (the first of a wake, or one again every [`RESEND_EVERY`]), and whether
    /// there is one to wait for. A wake older than `timeout` that brought no join is
    /// over: the next request begins another.
    pub fn plan_wake(&mut self, now: Instant, timeout: Duration) -> WakePlan {
        self.waking
            .retain(|_, w| now.saturating_duration_since(w.since) < timeout);
        let mut plan = WakePlan::default();
        for node in self.sleeping_wakeable() {
            let Some(wake) = self.wake_target(&node) else {
                continue;
            };
            plan.waiting = true;
            let due = self
                .waking
                .get(&node)
                .is_none_or(|w| now.saturating_duration_since(w.sent) >= RESEND_EVERY);
            if due {
                plan.send.push((node, wake));
            }
        }
        plan
    }

    /// The nodes being woken, for messages: "node 'gpu' is waking".
    pub fn waking_names(&self) -> String {
        let names: Vec<String> = self.waking.keys().map(|n| format!("'{n}'")).collect();
        match names.len() {
            0 => "no wake in progress".into(),
            1 => format!("node {} is waking", names[0]),
            _ => format!("nodes {} are waking", names.join(", ")),
        }
    }

    /// Whether a wake is in progress (a packet went, and no join yet).
    pub fn waking_now(&self) -> bool {
        !self.waking.is_empty()
    }

    /// A packet went to `node` (for `why`); the first of a wake is an event.
    pub fn wake_sent(&mut self, node: &str, wake: &WakeOnLan, why: &str, now: Instant) {
        let first = match self.waking.get_mut(node) {
            Some(w) => {
                w.sent = now;
                false
            }
            None => {
                self.waking.insert(
                    node.to_string(),
                    Waking {
                        since: now,
                        sent: now,
                    },
                );
                true
            }
        };
        if first {
            self.events.push(
                "wake",
                node,
                "",
                format!(
                    "sent the magic packet for {} to {}: {why}",
                    wake.mac, wake.address
                ),
            );
        }
    }

    /// `node` joined: a wake in progress ends, with how long it took.
    pub fn woke(&mut self, node: &str, now: Instant) {
        if let Some(w) = self.waking.remove(node) {
            let took = now.saturating_duration_since(w.since).as_secs_f64();
            self.events.push(
                "woke",
                node,
                "",
                format!("joined {took:.1} s after its wake began"),
            );
        }
    }
}
