//! What the runner needs from an inference engine: load a model file into a session,
//! then run batches on it. Synchronous on purpose: sessions live on their own threads.

use herd_core::repository::ModelFiles;
use herd_core::tensor::{ModelSpec, Tensor};

pub trait Session: Send + 'static {
    /// Runs one batch. `inputs` are in the order of the model's inputs; the outputs
    /// come back in the order of the model's outputs.
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String>;

    /// False once the session can never run again (its worker process died).
    fn is_alive(&mut self) -> bool {
        true
    }

    /// The process that holds the session's memory, when it is not this one.
    fn process_id(&self) -> Option<u32> {
        None
    }
}

pub trait Loader: Send + Sync + 'static {
    fn load(&self, files: &ModelFiles) -> Result<(ModelSpec, Box<dyn Session>), String>;
}
