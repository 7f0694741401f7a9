//! A small cluster as the Admin service describes it, for tests of what is built from
//! its answers: this crate's views and the CLI's tables. Behind the `fixtures` feature
//! (off by default); the CLI turns it on for its tests.

use hdrhistogram::serialization::{Serializer, V2Serializer};
use herd_proto::herd::{
    Gpu, ListModelsResponse, ListNodesResponse, ModelInfo, ModelPolicy, ModelState, ModelStatus,
    NodeInfo, NodeResources, NodeState, Replica,
};

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

/// These latencies (µs) as a serialized V2 hdrhistogram, the form the scheduler sends.
pub fn serialized(values: &[u64]) -> Vec<u8> {
    let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    for v in values {
        h.record(*v).expect("record");
    }
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(&h, &mut out)
        .expect("serialise");
    out
}

/// Two models as `ListModels` answers them: `magika` (version 1, 1 to 2 replicas on
/// cpu: ready on `nas`, loading on `gpu-box`, `requests` served, latencies of 100 µs
/// to 10 ms) and `alpha` (version 2, never placed).
pub fn models(requests: u64) -> ListModelsResponse {
    ListModelsResponse {
        models: vec![
            ModelInfo {
                name: "magika".into(),
                version: 1,
                digest: "ab12".into(),
                file_bytes: 3 * MIB,
                memory_bytes: 40 * MIB,
                policy: Some(ModelPolicy {
                    min_replicas: 1,
                    max_replicas: 2,
                    device: "cpu".into(),
                    memory_hint_bytes: 0,
                }),
                replicas: vec![
                    Replica {
                        node: "nas".into(),
                        state: ModelState::Ready as i32,
                        memory_bytes: 40 * MIB,
                        in_flight: 2,
                        queue_length: 1,
                        mean_batch_size: 3.5,
                        ttl_ms: 300_000,
                        idle_ms: 50_000,
                        device: "cpu".into(),
                    },
                    Replica {
                        node: "gpu-box".into(),
                        state: ModelState::Loading as i32,
                        ttl_ms: 300_000,
                        ..Default::default()
                    },
                ],
                requests_total: requests,
                latency_histogram: serialized(&[100, 200, 300, 400, 10_000]),
                ..Default::default()
            },
            ModelInfo {
                name: "alpha".into(),
                version: 2,
                ..Default::default()
            },
        ],
    }
}

/// Two nodes as `ListNodes` answers them: `nas` (up, 16 GiB with 8 offered, 4 cpus,
/// `magika` ready and `idle-on-disk` only on disk, `requests` served) and `gpu-box`
/// (draining, 16 cpus and an RTX 3090).
pub fn nodes(requests: u64) -> ListNodesResponse {
    ListNodesResponse {
        nodes: vec![
            NodeInfo {
                name: "nas".into(),
                address: "10.0.0.2:8001".into(),
                state: NodeState::Up as i32,
                resources: Some(NodeResources {
                    memory_total_bytes: 16 * GIB,
                    memory_available_bytes: 12 * GIB,
                    memory_capacity_bytes: 8 * GIB,
                    cpu_count: 4,
                    cpu_load: 0.25,
                    gpus: vec![],
                    agent_rss_bytes: 8 * MIB,
                }),
                models: vec![
                    ModelStatus {
                        name: "magika".into(),
                        state: ModelState::Ready as i32,
                        memory_bytes: 40 * MIB,
                        ttl_ms: -1,
                        ..Default::default()
                    },
                    ModelStatus {
                        name: "idle-on-disk".into(),
                        state: ModelState::Available as i32,
                        ..Default::default()
                    },
                ],
                last_report_ms: 800,
                requests_total: requests,
            },
            NodeInfo {
                name: "gpu-box".into(),
                address: "10.0.0.3:8001".into(),
                state: NodeState::Draining as i32,
                resources: Some(NodeResources {
                    memory_total_bytes: 32 * GIB,
                    memory_available_bytes: 30 * GIB,
                    cpu_count: 16,
                    cpu_load: 0.5,
                    gpus: vec![Gpu {
                        index: 0,
                        name: "RTX 3090".into(),
                        memory_total_bytes: 24 * GIB,
                        memory_used_bytes: 6 * GIB,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                last_report_ms: 1_500,
                ..Default::default()
            },
        ],
    }
}
