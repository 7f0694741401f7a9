//! A multi-host test bed: N hosts as network namespaces, each with one veth link to a
//! bridge that lives in a namespace of its own, addresses 10.77.0.1, .2, … A partition
//! is a host's link set down on the bridge side (packets dropped, no RST, as a cut
//! cable or a dead switch port does). Processes run inside a host with `ip netns exec`;
//! only the bed's own namespaces are ever addressed. Everything is torn down on drop,
//! also when a test fails. Needs root (CAP_NET_ADMIN): without it [`NetBed::new`]
//! returns `None` after saying so, and the test skips, never passing silently.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

static BEDS: AtomicUsize = AtomicUsize::new(0);

pub struct NetBed {
    prefix: String,
    hosts: usize,
}

/// Runs `ip ARGS`; its error output on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetBed {
    /// `hosts` hosts on one bridge, or `None` (said on stderr) where namespaces
    /// cannot be made here.
    pub fn new(test: &str, hosts: usize) -> Option<NetBed> {
        let id = BEDS.fetch_add(1, Ordering::Relaxed);
        let bed = NetBed {
            prefix: format!("herd{}-{id}", std::process::id()),
            hosts: 0,
        };
        match bed.build(hosts) {
            Ok(bed) => Some(bed),
            Err(why) => {
                eprintln!("SKIPPED {test}: cannot build network namespaces here ({why})");
                None
            }
        }
    }

    fn build(mut self, hosts: usize) -> Result<NetBed, String> {
        let bridge = self.bridge_ns();
        ip(&["netns", "add", &bridge])?;
        // From here on, drop tears down whatever was made.
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        for i in 0..hosts {
            let ns = self.host_ns(i);
            ip(&["netns", "add", &ns])?;
            self.hosts = i + 1;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let port = format!("p{i}");
            ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &bridge,
            ])?;
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &bridge, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.address(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(self)
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    fn host_ns(&self, host: usize) -> String {
        format!("{}-h{host}", self.prefix)
    }

    /// Host `host`'s address on the bridge.
    pub fn address(&self, host: usize) -> String {
        format!("10.77.0.{}", host + 1)
    }

    /// A command that runs `program` inside host `host`; killed when dropped.
    pub fn command(&self, host: usize, program: &str) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.host_ns(host), program])
            .kill_on_drop(true);
        command
    }

    /// Cuts host `host` off the bridge: its packets are dropped, nobody hears a reset.
    pub fn cut(&self, host: usize) {
        self.set_port(host, "down");
    }

    /// Puts host `host` back on the bridge.
    pub fn heal(&self, host: usize) {
        self.set_port(host, "up");
    }

    /// Takes host `host`'s own interface down or up: down, it has no route to anyone,
    /// as a machine whose network is not up yet (its address stays configured).
    pub fn set_network(&self, host: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.host_ns(host), "link", "set", "eth0", state]).expect("set eth0");
    }

    /// Sets host `host`'s port on the bridge "up" or "down".
    fn set_port(&self, host: usize, state: &str) {
        let port = format!("p{host}");
        ip(&["-n", &self.bridge_ns(), "link", "set", &port, state]).expect("set the port");
    }
}

impl Drop for NetBed {
    fn drop(&mut self) {
        // Deleting a namespace deletes the links in it; processes inside were killed
        // by their handles (dropped before the bed by the tests that hold both).
        for i in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.host_ns(i)]);
        }
        let _ = ip(&["netns", "del", &self.bridge_ns()]);
    }
}

/// A process on the bed whose stderr lines are kept, so that a test can wait for one.
pub struct Logged {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Logged {
    pub fn spawn(mut command: Command) -> Logged {
        let mut child = command
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a process on the bed");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        let stderr = child.stderr.take().expect("stderr");
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                kept.lock().expect("not poisoned").push(line);
            }
        });
        Logged { child, lines }
    }

    /// Lines so far that contain every one of `parts`.
    pub fn count(&self, parts: &[&str]) -> usize {
        self.lines
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    /// Waits until `n` lines contain every one of `parts`.
    pub async fn wait_for(&self, parts: &[&str], n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.count(parts) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} lines with {parts:?}; log:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn text(&self) -> String {
        self.lines.lock().expect("not poisoned").join("\n")
    }
}
