//! What happened in the cluster, with reasons: joins, nodes going down, placements,
//! evictions, unloads, load failures. A bounded log; the dashboard shows it.

use std::collections::VecDeque;

use herd_proto::herd::Event;

const KEEP: usize = 1000;

#[derive(Default)]
pub struct EventLog {
    events: VecDeque<(u64, Event)>,
    next: u64,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EventLog {
    pub fn push(
        &mut self,
        kind: &str,
        node: &str,
        model: &str,
        message: impl Into<String>,
    ) -> Event {
        let event = Event {
            time_ms: now_ms(),
            kind: kind.to_string(),
            node: node.to_string(),
            model: model.to_string(),
            message: message.into(),
        };
        tracing::info!(kind, node, model, message = %event.message, "cluster event");
        self.events.push_back((self.next, event.clone()));
        self.next += 1;
        if self.events.len() > KEEP {
            self.events.pop_front();
        }
        event
    }

    /// Events with a sequence number at or after `from`, and the next sequence number.
    pub fn since(&self, from: u64) -> (Vec<Event>, u64) {
        let events = self
            .events
            .iter()
            .filter(|(n, _)| *n >= from)
            .map(|(_, e)| e.clone())
            .collect();
        (events, self.next)
    }

    pub fn recent(&self, n: usize) -> Vec<Event> {
        self.events
            .iter()
            .rev()
            .take(n)
            .rev()
            .map(|(_, e)| e.clone())
            .collect()
    }
}
