//! Times `placement::solve` on a cluster of 1,000 nodes and 10,000 models, half of them
//! already placed; then times routing picks (the path a request takes to choose a
//! replica, locks included) alone and while placement rounds of that size run on
//! another thread.
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
            affinity: None,
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
                pinned: false,
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
    solve_times(nodes, models, runs);
    let (picks, limit) = if full {
        (200_000, Duration::from_secs(10))
    } else {
        (2_000, Duration::from_millis(500))
    };
    routing::measure(nodes, models, picks, limit);
}

fn solve_times(nodes: usize, models: usize, runs: usize) {
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

/// Routing picks on one thread while placement runs on another.
mod routing {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use herd_core::settings::ClusterPolicy;
    use herd_core::{ModelFiles, ModelSettings};
    use herd_proto::herd::{AgentStatus, Gpu, ModelState, ModelStatus, NodeResources};
    use herd_scheduler::model::{CatalogModel, ClusterModel};
    use herd_scheduler::placement::{solve, Policy, Want};
    use herd_scheduler::state::Settings;
    use herd_scheduler::store::embedded::EmbeddedStore;
    use herd_scheduler::Scheduler;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::cluster;

    /// How placement runs beside routing.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Beside {
        Nothing,
        /// As the scheduler does it: snapshot and apply under the lock, solve outside.
        Placement,
        /// As it did before: the lock held through solve.
        PlacementHoldingTheLock,
    }

    /// The bench's cluster as a scheduler: nodes joined, reporting the replicas of the
    /// previous placement ready (so they are adopted), every model asked for. Joins
    /// make connections (lazily), so they run on `runtime`.
    fn scheduler(
        nodes: usize,
        models: usize,
        dir: &std::path::Path,
        runtime: &tokio::runtime::Runtime,
    ) -> (Arc<Scheduler>, Vec<String>) {
        let (problem, previous) = cluster(nodes, models, Policy::Spread, false);
        let start = tokio::time::Instant::now();
        let mut model = ClusterModel::new(start, Duration::from_millis(1), 1);
        for m in &problem.models {
            let files = ModelFiles {
                name: m.name.clone(),
                version: 1,
                path: format!("/repo/{}/1/model.onnx", m.name).into(),
                file_bytes: m.memory / 3,
                settings: ModelSettings::default(),
                policy: ClusterPolicy {
                    min_replicas: m.min_replicas,
                    max_replicas: m.max_replicas,
                    device: match m.want {
                        Want::Cpu => herd_core::Device::Cpu,
                        Want::Gpu => herd_core::Device::Gpu,
                        Want::Any => herd_core::Device::Any,
                    },
                    memory_hint: Some(m.memory),
                },
                digest: None,
                gpu: None,
            };
            model.add_model(CatalogModel::new(files, m.digest.clone()), false);
            let _ = model.want_model(&m.name);
        }
        let digests: std::collections::HashMap<String, String> = problem
            .models
            .iter()
            .map(|m| (m.name.clone(), m.digest.clone()))
            .collect();
        let store = Arc::new(EmbeddedStore::open(&dir.join("state.redb")).expect("store"));
        let settings = Settings {
            token: "bench".into(),
            report_interval: Duration::from_millis(1),
            down_after: 1,
            policy: Policy::Spread,
            headroom: 0.05,
            load_timeout: Duration::from_secs(1),
            target_ongoing_requests: 2.0,
            upscale_delay: Duration::from_secs(5),
            model_defaults: Default::default(),
            rescan_interval: Duration::ZERO,
            max_message_size: herd_core::limits::MAX_MESSAGE,
            max_in_flight_bytes: usize::MAX,
            wake_timeout: Duration::from_secs(120),
            tls: None,
            advertise: Default::default(),
            immich_models: None,
        };
        let scheduler = Scheduler::new(model, settings, store, dir.to_path_buf());
        let _guard = runtime.enter();
        for n in &problem.nodes {
            let held: Vec<ModelStatus> = previous
                .iter()
                .filter(|r| r.node == n.name)
                .map(|r| ModelStatus {
                    name: r.model.clone(),
                    state: ModelState::Ready as i32,
                    memory_bytes: r.memory,
                    digest: digests.get(&r.model).cloned().unwrap_or_default(),
                    // Adopted where they are: a GPU-only model's replica in RAM would go.
                    device: r.device.name(),
                    ..Default::default()
                })
                .collect();
            let status = AgentStatus {
                name: n.name.clone(),
                resources: Some(NodeResources {
                    memory_total_bytes: n.ram_budget,
                    memory_available_bytes: n.ram_budget,
                    memory_capacity_bytes: n.ram_budget,
                    gpus: n
                        .gpus
                        .iter()
                        .map(|g| Gpu {
                            index: g.index,
                            memory_total_bytes: g.budget,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                models: held,
                file_digests: n.files.iter().cloned().collect(),
                ..Default::default()
            };
            let address = format!("127.0.0.1:{}", 20000 + routed_port(&n.name));
            if let Err(e) = scheduler.join(&n.name, &address, status) {
                panic!("join {}: {e}", n.name);
            }
        }
        let routed: Vec<String> = {
            let c = scheduler.lock();
            c.models()
                .filter(|m| !c.ready_replicas(&m.name).is_empty())
                .map(|m| m.name.clone())
                .collect()
        };
        (scheduler, routed)
    }

    /// A port per node, from its number: no connection is ever made.
    fn routed_port(node: &str) -> u16 {
        node.trim_start_matches("node-").parse::<u16>().unwrap_or(0)
    }

    /// One placement round that never carries its actions out.
    fn place(scheduler: &Scheduler, beside: Beside) {
        let settings = &scheduler.settings;
        match beside {
            Beside::Nothing => {}
            Beside::Placement => {
                let _ = herd_scheduler::reconcile::plan(scheduler);
            }
            Beside::PlacementHoldingTheLock => {
                let mut c = scheduler.lock();
                let now = tokio::time::Instant::now();
                if let Some(snapshot) = c.snapshot(settings.policy, settings.headroom, now) {
                    let changes = snapshot.changes(solve(&snapshot.problem, &snapshot.previous));
                    let _ = c.apply(&changes, now);
                }
            }
        }
    }

    /// How long each part of a placement round takes, the lock held for the first and
    /// the last (as `reconcile::plan` runs them).
    fn round_parts(scheduler: &Scheduler) {
        let settings = &scheduler.settings;
        let mut parts = [Duration::ZERO; 3];
        let rounds = 5;
        for _ in 0..rounds {
            let now = tokio::time::Instant::now();
            let start = Instant::now();
            let snapshot = scheduler
                .lock()
                .snapshot(settings.policy, settings.headroom, now)
                .expect("past the learning period");
            let solved = Instant::now();
            let changes = snapshot.changes(solve(&snapshot.problem, &snapshot.previous));
            let applied = Instant::now();
            let _ = scheduler.lock().apply(&changes, now);
            let end = Instant::now();
            parts[0] += solved - start;
            parts[1] += applied - solved;
            parts[2] += end - applied;
        }
        let [snapshot, solve, apply] = parts.map(|p| super::ms(p / rounds));
        println!(
            "placement round: snapshot {snapshot:.1} ms and apply {apply:.1} ms under the lock, \
             solve and diff {solve:.1} ms outside it"
        );
    }

    fn micros(d: Duration) -> f64 {
        d.as_secs_f64() * 1e6
    }

    pub fn measure(nodes: usize, models: usize, picks: usize, limit: Duration) {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (scheduler, routed) = scheduler(nodes, models, dir.path(), &runtime);
        let mut rng = StdRng::seed_from_u64(1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        // Every replica's sender started before anything is timed.
        runtime.block_on(async {
            for _ in 0..4 {
                for model in &routed {
                    drop(
                        scheduler
                            .pick(
                                model,
                                None,
                                deadline,
                                herd_core::priority::Priority::Interactive,
                            )
                            .await,
                    );
                }
            }
        });
        // Past the learning period, and placed once, so later rounds solve the same
        // problem again (as a running scheduler does every report interval).
        std::thread::sleep(Duration::from_millis(5));
        place(&scheduler, Beside::Placement);
        round_parts(&scheduler);
        for beside in [
            Beside::Nothing,
            Beside::Placement,
            Beside::PlacementHoldingTheLock,
        ] {
            let stop = Arc::new(AtomicBool::new(false));
            let rounds = Arc::new(AtomicU64::new(0));
            let placer = {
                let (scheduler, stop, rounds) = (scheduler.clone(), stop.clone(), rounds.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) && beside != Beside::Nothing {
                        place(&scheduler, beside);
                        rounds.fetch_add(1, Ordering::Relaxed);
                    }
                })
            };
            let mut times = Vec::with_capacity(picks);
            runtime.block_on(async {
                // Holding the lock through solve, a pick can wait a whole round: the
                // phase ends after `limit` if its picks have not all run.
                let until = Instant::now() + limit;
                for _ in 0..picks {
                    if Instant::now() > until {
                        break;
                    }
                    let model = &routed[rng.random_range(0..routed.len())];
                    let start = Instant::now();
                    let picked = scheduler
                        .pick(
                            model,
                            None,
                            deadline,
                            herd_core::priority::Priority::Interactive,
                        )
                        .await;
                    times.push(start.elapsed());
                    drop(picked);
                }
            });
            stop.store(true, Ordering::Relaxed);
            placer.join().expect("placement thread");
            times.sort();
            let at = |q: f64| micros(times[((times.len() - 1) as f64 * q) as usize]);
            println!(
                "routing: {} picks over {} models, {nodes} nodes, beside {beside:?} ({} rounds): \
                 p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
                times.len(),
                routed.len(),
                rounds.load(Ordering::Relaxed),
                at(0.5),
                at(0.99),
                micros(times[times.len() - 1]),
            );
        }
    }
}
