//! HTTP routes: `/healthz`, `/metrics`, `/api/symbols`, `/api/snapshot/{symbol}`
//! and the WebSocket upgrade at `/ws`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use super::Shared;
use crate::metrics::Refusal;
use crate::protocol;
use crate::session::{self, SessionContext};

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/symbols", get(symbols))
        .route("/api/snapshot/{symbol}", get(snapshot))
        .route("/api/latency", get(latency))
        .route("/ws", get(upgrade))
        .with_state(shared)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let body = shared.hub.metrics().render(shared.hub.symbol_count());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn symbols(State(shared): State<Arc<Shared>>) -> Json<Vec<String>> {
    Json(
        shared
            .hub
            .symbol_names()
            .iter()
            .map(|s| s.to_string())
            .collect(),
    )
}

async fn snapshot(State(shared): State<Arc<Shared>>, Path(symbol): Path<String>) -> Response {
    let Some(entry) = shared.hub.get(&symbol) else {
        return refusal(StatusCode::NOT_FOUND, "unknown_symbol", "no such symbol");
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

/// `{"error":"<code>","message":"..."}` with a status, as protocol v1 refuses.
fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": code, "message": message });
    (status, Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
struct WsQuery {
    symbols: Option<String>,
}

/// The RFC 6455 handshake: checks the request, answers `101`, and hands the
/// upgraded socket to a new session task.
async fn upgrade(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<WsQuery>,
    mut request: Request,
) -> Response {
    let metrics = shared.hub.metrics();
    let key = match websocket_key(request.headers()) {
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
    if shared.shutdown.is_cancelled() {
        metrics.count_refusal(Refusal::ShuttingDown);
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "server is shutting down",
        );
    }
    let open = usize::try_from(metrics.connections.load(Relaxed)).unwrap_or(0);
    if open >= shared.config.max_connections {
        metrics.count_refusal(Refusal::ConnectionLimit);
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection_limit",
            "server is at its connection limit",
        );
    }

    let initial_symbols: Vec<String> = query
        .symbols
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut request);
    let context = SessionContext {
        hub: shared.hub.clone(),
        config: shared.session_config.clone(),
        shutdown: shared.shutdown.clone(),
        id: shared.next_id(),
    };
    shared.sessions.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                session::run(
                    parts.io.into_inner(),
                    parts.read_buf,
                    initial_symbols,
                    context,
                )
                .await
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
        }
    });

    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// The `Sec-WebSocket-Key` of a valid upgrade request, or why it is not one.
fn websocket_key(headers: &HeaderMap) -> Result<String, &'static str> {
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
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err("only WebSocket version 13 is supported");
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|key| key.len() == 24)
        .map(str::to_owned)
        .ok_or("missing or malformed Sec-WebSocket-Key")
}
