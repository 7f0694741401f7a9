//! KServe v2 HTTP/REST beside gRPC on one running server, in one run: closed loops of
//! `concurrency` callers each, over gRPC, HTTP with binary tensors and HTTP with JSON
//! tensors, for each model and concurrency given (one-second rounds, mirrored order); throughput and p50 as ratios to
//! gRPC's. The client is Rust (tonic; hyper, one HTTP/1.1 connection per caller, as
//! HTTP/1.1 has one request in flight per connection), so it costs the shared cores
//! little; request bodies are built once, answers are decoded as a client would.
//!
//! With --pid, the server process's own CPU per answer too (Linux /proc): the protocol's
//! cost apart from the model's, which runs in worker processes, and steadier than
//! throughput on a machine shared with other work.
//!
//! Usage (scripts/bench_http.sh starts the agent):
//!   cargo run --release --example bench_http -- [--pid PID] GRPC_ADDR HTTP_ADDR SECONDS \
//!       CONCURRENCY[,..] MODEL:INPUT:DATATYPE:DIMS[,..] ...
//! e.g. 127.0.0.1:8001 127.0.0.1:8000 5 1,16 tiny_mlp:x:FP32:1x16 magika:bytes:INT32:1x2048

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use herd_proto::inference::model_infer_request::InferInputTensor;
use herd_proto::inference::ModelInferRequest;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tonic::transport::Channel;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Protocol {
    Grpc,
    HttpBinary,
    HttpJson,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "gRPC",
            Protocol::HttpBinary => "HTTP binary",
            Protocol::HttpJson => "HTTP JSON",
        }
    }
}

struct Model {
    name: String,
    input: String,
    datatype: String,
    shape: Vec<i64>,
}

impl Model {
    fn parse(spec: &str) -> anyhow::Result<Model> {
        let parts: Vec<&str> = spec.split(':').collect();
        let [name, input, datatype, dims] = parts[..] else {
            bail!("model spec {spec:?}: expected MODEL:INPUT:DATATYPE:DIMS");
        };
        let shape = dims
            .split('x')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("dims {dims:?}"))?;
        Ok(Model {
            name: name.into(),
            input: input.into(),
            datatype: datatype.into(),
            shape,
        })
    }

    fn elements(&self) -> usize {
        self.shape.iter().product::<i64>() as usize
    }

    /// The same values for every protocol: small integers (valid bytes for magika,
    /// exact in FP32).
    fn values(&self) -> Vec<i64> {
        (0..self.elements()).map(|i| (i * 7 % 256) as i64).collect()
    }

    fn raw(&self) -> Bytes {
        let values = self.values();
        let raw: Vec<u8> = match self.datatype.as_str() {
            "FP32" => values
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
            "INT32" => values
                .iter()
                .flat_map(|&v| (v as i32).to_le_bytes())
                .collect(),
            "INT64" => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
            other => panic!("datatype {other} is not benchmarked"),
        };
        Bytes::from(raw)
    }

    fn grpc_request(&self) -> ModelInferRequest {
        ModelInferRequest {
            model_name: self.name.clone(),
            inputs: vec![InferInputTensor {
                name: self.input.clone(),
                datatype: self.datatype.clone(),
                shape: self.shape.clone(),
                ..Default::default()
            }],
            raw_input_contents: vec![self.raw()],
            ..Default::default()
        }
    }

    /// An HTTP body and its Inference-Header-Content-Length, if binary.
    fn http_body(&self, binary: bool) -> (Bytes, Option<usize>) {
        let mut input = json!({"name": self.input, "datatype": self.datatype, "shape": self.shape});
        if !binary {
            input["data"] = json!(self.values());
            let body = json!({"inputs": [input]}).to_string();
            return (Bytes::from(body), None);
        }
        let raw = self.raw();
        input["parameters"] = json!({"binary_data_size": raw.len()});
        let head =
            json!({"inputs": [input], "parameters": {"binary_data_output": true}}).to_string();
        let length = head.len();
        (
            Bytes::from([head.as_bytes(), &raw[..]].concat()),
            Some(length),
        )
    }
}

/// What one protocol did: every answer's latency (µs) and the time it ran.
struct Step {
    latencies: Histogram<u64>,
    seconds: f64,
    /// CPU seconds the server process used meanwhile (with --pid).
    cpu: f64,
}

impl Step {
    fn new() -> anyhow::Result<Step> {
        Ok(Step {
            latencies: Histogram::new(3)?,
            seconds: 0.0,
            cpu: 0.0,
        })
    }

    fn add(&mut self, other: &Step) -> anyhow::Result<()> {
        self.latencies.add(&other.latencies)?;
        self.seconds += other.seconds;
        self.cpu += other.cpu;
        Ok(())
    }

    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds
    }

    /// Server CPU per answer, in µs.
    fn cpu_us(&self) -> f64 {
        self.cpu * 1e6 / self.latencies.len() as f64
    }

    fn p50_ms(&self) -> f64 {
        self.latencies.value_at_quantile(0.5) as f64 / 1000.0
    }
}

/// CPU seconds (user + system) process `pid` has used so far, from /proc (Linux); 0
/// without a pid. Only that process: the server's protocol work, not its model workers'.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime, in USER_HZ (100 on Linux).
    (ticks(11) + ticks(12)) / 100.0
}

/// One caller's loop over HTTP/1.1 on its own connection until `end`.
async fn http_caller(
    addr: String,
    path: String,
    body: Bytes,
    header_length: Option<usize>,
    end: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let stream = tokio::net::TcpStream::connect(&addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut latencies = Histogram::<u64>::new(3)?;
    while Instant::now() < end {
        let start = Instant::now();
        let mut request = http::Request::post(&path).header(http::header::HOST, &addr);
        if let Some(n) = header_length {
            request = request.header("inference-header-content-length", n);
        }
        let response = sender
            .send_request(request.body(Full::new(body.clone()))?)
            .await?;
        let status = response.status();
        let length: Option<usize> = response
            .headers()
            .get("inference-header-content-length")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let answer = response.into_body().collect().await?.to_bytes();
        if status != 200 {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&answer));
        }
        // Read the answer as a client would: the JSON (all of it, or the head).
        let head: Value = serde_json::from_slice(&answer[..length.unwrap_or(answer.len())])?;
        std::hint::black_box(head);
        latencies.record(start.elapsed().as_micros() as u64)?;
    }
    Ok(latencies)
}

async fn grpc_caller(
    mut client: GrpcInferenceServiceClient<Channel>,
    request: ModelInferRequest,
    end: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut latencies = Histogram::<u64>::new(3)?;
    while Instant::now() < end {
        let start = Instant::now();
        let answer = client.model_infer(request.clone()).await?.into_inner();
        std::hint::black_box(answer);
        latencies.record(start.elapsed().as_micros() as u64)?;
    }
    Ok(latencies)
}

async fn step(
    pid: Option<u32>,
    grpc: &GrpcInferenceServiceClient<Channel>,
    http: &str,
    model: &Model,
    protocol: Protocol,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Step> {
    let cpu = cpu_seconds(pid);
    let start = Instant::now();
    let end = start + duration;
    let path = format!("/v2/models/{}/infer", model.name);
    let callers: Vec<_> = (0..concurrency)
        .map(|_| match protocol {
            Protocol::Grpc => tokio::spawn(grpc_caller(grpc.clone(), model.grpc_request(), end)),
            Protocol::HttpBinary | Protocol::HttpJson => {
                let (body, length) = model.http_body(protocol == Protocol::HttpBinary);
                tokio::spawn(http_caller(
                    http.to_string(),
                    path.clone(),
                    body,
                    length,
                    end,
                ))
            }
        })
        .collect();
    let mut all = Step::new()?;
    for caller in callers {
        all.latencies.add(caller.await??)?;
    }
    all.seconds = start.elapsed().as_secs_f64();
    all.cpu = cpu_seconds(pid) - cpu;
    Ok(all)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let pid: Option<u32> = match args.first().map(String::as_str) {
        Some("--pid") if args.len() > 1 => {
            let pid = args[1].parse()?;
            args.drain(..2);
            Some(pid)
        }
        _ => None,
    };
    let [grpc_addr, http_addr, seconds, concurrency, models @ ..] = &args[..] else {
        bail!("usage: bench_http [--pid SERVER_PID] GRPC_ADDR HTTP_ADDR SECONDS CONCURRENCY[,..] MODEL:INPUT:DATATYPE:DIMS ...");
    };
    let duration = Duration::from_secs_f64(seconds.parse()?);
    let concurrency: Vec<usize> = concurrency
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let models: Vec<Model> = models
        .iter()
        .map(|m| Model::parse(m))
        .collect::<Result<_, _>>()?;
    let grpc = GrpcInferenceServiceClient::connect(format!("http://{grpc_addr}"))
        .await?
        .max_decoding_message_size(64 << 20);
    println!(
        "| model | concurrency | protocol | req/s | p50 ms | server CPU µs/req | \
         req/s ÷ gRPC | p50 ÷ gRPC | CPU/req ÷ gRPC |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for model in &models {
        // Load the model and warm every path before measuring.
        for protocol in [Protocol::Grpc, Protocol::HttpBinary, Protocol::HttpJson] {
            step(
                pid,
                &grpc,
                http_addr,
                model,
                protocol,
                2,
                Duration::from_millis(500),
            )
            .await?;
        }
        for &c in &concurrency {
            // Rounds of one second per protocol, in mirrored order (gRPC, binary, JSON,
            // JSON, binary, gRPC, ...): the machine is shared, and a burst of someone
            // else's work or a drift of its speed then weighs on each protocol alike.
            let order = [Protocol::Grpc, Protocol::HttpBinary, Protocol::HttpJson];
            let rounds = duration.as_secs().max(2) as usize;
            let mut totals = order
                .iter()
                .map(|_| Step::new())
                .collect::<anyhow::Result<Vec<Step>>>()?;
            for round in 0..rounds {
                let mut turn: Vec<usize> = (0..order.len()).collect();
                if round % 2 == 1 {
                    turn.reverse();
                }
                for i in turn {
                    let slice = duration / rounds as u32;
                    let s = step(pid, &grpc, http_addr, model, order[i], c, slice).await?;
                    totals[i].add(&s)?;
                }
            }
            let base = (
                totals[0].throughput(),
                totals[0].p50_ms(),
                totals[0].cpu_us(),
            );
            for (protocol, s) in order.iter().zip(&totals) {
                println!(
                    "| {} | {c} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} |",
                    model.name,
                    protocol.name(),
                    s.throughput(),
                    s.p50_ms(),
                    s.cpu_us(),
                    s.throughput() / base.0,
                    s.p50_ms() / base.1,
                    s.cpu_us() / base.2,
                );
            }
        }
    }
    Ok(())
}
