//! Holding back repeated log lines: at most one per interval, and the next line written
//! says how many were held back. Pure; the caller passes the time.

use std::time::Duration;

use tokio::time::Instant;

pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            held: 0,
        }
    }

    /// Whether a line may be written at `now`: `Some(n)` with the `n` lines held back
    /// since the last one written, or `None` (and one more held back) when the last
    /// was written less than the interval ago.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_interval_and_the_next_counts_those_held_back() {
        let second = Duration::from_secs(1);
        let mut throttle = Throttle::new(second);
        assert_eq!(
            throttle.admit(Instant::now()),
            Some(0),
            "the first is written"
        );
        let held = (0..812)
            .filter(|_| throttle.admit(Instant::now()).is_none())
            .count();
        assert_eq!(held, 812, "a flood within the second is held back");
        tokio::time::advance(second - Duration::from_millis(1)).await;
        assert_eq!(throttle.admit(Instant::now()), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            throttle.admit(Instant::now()),
            Some(813),
            "a second later, one line counts them"
        );
        assert_eq!(throttle.admit(Instant::now()), None);
        tokio::time::advance(10 * second).await;
        assert_eq!(throttle.admit(Instant::now()), Some(1));
        assert_eq!(
            throttle.admit(Instant::now() + second),
            Some(0),
            "a quiet spell writes every line"
        );
    }
}
