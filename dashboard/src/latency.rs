//! Latency quantiles kept between snapshots. Decoding histograms is most of the cost of
//! an update (1,000 models, four snapshots a second), yet agents report once a second
//! and their histograms count since the model loaded: so a node's or a model's p50 and
//! p99 are decoded again only when its histograms changed, and at most once a second.

use std::collections::HashMap;

use herd_client::view::{merged_quantiles, Quantiles, Subject};

use crate::app::RATE_WINDOW_MS;

/// p50 and p99 of some serialized histograms, kept until the histograms change, and
/// recomputed at most once a second.
#[derive(Clone, Debug, Default)]
struct QuantileCache {
    inputs: Vec<Vec<u8>>,
    computed_at_ms: Option<u64>,
    quantiles: Option<(u64, u64)>,
}

impl QuantileCache {
    fn quantiles(&mut self, inputs: &[&[u8]], time_ms: u64) -> Option<(u64, u64)> {
        let same = self.inputs.len() == inputs.len()
            && self
                .inputs
                .iter()
                .zip(inputs)
                .all(|(a, b)| a.as_slice() == *b);
        let due = match self.computed_at_ms {
            None => true,
            Some(at) => time_ms < at || time_ms - at >= RATE_WINDOW_MS,
        };
        if !same && due {
            self.quantiles = merged_quantiles(inputs.iter().copied());
            self.inputs = inputs.iter().map(|b| b.to_vec()).collect();
            self.computed_at_ms = Some(time_ms);
        }
        self.quantiles
    }
}

#[derive(Clone, Debug, Default)]
struct Entry {
    cache: QuantileCache,
    /// The last snapshot that asked for it.
    snapshot: u64,
}

/// The view-model's [`Quantiles`] for a long-lived screen: one [`QuantileCache`] per node
/// and per model. Each snapshot is one [`begin`](Self::begin), the views, then one
/// [`sweep`](Self::sweep) that forgets what the snapshot no longer had.
#[derive(Clone, Debug, Default)]
pub struct LatencyCache {
    time_ms: u64,
    snapshot: u64,
    nodes: HashMap<String, Entry>,
    models: HashMap<String, Entry>,
}

impl LatencyCache {
    /// A snapshot taken at `time_ms` (ms since the epoch) is about to be viewed.
    pub fn begin(&mut self, time_ms: u64) {
        self.time_ms = time_ms;
        self.snapshot += 1;
    }

    /// Forgets the nodes and models the snapshot since [`begin`](Self::begin) did not have.
    pub fn sweep(&mut self) {
        let snapshot = self.snapshot;
        self.nodes.retain(|_, e| e.snapshot == snapshot);
        self.models.retain(|_, e| e.snapshot == snapshot);
    }

    /// Nodes and models remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.nodes.len() + self.models.len()
    }
}

impl Quantiles for LatencyCache {
    fn quantiles(&mut self, of: Subject<'_>, histograms: &[&[u8]]) -> Option<(u64, u64)> {
        let (entries, name) = match of {
            Subject::Node(name) => (&mut self.nodes, name),
            Subject::Model(name) => (&mut self.models, name),
        };
        // Looked up by `&str`: no allocation but for a new name.
        if let Some(entry) = entries.get_mut(name) {
            entry.snapshot = self.snapshot;
            return entry.cache.quantiles(histograms, self.time_ms);
        }
        let entry = entries.entry(name.to_string()).or_default();
        entry.snapshot = self.snapshot;
        entry.cache.quantiles(histograms, self.time_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{histogram, T0};

    #[test]
    fn latency_is_recomputed_when_histograms_change_at_most_once_a_second() {
        let fast = histogram(100, 200, 100);
        let slow = histogram(50_000, 60_000, 100);
        let mut cache = QuantileCache::default();
        let first = cache.quantiles(&[fast.as_slice()], T0);
        assert!(first.is_some_and(|(_, p99)| p99 < 1_000));
        // New data 250 ms later waits for the second to pass.
        assert_eq!(cache.quantiles(&[slow.as_slice()], T0 + 250), first);
        let later = cache.quantiles(&[slow.as_slice()], T0 + 1_000);
        assert!(later.is_some_and(|(_, p99)| p99 > 50_000));
        assert_eq!(cache.quantiles(&[], T0 + 2_000), None);
    }

    #[test]
    fn nodes_and_models_are_cached_apart_and_forgotten_when_gone() {
        let fast = histogram(100, 200, 100);
        let slow = histogram(50_000, 60_000, 100);
        let mut cache = LatencyCache::default();
        cache.begin(T0);
        let node = cache.quantiles(Subject::Node("x"), &[fast.as_slice()]);
        let model = cache.quantiles(Subject::Model("x"), &[slow.as_slice()]);
        assert_ne!(
            node, model,
            "a node and a model of one name are not one entry"
        );
        cache.sweep();
        assert_eq!(cache.len(), 2);
        cache.begin(T0 + 1_000);
        cache.quantiles(Subject::Model("x"), &[slow.as_slice()]);
        cache.sweep();
        assert_eq!(cache.len(), 1, "the node left");
    }
}
