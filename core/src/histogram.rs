//! Request latency as agents report it and the scheduler merges it.

use hdrhistogram::Histogram;

/// A request-latency histogram in microseconds: 1 µs to 1 hour at 2 significant
/// digits, a few KB, fixed size, so histograms from every node merge exactly.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("constant histogram bounds are valid")
}
