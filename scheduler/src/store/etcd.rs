//! [`Store`] on an etcd v3 cluster, for state that outlives one scheduler's machine.
//!
//! Every key the trait sees is relative to a prefix, so several herd clusters (or tests)
//! can share one etcd. The prefix is put before each key as it is: `/prod` keeps apart
//! keys that start with `/`, as the scheduler's do (`/prod/herd/...`); keys of any form
//! need a prefix that ends with `/` (the tests use `/test/N/`).
//!
//! The trait's semantics are etcd's own, so most calls map one to one; what needs care is
//! said where it is done. Each call is bounded by a timeout: the client's channel may wait for
//! a reachable endpoint forever, and a store that does not answer must say so
//! (`Unavailable`, naming the endpoints) rather than hang the caller.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};

use super::{KeyValue, LeaseId, Revision, Store, StoreError, WatchEvent, WatchStream};

pub struct EtcdStore {
    client: Client,
    prefix: String,
    /// The endpoints as given, for error messages.
    endpoints: String,
    timeout: Duration,
}

impl EtcdStore {
    /// Connects and checks that etcd answers within `timeout`, which then bounds every call.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
    ) -> Result<EtcdStore, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            // Pings find a dead connection under a watch, which then ends. Not below
            // etcd's 5 s minimum, or it answers with GOAWAY.
            .with_keep_alive(Duration::from_secs(10), timeout);
        let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
        let endpoints = endpoints.join(",");
        let store = EtcdStore {
            client: Client::connect(&urls, Some(options))
                .await
                .map_err(|e| unavailable(&endpoints, e))?,
            prefix: prefix.to_owned(),
            endpoints,
            timeout,
        };
        // Connecting is lazy: only a call shows whether anyone answers.
        store.revision().await?;
        Ok(store)
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs `op` in one transaction only while `fence_key` exists with create_revision
    /// `fence`; the answer when it ran, `None` when the fence did not hold.
    async fn fenced(
        &self,
        fence_key: &str,
        fence: Revision,
        op: TxnOp,
    ) -> Result<Option<etcd_client::TxnResponse>, StoreError> {
        // A missing key has create_revision 0: a fence of 0 would let anyone through.
        if fence <= 0 {
            return Ok(None);
        }
        let compare = Compare::create_revision(self.full(fence_key), CompareOp::Equal, fence);
        let txn = Txn::new().when([compare]).and_then([op]);
        let mut kv = self.client.kv_client();
        let response = self.call(None, kv.txn(txn)).await?;
        Ok(response.succeeded().then_some(response))
    }

    /// Runs one call under the timeout and says what went wrong in the trait's terms. Only
    /// calls that name a lease pass it: a NOT_FOUND from them is that lease.
    async fn call<T>(
        &self,
        lease: Option<LeaseId>,
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(match (lease, &e) {
                (Some(id), etcd_client::Error::GRpcStatus(s))
                    if s.code() == tonic::Code::NotFound =>
                {
                    StoreError::LeaseNotFound(id)
                }
                // The client's own word for a keep-alive answered with TTL 0.
                (Some(id), etcd_client::Error::LeaseKeepAliveError(m))
                    if m == "lease not found" =>
                {
                    StoreError::LeaseNotFound(id)
                }
                _ if is_connection(&e) => unavailable(&self.endpoints, e),
                _ => StoreError::Io(format!("etcd at {}: {}", self.endpoints, describe(&e))),
            }),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd at {} did not answer within {:?}",
                self.endpoints, self.timeout
            ))),
        }
    }
}

fn is_connection(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        ),
        _ => false,
    }
}

fn unavailable(endpoints: &str, e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(format!(
        "cannot reach etcd at {endpoints}: {}",
        describe(&e)
    ))
}

/// A failed call in a line: a status's message and its deepest cause ("tcp connect error:
/// Connection refused"), not tonic's whole debug form.
fn describe(e: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return e.to_string();
    };
    let mut deepest = None;
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        deepest = Some(c);
        cause = c.source();
    }
    match deepest {
        Some(c) => format!("{}: {c}", status.message()),
        None => status.message().to_owned(),
    }
}

/// The key as the trait sees it. Keys under the prefix are written by this store, from
/// `&str`; a foreign non-UTF-8 one is shown lossily rather than failing a whole range.
fn relative(prefix: &str, key: &[u8]) -> String {
    let key = key.strip_prefix(prefix.as_bytes()).unwrap_or(key);
    String::from_utf8_lossy(key).into_owned()
}

fn key_value(prefix: &str, kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: relative(prefix, kv.key()),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        // etcd says "no lease" with 0.
        lease: Some(kv.lease()).filter(|&id| id != 0),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision, StoreError> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Io("etcd answered without a header".into()))
}

fn put_options(lease: Option<LeaseId>) -> Option<PutOptions> {
    // Without a lease, etcd's put detaches the key from the one it had, as the trait says.
    lease.map(|id| PutOptions::new().with_lease(id))
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut kv = self.client.kv_client();
        let response = self.call(None, kv.get(self.full(key), None)).await?;
        Ok(response.kvs().first().map(|kv| key_value(&self.prefix, kv)))
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        // etcd answers a range in key order, all of it when no limit is set.
        let mut kv = self.client.kv_client();
        let options = GetOptions::new().with_prefix();
        let response = self
            .call(None, kv.get(self.full(prefix), Some(options)))
            .await?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| key_value(&self.prefix, kv))
            .collect())
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        let mut kv = self.client.kv_client();
        let put = kv.put(self.full(key), value, put_options(lease));
        header_revision(self.call(lease, put).await?.header())
    }

    async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>, StoreError> {
        let key = self.full(key);
        // A missing key has create_revision 0; mod_revision of an existing one never is.
        let compare = if expected == 0 {
            Compare::create_revision(key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.clone(), CompareOp::Equal, expected)
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key, value, put_options(lease))]);
        let mut kv = self.client.kv_client();
        let response = self.call(lease, kv.txn(txn)).await?;
        if !response.succeeded() {
            return Ok(None);
        }
        header_revision(response.header()).map(Some)
    }

    async fn put_fenced(
        &self,
        key: &str,
        value: Vec<u8>,
        fence_key: &str,
        fence: Revision,
    ) -> Result<Option<Revision>, StoreError> {
        let op = TxnOp::put(self.full(key), value, None);
        let Some(response) = self.fenced(fence_key, fence, op).await? else {
            return Ok(None);
        };
        header_revision(response.header()).map(Some)
    }

    async fn delete_fenced(
        &self,
        key: &str,
        fence_key: &str,
        fence: Revision,
    ) -> Result<Option<Revision>, StoreError> {
        let op = TxnOp::delete(self.full(key), None);
        let Some(response) = self.fenced(fence_key, fence, op).await? else {
            return Ok(None);
        };
        let deleted = response
            .op_responses()
            .iter()
            .any(|op| matches!(op, etcd_client::TxnOpResponse::Delete(d) if d.deleted() > 0));
        if !deleted {
            return Ok(None);
        }
        header_revision(response.header()).map(Some)
    }

    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        let mut kv = self.client.kv_client();
        let response = self.call(None, kv.delete(self.full(key), None)).await?;
        if response.deleted() == 0 {
            return Ok(None);
        }
        header_revision(response.header()).map(Some)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        // etcd counts TTLs in whole seconds; rounding up never ends a lease early.
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let seconds = i64::try_from(seconds.max(1)).unwrap_or(i64::MAX);
        let mut lease = self.client.lease_client();
        let response = self.call(None, lease.grant(seconds, None)).await?;
        Ok(response.id())
    }

    async fn keep_alive(&self, id: LeaseId) -> Result<(), StoreError> {
        // Opening the keep-alive stream sends one renewal and reads its answer; that is
        // the whole call. The stream closes on drop.
        let mut lease = self.client.lease_client();
        self.call(Some(id), lease.keep_alive(id)).await?;
        Ok(())
    }

    async fn revoke(&self, id: LeaseId) -> Result<(), StoreError> {
        let mut lease = self.client.lease_client();
        self.call(Some(id), lease.revoke(id)).await?;
        Ok(())
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        let mut watch = self.client.watch_client();
        let options = WatchOptions::new().with_prefix();
        let mut stream = self
            .call(None, watch.watch(self.full(prefix), Some(options)))
            .await?;
        // Waiting for "created" makes the trait's "events after this call" hold: from then
        // on etcd sends every write past the revision the watcher was created at.
        let created = self.call(None, stream.message()).await?;
        match created {
            Some(r) if r.created() && !r.canceled() => {}
            other => {
                return Err(StoreError::Io(format!(
                    "etcd at {} refused the watch: {other:?}",
                    self.endpoints
                )))
            }
        }
        Ok(Box::pin(events(stream, self.prefix.clone())))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        // Any answer's header carries the current revision; asking for one key name at most
        // keeps the question cheap.
        let mut kv = self.client.kv_client();
        let options = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_limit(1);
        let response = self
            .call(None, kv.get(self.full(""), Some(options)))
            .await?;
        header_revision(response.header())
    }

    fn shared(&self) -> bool {
        true
    }
}

/// The watch's events one by one, in the order etcd sends them (revision order). Ends on
/// a cancel (a compaction passed the watcher), an error or the end of the stream: the
/// watcher then reads the state again, as the trait says.
fn events(
    stream: etcd_client::WatchStream,
    prefix: String,
) -> impl futures::Stream<Item = WatchEvent> + Send {
    futures::stream::unfold(
        (stream, VecDeque::new(), prefix),
        |(mut stream, mut pending, prefix)| {
            async move {
                loop {
                    if let Some(event) = pending.pop_front() {
                        return Some((event, (stream, pending, prefix)));
                    }
                    let response = match stream.message().await {
                        Ok(Some(response)) if !response.canceled() => response,
                        Ok(Some(response)) => {
                            tracing::warn!(
                                compact_revision = response.compact_revision(),
                                reason = response.cancel_reason(),
                                "etcd canceled a watch"
                            );
                            return None;
                        }
                        Ok(None) => return None,
                        Err(error) => {
                            tracing::warn!(%error, "etcd watch failed");
                            return None;
                        }
                    };
                    pending.extend(response.events().iter().filter_map(|e| {
                        let kv = e.kv()?;
                        Some(match e.event_type() {
                            EventType::Put => WatchEvent::Put(key_value(&prefix, kv)),
                            // A delete's kv holds the key and the revision of the delete.
                            EventType::Delete => WatchEvent::Delete {
                                key: relative(&prefix, kv.key()),
                                revision: kv.mod_revision(),
                            },
                        })
                    }));
                }
            }
        },
    )
}
