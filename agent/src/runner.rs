//! Runs one loaded model: a task that owns the batch queue and a dedicated thread
//! that owns the ONNX Runtime session. Async code never blocks on inference.
//!
//! A request holds a queue permit from admission until it is answered, so the queue
//! is bounded; when every permit is taken the request is refused at once. It holds its
//! input bytes too, against the model's queue budget and the agent's (budget.rs), and a
//! request with a deadline is admitted only when the model can answer it in time
//! (admission.rs). A request whose deadline passes, or whose caller leaves, while it
//! waits is dropped before it reaches the model. Its span travels with it, and the
//! batch it runs in names it in the logs.
//!
//! A batch that fails inside the model runs again in halves (isolate.rs), so that only
//! the request at fault fails, with words from a run of its own data alone.

pub mod admission;
pub mod budget;
mod resize;
mod throttle;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn, Span};

use crate::batch::{concat, split};
use crate::batcher::{BatchQueue, Limit, Next, Queued};
use crate::error::{AgentError, BatchError};
use crate::isolate::isolate;
use crate::session::{Session, SessionError};
use crate::stats::ModelStats;
use crate::trace::RequestId;
use crate::validate::ValidRequest;
use admission::{Ahead, Pace, TooLate};
use budget::{ByteBudget, Held, Scope};
use herd_core::priority::Priority;
use herd_core::tensor::Tensor;
use throttle::Throttle;

/// At most one line per model this often about requests that failed; the next one
/// says how many were held back, so that a client sending bad input cannot flood the
/// logs.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(1);

pub type Reply = Result<Vec<Tensor>, AgentError>;

pub struct Pending {
    request: ValidRequest,
    /// Bytes of input, counted against the budgets.
    bytes: u64,
    reply: oneshot::Sender<Reply>,
    arrived: Instant,
    /// When the caller stops waiting, if it said.
    deadline: Option<Instant>,
    holds: Holds,
    id: RequestId,
    priority: Priority,
    /// The request's span, entered for what happens to it in the queue.
    span: Span,
}

/// What a request holds from admission until its answer: a place in the queue and its
/// bytes in the model's and the agent's budgets.
struct Holds {
    _place: OwnedSemaphorePermit,
    _queue_bytes: Held,
    _agent_bytes: Held,
    /// An interactive request's bytes, counted apart: the work ahead of the next one.
    _interactive: Option<InteractiveBytes>,
}

/// Bytes of interactive requests queued or running; given back on drop.
struct InteractiveBytes {
    bytes: u64,
    held: Arc<AtomicU64>,
}

impl Drop for InteractiveBytes {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The share of a model's queue (places and bytes) bulk requests may fill: the rest is
/// kept for interactive ones, so under overload bulk is refused first.
const BULK_SHARE: f64 = 0.75;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_batch_size: usize,
    pub max_batch_delay: Duration,
    pub queue_capacity: usize,
    /// Bytes of input the model may hold queued or running.
    pub max_queue_bytes: u64,
    /// Bytes of input in one run (a larger request runs alone).
    pub max_batch_bytes: u64,
}

pub struct Runner {
    model: String,
    tx: mpsc::UnboundedSender<Pending>,
    permits: Arc<Semaphore>,
    capacity: AtomicUsize,
    /// The policy now: the actor forms batches by it, admission counts by it.
    policy: watch::Sender<BatchPolicy>,
    /// The model's bytes queued or running.
    queue_bytes: ByteBudget,
    /// Of those, interactive requests' bytes.
    interactive_bytes: Arc<AtomicU64>,
    /// The agent's bytes in flight, all models together.
    agent_bytes: Arc<ByteBudget>,
    work: Arc<Work>,
    stopped: watch::Receiver<bool>,
    /// False once the model thread has ended (its session died).
    alive: Arc<AtomicBool>,
}

/// The model's pace and its running batch, shared by the model thread (which measures)
/// and those who admit requests and form batches.
#[derive(Default)]
struct Work {
    inner: Mutex<WorkState>,
}

#[derive(Default)]
struct WorkState {
    pace: Pace,
    /// The batch running now: when it started and its bytes.
    running: Option<(Instant, u64)>,
}

impl Work {
    fn lock(&self) -> MutexGuard<'_, WorkState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pace(&self) -> Pace {
        self.lock().pace
    }
}

struct Job {
    batch: Vec<Pending>,
    done: oneshot::Sender<()>,
}

impl Runner {
    /// Starts running `model` in `session`; its requests' bytes count against
    /// `agent_bytes` as well as its own queue budget.
    pub fn start(
        model: &str,
        session: Box<dyn Session>,
        policy: BatchPolicy,
        stats: Arc<ModelStats>,
        agent_bytes: Arc<ByteBudget>,
    ) -> Runner {
        let (tx, rx) = mpsc::unbounded_channel();
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
        let (stopped_tx, stopped) = watch::channel(false);
        let worker_stats = stats.clone();
        let thread_model = model.to_string();
        let alive = Arc::new(AtomicBool::new(true));
        let thread_alive = alive.clone();
        let work = Arc::new(Work::default());
        let thread_work = work.clone();
        let worker = std::thread::Builder::new()
            .name(format!("herd-model-{model}"))
            .spawn(move || {
                run_jobs(
                    &thread_model,
                    session,
                    jobs_rx,
                    &worker_stats,
                    &thread_work,
                    &thread_alive,
                );
                thread_alive.store(false, Ordering::Release);
            });
        let (policy_tx, policy_rx) = watch::channel(policy);
        let actor = Actor {
            model: model.to_string(),
            rx,
            jobs: jobs_tx,
            policy: policy_rx,
            work: work.clone(),
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
            capacity: AtomicUsize::new(policy.queue_capacity),
            policy: policy_tx,
            queue_bytes: ByteBudget::new(policy.max_queue_bytes, Scope::Queue),
            interactive_bytes: Arc::default(),
            agent_bytes,
            work,
            stopped,
            alive,
        }
    }

    /// False once the model can no longer run (its session died); the cache then
    /// drops this runner and loads the model afresh.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Queues a validated request that has no deadline; see [`Runner::submit_by`].
    pub fn submit(
        &self,
        request: ValidRequest,
        id: RequestId,
    ) -> Result<oneshot::Receiver<Reply>, AgentError> {
        self.submit_by(request, id, None)
    }

    /// Queues a validated request whose caller waits until `deadline`, if it said.
    /// Refuses it at once when the queue is full, when its bytes would pass the model's
    /// or the agent's budget, or when the work queued ahead of it cannot be done before
    /// its deadline. The current span is the request's: it goes into the queue with it.
    pub fn submit_by(
        &self,
        request: ValidRequest,
        id: RequestId,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<Reply>, AgentError> {
        self.submit_as(request, id, deadline, Priority::Interactive)
    }

    /// As [`Runner::submit_by`], in a class: interactive requests run before every
    /// bulk one queued, and only interactive work counts as ahead of them; bulk ones
    /// are refused once the queue is [`BULK_SHARE`] full, places or bytes.
    pub fn submit_as(
        &self,
        request: ValidRequest,
        id: RequestId,
        deadline: Option<Instant>,
        priority: Priority,
    ) -> Result<oneshot::Receiver<Reply>, AgentError> {
        let bytes = request.input_bytes();
        if priority == Priority::Bulk {
            self.admit_bulk(bytes)?;
        }
        let place =
            self.permits
                .clone()
                .try_acquire_owned()
                .map_err(|_| AgentError::QueueFull {
                    model: self.model.clone(),
                    capacity: self.capacity.load(Ordering::Relaxed),
                })?;
        let now = Instant::now();
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(now);
            self.admit_by_time(bytes, left, now, priority)?;
        }
        let holds = Holds {
            _place: place,
            _queue_bytes: self.queue_bytes.try_take(&self.model, bytes)?,
            _agent_bytes: self.agent_bytes.try_take(&self.model, bytes)?,
            _interactive: (priority == Priority::Interactive).then(|| {
                self.interactive_bytes.fetch_add(bytes, Ordering::AcqRel);
                InteractiveBytes {
                    bytes,
                    held: self.interactive_bytes.clone(),
                }
            }),
        };
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            request,
            bytes,
            reply,
            arrived: now,
            deadline,
            holds,
            id,
            priority,
            span: Span::current(),
        };
        self.tx
            .send(pending)
            .map_err(|_| AgentError::Stopped(self.model.clone()))?;
        Ok(rx)
    }

    /// What [`Runner::submit_by`] would answer now about a request of `bytes` with
    /// `left` before its deadline, as far as the queue's places and the model's pace
    /// decide it, without queueing anything: asked when a request's first bytes arrive,
    /// so that one it would refuse is refused before the rest is read.
    pub fn check_admission(&self, bytes: u64, left: Option<Duration>) -> Result<(), AgentError> {
        if self.permits.available_permits() == 0 {
            return Err(AgentError::QueueFull {
                model: self.model.clone(),
                capacity: self.capacity.load(Ordering::Relaxed),
            });
        }
        match left {
            Some(left) => self.admit_by_time(bytes, left, Instant::now(), Priority::Interactive),
            None => Ok(()),
        }
    }

    /// Refuses a bulk request once the queue's places or bytes are past
    /// [`BULK_SHARE`]: what is left waits for interactive requests.
    fn admit_bulk(&self, bytes: u64) -> Result<(), AgentError> {
        let capacity = self.capacity.load(Ordering::Relaxed);
        let places = (capacity as f64 * BULK_SHARE).ceil() as usize;
        let room = (self.queue_bytes.limit() as f64 * BULK_SHARE) as u64;
        let queued = self.queue_len();
        if queued >= places.max(1) || self.queue_bytes.held().saturating_add(bytes) > room {
            return Err(AgentError::BulkShed {
                model: self.model.clone(),
                queued,
                capacity,
            });
        }
        Ok(())
    }

    /// Refuses a request of `bytes` with `left` before its deadline when the model's
    /// work ahead of it and its own run cannot be done by then, as its pace predicts.
    fn admit_by_time(
        &self,
        bytes: u64,
        left: Duration,
        now: Instant,
        priority: Priority,
    ) -> Result<(), AgentError> {
        let (pace, running) = {
            let work = self.work.lock();
            (work.pace, work.running)
        };
        // An interactive request overtakes every bulk one queued.
        let queued = match priority {
            Priority::Interactive => self.interactive_bytes.load(Ordering::Acquire),
            Priority::Bulk => self.queue_bytes.held(),
        };
        let ahead = Ahead {
            bytes: queued,
            running: running
                .map(|(started, bytes)| (bytes, now.saturating_duration_since(started))),
        };
        admission::admit(&pace, ahead, bytes, left).map_err(|(ahead, own)| {
            AgentError::TooLate(TooLate {
                model: self.model.clone(),
                ahead,
                own,
                left,
            })
        })
    }

    /// Requests queued or running (while a smaller capacity is being taken back, the
    /// places it still owes count too).
    pub fn queue_len(&self) -> usize {
        self.capacity
            .load(Ordering::Relaxed)
            .saturating_sub(self.permits.available_permits())
    }

    /// The batching policy now.
    pub fn policy(&self) -> BatchPolicy {
        *self.policy.borrow()
    }

    /// Applies a new policy to the running model, dropping nothing: the next batch is
    /// formed by it; a smaller queue or byte limit refuses new requests until what is
    /// queued drains below it.
    pub fn set_policy(&self, new: BatchPolicy) {
        let old = self.policy();
        if old == new {
            return;
        }
        if old.queue_capacity != new.queue_capacity {
            resize::resize(&self.permits, old.queue_capacity, new.queue_capacity);
            self.capacity.store(new.queue_capacity, Ordering::Relaxed);
        }
        if old.max_queue_bytes != new.max_queue_bytes {
            self.queue_bytes.resize(new.max_queue_bytes);
        }
        self.policy.send_replace(new);
    }

    /// Bytes of input queued or running.
    pub fn queue_bytes(&self) -> u64 {
        self.queue_bytes.held()
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
    policy: watch::Receiver<BatchPolicy>,
    work: Arc<Work>,
}

impl Actor {
    async fn run(mut self) {
        let mut queue: BatchQueue<Pending> = BatchQueue::default();
        let mut running: Option<oneshot::Receiver<()>> = None;
        let mut open = true;
        let mut policies = true;
        // When an interactive request last came: bulk batches stay short for a while
        // after, since a run cannot be interrupted and the next one waits for it.
        let mut interactive_seen: Option<Instant> = None;
        loop {
            let policy = *self.policy.borrow_and_update();
            let now = Instant::now();
            let limit = batch_limit(
                &policy,
                queue.head_priority(),
                interactive_seen
                    .is_some_and(|t| now.saturating_duration_since(t) < INTERACTIVE_WINDOW),
            );
            // Whatever happens, requests nobody waits for any more leave the queue and
            // give back what they hold.
            self.drop_abandoned(&mut queue, now);
            let mut wait = None;
            if running.is_none() {
                match queue.next(now, limit, policy.max_batch_delay) {
                    Next::Run => running = self.dispatch(&mut queue, limit, now),
                    Next::WaitUntil(t) => wait = Some(t),
                    Next::Idle => {}
                }
            }
            if !open && running.is_none() && queue.is_empty() {
                break;
            }
            // Wake when the next waiting request's deadline passes, to drop it.
            let expiry = queue.iter().filter_map(|p| p.deadline).min();
            let wake = match (wait, expiry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                _ = finished(&mut running), if running.is_some() => running = None,
                msg = self.rx.recv(), if open => match msg {
                    Some(p) => {
                        let mut interactive = p.priority == Priority::Interactive;
                        push(&mut queue, p);
                        while let Ok(p) = self.rx.try_recv() {
                            interactive |= p.priority == Priority::Interactive;
                            push(&mut queue, p);
                        }
                        if interactive {
                            interactive_seen = Some(Instant::now());
                        }
                    }
                    None => open = false,
                },
                _ = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
                // A new policy may run what waits now (a shorter delay, a smaller batch).
                changed = self.policy.changed(), if policies => {
                    // The runner is gone: no more policies; what is queued drains.
                    policies = changed.is_ok();
                }
            }
        }
        debug!(model = %self.model, "runner stopped");
    }

    /// Drops the requests whose caller has gone, and answers those whose deadline has
    /// passed.
    fn drop_abandoned(&self, queue: &mut BatchQueue<Pending>, now: Instant) {
        let expired = |p: &Pending| p.deadline.is_some_and(|d| d <= now);
        let dropped = queue.remove_if(|p| p.reply.is_closed() || expired(p));
        for p in dropped {
            if p.reply.is_closed() {
                p.span
                    .in_scope(|| debug!("caller left; dropped before running"));
            } else {
                refuse(p, AgentError::DeadlineExceeded);
            }
        }
    }

    /// Takes the next batch, less the requests the model's pace says would be answered
    /// after their deadline: running them would only delay the others. Those are
    /// answered at once, the one with the least time left first, until the batch's
    /// predicted run fits every deadline left in it.
    fn dispatch(
        &self,
        queue: &mut BatchQueue<Pending>,
        limit: Limit,
        now: Instant,
    ) -> Option<oneshot::Receiver<()>> {
        let mut batch: Vec<Pending> = queue.take(limit).into_iter().map(|q| q.item).collect();
        let pace = self.work.pace();
        loop {
            let bytes = batch.iter().map(|p| p.bytes).sum();
            let Some(run) = pace.time_for(bytes) else {
                break;
            };
            let late = batch
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((i, p.deadline?.saturating_duration_since(now))))
                .filter(|&(_, left)| left < run)
                .min_by_key(|&(_, left)| left);
            let Some((i, left)) = late else {
                break;
            };
            let error = AgentError::WontFinish {
                model: self.model.clone(),
                left,
                own: run,
            };
            refuse(batch.remove(i), error);
        }
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

/// Answers a queued request with `error` before it runs; what it held goes back first.
fn refuse(p: Pending, error: AgentError) {
    p.span
        .in_scope(|| debug!(%error, "deadline; dropped before running"));
    let Pending { reply, holds, .. } = p;
    drop(holds);
    let _ = reply.send(Err(error));
}

/// How long after an interactive request bulk batches stay short.
const INTERACTIVE_WINDOW: Duration = Duration::from_secs(1);
/// A bulk batch, while interactive requests are about, holds at most this share of the
/// model's batch size: an interactive request that comes while it runs waits for it.
const BULK_BATCH_SHARE: usize = 8;

/// The limit of the next batch: the policy's, or for a bulk batch while interactive
/// requests are about, an eighth of its rows.
fn batch_limit(policy: &BatchPolicy, head: Option<Priority>, interactive_about: bool) -> Limit {
    let rows = match head {
        Some(Priority::Bulk) if interactive_about => {
            (policy.max_batch_size / BULK_BATCH_SHARE).max(1)
        }
        _ => policy.max_batch_size,
    };
    Limit {
        rows,
        bytes: policy.max_batch_bytes,
    }
}

fn push(queue: &mut BatchQueue<Pending>, p: Pending) {
    queue.push(Queued {
        key: p.request.key.clone(),
        priority: p.priority,
        rows: p.request.rows,
        bytes: p.bytes,
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
fn run_jobs(
    model: &str,
    mut session: Box<dyn Session>,
    jobs: std::sync::mpsc::Receiver<Job>,
    stats: &ModelStats,
    work: &Work,
    alive: &AtomicBool,
) {
    let mut failures = Throttle::new(FAILURE_LOG_EVERY);
    for job in jobs {
        let dispatched = Instant::now();
        let items: usize = job.batch.iter().map(|p| p.request.rows).sum();
        let bytes: u64 = job.batch.iter().map(|p| p.bytes).sum();
        {
            let mut work = work.lock();
            work.running = Some((dispatched, bytes));
            work.pace.record_batch(bytes);
        }
        let requests = job
            .batch
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let span = tracing::info_span!("batch", model = %model, size = job.batch.len(), items);
        for p in &job.batch {
            span.follows_from(&p.span);
        }
        let _entered = span.enter();
        debug!(%requests, size = job.batch.len(), items, "batch running");
        let results = isolate(
            &job.batch,
            |part| run_part(session.as_mut(), part, stats, work),
            BatchError::blame,
        );
        work.lock().running = None;
        let died = results.iter().find_map(|r| match r {
            Err(BatchError::Session(e)) if e.ends_session() => Some(e.clone()),
            _ => None,
        });
        // Known dead before anyone hears of the failure, so that a retry loads afresh.
        if died.is_some() {
            alive.store(false, Ordering::Release);
        }
        for (p, result) in job.batch.into_iter().zip(results) {
            match result {
                Ok(outputs) => {
                    let selected = p
                        .request
                        .outputs
                        .iter()
                        .map(|&i| outputs[i].clone())
                        .collect();
                    answer(stats, p, dispatched, Ok(selected));
                }
                Err(reason) => {
                    // A death is logged once below, not per request.
                    let fatal = matches!(&reason, BatchError::Session(e) if e.ends_session());
                    if !fatal {
                        if let Some(suppressed) = failures.admit(Instant::now()) {
                            warn!(model = %model, request = %p.id, error = %reason, suppressed, "request failed");
                        }
                    }
                    let err = AgentError::Inference {
                        model: model.to_string(),
                        reason,
                    };
                    answer(stats, p, dispatched, Err(err));
                }
            }
        }
        let _ = job.done.send(());
        if let Some(error) = died {
            warn!(model = %model, %requests, %error, "model session died; it will be loaded again on the next request");
            return;
        }
    }
}

/// One run of some of a batch's requests: their inputs stacked, the outputs split
/// back. Every run counts in the model's statistics, re-runs included.
fn run_part(
    session: &mut dyn Session,
    part: &[Pending],
    stats: &ModelStats,
    work: &Work,
) -> Result<Vec<Vec<Tensor>>, BatchError> {
    let rows: Vec<usize> = part.iter().map(|p| p.request.rows).collect();
    let items: usize = rows.iter().sum();
    let inputs: Vec<&[Tensor]> = part.iter().map(|p| p.request.inputs.as_slice()).collect();
    let batched = concat(&inputs);
    let started = std::time::Instant::now();
    let result: Result<_, BatchError> =
        std::panic::catch_unwind(AssertUnwindSafe(|| session.run(batched)))
            .unwrap_or_else(|_| {
                Err(SessionError::Failed(
                    "the inference engine panicked".to_string(),
                ))
            })
            .map_err(BatchError::from)
            .and_then(|outputs| Ok(split(outputs, &rows)?));
    let took = started.elapsed();
    stats.record_run(items as u64, took, result.is_ok());
    if result.is_ok() {
        let bytes = part.iter().map(|p| p.bytes).sum();
        work.lock().pace.record(bytes, took);
    }
    if let Err(error) = &result {
        debug!(size = part.len(), items, %error, "run failed");
    }
    result
}

fn answer(stats: &ModelStats, p: Pending, dispatched: Instant, reply: Reply) {
    let ok = reply.is_ok();
    let queued = dispatched.saturating_duration_since(p.arrived);
    stats.record_request(queued, p.arrived.elapsed(), ok);
    // What it holds goes back before the answer, so a caller that has its answer finds
    // room for its next request.
    let Pending {
        reply: to_caller,
        holds,
        ..
    } = p;
    drop(holds);
    let _ = to_caller.send(reply);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{f32_values, fake_pid, input, FakeLoader};
    use tonic::Code;

    fn policy(max_batch_size: usize, queue_capacity: usize) -> BatchPolicy {
        BatchPolicy {
            max_batch_size,
            max_batch_delay: Duration::ZERO,
            queue_capacity,
            max_queue_bytes: u64::MAX,
            max_batch_bytes: u64::MAX,
        }
    }

    fn unlimited() -> Arc<ByteBudget> {
        Arc::new(ByteBudget::new(u64::MAX, Scope::Agent))
    }

    fn runner(fake: &FakeLoader, max_batch_size: usize, queue_capacity: usize) -> Runner {
        let policy = policy(max_batch_size, queue_capacity);
        Runner::start("m", fake.session(), policy, Arc::default(), unlimited())
    }

    fn request(rows: usize, value: f32) -> ValidRequest {
        ValidRequest {
            inputs: vec![input(rows, value)],
            rows,
            key: vec![vec![4]],
            outputs: vec![0],
        }
    }

    fn submit(runner: &Runner, rows: usize, value: f32) -> oneshot::Receiver<Reply> {
        runner
            .submit(request(rows, value), RequestId::generate())
            .expect("queued")
    }

    /// The reply, reading a request dropped unanswered as the service does: stopped.
    async fn answer(rx: oneshot::Receiver<Reply>) -> Reply {
        rx.await
            .unwrap_or_else(|_| Err(AgentError::Stopped("m".into())))
    }

    #[tokio::test]
    async fn requests_that_arrive_while_a_batch_runs_form_the_next_batch() {
        let fake = FakeLoader::new();
        let gate = fake.gate_runs();
        let runner = runner(&fake, 8, 64);
        let first = submit(&runner, 1, 1.0);
        gate.reached(1).await;
        let waiting: Vec<_> = [(2, 2.0), (1, 3.0), (3, 4.0)]
            .into_iter()
            .map(|(rows, value)| (rows, value, submit(&runner, rows, value)))
            .collect();
        assert_eq!(runner.queue_len(), 4, "one running, three queued");
        gate.open();
        let out = answer(first).await.expect("first runs");
        assert_eq!(f32_values(&out[0]), vec![2.0; 4]);
        for (rows, value, rx) in waiting {
            let out = answer(rx).await.expect("batched request runs");
            assert_eq!(out[0].shape, vec![rows as i64, 4]);
            assert_eq!(
                f32_values(&out[0]),
                vec![value * 2.0; rows * 4],
                "each caller gets its own rows back"
            );
        }
        assert_eq!(fake.batches(), vec![1, 6], "the three waiting ran together");
    }

    #[tokio::test]
    async fn a_batch_never_exceeds_the_max_batch_size() {
        let fake = FakeLoader::new();
        let gate = fake.gate_runs();
        let runner = runner(&fake, 4, 64);
        let first = submit(&runner, 1, 0.0);
        gate.reached(1).await;
        let rest: Vec<_> = (0..5).map(|i| submit(&runner, 2, i as f32)).collect();
        gate.open();
        answer(first).await.expect("runs");
        for rx in rest {
            answer(rx).await.expect("runs");
        }
        assert_eq!(fake.batches(), vec![1, 4, 4, 2]);
    }

    #[tokio::test]
    async fn a_dead_session_fails_its_batch_clearly_and_takes_no_more_work() {
        let fake = FakeLoader::new();
        let runner = runner(&fake, 8, 64);
        fake.die_on_next_run();
        let err = answer(submit(&runner, 1, 1.0))
            .await
            .expect_err("its worker died");
        assert_eq!(err.code(), Code::Unavailable, "callers retry a dead worker");
        assert!(
            matches!(
                &err,
                AgentError::Inference {
                    reason: BatchError::Session(SessionError::WorkerDied { .. }),
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "model 'm' failed to run: the model worker (pid {}) died: killed by the test",
                fake_pid()
            )
        );
        assert!(
            !runner.is_alive(),
            "known dead once the failure is answered"
        );
        let later = answer(submit(&runner, 1, 2.0))
            .await
            .expect_err("a dead runner runs nothing");
        assert!(matches!(later, AgentError::Stopped(_)), "{later:?}");
        let mut stopped = runner.stopped();
        drop(runner);
        stopped.wait_for(|s| *s).await.expect("the runner stops");
        fake.live_sessions(0).await;
    }

    #[tokio::test]
    async fn a_failed_run_fails_only_its_batch() {
        let fake = FakeLoader::new();
        let runner = runner(&fake, 8, 64);
        fake.fail_next_run("the engine refused this batch");
        let err = answer(submit(&runner, 1, 1.0)).await.expect_err("fails");
        assert_eq!(
            err.to_string(),
            "model 'm' failed to run: the engine refused this batch"
        );
        assert!(runner.is_alive());
        let out = answer(submit(&runner, 1, 1.0)).await.expect("runs again");
        assert_eq!(f32_values(&out[0]), vec![2.0; 4]);
    }

    #[tokio::test]
    async fn a_request_that_fails_inside_the_model_fails_alone_and_its_batch_runs() {
        let fake = FakeLoader::new();
        fake.refuse_negative_values();
        let gate = fake.gate_runs();
        let stats = Arc::new(ModelStats::default());
        let runner = Runner::start(
            "m",
            fake.session(),
            policy(8, 64),
            stats.clone(),
            unlimited(),
        );
        let first = submit(&runner, 1, 0.0);
        gate.reached(1).await;
        let values = [1.0, 2.0, -3.0, 4.0];
        let waiting: Vec<_> = values.map(|v| (v, submit(&runner, 1, v))).into();
        gate.open();
        answer(first).await.expect("runs");
        for (v, rx) in waiting {
            match answer(rx).await {
                Ok(out) => assert_eq!(f32_values(&out[0]), vec![v * 2.0; 4]),
                Err(err) => {
                    assert_eq!(v, -3.0, "only the poisoned request fails: {err}");
                    assert_eq!(err.code(), Code::InvalidArgument, "its own fault");
                    assert_eq!(
                        err.to_string(),
                        "model 'm' failed to run: value -3 is out of range"
                    );
                }
            }
        }
        assert_eq!(
            fake.batches(),
            vec![1, 4, 2, 2, 1, 1],
            "the failed batch ran again in halves"
        );
        let c = stats.lock();
        assert_eq!(
            (c.execution_count, c.inference_count),
            (3, 4),
            "each successful run counts, re-runs included; the failed ones ran nothing"
        );
        assert_eq!((c.success.count, c.fail.count), (4, 1));
        assert!(runner.is_alive());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_a_permit_frees_on_answer() {
        let fake = FakeLoader::new();
        let gate = fake.gate_runs();
        let runner = runner(&fake, 8, 2);
        let first = submit(&runner, 1, 0.0);
        gate.reached(1).await;
        let second = submit(&runner, 1, 0.0);
        let refused = runner
            .submit(request(1, 0.0), RequestId::generate())
            .expect_err("two is the limit");
        assert!(
            matches!(refused, AgentError::QueueFull { capacity: 2, .. }),
            "{refused:?}"
        );
        gate.open();
        answer(first).await.expect("runs");
        answer(second).await.expect("runs");
        assert_eq!(runner.queue_len(), 0);
        answer(submit(&runner, 1, 0.0)).await.expect("room again");
    }

    #[tokio::test]
    async fn a_new_policy_applies_to_the_next_batch_and_drops_nothing_queued() {
        let fake = FakeLoader::new();
        let gate = fake.gate_runs();
        let runner = runner(&fake, 8, 4);
        let first = submit(&runner, 1, 1.0);
        gate.reached(1).await;
        let queued: Vec<_> = (0..3).map(|_| submit(&runner, 1, 1.0)).collect();
        // Smaller batches and a smaller queue while four requests are in.
        runner.set_policy(BatchPolicy {
            max_batch_size: 2,
            queue_capacity: 2,
            ..runner.policy()
        });
        assert!(
            matches!(
                runner.submit(request(1, 0.0), RequestId::generate()),
                Err(AgentError::QueueFull { capacity: 2, .. })
            ),
            "the smaller queue refuses at once"
        );
        gate.open();
        answer(first).await.expect("runs");
        for rx in queued {
            answer(rx).await.expect("nothing queued is dropped");
        }
        assert_eq!(
            fake.batches(),
            vec![1, 2, 1],
            "batches of at most 2 from now on"
        );
        // Larger again: room for four, in one batch.
        runner.set_policy(BatchPolicy {
            max_batch_size: 8,
            queue_capacity: 4,
            ..runner.policy()
        });
        let gate = fake.gate_runs();
        let first = submit(&runner, 1, 1.0);
        gate.reached(1).await;
        let more: Vec<_> = (0..3).map(|_| submit(&runner, 1, 1.0)).collect();
        gate.open();
        answer(first).await.expect("runs");
        for rx in more {
            answer(rx).await.expect("runs");
        }
        assert_eq!(fake.batches()[3..], [1, 3]);
    }

    fn submit_class(runner: &Runner, value: f32, priority: Priority) -> oneshot::Receiver<Reply> {
        runner
            .submit_as(request(1, value), RequestId::generate(), None, priority)
            .expect("queued")
    }

    #[test]
    fn bulk_batches_are_short_while_interactive_requests_are_about() {
        let p = policy(32, 64);
        let rows = |head, about| batch_limit(&p, head, about).rows;
        assert_eq!(rows(Some(Priority::Bulk), false), 32);
        assert_eq!(rows(Some(Priority::Bulk), true), 4);
        assert_eq!(rows(Some(Priority::Interactive), true), 32);
        assert_eq!(
            batch_limit(&policy(4, 64), Some(Priority::Bulk), true).rows,
            1
        );
    }

    #[tokio::test]
    async fn an_interactive_request_overtakes_the_bulk_ones_queued() {
        let fake = FakeLoader::new();
        let gate = fake.gate_runs();
        let runner = runner(&fake, 1, 64);
        let running = submit_class(&runner, 0.0, Priority::Bulk);
        gate.reached(1).await;
        let bulk: Vec<_> = (1..=3)
            .map(|i| submit_class(&runner, i as f32, Priority::Bulk))
            .collect();
        let interactive = submit_class(&runner, 9.0, Priority::Interactive);
        gate.open();
        let out = answer(interactive).await.expect("runs");
        assert_eq!(f32_values(&out[0]), vec![18.0; 4]);
        for rx in std::iter::once(running).chain(bulk) {
            answer(rx).await.expect("bulk runs too");
        }
        assert_eq!(
            fake.run_values(),
            vec![0.0, 9.0, 1.0, 2.0, 3.0],
            "the interactive one ran right after the batch that was running"
        );
    }

    #[tokio::test]
    async fn bulk_is_refused_first_the_last_quarter_of_the_queue_is_kept_for_interactive() {
        let fake = FakeLoader::new();
        let gate = fake.gate_runs();
        let runner = runner(&fake, 8, 4);
        let first = submit_class(&runner, 0.0, Priority::Bulk);
        gate.reached(1).await;
        let more: Vec<_> = (0..2)
            .map(|_| submit_class(&runner, 0.0, Priority::Bulk))
            .collect();
        let refused = runner
            .submit_as(request(1, 0.0), RequestId::generate(), None, Priority::Bulk)
            .expect_err("three of four places taken");
        assert!(
            matches!(
                refused,
                AgentError::BulkShed {
                    queued: 3,
                    capacity: 4,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert_eq!(refused.code(), Code::ResourceExhausted);
        let interactive = submit_class(&runner, 0.0, Priority::Interactive);
        gate.open();
        for rx in std::iter::once(first).chain(more).chain([interactive]) {
            answer(rx).await.expect("runs");
        }
    }

    #[tokio::test]
    async fn a_request_whose_caller_left_never_runs() {
        let fake = FakeLoader::new();
        let gate = fake.gate_runs();
        let runner = runner(&fake, 1, 8);
        let first = submit(&runner, 1, 0.0);
        gate.reached(1).await;
        drop(submit(&runner, 1, 5.0));
        let kept = submit(&runner, 1, 1.0);
        gate.open();
        answer(first).await.expect("runs");
        let out = answer(kept).await.expect("runs");
        assert_eq!(f32_values(&out[0]), vec![2.0; 4]);
        assert_eq!(
            fake.batches(),
            vec![1, 1],
            "the abandoned request never ran"
        );
    }

    /// 64 rows of 4 floats: one KiB, what the budgets count in.
    const KIB_ROWS: usize = 64;

    #[tokio::test]
    async fn a_model_queue_holds_its_budget_of_bytes_and_refuses_past_it() {
        let fake = FakeLoader::new();
        let gate = fake.gate_runs();
        let policy = BatchPolicy {
            max_queue_bytes: 3 << 10,
            ..policy(1024, 64)
        };
        let runner = Runner::start("m", fake.session(), policy, Arc::default(), unlimited());
        let first = submit(&runner, KIB_ROWS, 1.0);
        gate.reached(1).await;
        let queued: Vec<_> = (0..2).map(|_| submit(&runner, KIB_ROWS, 1.0)).collect();
        assert_eq!(runner.queue_bytes(), 3 << 10);
        let refused = runner
            .submit(request(KIB_ROWS, 1.0), RequestId::generate())
            .expect_err("a fourth KiB passes the budget");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert_eq!(
            refused.to_string(),
            "model 'm' holds 3.0 KiB of requests queued or running; this one's 1.0 KiB would \
             pass its limit of 3.0 KiB (max_queue_bytes in the model's herd.toml); try again later"
        );
        let too_large = runner
            .submit(request(4 * KIB_ROWS, 1.0), RequestId::generate())
            .expect_err("larger than the whole budget");
        assert!(
            too_large
                .to_string()
                .contains("is more than the model's whole queue limit of 3.0 KiB"),
            "{too_large}"
        );
        gate.open();
        answer(first).await.expect("runs");
        for rx in queued {
            answer(rx).await.expect("runs");
        }
        assert_eq!(runner.queue_bytes(), 0, "answered requests hold nothing");
        answer(submit(&runner, KIB_ROWS, 1.0))
            .await
            .expect("room again");
    }

    #[tokio::test]
    async fn the_agents_budget_is_shared_by_its_models() {
        let fake = FakeLoader::new();
        let gate = fake.gate_runs();
        let agent = Arc::new(ByteBudget::new(2 << 10, Scope::Agent));
        let start = |name| {
            Runner::start(
                name,
                fake.session(),
                policy(1024, 64),
                Arc::default(),
                agent.clone(),
            )
        };
        let (a, b) = (start("a"), start("b"));
        let running_a = submit(&a, KIB_ROWS, 1.0);
        let running_b = submit(&b, KIB_ROWS, 1.0);
        gate.reached(2).await;
        let refused = a
            .submit(request(KIB_ROWS, 1.0), RequestId::generate())
            .expect_err("the agent holds its 2 KiB");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert_eq!(
            refused.to_string(),
            "model 'a': the agent holds 2.0 KiB of requests in flight; this one's 1.0 KiB \
             would pass its limit of 2.0 KiB (--max-in-flight-bytes of the agent); try again later"
        );
        gate.open();
        answer(running_a).await.expect("runs");
        answer(running_b).await.expect("runs");
        assert_eq!(agent.held(), 0);
        answer(submit(&b, KIB_ROWS, 1.0)).await.expect("room again");
    }

    #[tokio::test]
    async fn a_batch_stops_at_its_byte_budget() {
        let fake = FakeLoader::new();
        let gate = fake.gate_runs();
        let policy = BatchPolicy {
            max_batch_bytes: 2 << 10,
            ..policy(1024, 64)
        };
        let runner = Runner::start("m", fake.session(), policy, Arc::default(), unlimited());
        let first = submit(&runner, KIB_ROWS, 1.0);
        gate.reached(1).await;
        let rest: Vec<_> = (0..4).map(|_| submit(&runner, KIB_ROWS, 1.0)).collect();
        let large = submit(&runner, 3 * KIB_ROWS, 1.0);
        gate.open();
        answer(first).await.expect("runs");
        for rx in rest {
            answer(rx).await.expect("runs");
        }
        answer(large)
            .await
            .expect("a request over the budget runs alone");
        assert_eq!(
            fake.batches(),
            vec![KIB_ROWS, 2 * KIB_ROWS, 2 * KIB_ROWS, 3 * KIB_ROWS]
        );
    }

    /// Tells the runner that a run of one `request(1, _)` takes `took`.
    fn set_pace(runner: &Runner, took: Duration) {
        runner.work.lock().pace = Default::default();
        runner
            .work
            .lock()
            .pace
            .record(request(1, 0.0).input_bytes(), took);
    }

    fn submit_by(
        runner: &Runner,
        deadline: Duration,
    ) -> Result<oneshot::Receiver<Reply>, AgentError> {
        runner.submit_by(
            request(1, 1.0),
            RequestId::generate(),
            Some(Instant::now() + deadline),
        )
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_answered_by_its_deadline_is_refused_at_once() {
        let fake = FakeLoader::new();
        let gate = fake.gate_runs();
        let runner = runner(&fake, 1, 64);
        let minute = Duration::from_secs(60);
        let first = submit_by(&runner, minute).expect("nothing measured yet: admitted");
        // Each request takes 10 s: within 80% of a minute, the one running and three
        // more; the fifth would finish after 50 s.
        set_pace(&runner, Duration::from_secs(10));
        gate.reached(1).await;
        let mut admitted = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..10 {
            match submit_by(&runner, minute) {
                Ok(rx) => admitted.push(rx),
                Err(e) => refused.push(e),
            }
        }
        assert_eq!((admitted.len(), refused.len()), (3, 7));
        for e in &refused {
            assert_eq!(e.code(), Code::ResourceExhausted);
            let message = e.to_string();
            assert!(
                message.starts_with("model 'm' cannot answer within the ")
                    && message.contains(
                        "ms of work is queued ahead of it and its batch takes about 10000 ms"
                    )
                    && message.ends_with("retry later or with a longer deadline"),
                "{message}"
            );
        }
        let patient = submit(&runner, 1, 2.0);
        gate.open();
        answer(first).await.expect("runs");
        for rx in admitted {
            answer(rx).await.expect("admitted, answered");
        }
        answer(patient)
            .await
            .expect("without a deadline, only counted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_whose_deadline_passes_is_answered_before_it_runs() {
        let fake = FakeLoader::new();
        let gate = fake.gate_runs();
        let runner = runner(&fake, 1, 64);
        let first = submit(&runner, 1, 0.0);
        gate.reached(1).await;
        let late = submit_by(&runner, Duration::from_millis(50)).expect("admitted");
        let kept = submit(&runner, 1, 1.0);
        // The model is busy; the deadline passes while the request waits.
        let err = answer(late).await.expect_err("expired");
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
        assert_eq!(runner.queue_len(), 2, "what it held is given back");
        gate.open();
        answer(first).await.expect("runs");
        answer(kept).await.expect("runs");
        assert_eq!(fake.batches(), vec![1, 1], "the expired request never ran");
    }

    #[tokio::test]
    async fn a_queued_request_that_cannot_finish_in_time_is_answered_before_it_runs() {
        let fake = FakeLoader::new();
        let gate = fake.gate_runs();
        let runner = runner(&fake, 1, 64);
        let first = submit(&runner, 1, 0.0);
        gate.reached(1).await;
        let doomed = submit_by(&runner, Duration::from_secs(30)).expect("admitted");
        // Measured since: a run takes 100 s (the real runs after it, about none, only
        // bring that down to 75 s).
        set_pace(&runner, Duration::from_secs(100));
        gate.open();
        answer(first).await.expect("runs");
        let err = answer(doomed).await.expect_err("cannot finish");
        assert_eq!(err.code(), Code::DeadlineExceeded);
        assert!(err.to_string().contains("dropped before running"), "{err}");
        assert_eq!(fake.batches(), vec![1]);
    }

    #[tokio::test]
    async fn a_batch_logs_the_ids_of_its_requests_in_a_batch_span() {
        let logs = crate::fake::captured_logs();
        let fake = FakeLoader::new();
        let gate = fake.gate_runs();
        let runner = runner(&fake, 8, 64);
        let traced = |id: &str, value: f32| {
            let id = RequestId::from_caller(Some(id));
            crate::trace::request_span(&id, "m", Priority::Interactive)
                .in_scope(|| runner.submit(request(1, value), id))
                .expect("queued")
        };
        let first = traced("log-first", 0.0);
        gate.reached(1).await;
        let (a, b) = (traced("log-a", 1.0), traced("log-b", 2.0));
        drop(traced("log-gone", 3.0));
        gate.open();
        for rx in [first, a, b] {
            answer(rx).await.expect("runs");
        }
        let text = crate::fake::logged(&logs);
        let line = text
            .lines()
            .find(|l| l.contains("requests=log-a,log-b"))
            .unwrap_or_else(|| panic!("no batch line names both requests:\n{text}"));
        assert!(
            line.contains("batch{model=m size=2 items=2}") && line.contains("batch running"),
            "{line}"
        );
        let gone = text
            .lines()
            .find(|l| l.contains("request_id=log-gone"))
            .unwrap_or_else(|| panic!("the dropped request is not logged:\n{text}"));
        assert!(gone.contains("dropped before running"), "{gone}");
    }
}
