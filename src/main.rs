//! The `herd` binary: parses the command line and calls into the crates.

use std::io::IsTerminal;
use std::process::ExitCode;

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herd_agent::{ProcessLoader, WorkerProgram};

/// herd serves ONNX models across the machines of a small cluster, over the
/// KServe v2 / Triton gRPC protocol.
#[derive(Parser)]
#[command(name = "herd", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole cluster on this machine: a scheduler and an agent in one process,
    /// serving the model repository over the Triton/KServe v2 gRPC protocol. Other
    /// machines join it with `herd agent --scheduler` (listen on 0.0.0.0 for that).
    Up(herd_cli::up::UpConfig),
    /// Run the central scheduler: agents join it, it places models on them by the
    /// memory they report, and it routes requests to them as one Triton.
    Scheduler(herd_scheduler::SchedulerConfig),
    /// Run a node agent: serve a model repository over the Triton/KServe v2 gRPC protocol,
    /// loading models on first use, batching concurrent requests, unloading idle models.
    Agent(herd_agent::AgentConfig),
    /// Run a model once on inputs from .npy files or JSON arrays; print or save its outputs.
    Infer(herd_cli::infer::InferArgs),
    /// The cluster's models: list, show, load, unload.
    Models(herd_cli::cluster_commands::ModelsArgs),
    /// The cluster's nodes: list, show, drain.
    Nodes(herd_cli::cluster_commands::NodesArgs),
    /// Measure a model's throughput and latency under load (closed loop over a
    /// concurrency sweep, or open loop at --rate), against a server or ONNX Runtime
    /// in-process (--local).
    Bench(herd_cli::bench::BenchConfig),
    /// A live terminal dashboard of the cluster: load and memory per node, models, events.
    Dash(herd_dashboard::DashConfig),
    /// Hold one model's ONNX Runtime session for an agent, which starts it (internal).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[derive(clap::Args)]
struct WorkerArgs {
    /// Path of libonnxruntime.so; default as for `herd agent`.
    #[arg(long)]
    ort_lib: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    if let Command::Worker(args) = &cli.command {
        // A worker is plain threads and pipes; it needs no async runtime.
        return match herd_agent::serve_worker(args.ort_lib.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("herd worker: pipe to the agent failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herd: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(config) => {
            herd_agent::return_large_allocations();
            let (loader, _) = checked_loader(config.node.ort_lib.as_deref()).await?;
            let grpc = bind(config.scheduler.listen).await?;
            let http = bind(config.scheduler.http).await?;
            herd_cli::up::run(config, Arc::new(loader), grpc, http, shutdown_signal()).await
        }
        Command::Scheduler(config) => {
            // The scheduler relays tensors too: one burst of large requests would
            // otherwise leave it holding their peak for good.
            herd_agent::return_large_allocations();
            let grpc = bind(config.listen).await?;
            let http = bind(config.http).await?;
            Ok(herd_scheduler::run(config, grpc, http, shutdown_signal()).await?)
        }
        Command::Agent(config) => {
            // Refuse flags that would be ignored before starting anything.
            config.check()?;
            herd_agent::return_large_allocations();
            let (loader, onnxruntime) = checked_loader(config.node.ort_lib.as_deref()).await?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            herd_agent::run(
                config,
                Arc::new(loader),
                onnxruntime,
                listener,
                shutdown_signal(),
            )
            .await
            .map_err(anyhow::Error::msg)?;
            Ok(())
        }
        Command::Infer(args) => herd_cli::infer::run(args).await,
        Command::Models(args) => herd_cli::cluster_commands::run_models(args).await,
        Command::Nodes(args) => herd_cli::cluster_commands::run_nodes(args).await,
        Command::Bench(config) => herd_cli::bench::run(config).await,
        Command::Dash(config) => herd_dashboard::run(config).await,
        Command::Worker(_) => {
            anyhow::bail!("herd worker is started by an agent, before the async runtime")
        }
    }
}

/// Model workers are this executable; check that they find ONNX Runtime now, so that
/// a missing library fails at start with the fix in the message, not on the first load.
async fn checked_loader(
    ort_lib: Option<&std::path::Path>,
) -> anyhow::Result<(ProcessLoader, String)> {
    let program = WorkerProgram::current(ort_lib)
        .context("cannot find the herd executable to start model workers")?;
    let loader = ProcessLoader::new(program);
    let check = loader.clone();
    let onnxruntime = tokio::task::spawn_blocking(move || check.check())
        .await?
        .map_err(anyhow::Error::msg)?;
    Ok((loader, onnxruntime))
}

async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Completes on Ctrl-C or SIGTERM, so the agent stops cleanly under systemd too.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
