//! Runs one loaded model: a task that owns the batch queue and a dedicated thread
//! that owns the ONNX Runtime session. Async code never blocks on inference.
//!
//! A request holds a queue permit from admission until it is answered, so the queue
//! is bounded; when every permit is taken the request is refused at once. Its span
//! travels with it, and the batch it runs in names it in the logs.
//!
//! A batch that fails inside the model runs again in halves (isolate.rs), so that only
//! the request at fault fails, with words from a run of its own data alone.

mod throttle;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn, Span};

use crate::batch::{concat, split};
use crate::batcher::{BatchQueue, Next, Queued};
use crate::error::{AgentError, BatchError};
use crate::isolate::isolate;
use crate::session::{Session, SessionError};
use crate::stats::ModelStats;
use crate::trace::RequestId;
use crate::validate::ValidRequest;
use herd_core::tensor::Tensor;
use throttle::Throttle;

/// At most one line per model this often about requests that failed; the next one
/// says how many were held back, so that a client sending bad input cannot flood the
/// logs.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(1);

pub type Reply = Result<Vec<Tensor>, AgentError>;

pub struct Pending {
    request: ValidRequest,
    reply: oneshot::Sender<Reply>,
    arrived: Instant,
    _permit: OwnedSemaphorePermit,
    id: RequestId,
    /// The request's span, entered for what happens to it in the queue.
    span: Span,
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

    /// Queues a validated request; refuses it at once when the queue is full. The
    /// current span is the request's: it goes into the queue with it.
    pub fn submit(
        &self,
        request: ValidRequest,
        id: RequestId,
    ) -> Result<oneshot::Receiver<Reply>, AgentError> {
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
            id,
            span: Span::current(),
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
                queue.retain(|p| {
                    let gone = p.reply.is_closed();
                    if gone {
                        p.span
                            .in_scope(|| debug!("caller left; dropped before running"));
                    }
                    !gone
                });
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
    let mut failures = Throttle::new(FAILURE_LOG_EVERY);
    for job in jobs {
        let dispatched = Instant::now();
        let items: usize = job.batch.iter().map(|p| p.request.rows).sum();
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
            |part| run_part(session.as_mut(), part, stats),
            BatchError::blame,
        );
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
    stats.record_run(items as u64, started.elapsed(), result.is_ok());
    if let Err(error) = &result {
        debug!(size = part.len(), items, %error, "run failed");
    }
    result
}

fn answer(stats: &ModelStats, p: Pending, dispatched: Instant, reply: Reply) {
    let ok = reply.is_ok();
    let queued = dispatched.saturating_duration_since(p.arrived);
    stats.record_request(queued, p.arrived.elapsed(), ok);
    // The permit goes back before the answer, so a caller that has its answer finds
    // room for its next request.
    let Pending {
        reply: to_caller,
        _permit,
        ..
    } = p;
    drop(_permit);
    let _ = to_caller.send(reply);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{f32_values, fake_pid, input, FakeLoader};
    use tonic::Code;

    fn runner(fake: &FakeLoader, max_batch_size: usize, queue_capacity: usize) -> Runner {
        let policy = BatchPolicy {
            max_batch_size,
            max_batch_delay: Duration::ZERO,
            queue_capacity,
        };
        Runner::start("m", fake.session(), policy, Arc::default())
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
        let policy = BatchPolicy {
            max_batch_size: 8,
            max_batch_delay: Duration::ZERO,
            queue_capacity: 64,
        };
        let runner = Runner::start("m", fake.session(), policy, stats.clone());
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

    /// Everything the crate logs at debug, from any thread, once a test asks for it.
    fn captured_logs() -> Arc<std::sync::Mutex<Vec<u8>>> {
        static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> =
            std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter("herd_agent=debug")
                .with_ansi(false)
                .with_writer(move || LogSink(sink.clone()))
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
            logs
        })
        .clone()
    }

    struct LogSink(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for LogSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_batch_logs_the_ids_of_its_requests_in_a_batch_span() {
        let logs = captured_logs();
        let fake = FakeLoader::new();
        let gate = fake.gate_runs();
        let runner = runner(&fake, 8, 64);
        let traced = |id: &str, value: f32| {
            let id = RequestId::from_caller(Some(id));
            crate::trace::request_span(&id, "m")
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
        let text =
            String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
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
