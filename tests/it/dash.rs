//! `herd dash` end to end, in a real terminal (tmux): `herd up` plus a second agent, the
//! dashboard showing both nodes with memory figures, and `d` then `y` draining one.

use std::process::Stdio;
use std::time::Duration;

use herd_proto::herd::{ListNodesRequest, NodeState};
use tokio::process::Command;

use crate::cluster_support::{serving_addr, tls_channel, HERD};
use crate::support::repository;

const TOKEN: &str = "dash-token";

struct Tmux(String);

impl Tmux {
    fn run(args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .args(args)
            .output()
            .expect("run tmux");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
    fn screen(&self) -> String {
        Tmux::run(&["capture-pane", "-p", "-t", &self.0])
    }
    fn keys(&self, keys: &str) {
        Tmux::run(&["send-keys", "-t", &self.0, keys]);
    }
    /// Waits until the screen satisfies `check`, failing with the screen after `within`.
    async fn until(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if check(&screen) {
                return screen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        Tmux::run(&["kill-session", "-t", &self.0]);
    }
}

/// A figure like "0.4/1.0G" or "12/60M": used over capacity, with a unit.
fn has_memory_figure(line: &str) -> bool {
    line.split_whitespace().any(|w| {
        let Some((used, cap)) = w.split_once('/') else {
            return false;
        };
        let unit = cap.chars().last().is_some_and(|c| "BKMGT".contains(c));
        let number = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.');
        unit && number(used.trim_start_matches(|c: char| !c.is_ascii_digit()))
            && number(&cap[..cap.len() - 1])
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_both_nodes_and_drains_one() {
    assert!(
        std::process::Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()),
        "tmux is missing: scripts/test.sh installs it with apt"
    );
    let repo = repository();
    let data = tempfile::tempdir().expect("tempdir");
    let mut up = Command::new(HERD)
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--token",
            TOKEN,
            "--name",
            "local",
            // As between machines: the dashboard and the second agent over TLS.
            "--tls",
            "on",
        ])
        .args(["--memory-limit", "1GiB", "--report-interval", "200ms"])
        .arg("--model-repository")
        .arg(repo.path())
        .arg("--data-dir")
        .arg(data.path().join("up"))
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start herd up");
    let addr = serving_addr(&mut up, "herd up: scheduler and local agent serving").await;
    // herd up serves TLS: everything else joins and calls with its join token.
    let join_token = data.path().join("up").join("join-token");
    let mut second = Command::new(HERD)
        .args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "second",
            "--memory-limit",
            "2GiB",
        ])
        .args(["--scheduler", &addr, "--token-file"])
        .arg(&join_token)
        .arg("--data-dir")
        .arg(data.path().join("second"))
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the second agent");
    serving_addr(&mut second, "agent serving").await;

    let session = format!("herd-dash-{}", std::process::id());
    let command = format!(
        "HERD_TOKEN_FILE={} {HERD} dash --scheduler {addr}",
        join_token.display()
    );
    Tmux::run(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "100",
        "-y",
        "30",
        &command,
    ]);
    let tmux = Tmux(session);
    let screen = tmux
        .until("both nodes with memory figures", |s| {
            let rows: Vec<&str> = s
                .lines()
                .filter(|l| l.contains("local") || l.contains("second"))
                .collect();
            rows.iter()
                .any(|l| l.contains("local") && has_memory_figure(l))
                && rows
                    .iter()
                    .any(|l| l.contains("second") && has_memory_figure(l))
        })
        .await;
    assert!(screen.contains("connected"), "{screen}");

    // Rows are sorted by name: local, then second.
    tmux.keys("j");
    tmux.keys("d");
    tmux.until("the drain question", |s| s.contains("Drain node second"))
        .await;
    tmux.keys("y");
    // The node's own row (it starts with its name), not the footer's "draining second…".
    tmux.until("the node shown draining", |s| {
        s.lines()
            .any(|l| l.starts_with("second") && l.contains("drain"))
    })
    .await;
    let ca = std::fs::read_to_string(data.path().join("up").join("ca.pem")).expect("the CA");
    let channel = tls_channel(&addr, &ca, herd_core::tls::SCHEDULER_NAME).await;
    let mut admin = herd_proto::herd::admin_client::AdminClient::with_interceptor(
        channel,
        herd_core::auth::SendToken::new(Some(TOKEN)).expect("ascii"),
    );
    let nodes = admin
        .list_nodes(ListNodesRequest {})
        .await
        .expect("list")
        .into_inner()
        .nodes;
    let state = nodes.iter().find(|n| n.name == "second").map(|n| n.state);
    assert_eq!(state, Some(NodeState::Draining as i32));
    // The models view's why: placement's own answer, from the scheduler.
    tmux.keys("Tab");
    tmux.keys("w");
    let why = tmux
        .until("the why popup answered", |s| {
            s.contains(" Why ") && s.contains("NODE") && s.contains("per replica")
        })
        .await;
    assert!(
        why.lines()
            .any(|l| l.contains("second") && l.contains("draining") && l.contains("takes no new")),
        "{why}"
    );
    tmux.keys("Escape");
    tmux.until("the popup closed", |s| !s.contains(" Why "))
        .await;
    tmux.keys("q");
    drop(second);
    drop(up);
}
