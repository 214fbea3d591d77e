//! Session: one WebSocket client, from the end of the handshake to the close.
//!
//! Each session is a single task that owns its socket. It reacts to four things:
//! bytes from the client (requests, pings, close), notices from its [`Mailbox`](crate::fanout::Mailbox)
//! that subscribed symbols have new versions, the socket becoming writable, and
//! its ping timer. Updates are drained from the mailbox straight into one write
//! buffer — as many as are ready, up to a high-water mark — and written with as
//! few `write` calls as the socket allows. No more are drained until those are
//! all written (and the kernel keeps little unsent, see
//! [`SessionConfig::unsent_limit_bytes`]): newer versions stay conflated in the
//! mailbox, so a slow client holds at most one drain, never a backlog.
//!
//! A `write` costs the same few microseconds whether it carries one frame or
//! twenty, so a client that is sent updates fast — at least
//! [`MIN_GATHERED`] per [`SessionConfig::coalesce`] window, by its recent
//! rate — has them gathered: after a write, what comes within the window waits
//! until the window has passed and leaves together, conflated meanwhile. Below
//! that rate every update is written as soon as it is taken, so a client on a
//! few slow symbols never waits, while a firehose client costs one `write` per
//! window instead of one per update.

pub mod book;
mod channel;
pub mod codec;
pub mod entitled;
pub mod outbox;
pub mod sse;
pub mod subscriptions;
pub mod transport;

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::auth::Grant;
use crate::fanout::Hub;
use crate::limits::{Admission, MessageRate, RateConfig, Verdict};
use crate::metrics::{CloseReason, ErrorCode};
use crate::protocol::book::BOOK_CHANNEL;
use crate::protocol::{self, Reply, Request, TICKER_CHANNEL};
use crate::wall_clock_ns;
use codec::{close_code, Decoder, Inbound, OpCode};
use outbox::{Framing, Outbox};
use subscriptions::{push_error, Subscriptions};
use transport::Transport;

/// The channel a subscribe or unsubscribe request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Channel {
    /// Top of book (`"ticker"`, the default).
    Ticker,
    /// Full depth (`"book"`).
    Book,
}

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
    /// One drain of the mailbox stops once this much is buffered. A WebSocket
    /// session takes no updates while any are left unwritten, so a slow
    /// client has at most one drain here, never older versions queued behind
    /// newer ones.
    pub write_high_water: usize,
    /// Past this much unwritten output the session stops reading requests, so a
    /// client that sends requests but never reads the answers cannot grow memory.
    pub max_write_buffer: usize,
    /// Kernel send buffer per socket (`SO_SNDBUF`); bounds data in flight.
    pub send_buffer_bytes: Option<usize>,
    /// Most bytes the kernel holds unsent per socket (`TCP_NOTSENT_LOWAT`):
    /// past it a write pushes back, so a reader that stops taking data has
    /// its updates conflated here instead of queued, stale, in the send
    /// buffer. Data on its way is not limited, so a fast client's throughput
    /// is not either.
    pub unsent_limit_bytes: Option<usize>,
    /// How long a closing session waits for its last bytes and the client's close.
    pub close_linger: Duration,
    /// Inbound message rate per connection.
    pub message_rate: RateConfig,
    /// A connection without any subscription for this long is closed with 1008.
    pub idle_timeout: Duration,
    /// For a client sent at least [`MIN_GATHERED`] updates per this window,
    /// updates that come within it of the last write wait for it to pass and
    /// leave in one write (zero: every update is written as soon as it is
    /// taken). Timers tick in milliseconds, so the wait ends up to a
    /// millisecond later than the window.
    pub coalesce: Duration,
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
            unsent_limit_bytes: Some(16 * 1024),
            close_linger: Duration::from_secs(2),
            message_rate: RateConfig::default(),
            idle_timeout: Duration::from_secs(300),
            coalesce: Duration::from_millis(1),
        }
    }
}

/// The server's shutdown as its sessions see it: a token to wait on, and a
/// flag that is cheap to read.
///
/// Polling a wait on the token takes a lock, and a session waits thousands of
/// times a second when it is sent updates fast. So it registers its wait once,
/// which wakes it when shutdown begins, and on every other wake-up reads the
/// flag, which is set before the token is cancelled.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    begun: Arc<AtomicBool>,
}

impl Shutdown {
    /// Starts the shutdown: sets the flag, then wakes every wait.
    pub fn begin(&self) {
        self.begun.store(true, Release);
        self.token.cancel();
    }

    /// Whether [`Shutdown::begin`] was called; one atomic load.
    pub fn has_begun(&self) -> bool {
        self.begun.load(Acquire)
    }

    /// The token [`Shutdown::begin`] cancels.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// What a session needs from the server around it.
#[derive(Clone, Debug)]
pub struct SessionContext {
    pub hub: Arc<Hub>,
    pub config: Arc<SessionConfig>,
    pub shutdown: Shutdown,
    /// Unique per connection; also picks the latency shard.
    pub id: u64,
    /// What the client's credentials allow.
    pub grant: Arc<Grant>,
}

impl SessionContext {
    /// When the client's credential expires, on the session clock.
    fn expiry(&self) -> Option<Instant> {
        let expires_at = self.grant.expires_at?;
        let now_secs = wall_clock_ns().div_euclid(1_000_000_000);
        let left = u64::try_from(expires_at.saturating_sub(now_secs)).unwrap_or(0);
        // Far-future expiries are clamped so the deadline cannot overflow.
        Some(Instant::now() + Duration::from_secs(left.min(10 * 365 * 86_400)))
    }
}

/// Runs a session on an upgraded connection until it closes. `already_read` is
/// whatever the HTTP layer read past the handshake; `initial_symbols` come from
/// the `symbols=` query parameter, if the URL had one; `permit` counts the
/// client until it is gone.
pub async fn run(
    stream: Transport,
    already_read: BytesMut,
    initial_symbols: Option<Vec<String>>,
    context: SessionContext,
    permit: Admission,
) {
    let metrics = context.hub.metrics().clone();
    let mut session = Session::new(stream, already_read, context);
    if let Some(initial_symbols) = initial_symbols {
        entitled::subscribe(
            &mut session.subscriptions,
            &session.context.grant,
            &session.context.hub,
            None,
            initial_symbols,
            None,
            &mut session.out,
        );
        session.note_subscriptions();
    }
    let reason = session.serve().await;
    tracing::debug!(id = session.context.id, ?reason, "session ended");
    metrics.count_close(reason);
    session.subscriptions.release();
    session.out.release();
    drop(permit);
}

/// Updates per coalescing window from which a client's updates are gathered:
/// below it, holding them back would cost latency for little saving.
pub const MIN_GATHERED: f64 = 4.0;

/// Weight of the newest write in a session's update-rate estimate.
const RATE_SMOOTHING: f64 = 1.0 / 8.0;

/// A session's recent update rate: updates per write over time between
/// writes, each averaged on its own. (Averaging each write's own rate instead
/// would let two updates that happen to come close together look like a
/// firehose.)
#[derive(Clone, Copy, Debug, Default)]
struct UpdateRate {
    updates_per_write: f64,
    secs_per_write: f64,
}

impl UpdateRate {
    fn note(&mut self, updates: usize, secs: f64) {
        self.updates_per_write += (updates as f64 - self.updates_per_write) * RATE_SMOOTHING;
        self.secs_per_write += (secs - self.secs_per_write) * RATE_SMOOTHING;
    }

    /// Updates a window of `secs` would gather at this rate.
    fn per_window(&self, secs: f64) -> f64 {
        if self.secs_per_write > 0.0 {
            self.updates_per_write * secs / self.secs_per_write
        } else {
            0.0
        }
    }
}

/// Longest a rate-limited client goes unread at a time.
const MAX_READ_PAUSE: Duration = Duration::from_secs(1);

enum PingState {
    Idle {
        next_ping: Instant,
    },
    /// A ping is out; `written` is the output written by then.
    Awaiting {
        deadline: Instant,
        written: u64,
    },
}

/// Which wake-ups a session waits for, given how much output it holds.
#[derive(Clone, Copy)]
struct Interest {
    /// Read requests (not while the client leaves too much output unread).
    requests: bool,
    /// Wait for the socket to drain (output is buffered).
    writable: bool,
    /// Take updates (everything taken before is written).
    updates: bool,
    /// Poll the wait on the shutdown token to register it (the first time).
    register_shutdown: bool,
}

enum Wake {
    Shutdown,
    Readable,
    Writable,
    Mailbox,
    Timer,
}

/// How a session ends.
enum Closing {
    /// The connection is already gone: nothing to send.
    Gone(CloseReason),
    /// Send this close code and reason first.
    Send(u16, String, CloseReason),
}

struct Session {
    context: SessionContext,
    stream: Transport,
    decoder: Decoder,
    inbound: BytesMut,
    out: Outbox,
    subscriptions: Subscriptions,
    ping: PingState,
    rate: MessageRate,
    /// While set, the client is over its message rate and is not read until
    /// then: a flood waits in TCP buffers instead of costing CPU.
    read_paused_until: Option<Instant>,
    /// Requests already read stay in `inbound`, unanswered, because the
    /// output reached `max_write_buffer`, a subscribe request's answer is
    /// still being written or reading is paused for the rate: they are taken
    /// up once that is over.
    requests_waiting: bool,
    /// When the credential expires.
    expiry: Option<Instant>,
    /// Since when the client has had no subscription.
    idle_since: Option<Instant>,
    /// When updates were last written, for the coalescing window.
    last_update_write: Option<Instant>,
    /// Updates are waiting in the mailbox until then (see [`SessionConfig::coalesce`]).
    hold_until: Option<Instant>,
    /// How fast updates have been written lately.
    update_rate: UpdateRate,
}

impl Session {
    fn new(stream: Transport, already_read: BytesMut, context: SessionContext) -> Self {
        let config = &context.config;
        let hub = context.hub.clone();
        let max_subscriptions = context
            .grant
            .entitlements
            .subscription_limit(config.max_subscriptions);
        let now = Instant::now();
        Self {
            decoder: Decoder::new(config.max_message_bytes),
            inbound: already_read,
            out: Outbox::new(Framing::WebSocket, hub.metrics().clone(), context.id),
            subscriptions: Subscriptions::new(hub, context.grant.clone(), max_subscriptions),
            ping: PingState::Idle {
                next_ping: now + config.ping_interval,
            },
            rate: MessageRate::new(config.message_rate.clone(), now),
            read_paused_until: None,
            requests_waiting: false,
            expiry: context.expiry(),
            idle_since: Some(now),
            last_update_write: None,
            hold_until: None,
            update_rate: UpdateRate::default(),
            stream,
            context,
        }
    }

    async fn serve(&mut self) -> CloseReason {
        // Bytes that arrived with the handshake are requests like any others.
        if let Err(closing) = self.handle_inbound() {
            return self.close(closing).await;
        }
        self.drop_empty_read_buffer();
        let config = self.context.config.clone();
        // The waits live across iterations: each is registered once, not
        // re-created (and re-registered in a shared list) on every wake-up.
        let shutdown = self.context.shutdown.token().clone().cancelled_owned();
        let timer = sleep_until(self.next_deadline());
        tokio::pin!(shutdown, timer);
        let mut shutdown_registered = false;
        loop {
            // Drain and write until the socket pushes back or nothing is ready:
            // one drain stops at the high-water mark, and what it left taken
            // from the mailbox will not be announced again. While updates are
            // held back, so is that remainder: the hold's timer brings it.
            // Whatever woke the session, a hold that has run out ends here.
            if self.hold_until.is_some_and(|until| Instant::now() >= until) {
                self.hold_until = None;
            }
            // A subscribe request's snapshots are answers, never held back.
            let mut updates_taken = 0;
            loop {
                if self.takes_updates() {
                    updates_taken += self
                        .subscriptions
                        .fill(&mut self.out, config.write_high_water);
                } else {
                    self.subscriptions
                        .write_answer(&mut self.out, config.write_high_water);
                }
                if let Err(e) = self.flush() {
                    tracing::debug!(id = self.context.id, error = %e, "write failed");
                    return CloseReason::Io;
                }
                if self.out.buffered() > 0 {
                    break;
                }
                if self.subscriptions.is_answering() {
                    continue;
                }
                if self.hold_until.is_some() || !self.subscriptions.has_backlog() {
                    break;
                }
            }
            if updates_taken > 0 && !config.coalesce.is_zero() {
                self.note_update_write(updates_taken);
            }
            self.out.report();

            let buffered = self.out.buffered();
            let takes_requests = self.takes_requests();
            if self.requests_waiting && takes_requests {
                // Room again for what was read before the output filled up.
                if let Err(closing) = self.handle_inbound() {
                    return self.close(closing).await;
                }
                continue;
            }
            let wanted = Interest {
                requests: takes_requests,
                writable: buffered > 0 || self.stream.has_pending_output(),
                updates: self.takes_updates(),
                register_shutdown: !shutdown_registered,
            };
            shutdown_registered = true;
            let deadline = self.next_deadline();
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            let wake =
                poll_fn(|cx| self.poll_wake(cx, wanted, shutdown.as_mut(), timer.as_mut())).await;
            let wake = match wake {
                Ok(wake) => wake,
                Err(_) => return CloseReason::Io,
            };
            match wake {
                Wake::Shutdown => {
                    let closing = Closing::Send(
                        close_code::GOING_AWAY,
                        "server shutting down".into(),
                        CloseReason::Shutdown,
                    );
                    return self.close(closing).await;
                }
                Wake::Readable => {
                    if let Err(closing) = self.read() {
                        return self.close(closing).await;
                    }
                }
                Wake::Timer => {
                    if let Err(closing) = self.on_timer() {
                        return self.close(closing).await;
                    }
                }
                // The loop head drains the mailbox and writes, unless the
                // last write of updates was too recent.
                Wake::Mailbox => {
                    self.hold_until = self.coalescing_until();
                    if self.hold_until.is_some() {
                        self.context
                            .hub
                            .metrics()
                            .updates_held
                            .fetch_add(1, Relaxed);
                    }
                }
                Wake::Writable => {}
            }
        }
    }

    /// The first of the things this session waits for, in priority order.
    fn poll_wake(
        &self,
        cx: &mut Context<'_>,
        wanted: Interest,
        shutdown: Pin<&mut WaitForCancellationFutureOwned>,
        timer: Pin<&mut Sleep>,
    ) -> Poll<io::Result<Wake>> {
        // Polling the wait on the shutdown token takes a lock: it is polled
        // once to register it, and again only once shutdown has begun. The
        // flag is read here, on every poll, not when `wanted` was made: the
        // wake-up that shutdown sends re-polls this same wait.
        let look = wanted.register_shutdown || self.context.shutdown.has_begun();
        if look && shutdown.poll(cx).is_ready() {
            return Poll::Ready(Ok(Wake::Shutdown));
        }
        if wanted.requests {
            if let Poll::Ready(ready) = self.stream.poll_read_ready(cx) {
                return Poll::Ready(ready.map(|()| Wake::Readable));
            }
        }
        if wanted.writable {
            if let Poll::Ready(ready) = self.stream.poll_write_ready(cx) {
                return Poll::Ready(ready.map(|()| Wake::Writable));
            }
        }
        if wanted.updates && self.subscriptions.mailbox().poll_notified(cx).is_ready() {
            return Poll::Ready(Ok(Wake::Mailbox));
        }
        if timer.poll(cx).is_ready() {
            return Poll::Ready(Ok(Wake::Timer));
        }
        Poll::Pending
    }

    /// Until when updates that just arrived should wait, if at all: while the
    /// client is sent updates fast enough and the last write was within the
    /// coalescing window.
    fn coalescing_until(&self) -> Option<Instant> {
        let window = self.context.config.coalesce;
        if self.update_rate.per_window(window.as_secs_f64()) < MIN_GATHERED {
            return None;
        }
        let until = self.last_update_write? + window;
        (Instant::now() < until).then_some(until)
    }

    /// Folds a write of `updates` into the update-rate estimate.
    fn note_update_write(&mut self, updates: usize) {
        let now = Instant::now();
        if let Some(last) = self.last_update_write {
            self.update_rate.note(updates, (now - last).as_secs_f64());
        }
        self.last_update_write = Some(now);
    }

    fn next_deadline(&self) -> Instant {
        let ping = match self.ping {
            PingState::Idle { next_ping } => next_ping,
            PingState::Awaiting { deadline, .. } => deadline,
        };
        let idle = self
            .idle_since
            .map(|since| since + self.context.config.idle_timeout);
        [
            self.subscriptions.next_deadline(),
            self.expiry,
            idle,
            self.read_paused_until,
            self.hold_until,
        ]
        .into_iter()
        .flatten()
        .fold(ping, Instant::min)
    }

    fn on_timer(&mut self) -> Result<(), Closing> {
        let now = Instant::now();
        if self.read_paused_until.is_some_and(|until| now >= until) {
            self.read_paused_until = None;
        }
        if self.expiry.is_some_and(|expiry| now >= expiry) {
            tracing::debug!(id = self.context.id, subject = %self.context.grant.subject, "credentials expired");
            entitled::expired(&self.context.hub, &mut self.out);
            return Err(Closing::Send(
                close_code::POLICY_VIOLATION,
                "credentials expired".into(),
                CloseReason::CredentialsExpired,
            ));
        }
        if self
            .idle_since
            .is_some_and(|since| now >= since + self.context.config.idle_timeout)
        {
            return Err(Closing::Send(
                close_code::POLICY_VIOLATION,
                "idle: no subscription".into(),
                CloseReason::IdleTimeout,
            ));
        }
        let written = self.out.written_total();
        match self.ping {
            // A client that took output since the ping is alive, pong or not:
            // a slow reader has the ping behind what it has yet to read, and
            // requests (the pong among them) are not read while an answer is
            // being written or the output is at its limit.
            PingState::Awaiting {
                deadline,
                written: then,
            } if now >= deadline && written > then => {
                self.ping = PingState::Awaiting {
                    deadline: now + self.context.config.ping_timeout,
                    written,
                };
            }
            PingState::Awaiting { deadline, .. } if now >= deadline => {
                tracing::debug!(id = self.context.id, "no answer to ping");
                return Err(Closing::Gone(CloseReason::PingTimeout));
            }
            PingState::Idle { next_ping } if now >= next_ping => {
                let stamp = wall_clock_ns().to_be_bytes();
                self.out.push_control(OpCode::Ping, &stamp);
                self.ping = PingState::Awaiting {
                    deadline: now + self.context.config.ping_timeout,
                    written,
                };
            }
            _ => {}
        }
        self.subscriptions.on_timer(&mut self.out);
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
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // A readiness that came to nothing must not leave the read
                // buffer allocated either.
                if self.inbound.is_empty() {
                    self.inbound = BytesMut::new();
                }
                return Ok(());
            }
            Err(_) => return Err(Closing::Gone(CloseReason::Io)),
        }
        // Any frame proves the client is alive, not only a pong.
        self.ping = PingState::Idle {
            next_ping: Instant::now() + self.context.config.ping_interval,
        };
        self.handle_inbound()?;
        self.drop_empty_read_buffer();
        Ok(())
    }

    /// Idle connections keep no read buffer.
    fn drop_empty_read_buffer(&mut self) {
        if self.inbound.is_empty() {
            self.inbound = BytesMut::new();
        }
    }

    /// Answers the requests in `inbound` until it holds no whole frame, or
    /// until [`Self::takes_requests`] says to stop: several requests read at
    /// once must not queue more replies than one request can, and a burst
    /// read at once is paced like one that arrives frame by frame, each
    /// message over the rate pausing the rest instead of spending every
    /// strike within a microsecond.
    fn handle_inbound(&mut self) -> Result<(), Closing> {
        self.requests_waiting = false;
        loop {
            if !self.takes_requests() {
                self.requests_waiting = !self.inbound.is_empty();
                return Ok(());
            }
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
                    return Err(Closing::Send(error.close_code(), error.to_string(), reason));
                }
            };
            if let Inbound::Close(code) = message {
                let code = code.unwrap_or(close_code::NORMAL);
                return Err(Closing::Send(
                    code,
                    String::new(),
                    CloseReason::ClientClosed,
                ));
            }
            // Every other frame pays: a flood of pongs or of empty fragments
            // costs as much to decode as one of requests.
            let verdict = self.rate.check(Instant::now());
            if verdict == Verdict::Abuse {
                return Err(Closing::Send(
                    close_code::POLICY_VIOLATION,
                    "message rate limit exceeded repeatedly".into(),
                    CloseReason::RateLimited,
                ));
            }
            let over_rate = verdict == Verdict::Refuse;
            match message {
                Inbound::Text(text) => {
                    self.context.hub.metrics().messages_in.fetch_add(1, Relaxed);
                    if over_rate {
                        self.refuse_for_rate();
                    } else {
                        self.handle_request(&text);
                    }
                    self.note_subscriptions();
                }
                Inbound::Ping(payload) => self.out.push_control(OpCode::Pong, &payload),
                Inbound::Pong | Inbound::Fragment | Inbound::Close(_) => {}
            }
            if over_rate {
                // Short enough that pings are still read in time.
                let pause = self.rate.retry_after().min(MAX_READ_PAUSE);
                self.read_paused_until = Some(Instant::now() + pause);
            }
        }
    }

    /// Whether updates are taken from the mailbox now: not while they are
    /// held back for the coalescing window, nor until the last ones are all
    /// written. What the socket has not taken yet would otherwise be followed
    /// by older versions of the same symbols, where conflation gives the
    /// newest once the socket takes more.
    fn takes_updates(&self) -> bool {
        self.hold_until.is_none() && self.out.buffered() == 0
    }

    /// Whether requests are read now: not while the client leaves too much
    /// output unread, nor while a subscribe request's answer is being
    /// written, nor while it is over its message rate.
    fn takes_requests(&self) -> bool {
        self.out.buffered() < self.context.config.max_write_buffer
            && self.read_paused_until.is_none()
            && !self.subscriptions.is_answering()
    }

    /// Starts or stops the idle clock as the client has subscriptions or not.
    fn note_subscriptions(&mut self) {
        self.idle_since = if self.subscriptions.is_empty() {
            self.idle_since.or(Some(Instant::now()))
        } else {
            None
        };
    }

    fn refuse_for_rate(&mut self) {
        let message = format!(
            "too many messages; slow down (next one accepted in {} ms)",
            self.rate.retry_after().as_millis().max(1)
        );
        // The id is not parsed: reading a flood's JSON is the work being refused.
        push_error(
            &mut self.out,
            &self.context.hub,
            None,
            ErrorCode::RateLimited,
            &message,
            &[],
        );
    }

    fn handle_request(&mut self, text: &str) {
        let hub = &self.context.hub;
        match protocol::parse_request(text) {
            Ok(Request::Subscribe {
                id,
                symbols,
                channel,
                max_rate_hz,
                depth,
            }) => match self.check_channel(id, channel.as_deref()) {
                Some(Channel::Ticker) => {
                    entitled::subscribe(
                        &mut self.subscriptions,
                        &self.context.grant,
                        &self.context.hub,
                        id,
                        symbols,
                        max_rate_hz,
                        &mut self.out,
                    );
                }
                Some(Channel::Book) => entitled::subscribe_book(
                    &mut self.subscriptions,
                    &self.context.grant,
                    &self.context.hub,
                    id,
                    symbols,
                    depth,
                    max_rate_hz,
                    &mut self.out,
                ),
                None => {}
            },
            Ok(Request::Unsubscribe {
                id,
                symbols,
                channel,
            }) => match self.check_channel(id, channel.as_deref()) {
                Some(Channel::Ticker) => {
                    self.subscriptions.unsubscribe(id, &symbols, &mut self.out)
                }
                Some(Channel::Book) => {
                    self.subscriptions
                        .unsubscribe_book(id, &symbols, &mut self.out)
                }
                None => {}
            },
            Ok(Request::List { id }) => entitled::list(&self.context.grant, hub, id, &mut self.out),
            Ok(Request::Ping { id }) => {
                let pong = Reply::Pong {
                    id,
                    server_ts_ns: wall_clock_ns(),
                };
                self.out.push_json(&pong.encode());
            }
            Err(bad) => push_error(
                &mut self.out,
                hub,
                bad.id,
                ErrorCode::BadRequest,
                &bad.message,
                &[],
            ),
        }
    }

    fn check_channel(&mut self, id: Option<u64>, channel: Option<&str>) -> Option<Channel> {
        match channel {
            None | Some(TICKER_CHANNEL) => Some(Channel::Ticker),
            Some(BOOK_CHANNEL) => Some(Channel::Book),
            Some(other) => {
                let message = format!(
                    "unknown channel {other:?}; this server serves \"ticker\" and \"book\""
                );
                push_error(
                    &mut self.out,
                    &self.context.hub,
                    id,
                    ErrorCode::BadRequest,
                    &message,
                    &[],
                );
                None
            }
        }
    }

    /// Writes as much of the buffer as the socket takes without blocking.
    fn flush(&mut self) -> io::Result<()> {
        // The next burst starts with room for this one, up to a bound.
        let max_burst = self.context.config.write_high_water * 4;
        while !self.out.pending().is_empty() {
            match self.stream.try_write(self.out.pending()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out.advance(n, max_burst),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        match self.stream.try_flush() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    /// Ends the session: sends a close frame when one is due, writes what is
    /// buffered, half-closes, and reads until the client closes too (bounded by
    /// `close_linger`), so the close frame is not lost to a TCP reset.
    ///
    /// On the heap: a session closes once, and its closing future held inline
    /// would make every session's task larger for its whole life (by more than
    /// half a kilobyte, a sixth of an idle connection).
    fn close(&mut self, closing: Closing) -> Pin<Box<impl Future<Output = CloseReason> + '_>> {
        Box::pin(self.finish(closing))
    }

    async fn finish(&mut self, closing: Closing) -> CloseReason {
        let (code, text, reason) = match closing {
            Closing::Gone(reason) => return reason,
            Closing::Send(code, text, reason) => (code, text, reason),
        };
        self.out.push_close(code, &text);
        let linger = self.context.config.close_linger;
        // A well-behaved client sends little more than its close frame; one
        // that keeps sending is left unread (held back by TCP) rather than
        // read and discarded at full speed for the whole linger.
        let mut discard_budget = self.context.config.max_message_bytes.max(4096);
        let finished = tokio::time::timeout(linger, async {
            // Through the outbox, so that what a client that stopped reading
            // never took is neither counted as sent nor timed as delivered.
            loop {
                self.flush()?;
                self.out.report();
                if self.out.buffered() == 0 {
                    break;
                }
                self.stream.writable().await?;
            }
            let stream = &mut self.stream;
            stream.shutdown().await?;
            // On the heap, not in the future: every session's task is as big
            // as its largest state, so a buffer here would cost every idle
            // connection 4 KiB.
            let mut sink = vec![0u8; 4096];
            while discard_budget > 0 {
                stream.readable().await?;
                match stream.try_read(&mut sink) {
                    Ok(0) => return Ok::<(), io::Error>(()),
                    Ok(n) => discard_budget = discard_budget.saturating_sub(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            std::future::pending::<()>().await;
            Ok(())
        })
        .await;
        if !matches!(finished, Ok(Ok(()))) {
            tracing::debug!(
                id = self.context.id,
                "client did not finish the close handshake"
            );
        }
        reason
    }
}
