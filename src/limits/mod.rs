//! Limits that keep one client (or one address) from taking the server down:
//! connections per IP address, the browser `Origin` allow-list, and the
//! inbound message rate of a connection.
//!
//! The server-wide connection limit is [`Metrics::admit`](crate::metrics::Metrics::admit);
//! message size, subscriptions per connection, header size and the handshake
//! timeout are in [`SessionConfig`](crate::session::SessionConfig) and
//! [`ServerConfig`](crate::server::ServerConfig). Every refusal is counted in
//! `/metrics`.

pub mod rate;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderMap};

use crate::metrics::ConnectionPermit;
pub use rate::{MessageRate, RateConfig, Verdict};

/// Connection-level limits, checked at the handshake.
#[derive(Clone, Debug)]
pub struct LimitsConfig {
    /// Most WebSocket and SSE connections from one IP address (IPv6: one
    /// /64); 0 for no limit.
    /// It also bounds, apart, an address's sockets not yet handed to a
    /// WebSocket session (a request head still to come, plain HTTP, SSE).
    /// Behind a reverse proxy every client shares the proxy's address: raise
    /// or disable it there and limit at the proxy.
    pub max_connections_per_ip: usize,
    /// Origins browsers may connect from (`https://example.com`); empty allows
    /// any. Requests without an `Origin` header (non-browser clients) pass.
    pub allowed_origins: Vec<String>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections_per_ip: 1_000,
            allowed_origins: Vec::new(),
        }
    }
}

impl LimitsConfig {
    /// Whether a request with these headers may connect, by its `Origin`.
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
        self.allowed_origins
            .iter()
            .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }
}

/// An `--allowed-origin` as browsers send it in `Origin`: scheme, host and
/// port, lowercase, the scheme's default port left out (`https://app.example`).
/// Anything else (a bare host, a path, `*`) would match no browser at all, so
/// it is refused rather than quietly locking every browser out.
pub fn parse_origin(text: &str) -> Result<String, String> {
    let expected = "expected SCHEME://HOST or SCHEME://HOST:PORT, e.g. https://app.example";
    let url = url::Url::parse(text).map_err(|e| format!("{text}: {e} ({expected})"))?;
    let host = url.host_str().filter(|host| !host.is_empty());
    let bare = url.username().is_empty()
        && url.password().is_none()
        && matches!(url.path(), "" | "/")
        && url.query().is_none()
        && url.fragment().is_none();
    match host {
        Some(host) if bare => Ok(match url.port() {
            Some(port) => format!("{}://{host}:{port}", url.scheme()),
            None => format!("{}://{host}", url.scheme()),
        }),
        _ => Err(format!("{text} is not an origin ({expected})")),
    }
}

/// Open connections per IP address. Entries go away with their last
/// connection, so the map never holds more than the open connections.
#[derive(Debug, Default)]
pub struct PeerConnections {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PeerConnections {
    /// Counts one more connection from `ip` unless `limit` are open (0: no limit).
    pub fn admit(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<PeerPermit> {
        let ip = address_of(ip);
        let mut open = self.lock();
        let count = open.entry(ip).or_insert(0);
        if limit > 0 && *count >= limit {
            return None;
        }
        *count += 1;
        Some(PeerPermit {
            peers: self.clone(),
            ip,
        })
    }

    /// Connections open from `ip`.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.lock().get(&address_of(ip)).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Every critical section leaves the map consistent, even on panic.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The address a connection counts under. An IPv6 subscriber is usually
/// given a whole /64 and can pick any address in it, so IPv6 addresses count
/// by their /64. An IPv4 client seen through a dual-stack socket
/// (`::ffff:a.b.c.d`) counts as its IPv4 address, not under the /64 that every
/// such address shares.
fn address_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// One connection from an address, released on drop.
#[derive(Debug)]
pub struct PeerPermit {
    peers: Arc<PeerConnections>,
    ip: IpAddr,
}

impl Drop for PeerPermit {
    fn drop(&mut self) {
        let mut open = self.peers.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Everything an admitted client holds until it is gone: its place under the
/// server-wide limit and under its address's limit.
#[derive(Debug)]
pub struct Admission {
    pub connection: ConnectionPermit,
    pub peer: Option<PeerPermit>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allowed_origin_must_be_one_a_browser_could_send() {
        // As a browser writes it: lowercase, no default port, no slash.
        for (given, kept) in [
            ("https://app.example", "https://app.example"),
            ("https://App.Example/", "https://app.example"),
            ("https://app.example:443", "https://app.example"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ] {
            assert_eq!(parse_origin(given).as_deref(), Ok(kept));
        }
        for wrong in [
            "app.example",
            "*",
            "https://app.example/path",
            "https://app.example?x=1",
            "https://user@app.example",
            "https://",
            "",
        ] {
            let error = parse_origin(wrong).expect_err(wrong);
            assert!(error.contains("SCHEME://HOST"), "{wrong}: {error}");
        }
    }
    use axum::http::HeaderValue;

    #[test]
    fn per_address_counts_are_released_and_forgotten() {
        let peers = Arc::new(PeerConnections::default());
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        let first = peers.admit(ip, 2);
        let second = peers.admit(ip, 2);
        assert!(first.is_some() && second.is_some());
        assert!(peers.admit(ip, 2).is_none());
        assert!(peers.admit(other, 2).is_some_and(|_| true));
        drop(first);
        assert_eq!(peers.open(ip), 1);
        let third = peers.admit(ip, 2);
        assert!(third.is_some());
        drop((second, third));
        assert_eq!(peers.open(ip), 0);
        assert!(peers.lock().is_empty());
        assert!(peers.admit(ip, 0).is_some());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let peers = Arc::new(PeerConnections::default());
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let next_64: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        let _first = peers.admit(one, 1).expect("first");
        assert!(peers.admit(same_64, 1).is_none());
        assert!(peers.admit(next_64, 1).is_some());
        // Two IPv4 clients on a dual-stack socket are two addresses, and the
        // same one seen either way is one.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        let other_mapped: IpAddr = "::ffff:192.0.2.2".parse().expect("ip");
        let _mapped = peers.admit(mapped, 1).expect("mapped");
        assert!(peers.admit(other_mapped, 1).is_some());
        assert!(peers.admit([192, 0, 2, 1].into(), 1).is_none());
    }

    #[test]
    fn origins_are_checked_only_when_listed_and_present() {
        let mut headers = HeaderMap::new();
        let open = LimitsConfig::default();
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(open.origin_allowed(&headers));
        let strict = LimitsConfig {
            allowed_origins: vec!["https://app.example/".into()],
            ..LimitsConfig::default()
        };
        assert!(!strict.origin_allowed(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://APP.example"),
        );
        assert!(strict.origin_allowed(&headers));
        assert!(strict.origin_allowed(&HeaderMap::new()));
    }
}
