//! Simulated agents for measuring the scheduler: N agents join a running scheduler and
//! report every second, each holding its share of the catalog's models as ready, until
//! killed. They serve nothing; they only make the scheduler hold a cluster's worth of
//! state (scripts/bench.sh reads the scheduler's RSS meanwhile).
//!
//! Usage: simulated_agents SCHEDULER_ADDR TOKEN AGENTS MODEL_NAMES,... DIGEST

use std::time::Duration;

use herd_core::auth::SendToken;
use herd_proto::herd::scheduler_client::SchedulerClient;
use herd_proto::herd::{
    AgentStatus, JoinRequest, ModelState, ModelStatus, NodeResources, ReportRequest,
};

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
        let address = format!("127.0.0.1:{}", 20000 + i);
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
        };
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
