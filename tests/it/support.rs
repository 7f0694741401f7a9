//! Shared test harness: real ONNX Runtime (in `herd worker` processes, as the agent
//! runs it), real gRPC on 127.0.0.1:0, the tiny models from tests/models copied into a
//! fresh repository, and gates that hold a model's load or run until the test opens
//! them, so that concurrency is arranged, not hoped for.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use herd_agent::OrtRuntime;
use herd_agent::{Agent, AgentOptions, ModelSettings};
use herd_agent::{LoadError, Loader, Session, SessionError};
use herd_agent::{ProcessLoader, WorkerProgram};
use herd_core::ModelFiles;
use herd_core::{ModelSpec, Tensor};
use herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use herd_proto::inference::model_infer_request::InferInputTensor;
use herd_proto::inference::ModelInferRequest;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// ONNX Runtime in this process, loaded once per test binary: the reference that
/// agent results are compared with.
pub fn ort() -> Arc<OrtRuntime> {
    static ORT: OnceLock<Arc<OrtRuntime>> = OnceLock::new();
    ORT.get_or_init(|| Arc::new(OrtRuntime::init(None).unwrap_or_else(|e| panic!("{e}"))))
        .clone()
}

/// A fresh model repository holding a copy of tests/models.
pub fn repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/models");
    copy_dir(&src, dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read tests/models") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

pub fn write(repo: &Path, relative: &str, contents: &[u8]) {
    let path = repo.join(relative);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, contents).expect("write");
}

/// A gate that threads wait at until the test opens it.
#[derive(Default)]
pub struct Gate {
    state: Mutex<(bool, usize)>,
    cv: Condvar,
}

impl Gate {
    pub fn wait(&self) {
        let mut s = self.state.lock().expect("gate");
        s.1 += 1;
        while !s.0 {
            s = self.cv.wait(s).expect("gate");
        }
        s.1 -= 1;
    }
    pub fn open(&self) {
        self.state.lock().expect("gate").0 = true;
        self.cv.notify_all();
    }
    pub fn waiting(&self) -> usize {
        self.state.lock().expect("gate").1
    }
}

/// The agent's real loader (a `herd worker` process per model), with optional gates on
/// one model's load and runs.
pub struct GatedLoader {
    pub inner: ProcessLoader,
    pub load_gate: Option<(String, Arc<Gate>)>,
    pub run_gate: Option<(String, Arc<Gate>)>,
}

/// How the agent under test starts model workers: this package's herd binary.
pub fn worker_program() -> WorkerProgram {
    WorkerProgram::herd(PathBuf::from(env!("CARGO_BIN_EXE_herd")), None)
}

impl GatedLoader {
    pub fn plain() -> GatedLoader {
        GatedLoader {
            inner: ProcessLoader::new(worker_program()),
            load_gate: None,
            run_gate: None,
        }
    }

    /// Loads of `model` wait at `gate`.
    pub fn load_gated(model: &str, gate: &Arc<Gate>) -> GatedLoader {
        GatedLoader {
            load_gate: Some((model.into(), gate.clone())),
            ..GatedLoader::plain()
        }
    }

    /// Runs of `model` wait at `gate`.
    pub fn run_gated(model: &str, gate: &Arc<Gate>) -> GatedLoader {
        GatedLoader {
            run_gate: Some((model.into(), gate.clone())),
            ..GatedLoader::plain()
        }
    }
}

/// Sends `request` from a task of its own, so that the test can arrange what happens
/// while it waits.
pub fn spawn_infer(
    client: &GrpcInferenceServiceClient<Channel>,
    request: ModelInferRequest,
) -> tokio::task::JoinHandle<
    Result<tonic::Response<herd_proto::inference::ModelInferResponse>, tonic::Status>,
> {
    let mut c = client.clone();
    tokio::spawn(async move { c.model_infer(request).await })
}

struct GatedSession {
    inner: Box<dyn Session>,
    gate: Arc<Gate>,
}

impl Session for GatedSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, SessionError> {
        self.gate.wait();
        self.inner.run(inputs)
    }

    fn process_id(&self) -> Option<u32> {
        self.inner.process_id()
    }
}

impl Loader for GatedLoader {
    fn load(&self, files: &ModelFiles) -> Result<(ModelSpec, Box<dyn Session>), LoadError> {
        if let Some((name, gate)) = &self.load_gate {
            if *name == files.name {
                gate.wait();
            }
        }
        let (spec, session) = self.inner.load(files)?;
        match &self.run_gate {
            Some((name, gate)) if *name == files.name => Ok((
                spec,
                Box::new(GatedSession {
                    inner: session,
                    gate: gate.clone(),
                }),
            )),
            _ => Ok((spec, session)),
        }
    }
}

pub fn options(repo: &Path) -> AgentOptions {
    AgentOptions {
        name: "test-agent".into(),
        model_repository: repo.to_path_buf(),
        model_defaults: ModelSettings::default(),
        memory_limit: None,
        max_message_size: 64 << 20,
        token: None,
        require_token_for_inference: false,
        data_dir: None,
        max_in_flight_bytes: None,
    }
}

/// An agent serving gRPC on a free loopback port; stops when dropped.
pub struct TestAgent {
    pub agent: Arc<Agent>,
    pub addr: String,
    stop: Option<oneshot::Sender<()>>,
}

impl TestAgent {
    pub async fn start(options: AgentOptions, loader: GatedLoader) -> TestAgent {
        TestAgent::start_with_tls(options, loader, None).await
    }

    /// As `start`, serving TLS with `tls` (a certificate from a cluster's CA).
    pub async fn start_with_tls(
        options: AgentOptions,
        loader: GatedLoader,
        tls: Option<herd_core::tls::Identity>,
    ) -> TestAgent {
        let agent = Agent::new(options, Arc::new(loader));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = agent.clone();
        tokio::spawn(async move {
            herd_agent::serve(served, listener, tls.as_ref(), async {
                let _ = stopped.await;
            })
            .await
        });
        TestAgent {
            agent,
            addr,
            stop: Some(stop),
        }
    }

    pub async fn client(&self) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect to test agent")
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn f32_bytes(values: &[f32]) -> Bytes {
    Bytes::from(
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
}

pub fn i64_bytes(values: &[i64]) -> Bytes {
    Bytes::from(
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
}

pub fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A tiny_mlp request: `rows` rows of 16 floats, row r filled from `seed + r`.
pub fn mlp_request(rows: usize, seed: f32) -> ModelInferRequest {
    let values: Vec<f32> = (0..rows * 16)
        .map(|i| ((i as f32) * 0.37 + seed).sin())
        .collect();
    raw_request(
        "tiny_mlp",
        "x",
        "FP32",
        &[rows as i64, 16],
        f32_bytes(&values),
    )
}

pub fn raw_request(
    model: &str,
    input: &str,
    datatype: &str,
    shape: &[i64],
    data: Bytes,
) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: input.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            ..Default::default()
        }],
        raw_input_contents: vec![data],
        ..Default::default()
    }
}

/// Polls `check` until it holds, failing the test after `within`.
pub async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until a blocking gate has `n` threads at it.
pub async fn gate_reached(gate: &Gate, n: usize) {
    eventually(
        &format!("{n} waiting at the gate"),
        Duration::from_secs(30),
        || gate.waiting() >= n,
    )
    .await
}

pub fn repo_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().to_path_buf()
}

/// Loads tiny_mlp on `agent` through a first request and returns its worker's pid.
pub async fn tiny_mlp_worker(
    agent: &TestAgent,
    client: &mut GrpcInferenceServiceClient<Channel>,
) -> u32 {
    client
        .model_infer(mlp_request(1, 0.0))
        .await
        .expect("first load");
    agent
        .agent
        .cache
        .load("tiny_mlp")
        .await
        .expect("loaded")
        .process_id
        .expect("a worker")
}

/// Sends `signal` ("-KILL", "-STOP") to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
    assert!(sent.expect("run kill").success(), "kill {signal} {pid}");
}
