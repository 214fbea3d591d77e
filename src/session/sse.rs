//! Server-Sent Events: the same ticker stream over plain HTTP, for clients
//! behind proxies that break WebSocket. Each event's `data:` is exactly the JSON
//! message a WebSocket client would get; a reconnect (with `Last-Event-ID` or
//! not) starts over with `subscribed` and fresh snapshots.
//!
//! The stream task hands the HTTP body one chunk at a time through a channel
//! of capacity one, so while the client is slow the task waits and updates
//! conflate in its mailbox, exactly as for a WebSocket client.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::time::{interval_at, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::entitled;
use super::outbox::{Framing, Outbox};
use super::subscriptions::Subscriptions;
use super::SessionContext;
use crate::limits::Admission;
use crate::metrics::CloseReason;

/// How often a quiet stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A stream whose client takes no chunk for this many ping rounds (ping
/// interval + ping timeout: 5 minutes by default) ends, counted as `stalled`.
/// SSE has no pings, and a chunk's partial writes are not seen from here, so
/// the bound is long enough for a whole chunk (the 16 KiB high-water mark and
/// one message) to reach a client that reads one message a second.
pub const SSE_STALL_ROUNDS: u32 = 10;

/// Starts an event stream subscribed to `symbols`; returns the HTTP body.
/// `abort`, when given, is cancelled to drop the connection of a client that
/// is let go for not reading.
pub fn start(
    symbols: Vec<String>,
    context: SessionContext,
    permit: Admission,
    abort: Option<CancellationToken>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let (chunks, receiver) = mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        let metrics = context.hub.metrics().clone();
        let reason = run(symbols, context, chunks, abort).await;
        metrics.count_close(reason);
        drop(permit);
    });
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((Ok(chunk), receiver))
    })
}

async fn run(
    symbols: Vec<String>,
    context: SessionContext,
    chunks: mpsc::Sender<Bytes>,
    abort: Option<CancellationToken>,
) -> CloseReason {
    let config = context.config.clone();
    let mut out = Outbox::new(
        Framing::EventStream,
        context.hub.metrics().clone(),
        context.id,
    );
    let grant = context.grant.clone();
    let max_subscriptions = grant
        .entitlements
        .subscription_limit(config.max_subscriptions);
    let mut subscriptions =
        Subscriptions::new(context.hub.clone(), grant.clone(), max_subscriptions);
    entitled::subscribe(
        &mut subscriptions,
        &grant,
        &context.hub,
        None,
        symbols,
        None,
        &mut out,
    );
    let expiry = context.expiry();
    let mut expired = false;
    let stall = (config.ping_interval + config.ping_timeout) * SSE_STALL_ROUNDS;
    // SSE subscribes once: a stream left without any subscription (every
    // symbol refused) serves nothing, and holds its place only so long.
    let idle_until = subscriptions
        .is_empty()
        .then(|| Instant::now() + config.idle_timeout);
    let mut keep_alive = interval_at(Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    // The connection's writes may stall out first (`server::stall`), which
    // drops the body: that is the client not reading, not closing.
    let aborted = || async {
        match &abort {
            Some(abort) => abort.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let reason = loop {
        // Deadlines first: a stream that always has data to send still ends
        // when its credential expires, and rate-capped updates still go out.
        let now = Instant::now();
        if !expired && expiry.is_some_and(|expiry| now >= expiry) {
            // The stream ends after the error event is handed over.
            subscriptions.release();
            entitled::expired(&context.hub, &mut out);
            expired = true;
        }
        if idle_until.is_some_and(|until| now >= until) {
            break CloseReason::IdleTimeout;
        }
        if subscriptions.next_deadline().is_some_and(|due| now >= due) {
            subscriptions.on_timer(&mut out);
        }
        subscriptions.fill(&mut out, config.write_high_water);
        if out.buffered() > 0 {
            // Latency is recorded as the chunk is handed to the HTTP layer.
            let chunk = Bytes::from(out.take_pending());
            out.report();
            // A client that stops reading is let go when its credential
            // expires (the error event could not reach it), or once it has
            // taken nothing for `SSE_STALL_ROUNDS` ping rounds.
            let stalled_at = Instant::now() + stall;
            let give_up = match expiry {
                Some(expiry) if !expired => expiry.min(stalled_at),
                _ => stalled_at,
            };
            tokio::select! {
                biased;
                () = context.shutdown.token().cancelled() => break CloseReason::Shutdown,
                () = aborted() => break CloseReason::Stalled,
                sent = chunks.send(chunk) => match sent {
                    Ok(()) if expired => break CloseReason::CredentialsExpired,
                    Ok(()) => continue,
                    Err(_) => break CloseReason::ClientClosed,
                },
                () = sleep_until(give_up) => {
                    // Ending the body is not enough: its end would wait behind
                    // the unread bytes, and the socket would stay open for good.
                    if let Some(abort) = &abort {
                        abort.cancel();
                    }
                    let expired = expiry.is_some_and(|expiry| Instant::now() >= expiry);
                    break if expired {
                        CloseReason::CredentialsExpired
                    } else {
                        CloseReason::Stalled
                    };
                }
            }
        }
        let deadline = [subscriptions.next_deadline(), expiry, idle_until]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + KEEP_ALIVE);
        tokio::select! {
            biased;
            () = context.shutdown.token().cancelled() => break CloseReason::Shutdown,
            () = aborted() => break CloseReason::Stalled,
            () = chunks.closed() => break CloseReason::ClientClosed,
            () = subscriptions.mailbox().notified() => {}
            () = sleep_until(deadline) => {}
            _ = keep_alive.tick() => out.push_comment("keep-alive"),
        }
    };
    subscriptions.release();
    out.release();
    reason
}
