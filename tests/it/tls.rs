//! TLS between the parts of a cluster, pinned by the join token: what is refused (no
//! CA, a tampered CA hash, plain text) and what gets in (the CA file, the join token),
//! against a real cluster. Every other cluster test runs over TLS as well.

use std::process::Output;
use std::time::Duration;

use herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use herd_proto::inference::ServerLiveRequest;
use herd_scheduler::config::{PolicyArg, TlsArg};

use crate::cluster_support::*;

const LONG: Duration = Duration::from_secs(60);

/// `herd models list` against the cluster with `args`, where the default data
/// directory holds no CA (so only what the arguments give is trusted).
async fn models_list(cluster: &TestCluster, args: &[&str]) -> Output {
    let nowhere = tempfile::tempdir().expect("tempdir");
    herd(&["models", "list", "--scheduler", &cluster.addr])
        .args(args)
        .env("XDG_DATA_HOME", nowhere.path())
        .env("HOME", nowhere.path())
        .env_remove("HERD_CA_CERT")
        .output()
        .await
        .expect("run herd models list")
}

/// `herd agent` joining the cluster with `args`, expected to exit: its code and log.
async fn agent_exits(cluster: &TestCluster, name: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = herd(&["agent", "--listen", "127.0.0.1:0", "--name", name])
        .args(["--scheduler", &cluster.addr, "--data-dir"])
        .arg(cluster.data.path().join(name))
        .args(args)
        .env_remove("HERD_CA_CERT")
        .output();
    let out = tokio::time::timeout(LONG, out)
        .await
        .expect("the agent exits instead of retrying")
        .expect("run herd agent");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code(), stderr)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The join token with one digit of its CA hash changed.
fn tampered(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let i = "herd1.".len() + 10;
    chars[i] = if chars[i] == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_a_client_and_an_agent_are_refused_and_told_what_to_give() {
    let cluster = TestCluster::start(&["1GiB"], &[], PolicyArg::Spread).await;

    let out = models_list(&cluster, &["--token", TOKEN]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("serves TLS") && said.contains("join token") && said.contains("--ca-cert"),
        "{said}"
    );

    let (code, said) = agent_exits(&cluster, "plain", &["--token", TOKEN]).await;
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("the scheduler serves TLS") && said.contains("join-token"),
        "{said}"
    );
    assert!(cluster.scheduler.lock().node("plain").is_none());

    // A plain-text gRPC client gets no answer at all.
    let plain = async {
        let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", cluster.addr))
            .await
            .map_err(|e| e.to_string())?;
        client
            .server_live(ServerLiveRequest {})
            .await
            .map_err(|e| e.to_string())
    };
    assert!(plain.await.is_err(), "a plain-text call was answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_ca_hash_is_refused_by_clients_and_agents() {
    let cluster = TestCluster::start(&["1GiB"], &[], PolicyArg::Spread).await;
    let bad = tampered(&cluster.join_token());
    assert_ne!(bad, cluster.join_token());

    let out = models_list(&cluster, &["--token", &bad]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("did not prove it belongs to the cluster the token names")
            && said.contains("CA hash"),
        "{said}"
    );

    let (code, said) = agent_exits(&cluster, "tampered", &["--token", &bad]).await;
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("did not prove it belongs to the cluster the token names"),
        "{said}"
    );
    assert!(cluster.scheduler.lock().node("tampered").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_file_or_the_join_token_lets_tools_and_agents_in() {
    let cluster = TestCluster::start(&["1GiB"], &[], PolicyArg::Spread).await;
    let ca = cluster.ca_file();
    let ca = ca.to_str().expect("utf-8 path");

    for args in [
        vec!["--token", TOKEN, "--ca-cert", ca],
        vec!["--token", &cluster.join_token()],
    ] {
        let out = models_list(&cluster, &args).await;
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("tiny_mlp"));
    }

    // An agent given the CA file and the bare secret joins over TLS.
    let mut agent = herd(&["agent", "--listen", "127.0.0.1:0", "--name", "by-file"])
        .args([
            "--scheduler",
            &cluster.addr,
            "--token",
            TOKEN,
            "--ca-cert",
            ca,
        ])
        .arg("--data-dir")
        .arg(cluster.data.path().join("by-file"))
        .spawn()
        .expect("start herd agent");
    let serving = log_line(&mut agent, |l| l.contains("joined the cluster")).await;
    assert!(serving.contains("joined the cluster"), "{serving}");
    cluster.wait_for_nodes(2).await;

    // A file that is not a certificate is refused before anything is dialled.
    let junk = cluster.data.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").expect("write");
    let out = models_list(
        &cluster,
        &["--token", TOKEN, "--ca-cert", junk.to_str().expect("utf-8")],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a usable CA certificate"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_off_the_cluster_speaks_plain_text_and_leaves_no_ca_files() {
    let cluster = TestCluster::start_with(&["1GiB"], &[], PolicyArg::Spread, |config| {
        config.tls = TlsArg::Off;
    })
    .await;
    let data = cluster.data.path().join("scheduler");
    assert!(!data.join("ca.pem").exists());
    assert!(!data.join("join-token").exists());
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", cluster.addr))
        .await
        .expect("connect in plain text");
    let live = client
        .server_live(ServerLiveRequest {})
        .await
        .expect("live");
    assert!(live.into_inner().live);
}

/// A TLS handshake begun and left: a record header announcing a ClientHello of 512
/// bytes, then 40 of them and silence.
async fn stalled_handshake(addr: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut bytes = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    bytes.resize(5 + 40, 0);
    stream.write_all(&bytes).await.expect("write");
    stream
}

/// Whether the server closes `stream` within a minute.
async fn closed_by_the_server(mut stream: tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(LONG, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    read.await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_begun_and_left_is_closed_on_both_ports() {
    let cluster = TestCluster::start(&["1GiB"], &[], PolicyArg::Spread).await;
    let grpc = stalled_handshake(&cluster.addr).await;
    let http = stalled_handshake(&cluster.http_addr).await;
    let (grpc, http) = tokio::join!(closed_by_the_server(grpc), closed_by_the_server(http));
    assert!(grpc, "the gRPC port kept a stalled TLS handshake open");
    assert!(http, "the HTTP port kept a stalled TLS handshake open");
    // And serves on.
    let out = models_list(&cluster, &["--token", &cluster.join_token()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
}
