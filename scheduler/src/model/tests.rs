//! The model driven directly: joins, reports, down-marking, re-placement, drain,
//! scaling, adoption after a restart, routing. No processes, sockets or tasks; time is
//! an `Instant` the test moves forward.

use std::sync::atomic::Ordering;
use std::time::Duration;

use herd_core::settings::ClusterPolicy;
use herd_core::ModelFiles;
use herd_proto::herd::{AgentStatus, ModelState, ModelStatus, NodeResources};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::time::Instant;

use super::*;
use crate::error::SchedulerError;
use crate::placement::{solve, Policy};

pub(super) const REPORT: Duration = Duration::from_millis(100);
/// Three missed reports.
pub(super) const DOWN_AFTER: Duration = Duration::from_millis(300);
pub(super) const MIB: u64 = 1 << 20;

pub(super) fn catalog_model(name: &str, policy: ClusterPolicy) -> CatalogModel {
    let files = ModelFiles {
        name: name.to_string(),
        version: 1,
        path: format!("/repo/{name}/1/model.onnx").into(),
        file_bytes: MIB,
        settings: Default::default(),
        policy: ClusterPolicy {
            memory_hint: policy.memory_hint.or(Some(60 * MIB)),
            ..policy
        },
        digest: None,
        gpu: None,
    };
    CatalogModel::new(files, digest(name))
}

pub(super) fn digest(model: &str) -> String {
    format!("sha-{model}")
}

fn pinned(min_replicas: u32) -> ClusterPolicy {
    ClusterPolicy {
        min_replicas,
        ..Default::default()
    }
}

/// A node with `ram` bytes, holding `ready` models ready.
pub(super) fn status(ram: u64, ready: &[&str]) -> AgentStatus {
    AgentStatus {
        resources: Some(NodeResources {
            memory_total_bytes: ram,
            memory_available_bytes: ram,
            memory_capacity_bytes: ram,
            ..Default::default()
        }),
        models: ready
            .iter()
            .map(|m| ModelStatus {
                name: m.to_string(),
                state: ModelState::Ready as i32,
                digest: digest(m),
                memory_bytes: 60 * MIB,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// A model with `models` in its catalog and `nodes` (of 200 MiB each) joined at `t0`;
/// returns it with the time placement may start.
pub(super) fn cluster(nodes: &[&str], models: Vec<CatalogModel>) -> (ClusterModel, Instant) {
    let t0 = Instant::now();
    let mut c = ClusterModel::new(t0, REPORT, 3);
    for m in models {
        c.add_model(m, false);
    }
    for n in nodes {
        c.join(n, &format!("{n}:8002"), status(200 * MIB, &[]), t0)
            .expect("join");
    }
    (c, t0 + DOWN_AFTER)
}

/// One placement round: snapshot, solve, apply.
pub(super) fn round(c: &mut ClusterModel, now: Instant) -> Vec<Action> {
    let snapshot = c
        .snapshot(Policy::Spread, 0.0, now)
        .expect("past the learning period");
    let changes = snapshot.changes(solve(&snapshot.problem, &snapshot.previous));
    c.apply(&changes, now)
}

pub(super) fn loads(actions: &[Action]) -> Vec<(String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Load { model, node, .. } => Some((model.clone(), node.clone())),
            _ => None,
        })
        .collect()
}

pub(super) fn unloads(actions: &[Action]) -> Vec<(String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Unload { model, node } => Some((model.clone(), node.clone())),
            _ => None,
        })
        .collect()
}

/// Places what the model wants and finishes every load.
pub(super) fn place_and_load(c: &mut ClusterModel, now: Instant) -> Vec<(String, String)> {
    let placed = loads(&round(c, now));
    for (m, n) in &placed {
        c.loaded(m, n, 60 * MIB, true, Duration::from_millis(5), now);
    }
    placed
}

/// Liveness checked every report interval after `from` up to `to`, as the placement
/// loop does; what the checks returned.
fn check_liveness_until(c: &mut ClusterModel, from: Instant, to: Instant) -> Vec<Action> {
    let mut t = from;
    let mut actions = Vec::new();
    while t < to {
        t = (t + REPORT).min(to);
        actions.extend(c.mark_silent_down(t));
    }
    actions
}

/// The messages of the recent events of `kind`, oldest first.
pub(super) fn messages(c: &ClusterModel, kind: &str) -> Vec<String> {
    c.events()
        .recent(100)
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.message)
        .collect()
}

fn events(c: &ClusterModel, kind: &str) -> usize {
    c.events()
        .recent(1000)
        .iter()
        .filter(|e| e.kind == kind)
        .count()
}

pub(super) fn ready_nodes(c: &ClusterModel, model: &str) -> Vec<String> {
    c.ready_replicas(model)
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

#[test]
fn a_join_adds_a_node_and_asks_for_placement() {
    let (mut c, now) = cluster(&[], vec![]);
    let actions = c.join("a", "a:8002", status(MIB, &[]), now).expect("join");
    assert_eq!(actions, vec![Action::Reconcile]);
    assert!(c.node("a").is_some_and(|n| n.schedulable()));
    assert_eq!(events(&c, "joined"), 1);
}

#[test]
fn a_join_without_a_name_or_address_is_refused() {
    let (mut c, now) = cluster(&[], vec![]);
    assert_eq!(
        c.join("", "a:8002", status(MIB, &[]), now),
        Err(SchedulerError::JoinWithoutName)
    );
    assert_eq!(
        c.join("a", "", status(MIB, &[]), now),
        Err(SchedulerError::JoinWithoutName)
    );
    assert_eq!(c.nodes().count(), 0);
}

#[test]
fn a_name_held_by_a_live_node_elsewhere_is_refused_until_that_node_goes_silent() {
    let (mut c, silent) = cluster(&["a"], vec![]);
    let joined = silent - DOWN_AFTER;
    let refused = c.join("a", "elsewhere:8002", status(MIB, &[]), joined + REPORT);
    assert!(
        matches!(&refused, Err(SchedulerError::NameTaken { address, .. }) if address == "a:8002"),
        "{refused:?}"
    );
    assert_eq!(c.node("a").map(|n| n.address.as_str()), Some("a:8002"));
    let later = silent + Duration::from_millis(1);
    c.join("a", "elsewhere:8002", status(MIB, &[]), later)
        .expect("the old one is silent");
    assert_eq!(
        c.node("a").map(|n| n.address.as_str()),
        Some("elsewhere:8002")
    );
}

#[test]
fn a_report_from_a_node_unknown_at_that_address_is_a_join() {
    let (mut c, now) = cluster(&["a"], vec![]);
    assert_eq!(
        c.report("b", "b:8002", status(MIB, &[]), now),
        Reported::Unknown
    );
    assert_eq!(
        c.report("a", "moved:8002", status(MIB, &[]), now),
        Reported::Unknown
    );
    assert_eq!(
        c.report("a", "a:8002", status(MIB, &[]), now),
        Reported::Known(vec![])
    );
}

#[test]
fn silent_nodes_go_down_and_their_replicas_are_placed_again() {
    let models = vec![catalog_model("m", pinned(1))];
    let (mut c, now) = cluster(&["a", "b"], models);
    let placed = place_and_load(&mut c, now);
    assert_eq!(placed.len(), 1);
    let (from, to) = if placed[0].1 == "a" {
        ("a", "b")
    } else {
        ("b", "a")
    };
    // Only the other node keeps reporting.
    let later = now + DOWN_AFTER + Duration::from_millis(1);
    c.report(to, &format!("{to}:8002"), status(200 * MIB, &[]), later);
    assert_eq!(
        c.mark_silent_down(now),
        vec![],
        "not silent for long enough"
    );
    let actions = check_liveness_until(&mut c, now, later);
    assert_eq!(
        actions,
        vec![
            Action::NodeDown {
                node: from.to_string()
            },
            Action::Reconcile
        ]
    );
    assert!(c.node(from).is_some_and(|n| n.down));
    assert!(c.replicas_of("m").is_empty(), "its replica went with it");
    assert_eq!(
        loads(&round(&mut c, later)),
        vec![("m".to_string(), to.to_string())]
    );
    assert_eq!(c.mark_silent_down(later), vec![], "marked once");
}

#[test]
fn a_stalled_scheduler_does_not_blame_the_nodes_for_its_own_silence() {
    let (mut c, now) = cluster(&["a"], vec![]);
    c.report("a", "a:8002", status(MIB, &[]), now);
    assert_eq!(c.mark_silent_down(now), vec![]);
    // Paused for 33 s: no report was read meanwhile.
    let resumed = now + Duration::from_secs(33);
    assert_eq!(c.mark_silent_down(resumed), vec![], "the silence was ours");
    assert!(c.node("a").is_some_and(|n| !n.down));
    // The node gets a whole window from then; silent through it, it is down.
    let after = resumed + DOWN_AFTER + Duration::from_millis(1);
    assert_eq!(
        check_liveness_until(&mut c, resumed, after),
        vec![
            Action::NodeDown {
                node: "a".to_string()
            },
            Action::Reconcile
        ]
    );
}

#[test]
fn a_down_node_that_reports_again_is_up_and_offers_room() {
    let (mut c, now) = cluster(&["a"], vec![]);
    c.node_unreachable("a", "connection refused");
    assert!(c.node("a").is_some_and(|n| n.down));
    let reported = c.report("a", "a:8002", status(MIB, &[]), now);
    assert_eq!(reported, Reported::Known(vec![Action::Reconcile]));
    assert!(c.node("a").is_some_and(|n| !n.down));
    assert_eq!(events(&c, "up"), 1);
}

#[test]
fn with_no_node_up_a_model_is_unplaceable_in_those_words() {
    let (mut c, now) = cluster(&["a"], vec![catalog_model("m", pinned(1))]);
    c.node_unreachable("a", "connection refused");
    round(&mut c, now);
    let said = messages(&c, "unplaceable");
    assert_eq!(
        said,
        vec!["no node can hold model 'm': no node is up and taking replicas (1 known)"]
    );
}

#[test]
fn an_unreachable_node_is_down_at_once_and_only_once() {
    let (mut c, now) = cluster(&["a"], vec![catalog_model("m", pinned(1))]);
    place_and_load(&mut c, now);
    let actions = c.node_unreachable("a", "connection reset");
    assert_eq!(
        actions,
        vec![Action::NodeDown { node: "a".into() }, Action::Reconcile]
    );
    assert!(c.ready_replicas("m").is_empty());
    assert_eq!(c.node_unreachable("a", "again"), vec![]);
    assert_eq!(events(&c, "down"), 1);
}

#[test]
fn draining_moves_replicas_to_another_node() {
    let (mut c, now) = cluster(&["a", "b"], vec![catalog_model("m", pinned(1))]);
    let from = place_and_load(&mut c, now)[0].1.clone();
    let to = if from == "a" { "b" } else { "a" };
    let (moved, actions) = c.drain(&from).expect("drain");
    assert_eq!(moved, vec!["m".to_string()]);
    assert_eq!(actions, vec![Action::Reconcile]);
    let actions = round(&mut c, now);
    assert_eq!(unloads(&actions), vec![("m".to_string(), from.clone())]);
    assert_eq!(loads(&actions), vec![("m".to_string(), to.to_string())]);
    assert!(c
        .node(&from)
        .is_some_and(|n| n.draining && !n.schedulable()));
    assert_eq!(
        c.drain("nowhere"),
        Err(SchedulerError::UnknownNode("nowhere".into()))
    );
}

#[test]
fn a_scheduler_that_becomes_leader_learns_again_before_it_places() {
    let t0 = Instant::now();
    let mut c = ClusterModel::new(t0, REPORT, 3);
    c.add_model(catalog_model("m", pinned(1)), false);
    let later = t0 + DOWN_AFTER * 4;
    assert!(c.snapshot(Policy::Spread, 0.0, later).is_some());
    c.learn_again(later);
    assert!(
        c.snapshot(Policy::Spread, 0.0, later + DOWN_AFTER / 2)
            .is_none(),
        "an agent may still be reconnecting to the new leader"
    );
    assert!(c
        .snapshot(Policy::Spread, 0.0, later + DOWN_AFTER)
        .is_some());
}

#[test]
fn a_restarted_scheduler_adopts_what_agents_report_and_loads_nothing_again() {
    let t0 = Instant::now();
    let mut c = ClusterModel::new(t0, REPORT, 3);
    c.add_model(catalog_model("m", pinned(1)), false);
    assert!(
        c.snapshot(Policy::Spread, 0.0, t0).is_none(),
        "placement waits to learn what agents hold"
    );
    // The agent's first report after the restart is a join.
    assert_eq!(
        c.report("a", "a:8002", status(200 * MIB, &["m"]), t0),
        Reported::Unknown
    );
    // It measured more than the model's hint (60 MiB).
    let mut holding = status(200 * MIB, &["m"]);
    holding.models[0].memory_bytes = 80 * MIB;
    c.join("a", "a:8002", holding, t0).expect("join");
    assert_eq!(ready_nodes(&c, "m"), vec!["a"]);
    assert_eq!(events(&c, "adopted"), 1);
    assert_eq!(round(&mut c, t0 + DOWN_AFTER), vec![], "nothing moves");
    let snapshot = c
        .snapshot(Policy::Spread, 0.0, t0 + DOWN_AFTER)
        .expect("past the learning period");
    let adopted = &snapshot.previous[0];
    assert_eq!(
        (adopted.node.as_str(), adopted.memory),
        ("a", 80 * MIB),
        "placement counts the memory the node reported for the replica"
    );
}

#[test]
fn a_replica_the_node_stops_reporting_goes_and_its_demand_ends() {
    let (mut c, now) = cluster(&["a"], vec![catalog_model("m", ClusterPolicy::default())]);
    assert!(matches!(
        c.pick("m", None, false, true, now, &mut StdRng::seed_from_u64(1)),
        Ok(Pick::Asked)
    ));
    place_and_load(&mut c, now);
    assert_eq!(ready_nodes(&c, "m"), vec!["a"]);
    // A report taken before the load finished is no news about it.
    c.report("a", "a:8002", status(200 * MIB, &[]), now);
    assert_eq!(ready_nodes(&c, "m"), vec!["a"]);
    // Later, the agent unloaded it for idleness.
    let later = now + Duration::from_secs(1);
    c.report("a", "a:8002", status(200 * MIB, &[]), later);
    assert!(c.replicas_of("m").is_empty());
    assert!(
        c.model("m").is_some_and(|m| !m.wanted),
        "not placed straight back"
    );
    assert_eq!(round(&mut c, later), vec![]);
}

#[test]
fn a_report_sent_before_an_unload_finished_does_not_bring_the_replica_back() {
    let (mut c, now) = cluster(&["a"], vec![catalog_model("m", pinned(1))]);
    place_and_load(&mut c, now);
    let (nodes, actions) = c.unload_model("m", now).expect("unload");
    assert_eq!(nodes, vec!["a".to_string()]);
    assert_eq!(
        actions,
        vec![
            Action::Unload {
                model: "m".into(),
                node: "a".into()
            },
            Action::Reconcile
        ]
    );
    c.report("a", "a:8002", status(200 * MIB, &["m"]), now);
    assert!(c.replicas_of("m").is_empty());
    assert_eq!(
        c.unload_model("nothing", now).map(|(n, _)| n),
        Err(SchedulerError::UnknownModel("nothing".into()))
    );
}

#[test]
fn a_busy_model_scales_up_after_the_delay_and_back_down_when_idle() {
    let policy = ClusterPolicy {
        max_replicas: 2,
        ..pinned(1)
    };
    let (mut c, now) = cluster(&["a", "b", "c"], vec![catalog_model("m", policy)]);
    place_and_load(&mut c, now);
    let mut rng = StdRng::seed_from_u64(7);
    let mut guards = Vec::new();
    for _ in 0..3 {
        match c.pick("m", None, true, true, now, &mut rng) {
            Ok(Pick::Ready { outstanding, .. }) => guards.push(outstanding),
            other => panic!("{other:?}"),
        }
    }
    let delay = Duration::from_secs(1);
    assert_eq!(c.scale(1.0, delay, now), vec![], "not busy for long yet");
    assert_eq!(c.scale(1.0, delay, now + delay), vec![Action::Reconcile]);
    assert_eq!(c.model("m").map(|m| m.scaled), Some(2));
    assert_eq!(events(&c, "scaled"), 1);
    let later = now + delay;
    assert_eq!(place_and_load(&mut c, later).len(), 1);
    assert_eq!(ready_nodes(&c, "m").len(), 2);
    // max_replicas holds however busy it stays.
    for _ in 0..6 {
        if let Ok(Pick::Ready { outstanding, .. }) = c.pick("m", None, true, true, later, &mut rng)
        {
            guards.push(outstanding);
        }
    }
    let much_later = later + 2 * delay;
    c.scale(1.0, delay, later);
    assert_eq!(c.scale(1.0, delay, much_later), vec![]);
    assert_eq!(round(&mut c, much_later), vec![]);
    // Idle: extra demand ends (the agents' TTL removes the replica).
    for g in &guards {
        g.fetch_sub(1, Ordering::Relaxed);
    }
    c.scale(1.0, delay, much_later);
    assert_eq!(c.model("m").map(|m| m.scaled), Some(0));
}

#[test]
fn a_request_asks_for_its_model_once_then_waits_and_learns_it_cannot_fit() {
    let big = ClusterPolicy {
        memory_hint: Some(500 * MIB),
        ..Default::default()
    };
    let (mut c, now) = cluster(&["a"], vec![catalog_model("big", big)]);
    let mut rng = StdRng::seed_from_u64(3);
    assert_eq!(
        c.pick("none", None, false, true, now, &mut rng).map(|_| ()),
        Err(SchedulerError::UnknownModel("none".into()))
    );
    assert!(matches!(
        c.pick("big", None, false, true, now, &mut rng),
        Ok(Pick::Asked)
    ));
    assert_eq!(
        c.model("big").map(|m| (m.wanted, m.cold_starts)),
        Some((true, 1))
    );
    assert!(matches!(
        c.pick("big", None, true, true, now, &mut rng),
        Ok(Pick::Wait)
    ));
    assert_eq!(round(&mut c, now), vec![]);
    let refused = c.pick("big", None, true, true, now, &mut rng).map(|_| ());
    match refused {
        Err(e @ SchedulerError::Unplaceable(_)) => {
            assert_eq!(e.code(), tonic::Code::ResourceExhausted);
            assert!(e.to_string().contains("model 'big'"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(events(&c, "unplaceable"), 1);
    round(&mut c, now);
    assert_eq!(events(&c, "unplaceable"), 1, "logged once while it holds");
}

#[test]
fn a_failed_load_is_the_answer_and_is_not_tried_again_until_asked() {
    let (mut c, now) = cluster(&["a"], vec![catalog_model("m", ClusterPolicy::default())]);
    let mut rng = StdRng::seed_from_u64(5);
    c.pick("m", None, false, true, now, &mut rng)
        .expect("asked");
    assert_eq!(loads(&round(&mut c, now)).len(), 1);
    assert_eq!(
        c.load_failed("m", "a", "not an onnx model", false, now),
        vec![]
    );
    let answer = c.pick("m", None, true, true, now, &mut rng).map(|_| ());
    assert_eq!(
        answer,
        Err(SchedulerError::LoadFailed(
            "model 'm' failed to load on a: not an onnx model".into()
        ))
    );
    assert_eq!(round(&mut c, now), vec![], "no retry loop");
    c.pick("m", None, false, true, now, &mut rng)
        .expect("asked again");
    assert_eq!(
        loads(&round(&mut c, now)).len(),
        1,
        "asking again tries again"
    );
}

#[test]
fn a_load_that_cannot_reach_its_node_marks_the_node_down() {
    let (mut c, now) = cluster(&["a"], vec![catalog_model("m", pinned(1))]);
    round(&mut c, now);
    let actions = c.load_failed("m", "a", "connection refused", true, now);
    assert_eq!(
        actions,
        vec![Action::NodeDown { node: "a".into() }, Action::Reconcile]
    );
    let failed = c.events.recent(10);
    let failed = failed
        .iter()
        .find(|e| e.kind == "load_failed")
        .expect("a load_failed event");
    assert!(
        failed
            .message
            .starts_with("the scheduler cannot reach node 'a' at ")
            && failed.message.ends_with(": connection refused"),
        "{}",
        failed.message
    );
}

#[test]
fn what_changed_while_solve_ran_is_respected() {
    let (mut c, now) = cluster(
        &["a", "b"],
        vec![catalog_model("m", ClusterPolicy::default())],
    );
    let mut rng = StdRng::seed_from_u64(9);
    c.pick("m", None, false, true, now, &mut rng)
        .expect("asked");
    let snapshot = c.snapshot(Policy::Spread, 0.0, now).expect("snapshot");
    let changes = snapshot.changes(solve(&snapshot.problem, &snapshot.previous));
    // Meanwhile the model was unloaded on request: its demand ended.
    c.unload_model("m", now).expect("unload");
    assert_eq!(c.apply(&changes, now), vec![]);
    assert!(c.replicas_of("m").is_empty());

    // Meanwhile the chosen node went down: nothing is loaded there.
    c.pick("m", None, false, true, now, &mut rng)
        .expect("asked");
    let snapshot = c.snapshot(Policy::Spread, 0.0, now).expect("snapshot");
    let changes = snapshot.changes(solve(&snapshot.problem, &snapshot.previous));
    let chosen = changes.coming[0].0 .1.clone();
    c.node_unreachable(&chosen, "gone");
    assert_eq!(c.apply(&changes, now), vec![]);
    // The next round places it on the node still up.
    assert_eq!(loads(&round(&mut c, now)).len(), 1);
}

#[test]
fn an_unchanged_cluster_moves_nothing() {
    let models = vec![catalog_model("m", pinned(1)), catalog_model("n", pinned(1))];
    let (mut c, now) = cluster(&["a", "b"], models);
    assert_eq!(place_and_load(&mut c, now).len(), 2);
    assert_eq!(round(&mut c, now), vec![]);
    assert_eq!(round(&mut c, now + Duration::from_secs(1)), vec![]);
}

#[test]
fn routing_prefers_the_replica_with_less_work() {
    let models = vec![catalog_model("m", pinned(2))];
    let (mut c, now) = cluster(&["a", "b"], models);
    place_and_load(&mut c, now);
    let busy = c
        .replica("m", "a")
        .map(|r| r.outstanding.clone())
        .expect("a");
    busy.fetch_add(10, Ordering::Relaxed);
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..20 {
        match c.pick("m", None, true, true, now, &mut rng) {
            Ok(Pick::Ready { node, outstanding }) => {
                assert_eq!(node, "b");
                outstanding.fetch_sub(1, Ordering::Relaxed);
            }
            other => panic!("{other:?}"),
        }
    }
    // A retry avoids the node that failed it, busy or not.
    match c.pick("m", Some("b"), true, true, now, &mut rng) {
        Ok(Pick::Ready { node, .. }) => assert_eq!(node, "a"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn two_choices_prefer_the_less_loaded_replica() {
    let mut rng = StdRng::seed_from_u64(42);
    let t = Instant::now();
    let loads = [(10, t), (0, t), (10, t), (10, t)];
    let picks: Vec<usize> = (0..2000).map(|_| choose(&loads, &mut rng)).collect();
    let idle = picks.iter().filter(|&&i| i == 1).count();
    // Replica 1 is chosen whenever it is drawn: with probability 1/2, not 1/4.
    assert!(idle > 800, "{idle} of 2000");
    assert_eq!(choose(&[(3, t)], &mut rng), 0);
}

#[test]
fn on_equal_load_the_replica_used_last_wins() {
    let mut rng = StdRng::seed_from_u64(42);
    let t = Instant::now();
    let later = t + Duration::from_millis(1);
    let loads = [(0, t), (0, later)];
    assert!((0..100).all(|_| choose(&loads, &mut rng) == 1));
}

#[test]
fn a_model_short_of_min_replicas_is_served_by_the_replica_it_has_and_logged_once_truly() {
    let (mut c, now) = cluster(&["a"], vec![catalog_model("m", pinned(2))]);
    let mut rng = StdRng::seed_from_u64(11);
    assert!(matches!(
        c.pick("m", None, false, true, now, &mut rng),
        Ok(Pick::Asked)
    ));
    assert_eq!(loads(&round(&mut c, now)), vec![("m".into(), "a".into())]);
    let logged = messages(&c, "unplaceable");
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(
        logged[0].contains("wants 2 replicas and has 1") && logged[0].contains("holds one already"),
        "the reason is the one-replica-per-node rule, not memory: {}",
        logged[0]
    );
    assert!(
        matches!(c.pick("m", None, true, true, now, &mut rng), Ok(Pick::Wait)),
        "a request waits for the loading replica instead of failing"
    );
    c.loaded("m", "a", 60 * MIB, true, Duration::from_millis(5), now);
    for _ in 0..3 {
        round(&mut c, now);
    }
    assert_eq!(events(&c, "unplaceable"), 1, "not again every round");
    assert!(matches!(
        c.pick("m", None, true, true, now, &mut rng),
        Ok(Pick::Ready { .. })
    ));
    // A second node makes it whole; a later shortage would be news again.
    c.join("b", "b:8002", status(200 * MIB, &[]), now)
        .expect("join");
    assert_eq!(loads(&round(&mut c, now)), vec![("m".into(), "b".into())]);
    assert_eq!(c.model("m").and_then(|m| m.short_logged.clone()), None);
}

#[test]
fn a_changed_file_unloads_the_old_replicas_and_places_the_new_one_where_wanted() {
    let (mut c, now) = cluster(&["a"], vec![catalog_model("m", pinned(1))]);
    assert_eq!(place_and_load(&mut c, now).len(), 1);
    let same = catalog_model("m", pinned(1));
    assert_eq!(c.refresh_model(same, now), vec![], "nothing changed");
    let mut changed = catalog_model("m", pinned(1));
    changed.digest = "sha-m-2".into();
    changed.version = 2;
    let actions = c.refresh_model(changed, now);
    assert_eq!(unloads(&actions), vec![("m".into(), "a".into())]);
    assert!(actions.contains(&Action::Reconcile));
    assert_eq!(
        loads(&round(&mut c, now)),
        vec![("m".into(), "a".into())],
        "the new file is loaded where the old one was"
    );
    assert_eq!(c.model("m").map(|m| m.version), Some(2));
    let added = c.refresh_model(catalog_model("new", ClusterPolicy::default()), now);
    assert_eq!(added, vec![Action::Reconcile]);
    assert_eq!(events(&c, "cataloged"), 1);
}

#[test]
fn a_node_that_keeps_failing_loads_rests_then_takes_replicas_again() {
    let (mut c, now) = cluster(&["a"], vec![catalog_model("m", ClusterPolicy::default())]);
    let mut rng = StdRng::seed_from_u64(5);
    let mut ask_and_round = |c: &mut ClusterModel, at: Instant| {
        c.pick("m", None, false, true, at, &mut rng).expect("asked");
        loads(&round(c, at))
    };
    for _ in 0..super::nodes::FAILURES_BEFORE_REST {
        assert_eq!(ask_and_round(&mut c, now).len(), 1);
        assert_eq!(messages(&c, "resting"), Vec::<String>::new());
        c.load_failed("m", "a", "connection refused", false, now);
    }
    assert_eq!(
        messages(&c, "resting"),
        vec![
            "3 loads in a row failed here (last: connection refused); no new replica goes \
             here for 5 s"
                .to_string()
        ]
    );
    assert!(
        ask_and_round(&mut c, now).is_empty(),
        "no load while it rests"
    );
    // Reporting all along, its rest ends after 5 s and it is placed on again.
    let later = now + Duration::from_secs(5);
    let mut t = now;
    let mut checks = Vec::new();
    while t < later {
        t += REPORT;
        c.report("a", "a:8002", status(200 * MIB, &[]), t);
        checks.extend(c.mark_silent_down(t));
    }
    assert_eq!(checks, vec![Action::Reconcile], "once, when the rest ends");
    assert_eq!(messages(&c, "rested").len(), 1);
    assert_eq!(ask_and_round(&mut c, later), vec![("m".into(), "a".into())]);
    // A success starts the count again: one more failure is not a rest.
    c.loaded("m", "a", 60 * MIB, true, Duration::from_millis(5), later);
    assert_eq!(c.node("a").map(|n| n.load_failures), Some(0));
}

#[test]
fn rests_double_from_five_seconds_up_to_five_minutes() {
    use super::nodes::rest_for;
    let secs = |f| rest_for(f).map(|d| d.as_secs());
    assert_eq!([secs(0), secs(2)], [None, None]);
    assert_eq!([secs(3), secs(4), secs(5)], [Some(5), Some(10), Some(20)]);
    assert_eq!([secs(9), secs(40), secs(u32::MAX)], [Some(300); 3]);
}

#[test]
fn an_attempt_is_overdue_after_four_p99s_once_measured_and_never_past_the_keepalive() {
    use super::routing::hedge_delay;
    let ms = Duration::from_millis;
    assert_eq!(hedge_delay(99, ms(10)), None, "too few measured");
    assert_eq!(hedge_delay(100, ms(10)), Some(ms(200)), "at least 200 ms");
    assert_eq!(hedge_delay(1000, ms(100)), Some(ms(400)));
    assert_eq!(
        hedge_delay(1000, ms(750)),
        None,
        "3 s: the keepalive decides first"
    );
}

#[test]
fn a_suspect_node_gets_requests_only_when_no_other_can_take_them() {
    let (mut c, now) = cluster(&["a", "b"], vec![catalog_model("m", pinned(2))]);
    place_and_load(&mut c, now);
    assert_eq!(ready_nodes(&c, "m"), ["a", "b"]);
    assert!(c.suspect("a", "unanswered"));
    assert!(!c.suspect("a", "again"), "one event per suspicion");
    assert_eq!(messages(&c, "suspect"), ["unanswered"]);
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..20 {
        match c.pick("m", None, false, true, now, &mut rng) {
            Ok(Pick::Ready { node, .. }) => assert_eq!(node, "b"),
            other => panic!("{other:?}"),
        }
    }
    // With "b" avoided, the suspect one still serves rather than nobody.
    match c.pick("m", Some("b"), false, true, now, &mut rng) {
        Ok(Pick::Ready { node, .. }) => assert_eq!(node, "a"),
        other => panic!("{other:?}"),
    }
    // Heard from again, it is not suspect any more.
    c.report("a", "a:8002", status(200 * MIB, &["m"]), now);
    assert!(c.node("a").is_some_and(|n| !n.suspect));
}

#[test]
fn changed_settings_go_to_every_running_replica_with_pinned_ones_kept_without_ttl() {
    let (mut c, now) = cluster(&["a", "b"], vec![catalog_model("m", pinned(2))]);
    assert_eq!(place_and_load(&mut c, now).len(), 2);
    let mut changed = catalog_model("m", pinned(2));
    changed.settings.max_batch_size = 4;
    let actions = c.refresh_model(changed, now);
    let sent: Vec<(String, u32, i64)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Reconfigure { node, settings, .. } => {
                Some((node.clone(), settings.max_batch_size, settings.ttl_ms))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        sent,
        [("a".to_string(), 4, -1), ("b".to_string(), 4, -1)],
        "pinned replicas never unload, whatever herd.toml's TTL"
    );
    assert!(
        unloads(&actions).is_empty(),
        "nothing reloads for new settings"
    );
    assert_eq!(
        messages(&c, "changed"),
        ["herd.toml changed (max_batch_size 32 -> 4): sent to 2 running replicas"]
    );
}

#[test]
fn the_hedge_delay_follows_the_model_s_measured_latency() {
    let (mut c, _) = cluster(&["a"], vec![catalog_model("m", ClusterPolicy::default())]);
    assert_eq!(c.hedge_after("m"), None, "nothing measured");
    for _ in 0..128 {
        c.request_done("m", true, 1_000);
    }
    assert_eq!(c.hedge_after("m"), Some(Duration::from_millis(200)));
    for _ in 0..1024 {
        c.request_done("m", true, 800_000);
    }
    assert_eq!(
        c.hedge_after("m"),
        None,
        "4 x 800 ms is past the keepalive: it decides"
    );
}

fn wake(mac: &str) -> herd_proto::herd::WakeOnLan {
    herd_proto::herd::WakeOnLan {
        mac: mac.to_string(),
        address: "192.168.1.255:9".to_string(),
    }
}

#[test]
fn only_a_down_node_that_said_how_is_woken_and_a_packet_is_sent_again_while_it_sleeps() {
    let (mut c, t) = cluster(&[], vec![]);
    let mut gpu = status(200 * MIB, &[]);
    gpu.wake = Some(wake("aa:bb:cc:dd:ee:ff"));
    c.join("gpu", "gpu:8002", gpu.clone(), t).expect("join");
    c.join("small", "small:8002", status(200 * MIB, &[]), t)
        .expect("join");
    let timeout = Duration::from_secs(120);
    // Up, it needs no wake.
    assert_eq!(c.plan_wake(t, timeout), WakePlan::default());

    check_liveness_until(&mut c, t, t + DOWN_AFTER * 2);
    let t = t + DOWN_AFTER * 2;
    assert!(c.node("gpu").is_some_and(|n| n.down));
    assert_eq!(c.sleeping_wakeable(), vec!["gpu".to_string()]);
    let plan = c.plan_wake(t, timeout);
    assert!(plan.waiting);
    assert_eq!(
        plan.send,
        vec![("gpu".to_string(), wake("aa:bb:cc:dd:ee:ff"))]
    );
    c.wake_sent("gpu", &wake("aa:bb:cc:dd:ee:ff"), "model 'm' needs it", t);
    assert_eq!(messages(&c, "wake").len(), 1);

    // Another request meanwhile waits without a second packet, until one is due.
    let plan = c.plan_wake(t + Duration::from_secs(1), timeout);
    assert!(plan.waiting && plan.send.is_empty(), "{plan:?}");
    let later = t + RESEND_EVERY;
    assert_eq!(c.plan_wake(later, timeout).send.len(), 1);
    c.wake_sent(
        "gpu",
        &wake("aa:bb:cc:dd:ee:ff"),
        "model 'm' needs it",
        later,
    );
    assert_eq!(messages(&c, "wake").len(), 1, "one event per wake");

    // It joins: the wake ends, with how long it took.
    c.join("gpu", "gpu:8002", gpu, t + Duration::from_secs(40))
        .expect("join");
    let woke = messages(&c, "woke");
    assert_eq!(woke, vec!["joined 40.0 s after its wake began".to_string()]);
    assert!(!c.waking_now());
}

#[test]
fn a_wake_that_runs_out_ends_and_a_node_known_only_from_the_store_can_be_woken() {
    let (mut c, t) = cluster(&[], vec![]);
    c.remember_wakeable("asleep", wake("01:02:03:04:05:06"));
    assert_eq!(c.sleeping_wakeable(), vec!["asleep".to_string()]);
    let timeout = Duration::from_secs(120);
    let plan = c.plan_wake(t, timeout);
    assert_eq!(plan.send.len(), 1);
    c.wake_sent("asleep", &wake("01:02:03:04:05:06"), "by hand", t);
    assert!(c.waking_now());
    // Past the timeout the wake is over; the next request begins another.
    let plan = c.plan_wake(t + timeout, timeout);
    assert!(plan.waiting && plan.send.len() == 1, "{plan:?}");
    // Once it joins, what it reports is what counts: without --wake-mac it is not
    // wakeable any more.
    c.join("asleep", "asleep:8002", status(200 * MIB, &[]), t + timeout)
        .expect("join");
    assert!(c.wake_target("asleep").is_none());
    assert!(c.sleeping_wakeable().is_empty());
}
