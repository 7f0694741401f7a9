//! The `herd` executable as users run it: started as a child process on a free port,
//! driven by the stock Triton Python client, and failing clearly on bad setup.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::*;

const HERD: &str = env!("CARGO_BIN_EXE_herd");

/// A `herd agent` child process serving a fresh copy of tests/models.
struct AgentProcess {
    child: Child,
    addr: String,
    _repo: tempfile::TempDir,
}

impl AgentProcess {
    async fn start() -> AgentProcess {
        let repo = repository();
        let mut child = Command::new(HERD)
            .args(["agent", "--listen", "127.0.0.1:0", "--model-repository"])
            .arg(repo.path())
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start herd agent");
        // The agent logs its bound address once it serves.
        let addr = crate::cluster_support::serving_addr(&mut child, "agent serving").await;
        AgentProcess {
            child,
            addr,
            _repo: repo,
        }
    }
}

pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("HERD_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python");
    assert!(
        venv.is_file(),
        "{} is missing: run scripts/setup.sh (it installs tritonclient), or set HERD_TEST_PYTHON",
        venv.display()
    );
    venv
}

/// Runs tests/tritonclient_check.py against `addr` and fails the test if it fails.
pub async fn tritonclient_check(addr: &str, token: Option<&str>, ca: Option<&Path>) {
    python_check("tritonclient_check.py", addr, token, ca).await;
}

/// Runs the Python check `tests/SCRIPT` against `addr` (with the token, if any; over
/// TLS verified with the CA file `ca`, if any) and fails the test, with what it
/// printed, if it fails.
pub async fn python_check(script: &str, addr: &str, token: Option<&str>, ca: Option<&Path>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let mut command = Command::new(python());
    match ca {
        Some(ca) => command.env("HERD_CA_CERT", ca),
        None => command.env_remove("HERD_CA_CERT"),
    };
    let out = command
        .arg(path)
        .arg(addr)
        .args(token)
        .output()
        .await
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_tritonclient_works_against_herd_agent() {
    let agent = AgentProcess::start().await;
    tritonclient_check(&agent.addr, None, None).await;
    drop(agent.child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_tritonclient_works_against_herd_up() {
    let repo = repository();
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(HERD)
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--token",
            "up-token",
            // As between machines: the stock client over TLS.
            "--tls",
            "on",
        ])
        .arg("--model-repository")
        .arg(repo.path())
        .arg("--data-dir")
        .arg(data.path())
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start herd up");
    let addr = crate::cluster_support::serving_addr(
        &mut child,
        "herd up: scheduler and local agent serving",
    )
    .await;
    // herd up serves TLS; the stock client verifies it with the CA file it writes.
    tritonclient_check(&addr, Some("up-token"), Some(&data.path().join("ca.pem"))).await;
    drop(child);
}

#[tokio::test]
async fn a_missing_onnx_runtime_is_one_clear_line_and_a_failed_exit() {
    let repo = repository();
    for lib in ["/nonexistent/libonnxruntime.so", "/bin/sh"] {
        let out = Command::new(HERD)
            .args([
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--ort-lib",
                lib,
                "--model-repository",
            ])
            .arg(repo.path())
            .env("NO_COLOR", "1")
            .output()
            .await
            .expect("run herd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line, got: {stderr}");
        assert!(
            lines[0].starts_with("herd: error: cannot load ONNX Runtime 1.31.1"),
            "{stderr}"
        );
        assert!(
            lines[0].contains(lib) && lines[0].contains("scripts/setup.sh"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn bad_flags_are_refused_with_usage() {
    for args in [
        vec!["agent"],
        vec!["agent", "--model-repository", ".", "--ttl", "soon"],
        vec!["agent", "--model-repository", ".", "--max-batch-size", "0"],
        vec!["agent", "--model-repository", ".", "--listen", "nowhere"],
    ] {
        let out = Command::new(HERD)
            .args(&args)
            .output()
            .await
            .expect("run herd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("error:") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_without_a_token_generates_one_keeps_it_and_prints_it_once() {
    let repo = repository();
    let data = tempfile::tempdir().expect("tempdir");
    let mut printed = Vec::new();
    for _ in 0..2 {
        let mut child = Command::new(HERD)
            .args([
                "scheduler",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ])
            .arg("--model-repository")
            .arg(repo.path())
            .arg("--data-dir")
            .arg(data.path())
            .env("NO_COLOR", "1")
            .env_remove("HERD_TOKEN")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start herd scheduler");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().await.expect("read log") {
            let serving = line.contains("scheduler serving");
            seen.push(line);
            if serving {
                break;
            }
        }
        assert!(
            seen.iter().any(|l| l.contains("scheduler serving")),
            "{seen:?}"
        );
        printed.push(
            seen.iter()
                .any(|l| l.contains("generated the cluster token")),
        );
        child.kill().await.expect("stop the scheduler");
        let _ = child.wait().await;
    }
    assert_eq!(printed, vec![true, false], "printed on first start only");
    let token =
        std::fs::read_to_string(data.path().join("token")).expect("token kept in the data dir");
    assert_eq!(token.trim().len(), 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.path().join("token"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "only its owner may read the token");
    }
}

#[tokio::test]
async fn an_agent_joining_a_scheduler_refuses_per_model_default_flags() {
    /// Flags, environment, and what the refusal must name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 2] = [
        (
            &["--ttl", "5s", "--max-batch-size", "4"],
            &[],
            &["--ttl (HERD_TTL)", "--max-batch-size (HERD_MAX_BATCH_SIZE)"],
        ),
        (
            &[],
            &[("HERD_QUEUE_CAPACITY", "8")],
            &["--queue-capacity (HERD_QUEUE_CAPACITY)"],
        ),
    ];
    for (flags, env, named) in cases {
        let mut command = Command::new(HERD);
        command
            .args([
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--scheduler",
                "127.0.0.1:1",
            ])
            // Refused before anything starts: a missing ONNX Runtime is not reached.
            .args(["--ort-lib", "/nonexistent/libonnxruntime.so"])
            .args(flags)
            .env("NO_COLOR", "1");
        for var in [
            "HERD_TTL",
            "HERD_MAX_BATCH_SIZE",
            "HERD_MAX_BATCH_DELAY",
            "HERD_QUEUE_CAPACITY",
            "HERD_INTRA_OP_THREADS",
        ] {
            command.env_remove(var);
        }
        command.envs(env.iter().copied());
        let out = command.output().await.expect("run herd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?} {env:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line, got: {stderr}");
        assert!(lines[0].starts_with("herd: error: "), "{stderr}");
        for flag in named {
            assert!(lines[0].contains(flag), "{flag} not named: {stderr}");
        }
        assert!(
            lines[0].contains("the scheduler's model repository (herd.toml) sets"),
            "{stderr}"
        );
    }
}
