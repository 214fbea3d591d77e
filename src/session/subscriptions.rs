//! A client's subscriptions and the conflating drain from its mailbox, shared
//! by every transport (WebSocket, Server-Sent Events).
//!
//! The mailbox only says *which* subscriptions changed; the drain reads each
//! symbol's current snapshot and status at that moment. A client that is behind
//! therefore always gets the newest version, with `skipped` counting the ones
//! it missed, and never a backlog. The snapshots a subscribe request owes are
//! written by the same drain, ahead of any update.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::book::{BookSubscriptions, BOOK_SLOT};
use super::channel::{self, AnnouncedStatus, Channel, PendingAnswer, Registry};
use super::outbox::Outbox;
use crate::auth::Grant;
use crate::fanout::{fence_after_clears, Hub, Mailbox, Slot, SymbolEntry};
use crate::metrics::ErrorCode;
use crate::protocol::{self, Reply, TICKER_CHANNEL};

/// Most ready notices cleared under one fence (see [`Subscriptions::fill`]).
const CLEAR_BATCH: usize = 32;

/// One subscribed symbol.
#[derive(Debug)]
pub(super) struct Subscription {
    entry: Arc<SymbolEntry>,
    slot: Arc<Slot>,
    /// `seq` of the last version sent; 0 before the first.
    last_seq: u64,
    /// The status last announced to this client.
    status: AnnouncedStatus,
    /// `max_rate_hz` as a minimum gap between two updates.
    min_gap: Option<Duration>,
    /// Earliest time the next update may go out under `min_gap`.
    next_due: Instant,
    /// Waiting in `deferred` for `next_due`.
    deferred: bool,
}

/// Every subscription of one client.
#[derive(Debug)]
pub struct Subscriptions {
    hub: Arc<Hub>,
    grant: Arc<Grant>,
    max_subscriptions: usize,
    mailbox: Arc<Mailbox>,
    /// Indices taken from the mailbox, processed from `ready_pos` on.
    ready: Vec<u32>,
    ready_pos: usize,
    /// Indices held back by their rate cap.
    deferred: Vec<u32>,
    subs: Registry<Subscription>,
    /// The `book` channel's subscriptions, sharing this mailbox.
    book: BookSubscriptions,
    /// The rest of the last subscribe request's answer, on either channel.
    pending: PendingAnswer,
    /// A drain left the mailbox unread because an answer came first: its
    /// notice may already be spent, so the mailbox must be read before the
    /// session waits on it again.
    mailbox_unread: bool,
}

impl Subscriptions {
    /// A client's subscriptions under `grant`, at most `max_subscriptions`
    /// on each channel.
    pub fn new(hub: Arc<Hub>, grant: Arc<Grant>, max_subscriptions: usize) -> Self {
        let mailbox = Arc::new(Mailbox::default());
        Self {
            book: BookSubscriptions::new(
                hub.clone(),
                grant.clone(),
                mailbox.clone(),
                max_subscriptions,
            ),
            hub,
            grant,
            max_subscriptions,
            mailbox,
            ready: Vec::new(),
            ready_pos: 0,
            deferred: Vec::new(),
            subs: Registry::default(),
            pending: PendingAnswer::default(),
            mailbox_unread: false,
        }
    }

    /// The mailbox publishers notify.
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    pub fn is_empty(&self) -> bool {
        self.subs.is_empty() && self.book.is_empty()
    }

    /// Whether ready notices are already taken from the mailbox but not yet
    /// processed, or the mailbox went unread while an answer was written.
    /// Their slots stay marked queued, so no publisher will notify for them
    /// again: the caller must drain again before waiting.
    pub fn has_backlog(&self) -> bool {
        self.ready_pos < self.ready.len() || self.mailbox_unread
    }

    /// Whether a subscribe request's answer is not all written yet. The
    /// caller reads no further request until it is, so replies keep the
    /// requests' order.
    pub fn is_answering(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Appends `reply` to the current answer: now if nothing is pending, else
    /// after the snapshots still owed.
    pub fn reply(&mut self, reply: Vec<u8>, out: &mut Outbox) {
        self.pending.reply(reply, out);
    }

    /// Handles a subscribe request and appends the protocol's answer (see
    /// `channel::subscribe`); `max_rate_hz` caps the rate of every symbol it
    /// names, already subscribed ones included.
    pub fn subscribe(
        &mut self,
        id: Option<u64>,
        symbols: Vec<String>,
        max_rate_hz: Option<f64>,
        out: &mut Outbox,
    ) {
        let min_gap = max_rate_hz.map(|hz| Duration::from_secs_f64((1.0 / hz).min(3_600.0)));
        let mut pending = std::mem::take(&mut self.pending);
        channel::subscribe(self, id, symbols, min_gap, out, &mut pending);
        self.pending = pending;
    }

    /// The same on the `book` channel, `depth` levels a side.
    pub fn subscribe_book(
        &mut self,
        id: Option<u64>,
        symbols: Vec<String>,
        depth: Option<usize>,
        max_rate_hz: Option<f64>,
        out: &mut Outbox,
    ) {
        self.book
            .subscribe(id, symbols, depth, max_rate_hz, out, &mut self.pending);
    }

    /// Drops the named book subscriptions and appends `unsubscribed`.
    pub fn unsubscribe_book(&mut self, id: Option<u64>, symbols: &[String], out: &mut Outbox) {
        self.book.unsubscribe(id, symbols, out);
    }

    /// Drops the named subscriptions and appends `unsubscribed`. Nothing for
    /// them is appended after this returns.
    pub fn unsubscribe(&mut self, id: Option<u64>, symbols: &[String], out: &mut Outbox) {
        channel::unsubscribe(self, id, symbols, out);
    }

    /// Stops publishers from queueing a subscription taken out of the registry.
    fn detach(&self, sub: &Subscription) {
        sub.entry.unsubscribe(&sub.slot);
        self.hub
            .metrics()
            .subscriptions
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Drops every subscription so publishers stop seeing this client.
    pub fn release(&mut self) {
        for sub in self.subs.drain() {
            self.detach(&sub);
        }
        self.deferred.clear();
        self.pending.clear();
        self.book.release();
    }

    /// Appends the snapshots a subscribe request still owes until `out` holds
    /// `high_water` bytes (a mark of 0 still lets one through), then the
    /// replies that follow them; true once the whole answer is written.
    pub fn write_answer(&mut self, out: &mut Outbox, high_water: usize) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        // Whatever woke the session may have been the mailbox's notice.
        self.mailbox_unread = true;
        while out.buffered() < high_water.max(1) {
            match self.pending.next_snapshot() {
                Some(index) if index & BOOK_SLOT != 0 => {
                    self.book.push_snapshot(index & !BOOK_SLOT, out);
                }
                Some(index) => self.push_snapshot(index, out),
                None => {
                    self.pending.finish(out);
                    return true;
                }
            }
        }
        false
    }

    /// Moves ready updates into `out` until it holds `high_water` bytes, and
    /// says how many subscriptions it looked at. The rest of a subscribe
    /// request's answer comes first (see [`Self::write_answer`]): no update of
    /// a symbol goes out before its snapshot.
    ///
    /// Ticker notices are taken in batches: first every slot of the batch is
    /// cleared, then one fence, then each symbol's version is read and
    /// appended. A batch is appended whole, so `out` may pass `high_water` by
    /// up to `CLEAR_BATCH` tickers (about 10 KiB); book versions, which may
    /// be large, are taken one at a time.
    pub fn fill(&mut self, out: &mut Outbox, high_water: usize) -> usize {
        if !self.write_answer(out, high_water) {
            return 0;
        }
        // Read the clock only if a rate cap needs it: it is a large share of
        // the per-delivery cost otherwise.
        let mut now = None;
        let mut taken = 0;
        while out.buffered() < high_water {
            if self.ready_pos == self.ready.len() {
                self.ready.clear();
                self.ready_pos = 0;
                self.mailbox.take_ready(&mut self.ready);
                self.mailbox_unread = false;
                if self.ready.is_empty() {
                    break;
                }
            }
            let first = self.ready[self.ready_pos];
            if first & BOOK_SLOT != 0 {
                // A book version may be large: one at a time, each under the mark.
                self.ready_pos += 1;
                taken += 1;
                self.book.push_update(first & !BOOK_SLOT, out);
                continue;
            }
            let tickers = self.ready[self.ready_pos..]
                .iter()
                .take(CLEAR_BATCH)
                .take_while(|&&index| index & BOOK_SLOT == 0)
                .count();
            let batch = self.ready_pos..self.ready_pos + tickers;
            self.ready_pos = batch.end;
            taken += tickers;
            for &index in &self.ready[batch.clone()] {
                Self::clear_unless_held(&mut self.subs, &mut self.deferred, index, &mut now);
            }
            fence_after_clears();
            for i in batch {
                self.push_cleared(self.ready[i], now, out);
            }
        }
        taken
    }

    /// Sends the updates whose rate-cap gap has passed (once the current
    /// answer is written: a re-subscription's snapshot comes first).
    pub fn on_timer(&mut self, out: &mut Outbox) {
        if self.is_answering() {
            return;
        }
        let now = Instant::now();
        let mut i = 0;
        while i < self.deferred.len() {
            let index = self.deferred[i];
            let due = self.subs.get(index).is_none_or(|s| s.next_due <= now);
            if !due {
                i += 1;
                continue;
            }
            self.deferred.swap_remove(i);
            if let Some(sub) = self.subs.get_mut(index) {
                sub.deferred = false;
            }
            self.push_update(index, &mut Some(now), out);
        }
    }

    /// When the earliest deferred update is due; none while an answer is
    /// being written, which [`Self::on_timer`] waits for.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.is_answering() {
            return None;
        }
        self.deferred
            .iter()
            .filter_map(|&i| self.subs.get(i))
            .map(|s| s.next_due)
            .min()
    }

    /// Appends the newest version (and status) of one subscription, if the
    /// client does not have it yet and its rate cap allows.
    fn push_update(&mut self, index: u32, now: &mut Option<Instant>, out: &mut Outbox) {
        Self::clear_unless_held(&mut self.subs, &mut self.deferred, index, now);
        fence_after_clears();
        self.push_cleared(index, *now, out);
    }

    /// Clears a subscription's slot, so that the next version queues it again,
    /// unless its rate cap holds it back: then it waits in `deferred` with its
    /// slot still queued (the publisher need not notify again, and the timer
    /// sends whatever is newest when the gap has passed).
    fn clear_unless_held(
        subs: &mut Registry<Subscription>,
        deferred: &mut Vec<u32>,
        index: u32,
        now: &mut Option<Instant>,
    ) {
        let Some(sub) = subs.get_mut(index) else {
            return; // Unsubscribed since it was queued.
        };
        if sub.deferred {
            return;
        }
        if sub.min_gap.is_some() && *now.get_or_insert_with(Instant::now) < sub.next_due {
            sub.deferred = true;
            deferred.push(index);
            return;
        }
        sub.slot.clear_unfenced();
    }

    /// Appends the newest version (and status) of a subscription whose slot
    /// [`Self::clear_unless_held`] cleared, after the fence that follows.
    fn push_cleared(&mut self, index: u32, now: Option<Instant>, out: &mut Outbox) {
        let Some(sub) = self.subs.get_mut(index) else {
            return;
        };
        if sub.deferred {
            return;
        }
        let guard = sub.entry.peek();
        if let Some(snapshot) = guard.as_deref() {
            if snapshot.seq > sub.last_seq {
                let skipped = snapshot.seq - sub.last_seq - 1;
                sub.last_seq = snapshot.seq;
                if let (Some(gap), Some(now)) = (sub.min_gap, now) {
                    sub.next_due = now + gap;
                }
                out.push_ticker(
                    snapshot.ticker_prefix(),
                    skipped,
                    false,
                    Some(snapshot.ingest_ts_ns),
                );
            }
        }
        push_status_if_changed(sub, out);
    }
}

/// However a session ends (a panic in it too), publishers stop queueing its
/// subscriptions and the subscription count goes down.
impl Drop for Subscriptions {
    fn drop(&mut self) {
        self.release();
    }
}

impl Channel for Subscriptions {
    const NAME: &'static str = TICKER_CHANNEL;
    const LIMIT_NOUN: &'static str = "subscriptions";
    const INDEX_TAG: u32 = 0;
    /// `max_rate_hz` as a minimum gap between two updates.
    type Settings = Option<Duration>;
    type Subscription = Subscription;

    fn hub(&self) -> &Hub {
        &self.hub
    }

    fn grant(&self) -> &Grant {
        &self.grant
    }

    fn registry(&self) -> &Registry<Subscription> {
        &self.subs
    }

    fn max_subscriptions(&self) -> usize {
        self.max_subscriptions
    }

    fn refresh(&mut self, index: u32, min_gap: Option<Duration>) -> Option<Arc<str>> {
        let sub = self.subs.get_mut(index)?;
        sub.min_gap = min_gap;
        Some(sub.entry.name().clone())
    }

    fn add(&mut self, entry: Arc<SymbolEntry>, min_gap: Option<Duration>) -> u32 {
        let mailbox = &self.mailbox;
        let index = self.subs.insert(entry.name().clone(), |index| {
            let slot = Arc::new(Slot::new(mailbox.clone(), index));
            // Registered before the snapshot is read, so no version can fall between.
            entry.subscribe(slot.clone());
            Subscription {
                entry,
                slot,
                last_seq: 0,
                // A live symbol needs no announcement; any other state is
                // announced with the snapshot.
                status: AnnouncedStatus::new(),
                min_gap,
                next_due: Instant::now(),
                deferred: false,
            }
        });
        self.hub
            .metrics()
            .subscriptions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        index
    }

    fn push_snapshot(&mut self, index: u32, out: &mut Outbox) {
        let Some(sub) = self.subs.get_mut(index) else {
            return;
        };
        // A re-subscription may have lifted or changed the cap: an update it
        // was holding back is due now, or one gap after this snapshot.
        let now = Instant::now();
        sub.next_due = now;
        if let Some(snapshot) = sub.entry.current() {
            sub.last_seq = sub.last_seq.max(snapshot.seq);
            out.push_ticker(snapshot.ticker_prefix(), 0, true, None);
            // The snapshot counts as a delivery for the rate cap.
            sub.next_due = now + sub.min_gap.unwrap_or_default();
        }
        sub.status.repeat();
        push_status_if_changed(sub, out);
    }

    fn remove_named(&mut self, name: &str) {
        if let Some((index, sub)) = self.subs.remove_named(name) {
            self.detach(&sub);
            self.deferred.retain(|&i| i != index);
        }
    }
}

/// Announces a status change the client has not seen.
fn push_status_if_changed(sub: &mut Subscription, out: &mut Outbox) {
    let entry = &sub.entry;
    let Some(status) = sub
        .status
        .take_change(entry.status_generation(), || entry.status())
    else {
        return;
    };
    out.push_json(
        &Reply::Status {
            symbol: sub.entry.name(),
            state: status.state.as_str(),
            reason: &status.reason,
        }
        .encode(),
    );
}

/// Appends an `error` reply and counts it.
pub fn push_error(
    out: &mut Outbox,
    hub: &Hub,
    id: Option<u64>,
    code: ErrorCode,
    message: &str,
    symbols: &[&str],
) {
    out.push_json(&encode_error(hub, id, code, message, symbols));
}

/// An `error` reply, counted in the metrics as it is made (it may be written
/// later, after a subscribe request's snapshots).
pub fn encode_error(
    hub: &Hub,
    id: Option<u64>,
    code: ErrorCode,
    message: &str,
    symbols: &[&str],
) -> Vec<u8> {
    hub.metrics().count_error(code);
    protocol::Reply::error(id, code, message, symbols).encode()
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use rust_decimal::Decimal;

    use super::*;
    use crate::fanout::SymbolState;
    use crate::normalize::{BookUpdate, Tick};
    use crate::session::outbox::Framing;

    fn quote(bid: i64) -> Tick {
        Tick {
            recv_ts_ns: 0,
            exchange_ts_ns: None,
            update: BookUpdate::Quote {
                bid: Decimal::new(bid, 2),
                bid_size: Decimal::ONE,
                ask: Decimal::new(bid + 1, 2),
                ask_size: Decimal::ONE,
            },
        }
    }

    #[test]
    fn an_update_whose_notice_came_during_an_answer_is_drained_after_it() {
        let hub = Arc::new(Hub::new(Arc::default()));
        let entries: Vec<_> = (0..50)
            .map(|i| {
                let entry = hub.declare(&format!("test:S{i:02}"));
                hub.publish(&entry, &quote(100 + i), 1);
                entry
            })
            .collect();
        let mut subscriptions =
            Subscriptions::new(hub.clone(), Arc::new(Grant::unrestricted()), 100);
        let mut out = Outbox::new(Framing::WebSocket, Arc::default(), 0);
        // Fifty snapshots, then a refusal larger than the high-water mark.
        let mut symbols: Vec<String> = entries.iter().map(|e| e.name().to_string()).collect();
        symbols.extend((0..100).map(|i| format!("UNKNOWN{i:03}")));
        subscriptions.subscribe(Some(1), symbols, None, &mut out);
        let high_water = 512;

        // `subscribed` is read, and the first snapshots are written; then a
        // version published mid-answer, whose notice wakes the session.
        out.advance(out.buffered(), 0);
        subscriptions.fill(&mut out, high_water);
        assert!(subscriptions.is_answering());
        // Never past the mark by more than one snapshot, however often drained.
        for _ in 0..10 {
            subscriptions.fill(&mut out, high_water);
        }
        assert!(out.buffered() < high_water + 300, "{}", out.buffered());
        hub.publish(&entries[0], &quote(999), 2);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            subscriptions.mailbox().poll_notified(&mut cx),
            Poll::Ready(())
        );
        // The client reads everything as it comes, until the answer is out.
        while subscriptions.is_answering() {
            out.advance(out.buffered(), 0);
            subscriptions.fill(&mut out, high_water);
        }
        out.advance(out.buffered(), 0);
        // The notice is spent and the slot stays queued, so no publisher will
        // notify again: the session must know to drain before it waits.
        assert!(subscriptions.has_backlog());
        subscriptions.fill(&mut out, high_water);
        let written = String::from_utf8_lossy(out.pending()).into_owned();
        assert!(written.contains(r#""bid":"9.99""#), "{written}");
        assert!(written.contains(r#""snapshot":false"#), "{written}");
    }

    /// Writes the whole answer to the last request and returns what the
    /// client reads.
    fn answer(subscriptions: &mut Subscriptions, out: &mut Outbox) -> String {
        while !subscriptions.write_answer(out, usize::MAX) {}
        let written = String::from_utf8_lossy(out.pending()).into_owned();
        out.advance(out.buffered(), 0);
        written
    }

    #[test]
    fn a_repeated_subscribe_sends_the_status_after_its_snapshot_as_the_first_did() {
        let hub = Arc::new(Hub::new(Arc::default()));
        let entry = hub.declare("test:S");
        hub.publish(&entry, &quote(100), 1);
        hub.set_status(&entry, SymbolState::Stale, "feed disconnected");
        let mut subscriptions =
            Subscriptions::new(hub.clone(), Arc::new(Grant::unrestricted()), 10);
        let mut out = Outbox::new(Framing::WebSocket, Arc::default(), 0);
        let stale = r#""state":"stale","reason":"feed disconnected""#;
        for round in 0..2 {
            subscriptions.subscribe(Some(round), vec!["test:S".into()], None, &mut out);
            let written = answer(&mut subscriptions, &mut out);
            let snapshot = written.find(r#""snapshot":true"#);
            let status = written.find(stale);
            assert!(
                snapshot.is_some() && snapshot < status,
                "{round}: {written}"
            );
        }
        // Live again before the next repeat: the client, last told stale, is
        // told live once, and a further repeat says nothing more.
        hub.set_status(&entry, SymbolState::Live, "");
        subscriptions.subscribe(Some(2), vec!["test:S".into()], None, &mut out);
        assert!(answer(&mut subscriptions, &mut out).contains(r#""state":"live""#));
        subscriptions.subscribe(Some(3), vec!["test:S".into()], None, &mut out);
        assert!(!answer(&mut subscriptions, &mut out).contains(r#""type":"status""#));
    }

    #[test]
    fn a_repeated_book_subscribe_sends_the_book_status_again() {
        let hub = Arc::new(Hub::new(Arc::default()));
        let entry = hub.declare("test:S");
        let reason = "depth gap: waiting for a new snapshot";
        entry.depth().set_status(SymbolState::Stale, reason);
        let mut subscriptions =
            Subscriptions::new(hub.clone(), Arc::new(Grant::unrestricted()), 10);
        let mut out = Outbox::new(Framing::WebSocket, Arc::default(), 0);
        for round in 0..2 {
            let symbols = vec!["test:S".into()];
            subscriptions.subscribe_book(Some(round), symbols, None, None, &mut out);
            let written = answer(&mut subscriptions, &mut out);
            assert!(written.contains(reason), "{round}: {written}");
        }
    }
}
