//! `herd worker`: the process that holds one model's ONNX Runtime session. The agent
//! starts one per loaded model and ends it to unload, so that all the memory a model
//! used goes back to the operating system (unloading in-process left ~85 MB behind
//! after magika and the OCR models; see BENCHMARKS.md). A model that crashes ONNX
//! Runtime takes down its worker, not the agent.
//!
//! Commands arrive on stdin and replies leave on the original stdout; anything else
//! the process prints to stdout (ONNX Runtime's own messages) is sent to stderr so it
//! cannot corrupt the protocol.

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::os::fd::AsFd;
use std::panic::AssertUnwindSafe;
use std::path::Path;

use herd_proto::herd::{
    worker_command, worker_reply, WorkerCommand, WorkerHello, WorkerLoaded, WorkerOutputs,
    WorkerReply,
};

use herd_proto::datatype::UnknownDataType;

use crate::execution::Execution;
use crate::onnx::{OnnxSession, OrtError, OrtRuntime};
use crate::session::{Session, SessionError};
use crate::wire::{read_frame, spec_to_wire, tensor_from_wire, tensor_to_wire, write_frame};

/// Why the worker refuses a command; the agent hears it as text on the pipe.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Ort(#[from] OrtError),
    #[error(transparent)]
    Run(#[from] SessionError),
    #[error(transparent)]
    Wire(#[from] UnknownDataType),
    #[error("ONNX Runtime panicked: {0}")]
    Panicked(String),
    #[error("no model is loaded in this worker")]
    NoModel,
    #[error("empty command")]
    EmptyCommand,
}

/// Serves commands until the agent closes the pipe. Errors are I/O errors on the pipe.
pub fn serve(ort_lib: Option<&Path>) -> io::Result<()> {
    keep_freed_memory();
    let mut output = BufWriter::new(protocol_stdout()?);
    let mut input = BufReader::new(io::stdin().lock());
    let runtime = match guarded(|| OrtRuntime::init(ort_lib)) {
        Ok(runtime) => runtime,
        Err(error) => {
            let refused = worker_reply::Reply::Error(error.to_string());
            return write_frame(&mut output, &reply(refused));
        }
    };
    let hello = WorkerHello {
        onnxruntime: runtime.library.display().to_string(),
    };
    write_frame(&mut output, &reply(worker_reply::Reply::Hello(hello)))?;
    let mut session: Option<OnnxSession> = None;
    while let Some(command) = read_frame::<WorkerCommand>(&mut input)? {
        let answer = match command.command {
            Some(worker_command::Command::Load(load)) => {
                match guarded(|| {
                    runtime.open(
                        Path::new(&load.path),
                        execution(load.cuda_device),
                        load.intra_op_threads as usize,
                        !load.memory_arena_off,
                        !load.intra_op_spinning_off,
                    )
                }) {
                    Ok((spec, opened)) => {
                        session = Some(opened);
                        worker_reply::Reply::Loaded(WorkerLoaded {
                            inputs: spec.inputs.iter().map(spec_to_wire).collect(),
                            outputs: spec.outputs.iter().map(spec_to_wire).collect(),
                        })
                    }
                    Err(e) => worker_reply::Reply::Error(e.to_string()),
                }
            }
            Some(worker_command::Command::Run(run)) => match session.as_mut() {
                Some(s) => match run_batch(s, run.inputs) {
                    Ok(outputs) => worker_reply::Reply::Outputs(WorkerOutputs { outputs }),
                    Err(e) => worker_reply::Reply::Error(e.to_string()),
                },
                None => worker_reply::Reply::Error(Refusal::NoModel.to_string()),
            },
            None => worker_reply::Reply::Error(Refusal::EmptyCommand.to_string()),
        };
        write_frame(&mut output, &reply(answer))?;
    }
    Ok(())
}

/// Where a load runs: on its GPU, except on a node with fake GPUs (tests), where
/// every replica runs on the CPU.
fn execution(cuda_device: Option<u32>) -> Execution {
    if std::env::var_os(crate::probe::FAKE_GPUS_ENV).is_some() {
        return Execution::Cpu;
    }
    Execution::from_gpu(cuda_device)
}

fn run_batch(
    session: &mut OnnxSession,
    inputs: Vec<herd_proto::herd::WorkerTensor>,
) -> Result<Vec<herd_proto::herd::WorkerTensor>, Refusal> {
    let inputs = inputs
        .into_iter()
        .map(tensor_from_wire)
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = guarded(|| session.run(inputs).map_err(Refusal::from))?;
    Ok(outputs.into_iter().map(tensor_to_wire).collect())
}

fn reply(r: worker_reply::Reply) -> WorkerReply {
    WorkerReply { reply: Some(r) }
}

/// Runs `f`, turning a panic into an error so that the agent hears why.
fn guarded<T, E: Into<Refusal>>(f: impl FnOnce() -> Result<T, E>) -> Result<T, Refusal> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(Into::into),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(Refusal::Panicked(message))
        }
    }
}

/// Every run allocates its input and output tensors afresh. By default glibc maps each
/// large one on its own and unmaps it when freed, so every run faulted in every page of
/// its tensors again: about 10 ms of a 4.9 MB input's 20 ms through the worker. Kept in
/// the heap instead (up to 32 MiB a tensor, glibc's largest threshold), freed memory is
/// reused; the worker's memory all goes back when it exits, at unload.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; it is called before this
    // process allocates anything large, and a refused value leaves the default.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Takes the process's stdout for the protocol and points file descriptor 1 at
/// stderr, so that stray prints cannot mix into the frames.
#[allow(unsafe_code)]
fn protocol_stdout() -> io::Result<File> {
    let protocol = io::stdout().as_fd().try_clone_to_owned()?;
    // SAFETY: dup2 only renumbers descriptors this process owns (2 onto 1); Rust's
    // stdout handle keeps writing to descriptor 1, which now means stderr.
    if unsafe { libc::dup2(2, 1) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(File::from(protocol))
}
