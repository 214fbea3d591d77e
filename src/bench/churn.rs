//! Connection churn: while the window is open, connect, subscribe, wait for the
//! answer and disconnect at a constant rate, on a thread of its own, so the
//! server's accept path and its clean-up are measured under the steady load.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::load::{Control, Phase};
use super::sources::SourceAddresses;
use super::tally::new_histogram;
use crate::client::connect_from;

/// Churning connections open at once at most; past it the churn falls behind
/// (and says so) instead of piling up sockets.
const IN_FLIGHT: usize = 2_048;

/// How long the schedule waits at most before it looks at the phase again.
const PHASE_CHECK: Duration = Duration::from_millis(50);
/// How long one churn cycle may take before it counts as failed.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the churn did.
#[derive(Debug)]
pub struct ChurnOutcome {
    /// Cycles that connected, were answered and closed.
    pub completed: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// Cycles skipped because `IN_FLIGHT` were already open.
    pub behind: u64,
    /// From TCP connect to `101 Switching Protocols`, ns.
    pub handshake: Histogram<u64>,
    /// From TCP connect to the `subscribed` answer, ns: the handshake and
    /// then the session's first turn.
    pub subscribed: Histogram<u64>,
}

impl Default for ChurnOutcome {
    fn default() -> Self {
        Self {
            completed: 0,
            failed: 0,
            first_error: None,
            behind: 0,
            handshake: new_histogram(),
            subscribed: new_histogram(),
        }
    }
}

/// The churn part of a report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChurnReport {
    pub target_per_sec: f64,
    pub completed_per_sec: f64,
    pub completed: u64,
    pub failed: u64,
    pub behind: u64,
    pub handshake_us: super::report::Percentiles,
    pub subscribed_us: super::report::Percentiles,
}

/// Starts the churn thread: `rate` cycles per second during [`Phase::Measure`],
/// each subscribing to `symbols`.
pub fn spawn(
    url: String,
    tls: Arc<rustls::ClientConfig>,
    sources: Arc<SourceAddresses>,
    symbols: Vec<String>,
    rate: f64,
    control: Arc<Control>,
) -> std::io::Result<oneshot::Receiver<ChurnOutcome>> {
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("bench-churn".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                let _ = done_tx.send(ChurnOutcome {
                    failed: 1,
                    first_error: Some("cannot start the churn runtime".into()),
                    ..ChurnOutcome::default()
                });
                return;
            };
            let local = tokio::task::LocalSet::new();
            let outcome =
                local.block_on(&runtime, churn(url, tls, sources, symbols, rate, control));
            let _ = done_tx.send(outcome);
        })?;
    Ok(done)
}

async fn churn(
    url: String,
    tls: Arc<rustls::ClientConfig>,
    sources: Arc<SourceAddresses>,
    symbols: Vec<String>,
    rate: f64,
    control: Arc<Control>,
) -> ChurnOutcome {
    let request = serde_json::json!({"op": "subscribe", "id": 1, "symbols": symbols}).to_string();
    let url: Arc<str> = url.into();
    let request: Arc<str> = request.into();
    while control.phase() == Phase::WarmUp {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut outcome = ChurnOutcome::default();
    let (result_tx, mut results) = tokio::sync::mpsc::channel(IN_FLIGHT);
    let mut in_flight = 0usize;
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut due: u64 = 0;
    while control.phase() == Phase::Measure {
        // Constant schedule: cycle k starts at k × period, however late we are.
        let next = start + period.mul_f64(due as f64);
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            // A slow schedule still sees the window end within this.
            () = tokio::time::sleep(PHASE_CHECK) => continue,
            Some(result) = results.recv() => {
                in_flight -= 1;
                record(&mut outcome, result);
                continue;
            }
        }
        due += 1;
        if in_flight >= IN_FLIGHT {
            outcome.behind += 1;
            continue;
        }
        in_flight += 1;
        let (url, request, result_tx) = (url.clone(), request.clone(), result_tx.clone());
        let (tls, source) = (tls.clone(), sources.next());
        tokio::task::spawn_local(async move {
            let cycle = cycle(&url, &tls, source, &request);
            let result = tokio::time::timeout(CYCLE_TIMEOUT, cycle)
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
            let _ = result_tx.send(result).await;
        });
    }
    drop(result_tx);
    while in_flight > 0 {
        match results.recv().await {
            Some(result) => record(&mut outcome, result),
            None => break,
        }
        in_flight -= 1;
    }
    outcome
}

fn record(outcome: &mut ChurnOutcome, result: Result<CycleTimes, String>) {
    match result {
        Ok(times) => {
            outcome.completed += 1;
            for (histogram, time) in [
                (&mut outcome.handshake, times.handshake),
                (&mut outcome.subscribed, times.subscribed),
            ] {
                let ns = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
                let _ = histogram.record(ns.clamp(1, super::tally::HIGHEST_NS));
            }
        }
        Err(error) => {
            outcome.failed += 1;
            outcome.first_error.get_or_insert(error);
        }
    }
}

/// How long a cycle took to reach its two answers, from TCP connect.
struct CycleTimes {
    handshake: Duration,
    subscribed: Duration,
}

/// One connect → subscribe → answer → close cycle.
async fn cycle(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    source: Option<IpAddr>,
    request: &str,
) -> Result<CycleTimes, String> {
    let started = Instant::now();
    let mut socket = connect_from(url, tls, source)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let handshake = started.elapsed();
    socket
        .send(Message::text(request))
        .await
        .map_err(|e| format!("cannot subscribe: {e}"))?;
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) if text.contains(r#""type":"subscribed""#) => break,
            Some(Ok(Message::Text(text))) if text.contains(r#""type":"error""#) => {
                return Err(format!("subscribe refused: {text}"));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("connection failed: {e}")),
            None => return Err("closed before answering".into()),
        }
    }
    let subscribed = started.elapsed();
    let _ = socket.close(None).await;
    Ok(CycleTimes {
        handshake,
        subscribed,
    })
}
