//! What the runner needs from an inference engine: load a model file into a session,
//! then run batches on it. Synchronous on purpose: sessions live on their own threads.

use herd_core::repository::ModelFiles;
use herd_core::tensor::{ModelSpec, Tensor};

use crate::onnx::OrtError;
use crate::process::WorkerError;

/// Why a batch did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The engine failed this batch, in its own words; the session can run the next
    /// one. The words may quote the batch's data (ONNX Runtime names the index it
    /// refused), so the runner hands them only to a request that ran alone.
    #[error("{0}")]
    Failed(String),
    /// The engine answered in a way the agent cannot read (a worker's malformed
    /// reply): its fault, not the data's, and the words quote no data. The session can
    /// run the next batch.
    #[error("{0}")]
    BadReply(String),
    /// The process that held the session is gone: the session can never run again,
    /// and the model is loaded afresh on the next request.
    #[error("the model worker (pid {pid}) died: {how}")]
    WorkerDied { pid: u32, how: String },
    /// The session cannot be trusted with another batch (its worker broke the
    /// protocol); it ends like a dead one.
    #[error("{0}")]
    Broken(String),
}

impl SessionError {
    /// True when the session can never run again.
    pub fn ends_session(&self) -> bool {
        matches!(
            self,
            SessionError::WorkerDied { .. } | SessionError::Broken(_)
        )
    }
}

/// Why a model did not load.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The engine refused the model, in its own words (a worker sends them over its pipe).
    #[error("{0}")]
    Engine(String),
    /// ONNX Runtime in this process refused the model or could not start.
    #[error(transparent)]
    Ort(#[from] OrtError),
    /// The worker process could not be started, or failed while loading.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The loading thread ended without an answer (it panicked).
    #[error("the loader stopped: {0}")]
    Stopped(String),
}

pub trait Session: Send + 'static {
    /// Runs one batch. `inputs` are in the order of the model's inputs; the outputs
    /// come back in the order of the model's outputs. An error that
    /// [ends the session](SessionError::ends_session) means no later call can succeed.
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, SessionError>;

    /// The process that holds the session's memory, when it is not this one.
    fn process_id(&self) -> Option<u32> {
        None
    }
}

pub trait Loader: Send + Sync + 'static {
    fn load(&self, files: &ModelFiles) -> Result<(ModelSpec, Box<dyn Session>), LoadError>;

    /// Whether it can run models on a GPU (`ModelFiles::gpu`); if not, why.
    fn gpu_support(&self) -> Result<(), String> {
        Err("this engine runs models on the CPU only".into())
    }
}
