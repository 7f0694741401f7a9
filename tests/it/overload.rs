//! Overload is shed, not queued: over real gRPC, a request whose deadline (grpc-timeout)
//! the model cannot meet, given the work queued ahead of it at its measured pace, is
//! refused with RESOURCE_EXHAUSTED while the model is still busy, and every request
//! admitted is answered; one the model would refuse is refused from its first bytes,
//! before the rest of it is sent.

use std::time::Duration;

use tonic::Code;

use crate::budgets::{BudgetAgent, Valve, ValveLoader};
use crate::support::*;

/// How long a run of the slow model takes, more or less what ONNX Runtime adds.
const RUN: Duration = Duration::from_millis(400);
/// The callers' deadline: ten runs, of which 80% (eight runs) may be queued.
const DEADLINE: Duration = Duration::from_millis(4000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_meet_their_deadline_are_refused_while_the_model_is_busy() {
    let repo = repository();
    // One request per run, so that the queue ahead is a number of runs.
    write(repo.path(), "tiny_mlp/herd.toml", b"max_batch_size = 1\n");
    let valve = Valve::open_now();
    let agent = BudgetAgent::start(options(repo.path()), None, ValveLoader::new(&valve, RUN)).await;
    let client = agent.client().await;
    // The model's pace is measured on a first run.
    client
        .clone()
        .model_infer(mlp_request(1, 0.0))
        .await
        .expect("measured");

    // The model is busy with a request that has no deadline, held at the valve.
    valve.close();
    let running = spawn_infer(&client, mlp_request(1, 1.0));
    eventually("the model to run", Duration::from_secs(30), || {
        valve.waiting() == 1
    })
    .await;
    let burst: Vec<_> = (0..30)
        .map(|i| {
            let mut request = tonic::Request::new(mlp_request(1, 2.0 + i as f32));
            request.set_timeout(DEADLINE);
            let mut c = client.clone();
            tokio::spawn(async move { c.model_infer(request).await })
        })
        .collect();
    // Those refused are answered while the model still runs nothing: every one of the
    // burst is either answered or queued.
    let queued = || {
        agent
            .agent
            .cache
            .views()
            .into_iter()
            .find(|v| v.name == "tiny_mlp")
            .map_or(0, |v| v.queue_len)
    };
    eventually(
        "the burst to be refused or queued",
        Duration::from_secs(30),
        || {
            let answered = burst.iter().filter(|t| t.is_finished()).count();
            answered + queued() == burst.len() + 1
        },
    )
    .await;
    let mut refused = 0;
    let mut admitted = Vec::new();
    for task in burst {
        if !task.is_finished() {
            admitted.push(task);
            continue;
        }
        let status = task.await.expect("task").expect_err("refused");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let message = status.message();
        assert!(
            message.starts_with("model 'tiny_mlp' cannot answer within the ")
                && message.ends_with("retry later or with a longer deadline"),
            "{message}"
        );
        refused += 1;
    }
    assert!(
        refused > 0 && !admitted.is_empty(),
        "{refused} refused, {} admitted",
        admitted.len()
    );
    valve.open();
    running.await.expect("task").expect("no deadline: admitted");
    for task in admitted {
        task.await
            .expect("task")
            .expect("admitted, answered within its deadline");
    }
}

/// The first `sent` bytes of a gRPC ModelInferRequest for `model` that says it is
/// `declared` bytes long.
fn head_of_request(model: &str, declared: u32, sent: usize) -> bytes::Bytes {
    let mut head = vec![0u8];
    head.extend(declared.to_be_bytes());
    head.extend([0x0a, model.len() as u8]);
    head.extend(model.as_bytes());
    head.resize(sent, 0);
    bytes::Bytes::from(head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_model_would_refuse_is_refused_before_the_rest_of_it_is_sent() {
    let repo = repository();
    let valve = Valve::open_now();
    let agent = BudgetAgent::start(options(repo.path()), None, ValveLoader::new(&valve, RUN)).await;
    // The model's pace is measured on a first run: 64 bytes of input in about RUN.
    agent
        .client()
        .await
        .model_infer(mlp_request(1, 0.0))
        .await
        .expect("measured");

    // A request that says it is 1 MiB, with a long deadline: at that pace it cannot be
    // answered in time. Only its first 100 bytes are sent, and the stream stays open.
    let tcp = tokio::net::TcpStream::connect(agent.addr())
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::post(format!(
        "http://{}/inference.GRPCInferenceService/ModelInfer",
        agent.addr()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("grpc-timeout", "60S")
    .body(())
    .expect("request");
    let (response, mut body) = client.send_request(request, false).expect("sent");
    body.send_data(head_of_request("tiny_mlp", 1 << 20, 100), false)
        .expect("the first bytes");
    let response = response
        .await
        .expect("answered while the rest is held back");
    let status = tonic::Status::from_header_map(response.headers())
        .expect("a trailers-only answer with its status");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("model 'tiny_mlp' cannot answer within the "),
        "{status:?}"
    );
    // The agent still serves.
    agent
        .client()
        .await
        .model_infer(mlp_request(1, 3.0))
        .await
        .expect("served after the refusal");
}
