//! What requests may hold on an agent, over real gRPC and real ONNX Runtime: bytes of
//! input in flight (all models together), and the elements of one item along a model's
//! dynamic dimensions. Past a budget a request is refused at once with a status that
//! names it; the agent serves on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herd_agent::{Agent, AgentOptions, LoadError, Loader, ProcessLoader, Session, SessionError};
use herd_core::{ModelFiles, ModelSpec, Tensor};
use herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use herd_proto::inference::model_infer_request::InferInputTensor;
use herd_proto::inference::ModelInferRequest;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::Code;

use crate::support::*;

/// Where model runs wait while it is closed; unlike a `Gate`, it closes again.
#[derive(Default)]
pub struct Valve {
    state: Mutex<(bool, usize)>,
    cv: Condvar,
}

impl Valve {
    /// An open valve.
    pub fn open_now() -> Arc<Valve> {
        let valve = Arc::new(Valve::default());
        valve.open();
        valve
    }

    fn pass(&self) {
        let mut s = self.state.lock().expect("valve");
        s.1 += 1;
        while !s.0 {
            s = self.cv.wait(s).expect("valve");
        }
        s.1 -= 1;
    }

    pub fn open(&self) {
        self.state.lock().expect("valve").0 = true;
        self.cv.notify_all();
    }

    pub fn close(&self) {
        self.state.lock().expect("valve").0 = false;
    }

    pub fn waiting(&self) -> usize {
        self.state.lock().expect("valve").1
    }
}

/// The agent's real loader (a worker process per model) whose runs pass a valve and
/// then take `delay` more than the model does: a slow model, as far as the agent sees.
pub struct ValveLoader {
    inner: ProcessLoader,
    valve: Arc<Valve>,
    delay: Duration,
}

impl ValveLoader {
    pub fn new(valve: &Arc<Valve>, delay: Duration) -> ValveLoader {
        ValveLoader {
            inner: ProcessLoader::new(worker_program()),
            valve: valve.clone(),
            delay,
        }
    }
}

struct ValveSession {
    inner: Box<dyn Session>,
    valve: Arc<Valve>,
    delay: Duration,
}

impl Session for ValveSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, SessionError> {
        self.valve.pass();
        std::thread::sleep(self.delay);
        self.inner.run(inputs)
    }

    fn process_id(&self) -> Option<u32> {
        self.inner.process_id()
    }
}

impl Loader for ValveLoader {
    fn load(&self, files: &ModelFiles) -> Result<(ModelSpec, Box<dyn Session>), LoadError> {
        let (spec, session) = self.inner.load(files)?;
        Ok((
            spec,
            Box::new(ValveSession {
                inner: session,
                valve: self.valve.clone(),
                delay: self.delay,
            }),
        ))
    }
}

/// An agent on a free loopback port with `max_in_flight_bytes`; stops when dropped.
pub struct BudgetAgent {
    pub agent: Arc<Agent>,
    addr: String,
    _stop: oneshot::Sender<()>,
}

impl BudgetAgent {
    pub async fn start(
        mut options: AgentOptions,
        max_in_flight_bytes: Option<u64>,
        loader: impl Loader + 'static,
    ) -> BudgetAgent {
        options.max_in_flight_bytes = max_in_flight_bytes;
        let agent = Agent::new(options, Arc::new(loader));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(herd_agent::serve(agent.clone(), listener, None, async {
            let _ = stopped.await;
        }));
        BudgetAgent {
            agent,
            addr,
            _stop: stop,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub async fn client(&self) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect to test agent")
    }
}

/// A tiny_multi request: `rows` rows of a (FP32) and b (INT64), 48 bytes a row.
fn multi_request(rows: usize) -> ModelInferRequest {
    let input = |name: &str, datatype: &str| InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: vec![rows as i64, 4],
        ..Default::default()
    };
    ModelInferRequest {
        model_name: "tiny_multi".into(),
        inputs: vec![input("a", "FP32"), input("b", "INT64")],
        raw_input_contents: vec![
            Bytes::from(vec![0u8; rows * 16]),
            Bytes::from(vec![0u8; rows * 32]),
        ],
        ..Default::default()
    }
}

const KIB: u64 = 1 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_agents_bytes_in_flight_are_refused_and_the_agent_serves_on() {
    let repo = repository();
    // The models' own queues could take more than the agent: the agent's budget binds.
    for model in ["tiny_mlp", "tiny_multi"] {
        write(
            repo.path(),
            &format!("{model}/herd.toml"),
            b"max_batch_size = 32\nmax_queue_bytes = \"1MiB\"\n",
        );
    }
    let valve = Valve::open_now();
    let agent = BudgetAgent::start(
        options(repo.path()),
        Some(8 * KIB),
        ValveLoader::new(&valve, Duration::ZERO),
    )
    .await;
    let client = agent.client().await;
    let mut c = client.clone();
    c.model_infer(mlp_request(1, 0.0))
        .await
        .expect("tiny_mlp loads");
    c.model_infer(multi_request(1))
        .await
        .expect("tiny_multi loads");

    // One request of each model running (held at the valve): 2 KiB + 1.5 KiB.
    valve.close();
    let running = [
        spawn_infer(&client, mlp_request(32, 1.0)),
        spawn_infer(&client, multi_request(32)),
    ];
    eventually("both models to run", Duration::from_secs(30), || {
        valve.waiting() == 2
    })
    .await;
    // Ten more of 2 KiB: two fit in the 8 KiB, eight are refused at once.
    let burst: Vec<_> = (0..10)
        .map(|i| spawn_infer(&client, mlp_request(32, 2.0 + i as f32)))
        .collect();
    eventually("eight refusals", Duration::from_secs(30), || {
        burst.iter().filter(|t| t.is_finished()).count() >= 8
    })
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
        assert_eq!(
            status.message(),
            "model 'tiny_mlp': the agent holds 7.5 KiB of requests in flight; this one's \
             2.0 KiB would pass its limit of 8.0 KiB (--max-in-flight-bytes of the agent); \
             try again later"
        );
        refused += 1;
    }
    assert_eq!((refused, admitted.len()), (8, 2));
    assert_eq!(agent.agent.cache.budget().in_flight.held(), 7680);

    valve.open();
    for task in running.into_iter().chain(admitted) {
        task.await.expect("task").expect("admitted, answered");
    }
    assert_eq!(
        agent.agent.cache.budget().in_flight.held(),
        0,
        "answered requests hold nothing"
    );
    let response = c
        .model_infer(mlp_request(32, 9.0))
        .await
        .expect("the agent serves on");
    assert_eq!(response.get_ref().outputs[0].shape, vec![32, 8]);
}

/// The real PP-OCR text detector scripts/setup.sh fetched: input x [N,3,H,W], H and W
/// dynamic.
fn ocr_det() -> PathBuf {
    let cache = std::env::var_os("HERD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache"));
    cache.join("models/ocr_det/1/model.onnx")
}

fn image_request(side: i64) -> ModelInferRequest {
    let bytes = (3 * side * side * 4) as usize;
    raw_request(
        "ocr_det",
        "x",
        "FP32",
        &[1, 3, side, side],
        Bytes::from(vec![0u8; bytes]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_over_max_item_elements_is_refused_by_name_and_a_smaller_one_runs() {
    let repo = repository();
    let model = std::fs::read(ocr_det()).expect("ocr_det from scripts/setup.sh");
    write(repo.path(), "ocr_det/1/model.onnx", &model);
    write(
        repo.path(),
        "ocr_det/herd.toml",
        b"max_item_elements = 10000\n",
    );
    let agent = TestAgent::start(options(repo.path()), GatedLoader::plain()).await;
    let mut client = agent.client().await;
    let status = client
        .model_infer(image_request(128))
        .await
        .expect_err("128×128 is over 10000 elements");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "model 'ocr_det': input 'x' has shape [1,3,128,128]: 16384 elements per item along \
         its dynamic dimensions (128×128), over this model's limit of 10000; send smaller \
         items, or raise max_item_elements in the model's herd.toml"
    );
    let response = client
        .model_infer(image_request(96))
        .await
        .expect("96×96 is within the limit");
    assert_eq!(response.get_ref().outputs[0].shape, vec![1, 1, 96, 96]);
}
