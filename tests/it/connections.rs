//! Idle sockets against a real `herd agent` process whose open-file limit is low: the
//! agent raises its own limit, closes sockets that never say hello, and keeps serving.

use std::process::Stdio;
use std::time::Duration;

use herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::cluster_support::serving_addr;
use crate::support::*;

const HERD: &str = env!("CARGO_BIN_EXE_herd");
/// Past the agent's soft limit below, and past how many handshaking sockets it keeps.
const IDLE: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_open_file_limit_do_not_stop_service() {
    let repo = repository();
    let mut agent = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 128 && exec {HERD} agent --listen 127.0.0.1:0 --model-repository {}",
            repo.path().display()
        ))
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start herd agent");
    let addr = serving_addr(&mut agent, "agent serving").await;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("a real client connects");
    let mut request = tonic::Request::new(mlp_request(2, 1.0));
    request.set_timeout(Duration::from_secs(60));
    client
        .model_infer(request)
        .await
        .expect("served while the idle sockets are held");
    // The oldest idle socket was closed to make room: the agent ends it, not us.
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match idle[0].read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // the server's own HTTP/2 settings
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the oldest silent socket is closed");
}
