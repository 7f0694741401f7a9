//! The scheduler side: the watch stream, kept open with reconnects and backoff, and the
//! unload and drain calls, all through [`herd_client::Client`], which sends the cluster
//! token as `authorization: Bearer <token>` and says in its errors what failed and where.

use std::time::Duration;

use futures::StreamExt;
use herd_client::{Client, ClientError, ConnectOptions};
use herd_proto::herd::ClusterUpdate;
use tokio::sync::mpsc;

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
    /// The answer to "why is this model where it is", as text, or why it failed.
    Why {
        model: String,
        answer: Result<String, String>,
    },
}

/// Where the scheduler is and how to authenticate to it.
#[derive(Clone)]
pub struct Target {
    address: String,
    options: ConnectOptions,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("address", &self.address)
            .field("token", &self.options.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Target {
    /// `address` is HOST:PORT or a URL, or several separated by commas (schedulers of
    /// one cluster, tried in turn); the token, when given, must be printable ASCII.
    ///
    /// Both are checked here, before the terminal is taken over, although the client
    /// checks them again on every connect: `herd_client` has no way to check them
    /// without connecting.
    pub fn new(address: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let addresses = herd_client::failover::addresses(address);
        if addresses.is_empty() {
            anyhow::bail!("bad scheduler address {address:?}: expected HOST:PORT");
        }
        for one in &addresses {
            let url = herd_proto::grpc_url(one);
            let uri: tonic::transport::Uri = url
                .parse()
                .map_err(|e| anyhow::anyhow!("bad scheduler address {one:?}: {e}"))?;
            if uri.host().is_none() {
                anyhow::bail!("bad scheduler address {one:?}: expected HOST:PORT");
            }
        }
        let token = token.filter(|t| !t.is_empty());
        if let Some(t) = token {
            tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(format!(
                "Bearer {t}"
            ))
            .map_err(|_| anyhow::anyhow!("the token must be printable ASCII"))?;
        }
        Ok(Target {
            address: address.to_string(),
            options: ConnectOptions {
                token: token.map(str::to_string),
                ..ConnectOptions::default()
            },
        })
    }

    /// Verifies the scheduler with this CA (PEM) over TLS.
    pub fn trusting(mut self, ca_pem: Option<String>) -> Self {
        self.options.ca_pem = ca_pem;
        self
    }

    async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect_with(&self.address, self.options.clone()).await
    }
}

/// The error as the dashboard shows it: a refused token also says where the token came
/// from.
fn describe(error: &ClientError) -> String {
    match error {
        ClientError::Unauthenticated { .. } => {
            format!("{error} (check --token, --token-file or HERD_TOKEN)")
        }
        _ => error.to_string(),
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
        let error = match open(&target).await {
            Err(e) => describe(&e),
            Ok(mut stream) => loop {
                match stream.next().await {
                    Some(Ok(update)) => {
                        backoff.reset();
                        if tx.send(Message::Update(update)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => break describe(&e),
                    None => {
                        break format!(
                            "the scheduler at {} closed the watch stream",
                            target.address
                        )
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

async fn open(
    target: &Target,
) -> Result<impl futures::Stream<Item = Result<ClusterUpdate, ClientError>> + Unpin, ClientError> {
    let client = target.connect().await?;
    Ok(Box::pin(client.watch().await?))
}

/// Unloads every replica of `model`; says where it was unloaded.
pub async fn unload(target: &Target, model: &str) -> Result<String, String> {
    let nodes = async { target.connect().await?.unload_model(model).await }
        .await
        .map_err(|e| format!("unload {model} failed: {}", describe(&e)))?;
    Ok(if nodes.is_empty() {
        format!("{model} was not loaded anywhere")
    } else {
        format!("unloaded {model} from {}", nodes.join(", "))
    })
}

/// Placement's view of `model` (`herd models why`), as the CLI prints it.
pub async fn why(target: &Target, model: &str) -> Result<String, String> {
    let answer = async { target.connect().await?.explain_model(model, None).await }
        .await
        .map_err(|e| format!("why {model}: {}", describe(&e)))?;
    Ok(herd_client::why::why_table(&answer, false))
}

/// Drains `node`; says which models moved.
pub async fn drain(target: &Target, node: &str) -> Result<String, String> {
    let response = async { target.connect().await?.drain_node(node).await }
        .await
        .map_err(|e| format!("drain {node} failed: {}", describe(&e)))?;
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
        assert!(Target::new("10.0.0.1:8001, 10.0.0.2:8001", None).is_ok());
        assert!(Target::new("10.0.0.1:8001,no such:8001", None).is_err());
        assert!(Target::new(" , ", None).is_err());
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
                assert!(
                    error.starts_with(&format!("cannot reach scheduler at {address}: ")),
                    "{error}"
                );
            }
            other => panic!("expected a disconnection, got {other:?}"),
        }
        task.abort();
    }
}
