//! Admission by time: a request with a deadline is admitted only when the work queued
//! ahead of it and its own batch can finish before that deadline, as the model's
//! measured pace predicts; otherwise it is refused at once (RESOURCE_EXHAUSTED), so that
//! its caller can go elsewhere or retry, instead of waiting out its deadline in a queue
//! that cannot serve it. Until a run has been measured everything is admitted.
//!
//! The pace is compute time per byte of input, a moving average over the model's
//! runs: work is counted in bytes because run time grows with what a batch holds (rows,
//! or pixels for a model of dynamic size). A request that finds the model busy is
//! answered when its whole batch is, and while it waits later requests join that
//! batch: its own batch counts as large as the model's recent batches. Pure; the runner
//! passes the numbers.

use std::fmt;
use std::time::Duration;

/// Weight of the newest run in the moving averages.
const WEIGHT: f64 = 0.25;

/// An admitted request's predicted finish must fall within this share of the time it
/// has left: the pace is an average, and a request that misses its deadline wastes the
/// run it was part of. A queue of 80% of a deadline still keeps the model busy.
pub const HEADROOM: f64 = 0.8;

/// A model's measured compute time per byte of input, and the size of its batches.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pace {
    ns_per_byte: Option<f64>,
    batch_bytes: Option<f64>,
}

fn average(old: Option<f64>, sample: f64) -> f64 {
    match old {
        None => sample,
        Some(old) => old + WEIGHT * (sample - old),
    }
}

impl Pace {
    /// Counts one successful run of `bytes` of input that took `took`.
    pub fn record(&mut self, bytes: u64, took: Duration) {
        if bytes == 0 {
            return;
        }
        let sample = took.as_nanos() as f64 / bytes as f64;
        self.ns_per_byte = Some(average(self.ns_per_byte, sample));
    }

    /// Counts one batch of `bytes` of input sent to the model.
    pub fn record_batch(&mut self, bytes: u64) {
        self.batch_bytes = Some(average(self.batch_bytes, bytes as f64));
    }

    /// The predicted compute time of `bytes` of input; `None` before any run.
    pub fn time_for(&self, bytes: u64) -> Option<Duration> {
        self.ns_per_byte
            .map(|r| Duration::from_nanos((r * bytes as f64).min(u64::MAX as f64) as u64))
    }

    /// Bytes of the model's recent batches.
    fn batch(&self) -> u64 {
        self.batch_bytes.unwrap_or(0.0) as u64
    }
}

/// The model's work as a request finds it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ahead {
    /// Bytes of input queued or running.
    pub bytes: u64,
    /// The running batch, if any: its bytes (counted in `bytes` too) and how long it
    /// has run.
    pub running: Option<(u64, Duration)>,
}

/// A request refused because it cannot be answered within its deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TooLate {
    pub model: String,
    /// Predicted time to finish the work queued ahead of it.
    pub ahead: Duration,
    /// Predicted time of the batch it would run in.
    pub own: Duration,
    /// Time left before its deadline.
    pub left: Duration,
}

/// Whether a request of `own` bytes, finding `ahead`, can be answered within `left`;
/// when not, the predicted time of the work ahead and of its own batch.
pub fn admit(
    pace: &Pace,
    ahead: Ahead,
    own: u64,
    left: Duration,
) -> Result<(), (Duration, Duration)> {
    if pace.ns_per_byte.is_none() {
        return Ok(());
    }
    let time = |bytes| pace.time_for(bytes).unwrap_or_default();
    let (work, batch) = if ahead.bytes == 0 && ahead.running.is_none() {
        // An idle model runs it at once, alone.
        (Duration::ZERO, time(own))
    } else {
        // The running batch has done part of its work; never more than its prediction.
        let (running, done) = ahead.running.map_or((0, Duration::ZERO), |(bytes, ran)| {
            (bytes, ran.min(time(bytes)))
        });
        let work = time(ahead.bytes.max(running)).saturating_sub(done);
        (work, time(own.max(pace.batch())))
    };
    if (work + batch).as_secs_f64() <= left.as_secs_f64() * HEADROOM {
        Ok(())
    } else {
        Err((work, batch))
    }
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

impl fmt::Display for TooLate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "model '{}' cannot answer within the {} ms left before the request's deadline: \
             about {} ms of work is queued ahead of it and its batch takes about {} ms; \
             retry later or with a longer deadline",
            self.model,
            millis(self.left),
            millis(self.ahead),
            millis(self.own)
        )
    }
}

impl std::error::Error for TooLate {}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const MIB: u64 = 1 << 20;

    /// A pace of `ms_per_mib` milliseconds per MiB, in batches of `batch` bytes.
    fn pace(ms_per_mib: u32, batch: u64) -> Pace {
        let mut p = Pace::default();
        p.record(MIB, ms_per_mib * MS);
        p.record_batch(batch);
        p
    }

    #[test]
    fn the_pace_is_a_moving_average_per_byte() {
        let mut p = Pace::default();
        assert_eq!(p.time_for(1000), None, "nothing measured yet");
        p.record(0, 5 * MS);
        assert_eq!(p.time_for(1000), None, "an empty run says nothing");
        p.record(1000, 100 * MS);
        assert_eq!(p.time_for(2000), Some(200 * MS));
        p.record(1000, 500 * MS);
        assert_eq!(
            p.time_for(1000),
            Some(200 * MS),
            "a quarter of the way to the new run"
        );
        p.record_batch(1000);
        p.record_batch(5000);
        assert_eq!(p.batch(), 2000);
    }

    #[test]
    fn without_a_measure_everything_is_admitted() {
        let ahead = Ahead {
            bytes: 1 << 40,
            running: None,
        };
        assert_eq!(admit(&Pace::default(), ahead, 1 << 30, MS), Ok(()));
    }

    #[test]
    fn a_request_is_admitted_when_the_work_ahead_and_its_batch_fit_its_deadline() {
        let p = pace(100, 4 * MIB);
        let left = Duration::from_secs(5);
        // An idle model runs it alone: 1 MiB, 0.1 s.
        assert_eq!(admit(&p, Ahead::default(), MIB, left), Ok(()));
        // A busy one: a batch of 4 MiB runs, 20 MiB wait; it joins a batch of 4 MiB:
        // 2.4 s + 0.4 s of 5 s.
        let busy = |bytes, ran| Ahead {
            bytes,
            running: Some((4 * MIB, ran)),
        };
        assert_eq!(admit(&p, busy(24 * MIB, Duration::ZERO), MIB, left), Ok(()));
        // 40 MiB ahead: 4 s + 0.4 s, past 80% of 5 s.
        assert_eq!(
            admit(&p, busy(40 * MIB, Duration::ZERO), MIB, left),
            Err((4000 * MS, 400 * MS)),
            "refused"
        );
        // The same queue, but its running batch has run 300 ms of its 400 ms.
        assert_eq!(
            admit(&p, busy(40 * MIB, 300 * MS), MIB, left),
            Err((3700 * MS, 400 * MS))
        );
        assert_eq!(admit(&p, busy(36 * MIB, 300 * MS), MIB, left), Ok(()));
        // A batch that outruns its prediction counts as done, no more.
        assert_eq!(
            admit(&p, busy(44 * MIB, Duration::from_secs(60)), MIB, left),
            Err((4000 * MS, 400 * MS))
        );
        // A request larger than the model's batches is its own batch.
        assert_eq!(
            admit(&p, busy(4 * MIB, Duration::ZERO), 40 * MIB, left),
            Err((400 * MS, 4000 * MS)),
            "0.4 s + 4 s"
        );
        assert_eq!(
            admit(&p, busy(4 * MIB, Duration::ZERO), 20 * MIB, left),
            Ok(())
        );
        // A request too large for its own deadline is refused even by an idle model.
        assert!(admit(&p, Ahead::default(), 50 * MIB, left).is_err());
    }

    #[test]
    fn a_refusal_says_what_is_ahead_and_what_to_do() {
        let refusal = TooLate {
            model: "det".into(),
            ahead: Duration::from_millis(6200),
            own: Duration::from_millis(150),
            left: Duration::from_millis(4990),
        };
        assert_eq!(
            refusal.to_string(),
            "model 'det' cannot answer within the 4990 ms left before the request's deadline: \
             about 6200 ms of work is queued ahead of it and its batch takes about 150 ms; \
             retry later or with a longer deadline"
        );
    }
}
