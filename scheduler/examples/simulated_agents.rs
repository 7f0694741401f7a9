//! Simulated agents for measuring the scheduler: N agents join a running scheduler and
//! report every second, each holding its share of the catalog's models as ready, until
//! killed. Each answers only the Status call the scheduler proves its address with;
//! they only make the scheduler hold a cluster's worth of state (scripts/bench.sh reads
//! the scheduler's RSS meanwhile).
//!
//! Usage: simulated_agents SCHEDULER_ADDR TOKEN AGENTS MODEL_NAMES,... DIGEST

use std::time::Duration;

use herd_core::auth::SendToken;
use herd_proto::herd::agent_server::{Agent, AgentServer};
use herd_proto::herd::scheduler_client::SchedulerClient;
use herd_proto::herd::{
    AgentStatus, InferBatchRequest, InferBatchResponse, JoinRequest, LoadModelRequest,
    LoadModelResponse, ModelState, ModelStatus, NodeResources, ReconfigureRequest,
    ReconfigureResponse, ReportRequest, StatusRequest, UnloadModelRequest, UnloadModelResponse,
};
use tonic::{Request, Response, Status};

/// Answers Status with what it reports; holds nothing it could load or run.
struct Simulated(AgentStatus);

#[tonic::async_trait]
impl Agent for Simulated {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<AgentStatus>, Status> {
        Ok(Response::new(self.0.clone()))
    }
    async fn load(
        &self,
        _: Request<LoadModelRequest>,
    ) -> Result<Response<LoadModelResponse>, Status> {
        Err(Status::unimplemented("a simulated agent loads nothing"))
    }
    async fn unload(
        &self,
        _: Request<UnloadModelRequest>,
    ) -> Result<Response<UnloadModelResponse>, Status> {
        Err(Status::unimplemented("a simulated agent unloads nothing"))
    }
    async fn reconfigure(
        &self,
        _: Request<ReconfigureRequest>,
    ) -> Result<Response<ReconfigureResponse>, Status> {
        Err(Status::unimplemented(
            "a simulated agent has nothing to reconfigure",
        ))
    }
    async fn infer_batch(
        &self,
        _: Request<InferBatchRequest>,
    ) -> Result<Response<InferBatchResponse>, Status> {
        Err(Status::unimplemented("a simulated agent runs nothing"))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, token, agents, models, digest] = args.as_slice() else {
        return Err(
            "usage: simulated_agents SCHEDULER_ADDR TOKEN AGENTS MODEL_NAMES,... DIGEST".into(),
        );
    };
    let agents: usize = agents.parse()?;
    let models: Vec<String> = models.split(',').map(String::from).collect();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let client = SchedulerClient::with_interceptor(channel, SendToken::new(Some(token))?);
    let mut tasks = Vec::new();
    for i in 0..agents {
        let mut client = client.clone();
        let name = format!("sim-{i:02}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let held: Vec<ModelStatus> = models
            .iter()
            .skip(i)
            .step_by(agents)
            .map(|m| ModelStatus {
                name: m.clone(),
                version: "1".into(),
                state: ModelState::Ready as i32,
                memory_bytes: 30 << 20,
                digest: digest.clone(),
                ttl_ms: -1,
                ..Default::default()
            })
            .collect();
        let status = AgentStatus {
            name: name.clone(),
            version: "sim".into(),
            resources: Some(NodeResources {
                memory_total_bytes: 16 << 30,
                memory_available_bytes: 12 << 30,
                memory_capacity_bytes: 16 << 30,
                cpu_count: 8,
                ..Default::default()
            }),
            models: held,
            file_digests: vec![digest.clone()],
            instance: format!("sim-{i}"),
            wake: None,
            sleeping: false,
        };
        let server = tonic::transport::Server::builder()
            .add_service(AgentServer::new(Simulated(status.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        client
            .join(JoinRequest {
                name: name.clone(),
                address: address.clone(),
                status: Some(status.clone()),
            })
            .await?;
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let report = ReportRequest {
                    name: name.clone(),
                    address: address.clone(),
                    status: Some(status.clone()),
                };
                if client.report(report).await.is_err() {
                    return;
                }
            }
        }));
    }
    println!("{agents} simulated agents joined");
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
