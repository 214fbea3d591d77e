//! Session: one WebSocket client, from the end of the handshake to the close.
//!
//! Each session is a single task that owns its socket. It reacts to four things:
//! bytes from the client (requests, pings, close), notices from its [`Mailbox`]
//! that subscribed symbols have new versions, the socket becoming writable, and
//! its ping timer. Updates are drained from the mailbox straight into one write
//! buffer — as many as are ready, up to a high-water mark — and written with as
//! few `write` calls as the socket allows. Whatever cannot be written stays
//! conflated in the mailbox, so a slow client holds at most its buffer, never a
//! backlog.

pub mod codec;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::fanout::{Hub, Mailbox, Slot, SymbolEntry};
use crate::metrics::{CloseReason, ErrorCode, Metrics};
use crate::protocol::{self, Reply, Request, TICKER_CHANNEL};
use crate::wall_clock_ns;
use codec::{close_code, Decoder, Inbound, OpCode};

/// Per-connection limits and timers.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Largest client message accepted; larger ones close the connection with 1009.
    pub max_message_bytes: usize,
    /// Most symbols one connection may subscribe to; more are refused with `limit_exceeded`.
    pub max_subscriptions: usize,
    /// How often the server pings an otherwise quiet client.
    pub ping_interval: Duration,
    /// How long a client has to answer a ping (with anything) before it is dropped.
    pub ping_timeout: Duration,
    /// Updates are only taken from the mailbox while less than this is buffered,
    /// which bounds how stale a slow client's data can be.
    pub write_high_water: usize,
    /// Past this much unwritten output the session stops reading requests, so a
    /// client that sends requests but never reads the answers cannot grow memory.
    pub max_write_buffer: usize,
    /// Kernel send buffer per socket (`SO_SNDBUF`); bounds data in flight.
    pub send_buffer_bytes: Option<usize>,
    /// How long a closing session waits for its last bytes and the client's close.
    pub close_linger: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_subscriptions: 1_000,
            ping_interval: Duration::from_secs(20),
            ping_timeout: Duration::from_secs(10),
            write_high_water: 16 * 1024,
            max_write_buffer: 256 * 1024,
            send_buffer_bytes: Some(64 * 1024),
            close_linger: Duration::from_secs(2),
        }
    }
}

/// What a session needs from the server around it.
#[derive(Clone, Debug)]
pub struct SessionContext {
    pub hub: Arc<Hub>,
    pub config: Arc<SessionConfig>,
    pub shutdown: CancellationToken,
    /// Unique per connection; also picks the latency shard.
    pub id: u64,
}

/// Runs a session on an upgraded connection until it closes. `already_read` is
/// whatever the HTTP layer read past the handshake; `initial_symbols` come from
/// the `symbols=` query parameter.
pub async fn run(
    stream: TcpStream,
    already_read: Bytes,
    initial_symbols: Vec<String>,
    context: SessionContext,
) {
    let metrics = context.hub.metrics().clone();
    metrics.connections.fetch_add(1, Relaxed);
    metrics.connections_total.fetch_add(1, Relaxed);
    let mut session = Session::new(stream, already_read, context);
    if !initial_symbols.is_empty() {
        session.subscribe(None, initial_symbols, None, None);
    }
    let reason = session.serve().await;
    tracing::debug!(id = session.context.id, ?reason, "session ended");
    metrics.count_close(reason);
    session.release();
    metrics.connections.fetch_sub(1, Relaxed);
}

/// One subscribed symbol, as the session sees it.
struct Subscription {
    entry: Arc<SymbolEntry>,
    slot: Arc<Slot>,
    /// `seq` of the last version sent; 0 before the first.
    last_seq: u64,
    /// `max_rate_hz` as a minimum gap between two updates.
    min_gap: Option<Duration>,
    /// Earliest time the next update may go out under `min_gap`.
    next_due: Instant,
    /// Waiting in `deferred` for `next_due`.
    deferred: bool,
}

enum PingState {
    Idle { next_ping: Instant },
    Awaiting { deadline: Instant },
}

enum Wake {
    Shutdown,
    Readable,
    Writable,
    Mailbox,
    Timer,
}

struct Session {
    context: SessionContext,
    metrics: Arc<Metrics>,
    stream: TcpStream,
    decoder: Decoder,
    inbound: BytesMut,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    written: usize,
    /// Totals since the start, so latency samples can name where their frame ends.
    appended_total: u64,
    written_total: u64,
    /// (end of frame in `appended_total` terms, ingest time) per buffered update.
    samples: VecDeque<(u64, i64)>,
    latency_scratch: Vec<u64>,
    mailbox: Arc<Mailbox>,
    ready: Vec<u32>,
    ready_pos: usize,
    deferred: Vec<u32>,
    subscriptions: Vec<Option<Subscription>>,
    free_indices: Vec<u32>,
    by_name: HashMap<Arc<str>, u32>,
    ping: PingState,
    unreported: Unreported,
    reported_buffered: usize,
}

/// Counter increments batched until the next write.
#[derive(Default)]
struct Unreported {
    messages: u64,
    bytes: u64,
    conflated: u64,
}

impl Session {
    fn new(stream: TcpStream, already_read: Bytes, context: SessionContext) -> Self {
        let config = &context.config;
        let metrics = context.hub.metrics().clone();
        Self {
            decoder: Decoder::new(config.max_message_bytes),
            inbound: BytesMut::from(&already_read[..]),
            out: Vec::new(),
            written: 0,
            appended_total: 0,
            written_total: 0,
            samples: VecDeque::new(),
            latency_scratch: Vec::new(),
            mailbox: Arc::new(Mailbox::default()),
            ready: Vec::new(),
            ready_pos: 0,
            deferred: Vec::new(),
            subscriptions: Vec::new(),
            free_indices: Vec::new(),
            by_name: HashMap::new(),
            ping: PingState::Idle {
                next_ping: Instant::now() + config.ping_interval,
            },
            unreported: Unreported::default(),
            reported_buffered: 0,
            metrics,
            stream,
            context,
        }
    }

    fn buffered(&self) -> usize {
        self.out.len() - self.written
    }

    async fn serve(&mut self) -> CloseReason {
        // Bytes that arrived with the handshake are requests like any others.
        if let Err(reason) = self.handle_inbound() {
            return self.close(reason).await;
        }
        loop {
            self.fill_from_mailbox();
            if let Err(e) = self.flush() {
                tracing::debug!(id = self.context.id, error = %e, "write failed");
                return CloseReason::Io;
            }
            self.report_buffered();

            let buffered = self.buffered();
            let take_updates = buffered < self.context.config.write_high_water;
            let take_requests = buffered < self.context.config.max_write_buffer;
            let deadline = self.next_deadline();
            let wake = tokio::select! {
                biased;
                () = self.context.shutdown.cancelled() => Wake::Shutdown,
                ready = self.stream.readable(), if take_requests => match ready {
                    Ok(()) => Wake::Readable,
                    Err(_) => return CloseReason::Io,
                },
                ready = self.stream.writable(), if buffered > 0 => match ready {
                    Ok(()) => Wake::Writable,
                    Err(_) => return CloseReason::Io,
                },
                () = self.mailbox.notified(), if take_updates => Wake::Mailbox,
                () = sleep_until(deadline) => Wake::Timer,
            };
            match wake {
                Wake::Shutdown => {
                    return self
                        .close(Closing::Send(
                            close_code::GOING_AWAY,
                            "server shutting down",
                            CloseReason::Shutdown,
                        ))
                        .await;
                }
                Wake::Readable => match self.read() {
                    Ok(()) => {}
                    Err(closing) => return self.close(closing).await,
                },
                Wake::Timer => {
                    if let Err(reason) = self.on_timer() {
                        return reason;
                    }
                }
                // The loop head drains the mailbox and writes.
                Wake::Writable | Wake::Mailbox => {}
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let ping = match self.ping {
            PingState::Idle { next_ping } => next_ping,
            PingState::Awaiting { deadline } => deadline,
        };
        self.deferred
            .iter()
            .filter_map(|&index| self.subscription(index).map(|s| s.next_due))
            .fold(ping, Instant::min)
    }

    fn on_timer(&mut self) -> Result<(), CloseReason> {
        let now = Instant::now();
        match self.ping {
            PingState::Awaiting { deadline } if now >= deadline => {
                tracing::debug!(id = self.context.id, "no answer to ping");
                return Err(CloseReason::PingTimeout);
            }
            PingState::Idle { next_ping } if now >= next_ping => {
                let stamp = wall_clock_ns().to_be_bytes();
                self.append_control(OpCode::Ping, &stamp);
                self.ping = PingState::Awaiting {
                    deadline: now + self.context.config.ping_timeout,
                };
            }
            _ => {}
        }
        if !self.deferred.is_empty() {
            let due: Vec<u32> = self
                .deferred
                .iter()
                .copied()
                .filter(|&i| self.subscription(i).is_some_and(|s| s.next_due <= now))
                .collect();
            self.deferred.retain(|i| !due.contains(i));
            for index in due {
                if let Some(sub) = self.subscription_mut(index) {
                    sub.deferred = false;
                }
                self.append_update(index, now);
            }
        }
        Ok(())
    }

    /// Reads what the socket has and handles every complete message in it.
    fn read(&mut self) -> Result<(), Closing> {
        if self.inbound.capacity() - self.inbound.len() < 1024 {
            self.inbound.reserve(4096);
        }
        match self.stream.try_read_buf(&mut self.inbound) {
            Ok(0) => return Err(Closing::Gone(CloseReason::ClientClosed)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(_) => return Err(Closing::Gone(CloseReason::Io)),
        }
        // Any frame proves the client is alive, not only a pong.
        self.ping = PingState::Idle {
            next_ping: Instant::now() + self.context.config.ping_interval,
        };
        self.handle_inbound()?;
        if self.inbound.is_empty() {
            // Idle connections keep no read buffer.
            self.inbound = BytesMut::new();
        }
        Ok(())
    }

    fn handle_inbound(&mut self) -> Result<(), Closing> {
        loop {
            let message = match self.decoder.decode(&mut self.inbound) {
                Ok(Some(message)) => message,
                Ok(None) => return Ok(()),
                Err(error) => {
                    let reason = match error {
                        codec::DecodeError::TooBig(_) => CloseReason::MessageTooBig,
                        codec::DecodeError::Binary => CloseReason::BinaryFrame,
                        codec::DecodeError::InvalidUtf8 => CloseReason::InvalidUtf8,
                        codec::DecodeError::Protocol(_) => CloseReason::ProtocolError,
                    };
                    tracing::debug!(id = self.context.id, %error, "closing on bad frame");
                    return Err(Closing::Refuse(
                        error.close_code(),
                        error.to_string(),
                        reason,
                    ));
                }
            };
            match message {
                Inbound::Text(text) => {
                    self.metrics.messages_in.fetch_add(1, Relaxed);
                    self.handle_request(&text);
                }
                Inbound::Ping(payload) => self.append_control(OpCode::Pong, &payload),
                Inbound::Pong => {}
                Inbound::Close(code) => {
                    return Err(Closing::Send(
                        code.unwrap_or(close_code::NORMAL),
                        "",
                        CloseReason::ClientClosed,
                    ))
                }
            }
        }
    }

    fn handle_request(&mut self, text: &str) {
        match protocol::parse_request(text) {
            Ok(Request::Subscribe {
                id,
                symbols,
                channel,
                max_rate_hz,
            }) => self.subscribe(id, symbols, channel, max_rate_hz),
            Ok(Request::Unsubscribe {
                id,
                symbols,
                channel,
            }) => self.unsubscribe(id, symbols, channel),
            Ok(Request::List { id }) => {
                let names = self.context.hub.symbol_names();
                let names: Vec<&str> = names.iter().map(|n| &**n).collect();
                self.append_reply(&Reply::Symbols {
                    id,
                    symbols: &names,
                });
            }
            Ok(Request::Ping { id }) => self.append_reply(&Reply::Pong {
                id,
                server_ts_ns: wall_clock_ns(),
            }),
            Err(bad) => self.append_error(bad.id, ErrorCode::BadRequest, &bad.message, &[]),
        }
    }

    fn check_channel(&mut self, id: Option<u64>, channel: Option<&str>) -> bool {
        match channel {
            None | Some(TICKER_CHANNEL) => true,
            Some(other) => {
                let message = format!("unknown channel {other:?}; this server serves \"ticker\"");
                self.append_error(id, ErrorCode::BadRequest, &message, &[]);
                false
            }
        }
    }

    fn subscribe(
        &mut self,
        id: Option<u64>,
        symbols: Vec<String>,
        channel: Option<String>,
        max_rate_hz: Option<f64>,
    ) {
        if !self.check_channel(id, channel.as_deref()) {
            return;
        }
        let min_gap = max_rate_hz.map(|hz| Duration::from_secs_f64((1.0 / hz).min(3_600.0)));
        let mut accepted: Vec<Arc<str>> = Vec::new();
        let mut fresh: Vec<u32> = Vec::new();
        let mut unknown: Vec<String> = Vec::new();
        let mut over_limit: Vec<String> = Vec::new();
        for name in symbols {
            if accepted.iter().any(|a| **a == *name) {
                continue;
            }
            if let Some(&index) = self.by_name.get(name.as_str()) {
                if let Some(sub) = self.subscription_mut(index) {
                    sub.min_gap = min_gap;
                    accepted.push(sub.entry.name().clone());
                }
                continue;
            }
            let Some(entry) = self.context.hub.get(&name) else {
                unknown.push(name);
                continue;
            };
            if self.by_name.len() >= self.context.config.max_subscriptions {
                over_limit.push(name);
                continue;
            }
            accepted.push(entry.name().clone());
            fresh.push(self.add_subscription(entry, min_gap));
        }

        let names: Vec<&str> = accepted.iter().map(|n| &**n).collect();
        self.append_reply(&Reply::Subscribed {
            id,
            channel: TICKER_CHANNEL,
            symbols: &names,
        });
        for index in fresh {
            self.append_snapshot(index);
        }
        if !unknown.is_empty() {
            let names: Vec<&str> = unknown.iter().map(String::as_str).collect();
            self.append_error(id, ErrorCode::UnknownSymbol, "no such symbol", &names);
        }
        if !over_limit.is_empty() {
            let names: Vec<&str> = over_limit.iter().map(String::as_str).collect();
            let message = format!(
                "at most {} subscriptions per connection",
                self.context.config.max_subscriptions
            );
            self.append_error(id, ErrorCode::LimitExceeded, &message, &names);
        }
    }

    fn add_subscription(&mut self, entry: Arc<SymbolEntry>, min_gap: Option<Duration>) -> u32 {
        let index = self.free_indices.pop().unwrap_or_else(|| {
            self.subscriptions.push(None);
            (self.subscriptions.len() - 1) as u32
        });
        let slot = Arc::new(Slot::new(self.mailbox.clone(), index));
        // Registered before the snapshot is read, so no version can fall between.
        entry.subscribe(slot.clone());
        self.by_name.insert(entry.name().clone(), index);
        self.subscriptions[index as usize] = Some(Subscription {
            entry,
            slot,
            last_seq: 0,
            min_gap,
            next_due: Instant::now(),
            deferred: false,
        });
        self.metrics.subscriptions.fetch_add(1, Relaxed);
        index
    }

    fn unsubscribe(&mut self, id: Option<u64>, symbols: Vec<String>, channel: Option<String>) {
        if !self.check_channel(id, channel.as_deref()) {
            return;
        }
        for name in &symbols {
            if let Some(index) = self.by_name.remove(name.as_str()) {
                self.remove_subscription(index);
            }
        }
        let names: Vec<&str> = symbols.iter().map(String::as_str).collect();
        self.append_reply(&Reply::Unsubscribed {
            id,
            channel: TICKER_CHANNEL,
            symbols: &names,
        });
    }

    fn remove_subscription(&mut self, index: u32) {
        if let Some(sub) = self
            .subscriptions
            .get_mut(index as usize)
            .and_then(Option::take)
        {
            sub.entry.unsubscribe(&sub.slot);
            self.deferred.retain(|&i| i != index);
            self.free_indices.push(index);
            self.metrics.subscriptions.fetch_sub(1, Relaxed);
        }
    }

    /// Drops every subscription so publishers stop seeing this session.
    fn release(&mut self) {
        let indices: Vec<u32> = self.by_name.drain().map(|(_, index)| index).collect();
        for index in indices {
            self.remove_subscription(index);
        }
        self.metrics
            .write_buffered_bytes
            .fetch_sub(self.reported_buffered as i64, Relaxed);
        self.reported_buffered = 0;
    }

    fn subscription(&self, index: u32) -> Option<&Subscription> {
        self.subscriptions
            .get(index as usize)
            .and_then(Option::as_ref)
    }

    fn subscription_mut(&mut self, index: u32) -> Option<&mut Subscription> {
        self.subscriptions
            .get_mut(index as usize)
            .and_then(Option::as_mut)
    }

    /// Moves ready updates into the write buffer until it reaches the high-water mark.
    fn fill_from_mailbox(&mut self) {
        let now = Instant::now();
        while self.buffered() < self.context.config.write_high_water {
            if self.ready_pos == self.ready.len() {
                self.ready.clear();
                self.ready_pos = 0;
                self.mailbox.take_ready(&mut self.ready);
                if self.ready.is_empty() {
                    return;
                }
            }
            let index = self.ready[self.ready_pos];
            self.ready_pos += 1;
            self.append_update(index, now);
        }
    }

    /// Appends the newest version of one subscription, if it is newer than what
    /// the client has and its rate cap allows.
    fn append_update(&mut self, index: u32, now: Instant) {
        let Some(sub) = self
            .subscriptions
            .get_mut(index as usize)
            .and_then(Option::as_mut)
        else {
            return; // Unsubscribed since it was queued.
        };
        if sub.deferred {
            return;
        }
        if sub.min_gap.is_some() && now < sub.next_due {
            // Leave the slot marked queued: the publisher need not notify again,
            // and the timer sends whatever is newest when the gap has passed.
            sub.deferred = true;
            self.deferred.push(index);
            return;
        }
        sub.slot.clear();
        let guard = sub.entry.peek();
        let Some(snapshot) = guard.as_deref() else {
            return;
        };
        if snapshot.seq <= sub.last_seq {
            return;
        }
        let skipped = snapshot.seq - sub.last_seq - 1;
        sub.last_seq = snapshot.seq;
        if let Some(gap) = sub.min_gap {
            sub.next_due = now + gap;
        }
        let prefix = snapshot.ticker_prefix();
        let len = prefix.len() + protocol::ticker_suffix_len(skipped, false);
        let before = self.out.len();
        codec::write_header(&mut self.out, OpCode::Text, len);
        self.out.extend_from_slice(prefix);
        protocol::write_ticker_suffix(&mut self.out, skipped, false);
        self.appended_total += (self.out.len() - before) as u64;
        self.samples
            .push_back((self.appended_total, snapshot.ingest_ts_ns));
        self.unreported.messages += 1;
        self.unreported.conflated += skipped;
    }

    /// Appends the snapshot-flagged message a new subscription starts with.
    fn append_snapshot(&mut self, index: u32) {
        let Some(sub) = self
            .subscriptions
            .get_mut(index as usize)
            .and_then(Option::as_mut)
        else {
            return;
        };
        let Some(snapshot) = sub.entry.current() else {
            return; // No data yet: the first update will follow when it comes.
        };
        sub.last_seq = snapshot.seq;
        let message = protocol::encode_ticker_snapshot(&snapshot);
        self.append_frame(OpCode::Text, &message);
    }

    fn append_reply(&mut self, reply: &Reply<'_>) {
        let message = reply.encode();
        self.append_frame(OpCode::Text, &message);
    }

    fn append_error(&mut self, id: Option<u64>, code: ErrorCode, message: &str, symbols: &[&str]) {
        self.metrics.count_error(code);
        self.append_reply(&Reply::error(id, code, message, symbols));
    }

    fn append_control(&mut self, opcode: OpCode, payload: &[u8]) {
        self.append_frame(opcode, payload);
    }

    fn append_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let before = self.out.len();
        codec::write_frame(&mut self.out, opcode, payload);
        self.appended_total += (self.out.len() - before) as u64;
        self.unreported.messages += 1;
    }

    /// Writes as much of the buffer as the socket takes without blocking.
    fn flush(&mut self) -> io::Result<()> {
        let mut progressed = false;
        while self.written < self.out.len() {
            match self.stream.try_write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n;
                    self.written_total += n as u64;
                    self.unreported.bytes += n as u64;
                    progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if !progressed {
            return Ok(());
        }
        self.record_written_latency();
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
            let cap = self.context.config.write_high_water * 4;
            if self.by_name.is_empty() {
                self.out = Vec::new();
            } else if self.out.capacity() > cap {
                self.out.shrink_to(cap);
            }
        } else if self.written >= self.out.len() / 2 {
            self.out.drain(..self.written);
            self.written = 0;
        }
        self.report_counters();
        Ok(())
    }

    fn record_written_latency(&mut self) {
        if self
            .samples
            .front()
            .is_none_or(|&(end, _)| end > self.written_total)
        {
            return;
        }
        let now = wall_clock_ns();
        self.latency_scratch.clear();
        while let Some(&(end, ingest_ts_ns)) = self.samples.front() {
            if end > self.written_total {
                break;
            }
            self.samples.pop_front();
            self.latency_scratch
                .push(now.saturating_sub(ingest_ts_ns).max(0) as u64);
        }
        self.metrics
            .delivery_latency
            .record_batch(self.context.id, &self.latency_scratch);
    }

    fn report_counters(&mut self) {
        let unreported = std::mem::take(&mut self.unreported);
        self.metrics
            .messages_out
            .fetch_add(unreported.messages, Relaxed);
        self.metrics.bytes_out.fetch_add(unreported.bytes, Relaxed);
        if unreported.conflated > 0 {
            self.metrics
                .updates_conflated
                .fetch_add(unreported.conflated, Relaxed);
        }
    }

    fn report_buffered(&mut self) {
        let buffered = self.buffered();
        if buffered != self.reported_buffered {
            let delta = buffered as i64 - self.reported_buffered as i64;
            self.metrics.write_buffered_bytes.fetch_add(delta, Relaxed);
            self.reported_buffered = buffered;
        }
    }

    /// Ends the session: sends a close frame when one is due, writes what is
    /// buffered, half-closes, and reads until the client closes too (bounded by
    /// `close_linger`), so the close frame is not lost to a TCP reset.
    async fn close(&mut self, closing: Closing) -> CloseReason {
        let (code, reason_text, reason) = match closing {
            Closing::Gone(reason) => return reason,
            Closing::Send(code, text, reason) => (code, text.to_owned(), reason),
            Closing::Refuse(code, text, reason) => (code, text, reason),
        };
        codec::write_close(&mut self.out, code, &reason_text);
        self.unreported.messages += 1;
        let linger = self.context.config.close_linger;
        let pending = self.out.split_off(self.written);
        let stream = &mut self.stream;
        let finished = tokio::time::timeout(linger, async {
            stream.write_all(&pending).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            loop {
                stream.readable().await?;
                match stream.try_read(&mut sink) {
                    Ok(0) => return Ok::<(), io::Error>(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        if !matches!(finished, Ok(Ok(()))) {
            tracing::debug!(
                id = self.context.id,
                "client did not finish the close handshake"
            );
        }
        self.unreported.bytes += pending.len() as u64;
        self.report_counters();
        reason
    }
}

/// How a session ends.
enum Closing {
    /// The connection is already gone: nothing to send.
    Gone(CloseReason),
    /// Send this close code (and reason) first.
    Send(u16, &'static str, CloseReason),
    /// Like `Send`, with a reason built at run time.
    Refuse(u16, String, CloseReason),
}

impl From<CloseReason> for Closing {
    fn from(reason: CloseReason) -> Self {
        Closing::Gone(reason)
    }
}
