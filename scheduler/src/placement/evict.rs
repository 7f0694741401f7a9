//! Rule 3: when nothing fits, make room on one node by evicting least recently used idle
//! replicas of other models.

use super::solve::{bytes, Kind, State};
use super::Decision;

/// Which replicas to evict from which pool.
pub(super) struct Plan {
    pub node: usize,
    pub slot: usize,
    /// Least recently used first.
    pub victims: Vec<usize>,
}

/// Lower is better: fewest evictions, then the preferred kind (GPU for `Want::Any`), then
/// the pool whose evicted replicas are oldest (by the newest of them), then node name, GPU index.
type Score = (usize, usize, u64, usize, usize);

impl State<'_> {
    /// The pool where evicting the fewest idle replicas makes room for one replica of `model`.
    /// A replica may go only if it has no work, was not placed by this solve, and its model
    /// keeps at least its target (and min_replicas) without it.
    pub(super) fn plan_eviction(&self, model: usize, kinds: &[Kind]) -> Option<Plan> {
        let memory = self.models[model].view.memory;
        let mark = model + 1;
        let mut best: Option<(Score, Plan)> = None;
        for (n, node) in self.nodes.iter().enumerate() {
            if !node.view.schedulable || self.marks[n] == mark {
                continue;
            }
            for (preference, &kind) in kinds.iter().enumerate() {
                for slot in node.slots(kind) {
                    let pool = &node.pools[slot];
                    let need = pool.used.saturating_add(memory).saturating_sub(pool.budget);
                    if need == 0 || need > pool.idle_memory {
                        continue;
                    }
                    let most = best.as_ref().map_or(usize::MAX, |(s, _)| s.0);
                    let mut victims = Vec::new();
                    let (mut freed, mut newest) = (0u64, 0u64);
                    for &id in &pool.idle {
                        let r = &self.live[id];
                        if !r.evictable {
                            continue;
                        }
                        if victims.len() == most {
                            break; // cannot beat the best plan so far
                        }
                        victims.push(id);
                        freed = freed.saturating_add(r.memory);
                        newest = newest.max(r.last_used);
                        if freed >= need {
                            break;
                        }
                    }
                    if freed < need {
                        continue;
                    }
                    let score = (victims.len(), preference, newest, n, slot);
                    if best.as_ref().is_none_or(|(s, _)| score < *s) {
                        best = Some((
                            score,
                            Plan {
                                node: n,
                                slot,
                                victims,
                            },
                        ));
                    }
                }
            }
        }
        best.map(|(_, plan)| plan)
    }

    /// Carry out a plan made for `model`.
    pub(super) fn evict(&mut self, model: usize, plan: Plan) {
        let (node, slot) = (plan.node, plan.slot);
        let view = self.models[model].view;
        let reason = format!(
            "evicted for {} (needs {}): idle for longest",
            view.name,
            bytes(view.memory)
        );
        self.unindex(node, slot);
        for id in plan.victims {
            let r = &mut self.live[id];
            r.evicted = true;
            let (owner, memory) = (r.model, r.memory);
            let pool = &mut self.nodes[node].pools[slot];
            pool.used = pool.used.saturating_sub(memory);
            self.unmark_evictable(id);
            let m = &mut self.models[owner];
            m.count -= 1;
            m.replicas.retain(|&x| x != id);
            if m.count <= m.floor {
                // The model is down to what it wants: the rest of its replicas stay.
                for i in 0..self.models[owner].replicas.len() {
                    self.unmark_evictable(self.models[owner].replicas[i]);
                }
            }
            let m = &self.models[owner];
            self.decisions.push(Decision::Evicted {
                model: m.view.name.clone(),
                node: self.nodes[node].view.name.clone(),
                reason: reason.clone(),
            });
        }
        self.index(node, slot);
    }

    fn unmark_evictable(&mut self, id: usize) {
        let r = &mut self.live[id];
        if r.evictable {
            r.evictable = false;
            let pool = &mut self.nodes[r.node].pools[r.slot];
            pool.idle_memory = pool.idle_memory.saturating_sub(r.memory);
        }
    }
}
