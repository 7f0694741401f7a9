//! Model sessions in worker processes: the agent's side of `herd worker`. Loading a
//! model starts a worker; unloading ends it, and with it every byte the model used.
//! A watchdog kills a worker whose run outlives its limit (a hung or stopped
//! process), so that its batch fails as a dead worker's instead of waiting forever.

use std::ffi::OsString;
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use herd_proto::herd::{
    worker_command, worker_reply, WorkerCommand, WorkerLoad, WorkerReply, WorkerRun,
};

use crate::session::{LoadError, Loader, Session, SessionError};
use crate::wire::{read_frame, spec_from_wire, tensor_from_wire, tensor_to_wire, write_frame};
use herd_core::repository::ModelFiles;
use herd_core::tensor::{ModelSpec, Tensor};
use herd_proto::datatype::UnknownDataType;

/// What goes wrong between the agent and a worker process.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot start a model worker ({}): {error}", .program.display())]
    Start { program: PathBuf, error: String },
    #[error("model worker started without its pipes")]
    NoPipes,
    #[error("the model worker (pid {pid}) died: {how}")]
    Died { pid: u32, how: String },
    #[error("the model worker sent an empty reply")]
    EmptyReply,
    #[error("the model worker answered out of turn ({0})")]
    OutOfTurn(&'static str),
    #[error("the model worker sent a tensor of unknown datatype {0:?}")]
    BadDataType(String),
    #[error("cannot start the model worker's watchdog: {0}")]
    Watchdog(String),
}

impl From<UnknownDataType> for WorkerError {
    fn from(e: UnknownDataType) -> WorkerError {
        WorkerError::BadDataType(e.0)
    }
}

impl From<WorkerError> for SessionError {
    fn from(e: WorkerError) -> SessionError {
        match e {
            WorkerError::Died { pid, how } => SessionError::WorkerDied { pid, how },
            // One reply answered one command: the pipe is still in step. The fault is
            // the worker's, not the data's.
            WorkerError::EmptyReply | WorkerError::BadDataType(_) => {
                SessionError::BadReply(e.to_string())
            }
            WorkerError::Start { .. }
            | WorkerError::NoPipes
            | WorkerError::OutOfTurn(_)
            | WorkerError::Watchdog(_) => SessionError::Broken(e.to_string()),
        }
    }
}

/// How to start a worker: a program and its arguments (`herd worker --ort-lib ...`).
#[derive(Clone, Debug)]
pub struct WorkerProgram {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Environment variables set for it (the CUDA libraries' search path).
    pub env: Vec<(OsString, OsString)>,
    /// The ONNX Runtime library it will load, when one is found.
    pub library: Option<PathBuf>,
}

impl WorkerProgram {
    /// The `worker` subcommand of the herd executable at `herd`. When the ONNX Runtime
    /// it will load has CUDA libraries set up beside it, they come first in its
    /// library search path.
    pub fn herd(herd: PathBuf, ort_lib: Option<&Path>) -> WorkerProgram {
        let mut args: Vec<OsString> = vec!["worker".into()];
        if let Some(lib) = ort_lib {
            args.push("--ort-lib".into());
            args.push(lib.into());
        }
        let library = crate::onnx::candidates(ort_lib)
            .into_iter()
            .find(|p| p.is_file());
        let env = library
            .as_deref()
            .and_then(crate::execution::cuda_library_dir)
            .map(|dir| {
                let existing = std::env::var_os("LD_LIBRARY_PATH");
                let path = crate::execution::library_path(&dir, existing.as_deref());
                vec![("LD_LIBRARY_PATH".into(), path)]
            })
            .unwrap_or_default();
        WorkerProgram {
            program: herd,
            args,
            env,
            library,
        }
    }

    /// The `worker` subcommand of the running executable (which must be herd).
    pub fn current(ort_lib: Option<&Path>) -> io::Result<WorkerProgram> {
        Ok(WorkerProgram::herd(std::env::current_exe()?, ort_lib))
    }
}

/// How long a run may take before its worker is taken for hung and killed:
/// `multiple` times the slowest run the worker has answered, never less than `floor`.
/// The slowest run rather than a percentile: a limit that only grows never kills a
/// run like one that has already been answered, and it is one number to keep. The
/// floor covers the first runs, which have nothing to go by and warm up slowly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Watchdog {
    pub floor: Duration,
    pub multiple: u32,
}

impl Default for Watchdog {
    /// Generous on purpose: a kill fails a whole batch and reloads the model, so only
    /// a worker that is surely stuck should meet it.
    fn default() -> Watchdog {
        Watchdog {
            floor: Duration::from_secs(30),
            multiple: 20,
        }
    }
}

impl Watchdog {
    /// The time the next run may take, given the slowest run answered so far.
    pub fn limit(&self, slowest: Option<Duration>) -> Duration {
        slowest.map_or(self.floor, |s| {
            s.saturating_mul(self.multiple).max(self.floor)
        })
    }
}

/// Loads each model in a worker process of its own.
#[derive(Clone)]
pub struct ProcessLoader {
    program: WorkerProgram,
    watchdog: Watchdog,
}

impl ProcessLoader {
    /// Runs are watched with the default limit: 20 × the slowest run, at least 30 s.
    pub fn new(program: WorkerProgram) -> ProcessLoader {
        ProcessLoader {
            program,
            watchdog: Watchdog::default(),
        }
    }

    /// Kills a worker whose run takes longer than `multiple` times its slowest
    /// answered run, and never sooner than `floor`.
    pub fn with_watchdog(mut self, floor: Duration, multiple: u32) -> ProcessLoader {
        self.watchdog = Watchdog { floor, multiple };
        self
    }

    /// Starts a worker to check that ONNX Runtime loads; returns the library it found.
    pub fn check(&self) -> Result<String, LoadError> {
        Worker::start(&self.program, self.watchdog).map(|(_, library)| library)
    }
}

impl Loader for ProcessLoader {
    fn gpu_support(&self) -> Result<(), String> {
        match &self.program.library {
            Some(library) => crate::execution::cuda_missing(library).map_or(Ok(()), Err),
            None => Err("no ONNX Runtime library found for the model workers".into()),
        }
    }

    fn load(&self, files: &ModelFiles) -> Result<(ModelSpec, Box<dyn Session>), LoadError> {
        let (mut worker, _) = Worker::start(&self.program, self.watchdog)?;
        let load = worker_command::Command::Load(WorkerLoad {
            path: files.path.display().to_string(),
            intra_op_threads: u32::try_from(files.settings.intra_op_threads).unwrap_or(u32::MAX),
            memory_arena_off: !files.settings.memory_arena,
            intra_op_spinning_off: !files.settings.intra_op_spinning,
            cuda_device: files.gpu,
        });
        match worker.call(load)? {
            worker_reply::Reply::Loaded(loaded) => {
                let specs = |list: Vec<herd_proto::herd::WorkerTensorSpec>| {
                    list.into_iter()
                        .map(spec_from_wire)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(WorkerError::from)
                };
                let spec = ModelSpec {
                    inputs: specs(loaded.inputs)?,
                    outputs: specs(loaded.outputs)?,
                };
                Ok((spec, Box::new(worker)))
            }
            worker_reply::Reply::Error(e) => Err(LoadError::Engine(e)),
            other => Err(worker.unexpected(&other).into()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running worker process. Dropping it kills the process and reaps it.
struct Worker {
    /// Shared with the watchdog, which may kill it; only this side waits for it.
    child: Arc<Mutex<Child>>,
    pid: u32,
    input: BufWriter<ChildStdin>,
    output: BufReader<ChildStdout>,
    /// Why the worker can no longer serve, once it cannot.
    dead: Option<WorkerError>,
    watch: Watch,
    watchdog: Watchdog,
    /// The slowest run answered so far.
    slowest: Option<Duration>,
}

impl Worker {
    fn start(program: &WorkerProgram, watchdog: Watchdog) -> Result<(Worker, String), LoadError> {
        let mut child = Command::new(&program.program)
            .args(&program.args)
            .envs(program.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| WorkerError::Start {
                program: program.program.clone(),
                error: e.to_string(),
            })?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(WorkerError::NoPipes.into());
        };
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        let killer = child.clone();
        let watch = match Watch::start(pid, move || {
            let _ = lock(&killer).kill();
        }) {
            Ok(watch) => watch,
            Err(e) => {
                let mut child = lock(&child);
                let _ = child.kill();
                let _ = child.wait();
                return Err(WorkerError::Watchdog(e.to_string()).into());
            }
        };
        let mut worker = Worker {
            child,
            pid,
            input: BufWriter::new(input),
            output: BufReader::new(output),
            dead: None,
            watch,
            watchdog,
            slowest: None,
        };
        match worker.receive()? {
            worker_reply::Reply::Hello(hello) => Ok((worker, hello.onnxruntime)),
            worker_reply::Reply::Error(e) => Err(LoadError::Engine(e)),
            other => Err(worker.unexpected(&other).into()),
        }
    }

    /// Sends one command and waits for its reply.
    fn call(
        &mut self,
        command: worker_command::Command,
    ) -> Result<worker_reply::Reply, WorkerError> {
        if let Some(why) = &self.dead {
            return Err(why.clone());
        }
        let message = WorkerCommand {
            command: Some(command),
        };
        if let Err(e) = write_frame(&mut self.input, &message) {
            return Err(self.died(e));
        }
        self.receive()
    }

    fn receive(&mut self) -> Result<worker_reply::Reply, WorkerError> {
        match read_frame::<WorkerReply>(&mut self.output) {
            Ok(Some(WorkerReply { reply: Some(r) })) => Ok(r),
            Ok(Some(WorkerReply { reply: None })) => Err(WorkerError::EmptyReply),
            Ok(None) => Err(self.died(io::ErrorKind::UnexpectedEof.into())),
            Err(e) => Err(self.died(e)),
        }
    }

    /// Records that the worker is gone, and says how it ended.
    fn died(&mut self, error: io::Error) -> WorkerError {
        let ended = {
            let mut child = lock(&self.child);
            let _ = child.kill();
            child.wait()
        };
        let how = match (self.watch.fired(), ended) {
            (Some(limit), _) => format!(
                "it gave no answer within {}, so the agent killed it",
                humantime::format_duration(limit)
            ),
            (None, Ok(status)) => status.to_string(),
            (None, Err(_)) => error.to_string(),
        };
        let why = WorkerError::Died { pid: self.pid, how };
        self.dead = Some(why.clone());
        why
    }

    fn unexpected(&mut self, reply: &worker_reply::Reply) -> WorkerError {
        let kind = match reply {
            worker_reply::Reply::Hello(_) => "hello",
            worker_reply::Reply::Loaded(_) => "loaded",
            worker_reply::Reply::Outputs(_) => "outputs",
            worker_reply::Reply::Error(_) => "error",
        };
        let why = WorkerError::OutOfTurn(kind);
        self.dead = Some(why.clone());
        why
    }
}

impl Session for Worker {
    /// A tensor's bytes on their way through a run, counted per request (issue 13):
    ///
    /// in, 4 copies (5 when batched): tonic gathers the HTTP/2 frames into one buffer
    /// (1; the request's `raw_input_contents` are slices of it); requests batched
    /// together are stacked (`batch::concat`, 1; none for a request running alone);
    /// `write_frame` encodes only the frame's heads and writes the bytes from where
    /// they are (a vectored write); the pipe (2: into the kernel, and out of it into
    /// the frame the worker decodes without a copy); the worker copies them into the
    /// `Vec` ONNX Runtime takes over (`decode_vec`, 1: a memcpy).
    ///
    /// out, 4 copies: the worker encodes ONNX Runtime's buffer (`encode_slice`, 1); the
    /// pipe (2; a vectored write again); the agent decodes and splits the frame per
    /// request without a copy (`batch::split` slices it); tonic encodes the response
    /// (1). Avoidable still: the pipe (shared memory between agent and worker would
    /// spare two copies each way).
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, SessionError> {
        let run = worker_command::Command::Run(WorkerRun {
            inputs: inputs.into_iter().map(tensor_to_wire).collect(),
        });
        self.watch.arm(self.watchdog.limit(self.slowest));
        let started = std::time::Instant::now();
        let reply = self.call(run);
        self.watch.disarm();
        if reply.is_ok() {
            let took = started.elapsed();
            self.slowest = Some(self.slowest.map_or(took, |s| s.max(took)));
        }
        match reply? {
            worker_reply::Reply::Outputs(o) => o
                .outputs
                .into_iter()
                .map(|t| tensor_from_wire(t).map_err(|e| WorkerError::from(e).into()))
                .collect(),
            worker_reply::Reply::Error(e) => Err(SessionError::Failed(e)),
            other => Err(self.unexpected(&other).into()),
        }
    }

    fn process_id(&self) -> Option<u32> {
        Some(self.pid)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // The worker holds nothing worth a graceful exit; killing it frees its memory
        // at once even in the middle of a run.
        let mut child = lock(&self.child);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A thread that calls `kill` when an armed run outlives its limit. Armed around each
/// run; std time, as the run itself blocks a plain thread.
struct Watch {
    shared: Arc<Watched>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Watched {
    state: Mutex<WatchState>,
    changed: Condvar,
}

#[derive(Default)]
struct WatchState {
    /// When the run now armed must have been answered, and its limit.
    deadline: Option<(std::time::Instant, Duration)>,
    /// The limit of the run it killed, once it has.
    fired: Option<Duration>,
    closed: bool,
}

impl Watch {
    fn start(pid: u32, mut kill: impl FnMut() + Send + 'static) -> io::Result<Watch> {
        let shared = Arc::new(Watched::default());
        let watched = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("herd-watch-{pid}"))
            .spawn(move || {
                let mut state = lock(&watched.state);
                while !state.closed {
                    let Some((at, limit)) = state.deadline else {
                        state = watched
                            .changed
                            .wait(state)
                            .unwrap_or_else(|p| p.into_inner());
                        continue;
                    };
                    let now = std::time::Instant::now();
                    if now < at {
                        state = watched
                            .changed
                            .wait_timeout(state, at - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                        continue;
                    }
                    // Recorded before the kill, so that whoever sees the worker die
                    // can say why.
                    state.deadline = None;
                    state.fired = Some(limit);
                    drop(state);
                    kill();
                    state = lock(&watched.state);
                }
            })?;
        Ok(Watch {
            shared,
            thread: Some(thread),
        })
    }

    fn arm(&self, limit: Duration) {
        // A limit past the end of the clock never fires.
        let deadline = std::time::Instant::now()
            .checked_add(limit)
            .map(|at| (at, limit));
        lock(&self.shared.state).deadline = deadline;
        self.shared.changed.notify_all();
    }

    fn disarm(&self) {
        lock(&self.shared.state).deadline = None;
        self.shared.changed.notify_all();
    }

    /// The limit of the run it killed, once it has.
    fn fired(&self) -> Option<Duration> {
        lock(&self.shared.state).fired
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_a_multiple_of_the_slowest_run_and_never_under_the_floor() {
        let watchdog = Watchdog::default();
        assert_eq!(
            watchdog.limit(None),
            Duration::from_secs(30),
            "nothing to go by"
        );
        assert_eq!(
            watchdog.limit(Some(Duration::from_millis(5))),
            Duration::from_secs(30)
        );
        assert_eq!(
            watchdog.limit(Some(Duration::from_secs(2))),
            Duration::from_secs(40)
        );
        assert_eq!(
            watchdog.limit(Some(Duration::MAX)),
            Duration::MAX,
            "no overflow"
        );
    }

    #[test]
    fn a_run_past_its_limit_is_killed_and_the_limit_named() {
        let (killed, kills) = std::sync::mpsc::channel();
        let watch = Watch::start(0, move || {
            let _ = killed.send(());
        })
        .expect("watch thread");
        assert_eq!(watch.fired(), None);
        watch.arm(Duration::from_millis(1));
        kills.recv().expect("the watch kills the late run");
        assert_eq!(watch.fired(), Some(Duration::from_millis(1)));
        drop(watch);
        assert!(kills.try_recv().is_err(), "killed once");
    }

    #[test]
    fn a_run_answered_in_time_is_never_killed() {
        let (killed, kills) = std::sync::mpsc::channel();
        let watch = Watch::start(0, move || {
            let _ = killed.send(());
        })
        .expect("watch thread");
        for limit in [Duration::from_secs(3600), Duration::MAX] {
            watch.arm(limit);
            watch.disarm();
        }
        drop(watch);
        assert!(kills.recv().is_err(), "the watch ended without killing");
    }
}
