//! A client's `book` channel subscriptions: full-depth versions delivered
//! through the same mailbox and conflating drain as tickers.
//!
//! Each subscription names one symbol and one depth. A new version is read
//! from the symbol's [`DepthChannel`](crate::fanout::depth::DepthChannel) when
//! the session drains; its encoding for that depth is built once and shared by
//! every subscriber, and a slow client skips to the newest version.

use std::sync::Arc;

use super::channel::{self, AnnouncedStatus, Channel, PendingAnswer, Registry};
use super::outbox::Outbox;
use super::subscriptions::encode_error;
use crate::auth::Grant;
use crate::book::depth::{deepest_served, depth_index, BOOK_DEPTHS};
use crate::fanout::{Hub, Mailbox, Slot, SymbolEntry};
use crate::metrics::ErrorCode;
use crate::protocol::book::{encode_status, BOOK_CHANNEL};

/// Set in the mailbox index of a book subscription's slot, so that one
/// mailbox serves both channels.
pub const BOOK_SLOT: u32 = 1 << 31;

/// The depth of a `book` subscription that names none.
pub const DEFAULT_DEPTH: usize = 10;

#[derive(Debug)]
pub(super) struct BookSubscription {
    entry: Arc<SymbolEntry>,
    slot: Arc<Slot>,
    /// Index of the subscribed depth in [`BOOK_DEPTHS`].
    depth_index: usize,
    /// `seq` of the last version sent; 0 before the first.
    last_seq: u64,
    /// The book status last announced to this client.
    status: AnnouncedStatus,
}

/// Every `book` subscription of one client.
#[derive(Debug)]
pub struct BookSubscriptions {
    hub: Arc<Hub>,
    grant: Arc<Grant>,
    mailbox: Arc<Mailbox>,
    max_subscriptions: usize,
    subs: Registry<BookSubscription>,
}

impl BookSubscriptions {
    /// No subscriptions yet; slots will announce themselves in `mailbox`.
    pub fn new(
        hub: Arc<Hub>,
        grant: Arc<Grant>,
        mailbox: Arc<Mailbox>,
        max_subscriptions: usize,
    ) -> Self {
        Self {
            hub,
            grant,
            mailbox,
            max_subscriptions,
            subs: Registry::default(),
        }
    }

    /// Whether the client has no book subscription.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Handles `{"op":"subscribe","channel":"book",...}`: `subscribed`, then a
    /// snapshot (and the book's status when not live) per accepted symbol,
    /// then errors for refused ones, all but `subscribed` left in `pending`.
    /// A bad `depth` refuses the whole request.
    pub(super) fn subscribe(
        &mut self,
        id: Option<u64>,
        symbols: Vec<String>,
        depth: Option<usize>,
        max_rate_hz: Option<f64>,
        out: &mut Outbox,
        pending: &mut PendingAnswer,
    ) {
        let max_depth = self.hub.max_book_depth();
        let depth = depth.unwrap_or_else(|| default_depth(max_depth));
        let Some(depth_index) = depth_index(depth, max_depth) else {
            let served: Vec<String> = BOOK_DEPTHS
                .iter()
                .filter(|&&d| d <= max_depth)
                .map(|d| d.to_string())
                .collect();
            let message = format!("depth must be one of {}", served.join(", "));
            let error = encode_error(&self.hub, id, ErrorCode::BadRequest, &message, &[]);
            pending.reply(error, out);
            return;
        };
        if max_rate_hz.is_some() {
            let message = "max_rate_hz is not supported on the book channel";
            let error = encode_error(&self.hub, id, ErrorCode::BadRequest, message, &[]);
            pending.reply(error, out);
            return;
        }
        channel::subscribe(self, id, symbols, depth_index, out, pending);
    }

    /// Drops the named book subscriptions and appends `unsubscribed`.
    pub fn unsubscribe(&mut self, id: Option<u64>, symbols: &[String], out: &mut Outbox) {
        channel::unsubscribe(self, id, symbols, out);
    }

    /// Drops every book subscription.
    pub fn release(&mut self) {
        for sub in self.subs.drain() {
            self.detach(&sub);
        }
    }

    /// Stops publishers from queueing a subscription taken out of the registry.
    fn detach(&self, sub: &BookSubscription) {
        sub.entry.depth().unsubscribe(&sub.slot);
        self.hub
            .metrics()
            .subscriptions
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Appends the newest version (and status) of the subscription whose slot
    /// index is `index` (without [`BOOK_SLOT`]), if the client lacks it.
    pub fn push_update(&mut self, index: u32, out: &mut Outbox) {
        let Some(sub) = self.subs.get_mut(index) else {
            return; // Unsubscribed since it was queued.
        };
        sub.slot.clear();
        if let Some(current) = sub.entry.depth().current() {
            if current.seq > sub.last_seq {
                let skipped = current.seq - sub.last_seq - 1;
                sub.last_seq = current.seq;
                out.push_ticker(
                    current.book_prefix(sub.depth_index),
                    skipped,
                    false,
                    Some(current.ingest_ts_ns),
                );
            }
        }
        push_status_if_changed(sub, out);
    }
}

impl Channel for BookSubscriptions {
    const NAME: &'static str = BOOK_CHANNEL;
    const LIMIT_NOUN: &'static str = "book subscriptions";
    const INDEX_TAG: u32 = BOOK_SLOT;
    /// The subscribed depth, as an index into [`BOOK_DEPTHS`].
    type Settings = usize;
    type Subscription = BookSubscription;

    fn hub(&self) -> &Hub {
        &self.hub
    }

    fn grant(&self) -> &Grant {
        &self.grant
    }

    fn registry(&self) -> &Registry<BookSubscription> {
        &self.subs
    }

    fn max_subscriptions(&self) -> usize {
        self.max_subscriptions
    }

    fn refresh(&mut self, index: u32, depth_index: usize) -> Option<Arc<str>> {
        let sub = self.subs.get_mut(index)?;
        sub.depth_index = depth_index;
        Some(sub.entry.name().clone())
    }

    fn add(&mut self, entry: Arc<SymbolEntry>, depth_index: usize) -> u32 {
        let mailbox = &self.mailbox;
        let index = self.subs.insert(entry.name().clone(), |index| {
            let slot = Arc::new(Slot::new(mailbox.clone(), index | BOOK_SLOT));
            // Registered before the snapshot is read, so no version can fall between.
            entry.depth().subscribe(slot.clone());
            BookSubscription {
                entry,
                slot,
                depth_index,
                last_seq: 0,
                // Any state but live is announced with the snapshot.
                status: AnnouncedStatus::new(),
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
        if let Some(current) = sub.entry.depth().current() {
            sub.last_seq = sub.last_seq.max(current.seq);
            out.push_ticker(current.book_prefix(sub.depth_index), 0, true, None);
        }
        sub.status.repeat();
        push_status_if_changed(sub, out);
    }

    fn remove_named(&mut self, name: &str) {
        if let Some((_, sub)) = self.subs.remove_named(name) {
            self.detach(&sub);
        }
    }
}

/// The depth of a subscription that names none: [`DEFAULT_DEPTH`], or the
/// deepest one served under a smaller `max_depth`.
fn default_depth(max_depth: usize) -> usize {
    deepest_served(DEFAULT_DEPTH.min(max_depth))
}

fn push_status_if_changed(sub: &mut BookSubscription, out: &mut Outbox) {
    let depth = sub.entry.depth();
    let Some(status) = sub
        .status
        .take_change(depth.status_generation(), || depth.status())
    else {
        return;
    };
    out.push_json(&encode_status(
        sub.entry.name(),
        status.state.as_str(),
        &status.reason,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_depth_is_one_a_server_capped_lower_still_serves() {
        assert_eq!(default_depth(100), DEFAULT_DEPTH);
        assert_eq!(default_depth(10), 10);
        assert_eq!(default_depth(7), 5);
        assert_eq!(default_depth(1), 1);
        assert!(depth_index(default_depth(7), 7).is_some());
    }
}
