//! Subscribe and unsubscribe requests, answered the same way on every channel.
//!
//! A request's names are taken in order, each once: one already subscribed is
//! refreshed with the request's settings (and gets a new snapshot), a known new
//! one is added while the client is under its limit, and the rest are refused.
//! The answer is `subscribed` with the accepted names, a snapshot per accepted
//! symbol, then one error for unknown names and one for those over the limit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::outbox::Outbox;
use super::subscriptions::push_error;
use crate::fanout::{Hub, SymbolEntry};
use crate::metrics::ErrorCode;
use crate::protocol::Reply;

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
    /// What the subscriptions are called in the over-the-limit message.
    const LIMIT_NOUN: &'static str;
    /// The request's settings for the subscriptions it adds or refreshes.
    type Settings: Copy;
    /// What the channel keeps per subscription.
    type Subscription;

    fn hub(&self) -> &Hub;
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

/// Handles a subscribe request on `channel` and appends the answer.
pub(super) fn subscribe<C: Channel>(
    channel: &mut C,
    id: Option<u64>,
    symbols: Vec<String>,
    settings: C::Settings,
    out: &mut Outbox,
) {
    let mut accepted: Vec<Arc<str>> = Vec::new();
    // A request may name thousands of symbols: look repeats up, don't scan.
    let mut seen: HashSet<Arc<str>> = HashSet::new();
    let mut fresh: Vec<u32> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    let mut over_limit: Vec<String> = Vec::new();
    for name in symbols {
        if seen.contains(name.as_str()) {
            continue;
        }
        if let Some(index) = channel.registry().find(&name) {
            if let Some(name) = channel.refresh(index, settings) {
                seen.insert(name.clone());
                accepted.push(name);
                fresh.push(index);
            }
            continue;
        }
        let Some(entry) = channel.hub().get(&name) else {
            unknown.push(name);
            continue;
        };
        if channel.registry().len() >= channel.max_subscriptions() {
            over_limit.push(name);
            continue;
        }
        seen.insert(entry.name().clone());
        accepted.push(entry.name().clone());
        fresh.push(channel.add(entry, settings));
    }

    push_subscribed(out, id, C::NAME, &accepted);
    for index in fresh {
        channel.push_snapshot(index, out);
    }
    let limit = format!(
        "at most {} {} per connection",
        channel.max_subscriptions(),
        C::LIMIT_NOUN
    );
    push_refused(out, channel.hub(), id, &unknown, &over_limit, &limit);
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

/// Appends the errors for the symbols a subscribe request could not have:
/// `unknown_symbol`, and `limit_exceeded` (with `limit` as its message).
fn push_refused(
    out: &mut Outbox,
    hub: &Hub,
    id: Option<u64>,
    unknown: &[String],
    over_limit: &[String],
    limit: &str,
) {
    for (names, code, message) in [
        (unknown, ErrorCode::UnknownSymbol, "no such symbol"),
        (over_limit, ErrorCode::LimitExceeded, limit),
    ] {
        if !names.is_empty() {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            push_error(out, hub, id, code, message, &names);
        }
    }
}
