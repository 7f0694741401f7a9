//! `herd models why MODEL` and the dashboard's why popup: placement's view of one model, as a table per memory pool
//! and a line for where one more replica would go. Rendering is pure, tested on
//! hand-built answers.

use std::fmt::Write as _;

use bytesize::ByteSize;
use herd_proto::herd::{ExplainModelResponse, NodeState, PoolFit};

use crate::table;
use crate::view::node_state;

fn size(n: u64) -> String {
    ByteSize::b(n).display().iec().to_string()
}

fn state(p: &PoolFit) -> String {
    node_state(NodeState::try_from(p.state).unwrap_or_default())
}

/// The answer for people.
pub fn why_table(e: &ExplainModelResponse, what_if: bool) -> String {
    let mut s = String::new();
    let memory = if what_if {
        format!("{} per replica (what if)", size(e.memory_bytes))
    } else {
        format!("{} per replica", size(e.memory_bytes))
    };
    let replicas = match e.replicas {
        1 => "1 replica".to_string(),
        n => format!("{n} replicas"),
    };
    let _ = writeln!(
        s,
        "model {}: {memory}; {replicas} now, placement's target {}; policy {}",
        e.model, e.target_replicas, e.policy
    );
    let rows: Vec<Vec<String>> = e
        .pools
        .iter()
        .map(|p| {
            vec![
                p.node.clone(),
                p.device.clone(),
                state(p),
                size(p.budget_bytes),
                if p.overcommitted {
                    "over".to_string()
                } else {
                    size(p.free_bytes)
                },
                if p.fits { "yes" } else { "no" }.to_string(),
                if p.holds_file { "yes" } else { "no" }.to_string(),
                if p.rank > 0 {
                    p.rank.to_string()
                } else {
                    "-".to_string()
                },
                p.verdict.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        s.push_str("no node has joined\n");
    } else {
        s.push_str(&table::render(
            &[
                "NODE", "DEVICE", "STATE", "BUDGET", "FREE", "FITS", "FILE", "RANK", "WHY",
            ],
            &rows,
            &["BUDGET", "FREE", "RANK"],
        ));
    }
    if !e.next.is_empty() {
        let _ = writeln!(s, "{}", e.next);
    }
    s
}

/// The answer for scripts.
pub fn why_json(e: &ExplainModelResponse) -> serde_json::Value {
    let pools: Vec<serde_json::Value> = e
        .pools
        .iter()
        .map(|p| {
            serde_json::json!({
                "node": p.node,
                "device": p.device,
                "state": state(p),
                "budget_bytes": p.budget_bytes,
                "free_bytes": p.free_bytes,
                "overcommitted": p.overcommitted,
                "fits": p.fits,
                "holds_file": p.holds_file,
                "has_replica": p.has_replica,
                "rank": (p.rank > 0).then_some(p.rank),
                "why": p.verdict,
            })
        })
        .collect();
    serde_json::json!({
        "model": e.model,
        "memory_bytes": e.memory_bytes,
        "policy": e.policy,
        "replicas": e.replicas,
        "target_replicas": e.target_replicas,
        "pools": pools,
        "next": e.next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> ExplainModelResponse {
        let pool = |node: &str, free: u64, rank: u32, verdict: &str| PoolFit {
            node: node.into(),
            device: "cpu".into(),
            state: NodeState::Up as i32,
            budget_bytes: 4 << 30,
            free_bytes: free,
            fits: free >= 1 << 30,
            rank,
            verdict: verdict.into(),
            ..Default::default()
        };
        ExplainModelResponse {
            model: "m".into(),
            memory_bytes: 1 << 30,
            policy: "spread".into(),
            target_replicas: 1,
            replicas: 0,
            pools: vec![
                pool("a", 3 << 30, 1, "first choice (most free first)"),
                pool("b", 1 << 29, 0, "too small: needs 1.0 GiB, 512.0 MiB free"),
            ],
            next: "one more replica would go to a (cpu): spread: most free RAM (3.0 GiB)".into(),
        }
    }

    #[test]
    fn the_table_has_a_row_per_pool_and_ends_with_where_the_next_replica_goes() {
        let s = why_table(&answer(), true);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[0],
            "model m: 1.0 GiB per replica (what if); 0 replicas now, placement's target 1; policy spread"
        );
        assert!(lines[1].starts_with("NODE"), "{s}");
        assert!(
            lines[2].contains("3.0 GiB") && lines[2].ends_with("first choice (most free first)"),
            "{s}"
        );
        assert!(
            lines[3].contains(" - ") && lines[3].contains("too small"),
            "{s}"
        );
        assert_eq!(lines[4], answer().next);
    }

    #[test]
    fn the_json_names_the_state_and_leaves_rank_out_where_none() {
        let v = why_json(&answer());
        assert_eq!(v["pools"][0]["state"], "up");
        assert_eq!(v["pools"][0]["rank"], 1);
        assert!(v["pools"][1]["rank"].is_null());
        assert_eq!(v["next"], answer().next);
    }
}
