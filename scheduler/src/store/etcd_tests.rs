//! The etcd store's tests, on a real etcd: the conformance suite and what is etcd's own.
//!
//! One etcd serves the tests of this binary, started on first use. Each `#[tokio::test]`
//! has its own runtime and a client lives on the runtime it was made on, so tests share
//! only the process and its endpoint; each connects its own client, under a key prefix of
//! its own. etcd runs under a shell that holds a pipe from this process: when the pipe
//! closes (the [`Etcd`] dropped, or the test binary gone however it exits), the shell stops
//! etcd and removes its data directory. The shared one is never dropped.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::OnceCell;

use super::conformance::{next_event, store_conformance_suite};
use super::etcd::EtcdStore;
use super::test_etcd::{free_port, start, Etcd};
use super::{Store, StoreError};

/// Calls of tests wait no longer than this for etcd.
const TIMEOUT: Duration = Duration::from_secs(10);
static ETCD: OnceCell<Etcd> = OnceCell::const_new();
static NEXT_PREFIX: AtomicUsize = AtomicUsize::new(0);

/// A store on the shared etcd, under a prefix no other test uses: it starts empty.
async fn etcd_store_for_test() -> EtcdStore {
    let mut stores = etcd_stores_for_test(1).await;
    stores.pop().expect("one store")
}

/// `n` clients of the shared etcd under one prefix no other test uses, as `n` schedulers
/// sharing a cluster's state would be.
pub(crate) async fn etcd_stores_for_test(n: usize) -> Vec<EtcdStore> {
    let etcd = ETCD.get_or_init(start).await;
    let prefix = format!("/test/{}/", NEXT_PREFIX.fetch_add(1, Ordering::Relaxed));
    let mut stores = Vec::with_capacity(n);
    for _ in 0..n {
        let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), &prefix, TIMEOUT);
        stores.push(store.await.expect("connect to the test etcd"));
    }
    stores
}

store_conformance_suite!(etcd, paused_time = false, async {
    etcd_store_for_test().await
});

#[tokio::test]
async fn prefixes_keep_stores_apart() {
    let (a, b) = (etcd_store_for_test().await, etcd_store_for_test().await);
    let mut events = b.watch("/k").await.expect("watch");
    a.put("/k", b"a".to_vec(), None).await.expect("put");
    let put = b.put("/k", b"b".to_vec(), None).await.expect("put");

    assert_eq!(a.get("/k").await.expect("get").expect("key").value, b"a");
    let keys: Vec<String> = b
        .range("")
        .await
        .expect("range")
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["/k"]);
    // b's watcher sees b's write only, with the key as b names it.
    let e = next_event(&mut events).await;
    assert_eq!((e.key(), e.revision()), ("/k", put));
}

#[tokio::test]
async fn a_watch_ends_and_calls_fail_when_etcd_goes_away() {
    let etcd = start().await;
    let endpoints = [etcd.endpoint.clone()];
    let store = EtcdStore::connect(&endpoints, "", Duration::from_secs(1))
        .await
        .expect("connect");
    let mut events = store.watch("/").await.expect("watch");
    let put = store.put("/k", Vec::new(), None).await.expect("put");
    assert_eq!(next_event(&mut events).await.revision(), put);

    drop(etcd);
    let end = tokio::time::timeout(Duration::from_secs(30), events.next()).await;
    assert_eq!(end.expect("the watch ends in time"), None);
    match store.get("/k").await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains(&endpoints[0]), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn an_etcd_that_refuses_or_is_silent_is_unavailable_in_time_naming_its_endpoints() {
    // Nothing listens on a port that was free a moment ago: connections are refused.
    let refused = format!("127.0.0.1:{}", free_port());
    // This one accepts connections (the kernel does) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent = silent.local_addr().expect("address").to_string();
    for endpoints in [
        vec![refused.clone(), "127.0.0.1:1".to_owned()],
        vec![silent],
    ] {
        let connect = EtcdStore::connect(&endpoints, "", Duration::from_millis(500));
        let result = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .expect("connect gives up by itself");
        match result {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains(&endpoints.join(",")), "{message}");
            }
            Err(other) => panic!("expected Unavailable, got {other}"),
            Ok(_) => panic!("connected to {endpoints:?}"),
        }
    }
}
