//! Times `placement::solve` on a cluster of 1,000 nodes and 10,000 models, half of them
//! already placed.
//!
//! `cargo bench -p herd-scheduler --bench placement` runs the full size; without `--bench`
//! (as `cargo test --all-targets` runs it) a small size runs once, so the test suite stays fast.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use herd_scheduler::placement::{
    solve, Decision, GpuView, ModelDemand, NodeView, Policy, Problem, Replica, Want,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A mixed cluster and a previous placement covering about half of its models. A `tight`
/// cluster has about as much RAM as the models want, so some placements must evict.
fn cluster(nodes: usize, models: usize, policy: Policy, tight: bool) -> (Problem, Vec<Replica>) {
    let rams: &[u64] = if tight {
        &[2, 4, 8, 16, 32, 64]
    } else {
        &[8, 16, 32, 64, 128, 256]
    };
    let mut rng = StdRng::seed_from_u64(7);
    let mut nodes: Vec<NodeView> = (0..nodes)
        .map(|i| {
            let gpus = if rng.random_bool(0.3) {
                (0..rng.random_range(1..=4))
                    .map(|index| GpuView {
                        index,
                        budget: [8, 16, 24, 48, 80][rng.random_range(0..5)] * GIB,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            NodeView {
                name: format!("node-{i:04}"),
                schedulable: true,
                ram_budget: rams[rng.random_range(0..rams.len())] * GIB,
                gpus,
                files: BTreeSet::new(),
            }
        })
        .collect();
    let mut models: Vec<ModelDemand> = (0..models)
        .map(|i| ModelDemand {
            name: format!("model-{i:05}"),
            digest: format!("{:064x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            memory: rng.random_range(50..=4096) * MIB,
            want: match rng.random_range(0..10) {
                0 => Want::Gpu,
                1 | 2 => Want::Any,
                _ => Want::Cpu,
            },
            min_replicas: rng.random_range(0..=1),
            max_replicas: if rng.random_bool(0.5) { 0 } else { 5 },
            desired_replicas: rng.random_range(1..=3),
        })
        .collect();

    // The previous placement: what solve gave for every other model, as agents report it.
    let half = Problem {
        nodes: nodes.clone(),
        models: models.iter().step_by(2).cloned().collect(),
        policy,
    };
    let previous: Vec<Replica> = solve(&half, &[])
        .assignments
        .into_iter()
        .map(|a| {
            let memory = half
                .models
                .iter()
                .find(|m| m.name == a.model)
                .map_or(0, |m| m.memory);
            Replica {
                in_flight: if rng.random_bool(0.1) { 2 } else { 0 },
                last_used: rng.random_range(0..1_000_000),
                // Measured a little under the catalog figure, or not measured yet.
                memory: if rng.random_bool(0.2) {
                    0
                } else {
                    memory / 10 * rng.random_range(8..=10)
                },
                model: a.model,
                node: a.node,
                device: a.device,
            }
        })
        .collect();

    // Demand moved since: some models want fewer replicas now, some more.
    for m in &mut models {
        m.desired_replicas = rng.random_range(1..=3);
    }

    // Nodes hold the files of what they run and a few more; a few nodes are draining.
    for r in &previous {
        if let (Ok(n), Ok(m)) = (
            r.node.trim_start_matches("node-").parse::<usize>(),
            r.model.trim_start_matches("model-").parse::<usize>(),
        ) {
            nodes[n].files.insert(models[m].digest.clone());
        }
    }
    for node in &mut nodes {
        for _ in 0..5 {
            let m = rng.random_range(0..models.len());
            node.files.insert(models[m].digest.clone());
        }
        node.schedulable = !rng.random_bool(0.01);
    }
    (
        Problem {
            nodes,
            models,
            policy,
        },
        previous,
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (nodes, models, runs) = if full {
        (1000, 10_000, 9)
    } else {
        (20, 200, 1)
    };
    for (policy, tight) in [
        (Policy::Spread, false),
        (Policy::Binpack, false),
        (Policy::Spread, true),
    ] {
        let (problem, previous) = cluster(nodes, models, policy, tight);
        let mut times = Vec::with_capacity(runs);
        let mut last = None;
        for _ in 0..runs {
            let start = Instant::now();
            let solution = black_box(solve(black_box(&problem), black_box(&previous)));
            times.push(start.elapsed());
            last = Some(solution);
        }
        times.sort();
        let (mut placed, mut evicted, mut unplaceable) = (0, 0, 0);
        for d in last.iter().flat_map(|s| &s.decisions) {
            match d {
                Decision::Placed { .. } => placed += 1,
                Decision::Evicted { .. } => evicted += 1,
                Decision::Unplaceable { .. } => unplaceable += 1,
                Decision::Dropped { .. } => {}
            }
        }
        println!(
            "placement: {nodes} nodes, {models} models ({policy:?}{}, {} replicas before): \
             min {:.1} ms, median {:.1} ms ({placed} placed, {evicted} evicted, {unplaceable} unplaceable)",
            if tight { ", tight" } else { "" },
            previous.len(),
            ms(times[0]),
            ms(times[times.len() / 2]),
        );
    }
}
