//! herd across real hosts, on the network-namespace bed (netbed.rs): a scheduler host
//! and two agent hosts joined by a bridge; clients run on the scheduler's host.

use std::time::Duration;

use crate::netbed::{Logged, NetBed};
use crate::support::*;

const HERD: &str = env!("CARGO_BIN_EXE_herd");
const LONG: Duration = Duration::from_secs(60);
const TOKEN: &str = "bed-token";

/// The scheduler on host 0 and agents "a" and "b" on hosts 1 and 2, all joined, with
/// tiny_mlp loaded on `replicas` of them (its min_replicas).
struct ThreeHosts {
    // Dropped before the bed: the processes go first, then the namespaces.
    scheduler: Logged,
    agents: Vec<Logged>,
    _repo: tempfile::TempDir,
    _data: Vec<tempfile::TempDir>,
    bed: NetBed,
    /// The join token (the scheduler's DATA_DIR/join-token): agents and tools verify
    /// the scheduler over TLS with it.
    token: String,
}

impl ThreeHosts {
    async fn start(test: &str, replicas: usize) -> Option<ThreeHosts> {
        let bed = NetBed::new(test, 3)?;
        let repo = repository();
        write(
            repo.path(),
            "tiny_mlp/herd.toml",
            format!("min_replicas = {replicas}\n").as_bytes(),
        );
        let data: Vec<_> = (0..3)
            .map(|_| tempfile::tempdir().expect("data dir"))
            .collect();
        let mut command = bed.command(0, HERD);
        command
            .args([
                "scheduler",
                "--listen",
                "0.0.0.0:8001",
                "--http",
                "127.0.0.1:8000",
            ])
            .arg("--model-repository")
            .arg(repo.path())
            .arg("--data-dir")
            .arg(data[0].path())
            .env("HERD_TOKEN", TOKEN);
        let scheduler = Logged::spawn(command);
        scheduler.wait_for(&["scheduler serving"], 1, LONG).await;
        let token = herd_core::auth::read_token_file(&data[0].path().join("join-token"))
            .expect("the join token");
        let mut agents = Vec::new();
        for (i, name) in [(1, "a"), (2, "b")] {
            let mut command = bed.command(i, HERD);
            command
                .args(["agent", "--listen", "0.0.0.0:8001", "--name", name])
                .args(["--scheduler", &format!("{}:8001", bed.address(0))])
                .arg("--data-dir")
                .arg(data[i].path())
                .env("HERD_TOKEN", &token);
            agents.push(Logged::spawn(command));
        }
        scheduler
            .wait_for(&["kind=\"loaded\"", "model=\"tiny_mlp\""], replicas, LONG)
            .await;
        Some(ThreeHosts {
            scheduler,
            agents,
            _repo: repo,
            _data: data,
            bed,
            token,
        })
    }
}

/// A `herd` command's JSON output, run on the scheduler's host against it.
async fn herd_json(hosts: &ThreeHosts, args: &[&str]) -> serde_json::Value {
    let out = hosts
        .bed
        .command(0, HERD)
        .args(args)
        .args(["--scheduler", "127.0.0.1:8001", "--json"])
        .env("HERD_TOKEN", &hosts.token)
        .output()
        .await
        .expect("run herd");
    assert!(
        out.status.success(),
        "herd {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The nodes tiny_mlp is ready on, as the scheduler lists them.
async fn ready_nodes(hosts: &ThreeHosts) -> Vec<String> {
    let models = herd_json(hosts, &["models", "list"]).await;
    let mut nodes: Vec<String> = models
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["name"] == "tiny_mlp")
        .flat_map(|m| m["replicas"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["state"] == "ready")
        .filter_map(|r| r["node"].as_str().map(str::to_string))
        .collect();
    nodes.sort();
    nodes
}

/// `herd bench` on the scheduler's host: what it printed as JSON.
async fn bench_on_scheduler_host(hosts: &ThreeHosts, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench", "--warmup", "0s"];
    all.extend_from_slice(args);
    herd_json(hosts, &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_under_load_costs_no_request() {
    let Some(hosts) = ThreeHosts::start("an_agent_cut_off_under_load_costs_no_request", 2).await
    else {
        return;
    };
    let bed = &hosts.bed;
    // Each agent joined with its own host's address, not loopback.
    for (name, host) in [("a", 1), ("b", 2)] {
        let from = format!("joined from {}:8001", bed.address(host));
        assert_eq!(
            hosts
                .scheduler
                .count(&["kind=\"joined\"", &format!("node=\"{name}\""), &from]),
            1,
            "{}",
            hosts.scheduler.text()
        );
    }
    // Spread over both hosts.
    assert_eq!(ready_nodes(&hosts).await, ["a", "b"]);
    // 12 s of requests at 50/s with 10 s deadlines; agent "a" is cut off 3 s in, with
    // requests in flight to it and more sent before anything notices.
    let load = bench_on_scheduler_host(
        &hosts,
        &[
            "--rate",
            "50",
            "--duration",
            "12s",
            "--timeout",
            "10s",
            "tiny_mlp",
        ],
    );
    let cut = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        bed.cut(1);
        let cut_at = tokio::time::Instant::now();
        // The cut node is marked down (a failed call on its link marks it at once).
        hosts
            .scheduler
            .wait_for(&["kind=\"down\"", "node=\"a\""], 1, LONG)
            .await;
        cut_at.elapsed()
    };
    let (report, to_down) = tokio::join!(load, cut);
    eprintln!(
        "agent cut off under load: {} requests, {} errors, p99 {} ms, max {} ms; \
         marked down {} ms after the cut",
        report["requests"],
        report["errors"],
        report["p99_us"].as_u64().unwrap_or(0) / 1000,
        report["max_us"].as_u64().unwrap_or(0) / 1000,
        to_down.as_millis()
    );
    assert_eq!(
        report["errors"],
        0,
        "no request fails when one of two replicas is cut off: {report}\nscheduler log:\n{}",
        hosts.scheduler.text()
    );
    assert!(report["requests"].as_u64().unwrap_or(0) > 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_partition_heals_the_surplus_copy_is_unloaded() {
    let Some(hosts) =
        ThreeHosts::start("after_a_partition_heals_the_surplus_copy_is_unloaded", 1).await
    else {
        return;
    };
    let bed = &hosts.bed;
    let first = ready_nodes(&hosts).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let (cut, cut_host, other) = if first[0] == "a" {
        ("a", 1, "b")
    } else {
        ("b", 2, "a")
    };
    // Cut off under load, the node's only copy is replaced on the other node; requests
    // meanwhile wait for it (no other replica can take them).
    let load = bench_on_scheduler_host(
        &hosts,
        &[
            "--rate",
            "50",
            "--duration",
            "10s",
            "--timeout",
            "10s",
            "tiny_mlp",
        ],
    );
    let replaced = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        bed.cut(cut_host);
        let cut_at = tokio::time::Instant::now();
        hosts
            .scheduler
            .wait_for(&["kind=\"down\"", &format!("node=\"{cut}\"")], 1, LONG)
            .await;
        hosts
            .scheduler
            .wait_for(
                &[
                    "kind=\"loaded\"",
                    &format!("node=\"{other}\""),
                    "model=\"tiny_mlp\"",
                ],
                1,
                LONG,
            )
            .await;
        cut_at.elapsed()
    };
    let (report, replaced_after) = tokio::join!(load, replaced);
    eprintln!(
        "only replica cut off under load: {} requests, {} errors, p99 {} ms, max {} ms; \
         ready on the other node {} ms after the cut",
        report["requests"],
        report["errors"],
        report["p99_us"].as_u64().unwrap_or(0) / 1000,
        report["max_us"].as_u64().unwrap_or(0) / 1000,
        replaced_after.as_millis()
    );
    assert_eq!(
        report["errors"],
        0,
        "requests wait for the new copy, within their deadline: {report}\nscheduler log:\n{}",
        hosts.scheduler.text()
    );
    assert_eq!(
        hosts
            .scheduler
            .count(&["kind=\"suspect\"", &format!("node=\"{cut}\"")]),
        1,
        "suspect before down: {}",
        hosts.scheduler.text()
    );
    // Healed, it reports its copy again: two pinned copies of a model that wants one.
    bed.heal(cut_host);
    let healed_at = tokio::time::Instant::now();
    hosts
        .scheduler
        .wait_for(
            &["kind=\"dropped\"", "model=\"tiny_mlp\"", "a surplus copy"],
            1,
            LONG,
        )
        .await;
    let mut nodes = ready_nodes(&hosts).await;
    let deadline = tokio::time::Instant::now() + LONG;
    while nodes.len() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "still {nodes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        nodes = ready_nodes(&hosts).await;
    }
    eprintln!(
        "partition healed: back to 1 replica ({}) {} ms after the heal",
        nodes[0],
        healed_at.elapsed().as_millis()
    );
    // The dropped copy is really gone from its agent, not only from the scheduler's view.
    let dropped_on = if nodes[0] == cut { other } else { cut };
    let agent = &hosts.agents[usize::from(dropped_on == "b")];
    agent
        .wait_for(&["model unloaded", "model=tiny_mlp"], 1, LONG)
        .await;
}

/// `herd agent ARGS` on `host` against the bed's scheduler, expected to exit promptly:
/// its exit code and what it printed.
async fn agent_exits(hosts: &ThreeHosts, host: usize, args: &[&str]) -> (Option<i32>, String) {
    let bed = &hosts.bed;
    let out = bed
        .command(host, HERD)
        .args(["agent", "--scheduler", &format!("{}:8001", bed.address(0))])
        .args(args)
        .env("HERD_TOKEN", &hosts.token)
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(LONG, out)
        .await
        .unwrap_or_else(|_| panic!("herd agent {args:?} did not exit"))
        .expect("run herd agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_with_a_wrong_address_or_a_taken_host_name_are_refused_with_the_reason() {
    let Some(hosts) = ThreeHosts::start(
        "joins_with_a_wrong_address_or_a_taken_host_name_are_refused_with_the_reason",
        1,
    )
    .await
    else {
        return;
    };
    let bed = &hosts.bed;
    let data = tempfile::tempdir().expect("data dir");
    let dir = |name: &str| data.path().join(name).to_string_lossy().to_string();
    // Loopback from another host: the scheduler would be calling its own host.
    let (code, stderr) = agent_exits(
        &hosts,
        1,
        &[
            "--listen",
            "0.0.0.0:8002",
            "--name",
            "c",
            "--advertise",
            "127.0.0.1:8002",
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    let said = format!(
        "agent \"c\" advertises 127.0.0.1:8002, a loopback address, but joins from {}",
        bed.address(1)
    );
    assert!(
        stderr.contains(&said) && stderr.contains("--advertise"),
        "{stderr}"
    );
    // Another host's address: agent "b" answers there, not this one.
    let b = format!("{}:8001", bed.address(2));
    let (code, stderr) = agent_exits(
        &hosts,
        1,
        &["--listen", "0.0.0.0:8002", "--name", "c", "--advertise", &b],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("advertises {b}, but agent \"b\" answers there")),
        "{stderr}"
    );
    // Neither joined, and the refusals are events on the scheduler's side as well.
    assert_eq!(
        hosts.scheduler.count(&["join refused", "node=c"]),
        2,
        "{}",
        hosts.scheduler.text()
    );
    // Two hosts with the same host name (the bed's namespaces share one) and no --name:
    // the first joins under it, the second exits with the reason.
    let mut first = bed.command(1, HERD);
    first
        .args([
            "agent",
            "--listen",
            "0.0.0.0:8002",
            "--data-dir",
            &dir("h1"),
        ])
        .args(["--scheduler", &format!("{}:8001", bed.address(0))])
        .env("HERD_TOKEN", &hosts.token);
    let first = Logged::spawn(first);
    first.wait_for(&["joined the cluster"], 1, LONG).await;
    let (code, stderr) = agent_exits(
        &hosts,
        2,
        &["--listen", "0.0.0.0:8002", "--data-dir", &dir("h2")],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("is already in the cluster at")
            && stderr.contains(&format!("{}:8002", bed.address(1)))
            && stderr.contains("give this agent another --name"),
        "{stderr}"
    );
    assert_eq!(ready_nodes(&hosts).await.len(), 1, "nothing else disturbed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_cut_off_and_back_reloads_nothing() {
    let Some(hosts) = ThreeHosts::start("a_scheduler_cut_off_and_back_reloads_nothing", 2).await
    else {
        return;
    };
    let bed = &hosts.bed;
    assert_eq!(ready_nodes(&hosts).await, ["a", "b"]);
    // Longer than the three missed reports that mark both nodes down.
    bed.cut(0);
    hosts.scheduler.wait_for(&["kind=\"down\""], 2, LONG).await;
    bed.heal(0);
    let healed_at = tokio::time::Instant::now();
    let deadline = healed_at + LONG;
    while ready_nodes(&hosts).await != ["a", "b"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            hosts.scheduler.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "scheduler partition healed: both copies back in the cluster {} ms after the heal",
        healed_at.elapsed().as_millis()
    );
    // Both copies were taken back as they were: no load, on either side.
    assert_eq!(
        hosts.scheduler.count(&["kind=\"loaded\""]),
        2,
        "{}",
        hosts.scheduler.text()
    );
    assert_eq!(hosts.scheduler.count(&["kind=\"adopted\""]), 2);
    for agent in &hosts.agents {
        assert_eq!(agent.count(&["model ready"]), 1, "{}", agent.text());
        assert_eq!(agent.count(&["model unloaded"]), 0, "{}", agent.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_before_its_network_joins_with_its_real_address_once_it_is_up() {
    let Some(hosts) = ThreeHosts::start(
        "an_agent_started_before_its_network_joins_with_its_real_address_once_it_is_up",
        1,
    )
    .await
    else {
        return;
    };
    let bed = &hosts.bed;
    let data = tempfile::tempdir().expect("data dir");
    bed.set_network(1, false);
    let mut command = bed.command(1, HERD);
    command
        .args(["agent", "--listen", "0.0.0.0:8002", "--name", "late"])
        .args(["--scheduler", &format!("{}:8001", bed.address(0))])
        .arg("--data-dir")
        .arg(data.path())
        .env("HERD_TOKEN", &hosts.token);
    let late = Logged::spawn(command);
    // No route: it says so and waits (for its certificate, the first thing it needs
    // from the scheduler), rather than advertising loopback.
    late.wait_for(
        &["cannot get this agent's certificate yet", "unreachable"],
        1,
        LONG,
    )
    .await;
    bed.set_network(1, true);
    let from = format!("joined from {}:8002", bed.address(1));
    hosts
        .scheduler
        .wait_for(&["kind=\"joined\"", "node=\"late\"", &from], 1, LONG)
        .await;
    assert_eq!(
        hosts.scheduler.count(&["node=\"late\"", "127.0.0.1"]),
        0,
        "{}",
        hosts.scheduler.text()
    );
}
