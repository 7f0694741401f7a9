//! Requests toward one replica travel in batch RPCs: whatever is queued when the
//! sender is free goes together (up to 256 requests and `limits::BATCH_BYTES`; a
//! larger request goes alone), so there is no added wait at low load. Up to two
//! batches are in flight, so the agent always has the next one while it runs one.
//! Each queued request carries its tracing span, so its log lines keep its request id
//! across the hop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_proto::herd::{infer_result, InferBatchItem, InferBatchRequest, InferBatchResponse};
use herd_proto::inference::{ModelInferRequest, ModelInferResponse};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tracing::{debug, Instrument, Span};

use crate::agent_link::AgentRpc;
use crate::error::SchedulerError;
use herd_core::limits::BATCH_BYTES;
use herd_core::priority::Priority;

/// Where batches go: an agent's `InferBatch`, or a stand-in in tests.
#[async_trait::async_trait]
pub trait BatchRpc: Clone + Send + 'static {
    async fn infer_batch(
        &mut self,
        request: InferBatchRequest,
    ) -> Result<InferBatchResponse, tonic::Status>;
}

#[async_trait::async_trait]
impl BatchRpc for AgentRpc {
    async fn infer_batch(
        &mut self,
        request: InferBatchRequest,
    ) -> Result<InferBatchResponse, tonic::Status> {
        AgentRpc::infer_batch(self, tonic::Request::new(request))
            .await
            .map(tonic::Response::into_inner)
    }
}

/// Why a request failed: the replica's answer (final), or the way there (retryable).
#[derive(Debug)]
pub enum SendError {
    Answer(SchedulerError),
    Transport(SchedulerError),
}

impl SendError {
    pub fn as_inner(&self) -> &SchedulerError {
        match self {
            SendError::Answer(e) | SendError::Transport(e) => e,
        }
    }

    pub fn into_inner(self) -> SchedulerError {
        match self {
            SendError::Answer(e) | SendError::Transport(e) => e,
        }
    }
}

struct Queued {
    item: InferBatchItem,
    queued: Instant,
    reply: oneshot::Sender<Result<ModelInferResponse, SendError>>,
    span: Span,
}

/// Two lanes toward one replica, interactive and bulk, each with its own batches in
/// flight.
#[derive(Clone)]
pub struct BatchSender {
    interactive: mpsc::Sender<Queued>,
    bulk: mpsc::Sender<Queued>,
}

const MAX_BATCH: usize = 256;
const IN_FLIGHT: usize = 2;

impl BatchSender {
    pub fn start(agent: impl BatchRpc) -> BatchSender {
        let (interactive, interactive_rx) = mpsc::channel(4096);
        let (bulk, bulk_rx) = mpsc::channel(4096);
        let broken = Broken::default();
        tokio::spawn(run(agent.clone(), interactive_rx, broken.clone()));
        tokio::spawn(run(agent, bulk_rx, broken));
        BatchSender { interactive, bulk }
    }

    /// Sends one interactive request in the next batch; `request_id` travels to the
    /// agent.
    pub async fn send(
        &self,
        request: ModelInferRequest,
        timeout: Option<Duration>,
        request_id: &str,
    ) -> Result<ModelInferResponse, SendError> {
        self.send_as(request, timeout, request_id, Priority::Interactive)
            .await
    }

    /// As [`BatchSender::send`], in a class; the agent gets the class too.
    pub async fn send_as(
        &self,
        request: ModelInferRequest,
        timeout: Option<Duration>,
        request_id: &str,
        priority: Priority,
    ) -> Result<ModelInferResponse, SendError> {
        let (reply, rx) = oneshot::channel();
        let item = InferBatchItem {
            request: Some(request),
            timeout_us: timeout.map_or(0, |t| t.as_micros().max(1) as u64),
            request_id: request_id.to_string(),
            priority: priority.as_u32(),
        };
        let queued = Queued {
            item,
            queued: Instant::now(),
            reply,
            span: Span::current(),
        };
        let lane = match priority {
            Priority::Interactive => &self.interactive,
            Priority::Bulk => &self.bulk,
        };
        lane.send(queued)
            .await
            .map_err(|_| SendError::Transport(SchedulerError::SenderStopped))?;
        rx.await
            .map_err(|_| SendError::Transport(SchedulerError::SenderStopped))?
    }
}

/// A request's bytes in a batch message: its tensors, raw or typed, and the rest.
fn size(q: &Queued) -> usize {
    prost::Message::encoded_len(&q.item)
}

/// One batch: `first` and what `more` has ready, at most [`MAX_BATCH`] requests and
/// [`BATCH_BYTES`] (a larger request goes alone), so that a batch message stays under
/// the link's limit however many requests wait. The request that did not fit is
/// returned to start the next batch.
fn gather<T>(
    first: T,
    size: impl Fn(&T) -> usize,
    mut more: impl FnMut() -> Option<T>,
) -> (Vec<T>, Option<T>) {
    let mut bytes = size(&first);
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        let Some(next) = more() else {
            break;
        };
        let n = size(&next);
        if bytes.saturating_add(n) > BATCH_BYTES {
            return (batch, Some(next));
        }
        bytes += n;
        batch.push(next);
    }
    (batch, None)
}

/// The last batch that could not reach the replica, and when it failed.
type Broken = Arc<Mutex<Option<(Instant, SchedulerError)>>>;

/// One lane's sender: batches of its own requests, [`IN_FLIGHT`] at a time, so an
/// interactive request never waits for a slot bulk batches hold. The lanes share what
/// they learn of a broken link.
async fn run(agent: impl BatchRpc, mut rx: mpsc::Receiver<Queued>, broken: Broken) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut held_over = None;
    loop {
        let first = match held_over.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (mut batch, rest) = gather(first, size, || rx.try_recv().ok());
        held_over = rest;
        // A caller that has gone does not travel.
        batch.retain(|q| !q.reply.is_closed());
        // Requests that queued behind a batch the link failed fail with it, at once:
        // sent, each would wait out a connection attempt to a node that is gone (3 s)
        // before its retry elsewhere could start.
        let failed = broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(at, _)| batch.iter().any(|q| q.queued <= *at))
            .cloned();
        if let Some((at, error)) = failed {
            let (late, early): (Vec<_>, Vec<_>) = batch.into_iter().partition(|q| q.queued > at);
            for q in early {
                let _ = q.reply.send(Err(SendError::Transport(error.clone())));
            }
            batch = late;
        }
        if batch.is_empty() {
            continue;
        }
        // The batch's span follows from every request in it; each request logs, in its
        // own span, which batch took it.
        let span = tracing::debug_span!("batch", size = batch.len());
        for q in &batch {
            span.follows_from(q.span.id());
            q.span
                .in_scope(|| debug!(batch_size = batch.len(), "sent in a batch"));
        }
        let mut agent = agent.clone();
        let broken = broken.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                send_batch(&mut agent, batch, &broken).await;
            }
            .instrument(span),
        );
    }
}

/// One batch RPC. Each item carries its own deadline, which the agent enforces; a
/// timeout on the whole RPC would look like a failed connection.
async fn send_batch(agent: &mut impl BatchRpc, batch: Vec<Queued>, broken: &Broken) {
    let mut replies = Vec::with_capacity(batch.len());
    let mut items = Vec::with_capacity(batch.len());
    for q in batch {
        items.push(q.item);
        replies.push((q.reply, q.span));
    }
    match agent.infer_batch(InferBatchRequest { items }).await {
        Ok(response) => {
            let mut results = response.results.into_iter();
            for (reply, span) in replies {
                let answer = match results.next().and_then(|r| r.result) {
                    Some(infer_result::Result::Response(r)) => Ok(r),
                    Some(infer_result::Result::Error(e)) => {
                        Err(SendError::Answer(SchedulerError::Agent {
                            code: tonic::Code::from_i32(e.code),
                            message: e.message,
                        }))
                    }
                    None => Err(SendError::Answer(SchedulerError::ShortAnswer)),
                };
                if let Err(e) = &answer {
                    span.in_scope(|| debug!(error = ?e, "the replica answered with an error"));
                }
                let _ = reply.send(answer);
            }
        }
        Err(status) => {
            let error = SchedulerError::agent(&status);
            if error.is_unreachable() {
                *broken.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), error.clone()));
            }
            for (reply, span) in replies {
                span.in_scope(|| debug!(error = %error, "the batch did not reach the replica"));
                let _ = reply.send(Err(SendError::Transport(error.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use herd_proto::herd::{InferResult, RpcStatus};
    use tokio::sync::Notify;
    use tonic::{Code, Status};

    use super::*;

    /// A stand-in agent: records each batch's request ids, holds every batch until
    /// released, and answers as told.
    #[derive(Clone)]
    struct FakeAgent {
        batches: Arc<Mutex<Vec<Vec<String>>>>,
        arrived: Arc<Notify>,
        release: Arc<Semaphore>,
        answer: fn(&InferBatchRequest) -> Result<InferBatchResponse, Status>,
    }

    impl FakeAgent {
        fn new(answer: fn(&InferBatchRequest) -> Result<InferBatchResponse, Status>) -> Self {
            FakeAgent {
                batches: Arc::default(),
                arrived: Arc::default(),
                release: Arc::new(Semaphore::new(0)),
                answer,
            }
        }

        fn batches(&self) -> Vec<Vec<String>> {
            self.batches.lock().expect("batches").clone()
        }

        async fn wait_for_batches(&self, n: usize) {
            loop {
                let arrived = self.arrived.notified();
                if self.batches().len() >= n {
                    return;
                }
                arrived.await;
            }
        }
    }

    #[async_trait::async_trait]
    impl BatchRpc for FakeAgent {
        async fn infer_batch(
            &mut self,
            request: InferBatchRequest,
        ) -> Result<InferBatchResponse, Status> {
            let ids = request.items.iter().map(|i| i.request_id.clone()).collect();
            self.batches.lock().expect("batches").push(ids);
            self.arrived.notify_waiters();
            self.release
                .acquire()
                .await
                .map_err(|_| Status::internal("closed"))?
                .forget();
            (self.answer)(&request)
        }
    }

    fn echo(request: &InferBatchRequest) -> Result<InferBatchResponse, Status> {
        let results = request
            .items
            .iter()
            .map(|i| InferResult {
                result: Some(infer_result::Result::Response(ModelInferResponse {
                    id: i.request_id.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        Ok(InferBatchResponse { results })
    }

    fn request() -> ModelInferRequest {
        ModelInferRequest {
            model_name: "m".into(),
            ..Default::default()
        }
    }

    fn send(
        sender: &BatchSender,
        id: &str,
    ) -> tokio::task::JoinHandle<Result<ModelInferResponse, SendError>> {
        let (sender, id) = (sender.clone(), id.to_string());
        tokio::spawn(async move { sender.send(request(), None, &id).await })
    }

    /// Two batches of one request each, held by the agent: the sender's two slots.
    async fn fill_both_slots(
        agent: &FakeAgent,
        sender: &BatchSender,
    ) -> (
        tokio::task::JoinHandle<Result<ModelInferResponse, SendError>>,
        tokio::task::JoinHandle<Result<ModelInferResponse, SendError>>,
    ) {
        let first = send(sender, "r1");
        agent.wait_for_batches(1).await;
        let second = send(sender, "r2");
        agent.wait_for_batches(2).await;
        (first, second)
    }

    #[tokio::test]
    async fn requests_queued_while_two_batches_run_go_together_with_their_ids() {
        let agent = FakeAgent::new(echo);
        let sender = BatchSender::start(agent.clone());
        let (first, second) = fill_both_slots(&agent, &sender).await;
        // Two batches are in flight: these wait, and then travel as one.
        let rest: Vec<_> = (3..=5).map(|i| send(&sender, &format!("r{i}"))).collect();
        tokio::task::yield_now().await;
        agent.release.add_permits(1);
        agent.wait_for_batches(3).await;
        agent.release.add_permits(10);
        for (task, id) in [first, second].into_iter().chain(rest).zip(1..) {
            let response = task.await.expect("task").expect("answered");
            assert_eq!(
                response.id,
                format!("r{id}"),
                "each caller gets its own answer"
            );
        }
        let batches = agent.batches();
        assert_eq!(batches[0], vec!["r1"]);
        assert_eq!(batches[1], vec!["r2"]);
        assert_eq!(batches[2], vec!["r3", "r4", "r5"]);
    }

    #[tokio::test]
    async fn an_interactive_request_is_sent_at_once_while_bulk_batches_fill_their_slots() {
        let agent = FakeAgent::new(echo);
        let sender = BatchSender::start(agent.clone());
        let class = |id: &str, priority| {
            let (sender, id) = (sender.clone(), id.to_string());
            tokio::spawn(async move { sender.send_as(request(), None, &id, priority).await })
        };
        let b1 = class("b1", Priority::Bulk);
        agent.wait_for_batches(1).await;
        let b2 = class("b2", Priority::Bulk);
        agent.wait_for_batches(2).await;
        // Both bulk slots are held by the agent: b3 waits, i1 does not.
        let b3 = class("b3", Priority::Bulk);
        let i1 = class("i1", Priority::Interactive);
        agent.wait_for_batches(3).await;
        assert_eq!(agent.batches()[2], vec!["i1"]);
        agent.release.add_permits(10);
        for task in [b1, b2, b3, i1] {
            assert!(task.await.expect("task").is_ok());
        }
        assert_eq!(agent.batches()[3], vec!["b3"]);
    }

    #[tokio::test]
    async fn a_failed_batch_rpc_is_a_transport_error_for_each_request() {
        let agent = FakeAgent::new(|_| Err(Status::unavailable("connection refused")));
        agent.release.add_permits(10);
        let sender = BatchSender::start(agent.clone());
        match sender.send(request(), None, "r").await {
            Err(SendError::Transport(e)) => {
                assert!(e.is_unreachable(), "{e:?}");
                assert_eq!(e.to_string(), "connection refused");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn requests_queued_behind_a_batch_the_link_failed_fail_with_it_unsent() {
        let agent = FakeAgent::new(|_| Err(Status::unavailable("h2 protocol error: ping timeout")));
        let sender = BatchSender::start(agent.clone());
        let (first, second) = fill_both_slots(&agent, &sender).await;
        let waiting: Vec<_> = ["r3", "r4"].iter().map(|id| send(&sender, id)).collect();
        tokio::task::yield_now().await;
        // The first batch fails on the link: the two queued behind it fail too, at once,
        // without a third batch (the second is still held by the agent).
        agent.release.add_permits(1);
        for task in std::iter::once(first).chain(waiting) {
            let answer = tokio::time::timeout(Duration::from_secs(30), task).await;
            match answer.expect("failed, not sent to wait").expect("task") {
                Err(SendError::Transport(e)) => assert!(e.is_unreachable(), "{e:?}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(agent.batches().len(), 2, "nothing more was sent");
        // A request queued after the failure is sent: the link may be back.
        let later = send(&sender, "r5");
        agent.wait_for_batches(3).await;
        assert_eq!(agent.batches()[2], vec!["r5"]);
        agent.release.add_permits(10);
        let _ = (second.await, later.await);
    }

    #[tokio::test]
    async fn an_item_error_is_the_replica_s_answer_and_a_missing_result_says_so() {
        // The agent answers one item, with an error, whatever the batch holds.
        let agent = FakeAgent::new(|_| {
            Ok(InferBatchResponse {
                results: vec![InferResult {
                    result: Some(infer_result::Result::Error(RpcStatus {
                        code: Code::InvalidArgument as i32,
                        message: "bad input".into(),
                    })),
                }],
            })
        });
        let sender = BatchSender::start(agent.clone());
        let (first, second) = fill_both_slots(&agent, &sender).await;
        let (a, b) = (send(&sender, "a"), send(&sender, "b"));
        tokio::task::yield_now().await;
        agent.release.add_permits(10);
        for task in [first, second, a] {
            match task.await.expect("task") {
                Err(SendError::Answer(e)) => {
                    assert_eq!(e.code(), Code::InvalidArgument);
                    assert_eq!(e.to_string(), "bad input");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            b.await.expect("task"),
            Err(SendError::Answer(SchedulerError::ShortAnswer))
        ));
        assert_eq!(agent.batches()[2], vec!["a", "b"]);
    }

    #[test]
    fn batches_stop_at_their_count_and_their_bytes_and_a_large_request_goes_alone() {
        let mut queue: std::collections::VecDeque<usize> =
            [10, 20, BATCH_BYTES - 30, 1, BATCH_BYTES + 5, 3].into();
        let first = queue.pop_front().expect("first");
        let (batch, rest) = gather(first, |n| *n, || queue.pop_front());
        assert_eq!(batch, vec![10, 20, BATCH_BYTES - 30], "exactly the budget");
        assert_eq!(rest, Some(1), "the next starts the next batch");
        let (batch, rest) = gather(1, |n| *n, || queue.pop_front());
        assert_eq!((batch, rest), (vec![1], Some(BATCH_BYTES + 5)));
        let (batch, rest) = gather(BATCH_BYTES + 5, |n| *n, || queue.pop_front());
        assert_eq!((batch, rest), (vec![BATCH_BYTES + 5], Some(3)), "alone");

        let mut many = std::iter::repeat_n(1, 2 * MAX_BATCH);
        let (batch, rest) = gather(1, |n| *n, || many.next());
        assert_eq!((batch.len(), rest), (MAX_BATCH, None));
        assert_eq!(many.count(), MAX_BATCH + 1, "left queued");
    }

    #[tokio::test]
    async fn requests_too_large_together_travel_in_separate_batches() {
        let agent = FakeAgent::new(echo);
        let sender = BatchSender::start(agent.clone());
        let (first, second) = fill_both_slots(&agent, &sender).await;
        // Three of 12 MiB (one buffer, shared) wait: two fit in one batch, not three.
        let tensor = bytes::Bytes::from(vec![0u8; 12 << 20]);
        let rest: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|id| {
                let (sender, tensor) = (sender.clone(), tensor.clone());
                tokio::spawn(async move {
                    let mut request = request();
                    request.raw_input_contents = vec![tensor];
                    sender.send(request, None, id).await
                })
            })
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        agent.release.add_permits(10);
        for task in [first, second].into_iter().chain(rest) {
            assert!(task.await.expect("task").is_ok());
        }
        assert_eq!(&agent.batches()[2..], [vec!["a", "b"], vec!["c"]]);
    }

    #[tokio::test]
    async fn a_caller_that_has_gone_does_not_travel() {
        let agent = FakeAgent::new(echo);
        let sender = BatchSender::start(agent.clone());
        let (first, second) = fill_both_slots(&agent, &sender).await;
        let gone = send(&sender, "gone");
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        let kept = send(&sender, "kept");
        tokio::task::yield_now().await;
        agent.release.add_permits(10);
        assert!(kept.await.expect("task").is_ok());
        let _ = (first.await, second.await);
        assert_eq!(agent.batches()[2], vec!["kept"]);
    }
}
