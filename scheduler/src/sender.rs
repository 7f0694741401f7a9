//! Requests toward one replica travel in batch RPCs: whatever is queued when the
//! sender is free goes together, so there is no added wait at low load. Up to two
//! batches are in flight, so the agent always has the next one while it runs one.

use std::sync::Arc;
use std::time::Duration;

use herd_proto::herd::{infer_result, InferBatchItem, InferBatchRequest};
use herd_proto::inference::{ModelInferRequest, ModelInferResponse};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::Status;

use crate::agent_link::AgentRpc;

/// Why a request failed: the replica's answer (final), or the way there (retryable).
#[derive(Debug)]
pub enum SendError {
    Answer(Status),
    Transport(Status),
}

struct Queued {
    item: InferBatchItem,
    reply: oneshot::Sender<Result<ModelInferResponse, SendError>>,
}

#[derive(Clone)]
pub struct BatchSender {
    tx: mpsc::Sender<Queued>,
}

const MAX_BATCH: usize = 256;
/// Tensor bytes in one batch RPC, well under the agent's message limit.
const MAX_BATCH_BYTES: usize = 32 << 20;
const IN_FLIGHT: usize = 2;

impl BatchSender {
    pub fn start(agent: AgentRpc) -> BatchSender {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(agent, rx));
        BatchSender { tx }
    }

    pub async fn send(
        &self,
        request: ModelInferRequest,
        timeout: Option<Duration>,
    ) -> Result<ModelInferResponse, SendError> {
        let (reply, rx) = oneshot::channel();
        let item = InferBatchItem {
            request: Some(request),
            timeout_us: timeout.map_or(0, |t| t.as_micros().max(1) as u64),
            request_id: String::new(),
        };
        self.tx.send(Queued { item, reply }).await.map_err(|_| {
            SendError::Transport(Status::unavailable("the replica's sender stopped"))
        })?;
        rx.await.map_err(|_| {
            SendError::Transport(Status::unavailable("the replica's sender stopped"))
        })?
    }
}

fn payload(q: &Queued) -> usize {
    q.item
        .request
        .as_ref()
        .map_or(0, |r| r.raw_input_contents.iter().map(|b| b.len()).sum())
}

async fn run(agent: AgentRpc, mut rx: mpsc::Receiver<Queued>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = payload(&first);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(q) => {
                    bytes += payload(&q);
                    batch.push(q);
                }
                Err(_) => break,
            }
        }
        // A caller that has gone does not travel.
        batch.retain(|q| !q.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let mut agent = agent.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // Each item carries its own deadline, which the agent enforces; a timeout
            // on the whole RPC would look like a failed connection.
            let (items, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|q| (q.item, q.reply)).unzip();
            let request = tonic::Request::new(InferBatchRequest { items });
            match agent.infer_batch(request).await {
                Ok(response) => {
                    let mut results = response.into_inner().results.into_iter();
                    for reply in replies {
                        let answer = match results.next().and_then(|r| r.result) {
                            Some(infer_result::Result::Response(r)) => Ok(r),
                            Some(infer_result::Result::Error(e)) => Err(SendError::Answer(
                                Status::new(tonic::Code::from_i32(e.code), e.message),
                            )),
                            None => Err(SendError::Answer(Status::internal(
                                "the agent sent fewer results than requests",
                            ))),
                        };
                        let _ = reply.send(answer);
                    }
                }
                Err(status) => {
                    for reply in replies {
                        let _ = reply.send(Err(SendError::Transport(status.clone())));
                    }
                }
            }
        });
    }
}
