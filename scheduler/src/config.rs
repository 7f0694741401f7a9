//! The scheduler's settings, from flags and HERD_* environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyArg {
    /// Put each replica on the node with the most free memory.
    Spread,
    /// Fill nodes one after another, leaving others free for big models.
    Binpack,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsArg {
    /// TLS unless every port listens on loopback only (nobody else can connect).
    Auto,
    /// TLS with certificates from the cluster CA.
    On,
    /// Plain text: only on a network where nobody else listens.
    Off,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SchedulerConfig {
    /// Address for gRPC: the KServe v2 / Triton inference service (the cluster as one
    /// Triton), herd.v1 Scheduler (agents join here) and Admin. Use 0.0.0.0:8001 so
    /// that other machines can join.
    #[arg(long, env = "HERD_LISTEN", default_value = "127.0.0.1:8001")]
    pub listen: SocketAddr,

    /// Address the other schedulers of the cluster (--store etcd://…) forward calls to
    /// while this one leads, HOST:PORT. Default: the --listen address, or, listening
    /// on every interface, this host's address on the route to etcd.
    #[arg(long, env = "HERD_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,

    /// Address for HTTP: /metrics (Prometheus), /health and KServe v2 HTTP/REST
    /// (Triton's /v2/... routes, under the same token rules as gRPC).
    #[arg(long, env = "HERD_HTTP", default_value = "127.0.0.1:8000")]
    pub http: SocketAddr,

    /// Model repository, in Triton's layout (DIR/<name>/<version>/model.onnx with
    /// optional DIR/<name>/herd.toml); agents fetch files from here by digest.
    /// Needed unless --immich-models gives the models.
    #[arg(
        long,
        env = "HERD_MODEL_REPOSITORY",
        required_unless_present = "immich_models"
    )]
    pub model_repository: Option<PathBuf>,

    /// Serve Immich's machine-learning API (GET /ping, POST /predict) on this address,
    /// so that an Immich server's IMMICH_MACHINE_LEARNING_URL can point at herd.
    /// Immich's own port is 3003 (0.0.0.0:3003 for another machine's Immich). Off
    /// unless given.
    #[arg(long, env = "HERD_IMMICH_LISTEN", value_name = "ADDR")]
    pub immich_listen: Option<SocketAddr>,

    /// An Immich model cache (DIR/<task>/<modelName>/<type>/model.onnx, as Immich's
    /// ML container keeps it in /cache): its models join the catalog as
    /// immich.<task>.<type>.<modelName>, placed, batched and unloaded like any other.
    #[arg(long, env = "HERD_IMMICH_MODELS", value_name = "DIR")]
    pub immich_models: Option<PathBuf>,

    /// The cluster token agents and admin tools must present. Default: the one kept in
    /// the data directory (DATA_DIR/token), generated on first start. A token on the
    /// command line shows in `ps`: prefer --token-file or HERD_TOKEN.
    #[arg(long, env = "HERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Read the cluster token from this file (surrounding whitespace ignored) instead
    /// of --token.
    #[arg(long, env = "HERD_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,

    /// TLS on the gRPC and HTTP ports, with a certificate from the cluster CA (made on
    /// the first start and kept in the store). Agents and tools trust it through the
    /// join token (DATA_DIR/join-token, which pins the CA) or --ca-cert DATA_DIR/ca.pem.
    /// auto: TLS as soon as a port listens beyond loopback (other machines can join).
    #[arg(long, env = "HERD_TLS", value_enum, default_value = "auto")]
    pub tls: TlsArg,

    /// Require the cluster token for inference calls too.
    #[arg(long, env = "HERD_REQUIRE_TOKEN_FOR_INFERENCE")]
    pub require_token_for_inference: bool,

    /// Where the scheduler keeps its token and state. Default: a per-user data
    /// directory (~/.local/share/herd/scheduler).
    #[arg(long, env = "HERD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Keep the state (catalog, placements) in etcd instead of the data directory:
    /// etcd://HOST:PORT[,HOST:PORT...][/PREFIX]. Keys start with /herd/, under /PREFIX
    /// when given (/PREFIX/herd/...), so that clusters can share an etcd. Plain HTTP, without TLS or auth.
    /// The token stays in the data directory.
    #[arg(long, env = "HERD_STORE", value_name = "URL")]
    pub store: Option<crate::store::EtcdUrl>,

    /// How often agents report.
    #[arg(long, env = "HERD_REPORT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub report_interval: Duration,

    /// Reports an agent may miss before it is marked down and its replicas re-placed.
    #[arg(long, env = "HERD_DOWN_AFTER", default_value_t = 3)]
    pub down_after: u32,

    /// Placement policy.
    #[arg(long, env = "HERD_POLICY", value_enum, default_value = "spread")]
    pub policy: PolicyArg,

    /// Memory kept free on every node, as a fraction of what it offers.
    #[arg(long, env = "HERD_HEADROOM", default_value_t = 0.05)]
    pub headroom: f64,

    /// How long a request waits for its model to load before failing.
    #[arg(long, env = "HERD_LOAD_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub load_timeout: Duration,

    /// How long a request waits for a node woken for it (Wake-on-LAN, agents'
    /// --wake-mac) to join, when no node up can hold its model. Inside Immich's 300 s.
    #[arg(long, env = "HERD_WAKE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub wake_timeout: Duration,

    /// In-flight requests per replica above which the model scales up.
    #[arg(long, env = "HERD_TARGET_ONGOING_REQUESTS", default_value_t = 2.0)]
    pub target_ongoing_requests: f64,

    /// How long load must stay above the target before a replica is added.
    #[arg(long, env = "HERD_UPSCALE_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub upscale_delay: Duration,

    /// How often the model repository is read again for new models, new versions,
    /// replaced files and edited herd.toml files (a file is hashed again only when its
    /// size or mtime changed); 0 turns it off.
    #[arg(long, env = "HERD_RESCAN_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub rescan_interval: Duration,

    /// Largest gRPC message the inference gateway accepts or sends (e.g. 64MiB); a
    /// larger one is refused with RESOURCE_EXHAUSTED before it is read. `herd up` gives
    /// its agent the same limit.
    #[arg(long, env = "HERD_MAX_MESSAGE_SIZE", default_value = "64MiB")]
    pub max_message_size: bytesize::ByteSize,

    /// Bytes of requests the scheduler holds at once (each from its arrival to its
    /// answer, while it waits for a replica); past it, RESOURCE_EXHAUSTED before the
    /// request is read. Never below --max-message-size.
    #[arg(long, env = "HERD_MAX_IN_FLIGHT_BYTES", default_value = "512MiB")]
    pub max_in_flight_bytes: bytesize::ByteSize,

    /// Settings of models whose herd.toml does not set them.
    #[command(flatten)]
    pub model_defaults: herd_core::flags::ModelDefaultFlags,
}

impl SchedulerConfig {
    /// The model repository; without one (an Immich cache alone) an empty path, where
    /// no model is found.
    pub fn repository_dir(&self) -> PathBuf {
        self.model_repository.clone().unwrap_or_default()
    }

    /// The token given by --token or --token-file; `None`: the one kept in the data
    /// directory.
    pub fn given_token(&self) -> Result<Option<String>, herd_core::auth::TokenFileError> {
        herd_core::auth::given_token(self.token.as_deref(), self.token_file.as_deref())
    }

    /// --max-message-size, in bytes.
    pub fn max_message_bytes(&self) -> usize {
        usize::try_from(self.max_message_size.as_u64()).unwrap_or(usize::MAX)
    }

    /// --max-in-flight-bytes, in bytes: at least one message of the largest size.
    pub fn max_in_flight_bytes(&self) -> usize {
        usize::try_from(self.max_in_flight_bytes.as_u64())
            .unwrap_or(usize::MAX)
            .max(self.max_message_bytes())
    }

    /// Whether the ports serve TLS: --tls, with auto on as soon as one listens beyond
    /// loopback.
    pub fn tls_on(&self) -> bool {
        match self.tls {
            TlsArg::On => true,
            TlsArg::Off => false,
            TlsArg::Auto => !(self.listen.ip().is_loopback() && self.http.ip().is_loopback()),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| herd_core::paths::default_data_dir().join("scheduler"))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        scheduler: SchedulerConfig,
    }

    #[test]
    fn the_token_comes_from_a_file_and_not_from_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").expect("write");
        let file = file.to_str().expect("utf-8 path");
        let parse = |args: &[&str]| {
            let args = ["herd-scheduler", "--model-repository", "m"]
                .into_iter()
                .chain(args.iter().copied());
            Cli::try_parse_from(args).map(|c| c.scheduler)
        };
        let config = parse(&["--token-file", file]).expect("valid flags");
        assert_eq!(config.given_token(), Ok(Some("s3cret".to_string())));
        let err = parse(&["--token-file", file, "--token", "t"]).expect_err("both refused");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let config = parse(&[]).expect("valid flags");
        assert_eq!(config.given_token(), Ok(None));
    }

    #[test]
    fn tls_comes_on_by_itself_once_a_port_listens_beyond_loopback() {
        let parse = |args: &[&str]| {
            let args = ["herd-scheduler", "--model-repository", "m"]
                .into_iter()
                .chain(args.iter().copied());
            Cli::try_parse_from(args).expect("valid flags").scheduler
        };
        assert!(!parse(&[]).tls_on(), "the defaults listen on loopback only");
        assert!(parse(&["--listen", "0.0.0.0:8001"]).tls_on());
        assert!(parse(&["--http", "192.168.1.5:8000"]).tls_on());
        assert!(parse(&["--tls", "on"]).tls_on());
        assert!(!parse(&["--listen", "0.0.0.0:8001", "--tls", "off"]).tls_on());
    }

    #[test]
    fn message_limits_default_to_the_agent_s_and_the_budget_holds_one_message() {
        let parse = |args: &[&str]| {
            let args = ["herd-scheduler", "--model-repository", "m"]
                .into_iter()
                .chain(args.iter().copied());
            Cli::try_parse_from(args).expect("valid flags").scheduler
        };
        let config = parse(&[]);
        assert_eq!(config.max_message_bytes(), 64 << 20);
        assert_eq!(config.max_in_flight_bytes(), 512 << 20);
        let config = parse(&[
            "--max-message-size",
            "1GiB",
            "--max-in-flight-bytes",
            "1MiB",
        ]);
        assert_eq!(config.max_message_bytes(), 1 << 30);
        assert_eq!(
            config.max_in_flight_bytes(),
            1 << 30,
            "raised to one message"
        );
    }
}
