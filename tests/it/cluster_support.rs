//! A cluster for tests: the scheduler in this process (so tests can look at its
//! state), agents as real `herd agent` child processes (so they can be killed for
//! real), all on loopback ports chosen by the kernel.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use herd_scheduler::model::ReplicaState;
use herd_scheduler::{Scheduler, SchedulerConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::support::*;

pub const HERD: &str = env!("CARGO_BIN_EXE_herd");
pub const TOKEN: &str = "test-token";

/// The `herd` executable with `args`, as a test runs it: no colours, no token from the
/// environment the tests run in, its log piped to the test, killed when dropped.
pub fn herd(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(HERD);
    command
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("HERD_TOKEN")
        .env_remove("HERD_TOKEN_FILE")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

pub struct TestCluster {
    pub scheduler: Arc<Scheduler>,
    pub addr: String,
    pub http_addr: String,
    pub agents: Vec<AgentProcess>,
    pub repo: tempfile::TempDir,
    pub data: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<Result<(), herd_scheduler::StartError>>>,
    policy: herd_scheduler::config::PolicyArg,
}

pub struct AgentProcess {
    pub name: String,
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
}

pub fn scheduler_config(
    repo: &Path,
    data: &Path,
    policy: herd_scheduler::config::PolicyArg,
) -> SchedulerConfig {
    SchedulerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        http: "127.0.0.1:0".parse().expect("addr"),
        model_repository: Some(repo.to_path_buf()),
        immich_listen: None,
        immich_models: None,
        token: Some(TOKEN.into()),
        token_file: None,
        require_token_for_inference: false,
        data_dir: Some(data.join("scheduler")),
        store: None,
        advertise: None,
        report_interval: Duration::from_millis(100),
        down_after: 3,
        policy,
        headroom: 0.05,
        load_timeout: Duration::from_secs(30),
        target_ongoing_requests: 2.0,
        upscale_delay: Duration::from_secs(3600),
        wake_timeout: Duration::from_secs(120),
        model_defaults: Default::default(),
        // Tests read the repository again through rescan::once, not on a timer.
        rescan_interval: Duration::ZERO,
        max_message_size: "64MiB".parse().expect("size"),
        max_in_flight_bytes: "512MiB".parse().expect("size"),
        // Every call of the cluster tests goes over TLS, as between machines.
        tls: herd_scheduler::config::TlsArg::On,
    }
}

impl TestCluster {
    /// A scheduler over a copy of tests/models, with `settings` written as herd.toml
    /// files, and agents named a, b, c... with the given memory limits.
    pub async fn start(
        limits: &[&str],
        settings: &[(&str, &str)],
        policy: herd_scheduler::config::PolicyArg,
    ) -> TestCluster {
        TestCluster::start_with(limits, settings, policy, |_| {}).await
    }

    /// As `start`, with the scheduler's settings adjusted by `adjust`.
    pub async fn start_with(
        limits: &[&str],
        settings: &[(&str, &str)],
        policy: herd_scheduler::config::PolicyArg,
        adjust: impl Fn(&mut SchedulerConfig),
    ) -> TestCluster {
        let repo = repository();
        for (model, toml) in settings {
            write(repo.path(), &format!("{model}/herd.toml"), toml.as_bytes());
        }
        let data = tempfile::tempdir().expect("tempdir");
        let mut config = scheduler_config(repo.path(), data.path(), policy);
        adjust(&mut config);
        let mut cluster = TestCluster {
            scheduler: herd_scheduler::start(&config)
                .await
                .expect("scheduler state"),
            addr: String::new(),
            http_addr: String::new(),
            agents: Vec::new(),
            repo,
            data,
            stop: None,
            served: None,
            policy,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        cluster.serve(listener).await;
        for (i, limit) in limits.iter().enumerate() {
            let name = ((b'a' + i as u8) as char).to_string();
            let agent = cluster.spawn_agent(&name, limit, TOKEN).await;
            cluster.agents.push(agent);
        }
        cluster.wait_for_nodes(limits.len()).await;
        cluster
    }

    async fn serve(&mut self, listener: TcpListener) {
        self.addr = listener.local_addr().expect("addr").to_string();
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        self.http_addr = http.local_addr().expect("addr").to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        self.served = Some(tokio::spawn(herd_scheduler::serve(
            self.scheduler.clone(),
            listener,
            http,
            false,
            async {
                let _ = stopped.await;
            },
        )));
        self.stop = Some(stop);
    }

    /// Stops the scheduler and starts a new one on the same port and data directory.
    pub async fn restart_scheduler(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            let _ = served.await;
        }
        let listener = TcpListener::bind(&self.addr)
            .await
            .expect("bind the same port again");
        // The old state holds the store's file lock until its last holder lets go.
        let placeholder = herd_scheduler::start(&scheduler_config(
            self.repo.path(),
            &self.data.path().join("placeholder"),
            self.policy,
        ))
        .await
        .expect("placeholder state");
        drop(std::mem::replace(&mut self.scheduler, placeholder));
        let config = scheduler_config(self.repo.path(), self.data.path(), self.policy);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        self.scheduler = loop {
            match herd_scheduler::start(&config).await {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("scheduler state: {e}"),
            }
        };
        self.serve(listener).await;
    }

    pub async fn spawn_agent(&self, name: &str, limit: &str, token: &str) -> AgentProcess {
        self.spawn_agent_with(name, limit, token, &[]).await
    }

    /// As `spawn_agent`, with more flags.
    pub async fn spawn_agent_with(
        &self,
        name: &str,
        limit: &str,
        token: &str,
        more: &[&str],
    ) -> AgentProcess {
        self.spawn_agent_env(name, limit, token, more, &[]).await
    }

    /// As `spawn_agent_with`, with environment variables set for the agent (and so for
    /// its model workers).
    pub async fn spawn_agent_env(
        &self,
        name: &str,
        limit: &str,
        token: &str,
        more: &[&str],
        env: &[(&str, &str)],
    ) -> AgentProcess {
        let data_dir = self.data.path().join(format!("agent-{name}"));
        let mut child = Command::new(HERD)
            .args([
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--name",
                name,
                "--memory-limit",
                limit,
            ])
            .args([
                "--scheduler",
                &self.addr,
                "--token",
                &self.join_token_for(token),
            ])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(more)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start herd agent");
        let addr = serving_addr(&mut child, "agent serving").await;
        AgentProcess {
            name: name.to_string(),
            child,
            addr,
            data_dir,
        }
    }

    /// Waits until `n` nodes are up.
    pub async fn wait_for_nodes(&self, n: usize) {
        let s = self.scheduler.clone();
        eventually(&format!("{n} nodes up"), Duration::from_secs(60), || {
            s.lock().nodes().filter(|node| !node.down).count() >= n
        })
        .await;
    }

    /// The nodes holding a ready replica of `model`.
    pub fn ready_on(&self, model: &str) -> Vec<String> {
        let c = self.scheduler.lock();
        let mut nodes: Vec<String> = c
            .replicas_of(model)
            .into_iter()
            .filter(|(_, r)| r.state == ReplicaState::Ready)
            .map(|(n, _)| n)
            .collect();
        nodes.sort();
        nodes
    }

    pub fn events(&self, kind: &str, model: &str) -> Vec<herd_proto::herd::Event> {
        self.scheduler
            .lock()
            .events()
            .recent(1000)
            .into_iter()
            .filter(|e| e.kind == kind && (model.is_empty() || e.model == model))
            .collect()
    }

    /// The join token of this cluster with the secret `secret` (a wrong one, say):
    /// it pins the cluster's CA (with TLS off, it is the bare secret).
    pub fn join_token_for(&self, secret: &str) -> String {
        match &self.scheduler.settings.tls {
            Some(tls) => tls.join_token(secret),
            None => secret.to_string(),
        }
    }

    /// The cluster's join token, as agents and tools are given it.
    pub fn join_token(&self) -> String {
        self.join_token_for(TOKEN)
    }

    /// The cluster CA's certificate, as PEM.
    pub fn ca_pem(&self) -> String {
        let tls = self.scheduler.settings.tls.as_ref().expect("TLS on");
        tls.ca.cert_pem().to_string()
    }

    /// A certificate from the cluster CA for an agent in this process.
    pub fn agent_identity(&self) -> herd_core::tls::Identity {
        let tls = self.scheduler.settings.tls.as_ref().expect("TLS on");
        tls.ca
            .issue(&[herd_core::tls::AGENT_NAME.to_string()])
            .expect("an agent certificate")
    }

    /// A channel to `addr`, a server of this cluster named `name` (the scheduler's or
    /// an agent's role name), over TLS verified with the cluster CA.
    pub async fn channel_to(&self, addr: &str, name: &str) -> tonic::transport::Channel {
        tls_channel(addr, &self.ca_pem(), name).await
    }

    /// The cluster CA's certificate file, as the scheduler writes it.
    pub fn ca_file(&self) -> PathBuf {
        self.data.path().join("scheduler").join("ca.pem")
    }

    /// A TLS connection to the scheduler's HTTP port, verified with the cluster CA.
    pub async fn http_stream(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        tls_stream(
            &self.http_addr,
            &self.ca_pem(),
            herd_core::tls::SCHEDULER_NAME,
        )
        .await
    }

    /// A channel to the scheduler, over TLS.
    pub async fn channel(&self) -> tonic::transport::Channel {
        self.channel_to(&self.addr, herd_core::tls::SCHEDULER_NAME)
            .await
    }

    pub async fn client(
        &self,
    ) -> herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient<
        tonic::transport::Channel,
    > {
        herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient::new(
            self.channel().await,
        )
    }

    pub async fn admin(
        &self,
        token: Option<&str>,
    ) -> herd_proto::herd::admin_client::AdminClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            herd_core::auth::SendToken,
        >,
    > {
        let channel = self.channel().await;
        herd_proto::herd::admin_client::AdminClient::with_interceptor(
            channel,
            herd_core::auth::SendToken::new(token).expect("ascii"),
        )
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Reads a child's log until the line that says it serves, and returns its addr=.
pub async fn serving_addr(child: &mut Child, marker: &str) -> String {
    let line = log_line(child, |l| l.contains(marker) && l.contains("addr=")).await;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .expect("addr= on the line")
        .to_string()
}

/// Reads a child's log until a line `wanted` takes (within 60 s), returns it, and reads
/// the rest in the background so that the child never blocks on a full pipe.
pub async fn log_line(child: &mut Child, wanted: impl Fn(&str) -> bool) -> String {
    let mut found = log_lines(child, &[&wanted]).await;
    found.remove(0)
}

/// As [`log_line`], for several lines read in one pass: the first line each of `wanted`
/// takes, in the order of `wanted`.
pub async fn log_lines(child: &mut Child, wanted: &[&dyn Fn(&str) -> bool]) -> Vec<String> {
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        let mut found: Vec<Option<String>> = vec![None; wanted.len()];
        while let Ok(Some(line)) = lines.next_line().await {
            for (slot, take) in found.iter_mut().zip(wanted) {
                if slot.is_none() && take(&line) {
                    *slot = Some(line.clone());
                }
            }
            if found.iter().all(Option::is_some) {
                return found.into_iter().flatten().collect::<Vec<_>>();
            }
            seen.push(line);
        }
        panic!(
            "the process exited before those lines:\n{}",
            seen.join("\n")
        );
    })
    .await
    .expect("the lines within 60 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    found
}

/// A TLS connection to `addr`, a server named `name` with a certificate from `ca_pem`.
pub async fn tls_stream(
    addr: &str,
    ca_pem: &str,
    name: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let der = pem::parse(ca_pem)
        .expect("a PEM certificate")
        .into_contents();
    roots.add(der.into()).expect("a CA certificate");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("a name");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("a TLS handshake")
}

/// A gRPC channel to `addr`, a server named `name`, over TLS verified with `ca_pem`.
pub async fn tls_channel(addr: &str, ca_pem: &str, name: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .expect("url")
        .tls_config(herd_core::tls::tonic_client(ca_pem, name))
        .expect("TLS config")
        .connect()
        .await
        .expect("connect over TLS")
}
