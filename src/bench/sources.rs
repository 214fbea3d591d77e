//! `--source-addresses`: the local addresses the load client connects from.
//!
//! Each connection from one address to one server needs a port of its own,
//! and Linux finds a free one by trying them in turn, even ones first: past
//! ~14,000 connections from one address every `connect()` tries thousands,
//! and the load client spent more CPU there than on anything else in S4.
//! Taken in turn from several addresses (on loopback, any of 127.0.0.0/8),
//! each address holds a fraction of the connections and each search stays
//! short.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Most addresses one range may name: far more than any load needs, and a
/// bound on the list a typo like `10.0.0.0-10.255.255.255` would build.
const MAX_RANGE: u32 = 4_096;

/// One `--source-addresses` entry: an address, or an IPv4 range `FIRST-LAST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressRange(Vec<IpAddr>);

/// Parses `127.0.0.1`, `::1` or `127.0.0.1-127.0.0.16`.
pub fn parse_range(text: &str) -> Result<AddressRange, String> {
    let address = |part: &str| {
        part.trim()
            .parse::<IpAddr>()
            .map_err(|e| format!("{part}: {e}"))
    };
    let Some((first, last)) = text.split_once('-') else {
        return Ok(AddressRange(vec![address(text)?]));
    };
    let (IpAddr::V4(first), IpAddr::V4(last)) = (address(first)?, address(last)?) else {
        return Err(format!("{text}: a range must be of IPv4 addresses"));
    };
    let (low, high) = (u32::from(first), u32::from(last));
    if low > high {
        return Err(format!("{text}: the range ends before it starts"));
    }
    if high - low >= MAX_RANGE {
        return Err(format!("{text}: at most {MAX_RANGE} addresses in a range"));
    }
    Ok(AddressRange(
        (low..=high)
            .map(|n| IpAddr::V4(Ipv4Addr::from(n)))
            .collect(),
    ))
}

/// The addresses connections are opened from, each taken in turn; none
/// leaves the choice to the system.
#[derive(Debug, Default)]
pub struct SourceAddresses {
    addresses: Vec<IpAddr>,
    next: AtomicUsize,
}

impl SourceAddresses {
    pub fn new(ranges: &[AddressRange]) -> Self {
        Self {
            addresses: ranges.iter().flat_map(|r| r.0.iter().copied()).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The address the next connection is opened from.
    pub fn next(&self) -> Option<IpAddr> {
        if self.addresses.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Relaxed);
        Some(self.addresses[turn % self.addresses.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_single_addresses_and_mistakes() {
        let range = parse_range("127.0.0.254-127.0.1.1").expect("a range");
        let expected: Vec<IpAddr> = ["127.0.0.254", "127.0.0.255", "127.0.1.0", "127.0.1.1"]
            .iter()
            .map(|a| a.parse().expect("an address"))
            .collect();
        assert_eq!(range, AddressRange(expected));
        assert_eq!(
            parse_range("::1").expect("an IPv6 address"),
            AddressRange(vec![IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)])
        );
        assert!(parse_range("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_range("::1-::2").is_err());
        assert!(parse_range("10.0.0.0-10.255.255.255").is_err());
        assert!(parse_range("localhost").is_err());
    }

    #[test]
    fn addresses_are_taken_in_turn() {
        let ranges = [
            parse_range("127.0.0.1-127.0.0.2").expect("a range"),
            parse_range("127.0.0.9").expect("an address"),
        ];
        let sources = SourceAddresses::new(&ranges);
        let taken: Vec<String> = (0..4)
            .filter_map(|_| sources.next())
            .map(|address| address.to_string())
            .collect();
        assert_eq!(taken, ["127.0.0.1", "127.0.0.2", "127.0.0.9", "127.0.0.1"]);
        assert_eq!(SourceAddresses::new(&[]).next(), None);
    }
}
