//! An agent's advertised address is proven at join, on loopback: the scheduler calls it
//! back and refuses an address where another agent, something else, or nothing
//! answers, saying what is wrong on both sides. (Loopback from another host is refused
//! on the multi-host bed, hosts.rs.)

use std::time::Duration;

use herd_core::auth::SendToken;
use herd_proto::herd::scheduler_client::SchedulerClient;
use herd_proto::herd::JoinRequest;
use herd_scheduler::config::PolicyArg;
use tonic::Code;

use crate::cluster_support::*;

const LONG: Duration = Duration::from_secs(60);

/// `herd agent --name NAME --advertise ADDRESS` against the cluster: it must exit
/// promptly; its exit code and what it printed.
async fn agent_advertising(cluster: &TestCluster, name: &str, address: &str) -> (i32, String) {
    let out = herd(&["agent", "--listen", "127.0.0.1:0", "--name", name])
        .args(["--advertise", address, "--scheduler", &cluster.addr])
        .args(["--token", &cluster.join_token(), "--data-dir"])
        .arg(cluster.data.path().join(name))
        .output();
    let out = tokio::time::timeout(LONG, out)
        .await
        .expect("exits promptly")
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), stderr)
}

fn refusals(cluster: &TestCluster, node: &str) -> Vec<String> {
    cluster
        .events("refused", "")
        .into_iter()
        .filter(|e| e.node == node)
        .map(|e| e.message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_advertising_another_agents_address_is_refused_and_says_so() {
    let cluster = TestCluster::start(&["1GiB"], &[], PolicyArg::Spread).await;
    let a = cluster.agents[0].addr.clone();
    let (code, stderr) = agent_advertising(&cluster, "b", &a).await;
    assert_eq!(code, 1, "{stderr}");
    let said = format!("agent \"b\" advertises {a}, but agent \"a\" answers there");
    assert!(
        stderr.contains(&said) && stderr.contains("--advertise"),
        "{stderr}"
    );
    assert!(cluster.scheduler.lock().node("b").is_none());
    assert_eq!(refusals(&cluster, "b").len(), 1);
    // The scheduler's own port is not an agent either.
    let (code, stderr) = agent_advertising(&cluster, "c", &cluster.addr).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("a server without an agent certificate from this cluster's CA"),
        "{stderr}"
    );
    assert!(cluster.scheduler.lock().node("c").is_none());
    // The real agent was never disturbed.
    assert!(cluster
        .scheduler
        .lock()
        .node("a")
        .is_some_and(|n| !n.down && n.address == a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_at_an_address_where_nothing_answers_is_refused_for_now() {
    let cluster = TestCluster::start(&[], &[], PolicyArg::Spread).await;
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let channel = cluster.channel().await;
    let mut joins =
        SchedulerClient::with_interceptor(channel, SendToken::new(Some(TOKEN)).expect("ascii"));
    let refused = joins
        .join(JoinRequest {
            name: "ghost".into(),
            address: free.clone(),
            status: None,
        })
        .await
        .expect_err("nothing answers there");
    // FAILED_PRECONDITION: the agent tries again (its network may be coming up).
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains(&format!(
            "agent \"ghost\" advertises {free}, but the scheduler cannot reach it there"
        )),
        "{}",
        refused.message()
    );
    assert!(cluster.scheduler.lock().node("ghost").is_none());
    assert_eq!(refusals(&cluster, "ghost").len(), 1);
}
