//! The etcd store's tests, on a real etcd: the conformance suite and what is etcd's own.
//!
//! One etcd serves the tests of this binary, started on first use. Each `#[tokio::test]`
//! has its own runtime and a client lives on the runtime it was made on, so tests share
//! only the process and its endpoint; each connects its own client, under a key prefix of
//! its own. etcd runs under a shell that holds a pipe from this process: when the pipe
//! closes (the [`Etcd`] dropped, or the test binary gone however it exits), the shell stops
//! etcd and removes its data directory. The shared one is never dropped.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::conformance::{next_event, store_conformance_suite};
use super::etcd::EtcdStore;
use super::{Store, StoreError};

/// Calls of tests wait no longer than this for etcd.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long etcd may take to start answering.
const STARTUP: Duration = Duration::from_secs(30);

/// A running etcd; dropping it stops it.
pub(crate) struct Etcd {
    pub(crate) endpoint: String,
    /// Kept open for as long as etcd should run: its end stops it.
    _lifeline: ChildStdin,
    _shell: Child,
}

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

/// A loopback port free now. etcd binds it a moment later; another process taking it in
/// between would show as etcd failing to start, with its log.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Starts an etcd of its own, for a test that stops it; the others share one.
pub(crate) async fn start() -> Etcd {
    match Command::new("etcd").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`etcd --version` failed: {out:?}; run scripts/setup.sh"),
        Err(e) => panic!(
            "etcd is not installed ({e}): run scripts/setup.sh, which installs Debian's \
             etcd-server; the etcd store's tests need a real etcd"
        ),
    }
    let dir = tempfile::Builder::new()
        .prefix("herd-test-etcd-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = dir.join("etcd.log");
    let mut shell = Command::new("sh")
        .args([
            "-c",
            r#"dir=$1; shift; etcd "$@" </dev/null >"$dir/etcd.log" 2>&1 & pid=$!
               read -r _; kill "$pid"; wait "$pid" 2>/dev/null; rm -rf "$dir""#,
            "sh",
        ])
        .arg(&dir)
        .args(["--name", "test", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("test={peer_url}")])
        .args(["--logger", "zap", "--log-level", "warn"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("start etcd under sh");
    let lifeline = shell.stdin.take().expect("piped stdin");
    let endpoint = format!("127.0.0.1:{client}");
    wait_until_it_answers(&endpoint, &log).await;
    Etcd {
        endpoint,
        _lifeline: lifeline,
        _shell: shell,
    }
}

/// Polls until etcd answers a call, with a deadline; a failure shows etcd's log.
async fn wait_until_it_answers(endpoint: &str, log: &Path) {
    let deadline = Instant::now() + STARTUP;
    let endpoints = [endpoint.to_owned()];
    loop {
        let error = match EtcdStore::connect(&endpoints, "", Duration::from_secs(1)).await {
            Ok(_) => return,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            let mut text = String::new();
            if let Ok(mut file) = std::fs::File::open(log) {
                let _ = file.read_to_string(&mut text);
            }
            panic!("etcd at {endpoint} did not answer within {STARTUP:?}: {error}\netcd's log:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
