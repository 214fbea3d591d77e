//! Server: the listening socket, HTTP on it (health, metrics, the JSON API) and
//! the upgrade of `GET /ws` into a [`session`](crate::session).
//!
//! The accept loop is ours rather than `axum::serve` so that every socket gets
//! `TCP_NODELAY` and its send-buffer size before the first byte, and so an upgraded
//! connection comes back to us as the plain `TcpStream` the session writes to.

mod http;
pub mod memory;
mod stall;
pub mod tls;

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
    next_id: AtomicU64,
}

impl Shared {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed)
    }
}

/// Serves HTTP and WebSocket clients on `listener` until `shutdown` resolves,
/// then closes every session with 1001 and returns once they are gone (or the
/// grace period is over).
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
    let shared = Arc::new(Shared {
        hub,
        session_config: Arc::new(config.session.clone()),
        config,
        shutdown: Shutdown::default(),
        sessions: TaskTracker::new(),
        peers: Arc::new(PeerConnections::default()),
        http_peers: Arc::new(PeerConnections::default()),
        next_id: AtomicU64::new(1),
    });
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
        if let Err(e) = tune_socket(&stream, &shared.session_config) {
            tracing::debug!(%peer, error = %e, "could not tune socket");
        }
        let (router, shared) = (router.clone(), shared.clone());
        // The permit is held until hyper lets the connection go: at its close,
        // or once a WebSocket session has taken the socket over.
        match &tls {
            None => connections.spawn(async move {
                let _http_permit = http_permit;
                serve_connection(stream, peer, router, shared).await;
            }),
            Some(acceptor) => {
                let accepting = acceptor.accept(stream);
                connections.spawn(async move {
                    let _http_permit = http_permit;
                    // The TLS handshake has the request head's time limit, and
                    // the head, once it is done, that limit again.
                    let timeout = shared.config.header_timeout;
                    let accepted = tokio::time::timeout(timeout, accepting)
                        .await
                        .unwrap_or_else(|_| {
                            Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
                        });
                    match accepted {
                        Ok(stream) => serve_connection(stream, peer, router, shared).await,
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
            }
        };
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

/// Each connection is a file descriptor. Lifts the soft open-file limit to
/// the hard one when the soft one would not fit `connections` (a login
/// shell's default is often 1,024), and returns how many connections the
/// limit it ends with has room for, at most `connections`; None when the
/// limit cannot be read. A tenth of the descriptors (at least 32) is kept
/// for sockets still in their handshake, so that a client past the limit is
/// answered with a refusal instead of never being accepted, and for the
/// files and links the process opens itself.
pub fn raise_open_file_limit(connections: usize) -> Option<usize> {
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
    let room = limit.saturating_sub((limit / 10).max(32)).max(1);
    Some(connections.min(usize::try_from(room).unwrap_or(usize::MAX)))
}

fn tune_socket(stream: &TcpStream, config: &SessionConfig) -> io::Result<()> {
    // Latency first: a ticker frame must not wait for Nagle's timer.
    stream.set_nodelay(true)?;
    if let Some(bytes) = config.send_buffer_bytes {
        socket2::SockRef::from(stream).set_send_buffer_size(bytes)?;
    }
    Ok(())
}

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
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let abort = CancellationToken::new();
    let abort_handle = abort.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(PeerAddr(peer));
        request
            .extensions_mut()
            .insert(ConnectionAbort(abort_handle.clone()));
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    // A client that takes no byte of a response for as long as an SSE client
    // may go without output is dropped; an SSE stream learns it by `abort`.
    let session = &shared.session_config;
    let limit = (session.ping_interval + session.ping_timeout)
        .saturating_mul(crate::session::sse::SSE_STALL_ROUNDS);
    let stream = stall::WriteStall::new(stream, limit, abort.clone(), shared.hub.metrics().clone());
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
