//! Idle TTL under tokio's paused clock: a model unloads once idle for its TTL (its
//! worker process exits, so its memory is gone), never while a request holds it.

use std::sync::Arc;
use std::time::Duration;

use herd_agent::validate;
use herd_agent::{ModelCache, ModelSettings, Repository};
use tokio::time::sleep;

use crate::support::*;

fn cache(repo: &tempfile::TempDir, loader: GatedLoader) -> ModelCache {
    ModelCache::new(
        Repository::new(repo_path(repo), ModelSettings::default()),
        Arc::new(loader),
    )
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits, in real time, until `check` holds. The paused clock cannot bound this wait:
/// it jumps ahead whenever the runtime is idle.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_model_unloads_after_its_ttl_and_its_worker_exits() {
    let repo = repository();
    write(repo.path(), "tiny_mlp/herd.toml", b"ttl = \"10s\"\n");
    let cache = cache(&repo, GatedLoader::plain());
    let pid = cache
        .load("tiny_mlp")
        .await
        .expect("load")
        .process_id
        .expect("a worker");
    sleep(Duration::from_secs(9)).await;
    assert!(cache.is_loaded("tiny_mlp"), "9 s idle is under the TTL");
    sleep(Duration::from_secs(2)).await;
    until("the model to unload", || !cache.is_loaded("tiny_mlp")).await;
    until("its worker to exit", || !process_exists(pid)).await;
}

#[tokio::test(start_paused = true)]
async fn a_model_with_work_in_flight_is_never_unloaded() {
    let repo = repository();
    write(repo.path(), "tiny_mlp/herd.toml", b"ttl = \"10s\"\n");
    let gate = Arc::new(Gate::default());
    let loader = GatedLoader::run_gated("tiny_mlp", &gate);
    let cache = cache(&repo, loader);
    let submit = |lease: &herd_agent::Lease, loaded: &herd_agent::Loaded, seed: f32| {
        let _ = lease;
        let valid = validate(
            "tiny_mlp",
            &loaded.spec,
            loaded.max_batch_size,
            mlp_request(1, seed),
        )
        .expect("valid request");
        loaded
            .runner
            .submit(valid, herd_agent::RequestId::generate())
            .expect("queued")
    };
    let running_lease = cache.lease("tiny_mlp").expect("lease");
    let loaded = running_lease.ready().await.expect("load");
    let running = submit(&running_lease, &loaded, 0.0);
    until("the first request to reach the model", || {
        gate.waiting() == 1
    })
    .await;
    let queued_lease = cache.lease("tiny_mlp").expect("lease");
    let queued = submit(&queued_lease, &loaded, 1.0);
    drop(loaded);

    // An hour passes with one request running and one queued.
    sleep(Duration::from_secs(3600)).await;
    assert!(
        cache.is_loaded("tiny_mlp"),
        "unloaded under a running request"
    );
    gate.open();
    running.await.expect("reply").expect("first request runs");
    drop(running_lease);
    sleep(Duration::from_secs(3600)).await;
    assert!(
        cache.is_loaded("tiny_mlp"),
        "unloaded under a queued request"
    );
    queued.await.expect("reply").expect("queued request runs");
    drop(queued_lease);

    // Idle from now: the TTL counts from the last request.
    sleep(Duration::from_secs(9)).await;
    assert!(cache.is_loaded("tiny_mlp"));
    sleep(Duration::from_secs(2)).await;
    until("the model to unload", || !cache.is_loaded("tiny_mlp")).await;
}

#[tokio::test(start_paused = true)]
async fn ttl_zero_unloads_right_after_use_and_never_keeps_the_model() {
    let repo = repository();
    write(repo.path(), "tiny_mlp/herd.toml", b"ttl = 0\n");
    write(repo.path(), "tiny_multi/herd.toml", b"ttl = \"never\"\n");
    let cache = cache(&repo, GatedLoader::plain());
    let pid = cache
        .load("tiny_mlp")
        .await
        .expect("load")
        .process_id
        .expect("a worker");
    cache.load("tiny_multi").await.expect("load");
    until("the ttl = 0 model to unload", || {
        !cache.is_loaded("tiny_mlp")
    })
    .await;
    until("its worker to exit", || !process_exists(pid)).await;
    sleep(Duration::from_secs(365 * 24 * 3600)).await;
    assert!(cache.is_loaded("tiny_multi"), "ttl = never keeps the model");
}
