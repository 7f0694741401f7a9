//! Two schedulers over one etcd across real hosts, on the network-namespace bed
//! (netbed.rs): etcd on host 0, schedulers on hosts 1 and 2, an agent on host 3 that
//! reports to both. The leader cut off from etcd stops leading within its lease, the
//! other leads; healed, the cluster holds one replica, loaded once.

use std::time::Duration;

use crate::netbed::{Logged, NetBed};
use crate::support::*;

const HERD: &str = env!("CARGO_BIN_EXE_herd");
const LONG: Duration = Duration::from_secs(60);
const TOKEN: &str = "bed-token";

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
    let Some(bed) = NetBed::new(test, 4) else {
        return;
    };
    let repo = repository();
    write(repo.path(), "tiny_mlp/herd.toml", b"min_replicas = 1\n");
    let data: Vec<_> = (0..4).map(|_| tempfile::tempdir().expect("dir")).collect();
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
    let mut command = bed.command(3, HERD);
    command
        .args(["agent", "--listen", "0.0.0.0:8001", "--name", "a"])
        .args([
            "--scheduler",
            &format!("{}:8001,{}:8001", bed.address(1), bed.address(2)),
        ])
        .arg("--data-dir")
        .arg(data[3].path())
        .env("HERD_TOKEN", &token);
    let agent = Logged::spawn(command);
    agent.wait_for(&["joined the cluster"], 2, LONG).await;
    // The leader places tiny_mlp (its min_replicas); the follower does nothing.
    first
        .wait_for(&["kind=\"loaded\"", "model=\"tiny_mlp\""], 1, LONG)
        .await;

    bed.cut(1);
    let cut_at = tokio::time::Instant::now();
    first
        .wait_for(&["lost the lease: stepped down"], 1, LONG)
        .await;
    second.wait_for(&["leader revision="], 1, LONG).await;
    eprintln!(
        "leader cut off from etcd: the other leads {} ms after the cut",
        cut_at.elapsed().as_millis()
    );
    bed.heal(1);
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
    drop((first, second, agent, etcd));
}
