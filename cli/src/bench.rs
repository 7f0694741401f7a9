//! `herd bench`: the project's load generator, in the spirit of Triton's perf_analyzer.
//!
//! - Closed loop (`--concurrency 1,8,64`): each of N workers sends its next request as
//!   soon as the previous one is answered.
//! - Open loop (`--rate 500`): requests start on a fixed schedule whatever the answers
//!   do, and each latency counts from the request's *scheduled* start, so a stalled
//!   server shows up in the tail instead of hiding behind requests never sent
//!   (coordinated omission).
//!
//! Each step warms up, then measures for `--duration`. `--local` runs the same
//! measurement against ONNX Runtime in-process, the physical limit.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use herd_agent::{Loader, OrtRuntime};
use herd_core::{ModelFiles, ModelSettings, Tensor};
use herd_proto::inference::model_metadata_response::TensorMetadata;
use herd_proto::inference::{ModelInferRequest, ModelMetadataResponse};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::connect::ConnectArgs;
use crate::inputs::{load_inputs, random_request, InputSource};
use herd_client::error::code_name;
use herd_client::Client;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchConfig {
    /// The model to load.
    pub model: String,

    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Closed loop: concurrency levels to sweep, e.g. 1,8,64. Each worker sends its next
    /// request when the previous one is answered. Default 1,8,64 unless --rate is given.
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,

    /// Open loop: requests per second to send on a fixed schedule, e.g. 500 or 100,500
    /// to sweep. Latencies count from each request's scheduled start.
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,

    /// How long each step measures ("5s", "500ms").
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Unmeasured load before each step.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Items per request along the batch dimension (random inputs).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,

    /// The requests' class: interactive (served first) or bulk (refused first under
    /// overload). Sent as KServe's `priority` parameter (1 or 2).
    #[arg(long, default_value = "interactive", value_parser = ["interactive", "bulk"])]
    pub priority: String,

    /// Shape of an input with dynamic dimensions, NAME=D0,D1,... (repeat per input). For
    /// a model that batches, D0 is the batch: write -1 or 1; it follows --batch (and
    /// each --local-batch).
    #[arg(long = "shape", value_parser = parse_shape)]
    pub shapes: Vec<(String, Vec<i64>)>,

    /// Send this input instead of random values: NAME=FILE.npy, NAME=FILE.json or
    /// NAME=[...] (repeat per input; the batch is the files' first dimension).
    #[arg(long = "input", short = 'i', value_name = "NAME=FILE")]
    pub inputs: Vec<InputSource>,

    /// Run ONNX Runtime in-process on this .onnx file instead of calling a server.
    #[arg(long)]
    pub local: Option<PathBuf>,

    /// Batch sizes to sweep with --local (default: --batch).
    #[arg(long, value_delimiter = ',')]
    pub local_batch: Vec<usize>,

    /// Run --local on this GPU (NVML index) through ONNX Runtime's CUDA execution
    /// provider. Needs its GPU build (scripts/setup.sh on a machine with an NVIDIA
    /// driver) and LD_LIBRARY_PATH=.cache/onnxruntime-gpu/cuda.
    #[arg(long, value_name = "N", requires = "local")]
    pub local_gpu: Option<u32>,

    /// libonnxruntime.so for --local (default as for `herd agent`).
    #[arg(long, env = "HERD_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,

    /// ONNX Runtime intra-op threads for --local; 0 lets ONNX Runtime choose.
    #[arg(long, default_value_t = 0)]
    pub intra_op_threads: usize,

    /// Print one JSON object per step instead of a table (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

fn parse_shape(s: &str) -> Result<(String, Vec<i64>), String> {
    let (name, dims) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=D0,D1,..."))?;
    let dims = dims
        .split(',')
        .map(|d| d.trim().parse::<i64>().map_err(|e| format!("{s:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), dims))
}

/// One step's figures. Latencies are microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub target: String,
    pub model: String,
    /// Closed-loop workers; null for open-loop steps.
    pub concurrency: Option<usize>,
    /// Open-loop request rate; null for closed-loop steps.
    pub rate: Option<f64>,
    pub batch: usize,
    /// Requests answered successfully during the step.
    pub requests: u64,
    pub throughput_rps: f64,
    pub items_per_s: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub errors: u64,
    /// Failed requests by gRPC code ("UNAVAILABLE").
    pub errors_by_code: BTreeMap<String, u64>,
    /// Items per model run on the server during the step (from ModelStatistics).
    pub server_mean_batch: Option<f64>,
}

/// The load a step applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    Closed { concurrency: usize },
    Open { rate: f64 },
}

impl BenchConfig {
    /// The steps to run: the concurrency sweep, then the rates.
    pub fn loads(&self) -> Vec<Load> {
        let mut loads: Vec<Load> = self
            .concurrency
            .iter()
            .map(|&concurrency| Load::Closed { concurrency })
            .collect();
        loads.extend(self.rate.iter().map(|&rate| Load::Open { rate }));
        if loads.is_empty() {
            loads = [1, 8, 64]
                .into_iter()
                .map(|concurrency| Load::Closed { concurrency })
                .collect();
        }
        loads
    }
}

pub async fn run(config: BenchConfig) -> anyhow::Result<()> {
    if config.concurrency.contains(&0) {
        bail!("--concurrency levels must be at least 1");
    }
    if config.rate.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
        bail!("--rate must be a positive number of requests per second");
    }
    if config.batch == 0 || config.local_batch.contains(&0) {
        bail!("--batch and --local-batch must be at least 1");
    }
    if !config.json {
        print_table_header();
    }
    let print = |r: &StepReport| print_report(r, config.json);
    match &config.local {
        Some(path) => bench_local(&config, path, print).await,
        None => bench_server(&config, print).await,
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

#[derive(Default)]
struct Counters {
    done: AtomicU64,
    errors: AtomicU64,
}

struct Outcome {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            latency: new_histogram(),
            errors: BTreeMap::new(),
        }
    }

    fn record(&mut self, result: Result<(), tonic::Code>, latency: Duration, counters: &Counters) {
        match result {
            Ok(()) => {
                self.latency
                    .saturating_record(latency.as_micros().max(1) as u64);
                counters.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(code) => {
                *self.errors.entry(code_name(code).to_string()).or_default() += 1;
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn merge(&mut self, other: Outcome) {
        let _ = self.latency.add(&other.latency);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }
}

/// A progress bar on stderr for one step, hidden when stderr is not a terminal or the
/// output is JSON, so that stdout stays clean for scripts.
struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(json: bool, label: String, length: Duration, counters: Arc<Counters>) -> Progress {
        let target = if json || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(length.as_millis() as u64), target);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>14} [{bar:30}] {elapsed:>3} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(label);
        let ticker = {
            let bar = bar.clone();
            let started = Instant::now();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    bar.set_position(started.elapsed().as_millis() as u64);
                    let (done, errors) = (
                        counters.done.load(Ordering::Relaxed),
                        counters.errors.load(Ordering::Relaxed),
                    );
                    bar.set_message(if errors == 0 {
                        format!("{done} req")
                    } else {
                        format!("{done} req, {errors} errors")
                    });
                }
            })
        };
        Progress { bar, ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

fn label(load: Load) -> String {
    match load {
        Load::Closed { concurrency } => format!("concurrency {concurrency}"),
        Load::Open { rate } => format!("{rate} req/s"),
    }
}

/// Runs one phase (warm-up or measurement) of a step with a progress bar.
async fn phase(
    config: &BenchConfig,
    clients: &[Client],
    request: &ModelInferRequest,
    load: Load,
    duration: Duration,
    what: &str,
) -> (Outcome, Duration) {
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(
        config.json,
        format!("{what}{}", label(load)),
        duration,
        counters.clone(),
    );
    let started = Instant::now();
    let outcome = match load {
        Load::Closed { concurrency } => {
            closed_loop(clients, request, concurrency, duration, counters).await
        }
        Load::Open { rate } => open_loop(clients, request, rate, duration, counters).await,
    };
    let elapsed = started.elapsed();
    progress.finish();
    (outcome, elapsed)
}

/// The request to send: from `--input` files when given, else random of `batch` items.
/// Returns it with its number of items.
fn bench_request(
    config: &BenchConfig,
    meta: &ModelMetadataResponse,
    batch: usize,
) -> anyhow::Result<(ModelInferRequest, usize)> {
    let (mut request, items) = request_of_inputs(config, meta, batch)?;
    let level = if config.priority == "bulk" { 2 } else { 1 };
    request.parameters.insert(
        herd_core::priority::PARAMETER.to_string(),
        herd_proto::inference::InferParameter {
            parameter_choice: Some(
                herd_proto::inference::infer_parameter::ParameterChoice::Uint64Param(level),
            ),
        },
    );
    Ok((request, items))
}

fn request_of_inputs(
    config: &BenchConfig,
    meta: &ModelMetadataResponse,
    batch: usize,
) -> anyhow::Result<(ModelInferRequest, usize)> {
    if config.inputs.is_empty() {
        let overrides: HashMap<String, Vec<i64>> = config.shapes.iter().cloned().collect();
        let request = random_request(&config.model, &meta.inputs, batch, &overrides)
            .map_err(anyhow::Error::msg)?;
        return Ok((request, batch));
    }
    let tensors = load_inputs(meta, &config.inputs)?;
    let batched =
        !meta.inputs.is_empty() && meta.inputs.iter().all(|m| m.shape.first() == Some(&-1));
    let items = if batched {
        tensors
            .first()
            .and_then(|t| t.data.shape().first().copied())
            .unwrap_or(1)
    } else {
        1
    };
    Ok((
        herd_client::client::infer_request(&config.model, &tensors),
        items,
    ))
}

/// Measures a server at each load in turn, calling `print` after each step.
pub async fn bench_server(
    config: &BenchConfig,
    mut print: impl FnMut(&StepReport) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let client = config.connect.connect().await?;
    let meta = client.metadata(&config.model).await?;
    let (request, items) = bench_request(config, &meta, config.batch)?;
    // Fail before measuring if the request itself is wrong.
    client.infer_request(request.clone()).await?;
    // A few connections, so that one HTTP/2 connection is not the bottleneck.
    let loads = config.loads();
    let most = loads
        .iter()
        .map(|l| match l {
            Load::Closed { concurrency } => *concurrency,
            Load::Open { .. } => 4,
        })
        .max()
        .unwrap_or(1)
        .min(4);
    let mut clients = vec![client.clone()];
    for _ in 1..most {
        clients.push(config.connect.connect().await?);
    }
    for load in loads {
        if !config.warmup.is_zero() {
            phase(config, &clients, &request, load, config.warmup, "warm-up ").await;
        }
        let before = client.statistics(&config.model).await.ok();
        let (outcome, elapsed) = phase(config, &clients, &request, load, config.duration, "").await;
        let after = client.statistics(&config.model).await.ok();
        let server_mean_batch = match (before, after) {
            (Some(b), Some(a)) if a.execution_count > b.execution_count => Some(
                (a.inference_count - b.inference_count) as f64
                    / (a.execution_count - b.execution_count) as f64,
            ),
            _ => None,
        };
        print(&report(
            config.connect.scheduler.clone(),
            config,
            load,
            items,
            outcome,
            elapsed,
            server_mean_batch,
        ))?;
    }
    Ok(())
}

async fn closed_loop(
    clients: &[Client],
    request: &ModelInferRequest,
    concurrency: usize,
    duration: Duration,
    counters: Arc<Counters>,
) -> Outcome {
    let deadline = Instant::now() + duration;
    let mut workers = JoinSet::new();
    for i in 0..concurrency {
        let client = clients[i % clients.len()].clone();
        let request = request.clone();
        let counters = counters.clone();
        workers.spawn(async move {
            let mut outcome = Outcome::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let result = client.infer_request(request.clone()).await;
                let result = result
                    .map(|_| ())
                    .map_err(|e| e.code().unwrap_or(tonic::Code::Unknown));
                outcome.record(result, t0.elapsed(), &counters);
            }
            outcome
        });
    }
    let mut total = Outcome::new();
    while let Some(done) = workers.join_next().await {
        if let Ok(o) = done {
            total.merge(o);
        }
    }
    total
}

/// Starts request i at `start + i / rate` whether or not earlier ones are answered;
/// each latency runs from that scheduled time.
async fn open_loop(
    clients: &[Client],
    request: &ModelInferRequest,
    rate: f64,
    duration: Duration,
    counters: Arc<Counters>,
) -> Outcome {
    let start = Instant::now();
    let total = (duration.as_secs_f64() * rate).floor() as u64;
    let mut in_flight = JoinSet::new();
    let mut outcome = Outcome::new();
    for i in 0..total {
        let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
        wait_until(scheduled).await;
        let client = clients[i as usize % clients.len()].clone();
        let request = request.clone();
        in_flight.spawn(async move {
            let result = client.infer_request(request).await;
            (
                result
                    .map(|_| ())
                    .map_err(|e| e.code().unwrap_or(tonic::Code::Unknown)),
                scheduled.elapsed(),
            )
        });
        while let Some(Ok((result, latency))) = in_flight.try_join_next() {
            outcome.record(result, latency, &counters);
        }
    }
    while let Some(done) = in_flight.join_next().await {
        if let Ok((result, latency)) = done {
            outcome.record(result, latency, &counters);
        }
    }
    outcome
}

/// Waits until `when` more precisely than the timer's millisecond ticks: sleeps to
/// a tick before, then yields until the moment. Lateness here would count as server
/// latency in the open loop.
async fn wait_until(when: Instant) {
    const TICK: Duration = Duration::from_millis(1);
    if let Some(early) = when.checked_sub(TICK) {
        if early > Instant::now() {
            tokio::time::sleep_until(early).await;
        }
    }
    while Instant::now() < when {
        tokio::task::yield_now().await;
    }
}

/// Measures ONNX Runtime in-process: one session running batches back to back.
pub async fn bench_local(
    config: &BenchConfig,
    path: &Path,
    mut print: impl FnMut(&StepReport) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let ort = OrtRuntime::init(config.ort_lib.as_deref()).map_err(anyhow::Error::msg)?;
    let files = ModelFiles {
        name: config.model.clone(),
        version: 1,
        file_bytes: 0,
        settings: ModelSettings {
            intra_op_threads: config.intra_op_threads,
            ..Default::default()
        },
        path: path.to_path_buf(),
        policy: Default::default(),
        digest: None,
        gpu: config.local_gpu,
    };
    let (spec, session) = ort
        .load(&files)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", path.display()))?;
    let meta = ModelMetadataResponse {
        name: config.model.clone(),
        inputs: spec
            .inputs
            .iter()
            .map(|s| TensorMetadata {
                name: s.name.clone(),
                datatype: s.dtype.as_str().to_string(),
                shape: s.shape.clone(),
            })
            .collect(),
        ..Default::default()
    };
    let batches = if config.local_batch.is_empty() || !config.inputs.is_empty() {
        vec![config.batch]
    } else {
        config.local_batch.clone()
    };
    let session = Arc::new(std::sync::Mutex::new(session));
    for batch in batches {
        let (request, items) = bench_request(config, &meta, batch)?;
        let inputs: Vec<Tensor> = request
            .inputs
            .iter()
            .zip(&request.raw_input_contents)
            .map(|(i, raw)| {
                Ok(Tensor {
                    dtype: i.datatype.parse()?,
                    shape: i.shape.clone(),
                    data: raw.clone(),
                })
            })
            .collect::<Result<_, herd_proto::datatype::UnknownDataType>>()?;
        let (warmup, duration) = (config.warmup, config.duration);
        let session = session.clone();
        let counters = Arc::new(Counters::default());
        let load = Load::Closed { concurrency: 1 };
        let progress = Progress::start(
            config.json,
            format!("local batch {batch}"),
            warmup + duration,
            counters.clone(),
        );
        let measured = tokio::task::spawn_blocking(move || {
            let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
            let mut run_for = |d: Duration, counters: &Counters| -> anyhow::Result<Outcome> {
                let mut outcome = Outcome::new();
                let deadline = std::time::Instant::now() + d;
                while std::time::Instant::now() < deadline {
                    let t0 = std::time::Instant::now();
                    session.run(inputs.clone()).map_err(anyhow::Error::msg)?;
                    outcome.record(Ok(()), t0.elapsed(), counters);
                }
                Ok(outcome)
            };
            run_for(warmup, &Counters::default())?;
            let started = std::time::Instant::now();
            let outcome = run_for(duration, &counters)?;
            Ok::<_, anyhow::Error>((outcome, started.elapsed()))
        })
        .await
        .context("local benchmark thread");
        progress.finish();
        let (outcome, elapsed) = measured??;
        print(&report(
            format!("local:{}", path.display()),
            config,
            load,
            items,
            outcome,
            elapsed,
            Some(items as f64),
        ))?;
    }
    Ok(())
}

fn report(
    target: String,
    config: &BenchConfig,
    load: Load,
    batch: usize,
    outcome: Outcome,
    elapsed: Duration,
    server_mean_batch: Option<f64>,
) -> StepReport {
    let h = &outcome.latency;
    let requests = h.len();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let (concurrency, rate) = match load {
        Load::Closed { concurrency } => (Some(concurrency), None),
        Load::Open { rate } => (None, Some(rate)),
    };
    StepReport {
        target,
        model: config.model.clone(),
        concurrency,
        rate,
        batch,
        requests,
        throughput_rps: requests as f64 / secs,
        items_per_s: (requests * batch as u64) as f64 / secs,
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        errors: outcome.errors.values().sum(),
        errors_by_code: outcome.errors,
        server_mean_batch,
    }
}

fn print_table_header() {
    println!(
        "{:<28} {:>7} {:>5} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6}",
        "target",
        "load",
        "batch",
        "req/s",
        "items/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "errors",
        "s.bat"
    );
}

/// A step as one table row (with a line per error code), or as one JSON object.
pub fn format_report(r: &StepReport, json: bool) -> anyhow::Result<String> {
    if json {
        return Ok(serde_json::to_string(r)? + "\n");
    }
    let target: String = r
        .target
        .chars()
        .rev()
        .take(28)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let load = match (r.concurrency, r.rate) {
        (Some(c), _) => c.to_string(),
        (None, Some(rate)) => format!("{rate}/s"),
        (None, None) => "-".to_string(),
    };
    let mut s = format!(
        "{:<28} {:>7} {:>5} {:>10.0} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6}\n",
        target,
        load,
        r.batch,
        r.throughput_rps,
        r.items_per_s,
        r.p50_us,
        r.p90_us,
        r.p99_us,
        r.p999_us,
        r.max_us,
        r.errors,
        r.server_mean_batch
            .map_or("-".to_string(), |b| format!("{b:.1}")),
    );
    for (code, n) in &r.errors_by_code {
        s.push_str(&format!("    {n} × {code}\n"));
    }
    Ok(s)
}

fn print_report(r: &StepReport, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(format_report(r, json)?.as_bytes())?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: BenchConfig,
    }

    fn parse(args: &[&str]) -> BenchConfig {
        Cli::try_parse_from([&["bench"], args].concat())
            .expect("parses")
            .config
    }

    #[test]
    fn loads_default_to_a_concurrency_sweep_and_add_rates() {
        assert_eq!(
            parse(&["m"]).loads(),
            vec![
                Load::Closed { concurrency: 1 },
                Load::Closed { concurrency: 8 },
                Load::Closed { concurrency: 64 }
            ]
        );
        assert_eq!(
            parse(&["m", "--rate", "500"]).loads(),
            vec![Load::Open { rate: 500.0 }]
        );
        assert_eq!(
            parse(&["m", "--concurrency", "2", "--rate", "10,20"]).loads(),
            vec![
                Load::Closed { concurrency: 2 },
                Load::Open { rate: 10.0 },
                Load::Open { rate: 20.0 }
            ]
        );
    }

    fn outcome(latencies_us: &[u64], errors: &[(tonic::Code, u64)]) -> Outcome {
        let counters = Counters::default();
        let mut o = Outcome::new();
        for &us in latencies_us {
            o.record(Ok(()), Duration::from_micros(us), &counters);
        }
        for &(code, n) in errors {
            for _ in 0..n {
                o.record(Err(code), Duration::ZERO, &counters);
            }
        }
        o
    }

    #[test]
    fn reports_hold_the_fields_scripts_read() {
        let config = parse(&["tiny", "--batch", "4"]);
        let latencies: Vec<u64> = (1..=1000).collect();
        let r = report(
            "127.0.0.1:8001".into(),
            &config,
            Load::Closed { concurrency: 8 },
            4,
            outcome(&latencies, &[(tonic::Code::Unavailable, 2)]),
            Duration::from_secs(2),
            Some(3.5),
        );
        let line = format_report(&r, true).expect("json");
        assert_eq!(line.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&line).expect("parses");
        for field in [
            "target",
            "model",
            "concurrency",
            "rate",
            "batch",
            "throughput_rps",
            "items_per_s",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
            "errors",
            "server_mean_batch",
        ] {
            assert!(v.get(field).is_some(), "{field} missing from {line}");
        }
        assert_eq!(v["concurrency"], 8);
        assert_eq!(v["rate"], serde_json::Value::Null);
        assert_eq!(v["throughput_rps"], 500.0);
        assert_eq!(v["items_per_s"], 2000.0);
        assert_eq!(v["p50_us"], 500);
        assert_eq!(v["max_us"], 1000);
        assert_eq!(v["errors"], 2);
        assert_eq!(v["errors_by_code"]["UNAVAILABLE"], 2);
        let table = format_report(&r, false).expect("table");
        assert!(table.contains("2 × UNAVAILABLE"), "{table}");
    }
}
