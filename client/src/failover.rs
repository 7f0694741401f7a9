//! Which of several servers a call goes to: the one that last answered, and the next
//! ones in turn while the servers tried are gone.
//!
//! A server is gone when a call fails with UNAVAILABLE (connection refused, "error
//! trying to connect"), or when the connection broke under the request (the server
//! killed mid-request: tonic says UNKNOWN "transport error"). Every status a server
//! sent, and this client's own deadline, are the request's answer and never retried.
//! Callers only send requests that are safe to send twice: inference is a pure
//! function of its inputs, and the admin calls are idempotent enough (loading a loaded
//! model, draining a drained node change nothing).

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The addresses of a list such as `"a:8001, b:8001"`: trimmed, empty ones dropped.
pub fn addresses(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether a failed call says its server is gone, so the next one is worth a try.
pub fn server_gone(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable || connection_lost(status)
}

/// Whether tonic made `status` from the connection failing under the request. A status
/// the server sent has no source; this client's deadline has one, but is an answer.
/// The connection can fail in the transport ("transport error") or while the answer's
/// body is read (UNKNOWN "h2 protocol error: error reading a body from connection", an
/// I/O error or GOAWAY under HTTP/2).
fn connection_lost(status: &tonic::Status) -> bool {
    let mut transport = false;
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return false;
        }
        transport |= error.is::<tonic::transport::Error>();
        transport |= error
            .downcast_ref::<h2::Error>()
            .is_some_and(|e| e.is_io() || e.is_go_away());
        source = error.source();
    }
    transport
}

/// Indexes of `len` servers in the order to try them: `preferred` first, then the
/// following ones, wrapping round, each once.
pub fn order(preferred: usize, len: usize) -> impl Iterator<Item = usize> {
    (0..len).map(move |k| (preferred + k) % len)
}

/// Servers of one cluster, any of which can answer, and which one is preferred.
/// Shared by the clones of a client, so all of them stop paying for a dead one.
pub(crate) struct Failover<S> {
    servers: Vec<S>,
    preferred: AtomicUsize,
}

impl<S: Display> Failover<S> {
    /// `servers` must not be empty; `preferred` is the one that answered first.
    pub fn new(servers: Vec<S>, preferred: usize) -> Self {
        Failover {
            servers,
            preferred: AtomicUsize::new(preferred),
        }
    }

    pub fn preferred_index(&self) -> usize {
        self.preferred.load(Ordering::Relaxed)
    }

    pub fn get(&self, index: usize) -> &S {
        &self.servers[index]
    }

    /// Every server, as the list was given ("A,B").
    pub fn list(&self) -> String {
        let names: Vec<String> = self.servers.iter().map(ToString::to_string).collect();
        names.join(",")
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Sends `message` to the preferred server, and to the next ones while each is
    /// gone. The first that answers — success or any other error — becomes the
    /// preferred one. On failure: the index of the server that gave the last error,
    /// and that error.
    pub async fn call<M, T, F, Fut>(
        &self,
        message: M,
        mut send: F,
    ) -> Result<T, (usize, tonic::Status)>
    where
        M: Clone,
        F: FnMut(&S, M) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let order: Vec<usize> = order(self.preferred_index(), self.servers.len()).collect();
        let Some((&last, before)) = order.split_last() else {
            return Err((0, tonic::Status::unavailable("no server address")));
        };
        for &i in before {
            match send(&self.servers[i], message.clone()).await {
                Err(status) if server_gone(&status) => {
                    tracing::warn!(
                        server = %self.servers[i],
                        error = %status.message(),
                        "server gone, trying the next"
                    );
                }
                answer => return self.answered(i, answer),
            }
        }
        // The last try takes the message itself: one address costs no copy.
        match send(&self.servers[last], message).await {
            Err(status) if server_gone(&status) => Err((last, status)),
            answer => self.answered(last, answer),
        }
    }

    fn answered<T>(
        &self,
        index: usize,
        answer: Result<T, tonic::Status>,
    ) -> Result<T, (usize, tonic::Status)> {
        self.preferred.store(index, Ordering::Relaxed);
        answer.map_err(|status| (index, status))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tonic::{Code, Status};

    use super::*;

    #[test]
    fn lists_are_split_on_commas_and_trimmed() {
        assert_eq!(addresses("a:1"), ["a:1"]);
        assert_eq!(addresses(" a:1 , b:2,,c:3, "), ["a:1", "b:2", "c:3"]);
        assert!(addresses(" , ").is_empty());
        assert!(addresses("").is_empty());
    }

    #[test]
    fn the_order_starts_at_the_preferred_and_wraps_once() {
        assert_eq!(order(0, 3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(order(2, 3).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(order(0, 1).collect::<Vec<_>>(), [0]);
    }

    /// Servers named by what they answer; records the order they were called in.
    struct Fake {
        answers: Vec<(&'static str, Code)>,
        calls: Mutex<Vec<&'static str>>,
    }

    impl Fake {
        fn new(answers: &[(&'static str, Code)]) -> Fake {
            Fake {
                answers: answers.to_vec(),
                calls: Mutex::new(Vec::new()),
            }
        }

        async fn call(&self, failover: &Failover<&'static str>) -> Result<u32, (usize, Code)> {
            failover
                .call(7u32, |server, message| {
                    self.calls.lock().expect("lock").push(*server);
                    let code = self
                        .answers
                        .iter()
                        .find(|(s, _)| s == server)
                        .map_or(Code::Ok, |(_, c)| *c);
                    async move {
                        match code {
                            Code::Ok => Ok(message),
                            code => Err(Status::new(code, "")),
                        }
                    }
                })
                .await
                .map_err(|(i, status)| (i, status.code()))
        }

        fn calls(&self) -> Vec<&'static str> {
            std::mem::take(&mut self.calls.lock().expect("lock"))
        }
    }

    #[tokio::test]
    async fn a_gone_server_is_skipped_and_the_next_one_stays_preferred() {
        let failover = Failover::new(vec!["a", "b", "c"], 0);
        let fake = Fake::new(&[("a", Code::Unavailable)]);
        assert_eq!(fake.call(&failover).await, Ok(7));
        assert_eq!(fake.calls(), ["a", "b"]);
        assert_eq!(failover.preferred_index(), 1);
        // Sticky: the dead first address is not tried again.
        assert_eq!(fake.call(&failover).await, Ok(7));
        assert_eq!(fake.calls(), ["b"]);
    }

    #[tokio::test]
    async fn other_errors_are_answers_and_are_not_retried() {
        let failover = Failover::new(vec!["a", "b"], 0);
        let fake = Fake::new(&[("a", Code::NotFound)]);
        assert_eq!(fake.call(&failover).await, Err((0, Code::NotFound)));
        assert_eq!(fake.calls(), ["a"]);
        assert_eq!(failover.preferred_index(), 0);
    }

    #[tokio::test]
    async fn each_server_is_tried_once_and_the_last_error_is_kept() {
        let failover = Failover::new(vec!["a", "b", "c"], 1);
        let fake = Fake::new(&[
            ("a", Code::Unavailable),
            ("b", Code::Unavailable),
            ("c", Code::Unavailable),
        ]);
        assert_eq!(fake.call(&failover).await, Err((0, Code::Unavailable)));
        assert_eq!(fake.calls(), ["b", "c", "a"]);
        // Nobody answered: the preference stays where it was.
        assert_eq!(failover.preferred_index(), 1);
    }

    #[tokio::test]
    async fn failover_wraps_round_to_an_earlier_server() {
        let failover = Failover::new(vec!["a", "b"], 1);
        let fake = Fake::new(&[("b", Code::Unavailable)]);
        assert_eq!(fake.call(&failover).await, Ok(7));
        assert_eq!(fake.calls(), ["b", "a"]);
        assert_eq!(failover.preferred_index(), 0);
    }

    /// What a call to a server that accepts connections and then does `serve` ends in.
    async fn call_a_server(
        serve: impl FnOnce(tokio::net::TcpStream) -> tokio::task::JoinHandle<()> + Send + 'static,
        timeout: Option<std::time::Duration>,
    ) -> Status {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let _ = serve(stream).await;
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_lazy();
        let mut client =
            herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient::new(
                channel,
            );
        let mut request = tonic::Request::new(Default::default());
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let status = client.server_live(request).await.expect_err("no answer");
        server.abort();
        status
    }

    #[tokio::test]
    async fn a_connection_closed_under_a_request_means_the_server_is_gone() {
        use tokio::io::AsyncReadExt;
        // Reads the request, then closes without an answer, as a server killed.
        let status = call_a_server(
            |mut stream| {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf).await;
                })
            },
            None,
        )
        .await;
        assert!(server_gone(&status), "{status:?}");
    }

    #[tokio::test]
    async fn the_clients_own_deadline_is_an_answer() {
        use tokio::io::AsyncReadExt;
        // Reads everything and never answers.
        let status = call_a_server(
            |mut stream| {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                })
            },
            Some(std::time::Duration::from_millis(50)),
        )
        .await;
        assert!(!server_gone(&status), "{status:?}");
    }

    #[test]
    fn a_stream_the_server_reset_is_its_answer() {
        // (h2 makes its I/O and GOAWAY errors only from a real connection: the server
        // killed mid-request in tests/it/failover_client.rs is that case.)
        let reset = Status::from_error(Box::new(h2::Error::from(h2::Reason::CANCEL)));
        assert!(!server_gone(&reset), "{reset:?}");
    }

    #[test]
    fn statuses_a_server_sent_are_answers_except_unavailable() {
        assert!(server_gone(&Status::unavailable("shutting down")));
        for code in [
            Code::Unknown,
            Code::Cancelled,
            Code::Internal,
            Code::NotFound,
        ] {
            assert!(!server_gone(&Status::new(code, "")), "{code:?}");
        }
    }

    #[tokio::test]
    async fn one_server_is_called_once() {
        let failover = Failover::new(vec!["a"], 0);
        let fake = Fake::new(&[("a", Code::Unavailable)]);
        assert_eq!(fake.call(&failover).await, Err((0, Code::Unavailable)));
        assert_eq!(fake.calls(), ["a"]);
    }
}
