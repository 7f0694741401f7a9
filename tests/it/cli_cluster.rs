//! The cluster commands (`herd models`, `herd nodes`) against a real cluster: the
//! scheduler in this process and an agent child process.

use std::process::Output;

use herd_scheduler::config::PolicyArg;
use tokio::process::Command;

use crate::cluster_support::*;

async fn herd(cluster: &TestCluster, args: &[&str]) -> Output {
    Command::new(HERD)
        .args(args)
        .args(["--scheduler", &cluster.addr])
        .env("NO_COLOR", "1")
        .env("HERD_TOKEN", cluster.join_token())
        .output()
        .await
        .expect("run herd")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> herd_client::serde_json::Value {
    herd_client::serde_json::from_str(&ok(out)).expect("--json output parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_nodes_commands_drive_a_cluster() {
    let cluster = TestCluster::start(&["1GiB", "1GiB"], &[], PolicyArg::Spread).await;

    let loaded = ok(&herd(&cluster, &["models", "load", "tiny_mlp"]).await);
    assert!(loaded.contains("tiny_mlp loaded on"), "{loaded}");
    let node = cluster.ready_on("tiny_mlp").pop().expect("a replica");

    let list = json(&herd(&cluster, &["models", "list", "--json", "--window", "0s"]).await);
    let models = list.as_array().expect("a list of models");
    let mlp = models
        .iter()
        .find(|m| m["name"] == "tiny_mlp")
        .expect("tiny_mlp listed");
    assert_eq!(mlp["replicas"][0]["node"], node.as_str());
    assert_eq!(mlp["replicas"][0]["state"], "ready");
    assert!(
        models.iter().any(|m| m["name"] == "tiny_fixed"),
        "the whole catalog is listed"
    );

    let table = ok(&herd(&cluster, &["models", "show", "tiny_mlp", "--window", "0s"]).await);
    assert!(table.contains(&node), "{table}");

    let nodes = json(&herd(&cluster, &["nodes", "list", "--json", "--window", "0s"]).await);
    let names: Vec<&str> = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, vec!["a", "b"]);

    let drained = ok(&herd(&cluster, &["nodes", "drain", &node]).await);
    assert!(drained.contains("tiny_mlp"), "{drained}");
    let s = cluster.scheduler.clone();
    crate::support::eventually(
        "moved off the drained node",
        std::time::Duration::from_secs(60),
        || {
            s.lock()
                .ready_replicas("tiny_mlp")
                .iter()
                .any(|(n, _)| *n != node)
        },
    )
    .await;

    let unloaded = ok(&herd(&cluster, &["models", "unload", "tiny_mlp"]).await);
    assert!(unloaded.contains("tiny_mlp"), "{unloaded}");
    assert!(cluster.ready_on("tiny_mlp").is_empty());

    // A wrong token: one clear line, exit 1, nothing done.
    let out = Command::new(HERD)
        .args([
            "models",
            "load",
            "tiny_fixed",
            "--scheduler",
            &cluster.addr,
            "--token",
            &cluster.join_token_for("wrong"),
        ])
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run herd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refused the token"), "{err}");
    assert!(cluster.ready_on("tiny_fixed").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_why_explains_placement_from_the_scheduler_own_solver() {
    let cluster = TestCluster::start(&["1GiB", "1GiB"], &[], PolicyArg::Spread).await;
    ok(&herd(&cluster, &["models", "load", "tiny_mlp"]).await);
    let holder = cluster.ready_on("tiny_mlp").pop().expect("a replica");
    let other = if holder == "a" { "b" } else { "a" };

    let why = json(&herd(&cluster, &["models", "why", "tiny_mlp", "--json"]).await);
    assert_eq!(why["replicas"], 1);
    let pools = why["pools"].as_array().expect("pools");
    assert_eq!(pools.len(), 2, "{why}");
    let pool = |node: &str| {
        pools
            .iter()
            .find(|p| p["node"] == node)
            .unwrap_or_else(|| panic!("{node} in {why}"))
    };
    assert_eq!(pool(&holder)["has_replica"], true);
    assert_eq!(pool(&holder)["why"], "holds a replica");
    assert_eq!(pool(other)["rank"], 1, "{why}");
    assert_eq!(pool(other)["fits"], true);
    let next = why["next"].as_str().expect("next");
    assert!(
        next.starts_with(&format!("one more replica would go to {other} (cpu)")),
        "{next}"
    );

    // What if it needed more than any node has.
    let table = ok(&herd(
        &cluster,
        &["models", "why", "tiny_mlp", "--memory", "100GiB"],
    )
    .await);
    assert!(table.contains("100.0 GiB per replica (what if)"), "{table}");
    assert!(table.contains("too small: needs 100.0 GiB"), "{table}");
    assert!(
        table.contains("no node can hold model 'tiny_mlp' for replica 2 of 2: it needs 100.0 GiB"),
        "{table}"
    );

    let unknown = herd(&cluster, &["models", "why", "nope"]).await;
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("model 'nope' is not in the catalog"),
        "{stderr}"
    );
}
