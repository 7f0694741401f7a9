//! The agent over real gRPC with real ONNX Runtime: batching, loading, admission and
//! bad input.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use herd_agent::LoadState;
use herd_agent::Loader;
use herd_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use herd_proto::inference::{
    InferTensorContents, ModelConfigRequest, ModelInferRequest, ModelMetadataRequest,
    ModelStatisticsRequest,
};
use tonic::Code;

const LONG: Duration = Duration::from_secs(60);

fn view(agent: &TestAgent, model: &str) -> herd_agent::CachedModel {
    agent
        .agent
        .cache
        .views()
        .into_iter()
        .find(|v| v.name == model)
        .expect("model is listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_outputs_equal_unbatched_and_concurrent_requests_share_runs() {
    let repo = repository();
    // Reference: each request run alone on its own session, no agent involved.
    let files = herd_core::Repository::new(repo_path(&repo), Default::default())
        .find("tiny_mlp")
        .expect("tiny_mlp");
    let (_, mut alone) = ort().load(&files).expect("load tiny_mlp");
    let requests: Vec<ModelInferRequest> =
        (0..64).map(|i| mlp_request(1 + i % 3, i as f32)).collect();
    let expected: Vec<Vec<f32>> = requests
        .iter()
        .map(|r| {
            let input = herd_core::Tensor {
                dtype: herd_proto::DataType::Fp32,
                shape: r.inputs[0].shape.clone(),
                data: r.raw_input_contents[0].clone(),
            };
            f32_values(&alone.run(vec![input]).expect("run alone")[0].data)
        })
        .collect();

    // Hold the first run so that the other 63 requests gather behind it.
    let gate = Arc::new(Gate::default());
    let loader = GatedLoader::run_gated("tiny_mlp", &gate);
    let agent = TestAgent::start(options(&repo_path(&repo)), loader).await;
    let client = agent.client().await;
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|r| spawn_infer(&client, r))
        .collect();
    gate_reached(&gate, 1).await;
    eventually("64 requests queued", LONG, || {
        view(&agent, "tiny_mlp").queue_len == 64
    })
    .await;
    gate.open();
    for (task, want) in tasks.into_iter().zip(expected) {
        let response = task.await.expect("task").expect("infer").into_inner();
        let got = f32_values(&response.raw_output_contents[0]);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "batched {g} vs alone {w}"
            );
        }
    }
    let stats = client
        .clone()
        .model_statistics(ModelStatisticsRequest {
            name: "tiny_mlp".into(),
            version: String::new(),
        })
        .await
        .expect("stats")
        .into_inner()
        .model_stats
        .remove(0);
    let items: u64 = (0..64u64).map(|i| 1 + i % 3).sum();
    assert_eq!(stats.inference_count, items);
    assert!(
        stats.execution_count < 64,
        "{} runs for 64 requests",
        stats.execution_count
    );
    assert!(stats.batch_stats.iter().any(|b| b.batch_size > 1));
    assert!(
        stats.batch_stats.iter().all(|b| b.batch_size <= 32),
        "max_batch_size holds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_share_one_load() {
    let repo = repository();
    let gate = Arc::new(Gate::default());
    let loader = GatedLoader::load_gated("tiny_mlp", &gate);
    let agent = TestAgent::start(options(&repo_path(&repo)), loader).await;
    let client = agent.client().await;
    let tasks: Vec<_> = (0..32)
        .map(|i| spawn_infer(&client, mlp_request(1, i as f32)))
        .collect();
    gate_reached(&gate, 1).await;
    eventually("32 requests waiting for the load", LONG, || {
        view(&agent, "tiny_mlp").in_flight == 32
    })
    .await;
    assert_eq!(view(&agent, "tiny_mlp").state, LoadState::Loading);
    gate.open();
    for t in tasks {
        t.await.expect("task").expect("infer");
    }
    assert_eq!(agent.agent.cache.loads_started(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_load_does_not_stall_other_models() {
    let repo = repository();
    let gate = Arc::new(Gate::default());
    let loader = GatedLoader::load_gated("tiny_mlp", &gate);
    let agent = TestAgent::start(options(&repo_path(&repo)), loader).await;
    let mut client = agent.client().await;
    let slow = spawn_infer(&client, mlp_request(1, 0.0));
    gate_reached(&gate, 1).await;
    // tiny_mlp is still loading; tiny_fixed loads and answers meanwhile.
    let fixed = raw_request("tiny_fixed", "x", "FP32", &[2, 4], f32_bytes(&[1.0; 8]));
    for _ in 0..3 {
        tokio::time::timeout(LONG, client.model_infer(fixed.clone()))
            .await
            .expect("tiny_fixed must not wait for tiny_mlp's load")
            .expect("tiny_fixed answers");
    }
    assert_eq!(view(&agent, "tiny_mlp").state, LoadState::Loading);
    gate.open();
    slow.await
        .expect("task")
        .expect("tiny_mlp answers once loaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_statuses_and_the_agent_keeps_serving() {
    let repo = repository();
    write(
        repo.path(),
        "corrupt/1/model.onnx",
        &[0x08, 0xff, 0xff, 0xff, 0x0f, 0x12],
    );
    write(
        repo.path(),
        "text/1/model.onnx",
        b"this is not an onnx model\n",
    );
    let agent = TestAgent::start(options(&repo_path(&repo)), GatedLoader::plain()).await;
    let mut client = agent.client().await;
    let good = mlp_request(2, 0.5);
    let with = |f: &dyn Fn(&mut ModelInferRequest)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    let cases: Vec<(&str, ModelInferRequest, Code, &str)> = vec![
        (
            "wrong dtype",
            with(&|r| r.inputs[0].datatype = "INT32".into()),
            Code::InvalidArgument,
            "must be FP32, got INT32",
        ),
        (
            "wrong shape",
            with(&|r| r.inputs[0].shape = vec![2, 15]),
            Code::InvalidArgument,
            "has shape [2,15]; the model expects [-1,16]",
        ),
        (
            "wrong rank",
            with(&|r| r.inputs[0].shape = vec![32]),
            Code::InvalidArgument,
            "has shape [32]",
        ),
        (
            "bytes too short",
            with(&|r| r.raw_input_contents[0] = r.raw_input_contents[0].slice(..100)),
            Code::InvalidArgument,
            "has 100 bytes of raw contents; shape [2,16] of FP32 needs 128",
        ),
        (
            "bytes too long",
            with(&|r| r.raw_input_contents[0] = f32_bytes(&[0.0; 40])),
            Code::InvalidArgument,
            "has 160 bytes",
        ),
        (
            "unknown input",
            with(&|r| r.inputs[0].name = "nope".into()),
            Code::InvalidArgument,
            "no input named 'nope'; its inputs are: x",
        ),
        (
            "unknown model",
            with(&|r| r.model_name = "nope".into()),
            Code::NotFound,
            "model 'nope' is not in the model repository",
        ),
        (
            "path in name",
            with(&|r| r.model_name = "../tiny_mlp".into()),
            Code::InvalidArgument,
            "invalid model name",
        ),
        (
            "unknown version",
            with(&|r| r.model_version = "7".into()),
            Code::NotFound,
            "has no version '7'",
        ),
        (
            "batch too big",
            mlp_request(33, 0.0),
            Code::InvalidArgument,
            "batch of 33 items; this model takes 1 to 32",
        ),
        (
            "corrupt model",
            with(&|r| r.model_name = "corrupt".into()),
            Code::FailedPrecondition,
            "model 'corrupt' cannot be loaded",
        ),
        (
            "text model",
            with(&|r| r.model_name = "text".into()),
            Code::FailedPrecondition,
            "model 'text' cannot be loaded",
        ),
    ];
    for (what, request, code, message) in cases {
        let status = client.model_infer(request).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(message),
            "{what}: {:?} lacks {message:?}",
            status.message()
        );
        client
            .model_infer(good.clone())
            .await
            .unwrap_or_else(|e| panic!("after {what}: {e:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_request_never_fails_the_batch_it_would_have_joined() {
    let repo = repository();
    let gate = Arc::new(Gate::default());
    let loader = GatedLoader::run_gated("tiny_mlp", &gate);
    let agent = TestAgent::start(options(&repo_path(&repo)), loader).await;
    let client = agent.client().await;
    let spawn = |r: ModelInferRequest| spawn_infer(&client, r);
    let first = spawn(mlp_request(1, 0.0));
    gate_reached(&gate, 1).await;
    let good: Vec<_> = (0..4).map(|i| spawn(mlp_request(1, i as f32))).collect();
    let mut bad = mlp_request(1, 9.0);
    bad.raw_input_contents[0] = bad.raw_input_contents[0].slice(..3);
    let refused = client
        .clone()
        .model_infer(bad)
        .await
        .expect_err("short input");
    assert_eq!(refused.code(), Code::InvalidArgument);
    eventually("good requests queued", LONG, || {
        view(&agent, "tiny_mlp").queue_len == 5
    })
    .await;
    gate.open();
    first.await.expect("task").expect("first");
    for g in good {
        g.await
            .expect("task")
            .expect("good requests batched beside a bad one succeed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_resource_exhausted_at_once() {
    let repo = repository();
    write(repo.path(), "tiny_mlp/herd.toml", b"queue_capacity = 2\n");
    let gate = Arc::new(Gate::default());
    let loader = GatedLoader::run_gated("tiny_mlp", &gate);
    let agent = TestAgent::start(options(&repo_path(&repo)), loader).await;
    let client = agent.client().await;
    let running = spawn_infer(&client, mlp_request(1, 0.0));
    gate_reached(&gate, 1).await;
    let queued = spawn_infer(&client, mlp_request(1, 1.0));
    eventually("second request queued", LONG, || {
        view(&agent, "tiny_mlp").queue_len == 2
    })
    .await;
    let status = client
        .clone()
        .model_infer(mlp_request(1, 2.0))
        .await
        .expect_err("queue is full");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("2 requests queued, its limit"),
        "{}",
        status.message()
    );
    gate.open();
    running.await.expect("task").expect("running request");
    queued.await.expect("task").expect("queued request");
    client
        .clone()
        .model_infer(mlp_request(1, 3.0))
        .await
        .expect("room again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_caller_left_never_runs() {
    let repo = repository();
    let gate = Arc::new(Gate::default());
    let loader = GatedLoader::run_gated("tiny_mlp", &gate);
    let agent = TestAgent::start(options(&repo_path(&repo)), loader).await;
    let client = agent.client().await;
    let first = spawn_infer(&client, mlp_request(1, 0.0));
    gate_reached(&gate, 1).await;
    let gone = spawn_infer(&client, mlp_request(5, 1.0));
    eventually("second request queued", LONG, || {
        view(&agent, "tiny_mlp").queue_len == 2
    })
    .await;
    gone.abort();
    eventually("the server notices the caller left", LONG, || {
        view(&agent, "tiny_mlp").in_flight == 1
    })
    .await;
    gate.open();
    first.await.expect("task").expect("first request");
    let stats = agent.agent.cache.stats("tiny_mlp").expect("stats");
    let c = stats.lock();
    assert_eq!(
        (c.execution_count, c.inference_count),
        (1, 1),
        "the 5 items of the abandoned request never ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_a_batch_dimension_is_served_unbatched() {
    let repo = repository();
    let gate = Arc::new(Gate::default());
    let loader = GatedLoader::run_gated("tiny_fixed", &gate);
    let agent = TestAgent::start(options(&repo_path(&repo)), loader).await;
    let client = agent.client().await;
    let request = |v: f32| raw_request("tiny_fixed", "x", "FP32", &[2, 4], f32_bytes(&[v; 8]));
    let tasks: Vec<_> = (0..3)
        .map(|i| spawn_infer(&client, request(i as f32)))
        .collect();
    gate_reached(&gate, 1).await;
    eventually("three requests queued", LONG, || {
        view(&agent, "tiny_fixed").queue_len == 3
    })
    .await;
    gate.open();
    let outputs: Vec<Vec<f32>> = futures_join(tasks).await;
    // y = x·W is linear in x, so the output for 2·1 is twice the output for 1.
    for (a, b) in outputs[1].iter().zip(&outputs[2]) {
        assert!((2.0 * a - b).abs() < 1e-4, "{a} {b}");
    }
    assert!(outputs[0].iter().all(|v| *v == 0.0));
    let mut c = client.clone();
    let config = c
        .model_config(ModelConfigRequest {
            name: "tiny_fixed".into(),
            version: String::new(),
        })
        .await
        .expect("config")
        .into_inner()
        .config
        .expect("config body");
    assert_eq!(config.max_batch_size, 0);
    assert_eq!(config.input[0].dims, vec![2, 4]);
    let stats = agent.agent.cache.stats("tiny_fixed").expect("stats");
    assert_eq!(stats.lock().execution_count, 3, "never batched");
}

async fn futures_join(
    tasks: Vec<
        tokio::task::JoinHandle<
            Result<tonic::Response<herd_proto::inference::ModelInferResponse>, tonic::Status>,
        >,
    >,
) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for t in tasks {
        let r = t.await.expect("task").expect("infer").into_inner();
        assert_eq!(r.outputs[0].shape, vec![2, 3]);
        out.push(f32_values(&r.raw_output_contents[0]));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_contents_several_inputs_and_chosen_outputs() {
    let repo = repository();
    let agent = TestAgent::start(options(&repo_path(&repo)), GatedLoader::plain()).await;
    let mut client = agent.client().await;
    let metadata = client
        .model_metadata(ModelMetadataRequest {
            name: "tiny_multi".into(),
            version: String::new(),
        })
        .await
        .expect("metadata")
        .into_inner();
    let names: Vec<(&str, &str, Vec<i64>)> = metadata
        .inputs
        .iter()
        .map(|t| (t.name.as_str(), t.datatype.as_str(), t.shape.clone()))
        .collect();
    assert_eq!(
        names,
        vec![("a", "FP32", vec![-1, 4]), ("b", "INT64", vec![-1, 4])]
    );
    let request = ModelInferRequest {
        model_name: "tiny_multi".into(),
        inputs: vec![
            InferInputTensor {
                name: "b".into(),
                datatype: "INT64".into(),
                shape: vec![1, 4],
                contents: Some(InferTensorContents {
                    int64_contents: vec![1, 2, 3, 4],
                    ..Default::default()
                }),
                ..Default::default()
            },
            InferInputTensor {
                name: "a".into(),
                datatype: "FP32".into(),
                shape: vec![1, 4],
                contents: Some(InferTensorContents {
                    fp32_contents: vec![0.5; 4],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ],
        outputs: vec![InferRequestedOutputTensor {
            name: "neg".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let response = client
        .model_infer(request)
        .await
        .expect("infer")
        .into_inner();
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(response.outputs[0].name, "neg");
    assert_eq!(response.outputs[0].datatype, "INT64");
    let neg: Vec<i64> = response.raw_output_contents[0]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    assert_eq!(neg, vec![-1, -2, -3, -4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_worker_fails_its_batch_clearly_and_the_model_loads_again() {
    let repo = repository();
    let agent = TestAgent::start(options(&repo_path(&repo)), GatedLoader::plain()).await;
    let mut client = agent.client().await;
    let pid = tiny_mlp_worker(&agent, &mut client).await;
    signal(pid, "-KILL");

    let status = client
        .model_infer(mlp_request(1, 1.0))
        .await
        .expect_err("its worker is gone");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("the model worker (pid {pid}) died")),
        "{}",
        status.message()
    );
    let other = raw_request("tiny_fixed", "x", "FP32", &[2, 4], f32_bytes(&[1.0; 8]));
    client
        .model_infer(other)
        .await
        .expect("other models are untouched");
    client
        .model_infer(mlp_request(1, 2.0))
        .await
        .expect("the next request loads it afresh");
    assert_eq!(
        agent.agent.cache.loads_started(),
        3,
        "tiny_mlp twice, tiny_fixed once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_node_and_each_model() {
    use herd_proto::herd::agent_client::AgentClient;
    use herd_proto::herd::{ModelState, StatusRequest};
    let repo = repository();
    let mut opts = options(&repo_path(&repo));
    opts.memory_limit = Some(1 << 30);
    let agent = TestAgent::start(opts, GatedLoader::plain()).await;
    let mut client = agent.client().await;
    for i in 0..5 {
        client
            .model_infer(mlp_request(2, i as f32))
            .await
            .expect("infer");
    }
    let mut status_client = AgentClient::connect(format!("http://{}", agent.addr))
        .await
        .expect("connect");
    let status = status_client
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let node = status.resources.expect("resources");
    assert!(node.memory_total_bytes > node.memory_capacity_bytes);
    assert_eq!(
        node.memory_capacity_bytes,
        1 << 30,
        "--memory-limit caps what the agent offers"
    );
    assert!(node.memory_available_bytes > 0 && node.cpu_count > 0);
    let names: Vec<&str> = status.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["tiny_fixed", "tiny_mlp", "tiny_multi"]);
    let mlp = &status.models[1];
    assert_eq!(mlp.state, ModelState::Ready as i32);
    assert!(
        mlp.memory_bytes > 1 << 20,
        "the worker's resident memory, {} bytes",
        mlp.memory_bytes
    );
    assert_eq!((mlp.runs, mlp.inference_count), (5, 10));
    assert_eq!(mlp.mean_batch_size, 2.0);
    assert_eq!(mlp.ttl_ms, 300_000);
    let mut bytes = &mlp.latency_histogram[..];
    let histogram: hdrhistogram::Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes)
        .expect("a V2 histogram");
    assert_eq!(histogram.len(), 5, "one latency per request");
    assert_eq!(status.models[0].state, ModelState::Available as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_keeps_the_callers_request_id_or_is_given_one() {
    let repo = repository();
    let agent = TestAgent::start(options(&repo_path(&repo)), GatedLoader::plain()).await;
    let mut client = agent.client().await;
    let id_of = |response: &tonic::Response<_>| {
        response
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let mut request = tonic::Request::new(mlp_request(1, 0.0));
    request
        .metadata_mut()
        .insert("x-request-id", "trace-me-1".parse().expect("ascii"));
    let response = client.model_infer(request).await.expect("infer");
    assert_eq!(id_of(&response).as_deref(), Some("trace-me-1"));
    let response = client
        .model_infer(mlp_request(1, 0.0))
        .await
        .expect("infer");
    let generated = id_of(&response).expect("an id is generated");
    assert!(
        !generated.is_empty() && generated.bytes().all(|b| b.is_ascii_hexdigit()),
        "{generated}"
    );
    assert_ne!(generated, "trace-me-1");
}

/// ONNX Runtime's CPU memory arena is a model setting (on by default, for speed): a
/// worker with it off answers what an in-process session with it on does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_the_memory_arena_answers_as_one_with_it() {
    let repo = repository();
    write(repo.path(), "tiny_mlp/herd.toml", b"memory_arena = false\n");
    let files = herd_core::Repository::new(repo_path(&repo), herd_core::ModelSettings::default())
        .find("tiny_mlp")
        .expect("tiny_mlp");
    assert!(!files.settings.memory_arena, "herd.toml turns it off");
    let (_, mut with_arena) = ort()
        .load(&herd_core::repository::ModelFiles {
            settings: herd_core::ModelSettings::default(),
            ..files.clone()
        })
        .expect("load in process, arena on");
    let agent = crate::budgets::BudgetAgent::start(
        options(repo.path()),
        None,
        herd_agent::ProcessLoader::new(worker_program()),
    )
    .await;
    let request = mlp_request(3, 0.5);
    let answer = agent
        .client()
        .await
        .model_infer(request.clone())
        .await
        .expect("served by a worker, arena off")
        .into_inner();
    let input = herd_core::Tensor {
        dtype: herd_proto::DataType::Fp32,
        shape: vec![3, 16],
        data: request.raw_input_contents[0].clone(),
    };
    let expected = f32_values(&with_arena.run(vec![input]).expect("run")[0].data);
    assert_eq!(f32_values(&answer.raw_output_contents[0]), expected);
}
