//! The layer stack on a real tonic server over loopback, called by a real tonic client:
//! it type-checks with `Server::builder().layer(..)` and the layers answer real gRPC.

use std::sync::Arc;
use std::time::Duration;

use herd_core::auth::SendToken;
use herd_core::layers::{GrpcMetrics, RequestId, ServerStack, TokenRule};
use herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use herd_proto::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer, SERVICE_NAME,
};
use herd_proto::inference::*;
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::server::TcpIncoming;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

/// ServerReady answers at once; ServerLive waits for a permit from `gate`. Both tell
/// `seen` the request id they got.
struct Stub {
    seen: mpsc::UnboundedSender<Option<RequestId>>,
    gate: Arc<Semaphore>,
}

impl Stub {
    fn saw<T>(&self, request: &Request<T>) {
        let _ = self
            .seen
            .send(request.extensions().get::<RequestId>().cloned());
    }
}

fn stub<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this test"))
}

#[tonic::async_trait]
impl GrpcInferenceService for Stub {
    async fn server_live(
        &self,
        request: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        self.saw(&request);
        let _permit = self.gate.acquire().await.expect("the gate stays open");
        Ok(Response::new(ServerLiveResponse { live: true }))
    }
    async fn server_ready(
        &self,
        request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        self.saw(&request);
        Ok(Response::new(ServerReadyResponse { ready: true }))
    }
    async fn model_ready(
        &self,
        _: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        stub()
    }
    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        stub()
    }
    async fn model_metadata(
        &self,
        _: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        stub()
    }
    async fn model_infer(
        &self,
        _: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        stub()
    }
    async fn model_config(
        &self,
        _: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        stub()
    }
    async fn model_statistics(
        &self,
        _: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        stub()
    }
    async fn repository_index(
        &self,
        _: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        stub()
    }
    async fn repository_model_load(
        &self,
        _: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        stub()
    }
    async fn repository_model_unload(
        &self,
        _: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        stub()
    }
}

/// A server with `stack` on 127.0.0.1:0; what its handlers saw; its gate; its address.
struct Running {
    url: String,
    seen: mpsc::UnboundedReceiver<Option<RequestId>>,
    gate: Arc<Semaphore>,
}

async fn start(stack: ServerStack) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("bound address"));
    let (tx, seen) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let service = GrpcInferenceServiceServer::new(Stub {
        seen: tx,
        gate: gate.clone(),
    });
    let server = tonic::transport::Server::builder()
        .layer(stack)
        .add_service(service)
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(server);
    Running { url, seen, gate }
}

async fn client(url: &str) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(url.to_string())
        .await
        .expect("connect over loopback")
}

fn with_request_id<T>(message: T, id: &'static str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().expect("ascii"));
    request
}

#[tokio::test]
async fn calls_without_the_token_are_refused_and_every_answer_carries_a_request_id() {
    let rule = TokenRule::new(Some("s3cret".into())).require(SERVICE_NAME, "inference calls");
    let mut running = start(ServerStack::new(rule)).await;

    // No token: refused, with the id echoed, the handler never reached.
    let mut open = client(&running.url).await;
    let refused = open
        .server_ready(with_request_id(ServerReadyRequest {}, "req-1"))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(
        refused.message(),
        "inference calls need the cluster token (authorization: Bearer <token>; --token or HERD_TOKEN)"
    );
    assert_eq!(
        refused
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-1")
    );

    // The token: through, the handler sees the caller's id, the answer echoes it.
    let channel = Channel::from_shared(running.url.clone())
        .expect("a valid url")
        .connect()
        .await
        .expect("connect over loopback");
    let token = SendToken::new(Some("s3cret")).expect("ascii token");
    let mut closed = GrpcInferenceServiceClient::with_interceptor(channel, token);
    let answer = closed
        .server_ready(with_request_id(ServerReadyRequest {}, "req-2"))
        .await
        .expect("with the token");
    assert!(answer.get_ref().ready);
    assert_eq!(
        answer
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-2")
    );
    let seen = running.seen.recv().await.expect("the handler ran");
    assert_eq!(seen.as_ref().map(RequestId::as_str), Some("req-2"));

    // No id given: the server makes one, and the handler and the caller see the same.
    let answer = closed
        .server_ready(ServerReadyRequest {})
        .await
        .expect("with the token");
    let echoed = answer
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("an id")
        .to_string();
    let seen = running.seen.recv().await.expect("the handler ran");
    assert_eq!(seen.as_ref().map(RequestId::as_str), Some(echoed.as_str()));
    assert!(
        running.seen.try_recv().is_err(),
        "the refused call never ran"
    );
}

#[tokio::test]
async fn calls_past_the_limit_are_shed_and_counted() {
    let metrics = GrpcMetrics::new();
    let stack = ServerStack::new(TokenRule::new(None))
        .max_in_flight(1)
        .metrics(metrics.clone());
    let mut running = start(stack.clone()).await;
    let mut first = client(&running.url).await;
    let mut second = client(&running.url).await;

    // One call in flight, held at the gate.
    let held = tokio::spawn(async move { first.server_live(ServerLiveRequest {}).await });
    running.seen.recv().await.expect("the first call is in");
    assert_eq!(stack.in_flight(), 1);

    let shed = second
        .server_ready(ServerReadyRequest {})
        .await
        .expect_err("over the limit");
    assert_eq!(shed.code(), Code::ResourceExhausted);
    assert_eq!(
        shed.message(),
        "the server is at its limit of 1 calls in flight; try again later"
    );

    // Once the first is answered there is room again.
    running.gate.add_permits(1);
    let live = held
        .await
        .expect("the task ran")
        .expect("the held call is answered");
    assert!(live.get_ref().live);
    let ready = second
        .server_ready(ServerReadyRequest {})
        .await
        .expect("room again");
    assert!(ready.get_ref().ready);

    let snapshot = metrics.snapshot();
    let live = &snapshot["/inference.GRPCInferenceService/ServerLive"];
    assert_eq!(live.count(Code::Ok), 1);
    let ready = &snapshot["/inference.GRPCInferenceService/ServerReady"];
    assert_eq!(ready.count(Code::ResourceExhausted), 1);
    assert_eq!(ready.count(Code::Ok), 1);
    assert_eq!(ready.total(), 2);
}

#[tokio::test]
async fn a_call_past_the_servers_deadline_ends_and_frees_its_permit() {
    let stack = ServerStack::new(TokenRule::new(None))
        .max_in_flight(1)
        .max_deadline(Duration::from_millis(50));
    let mut running = start(stack.clone()).await;
    let mut caller = client(&running.url).await;

    // ServerLive waits at the gate, which never opens.
    let late = caller
        .server_live(ServerLiveRequest {})
        .await
        .expect_err("past the deadline");
    assert_eq!(late.code(), Code::DeadlineExceeded);
    assert_eq!(
        late.message(),
        "the call ran past the server's limit of 50ms per call"
    );
    running
        .seen
        .recv()
        .await
        .expect("the call reached the handler");
    assert_eq!(stack.in_flight(), 0);
    let ready = caller
        .server_ready(ServerReadyRequest {})
        .await
        .expect("the permit is free again");
    assert!(ready.get_ref().ready);
}
