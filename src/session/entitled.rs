//! Requests seen through a client's [`Grant`]: whatever it is not entitled to
//! is refused before it reaches the subscriptions, so no snapshot, update,
//! status or name of such a symbol is ever written to that client.

use super::outbox::Outbox;
use super::subscriptions::{encode_error, push_error, Subscriptions};
use crate::auth::Grant;
use crate::fanout::Hub;
use crate::metrics::ErrorCode;
use crate::protocol::Reply;

/// Subscribes to the entitled part of `symbols` (with the grant's rate cap)
/// and answers `not_entitled` for the rest.
pub fn subscribe(
    subscriptions: &mut Subscriptions,
    grant: &Grant,
    hub: &Hub,
    id: Option<u64>,
    symbols: Vec<String>,
    max_rate_hz: Option<f64>,
    out: &mut Outbox,
) {
    let rate = grant.entitlements.rate_cap(max_rate_hz);
    subscribe_with(
        subscriptions,
        grant,
        hub,
        id,
        symbols,
        out,
        |subscriptions, allowed, out| subscriptions.subscribe(id, allowed, rate, out),
    );
}

/// The same for the `book` channel: the depth of a symbol is as licensed as
/// its top of book.
#[allow(clippy::too_many_arguments)]
pub fn subscribe_book(
    subscriptions: &mut Subscriptions,
    grant: &Grant,
    hub: &Hub,
    id: Option<u64>,
    symbols: Vec<String>,
    depth: Option<usize>,
    max_rate_hz: Option<f64>,
    out: &mut Outbox,
) {
    if grant.entitlements.rate_cap(None).is_some() {
        // Book updates are not rate-capped, so a capped client cannot have them.
        let names: Vec<&str> = symbols.iter().map(String::as_str).collect();
        push_error(
            out,
            hub,
            id,
            ErrorCode::NotEntitled,
            "your credentials cap the update rate, and the book channel has no rate cap",
            &names,
        );
        return;
    }
    subscribe_with(
        subscriptions,
        grant,
        hub,
        id,
        symbols,
        out,
        |subscriptions, allowed, out| {
            subscriptions.subscribe_book(id, allowed, depth, max_rate_hz, out)
        },
    );
}

/// Hands the entitled part of `symbols` to `subscribe`, then answers
/// `not_entitled` for the rest, whether or not they exist, after the
/// request's other replies.
fn subscribe_with(
    subscriptions: &mut Subscriptions,
    grant: &Grant,
    hub: &Hub,
    id: Option<u64>,
    symbols: Vec<String>,
    out: &mut Outbox,
    subscribe: impl FnOnce(&mut Subscriptions, Vec<String>, &mut Outbox),
) {
    let (allowed, denied) = grant.entitlements.partition(symbols);
    subscribe(subscriptions, allowed, out);
    if !denied.is_empty() {
        let names: Vec<&str> = denied.iter().map(String::as_str).collect();
        let error = encode_error(
            hub,
            id,
            ErrorCode::NotEntitled,
            "your credentials do not cover these symbols",
            &names,
        );
        subscriptions.reply(error, out);
    }
}

/// Answers `list` with the symbols the client may see.
pub fn list(grant: &Grant, hub: &Hub, id: Option<u64>, out: &mut Outbox) {
    let names = hub.symbol_names();
    let names: Vec<&str> = names
        .iter()
        .map(|n| &**n)
        .filter(|n| grant.entitlements.allows(n))
        .collect();
    out.push_json(
        &Reply::Symbols {
            id,
            symbols: &names,
        }
        .encode(),
    );
}

/// Tells the client its credential expired (the caller then closes).
pub fn expired(hub: &Hub, out: &mut Outbox) {
    push_error(
        out,
        hub,
        None,
        ErrorCode::CredentialsExpired,
        "your credentials expired; reconnect with a fresh token",
        &[],
    );
}
