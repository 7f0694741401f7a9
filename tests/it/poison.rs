//! Requests and workers that would take other callers down with them: a request whose
//! values fail inside the model must fail alone, and a worker that hangs or dies is
//! answered as a retryable UNAVAILABLE.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use herd_agent::{Loader, ModelSettings, ProcessLoader};
use herd_proto::inference::ModelInferRequest;
use tonic::Code;

const LONG: Duration = Duration::from_secs(60);
const HONEST_CLIENTS: usize = 8;
const HONEST_REQUESTS: usize = 25;
const ATTACKERS: usize = 2;
const ATTACKS: usize = 40;
/// Rows of tiny_embed's table: indices outside [-100, 99] fail inside ONNX Runtime.
const TABLE_ROWS: i64 = 100;

/// A fresh repository with tiny_embed (from tests/models_extra) beside tests/models,
/// batching up to 32 items and waiting a few ms to fill a batch.
fn embed_repository() -> tempfile::TempDir {
    let repo = repository();
    let model = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/models_extra/tiny_embed/1/model.onnx"),
    )
    .expect("read tiny_embed");
    write(repo.path(), "tiny_embed/1/model.onnx", &model);
    write(
        repo.path(),
        "tiny_embed/herd.toml",
        b"max_batch_size = 32\nmax_batch_delay = \"3ms\"\n",
    );
    repo
}

fn embed_request(ids: [i64; 4]) -> ModelInferRequest {
    raw_request("tiny_embed", "ids", "INT64", &[1, 4], i64_bytes(&ids))
}

/// The honest indices of a client's n-th request: all in range, different per request.
fn honest_ids(client: usize, n: usize) -> [i64; 4] {
    let base = (client * 31 + n * 7) as i64;
    [0, 13, 29, 41].map(|k| (base + k) % TABLE_ROWS)
}

/// The out-of-range index of an attacker's n-th request: unique, so that a message
/// naming another request's index is caught.
fn attack_index(attacker: usize, n: usize) -> i64 {
    1_000_000_000 + (attacker * 100_000 + n) as i64
}

/// Every number that follows "idx=" in an error message.
fn quoted_indices(message: &str) -> Vec<i64> {
    message
        .split("idx=")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '-')
                .collect();
            digits.parse().ok()
        })
        .collect()
}

fn model_view(agent: &TestAgent, model: &str) -> Option<herd_agent::CachedModel> {
    agent
        .agent
        .cache
        .views()
        .into_iter()
        .find(|v| v.name == model)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_fails_inside_the_model_fails_alone() {
    let repo = embed_repository();
    // Reference: each honest request run alone, no agent involved.
    let files = herd_core::Repository::new(repo_path(&repo), ModelSettings::default())
        .find("tiny_embed")
        .expect("tiny_embed");
    let (_, mut alone) = ort().load(&files).expect("load tiny_embed");
    let mut expected = |ids: [i64; 4]| {
        let input = herd_core::Tensor {
            dtype: herd_proto::DataType::Int64,
            shape: vec![1, 4],
            data: i64_bytes(&ids),
        };
        f32_values(&alone.run(vec![input]).expect("run alone")[0].data)
    };

    // The first run waits at the gate until every client has a request queued, so
    // that the next batch surely mixes honest requests with the attackers'.
    let gate = Arc::new(Gate::default());
    let loader = GatedLoader::run_gated("tiny_embed", &gate);
    let agent = TestAgent::start(options(&repo_path(&repo)), loader).await;
    let client = agent.client().await;
    let first_ids = honest_ids(99, 0);
    let first = spawn_infer(&client, embed_request(first_ids));
    gate_reached(&gate, 1).await;
    let honest: Vec<_> = (0..HONEST_CLIENTS)
        .map(|c| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for n in 0..HONEST_REQUESTS {
                    let ids = honest_ids(c, n);
                    answers.push((ids, client.model_infer(embed_request(ids)).await));
                }
                answers
            })
        })
        .collect();
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|a| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for n in 0..ATTACKS {
                    let bad = attack_index(a, n);
                    answers.push((bad, client.model_infer(embed_request([bad; 4])).await));
                }
                answers
            })
        })
        .collect();
    let everyone = 1 + HONEST_CLIENTS + ATTACKERS;
    eventually("every client's first request queued", LONG, || {
        model_view(&agent, "tiny_embed").is_some_and(|v| v.queue_len == everyone)
    })
    .await;
    gate.open();

    let mut honest_failures = Vec::new();
    let answer = first.await.expect("task").map(|r| r.into_inner());
    let mut answers = vec![(first_ids, answer)];
    for task in honest {
        for (ids, answer) in task.await.expect("honest task") {
            answers.push((ids, answer.map(|r| r.into_inner())));
        }
    }
    for (ids, answer) in answers {
        match answer {
            Ok(response) => {
                let got = f32_values(&response.raw_output_contents[0]);
                let want = expected(ids);
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-6, "{ids:?}: batched {g} vs alone {w}");
                }
            }
            Err(status) => honest_failures.push(status),
        }
    }
    let mut attacks = Vec::new();
    for task in attackers {
        attacks.extend(task.await.expect("attacker task"));
    }
    let wrongly_answered = attacks.iter().filter(|(_, a)| a.is_ok()).count();
    eprintln!(
        "honest failures: {} of {}; attacks answered: {wrongly_answered} of {}",
        honest_failures.len(),
        1 + HONEST_CLIENTS * HONEST_REQUESTS,
        ATTACKERS * ATTACKS
    );
    assert!(
        honest_failures.is_empty(),
        "honest requests failed beside an attacker: {honest_failures:?}"
    );
    for (bad, answer) in attacks {
        let status = answer.expect_err("an index out of range fails");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "the request's own fault: {status:?}"
        );
        let quoted = quoted_indices(status.message());
        assert!(
            !quoted.is_empty() && quoted.iter().all(|&i| i == bad),
            "the message names its own index {bad} and no other: {}",
            status.message()
        );
    }

    let stats = agent.agent.cache.stats("tiny_embed").expect("stats");
    let c = stats.lock();
    eprintln!(
        "{} successful runs for {} items; batch sizes that ran: {:?}",
        c.execution_count,
        c.inference_count,
        c.batches.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        c.inference_count,
        (1 + HONEST_CLIENTS * HONEST_REQUESTS) as u64,
        "each honest item ran once to success; no attack did"
    );
    assert!(
        c.batches.keys().any(|&items| items > 1),
        "requests really batched: {:?}",
        c.batches.keys().collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_is_killed_by_the_watchdog_and_its_callers_may_retry() {
    let repo = repository();
    // tiny_mlp runs in well under 100 ms, so its limit is the floor.
    let loader = GatedLoader {
        inner: ProcessLoader::new(worker_program()).with_watchdog(Duration::from_secs(2), 20),
        load_gate: None,
        run_gate: None,
    };
    let agent = TestAgent::start(options(&repo_path(&repo)), loader).await;
    let mut client = agent.client().await;
    let pid = tiny_mlp_worker(&agent, &mut client).await;
    signal(pid, "-STOP");

    let status = client
        .model_infer(mlp_request(1, 1.0))
        .await
        .expect_err("its worker never answers");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&format!(
            "the model worker (pid {pid}) died: it gave no answer within 2s, so the agent killed it"
        )),
        "{}",
        status.message()
    );
    client
        .model_infer(mlp_request(1, 2.0))
        .await
        .expect("the next request loads it afresh");
    assert_eq!(agent.agent.cache.loads_started(), 2);
}

/// A client that sends failing requests without pause cannot flood the agent's log with
/// data of its choosing: ONNX Runtime's own line per failed run is off, and the runner's
/// is throttled. The real `herd` executable, its log read whole after it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_requests_do_not_flood_the_log() {
    use herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    const ATTEMPTS: usize = 30;
    let repo = embed_repository();
    let mut child = crate::cluster_support::herd(&["agent", "--listen", "127.0.0.1:0"])
        .arg("--model-repository")
        .arg(repo.path())
        .env_remove("HERD_LOG")
        .spawn()
        .expect("start herd agent");
    let mut log = BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    let addr = tokio::time::timeout(LONG, async {
        loop {
            let mut line = String::new();
            let n = log.read_line(&mut line).await.expect("read agent log");
            assert!(n > 0, "herd agent exited before serving: {seen}");
            seen.push_str(&line);
            if line.contains("agent serving") {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="));
                return addr.expect("addr= on the serving line").to_string();
            }
        }
    })
    .await
    .expect("herd agent serves");
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    for _ in 0..ATTEMPTS {
        let status = client
            .model_infer(embed_request([1, 2, 3, 1_000_000_000]))
            .await
            .expect_err("an index past the table fails");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    client
        .model_infer(embed_request([1, 2, 3, 4]))
        .await
        .expect("the model still serves");
    child.start_kill().expect("stop the agent");
    let mut rest = String::new();
    log.read_to_string(&mut rest).await.expect("read the log");
    let _ = child.wait().await;
    let quoting = rest.lines().filter(|l| l.contains("1000000000")).count();
    // The runner logs one line a second at most (with a count of those held back); one
    // line per attempt, as ONNX Runtime wrote before, is a flood.
    assert!(
        (1..=ATTEMPTS / 3).contains(&quoting),
        "{quoting} log lines quote the failing value after {ATTEMPTS} attempts:\n{rest}"
    );
}
