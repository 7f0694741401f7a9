//! The client commands as users run them: the real `herd` executable against an
//! in-process agent (real ONNX Runtime, real gRPC on loopback), checked against the
//! model's direct output. `herd models` / `herd nodes` need the scheduler's Admin
//! service; here they are only checked to fail clearly against an agent.

use std::path::Path;
use std::process::Output;

use herd_client::ndarray::{ArrayD, IxDyn};
use herd_client::serde_json;
use herd_client::TensorData;
use tokio::process::Command;

use crate::support::*;

const HERD: &str = env!("CARGO_BIN_EXE_herd");

/// Runs `herd ARGS` with a clean environment for the client's settings.
async fn herd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(HERD);
    command
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("HERD_SCHEDULER")
        .env_remove("HERD_TOKEN")
        .env_remove("HERD_TIMEOUT");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().await.expect("run herd")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a failed run with exit code 1 and exactly one line on stderr; returns it.
fn one_error_line(out: &Output) -> String {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}\nstderr: {err}",
        stdout(out)
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {err}");
    assert!(lines[0].starts_with("herd: error: "), "{err}");
    lines[0].to_string()
}

async fn agent() -> (TestAgent, tempfile::TempDir) {
    let repo = repository();
    let agent = TestAgent::start(options(repo.path()), GatedLoader::plain()).await;
    (agent, repo)
}

/// tiny_mlp's input rows, as `mlp_request` builds them.
fn mlp_values(rows: usize, seed: f32) -> Vec<f32> {
    (0..rows * 16)
        .map(|i| ((i as f32) * 0.37 + seed).sin())
        .collect()
}

fn write_f32(path: &Path, shape: &[usize], values: Vec<f32>) {
    TensorData::F32(ArrayD::from_shape_vec(IxDyn(shape), values).expect("shape"))
        .write_npy(path)
        .expect("write .npy");
}

/// The model's output for `rows` rows, asked for directly over gRPC.
async fn direct_mlp(agent: &TestAgent, rows: usize, seed: f32) -> Vec<f32> {
    let mut client = agent.client().await;
    let response = client
        .model_infer(mlp_request(rows, seed))
        .await
        .expect("direct inference")
        .into_inner();
    assert_eq!(response.outputs[0].shape, vec![rows as i64, 8]);
    f32_values(&response.raw_output_contents[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_writes_npy_outputs_equal_to_the_models_direct_output() {
    let (agent, _repo) = agent().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("x.npy");
    write_f32(&input, &[3, 16], mlp_values(3, 0.25));
    let out_dir = dir.path().join("out");
    let out = herd(
        &[
            "infer",
            "tiny_mlp",
            "--scheduler",
            &agent.addr,
            "--input",
            &format!("x={}", input.display()),
            "--output-dir",
            out_dir.to_str().expect("utf-8 path"),
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("y  FP32 [3, 8]\n"), "{text}");
    assert!(text.contains("argmax"), "{text}");
    let written = TensorData::read_npy(&out_dir.join("y.npy")).expect("read y.npy");
    let expected = direct_mlp(&agent, 3, 0.25).await;
    assert_eq!(
        written,
        TensorData::F32(ArrayD::from_shape_vec(IxDyn(&[3, 8]), expected).expect("shape"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_json_output_parses_and_holds_every_output() {
    let (agent, _repo) = agent().await;
    let out = herd(
        &[
            "infer",
            "tiny_multi",
            "--scheduler",
            &agent.addr,
            "--input",
            "a=[[0.5, 1, 1.5, 2], [0, 0, 0, 0]]",
            "--input",
            "b=[[10, 20, 30, 40], [1, 2, 3, 4]]",
            "--json",
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("--json parses");
    assert_eq!(v["model"], "tiny_multi");
    let outputs = v["outputs"].as_array().expect("outputs");
    let by_name = |name: &str| {
        outputs
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("output {name} in {v}"))
    };
    assert_eq!(by_name("sum")["datatype"], "FP32");
    assert_eq!(by_name("sum")["shape"], serde_json::json!([2, 4]));
    assert_eq!(
        by_name("sum")["data"],
        serde_json::json!([10.5, 21.0, 31.5, 42.0, 1.0, 2.0, 3.0, 4.0])
    );
    assert_eq!(by_name("neg")["datatype"], "INT64");
    assert_eq!(
        by_name("neg")["data"],
        serde_json::json!([-10, -20, -30, -40, -1, -2, -3, -4])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_top_k_lists_the_largest_values_of_each_row() {
    let (agent, _repo) = agent().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("x.npy");
    write_f32(&input, &[2, 16], mlp_values(2, 1.5));
    let out = herd(
        &[
            "infer",
            "tiny_mlp",
            "--scheduler",
            &agent.addr,
            "-i",
            &format!("x={}", input.display()),
            "--top-k",
            "3",
            "--json",
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("--json parses");
    let direct = direct_mlp(&agent, 2, 1.5).await;
    for (row, ranked) in v["outputs"][0]["top_k"]
        .as_array()
        .expect("top_k rows")
        .iter()
        .enumerate()
    {
        let values = &direct[row * 8..(row + 1) * 8];
        let mut order: Vec<usize> = (0..8).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
        let given: Vec<u64> = ranked
            .as_array()
            .expect("ranked")
            .iter()
            .map(|r| r["index"].as_u64().expect("index"))
            .collect();
        let expected: Vec<u64> = order[..3].iter().map(|&i| i as u64).collect();
        assert_eq!(given, expected, "row {row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_shapes_and_dtypes_are_refused_before_sending_with_expected_and_given() {
    let (agent, _repo) = agent().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let narrow = dir.path().join("narrow.npy");
    write_f32(&narrow, &[2, 3], vec![0.0; 6]);
    let doubles = dir.path().join("doubles.npy");
    TensorData::F64(ArrayD::zeros(IxDyn(&[2, 16])))
        .write_npy(&doubles)
        .expect("write");
    let cases = [
        (
            "tiny_mlp",
            format!("x={}", narrow.display()),
            "input 'x' of model tiny_mlp: expected FP32 [-1, 16], given FP32 [2, 3]",
        ),
        (
            "tiny_mlp",
            format!("x={}", doubles.display()),
            "input 'x' of model tiny_mlp: expected FP32 [-1, 16], given FP64 [2, 16]",
        ),
        (
            "tiny_fixed",
            "x=[[1, 2, 3, 4]]".to_string(),
            "input 'x' of model tiny_fixed: expected FP32 [2, 4], given FP32 [1, 4]",
        ),
    ];
    for (model, input, message) in cases {
        let out = herd(
            &[
                "infer",
                model,
                "--scheduler",
                &agent.addr,
                "--input",
                &input,
            ],
            &[],
        )
        .await;
        assert_eq!(one_error_line(&out), format!("herd: error: {message}"));
    }
    // Nothing reached the model: the agent never loaded tiny_mlp or tiny_fixed.
    let mut client = agent.client().await;
    for model in ["tiny_mlp", "tiny_fixed"] {
        let stats = client
            .model_statistics(herd_proto::inference::ModelStatisticsRequest {
                name: model.into(),
                version: String::new(),
            })
            .await
            .expect("statistics")
            .into_inner();
        let runs: u64 = stats.model_stats.iter().map(|s| s.execution_count).sum();
        assert_eq!(runs, 0, "{model} ran");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_throughput_latency_and_no_errors_as_json() {
    let (agent, _repo) = agent().await;
    let out = herd(
        &[
            "bench",
            "tiny_mlp",
            "--scheduler",
            &agent.addr,
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--concurrency",
            "1,4",
            "--rate",
            "200",
            "--batch",
            "2",
            "--json",
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let steps: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert_eq!(steps.len(), 3, "{}", stdout(&out));
    for step in &steps {
        for field in [
            "target",
            "model",
            "concurrency",
            "rate",
            "batch",
            "throughput_rps",
            "items_per_s",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
            "errors",
            "server_mean_batch",
        ] {
            assert!(step.get(field).is_some(), "{field} missing in {step}");
        }
        assert_eq!(step["errors"], 0, "{step}");
        assert_eq!(step["batch"], 2, "{step}");
        let rps = step["throughput_rps"].as_f64().expect("throughput");
        assert!(rps > 0.0, "{step}");
        assert!(
            (step["items_per_s"].as_f64().expect("items") - 2.0 * rps).abs() < 1e-6,
            "{step}"
        );
        let p = |f: &str| step[f].as_u64().expect("latency");
        assert!(p("p50_us") > 0 && p("p50_us") <= p("p90_us"), "{step}");
        assert!(
            p("p90_us") <= p("p99_us") && p("p99_us") <= p("p999_us"),
            "{step}"
        );
        assert!(p("p999_us") <= p("max_us"), "{step}");
        assert!(
            step["server_mean_batch"].as_f64().expect("mean batch") >= 2.0,
            "{step}"
        );
    }
    assert_eq!(steps[0]["concurrency"], 1);
    assert_eq!(steps[1]["concurrency"], 4);
    assert_eq!(steps[2]["concurrency"], serde_json::Value::Null);
    assert_eq!(steps[2]["rate"], 200.0);
    // The open loop sends on schedule: 200/s for 1 s is 200 requests.
    assert_eq!(steps[2]["requests"], 200, "{}", steps[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_local_measures_onnx_runtime_in_process_at_each_batch_size() {
    let repo = repository();
    let model = repo.path().join("tiny_mlp/1/model.onnx");
    let out = herd(
        &[
            "bench",
            "tiny_mlp",
            "--local",
            model.to_str().expect("utf-8 path"),
            "--local-batch",
            "1,4",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--json",
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let steps: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(steps.len(), 2, "{}", stdout(&out));
    for (step, batch) in steps.iter().zip([1, 4]) {
        assert!(
            step["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("local:")),
            "{step}"
        );
        assert_eq!(step["batch"], batch);
        assert_eq!(step["server_mean_batch"], batch as f64);
        assert!(step["items_per_s"].as_f64().expect("items") > 0.0, "{step}");
        assert_eq!(step["errors"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_scheduler_is_one_clear_line_for_every_command() {
    // A port that was free a moment ago and has no listener now.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    let expected = format!("herd: error: cannot reach scheduler at {addr}: connection refused");
    for args in [
        vec!["infer", "tiny_mlp", "--input", "x=[[1]]"],
        vec!["bench", "tiny_mlp", "--duration", "1s"],
        vec!["models", "list"],
        vec!["nodes", "show", "nas"],
    ] {
        let out = herd(&args, &[("HERD_SCHEDULER", addr.as_str())]).await;
        assert_eq!(one_error_line(&out), expected, "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_token_is_refused_clearly_and_the_right_one_works() {
    let repo = repository();
    let mut opts = options(repo.path());
    opts.token = Some("s3cret".into());
    opts.require_token_for_inference = true;
    let agent = TestAgent::start(opts, GatedLoader::plain()).await;
    let infer = ["infer", "tiny_fixed", "-i", "x=[[1,2,3,4],[5,6,7,8]]"];
    let with = |token: Option<&'static str>| {
        let mut env = vec![("HERD_SCHEDULER", agent.addr.clone())];
        if let Some(t) = token {
            env.push(("HERD_TOKEN", t.to_string()));
        }
        env
    };
    for token in [None, Some("wrong")] {
        let env = with(token);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let line = one_error_line(&herd(&infer, &env).await);
        let prefix = format!(
            "herd: error: scheduler at {} refused the token: ",
            agent.addr
        );
        assert!(line.starts_with(&prefix), "{token:?}: {line}");
    }
    let env = with(Some("s3cret"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = herd(&infer, &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("y  FP32 [2, 3]"),
        "{}",
        stdout(&out)
    );
    // --token on the command line wins over the environment.
    let mut args = infer.to_vec();
    args.extend(["--token", "s3cret"]);
    let out = herd(
        &args,
        &[
            ("HERD_SCHEDULER", agent.addr.as_str()),
            ("HERD_TOKEN", "wrong"),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_commands_against_an_agent_say_they_need_the_scheduler() {
    let (agent, _repo) = agent().await;
    for args in [
        vec!["models", "list", "--json"],
        vec!["nodes", "list"],
        vec!["models", "load", "tiny_mlp"],
    ] {
        let out = herd(&args, &[("HERD_SCHEDULER", agent.addr.as_str())]).await;
        let line = one_error_line(&out);
        assert!(
            line.contains("UNIMPLEMENTED") && line.contains("scheduler's address"),
            "{args:?}: {line}"
        );
        assert!(stdout(&out).is_empty(), "{args:?}");
    }
}

#[tokio::test]
async fn client_usage_errors_exit_with_code_2() {
    for args in [
        vec!["infer"],
        vec!["infer", "tiny_mlp", "--input", "no-equals-sign"],
        vec!["infer", "tiny_mlp", "--top-k", "0"],
        vec!["models"],
        vec!["nodes", "drain"],
        vec!["bench", "tiny_mlp", "--duration", "soon"],
    ] {
        let out = herd(&args, &[]).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
