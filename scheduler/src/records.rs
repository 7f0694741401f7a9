//! What the store keeps of the cluster besides the catalog: node records and
//! placements, written when they change, so that a restarted scheduler (or a
//! standby, with etcd) knows the nodes and where replicas were.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{ClusterModel, ReplicaState};
use crate::state::Scheduler;

pub const NODES: &str = "/herd/nodes/";
pub const PLACEMENTS: &str = "/herd/placements/";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub address: String,
    pub draining: bool,
    /// How to wake the node's machine (its agent's --wake-mac): a restarted scheduler
    /// can wake a node that went to sleep before it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake: Option<WakeRecord>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WakeRecord {
    pub mac: String,
    pub address: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PlacementRecord {
    pub device: String,
}

/// The records the cluster should have in the store now, key → JSON.
pub fn wanted(c: &ClusterModel) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for n in c.nodes() {
        let r = NodeRecord {
            address: n.address.clone(),
            draining: n.draining,
            wake: c.wake_target(&n.name).map(|w| WakeRecord {
                mac: w.mac,
                address: w.address,
            }),
        };
        if let Ok(v) = serde_json::to_vec(&r) {
            out.insert(format!("{NODES}{}", n.name), v);
        }
    }
    for ((model, node), r) in c.replicas() {
        if r.state != ReplicaState::Ready {
            continue;
        }
        let p = PlacementRecord {
            device: format!("{:?}", r.device).to_lowercase(),
        };
        if let Ok(v) = serde_json::to_vec(&p) {
            out.insert(format!("{PLACEMENTS}{model}/{node}"), v);
        }
    }
    out
}

/// The nodes the store says can be woken, and how: (name, how).
pub fn wakeable(records: &[crate::store::KeyValue]) -> Vec<(String, herd_proto::herd::WakeOnLan)> {
    records
        .iter()
        .filter_map(|kv| {
            let name = kv.key.strip_prefix(NODES)?;
            let record: NodeRecord = serde_json::from_slice(&kv.value).ok()?;
            let wake = record.wake?;
            Some((
                name.to_string(),
                herd_proto::herd::WakeOnLan {
                    mac: wake.mac,
                    address: wake.address,
                },
            ))
        })
        .collect()
}

/// Writes what changed since the store last heard; only the leader does, its writes
/// fenced (see `fenced.rs`).
pub async fn sync(scheduler: &Scheduler) {
    if !scheduler.role().is_leader() {
        return;
    }
    let wanted = wanted(&scheduler.lock());
    for prefix in [NODES, PLACEMENTS] {
        let stored = match scheduler.store.range(prefix).await {
            Ok(kvs) => kvs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read cluster records");
                return;
            }
        };
        for kv in &stored {
            if !wanted.contains_key(&kv.key) && kv.key.starts_with(PLACEMENTS) {
                let _ = scheduler.delete_state(&kv.key).await;
            }
        }
        for (key, value) in wanted
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            let same = stored.iter().any(|kv| &kv.key == key && &kv.value == value);
            if !same {
                if let Err(e) = scheduler.write_state(key, value.clone()).await {
                    tracing::warn!(key, error = %e, "cannot write a cluster record");
                }
            }
        }
    }
}
