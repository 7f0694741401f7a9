//! A real etcd for tests, on free loopback ports: the store's own tests and the
//! integration tests of several schedulers (feature `testing`) start theirs here.
//!
//! etcd runs under a shell that holds a pipe from this process: when the pipe closes
//! (the [`Etcd`] dropped, or the test binary gone however it exits), the shell stops
//! etcd and removes its data directory.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use super::etcd::EtcdStore;

/// How long etcd may take to start answering.
const STARTUP: Duration = Duration::from_secs(30);

/// A running etcd; dropping it stops it.
pub struct Etcd {
    pub endpoint: String,
    /// Kept open for as long as etcd should run: its end stops it.
    _lifeline: ChildStdin,
    _shell: Child,
}

/// A loopback port free now. etcd binds it a moment later; another process taking it in
/// between would show as etcd failing to start, with its log.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Starts an etcd of its own, for a test that stops it; the others share one.
pub async fn start() -> Etcd {
    match Command::new("etcd").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`etcd --version` failed: {out:?}; run scripts/setup.sh"),
        Err(e) => panic!(
            "etcd is not installed ({e}): run scripts/setup.sh, which installs Debian's \
             etcd-server; the etcd store's tests need a real etcd"
        ),
    }
    let dir = tempfile::Builder::new()
        .prefix("herd-test-etcd-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = dir.join("etcd.log");
    let mut shell = Command::new("sh")
        .args([
            "-c",
            r#"dir=$1; shift; etcd "$@" </dev/null >"$dir/etcd.log" 2>&1 & pid=$!
               read -r _; kill "$pid"; wait "$pid" 2>/dev/null; rm -rf "$dir""#,
            "sh",
        ])
        .arg(&dir)
        .args(["--name", "test", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("test={peer_url}")])
        .args(["--logger", "zap", "--log-level", "warn"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("start etcd under sh");
    let lifeline = shell.stdin.take().expect("piped stdin");
    let endpoint = format!("127.0.0.1:{client}");
    wait_until_it_answers(&endpoint, &log).await;
    Etcd {
        endpoint,
        _lifeline: lifeline,
        _shell: shell,
    }
}

/// Polls until etcd answers a call, with a deadline; a failure shows etcd's log.
async fn wait_until_it_answers(endpoint: &str, log: &Path) {
    let deadline = Instant::now() + STARTUP;
    let endpoints = [endpoint.to_owned()];
    loop {
        let error = match EtcdStore::connect(&endpoints, "", Duration::from_secs(1)).await {
            Ok(_) => return,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            let mut text = String::new();
            if let Ok(mut file) = std::fs::File::open(log) {
                let _ = file.read_to_string(&mut text);
            }
            panic!("etcd at {endpoint} did not answer within {STARTUP:?}: {error}\netcd's log:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
