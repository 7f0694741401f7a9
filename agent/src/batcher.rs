//! The batch queue: which waiting requests run together, and when. Plain data that
//! the model's runner task owns; unit tests drive it directly.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::validate::BatchKey;

pub struct Queued<T> {
    pub key: BatchKey,
    pub rows: usize,
    pub arrived: Instant,
    pub item: T,
}

/// What the runner should do next with an idle model.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing is waiting.
    Idle,
    /// A batch is ready to run now.
    Run,
    /// Requests wait for more to fill the batch, until this instant.
    WaitUntil(Instant),
}

pub struct BatchQueue<T> {
    items: VecDeque<Queued<T>>,
}

impl<T> Default for BatchQueue<T> {
    fn default() -> Self {
        BatchQueue {
            items: VecDeque::new(),
        }
    }
}

impl<T> BatchQueue<T> {
    pub fn push(&mut self, queued: Queued<T>) {
        self.items.push_back(queued);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Drops the requests `keep` refuses (callers that have gone away).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.items.retain(|q| keep(&q.item));
    }

    /// Adaptive batching: with no delay a batch runs as soon as the model is free,
    /// holding whatever gathered while the previous one ran. With a delay, a batch
    /// that is not full waits until its oldest request has waited that long.
    pub fn next(&self, now: Instant, max_rows: usize, max_delay: Duration) -> Next {
        let Some(head) = self.items.front() else {
            return Next::Idle;
        };
        if max_delay.is_zero() || self.rows_like(head) >= max_rows {
            return Next::Run;
        }
        let deadline = head.arrived + max_delay;
        if now >= deadline {
            Next::Run
        } else {
            Next::WaitUntil(deadline)
        }
    }

    /// Takes the oldest request and, in arrival order, every later one with the same
    /// key that still fits in `max_rows`. Requests of other shapes keep their place.
    pub fn take(&mut self, max_rows: usize) -> Vec<Queued<T>> {
        let Some(head) = self.items.pop_front() else {
            return Vec::new();
        };
        let mut rows = head.rows;
        let mut batch = vec![head];
        let mut rest = VecDeque::with_capacity(self.items.len());
        while let Some(q) = self.items.pop_front() {
            if q.key == batch[0].key && rows + q.rows <= max_rows {
                rows += q.rows;
                batch.push(q);
            } else {
                rest.push_back(q);
            }
        }
        self.items = rest;
        batch
    }

    fn rows_like(&self, head: &Queued<T>) -> usize {
        self.items
            .iter()
            .filter(|q| q.key == head.key)
            .map(|q| q.rows)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(key: i64, rows: usize, arrived: Instant, item: u32) -> Queued<u32> {
        Queued {
            key: vec![vec![key]],
            rows,
            arrived,
            item,
        }
    }

    fn items(batch: &[Queued<u32>]) -> Vec<u32> {
        batch.iter().map(|q| q.item).collect()
    }

    #[test]
    fn an_idle_model_runs_a_lone_request_at_once() {
        let now = Instant::now();
        let mut queue = BatchQueue::default();
        assert_eq!(queue.next(now, 32, Duration::ZERO), Next::Idle);
        queue.push(q(4, 1, now, 1));
        assert_eq!(queue.next(now, 32, Duration::ZERO), Next::Run);
        assert_eq!(items(&queue.take(32)), vec![1]);
        assert!(queue.is_empty());
    }

    #[test]
    fn takes_like_requests_up_to_the_row_limit_and_keeps_the_rest_in_order() {
        let now = Instant::now();
        let mut queue = BatchQueue::default();
        queue.push(q(4, 2, now, 1));
        queue.push(q(5, 1, now, 2));
        queue.push(q(4, 3, now, 3));
        queue.push(q(4, 2, now, 4));
        queue.push(q(4, 1, now, 5));
        assert_eq!(items(&queue.take(6)), vec![1, 3, 5]);
        assert_eq!(items(&queue.take(6)), vec![2]);
        assert_eq!(items(&queue.take(6)), vec![4]);
        assert!(queue.take(6).is_empty());
    }

    #[test]
    fn a_delay_waits_to_fill_unless_the_batch_is_full() {
        let start = Instant::now();
        let delay = Duration::from_millis(5);
        let mut queue = BatchQueue::default();
        queue.push(q(4, 1, start, 1));
        assert_eq!(queue.next(start, 4, delay), Next::WaitUntil(start + delay));
        assert_eq!(queue.next(start + delay, 4, delay), Next::Run);
        queue.push(q(9, 3, start, 2));
        assert_eq!(
            queue.next(start, 4, delay),
            Next::WaitUntil(start + delay),
            "other shapes do not fill it"
        );
        queue.push(q(4, 3, start, 3));
        assert_eq!(queue.next(start, 4, delay), Next::Run);
    }

    #[test]
    fn retain_drops_requests_whose_callers_left() {
        let now = Instant::now();
        let mut queue = BatchQueue::default();
        for i in 0..4 {
            queue.push(q(4, 1, now, i));
        }
        queue.retain(|&i| i % 2 == 0);
        assert_eq!(items(&queue.take(32)), vec![0, 2]);
    }
}
