//! Several schedulers over one real etcd, as processes (so that the leader can be
//! killed for real): one leads, the others route from the agents' reports and hand
//! what needs placing to it; killed, it is replaced, and a client that knows two
//! gateways loses no request.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_client::{Client, ConnectOptions};
use herd_scheduler::store::test_etcd::{self, Etcd};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio::time::Instant;

use crate::cluster_support::{herd, log_lines, TOKEN};
use crate::support::*;

const WITHIN: Duration = Duration::from_secs(60);

struct SchedulerProcess {
    child: Child,
    addr: String,
    http: String,
    /// Its Immich API, when started with --immich-listen.
    immich: Option<String>,
}

/// `herd scheduler` on `listen` (127.0.0.1:0: a port of its own), its state in `etcd`.
async fn spawn_scheduler(listen: &str, repo: &Path, data: &Path, etcd: &Etcd) -> SchedulerProcess {
    spawn_scheduler_with(listen, repo, data, etcd, &[]).await
}

async fn spawn_scheduler_with(
    listen: &str,
    repo: &Path,
    data: &Path,
    etcd: &Etcd,
    extra: &[&std::ffi::OsStr],
) -> SchedulerProcess {
    let mut child = herd(&[
        "scheduler",
        "--listen",
        listen,
        "--http",
        "127.0.0.1:0",
        "--token",
        TOKEN,
        "--report-interval",
        "100ms",
        "--store",
        &format!("etcd://{}", etcd.endpoint),
    ])
    .arg("--model-repository")
    .arg(repo)
    .arg("--data-dir")
    .arg(data)
    .args(extra)
    .spawn()
    .expect("start herd scheduler");
    let immich = extra.iter().any(|a| *a == "--immich-listen");
    let serving = |l: &str| l.contains("scheduler serving");
    let immich_serving = |l: &str| l.contains("immich machine-learning API serving");
    let wanted: Vec<&dyn Fn(&str) -> bool> = if immich {
        vec![&serving, &immich_serving]
    } else {
        vec![&serving]
    };
    let lines = log_lines(&mut child, &wanted).await;
    let field = |line: &str, name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} on {line}"))
            .to_string()
    };
    SchedulerProcess {
        addr: field(&lines[0], "addr="),
        http: field(&lines[0], "http="),
        immich: lines.get(1).map(|l| field(l, "addr=")),
        child,
    }
}

/// An agent that reports to every scheduler in `schedulers` (A,B), and the lines of
/// its log, as they come.
async fn spawn_agent(schedulers: &str, data: &Path) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = herd(&[
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "a",
        "--memory-limit",
        "2GiB",
        "--scheduler",
        schedulers,
        "--token",
        TOKEN,
    ])
    .arg("--data-dir")
    .arg(data)
    .spawn()
    .expect("start herd agent");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr piped");
    let kept = lines.clone();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            kept.lock().unwrap().push(line);
        }
    });
    (child, lines)
}

/// How many times the agent's log says it loaded `model`.
fn loads(log: &Mutex<Vec<String>>, model: &str) -> usize {
    let wanted = format!("model={model} ");
    log.lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("loading model") && l.contains(&wanted))
        .count()
}

/// The role a scheduler's /health names ("leader", "follower"); None while it does not
/// answer.
async fn role(http: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(http).await.ok()?;
    let request = format!("GET /health HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    let body = answer.split_once("\r\n\r\n")?.1;
    let health: serde_json::Value = serde_json::from_str(body).ok()?;
    health["role"].as_str().map(str::to_string)
}

async fn role_is(http: &str, wanted: &str) -> bool {
    role(http).await.as_deref() == Some(wanted)
}

/// Polls `check` until it holds, failing after `within`.
async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn client(addrs: &str) -> Client {
    let options = ConnectOptions {
        token: Some(TOKEN.to_string()),
        timeout: Some(Duration::from_secs(30)),
        ..ConnectOptions::default()
    };
    Client::connect_with(addrs, options)
        .await
        .expect("connect to the schedulers")
}

/// Whether the scheduler at `addr` sees node "a" up.
async fn sees_the_agent(addr: &str) -> bool {
    let Ok(c) = Client::connect_with(
        addr,
        ConnectOptions {
            token: Some(TOKEN.to_string()),
            ..ConnectOptions::default()
        },
    )
    .await
    else {
        return false;
    };
    c.list_nodes().await.is_ok_and(|r| {
        r.nodes
            .iter()
            .any(|n| n.name == "a" && n.state == herd_proto::herd::NodeState::Up as i32)
    })
}

/// The nodes `addr` has a ready replica of `model` on.
async fn ready_on(addr: &str, model: &str) -> Vec<String> {
    let Ok(models) = client(addr).await.list_models().await else {
        return Vec::new();
    };
    models
        .models
        .into_iter()
        .filter(|m| m.name == model)
        .flat_map(|m| m.replicas)
        .filter(|r| r.state == herd_proto::herd::ModelState::Ready as i32)
        .map(|r| r.node)
        .collect()
}

struct Cluster {
    _etcd: Etcd,
    repo: tempfile::TempDir,
    data: tempfile::TempDir,
    schedulers: Vec<SchedulerProcess>,
    _agent: Child,
    agent_log: Arc<Mutex<Vec<String>>>,
}

impl Cluster {
    /// etcd, two schedulers (the first leads), and one agent reporting to both.
    async fn start() -> Cluster {
        let etcd = test_etcd::start().await;
        let repo = repository();
        let data = tempfile::tempdir().expect("tempdir");
        let any = "127.0.0.1:0";
        let first = spawn_scheduler(any, repo.path(), &data.path().join("s1"), &etcd).await;
        until("the first scheduler leads", WITHIN, || {
            role_is(&first.http, "leader")
        })
        .await;
        let second = spawn_scheduler(any, repo.path(), &data.path().join("s2"), &etcd).await;
        let both = format!("{},{}", first.addr, second.addr);
        let (agent, agent_log) = spawn_agent(&both, &data.path().join("agent")).await;
        let cluster = Cluster {
            _etcd: etcd,
            repo,
            data,
            schedulers: vec![first, second],
            _agent: agent,
            agent_log,
        };
        for s in &cluster.schedulers {
            until("the scheduler sees the agent", WITHIN, || {
                sees_the_agent(&s.addr)
            })
            .await;
        }
        cluster
    }

    fn both(&self) -> String {
        format!("{},{}", self.schedulers[0].addr, self.schedulers[1].addr)
    }
}

/// The election's answer on every scheduler's /health, in order.
async fn roles(schedulers: &[SchedulerProcess]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for s in schedulers {
        out.push(role(&s.http).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scheduler_leads_and_a_follower_hands_what_needs_placing_to_it() {
    let cluster = Cluster::start().await;
    let (leader, follower) = (&cluster.schedulers[0], &cluster.schedulers[1]);
    assert_eq!(
        roles(&cluster.schedulers).await,
        [Some("leader".into()), Some("follower".into())]
    );

    // A cold model asked of the follower: the leader places it, once.
    let answer = client(&follower.addr)
        .await
        .infer_request(mlp_request(2, 0.5))
        .await
        .expect("the follower answers through the leader");
    assert_eq!(answer.outputs[0].shape, [2, 8]);
    assert_eq!(loads(&cluster.agent_log, "tiny_mlp"), 1);
    // Both see the replica from the agent's reports; the follower then routes to it
    // itself.
    until("the follower sees the replica", WITHIN, || async {
        ready_on(&follower.addr, "tiny_mlp").await == ["a"]
    })
    .await;
    assert_eq!(ready_on(&leader.addr, "tiny_mlp").await, ["a"]);
    for seed in 0..20 {
        client(&follower.addr)
            .await
            .infer_request(mlp_request(1, seed as f32))
            .await
            .expect("served by the follower");
    }

    // Admin calls that change the cluster reach the leader: an unload asked of the
    // follower unloads the replica.
    let unloaded = client(&follower.addr)
        .await
        .unload_model("tiny_mlp")
        .await
        .expect("unload through the follower");
    assert_eq!(unloaded, ["a"]);
    until("the replica is gone everywhere", WITHIN, || async {
        ready_on(&leader.addr, "tiny_mlp").await.is_empty()
            && ready_on(&follower.addr, "tiny_mlp").await.is_empty()
    })
    .await;

    // Metadata of a model now cold, asked of the follower: the leader places it again
    // and the agent answers.
    let metadata = client(&follower.addr)
        .await
        .metadata("tiny_mlp")
        .await
        .expect("metadata through the follower");
    assert_eq!(metadata.name, "tiny_mlp");
    assert_eq!(metadata.inputs.len(), 1, "{metadata:?}");
    assert_eq!(loads(&cluster.agent_log, "tiny_mlp"), 2);
    drop(cluster.repo);
    drop(cluster.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_under_load_loses_no_request_and_a_restart_picks_up() {
    let mut cluster = Cluster::start().await;
    let gateways = client(&cluster.both()).await;
    gateways
        .infer_request(mlp_request(1, 0.0))
        .await
        .expect("first request places the model");

    // Four callers send requests until told to stop; every failure is counted.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut callers = Vec::new();
    for caller in 0..4 {
        let (c, stop) = (gateways.clone(), stop.clone());
        let (served, failed, errors) = (served.clone(), failed.clone(), errors.clone());
        callers.push(tokio::spawn(async move {
            let mut seed = caller as f32;
            while !stop.load(Ordering::Relaxed) {
                seed += 1.0;
                match c.infer_request(mlp_request(1, seed)).await {
                    Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.lock().unwrap().push(e.to_string());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let served_by = |n: usize| {
        let served = served.clone();
        move || {
            let served = served.clone();
            async move { served.load(Ordering::Relaxed) >= n }
        }
    };
    until("requests flow", WITHIN, served_by(200)).await;

    cluster.schedulers[0]
        .child
        .start_kill()
        .expect("SIGKILL the leader");
    let killed_at = Instant::now();
    let _ = cluster.schedulers[0].child.wait().await;
    let survivor = cluster.schedulers[1].http.clone();
    until("the follower leads", WITHIN, || {
        role_is(&survivor, "leader")
    })
    .await;
    let took = killed_at.elapsed();
    let after = served.load(Ordering::Relaxed);
    until(
        "requests flow after the takeover",
        WITHIN,
        served_by(after + 200),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.expect("caller");
    }
    eprintln!(
        "takeover after SIGKILL: {} ms; {} requests served",
        took.as_millis(),
        served.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests: {:?}",
        errors.lock().unwrap()
    );
    // The new leader adopted the replica: nothing was loaded again, none lost.
    let survivor_addr = cluster.schedulers[1].addr.clone();
    assert_eq!(ready_on(&survivor_addr, "tiny_mlp").await, ["a"]);
    assert_eq!(loads(&cluster.agent_log, "tiny_mlp"), 1);

    // The killed scheduler, started again where it was on the same etcd, follows,
    // hears from the agent again and knows the cluster as it is: nothing loads again.
    let restarted = spawn_scheduler(
        &cluster.schedulers[0].addr.clone(),
        cluster.repo.path(),
        &cluster.data.path().join("s1"),
        &cluster._etcd,
    )
    .await;
    assert_eq!(role(&restarted.http).await.as_deref(), Some("follower"));
    until(
        "the restarted scheduler sees the replica",
        WITHIN,
        || async { ready_on(&restarted.addr, "tiny_mlp").await == ["a"] },
    )
    .await;
    assert_eq!(loads(&cluster.agent_log, "tiny_mlp"), 1);
    client(&restarted.addr)
        .await
        .infer_request(mlp_request(1, 0.25))
        .await
        .expect("served by the restarted scheduler");
}

/// Immich lists two herd schedulers as its machine-learning URLs: the Immich-exact client
/// (healthy URLs first, a failed one marked unhealthy) is answered by the first, and by
/// the second once the first is killed; nothing fails and the model loads once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immich_fails_over_between_schedulers_listed_as_its_urls() {
    use crate::immich::{cache, immich_client};
    let models = cache().join("immich-models");
    let etcd = test_etcd::start().await;
    let repo = repository();
    let data = tempfile::tempdir().expect("tempdir");
    let immich_args = [
        std::ffi::OsStr::new("--immich-listen"),
        std::ffi::OsStr::new("127.0.0.1:0"),
        std::ffi::OsStr::new("--immich-models"),
        models.as_os_str(),
    ];
    let any = "127.0.0.1:0";
    let mut schedulers = Vec::new();
    let mut urls = Vec::new();
    for name in ["s1", "s2"] {
        let s = spawn_scheduler_with(
            any,
            repo.path(),
            &data.path().join(name),
            &etcd,
            &immich_args,
        )
        .await;
        urls.push(format!(
            "http://{}",
            s.immich.clone().expect("its Immich API")
        ));
        if name == "s1" {
            until("the first scheduler leads", WITHIN, || {
                role_is(&s.http, "leader")
            })
            .await;
        }
        schedulers.push(s);
    }
    let both = format!("{},{}", schedulers[0].addr, schedulers[1].addr);
    let (_agent, agent_log) = spawn_agent(&both, &data.path().join("agent")).await;
    for s in &schedulers {
        until("the scheduler sees the agent", WITHIN, || {
            sees_the_agent(&s.addr)
        })
        .await;
    }
    let textual = serde_json::json!({"clip": {"textual": {"modelName": "ViT-B-32__openai"}}});
    let cases: Vec<serde_json::Value> = ["a cat", "a dog", "the sea"]
        .iter()
        .map(|t| serde_json::json!({"text": t, "entries": textual}))
        .collect();
    let spec = data.path().join("cases.json");
    std::fs::write(&spec, serde_json::Value::from(cases).to_string()).expect("write cases");
    let ask = || async {
        let answers = immich_client(&urls.join(","), "failover", Some(&spec)).await;
        answers.as_array().expect("answers").clone()
    };
    for answer in ask().await {
        assert_eq!(answer["status"], 200, "{answer}");
        assert_eq!(answer["url"], urls[0].as_str(), "{answer}");
    }
    let mut first = schedulers.remove(0);
    first.child.kill().await.expect("kill the first scheduler");
    first.child.wait().await.expect("reaped");
    for answer in ask().await {
        assert_eq!(answer["status"], 200, "{answer}");
        assert_eq!(answer["url"], urls[1].as_str(), "{answer}");
    }
    assert_eq!(
        loads(&agent_log, "immich.clip.textual.ViT-B-32__openai"),
        1,
        "loaded more than once"
    );
}
