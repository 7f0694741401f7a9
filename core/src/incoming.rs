//! Accepting connections without being taken over by them: the gRPC servers' incoming
//! stream.
//!
//! - At most `max_connections` are open; past that, accepting pauses (new ones wait in
//!   the kernel's backlog) instead of running out of file descriptors.
//! - A connection is *handshaking* until it has sent the HTTP/2 preface and a frame
//!   header (33 bytes). At most `max_handshaking` are; a new one past that closes the
//!   oldest. Real clients leave that state within a round trip; sockets opened and left
//!   idle (an attacker's, or a scanner's) are the ones that stay, so they make room
//!   for real clients instead of filling every slot. One that stays past
//!   `handshake_timeout` is closed too.
//! - An accept error (out of file descriptors, say) backs off instead of spinning.
//!
//! Idle connections past the handshake are the HTTP/2 keepalive's job
//! ([`server_builder`]): one that does not answer a ping is closed.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The HTTP/2 client preface (24 bytes) and one frame header (9): a connection that
/// sent this much is a real HTTP/2 client.
const HANDSHAKE_BYTES: usize = 33;

/// How many connections a server takes, and how long one may take to say hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_handshaking: usize,
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            max_handshaking: 256,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectionLimits {
    /// The defaults, with the connection cap kept under the open-file limit (less a
    /// reserve for model files, workers and outgoing connections).
    pub fn for_open_files(open_files: u64) -> ConnectionLimits {
        let d = ConnectionLimits::default();
        let room = open_files.saturating_sub(256).max(64);
        ConnectionLimits {
            max_connections: d.max_connections.min(room as usize),
            max_handshaking: d.max_handshaking.min(room as usize / 2).max(1),
            ..d
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit (a common soft
/// default, 1024, is what a thousand idle sockets exhaust). Returns the soft limit now.
pub fn raise_open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// A server with HTTP/2 keepalive: a connection that does not answer a ping within
/// `timeout` is closed, so dead and idle peers do not hold their slot forever.
pub fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true)
}

/// Whether a handshaking connection was closed to make room.
#[derive(Default)]
struct Eviction {
    evicted: AtomicBool,
    waker: AtomicWaker,
}

impl Eviction {
    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// Connections still handshaking, oldest first.
#[derive(Default)]
struct Handshaking {
    next_id: u64,
    queue: VecDeque<(u64, Arc<Eviction>)>,
}

type Shared = Arc<Mutex<Handshaking>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Handshaking> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// One accepted connection; holds its slot until dropped.
pub struct Conn {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Bytes read so far, up to the handshake.
    read: usize,
    id: u64,
    eviction: Arc<Eviction>,
    handshaking: Shared,
    deadline: Pin<Box<Sleep>>,
}

impl Conn {
    fn handshake_done(&mut self) {
        lock(&self.handshaking)
            .queue
            .retain(|(id, _)| *id != self.id);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.read < HANDSHAKE_BYTES {
            self.handshake_done();
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < HANDSHAKE_BYTES {
            this.eviction.waker.register(cx.waker());
            if this.eviction.evicted.load(Ordering::Acquire) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "closed to make room: too many connections had not said hello",
                )));
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 handshake in time",
                )));
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.read < HANDSHAKE_BYTES {
            this.read += buf.filled().len() - before;
            if this.read >= HANDSHAKE_BYTES {
                this.handshake_done();
            }
        }
        polled
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

/// The stream of connections a tonic server serves (`serve_with_incoming*`).
pub struct Incoming {
    rx: mpsc::Receiver<io::Result<Conn>>,
    task: tokio::task::JoinHandle<()>,
}

impl futures::Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts on `listener` within `limits`; see the module docs.
pub fn incoming(listener: TcpListener, limits: ConnectionLimits) -> Incoming {
    incoming_until_closed(listener, limits).0
}

/// As [`incoming`], and a future that completes once the listening socket is closed.
/// Dropping the stream stops its accept task, which happens later, on some worker
/// thread: a server that wants its port free when it returns (to be started again on
/// it) awaits this.
pub fn incoming_until_closed(
    listener: TcpListener,
    limits: ConnectionLimits,
) -> (Incoming, Closed) {
    let (tx, rx) = mpsc::channel(1);
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let guard = ListenerGuard {
        listener,
        _closed: closed_tx,
    };
    let task = tokio::spawn(accept(guard, limits, tx));
    (Incoming { rx, task }, Closed(closed_rx))
}

/// The listening socket, and a sender dropped right after it: fields drop in order.
struct ListenerGuard {
    listener: TcpListener,
    _closed: tokio::sync::oneshot::Sender<()>,
}

/// Completes once an [`Incoming`]'s listening socket is closed.
pub struct Closed(tokio::sync::oneshot::Receiver<()>);

impl Future for Closed {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

async fn accept(
    guard: ListenerGuard,
    limits: ConnectionLimits,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let handshaking: Shared = Arc::default();
    let mut backoff = Backoff::default();
    // Said at most once a minute: an attacker holding the cap would flood the log.
    let mut full_said: Option<tokio::time::Instant> = None;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if full_said.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(
                        max = limits.max_connections,
                        "connection limit reached; new connections wait until one closes"
                    );
                    full_said = Some(tokio::time::Instant::now());
                }
                match slots.clone().acquire_owned().await {
                    Ok(slot) => slot,
                    Err(_) => return,
                }
            }
        };
        let (stream, peer) = match guard.listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: accepting again at once would spin.
                let wait = backoff.next();
                tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "accept failed; backing off");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        backoff = Backoff::default();
        let _ = stream.set_nodelay(true);
        let conn = admit(stream, peer, slot, &handshaking, &limits);
        if tx.send(Ok(conn)).await.is_err() {
            return;
        }
    }
}

/// Registers a new connection as handshaking, closing the oldest past the limit.
fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    handshaking: &Shared,
    limits: &ConnectionLimits,
) -> Conn {
    let eviction = Arc::new(Eviction::default());
    let id = {
        let mut h = lock(handshaking);
        let id = h.next_id;
        h.next_id += 1;
        h.queue.push_back((id, eviction.clone()));
        while h.queue.len() > limits.max_handshaking.max(1) {
            if let Some((_, oldest)) = h.queue.pop_front() {
                oldest.evict();
            }
        }
        id
    };
    tracing::trace!(%peer, "connection accepted");
    Conn {
        inner: stream,
        _slot: slot,
        read: 0,
        id,
        eviction,
        handshaking: handshaking.clone(),
        deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
    }
}

/// 10 ms doubling to 1 s.
#[derive(Default)]
struct Backoff {
    tries: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let wait = Duration::from_millis(10) * 2u32.saturating_pow(self.tries.min(7));
        self.tries += 1;
        wait.min(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use futures::StreamExt;

    async fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        (l, addr)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn once_closed_says_so_the_port_can_be_bound_again() {
        let (l, addr) = listener().await;
        let (incoming, closed) = incoming_until_closed(l, ConnectionLimits::default());
        drop(incoming);
        closed.await;
        TcpListener::bind(addr).await.expect("the port is free");
    }

    const HELLO: &[u8; HANDSHAKE_BYTES] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

    #[tokio::test]
    async fn the_oldest_silent_connection_makes_room_for_a_new_one() {
        let (l, addr) = listener().await;
        let limits = ConnectionLimits {
            max_connections: 100,
            max_handshaking: 2,
            handshake_timeout: Duration::from_secs(3600),
        };
        let mut incoming = incoming(l, limits);
        let mut clients = Vec::new();
        let mut conns = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
            conns.push(incoming.next().await.expect("accepted").expect("ok"));
        }
        let mut buf = [0u8; 8];
        let first = conns[0].read(&mut buf).await;
        assert_eq!(
            first.expect_err("evicted").kind(),
            io::ErrorKind::ConnectionAborted
        );
        // One that said hello is no longer handshaking: it is never evicted.
        clients[1].write_all(HELLO).await.expect("write");
        let mut hello = [0u8; HANDSHAKE_BYTES];
        conns[1].read_exact(&mut hello).await.expect("read hello");
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
            conns.push(incoming.next().await.expect("accepted").expect("ok"));
        }
        clients[1].write_all(b"more").await.expect("write");
        let n = conns[1].read(&mut buf).await.expect("still open");
        assert_eq!(&buf[..n], b"more");
    }

    // Paused time moves on only when nothing else can: the second connection, already
    // in the kernel's backlog, would have been accepted first if a slot were free.
    #[tokio::test(start_paused = true)]
    async fn past_the_cap_accepting_waits_for_a_slot() {
        let (l, addr) = listener().await;
        let limits = ConnectionLimits {
            max_connections: 1,
            max_handshaking: 8,
            handshake_timeout: Duration::from_secs(3600),
        };
        let mut incoming = incoming(l, limits);
        let _a = TcpStream::connect(addr).await.expect("connect");
        let first = incoming.next().await.expect("accepted").expect("ok");
        let _b = TcpStream::connect(addr).await.expect("connect");
        let waiting = tokio::time::timeout(Duration::from_secs(3600), incoming.next()).await;
        assert!(waiting.is_err(), "no second slot while the first is held");
        drop(first);
        incoming.next().await.expect("accepted").expect("ok");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
        let (l, addr) = listener().await;
        let limits = ConnectionLimits {
            max_connections: 10,
            max_handshaking: 10,
            handshake_timeout: Duration::from_secs(10),
        };
        let mut incoming = incoming(l, limits);
        let _client = TcpStream::connect(addr).await.expect("connect");
        let mut conn = incoming.next().await.expect("accepted").expect("ok");
        let mut buf = [0u8; 8];
        let read = conn.read(&mut buf).await;
        assert_eq!(read.expect_err("timed out").kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn backoff_doubles_to_a_second() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..9).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }

    #[test]
    fn the_cap_stays_under_the_open_file_limit() {
        assert_eq!(ConnectionLimits::for_open_files(1024).max_connections, 768);
        assert_eq!(
            ConnectionLimits::for_open_files(1 << 20),
            ConnectionLimits::default()
        );
    }
}
