//! Subscribe and unsubscribe requests, answered the same way on every channel.
//!
//! A request's names are taken in order, each once: one already subscribed is
//! refreshed with the request's settings (and gets a new snapshot), a known new
//! one is added while the client is under its limit, and the rest are refused.
//! The answer is `subscribed` with the accepted names, a snapshot per accepted
//! symbol, then one error for unknown names and one for those over the limit.
//!
//! Only `subscribed` is written at once. The rest goes into the client's
//! [`PendingAnswer`] and is written as the client reads (see
//! [`Subscriptions::fill`](super::subscriptions::Subscriptions::fill)): one
//! request may name a thousand symbols, and their snapshots, at a deep book's
//! size each, would otherwise be queued all at once, far past the output limit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::outbox::Outbox;
use super::subscriptions::encode_error;
use crate::auth::Grant;
use crate::fanout::{Hub, SymbolEntry, SymbolState, SymbolStatus};
use crate::metrics::ErrorCode;
use crate::protocol::Reply;

/// The status one subscription's client was last told of.
///
/// Statuses conflate like versions: the client is told the symbol's status
/// when it changed since the last look, so a stale spell that came and went
/// between two looks is not announced. Nor is `live` after `live`: it would
/// say nothing new. A new stale spell is, as its reason may differ.
#[derive(Debug)]
pub(super) struct AnnouncedStatus {
    /// The status generation last looked at (`u64::MAX`: none yet).
    generation: u64,
    /// The state last announced; a client takes a symbol for live until told
    /// otherwise.
    state: SymbolState,
}

impl AnnouncedStatus {
    pub(super) fn new() -> Self {
        Self {
            generation: u64::MAX,
            state: SymbolState::Live,
        }
    }

    /// The status to announce, if any: `generation` is the symbol's current
    /// status generation (one atomic load), `read` reads the whole status only
    /// when that moved.
    pub(super) fn take_change(
        &mut self,
        generation: u64,
        read: impl FnOnce() -> SymbolStatus,
    ) -> Option<SymbolStatus> {
        if generation == self.generation {
            return None;
        }
        let status = read();
        self.generation = status.generation;
        if status.state == SymbolState::Live && self.state == SymbolState::Live {
            return None;
        }
        self.state = status.state;
        Some(status)
    }

    /// Makes the next [`Self::take_change`] read the status even if its
    /// generation has not moved, and announce it unless it is live and so
    /// was the last announcement: a snapshot sent again (a repeated
    /// subscribe) is followed by the symbol's status as the first one was,
    /// for a client that starts over from a snapshot.
    pub(super) fn repeat(&mut self) {
        self.generation = u64::MAX;
    }
}

/// One channel's subscriptions of one client: a slab addressed by the index
/// its slots announce in the mailbox (reused once freed), and the index of
/// each subscribed symbol.
#[derive(Debug)]
pub(super) struct Registry<S> {
    slab: Vec<Option<S>>,
    free: Vec<u32>,
    by_name: HashMap<Arc<str>, u32>,
}

impl<S> Default for Registry<S> {
    fn default() -> Self {
        Self {
            slab: Vec::new(),
            free: Vec::new(),
            by_name: HashMap::new(),
        }
    }
}

impl<S> Registry<S> {
    pub(super) fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.by_name.len()
    }

    /// The index of the subscription to `name`, if there is one.
    pub(super) fn find(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    pub(super) fn get(&self, index: u32) -> Option<&S> {
        self.slab.get(index as usize).and_then(Option::as_ref)
    }

    pub(super) fn get_mut(&mut self, index: u32) -> Option<&mut S> {
        self.slab.get_mut(index as usize).and_then(Option::as_mut)
    }

    /// Adds the subscription `make` builds for its index, under `name`.
    pub(super) fn insert(&mut self, name: Arc<str>, make: impl FnOnce(u32) -> S) -> u32 {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slab.push(None);
            (self.slab.len() - 1) as u32
        });
        self.by_name.insert(name, index);
        self.slab[index as usize] = Some(make(index));
        index
    }

    /// Takes the subscription to `name` out, with the index it had.
    pub(super) fn remove_named(&mut self, name: &str) -> Option<(u32, S)> {
        let index = self.by_name.remove(name)?;
        let sub = self.slab.get_mut(index as usize).and_then(Option::take)?;
        self.free.push(index);
        Some((index, sub))
    }

    /// Takes every subscription out.
    pub(super) fn drain(&mut self) -> Vec<S> {
        self.by_name.clear();
        self.free.clear();
        self.slab.drain(..).flatten().collect()
    }
}

/// One channel's subscriptions, as requests see them.
pub(super) trait Channel {
    /// The channel's name in replies.
    const NAME: &'static str;
    /// What the subscriptions are called in the over-the-limit message (plural).
    const LIMIT_NOUN: &'static str;
    /// Set in the indices this channel's subscriptions are owed snapshots
    /// under, so one [`PendingAnswer`] can hold indices of either channel.
    const INDEX_TAG: u32;
    /// The request's settings for the subscriptions it adds or refreshes.
    type Settings: Copy;
    /// What the channel keeps per subscription.
    type Subscription;

    fn hub(&self) -> &Hub;
    /// The client's credentials: the names an error may show it.
    fn grant(&self) -> &Grant;
    fn registry(&self) -> &Registry<Self::Subscription>;
    fn max_subscriptions(&self) -> usize;
    /// Applies new settings to a subscription and returns its symbol's name.
    fn refresh(&mut self, index: u32, settings: Self::Settings) -> Option<Arc<str>>;
    /// Subscribes to `entry`; no version published after this is missed.
    fn add(&mut self, entry: Arc<SymbolEntry>, settings: Self::Settings) -> u32;
    /// Appends the subscription's current version (and its status when not live).
    fn push_snapshot(&mut self, index: u32, out: &mut Outbox);
    /// Drops the subscription to `name`, if there is one.
    fn remove_named(&mut self, name: &str);
}

/// What a subscribe request still owes the client after `subscribed`: a
/// snapshot per accepted symbol, then the replies that follow them.
///
/// The session reads no further request while an answer is pending, so the
/// order of replies is the one the protocol gives, and what it holds is
/// bounded by one request: its accepted symbols and its refusals.
#[derive(Debug, Default)]
pub(super) struct PendingAnswer {
    /// Subscription indices, tagged with their channel's
    /// [`Channel::INDEX_TAG`], in the request's order.
    snapshots: VecDeque<u32>,
    /// Encoded replies written after the last snapshot.
    then: Vec<Vec<u8>>,
}

impl PendingAnswer {
    pub(super) fn is_empty(&self) -> bool {
        self.snapshots.is_empty() && self.then.is_empty()
    }

    /// The next subscription owed a snapshot, tagged with its channel's tag.
    pub(super) fn next_snapshot(&mut self) -> Option<u32> {
        self.snapshots.pop_front()
    }

    /// Appends `reply` now if nothing is pending, else after the snapshots.
    pub(super) fn reply(&mut self, reply: Vec<u8>, out: &mut Outbox) {
        if self.is_empty() {
            out.push_json(&reply);
        } else {
            self.then.push(reply);
        }
    }

    /// Appends the replies that waited for the snapshots; call once every
    /// snapshot is written.
    pub(super) fn finish(&mut self, out: &mut Outbox) {
        debug_assert!(self.snapshots.is_empty());
        for reply in self.then.drain(..) {
            out.push_json(&reply);
        }
        // A large request's room is not kept for the next one.
        *self = Self::default();
    }

    pub(super) fn clear(&mut self) {
        self.snapshots.clear();
        self.then.clear();
    }
}

/// Handles a subscribe request on `channel`: appends `subscribed` and leaves
/// the rest of the answer in `pending`.
pub(super) fn subscribe<C: Channel>(
    channel: &mut C,
    id: Option<u64>,
    symbols: Vec<String>,
    settings: C::Settings,
    out: &mut Outbox,
    pending: &mut PendingAnswer,
) {
    let mut accepted: Vec<Arc<str>> = Vec::new();
    // A request may name thousands of symbols: look repeats up, don't scan.
    // Each name counts once, whether accepted or refused.
    let mut seen: HashSet<&str> = HashSet::new();
    let mut fresh: Vec<u32> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    let mut over_limit: Vec<String> = Vec::new();
    for name in &symbols {
        if !seen.insert(name) {
            continue;
        }
        if let Some(index) = channel.registry().find(name) {
            if let Some(name) = channel.refresh(index, settings) {
                accepted.push(name);
                fresh.push(index);
            }
            continue;
        }
        let Some(entry) = channel.hub().get(name) else {
            unknown.push(name.clone());
            continue;
        };
        if channel.registry().len() >= channel.max_subscriptions() {
            over_limit.push(name.clone());
            continue;
        }
        accepted.push(entry.name().clone());
        fresh.push(channel.add(entry, settings));
    }

    push_subscribed(out, id, C::NAME, &accepted);
    pending
        .snapshots
        .extend(fresh.into_iter().map(|index| index | C::INDEX_TAG));
    let hub = channel.hub();
    let mut refuse = |code, message: &str, names: &[&str]| {
        pending.reply(encode_error(hub, id, code, message, names), out);
    };
    if !unknown.is_empty() {
        let names: Vec<&str> = unknown.iter().map(String::as_str).collect();
        let entitlements = &channel.grant().entitlements;
        let message = hub.no_such_symbol(&names, &|name| entitlements.allows(name));
        refuse(ErrorCode::UnknownSymbol, &message, &names);
    }
    if !over_limit.is_empty() {
        let names: Vec<&str> = over_limit.iter().map(String::as_str).collect();
        let max = channel.max_subscriptions();
        let noun = match max {
            1 => C::LIMIT_NOUN.trim_end_matches('s'),
            _ => C::LIMIT_NOUN,
        };
        let message = format!("at most {max} {noun} per connection");
        refuse(ErrorCode::LimitExceeded, &message, &names);
    }
}

/// Handles an unsubscribe request on `channel` and appends `unsubscribed`.
/// Nothing for those symbols is appended after this returns.
pub(super) fn unsubscribe<C: Channel>(
    channel: &mut C,
    id: Option<u64>,
    symbols: &[String],
    out: &mut Outbox,
) {
    for name in symbols {
        channel.remove_named(name);
    }
    let names: Vec<&str> = symbols.iter().map(String::as_str).collect();
    out.push_json(
        &Reply::Unsubscribed {
            id,
            channel: C::NAME,
            symbols: &names,
        }
        .encode(),
    );
}

/// Appends the `subscribed` answer to a subscribe request on `channel`.
fn push_subscribed(out: &mut Outbox, id: Option<u64>, channel: &str, accepted: &[Arc<str>]) {
    let names: Vec<&str> = accepted.iter().map(|n| &**n).collect();
    out.push_json(
        &Reply::Subscribed {
            id,
            channel,
            symbols: &names,
        }
        .encode(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(generation: u64, state: SymbolState, reason: &str) -> SymbolStatus {
        SymbolStatus {
            generation,
            state,
            reason: Arc::from(reason),
        }
    }

    #[test]
    fn statuses_are_announced_once_per_change_and_live_never_twice() {
        let mut announced = AnnouncedStatus::new();
        let live = |g| move || status(g, SymbolState::Live, "fresh update");
        let stale = |g, why: &'static str| move || status(g, SymbolState::Stale, why);
        // A live symbol at subscription needs no announcement; a stale one does.
        assert_eq!(announced.take_change(0, live(0)), None);
        assert_eq!(announced.take_change(0, || panic!("not read again")), None);
        let told = announced.take_change(1, stale(1, "feed disconnected"));
        assert_eq!(told.map(|s| s.reason), Some(Arc::from("feed disconnected")));
        // Live, then a stale spell the client was never shown: one `live`.
        assert_eq!(
            announced.take_change(2, live(2)).map(|s| s.state),
            Some(SymbolState::Live)
        );
        assert_eq!(announced.take_change(4, live(4)), None);
        // Two stale spells in a row, the live one between them missed: the
        // second is announced with its own reason.
        assert!(announced.take_change(5, stale(5, "a")).is_some());
        let told = announced.take_change(7, stale(7, "b"));
        assert_eq!(told.map(|s| s.reason), Some(Arc::from("b")));
        // The status may have moved on between the generation and the read:
        // what was read is announced, and its generation remembered.
        let halted = || status(9, SymbolState::Halted, "halted by the venue");
        let told = announced.take_change(8, halted);
        assert_eq!(told.map(|s| s.state), Some(SymbolState::Halted));
        assert_eq!(announced.take_change(9, || panic!("not read again")), None);
    }
}
