//! Per-model statistics, kept across loads: Triton's counters (inference_count = items,
//! execution_count = model runs) and an HDR histogram of request latency.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::Histogram;
use herd_core::histogram::latency_histogram;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Total {
    pub count: u64,
    pub ns: u64,
}

impl Total {
    fn add(&mut self, d: Duration) {
        self.count += 1;
        self.ns = self.ns.saturating_add(d.as_nanos() as u64);
    }
}

#[derive(Clone, Debug)]
pub struct Counters {
    pub success: Total,
    pub fail: Total,
    pub queue: Total,
    pub compute_infer: Total,
    pub inference_count: u64,
    pub execution_count: u64,
    /// Milliseconds since the epoch of the last finished request.
    pub last_inference_ms: u64,
    /// Runs and compute time per batch size (in items).
    pub batches: BTreeMap<u64, Total>,
    /// Request latency inside the agent, microseconds.
    pub latency_us: Histogram<u64>,
    pub loads: u64,
    pub last_error: Option<String>,
    pub memory_bytes: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            success: Total::default(),
            fail: Total::default(),
            queue: Total::default(),
            compute_infer: Total::default(),
            inference_count: 0,
            execution_count: 0,
            last_inference_ms: 0,
            batches: BTreeMap::new(),
            latency_us: latency_histogram(),
            loads: 0,
            last_error: None,
            memory_bytes: 0,
        }
    }
}

#[derive(Default)]
pub struct ModelStats {
    inner: Mutex<Counters>,
}

impl ModelStats {
    pub fn lock(&self) -> MutexGuard<'_, Counters> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One model run of `items` items over `requests` requests.
    pub fn record_run(&self, items: u64, compute: Duration, ok: bool) {
        let mut c = self.lock();
        if ok {
            c.execution_count += 1;
            c.inference_count += items;
            c.compute_infer.add(compute);
            c.batches.entry(items).or_default().add(compute);
        }
    }

    /// One request finished, after waiting `queued` and taking `total` in all.
    pub fn record_request(&self, queued: Duration, total: Duration, ok: bool) {
        let mut c = self.lock();
        c.queue.add(queued);
        if ok {
            c.success.add(total);
            c.latency_us
                .saturating_record(total.as_micros().max(1) as u64);
        } else {
            c.fail.add(total);
        }
        c.last_inference_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
    }

    pub fn serialized_latency(&self) -> Vec<u8> {
        let c = self.lock();
        let mut out = Vec::new();
        // Serializing into a Vec cannot fail for a valid histogram; an empty buffer
        // tells the reader there is nothing to merge.
        if V2Serializer::new()
            .serialize(&c.latency_us, &mut out)
            .is_err()
        {
            out.clear();
        }
        out
    }
}
