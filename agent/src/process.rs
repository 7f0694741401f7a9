//! Model sessions in worker processes: the agent's side of `herd worker`. Loading a
//! model starts a worker; unloading ends it, and with it every byte the model used.

use std::ffi::OsString;
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

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
            // One reply answered one command: the pipe is still in step.
            WorkerError::EmptyReply | WorkerError::BadDataType(_) => {
                SessionError::Failed(e.to_string())
            }
            WorkerError::Start { .. } | WorkerError::NoPipes | WorkerError::OutOfTurn(_) => {
                SessionError::Broken(e.to_string())
            }
        }
    }
}

/// How to start a worker: a program and its arguments (`herd worker --ort-lib ...`).
#[derive(Clone, Debug)]
pub struct WorkerProgram {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl WorkerProgram {
    /// The `worker` subcommand of the herd executable at `herd`.
    pub fn herd(herd: PathBuf, ort_lib: Option<&Path>) -> WorkerProgram {
        let mut args: Vec<OsString> = vec!["worker".into()];
        if let Some(lib) = ort_lib {
            args.push("--ort-lib".into());
            args.push(lib.into());
        }
        WorkerProgram {
            program: herd,
            args,
        }
    }

    /// The `worker` subcommand of the running executable (which must be herd).
    pub fn current(ort_lib: Option<&Path>) -> io::Result<WorkerProgram> {
        Ok(WorkerProgram::herd(std::env::current_exe()?, ort_lib))
    }
}

/// Loads each model in a worker process of its own.
#[derive(Clone)]
pub struct ProcessLoader {
    program: WorkerProgram,
}

impl ProcessLoader {
    pub fn new(program: WorkerProgram) -> ProcessLoader {
        ProcessLoader { program }
    }

    /// Starts a worker to check that ONNX Runtime loads; returns the library it found.
    pub fn check(&self) -> Result<String, LoadError> {
        Worker::start(&self.program).map(|(_, library)| library)
    }
}

impl Loader for ProcessLoader {
    fn load(&self, files: &ModelFiles) -> Result<(ModelSpec, Box<dyn Session>), LoadError> {
        let (mut worker, _) = Worker::start(&self.program)?;
        let load = worker_command::Command::Load(WorkerLoad {
            path: files.path.display().to_string(),
            intra_op_threads: u32::try_from(files.settings.intra_op_threads).unwrap_or(u32::MAX),
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

/// A running worker process. Dropping it kills the process and reaps it.
struct Worker {
    child: Child,
    input: BufWriter<ChildStdin>,
    output: BufReader<ChildStdout>,
    /// Why the worker can no longer serve, once it cannot.
    dead: Option<WorkerError>,
}

impl Worker {
    fn start(program: &WorkerProgram) -> Result<(Worker, String), LoadError> {
        let mut child = Command::new(&program.program)
            .args(&program.args)
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
        let mut worker = Worker {
            child,
            input: BufWriter::new(input),
            output: BufReader::new(output),
            dead: None,
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
        let _ = self.child.kill();
        let how = match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(_) => error.to_string(),
        };
        let why = WorkerError::Died {
            pid: self.child.id(),
            how,
        };
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
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, SessionError> {
        let run = worker_command::Command::Run(WorkerRun {
            inputs: inputs.into_iter().map(tensor_to_wire).collect(),
        });
        match self.call(run)? {
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
        Some(self.child.id())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // The worker holds nothing worth a graceful exit; killing it frees its memory
        // at once even in the middle of a run.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
