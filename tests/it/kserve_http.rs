//! KServe v2 HTTP/REST against real servers (real ONNX Runtime, loopback ports the
//! kernel picks): an agent's --http and a scheduler's --http port answer as the same
//! server's gRPC does, with JSON and binary tensors; the stock tritonclient.http passes
//! its checks against both.

use std::process::Stdio;
use std::sync::Arc;

use bytes::Bytes;
use herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use herd_proto::inference::model_infer_request::InferInputTensor;
use herd_proto::inference::{ModelInferRequest, RepositoryModelUnloadRequest};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use crate::support::*;

/// An HTTP answer: status, headers, body.
struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `{"error": ...}` message of a refusal.
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {:?}", self.body))
            .to_string()
    }
}

/// One HTTP/1.1 request to `addr`.
async fn call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    send(addr, method, path, headers, Full::new(body.into())).await
}

/// A body that declares its length and never sends a byte: a refusal by declared length is
/// read without racing the server's close against the client still writing.
struct Withheld(u64);

impl hyper::body::Body for Withheld {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Pending
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.0)
    }
}

async fn send<B>(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: B) -> Reply
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect");
    send_over(stream, addr, method, path, headers, body).await
}

/// One HTTP/1.1 request over `stream` (a TLS one, say) to the server `addr`.
async fn send_over<S, B>(
    stream: S,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: B,
) -> Reply
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(body).expect("a valid request");
    let response = sender.send_request(request).await.expect("an answer");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.expect("a body").to_bytes(),
    }
}

async fn get(addr: &str, path: &str) -> Reply {
    call(addr, "GET", path, &[], Bytes::new()).await
}

/// A JSON body with `binary` after it, and the header that says where the JSON ends.
fn framed(head: &Value, binary: &[u8]) -> (Bytes, String) {
    let head = head.to_string();
    let length = head.len().to_string();
    (Bytes::from([head.as_bytes(), binary].concat()), length)
}

async fn infer_binary(addr: &str, path: &str, head: &Value, binary: &[u8]) -> Reply {
    let (body, length) = framed(head, binary);
    let headers = [("inference-header-content-length", length.as_str())];
    call(addr, "POST", path, &headers, body).await
}

/// An in-process agent serving gRPC and HTTP; both stop when it is dropped.
struct HttpAgent {
    grpc: TestAgent,
    http: String,
    _stop: oneshot::Sender<()>,
}

impl HttpAgent {
    async fn start(options: herd_agent::AgentOptions, loader: GatedLoader) -> HttpAgent {
        let grpc = TestAgent::start(options, loader).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let http = listener.local_addr().expect("addr").to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(herd_agent::serve_http(
            grpc.agent.clone(),
            listener,
            None,
            async {
                let _ = stopped.await;
            },
        ));
        HttpAgent {
            grpc,
            http,
            _stop: stop,
        }
    }

    async fn client(&self) -> GrpcInferenceServiceClient<Channel> {
        self.grpc.client().await
    }
}

const TOKEN: &str = "s3cret";

fn token_options(repo: &tempfile::TempDir) -> herd_agent::AgentOptions {
    herd_agent::AgentOptions {
        token: Some(TOKEN.into()),
        // Small, so that a test can pass it.
        max_message_size: 1 << 20,
        ..options(&repo_path(repo))
    }
}

fn a_values() -> Vec<f32> {
    (0..12).map(|i| i as f32 / 4.0).collect()
}

fn b_values() -> Vec<i64> {
    (0..12).map(|i| i - 6).collect()
}

/// tiny_multi's request over gRPC with raw tensors.
fn multi_request(
    a: (&str, &str, &[i64], Bytes),
    b: (&str, &str, &[i64], Bytes),
) -> ModelInferRequest {
    let tensor = |(name, datatype, shape, _): &(&str, &str, &[i64], Bytes)| InferInputTensor {
        name: name.to_string(),
        datatype: datatype.to_string(),
        shape: shape.to_vec(),
        ..Default::default()
    };
    ModelInferRequest {
        model_name: "tiny_multi".into(),
        inputs: vec![tensor(&a), tensor(&b)],
        raw_input_contents: vec![a.3.clone(), b.3.clone()],
        ..Default::default()
    }
}

/// tiny_multi's usual request: a = 0, 0.25, ..., b = -6, ..., 5, both [3, 4].
fn usual_request() -> ModelInferRequest {
    multi_request(
        ("a", "FP32", &[3, 4], f32_bytes(&a_values())),
        ("b", "INT64", &[3, 4], i64_bytes(&b_values())),
    )
}

/// The same request over HTTP: binary inputs, in order.
fn http_of(request: &ModelInferRequest) -> (Value, Vec<u8>) {
    let inputs: Vec<Value> = request
        .inputs
        .iter()
        .zip(&request.raw_input_contents)
        .map(|(t, raw)| {
            json!({"name": t.name, "datatype": t.datatype, "shape": t.shape,
                   "parameters": {"binary_data_size": raw.len()}})
        })
        .collect();
    let binary = request.raw_input_contents.concat();
    (json!({ "inputs": inputs }), binary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_binary_inference_over_http_equal_grpc_on_an_agent() {
    let repo = repository();
    let agent = HttpAgent::start(token_options(&repo), GatedLoader::plain()).await;
    let mut client = agent.client().await;
    let request = usual_request();
    let grpc = client
        .model_infer(request.clone())
        .await
        .expect("grpc infer")
        .into_inner();
    let (sum, neg) = (&grpc.raw_output_contents[0], &grpc.raw_output_contents[1]);

    // JSON in (nested data), JSON out.
    let a: Vec<Vec<f32>> = a_values().chunks(4).map(<[f32]>::to_vec).collect();
    let head = json!({
        "id": "j1",
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [3, 4], "data": a},
            {"name": "b", "datatype": "INT64", "shape": [3, 4], "data": b_values()}
        ]
    });
    let path = "/v2/models/tiny_multi/infer";
    let id = [("x-request-id", "req-42")];
    let reply = call(&agent.http, "POST", path, &id, head.to_string()).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(
        reply.headers["x-request-id"], "req-42",
        "the caller's id comes back"
    );
    let answer = reply.json();
    assert_eq!(answer["id"], "j1");
    assert_eq!(answer["model_version"], "1");
    let outputs = &answer["outputs"];
    assert_eq!(outputs[0]["name"], "sum");
    assert_eq!(outputs[0]["shape"], json!([3, 4]));
    let data = |o: &Value| o["data"].as_array().expect("data").clone();
    let want_sum: Vec<Value> = f32_values(sum).into_iter().map(Value::from).collect();
    assert_eq!(data(&outputs[0]), want_sum);
    let want_neg: Vec<Value> = neg
        .chunks_exact(8)
        .map(|c| Value::from(i64::from_le_bytes(c.try_into().expect("8 bytes"))))
        .collect();
    assert_eq!(data(&outputs[1]), want_neg);

    // Binary in, binary out (one output asked for by name, one by the request's flag),
    // on the versioned route.
    let (mut head, binary) = http_of(&request);
    head["outputs"] =
        json!([{"name": "neg", "parameters": {"binary_data": true}}, {"name": "sum"}]);
    head["parameters"] = json!({"binary_data_output": true});
    let path = "/v2/models/tiny_multi/versions/1/infer";
    let reply = infer_binary(&agent.http, path, &head, &binary).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let length: usize = reply.headers["inference-header-content-length"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number");
    let answer: Value = serde_json::from_slice(&reply.body[..length]).expect("json head");
    let sizes: Vec<&Value> = answer["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| &o["parameters"]["binary_data_size"])
        .collect();
    assert_eq!(sizes, [&json!(neg.len()), &json!(sum.len())]);
    assert_eq!(&reply.body[length..], [&neg[..], &sum[..]].concat());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_over_http_get_grpcs_status_and_message() {
    let repo = repository();
    let agent = HttpAgent::start(token_options(&repo), GatedLoader::plain()).await;
    let mut client = agent.client().await;
    let a = || f32_bytes(&a_values());
    let b = || i64_bytes(&b_values());
    let mut unknown_model =
        multi_request(("a", "FP32", &[3, 4], a()), ("b", "INT64", &[3, 4], b()));
    unknown_model.model_name = "no_such_model".into();
    let cases = [
        (
            "wrong shape",
            multi_request(("a", "FP32", &[4, 3], a()), ("b", "INT64", &[3, 4], b())),
            400,
        ),
        (
            "wrong datatype",
            multi_request(("a", "INT32", &[3, 4], a()), ("b", "INT64", &[3, 4], b())),
            400,
        ),
        (
            "unknown input name",
            multi_request(("x", "FP32", &[3, 4], a()), ("b", "INT64", &[3, 4], b())),
            400,
        ),
        (
            "binary size not the shape's",
            multi_request(
                ("a", "FP32", &[3, 4], a().slice(..44)),
                ("b", "INT64", &[3, 4], b()),
            ),
            400,
        ),
        ("unknown model", unknown_model, 404),
    ];
    for (case, request, status) in cases {
        let grpc = client.model_infer(request.clone()).await.expect_err(case);
        let (head, binary) = http_of(&request);
        let path = format!("/v2/models/{}/infer", request.model_name);
        let reply = infer_binary(&agent.http, &path, &head, &binary).await;
        assert_eq!(reply.status, status, "{case}: {:?}", reply.body);
        assert_eq!(
            u16::from(herd_core::kserve_http::http_status(grpc.code())),
            status,
            "{case}"
        );
        assert_eq!(reply.error(), grpc.message(), "{case}");
    }

    // The priority header reaches the service as over gRPC: a bad one is refused, a
    // good one served.
    let head = json!({"inputs": [
        {"name": "a", "datatype": "FP32", "shape": [3, 4], "data": a_values()},
        {"name": "b", "datatype": "INT64", "shape": [3, 4], "data": b_values()}
    ]});
    let path = "/v2/models/tiny_multi/infer";
    let urgent = [("herd-priority", "urgent")];
    let reply = call(&agent.http, "POST", path, &urgent, head.to_string()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.error(),
        "header herd-priority is \"urgent\": use \"interactive\" or \"bulk\""
    );
    let bulk = [("herd-priority", "bulk")];
    let reply = call(&agent.http, "POST", path, &bulk, head.to_string()).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);

    // JSON data gets the same message as gRPC for what the model refuses.
    let head = json!({"inputs": [
        {"name": "a", "datatype": "FP32", "shape": [4, 3], "data": a_values()},
        {"name": "b", "datatype": "INT64", "shape": [3, 4], "data": b_values()}
    ]});
    let path = "/v2/models/tiny_multi/infer";
    let reply = call(&agent.http, "POST", path, &[], head.to_string()).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply
            .error()
            .contains("input 'a' has shape [4,3]; the model expects [-1,4]"),
        "{}",
        reply.error()
    );

    // What only HTTP can get wrong: the framing and the JSON.
    let good = multi_request(("a", "FP32", &[3, 4], a()), ("b", "INT64", &[3, 4], b()));
    let (mut head, binary) = http_of(&good);
    head["inputs"][1]["parameters"]["binary_data_size"] = json!(1000);
    let reply = infer_binary(&agent.http, path, &head, &binary).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.error(),
        "input 'b' has binary_data_size 1000 but only 96 bytes of binary data are left"
    );
    let (head, binary) = http_of(&good);
    let reply = infer_binary(&agent.http, path, &head, &[&binary[..], b"xx"].concat()).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.error().starts_with("2 bytes of binary data follow"),
        "{}",
        reply.error()
    );
    let reply = call(&agent.http, "POST", path, &[], "{\"inputs\": [").await;
    assert_eq!(reply.status, 400);
    assert!(
        reply
            .error()
            .starts_with("malformed inference request JSON"),
        "{}",
        reply.error()
    );
    let headers = [("inference-header-content-length", "lots")];
    let reply = call(&agent.http, "POST", path, &headers, "{}").await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.error().contains("must be a number of bytes"),
        "{}",
        reply.error()
    );
    let reply = send(&agent.http, "POST", path, &[], Withheld(2 << 20)).await;
    assert_eq!(reply.status, 413);
    assert!(
        reply.error().contains("--max-message-size"),
        "{}",
        reply.error()
    );
    let reply = get(&agent.http, "/v2/nowhere").await;
    assert_eq!(
        (reply.status, reply.error()),
        (404, "no such endpoint: GET /v2/nowhere".into())
    );

    // The server kept serving.
    let (head, binary) = http_of(&good);
    assert_eq!(
        infer_binary(&agent.http, path, &head, &binary).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_calls_over_http_need_the_token_as_over_grpc() {
    let repo = repository();
    let agent = HttpAgent::start(token_options(&repo), GatedLoader::plain()).await;
    let mut client = agent.client().await;
    let grpc = client
        .repository_model_unload(RepositoryModelUnloadRequest {
            model_name: "tiny_multi".into(),
            ..Default::default()
        })
        .await
        .expect_err("no token");
    let unload = "/v2/repository/models/tiny_multi/unload";
    let load = "/v2/repository/models/tiny_multi/load";
    for path in [load, unload] {
        let reply = call(&agent.http, "POST", path, &[], Bytes::new()).await;
        assert_eq!(
            (reply.status, reply.error()),
            (401, grpc.message().to_string()),
            "{path}"
        );
    }
    let wrong = [("authorization", "Bearer guess")];
    let reply = call(&agent.http, "POST", load, &wrong, Bytes::new()).await;
    assert_eq!(reply.status, 401);
    assert!(
        reply.error().contains("the one given is wrong"),
        "{}",
        reply.error()
    );

    // Inference and reading need no token on this agent; loading with it works.
    assert_eq!(
        get(&agent.http, "/v2/models/tiny_multi/ready").await.status,
        400
    );
    let token = format!("Bearer {TOKEN}");
    let auth = [("authorization", token.as_str())];
    let reply = call(&agent.http, "POST", load, &auth, Bytes::new()).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(
        get(&agent.http, "/v2/models/tiny_multi/ready").await.status,
        200
    );
    let index = call(
        &agent.http,
        "POST",
        "/v2/repository/index",
        &[],
        "{\"ready\": true}",
    )
    .await;
    assert_eq!(
        index.json(),
        json!([{"name": "tiny_multi", "version": "1", "state": "READY"}])
    );
    let body = "{\"parameters\": {\"unload_dependents\": false}}";
    let reply = call(&agent.http, "POST", unload, &auth, body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(
        get(&agent.http, "/v2/models/tiny_multi/ready").await.status,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_needs_the_token_over_http_where_it_does_over_grpc() {
    let repo = repository();
    let options = herd_agent::AgentOptions {
        require_token_for_inference: true,
        ..token_options(&repo)
    };
    let agent = HttpAgent::start(options, GatedLoader::plain()).await;
    let mut client = agent.client().await;
    let request = usual_request();
    let grpc = client
        .model_infer(request.clone())
        .await
        .expect_err("no token");
    let (head, binary) = http_of(&request);
    let path = "/v2/models/tiny_multi/infer";
    let reply = infer_binary(&agent.http, path, &head, &binary).await;
    assert_eq!(
        (reply.status, reply.error()),
        (401, grpc.message().to_string())
    );
    assert_eq!(get(&agent.http, "/v2/models/tiny_multi").await.status, 401);
    // Probes stay open, as over gRPC.
    assert_eq!(get(&agent.http, "/v2/health/live").await.status, 200);
    assert_eq!(get(&agent.http, "/v2/health/ready").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_parameter_is_the_requests_deadline() {
    let repo = repository();
    let gate = Arc::new(Gate::default());
    let agent = HttpAgent::start(
        options(&repo_path(&repo)),
        GatedLoader::run_gated("tiny_mlp", &gate),
    )
    .await;
    agent
        .grpc
        .agent
        .cache
        .load("tiny_mlp")
        .await
        .expect("loaded");
    let head = json!({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": vec![0.5f32; 16]}],
        "parameters": {"timeout": 100_000}
    });
    let reply = call(
        &agent.http,
        "POST",
        "/v2/models/tiny_mlp/infer",
        &[],
        head.to_string(),
    )
    .await;
    assert_eq!(reply.status, 504, "{:?}", reply.body);
    assert!(reply.error().contains("deadline"), "{}", reply.error());
    gate.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bytes_held_over_http_are_bounded_as_over_grpc() {
    let repo = repository();
    let gate = Arc::new(Gate::default());
    // Bodies held at once: the runners' 256 KiB plus one 1 MiB message (1,310,720).
    let options = herd_agent::AgentOptions {
        max_message_size: 1 << 20,
        max_in_flight_bytes: Some(256 << 10),
        ..options(&repo_path(&repo))
    };
    let agent = HttpAgent::start(options, GatedLoader::run_gated("tiny_mlp", &gate)).await;
    agent
        .grpc
        .agent
        .cache
        .load("tiny_mlp")
        .await
        .expect("loaded");
    // A tiny_mlp request padded with whitespace (still valid JSON) to `size` bytes.
    let padded = |size: usize| {
        let head = json!({"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 16], "data": vec![0.5f32; 16]}
        ]});
        let mut body = head.to_string().into_bytes();
        body.resize(size, b' ');
        body
    };
    let path = "/v2/models/tiny_mlp/infer";
    let (http, held) = (agent.http.clone(), padded(1_000_000));
    let first = tokio::spawn(async move { call(&http, "POST", path, &[], held).await });
    gate_reached(&gate, 1).await;
    let reply = call(&agent.http, "POST", path, &[], padded(400_000)).await;
    assert_eq!(reply.status, 429, "{:?}", reply.body);
    assert!(
        reply
            .error()
            .contains("this one's 400000 would pass its limit of 1310720 bytes"),
        "{}",
        reply.error()
    );
    gate.open();
    assert_eq!(first.await.expect("first").status, 200);
    // Its bytes are free again once it is answered.
    let reply = call(&agent.http, "POST", path, &[], padded(400_000)).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

/// Runs tests/tritonclient_http_check.py against `addr` and fails the test if it fails.
async fn tritonclient_http_check(addr: &str, token: Option<&str>, ca: Option<&std::path::Path>) {
    crate::binary::python_check("tritonclient_http_check.py", addr, token, ca).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_tritonclient_http_works_against_herd_agent_http() {
    let repo = repository();
    let mut child = Command::new(crate::cluster_support::HERD)
        .args(["agent", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--model-repository")
        .arg(repo.path())
        .env("NO_COLOR", "1")
        .env_remove("HERD_HTTP")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start herd agent");
    // The agent logs its bound HTTP address (http=) on the line that says it serves.
    let line = crate::cluster_support::log_line(&mut child, |l| l.contains("agent serving")).await;
    let http = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .expect("http= on the serving line")
        .to_string();
    tritonclient_http_check(&http, None, None).await;
    drop(child);
}

/// One HTTP/1.1 request to the cluster scheduler's HTTP port, over TLS.
async fn tls_call(
    cluster: &crate::cluster_support::TestCluster,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let stream = cluster.http_stream().await;
    send_over(
        stream,
        &cluster.http_addr,
        method,
        path,
        headers,
        Full::new(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kserve_http_on_the_scheduler_answers_for_the_cluster() {
    use crate::cluster_support::{TestCluster, TOKEN};
    let cluster =
        TestCluster::start(&["2GiB"], &[], herd_scheduler::config::PolicyArg::Spread).await;
    let http = cluster.http_addr.as_str();
    // The port still serves what it served before, over TLS as the gRPC port.
    assert_eq!(
        tls_call(&cluster, "GET", "/health", &[], Bytes::new())
            .await
            .status,
        200
    );
    assert_eq!(
        tls_call(&cluster, "GET", "/metrics", &[], Bytes::new())
            .await
            .status,
        200
    );

    // Refusals read as over the gateway's gRPC.
    let mut client = cluster.client().await;
    let mut unknown = usual_request();
    unknown.model_name = "no_such_model".into();
    let grpc = client
        .model_infer(unknown.clone())
        .await
        .expect_err("unknown model");
    let (head, binary) = http_of(&unknown);
    let (body, length) = framed(&head, &binary);
    let headers = [("inference-header-content-length", length.as_str())];
    let reply = tls_call(
        &cluster,
        "POST",
        "/v2/models/no_such_model/infer",
        &headers,
        body,
    )
    .await;
    assert_eq!(
        (reply.status, reply.error()),
        (404, grpc.message().to_string())
    );
    let grpc = client
        .repository_model_unload(RepositoryModelUnloadRequest {
            model_name: "tiny_multi".into(),
            ..Default::default()
        })
        .await
        .expect_err("no token");
    let reply = tls_call(
        &cluster,
        "POST",
        "/v2/repository/models/tiny_multi/unload",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        (reply.status, reply.error()),
        (401, grpc.message().to_string())
    );

    tritonclient_http_check(http, Some(TOKEN), Some(&cluster.ca_file())).await;
}
