//! The agent's settings, from flags and HERD_* environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use herd_core::auth::TokenFileError;
use herd_core::flags::ModelDefaultFlags;
use herd_core::settings::ModelSettings;

#[derive(clap::Args, Debug, Clone)]
pub struct AgentConfig {
    /// Address for gRPC: the KServe v2 / Triton inference service and herd.v1.
    /// Use 0.0.0.0:8001 to serve other machines.
    #[arg(long, env = "HERD_LISTEN", default_value = "127.0.0.1:8001")]
    pub listen: SocketAddr,

    /// Address for KServe v2 HTTP/REST, Triton's HTTP protocol (/v2/health/ready,
    /// /v2/models/NAME/infer, ...), e.g. 127.0.0.1:8000. Off unless given; the same
    /// token rules and --max-message-size as gRPC.
    #[arg(long, env = "HERD_HTTP")]
    pub http: Option<SocketAddr>,

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

    /// Join the cluster of the scheduler at HOST:PORT; several schedulers of one
    /// cluster (sharing an etcd) as a list, A,B,C: the agent reports to each of them,
    /// so every one sees it live and any one can take over. Without it the agent serves
    /// its repository alone.
    #[arg(long, env = "HERD_SCHEDULER")]
    pub scheduler: Option<String>,

    /// The cluster token: the join token (herd1.…, the scheduler's DATA_DIR/join-token,
    /// which also pins its CA) when the scheduler serves TLS, else DATA_DIR/token. With
    /// --scheduler, it is required to join; the agent also requires it of calls to its
    /// herd.v1 service and of repository load and unload calls. A token on the command
    /// line shows in `ps`: prefer --token-file or HERD_TOKEN.
    #[arg(long, env = "HERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Read the cluster token from this file (surrounding whitespace ignored) instead
    /// of --token, e.g. a copy of the scheduler's DATA_DIR/token.
    #[arg(long, env = "HERD_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,

    /// The cluster CA's certificate (the scheduler's DATA_DIR/ca.pem), to verify the
    /// scheduler over TLS. Not needed with a join token (herd1.…), which pins the CA.
    #[arg(long, env = "HERD_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// This machine's network card (aa:bb:cc:dd:ee:ff), for Wake-on-LAN: the scheduler
    /// keeps it and, when a request needs a model only this node can serve while it is
    /// down (asleep), sends the magic packet and holds the request until it joins
    /// (scheduler --wake-timeout). `herd nodes wake NAME` wakes it by hand.
    #[arg(long, env = "HERD_WAKE_MAC", value_parser = parse_mac)]
    pub wake_mac: Option<herd_core::wake::Mac>,

    /// Where the scheduler sends the magic packet (UDP HOST:PORT): the broadcast
    /// address of this machine's network as seen from the scheduler's.
    #[arg(long, env = "HERD_WAKE_ADDRESS", default_value = herd_core::wake::DEFAULT_ADDRESS, requires = "wake_mac")]
    pub wake_address: String,

    /// Put the machine to sleep once no request has been on this node for this long
    /// ("30m"): the agent tells the scheduler (an event), then runs --sleep-command.
    #[arg(long, env = "HERD_SLEEP_AFTER", value_parser = humantime::parse_duration, requires = "sleep_command")]
    pub sleep_after: Option<std::time::Duration>,

    /// What --sleep-after runs, through `sh -c` ("systemctl suspend"); the idle clock
    /// starts again when it returns.
    #[arg(long, env = "HERD_SLEEP_COMMAND", requires = "sleep_after")]
    pub sleep_command: Option<String>,

    /// Address the scheduler uses to reach this agent (HOST:PORT); the scheduler calls
    /// it back at join and refuses a wrong one. Default: --listen, or when that is
    /// 0.0.0.0, this machine's address on the route to the scheduler (worked out again
    /// on each join attempt, so a network that comes up late is picked up).
    #[arg(long, env = "HERD_ADVERTISE")]
    pub advertise: Option<String>,

    /// Where the agent keeps model files fetched from the scheduler. Several agents on
    /// one machine need different directories (and --name).
    #[arg(long, env = "HERD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Require the cluster token for inference too, not only for herd.v1 calls. With
    /// --scheduler, it is also required once the scheduler says it requires it.
    #[arg(long, env = "HERD_REQUIRE_TOKEN_FOR_INFERENCE")]
    pub require_token_for_inference: bool,

    #[command(flatten)]
    pub node: NodeFlags,

    /// Per-model defaults; not with --scheduler (the scheduler sends each model's
    /// settings).
    #[command(flatten)]
    pub model_defaults: ModelDefaultFlags,

    /// Largest gRPC message accepted or sent (e.g. 64MiB).
    #[arg(long, env = "HERD_MAX_MESSAGE_SIZE", default_value = "64MiB")]
    pub max_message_size: bytesize::ByteSize,

    /// Bytes of request inputs the agent holds at once, queued or running, all models
    /// together (e.g. 512MiB); past it, RESOURCE_EXHAUSTED at once. Default: a quarter
    /// of the memory the node offers (--memory-limit, else the host's). Each model's
    /// queue may hold half of it unless its herd.toml `max_queue_bytes` says otherwise.
    #[arg(long, env = "HERD_MAX_IN_FLIGHT_BYTES")]
    pub max_in_flight_bytes: Option<bytesize::ByteSize>,
}

/// What a node running models is, shared by `herd agent` and `herd up`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NodeFlags {
    /// Path of libonnxruntime.so (ONNX Runtime 1.31). Default: the project's
    /// .cache/onnxruntime (filled by scripts/setup.sh), then the system library path.
    #[arg(long, env = "HERD_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,

    /// This node's name. Default: the host name.
    #[arg(long, env = "HERD_NAME")]
    pub name: Option<String>,

    /// Memory this node offers, when less than the host has (e.g. 4GiB, 512MB).
    #[arg(long, env = "HERD_MEMORY_LIMIT")]
    pub memory_limit: Option<bytesize::ByteSize>,
}

/// Settings that cannot work together.
fn parse_mac(s: &str) -> Result<herd_core::wake::Mac, String> {
    s.parse()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{} set per-model defaults, which an agent in a cluster does not use: with --scheduler, \
         the scheduler's model repository (herd.toml) sets them. Remove {} or drop --scheduler",
        .flags.join(", "),
        if .flags.len() == 1 { "it" } else { "them" }
    )]
    DefaultsInCluster {
        /// Each flag given, with its environment variable: "--ttl (HERD_TTL)".
        flags: Vec<String>,
    },
    #[error(transparent)]
    TokenFile(#[from] TokenFileError),
    #[error(transparent)]
    Tls(#[from] herd_core::tls::TlsError),
}

impl AgentConfig {
    /// The settings of a model without a herd.toml of its own: the flags given,
    /// else herd's defaults.
    pub fn model_defaults(&self) -> ModelSettings {
        self.model_defaults.settings()
    }

    /// Refuses settings that would be silently ignored: in a cluster the scheduler
    /// sends each model's settings, so per-model default flags have no effect there.
    /// The schedulers of --scheduler, a comma-separated list; empty without one.
    pub fn schedulers(&self) -> Vec<String> {
        self.scheduler
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        let flags = self.model_defaults.given();
        if self.scheduler.is_some() && !flags.is_empty() {
            return Err(ConfigError::DefaultsInCluster {
                flags: flags.into_iter().map(String::from).collect(),
            });
        }
        Ok(())
    }

    /// This config with the token of --token-file read into `token`, so that what
    /// follows needs only `token`.
    pub fn with_token_from_file(mut self) -> Result<AgentConfig, ConfigError> {
        self.token =
            herd_core::auth::given_token(self.token.as_deref(), self.token_file.as_deref())?;
        self.token_file = None;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;
    use herd_core::Ttl;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentConfig,
    }

    fn parse(args: &[&str]) -> AgentConfig {
        let args = std::iter::once("herd-agent").chain(args.iter().copied());
        Cli::try_parse_from(args).expect("valid flags").agent
    }

    #[test]
    fn several_schedulers_come_as_a_list() {
        assert!(parse(&["--model-repository", "m"]).schedulers().is_empty());
        assert_eq!(
            parse(&["--scheduler", "a:1, b:2,,"]).schedulers(),
            vec!["a:1".to_string(), "b:2".to_string()]
        );
    }

    #[test]
    fn wake_on_lan_takes_a_mac_and_an_address_only_with_it() {
        let config = parse(&["--scheduler", "s:8001", "--wake-mac", "AA-BB-CC-DD-EE-FF"]);
        assert_eq!(
            config.wake_mac.map(|m| m.to_string()).as_deref(),
            Some("aa:bb:cc:dd:ee:ff")
        );
        assert_eq!(config.wake_address, herd_core::wake::DEFAULT_ADDRESS);
        assert!(
            parse(&["--scheduler", "s:8001"]).wake_mac.is_none(),
            "off unless given"
        );
        let args = [
            "herd-agent",
            "--scheduler",
            "s:8001",
            "--wake-address",
            "10.0.0.255:9",
        ];
        let err = Cli::try_parse_from(args).err().expect("needs --wake-mac");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(err.to_string().contains("--wake-mac"), "{err}");
        // --sleep-after and --sleep-command come together.
        let args = [
            "herd-agent",
            "--scheduler",
            "s:8001",
            "--sleep-after",
            "30m",
        ];
        let err = Cli::try_parse_from(args)
            .err()
            .expect("needs --sleep-command");
        assert!(err.to_string().contains("--sleep-command"), "{err}");
        let args = [
            "herd-agent",
            "--scheduler",
            "s:8001",
            "--sleep-after",
            "soon",
        ];
        let err = Cli::try_parse_from(args).err().expect("not a duration");
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn per_model_defaults_with_a_scheduler_are_refused_by_name() {
        let config = parse(&[
            "--scheduler",
            "s:8001",
            "--ttl",
            "5s",
            "--queue-capacity",
            "8",
        ]);
        let err = config.check().expect_err("ignored flags are refused");
        let message = err.to_string();
        for want in [
            "--ttl (HERD_TTL), --queue-capacity (HERD_QUEUE_CAPACITY)",
            "the scheduler's model repository (herd.toml) sets them",
        ] {
            assert!(
                message.contains(want),
                "{message:?} should contain {want:?}"
            );
        }
        assert!(!message.contains("--max-batch-size"), "{message}");
    }

    #[test]
    fn per_model_defaults_alone_and_a_bare_scheduler_are_accepted() {
        let alone = parse(&[
            "--model-repository",
            "m",
            "--ttl",
            "5s",
            "--max-batch-size",
            "4",
        ]);
        alone.check().expect("an agent alone uses its flags");
        let d = alone.model_defaults();
        assert_eq!(d.ttl, Ttl::After(Duration::from_secs(5)));
        assert_eq!(d.max_batch_size, 4);
        assert_eq!(d.queue_capacity, ModelSettings::default().queue_capacity);
        let joined = parse(&["--scheduler", "s:8001"]);
        joined.check().expect("no per-model flags");
        assert_eq!(joined.model_defaults(), ModelSettings::default());
    }

    #[test]
    fn the_token_comes_from_a_file_and_not_from_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").expect("write");
        let file = file.to_str().expect("utf-8 path");
        let config = parse(&["--scheduler", "s:8001", "--token-file", file])
            .with_token_from_file()
            .expect("a readable file");
        assert_eq!(config.token.as_deref(), Some("s3cret"));
        let args = [
            "herd-agent",
            "--scheduler",
            "s:8001",
            "--token-file",
            file,
            "--token",
            "t",
        ];
        let err = Cli::try_parse_from(args).err().expect("both refused");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let missing = parse(&[
            "--scheduler",
            "s:8001",
            "--token-file",
            "/nonexistent/token",
        ]);
        let err = missing.with_token_from_file().expect_err("no such file");
        assert!(matches!(err, ConfigError::TokenFile(_)), "{err}");
    }
}
