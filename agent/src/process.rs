//! Model sessions in worker processes: the agent's side of `herd worker`. Loading a
//! model starts a worker; unloading ends it, and with it every byte the model used.

use std::ffi::OsString;
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use herd_proto::herd::{
    worker_command, worker_reply, WorkerCommand, WorkerLoad, WorkerReply, WorkerRun,
};

use crate::session::{Loader, Session};
use crate::wire::{read_frame, spec_from_wire, tensor_from_wire, tensor_to_wire, write_frame};
use herd_core::repository::ModelFiles;
use herd_core::tensor::{ModelSpec, Tensor};

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
    pub fn check(&self) -> Result<String, String> {
        Worker::start(&self.program).map(|(_, library)| library)
    }
}

impl Loader for ProcessLoader {
    fn load(&self, files: &ModelFiles) -> Result<(ModelSpec, Box<dyn Session>), String> {
        let (mut worker, _) = Worker::start(&self.program)?;
        let load = worker_command::Command::Load(WorkerLoad {
            path: files.path.display().to_string(),
            intra_op_threads: u32::try_from(files.settings.intra_op_threads).unwrap_or(u32::MAX),
        });
        match worker.call(load)? {
            worker_reply::Reply::Loaded(loaded) => {
                let spec = ModelSpec {
                    inputs: loaded
                        .inputs
                        .into_iter()
                        .map(spec_from_wire)
                        .collect::<Result<_, _>>()?,
                    outputs: loaded
                        .outputs
                        .into_iter()
                        .map(spec_from_wire)
                        .collect::<Result<_, _>>()?,
                };
                Ok((spec, Box::new(worker)))
            }
            worker_reply::Reply::Error(e) => Err(e),
            other => Err(worker.unexpected(&other)),
        }
    }
}

/// A running worker process. Dropping it kills the process and reaps it.
struct Worker {
    child: Child,
    input: BufWriter<ChildStdin>,
    output: BufReader<ChildStdout>,
    /// Why the worker can no longer serve, once it cannot.
    dead: Option<String>,
}

impl Worker {
    fn start(program: &WorkerProgram) -> Result<(Worker, String), String> {
        let mut child = Command::new(&program.program)
            .args(&program.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start a model worker ({}): {e}",
                    program.program.display()
                )
            })?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("model worker started without its pipes".into());
        };
        let mut worker = Worker {
            child,
            input: BufWriter::new(input),
            output: BufReader::new(output),
            dead: None,
        };
        match worker.receive()? {
            worker_reply::Reply::Hello(hello) => Ok((worker, hello.onnxruntime)),
            worker_reply::Reply::Error(e) => Err(e),
            other => Err(worker.unexpected(&other)),
        }
    }

    /// Sends one command and waits for its reply.
    fn call(&mut self, command: worker_command::Command) -> Result<worker_reply::Reply, String> {
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

    fn receive(&mut self) -> Result<worker_reply::Reply, String> {
        match read_frame::<WorkerReply>(&mut self.output) {
            Ok(Some(WorkerReply { reply: Some(r) })) => Ok(r),
            Ok(Some(WorkerReply { reply: None })) => {
                Err("the model worker sent an empty reply".into())
            }
            Ok(None) => Err(self.died(io::ErrorKind::UnexpectedEof.into())),
            Err(e) => Err(self.died(e)),
        }
    }

    /// Records that the worker is gone, and says how it ended.
    fn died(&mut self, error: io::Error) -> String {
        let _ = self.child.kill();
        let how = match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(_) => error.to_string(),
        };
        let why = format!("the model worker (pid {}) died: {how}", self.child.id());
        self.dead = Some(why.clone());
        why
    }

    fn unexpected(&mut self, reply: &worker_reply::Reply) -> String {
        let kind = match reply {
            worker_reply::Reply::Hello(_) => "hello",
            worker_reply::Reply::Loaded(_) => "loaded",
            worker_reply::Reply::Outputs(_) => "outputs",
            worker_reply::Reply::Error(_) => "error",
        };
        let why = format!("the model worker answered out of turn ({kind})");
        self.dead = Some(why.clone());
        why
    }
}

impl Session for Worker {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
        let run = worker_command::Command::Run(WorkerRun {
            inputs: inputs.into_iter().map(tensor_to_wire).collect(),
        });
        match self.call(run)? {
            worker_reply::Reply::Outputs(o) => {
                o.outputs.into_iter().map(tensor_from_wire).collect()
            }
            worker_reply::Reply::Error(e) => Err(e),
            other => Err(self.unexpected(&other)),
        }
    }

    fn is_alive(&mut self) -> bool {
        self.dead.is_none()
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
