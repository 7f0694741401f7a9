//! The placement loop: a snapshot of the model as a placement problem (under the lock),
//! `solve` on it (a pure function, outside the lock, so routing never waits for it),
//! the solution applied to the model (under the lock again), and the loads and unloads
//! it returns carried out by the executor.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::leader::Role;
use crate::model::Action;
use crate::placement::solve;
use crate::state::Scheduler;

/// Runs until the process ends: on every wake-up, on a change of role, and at least
/// every report interval. Every scheduler marks silent nodes down (followers route
/// too); only the leader places and writes records.
pub async fn run(scheduler: Arc<Scheduler>, mut role: watch::Receiver<Role>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(scheduler.settings.report_interval) => {}
            _ = scheduler.reconcile.notified() => {}
            changed = role.changed() => {
                if changed.is_err() {
                    return;
                }
                if role.borrow().is_leader() {
                    scheduler.lock().learn_again(Instant::now());
                }
            }
        }
        scheduler.check_liveness();
        if !role.borrow_and_update().is_leader() {
            continue;
        }
        let settings = &scheduler.settings;
        let scaled = scheduler.lock().scale(
            settings.target_ongoing_requests,
            settings.upscale_delay,
            Instant::now(),
        );
        // This round places what scaling asked for.
        scheduler.execute(
            scaled
                .into_iter()
                .filter(|a| *a != Action::Reconcile)
                .collect(),
        );
        once(&scheduler);
        crate::records::sync(&scheduler).await;
    }
}

/// One round of placement.
pub fn once(scheduler: &Arc<Scheduler>) {
    let actions = plan(scheduler);
    scheduler.execute(actions);
    scheduler.round_done();
}

/// The plan step of one round, without carrying it out: what to load and unload.
pub fn plan(scheduler: &Scheduler) -> Vec<Action> {
    let settings = &scheduler.settings;
    let Some(snapshot) =
        scheduler
            .lock()
            .snapshot(settings.policy, settings.headroom, Instant::now())
    else {
        return Vec::new();
    };
    let changes = snapshot.changes(solve(&snapshot.problem, &snapshot.previous));
    scheduler.lock().apply(&changes, Instant::now())
}
