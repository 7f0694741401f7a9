//! A scripted inference engine for unit tests: a `Loader` whose sessions compute in
//! memory (each output is its input with every FP32 value doubled), and which a test
//! can tell to fail a load, fail a run, refuse runs that hold a marked value (as ONNX
//! Runtime refuses an index out of range), die like a crashed worker, or hold a load or
//! a run at a gate until it opens. No ONNX Runtime, no processes.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use herd_core::repository::ModelFiles;
use herd_core::settings::ModelSettings;
use herd_core::tensor::{ModelSpec, Tensor, TensorSpec};
use herd_proto::DataType;
use tokio::sync::watch;

use crate::session::{LoadError, Loader, Session, SessionError};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where engine threads wait until the test opens it; the test can await arrivals.
pub(crate) struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    /// Threads that have reached the gate so far.
    arrivals: watch::Sender<usize>,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate {
            open: Mutex::new(false),
            opened: Condvar::new(),
            arrivals: watch::Sender::new(0),
        })
    }

    /// Blocks the calling thread until the gate is open.
    fn pass(&self) {
        self.arrivals.send_modify(|n| *n += 1);
        let mut open = lock(&self.open);
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn open(&self) {
        *lock(&self.open) = true;
        self.opened.notify_all();
    }

    /// Waits until `n` threads have reached the gate.
    pub async fn reached(&self, n: usize) {
        let mut arrivals = self.arrivals.subscribe();
        let _ = arrivals.wait_for(|&a| a >= n).await;
    }
}

/// What the engine will do next, and what it has done.
#[derive(Default)]
struct Script {
    failing_loads: usize,
    load_gate: Option<Arc<Gate>>,
    run_gate: Option<Arc<Gate>>,
    failing_run: Option<String>,
    /// Runs holding a negative FP32 value fail, naming it.
    refusing_negative: bool,
    dying_run: bool,
    loads: usize,
    /// Rows of each batch run, in order.
    batches: Vec<usize>,
    /// The first value of each run's first input, in run order.
    firsts: Vec<f32>,
}

/// A fake engine: hand it to a cache or build sessions with `session()`.
pub(crate) struct FakeLoader {
    spec: ModelSpec,
    script: Arc<Mutex<Script>>,
    /// Sessions alive: made and not yet dropped.
    live: Arc<watch::Sender<usize>>,
}

/// A batchable model: input `x` and output `y`, both FP32 `[-1, 4]`.
pub(crate) fn spec() -> ModelSpec {
    let t = |name: &str| TensorSpec {
        name: name.into(),
        dtype: DataType::Fp32,
        shape: vec![-1, 4],
    };
    ModelSpec {
        inputs: vec![t("x")],
        outputs: vec![t("y")],
    }
}

/// `rows` rows of `x` for `spec()`, every value `value`.
pub(crate) fn input(rows: usize, value: f32) -> Tensor {
    let data: Vec<u8> = std::iter::repeat_n(value.to_le_bytes(), rows * 4)
        .flatten()
        .collect();
    Tensor {
        dtype: DataType::Fp32,
        shape: vec![rows as i64, 4],
        data: Bytes::from(data),
    }
}

pub(crate) fn f32_values(t: &Tensor) -> Vec<f32> {
    t.data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Files for a model the fake loads; nothing is read from `path`.
pub(crate) fn files(name: &str, settings: ModelSettings) -> ModelFiles {
    ModelFiles {
        name: name.into(),
        version: 1,
        path: format!("/nonexistent/{name}.onnx").into(),
        file_bytes: 0,
        settings,
        policy: Default::default(),
        digest: None,
        gpu: None,
    }
}

impl FakeLoader {
    pub fn new() -> Arc<FakeLoader> {
        FakeLoader::with_spec(spec())
    }

    /// Loads answer `spec`; runs return their inputs as outputs (FP32 doubled).
    pub fn with_spec(spec: ModelSpec) -> Arc<FakeLoader> {
        Arc::new(FakeLoader {
            spec,
            script: Arc::default(),
            live: Arc::new(watch::Sender::new(0)),
        })
    }

    /// The next `n` loads fail.
    pub fn fail_loads(&self, n: usize) {
        lock(&self.script).failing_loads = n;
    }

    /// Loads from now on wait at the returned gate.
    pub fn gate_loads(&self) -> Arc<Gate> {
        let gate = Gate::new();
        lock(&self.script).load_gate = Some(gate.clone());
        gate
    }

    /// Runs from now on wait at the returned gate.
    pub fn gate_runs(&self) -> Arc<Gate> {
        let gate = Gate::new();
        lock(&self.script).run_gate = Some(gate.clone());
        gate
    }

    /// The next run fails with `reason`; its session stays usable.
    pub fn fail_next_run(&self, reason: &str) {
        lock(&self.script).failing_run = Some(reason.into());
    }

    /// Every run holding a negative value fails from now on, its error naming the first
    /// such value, as ONNX Runtime names the index it refused; the session stays usable.
    pub fn refuse_negative_values(&self) {
        lock(&self.script).refusing_negative = true;
    }

    /// The session of the next run dies in it, as a crashed worker does.
    pub fn die_on_next_run(&self) {
        lock(&self.script).dying_run = true;
    }

    /// Loads started so far.
    pub fn loads(&self) -> usize {
        lock(&self.script).loads
    }

    /// Rows of each batch run so far.
    pub fn batches(&self) -> Vec<usize> {
        lock(&self.script).batches.clone()
    }

    /// The first value of each run's first input, in run order: which request ran when.
    pub fn run_values(&self) -> Vec<f32> {
        lock(&self.script).firsts.clone()
    }

    /// Waits until exactly `n` sessions are alive (made and not dropped).
    pub async fn live_sessions(&self, n: usize) {
        let mut live = self.live.subscribe();
        let _ = live.wait_for(|&l| l == n).await;
    }

    /// A session as a successful load makes it.
    pub fn session(&self) -> Box<dyn Session> {
        self.live.send_modify(|n| *n += 1);
        Box::new(FakeSession {
            script: self.script.clone(),
            live: self.live.clone(),
            dead: false,
        })
    }
}

impl Loader for FakeLoader {
    fn load(&self, _files: &ModelFiles) -> Result<(ModelSpec, Box<dyn Session>), LoadError> {
        let gate = {
            let mut script = lock(&self.script);
            script.loads += 1;
            script.load_gate.clone()
        };
        if let Some(gate) = gate {
            gate.pass();
        }
        {
            let mut script = lock(&self.script);
            if script.failing_loads > 0 {
                script.failing_loads -= 1;
                return Err(LoadError::Engine(
                    "the fake engine refused the model".into(),
                ));
            }
        }
        Ok((self.spec.clone(), self.session()))
    }
}

struct FakeSession {
    script: Arc<Mutex<Script>>,
    live: Arc<watch::Sender<usize>>,
    dead: bool,
}

/// The pid a fake worker "had": this process's, so that it names no other process.
pub(crate) fn fake_pid() -> u32 {
    std::process::id()
}

impl Session for FakeSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, SessionError> {
        let died = || SessionError::WorkerDied {
            pid: fake_pid(),
            how: "killed by the test".into(),
        };
        if self.dead {
            return Err(died());
        }
        let gate = lock(&self.script).run_gate.clone();
        if let Some(gate) = gate {
            gate.pass();
        }
        let mut script = lock(&self.script);
        script
            .batches
            .push(inputs.first().map_or(0, |t| t.shape[0] as usize));
        if let Some(first) = inputs
            .first()
            .filter(|t| t.dtype == DataType::Fp32)
            .and_then(|t| f32_values(t).first().copied())
        {
            script.firsts.push(first);
        }
        if std::mem::take(&mut script.dying_run) {
            self.dead = true;
            return Err(died());
        }
        if let Some(reason) = script.failing_run.take() {
            return Err(SessionError::Failed(reason));
        }
        if script.refusing_negative {
            let negative = inputs
                .iter()
                .filter(|t| t.dtype == DataType::Fp32)
                .flat_map(f32_values)
                .find(|v| *v < 0.0);
            if let Some(v) = negative {
                return Err(SessionError::Failed(format!("value {v} is out of range")));
            }
        }
        Ok(inputs.into_iter().map(double).collect())
    }
}

fn double(t: Tensor) -> Tensor {
    if t.dtype != DataType::Fp32 {
        return t;
    }
    let data: Vec<u8> = f32_values(&t)
        .into_iter()
        .flat_map(|v| (v * 2.0).to_le_bytes())
        .collect();
    Tensor {
        data: Bytes::from(data),
        ..t
    }
}

impl Drop for FakeSession {
    fn drop(&mut self) {
        self.live.send_modify(|n| *n -= 1);
    }
}

/// Everything the crate logs at debug, from any thread, once a test asks for it: one
/// process-wide subscriber, because a thread's own would miss events whose call site
/// another test's thread registered first.
pub fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("herd_agent=debug")
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        logs
    })
    .clone()
}

/// What has been logged so far, as text.
pub fn logged(logs: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
