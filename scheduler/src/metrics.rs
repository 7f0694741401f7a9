//! Prometheus metrics on the HTTP port, with Triton's names where they apply, and
//! /health. Values are the agents' cumulative counters as last reported, summed over
//! nodes, read fresh on every scrape.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::state::Scheduler;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    method: String,
    quantile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

pub fn render(scheduler: &Scheduler) -> String {
    let mut registry = Registry::default();
    let success = Family::<ModelLabels, Counter>::default();
    let failure = Family::<ModelLabels, Counter>::default();
    let count = Family::<ModelLabels, Counter>::default();
    let exec = Family::<ModelLabels, Counter>::default();
    let queue_us = Family::<ModelLabels, Counter>::default();
    let compute_us = Family::<ModelLabels, Counter>::default();
    let total = Family::<NodeLabels, Gauge>::default();
    let available = Family::<NodeLabels, Gauge>::default();
    let capacity = Family::<NodeLabels, Gauge>::default();
    let up = Family::<NodeLabels, Gauge>::default();
    {
        let c = scheduler.lock();
        for n in c.nodes() {
            let l = NodeLabels {
                node: n.name.clone(),
            };
            let r = n.status.resources.clone().unwrap_or_default();
            total.get_or_create(&l).set(r.memory_total_bytes as i64);
            available
                .get_or_create(&l)
                .set(r.memory_available_bytes as i64);
            capacity
                .get_or_create(&l)
                .set(r.memory_capacity_bytes as i64);
            up.get_or_create(&l).set(i64::from(!n.down));
            for m in &n.status.models {
                let Some(version) = c.model(&m.name).map(|c| c.version.to_string()) else {
                    continue;
                };
                let l = ModelLabels {
                    model: m.name.clone(),
                    version,
                };
                success
                    .get_or_create(&l)
                    .inc_by(m.requests_total.saturating_sub(m.failures_total));
                failure.get_or_create(&l).inc_by(m.failures_total);
                count.get_or_create(&l).inc_by(m.inference_count);
                exec.get_or_create(&l).inc_by(m.runs);
                queue_us.get_or_create(&l).inc_by(m.queue_ns_total / 1000);
                compute_us
                    .get_or_create(&l)
                    .inc_by(m.compute_ns_total / 1000);
            }
        }
    }
    registry.register(
        "nv_inference_request_success",
        "Successful inference requests",
        success,
    );
    registry.register(
        "nv_inference_request_failure",
        "Failed inference requests",
        failure,
    );
    registry.register(
        "nv_inference_count",
        "Items inferred (a batch of 8 counts 8)",
        count,
    );
    registry.register(
        "nv_inference_exec_count",
        "Model runs (a batched run counts 1)",
        exec,
    );
    registry.register(
        "nv_inference_queue_duration_us",
        "Cumulative time requests waited in queues, microseconds",
        queue_us,
    );
    registry.register(
        "nv_inference_compute_infer_duration_us",
        "Cumulative model run time, microseconds",
        compute_us,
    );
    registry.register("herd_node_memory_total_bytes", "A node's RAM", total);
    registry.register(
        "herd_node_memory_available_bytes",
        "A node's available RAM",
        available,
    );
    registry.register(
        "herd_node_memory_capacity_bytes",
        "RAM a node offers herd",
        capacity,
    );
    registry.register("herd_node_up", "1 while a node reports", up);
    register_grpc(&mut registry, &scheduler.grpc_metrics);
    let mut out = String::new();
    if encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

/// The scheduler's own gRPC calls, as its metrics layer counted them: answers by
/// method and status code, and latency quantiles by method.
fn register_grpc(registry: &mut Registry, grpc: &herd_core::layers::GrpcMetrics) {
    let handled = Family::<CallLabels, Counter>::default();
    let latency = Family::<LatencyLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (method, m) in grpc.snapshot() {
        for (code, n) in m.codes() {
            handled
                .get_or_create(&CallLabels {
                    method: method.clone(),
                    code: format!("{code:?}"),
                })
                .inc_by(n);
        }
        for q in ["0.5", "0.99"] {
            let us = m.latency_us().value_at_quantile(q.parse().unwrap_or(0.5));
            latency
                .get_or_create(&LatencyLabels {
                    method: method.clone(),
                    quantile: q.to_string(),
                })
                .set(us as f64 / 1e6);
        }
    }
    registry.register(
        "herd_grpc_server_handled",
        "gRPC calls the scheduler answered, by method and status code",
        handled,
    );
    registry.register(
        "herd_grpc_server_latency_seconds",
        "Time from a gRPC call's arrival to its status, by method (quantiles)",
        latency,
    );
}

async fn metrics(State(scheduler): State<Arc<Scheduler>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(&scheduler),
    )
}

async fn health() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

pub fn router(scheduler: Arc<Scheduler>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(scheduler)
}
