//! The agent's settings, from flags and HERD_* environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use herd_core::settings::{ModelSettings, Ttl};

#[derive(clap::Args, Debug, Clone)]
pub struct AgentConfig {
    /// Address for gRPC: the KServe v2 / Triton inference service and herd.v1.
    /// Use 0.0.0.0:8001 to serve other machines.
    #[arg(long, env = "HERD_LISTEN", default_value = "127.0.0.1:8001")]
    pub listen: SocketAddr,

    /// Model repository, in Triton's layout: DIR/<name>/<version>/model.onnx, with
    /// optional per-model settings in DIR/<name>/herd.toml. Needed without --scheduler;
    /// with one, models come from the scheduler (this directory is then only a local
    /// source of files, so they need not be fetched).
    #[arg(
        long,
        env = "HERD_MODEL_REPOSITORY",
        required_unless_present = "scheduler"
    )]
    pub model_repository: Option<PathBuf>,

    /// Join the cluster of the scheduler at HOST:PORT. Without it the agent serves
    /// its repository alone.
    #[arg(long, env = "HERD_SCHEDULER")]
    pub scheduler: Option<String>,

    /// The cluster token (printed by the scheduler on first start, kept in its data
    /// directory). With --scheduler, it is required to join; the agent also requires it
    /// of calls to its herd.v1 service.
    #[arg(long, env = "HERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Address the scheduler uses to reach this agent (HOST:PORT). Default: --listen,
    /// or when that is 0.0.0.0, this machine's address toward the scheduler.
    #[arg(long, env = "HERD_ADVERTISE")]
    pub advertise: Option<String>,

    /// Where the agent keeps model files fetched from the scheduler. Several agents on
    /// one machine need different directories (and --name).
    #[arg(long, env = "HERD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Require the cluster token for inference too, not only for herd.v1 calls.
    #[arg(long, env = "HERD_REQUIRE_TOKEN_FOR_INFERENCE")]
    pub require_token_for_inference: bool,

    /// Path of libonnxruntime.so (ONNX Runtime 1.31). Default: the project's
    /// .cache/onnxruntime (filled by scripts/setup.sh), then the system library path.
    #[arg(long, env = "HERD_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,

    /// This node's name. Default: the host name.
    #[arg(long, env = "HERD_NAME")]
    pub name: Option<String>,

    /// Memory this agent offers, when less than the host has (e.g. 4GiB, 512MB).
    #[arg(long, env = "HERD_MEMORY_LIMIT")]
    pub memory_limit: Option<bytesize::ByteSize>,

    /// Idle time after which a model is unloaded: a duration ("300s", "5m"),
    /// 0 to unload right after use, or -1 / "never". herd.toml `ttl` overrides it.
    #[arg(long, env = "HERD_TTL", default_value = "300s", value_parser = Ttl::parse, allow_hyphen_values = true)]
    pub ttl: Ttl,

    /// Most items in one model run. herd.toml `max_batch_size` overrides it.
    #[arg(long, env = "HERD_MAX_BATCH_SIZE", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_size: u32,

    /// How long a partial batch may wait for more requests ("2ms"); 0 runs at once.
    #[arg(long, env = "HERD_MAX_BATCH_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub max_batch_delay: Duration,

    /// Requests a model may have queued or running; beyond it, RESOURCE_EXHAUSTED.
    #[arg(long, env = "HERD_QUEUE_CAPACITY", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_capacity: u32,

    /// ONNX Runtime intra-op threads per model; 0 lets ONNX Runtime choose.
    #[arg(long, env = "HERD_INTRA_OP_THREADS", default_value_t = 0)]
    pub intra_op_threads: usize,

    /// Largest gRPC message accepted or sent (e.g. 64MiB).
    #[arg(long, env = "HERD_MAX_MESSAGE_SIZE", default_value = "64MiB")]
    pub max_message_size: bytesize::ByteSize,
}

impl AgentConfig {
    pub fn model_defaults(&self) -> ModelSettings {
        ModelSettings {
            max_batch_size: self.max_batch_size as usize,
            max_batch_delay: self.max_batch_delay,
            ttl: self.ttl,
            intra_op_threads: self.intra_op_threads,
            queue_capacity: self.queue_capacity as usize,
        }
    }
}
