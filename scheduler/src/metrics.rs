//! Prometheus metrics on the HTTP port, with Triton's names where they apply. Values are the agents' cumulative counters as last reported, summed over
//! nodes, read fresh on every scrape.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use herd_proto::herd::{ModelStatus, NodeResources};

use crate::exposition::{encode, Family, Kind};
use crate::state::Scheduler;

/// What one node last reported, as the metrics read it: each model with the version
/// the catalog serves.
pub struct NodeReport<'a> {
    pub name: &'a str,
    pub down: bool,
    pub resources: NodeResources,
    pub models: Vec<(&'a ModelStatus, String)>,
}

pub fn render(scheduler: &Scheduler) -> String {
    let c = scheduler.lock();
    let nodes: Vec<NodeReport<'_>> = c
        .nodes()
        .map(|n| NodeReport {
            name: &n.name,
            down: n.down,
            resources: n.status.resources.clone().unwrap_or_default(),
            models: n
                .status
                .models
                .iter()
                .filter_map(|m| Some((m, c.model(&m.name)?.version.to_string())))
                .collect(),
        })
        .collect();
    let mut families = triton_families(&nodes);
    families.extend(node_families(&nodes));
    drop(nodes);
    drop(c);
    families.extend(grpc_families(&scheduler.grpc_metrics));
    encode(&families)
}

/// Triton's own metrics, with its names, labels and types, for what herd measures: the
/// per-model counters summed over nodes (the cluster as one Triton), and the CPU and
/// memory of the nodes that report. Triton's compute input/output times, response
/// cache and GPU metrics are not measured yet and are left out.
pub fn triton_families(nodes: &[NodeReport<'_>]) -> Vec<Family> {
    let model_counter = |name, help| Family::new(name, help, Kind::Counter);
    let mut success = model_counter(
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
    );
    let mut failure = model_counter(
        "nv_inference_request_failure",
        "Number of failed inference requests, all batch sizes",
    );
    let mut count = model_counter(
        "nv_inference_count",
        "Number of inferences performed (a batch of n counts n)",
    );
    let mut exec = model_counter(
        "nv_inference_exec_count",
        "Number of model executions performed (a batched run counts 1)",
    );
    let mut request_us = model_counter(
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds",
    );
    let mut queue_us = model_counter(
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds",
    );
    let mut compute_us = model_counter(
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
    );
    let mut pending = Family::new(
        "nv_inference_pending_request_count",
        "Instantaneous number of pending requests awaiting execution per-model.",
        Kind::Gauge,
    );
    let (mut cpu_busy, mut cpus, mut ram_total, mut ram_used) = (0.0, 0.0, 0.0, 0.0);
    for node in nodes.iter().filter(|n| !n.down) {
        let r = &node.resources;
        cpu_busy += f64::from(r.cpu_load) * f64::from(r.cpu_count);
        cpus += f64::from(r.cpu_count);
        ram_total += r.memory_total_bytes as f64;
        ram_used += r
            .memory_total_bytes
            .saturating_sub(r.memory_available_bytes) as f64;
        for (m, version) in &node.models {
            let labels = vec![("model", m.name.clone()), ("version", version.clone())];
            let us = |ns: u64| (ns / 1000) as f64;
            success.add(
                labels.clone(),
                m.requests_total.saturating_sub(m.failures_total) as f64,
            );
            failure.add(labels.clone(), m.failures_total as f64);
            count.add(labels.clone(), m.inference_count as f64);
            exec.add(labels.clone(), m.runs as f64);
            request_us.add(labels.clone(), us(m.request_ns_total));
            queue_us.add(labels.clone(), us(m.queue_ns_total));
            compute_us.add(labels.clone(), us(m.compute_ns_total));
            pending.add(labels, f64::from(m.queue_length));
        }
    }
    let mut cpu = Family::new(
        "nv_cpu_utilization",
        "CPU utilization rate [0.0 - 1.0]",
        Kind::Gauge,
    );
    let mut total = Family::new(
        "nv_cpu_memory_total_bytes",
        "CPU total memory (RAM), in bytes",
        Kind::Gauge,
    );
    let mut used = Family::new(
        "nv_cpu_memory_used_bytes",
        "CPU used memory (RAM), in bytes",
        Kind::Gauge,
    );
    if cpus > 0.0 {
        cpu.add(vec![], cpu_busy / cpus);
        total.add(vec![], ram_total);
        used.add(vec![], ram_used);
    }
    vec![
        success, failure, count, exec, request_us, queue_us, compute_us, pending, cpu, total, used,
    ]
}

/// herd's own view of each node.
fn node_families(nodes: &[NodeReport<'_>]) -> Vec<Family> {
    let gauge = |name, help| Family::new(name, help, Kind::Gauge);
    let mut total = gauge("herd_node_memory_total_bytes", "A node's RAM");
    let mut available = gauge("herd_node_memory_available_bytes", "A node's available RAM");
    let mut capacity = gauge("herd_node_memory_capacity_bytes", "RAM a node offers herd");
    let mut up = gauge("herd_node_up", "1 while a node reports");
    for n in nodes {
        let labels = || vec![("node", n.name.to_string())];
        let r = &n.resources;
        total.add(labels(), r.memory_total_bytes as f64);
        available.add(labels(), r.memory_available_bytes as f64);
        capacity.add(labels(), r.memory_capacity_bytes as f64);
        up.add(labels(), f64::from(u8::from(!n.down)));
    }
    vec![total, available, capacity, up]
}

/// The scheduler's own gRPC calls, as its metrics layer counted them: answers by
/// method and status code, and latency quantiles by method.
fn grpc_families(grpc: &herd_core::layers::GrpcMetrics) -> Vec<Family> {
    let mut handled = Family::new(
        "herd_grpc_server_handled_total",
        "gRPC calls the scheduler answered, by method and status code",
        Kind::Counter,
    );
    let mut latency = Family::new(
        "herd_grpc_server_latency_seconds",
        "Time from a gRPC call's arrival to its status, by method (quantiles)",
        Kind::Gauge,
    );
    for (method, m) in grpc.snapshot() {
        for (code, n) in m.codes() {
            handled.add(
                vec![("method", method.clone()), ("code", format!("{code:?}"))],
                n as f64,
            );
        }
        for q in ["0.5", "0.99"] {
            let us = m.latency_us().value_at_quantile(q.parse().unwrap_or(0.5));
            latency.add(
                vec![("method", method.clone()), ("quantile", q.to_string())],
                us as f64 / 1e6,
            );
        }
    }
    vec![handled, latency]
}

async fn metrics(State(scheduler): State<Arc<Scheduler>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&scheduler),
    )
}

pub fn router(scheduler: Arc<Scheduler>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(scheduler)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Triton's metrics (server 2.51, `docs/user_guide/metrics.md`) for what herd
    /// measures: name, type and labels, as Triton exposes them.
    const TRITON: &[(&str, &str, &[&str])] = &[
        (
            "nv_inference_request_success",
            "counter",
            &["model", "version"],
        ),
        (
            "nv_inference_request_failure",
            "counter",
            &["model", "version"],
        ),
        ("nv_inference_count", "counter", &["model", "version"]),
        ("nv_inference_exec_count", "counter", &["model", "version"]),
        (
            "nv_inference_request_duration_us",
            "counter",
            &["model", "version"],
        ),
        (
            "nv_inference_queue_duration_us",
            "counter",
            &["model", "version"],
        ),
        (
            "nv_inference_compute_infer_duration_us",
            "counter",
            &["model", "version"],
        ),
        (
            "nv_inference_pending_request_count",
            "gauge",
            &["model", "version"],
        ),
        ("nv_cpu_utilization", "gauge", &[]),
        ("nv_cpu_memory_total_bytes", "gauge", &[]),
        ("nv_cpu_memory_used_bytes", "gauge", &[]),
    ];

    fn status(name: &str, requests: u64, failures: u64) -> ModelStatus {
        ModelStatus {
            name: name.into(),
            requests_total: requests,
            failures_total: failures,
            inference_count: requests * 2,
            runs: requests,
            queue_ns_total: 3_000,
            compute_ns_total: 5_000,
            request_ns_total: 9_000,
            queue_length: 1,
            ..Default::default()
        }
    }

    fn node<'a>(
        name: &'a str,
        down: bool,
        models: Vec<(&'a ModelStatus, String)>,
    ) -> NodeReport<'a> {
        NodeReport {
            name,
            down,
            resources: NodeResources {
                memory_total_bytes: 8 << 30,
                memory_available_bytes: 6 << 30,
                cpu_count: 4,
                cpu_load: 0.5,
                ..Default::default()
            },
            models,
        }
    }

    /// Each family's type and the label names of its samples, from the exposition text.
    fn families_in(text: &str) -> Vec<(String, String, Vec<String>)> {
        let mut out: Vec<(String, String, Vec<String>)> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("name and type");
                out.push((name.into(), kind.into(), Vec::new()));
            } else if !line.starts_with('#') {
                let family = out.last_mut().expect("a sample after its TYPE");
                let labels = line
                    .split_once('{')
                    .map(|(_, l)| l.split_once('}').expect("closed").0)
                    .unwrap_or("");
                family.2 = labels
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.split_once('=').expect("label=value").0.to_string())
                    .collect();
            }
        }
        out
    }

    #[test]
    fn the_exposition_has_tritons_names_types_and_labels_and_herds_own_under_herd() {
        let a = status("m", 10, 1);
        let b = status("m", 5, 0);
        let on_down = status("m", 100, 100);
        let nodes = [
            node("a", false, vec![(&a, "1".into())]),
            node("b", false, vec![(&b, "1".into())]),
            node("c", true, vec![(&on_down, "1".into())]),
        ];
        let mut families = triton_families(&nodes);
        families.extend(node_families(&nodes));
        let text = encode(&families);
        let found = families_in(&text);
        for (name, kind, labels) in TRITON {
            let family = found.iter().find(|f| f.0 == *name);
            let Some((_, got_kind, got_labels)) = family else {
                panic!("{name} missing from:\n{text}");
            };
            assert_eq!(got_kind, kind, "{name}");
            assert_eq!(got_labels, labels, "{name}");
        }
        for (name, _, _) in &found {
            assert!(
                TRITON.iter().any(|(n, _, _)| n == name) || name.starts_with("herd_"),
                "{name} is neither Triton's nor herd's own"
            );
        }
        // Summed over the nodes that report; a down node's last report is not counted
        // in the cluster's totals.
        for line in [
            "nv_inference_request_success{model=\"m\",version=\"1\"} 14",
            "nv_inference_request_failure{model=\"m\",version=\"1\"} 1",
            "nv_inference_count{model=\"m\",version=\"1\"} 30",
            "nv_inference_request_duration_us{model=\"m\",version=\"1\"} 18",
            "nv_inference_pending_request_count{model=\"m\",version=\"1\"} 2",
            "nv_cpu_utilization 0.5",
            "nv_cpu_memory_total_bytes 17179869184",
            "nv_cpu_memory_used_bytes 4294967296",
            "herd_node_up{node=\"c\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }
}
