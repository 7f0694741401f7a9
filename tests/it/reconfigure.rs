//! Live reconfigure: a model's edited herd.toml reaches its running replicas through
//! `herd models rescan` (the same read as --rescan-interval), under load, without one
//! failed request: batching and the TTL live, threads through a new worker.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herd_scheduler::config::PolicyArg;

use crate::cluster_support::*;
use crate::support::*;

const LONG: Duration = Duration::from_secs(60);

/// The batch size and TTL agent "a" reports for tiny_mlp.
fn reported(cluster: &TestCluster) -> Option<(u32, i64)> {
    let c = cluster.scheduler.lock();
    let node = c.node("a")?;
    let m = node.status.models.iter().find(|m| m.name == "tiny_mlp")?;
    Some((m.max_batch_size, m.ttl_ms))
}

async fn rescan(cluster: &TestCluster) {
    let out = herd(&[
        "models",
        "rescan",
        "--scheduler",
        &cluster.addr,
        "--token",
        &cluster.join_token(),
    ])
    .output()
    .await
    .expect("run herd models rescan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1 models added or changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_herd_toml_reaches_running_replicas_under_load_without_a_failed_request() {
    let settings = [("tiny_mlp", "max_batch_size = 8\nttl = \"10m\"\n")];
    let cluster = TestCluster::start(&["1GiB"], &settings, PolicyArg::Spread).await;
    let client = cluster.client().await;
    client
        .clone()
        .model_infer(mlp_request(1, 0.0))
        .await
        .expect("loads and answers");
    eventually("the first settings reported", LONG, || {
        reported(&cluster) == Some((8, 600_000))
    })
    .await;

    // Four callers without pause, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let callers: Vec<_> = (0..4)
        .map(|i| {
            let (client, stop) = (client.clone(), stop.clone());
            let (ok, failed) = (ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match client.clone().model_infer(mlp_request(2, i as f32)).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            errors.push(e.to_string());
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                errors
            })
        })
        .collect();

    // Batching and the TTL change live: same worker, new numbers.
    let served_before = ok.load(Ordering::Relaxed);
    write(
        cluster.repo.path(),
        "tiny_mlp/herd.toml",
        b"max_batch_size = 2\nttl = \"1h\"\nmax_batch_delay = \"1ms\"\n",
    );
    rescan(&cluster).await;
    eventually("applied live", LONG, || {
        cluster
            .events("reconfigured", "tiny_mlp")
            .iter()
            .any(|e| e.message == "new settings applied live")
    })
    .await;
    eventually("the new settings reported", LONG, || {
        reported(&cluster) == Some((2, 3_600_000))
    })
    .await;
    let changed = cluster.events("changed", "tiny_mlp");
    assert!(
        changed.iter().any(|e| e.message
            == "herd.toml changed (max_batch_size 8 -> 2, max_batch_delay 0s -> 1ms, ttl 10m -> 1h): \
                sent to 1 running replicas"),
        "{changed:?}"
    );

    // Threads need a new session: a new worker once the old one's queue drains.
    write(
        cluster.repo.path(),
        "tiny_mlp/herd.toml",
        b"max_batch_size = 2\nttl = \"1h\"\nmax_batch_delay = \"1ms\"\nintra_op_threads = 1\n",
    );
    rescan(&cluster).await;
    eventually("a new worker", LONG, || {
        cluster
            .events("reconfigured", "tiny_mlp")
            .iter()
            .any(|e| e.message.contains("its worker restarts"))
    })
    .await;
    eventually("the agent loaded it a second time", LONG, || {
        let c = cluster.scheduler.lock();
        c.node("a")
            .and_then(|n| {
                n.status
                    .models
                    .iter()
                    .find(|m| m.name == "tiny_mlp")
                    .cloned()
            })
            .is_some_and(|m| m.loads >= 2 && m.state == herd_proto::herd::ModelState::Ready as i32)
    })
    .await;
    // Requests keep being answered after both changes.
    let after = ok.load(Ordering::Relaxed);
    eventually("served by the new worker", LONG, || {
        ok.load(Ordering::Relaxed) > after + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for c in callers {
        errors.extend(c.await.expect("caller"));
    }
    assert!(
        ok.load(Ordering::Relaxed) > served_before,
        "served all along"
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "{errors:?}");
}
