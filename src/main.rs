//! The `herd` binary: parses the command line and calls into the crates.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
    /// Run a node agent: serve a model repository over the Triton/KServe v2 gRPC protocol,
    /// loading models on first use, batching concurrent requests, unloading idle models.
    Agent(herd_agent::AgentConfig),
    /// Measure a model's throughput and latency under load (closed loop over a
    /// concurrency sweep), against a server or ONNX Runtime in-process (--local).
    Bench(herd_client::bench::BenchConfig),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
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

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Agent(config) => {
            let ort = herd_agent::onnx::OrtRuntime::init(config.ort_lib.as_deref())
                .map_err(anyhow::Error::msg)?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            herd_agent::run(config, ort, listener, shutdown_signal()).await?;
            Ok(())
        }
        Command::Bench(config) => herd_client::bench::run(config).await,
    }
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
