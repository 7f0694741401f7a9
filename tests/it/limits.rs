//! Limits as clients meet them, over real gRPC on loopback: a message over
//! --max-message-size is RESOURCE_EXHAUSTED (as gRPC's clients expect, not tonic's
//! OUT_OF_RANGE) on the agent and the scheduler, for a request and for a response; the
//! scheduler sheds requests past --max-in-flight-bytes before reading them; errors name
//! no server path; the CLI and the dashboard read the token from --token-file.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herd_proto::inference::model_infer_request::InferInputTensor;
use herd_proto::inference::{InferTensorContents, ModelInferRequest};
use herd_scheduler::config::PolicyArg;
use prost::Message;
use tokio::process::Command;
use tonic::Code;

use crate::cluster_support::{TestCluster, TOKEN};
use crate::support::*;

const HERD: &str = env!("CARGO_BIN_EXE_herd");

/// A tiny_mlp request carrying `bytes` of tensor data (rows of 16 floats; more rows
/// than the model takes, which only matters once it reaches the model).
fn request_of(bytes: usize) -> ModelInferRequest {
    let rows = bytes / 64;
    raw_request(
        "tiny_mlp",
        "x",
        "FP32",
        &[rows as i64, 16],
        Bytes::from(vec![0u8; rows * 64]),
    )
}

fn assert_too_large(status: &tonic::Status, request: &ModelInferRequest, limit: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        format!(
            "the request is {} bytes; this server accepts at most {limit}",
            request.encoded_len()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_message_limit_is_resource_exhausted_on_agent_and_scheduler() {
    let repo = repository();
    let mut opts = options(repo.path());
    opts.max_message_size = 1 << 20;
    let agent = TestAgent::start(opts, GatedLoader::plain()).await;
    let cluster = TestCluster::start_with(&[], &[], PolicyArg::Spread, |c| {
        c.max_message_size = "1MiB".parse().expect("size");
    })
    .await;
    let request = request_of(2 << 20);
    for mut client in [agent.client().await, cluster.client().await] {
        let status = client
            .model_infer(request.clone())
            .await
            .expect_err("too large");
        assert_too_large(
            &status,
            &request,
            "1048576 bytes (1.0 MiB; --max-message-size)",
        );
        // The connection serves on: a request under the limit gets its own answer.
        let status = client
            .model_infer(request_of(64 << 10))
            .await
            .expect_err("more rows than tiny_mlp takes (or no node, for the scheduler)");
        assert!(
            !status.message().contains("--max-message-size"),
            "{status:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_message_limit_is_resource_exhausted_in_its_trailers() {
    // Typed contents in (small integers are one byte each), raw contents out (eight
    // bytes each): the answer is larger than the question.
    let rows = 8;
    let request = ModelInferRequest {
        model_name: "tiny_multi".into(),
        inputs: vec![
            InferInputTensor {
                name: "a".into(),
                datatype: "FP32".into(),
                shape: vec![rows, 4],
                contents: Some(InferTensorContents {
                    fp32_contents: vec![0.5; rows as usize * 4],
                    ..Default::default()
                }),
                ..Default::default()
            },
            InferInputTensor {
                name: "b".into(),
                datatype: "INT64".into(),
                shape: vec![rows, 4],
                contents: Some(InferTensorContents {
                    int64_contents: vec![1; rows as usize * 4],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let limit = 350;
    assert!(request.encoded_len() < limit, "{}", request.encoded_len());
    let repo = repository();
    let mut opts = options(repo.path());
    opts.max_message_size = limit;
    let agent = TestAgent::start(opts, GatedLoader::plain()).await;
    let status = agent
        .client()
        .await
        .model_infer(request)
        .await
        .expect_err("the answer is too large to send");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let message = status.message();
    assert!(
        message.starts_with("the response is ")
            && message.ends_with(
                " bytes; this server sends at most 350 bytes (350 B; --max-message-size)"
            ),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_sheds_requests_past_its_in_flight_bytes_until_they_are_answered() {
    let cluster = TestCluster::start_with(&[], &[], PolicyArg::Spread, |c| {
        c.max_message_size = "2MiB".parse().expect("size");
        c.max_in_flight_bytes = "3MiB".parse().expect("size");
    })
    .await;
    // A node in this process whose load of tiny_mlp waits at a gate: a request for it
    // waits in the scheduler, holding its bytes.
    let gate = Arc::new(Gate::default());
    let mut opts = options(cluster.repo.path());
    opts.token = Some(TOKEN.into());
    let agent = TestAgent::start_with_tls(
        opts,
        GatedLoader::load_gated("tiny_mlp", &gate),
        Some(cluster.agent_identity()),
    )
    .await;
    let link = herd_agent::Link {
        scheduler: cluster.addr.clone(),
        token: Some(TOKEN.into()),
        advertise: Some(agent.addr.clone()),
        listen: agent.addr.parse().expect("addr"),
        ca_pem: Some(cluster.ca_pem()),
    };
    let joined = tokio::spawn(herd_agent::join_and_report(agent.agent.clone(), link));
    cluster.wait_for_nodes(1).await;

    let client = cluster.client().await;
    let held = spawn_infer(&client, request_of(1536 << 10));
    gate_reached(&gate, 1).await;
    let second = request_of(1800 << 10);
    let status = client
        .clone()
        .model_infer(second.clone())
        .await
        .expect_err("past the budget");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(&format!(
            "this one's {} would pass its limit of 3145728 bytes (3.0 MiB; \
             --max-in-flight-bytes); try again later",
            second.encoded_len()
        )),
        "{}",
        status.message()
    );

    // Answered (tiny_mlp takes 32 rows at most), the first gives its bytes back.
    gate.open();
    let first = held.await.expect("task").expect_err("too many rows");
    assert_eq!(first.code(), Code::InvalidArgument, "{first:?}");
    let status = client
        .clone()
        .model_infer(second)
        .await
        .expect_err("too many rows");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    joined.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_repository_files_as_the_repository_does_and_not_where_it_is() {
    let repo = repository();
    let root = repo.path().to_string_lossy().into_owned();
    write(repo.path(), "tiny_mlp/herd.toml", b"max_batch_size = [\n");
    write(repo.path(), "corrupt/1/model.onnx", b"not an onnx model");
    let agent = TestAgent::start(options(repo.path()), GatedLoader::plain()).await;
    let mut client = agent.client().await;
    let status = client
        .model_infer(mlp_request(1, 0.0))
        .await
        .expect_err("bad herd.toml");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let message = status.message();
    assert!(
        message.starts_with("model 'tiny_mlp' cannot be loaded: tiny_mlp/herd.toml: ")
            && message.len() > "model 'tiny_mlp' cannot be loaded: tiny_mlp/herd.toml: ".len(),
        "names the file and the reason: {message}"
    );
    assert!(!message.contains(&root), "{message}");
    let mut corrupt = mlp_request(1, 0.0);
    corrupt.model_name = "corrupt".into();
    let status = client.model_infer(corrupt).await.expect_err("not a model");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("model 'corrupt' cannot be loaded: "),
        "{status:?}"
    );
    // ONNX Runtime quotes the file it could not read: by its name in the repository.
    assert!(
        status.message().contains(" corrupt/1/model.onnx ") && !status.message().contains(&root),
        "{status:?}"
    );

    // The scheduler reads the same file when asked to load the model (inference only
    // hears that the model is not in the catalog).
    let bad = [("tiny_mlp", "max_batch_size = [\n")];
    let cluster = TestCluster::start_with(&[], &bad, PolicyArg::Spread, |_| {}).await;
    let root = cluster.repo.path().to_string_lossy().into_owned();
    let status = cluster
        .admin(Some(TOKEN))
        .await
        .load_model(herd_proto::herd::AdminLoadRequest {
            model: "tiny_mlp".into(),
        })
        .await
        .expect_err("bad herd.toml");
    assert!(
        status
            .message()
            .starts_with("model 'tiny_mlp' cannot be loaded: tiny_mlp/herd.toml: "),
        "{status:?}"
    );
    assert!(!status.message().contains(&root), "{status:?}");
}

/// Runs `herd ARGS` with a clean environment for the client's settings.
async fn herd(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(HERD);
    command.args(args).env("NO_COLOR", "1");
    for name in [
        "HERD_SCHEDULER",
        "HERD_TOKEN",
        "HERD_TOKEN_FILE",
        "HERD_TIMEOUT",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("herd finishes")
        .expect("run herd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_dashboard_read_the_token_from_a_file() {
    let repo = repository();
    let mut opts = options(repo.path());
    opts.token = Some("s3cret".into());
    opts.require_token_for_inference = true;
    let agent = TestAgent::start(opts, GatedLoader::plain()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "s3cret\n").expect("write");
    let file = file.to_str().expect("utf-8 path");
    let infer = [
        "infer",
        "tiny_fixed",
        "-i",
        "x=[[1,2,3,4],[5,6,7,8]]",
        "--scheduler",
        &agent.addr,
    ];

    let mut args = infer.to_vec();
    args.extend(["--token-file", file]);
    let out = herd(&args, &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = herd(&infer, &[("HERD_TOKEN_FILE", file)]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Not both; and a file that gives no token is one clear line.
    args.extend(["--token", "s3cret"]);
    assert_eq!(herd(&args, &[]).await.status.code(), Some(2));
    let missing = dir.path().join("missing");
    let missing = missing.to_str().expect("utf-8 path");
    let mut args = infer.to_vec();
    args.extend(["--token-file", missing]);
    let out = herd(&args, &[]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.trim_end().starts_with(&format!(
            "herd: error: invalid token: cannot read the token file {missing}: "
        )) && err.trim_end().lines().count() == 1,
        "{err}"
    );

    // The dashboard reads it before it takes the terminal.
    let out = herd(&["dash", "--token-file", missing], &[]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot read the token file {missing}: ")),
        "{err}"
    );
    let both = herd(&["dash", "--token-file", file, "--token", "t"], &[]).await;
    assert_eq!(both.status.code(), Some(2));
}
