//! The scheduler's live connections, kept apart from the model: one link per node
//! (made at its join) and one batch sender per replica that requests went to (started
//! on the first). The executor and the router own these; the model never sees them.

use std::collections::HashMap;

use crate::agent_link::AgentLink;
use crate::sender::BatchSender;

#[derive(Default)]
pub(crate) struct Links {
    nodes: HashMap<String, (String, AgentLink)>,
    /// (model, node) → sender.
    senders: HashMap<(String, String), BatchSender>,
}

impl Links {
    /// The link to a node that joined at `address`. One to another address (the agent
    /// restarted elsewhere) replaces the old one, and that node's senders with it.
    pub fn connect(&mut self, node: &str, address: &str, link: AgentLink) {
        if self.nodes.get(node).is_some_and(|(a, _)| a == address) {
            return;
        }
        self.forget_senders(node);
        self.nodes
            .insert(node.to_string(), (address.to_string(), link));
    }

    pub fn link(&self, node: &str) -> Option<&AgentLink> {
        self.nodes.get(node).map(|(_, l)| l)
    }

    /// The sender toward a replica, started on first use.
    pub fn sender(&mut self, model: &str, node: &str) -> Option<BatchSender> {
        let key = (model.to_string(), node.to_string());
        if let Some(s) = self.senders.get(&key) {
            return Some(s.clone());
        }
        let link = self.link(node)?;
        let sender = BatchSender::start(link.agent.clone());
        self.senders.insert(key, sender.clone());
        Some(sender)
    }

    /// A replica went: its sender stops once the requests holding it finish.
    pub fn forget_sender(&mut self, model: &str, node: &str) {
        self.senders.remove(&(model.to_string(), node.to_string()));
    }

    pub fn forget_senders(&mut self, node: &str) {
        self.senders.retain(|(_, n), _| n != node);
    }
}
