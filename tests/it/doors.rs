//! The cluster token has no side doors: every RPC of every gRPC service herd defines
//! (listed from the proto descriptors, so a new one cannot be forgotten) is called on
//! a real scheduler and on a real agent joined to it, with no token, a wrong one and
//! the right one. Also: where a generated token is told, `--token-file`, and an agent
//! whose name is taken.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Buf;
use herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use herd_scheduler::config::PolicyArg;
use prost::Message;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::cluster_support::{herd, TestCluster};
use crate::support::*;

const LONG: Duration = Duration::from_secs(60);

/// Who may call an RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Door {
    /// Anyone: probes carry no token.
    Open,
    /// Only with the token.
    Token,
    /// Anyone, unless the scheduler was started with --require-token-for-inference.
    Inference,
}

use Door::*;

/// (path, on the scheduler, on a joined agent).
type Row = (&'static str, Door, Door);

/// Which column of a row a server is.
type DoorOf = fn(&Row) -> Door;

/// Every RPC, as the scheduler and as a joined agent guard it. A service a server does
/// not serve still needs the token there (and then answers UNIMPLEMENTED), so that
/// nothing about it is told to strangers.
const TABLE: &[Row] = &[
    ("/inference.GRPCInferenceService/ServerLive", Open, Open),
    ("/inference.GRPCInferenceService/ServerReady", Open, Open),
    (
        "/inference.GRPCInferenceService/ModelReady",
        Inference,
        Inference,
    ),
    (
        "/inference.GRPCInferenceService/ServerMetadata",
        Inference,
        Inference,
    ),
    (
        "/inference.GRPCInferenceService/ModelMetadata",
        Inference,
        Inference,
    ),
    (
        "/inference.GRPCInferenceService/ModelInfer",
        Inference,
        Inference,
    ),
    (
        "/inference.GRPCInferenceService/ModelConfig",
        Inference,
        Inference,
    ),
    (
        "/inference.GRPCInferenceService/ModelStatistics",
        Inference,
        Inference,
    ),
    (
        "/inference.GRPCInferenceService/RepositoryIndex",
        Inference,
        Inference,
    ),
    // They change what is served: an outsider unloaded models through an agent.
    (
        "/inference.GRPCInferenceService/RepositoryModelLoad",
        Token,
        Token,
    ),
    (
        "/inference.GRPCInferenceService/RepositoryModelUnload",
        Token,
        Token,
    ),
    ("/herd.v1.Agent/Status", Token, Token),
    ("/herd.v1.Agent/Load", Token, Token),
    ("/herd.v1.Agent/Unload", Token, Token),
    ("/herd.v1.Agent/InferBatch", Token, Token),
    ("/herd.v1.Agent/Reconfigure", Token, Token),
    ("/herd.v1.Scheduler/Join", Token, Token),
    ("/herd.v1.Scheduler/Report", Token, Token),
    ("/herd.v1.Scheduler/FetchModel", Token, Token),
    // A certificate of the cluster is given only to a holder of the token.
    ("/herd.v1.Scheduler/IssueCertificate", Token, Token),
    ("/herd.v1.Admin/ListNodes", Token, Token),
    ("/herd.v1.Admin/ListModels", Token, Token),
    ("/herd.v1.Admin/LoadModel", Token, Token),
    ("/herd.v1.Admin/UnloadModel", Token, Token),
    ("/herd.v1.Admin/DrainNode", Token, Token),
    ("/herd.v1.Admin/Watch", Token, Token),
    ("/herd.v1.Admin/ExplainModel", Token, Token),
    ("/herd.v1.Admin/Rescan", Token, Token),
    // It sends packets onto the network on the caller's word.
    ("/herd.v1.Admin/WakeNode", Token, Token),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_needs_the_token_unless_the_table_opens_it() {
    let doors = Doors::start(false).await;
    doors.check_every_rpc().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_requiring_the_token_for_inference_has_its_agents_require_it() {
    let doors = Doors::start(true).await;
    doors.check_every_rpc().await;

    // The scheduler itself still reaches the agent: it sends the token.
    let channel = doors
        .channel(&doors.scheduler.addr, herd_core::tls::SCHEDULER_NAME)
        .await;
    let token = herd_core::auth::SendToken::new(Some(&doors.token)).expect("ascii");
    let mut client = GrpcInferenceServiceClient::with_interceptor(channel, token);
    let request = raw_request("tiny_fixed", "x", "FP32", &[2, 4], f32_bytes(&[1.0; 8]));
    client
        .model_infer(request)
        .await
        .unwrap_or_else(|e| panic!("inference through the scheduler: {e:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_token_is_not_printed_but_where_it_is_kept_is() {
    let repo = repository();
    let dirs = tempfile::tempdir().expect("tempdir");
    let data = dirs.path().join("scheduler");
    let mut scheduler = spawn_scheduler(repo.path(), &data, &[]);
    let mut log = Log::of(&mut scheduler);
    let serving = log.until("scheduler serving").await;
    let addr = addr_in(&serving);
    let kept = data.join("token");
    let token = herd_core::auth::read_token_file(&kept).expect("the token is kept");
    let printed = log.seen.join("\n");
    assert!(
        !printed.contains(&token),
        "the token was printed:\n{printed}"
    );
    // With TLS (the default) agents and tools are told the join token's file: the
    // token with the CA's hash.
    let join_token = data.join("join-token");
    let told = format!("--token-file {}", join_token.display());
    assert!(printed.contains(&told), "{told:?} not in:\n{printed}");
    log.drain();

    // What it says works: an agent joins with that file.
    let mut agent = spawn_agent(&addr, "reader", &join_token, &dirs.path().join("agent"));
    let mut log = Log::of(&mut agent);
    log.until("joined the cluster").await;
    log.drain();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_name_is_taken_exits_saying_so() {
    let cluster = TestCluster::start(&["1GiB"], &[], PolicyArg::Spread).await;
    let data = cluster.data.path().join("second-a");
    let second = herd(&["agent", "--listen", "127.0.0.1:0", "--name", "a"])
        .args(["--memory-limit", "1GiB", "--scheduler", &cluster.addr])
        .args(["--token", &cluster.join_token(), "--data-dir"])
        .arg(&data)
        .stdout(Stdio::null())
        .spawn()
        .expect("start a second herd agent");
    // A deadline only so that a test of a retrying agent ends at all.
    let out = tokio::time::timeout(LONG, second.wait_with_output())
        .await
        .expect("the second agent exits instead of retrying")
        .expect("its output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let taken = format!(
        "refused this agent: a node named \"a\" is already in the cluster at {}",
        cluster.agents[0].addr
    );
    assert!(stderr.contains(&taken), "{taken:?} not in:\n{stderr}");
    assert!(!stderr.contains("retrying"), "{stderr}");
    // The first agent is still the node "a".
    let nodes: Vec<_> = cluster
        .scheduler
        .lock()
        .nodes()
        .map(|n| n.address.clone())
        .collect();
    assert_eq!(nodes, vec![cluster.agents[0].addr.clone()]);
}

/// A scheduler process and an agent process joined to it, both reading the token from
/// a file.
struct Doors {
    scheduler: Process,
    agent: Process,
    token: String,
    ca_pem: String,
    require_token_for_inference: bool,
    /// Where the servers keep things; no answer to a stranger names them.
    secret_paths: Vec<PathBuf>,
    _dirs: tempfile::TempDir,
    _repo: tempfile::TempDir,
}

struct Process {
    addr: String,
    _child: Child,
}

impl Doors {
    async fn start(require_token_for_inference: bool) -> Doors {
        let repo = repository();
        let dirs = tempfile::tempdir().expect("tempdir");
        let token = "doors-s3cret".to_string();
        let token_file = dirs.path().join("token");
        std::fs::write(&token_file, format!("{token}\n")).expect("write the token file");

        let mut flags = vec!["--token-file", token_file.to_str().expect("utf-8 path")];
        if require_token_for_inference {
            flags.push("--require-token-for-inference");
        }
        let scheduler_data = dirs.path().join("scheduler");
        let mut scheduler = spawn_scheduler(repo.path(), &scheduler_data, &flags);
        let mut log = Log::of(&mut scheduler);
        let scheduler_addr = addr_in(&log.until("scheduler serving").await);
        log.drain();

        // The agent joins with the join token: the secret and the CA's hash.
        let mut agent = spawn_agent(
            &scheduler_addr,
            "doors",
            &scheduler_data.join("join-token"),
            &dirs.path().join("agent"),
        );
        let mut log = Log::of(&mut agent);
        let agent_addr = addr_in(&log.until("agent serving").await);
        // Logged once the agent holds to what the join answered.
        log.until("joined the cluster").await;
        log.drain();

        Doors {
            scheduler: Process {
                addr: scheduler_addr,
                _child: scheduler,
            },
            agent: Process {
                addr: agent_addr,
                _child: agent,
            },
            token,
            ca_pem: std::fs::read_to_string(scheduler_data.join("ca.pem")).expect("the CA"),
            require_token_for_inference,
            secret_paths: vec![dirs.path().to_path_buf(), repo.path().to_path_buf()],
            _dirs: dirs,
            _repo: repo,
        }
    }

    /// A channel to `addr`, a server named `name`, over TLS.
    async fn channel(&self, addr: &str, name: &str) -> Channel {
        Endpoint::from_shared(format!("https://{addr}"))
            .expect("url")
            .tls_config(herd_core::tls::tonic_client(&self.ca_pem, name))
            .expect("TLS config")
            .connect()
            .await
            .expect("connect over loopback")
    }

    /// Calls every RPC on both servers three ways and says every way one was wrong.
    async fn check_every_rpc(&self) {
        let rpcs = rpcs_in_descriptors();
        let mut wrong = Vec::new();
        for row in TABLE {
            if !rpcs.contains(&row.0.to_string()) {
                wrong.push(format!("{} is in the table but no .proto has it", row.0));
            }
        }
        let servers: [(&str, &str, &str, DoorOf); 2] = [
            (
                "scheduler",
                &self.scheduler.addr,
                herd_core::tls::SCHEDULER_NAME,
                |row| row.1,
            ),
            (
                "agent",
                &self.agent.addr,
                herd_core::tls::AGENT_NAME,
                |row| row.2,
            ),
        ];
        for (server, addr, name, door_of) in servers {
            let channel = self.channel(addr, name).await;
            for path in &rpcs {
                let Some(row) = TABLE.iter().find(|row| row.0 == path) else {
                    wrong.push(format!("{path} is not in the table: say who may call it"));
                    continue;
                };
                let guarded = match door_of(row) {
                    Open => false,
                    Token => true,
                    Inference => self.require_token_for_inference,
                };
                for given in [None, Some("wrong"), Some(self.token.as_str())] {
                    let status = call(channel.clone(), path, given).await;
                    let right = given == Some(self.token.as_str());
                    let refused = status.code() == Code::Unauthenticated;
                    let at = format!("{server} {path} with token {given:?}");
                    if guarded && !right && !refused {
                        wrong.push(format!(
                            "{at}: {:?} {:?}, not UNAUTHENTICATED",
                            status.code(),
                            status.message()
                        ));
                    }
                    if (!guarded || right) && refused {
                        wrong.push(format!("{at}: refused: {}", status.message()));
                    }
                    let named = self
                        .secret_paths
                        .iter()
                        .find(|p| status.message().contains(&*p.to_string_lossy()));
                    if let Some(p) = named.filter(|_| !right) {
                        wrong.push(format!("{at}: the answer names {}", p.display()));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    }
}

/// `/package.Service/Method` of every RPC the .proto files define.
fn rpcs_in_descriptors() -> Vec<String> {
    let set = FileDescriptorSet::decode(herd_proto::FILE_DESCRIPTOR_SET)
        .expect("herd_proto::FILE_DESCRIPTOR_SET decodes");
    let mut rpcs = Vec::new();
    for file in set.file {
        let package = file.package.unwrap_or_default();
        for service in file.service {
            let name = service.name.unwrap_or_default();
            let full = if package.is_empty() {
                name
            } else {
                format!("{package}.{name}")
            };
            for method in service.method {
                rpcs.push(format!("/{full}/{}", method.name.unwrap_or_default()));
            }
        }
    }
    assert!(!rpcs.is_empty(), "the descriptors list no RPC");
    rpcs
}

// The few fields of google.protobuf.FileDescriptorSet this test reads, with their
// numbers in descriptor.proto; prost skips the rest.
#[derive(Clone, PartialEq, Message)]
struct FileDescriptorSet {
    #[prost(message, repeated, tag = "1")]
    file: Vec<FileDescriptorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct FileDescriptorProto {
    #[prost(string, optional, tag = "2")]
    package: Option<String>,
    #[prost(message, repeated, tag = "6")]
    service: Vec<ServiceDescriptorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceDescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    method: Vec<MethodDescriptorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct MethodDescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
}

/// Calls `path` with one empty message (every field at its default), as a stream both
/// ways so that one call fits every kind of RPC, and returns how it ended: the status
/// of a refusal or failure, OK once a first answer (or the end) arrived.
async fn call(channel: Channel, path: &str, token: Option<&str>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return Status::unavailable(format!("channel not ready: {e}"));
    }
    let mut request = tonic::Request::new(tonic::codegen::tokio_stream::once(()));
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("ascii token");
        request.metadata_mut().insert("authorization", value);
    }
    let path = PathAndQuery::try_from(path).expect("an RPC path");
    match grpc.streaming(request, path, Empty).await {
        Err(status) => status,
        Ok(response) => match response.into_inner().message().await {
            Ok(_) => Status::ok(""),
            Err(status) => status,
        },
    }
}

/// Encodes `()` as the empty message and reads any message as `()`.
#[derive(Clone, Copy, Debug)]
struct Empty;

impl Codec for Empty {
    type Encode = ();
    type Decode = ();
    type Encoder = Empty;
    type Decoder = Empty;

    fn encoder(&mut self) -> Empty {
        Empty
    }

    fn decoder(&mut self) -> Empty {
        Empty
    }
}

impl Encoder for Empty {
    type Item = ();
    type Error = Status;

    fn encode(&mut self, _: (), _: &mut EncodeBuf<'_>) -> Result<(), Status> {
        Ok(())
    }
}

impl Decoder for Empty {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// `herd scheduler` on loopback ports the kernel picks, with `flags`.
fn spawn_scheduler(repo: &Path, data: &Path, flags: &[&str]) -> Child {
    herd(&[])
        .args([
            "scheduler",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ])
        .arg("--model-repository")
        .arg(repo)
        .arg("--data-dir")
        .arg(data)
        .args(["--report-interval", "100ms"])
        // On loopback TLS would stay off by itself; these doors are the ones between
        // machines.
        .args(["--tls", "on"])
        .args(flags)
        .stdout(Stdio::null())
        .spawn()
        .expect("start herd scheduler")
}

/// `herd agent` named `name`, joining the scheduler at `scheduler` with the token in
/// `token_file`.
fn spawn_agent(scheduler: &str, name: &str, token_file: &Path, data: &Path) -> Child {
    herd(&["agent", "--listen", "127.0.0.1:0", "--name", name])
        .args(["--memory-limit", "1GiB", "--scheduler", scheduler])
        .arg("--token-file")
        .arg(token_file)
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::null())
        .spawn()
        .expect("start herd agent")
}

/// A child's stderr, read line by line.
struct Log {
    lines: Lines<BufReader<ChildStderr>>,
    seen: Vec<String>,
}

impl Log {
    fn of(child: &mut Child) -> Log {
        let stderr = child.stderr.take().expect("stderr piped");
        Log {
            lines: BufReader::new(stderr).lines(),
            seen: Vec::new(),
        }
    }

    /// The first line from here on that contains `marker`.
    async fn until(&mut self, marker: &str) -> String {
        let found = tokio::time::timeout(LONG, async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                self.seen.push(line.clone());
                if line.contains(marker) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!("exited before {marker:?}:\n{}", self.seen.join("\n")),
            Err(_) => panic!("no {marker:?} within {LONG:?}:\n{}", self.seen.join("\n")),
        }
    }

    /// Reads the rest in the background, so that the child never blocks on a full pipe.
    fn drain(mut self) {
        tokio::spawn(async move { while let Ok(Some(_)) = self.lines.next_line().await {} });
    }
}

/// The `addr=` field of a log line.
fn addr_in(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {line:?}"))
        .to_string()
}
