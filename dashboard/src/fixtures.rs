//! A small cluster to test and measure with: nodes with GPUs and without, a down node.

use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::Histogram;
use herd_proto::herd::{
    ClusterSnapshot, ClusterUpdate, Event, Gpu, ModelInfo, ModelPolicy, ModelState, ModelStatus,
    NodeInfo, NodeResources, NodeState, Replica,
};

/// 2023-11-14 22:13:20 UTC.
pub const T0: u64 = 1_700_000_000_000;
pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

/// A serialized histogram of `count` latencies spread between `low_us` and `high_us`.
pub fn histogram(low_us: u64, high_us: u64, count: u64) -> Vec<u8> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    for i in 0..count {
        let value = low_us + (high_us - low_us) * i * i / (count * count).max(1);
        h.record(value.max(1)).expect("record");
    }
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(&h, &mut out)
        .expect("serialize");
    out
}

#[allow(clippy::too_many_arguments)]
pub fn model_status(
    name: &str,
    state: ModelState,
    memory: u64,
    in_flight: u32,
    queue: u32,
    inference_count: u64,
    ttl_ms: i64,
    idle_ms: u64,
    latency: Vec<u8>,
) -> ModelStatus {
    ModelStatus {
        name: name.to_string(),
        version: "1".to_string(),
        state: state as i32,
        memory_bytes: memory,
        in_flight,
        queue_length: queue,
        runs: inference_count / 2,
        inference_count,
        mean_batch_size: if inference_count > 0 { 2.0 } else { 0.0 },
        latency_histogram: latency,
        ttl_ms,
        idle_ms,
        ..ModelStatus::default()
    }
}

fn node(
    name: &str,
    address: &str,
    state: NodeState,
    resources: NodeResources,
    models: Vec<ModelStatus>,
    requests_total: u64,
) -> NodeInfo {
    NodeInfo {
        name: name.to_string(),
        address: address.to_string(),
        state: state as i32,
        resources: Some(resources),
        models,
        last_report_ms: if state == NodeState::Down {
            42_000
        } else {
            400
        },
        requests_total,
    }
}

fn replica(node: &str, state: ModelState, device: &str) -> Replica {
    Replica {
        node: node.to_string(),
        state: state as i32,
        device: device.to_string(),
        ..Replica::default()
    }
}

fn event(time_ms: u64, kind: &str, node: &str, model: &str, message: &str) -> Event {
    Event {
        time_ms,
        kind: kind.to_string(),
        node: node.to_string(),
        model: model.to_string(),
        message: message.to_string(),
    }
}

/// Requests node-a and node-b answered in the first `step` seconds: a changing load.
fn totals(step: u64) -> (u64, u64) {
    let a: u64 = (0..step).map(|s| 40 + (s * 7) % 30).sum();
    let b: u64 = (0..step).map(|s| 5 + (s * 3) % 11).sum();
    (a, b)
}

/// The cluster `step` seconds after T0: node-a with two GPUs, node-b without, node-c down.
pub fn cluster(step: u64) -> ClusterUpdate {
    let time = T0 + step * 1000;
    let (a, b) = totals(step);
    let node_a = node(
        "node-a",
        "10.0.0.11:8002",
        NodeState::Up,
        NodeResources {
            memory_total_bytes: 64 * GIB,
            memory_available_bytes: 40 * GIB,
            memory_capacity_bytes: 60 * GIB,
            cpu_count: 16,
            cpu_load: 0.42,
            gpus: vec![
                Gpu {
                    index: 0,
                    name: "RTX 4090".to_string(),
                    memory_total_bytes: 24 * GIB,
                    memory_used_bytes: 18 * GIB,
                    ..Default::default()
                },
                Gpu {
                    index: 1,
                    name: "RTX 3060".to_string(),
                    memory_total_bytes: 12 * GIB,
                    memory_used_bytes: 2 * GIB,
                    ..Default::default()
                },
            ],
            agent_rss_bytes: 300 * MIB,
        },
        vec![
            model_status(
                "resnet50",
                ModelState::Ready,
                1_800 * MIB,
                3,
                2,
                a,
                300_000,
                0,
                histogram(2_000, 40_000, 200),
            ),
            model_status(
                "ppocr-det",
                ModelState::Loading,
                0,
                0,
                5,
                0,
                300_000,
                0,
                Vec::new(),
            ),
            model_status(
                "tiny-add",
                ModelState::Available,
                0,
                0,
                0,
                0,
                300_000,
                0,
                Vec::new(),
            ),
        ],
        a,
    );
    let node_b = node(
        "node-b",
        "10.0.0.12:8002",
        NodeState::Up,
        NodeResources {
            memory_total_bytes: 16 * GIB,
            memory_available_bytes: 3 * GIB,
            memory_capacity_bytes: 14 * GIB,
            cpu_count: 4,
            cpu_load: 0.93,
            gpus: Vec::new(),
            agent_rss_bytes: 120 * MIB,
        },
        vec![
            model_status(
                "magika",
                ModelState::Ready,
                96 * MIB,
                0,
                0,
                b,
                300_000,
                49_000,
                histogram(300, 900, 100),
            ),
            model_status(
                "resnet50",
                ModelState::Ready,
                1_750 * MIB,
                1,
                0,
                0,
                300_000,
                0,
                histogram(15_000, 90_000, 50),
            ),
            model_status(
                "ppocr-rec",
                ModelState::Unloading,
                310 * MIB,
                0,
                0,
                12,
                60_000,
                60_000,
                Vec::new(),
            ),
        ],
        b,
    );
    let node_c = node(
        "node-c",
        "10.0.0.13:8002",
        NodeState::Down,
        NodeResources {
            memory_total_bytes: 8 * GIB,
            memory_available_bytes: 6 * GIB,
            memory_capacity_bytes: 8 * GIB,
            cpu_count: 4,
            cpu_load: 0.05,
            gpus: Vec::new(),
            agent_rss_bytes: 90 * MIB,
        },
        vec![model_status(
            "bad-model",
            ModelState::Failed,
            0,
            0,
            0,
            0,
            -1,
            0,
            Vec::new(),
        )],
        7,
    );
    let models = vec![
        ModelInfo {
            name: "resnet50".to_string(),
            version: 1,
            memory_bytes: 1_800 * MIB,
            replicas: vec![
                replica("node-a", ModelState::Ready, "gpu:0"),
                replica("node-b", ModelState::Ready, "cpu"),
            ],
            requests_total: a,
            cold_starts: 1,
            latency_histogram: histogram(3_000, 95_000, 250),
            last_placement: Some(event(
                T0 - 60_000,
                "placed",
                "node-b",
                "resnet50",
                "scaled to 2 replicas",
            )),
            policy: Some(ModelPolicy {
                min_replicas: 1,
                max_replicas: 2,
                device: "any".to_string(),
                memory_hint_bytes: 0,
            }),
            ..ModelInfo::default()
        },
        ModelInfo {
            name: "magika".to_string(),
            version: 3,
            memory_bytes: 96 * MIB,
            replicas: vec![replica("node-b", ModelState::Ready, "cpu")],
            requests_total: b,
            cold_starts: 2,
            latency_histogram: histogram(400, 1_200, 100),
            last_placement: Some(event(
                T0 - 30_000,
                "placed",
                "node-b",
                "magika",
                "first request",
            )),
            ..ModelInfo::default()
        },
        ModelInfo {
            name: "ppocr-det".to_string(),
            version: 1,
            memory_bytes: 400 * MIB,
            replicas: vec![replica("node-a", ModelState::Loading, "gpu:1")],
            cold_starts: 1,
            last_placement: Some(event(
                T0 - 2_000,
                "placed",
                "node-a",
                "ppocr-det",
                "fits 10G free on gpu:1",
            )),
            ..ModelInfo::default()
        },
        ModelInfo {
            name: "ppocr-rec".to_string(),
            version: 1,
            memory_bytes: 310 * MIB,
            replicas: vec![replica("node-b", ModelState::Unloading, "cpu")],
            requests_total: 12,
            last_placement: Some(event(
                T0 - 1_000,
                "evicted",
                "node-b",
                "ppocr-rec",
                "idle, room for resnet50",
            )),
            ..ModelInfo::default()
        },
        ModelInfo {
            name: "bad-model".to_string(),
            version: 1,
            memory_bytes: 0,
            failures_total: 3,
            ..ModelInfo::default()
        },
    ];
    let events = if step == 0 {
        vec![
            event(T0 - 120_000, "joined", "node-a", "", "10.0.0.11:8002"),
            event(T0 - 118_000, "joined", "node-b", "", "10.0.0.12:8002"),
            event(
                T0 - 90_000,
                "load_failed",
                "node-c",
                "bad-model",
                "invalid ONNX graph",
            ),
            event(
                T0 - 60_000,
                "placed",
                "node-b",
                "resnet50",
                "scaled to 2 replicas",
            ),
            event(T0 - 45_000, "down", "node-c", "", "no report for 15 s"),
            event(T0 - 30_000, "placed", "node-b", "magika", "first request"),
            event(
                T0 - 2_000,
                "placed",
                "node-a",
                "ppocr-det",
                "fits 10G free on gpu:1",
            ),
            event(
                T0 - 1_000,
                "evicted",
                "node-b",
                "ppocr-rec",
                "idle, room for resnet50",
            ),
        ]
    } else {
        Vec::new()
    };
    ClusterUpdate {
        snapshot: Some(ClusterSnapshot {
            time_ms: time,
            nodes: vec![node_c, node_a, node_b],
            models,
        }),
        events,
    }
}

/// A large cluster for measuring: `nodes` nodes holding `models` models between them.
/// With `all_new`, every histogram changes in every snapshot (the worst case).
/// Snapshots are 250 ms apart.
pub fn large_cluster(nodes: usize, models: usize, step: u64, all_new: bool) -> ClusterUpdate {
    let time = T0 + step * 250;
    // Agents report once a second and the scheduler sends up to four snapshots a second:
    // each snapshot brings new histograms for about a quarter of the nodes.
    let latencies = [histogram(1_000, 50_000, 500), histogram(1_000, 60_000, 500)];
    let latency_of = |i: usize| {
        let which = if all_new {
            step as usize
        } else {
            (step as usize + i) / 4
        };
        latencies[which % 2].clone()
    };
    let mut node_infos = Vec::with_capacity(nodes);
    for n in 0..nodes {
        let held: Vec<ModelStatus> = (0..models)
            .filter(|m| m % nodes == n)
            .map(|m| {
                model_status(
                    &format!("model-{m:04}"),
                    ModelState::Ready,
                    200 * MIB,
                    (m % 3) as u32,
                    (m % 5) as u32,
                    step * (m as u64 % 17),
                    300_000,
                    1_000,
                    latency_of(n),
                )
            })
            .collect();
        node_infos.push(node(
            &format!("node-{n:03}"),
            &format!("10.0.{}.{}:8002", n / 250, n % 250),
            if n % 10 == 9 {
                NodeState::Down
            } else {
                NodeState::Up
            },
            NodeResources {
                memory_total_bytes: 64 * GIB,
                memory_available_bytes: (20 + n as u64 % 30) * GIB,
                memory_capacity_bytes: 60 * GIB,
                cpu_count: 16,
                cpu_load: (n % 10) as f32 / 10.0,
                gpus: (0..(n % 3))
                    .map(|g| Gpu {
                        index: g as u32,
                        name: "GPU".to_string(),
                        memory_total_bytes: 24 * GIB,
                        memory_used_bytes: (g as u64 + 4) * GIB,
                        ..Default::default()
                    })
                    .collect(),
                agent_rss_bytes: 200 * MIB,
            },
            held,
            step * (n as u64 % 97) * 10,
        ));
    }
    let model_infos = (0..models)
        .map(|m| ModelInfo {
            name: format!("model-{m:04}"),
            version: 1,
            memory_bytes: 200 * MIB,
            replicas: vec![replica(
                &format!("node-{:03}", m % nodes),
                ModelState::Ready,
                "cpu",
            )],
            requests_total: step * (m as u64 % 17),
            latency_histogram: latency_of(m),
            last_placement: Some(event(
                time - 5_000,
                "placed",
                &format!("node-{:03}", m % nodes),
                "",
                "fits",
            )),
            ..ModelInfo::default()
        })
        .collect();
    ClusterUpdate {
        snapshot: Some(ClusterSnapshot {
            time_ms: time,
            nodes: node_infos,
            models: model_infos,
        }),
        events: vec![event(time, "placed", "node-000", "model-0000", "fits")],
    }
}
