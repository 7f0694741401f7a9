//! The scheduler with real agents (child `herd agent` processes) over loopback:
//! placement by memory, on-demand loading, failover, restarts, and the token.

use std::time::Duration;

use herd_proto::herd::scheduler_client::SchedulerClient;
use herd_proto::herd::{AdminLoadRequest, AdminUnloadRequest, DrainNodeRequest, JoinRequest};
use herd_scheduler::config::PolicyArg;
use tonic::Code;

use crate::cluster_support::*;
use crate::support::*;

const LONG: Duration = Duration::from_secs(60);
const HINT_60: &str = "memory_hint = \"60MiB\"\n";

async fn infer_ok(cluster: &TestCluster, request: herd_proto::inference::ModelInferRequest) {
    let mut client = cluster.client().await;
    client
        .model_infer(request)
        .await
        .unwrap_or_else(|e| panic!("inference failed: {e:?}"));
}

fn fixed_request() -> herd_proto::inference::ModelInferRequest {
    raw_request("tiny_fixed", "x", "FP32", &[2, 4], f32_bytes(&[1.0; 8]))
}

fn multi_request() -> herd_proto::inference::ModelInferRequest {
    let mut r = raw_request("tiny_multi", "a", "FP32", &[1, 4], f32_bytes(&[1.0; 4]));
    r.inputs.push(
        herd_proto::inference::model_infer_request::InferInputTensor {
            name: "b".into(),
            datatype: "INT64".into(),
            shape: vec![1, 4],
            ..Default::default()
        },
    );
    r.raw_input_contents.push(bytes::Bytes::from(vec![0u8; 32]));
    r
}

/// Three 60 MiB models asked for, one after another, on three 200 MiB nodes under
/// `policy`; returns the cluster and the nodes they went to.
async fn place_three(policy: PolicyArg) -> (TestCluster, Vec<String>) {
    let settings = [
        ("tiny_mlp", HINT_60),
        ("tiny_fixed", HINT_60),
        ("tiny_multi", HINT_60),
    ];
    let cluster = TestCluster::start(&["200MiB", "200MiB", "200MiB"], &settings, policy).await;
    infer_ok(&cluster, mlp_request(1, 0.0)).await;
    infer_ok(&cluster, fixed_request()).await;
    infer_ok(&cluster, multi_request()).await;
    let nodes = ["tiny_mlp", "tiny_fixed", "tiny_multi"]
        .iter()
        .flat_map(|m| cluster.ready_on(m))
        .collect();
    (cluster, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_puts_models_on_different_nodes_and_agents_fetch_the_files() {
    let (cluster, mut nodes) = place_three(PolicyArg::Spread).await;
    nodes.sort();
    assert_eq!(nodes, vec!["a", "b", "c"], "one model per node");
    // A replica can serve (the agent reported it ready) just before the scheduler hears
    // its load answer and records the event.
    let s = cluster.scheduler.clone();
    eventually("three load events", LONG, || {
        s.lock()
            .events()
            .recent(100)
            .iter()
            .filter(|e| e.kind == "loaded")
            .count()
            >= 3
    })
    .await;
    let loads = cluster.events("loaded", "");
    assert_eq!(
        loads.len(),
        3,
        "{:#?}",
        cluster.scheduler.lock().events().recent(100)
    );
    for e in loads {
        assert!(
            e.message.contains("file fetched from the scheduler"),
            "{e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binpack_fills_one_node_first() {
    let (_cluster, nodes) = place_three(PolicyArg::Binpack).await;
    assert_eq!(nodes.len(), 3);
    assert!(
        nodes.iter().all(|n| *n == nodes[0]),
        "all on one node: {nodes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_evicts_the_least_recently_used_idle_model_never_a_pinned_one() {
    let settings = [
        ("tiny_mlp", HINT_60),
        ("tiny_fixed", HINT_60),
        ("tiny_multi", "memory_hint = \"60MiB\"\nmin_replicas = 1\n"),
    ];
    // Room for one 60 MiB model per node; tiny_multi is pinned on one of the two.
    let cluster = TestCluster::start(&["100MiB", "100MiB"], &settings, PolicyArg::Spread).await;
    let s = cluster.scheduler.clone();
    eventually("the pinned model placed", LONG, || {
        s.lock()
            .replicas_of("tiny_multi")
            .iter()
            .any(|(_, r)| r.state == herd_scheduler::model::ReplicaState::Ready)
    })
    .await;
    let pinned_on = cluster.ready_on("tiny_multi");
    infer_ok(&cluster, mlp_request(1, 0.0)).await;
    let mlp_on = cluster.ready_on("tiny_mlp");
    assert_ne!(mlp_on, pinned_on, "placed on the free node");
    // No room left: tiny_fixed evicts idle tiny_mlp, not the pinned tiny_multi.
    infer_ok(&cluster, fixed_request()).await;
    assert_eq!(cluster.ready_on("tiny_fixed"), mlp_on);
    assert!(cluster.ready_on("tiny_mlp").is_empty());
    assert_eq!(cluster.ready_on("tiny_multi"), pinned_on);
    let evicted = cluster.events("evicted", "tiny_mlp");
    assert_eq!(evicted.len(), 1, "{evicted:?}");
    assert!(
        evicted[0].message.contains("tiny_fixed"),
        "the reason names who needed the room: {:?}",
        evicted[0]
    );
    // A model bigger than any node: RESOURCE_EXHAUSTED naming the need and the room.
    write(
        cluster.repo.path(),
        "huge/1/model.onnx",
        &std::fs::read(cluster.repo.path().join("tiny_mlp/1/model.onnx")).expect("read"),
    );
    write(
        cluster.repo.path(),
        "huge/herd.toml",
        b"memory_hint = \"500MiB\"\n",
    );
    let mut admin = cluster.admin(Some(TOKEN)).await;
    let status = admin
        .load_model(AdminLoadRequest {
            model: "huge".into(),
        })
        .await
        .expect_err("does not fit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("model 'huge'") && status.message().contains("500.0 MiB"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("largest free space"),
        "{}",
        status.message()
    );
    let placements = cluster.scheduler.lock().nodes().count();
    assert_eq!(placements, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_share_one_load() {
    let cluster = TestCluster::start(&["1GiB", "1GiB"], &[], PolicyArg::Spread).await;
    let client = cluster.client().await;
    let tasks: Vec<_> = (0..32)
        .map(|i| spawn_infer(&client, mlp_request(1, i as f32)))
        .collect();
    for t in tasks {
        t.await
            .expect("task")
            .expect("every first request is answered");
    }
    assert_eq!(cluster.events("placed", "tiny_mlp").len(), 1);
    eventually("the load recorded", LONG, || {
        !cluster.events("loaded", "tiny_mlp").is_empty()
    })
    .await;
    assert_eq!(cluster.events("loaded", "tiny_mlp").len(), 1);
    let cold = cluster
        .scheduler
        .lock()
        .model("tiny_mlp")
        .map(|m| m.cold_starts);
    assert_eq!(cold, Some(1));
}

/// Sends requests from 4 tasks until `stop`, returning (answered, failed).
fn load_loop(
    cluster: &TestCluster,
    client: herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient<
        tonic::transport::Channel,
    >,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<(u64, Vec<String>)>> {
    let _ = cluster;
    (0..4)
        .map(|i| {
            let mut c = client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, Vec::new());
                while !*stop.borrow() {
                    match c.model_infer(mlp_request(1, i as f32)).await {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(format!("{:?}: {}", e.code(), e.message())),
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_under_load_loses_no_request_with_two_replicas() {
    let settings = [("tiny_mlp", "min_replicas = 2\n")];
    let mut cluster = TestCluster::start(&["1GiB", "1GiB"], &settings, PolicyArg::Spread).await;
    let s = cluster.scheduler.clone();
    eventually("two replicas ready", LONG, || {
        s.lock().ready_replicas("tiny_mlp").len() == 2
    })
    .await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = load_loop(&cluster, cluster.client().await, stopped);
    let before = total_requests(&cluster);
    eventually("load flowing", LONG, || {
        total_requests(&cluster) > before + 50
    })
    .await;
    cluster.agents[1]
        .child
        .kill()
        .await
        .expect("SIGKILL agent b");
    let after_kill = total_requests(&cluster);
    eventually("load flowing after the kill", LONG, || {
        total_requests(&cluster) > after_kill + 200
    })
    .await;
    stop.send(true).expect("stop");
    let mut answered = 0;
    for w in workers {
        let (ok, failed) = w.await.expect("worker");
        assert!(failed.is_empty(), "requests failed: {failed:?}");
        answered += ok;
    }
    assert!(answered > 250);
    assert!(cluster.events("down", "").iter().any(|e| e.node == "b"));
}

fn total_requests(cluster: &TestCluster) -> u64 {
    cluster
        .scheduler
        .lock()
        .model("tiny_mlp")
        .map_or(0, |m| m.requests_total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_replica_a_killed_agent_s_model_is_placed_again() {
    let mut cluster = TestCluster::start(&["1GiB", "1GiB"], &[], PolicyArg::Spread).await;
    infer_ok(&cluster, mlp_request(1, 0.0)).await;
    let first = cluster.ready_on("tiny_mlp");
    assert_eq!(first.len(), 1);
    let index = cluster
        .agents
        .iter()
        .position(|a| a.name == first[0])
        .expect("agent");
    cluster.agents[index].child.kill().await.expect("SIGKILL");
    // Whatever happens to requests in flight, later ones are served elsewhere.
    let mut client = cluster.client().await;
    let _ = client.model_infer(mlp_request(1, 1.0)).await;
    infer_ok(&cluster, mlp_request(1, 2.0)).await;
    let now = cluster.ready_on("tiny_mlp");
    assert_eq!(now.len(), 1);
    assert_ne!(now, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_gets_its_model_back_without_fetching_it_again() {
    let settings = [("tiny_mlp", "min_replicas = 1\n")];
    let mut cluster = TestCluster::start(&["1GiB"], &settings, PolicyArg::Spread).await;
    let s = cluster.scheduler.clone();
    eventually("placed", LONG, || {
        s.lock().ready_replicas("tiny_mlp").len() == 1
    })
    .await;
    cluster.agents[0].child.kill().await.expect("SIGKILL");
    let _ = cluster.agents[0].child.wait().await;
    let again = cluster.spawn_agent("a", "1GiB", TOKEN).await;
    cluster.agents[0] = again;
    eventually("placed again", LONG, || {
        s.lock().ready_replicas("tiny_mlp").len() == 1
            && cluster.events("loaded", "tiny_mlp").len() == 2
    })
    .await;
    let loads = cluster.events("loaded", "tiny_mlp");
    assert!(loads[0].message.contains("fetched"), "{:?}", loads[0]);
    assert!(
        loads[1].message.contains("file already on the node"),
        "{:?}",
        loads[1]
    );
    infer_ok(&cluster, mlp_request(1, 0.0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_scheduler_keeps_its_catalog_and_learns_the_cluster_back() {
    let mut cluster = TestCluster::start(&["1GiB"], &[], PolicyArg::Spread).await;
    let mut admin = cluster.admin(Some(TOKEN)).await;
    admin
        .load_model(AdminLoadRequest {
            model: "tiny_fixed".into(),
        })
        .await
        .expect("load");
    assert_eq!(cluster.ready_on("tiny_fixed"), vec!["a"]);
    cluster.restart_scheduler().await;
    let s = cluster.scheduler.clone();
    assert!(
        s.lock().model("tiny_fixed").is_some_and(|m| m.wanted),
        "the catalog remembers the load"
    );
    cluster.wait_for_nodes(1).await;
    eventually("the replica adopted from the agent's report", LONG, || {
        !cluster.ready_on("tiny_fixed").is_empty()
    })
    .await;
    assert!(
        cluster.events("loaded", "tiny_fixed").is_empty(),
        "nothing was loaded again"
    );
    assert_eq!(cluster.events("adopted", "tiny_fixed").len(), 1);
    infer_ok(&cluster, fixed_request()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_nothing_joins_loads_unloads_or_drains() {
    let cluster = TestCluster::start(&["1GiB"], &[], PolicyArg::Spread).await;
    let mut joins = SchedulerClient::new(cluster.channel().await);
    let refused = joins
        .join(JoinRequest {
            name: "intruder".into(),
            address: "127.0.0.1:1".into(),
            status: None,
        })
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    for token in [None, Some("wrong")] {
        let mut admin = cluster.admin(token).await;
        let calls = [
            admin
                .load_model(AdminLoadRequest {
                    model: "tiny_mlp".into(),
                })
                .await
                .map(|_| ()),
            admin
                .unload_model(AdminUnloadRequest {
                    model: "tiny_mlp".into(),
                })
                .await
                .map(|_| ()),
            admin
                .drain_node(DrainNodeRequest { node: "a".into() })
                .await
                .map(|_| ()),
        ];
        for call in calls {
            let status = call.expect_err("refused");
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert!(
                status.message().contains("cluster token"),
                "{}",
                status.message()
            );
        }
    }
    assert!(cluster.ready_on("tiny_mlp").is_empty());
    assert!(cluster
        .scheduler
        .lock()
        .node("a")
        .is_some_and(|n| !n.draining));
    // An agent with a wrong token says so and exits non-zero instead of retrying.
    let out = tokio::process::Command::new(HERD)
        .args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "x",
            "--scheduler",
            &cluster.addr,
            "--token",
            &cluster.join_token_for("wrong"),
        ])
        .arg("--data-dir")
        .arg(cluster.data.path().join("x"))
        .env("NO_COLOR", "1")
        .output();
    let out = tokio::time::timeout(LONG, out)
        .await
        .expect("exits promptly")
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused this agent") && stderr.contains("wrong"),
        "{stderr}"
    );
    assert!(cluster.scheduler.lock().node("x").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_moves_its_replicas() {
    let settings = [("tiny_mlp", "min_replicas = 1\n")];
    let cluster = TestCluster::start(&["1GiB", "1GiB"], &settings, PolicyArg::Spread).await;
    let s = cluster.scheduler.clone();
    eventually("placed", LONG, || {
        s.lock().ready_replicas("tiny_mlp").len() == 1
    })
    .await;
    let from = cluster.ready_on("tiny_mlp")[0].clone();
    let mut admin = cluster.admin(Some(TOKEN)).await;
    let moved = admin
        .drain_node(DrainNodeRequest { node: from.clone() })
        .await
        .expect("drain")
        .into_inner();
    assert_eq!(moved.moved_models, vec!["tiny_mlp".to_string()]);
    eventually("moved", LONG, || {
        cluster.ready_on("tiny_mlp").iter().any(|n| *n != from)
    })
    .await;
    assert!(!cluster.ready_on("tiny_mlp").contains(&from));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_tritonclient_works_against_a_three_agent_cluster() {
    let cluster = TestCluster::start(&["1GiB", "1GiB", "1GiB"], &[], PolicyArg::Spread).await;
    crate::binary::tritonclient_check(&cluster.addr, Some(TOKEN), Some(&cluster.ca_file())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_placements_are_recorded_in_the_store() {
    let cluster = TestCluster::start(&["1GiB"], &[], PolicyArg::Spread).await;
    infer_ok(&cluster, fixed_request()).await;
    let store = cluster.scheduler.store.clone();
    let mut recorded = Vec::new();
    for _ in 0..3000 {
        let nodes = store
            .range(herd_scheduler::records::NODES)
            .await
            .expect("range");
        let placements = store
            .range(herd_scheduler::records::PLACEMENTS)
            .await
            .expect("range");
        recorded = nodes
            .into_iter()
            .chain(placements)
            .map(|kv| kv.key)
            .collect::<Vec<_>>();
        if recorded.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        recorded,
        vec![
            "/herd/nodes/a".to_string(),
            "/herd/placements/tiny_fixed/a".to_string()
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_use_triton_names_and_count_what_ran() {
    let cluster = TestCluster::start(&["1GiB"], &[], PolicyArg::Spread).await;
    for i in 0..3 {
        infer_ok(&cluster, mlp_request(2, i as f32)).await;
    }
    let s = cluster.scheduler.clone();
    eventually("the agent reports the runs", LONG, || {
        herd_scheduler::metrics::render(&s)
            .contains("nv_inference_count{model=\"tiny_mlp\",version=\"1\"} 6")
    })
    .await;
    let text = herd_scheduler::metrics::render(&s);
    for name in [
        "nv_inference_request_success{model=\"tiny_mlp\",version=\"1\"} 3",
        "nv_inference_request_failure{model=\"tiny_mlp\",version=\"1\"} 0",
        "nv_inference_exec_count{model=\"tiny_mlp\",version=\"1\"} 3",
        "nv_inference_queue_duration_us{model=\"tiny_mlp\",version=\"1\"} ",
        "nv_inference_request_duration_us{model=\"tiny_mlp\",version=\"1\"} ",
        "nv_inference_pending_request_count{model=\"tiny_mlp\",version=\"1\"} 0",
        "# TYPE nv_inference_request_success counter",
        "nv_cpu_memory_total_bytes ",
        "nv_inference_compute_infer_duration_us{model=\"tiny_mlp\",version=\"1\"} ",
        "herd_node_memory_capacity_bytes{node=\"a\"} 1073741824",
        "herd_node_up{node=\"a\"} 1",
        // The scheduler's own calls, as its metrics layer counted them.
        "herd_grpc_server_handled_total{method=\"/inference.GRPCInferenceService/ModelInfer\",code=\"Ok\"} 3",
        "herd_grpc_server_latency_seconds{method=\"/inference.GRPCInferenceService/ModelInfer\",quantile=\"0.99\"}",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_to_load_is_reported_and_tried_again_only_when_asked() {
    let cluster = TestCluster::start(&["1GiB"], &[], PolicyArg::Spread).await;
    write(
        cluster.repo.path(),
        "broken/1/model.onnx",
        b"not an onnx model",
    );
    let mut admin = cluster.admin(Some(TOKEN)).await;
    let status = admin
        .load_model(AdminLoadRequest {
            model: "broken".into(),
        })
        .await
        .expect_err("cannot load");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("model 'broken' failed to load on a"),
        "{}",
        status.message()
    );
    // No retry loop: one attempt per ask. Two placement rounds after the failure has
    // been recorded, a retry would have been placed (a placement is recorded in the
    // round that makes it).
    let mut rounds = cluster.scheduler.placement_rounds();
    let after_failure = *rounds.borrow_and_update();
    tokio::time::timeout(LONG, rounds.wait_for(|n| *n >= after_failure + 2))
        .await
        .expect("placement keeps running")
        .expect("the scheduler runs");
    assert_eq!(cluster.events("placed", "broken").len(), 1);
    assert_eq!(cluster.events("load_failed", "broken").len(), 1);
    admin
        .load_model(AdminLoadRequest {
            model: "broken".into(),
        })
        .await
        .expect_err("still cannot load");
    assert_eq!(cluster.events("load_failed", "broken").len(), 2);
    infer_ok(&cluster, mlp_request(1, 0.0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_model_scales_up_to_max_replicas() {
    let settings = [("tiny_mlp", "max_replicas = 2\n")];
    let cluster = TestCluster::start_with(
        &["1GiB", "1GiB", "1GiB"],
        &settings,
        PolicyArg::Spread,
        |c| {
            c.upscale_delay = Duration::from_millis(300);
            c.target_ongoing_requests = 1.0;
        },
    )
    .await;
    infer_ok(&cluster, mlp_request(1, 0.0)).await;
    assert_eq!(cluster.ready_on("tiny_mlp").len(), 1);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = load_loop(&cluster, cluster.client().await, stopped);
    let s = cluster.scheduler.clone();
    eventually("a second replica", LONG, || {
        s.lock().ready_replicas("tiny_mlp").len() == 2
    })
    .await;
    stop.send(true).expect("stop");
    for w in workers {
        let (_, failed) = w.await.expect("worker");
        assert!(failed.is_empty(), "{failed:?}");
    }
    assert!(!cluster.events("scaled", "tiny_mlp").is_empty());
    // max_replicas holds: a third node stays free of it.
    assert_eq!(cluster.ready_on("tiny_mlp").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_deadline_travels_with_the_request() {
    let settings = [(
        "tiny_mlp",
        "max_batch_delay = \"2s\"\nmax_batch_size = 32\n",
    )];
    let cluster = TestCluster::start(&["1GiB"], &settings, PolicyArg::Spread).await;
    infer_ok(&cluster, mlp_request(1, 0.0)).await;
    // The agent would hold a lone request 2 s to fill a batch; the caller allows 300 ms.
    let mut request = tonic::Request::new(mlp_request(1, 1.0));
    request.set_timeout(Duration::from_millis(300));
    let mut client = cluster.client().await;
    let status = client
        .model_infer(request)
        .await
        .expect_err("past its deadline");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // Without a deadline a request waits out the batch delay and succeeds. Had the
    // expired one reached the model, it would have run by then (same batch or before).
    client
        .model_infer(mlp_request(1, 2.0))
        .await
        .expect("no deadline, no failure");
    let stats = client
        .model_statistics(herd_proto::inference::ModelStatisticsRequest {
            name: "tiny_mlp".into(),
            version: String::new(),
        })
        .await
        .expect("statistics")
        .into_inner()
        .model_stats;
    assert_eq!(
        stats[0].inference_count, 2,
        "the agent dropped the expired request: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_are_served_over_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = TestCluster::start(&["1GiB"], &[], PolicyArg::Spread).await;
    infer_ok(&cluster, mlp_request(1, 0.0)).await;
    let s = cluster.scheduler.clone();
    eventually("the agent reports the request", LONG, || {
        herd_scheduler::metrics::render(&s)
            .contains("nv_inference_request_success{model=\"tiny_mlp\",version=\"1\"} 1")
    })
    .await;
    for path in ["/health", "/metrics"] {
        let mut stream = cluster.http_stream().await;
        let request = format!("GET {path} HTTP/1.1\r\nHost: herd\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
        if path == "/metrics" {
            // Prometheus's text format, as Triton serves it (not OpenMetrics).
            assert!(
                response
                    .to_ascii_lowercase()
                    .contains("content-type: text/plain; version=0.0.4"),
                "{response}"
            );
            assert!(
                response.contains("herd_node_up{node=\"a\"} 1"),
                "{response}"
            );
            assert!(
                response
                    .contains("nv_inference_request_success{model=\"tiny_mlp\",version=\"1\"} 1"),
                "{response}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cluster_calls_get_clear_statuses_and_change_nothing() {
    use herd_proto::herd::agent_client::AgentClient;
    use herd_proto::herd::{FetchModelRequest, LoadModelRequest, ModelSource};
    let cluster = TestCluster::start(&["1GiB"], &[], PolicyArg::Spread).await;
    let mut admin = cluster.admin(Some(TOKEN)).await;
    let status = admin
        .load_model(AdminLoadRequest {
            model: "no_such_model".into(),
        })
        .await
        .expect_err("unknown model");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status.message().contains("no_such_model"),
        "{}",
        status.message()
    );
    let status = admin
        .drain_node(DrainNodeRequest {
            node: "nowhere".into(),
        })
        .await
        .expect_err("unknown node");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let channel = cluster.channel().await;
    let mut joins = SchedulerClient::with_interceptor(
        channel,
        herd_core::auth::SendToken::new(Some(TOKEN)).expect("ascii"),
    );
    let fetch = joins
        .fetch_model(FetchModelRequest {
            digest: "0".repeat(64),
            offset: 0,
        })
        .await
        .expect_err("no such file");
    assert_eq!(fetch.code(), Code::NotFound, "{fetch:?}");

    // An agent asked to load a file by something that is not a sha256 refuses it
    // before touching its disk.
    let channel = cluster
        .channel_to(&cluster.agents[0].addr, herd_core::tls::AGENT_NAME)
        .await;
    let mut agent = AgentClient::with_interceptor(
        channel,
        herd_core::auth::SendToken::new(Some(TOKEN)).expect("ascii"),
    );
    let load = agent
        .load(LoadModelRequest {
            model: Some(ModelSource {
                name: "x".into(),
                version: 1,
                digest: "../../etc/passwd".into(),
                file_bytes: 1,
                settings: None,
                immich: None,
                device: String::new(),
            }),
        })
        .await
        .expect_err("not a digest");
    assert_eq!(load.code(), Code::InvalidArgument, "{load:?}");
    assert!(
        load.message().contains("is not a sha256"),
        "{}",
        load.message()
    );
    // Nor does it take a device it does not have, or one that is no device.
    for (device, says) in [
        ("gpu:7", "this node has 0 GPU(s)"),
        ("tpu", "expected \"cpu\" or \"gpu:N\""),
    ] {
        let load = agent
            .load(LoadModelRequest {
                model: Some(ModelSource {
                    name: "x".into(),
                    version: 1,
                    digest: "0".repeat(64),
                    file_bytes: 1,
                    settings: None,
                    immich: None,
                    device: device.into(),
                }),
            })
            .await
            .expect_err("no such device");
        assert_eq!(load.code(), Code::InvalidArgument, "{load:?}");
        assert!(load.message().contains(says), "{}", load.message());
    }
    infer_ok(&cluster, mlp_request(1, 0.0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedulers_model_default_flags_apply_where_herd_toml_is_silent() {
    let cluster = TestCluster::start_with(
        &[],
        &[("tiny_fixed", "max_batch_size = 2\n")],
        PolicyArg::Spread,
        |config| {
            config.model_defaults.ttl = Some(herd_core::Ttl::Never);
            config.model_defaults.max_batch_size = Some(4);
        },
    )
    .await;
    let c = cluster.scheduler.lock();
    let settings = |model: &str| {
        let m = c
            .model(model)
            .unwrap_or_else(|| panic!("{model} in the catalog"));
        (m.settings.max_batch_size, m.settings.ttl)
    };
    assert_eq!(settings("tiny_mlp"), (4, herd_core::Ttl::Never));
    assert_eq!(
        settings("tiny_fixed"),
        (2, herd_core::Ttl::Never),
        "herd.toml overrides a default flag; the other defaults still apply"
    );
}
