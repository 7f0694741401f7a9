//! The idle TTL policy: when a model nobody uses is unloaded. Plain data and a pure
//! deadline function; the cache's watcher sleeps until the instant it names.
//!
//! Idle time counts from the moment the last lease was dropped, and a model that
//! anyone holds (a request queued, running or waiting for the load) is never due.

use tokio::time::Instant;

use herd_core::settings::Ttl;

/// How a model is held: the leases alive now, and since when nobody has held it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Activity {
    pub leases: usize,
    /// When the last lease was dropped (or the model first looked up).
    pub idle_since: Instant,
}

impl Activity {
    pub fn new(now: Instant) -> Activity {
        Activity {
            leases: 0,
            idle_since: now,
        }
    }

    pub fn lease(&mut self) {
        self.leases += 1;
    }

    /// One lease dropped at `now`; the last one starts the idle clock.
    pub fn release(&mut self, now: Instant) {
        self.leases = self.leases.saturating_sub(1);
        if self.leases == 0 {
            self.idle_since = now;
        }
    }
}

/// When the model should be unloaded: `ttl` after it became idle. `None` while any
/// lease is alive, and for a TTL of never (or one too far away to name).
pub(crate) fn unload_at(activity: Activity, ttl: Ttl) -> Option<Instant> {
    match ttl {
        Ttl::Never => None,
        Ttl::After(_) if activity.leases > 0 => None,
        Ttl::After(ttl) => activity.idle_since.checked_add(ttl),
    }
}

/// True when the model is due for unloading at `now`.
pub(crate) fn is_due(activity: Activity, ttl: Ttl, now: Instant) -> bool {
    unload_at(activity, ttl).is_some_and(|at| now >= at)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const TEN_S: Ttl = Ttl::After(Duration::from_secs(10));

    #[test]
    fn an_idle_model_is_due_its_ttl_after_the_last_lease_is_dropped() {
        let start = Instant::now();
        let mut a = Activity::new(start);
        assert_eq!(unload_at(a, TEN_S), Some(start + Duration::from_secs(10)));
        a.lease();
        a.lease();
        let later = start + Duration::from_secs(60);
        a.release(later);
        assert_eq!(unload_at(a, TEN_S), None, "one lease is still held");
        assert_eq!(
            a.idle_since, start,
            "the idle clock starts at the last release"
        );
        a.release(later);
        assert_eq!(unload_at(a, TEN_S), Some(later + Duration::from_secs(10)));
        assert!(!is_due(a, TEN_S, later + Duration::from_secs(9)));
        assert!(is_due(a, TEN_S, later + Duration::from_secs(10)));
    }

    #[test]
    fn a_held_model_is_never_due_however_long_it_is_held() {
        let start = Instant::now();
        let mut a = Activity::new(start);
        a.lease();
        let year = Duration::from_secs(365 * 24 * 3600);
        assert!(!is_due(a, TEN_S, start + year));
        assert!(!is_due(a, Ttl::After(Duration::ZERO), start + year));
    }

    #[test]
    fn ttl_zero_is_due_at_once_and_never_is_never_due() {
        let start = Instant::now();
        let a = Activity::new(start);
        assert!(is_due(a, Ttl::After(Duration::ZERO), start));
        assert_eq!(unload_at(a, Ttl::Never), None);
        assert_eq!(
            unload_at(a, Ttl::After(Duration::MAX)),
            None,
            "a TTL past the end of time is never"
        );
    }

    #[test]
    fn release_without_a_lease_does_not_underflow() {
        let start = Instant::now();
        let mut a = Activity::new(start);
        a.release(start + Duration::from_secs(1));
        assert_eq!(a.leases, 0);
    }
}
