//! Server: the listening socket, HTTP on it (health, metrics, the JSON API) and
//! the upgrade of `GET /ws` into a [`session`](crate::session).
//!
//! The accept loop is ours rather than `axum::serve` so that every socket gets
//! `TCP_NODELAY` and its send-buffer size before the first byte, and so an upgraded
//! connection comes back to us as the plain `TcpStream` the session writes to.
//! [`run_fronted`] serves HTTP on a thread of its own and hands each session,
//! its socket included, to the runtime that called it.

mod heartbeat;
mod http;
pub mod memory;
mod stall;
pub mod tls;
mod waiting;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::auth::Authenticator;
use crate::fanout::Hub;
use crate::limits::{LimitsConfig, PeerConnections};
use crate::metrics::Refusal;
use crate::session::{SessionConfig, Shutdown};
use heartbeat::Heartbeat;
use waiting::{Waiting, WaitingSlot};

/// Server-wide settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Per-connection limits and timers.
    pub session: SessionConfig,
    /// Most WebSocket sessions at once; further handshakes get `503`.
    pub max_connections: usize,
    /// How long shutdown waits for sessions to send their close frames.
    pub shutdown_grace: Duration,
    /// Largest HTTP request head accepted (slowloris and header bombs).
    pub max_header_bytes: usize,
    /// Time allowed to send a complete request head.
    pub header_timeout: Duration,
    /// Most sockets at once waiting for a request head (a TLS handshake
    /// included, and a keep-alive connection between requests) while
    /// `max_connections` clients are admitted; fewer clients leave room for
    /// as many more. When one more begins to wait, the one that has waited
    /// longest is closed. The command line sets it from the open-file limit
    /// ([`raise_open_file_limit`]).
    pub max_waiting: usize,
    /// Who may connect and what they may see (off by default).
    pub auth: Arc<Authenticator>,
    /// Per-address and origin limits.
    pub limits: LimitsConfig,
    /// Serve `https://` and `wss://` with this configuration instead of plain text.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Give freed memory back to the system once this many connections have
    /// closed since the most were open (0: never); see [`memory`].
    pub memory_trim_after: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            session: SessionConfig::default(),
            max_connections: 50_000,
            shutdown_grace: Duration::from_secs(5),
            max_header_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(10),
            max_waiting: 10_000,
            auth: Arc::new(Authenticator::disabled()),
            limits: LimitsConfig::default(),
            tls: None,
            memory_trim_after: 1_000,
        }
    }
}

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub hub: Arc<Hub>,
    pub config: ServerConfig,
    pub session_config: Arc<SessionConfig>,
    pub shutdown: Shutdown,
    pub sessions: TaskTracker,
    pub peers: Arc<PeerConnections>,
    /// Connections per address not yet handed to a WebSocket session: a
    /// request head still to come, plain HTTP, an SSE stream. Each holds a
    /// socket from accept on, before any request could be refused.
    pub http_peers: Arc<PeerConnections>,
    /// Every address's sockets still waiting for a request head, together.
    waiting: Arc<Waiting>,
    next_id: AtomicU64,
    /// Where WebSocket sessions run when that is not where HTTP runs
    /// ([`run_fronted`]); `None`: here.
    pub sessions_elsewhere: Option<SessionsRuntime>,
}

impl Shared {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed)
    }

    /// The runtime WebSocket sessions run on.
    pub fn sessions_runtime(&self) -> tokio::runtime::Handle {
        match &self.sessions_elsewhere {
            Some(elsewhere) => elsewhere.handle.clone(),
            None => tokio::runtime::Handle::current(),
        }
    }
}

/// The runtime that runs the WebSocket sessions, apart from HTTP's.
#[derive(Debug)]
pub(crate) struct SessionsRuntime {
    handle: tokio::runtime::Handle,
    /// Answering HTTP no longer shows that this runtime runs: `/healthz`
    /// and WebSocket upgrades ask this instead.
    heartbeat: Arc<Heartbeat>,
}

/// Serves HTTP and WebSocket clients on `listener` until `shutdown` resolves,
/// then closes every session with 1001 and returns once they are gone (or the
/// grace period is over). Dropped before that, or unwound by a panic, it
/// still has every session close with 1001, without waiting for them.
pub async fn run(
    listener: TcpListener,
    hub: Arc<Hub>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    run_on(vec![listener], hub, config, shutdown).await
}

/// [`run`] on several listening sockets at once (a host name's IPv4 and
/// IPv6 addresses, say), all serving the same clients.
pub async fn run_on(
    listeners: Vec<TcpListener>,
    hub: Arc<Hub>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve(listeners, hub, config, None, shutdown).await
}

/// [`run_on`], with the WebSocket sessions on `sessions_elsewhere` if given.
async fn serve(
    listeners: Vec<TcpListener>,
    hub: Arc<Hub>,
    config: ServerConfig,
    sessions_elsewhere: Option<SessionsRuntime>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        waiting: Arc::new(Waiting::new(
            config.max_waiting,
            config.max_connections,
            hub.metrics().clone(),
        )),
        hub,
        session_config: Arc::new(config.session.clone()),
        config,
        shutdown: Shutdown::default(),
        sessions: TaskTracker::new(),
        peers: Arc::new(PeerConnections::default()),
        http_peers: Arc::new(PeerConnections::default()),
        next_id: AtomicU64::new(1),
        sessions_elsewhere,
    });
    // The sessions are tasks of their own: a server that stops without its
    // shutdown (its future dropped, or unwound by a panic) still has them
    // close with 1001 rather than stream on unserved.
    let _close_sessions = CloseSessionsOnDrop(shared.shutdown.clone());
    let router = http::router(shared.clone());
    let tls = shared
        .config
        .tls
        .clone()
        .map(tokio_rustls::TlsAcceptor::from);
    let connections = TaskTracker::new();
    connections.spawn(memory::watch(
        shared.hub.metrics().clone(),
        shared.config.memory_trim_after,
        shared.shutdown.token().clone(),
    ));
    tokio::pin!(shutdown);
    let mut next_listener = 0;
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept_any(&listeners, &mut next_listener) => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    shared.hub.metrics().accept_errors.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Sockets that never send a request, or keep one connection each
        // busy with plain HTTP, would otherwise take descriptors without
        // limit: one address could leave none for anybody else (or for a
        // replay's next file). Closed at once: no request was read to answer.
        let limit = shared.config.limits.max_connections_per_ip;
        let Some(http_permit) = shared.http_peers.admit(peer.ip(), limit) else {
            shared.hub.metrics().count_refusal(Refusal::PeerHttpLimit);
            drop(stream);
            continue;
        };
        // Across addresses, the sockets still waiting for a request head are
        // bounded too: past the bound, the one that has waited longest is
        // closed to make room (see `waiting`).
        let (slot, evicted) = shared.waiting.admit();
        if let Err(e) = tune_socket(&stream, &shared.session_config) {
            tracing::debug!(%peer, error = %e, "could not tune socket");
        }
        let (router, shared) = (router.clone(), shared.clone());
        // The permit is held until hyper lets the connection go: at its close,
        // or once a WebSocket session has taken the socket over.
        match &tls {
            None => connections.spawn(async move {
                let _http_permit = http_permit;
                let connection = serve_connection(stream, peer, router, shared, slot.clone());
                unless_evicted(slot, peer, connection).await;
            }),
            Some(acceptor) => {
                let accepting = acceptor.accept(stream);
                connections.spawn(async move {
                    let _http_permit = http_permit;
                    unless_evicted(slot.clone(), peer, async move {
                        // The TLS handshake has the request head's time limit, and
                        // the head, once it is done, that limit again.
                        let timeout = shared.config.header_timeout;
                        let accepted = tokio::time::timeout(timeout, accepting)
                            .await
                            .unwrap_or_else(|_| {
                                Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
                            });
                        match accepted {
                            Ok(stream) => {
                                serve_connection(stream, peer, router, shared, slot).await
                            }
                            Err(e) => {
                                shared
                                    .hub
                                    .metrics()
                                    .tls_handshake_failures
                                    .fetch_add(1, Relaxed);
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            }
                        }
                    })
                    .await;
                })
            }
        };
        if evicted {
            // Lets the evicted connection's task close its socket before the
            // next accept needs a descriptor.
            tokio::task::yield_now().await;
        }
    }

    tracing::info!("shutting down: closing sessions with 1001");
    shared.shutdown.begin();
    drop(listeners);
    connections.close();
    shared.sessions.close();
    let grace = shared.config.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        connections.wait().await;
        shared.sessions.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(?grace, "some connections did not close in time");
    }
    Ok(())
}

/// Begins the sessions' shutdown when dropped.
struct CloseSessionsOnDrop(Shutdown);

impl Drop for CloseSessionsOnDrop {
    fn drop(&mut self) {
        self.0.begin();
    }
}

/// [`run_on`] with HTTP on a thread of its own: accepting, TLS and WebSocket
/// handshakes, the JSON API, metrics and SSE streams run on a current-thread
/// runtime there, while each WebSocket session runs on the runtime this is
/// called on, its socket moved over once the handshake is done. The thread
/// starts when this is called, not when the future is first polled; the
/// future resolves when [`run_on`] returns there, re-raises its panic, and
/// when dropped before that shuts the thread's server down.
///
/// For a current-thread runtime that serves thousands of streaming sessions:
/// it runs woken tasks in the order they were woken, so each step of a
/// handshake would queue behind every session woken before it. On a thread
/// of its own, a handshake waits only for the operating system to schedule
/// that thread. A session starts once its runtime next takes tasks spawned
/// from other threads, and answers on its first turn what its client sent
/// meanwhile, as far as one read takes it. Once the sessions' runtime has
/// run nothing for two seconds, `/healthz` answers `503` and new WebSocket
/// clients are refused with `503` too.
///
/// # Panics
///
/// Outside a tokio runtime. The runtime must have I/O and time enabled.
pub fn run_fronted(
    listeners: Vec<TcpListener>,
    hub: Arc<Hub>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = io::Result<()>> {
    let handle = tokio::runtime::Handle::current();
    let sessions = SessionsRuntime {
        heartbeat: Heartbeat::start(&handle),
        handle,
    };
    let dropped = CancellationToken::new();
    let stop_on_drop = dropped.clone().drop_guard();
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            () = dropped.cancelled() => {}
        }
    };
    let (done, result) = tokio::sync::oneshot::channel();
    let started = listeners
        .into_iter()
        // Each listener moves to the HTTP thread's reactor.
        .map(TcpListener::into_std)
        .collect::<io::Result<Vec<_>>>()
        .and_then(|listeners| {
            std::thread::Builder::new()
                .name("tickwire-http".into())
                .spawn(move || {
                    let serving = || serve_http_thread(listeners, hub, config, sessions, shutdown);
                    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(serving));
                    let _ = done.send(served);
                })
        });
    async move {
        let _stop_on_drop = stop_on_drop;
        started?;
        // The sessions keep running on this runtime while this waits.
        match result.await {
            Ok(Ok(served)) => served,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => Err(io::Error::other("the HTTP thread ended without a result")),
        }
    }
}

/// The thread of [`run_fronted`]: [`serve`] on a current-thread runtime of
/// its own.
fn serve_http_thread(
    listeners: Vec<std::net::TcpListener>,
    hub: Arc<Hub>,
    config: ServerConfig,
    sessions: SessionsRuntime,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listeners = listeners
            .into_iter()
            .map(TcpListener::from_std)
            .collect::<io::Result<Vec<_>>>()?;
        serve(listeners, hub, config, Some(sessions), shutdown).await
    })
}

/// Runs `connection` to its end, or drops it (and so closes its socket) once
/// `slot` is evicted: it had waited longest for a request head when the
/// bound on those was reached.
async fn unless_evicted(
    slot: Arc<WaitingSlot>,
    peer: std::net::SocketAddr,
    connection: impl Future<Output = ()>,
) {
    tokio::select! {
        () = connection => {}
        () = slot.evicted() => {
            tracing::debug!(%peer, "connection closed: it had waited longest for a request head");
        }
    }
}

/// The next connection on any of `listeners`. The one looked at first
/// rotates, so a busy socket cannot starve the others.
async fn accept_any(
    listeners: &[TcpListener],
    next: &mut usize,
) -> io::Result<(TcpStream, std::net::SocketAddr)> {
    std::future::poll_fn(|cx| {
        for offset in 0..listeners.len() {
            let index = (*next + offset) % listeners.len();
            if let Poll::Ready(accepted) = listeners[index].poll_accept(cx) {
                *next = index + 1;
                return Poll::Ready(accepted);
            }
        }
        Poll::Pending
    })
    .await
}

/// How the open-file limit is shared out; see [`raise_open_file_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// Clients that may be admitted, at most the number asked for.
    pub connections: usize,
    /// Sockets that may wait for a request head at once
    /// ([`ServerConfig::max_waiting`]).
    pub waiting: usize,
}

/// Each connection is a file descriptor. Lifts the soft open-file limit to
/// the hard one when the soft one would not fit `connections` (a login
/// shell's default is often 1,024), and shares out the limit it ends with;
/// None when the limit cannot be read. See [`OpenFiles::within`].
pub fn raise_open_file_limit(connections: usize) -> Option<OpenFiles> {
    let needed = connections as u64 + 64;
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    let limit = if soft >= needed {
        soft
    } else {
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => limit,
            Err(error) => {
                tracing::warn!(%error, "cannot raise the open-file limit");
                soft
            }
        }
    };
    Some(OpenFiles::within(limit, connections))
}

impl OpenFiles {
    /// An open-file limit of `limit` shared out: a tenth of the descriptors
    /// (at least 32) is kept back, so at most the rest of `connections` are
    /// admitted, and a client past them is answered with a refusal instead
    /// of never being accepted. The descriptors not admitted, but for half of
    /// that tenth, kept for the files and links the process opens itself and
    /// requests being answered, are for sockets waiting for a request head.
    pub fn within(limit: u64, connections: usize) -> Self {
        let kept = (limit / 10).max(32);
        let room = limit.saturating_sub(kept).max(1);
        let connections = connections.min(usize::try_from(room).unwrap_or(usize::MAX));
        let waiting = limit
            .saturating_sub(connections as u64)
            .saturating_sub(kept / 2)
            .max(1);
        Self {
            connections,
            waiting: usize::try_from(waiting).unwrap_or(usize::MAX),
        }
    }
}

fn tune_socket(stream: &TcpStream, config: &SessionConfig) -> io::Result<()> {
    // Latency first: a ticker frame must not wait for Nagle's timer.
    stream.set_nodelay(true)?;
    if let Some(bytes) = config.send_buffer_bytes {
        socket2::SockRef::from(stream).set_send_buffer_size(bytes)?;
    }
    if let Some(bytes) = config.unsent_limit_bytes {
        limit_unsent_bytes(stream, bytes);
    }
    Ok(())
}

/// Sets `TCP_NOTSENT_LOWAT` (see [`SessionConfig::unsent_limit_bytes`]).
/// Best effort: without it a slow reader's backlog is bounded by the send
/// buffer alone.
#[cfg(target_os = "linux")]
fn limit_unsent_bytes(stream: &TcpStream, bytes: usize) {
    let limit = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = crate::sockopt::set_int(stream, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, limit);
    if let Err(error) = set {
        tracing::debug!(%error, "TCP_NOTSENT_LOWAT not set");
    }
}

#[cfg(not(target_os = "linux"))]
fn limit_unsent_bytes(_stream: &TcpStream, _bytes: usize) {}

/// The client's address, as a request extension for per-address limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerAddr(pub std::net::SocketAddr);

/// Cancelled to drop the connection at once, as a request extension: a
/// response stream that gives up on a client that stopped reading cannot end
/// by itself, since the end would wait behind the bytes the client never takes.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionAbort(pub CancellationToken);

async fn serve_connection<S>(
    stream: S,
    peer: std::net::SocketAddr,
    router: axum::Router,
    shared: Arc<Shared>,
    slot: Arc<WaitingSlot>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let abort = CancellationToken::new();
    let abort_handle = abort.clone();
    let sent = slot.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // Its head is in; once the response has gone, it waits for the next.
        slot.stop();
        request.extensions_mut().insert(PeerAddr(peer));
        request
            .extensions_mut()
            .insert(ConnectionAbort(abort_handle.clone()));
        let response = router.clone().oneshot(request.map(axum::body::Body::new));
        let slot = slot.clone();
        async move {
            let response = response.await?;
            Ok::<_, Infallible>(waiting::waits_after(response, slot))
        }
    });
    // A client that takes no byte of a response for as long as an SSE client
    // may go without output is dropped; an SSE stream learns it by `abort`.
    let session = &shared.session_config;
    let limit = (session.ping_interval + session.ping_timeout)
        .saturating_mul(crate::session::sse::SSE_STALL_ROUNDS);
    let metrics = shared.hub.metrics().clone();
    let stream = stall::WriteStall::new(stream, limit, abort.clone(), metrics, sent);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_timeout)
        // hyper's smallest buffer; the command line refuses less.
        .max_buf_size(shared.config.max_header_bytes.max(8 * 1024));
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shared.shutdown.token().cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = abort.cancelled() => {
            tracing::debug!(%peer, "connection dropped: its client stopped reading");
            return;
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_shared_between_clients_waiting_sockets_and_the_rest() {
        // 64: 32 kept back, half of them for waiting sockets.
        let low = OpenFiles::within(64, 50_000);
        assert_eq!((low.connections, low.waiting), (32, 16));
        // 1,024: a tenth kept back, half of it for waiting sockets.
        let login = OpenFiles::within(1_024, 50_000);
        assert_eq!((login.connections, login.waiting), (922, 51));
        // Room to spare: every client, and the descriptors they leave.
        let high = OpenFiles::within(1 << 20, 50_000);
        assert_eq!(high.connections, 50_000);
        assert_eq!(high.waiting, (1 << 20) - 50_000 - (1 << 20) / 20);
        // Never none.
        assert_eq!(OpenFiles::within(0, 10).waiting, 1);
    }
}
