//! The scheduler side: the watch stream, kept open with reconnects and backoff, and the
//! unload and drain calls. Every call carries the cluster token as
//! `authorization: Bearer <token>` metadata.

use std::time::Duration;

use herd_proto::herd::admin_client::AdminClient;
use herd_proto::herd::{AdminUnloadRequest, ClusterUpdate, DrainNodeRequest, WatchRequest};
use tokio::sync::mpsc;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

/// What the connection tells the dashboard.
#[derive(Debug)]
pub enum Message {
    /// Opening the watch stream.
    Connecting,
    Update(ClusterUpdate),
    /// The stream broke or could not open; the next try is in `retry_in`.
    Disconnected {
        error: String,
        retry_in: Duration,
    },
    /// An unload or drain finished: what happened, or why it failed.
    ActionResult(Result<String, String>),
}

/// Where the scheduler is and how to authenticate to it.
#[derive(Clone, Debug)]
pub struct Target {
    endpoint: String,
    auth: Auth,
}

impl Target {
    /// `address` is HOST:PORT or a URL; the token, when given, must be printable ASCII.
    pub fn new(address: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let endpoint = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        Endpoint::from_shared(endpoint.clone())
            .map_err(|e| anyhow::anyhow!("bad scheduler address {address:?}: {e}"))?;
        let header = match token {
            Some(t) if !t.is_empty() => Some(
                MetadataValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| anyhow::anyhow!("the token must be printable ASCII"))?,
            ),
            _ => None,
        };
        Ok(Target {
            endpoint,
            auth: Auth(header),
        })
    }
}

/// Adds the token to each call.
#[derive(Clone)]
struct Auth(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Auth(<redacted>)"
        } else {
            "Auth(none)"
        })
    }
}

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Client = AdminClient<InterceptedService<Channel, Auth>>;

async fn connect(target: &Target) -> Result<Client, String> {
    let channel = Endpoint::from_shared(target.endpoint.clone())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| error_chain(&e))?;
    Ok(AdminClient::with_interceptor(channel, target.auth.clone()))
}

/// An error with its causes, since a transport error alone says only "transport error".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn describe(status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => format!(
            "the scheduler refused the token (--token or HERD_TOKEN): {}",
            status.message()
        ),
        tonic::Code::Unimplemented => {
            "this scheduler does not serve herd.v1.Admin/Watch".to_string()
        }
        code => {
            let message = status.message();
            if message.is_empty() {
                format!("{code}")
            } else {
                format!("{code}: {message}")
            }
        }
    }
}

/// Waits that double from `min` up to `max`, and start again after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Keeps the watch stream open, forwarding updates, until the receiver goes away.
pub async fn watch(target: Target, tx: mpsc::Sender<Message>) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        if tx.send(Message::Connecting).await.is_err() {
            return;
        }
        let error = match connect(&target).await {
            Err(e) => e,
            Ok(mut client) => match client.watch(WatchRequest {}).await {
                Err(status) => describe(&status),
                Ok(response) => {
                    let mut stream = response.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(update)) => {
                                backoff.reset();
                                if tx.send(Message::Update(update)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break "the scheduler closed the watch stream".to_string(),
                            Err(status) => break describe(&status),
                        }
                    }
                }
            },
        };
        let retry_in = backoff.next_delay();
        tracing::debug!(%error, ?retry_in, "watch stream lost");
        if tx
            .send(Message::Disconnected { error, retry_in })
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(retry_in).await;
    }
}

/// Unloads every replica of `model`; says where it was unloaded.
pub async fn unload(target: &Target, model: &str) -> Result<String, String> {
    let mut client = connect(target).await?;
    let response = client
        .unload_model(AdminUnloadRequest {
            model: model.to_string(),
        })
        .await
        .map_err(|s| format!("unload {model} failed: {}", describe(&s)))?
        .into_inner();
    Ok(if response.nodes.is_empty() {
        format!("{model} was not loaded anywhere")
    } else {
        format!("unloaded {model} from {}", response.nodes.join(", "))
    })
}

/// Drains `node`; says which models moved.
pub async fn drain(target: &Target, node: &str) -> Result<String, String> {
    let mut client = connect(target).await?;
    let response = client
        .drain_node(DrainNodeRequest {
            node: node.to_string(),
        })
        .await
        .map_err(|s| format!("drain {node} failed: {}", describe(&s)))?
        .into_inner();
    Ok(if response.moved_models.is_empty() {
        format!("drained {node}; no model had to move")
    } else {
        format!("drained {node}; moved {}", response.moved_models.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let waits: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn targets_take_host_port_or_url_and_check_the_token() {
        assert!(Target::new("127.0.0.1:8001", None).is_ok());
        assert!(Target::new("http://sched:8001", Some("abc")).is_ok());
        assert!(Target::new("127.0.0.1:8001", Some("bad\ntoken")).is_err());
        let t = Target::new("h:1", Some("secret")).expect("target");
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[tokio::test]
    async fn watch_reports_an_unreachable_scheduler_and_a_retry() {
        // A port that was just free: nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        let target = Target::new(&address.to_string(), None).expect("target");
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(watch(target, tx));
        assert!(matches!(rx.recv().await, Some(Message::Connecting)));
        match rx.recv().await {
            Some(Message::Disconnected { retry_in, error }) => {
                assert_eq!(retry_in, Duration::from_secs(1));
                assert!(!error.is_empty());
            }
            other => panic!("expected a disconnection, got {other:?}"),
        }
        task.abort();
    }
}
