//! `herd models ...` and `herd nodes ...`: the cluster as the scheduler's Admin service
//! reports it, as tables for people and JSON for scripts. Turning responses into views
//! and views into text are pure functions, tested on hand-built responses.

use std::fmt::Write as _;
use std::time::Duration;

use bytesize::ByteSize;
use herd_client::view::{
    model_state, model_views, node_state as node_state_name, node_views, GpuView, ModelView,
    NodeView,
};
use herd_client::Client;
use herd_proto::herd::{ModelState, NodeState};
use tokio::time::Instant;

use crate::connect::ConnectArgs;
use herd_client::table;

#[derive(clap::Args, Debug, Clone)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub command: ModelsCommand,

    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ModelsCommand {
    /// Every model: replicas, where, state, memory, TTL left, requests/s.
    List(RateArgs),
    /// One model in detail, with each replica.
    Show {
        model: String,
        #[command(flatten)]
        rate: RateArgs,
    },
    /// Place and load a model; returns once a replica is ready.
    Load { model: String },
    /// Unload every replica of a model.
    Unload { model: String },
    /// Read the model repository now (as --rescan-interval does): new models join, a
    /// changed file loads again, changed herd.toml settings apply to running replicas
    /// live (batching, TTL, queue limits; threads and the arena through a new worker
    /// once its queue drains; replica counts through placement).
    Rescan,
    /// Why a model is where it is, or nowhere: for each node's RAM and GPUs, the free
    /// memory, whether one more replica fits, placement's order of choice and why; then
    /// where one more replica would go. Computed by the scheduler's own placement.
    Why {
        model: String,
        /// What if one replica needed this much (e.g. 2GiB).
        #[arg(long)]
        memory: Option<ByteSize>,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct NodesArgs {
    #[command(subcommand)]
    pub command: NodesCommand,

    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum NodesCommand {
    /// Every node: status, RAM and GPU used/total, CPU load, models.
    List(RateArgs),
    /// One node in detail, with the models it holds.
    Show {
        node: String,
        #[command(flatten)]
        rate: RateArgs,
    },
    /// Stop placing on a node and move its replicas elsewhere.
    Drain { node: String },
    /// Wake a sleeping node's machine: the scheduler sends the Wake-on-LAN packet its
    /// agent asked for (--wake-mac).
    Wake { node: String },
}

#[derive(clap::Args, Debug, Clone)]
pub struct RateArgs {
    /// Measure requests/s between two snapshots this far apart; 0s skips it.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub window: Duration,
}

pub async fn run_models(args: ModelsArgs) -> anyhow::Result<()> {
    let client = args.connect.connect().await?;
    match args.command {
        ModelsCommand::List(rate) => {
            let views = model_snapshot(&client, rate.window).await?;
            if args.json {
                println!("{}", serde_json::to_string(&views)?);
            } else {
                print!("{}", models_table(&views));
            }
        }
        ModelsCommand::Show { model, rate } => {
            let views = model_snapshot(&client, rate.window).await?;
            let Some(view) = views.iter().find(|v| v.name == model) else {
                anyhow::bail!(
                    "{}",
                    not_found("model", &model, views.iter().map(|v| &v.name))
                );
            };
            if args.json {
                println!("{}", serde_json::to_string(view)?);
            } else {
                print!("{}", model_detail(view));
            }
        }
        ModelsCommand::Load { model } => {
            let nodes = client.load_model(&model).await?;
            if args.json {
                println!("{}", serde_json::json!({ "model": model, "nodes": nodes }));
            } else {
                println!("{model} loaded on {}", list_or(&nodes, "no node"));
            }
        }
        ModelsCommand::Rescan => {
            let changed = client.rescan().await?;
            if args.json {
                println!("{}", serde_json::json!({ "changed": changed }));
            } else {
                println!("{changed} models added or changed");
            }
        }
        ModelsCommand::Why { model, memory } => {
            let answer = client
                .explain_model(&model, memory.map(|m| m.as_u64()))
                .await?;
            if args.json {
                println!("{}", herd_client::why::why_json(&answer));
            } else {
                print!("{}", herd_client::why::why_table(&answer, memory.is_some()));
            }
        }
        ModelsCommand::Unload { model } => {
            let nodes = client.unload_model(&model).await?;
            if args.json {
                println!("{}", serde_json::json!({ "model": model, "nodes": nodes }));
            } else if nodes.is_empty() {
                println!("{model} was not loaded");
            } else {
                println!("{model} unloaded from {}", nodes.join(", "));
            }
        }
    }
    Ok(())
}

pub async fn run_nodes(args: NodesArgs) -> anyhow::Result<()> {
    let client = args.connect.connect().await?;
    match args.command {
        NodesCommand::List(rate) => {
            let views = node_snapshot(&client, rate.window).await?;
            if args.json {
                println!("{}", serde_json::to_string(&views)?);
            } else {
                print!("{}", nodes_table(&views));
            }
        }
        NodesCommand::Show { node, rate } => {
            let views = node_snapshot(&client, rate.window).await?;
            let Some(view) = views.iter().find(|v| v.name == node) else {
                anyhow::bail!(
                    "{}",
                    not_found("node", &node, views.iter().map(|v| &v.name))
                );
            };
            if args.json {
                println!("{}", serde_json::to_string(view)?);
            } else {
                print!("{}", node_detail(view));
            }
        }
        NodesCommand::Drain { node } => {
            let moved = client.drain_node(&node).await?.moved_models;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "node": node, "moved_models": moved })
                );
            } else {
                println!("{node} is draining; moved {}", list_or(&moved, "no models"));
            }
        }
        NodesCommand::Wake { node } => {
            let wake = client.wake_node(&node).await?.wake.unwrap_or_default();
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "node": node, "mac": wake.mac, "address": wake.address })
                );
            } else {
                println!(
                    "sent the Wake-on-LAN packet for {node} ({}) to {}",
                    wake.mac, wake.address
                );
            }
        }
    }
    Ok(())
}

async fn model_snapshot(client: &Client, window: Duration) -> anyhow::Result<Vec<ModelView>> {
    let first = client.list_models().await?;
    if window.is_zero() {
        return Ok(model_views(&first, None));
    }
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let second = client.list_models().await?;
    Ok(model_views(&second, Some((&first, started.elapsed()))))
}

async fn node_snapshot(client: &Client, window: Duration) -> anyhow::Result<Vec<NodeView>> {
    let first = client.list_nodes().await?;
    if window.is_zero() {
        return Ok(node_views(&first, None));
    }
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let second = client.list_nodes().await?;
    Ok(node_views(&second, Some((&first, started.elapsed()))))
}

fn not_found<'a>(what: &str, name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let known: Vec<&str> = known.map(String::as_str).collect();
    if known.is_empty() {
        format!("no {what} '{name}' in the cluster (it has none)")
    } else {
        format!(
            "no {what} '{name}' in the cluster; there are: {}",
            known.join(", ")
        )
    }
}

fn list_or(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        empty.to_string()
    } else {
        items.join(", ")
    }
}

fn bytes(n: u64) -> String {
    if n == 0 {
        "-".to_string()
    } else {
        ByteSize::b(n).display().iec().to_string()
    }
}

/// Whole seconds, as "4m 10s"; "never" for `None`.
fn ttl_text(ms: Option<u64>) -> String {
    match ms {
        None => "never".to_string(),
        Some(ms) => humantime::format_duration(Duration::from_secs(ms.div_ceil(1000))).to_string(),
    }
}

fn per_second(r: Option<f64>) -> String {
    r.map_or("-".to_string(), |r| format!("{r:.1}"))
}

/// The soonest idle unload among a model's replicas.
fn soonest_ttl(m: &ModelView) -> String {
    if m.replicas.is_empty() {
        return "-".to_string();
    }
    let left: Vec<u64> = m.replicas.iter().filter_map(|r| r.ttl_left_ms).collect();
    ttl_text(left.into_iter().min())
}

pub fn models_table(views: &[ModelView]) -> String {
    if views.is_empty() {
        return "no models\n".to_string();
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|m| {
            let ready = m
                .replicas
                .iter()
                .filter(|r| r.state == ModelState::Ready)
                .count();
            let placed: Vec<String> = m
                .replicas
                .iter()
                .map(|r| format!("{} ({})", r.node, model_state(r.state)))
                .collect();
            vec![
                m.name.clone(),
                m.version.to_string(),
                format!("{ready}/{}", m.replicas.len()),
                list_or(&placed, "-"),
                bytes(m.memory_bytes),
                soonest_ttl(m),
                per_second(m.requests_per_s),
                m.requests_total.to_string(),
            ]
        })
        .collect();
    table::render(
        &[
            "MODEL", "VERSION", "READY", "NODES", "MEMORY", "TTL LEFT", "REQ/S", "REQUESTS",
        ],
        &rows,
        &["VERSION", "READY", "MEMORY", "REQ/S", "REQUESTS"],
    )
}

pub fn model_detail(m: &ModelView) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "model      {} (version {})", m.name, m.version);
    if !m.digest.is_empty() {
        let _ = writeln!(s, "digest     {}", m.digest);
    }
    let _ = writeln!(s, "file       {}", bytes(m.file_bytes));
    let _ = writeln!(s, "memory     {} per replica", bytes(m.memory_bytes));
    let _ = writeln!(
        s,
        "replicas   {} to {} on {}",
        m.min_replicas,
        m.max_replicas,
        if m.device.is_empty() {
            "any"
        } else {
            &m.device
        }
    );
    let _ = writeln!(
        s,
        "requests   {} total, {} failed, {} cold starts, {} req/s",
        m.requests_total,
        m.failures_total,
        m.cold_starts,
        per_second(m.requests_per_s)
    );
    if let (Some(p50), Some(p99)) = (m.latency_p50_us, m.latency_p99_us) {
        let _ = writeln!(s, "latency    p50 {p50} µs, p99 {p99} µs");
    }
    if let Some(e) = &m.last_placement {
        let _ = writeln!(s, "last       {} on {}: {}", e.kind, e.node, e.message);
    }
    if m.replicas.is_empty() {
        s.push_str("\nno replicas\n");
        return s;
    }
    let rows: Vec<Vec<String>> = m
        .replicas
        .iter()
        .map(|r| {
            vec![
                r.node.clone(),
                model_state(r.state),
                if r.device.is_empty() {
                    "-".to_string()
                } else {
                    r.device.clone()
                },
                bytes(r.memory_bytes),
                r.in_flight.to_string(),
                r.queue_length.to_string(),
                format!("{:.1}", r.mean_batch_size),
                ttl_text(r.ttl_left_ms),
            ]
        })
        .collect();
    s.push('\n');
    s.push_str(&table::render(
        &[
            "NODE",
            "STATE",
            "DEVICE",
            "MEMORY",
            "IN FLIGHT",
            "QUEUE",
            "MEAN BATCH",
            "TTL LEFT",
        ],
        &rows,
        &["MEMORY", "IN FLIGHT", "QUEUE", "MEAN BATCH"],
    ));
    s
}

fn used_of(used: u64, total: u64) -> String {
    if total == 0 {
        "-".to_string()
    } else {
        format!("{} / {}", bytes(used), bytes(total))
    }
}

fn gpu_text(gpus: &[GpuView]) -> String {
    let total: u64 = gpus.iter().map(|g| g.memory_total_bytes).sum();
    let used: u64 = gpus.iter().map(|g| g.memory_used_bytes).sum();
    match gpus.len() {
        0 => "-".to_string(),
        1 => used_of(used, total),
        n => format!("{} ({n} GPUs)", used_of(used, total)),
    }
}

fn cpu_text(n: &NodeView) -> String {
    format!("{:.0}% of {}", n.cpu_load * 100.0, n.cpu_count)
}

fn ago(ms: u64) -> String {
    format!("{:.1}s ago", ms as f64 / 1000.0)
}

fn node_state(n: &NodeView) -> String {
    if n.state == NodeState::Unspecified {
        "?".to_string()
    } else {
        node_state_name(n.state)
    }
}

pub fn nodes_table(views: &[NodeView]) -> String {
    if views.is_empty() {
        return "no nodes\n".to_string();
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|n| {
            let models: Vec<String> = n.models.iter().map(|m| m.name.clone()).collect();
            vec![
                n.name.clone(),
                n.address.clone(),
                node_state(n),
                used_of(n.memory_used_bytes, n.memory_total_bytes),
                gpu_text(&n.gpus),
                cpu_text(n),
                list_or(&models, "-"),
                per_second(n.requests_per_s),
                ago(n.last_report_ms),
            ]
        })
        .collect();
    table::render(
        &[
            "NODE", "ADDRESS", "STATE", "RAM", "GPU", "CPU", "MODELS", "REQ/S", "SEEN",
        ],
        &rows,
        &["RAM", "GPU", "CPU", "REQ/S"],
    )
}

pub fn node_detail(n: &NodeView) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "node       {} at {}", n.name, n.address);
    let _ = writeln!(
        s,
        "state      {} (reported {})",
        node_state(n),
        ago(n.last_report_ms)
    );
    let _ = writeln!(
        s,
        "ram        {} used, {} offered to models",
        used_of(n.memory_used_bytes, n.memory_total_bytes),
        bytes(n.memory_capacity_bytes)
    );
    let _ = writeln!(s, "cpu        {}", cpu_text(n));
    for g in &n.gpus {
        let _ = writeln!(
            s,
            "gpu {:<6} {} {}",
            g.index,
            g.name,
            used_of(g.memory_used_bytes, g.memory_total_bytes)
        );
        if !g.unusable.is_empty() {
            let _ = writeln!(s, "           no replica runs here: {}", g.unusable);
        }
    }
    let _ = writeln!(
        s,
        "requests   {} total, {} req/s",
        n.requests_total,
        per_second(n.requests_per_s)
    );
    if n.models.is_empty() {
        s.push_str("\nno models loaded\n");
        return s;
    }
    let rows: Vec<Vec<String>> = n
        .models
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                model_state(m.state),
                bytes(m.memory_bytes),
                m.in_flight.to_string(),
                m.queue_length.to_string(),
                ttl_text(m.ttl_left_ms),
            ]
        })
        .collect();
    s.push('\n');
    s.push_str(&table::render(
        &["MODEL", "STATE", "MEMORY", "IN FLIGHT", "QUEUE", "TTL LEFT"],
        &rows,
        &["MEMORY", "IN FLIGHT", "QUEUE"],
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_client::fixtures::{models, nodes};

    #[test]
    fn models_table_shows_replicas_where_state_memory_ttl_and_rate() {
        let views = model_views(&models(1500), Some((&models(1000), Duration::from_secs(2))));
        assert_eq!(
            models_table(&views),
            "\
MODEL   VERSION  READY  NODES                             MEMORY  TTL LEFT  REQ/S  REQUESTS
alpha         2    0/0  -                                      -  -           0.0         0
magika        1    1/2  gpu-box (loading), nas (ready)  40.0 MiB  4m 10s    250.0      1500
"
        );
        assert_eq!(models_table(&[]), "no models\n");
    }

    #[test]
    fn model_detail_lists_each_replica() {
        let views = model_views(&models(7), None);
        let s = model_detail(&views[1]);
        assert!(s.contains("model      magika (version 1)"), "{s}");
        assert!(s.contains("replicas   1 to 2 on cpu"), "{s}");
        assert!(
            s.contains("7 total, 0 failed, 0 cold starts, - req/s"),
            "{s}"
        );
        assert!(s.contains("latency    p50 300 µs"), "{s}");
        let nas = s
            .lines()
            .find(|l| l.starts_with("nas"))
            .expect("a row for nas");
        let cells: Vec<&str> = nas.split_whitespace().collect();
        assert_eq!(
            cells,
            ["nas", "ready", "cpu", "40.0", "MiB", "2", "1", "3.5", "4m", "10s"]
        );
        assert!(model_detail(&views[0]).ends_with("no replicas\n"));
    }

    #[test]
    fn nodes_table_shows_status_ram_gpu_cpu_and_models() {
        let views = node_views(&nodes(30), Some((&nodes(10), Duration::from_secs(1))));
        assert_eq!(
            nodes_table(&views),
            "\
NODE     ADDRESS        STATE                    RAM                 GPU        CPU  MODELS  REQ/S  SEEN
gpu-box  10.0.0.3:8001  draining  2.0 GiB / 32.0 GiB  6.0 GiB / 24.0 GiB  50% of 16  -         0.0  1.5s ago
nas      10.0.0.2:8001  up        4.0 GiB / 16.0 GiB                   -   25% of 4  magika   20.0  0.8s ago
"
        );
        assert_eq!(nodes_table(&[]), "no nodes\n");
    }

    #[test]
    fn node_detail_lists_loaded_models_only() {
        let views = node_views(&nodes(1), None);
        let s = node_detail(&views[1]);
        assert!(s.contains("node       nas at 10.0.0.2:8001"), "{s}");
        assert!(
            s.contains("ram        4.0 GiB / 16.0 GiB used, 8.0 GiB offered"),
            "{s}"
        );
        assert!(s.contains("magika"), "{s}");
        assert!(!s.contains("idle-on-disk"), "{s}");
        assert!(s.contains("never"), "{s}");
        let gpu = node_detail(&views[0]);
        assert!(
            gpu.contains("gpu 0      RTX 3090 6.0 GiB / 24.0 GiB"),
            "{gpu}"
        );
        assert!(!gpu.contains("no replica runs here"), "{gpu}");
        // A GPU the node cannot run on says why.
        let mut cpu_build = views[0].clone();
        cpu_build.gpus[0].unusable = "this node's ONNX Runtime is the CPU build".into();
        let gpu = node_detail(&cpu_build);
        assert!(
            gpu.contains("no replica runs here: this node's ONNX Runtime is the CPU build"),
            "{gpu}"
        );
    }
}
