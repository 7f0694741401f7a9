//! Leader election over a [`Store`]: of the schedulers sharing one etcd, one places
//! replicas and writes the state; the others serve from what they know and take over when
//! it goes.
//!
//! The leader holds [`KEY`], created with `put_if(KEY, me, 0, lease)`; its value says who
//! it is (JSON [`Candidate`]). The key's create revision is the fencing token
//! ([`Role::Leader`]): writes made through [`Store::put_fenced`] with it are refused once
//! the key has gone. The others watch the key and campaign when it is deleted: its lease
//! was revoked (a clean shutdown) or expired (a crash, a partition). The decisions are
//! in `machine.rs`; this file only makes the calls.

mod machine;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::store::{LeaseId, Revision, Store, StoreError, WatchEvent, WatchStream};
use machine::{Event, Machine, Next};

/// The leadership key, beside the rest of the scheduler's state.
pub const KEY: &str = "/herd/leader";
/// Lease TTL: how long a crashed leader keeps the others waiting. Above etcd's minimum
/// (about 2 s with its default election timeout).
pub const TTL: Duration = Duration::from_secs(3);

/// What this scheduler is in the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// `revision`: the leadership key's create revision, the token that fences writes.
    /// 0 for the sole scheduler of a store of its own, which has nothing to fence.
    Leader { revision: Revision },
    /// `leader`: the leader's advertised address, when one is known.
    Follower { leader: Option<String> },
}

impl Role {
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }
}

/// Who campaigns: the value of [`KEY`] while it leads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Tells apart two schedulers on one address (one restarted before its lease ended).
    pub id: String,
    /// Where clients and agents reach it (gRPC).
    pub address: String,
}

impl Candidate {
    /// A candidate with a fresh random id.
    pub fn new(address: impl Into<String>) -> Candidate {
        Candidate {
            id: format!("{:016x}", rand::random::<u64>()),
            address: address.into(),
        }
    }
}

/// The address a leadership key's value names; None when it is not a candidate's.
fn holder(value: &[u8]) -> Option<String> {
    serde_json::from_slice::<Candidate>(value)
        .ok()
        .map(|c| c.address)
}

/// One scheduler's part in the election, running until [`resign`](Election::resign)ed.
/// Dropping it stops campaigning without a word, as a crash would: its lease ends by
/// itself.
pub struct Election {
    role: watch::Receiver<Role>,
    /// Kept by [`Election::sole`], whose role never changes.
    _fixed: Option<watch::Sender<Role>>,
    resign: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Election {
    /// The only scheduler a store can have (the embedded one): leader from the start.
    pub fn sole() -> Election {
        let (tx, rx) = watch::channel(Role::Leader { revision: 0 });
        Election {
            role: rx,
            _fixed: Some(tx),
            resign: None,
            task: None,
        }
    }

    /// Campaigns once before returning, so that the role is known (leader at once when
    /// the key is free), then keeps at it in a task.
    pub async fn start(store: Arc<dyn Store>, me: Candidate, ttl: Duration) -> Election {
        let value = serde_json::to_vec(&me).unwrap_or_default();
        let (role, rx) = watch::channel(Role::Follower { leader: None });
        let mut campaign = Campaign {
            store,
            value,
            ttl,
            machine: Machine::new(ttl),
            role,
            lease: None,
            events: None,
        };
        let first = campaign
            .act(Next::Campaign {
                after: Duration::ZERO,
            })
            .await;
        let next = campaign.decide(first);
        let (resign, resigned) = oneshot::channel();
        Election {
            role: rx,
            _fixed: None,
            resign: Some(resign),
            task: Some(tokio::spawn(campaign.run(next, resigned))),
        }
    }

    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// Steps down and revokes the lease, so that another takes over at once.
    pub async fn resign(mut self) {
        if let Some(resign) = self.resign.take() {
            let _ = resign.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

struct Campaign {
    store: Arc<dyn Store>,
    value: Vec<u8>,
    ttl: Duration,
    machine: Machine,
    role: watch::Sender<Role>,
    /// Ours, from its grant until it is revoked.
    lease: Option<LeaseId>,
    /// On [`KEY`], while not leading.
    events: Option<WatchStream>,
}

impl Campaign {
    async fn run(mut self, mut next: Next, mut resigned: oneshot::Receiver<()>) {
        loop {
            let event = tokio::select! {
                _ = &mut resigned => break,
                event = self.act(next) => event,
            };
            next = self.decide(event);
        }
        self.role.send_replace(Role::Follower { leader: None });
        self.revoke().await;
        tracing::info!("resigned from the leader election");
    }

    /// Feeds the machine and says the role before anything else is done.
    fn decide(&mut self, event: Event) -> Next {
        let next = self.machine.on(event);
        let role = self.machine.role();
        let changed = self.role.send_if_modified(|r| {
            let changed = *r != role;
            *r = role.clone();
            changed
        });
        if changed {
            match &role {
                Role::Leader { revision } => tracing::info!(revision, "leader"),
                Role::Follower { leader } => tracing::info!(leader = ?leader, "follower"),
            }
        }
        next
    }

    async fn act(&mut self, next: Next) -> Event {
        match next {
            Next::Campaign { after } => {
                tokio::time::sleep(after).await;
                self.campaign().await
            }
            Next::Follow => self.follow().await,
            Next::Renew { at, deadline } => {
                tokio::time::sleep_until(at).await;
                self.renew(deadline).await
            }
            Next::StepDown => {
                tracing::warn!("lost the lease: stepped down");
                self.revoke().await;
                self.campaign().await
            }
        }
    }

    async fn campaign(&mut self) -> Event {
        // Watch before reading, so that a delete just after the read is seen.
        self.events = match self.store.watch(KEY).await {
            Ok(events) => Some(events),
            Err(e) => return unreachable(e),
        };
        match self.store.get(KEY).await {
            Ok(Some(kv)) => {
                return Event::Held {
                    leader: holder(&kv.value),
                }
            }
            Ok(None) => {}
            Err(e) => return unreachable(e),
        }
        // The lease lives on the server from a moment after this.
        let sent = Instant::now();
        let lease = match self.store.grant_lease(self.ttl).await {
            Ok(lease) => lease,
            Err(e) => return unreachable(e),
        };
        self.lease = Some(lease);
        match self
            .store
            .put_if(KEY, self.value.clone(), 0, Some(lease))
            .await
        {
            Ok(Some(revision)) => {
                self.events = None;
                Event::Won { revision, sent }
            }
            // Another came first: its put reaches the watch, with its address.
            Ok(None) => {
                self.revoke().await;
                Event::Held { leader: None }
            }
            Err(e) => {
                self.revoke().await;
                unreachable(e)
            }
        }
    }

    async fn follow(&mut self) -> Event {
        let Some(events) = &mut self.events else {
            return Event::Vacant;
        };
        while let Some(event) = events.next().await {
            match event {
                WatchEvent::Put(kv) if kv.key == KEY => {
                    return Event::Held {
                        leader: holder(&kv.value),
                    }
                }
                WatchEvent::Delete { key, .. } if key == KEY => return Event::Vacant,
                _ => {}
            }
        }
        // The watch lapsed: read the key again.
        self.events = None;
        Event::Vacant
    }

    async fn renew(&mut self, deadline: Instant) -> Event {
        let Some(lease) = self.lease else {
            return Event::RenewFailed {
                lease_gone: true,
                now: Instant::now(),
            };
        };
        let sent = Instant::now();
        let answer = tokio::time::timeout_at(deadline, self.store.keep_alive(lease)).await;
        match answer {
            Ok(Ok(())) => Event::Renewed { sent },
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot renew the leader lease");
                Event::RenewFailed {
                    lease_gone: matches!(e, StoreError::LeaseNotFound(_)),
                    now: Instant::now(),
                }
            }
            Err(_) => Event::RenewFailed {
                lease_gone: false,
                now: Instant::now(),
            },
        }
    }

    /// Best effort, within a TTL: a lease not revoked ends by itself.
    async fn revoke(&mut self) {
        if let Some(lease) = self.lease.take() {
            let _ = tokio::time::timeout(self.ttl, self.store.revoke(lease)).await;
        }
    }
}

fn unreachable(error: StoreError) -> Event {
    tracing::warn!(%error, "leader election: the store did not answer");
    Event::Unreachable
}
