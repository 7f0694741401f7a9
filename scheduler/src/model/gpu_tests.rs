//! GPUs in the model: each GPU's budget from what NVML says, GPUs a node cannot run on
//! left alone, replicas spread over a node's GPUs, a clear reason when no GPU can take
//! a GPU-only model, and CPU stand-ins while a GPU node wakes.

use herd_core::settings::ClusterPolicy;
use herd_core::Device as Wanted;
use herd_proto::herd::{AgentStatus, Gpu};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::tests::*;
use super::*;
use crate::error::SchedulerError;
use crate::placement::Device;

const GIB: u64 = 1 << 30;

fn gpu_model(name: &str) -> CatalogModel {
    catalog_model(
        name,
        ClusterPolicy {
            device: Wanted::Gpu,
            ..Default::default()
        },
    )
}

fn gpu(index: u32, total: u64, used: u64, herd_used: u64) -> Gpu {
    Gpu {
        index,
        name: format!("GPU {index}"),
        memory_total_bytes: total,
        memory_used_bytes: used,
        herd_used_bytes: herd_used,
        ..Default::default()
    }
}

/// A node of 200 MiB of RAM with these GPUs.
fn with_gpus(gpus: Vec<Gpu>) -> AgentStatus {
    let mut s = status(200 * MIB, &[]);
    if let Some(r) = s.resources.as_mut() {
        r.gpus = gpus;
    }
    s
}

/// (node, device) of each ready replica of `model`.
fn where_ready(c: &ClusterModel, model: &str) -> Vec<(String, Device)> {
    c.ready_replicas(model)
        .into_iter()
        .map(|(n, r)| (n, r.device.clone()))
        .collect()
}

#[test]
fn a_gpus_budget_is_what_other_programs_leave_plus_what_herd_holds_there() {
    // 16 GiB, 6 GiB used of which herd's workers hold 4: others use 2.
    let g = gpu(0, 16 * GIB, 6 * GIB, 4 * GIB);
    assert_eq!(nodes::gpu_budget(&g, 0.0), 14 * GIB);
    assert_eq!(nodes::gpu_budget(&g, 0.25), 10 * GIB);
    // More in use by others than there is: nothing, not an underflow.
    assert_eq!(nodes::gpu_budget(&gpu(0, GIB, 2 * GIB, 0), 0.0), 0);
}

#[test]
fn gpu_models_spread_over_a_nodes_gpus_by_free_memory_and_skip_unusable_ones() {
    let (mut c, t) = cluster(&[], vec![gpu_model("g1"), gpu_model("g2")]);
    let mut broken = gpu(2, 80 * GIB, 0, 0);
    broken.unusable = "the CPU build".into();
    c.join(
        "box",
        "box:8002",
        with_gpus(vec![
            gpu(0, 8 * GIB, 0, 0),
            gpu(1, 8 * GIB, 6 * GIB, 0),
            broken,
        ]),
        t,
    )
    .expect("join");
    for m in ["g1", "g2"] {
        c.want_model(m).expect("in the catalog");
    }
    // GPU 0 has the most free memory, then each replica's 60 MiB narrows it little:
    // both go there, never to the GPU the node cannot run on.
    place_and_load(&mut c, t);
    assert_eq!(where_ready(&c, "g1"), [("box".into(), Device::Gpu(0))]);
    assert_eq!(where_ready(&c, "g2"), [("box".into(), Device::Gpu(0))]);

    // With GPU 0 nearly full of other programs' memory, the next model goes to GPU 1.
    let (mut c, t) = cluster(&[], vec![gpu_model("g1"), gpu_model("g2")]);
    c.join(
        "box",
        "box:8002",
        with_gpus(vec![
            gpu(0, 8 * GIB, 8 * GIB - 100 * MIB, 0),
            gpu(1, 8 * GIB, 0, 0),
        ]),
        t,
    )
    .expect("join");
    c.want_model("g1").expect("in the catalog");
    place_and_load(&mut c, t);
    assert_eq!(where_ready(&c, "g1"), [("box".into(), Device::Gpu(1))]);
}

#[test]
fn a_gpu_only_model_with_no_usable_gpu_is_unplaceable_with_the_nodes_reason() {
    let (mut c, t) = cluster(&[], vec![gpu_model("g")]);
    let mut cpu_build = gpu(0, 8 * GIB, 0, 0);
    cpu_build.unusable = "this node's ONNX Runtime is the CPU build".into();
    c.join("box", "box:8002", with_gpus(vec![cpu_build]), t)
        .expect("join");
    c.want_model("g").expect("in the catalog");
    assert!(loads(&round(&mut c, t)).is_empty());
    let mut rng = StdRng::seed_from_u64(1);
    match c.pick("g", None, true, true, t, &mut rng) {
        Err(SchedulerError::Unplaceable(why)) => {
            assert!(
                why.contains("device = \"gpu\"")
                    && why.contains("no node up offers a GPU it can run on")
                    && why.contains("node 'box': this node's ONNX Runtime is the CPU build"),
                "{why}"
            );
        }
        other => panic!("expected unplaceable, got {other:?}"),
    }
}

#[test]
fn an_any_model_on_the_cpu_says_why_it_got_no_gpu() {
    let any = catalog_model(
        "m",
        ClusterPolicy {
            device: Wanted::Any,
            ..Default::default()
        },
    );
    let (mut c, t) = cluster(&["a"], vec![any]);
    c.want_model("m").expect("in the catalog");
    place_and_load(&mut c, t);
    assert_eq!(where_ready(&c, "m"), [("a".into(), Device::Cpu)]);
    let placed = messages(&c, "placed");
    assert!(
        placed
            .iter()
            .any(|m| m.starts_with("on the CPU: no node up offers a GPU it can run on")),
        "{placed:?}"
    );
}

#[test]
fn a_cpu_stands_in_for_interactive_requests_until_a_gpu_node_is_back() {
    let (mut c, t) = cluster(
        &["cpu"],
        vec![gpu_model("g"), catalog_model("c", Default::default())],
    );
    c.want_model("g").expect("in the catalog");
    assert!(loads(&round(&mut c, t)).is_empty(), "no GPU is up");

    // Only GPU-only models stand in.
    assert!(!c.stand_in("c", "node 'box' is waking"));
    assert!(c.stand_in("g", "node 'box' is waking"));
    assert!(c.stand_in("g", "node 'box' is waking"), "once is enough");
    let events = messages(&c, "stand-in");
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].contains("node 'box' is waking"), "{}", events[0]);

    // It is placed in RAM, and only interactive requests may use it.
    place_and_load(&mut c, t);
    assert_eq!(where_ready(&c, "g"), [("cpu".into(), Device::Cpu)]);
    let mut rng = StdRng::seed_from_u64(1);
    assert!(matches!(
        c.pick("g", None, true, true, t, &mut rng),
        Ok(Pick::Ready { .. })
    ));
    assert!(matches!(
        c.pick("g", None, true, false, t, &mut rng),
        Ok(Pick::Wait)
    ));

    // A node without a GPU coming up changes nothing; one with a GPU ends the stand-in,
    // and the next round moves the model to it.
    c.join("other", "other:8002", status(200 * MIB, &[]), t)
        .expect("join");
    assert!(c.model("g").is_some_and(|m| m.stand_in));
    c.join("box", "box:8002", with_gpus(vec![gpu(0, 8 * GIB, 0, 0)]), t)
        .expect("join");
    assert!(c.model("g").is_some_and(|m| !m.stand_in));
    assert_eq!(messages(&c, "stand-in ended").len(), 1);
    let actions = round(&mut c, t);
    assert_eq!(unloads(&actions), [("g".to_string(), "cpu".to_string())]);
    assert_eq!(loads(&actions), [("g".to_string(), "box".to_string())]);
    let dropped = messages(&c, "dropped");
    assert!(
        dropped.iter().any(|m| m.contains("its CPU replica goes")),
        "{dropped:?}"
    );
}

#[test]
fn an_any_model_whose_gpu_load_fails_falls_back_to_the_cpu_with_the_reason() {
    let any = catalog_model(
        "m",
        ClusterPolicy {
            device: Wanted::Any,
            ..Default::default()
        },
    );
    let (mut c, t) = cluster(&[], vec![any]);
    c.join("box", "box:8002", with_gpus(vec![gpu(0, 8 * GIB, 0, 0)]), t)
        .expect("join");
    c.want_model("m").expect("in the catalog");
    assert_eq!(
        loads(&round(&mut c, t)),
        [("m".to_string(), "box".to_string())]
    );
    assert_eq!(
        c.replica("m", "box").map(|r| r.device.clone()),
        Some(Device::Gpu(0))
    );

    let actions = c.load_failed("m", "box", "cannot run on GPU 0: no driver", false, t);
    assert!(matches!(actions[..], [Action::Reconcile]), "{actions:?}");
    let fallback = messages(&c, "fallback");
    assert_eq!(fallback.len(), 1, "{fallback:?}");
    assert!(
        fallback[0]
            .contains("loading it on GPU 0 of node 'box' failed: cannot run on GPU 0: no driver")
            && fallback[0].contains("runs on the CPU"),
        "{}",
        fallback[0]
    );
    // The request that asked is not failed: it waits for the CPU replica.
    let mut rng = StdRng::seed_from_u64(1);
    assert!(matches!(
        c.pick("m", None, true, true, t, &mut rng),
        Ok(Pick::Wait)
    ));
    place_and_load(&mut c, t);
    assert_eq!(where_ready(&c, "m"), [("box".into(), Device::Cpu)]);

    // A GPU-only model has no such fallback: its failure is the answer.
    let (mut c, t) = cluster(&[], vec![gpu_model("g")]);
    c.join("box", "box:8002", with_gpus(vec![gpu(0, 8 * GIB, 0, 0)]), t)
        .expect("join");
    c.want_model("g").expect("in the catalog");
    assert_eq!(
        loads(&round(&mut c, t)),
        [("g".to_string(), "box".to_string())]
    );
    c.load_failed("g", "box", "cannot run on GPU 0: no driver", false, t);
    assert!(messages(&c, "fallback").is_empty());
    assert!(matches!(
        c.pick("g", None, true, true, t, &mut rng),
        Err(SchedulerError::LoadFailed(_))
    ));
}
