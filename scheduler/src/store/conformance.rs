//! The conformance suite every [`Store`](super::Store) implementation runs.
//!
//! ```ignore
//! store_conformance_suite!(embedded_in_memory, async { EmbeddedStore::in_memory() });
//! store_conformance_suite!(etcd, paused_time = false, async { etcd_store_for_test().await });
//! ```
//!
//! The expression is evaluated once per test and may give a store or anything that derefs to
//! one (a store bundled with the temporary directory holding its file, say); the tests only
//! call methods on it. It is evaluated inside the generated module, which glob-imports its
//! parent, so it can name the parent's helpers.
//!
//! What the suite assumes of a fresh store: no keys (an etcd backend should give each test
//! its own key prefix). What it does not assume: that revisions start at 0, or that nobody
//! else advances the revision during a test (tests on a shared etcd cluster may run in
//! parallel), so revisions are compared, not counted. Implementation-specific exact counting
//! belongs next to each implementation.
//!
//! Lease timing: with `paused_time = true` (the default) the lease tests call
//! `tokio::time::pause()` and time then advances only as the runtime idles, so they take no
//! wall-clock time. That suits stores whose leases run on `tokio::time`. A store backed by a
//! real server (etcd) keeps its own clock and its client needs real timeouts: pass
//! `paused_time = false`, and the same tests run in real time (a few seconds each). Lease
//! TTLs are 3 s, above etcd's minimum TTL (about 2 s with default election settings), and
//! every "still alive" check keeps at least 1 s of margin.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::{WatchEvent, WatchStream};

/// How long a test waits for something that should happen (an event, a lease expiry).
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);
/// Lease TTL used by the lease tests.
pub(crate) const TTL: Duration = Duration::from_secs(3);

/// The next event of `events`; panics if none comes within [`PATIENCE`] or the watch ends.
pub(crate) async fn next_event(events: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("no watch event in time")
        .expect("watch stream ended")
}

/// Polls `condition` until it holds; panics after [`PATIENCE`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Generates a module of `#[tokio::test]`s checking a [`Store`](super::Store) implementation.
/// See the module documentation.
macro_rules! store_conformance_suite {
    ($name:ident, $make:expr $(,)?) => {
        $crate::store::conformance::store_conformance_suite!($name, paused_time = true, $make);
    };
    ($name:ident, paused_time = $paused:expr, $make:expr $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[allow(unused_imports)]
            use $crate::store::conformance::{eventually, next_event, TTL};
            #[allow(unused_imports)]
            use $crate::store::{KeyValue, Store, StoreError, WatchEvent};

            /// Pauses tokio's clock for the lease tests, when the store runs on it.
            fn pause_time() {
                if $paused {
                    tokio::time::pause();
                }
            }

            fn is_lease_not_found<T: std::fmt::Debug>(
                result: Result<T, StoreError>,
                lease: i64,
            ) -> bool {
                matches!(result, Err(StoreError::LeaseNotFound(id)) if id == lease)
            }

            #[tokio::test]
            async fn put_get_delete_and_revisions_increase() {
                let store = $make.await;
                let start = store.revision().await.expect("revision");
                assert_eq!(store.get("/k").await.expect("get"), None);

                let put = store.put("/k", b"v1".to_vec(), None).await.expect("put");
                assert!(put > start, "put revision {put} not after {start}");
                assert!(store.revision().await.expect("revision") >= put);
                let kv = store.get("/k").await.expect("get").expect("key exists");
                assert_eq!(
                    kv,
                    KeyValue {
                        key: "/k".to_owned(),
                        value: b"v1".to_vec(),
                        create_revision: put,
                        mod_revision: put,
                        version: 1,
                        lease: None,
                    }
                );

                let deleted = store.delete("/k").await.expect("delete");
                let deleted = deleted.expect("delete of an existing key gives a revision");
                assert!(deleted > put);
                assert!(store.revision().await.expect("revision") >= deleted);
                assert_eq!(store.get("/k").await.expect("get"), None);
                assert_eq!(store.delete("/k").await.expect("delete"), None);
                assert_eq!(store.delete("/never").await.expect("delete"), None);
            }

            #[tokio::test]
            async fn create_revision_mod_revision_and_version() {
                let store = $make.await;
                let r1 = store.put("/a", b"1".to_vec(), None).await.expect("put");
                let r2 = store.put("/a", b"2".to_vec(), None).await.expect("put");
                let r3 = store.put("/a", b"3".to_vec(), None).await.expect("put");
                assert!(r1 < r2 && r2 < r3);
                let kv = store.get("/a").await.expect("get").expect("key");
                assert_eq!(kv.value, b"3");
                assert_eq!(kv.create_revision, r1);
                assert_eq!(kv.mod_revision, r3);
                assert_eq!(kv.version, 3);

                // Other keys do not change it.
                let other = store.put("/b", b"x".to_vec(), None).await.expect("put");
                assert!(other > r3);
                assert_eq!(store.get("/a").await.expect("get"), Some(kv));

                // Deleting and creating again starts a new life: new create_revision, version 1.
                let deleted = store.delete("/a").await.expect("delete").expect("existed");
                let r4 = store.put("/a", b"4".to_vec(), None).await.expect("put");
                assert!(r4 > deleted && deleted > other);
                let kv = store.get("/a").await.expect("get").expect("key");
                assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (r4, r4, 1));
            }

            #[tokio::test]
            async fn range_is_by_plain_prefix_and_sorted() {
                let store = $make.await;
                for key in ["/b", "/ab", "/a/2", "/a", "/a/1", "/c/x"] {
                    store.put(key, key.as_bytes().to_vec(), None).await.expect("put");
                }
                let keys = |kvs: Vec<KeyValue>| -> Vec<String> {
                    kvs.into_iter().map(|kv| kv.key).collect()
                };
                assert_eq!(
                    keys(store.range("/a").await.expect("range")),
                    ["/a", "/a/1", "/a/2", "/ab"]
                );
                assert_eq!(
                    keys(store.range("/a/").await.expect("range")),
                    ["/a/1", "/a/2"]
                );
                assert_eq!(keys(store.range("/c/x").await.expect("range")), ["/c/x"]);
                assert!(store.range("/d").await.expect("range").is_empty());
                assert!(store.range("/a/3").await.expect("range").is_empty());
                assert_eq!(
                    keys(store.range("").await.expect("range")),
                    ["/a", "/a/1", "/a/2", "/ab", "/b", "/c/x"]
                );
                let all = store.range("/").await.expect("range");
                for kv in &all {
                    assert_eq!(kv.value, kv.key.as_bytes());
                    assert_eq!(store.get(&kv.key).await.expect("get").as_ref(), Some(kv));
                }

                store.delete("/a/1").await.expect("delete");
                assert_eq!(
                    keys(store.range("/a").await.expect("range")),
                    ["/a", "/a/2", "/ab"]
                );
            }

            #[tokio::test]
            async fn put_if_with_zero_creates_only() {
                let store = $make.await;
                let created = store
                    .put_if("/leader", b"me".to_vec(), 0, None)
                    .await
                    .expect("put_if")
                    .expect("creates a missing key");
                let kv = store.get("/leader").await.expect("get").expect("key");
                assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (created, created, 1));
                assert_eq!(kv.value, b"me");

                let again = store.put_if("/leader", b"you".to_vec(), 0, None).await;
                assert_eq!(again.expect("put_if"), None);
                assert_eq!(store.get("/leader").await.expect("get"), Some(kv));
            }

            #[tokio::test]
            async fn put_if_compares_mod_revision() {
                let store = $make.await;
                let first = store.put("/k", b"1".to_vec(), None).await.expect("put");
                let second = store
                    .put_if("/k", b"2".to_vec(), first, None)
                    .await
                    .expect("put_if")
                    .expect("revision matches");
                assert!(second > first);
                let kv = store.get("/k").await.expect("get").expect("key");
                assert_eq!((kv.value.as_slice(), kv.mod_revision, kv.version), (&b"2"[..], second, 2));
                assert_eq!(kv.create_revision, first);

                // A stale revision fails and changes nothing.
                let stale = store.put_if("/k", b"3".to_vec(), first, None).await;
                assert_eq!(stale.expect("put_if"), None);
                assert_eq!(store.get("/k").await.expect("get"), Some(kv));

                // A missing key has mod_revision 0: any other expectation fails.
                let missing = store.put_if("/missing", b"x".to_vec(), second, None).await;
                assert_eq!(missing.expect("put_if"), None);
                assert_eq!(store.get("/missing").await.expect("get"), None);

                // After a delete, 0 matches again.
                store.delete("/k").await.expect("delete");
                let recreated = store.put_if("/k", b"4".to_vec(), 0, None).await.expect("put_if");
                assert!(recreated.is_some());
                assert_eq!(store.get("/k").await.expect("get").expect("key").version, 1);
            }

            #[tokio::test]
            async fn put_fenced_writes_only_while_the_fence_key_has_that_life() {
                let store = $make.await;
                let fence = store
                    .put_if("/leader", b"a".to_vec(), 0, None)
                    .await
                    .expect("put_if")
                    .expect("created");
                let written = store
                    .put_fenced("/data", b"1".to_vec(), "/leader", fence)
                    .await
                    .expect("put_fenced")
                    .expect("the fence holds");
                let kv = store.get("/data").await.expect("get").expect("key");
                assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"1"[..], written));

                // Rewriting the fence key keeps its life (create_revision): still fenced in.
                store.put("/leader", b"a2".to_vec(), None).await.expect("put");
                let again = store.put_fenced("/data", b"2".to_vec(), "/leader", fence).await;
                assert!(again.expect("put_fenced").is_some());

                // Deleted and created again by another: the old token is stale, and its
                // writes change nothing; the new one's pass.
                store.delete("/leader").await.expect("delete");
                let gone = store.put_fenced("/data", b"3".to_vec(), "/leader", fence).await;
                assert_eq!(gone.expect("put_fenced"), None);
                let next = store
                    .put_if("/leader", b"b".to_vec(), 0, None)
                    .await
                    .expect("put_if")
                    .expect("created");
                let stale = store.put_fenced("/data", b"4".to_vec(), "/leader", fence).await;
                assert_eq!(stale.expect("put_fenced"), None);
                assert_eq!(store.get("/data").await.expect("get").expect("key").value, b"2");
                let fresh = store.put_fenced("/data", b"5".to_vec(), "/leader", next).await;
                assert!(fresh.expect("put_fenced").is_some());

                // No token matches a missing key, 0 included.
                let none = store.put_fenced("/other", b"x".to_vec(), "/missing", 0).await;
                assert_eq!(none.expect("put_fenced"), None);
                assert_eq!(store.get("/other").await.expect("get"), None);
            }

            #[tokio::test]
            async fn delete_fenced_deletes_only_while_the_fence_holds() {
                let store = $make.await;
                let fence = store
                    .put_if("/leader", b"a".to_vec(), 0, None)
                    .await
                    .expect("put_if")
                    .expect("created");
                store.put("/old", b"1".to_vec(), None).await.expect("put");
                store.put("/kept", b"1".to_vec(), None).await.expect("put");
                let deleted = store.delete_fenced("/old", "/leader", fence).await;
                assert!(deleted.expect("delete_fenced").is_some());
                assert_eq!(store.get("/old").await.expect("get"), None);
                // Nothing to delete is no revision either.
                let absent = store.delete_fenced("/old", "/leader", fence).await;
                assert_eq!(absent.expect("delete_fenced"), None);

                // Another took the fence key: the old token deletes nothing.
                store.delete("/leader").await.expect("delete");
                store
                    .put_if("/leader", b"b".to_vec(), 0, None)
                    .await
                    .expect("put_if")
                    .expect("created");
                let stale = store.delete_fenced("/kept", "/leader", fence).await;
                assert_eq!(stale.expect("delete_fenced"), None);
                assert!(store.get("/kept").await.expect("get").is_some());
            }

            #[tokio::test]
            async fn put_with_unknown_lease_fails() {
                let store = $make.await;
                let lease = store.grant_lease(TTL).await.expect("grant");
                store.revoke(lease).await.expect("revoke");

                assert!(is_lease_not_found(store.put("/k", b"v".to_vec(), Some(lease)).await, lease));
                assert_eq!(store.get("/k").await.expect("get"), None);
                // put_if checks the lease when its comparison succeeds, as an etcd txn does,
                let created = store.put_if("/k", b"v".to_vec(), 0, Some(lease)).await;
                assert!(is_lease_not_found(created, lease));
                assert_eq!(store.get("/k").await.expect("get"), None);
                // and only then.
                let skipped = store.put_if("/k", b"v".to_vec(), 12345, Some(lease)).await;
                assert_eq!(skipped.expect("failed comparison is not an error"), None);

                assert!(is_lease_not_found(store.keep_alive(lease).await, lease));
                assert!(is_lease_not_found(store.revoke(lease).await, lease));
            }

            #[tokio::test]
            async fn lease_attaches_and_a_plain_put_detaches() {
                let store = $make.await;
                let lease = store.grant_lease(Duration::from_secs(60)).await.expect("grant");
                store.put("/n/1", b"a".to_vec(), Some(lease)).await.expect("put");
                store.put("/n/2", b"b".to_vec(), Some(lease)).await.expect("put");
                store.put("/n/3", b"c".to_vec(), None).await.expect("put");
                let kv = store.get("/n/1").await.expect("get").expect("key");
                assert_eq!(kv.lease, Some(lease));
                assert_eq!(store.get("/n/3").await.expect("get").expect("key").lease, None);

                // A put without a lease detaches the key: it outlives the lease.
                store.put("/n/2", b"b2".to_vec(), None).await.expect("put");
                let kv2 = store.get("/n/2").await.expect("get").expect("key");
                assert_eq!((kv2.lease, kv2.version), (None, 2));

                store.revoke(lease).await.expect("revoke");
                assert_eq!(store.get("/n/1").await.expect("get"), None);
                assert_eq!(store.get("/n/2").await.expect("get"), Some(kv2));
                assert!(store.get("/n/3").await.expect("get").is_some());
            }

            #[tokio::test]
            async fn revoke_deletes_the_lease_keys() {
                let store = $make.await;
                let lease = store.grant_lease(Duration::from_secs(60)).await.expect("grant");
                let other = store.grant_lease(Duration::from_secs(60)).await.expect("grant");
                assert_ne!(lease, other);
                let before = store.revision().await.expect("revision");
                store.put("/l/a", b"a".to_vec(), Some(lease)).await.expect("put");
                store.put("/l/b", b"b".to_vec(), Some(lease)).await.expect("put");
                store.put("/l/c", b"c".to_vec(), Some(other)).await.expect("put");
                store.put("/l/d", b"d".to_vec(), None).await.expect("put");
                let written = store.revision().await.expect("revision");
                assert!(written > before);

                store.revoke(lease).await.expect("revoke");
                // etcd deletes a lease's keys in one revision, the embedded store in one each.
                assert!(store.revision().await.expect("revision") > written);
                let keys: Vec<String> = store
                    .range("/l/")
                    .await
                    .expect("range")
                    .into_iter()
                    .map(|kv| kv.key)
                    .collect();
                assert_eq!(keys, ["/l/c", "/l/d"]);
                assert!(is_lease_not_found(store.revoke(lease).await, lease));
                assert!(is_lease_not_found(store.keep_alive(lease).await, lease));
                store.keep_alive(other).await.expect("the other lease lives on");

                // A lease with no keys can be revoked too.
                let empty = store.grant_lease(Duration::from_secs(60)).await.expect("grant");
                store.revoke(empty).await.expect("revoke");
            }

            #[tokio::test]
            async fn lease_expiry_deletes_the_lease_keys() {
                pause_time();
                let store = $make.await;
                let lease = store.grant_lease(TTL).await.expect("grant");
                store.put("/e/a", b"a".to_vec(), Some(lease)).await.expect("put");
                store.put("/e/b", b"b".to_vec(), Some(lease)).await.expect("put");
                store.put("/e/c", b"c".to_vec(), None).await.expect("put");

                tokio::time::sleep(TTL - Duration::from_secs(1)).await;
                assert_eq!(store.range("/e/").await.expect("range").len(), 3);

                eventually("the leased keys to expire", || async {
                    store.range("/e/").await.expect("range").len() == 1
                })
                .await;
                assert!(store.get("/e/c").await.expect("get").is_some());
                assert!(is_lease_not_found(store.keep_alive(lease).await, lease));
                assert!(is_lease_not_found(store.put("/e/a", b"a".to_vec(), Some(lease)).await, lease));
            }

            #[tokio::test]
            async fn keep_alive_extends_the_lease() {
                pause_time();
                let store = $make.await;
                let lease = store.grant_lease(TTL).await.expect("grant");
                store.put("/ka", b"v".to_vec(), Some(lease)).await.expect("put");

                // Renewed twice, the lease outlives its first TTL by far.
                let step = TTL - Duration::from_secs(1);
                for _ in 0..3 {
                    tokio::time::sleep(step).await;
                    store.keep_alive(lease).await.expect("keep_alive");
                }
                tokio::time::sleep(step).await;
                assert!(store.get("/ka").await.expect("get").is_some());

                // Left alone, it ends.
                eventually("the lease to expire", || async {
                    store.get("/ka").await.expect("get").is_none()
                })
                .await;
                assert!(is_lease_not_found(store.keep_alive(lease).await, lease));
            }

            #[tokio::test]
            async fn watch_sees_changes_under_its_prefix_in_order() {
                let store = $make.await;
                store.put("/w/before", b"0".to_vec(), None).await.expect("put");
                let mut events = store.watch("/w/").await.expect("watch");

                let a = store.put("/w/a", b"1".to_vec(), None).await.expect("put");
                store.put("/x/a", b"elsewhere".to_vec(), None).await.expect("put");
                store.put("/w", b"not under /w/".to_vec(), None).await.expect("put");
                let b = store.put("/w/b", b"2".to_vec(), None).await.expect("put");
                let a2 = store.put("/w/a", b"3".to_vec(), None).await.expect("put");
                let deleted = store.delete("/w/a").await.expect("delete").expect("existed");
                store.delete("/x/a").await.expect("delete");
                let before = store.delete("/w/before").await.expect("delete").expect("existed");
                let end = store.put("/w/end", Vec::new(), None).await.expect("put");

                let expected = [
                    WatchEvent::Put(KeyValue {
                        key: "/w/a".to_owned(),
                        value: b"1".to_vec(),
                        create_revision: a,
                        mod_revision: a,
                        version: 1,
                        lease: None,
                    }),
                    WatchEvent::Put(KeyValue {
                        key: "/w/b".to_owned(),
                        value: b"2".to_vec(),
                        create_revision: b,
                        mod_revision: b,
                        version: 1,
                        lease: None,
                    }),
                    WatchEvent::Put(KeyValue {
                        key: "/w/a".to_owned(),
                        value: b"3".to_vec(),
                        create_revision: a,
                        mod_revision: a2,
                        version: 2,
                        lease: None,
                    }),
                    WatchEvent::Delete {
                        key: "/w/a".to_owned(),
                        revision: deleted,
                    },
                    WatchEvent::Delete {
                        key: "/w/before".to_owned(),
                        revision: before,
                    },
                ];
                for want in expected {
                    assert_eq!(next_event(&mut events).await, want);
                }
                let last = next_event(&mut events).await;
                assert_eq!((last.key(), last.revision()), ("/w/end", end));
            }

            #[tokio::test]
            async fn watchers_are_independent() {
                let store = $make.await;
                let mut all = store.watch("/").await.expect("watch");
                let mut models = store.watch("/models/").await.expect("watch");
                let mut nodes = store.watch("/nodes/").await.expect("watch");

                let m = store.put("/models/m", Vec::new(), None).await.expect("put");
                let n = store.put("/nodes/n", Vec::new(), None).await.expect("put");
                drop(models);

                let e = next_event(&mut all).await;
                assert_eq!((e.key(), e.revision()), ("/models/m", m));
                let e = next_event(&mut all).await;
                assert_eq!((e.key(), e.revision()), ("/nodes/n", n));
                let e = next_event(&mut nodes).await;
                assert_eq!((e.key(), e.revision()), ("/nodes/n", n));

                // A dropped watcher does not disturb writers or the others.
                let m2 = store.put("/models/m", Vec::new(), None).await.expect("put");
                let e = next_event(&mut all).await;
                assert_eq!((e.key(), e.revision()), ("/models/m", m2));
                models = store.watch("/models/").await.expect("watch");
                let m3 = store.delete("/models/m").await.expect("delete").expect("existed");
                assert_eq!(
                    next_event(&mut models).await,
                    WatchEvent::Delete { key: "/models/m".to_owned(), revision: m3 }
                );
            }

            #[tokio::test]
            async fn concurrent_writes_get_distinct_revisions_seen_in_order() {
                let store = $make.await;
                let mut events = store.watch("/c/").await.expect("watch");
                let keys: Vec<String> = (0..16).map(|i| format!("/c/{}", i % 4)).collect();
                let writes = keys.iter().map(|key| store.put(key, Vec::new(), None));
                let mut revisions: Vec<i64> = futures::future::join_all(writes)
                    .await
                    .into_iter()
                    .map(|r| r.expect("put"))
                    .collect();
                revisions.sort_unstable();
                revisions.dedup();
                assert_eq!(revisions.len(), keys.len(), "revisions are not distinct");

                let mut seen = Vec::new();
                for _ in 0..keys.len() {
                    seen.push(next_event(&mut events).await.revision());
                }
                assert_eq!(seen, revisions, "events out of revision order");
                for i in 0..4 {
                    let kv = store.get(&format!("/c/{i}")).await.expect("get").expect("key");
                    assert_eq!(kv.version, 4);
                }
            }

            #[tokio::test]
            async fn watch_sees_revoke_deletes() {
                let store = $make.await;
                let mut events = store.watch("/r/").await.expect("watch");
                let lease = store.grant_lease(Duration::from_secs(60)).await.expect("grant");
                let a = store.put("/r/a", Vec::new(), Some(lease)).await.expect("put");
                let b = store.put("/r/b", Vec::new(), Some(lease)).await.expect("put");
                store.revoke(lease).await.expect("revoke");

                for (key, revision) in [("/r/a", a), ("/r/b", b)] {
                    match next_event(&mut events).await {
                        WatchEvent::Put(kv) => {
                            assert_eq!((kv.key.as_str(), kv.mod_revision, kv.lease), (key, revision, Some(lease)));
                        }
                        other => panic!("expected a put of {key}, got {other:?}"),
                    }
                }
                let mut deleted = Vec::new();
                for _ in 0..2 {
                    match next_event(&mut events).await {
                        WatchEvent::Delete { key, revision } => deleted.push((key, revision)),
                        other => panic!("expected a delete, got {other:?}"),
                    }
                }
                deleted.sort();
                assert_eq!(deleted[0].0, "/r/a");
                assert_eq!(deleted[1].0, "/r/b");
                assert!(deleted.iter().all(|(_, revision)| *revision > b));
            }

            #[tokio::test]
            async fn watch_sees_lease_expiry_deletes() {
                pause_time();
                let store = $make.await;
                let mut events = store.watch("/x/").await.expect("watch");
                let lease = store.grant_lease(TTL).await.expect("grant");
                let put = store.put("/x/node", b"up".to_vec(), Some(lease)).await.expect("put");
                store.put("/y/node", b"up".to_vec(), Some(lease)).await.expect("put");

                let e = next_event(&mut events).await;
                assert_eq!((e.key(), e.revision()), ("/x/node", put));
                // Nothing else happens: the delete must come from the expiry alone.
                match next_event(&mut events).await {
                    WatchEvent::Delete { key, revision } => {
                        assert_eq!(key, "/x/node");
                        assert!(revision > put);
                    }
                    other => panic!("expected the expiry delete, got {other:?}"),
                }
                assert_eq!(store.get("/x/node").await.expect("get"), None);
                eventually("the other leased key to expire", || async {
                    store.get("/y/node").await.expect("get").is_none()
                })
                .await;
            }
        }
    };
}

pub(crate) use store_conformance_suite;
