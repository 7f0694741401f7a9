//! The dashboard's connection against a stand-in scheduler serving `herd.v1.Admin`: the
//! watch stream's updates reach the app, the token travels as `authorization: Bearer`,
//! and unload and drain report what the scheduler answered.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use herd_dashboard::app::App;
use herd_dashboard::connection::{self, Message, Target};
use herd_proto::herd::admin_server::{Admin, AdminServer};
use herd_proto::herd::*;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct FakeScheduler {
    /// The authorization header of each call.
    seen: Arc<Mutex<Vec<String>>>,
}

impl FakeScheduler {
    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        self.seen.lock().expect("lock").push(auth.clone());
        if auth == "Bearer s3cret" {
            Ok(())
        } else {
            Err(Status::unauthenticated("bad token"))
        }
    }
}

fn node(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.to_string(),
        address: format!("{name}:8002"),
        state: NodeState::Up as i32,
        resources: Some(NodeResources {
            memory_total_bytes: 8 << 30,
            memory_available_bytes: 6 << 30,
            memory_capacity_bytes: 8 << 30,
            ..NodeResources::default()
        }),
        ..NodeInfo::default()
    }
}

#[tonic::async_trait]
impl Admin for FakeScheduler {
    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
    async fn list_models(
        &self,
        _: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
    async fn load_model(
        &self,
        _: Request<AdminLoadRequest>,
    ) -> Result<Response<AdminLoadResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
    async fn unload_model(
        &self,
        request: Request<AdminUnloadRequest>,
    ) -> Result<Response<AdminUnloadResponse>, Status> {
        self.check(&request)?;
        if request.get_ref().model == "magika" {
            Ok(Response::new(AdminUnloadResponse {
                nodes: vec!["node-a".into(), "node-b".into()],
            }))
        } else {
            Err(Status::not_found("no such model"))
        }
    }
    async fn drain_node(
        &self,
        request: Request<DrainNodeRequest>,
    ) -> Result<Response<DrainNodeResponse>, Status> {
        self.check(&request)?;
        Ok(Response::new(DrainNodeResponse {
            moved_models: vec!["magika".into()],
        }))
    }

    async fn wake_node(
        &self,
        _: Request<herd_proto::herd::WakeNodeRequest>,
    ) -> Result<Response<herd_proto::herd::WakeNodeResponse>, Status> {
        Err(Status::unimplemented("the dashboard does not ask"))
    }

    async fn rescan(
        &self,
        _: Request<herd_proto::herd::RescanRequest>,
    ) -> Result<Response<herd_proto::herd::RescanResponse>, Status> {
        Err(Status::unimplemented("the dashboard does not ask"))
    }

    async fn explain_model(
        &self,
        _: Request<herd_proto::herd::ExplainModelRequest>,
    ) -> Result<Response<herd_proto::herd::ExplainModelResponse>, Status> {
        Err(Status::unimplemented("the dashboard does not ask"))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<ClusterUpdate, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.check(&request)?;
        let update = ClusterUpdate {
            snapshot: Some(ClusterSnapshot {
                time_ms: 1_700_000_000_000,
                nodes: vec![node("node-a"), node("node-b")],
                models: Vec::new(),
            }),
            events: vec![Event {
                time_ms: 1_700_000_000_000,
                kind: "joined".into(),
                node: "node-b".into(),
                ..Event::default()
            }],
        };
        // One update, then the stream stays open.
        let stream = futures::StreamExt::chain(
            futures::stream::iter([Ok(update)]),
            futures::stream::pending(),
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

async fn start() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let fake = FakeScheduler::default();
    let seen = fake.seen.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdminServer::new(fake))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (address, seen)
}

async fn next(rx: &mut mpsc::Receiver<Message>) -> Message {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a message within 10 s")
        .expect("the watch task is running")
}

#[tokio::test]
async fn watch_updates_reach_the_app_with_the_token() {
    let (address, seen) = start().await;
    let target = Target::new(&address, Some("s3cret")).expect("target");
    let (tx, mut rx) = mpsc::channel(8);
    let task = tokio::spawn(connection::watch(target, tx));
    assert!(matches!(next(&mut rx).await, Message::Connecting));
    let Message::Update(update) = next(&mut rx).await else {
        panic!("expected an update");
    };
    let mut app = App::new(address, false, Instant::now());
    app.apply_update(update, Instant::now());
    let names: Vec<&str> = app.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-a", "node-b"]);
    assert_eq!(app.events.len(), 1);
    assert_eq!(seen.lock().expect("lock").as_slice(), ["Bearer s3cret"]);
    task.abort();
}

#[tokio::test]
async fn a_wrong_token_is_a_clear_disconnection() {
    let (address, _) = start().await;
    let target = Target::new(&address, Some("wrong")).expect("target");
    let (tx, mut rx) = mpsc::channel(8);
    let task = tokio::spawn(connection::watch(target, tx));
    assert!(matches!(next(&mut rx).await, Message::Connecting));
    match next(&mut rx).await {
        Message::Disconnected { error, retry_in } => {
            assert!(error.contains("token"), "{error}");
            assert_eq!(retry_in, Duration::from_secs(1));
        }
        other => panic!("expected a disconnection, got {other:?}"),
    }
    task.abort();
}

#[tokio::test]
async fn unload_and_drain_say_what_happened() {
    let (address, _) = start().await;
    let target = Target::new(&address, Some("s3cret")).expect("target");
    assert_eq!(
        connection::unload(&target, "magika").await,
        Ok("unloaded magika from node-a, node-b".to_string())
    );
    let missing = connection::unload(&target, "nope").await;
    assert!(
        missing.as_ref().is_err_and(|e| e.contains("no such model")),
        "{missing:?}"
    );
    assert_eq!(
        connection::drain(&target, "node-b").await,
        Ok("drained node-b; moved magika".to_string())
    );
}
