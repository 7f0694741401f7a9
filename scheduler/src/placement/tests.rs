//! Unit tests for each rule, and property tests for the invariants.

use std::collections::{BTreeSet, HashMap, HashSet};

use proptest::prelude::*;

use super::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn node(name: &str, ram: u64) -> NodeView {
    NodeView {
        name: name.into(),
        schedulable: true,
        ram_budget: ram,
        gpus: Vec::new(),
        files: BTreeSet::new(),
    }
}

fn with_gpus(mut n: NodeView, budgets: &[u64]) -> NodeView {
    n.gpus = budgets
        .iter()
        .enumerate()
        .map(|(i, &budget)| GpuView {
            index: i as u32,
            budget,
        })
        .collect();
    n
}

fn holding(mut n: NodeView, model: &str) -> NodeView {
    n.files.insert(digest(model));
    n
}

fn draining(mut n: NodeView) -> NodeView {
    n.schedulable = false;
    n
}

fn digest(model: &str) -> String {
    format!("sha256-{model}")
}

fn model(name: &str, memory: u64, want: Want, desired: u32) -> ModelDemand {
    ModelDemand {
        name: name.into(),
        digest: digest(name),
        memory,
        want,
        min_replicas: 0,
        max_replicas: 0,
        desired_replicas: desired,
        affinity: None,
    }
}

/// A model nobody wants now: its replicas may be evicted.
fn idle_model(name: &str, memory: u64) -> ModelDemand {
    model(name, memory, Want::Cpu, 0)
}

fn replica(model: &str, node: &str, device: Device, last_used: u64) -> Replica {
    Replica {
        model: model.into(),
        node: node.into(),
        device,
        in_flight: 0,
        last_used,
        memory: 0,
        pinned: false,
    }
}

fn problem(nodes: Vec<NodeView>, models: Vec<ModelDemand>, policy: Policy) -> Problem {
    Problem {
        nodes,
        models,
        policy,
    }
}

fn solve_checked(p: &Problem, previous: &[Replica]) -> Solution {
    let s = solve(p, previous);
    assert_eq!(check(p, previous, &s), Ok(()));
    s
}

/// Where a model's replicas are, as (node, device).
fn where_is(s: &Solution, model: &str) -> Vec<(String, Device)> {
    s.assignments
        .iter()
        .filter(|a| a.model == model)
        .map(|a| (a.node.clone(), a.device.clone()))
        .collect()
}

fn at(node: &str, device: Device) -> Vec<(String, Device)> {
    vec![(node.to_string(), device)]
}

fn placed_reason(s: &Solution, model: &str) -> String {
    s.decisions
        .iter()
        .find_map(|d| match d {
            Decision::Placed {
                model: m, reason, ..
            } if m == model => Some(reason.clone()),
            _ => None,
        })
        .expect("a Placed decision")
}

fn evicted(s: &Solution) -> Vec<(String, String)> {
    s.decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Evicted { model, node, .. } => Some((model.clone(), node.clone())),
            _ => None,
        })
        .collect()
}

fn dropped(s: &Solution) -> Vec<(String, String, String)> {
    s.decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Dropped {
                model,
                node,
                reason,
            } => Some((model.clone(), node.clone(), reason.clone())),
            _ => None,
        })
        .collect()
}

fn unplaceable(s: &Solution) -> Vec<(String, u64, u64)> {
    s.decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Unplaceable {
                model,
                needed,
                largest_free,
                ..
            } => Some((model.clone(), *needed, *largest_free)),
            _ => None,
        })
        .collect()
}

#[test]
fn spread_picks_the_node_with_most_free_ram() {
    let p = problem(
        vec![node("a", 8 * GIB), node("b", 16 * GIB), node("c", 4 * GIB)],
        vec![model("m", GIB, Want::Cpu, 1)],
        Policy::Spread,
    );
    let s = solve_checked(&p, &[]);
    assert_eq!(where_is(&s, "m"), at("b", Device::Cpu));
    assert_eq!(placed_reason(&s, "m"), "spread: most free RAM (16.0 GiB)");
}

#[test]
fn binpack_picks_the_node_with_least_free_ram_that_fits() {
    let p = problem(
        vec![
            node("a", 8 * GIB),
            node("b", 16 * GIB),
            node("c", 512 * MIB),
        ],
        vec![model("m", GIB, Want::Cpu, 1)],
        Policy::Binpack,
    );
    let s = solve_checked(&p, &[]);
    assert_eq!(where_is(&s, "m"), at("a", Device::Cpu));
    assert_eq!(
        placed_reason(&s, "m"),
        "binpack: least free RAM that fits (8.0 GiB)"
    );
}

#[test]
fn ties_go_to_the_first_node_by_name() {
    for policy in [Policy::Spread, Policy::Binpack] {
        let p = problem(
            vec![node("b", 8 * GIB), node("a", 8 * GIB), node("c", 8 * GIB)],
            vec![model("m", GIB, Want::Cpu, 1)],
            policy,
        );
        assert_eq!(where_is(&solve_checked(&p, &[]), "m"), at("a", Device::Cpu));
    }
}

#[test]
fn spread_fills_the_emptiest_nodes_as_it_goes() {
    let p = problem(
        vec![node("a", 4 * GIB), node("b", 4 * GIB)],
        vec![
            model("m1", GIB, Want::Cpu, 1),
            model("m2", GIB, Want::Cpu, 1),
        ],
        Policy::Spread,
    );
    let s = solve_checked(&p, &[]);
    assert_eq!(where_is(&s, "m1"), at("a", Device::Cpu));
    assert_eq!(where_is(&s, "m2"), at("b", Device::Cpu));

    let p = Problem {
        policy: Policy::Binpack,
        ..p
    };
    let s = solve_checked(&p, &[]);
    assert_eq!(where_is(&s, "m1"), at("a", Device::Cpu));
    assert_eq!(where_is(&s, "m2"), at("a", Device::Cpu));
}

#[test]
fn replicas_of_a_model_go_on_distinct_nodes() {
    let p = problem(
        vec![node("a", 8 * GIB), node("b", 8 * GIB)],
        vec![model("m", GIB, Want::Cpu, 3)],
        Policy::Binpack,
    );
    let s = solve_checked(&p, &[]);
    assert_eq!(
        where_is(&s, "m"),
        vec![("a".into(), Device::Cpu), ("b".into(), Device::Cpu)]
    );
    // The third has no node left; the figures say memory was not the problem.
    assert_eq!(unplaceable(&s), vec![("m".into(), GIB, 7 * GIB)]);
}

#[test]
fn nodes_holding_the_file_come_first() {
    let p = problem(
        vec![node("a", 16 * GIB), holding(node("b", 4 * GIB), "m")],
        vec![model("m", GIB, Want::Cpu, 1)],
        Policy::Spread,
    );
    let s = solve_checked(&p, &[]);
    assert_eq!(where_is(&s, "m"), at("b", Device::Cpu));
    assert_eq!(
        placed_reason(&s, "m"),
        "holds the file; spread: most free RAM (4.0 GiB)"
    );

    let p = problem(
        vec![node("a", 4 * GIB), holding(node("b", 16 * GIB), "m")],
        vec![model("m", GIB, Want::Cpu, 1)],
        Policy::Binpack,
    );
    assert_eq!(where_is(&solve_checked(&p, &[]), "m"), at("b", Device::Cpu));
}

#[test]
fn a_model_goes_where_its_partners_file_is() {
    // Spread alone would pick a (more free); the recognition follows its detection to b.
    let mut recognition = model("recognition", GIB, Want::Cpu, 1);
    recognition.affinity = Some(digest("detection"));
    let p = problem(
        vec![
            node("a", 16 * GIB),
            holding(node("b", 4 * GIB), "detection"),
        ],
        vec![recognition.clone()],
        Policy::Spread,
    );
    let s = solve_checked(&p, &[]);
    assert_eq!(where_is(&s, "recognition"), at("b", Device::Cpu));
    // Without room there it goes elsewhere, as for its own file.
    let p = problem(
        vec![
            node("a", 16 * GIB),
            holding(node("b", 512 * MIB), "detection"),
        ],
        vec![recognition],
        Policy::Spread,
    );
    assert_eq!(
        where_is(&solve_checked(&p, &[]), "recognition"),
        at("a", Device::Cpu)
    );
}

#[test]
fn a_file_holder_without_room_is_passed_over() {
    let p = problem(
        vec![node("a", 16 * GIB), holding(node("b", 512 * MIB), "m")],
        vec![model("m", GIB, Want::Cpu, 1)],
        Policy::Spread,
    );
    assert_eq!(where_is(&solve_checked(&p, &[]), "m"), at("a", Device::Cpu));
}

#[test]
fn gpu_models_go_on_gpus_and_cpu_models_in_ram() {
    let nodes = vec![
        node("a", 64 * GIB),
        with_gpus(node("b", 8 * GIB), &[8 * GIB, 16 * GIB]),
    ];
    let models = vec![
        model("cpu", 4 * GIB, Want::Cpu, 1),
        model("gpu", 4 * GIB, Want::Gpu, 1),
    ];
    let s = solve_checked(&problem(nodes.clone(), models.clone(), Policy::Spread), &[]);
    assert_eq!(where_is(&s, "cpu"), at("a", Device::Cpu));
    assert_eq!(where_is(&s, "gpu"), at("b", Device::Gpu(1)));
    assert_eq!(
        placed_reason(&s, "gpu"),
        "spread: most free memory on GPU 1 (16.0 GiB)"
    );

    let s = solve_checked(&problem(nodes, models, Policy::Binpack), &[]);
    assert_eq!(where_is(&s, "cpu"), at("b", Device::Cpu));
    assert_eq!(where_is(&s, "gpu"), at("b", Device::Gpu(0)));
}

#[test]
fn any_prefers_a_gpu_over_ram_and_over_the_file() {
    let p = problem(
        vec![
            holding(node("a", 64 * GIB), "small"),
            with_gpus(node("b", 8 * GIB), &[2 * GIB]),
        ],
        vec![
            model("big", 3 * GIB, Want::Any, 1),
            model("small", GIB, Want::Any, 1),
        ],
        Policy::Spread,
    );
    let s = solve_checked(&p, &[]);
    assert_eq!(where_is(&s, "small"), at("b", Device::Gpu(0)));
    // No GPU is large enough: RAM then.
    assert_eq!(where_is(&s, "big"), at("a", Device::Cpu));
}

#[test]
fn gpu_model_without_any_gpu_is_unplaceable() {
    let p = problem(
        vec![node("a", 64 * GIB)],
        vec![model("m", GIB, Want::Gpu, 1)],
        Policy::Spread,
    );
    let s = solve_checked(&p, &[]);
    assert!(s.assignments.is_empty());
    assert_eq!(unplaceable(&s), vec![("m".into(), GIB, 0)]);
}

#[test]
fn unplaceable_reports_the_largest_free_memory_of_the_right_kind() {
    let nodes = vec![
        node("a", 4 * GIB),
        with_gpus(node("b", 6 * GIB), &[12 * GIB, 2 * GIB]),
        draining(node("c", 100 * GIB)),
    ];
    let models = vec![
        model("any", 20 * GIB, Want::Any, 1),
        model("cpu", 10 * GIB, Want::Cpu, 1),
        model("gpu", 20 * GIB, Want::Gpu, 1),
    ];
    for policy in [Policy::Spread, Policy::Binpack] {
        let s = solve_checked(&problem(nodes.clone(), models.clone(), policy), &[]);
        assert_eq!(
            unplaceable(&s),
            vec![
                ("any".into(), 20 * GIB, 12 * GIB),
                ("cpu".into(), 10 * GIB, 6 * GIB),
                ("gpu".into(), 20 * GIB, 12 * GIB),
            ]
        );
    }
}

#[test]
fn eviction_takes_the_least_recently_used_idle_replica() {
    let p = problem(
        vec![node("a", 4 * GIB)],
        vec![
            model("m", 2 * GIB, Want::Cpu, 1),
            idle_model("x", 2 * GIB),
            idle_model("y", 2 * GIB),
        ],
        Policy::Spread,
    );
    let prev = [
        replica("x", "a", Device::Cpu, 5),
        replica("y", "a", Device::Cpu, 1),
    ];
    let s = solve_checked(&p, &prev);
    assert_eq!(evicted(&s), vec![("y".into(), "a".into())]);
    assert_eq!(where_is(&s, "m"), at("a", Device::Cpu));
    assert_eq!(where_is(&s, "x"), at("a", Device::Cpu));
    assert!(where_is(&s, "y").is_empty());
    assert_eq!(
        s.decisions[0],
        Decision::Evicted {
            model: "y".into(),
            node: "a".into(),
            reason: "evicted for m (needs 2.0 GiB): idle for longest".into(),
        }
    );
    assert_eq!(
        placed_reason(&s, "m"),
        "made room by evicting 1 idle replica"
    );
}

#[test]
fn eviction_never_takes_a_replica_with_work() {
    let p = problem(
        vec![node("a", 4 * GIB)],
        vec![
            model("m", 2 * GIB, Want::Cpu, 1),
            idle_model("x", 2 * GIB),
            idle_model("y", 2 * GIB),
        ],
        Policy::Spread,
    );
    let mut busy = replica("y", "a", Device::Cpu, 1);
    busy.in_flight = 1;
    let s = solve_checked(&p, &[replica("x", "a", Device::Cpu, 5), busy.clone()]);
    assert_eq!(evicted(&s), vec![("x".into(), "a".into())]);

    let mut busy_x = replica("x", "a", Device::Cpu, 5);
    busy_x.in_flight = 3;
    let s = solve_checked(&p, &[busy_x, busy]);
    assert!(evicted(&s).is_empty());
    assert_eq!(unplaceable(&s), vec![("m".into(), 2 * GIB, 0)]);
}

#[test]
fn eviction_never_takes_a_model_below_min_replicas_or_its_target() {
    let mut floor_by_min = idle_model("y", 2 * GIB);
    floor_by_min.min_replicas = 1;
    let p = problem(
        vec![node("a", 4 * GIB)],
        vec![
            model("m", 2 * GIB, Want::Cpu, 1),
            idle_model("x", 2 * GIB),
            floor_by_min,
        ],
        Policy::Spread,
    );
    let prev = [
        replica("x", "a", Device::Cpu, 5),
        replica("y", "a", Device::Cpu, 1),
    ];
    assert_eq!(
        evicted(&solve_checked(&p, &prev)),
        vec![("x".into(), "a".into())]
    );

    // A model at its target loses nothing either: eviction only takes what is not wanted.
    let p = problem(
        vec![node("a", 4 * GIB)],
        vec![
            model("m", 2 * GIB, Want::Cpu, 1),
            model("x", 2 * GIB, Want::Cpu, 1),
            model("y", 2 * GIB, Want::Cpu, 1),
        ],
        Policy::Spread,
    );
    let s = solve_checked(&p, &prev);
    assert!(evicted(&s).is_empty());
    assert_eq!(unplaceable(&s), vec![("m".into(), 2 * GIB, 0)]);
}

#[test]
fn eviction_stops_once_a_model_is_down_to_its_target() {
    let p = problem(
        vec![node("a", 2 * GIB), node("b", 2 * GIB)],
        vec![
            model("m1", 2 * GIB, Want::Cpu, 1),
            model("m2", 2 * GIB, Want::Cpu, 1),
            model("x", 2 * GIB, Want::Cpu, 1),
        ],
        Policy::Spread,
    );
    let prev = [
        replica("x", "a", Device::Cpu, 1),
        replica("x", "b", Device::Cpu, 2),
    ];
    let s = solve_checked(&p, &prev);
    assert_eq!(evicted(&s), vec![("x".into(), "a".into())]);
    assert_eq!(where_is(&s, "m1"), at("a", Device::Cpu));
    assert_eq!(where_is(&s, "x"), at("b", Device::Cpu));
    assert_eq!(unplaceable(&s), vec![("m2".into(), 2 * GIB, 0)]);
}

#[test]
fn eviction_picks_the_node_needing_fewest_evictions_then_oldest() {
    let mut models = vec![model("m", 2 * GIB, Want::Cpu, 1)];
    models.extend(["p1", "p2", "p3", "p4"].map(|n| idle_model(n, GIB)));
    models.extend(["q1", "q2"].map(|n| idle_model(n, 2 * GIB)));
    let p = problem(
        vec![node("a", 4 * GIB), node("b", 4 * GIB)],
        models,
        Policy::Spread,
    );
    let prev = [
        replica("p1", "a", Device::Cpu, 1),
        replica("p2", "a", Device::Cpu, 2),
        replica("p3", "a", Device::Cpu, 3),
        replica("p4", "a", Device::Cpu, 4),
        replica("q1", "b", Device::Cpu, 20),
        replica("q2", "b", Device::Cpu, 10),
    ];
    let s = solve_checked(&p, &prev);
    assert_eq!(evicted(&s), vec![("q2".into(), "b".into())]);
    assert_eq!(where_is(&s, "m"), at("b", Device::Cpu));

    // Same count: the node whose evicted replica is older.
    let p = problem(
        vec![node("a", 2 * GIB), node("b", 2 * GIB)],
        vec![
            model("m", 2 * GIB, Want::Cpu, 1),
            idle_model("r1", 2 * GIB),
            idle_model("r2", 2 * GIB),
        ],
        Policy::Spread,
    );
    let prev = [
        replica("r1", "a", Device::Cpu, 50),
        replica("r2", "b", Device::Cpu, 7),
    ];
    assert_eq!(
        evicted(&solve_checked(&p, &prev)),
        vec![("r2".into(), "b".into())]
    );
}

#[test]
fn eviction_takes_several_in_lru_order_when_one_is_not_enough() {
    let p = problem(
        vec![node("a", 4 * GIB)],
        vec![
            model("m", 3 * GIB, Want::Cpu, 1),
            idle_model("x", GIB),
            idle_model("y", GIB),
            idle_model("z", 2 * GIB),
        ],
        Policy::Spread,
    );
    let prev = [
        replica("x", "a", Device::Cpu, 3),
        replica("y", "a", Device::Cpu, 1),
        replica("z", "a", Device::Cpu, 2),
    ];
    let s = solve_checked(&p, &prev);
    assert_eq!(
        evicted(&s),
        vec![("y".into(), "a".into()), ("z".into(), "a".into())]
    );
    assert_eq!(
        placed_reason(&s, "m"),
        "made room by evicting 2 idle replicas"
    );
}

#[test]
fn eviction_frees_gpu_memory_for_gpu_models() {
    let p = problem(
        vec![with_gpus(node("a", 64 * GIB), &[8 * GIB])],
        vec![
            model("new", 4 * GIB, Want::Gpu, 1),
            model("old", 6 * GIB, Want::Gpu, 0),
        ],
        Policy::Spread,
    );
    let s = solve_checked(&p, &[replica("old", "a", Device::Gpu(0), 1)]);
    assert_eq!(evicted(&s), vec![("old".into(), "a".into())]);
    assert_eq!(where_is(&s, "new"), at("a", Device::Gpu(0)));
}

#[test]
fn eviction_never_takes_a_replica_placed_in_the_same_solve() {
    let p = problem(
        vec![node("a", 2 * GIB)],
        vec![
            model("first", 2 * GIB, Want::Cpu, 1),
            model("second", 2 * GIB, Want::Cpu, 1),
        ],
        Policy::Spread,
    );
    let s = solve_checked(&p, &[]);
    assert!(evicted(&s).is_empty());
    assert_eq!(where_is(&s, "first"), at("a", Device::Cpu));
    assert_eq!(unplaceable(&s), vec![("second".into(), 2 * GIB, 0)]);
}

#[test]
fn replicas_on_a_draining_node_are_dropped_and_placed_elsewhere() {
    let p = problem(
        vec![draining(node("a", 8 * GIB)), node("b", 8 * GIB)],
        vec![model("m", GIB, Want::Cpu, 1)],
        Policy::Spread,
    );
    let s = solve_checked(&p, &[replica("m", "a", Device::Cpu, 1)]);
    assert_eq!(
        dropped(&s),
        vec![(
            "m".into(),
            "a".into(),
            "node is not schedulable (down or draining)".into()
        )]
    );
    assert_eq!(where_is(&s, "m"), at("b", Device::Cpu));
}

#[test]
fn replicas_of_gone_nodes_models_and_gpus_are_dropped() {
    let p = problem(
        vec![with_gpus(node("a", 8 * GIB), &[4 * GIB])],
        vec![idle_model("m", GIB), model("g", GIB, Want::Gpu, 0)],
        Policy::Spread,
    );
    let prev = [
        replica("m", "gone", Device::Cpu, 1),
        replica("retired", "a", Device::Cpu, 1),
        replica("g", "a", Device::Gpu(3), 1),
        replica("m", "a", Device::Cpu, 1),
    ];
    let s = solve_checked(&p, &prev);
    assert_eq!(
        dropped(&s),
        vec![
            ("m".into(), "gone".into(), "node is gone".into()),
            (
                "retired".into(),
                "a".into(),
                "model left the catalog".into()
            ),
            ("g".into(), "a".into(), "node no longer has GPU 3".into()),
        ]
    );
    assert_eq!(
        s.assignments,
        vec![Assignment {
            model: "m".into(),
            node: "a".into(),
            device: Device::Cpu
        }]
    );
}

#[test]
fn a_second_replica_on_one_node_is_dropped() {
    let p = problem(
        vec![with_gpus(node("a", 8 * GIB), &[4 * GIB])],
        vec![model("m", GIB, Want::Any, 1)],
        Policy::Spread,
    );
    let prev = [
        replica("m", "a", Device::Cpu, 1),
        replica("m", "a", Device::Gpu(0), 9),
    ];
    let s = solve_checked(&p, &prev);
    assert_eq!(where_is(&s, "m"), at("a", Device::Gpu(0)));
    assert_eq!(dropped(&s).len(), 1);
}

#[test]
fn a_replica_listed_twice_counts_once_at_the_memory_of_the_one_kept() {
    // Found by the property tests: the unmeasured duplicate must not count.
    let p = problem(
        vec![with_gpus(node("a", 0), &[2816 * MIB])],
        vec![
            model("g", 2304 * MIB, Want::Gpu, 1),
            idle_model("x", 768 * MIB),
        ],
        Policy::Spread,
    );
    let mut recent = replica("x", "a", Device::Gpu(0), 1);
    recent.memory = 128 * MIB;
    let s = solve_checked(&p, &[replica("x", "a", Device::Gpu(0), 0), recent]);
    assert_eq!(where_is(&s, "g"), at("a", Device::Gpu(0)));
    assert_eq!(where_is(&s, "x"), at("a", Device::Gpu(0)));
    assert_eq!(dropped(&s).len(), 1);
}

#[test]
fn replicas_above_max_are_dropped_least_recently_used_first() {
    let mut m = model("m", GIB, Want::Cpu, 1);
    m.max_replicas = 2;
    let p = problem(
        vec![node("a", 8 * GIB), node("b", 8 * GIB), node("c", 8 * GIB)],
        vec![m],
        Policy::Spread,
    );
    let prev = [
        replica("m", "a", Device::Cpu, 3),
        replica("m", "b", Device::Cpu, 9),
        replica("m", "c", Device::Cpu, 5),
    ];
    let s = solve_checked(&p, &prev);
    assert_eq!(
        dropped(&s),
        vec![(
            "m".into(),
            "a".into(),
            "above max_replicas (2): least recently used".into()
        )]
    );
    // Above target but within max: the rest stay until something needs the room.
    assert_eq!(
        where_is(&s, "m"),
        vec![("b".into(), Device::Cpu), ("c".into(), Device::Cpu)]
    );
}

#[test]
fn pinned_copies_past_the_target_are_dropped_keeping_the_busy_one() {
    // min_replicas = 1, and two pinned copies: one placed while "a" was cut off, and
    // "a"'s own, adopted back when it healed.
    let mut m = model("m", GIB, Want::Cpu, 0);
    m.min_replicas = 1;
    let p = problem(
        vec![node("a", 8 * GIB), node("b", 8 * GIB), node("c", 8 * GIB)],
        vec![m.clone()],
        Policy::Spread,
    );
    let pinned = |node, last_used, in_flight| Replica {
        pinned: true,
        in_flight,
        ..replica("m", node, Device::Cpu, last_used)
    };
    // The older one has work in flight: it stays.
    let s = solve_checked(&p, &[pinned("a", 3, 2), pinned("b", 9, 0)]);
    assert_eq!(
        dropped(&s),
        vec![(
            "m".into(),
            "b".into(),
            "a surplus copy: 2 replicas, the target is 1 (min_replicas 1)".into()
        )]
    );
    assert_eq!(where_is(&s, "m"), at("a", Device::Cpu));

    // Copies that are not pinned (scaled up, or loaded on demand) are left to their
    // idle TTL, and a pinned copy within the target stays.
    let s = solve_checked(&p, &[pinned("a", 3, 0), replica("m", "b", Device::Cpu, 9)]);
    assert!(dropped(&s).is_empty(), "{:?}", dropped(&s));
    let mut scaled = m;
    scaled.desired_replicas = 2;
    let p = problem(
        vec![node("a", 8 * GIB), node("b", 8 * GIB)],
        vec![scaled],
        Policy::Spread,
    );
    let s = solve_checked(&p, &[pinned("a", 3, 0), pinned("b", 9, 0)]);
    assert!(
        dropped(&s).is_empty(),
        "within the target of 2: {:?}",
        dropped(&s)
    );
}

#[test]
fn target_is_min_or_desired_capped_by_max() {
    let mut a = model("a", GIB, Want::Cpu, 5);
    a.min_replicas = 2;
    a.max_replicas = 3;
    let mut b = model("b", GIB, Want::Cpu, 0);
    b.min_replicas = 2;
    let mut c = model("c", GIB, Want::Cpu, 4);
    c.min_replicas = 3;
    c.max_replicas = 2;
    let nodes = (0..6).map(|i| node(&format!("n{i}"), 8 * GIB)).collect();
    let s = solve_checked(&problem(nodes, vec![a, b, c], Policy::Spread), &[]);
    assert_eq!(where_is(&s, "a").len(), 3);
    assert_eq!(where_is(&s, "b").len(), 2);
    assert_eq!(where_is(&s, "c").len(), 2);
    assert!(unplaceable(&s).is_empty());
}

#[test]
fn kept_replicas_are_not_moved() {
    let p = problem(
        vec![node("a", 2 * GIB), node("b", 64 * GIB)],
        vec![model("m", GIB, Want::Cpu, 1)],
        Policy::Spread,
    );
    let s = solve_checked(&p, &[replica("m", "a", Device::Cpu, 1)]);
    assert_eq!(where_is(&s, "m"), at("a", Device::Cpu));
    assert!(s.decisions.is_empty());
}

#[test]
fn an_overcommitted_node_keeps_its_replicas_but_gets_nothing_new() {
    let p = problem(
        vec![node("a", 2 * GIB)],
        vec![
            model("big", GIB, Want::Cpu, 1),
            model("tiny", 0, Want::Cpu, 1),
        ],
        Policy::Spread,
    );
    let mut big = replica("big", "a", Device::Cpu, 1);
    big.memory = 3 * GIB; // measured: more than its budget
    let s = solve_checked(&p, std::slice::from_ref(&big));
    assert_eq!(where_is(&s, "big"), at("a", Device::Cpu));
    assert!(where_is(&s, "tiny").is_empty());
    assert_eq!(unplaceable(&s), vec![("tiny".into(), 0, 0)]);

    let p = Problem {
        nodes: vec![node("a", 2 * GIB), node("b", GIB)],
        ..p
    };
    let s = solve_checked(&p, &[big]);
    assert_eq!(where_is(&s, "tiny"), at("b", Device::Cpu));
}

#[test]
fn measured_memory_counts_over_the_model_memory() {
    let p = problem(
        vec![node("a", 4 * GIB), node("b", 3 * GIB)],
        vec![model("x", GIB, Want::Cpu, 1), model("y", GIB, Want::Cpu, 1)],
        Policy::Binpack,
    );
    let mut x = replica("x", "a", Device::Cpu, 1);
    x.memory = 3 * GIB + 512 * MIB;
    // By the catalog, a has 3 GiB free and binpack would pick it; measured, only 512 MiB.
    let s = solve_checked(&p, &[x]);
    assert_eq!(where_is(&s, "y"), at("b", Device::Cpu));
}

#[test]
fn a_placement_that_meets_every_target_is_left_alone() {
    let p = problem(
        vec![
            node("a", 8 * GIB),
            with_gpus(node("b", 8 * GIB), &[8 * GIB]),
            node("c", 4 * GIB),
        ],
        vec![
            model("m1", GIB, Want::Cpu, 2),
            model("m2", 3 * GIB, Want::Any, 3),
            model("m3", 2 * GIB, Want::Gpu, 1),
        ],
        Policy::Binpack,
    );
    let first = solve_checked(&p, &[]);
    let prev: Vec<Replica> = first
        .assignments
        .iter()
        .map(|a| replica(&a.model, &a.node, a.device.clone(), 7))
        .collect();
    let again = solve_checked(&p, &prev);
    assert_eq!(again.assignments, first.assignments);
    assert!(again.decisions.is_empty());
}

// ---- properties -------------------------------------------------------------------------

const UNIT: u64 = 256 * MIB;

/// A previous replica as drawn: indices may point past the catalog, nodes or GPUs on purpose.
type RawReplica = (usize, usize, u32, u32, u64, u64);

fn arb_problem() -> impl Strategy<Value = (Problem, Vec<RawReplica>)> {
    let nodes = prop::collection::vec(
        (
            prop::bool::weighted(0.85),
            0u64..24,
            prop::collection::vec(1u64..24, 0..3),
            prop::collection::btree_set(0usize..10, 0..3),
        ),
        1..8,
    );
    let models = prop::collection::vec(
        (
            1u64..12,
            0u8..3,
            0u32..3,
            0u32..5,
            0u32..5,
            prop::bool::weighted(0.1),
        ),
        1..10,
    );
    let previous = prop::collection::vec(
        (0usize..11, 0usize..9, 0u32..3, 0u32..3, 0u64..100, 0u64..8),
        0..24,
    );
    (nodes, models, any::<bool>(), previous).prop_map(|(nodes, models, binpack, previous)| {
        let nodes = nodes
            .into_iter()
            .enumerate()
            .map(|(i, (schedulable, ram, gpus, files))| NodeView {
                name: format!("n{i}"),
                schedulable,
                ram_budget: ram * UNIT,
                gpus: gpus
                    .iter()
                    .enumerate()
                    .map(|(g, &b)| GpuView {
                        index: g as u32,
                        budget: b * UNIT,
                    })
                    .collect(),
                files: files.iter().map(|f| format!("d{f}")).collect(),
            })
            .collect();
        let models = models
            .into_iter()
            .enumerate()
            .map(
                |(i, (memory, want, min, max, desired, empty))| ModelDemand {
                    name: format!("m{i}"),
                    digest: format!("d{i}"),
                    memory: if empty { 0 } else { memory * UNIT },
                    want: [Want::Cpu, Want::Gpu, Want::Any][want as usize],
                    min_replicas: min,
                    max_replicas: max,
                    desired_replicas: desired,
                    affinity: None,
                },
            )
            .collect();
        let policy = if binpack {
            Policy::Binpack
        } else {
            Policy::Spread
        };
        (
            Problem {
                nodes,
                models,
                policy,
            },
            previous,
        )
    })
}

fn to_replica(raw: &RawReplica) -> Replica {
    let &(model, node, device, in_flight, last_used, memory) = raw;
    Replica {
        model: format!("m{model}"),
        node: format!("n{node}"),
        device: match device {
            0 => Device::Cpu,
            g => Device::Gpu(g - 1),
        },
        in_flight,
        last_used,
        memory: memory * UNIT / 2,
        pinned: false,
    }
}

/// Any previous placement: unknown models, nodes and GPUs, overcommitted devices, duplicates.
fn wild(raw: &[RawReplica]) -> Vec<Replica> {
    raw.iter().map(to_replica).collect()
}

/// As [`wild`] but with at most one replica per model and node, so that reading the solution
/// back gives each kept replica the memory and activity solve counted for it.
fn unique(raw: &[RawReplica]) -> Vec<Replica> {
    let mut seen = HashSet::new();
    wild(raw)
        .into_iter()
        .filter(|r| seen.insert((r.model.clone(), r.node.clone())))
        .collect()
}

/// A previous placement the cluster could have: one replica per model and node, and within
/// every budget (replicas of unknown models or on unknown or draining nodes are left in:
/// they are dropped before they count).
fn sane(p: &Problem, raw: &[RawReplica]) -> Vec<Replica> {
    let mut used: HashMap<(String, Device), u64> = HashMap::new();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in raw.iter().map(to_replica) {
        if !seen.insert((r.model.clone(), r.node.clone())) {
            continue;
        }
        let model = p.models.iter().find(|m| m.name == r.model);
        let node = p.nodes.iter().find(|n| n.name == r.node);
        if let (Some(model), Some(node)) = (model, node) {
            let budget = match r.device {
                Device::Cpu => Some(node.ram_budget),
                Device::Gpu(i) => node.gpus.iter().find(|g| g.index == i).map(|g| g.budget),
            };
            if let Some(budget) = budget {
                let memory = if r.memory > 0 { r.memory } else { model.memory };
                let u = used.entry((r.node.clone(), r.device.clone())).or_default();
                if *u + memory > budget {
                    continue;
                }
                *u += memory;
            }
        }
        out.push(r);
    }
    out
}

/// Bytes used per (node, device) by a solution, counting replicas as solve does.
fn usage(p: &Problem, previous: &[Replica], s: &Solution) -> HashMap<(String, Device), u64> {
    let mut used = HashMap::new();
    for a in &s.assignments {
        let measured = previous
            .iter()
            .find(|r| r.model == a.model && r.node == a.node && r.device == a.device)
            .map_or(0, |r| r.memory);
        let memory = if measured > 0 {
            measured
        } else {
            p.models
                .iter()
                .find(|m| m.name == a.model)
                .map_or(0, |m| m.memory)
        };
        *used.entry((a.node.clone(), a.device.clone())).or_insert(0) += memory;
    }
    used
}

/// The solution as the cluster would report it back: same memory and activity.
fn as_previous(previous: &[Replica], s: &Solution, p: &Problem) -> Vec<Replica> {
    s.assignments
        .iter()
        .map(|a| {
            let before = previous
                .iter()
                .find(|r| r.model == a.model && r.node == a.node && r.device == a.device);
            let memory = match before {
                Some(r) if r.memory > 0 => r.memory,
                _ => p
                    .models
                    .iter()
                    .find(|m| m.name == a.model)
                    .map_or(0, |m| m.memory),
            };
            Replica {
                model: a.model.clone(),
                node: a.node.clone(),
                device: a.device.clone(),
                in_flight: before.map_or(0, |r| r.in_flight),
                last_used: before.map_or(1000, |r| r.last_used),
                memory,
                pinned: before.is_some_and(|r| r.pinned),
            }
        })
        .collect()
}

proptest! {
    // No regression files: failures print their minimal case, which belongs in a unit test.
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// (a) Nothing new goes where it does not fit, whatever the previous placement.
    #[test]
    fn capacity_is_never_exceeded((p, raw) in arb_problem()) {
        let wild = wild(&raw);
        let s = solve(&p, &wild);
        prop_assert_eq!(check(&p, &wild, &s), Ok(()));

        // From a placement that fits, every budget holds afterwards.
        let prev = sane(&p, &raw);
        let s = solve(&p, &prev);
        for ((node, device), bytes) in usage(&p, &prev, &s) {
            let n = p.nodes.iter().find(|n| n.name == node).expect("node");
            let budget = match device {
                Device::Cpu => n.ram_budget,
                Device::Gpu(i) => n.gpus.iter().find(|g| g.index == i).expect("gpu").budget,
            };
            prop_assert!(bytes <= budget, "{node} {device:?}: {bytes} > {budget}");
        }
    }

    /// (b) Solving again with the solution as the previous placement changes nothing.
    #[test]
    fn solving_twice_moves_nothing((p, raw) in arb_problem()) {
        for prev in [sane(&p, &raw), unique(&raw)] {
            let first = solve(&p, &prev);
            let again_prev = as_previous(&prev, &first, &p);
            let again = solve(&p, &again_prev);
            prop_assert_eq!(&again.assignments, &first.assignments);
            let moved: Vec<_> = again
                .decisions
                .iter()
                .filter(|d| !matches!(d, Decision::Unplaceable { .. }))
                .collect();
            prop_assert!(moved.is_empty(), "{moved:?}");
        }
    }

    /// (c) A model ends below its target only with an Unplaceable decision saying so, and
    /// never above max_replicas.
    #[test]
    fn every_model_gets_its_target_or_a_reason((p, raw) in arb_problem()) {
        let prev = wild(&raw);
        let s = solve(&p, &prev);
        for m in &p.models {
            let count = s.assignments.iter().filter(|a| a.model == m.name).count() as u32;
            let said = s.decisions.iter().any(|d| {
                matches!(d, Decision::Unplaceable { model, .. } if *model == m.name)
            });
            prop_assert!(count >= m.target() || said, "{} has {count} of {}", m.name, m.target());
            prop_assert!(!(said && count >= m.target()));
            prop_assert!(m.max_replicas == 0 || count <= m.max_replicas);
        }
    }

    /// (d) No node holds two replicas of one model; (e) every previous replica is kept or
    /// has a decision saying why not.
    #[test]
    fn one_replica_per_node_and_none_lost_silently((p, raw) in arb_problem()) {
        let prev = wild(&raw);
        let s = solve(&p, &prev);
        let mut seen = HashSet::new();
        for a in &s.assignments {
            prop_assert!(seen.insert((&a.model, &a.node)), "{a:?} twice");
        }
        for r in &prev {
            let kept = s.assignments.iter().any(|a| {
                a.model == r.model && a.node == r.node && a.device == r.device
            });
            let told = s.decisions.iter().any(|d| match d {
                Decision::Dropped { model, node, .. } | Decision::Evicted { model, node, .. } => {
                    *model == r.model && *node == r.node
                }
                _ => false,
            });
            prop_assert!(kept || told, "{r:?} vanished");
        }
    }
}

mod explain_tests {
    use super::*;

    fn fit<'a>(e: &'a Explanation, node: &str) -> &'a PoolFit {
        e.pools
            .iter()
            .find(|p| p.node == node)
            .expect("a row per node")
    }

    #[test]
    fn explain_ranks_the_pools_as_solve_chooses_and_names_where_the_next_replica_goes() {
        let p = problem(
            vec![
                node("a", 4 * GIB),
                node("b", 2 * GIB),
                holding(node("c", GIB), "m"),
                node("small", 100 * MIB),
                draining(node("off", 8 * GIB)),
            ],
            vec![model("m", 500 * MIB, Want::Cpu, 1)],
            Policy::Spread,
        );
        let previous = [replica("m", "a", Device::Cpu, 1)];
        let e = explain(&p, &previous, "m", None).expect("m is in the problem");
        assert_eq!((e.memory, e.target, e.replicas), (500 * MIB, 1, 1));
        assert!(fit(&e, "a").has_replica);
        // The holder of the file comes first, then the most free.
        assert_eq!(fit(&e, "c").rank, Some(1));
        assert_eq!(fit(&e, "b").rank, Some(2));
        assert_eq!(fit(&e, "small").rank, None);
        assert!(!fit(&e, "small").fits);
        assert_eq!(fit(&e, "off").rank, None);
        assert_eq!(
            fit(&e, "small").verdict(e.memory, Policy::Spread),
            "too small: needs 500.0 MiB, 100.0 MiB free"
        );
        assert_eq!(
            fit(&e, "off").verdict(e.memory, Policy::Spread),
            "takes no new replica"
        );
        assert_eq!(
            fit(&e, "c").verdict(e.memory, Policy::Spread),
            "first choice (most free first, holds the file)"
        );
        // Solve itself says the same.
        match &e.next {
            Some(Decision::Placed { node, .. }) => assert_eq!(node, "c"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn explain_answers_what_if_it_needed_more_memory() {
        let p = problem(
            vec![node("a", 4 * GIB), node("b", 2 * GIB)],
            vec![model("m", 500 * MIB, Want::Cpu, 0)],
            Policy::Binpack,
        );
        let e = explain(&p, &[], "m", None).expect("m");
        assert_eq!(fit(&e, "b").rank, Some(1), "binpack: least free that fits");
        let big = explain(&p, &[], "m", Some(3 * GIB)).expect("m");
        assert_eq!(big.memory, 3 * GIB);
        assert_eq!((fit(&big, "a").rank, fit(&big, "b").rank), (Some(1), None));
        let huge = explain(&p, &[], "m", Some(8 * GIB)).expect("m");
        assert!(huge.pools.iter().all(|p| p.rank.is_none()));
        assert!(matches!(
            huge.next,
            Some(Decision::Unplaceable { needed, .. }) if needed == 8 * GIB
        ));
        assert_eq!(explain(&p, &[], "nope", None), None);
    }
}
