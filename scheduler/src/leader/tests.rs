//! The election on real stores: the embedded one, and a real etcd (the test binary's, each
//! test under a key prefix of its own, each election with a client of its own as separate
//! schedulers would have).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Candidate, Election, Role, KEY};
use crate::store::etcd_tests::etcd_stores_for_test;
use crate::store::test_etcd::start;
use crate::store::{EmbeddedStore, EtcdStore, Revision, Store};

/// Short, to keep the tests short, and above etcd's minimum TTL.
const TTL: Duration = Duration::from_secs(2);
/// What the issue asks of a takeover.
const TAKEOVER: Duration = Duration::from_secs(5);

async fn elections(stores: Vec<EtcdStore>) -> (Vec<Arc<dyn Store>>, Vec<Election>) {
    let stores: Vec<Arc<dyn Store>> = stores
        .into_iter()
        .map(|s| Arc::new(s) as Arc<dyn Store>)
        .collect();
    let mut elections = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        let me = Candidate::new(format!("10.0.0.{i}:8001"));
        elections.push(Election::start(store.clone(), me, TTL).await);
    }
    (stores, elections)
}

fn leaders(elections: &[Election]) -> Vec<(usize, Revision)> {
    elections
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match *e.role().borrow() {
            Role::Leader { revision } => Some((i, revision)),
            Role::Follower { .. } => None,
        })
        .collect()
}

/// Waits for `role` to satisfy `f`, failing after `within`; says how long it took.
async fn wait_role(
    role: &mut watch::Receiver<Role>,
    within: Duration,
    what: &str,
    f: impl FnMut(&Role) -> bool,
) -> Duration {
    let start = Instant::now();
    let waited = tokio::time::timeout(within, role.wait_for(f))
        .await
        .map(|r| r.is_ok());
    match waited {
        Ok(true) => start.elapsed(),
        Ok(false) => panic!("{what}: the election ended"),
        Err(_) => panic!("{what}: not within {within:?}, role {:?}", *role.borrow()),
    }
}

/// The one leader of `elections`, once there is one.
async fn one_leader(elections: &[Election]) -> (usize, Revision) {
    let deadline = Instant::now() + TAKEOVER;
    loop {
        match leaders(elections)[..] {
            [one] => return one,
            [] => assert!(Instant::now() < deadline, "no leader within {TAKEOVER:?}"),
            ref many => panic!("more than one leader: {many:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_single_scheduler_on_the_embedded_store_is_leader_at_once() {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    let me = Candidate::new("127.0.0.1:8001");
    let election = Election::start(store.clone(), me.clone(), TTL).await;
    let Role::Leader { revision } = *election.role().borrow() else {
        panic!("not leader at once: {:?}", *election.role().borrow());
    };
    let kv = store
        .get(KEY)
        .await
        .expect("get")
        .expect("the leadership key");
    assert_eq!(kv.create_revision, revision);
    assert_eq!(
        serde_json::from_slice::<Candidate>(&kv.value).expect("json"),
        me
    );
    assert!(kv.lease.is_some(), "the key lives on a lease");

    election.resign().await;
    assert_eq!(
        store.get(KEY).await.expect("get"),
        None,
        "resigning frees the key"
    );
}

#[tokio::test]
async fn three_schedulers_on_one_etcd_elect_exactly_one_leader_that_the_others_name() {
    let (_stores, elections) = elections(etcd_stores_for_test(3).await).await;
    let (leader, _) = one_leader(&elections).await;
    // Through a few renewals, the same one leads and the others know where it is.
    for _ in 0..4 {
        assert_eq!(leaders(&elections).len(), 1, "{:?}", leaders(&elections));
        for (i, e) in elections.iter().enumerate() {
            if i != leader {
                assert_eq!(
                    *e.role().borrow(),
                    Role::Follower {
                        leader: Some(format!("10.0.0.{leader}:8001"))
                    }
                );
            }
        }
        tokio::time::sleep(TTL / 4).await;
    }
    assert_eq!(one_leader(&elections).await.0, leader);
}

#[tokio::test]
async fn a_resigning_leader_hands_over_at_once_and_its_fenced_writes_are_refused() {
    let (stores, mut elections) = elections(etcd_stores_for_test(2).await).await;
    let (old, old_fence) = one_leader(&elections).await;
    let written = stores[old].put_fenced("/herd/x", b"old".to_vec(), KEY, old_fence);
    assert!(written.await.expect("put_fenced").is_some());

    let mut next = elections[1 - old].role();
    let started = Instant::now();
    elections.remove(old).resign().await;
    wait_role(&mut next, TAKEOVER, "takeover", Role::is_leader).await;
    eprintln!("takeover after a resign: {:?}", started.elapsed());

    let Role::Leader { revision: fence } = *next.borrow() else {
        unreachable!()
    };
    assert_ne!(fence, old_fence);
    let stale = stores[old].put_fenced("/herd/x", b"stale".to_vec(), KEY, old_fence);
    assert_eq!(stale.await.expect("put_fenced"), None);
    let fresh = stores[1 - old].put_fenced("/herd/x", b"new".to_vec(), KEY, fence);
    assert!(fresh.await.expect("put_fenced").is_some());
    let kv = stores[old].get("/herd/x").await.expect("get").expect("key");
    assert_eq!(kv.value, b"new");
}

#[tokio::test]
async fn a_leader_that_dies_is_replaced_when_its_lease_expires() {
    let (stores, mut elections) = elections(etcd_stores_for_test(2).await).await;
    let (old, old_fence) = one_leader(&elections).await;
    let mut next = elections[1 - old].role();
    let started = Instant::now();
    // Gone without a word, as a killed process: no revoke.
    drop(elections.remove(old));
    wait_role(&mut next, TAKEOVER, "takeover", Role::is_leader).await;
    eprintln!(
        "takeover after a crash (lease TTL {TTL:?}): {:?}",
        started.elapsed()
    );
    let stale = stores[old].put_fenced("/herd/x", b"stale".to_vec(), KEY, old_fence);
    assert_eq!(stale.await.expect("put_fenced"), None);
}

#[tokio::test]
async fn a_leader_whose_lease_is_revoked_steps_down_and_its_old_token_is_refused() {
    let (stores, elections) = elections(etcd_stores_for_test(2).await).await;
    let (old, old_fence) = one_leader(&elections).await;
    let kv = stores[0].get(KEY).await.expect("get").expect("key");
    let lease = kv.lease.expect("a leased key");
    // Someone else ends the lease: the leader learns it at its next renewal.
    stores[1 - old].revoke(lease).await.expect("revoke");
    let mut role = elections[old].role();
    let took = wait_role(&mut role, TAKEOVER, "step down", |r| {
        *r != Role::Leader {
            revision: old_fence,
        }
    })
    .await;
    eprintln!("stepped down after its lease was revoked: {took:?}");
    let (_, fence) = one_leader(&elections).await;
    assert_ne!(fence, old_fence);
    let stale = stores[old].put_fenced("/herd/x", b"stale".to_vec(), KEY, old_fence);
    assert_eq!(stale.await.expect("put_fenced"), None);
}

#[tokio::test]
async fn a_leader_cut_off_from_etcd_steps_down_before_its_lease_could_end() {
    let etcd = start().await;
    let endpoints = [etcd.endpoint.clone()];
    let store = EtcdStore::connect(&endpoints, "", Duration::from_secs(1))
        .await
        .expect("connect");
    let election = Election::start(Arc::new(store), Candidate::new("a:1"), TTL).await;
    let mut role = election.role();
    assert!(role.borrow().is_leader());
    drop(etcd);
    // Its lease lived at least TTL past the last renewal, which was before the cut.
    let took = wait_role(&mut role, TTL, "step down", |r| !r.is_leader()).await;
    eprintln!("stepped down {took:?} after etcd went away (lease TTL {TTL:?})");
}
