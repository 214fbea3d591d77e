//! HTTP routes: `/healthz`, `/metrics`, `/api/symbols`, `/api/snapshot/{symbol}`
//! and the WebSocket upgrade at `/ws`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use super::stall::WriteStall;
use super::{ConnectionAbort, PeerAddr, Shared};
use crate::auth::{self, Grant};
use crate::limits::Admission;
use crate::metrics::{CloseReason, ErrorCode, Metrics, Refusal};
use crate::protocol;
use crate::session::transport::Transport;
use crate::session::{self, sse, SessionContext};
use tokio_rustls::server::TlsStream;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(dashboard_page))
        .route("/app.js", get(dashboard_script))
        .route("/style.css", get(dashboard_style))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/symbols", get(symbols))
        .route("/api/snapshot/{symbol}", get(snapshot))
        .route("/api/latency", get(latency))
        .route("/api/feeds", get(feeds))
        // Any method, so that a handshake that is not a GET gets the JSON refusal.
        .route("/ws", any(upgrade))
        .route("/sse", get(event_stream))
        .with_state(shared)
}

/// How long the runtime serving the sessions has run nothing, once it counts
/// as stalled (see `heartbeat`); never where HTTP shares that runtime.
fn sessions_stalled(shared: &Shared) -> Option<std::time::Duration> {
    shared
        .sessions_elsewhere
        .as_ref()
        .and_then(|elsewhere| elsewhere.heartbeat.stalled())
}

fn stalled_message(silence: std::time::Duration) -> String {
    format!(
        "the sessions' worker has run nothing for {} ms",
        silence.as_millis()
    )
}

/// A stall is counted from two seconds of silence: a client refused for one
/// tries again after about as long.
const STALLED_RETRY_AFTER_SECS: u32 = 2;

/// `ok`, or `503` once the runtime serving the sessions has stopped running
/// tasks.
async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    match sessions_stalled(&shared) {
        None => "ok\n".into_response(),
        Some(silence) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stalled: {}\n", stalled_message(silence)),
        )
            .into_response(),
    }
}

/// The browser dashboard (`src/server/dashboard/`), compiled into the binary.
async fn dashboard_page() -> Response {
    static_asset(
        "text/html; charset=utf-8",
        include_str!("dashboard/index.html"),
    )
}

async fn dashboard_script() -> Response {
    static_asset(
        "text/javascript; charset=utf-8",
        include_str!("dashboard/app.js"),
    )
}

async fn dashboard_style() -> Response {
    static_asset(
        "text/css; charset=utf-8",
        include_str!("dashboard/style.css"),
    )
}

fn static_asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    // The sessions' runtime: with HTTP on a thread of its own, not this one.
    let workers = shared.sessions_runtime().metrics().num_workers();
    let body = shared
        .hub
        .metrics()
        .render(shared.hub.symbol_count(), Some(workers));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The symbols the caller may see.
async fn symbols(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<ClientQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let grant = match client_query(&shared, query).and_then(|q| authenticate(&shared, &headers, &q))
    {
        Ok(grant) => grant,
        Err(refused) => return refused.into_response(),
    };
    let names: Vec<String> = shared
        .hub
        .symbol_names()
        .iter()
        .filter(|name| grant.entitlements.allows(name))
        .map(|s| s.to_string())
        .collect();
    Json(names).into_response()
}

async fn snapshot(
    State(shared): State<Arc<Shared>>,
    symbol: Result<Path<String>, PathRejection>,
    query: Result<Query<ClientQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    // A symbol that is not UTF-8 once decoded gets the JSON 400, like a bad query.
    let symbol = symbol.map(|Path(symbol)| symbol).map_err(|rejection| {
        Refused::new(
            &shared,
            Refusal::BadQuery,
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("malformed symbol in the path: {}", rejection.body_text()),
        )
    });
    let checked = symbol.and_then(|symbol| {
        let query = client_query(&shared, query)?;
        Ok((symbol, authenticate(&shared, &headers, &query)?))
    });
    let (symbol, grant) = match checked {
        Ok(checked) => checked,
        Err(refused) => return refused.into_response(),
    };
    if !grant.entitlements.allows(&symbol) {
        shared.hub.metrics().count_error(ErrorCode::NotEntitled);
        return refusal(
            StatusCode::FORBIDDEN,
            "not_entitled",
            "your credentials do not cover this symbol",
        );
    }
    let Some(entry) = shared.hub.get(&symbol) else {
        shared.hub.metrics().count_error(ErrorCode::UnknownSymbol);
        let entitlements = &grant.entitlements;
        let message = shared
            .hub
            .no_such_symbol(&[&symbol], &|name| entitlements.allows(name));
        return refusal(StatusCode::NOT_FOUND, "unknown_symbol", &message);
    };
    let Some(current) = entry.current() else {
        return refusal(
            StatusCode::NOT_FOUND,
            "no_data",
            "no update for this symbol yet",
        );
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        protocol::encode_ticker_snapshot(&current),
    )
        .into_response()
}

/// The server's delivery-latency percentiles (ingest → written to the socket),
/// in nanoseconds, for dashboards that do not read Prometheus text.
async fn latency(State(shared): State<Arc<Shared>>) -> Response {
    let summary = shared.hub.metrics().delivery_latency.summary();
    Json(serde_json::json!({
        "count": summary.count,
        "p50_ns": summary.p50,
        "p90_ns": summary.p90,
        "p99_ns": summary.p99,
        "p999_ns": summary.p999,
        "max_ns": summary.max,
    }))
    .into_response()
}

/// Health of every feed: state, connection counts, traffic, and how long ago
/// the last message came.
async fn feeds(State(shared): State<Arc<Shared>>) -> Response {
    let now = crate::wall_clock_ns();
    let feeds: Vec<serde_json::Value> = shared
        .hub
        .metrics()
        .feeds()
        .iter()
        .map(|feed| {
            let latency = feed.exchange_latency.summary();
            serde_json::json!({
                "name": feed.name,
                "kind": feed.kind,
                "state": feed.state().as_str(),
                "connects": feed.connects.load(Relaxed),
                "reconnects": feed.reconnects.load(Relaxed),
                "messages": feed.messages.load(Relaxed),
                "ticks": feed.ticks.load(Relaxed),
                "recognised": feed.recognised.load(Relaxed),
                "malformed": feed.malformed.load(Relaxed),
                "last_message_age_ms": feed.last_message_age(now).map(|s| (s * 1e3).round() as u64),
                "exchange_latency_ns": {
                    "count": latency.count,
                    "p50": latency.p50,
                    "p99": latency.p99,
                    "max": latency.max,
                },
            })
        })
        .collect();
    Json(feeds).into_response()
}

/// `{"error":"<code>","message":"..."}` with a status, as protocol v1 refuses.
fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": code, "message": message });
    (status, Json(body)).into_response()
}

/// Query parameters of `/ws`, `/sse` and the data API.
#[derive(Debug, Default, Deserialize)]
struct ClientQuery {
    symbols: Option<String>,
    token: Option<String>,
}

impl ClientQuery {
    /// The `symbols` parameter as the `symbols` of the subscribe request it
    /// stands for, if given. Every comma separates, and each name is kept as
    /// written, so an empty or space-padded one is refused as the request
    /// would refuse it rather than dropped or corrected unseen; an empty
    /// value is the empty list.
    fn symbols(&self) -> Option<Vec<String>> {
        let value = self.symbols.as_deref()?;
        if value.is_empty() {
            return Some(Vec::new());
        }
        Some(value.split(',').map(str::to_owned).collect())
    }
}

/// A refusal: protocol v1's JSON body with a status, counted by reason.
struct Refused {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u32>,
}

impl Refused {
    fn new(
        shared: &Shared,
        reason: Refusal,
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        shared.hub.metrics().count_refusal(reason);
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Tells the client when to try again.
    fn retry_after(self, secs: u32) -> Self {
        Self {
            retry_after: Some(secs),
            ..self
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut response = refusal(self.status, self.code, &self.message);
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The query string, or the documented `400` instead of a plain-text one.
fn client_query(
    shared: &Shared,
    query: Result<Query<ClientQuery>, QueryRejection>,
) -> Result<ClientQuery, Refused> {
    let refused = |why: String| {
        Refused::new(
            shared,
            Refusal::BadQuery,
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("malformed query string: {why}"),
        )
    };
    let query = query
        .map(|Query(query)| query)
        .map_err(|rejection| refused(rejection.body_text()))?;
    // The decoder replaces bytes that are not UTF-8 with U+FFFD, which no
    // symbol or token holds: a name the client never wrote is refused here,
    // as a path would be, rather than answered as an unknown symbol.
    let lossy = [&query.symbols, &query.token]
        .into_iter()
        .flatten()
        .any(|value| value.contains(char::REPLACEMENT_CHARACTER));
    if lossy {
        return Err(refused("a value is not UTF-8 once decoded".into()));
    }
    Ok(query)
}

/// The caller's grant: unrestricted when authentication is off, otherwise
/// from its credential, or `401`.
fn authenticate(
    shared: &Shared,
    headers: &HeaderMap,
    query: &ClientQuery,
) -> Result<Grant, Refused> {
    let credential = auth::credential(headers, query.token.as_deref());
    shared
        .config
        .auth
        .authenticate(credential)
        .map_err(|error| {
            tracing::debug!(%error, "credentials refused");
            Refused::new(
                shared,
                Refusal::Unauthorized,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                error.to_string(),
            )
        })
}

/// Which kind of streaming client asks to be admitted.
#[derive(Clone, Copy)]
enum Streaming {
    /// Served by a session on the sessions' runtime.
    WebSocket,
    /// Served where HTTP is.
    Sse,
}

/// Admits a new streaming client, or refuses it: while shutting down (503),
/// from a browser origin not allowed (403), without valid credentials (401),
/// a WebSocket client while the sessions' worker is stalled (503), over its
/// address's limit (429) or the server's (503).
fn admission(
    shared: &Shared,
    streaming: Streaming,
    peer: Option<Extension<PeerAddr>>,
    headers: &HeaderMap,
    query: &ClientQuery,
) -> Result<(Admission, Grant), Refused> {
    let metrics = shared.hub.metrics();
    if shared.shutdown.has_begun() {
        return Err(Refused::new(
            shared,
            Refusal::ShuttingDown,
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "server is shutting down",
        ));
    }
    let limits = &shared.config.limits;
    if !limits.origin_allowed(headers) {
        return Err(Refused::new(
            shared,
            Refusal::OriginNotAllowed,
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not connect",
        ));
    }
    let grant = authenticate(shared, headers, query)?;
    // A session handed to a stalled runtime would get its `101` and then
    // nothing; refused, its client can try again later, or another server.
    let stalled = match streaming {
        Streaming::WebSocket => sessions_stalled(shared),
        Streaming::Sse => None,
    };
    if let Some(silence) = stalled {
        let refused = Refused::new(
            shared,
            Refusal::WorkerStalled,
            StatusCode::SERVICE_UNAVAILABLE,
            "worker_stalled",
            stalled_message(silence),
        );
        return Err(refused.retry_after(STALLED_RETRY_AFTER_SECS));
    }
    let peer = match peer {
        Some(Extension(PeerAddr(addr))) => Some(
            shared
                .peers
                .admit(addr.ip(), limits.max_connections_per_ip)
                .ok_or_else(|| {
                    Refused::new(
                        shared,
                        Refusal::PeerLimit,
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_connections",
                        "too many connections from your address",
                    )
                })?,
        ),
        None => None,
    };
    let connection = metrics
        .admit(shared.config.max_connections)
        .ok_or_else(|| {
            Refused::new(
                shared,
                Refusal::ConnectionLimit,
                StatusCode::SERVICE_UNAVAILABLE,
                "connection_limit",
                "server is at its connection limit",
            )
        })?;
    Ok((Admission { connection, peer }, grant))
}

fn session_context(shared: &Shared, grant: Grant) -> SessionContext {
    SessionContext {
        hub: shared.hub.clone(),
        config: shared.session_config.clone(),
        shutdown: shared.shutdown.clone(),
        id: shared.next_id(),
        grant: Arc::new(grant),
    }
}

/// `GET /sse?symbols=A,B`: the ticker stream as Server-Sent Events.
async fn event_stream(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<ClientQuery>, QueryRejection>,
    peer: Option<Extension<PeerAddr>>,
    abort: Option<Extension<ConnectionAbort>>,
    headers: HeaderMap,
) -> Response {
    let query = match client_query(&shared, query) {
        Ok(query) => query,
        Err(refused) => return refused.into_response(),
    };
    let symbols = query.symbols().unwrap_or_default();
    if symbols.is_empty() {
        shared.hub.metrics().count_refusal(Refusal::BadQuery);
        return refusal(StatusCode::BAD_REQUEST, "bad_request", "give symbols=A,B");
    }
    let (permit, grant) = match admission(&shared, Streaming::Sse, peer, &headers, &query) {
        Ok(admitted) => admitted,
        Err(refused) => return refused.into_response(),
    };
    let abort = abort.map(|Extension(ConnectionAbort(token))| token);
    let stream = sse::start(symbols, session_context(&shared, grant), permit, abort);
    let body = axum::body::Body::from_stream(stream);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // Tells nginx-style proxies not to buffer the stream.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response()
}

/// The RFC 6455 handshake: checks the request, answers `101`, and hands the
/// upgraded socket to a new session task.
async fn upgrade(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<ClientQuery>, QueryRejection>,
    peer: Option<Extension<PeerAddr>>,
    mut request: Request,
) -> Response {
    let metrics = shared.hub.metrics();
    if request.method() != Method::GET {
        metrics.count_refusal(Refusal::NotWebSocket);
        let message = "the WebSocket handshake is a GET request";
        let mut response = refusal(StatusCode::METHOD_NOT_ALLOWED, "bad_request", message);
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    let key = match websocket_key(&request) {
        Ok(key) => key,
        Err(message) => {
            metrics.count_refusal(Refusal::NotWebSocket);
            let mut response = refusal(StatusCode::BAD_REQUEST, "bad_request", message);
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return response;
        }
    };
    let admitted = client_query(&shared, query).and_then(|query| {
        let admitted = admission(
            &shared,
            Streaming::WebSocket,
            peer,
            request.headers(),
            &query,
        )?;
        Ok((admitted, query))
    });
    let ((permit, grant), query) = match admitted {
        Ok(admitted) => admitted,
        Err(refused) => return refused.into_response(),
    };
    // A browser that offered protocols fails a handshake that selects none.
    let subprotocol = auth::subprotocols(request.headers())
        .any(|p| p == auth::SUBPROTOCOL)
        .then_some(auth::SUBPROTOCOL);
    // `symbols=` given, even empty, is a subscribe request; absent, none.
    let initial_symbols = query.symbols();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut request);
    let context = session_context(&shared, grant);
    let elsewhere = shared
        .sessions_elsewhere
        .as_ref()
        .map(|elsewhere| elsewhere.handle.clone());
    let sessions = shared.sessions.clone();
    shared.sessions.spawn(async move {
        // The permit was counted in; a connection that ends before its
        // session starts is counted out here.
        let metrics = context.hub.metrics();
        let (stream, mut read_buf) = match upgraded(on_upgrade).await {
            Ok(upgraded) => upgraded,
            Err(e) => return lost_before_its_session(metrics, "upgrade failed", &e),
        };
        let Some(runtime) = elsewhere else {
            return session::run(stream, read_buf, initial_symbols, context, permit).await;
        };
        // The socket leaves this thread's reactor here and joins the sessions'
        // runtime's there, so that its events wake the session on its own
        // thread.
        let connection = match stream.detach() {
            Ok(connection) => connection,
            Err(e) => return lost_before_its_session(metrics, HANDING_OVER, &e),
        };
        let session = async move {
            match connection.attach(&mut read_buf) {
                Ok(stream) => {
                    session::run(stream, read_buf, initial_symbols, context, permit).await;
                }
                Err(e) => lost_before_its_session(context.hub.metrics(), HANDING_OVER, &e),
            }
        };
        sessions.spawn_on(session, &runtime);
    });

    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    if let Some(protocol) = subprotocol {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        );
    }
    response
}

const HANDING_OVER: &str = "connection lost while handed to its session";

/// Counts out a connection that ended between its `101` and its session.
fn lost_before_its_session(metrics: &Metrics, what: &str, error: &dyn std::fmt::Display) {
    tracing::debug!(%error, "{what}");
    metrics.count_close(CloseReason::Io);
}

/// The socket hyper hands over once it has sent `101`, and a copy of the
/// bytes it had already read past the request: hyper's own shares, and so
/// keeps, its whole read buffer (8 KiB or more) however little it holds,
/// for as long as the connection waits for its session.
async fn upgraded(on_upgrade: hyper::upgrade::OnUpgrade) -> Result<(Transport, BytesMut), String> {
    let upgraded = on_upgrade.await.map_err(|e| e.to_string())?;
    let upgraded = match upgraded.downcast::<TokioIo<WriteStall<TcpStream>>>() {
        Ok(parts) => {
            let tcp = parts.io.into_inner().into_inner();
            let read_buf = BytesMut::from(&parts.read_buf[..]);
            return Ok((Transport::Plain(tcp), read_buf));
        }
        Err(upgraded) => upgraded,
    };
    match upgraded.downcast::<TokioIo<WriteStall<TlsStream<TcpStream>>>>() {
        Ok(parts) => {
            let (tcp, tls) = parts.io.into_inner().into_inner().into_inner();
            let read_buf = BytesMut::from(&parts.read_buf[..]);
            Ok((Transport::tls(tcp, tls), read_buf))
        }
        Err(_) => {
            // Every connection is served as one of the two: a bug if not.
            tracing::error!("upgraded connection is neither TCP nor TLS");
            Err("the upgraded connection is neither TCP nor TLS".into())
        }
    }
}

/// The `Sec-WebSocket-Key` of a valid upgrade request, or why it is not one.
fn websocket_key(request: &Request) -> Result<String, &'static str> {
    // RFC 6455: HTTP/1.1, with a Host (the caller has checked for a GET).
    if request.version() != Version::HTTP_11 {
        return Err("the WebSocket handshake needs HTTP/1.1");
    }
    let headers = request.headers();
    if !headers.contains_key(header::HOST) {
        return Err("missing Host header");
    }
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .unwrap_or("")
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    };
    if !has_token(header::UPGRADE, "websocket") {
        return Err("expected `Upgrade: websocket`");
    }
    if !has_token(header::CONNECTION, "upgrade") {
        return Err("expected `Connection: Upgrade`");
    }
    // Each of these must appear once (RFC 6455, 11.3.1 and 11.3.5): with two,
    // which one the client meant is anyone's guess.
    let once = |name| {
        let mut values = headers.get_all(name).iter();
        values.next().filter(|_| values.next().is_none())
    };
    if once(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        return Err("only WebSocket version 13 is supported");
    }
    use base64::Engine as _;
    once(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|key| {
            let decoded = base64::engine::general_purpose::STANDARD.decode(key);
            decoded.is_ok_and(|nonce| nonce.len() == 16)
        })
        .map(str::to_owned)
        .ok_or("missing or malformed Sec-WebSocket-Key")
}
