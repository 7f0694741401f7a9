//! Two schedulers over one etcd across real hosts, on the network-namespace bed
//! (netbed.rs): etcd on host 0, schedulers on hosts 1 and 2, agents on hosts 3 and up
//! that report to both. The leader cut off from etcd stops leading within its lease and
//! the other leads; an agent cut off is marked down by both and its replica placed
//! elsewhere; healed, the cluster holds one replica and loaded nothing twice.

use std::time::Duration;

use crate::netbed::{Logged, NetBed};
use crate::support::*;

const HERD: &str = env!("CARGO_BIN_EXE_herd");
const LONG: Duration = Duration::from_secs(60);
const TOKEN: &str = "bed-token";
/// The first agent's host; agents are named "a", "b", … from here on.
const AGENTS_FROM: usize = 3;

/// etcd, two schedulers (the one on host 1 leads) and `agents` agents, all joined, with
/// tiny_mlp placed once (its min_replicas).
struct Bed {
    // Dropped before the bed: the processes go first, then the namespaces.
    schedulers: [Logged; 2],
    agents: Vec<Logged>,
    etcd: Logged,
    _repo: tempfile::TempDir,
    _data: Vec<tempfile::TempDir>,
    bed: NetBed,
}

impl Bed {
    async fn start(test: &str, agents: usize) -> Option<Bed> {
        let bed = NetBed::new(test, AGENTS_FROM + agents)?;
        let repo = repository();
        write(repo.path(), "tiny_mlp/herd.toml", b"min_replicas = 1\n");
        let data: Vec<_> = (0..AGENTS_FROM + agents)
            .map(|_| tempfile::tempdir().expect("dir"))
            .collect();
        let etcd_url = format!("http://{}:2379", bed.address(0));
        let mut command = bed.command(0, "etcd");
        command
            .args(["--name", "bed", "--data-dir"])
            .arg(data[0].path().join("etcd"))
            .args(["--listen-client-urls", &etcd_url])
            .args(["--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .args(["--logger", "zap", "--log-level", "info"]);
        let etcd = Logged::spawn(command);
        etcd.wait_for(&["serving client traffic"], 1, LONG).await;

        let first = scheduler(&bed, 1, repo.path(), data[1].path());
        first.wait_for(&["leader revision="], 1, LONG).await;
        let second = scheduler(&bed, 2, repo.path(), data[2].path());
        second.wait_for(&["follower leader=Some"], 1, LONG).await;
        let token = herd_core::auth::read_token_file(&data[1].path().join("join-token"))
            .expect("the join token");
        let mut spawned = Vec::new();
        for i in 0..agents {
            let host = AGENTS_FROM + i;
            let mut command = bed.command(host, HERD);
            command
                .args([
                    "agent",
                    "--listen",
                    "0.0.0.0:8001",
                    "--name",
                    &agent_name(i),
                ])
                .args([
                    "--scheduler",
                    &format!("{}:8001,{}:8001", bed.address(1), bed.address(2)),
                ])
                .arg("--data-dir")
                .arg(data[host].path())
                .env("HERD_TOKEN", &token);
            let agent = Logged::spawn(command);
            agent.wait_for(&["joined the cluster"], 2, LONG).await;
            spawned.push(agent);
        }
        // The leader places tiny_mlp (its min_replicas); the follower does nothing.
        first
            .wait_for(&["kind=\"loaded\"", "model=\"tiny_mlp\""], 1, LONG)
            .await;
        Some(Bed {
            schedulers: [first, second],
            agents: spawned,
            etcd,
            _repo: repo,
            _data: data,
            bed,
        })
    }
}

fn agent_name(i: usize) -> String {
    char::from(b'a' + u8::try_from(i).expect("a few agents")).to_string()
}

fn scheduler(bed: &NetBed, host: usize, repo: &std::path::Path, data: &std::path::Path) -> Logged {
    let mut command = bed.command(host, HERD);
    command
        .args([
            "scheduler",
            "--listen",
            "0.0.0.0:8001",
            "--http",
            "127.0.0.1:8000",
        ])
        .args(["--report-interval", "200ms"])
        .args(["--store", &format!("etcd://{}:2379", bed.address(0))])
        .arg("--model-repository")
        .arg(repo)
        .arg("--data-dir")
        .arg(data)
        .env("HERD_TOKEN", TOKEN);
    Logged::spawn(command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_steps_down_and_the_healed_cluster_loads_nothing_twice() {
    let test = "a_leader_cut_off_from_etcd_steps_down_and_the_healed_cluster_loads_nothing_twice";
    let Some(cluster) = Bed::start(test, 1).await else {
        return;
    };
    let [first, second] = &cluster.schedulers;
    let agent = &cluster.agents[0];

    cluster.bed.cut(1);
    let cut_at = tokio::time::Instant::now();
    first
        .wait_for(&["lost the lease: stepped down"], 1, LONG)
        .await;
    second.wait_for(&["leader revision="], 1, LONG).await;
    eprintln!(
        "leader cut off from etcd: the other leads {} ms after the cut",
        cut_at.elapsed().as_millis()
    );
    cluster.bed.heal(1);
    // Healed, the deposed leader follows the new one.
    first.wait_for(&["follower leader=Some"], 1, LONG).await;
    // One replica, loaded once, by the first leader; the second adopted it.
    assert_eq!(
        agent.count(&["loading model", "model=tiny_mlp"]),
        1,
        "{}",
        agent.text()
    );
    assert_eq!(agent.count(&["model unloaded"]), 0, "{}", agent.text());
    assert_eq!(second.count(&["kind=\"loaded\""]), 0, "{}", second.text());
    assert_eq!(
        first.count(&["kind=\"loaded\""]),
        1,
        "the deposed leader loaded nothing more: {}",
        first.text()
    );
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_is_replaced_and_its_surplus_copy_unloaded_once_healed() {
    let test = "an_agent_cut_off_is_replaced_and_its_surplus_copy_unloaded_once_healed";
    let Some(cluster) = Bed::start(test, 2).await else {
        return;
    };
    let [leader, follower] = &cluster.schedulers;
    let holder = usize::from(cluster.agents[0].count(&["loading model", "model=tiny_mlp"]) == 0);
    let (cut, other) = (agent_name(holder), agent_name(1 - holder));

    cluster.bed.cut(AGENTS_FROM + holder);
    let cut_at = tokio::time::Instant::now();
    // Both schedulers hear the agent's reports first-hand, so both mark it down.
    for scheduler in [leader, follower] {
        scheduler
            .wait_for(&["kind=\"down\"", &format!("node=\"{cut}\"")], 1, LONG)
            .await;
    }
    leader
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
    eprintln!(
        "agent {cut} cut off: its replica ready on {other} {} ms after the cut",
        cut_at.elapsed().as_millis()
    );
    assert_eq!(
        follower.count(&["kind=\"loaded\""]),
        0,
        "only the leader places: {}",
        follower.text()
    );

    cluster.bed.heal(AGENTS_FROM + holder);
    // Healed, it reports its copy again: the leader drops the surplus, and the agent
    // really unloads it.
    leader
        .wait_for(
            &["kind=\"dropped\"", "model=\"tiny_mlp\"", "a surplus copy"],
            1,
            LONG,
        )
        .await;
    let deadline = tokio::time::Instant::now() + LONG;
    while !cluster
        .agents
        .iter()
        .any(|a| a.count(&["model unloaded"]) > 0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no agent unloaded the surplus"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let loads: usize = cluster
        .agents
        .iter()
        .map(|a| a.count(&["loading model", "model=tiny_mlp"]))
        .sum();
    let unloads: usize = cluster
        .agents
        .iter()
        .map(|a| a.count(&["model unloaded"]))
        .sum();
    assert_eq!((loads, unloads), (2, 1), "one copy each, one dropped");
    assert_eq!(
        follower.count(&["kind=\"dropped\""]),
        0,
        "only the leader unloads: {}",
        follower.text()
    );
    drop(cluster);
}
