//! Requests seen through a client's [`Grant`]: whatever it is not entitled to
//! is refused before it reaches the subscriptions, so no snapshot, update,
//! status or name of such a symbol is ever written to that client.

use super::outbox::Outbox;
use super::subscriptions::{encode_error, push_error, Subscriptions};
use crate::auth::Grant;
use crate::fanout::Hub;
use crate::metrics::ErrorCode;
use crate::protocol::Reply;

/// Why symbols outside the credential's patterns are refused.
const NOT_ENTITLED: &str = "your credentials do not cover these symbols";

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
    let (allowed, denied) = grant.entitlements.partition(symbols);
    subscriptions.subscribe(id, allowed, rate, out);
    refuse_not_entitled(subscriptions, hub, id, &denied, NOT_ENTITLED, out);
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
    // Book updates are not rate-capped, so a capped client cannot have them:
    // every symbol is refused as any refused symbol is, after a `subscribed`
    // that names none.
    let (allowed, denied, message) = if grant.entitlements.rate_cap(None).is_some() {
        let message = "your credentials cap the update rate, and the book channel has no rate cap";
        (Vec::new(), symbols, message)
    } else {
        let (allowed, denied) = grant.entitlements.partition(symbols);
        (allowed, denied, NOT_ENTITLED)
    };
    subscriptions.subscribe_book(id, allowed, depth, max_rate_hz, out);
    refuse_not_entitled(subscriptions, hub, id, &denied, message, out);
}

/// Answers `not_entitled` for the `denied` symbols of a subscribe request,
/// whether or not they exist, after the request's other replies.
fn refuse_not_entitled(
    subscriptions: &mut Subscriptions,
    hub: &Hub,
    id: Option<u64>,
    denied: &[String],
    message: &str,
    out: &mut Outbox,
) {
    if denied.is_empty() {
        return;
    }
    let names: Vec<&str> = denied.iter().map(String::as_str).collect();
    let error = encode_error(hub, id, ErrorCode::NotEntitled, message, &names);
    subscriptions.reply(error, out);
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
