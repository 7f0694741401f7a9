//! A semaphore's size changed while permits are out: what a live reconfigure of a queue
//! limit needs. Growing adds permits at once; shrinking takes the surplus as holders
//! give theirs back, so nothing running or queued is cut off.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Resizes `permits` from `from` to `to` permits in all.
pub fn resize(permits: &Arc<Semaphore>, from: usize, to: usize) {
    if to > from {
        permits.add_permits(to - from);
        return;
    }
    let surplus = from - to;
    if surplus == 0 {
        return;
    }
    // Taken now where free, the rest as it comes back.
    let free = permits.forget_permits(surplus);
    let owed = surplus - free;
    if owed == 0 {
        return;
    }
    let permits = permits.clone();
    tokio::spawn(async move {
        let mut owed = owed;
        // acquire_many takes at most u32::MAX at a time.
        while owed > 0 {
            let n = owed.min(u32::MAX as usize);
            match permits.acquire_many(n as u32).await {
                Ok(p) => p.forget(),
                Err(_) => return,
            }
            owed -= n;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn growing_adds_at_once_and_shrinking_waits_for_holders() {
        let permits = Arc::new(Semaphore::new(4));
        resize(&permits, 4, 6);
        assert_eq!(permits.available_permits(), 6);
        let held = permits.clone().try_acquire_many_owned(5).expect("5 of 6");
        // Down to 2 while 5 are out: the one free goes now, 3 more as they come back.
        resize(&permits, 6, 2);
        assert_eq!(permits.available_permits(), 0);
        drop(held);
        // The shrinking task takes its 3 once it runs.
        let two = permits.acquire_many(2).await.expect("2 left");
        tokio::task::yield_now().await;
        assert_eq!(permits.available_permits(), 0);
        drop(two);
        assert_eq!(permits.available_permits(), 2);
    }
}
