//! `herd bench`: a closed-loop load generator in the spirit of Triton's perf_analyzer.
//! Each step runs `concurrency` workers, each sending its next request as soon as the
//! previous one is answered, for `--duration` after a warm-up. `--local` runs the same
//! measurement against ONNX Runtime in-process, the physical limit.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use herd_agent::session::Loader;
use herd_agent::tensor::Tensor;
use herd_proto::inference::model_metadata_response::TensorMetadata;
use herd_proto::inference::ModelInferRequest;
use serde::Serialize;
use tokio::time::Instant;

use crate::inputs::random_request;
use crate::Client;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchConfig {
    /// The model to load.
    pub model: String,

    /// Server to load: a herd agent or scheduler (HOST:PORT).
    #[arg(long, env = "HERD_SCHEDULER", default_value = "127.0.0.1:8001")]
    pub scheduler: String,

    /// Concurrency levels to sweep, e.g. 1,8,64. Each worker sends its next request
    /// when the previous one is answered.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub concurrency: Vec<usize>,

    /// How long each step measures ("5s", "500ms").
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Unmeasured load before each step.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Items per request along the batch dimension.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,

    /// Shape of an input with dynamic dimensions, NAME=D0,D1,... (repeat per input).
    #[arg(long = "shape", value_parser = parse_shape)]
    pub shapes: Vec<(String, Vec<i64>)>,

    /// Run ONNX Runtime in-process on this .onnx file instead of calling a server.
    #[arg(long)]
    pub local: Option<PathBuf>,

    /// Batch sizes to sweep with --local (default: --batch).
    #[arg(long, value_delimiter = ',')]
    pub local_batch: Vec<usize>,

    /// libonnxruntime.so for --local (default as for `herd agent`).
    #[arg(long, env = "HERD_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,

    /// ONNX Runtime intra-op threads for --local; 0 lets ONNX Runtime choose.
    #[arg(long, default_value_t = 0)]
    pub intra_op_threads: usize,

    /// Print one JSON object per step instead of a table.
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
    pub concurrency: usize,
    /// Open-loop request rate; null for closed-loop steps.
    pub rate: Option<f64>,
    pub batch: usize,
    pub requests: u64,
    pub throughput_rps: f64,
    pub items_per_s: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    /// Items per model run on the server during the step (from ModelStatistics).
    pub server_mean_batch: Option<f64>,
}

pub async fn run(config: BenchConfig) -> anyhow::Result<()> {
    if config.concurrency.contains(&0) {
        bail!("--concurrency levels must be at least 1");
    }
    if config.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let reports = match &config.local {
        Some(path) => bench_local(&config, path.clone()).await?,
        None => bench_server(&config).await?,
    };
    if !config.json {
        print_table_header();
    }
    for r in &reports {
        print_report(r, config.json)?;
    }
    Ok(())
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

struct Outcome {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

/// Measures a server with the given request, at each concurrency level in turn.
pub async fn bench_server(config: &BenchConfig) -> anyhow::Result<Vec<StepReport>> {
    let client = Client::connect(&config.scheduler).await?;
    let meta = client.metadata(&config.model).await?;
    let overrides: HashMap<String, Vec<i64>> = config.shapes.iter().cloned().collect();
    let request = random_request(&config.model, &meta.inputs, config.batch, &overrides)
        .map_err(anyhow::Error::msg)?;
    // A few connections, so that one HTTP/2 connection is not the bottleneck.
    let mut clients = vec![client.clone()];
    let most = config.concurrency.iter().copied().max().unwrap_or(1).min(4);
    for _ in 1..most {
        clients.push(Client::connect(&config.scheduler).await?);
    }
    let mut reports = Vec::new();
    for &concurrency in &config.concurrency {
        closed_loop(&clients, &request, concurrency, config.warmup).await;
        let before = client.statistics(&config.model).await.ok();
        let started = Instant::now();
        let outcome = closed_loop(&clients, &request, concurrency, config.duration).await;
        let elapsed = started.elapsed();
        let after = client.statistics(&config.model).await.ok();
        let server_mean_batch = match (before, after) {
            (Some(b), Some(a)) if a.execution_count > b.execution_count => Some(
                (a.inference_count - b.inference_count) as f64
                    / (a.execution_count - b.execution_count) as f64,
            ),
            _ => None,
        };
        reports.push(report(
            config.scheduler.clone(),
            config,
            concurrency,
            config.batch,
            outcome,
            elapsed,
            server_mean_batch,
        ));
    }
    Ok(reports)
}

async fn closed_loop(
    clients: &[Client],
    request: &ModelInferRequest,
    concurrency: usize,
    duration: Duration,
) -> Outcome {
    let deadline = Instant::now() + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            let request = request.clone();
            tokio::spawn(async move {
                let mut latency = new_histogram();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    match client.infer(request.clone()).await {
                        Ok(_) => latency.saturating_record(t0.elapsed().as_micros().max(1) as u64),
                        Err(status) => {
                            *errors.entry(format!("{:?}", status.code())).or_default() += 1
                        }
                    }
                }
                Outcome { latency, errors }
            })
        })
        .collect();
    let mut total = Outcome {
        latency: new_histogram(),
        errors: BTreeMap::new(),
    };
    for w in workers {
        if let Ok(o) = w.await {
            let _ = total.latency.add(&o.latency);
            for (code, n) in o.errors {
                *total.errors.entry(code).or_default() += n;
            }
        }
    }
    total
}

/// Measures ONNX Runtime in-process: one session running batches back to back.
pub async fn bench_local(config: &BenchConfig, path: PathBuf) -> anyhow::Result<Vec<StepReport>> {
    let ort = herd_agent::onnx::OrtRuntime::init(config.ort_lib.as_deref())
        .map_err(anyhow::Error::msg)?;
    let files = herd_agent::repository::ModelFiles {
        name: config.model.clone(),
        version: 1,
        file_bytes: 0,
        settings: herd_agent::ModelSettings {
            intra_op_threads: config.intra_op_threads,
            ..Default::default()
        },
        path: path.clone(),
    };
    let (spec, session) = ort
        .load(&files)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", path.display()))?;
    let meta: Vec<TensorMetadata> = spec
        .inputs
        .iter()
        .map(|s| TensorMetadata {
            name: s.name.clone(),
            datatype: s.dtype.as_str().to_string(),
            shape: s.shape.clone(),
        })
        .collect();
    let overrides: HashMap<String, Vec<i64>> = config.shapes.iter().cloned().collect();
    let batches = if config.local_batch.is_empty() {
        vec![config.batch]
    } else {
        config.local_batch.clone()
    };
    let session = Arc::new(std::sync::Mutex::new(session));
    let mut reports = Vec::new();
    for batch in batches {
        let request =
            random_request(&config.model, &meta, batch, &overrides).map_err(anyhow::Error::msg)?;
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
        let (outcome, elapsed) = tokio::task::spawn_blocking(move || {
            let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
            let mut run_for = |d: Duration| -> anyhow::Result<Outcome> {
                let mut latency = new_histogram();
                let deadline = std::time::Instant::now() + d;
                while std::time::Instant::now() < deadline {
                    let t0 = std::time::Instant::now();
                    session.run(inputs.clone()).map_err(anyhow::Error::msg)?;
                    latency.saturating_record(t0.elapsed().as_micros().max(1) as u64);
                }
                Ok(Outcome {
                    latency,
                    errors: BTreeMap::new(),
                })
            };
            run_for(warmup)?;
            let started = std::time::Instant::now();
            let outcome = run_for(duration)?;
            Ok::<_, anyhow::Error>((outcome, started.elapsed()))
        })
        .await
        .context("local benchmark thread")??;
        reports.push(report(
            format!("local:{}", path.display()),
            config,
            1,
            batch,
            outcome,
            elapsed,
            Some(batch as f64),
        ));
    }
    Ok(reports)
}

fn report(
    target: String,
    config: &BenchConfig,
    concurrency: usize,
    batch: usize,
    outcome: Outcome,
    elapsed: Duration,
    server_mean_batch: Option<f64>,
) -> StepReport {
    let h = &outcome.latency;
    let requests = h.len();
    let secs = elapsed.as_secs_f64().max(1e-9);
    StepReport {
        target,
        model: config.model.clone(),
        concurrency,
        rate: None,
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
        "{:<28} {:>5} {:>5} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6}",
        "target",
        "conc",
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

fn print_report(r: &StepReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
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
    println!(
        "{:<28} {:>5} {:>5} {:>10.0} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6}",
        target,
        r.concurrency,
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
        println!("    {n} × {code}");
    }
    Ok(())
}
