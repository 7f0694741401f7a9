//! The client library given several scheduler addresses: a dead one is skipped, and a
//! scheduler that goes away mid-way, in the middle of a request, costs no request.
//! One cluster has one scheduler, so its second address is a TCP forwarder to it that
//! the test cuts, as a scheduler killed: open connections close, new ones are refused.

use std::sync::Arc;
use std::time::Duration;

use herd_client::{Client, ClientError, ConnectOptions};
use herd_scheduler::config::PolicyArg;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

use crate::cluster_support::*;
use crate::support::*;

const LONG: Duration = Duration::from_secs(60);

async fn connect(cluster: &TestCluster, addrs: &str) -> Client {
    let options = ConnectOptions {
        token: Some(cluster.join_token()),
        ..ConnectOptions::default()
    };
    Client::connect_with(addrs, options)
        .await
        .unwrap_or_else(|e| panic!("connect to {addrs}: {e}"))
}

/// An address nothing listens on: a port that was just free.
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_address_is_skipped_for_good() {
    let cluster = TestCluster::start(&["200MiB"], &[], PolicyArg::Spread).await;
    let dead = dead_address();
    let client = connect(&cluster, &format!("{dead}, {}", cluster.addr)).await;
    assert_eq!(client.addr(), cluster.addr);
    for seed in 0..5 {
        client
            .infer_request(mlp_request(1, seed as f32))
            .await
            .unwrap_or_else(|e| panic!("request {seed}: {e}"));
        assert_eq!(client.addr(), cluster.addr);
    }
    let nodes = client.list_nodes().await.expect("list nodes");
    assert_eq!(nodes.nodes.len(), 1);

    // Nobody answers: the error names every address.
    let other = dead_address();
    let err = Client::connect_with(&format!("{dead},{other}"), ConnectOptions::default())
        .await
        .err()
        .expect("nothing listens");
    assert!(
        err.to_string().starts_with(&format!(
            "cannot reach scheduler at {dead},{other}: {dead}: connection refused; {other}: "
        )),
        "{err}"
    );
}

/// Forwards TCP connections to `target` until cut.
struct Forwarder {
    addr: String,
    cut: watch::Sender<bool>,
    cut_mid_request: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(target: &str) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (cut, cutting) = watch::channel(false);
        let cut_mid_request = Arc::new(Notify::new());
        let (target, notify) = (target.to_string(), cut_mid_request.clone());
        let task = tokio::spawn(async move {
            // Dropped with this task: every connection closes with the listener.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (target, cutting, notify) = (target.clone(), cutting.clone(), notify.clone());
                connections.spawn(forward(client, target, cutting, notify));
            }
        });
        Forwarder {
            addr,
            cut,
            cut_mid_request,
            task,
        }
    }

    /// Closes every connection and the listener, as a scheduler killed between calls.
    async fn close(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Lets the next bytes from a client (a request, as the client is kept busy)
    /// reach the scheduler, then closes everything before its answer can come back.
    async fn cut(self) {
        self.cut.send_replace(true);
        self.cut_mid_request.notified().await;
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn forward(
    client: TcpStream,
    target: String,
    cutting: watch::Receiver<bool>,
    cut_mid_request: Arc<Notify>,
) {
    let Ok(server) = TcpStream::connect(&target).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let down = tokio::io::copy(&mut from_server, &mut to_client);
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from_client.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            to_server.write_all(&buf[..n]).await?;
            if *cutting.borrow() {
                cut_mid_request.notify_one();
                return Ok(());
            }
        }
    };
    tokio::select! {
        _ = down => {}
        _ = up => {}
    }
}

type Answers = mpsc::Receiver<(Result<(), ClientError>, String)>;

/// The next request's result, which must be a success, and the address then in use.
async fn next_answer(answers: &mut Answers) -> String {
    let (result, addr) = tokio::time::timeout(LONG, answers.recv())
        .await
        .expect("an answer in time")
        .expect("senders running");
    result.unwrap_or_else(|e| panic!("a request failed: {e}"));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_gone_mid_request_costs_no_request() {
    let cluster = TestCluster::start(&["200MiB"], &[], PolicyArg::Spread).await;
    let forwarder = Forwarder::start(&cluster.addr).await;
    let first = forwarder.addr.clone();
    let client = connect(&cluster, &format!("{first},{}", cluster.addr)).await;
    assert_eq!(client.addr(), first);

    // An answer other than UNAVAILABLE is the request's own: not retried elsewhere.
    let err = client
        .metadata("no_such_model")
        .await
        .expect_err("an unknown model");
    assert_eq!(err.code(), Some(tonic::Code::NotFound), "{err}");
    assert!(err.to_string().contains(&first), "{err}");
    assert_eq!(client.addr(), first);

    // Clients kept busy, so that requests are in flight when the forwarder is cut.
    let (results, mut answers) = mpsc::channel::<(Result<(), ClientError>, String)>(64);
    let (stop, stopped) = watch::channel(false);
    let mut senders = tokio::task::JoinSet::new();
    for seed in 0..4 {
        let (client, results, stopped) = (client.clone(), results.clone(), stopped.clone());
        senders.spawn(async move {
            while !*stopped.borrow() {
                let result = client.infer_request(mlp_request(1, seed as f32)).await;
                let answer = (result.map(|_| ()), client.addr().to_string());
                if results.send(answer).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(results);
    for _ in 0..20 {
        assert_eq!(next_answer(&mut answers).await, first);
    }

    forwarder.cut().await;
    // Answers to requests sent before the cut may still say the first address.
    let mut moved = 0;
    for _ in 0..200 {
        if next_answer(&mut answers).await == cluster.addr {
            moved += 1;
            if moved == 20 {
                break;
            }
        }
    }
    assert_eq!(moved, 20, "the client stayed on {first}");
    assert_eq!(client.addr(), cluster.addr);
    stop.send_replace(true);
    while let Some((result, _)) = answers.recv().await {
        result.unwrap_or_else(|e| panic!("a request failed: {e}"));
    }
    while senders.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scheduler_gone_is_an_error_naming_them_all() {
    let cluster = TestCluster::start(&["200MiB"], &[], PolicyArg::Spread).await;
    let (a, b) = (
        Forwarder::start(&cluster.addr).await,
        Forwarder::start(&cluster.addr).await,
    );
    let (first, second) = (a.addr.clone(), b.addr.clone());
    let client = connect(&cluster, &format!("{first},{second}")).await;
    client
        .infer_request(mlp_request(1, 0.0))
        .await
        .expect("served through the first");
    a.close().await;
    b.close().await;
    let err = client
        .infer_request(mlp_request(1, 1.0))
        .await
        .expect_err("nobody left");
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    assert!(
        err.to_string().contains(&format!("{first},{second}")),
        "both named: {err}"
    );
}
