//! What herd keeps on disk: an agent's cached model files are checked before they are
//! loaded, a corrupt scheduler state file does not stop the scheduler, and both keep
//! their directories and files private.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, UNIX_EPOCH};

use herd_core::digest::sha256_file;
use herd_scheduler::config::PolicyArg;
use herd_scheduler::store::{EmbeddedStore, Store};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::cluster_support::*;
use crate::support::*;

const LONG: Duration = Duration::from_secs(60);

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The model files (`<sha256>.onnx`) in an agent's cache.
fn cached_files(models: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(models)
        .expect("read the agent's models directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    files.sort();
    files
}

/// The files in `dir` whose names start with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_model_file_changed_on_disk_is_fetched_again_and_answers_as_before() {
    let settings = [("tiny_mlp", "min_replicas = 1\n")];
    let mut cluster = TestCluster::start(&["1GiB"], &settings, PolicyArg::Spread).await;
    let s = cluster.scheduler.clone();
    eventually("placed", LONG, || {
        s.lock().ready_replicas("tiny_mlp").len() == 1
    })
    .await;
    let mut client = cluster.client().await;
    let before = client
        .model_infer(mlp_request(2, 0.5))
        .await
        .expect("inference")
        .into_inner()
        .raw_output_contents;

    let models = cluster.agents[0].data_dir.join("models");
    let files = cached_files(&models);
    assert_eq!(files.len(), 1, "{files:?}");
    let file = files[0].clone();
    let digest = file
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .to_string();
    #[cfg(unix)]
    {
        assert_eq!(mode(&models), 0o700, "the fetched models directory");
        assert_eq!(mode(&file), 0o600, "a fetched model file");
    }

    // The agent stops; the file changes under it, keeping its size.
    cluster.agents[0].child.kill().await.expect("SIGKILL");
    let _ = cluster.agents[0].child.wait().await;
    let mut bytes = std::fs::read(&file).expect("read");
    let size = bytes.len();
    let last = size - 1;
    bytes[last] = bytes[last].wrapping_add(1);
    std::fs::write(&file, &bytes).expect("write");
    // Filesystems keep mtimes coarsely: set one that certainly differs.
    std::fs::File::options()
        .write(true)
        .open(&file)
        .expect("open")
        .set_modified(UNIX_EPOCH + Duration::from_secs(1_000_000))
        .expect("set mtime");
    assert_ne!(sha256_file(&file).expect("hash"), digest);

    let again = cluster.spawn_agent("a", "1GiB", TOKEN).await;
    cluster.agents[0] = again;
    eventually("placed again", LONG, || {
        s.lock().ready_replicas("tiny_mlp").len() == 1
            && cluster.events("loaded", "tiny_mlp").len() == 2
    })
    .await;
    let loads = cluster.events("loaded", "tiny_mlp");
    // The node still listed the file by name, but the load found it bad and fetched it.
    assert!(
        loads[1].message.contains("file fetched from the scheduler"),
        "{:?}",
        loads[1]
    );
    assert_eq!(sha256_file(&file).expect("hash"), digest);
    assert_eq!(std::fs::metadata(&file).expect("stat").len() as usize, size);
    let after = client
        .model_infer(mlp_request(2, 0.5))
        .await
        .expect("inference")
        .into_inner()
        .raw_output_contents;
    assert_eq!(after, before, "the same answer as before the file changed");
}

/// A state file with a few catalog-like keys, as a scheduler leaves it; its bytes.
async fn written_state(path: &Path) -> Vec<u8> {
    let store = EmbeddedStore::open(path).expect("open");
    for i in 0..20 {
        store
            .put(&format!("/models/m{i}"), vec![7; 300], None)
            .await
            .expect("put");
    }
    drop(store);
    std::fs::read(path).expect("read state")
}

/// A truncated state file (redb panics on it) and one with a garbage header (redb
/// refuses it), each as the only thing in a data directory.
async fn corrupt_states() -> Vec<(&'static str, tempfile::TempDir)> {
    let scratch = tempfile::tempdir().expect("tempdir");
    let whole = written_state(&scratch.path().join("state.redb")).await;
    let truncated = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        truncated.path().join("state.redb"),
        &whole[..whole.len() / 2],
    )
    .expect("write");
    let garbage = tempfile::tempdir().expect("tempdir");
    let mut bytes = whole;
    bytes[..16].copy_from_slice(b"not a redb file!");
    std::fs::write(garbage.path().join("state.redb"), &bytes).expect("write");
    vec![("truncated", truncated), ("garbage header", garbage)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herd_scheduler_starts_over_a_corrupt_state_file_and_says_so() {
    let repo = repository();
    for (kind, data) in corrupt_states().await {
        let mut child = herd(&[])
            .args([
                "scheduler",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--token",
                TOKEN,
            ])
            .arg("--model-repository")
            .arg(repo.path())
            .arg("--data-dir")
            .arg(data.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("start herd scheduler");
        let stderr = child.stderr.take().expect("stderr piped");
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        // Bounded only so that a scheduler that hangs fails the test instead of hanging it.
        tokio::time::timeout(LONG, async {
            while let Some(line) = lines.next_line().await.expect("read stderr") {
                let serving = line.contains("scheduler serving");
                seen.push(line);
                if serving {
                    return;
                }
            }
            let status = child.wait().await.expect("wait");
            panic!(
                "{kind}: the scheduler exited ({status}) instead of serving:\n{}",
                seen.join("\n")
            );
        })
        .await
        .unwrap_or_else(|_| panic!("{kind}: no 'scheduler serving' line:\n{}", seen.join("\n")));
        assert!(
            seen.iter().any(|l| l.contains("WARN")
                && l.contains("state file is corrupt: moved it aside")
                && l.contains("state.redb.corrupt-")),
            "{kind}: no warning that says what happened:\n{}",
            seen.join("\n")
        );
        let aside = named(data.path(), "state.redb.corrupt-");
        assert_eq!(aside.len(), 1, "{kind}: {aside:?}");
        assert!(
            data.path().join("state.redb").is_file(),
            "{kind}: a fresh state file"
        );
        drop(child);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_state_starts_empty_over_a_corrupt_file_and_keeps_what_it_writes_next() {
    let repo = repository();
    for (kind, data) in corrupt_states().await {
        // scheduler_config keeps the state under <data>/scheduler.
        let dir = data.path().join("scheduler");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::rename(data.path().join("state.redb"), dir.join("state.redb")).expect("move");
        let config = scheduler_config(repo.path(), data.path(), PolicyArg::Spread);
        let scheduler = herd_scheduler::start(&config)
            .await
            .unwrap_or_else(|e| panic!("{kind}: the scheduler did not start: {e}"));
        assert_eq!(named(&dir, "state.redb.corrupt-").len(), 1, "{kind}");
        // The catalog is the repository's, whatever the old file remembered.
        assert!(scheduler.lock().model("tiny_mlp").is_some(), "{kind}");
        assert!(
            scheduler
                .store
                .range("/models/m")
                .await
                .expect("range")
                .is_empty(),
            "{kind}"
        );
        scheduler
            .store
            .put("/test/key", b"kept".to_vec(), None)
            .await
            .expect("the fresh store takes writes");
        drop(scheduler);
        let store = EmbeddedStore::open(&dir.join("state.redb")).expect("reopen");
        assert_eq!(
            store
                .get("/test/key")
                .await
                .expect("get")
                .map(|kv| kv.value),
            Some(b"kept".to_vec()),
            "{kind}"
        );
        assert_eq!(named(&dir, "state.redb.corrupt-").len(), 1, "{kind}");
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_data_directory_is_private() {
    let repo = repository();
    let data = tempfile::tempdir().expect("tempdir");
    // A parent that does not exist yet: everything start creates is private.
    let config = scheduler_config(repo.path(), &data.path().join("new"), PolicyArg::Spread);
    let dir = data.path().join("new").join("scheduler");
    let scheduler = herd_scheduler::start(&config).await.expect("start");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&data.path().join("new")), 0o700);
    assert_eq!(mode(&dir.join("state.redb")), 0o600);
    drop(scheduler);
}
