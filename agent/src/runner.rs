//! Runs one loaded model: a task that owns the batch queue and a dedicated thread
//! that owns the ONNX Runtime session. Async code never blocks on inference.
//!
//! A request holds a queue permit from admission until it is answered, so the queue
//! is bounded; when every permit is taken the request is refused at once.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::batch::{concat, split};
use crate::batcher::{BatchQueue, Next, Queued};
use crate::error::AgentError;
use crate::session::Session;
use crate::stats::ModelStats;
use crate::validate::ValidRequest;
use herd_core::tensor::Tensor;

pub type Reply = Result<Vec<Tensor>, AgentError>;

pub struct Pending {
    request: ValidRequest,
    reply: oneshot::Sender<Reply>,
    arrived: Instant,
    _permit: OwnedSemaphorePermit,
}

#[derive(Clone, Copy, Debug)]
pub struct BatchPolicy {
    pub max_batch_size: usize,
    pub max_batch_delay: Duration,
    pub queue_capacity: usize,
}

pub struct Runner {
    model: String,
    tx: mpsc::UnboundedSender<Pending>,
    permits: Arc<Semaphore>,
    capacity: usize,
    stopped: watch::Receiver<bool>,
    /// False once the model thread has ended (its session died).
    alive: Arc<AtomicBool>,
}

struct Job {
    batch: Vec<Pending>,
    done: oneshot::Sender<()>,
}

impl Runner {
    pub fn start(
        model: &str,
        session: Box<dyn Session>,
        policy: BatchPolicy,
        stats: Arc<ModelStats>,
    ) -> Runner {
        let (tx, rx) = mpsc::unbounded_channel();
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
        let (stopped_tx, stopped) = watch::channel(false);
        let worker_stats = stats.clone();
        let thread_model = model.to_string();
        let alive = Arc::new(AtomicBool::new(true));
        let thread_alive = alive.clone();
        let worker = std::thread::Builder::new()
            .name(format!("herd-model-{model}"))
            .spawn(move || {
                work(
                    &thread_model,
                    session,
                    jobs_rx,
                    &worker_stats,
                    &thread_alive,
                );
                thread_alive.store(false, Ordering::Release);
            });
        let actor = Actor {
            model: model.to_string(),
            rx,
            jobs: jobs_tx,
            policy,
        };
        match worker {
            Ok(worker) => {
                tokio::spawn(async move {
                    actor.run().await;
                    // The session is dropped when its thread ends; wait for that, then
                    // hand the freed memory back to the operating system.
                    let _ = tokio::task::spawn_blocking(move || {
                        let _ = worker.join();
                        crate::memory::trim();
                    })
                    .await;
                    let _ = stopped_tx.send(true);
                });
            }
            Err(e) => {
                warn!(model = %model, error = %e, "cannot start model thread");
                alive.store(false, Ordering::Release);
                let _ = stopped_tx.send(true);
            }
        }
        Runner {
            model: model.to_string(),
            tx,
            permits: Arc::new(Semaphore::new(policy.queue_capacity)),
            capacity: policy.queue_capacity,
            stopped,
            alive,
        }
    }

    /// False once the model can no longer run (its session died); the cache then
    /// drops this runner and loads the model afresh.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Queues a validated request; refuses it at once when the queue is full.
    pub fn submit(&self, request: ValidRequest) -> Result<oneshot::Receiver<Reply>, AgentError> {
        let permit =
            self.permits
                .clone()
                .try_acquire_owned()
                .map_err(|_| AgentError::QueueFull {
                    model: self.model.clone(),
                    capacity: self.capacity,
                })?;
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            request,
            reply,
            arrived: Instant::now(),
            _permit: permit,
        };
        self.tx
            .send(pending)
            .map_err(|_| AgentError::Stopped(self.model.clone()))?;
        Ok(rx)
    }

    /// Requests queued or running.
    pub fn queue_len(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    /// Becomes true once the runner has ended and its session is freed; that happens
    /// after the last holder of the runner drops it and queued work is done.
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stopped.clone()
    }
}

struct Actor {
    model: String,
    rx: mpsc::UnboundedReceiver<Pending>,
    jobs: std::sync::mpsc::Sender<Job>,
    policy: BatchPolicy,
}

impl Actor {
    async fn run(mut self) {
        let mut queue: BatchQueue<Pending> = BatchQueue::default();
        let mut running: Option<oneshot::Receiver<()>> = None;
        let mut open = true;
        loop {
            let mut wait = None;
            if running.is_none() {
                // A request whose caller has gone is dropped before it reaches the model.
                queue.retain(|p| !p.reply.is_closed());
                match queue.next(
                    Instant::now(),
                    self.policy.max_batch_size,
                    self.policy.max_batch_delay,
                ) {
                    Next::Run => running = self.dispatch(&mut queue),
                    Next::WaitUntil(t) => wait = Some(t),
                    Next::Idle => {}
                }
            }
            if !open && running.is_none() && queue.is_empty() {
                break;
            }
            tokio::select! {
                _ = finished(&mut running), if running.is_some() => running = None,
                msg = self.rx.recv(), if open => match msg {
                    Some(p) => {
                        push(&mut queue, p);
                        while let Ok(p) = self.rx.try_recv() {
                            push(&mut queue, p);
                        }
                    }
                    None => open = false,
                },
                _ = tokio::time::sleep_until(wait.unwrap_or_else(Instant::now)), if wait.is_some() => {}
            }
        }
        debug!(model = %self.model, "runner stopped");
    }

    fn dispatch(&self, queue: &mut BatchQueue<Pending>) -> Option<oneshot::Receiver<()>> {
        let batch: Vec<Pending> = queue
            .take(self.policy.max_batch_size)
            .into_iter()
            .map(|q| q.item)
            .collect();
        if batch.is_empty() {
            return None;
        }
        let (done, done_rx) = oneshot::channel();
        if let Err(std::sync::mpsc::SendError(job)) = self.jobs.send(Job { batch, done }) {
            for p in job.batch {
                let _ = p.reply.send(Err(AgentError::Stopped(self.model.clone())));
            }
            return None;
        }
        Some(done_rx)
    }
}

fn push(queue: &mut BatchQueue<Pending>, p: Pending) {
    queue.push(Queued {
        key: p.request.key.clone(),
        rows: p.request.rows,
        arrived: p.arrived,
        item: p,
    });
}

async fn finished(running: &mut Option<oneshot::Receiver<()>>) {
    match running {
        Some(rx) => {
            let _ = rx.await;
        }
        None => std::future::pending().await,
    }
}

/// The model thread: runs each batch and answers every request in it.
fn work(
    model: &str,
    mut session: Box<dyn Session>,
    jobs: std::sync::mpsc::Receiver<Job>,
    stats: &ModelStats,
    alive: &AtomicBool,
) {
    for job in jobs {
        let dispatched = Instant::now();
        let rows: Vec<usize> = job.batch.iter().map(|p| p.request.rows).collect();
        let items: usize = rows.iter().sum();
        let inputs: Vec<&[Tensor]> = job
            .batch
            .iter()
            .map(|p| p.request.inputs.as_slice())
            .collect();
        let batched = concat(&inputs);
        let started = std::time::Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| session.run(batched)))
            .unwrap_or_else(|_| Err("the inference engine panicked".to_string()))
            .and_then(|outputs| split(outputs, &rows));
        let compute = started.elapsed();
        stats.record_run(items as u64, compute, result.is_ok());
        // Known dead before anyone hears of the failure, so that a retry loads afresh.
        let dead = !session.is_alive();
        if dead {
            alive.store(false, Ordering::Release);
        }
        match result {
            Ok(per_request) => {
                for (p, outputs) in job.batch.into_iter().zip(per_request) {
                    let selected = p
                        .request
                        .outputs
                        .iter()
                        .map(|&i| outputs[i].clone())
                        .collect();
                    answer(stats, p, dispatched, Ok(selected));
                }
            }
            Err(reason) => {
                warn!(model = %model, items, error = %reason, "batch failed");
                for p in job.batch {
                    let err = AgentError::Inference {
                        model: model.to_string(),
                        reason: reason.clone(),
                    };
                    answer(stats, p, dispatched, Err(err));
                }
            }
        }
        let _ = job.done.send(());
        if dead {
            warn!(model = %model, "model session died; it will be loaded again on the next request");
            return;
        }
    }
}

fn answer(stats: &ModelStats, p: Pending, dispatched: Instant, reply: Reply) {
    let ok = reply.is_ok();
    let queued = dispatched.saturating_duration_since(p.arrived);
    stats.record_request(queued, p.arrived.elapsed(), ok);
    let _ = p.reply.send(reply);
}
