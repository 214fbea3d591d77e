//! The load: WebSocket connections spread over a few OS threads, each running a
//! current-thread tokio runtime, so the client's own cost stays small and
//! predictable. Each thread keeps one histogram its connections share.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use super::sources::SourceAddresses;
use super::tally::{
    new_histogram, parse, sample_staleness, Clock, Freshest, Latency, Received, SeqChecker, Tally,
};
use crate::client::connect_from;
use crate::wall_clock_ns;

/// Handshakes in flight per thread: enough to connect thousands quickly
/// without overrunning the server's accept backlog.
const CONNECTING_AT_ONCE: usize = 64;
/// How long a closing handshake may take once the run is over.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a stalled or slow reader's backlog may take to read once the run
/// is over, to find whether the server closed it meanwhile: a socket's
/// buffers hold well under a second's reading, and a connection still open
/// on an idle feed is known by then as well as it ever will be.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the age of every value the connections hold is sampled.
pub const STALENESS_INTERVAL: Duration = Duration::from_millis(100);

/// Where the run is; connections read it on every message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Connecting and warming up: messages are checked, not timed.
    WarmUp = 0,
    /// Inside the measurement window: tickers are timed and counted.
    Measure = 1,
    /// The window is over; the server is being scraped, connections stay open.
    Done = 2,
    /// Close and report.
    Stop = 3,
}

/// Shared by the coordinator and every load thread.
#[derive(Debug, Default)]
pub struct Control {
    phase: AtomicU8,
    stop: CancellationToken,
    /// Per symbol, the timestamp of the newest value any connection of any
    /// thread has held at a staleness sample (see [`sample_staleness`]);
    /// taken ten times a second per thread, never per message.
    freshest: Mutex<Freshest>,
    /// Wall clock (Unix ns) when the window closed; 0 while it is open.
    window_end_ns: AtomicI64,
}

impl Control {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            0 => Phase::WarmUp,
            1 => Phase::Measure,
            2 => Phase::Done,
            _ => Phase::Stop,
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        if phase == Phase::Done {
            self.window_end_ns.store(wall_clock_ns(), Relaxed);
        }
        self.phase.store(phase as u8, Relaxed);
        if phase == Phase::Stop {
            self.stop.cancel();
        }
    }
}

/// Live counters of one thread, polled by the coordinator.
#[derive(Debug, Default)]
pub struct Progress {
    /// Ticker messages received so far, every phase.
    pub tickers: AtomicU64,
    /// Connections open now.
    pub open: AtomicUsize,
}

/// How connecting went on one thread.
#[derive(Clone, Debug, Default)]
pub struct Connected {
    pub connected: usize,
    pub failed: usize,
    pub first_error: Option<String>,
}

impl Connected {
    pub fn merge(&mut self, other: Connected) {
        self.connected += other.connected;
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// How a connection reads what the server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// Reads every message as soon as it arrives.
    Healthy,
    /// Reads one message per interval: a dashboard in a background tab.
    Slow(Duration),
    /// Subscribes, then never reads again: a hung client.
    Stalled,
}

/// What the connections of one kind of reader measured.
#[derive(Debug, Default)]
pub struct Measured {
    pub tally: Tally,
    pub latency: Latency,
    /// The first `error` message the server sent these connections.
    pub first_error: Option<String>,
}

impl Measured {
    fn merge(&mut self, other: &Measured) {
        self.tally.merge(&other.tally);
        self.latency.merge(&other.latency);
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// What one thread measured.
#[derive(Debug)]
pub struct Outcome {
    /// Healthy readers: the figures the run is about.
    pub healthy: Measured,
    /// Slow readers, reported apart so they cannot flatter or spoil the rest.
    pub slow: Measured,
    /// For every value a healthy reader held at a staleness sample, the age
    /// of the newest value of its symbol any connection had held by then:
    /// what a client that never lagged the others would have seen.
    pub staleness_floor: Histogram<u64>,
    /// Connections that ended before the run did, and the first reason seen.
    pub closed_early: usize,
    pub first_close: Option<String>,
}

impl Default for Outcome {
    fn default() -> Self {
        Self {
            healthy: Measured::default(),
            slow: Measured::default(),
            staleness_floor: new_histogram(),
            closed_early: 0,
            first_close: None,
        }
    }
}

impl Outcome {
    pub fn merge(&mut self, other: Outcome) {
        self.healthy.merge(&other.healthy);
        self.slow.merge(&other.slow);
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.staleness_floor.add(&other.staleness_floor);
        self.closed_early += other.closed_early;
        if self.first_close.is_none() {
            self.first_close = other.first_close;
        }
    }
}

/// A running load thread.
pub struct LoadThread {
    /// Resolves once every connection of the thread connected or failed.
    pub connected: oneshot::Receiver<Connected>,
    pub progress: Arc<Progress>,
    pub handle: std::thread::JoinHandle<anyhow::Result<Outcome>>,
}

/// Where and how a load thread connects.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    /// TLS for `wss://` URLs.
    pub tls: Arc<rustls::ClientConfig>,
    /// Where connections are opened from.
    pub sources: Arc<SourceAddresses>,
    pub connect_timeout: Duration,
    pub clock: Clock,
}

/// Starts a thread that opens one connection per entry of `connections` to
/// the target, subscribes it to those symbols and reads as its [`Reader`] says.
pub fn spawn(
    index: usize,
    target: Target,
    connections: Vec<(Reader, Vec<String>)>,
    control: Arc<Control>,
) -> std::io::Result<LoadThread> {
    let progress = Arc::new(Progress::default());
    let (connected_tx, connected) = oneshot::channel();
    let thread_progress = progress.clone();
    let handle = std::thread::Builder::new()
        .name(format!("bench-{index}"))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let local = tokio::task::LocalSet::new();
            let thread = Thread {
                url: target.url.into(),
                tls: target.tls,
                sources: target.sources,
                control,
                progress: thread_progress,
                healthy: Rc::default(),
                slow: Rc::default(),
                holders: Rc::default(),
                connect_timeout: target.connect_timeout,
                clock: target.clock,
            };
            Ok(local.block_on(&runtime, thread.run(connections, connected_tx)))
        })?;
    Ok(LoadThread {
        connected,
        progress,
        handle,
    })
}

/// What the connections of one thread share.
#[derive(Clone)]
struct Thread {
    url: Rc<str>,
    tls: Arc<rustls::ClientConfig>,
    sources: Arc<SourceAddresses>,
    control: Arc<Control>,
    progress: Arc<Progress>,
    healthy: Rc<RefCell<Measured>>,
    slow: Rc<RefCell<Measured>>,
    /// The versions each reading connection holds, for staleness samples.
    holders: Rc<RefCell<Vec<Holder>>>,
    connect_timeout: Duration,
    clock: Clock,
}

/// One reading connection's versions, as the staleness sampler sees them.
struct Holder {
    slow: bool,
    seqs: Weak<RefCell<SeqChecker>>,
}

/// How one connection ended.
#[derive(Default)]
struct ConnectionEnd {
    /// Why it ended before the run did, if it did.
    early: Option<String>,
}

impl Thread {
    async fn run(
        self,
        connections: Vec<(Reader, Vec<String>)>,
        connected_tx: oneshot::Sender<Connected>,
    ) -> Outcome {
        let count = connections.len();
        let permits = Rc::new(Semaphore::new(CONNECTING_AT_ONCE));
        // One result per connection, so the channel never holds more than `count`.
        let (result_tx, mut results) = mpsc::unbounded_channel();
        let tasks: Vec<_> = connections
            .into_iter()
            .map(|(reader, symbols)| {
                let thread = self.clone();
                let permits = permits.clone();
                let result_tx = result_tx.clone();
                tokio::task::spawn_local(async move {
                    thread.connection(reader, symbols, permits, result_tx).await
                })
            })
            .collect();
        drop(result_tx);
        let sampler = tokio::task::spawn_local(self.clone().sample_staleness());
        let mut connected = Connected::default();
        for _ in 0..count {
            match results.recv().await {
                Some(Ok(())) => connected.connected += 1,
                Some(Err(error)) => {
                    connected.failed += 1;
                    connected.first_error.get_or_insert(error);
                }
                None => break,
            }
        }
        let _ = connected_tx.send(connected);

        let mut outcome = Outcome {
            staleness_floor: sampler.await.unwrap_or_else(|_| new_histogram()),
            ..Outcome::default()
        };
        for task in tasks {
            let end = task.await.unwrap_or_else(|e| ConnectionEnd {
                early: Some(format!("connection task failed: {e}")),
            });
            if let Some(reason) = end.early {
                outcome.closed_early += 1;
                outcome.first_close.get_or_insert(reason);
            }
        }
        outcome.healthy = std::mem::take(&mut *self.healthy.borrow_mut());
        outcome.slow = std::mem::take(&mut *self.slow.borrow_mut());
        outcome
    }

    /// Every [`STALENESS_INTERVAL`] of the measurement window, the age of
    /// every value each reading connection holds (into its reader kind's
    /// `staleness`); returns the floor (see [`Outcome::staleness_floor`]).
    async fn sample_staleness(self) -> Histogram<u64> {
        let mut floor = new_histogram();
        let mut ticks = tokio::time::interval(STALENESS_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            match self.control.phase() {
                Phase::Measure => {}
                Phase::Stop => return floor,
                Phase::WarmUp | Phase::Done => continue,
            }
            // The connections still open; the ended ones are dropped here.
            let mut live: Vec<(Rc<RefCell<SeqChecker>>, bool)> = Vec::new();
            self.holders
                .borrow_mut()
                .retain(|holder| match holder.seqs.upgrade() {
                    Some(seqs) => {
                        live.push((seqs, holder.slow));
                        true
                    }
                    None => false,
                });
            let views: Vec<_> = live
                .iter()
                .map(|(seqs, slow)| (seqs.borrow(), *slow))
                .collect();
            let holders: Vec<_> = views.iter().map(|(seqs, slow)| (&**seqs, *slow)).collect();
            let (mut healthy, mut slow) = (self.healthy.borrow_mut(), self.slow.borrow_mut());
            let record = |is_slow: bool, age, freshest_age| {
                // In range by construction, so these never fail.
                if is_slow {
                    let _ = slow.latency.staleness.record(age);
                } else {
                    let _ = healthy.latency.staleness.record(age);
                    let _ = floor.record(freshest_age);
                }
            };
            let mut freshest = self
                .control
                .freshest
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            sample_staleness(wall_clock_ns(), &holders, &mut freshest, record);
        }
    }

    async fn connection(
        &self,
        reader: Reader,
        symbols: Vec<String>,
        permits: Rc<Semaphore>,
        result_tx: mpsc::UnboundedSender<Result<(), String>>,
    ) -> ConnectionEnd {
        let connect = async {
            let _permit = permits.acquire().await.ok();
            let mut socket = connect_from(&self.url, &self.tls, self.sources.next()).await?;
            let request = serde_json::json!({"op": "subscribe", "id": 1, "symbols": symbols});
            socket.send(Message::text(request.to_string())).await?;
            Ok::<_, tokio_tungstenite::tungstenite::Error>(socket)
        };
        let mut socket = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(socket)) => socket,
            Ok(Err(error)) => {
                let _ = result_tx.send(Err(format!("cannot connect to {}: {error}", self.url)));
                return ConnectionEnd::default();
            }
            Err(_) => {
                let _ = result_tx.send(Err(format!("timed out connecting to {}", self.url)));
                return ConnectionEnd::default();
            }
        };
        self.progress.open.fetch_add(1, Relaxed);
        let _ = result_tx.send(Ok(()));

        let seqs = Rc::new(RefCell::new(SeqChecker::default()));
        let measured = match reader {
            Reader::Slow(_) => &self.slow,
            Reader::Healthy | Reader::Stalled => &self.healthy,
        };
        // A stalled connection holds what it had before it stopped reading:
        // its age says nothing about the server.
        if reader != Reader::Stalled {
            self.holders.borrow_mut().push(Holder {
                slow: matches!(reader, Reader::Slow(_)),
                seqs: Rc::downgrade(&seqs),
            });
        }
        // Pinned once: the stop signal must not cost a registration per message.
        let stop = self.control.stop.cancelled();
        tokio::pin!(stop);
        let early = loop {
            match reader {
                Reader::Healthy => {}
                Reader::Slow(interval) => tokio::select! {
                    () = &mut stop => break None,
                    () = tokio::time::sleep(interval) => {}
                },
                Reader::Stalled => {
                    (&mut stop).await;
                    break None;
                }
            }
            let message = tokio::select! {
                biased;
                message = socket.next() => message,
                () = &mut stop => break None,
            };
            let phase = self.control.phase();
            if let Some(reason) = end_reason(&message) {
                break Some(reason);
            }
            if let Some(Ok(Message::Text(text))) = message {
                let now = wall_clock_ns();
                let Measured {
                    tally,
                    latency,
                    first_error,
                } = &mut *measured.borrow_mut();
                let measuring = phase == Phase::Measure;
                let text = text.as_str();
                let seqs = &mut seqs.borrow_mut();
                let errors = tally.errors;
                if tally.observe(seqs, latency, text, now, self.clock, measuring) {
                    self.progress.tickers.fetch_add(1, Relaxed);
                } else if tally.errors > errors && first_error.is_none() {
                    *first_error = Some(text.chars().take(500).collect());
                }
            }
            // A busy socket is always ready, so `stop` may never be polled above.
            if phase == Phase::Stop {
                break None;
            }
        };
        self.progress.open.fetch_sub(1, Relaxed);
        // Connections that end after the window are not a finding.
        let mut early = early.filter(|_| self.control.phase() != Phase::Stop);
        // A reader that stopped reading learns that the server closed it
        // only from behind its backlog, so that is read now.
        if early.is_none() && reader != Reader::Healthy {
            let window_end_ns = self.control.window_end_ns.load(Relaxed);
            early = tokio::time::timeout(
                DRAIN_TIMEOUT,
                closed_behind_backlog(&mut socket, window_end_ns),
            )
            .await
            .unwrap_or(None);
        }
        // A stalled reader's unread backlog would hold up its closing handshake.
        if early.is_none() && reader != Reader::Stalled {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.close(None)).await;
        }
        ConnectionEnd { early }
    }
}

/// Reads a stalled or slow reader's backlog once the run is over, until the
/// server's close or the end of the stream, or a ticker the server stamped
/// after the reading began (it is still serving the connection: `None`).
/// A close is the reason, marked so, if the server closed the connection
/// during the run: not when the backlog held a ticker stamped after the
/// window's end (`window_end_ns`), as it was serving the connection then.
async fn closed_behind_backlog<S>(socket: &mut S, window_end_ns: i64) -> Option<String>
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let since_ns = wall_clock_ns();
    let mut newest_ns = i64::MIN;
    loop {
        let message = socket.next().await;
        if let Some(reason) = end_reason(&message) {
            return (newest_ns <= window_end_ns)
                .then(|| format!("{reason} (found behind the unread backlog)"));
        }
        if let Some(Ok(Message::Text(text))) = message {
            if let Received::Ticker(ticker) = parse(text.as_str()) {
                if ticker.ingest_ts_ns >= since_ns {
                    return None;
                }
                newest_ns = newest_ns.max(ticker.ingest_ts_ns);
            }
        }
    }
}

/// Why the connection ended, if `message` (the next one read) ends it.
fn end_reason(message: &Option<Result<Message, tungstenite::Error>>) -> Option<String> {
    match message {
        Some(Ok(Message::Close(frame))) => {
            let (code, reason) = frame.as_ref().map_or((1005, String::new()), |f| {
                (u16::from(f.code), f.reason.to_string())
            });
            Some(format!("closed by the server: {code} {reason}"))
        }
        Some(Ok(_)) => None,
        Some(Err(error)) => Some(format!("connection failed: {error}")),
        None => Some("connection ended without a close frame".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticker(ingest_ts_ns: i64) -> Result<Message, tungstenite::Error> {
        Ok(Message::text(format!(
            r#"{{"type":"ticker","symbol":"A","seq":1,"skipped":0,"ingest_ts_ns":{ingest_ts_ns}}}"#
        )))
    }

    /// What reading a backlog finds, given the window's end and the backlog.
    async fn found(
        window_end_ns: i64,
        backlog: Vec<Result<Message, tungstenite::Error>>,
    ) -> Option<String> {
        let mut socket = futures_util::stream::iter(backlog);
        closed_behind_backlog(&mut socket, window_end_ns).await
    }

    #[tokio::test]
    async fn a_close_behind_the_backlog_counts_only_if_it_came_during_the_run() {
        let end = wall_clock_ns() - 1_000_000_000;
        let close = || Ok(Message::Close(None));
        // Closed with nothing newer than the window's end queued before it.
        let during = found(end, vec![ticker(end - 5), close()]).await;
        assert!(
            during.is_some_and(|r| r.contains("closed by the server")),
            "closed during the run"
        );
        let dropped = found(end, vec![ticker(end - 5)]).await;
        assert!(dropped.is_some_and(|r| r.contains("without a close frame")));
        // The server was still writing to it after the window.
        assert_eq!(found(end, vec![ticker(end + 5), close()]).await, None);
        // Still being served now.
        let now = wall_clock_ns() + 1_000_000_000;
        assert_eq!(
            found(end, vec![ticker(end - 5), ticker(now), close()]).await,
            None
        );
    }
}
