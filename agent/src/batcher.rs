//! The batch queue: which waiting requests run together, and when. Plain data that
//! the model's runner task owns; unit tests drive it directly.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::validate::BatchKey;
use herd_core::priority::Priority;

pub struct Queued<T> {
    pub key: BatchKey,
    /// Interactive requests go ahead of every bulk one.
    pub priority: Priority,
    pub rows: usize,
    /// Bytes of input.
    pub bytes: u64,
    pub arrived: Instant,
    pub item: T,
}

/// The most one batch may hold: rows (the model's max batch size) and bytes of input.
/// A request over either alone still runs, alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub rows: usize,
    pub bytes: u64,
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
    /// Queues in arrival order within a class, interactive ahead of bulk: the oldest
    /// interactive request heads the queue while there is one.
    pub fn push(&mut self, queued: Queued<T>) {
        let at = match queued.priority {
            Priority::Bulk => self.items.len(),
            Priority::Interactive => self
                .items
                .iter()
                .position(|q| q.priority == Priority::Bulk)
                .unwrap_or(self.items.len()),
        };
        self.items.insert(at, queued);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The class of the request that leads the next batch.
    pub fn head_priority(&self) -> Option<Priority> {
        self.items.front().map(|q| q.priority)
    }

    /// Takes out the requests `out` picks (callers that have gone away, deadlines that
    /// have passed), keeping the others in order.
    pub fn remove_if(&mut self, mut out: impl FnMut(&T) -> bool) -> Vec<T> {
        let (removed, kept): (VecDeque<Queued<T>>, VecDeque<Queued<T>>) =
            std::mem::take(&mut self.items)
                .into_iter()
                .partition(|q| out(&q.item));
        self.items = kept;
        removed.into_iter().map(|q| q.item).collect()
    }

    /// The requests waiting, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|q| &q.item)
    }

    /// Adaptive batching: with no delay a batch runs as soon as the model is free,
    /// holding whatever gathered while the previous one ran. With a delay, a batch
    /// that is not full waits until its oldest request has waited that long.
    pub fn next(&self, now: Instant, limit: Limit, max_delay: Duration) -> Next {
        let Some(head) = self.items.front() else {
            return Next::Idle;
        };
        let (rows, bytes) = self.size_like(head);
        if max_delay.is_zero() || rows >= limit.rows || bytes >= limit.bytes {
            return Next::Run;
        }
        let deadline = head.arrived + max_delay;
        if now >= deadline {
            Next::Run
        } else {
            Next::WaitUntil(deadline)
        }
    }

    /// Takes the oldest request (interactive first) and, in arrival order, every later
    /// one with the same key and no lower class that still fits in `limit`'s rows and
    /// bytes. Requests of other shapes keep
    /// their place; the oldest runs even when it alone is over the limit.
    pub fn take(&mut self, limit: Limit) -> Vec<Queued<T>> {
        let Some(head) = self.items.pop_front() else {
            return Vec::new();
        };
        let (mut rows, mut bytes) = (head.rows, head.bytes);
        let mut batch = vec![head];
        let mut rest = VecDeque::with_capacity(self.items.len());
        while let Some(q) = self.items.pop_front() {
            // A batch led by an interactive request takes interactive ones only: a bulk
            // request would make its run longer, and it waits for it.
            if q.key == batch[0].key
                && q.priority <= batch[0].priority
                && rows + q.rows <= limit.rows
                && bytes.saturating_add(q.bytes) <= limit.bytes
            {
                rows += q.rows;
                bytes += q.bytes;
                batch.push(q);
            } else {
                rest.push_back(q);
            }
        }
        self.items = rest;
        batch
    }

    /// Rows and bytes waiting with the same key as `head`.
    fn size_like(&self, head: &Queued<T>) -> (usize, u64) {
        self.items
            .iter()
            .filter(|q| q.key == head.key && q.priority <= head.priority)
            .fold((0, 0), |(rows, bytes), q| {
                (rows + q.rows, bytes.saturating_add(q.bytes))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(key: i64, rows: usize, arrived: Instant, item: u32) -> Queued<u32> {
        Queued {
            key: vec![vec![key]],
            priority: Priority::Interactive,
            rows,
            bytes: rows as u64 * 16,
            arrived,
            item,
        }
    }

    fn bulk(key: i64, rows: usize, arrived: Instant, item: u32) -> Queued<u32> {
        Queued {
            priority: Priority::Bulk,
            ..q(key, rows, arrived, item)
        }
    }

    #[test]
    fn interactive_requests_go_ahead_of_bulk_ones_in_batches_of_their_own() {
        let now = Instant::now();
        let mut queue = BatchQueue::default();
        queue.push(bulk(1, 1, now, 1));
        queue.push(bulk(2, 1, now, 2));
        queue.push(q(1, 1, now, 3));
        queue.push(bulk(1, 1, now, 4));
        queue.push(q(2, 1, now, 5));
        assert_eq!(queue.iter().copied().collect::<Vec<_>>(), [3, 5, 1, 2, 4]);
        // The oldest interactive request heads the batch, with the interactive ones of
        // its shape only; then bulk, oldest first.
        assert_eq!(items(&queue.take(rows(8))), [3]);
        assert_eq!(items(&queue.take(rows(8))), [5]);
        assert_eq!(items(&queue.take(rows(8))), [1, 4]);
        assert_eq!(items(&queue.take(rows(8))), [2]);
    }

    /// At most `rows` rows, bytes unbounded.
    fn rows(rows: usize) -> Limit {
        Limit {
            rows,
            bytes: u64::MAX,
        }
    }

    fn items(batch: &[Queued<u32>]) -> Vec<u32> {
        batch.iter().map(|q| q.item).collect()
    }

    #[test]
    fn an_idle_model_runs_a_lone_request_at_once() {
        let now = Instant::now();
        let mut queue = BatchQueue::default();
        assert_eq!(queue.next(now, rows(32), Duration::ZERO), Next::Idle);
        queue.push(q(4, 1, now, 1));
        assert_eq!(queue.next(now, rows(32), Duration::ZERO), Next::Run);
        assert_eq!(items(&queue.take(rows(32))), vec![1]);
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
        assert_eq!(items(&queue.take(rows(6))), vec![1, 3, 5]);
        assert_eq!(items(&queue.take(rows(6))), vec![2]);
        assert_eq!(items(&queue.take(rows(6))), vec![4]);
        assert!(queue.take(rows(6)).is_empty());
    }

    #[test]
    fn a_delay_waits_to_fill_unless_the_batch_is_full() {
        let start = Instant::now();
        let delay = Duration::from_millis(5);
        let mut queue = BatchQueue::default();
        queue.push(q(4, 1, start, 1));
        assert_eq!(
            queue.next(start, rows(4), delay),
            Next::WaitUntil(start + delay)
        );
        assert_eq!(queue.next(start + delay, rows(4), delay), Next::Run);
        queue.push(q(9, 3, start, 2));
        assert_eq!(
            queue.next(start, rows(4), delay),
            Next::WaitUntil(start + delay),
            "other shapes do not fill it"
        );
        queue.push(q(4, 3, start, 3));
        assert_eq!(queue.next(start, rows(4), delay), Next::Run);
        let bytes = Limit {
            rows: 32,
            bytes: 64,
        };
        assert_eq!(
            queue.next(start, bytes, delay),
            Next::Run,
            "full by bytes: 4 rows of 16"
        );
    }

    #[test]
    fn a_batch_stops_at_its_byte_limit_and_a_large_request_runs_alone() {
        let now = Instant::now();
        let mut queue = BatchQueue::default();
        queue.push(q(4, 2, now, 1)); // 32 bytes
        queue.push(q(4, 3, now, 2)); // 48
        queue.push(q(4, 1, now, 3)); // 16
        queue.push(q(4, 8, now, 4)); // 128: over the limit alone
        queue.push(q(4, 1, now, 5)); // 16
        let limit = Limit {
            rows: 32,
            bytes: 64,
        };
        assert_eq!(
            items(&queue.take(limit)),
            vec![1, 3, 5],
            "32 + 16 + 16; the 48 would pass 64"
        );
        assert_eq!(items(&queue.take(limit)), vec![2]);
        assert_eq!(items(&queue.take(limit)), vec![4], "alone, over the limit");
        assert!(queue.is_empty());
    }

    #[test]
    fn remove_if_takes_out_requests_whose_callers_left() {
        let now = Instant::now();
        let mut queue = BatchQueue::default();
        for i in 0..4 {
            queue.push(q(4, 1, now, i));
        }
        assert_eq!(queue.remove_if(|&i| i % 2 == 1), vec![1, 3]);
        assert_eq!(queue.iter().copied().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(items(&queue.take(rows(32))), vec![0, 2]);
    }
}
