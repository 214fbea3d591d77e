//! What one client may see: symbol patterns, and optional caps on its update
//! rate and subscription count.

use serde::{Deserialize, Serialize};

/// A symbol pattern: an exact name, or a name with `*` wildcards, each matching
/// any run of characters (`BINANCE:*`, `*USDT`, `*`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SymbolPattern(String);

impl SymbolPattern {
    pub fn new(pattern: impl Into<String>) -> Self {
        Self(pattern.into())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `symbol` matches. Linear in the symbol's length for a pattern
    /// with one `*`; at worst their product, and both are short.
    pub fn matches(&self, symbol: &str) -> bool {
        wildcard_match(self.0.as_bytes(), symbol.as_bytes())
    }
}

/// Glob matching with `*` only, by the classic backtrack-to-last-star loop.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it currently swallows up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// A client's entitlements, from its token's claims or its API key entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entitlements {
    /// Symbols the client may subscribe to and look up.
    pub symbols: Vec<SymbolPattern>,
    /// Most updates per second per symbol; a subscription asking for more (or
    /// for no cap) gets this one.
    pub max_rate_hz: Option<f64>,
    /// Most subscriptions at once; the server's own limit still applies.
    pub max_subscriptions: Option<usize>,
}

impl Entitlements {
    /// Everything, uncapped: what every client gets when authentication is off.
    pub fn unrestricted() -> Self {
        Self {
            symbols: vec![SymbolPattern::new("*")],
            max_rate_hz: None,
            max_subscriptions: None,
        }
    }

    /// Whether the client may see `symbol`.
    pub fn allows(&self, symbol: &str) -> bool {
        self.symbols.iter().any(|p| p.matches(symbol))
    }

    /// The rate cap a subscription gets when the client asks for `requested`.
    pub fn rate_cap(&self, requested: Option<f64>) -> Option<f64> {
        match (requested, self.max_rate_hz) {
            (Some(asked), Some(cap)) => Some(asked.min(cap)),
            (asked, cap) => asked.or(cap),
        }
    }

    /// The subscription limit for this client under the server's `limit`.
    pub fn subscription_limit(&self, limit: usize) -> usize {
        self.max_subscriptions.map_or(limit, |own| own.min(limit))
    }

    /// Splits requested symbols into those the client may have and the rest.
    pub fn partition(&self, symbols: Vec<String>) -> (Vec<String>, Vec<String>) {
        symbols.into_iter().partition(|s| self.allows(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, symbol: &str) -> bool {
        SymbolPattern::new(pattern).matches(symbol)
    }

    #[test]
    fn patterns_match_exact_names_prefixes_and_globs() {
        assert!(matches("spot:BTCUSDT", "spot:BTCUSDT"));
        assert!(!matches("spot:BTCUSDT", "spot:BTCUSDT2"));
        assert!(!matches("spot:BTCUSDT", "spot:BTCUSD"));
        assert!(matches("BINANCE:*", "BINANCE:ETHUSDT"));
        assert!(matches("BINANCE:*", "BINANCE:"));
        assert!(!matches("BINANCE:*", "COINBASE:BTC-USD"));
        assert!(!matches("BINANCE:*", "binance:ETHUSDT"));
        assert!(matches("*USDT", "spot:BTCUSDT"));
        assert!(!matches("*USDT", "spot:BTCUSDC"));
        assert!(matches("*:BTC*", "usdm:BTCUSDT"));
        assert!(matches("a*b*c", "aXXbYYbZZc"));
        assert!(!matches("a*b*c", "aXXbYYbZZ"));
        assert!(matches("*", ""));
        assert!(!matches("", "x"));
    }

    #[test]
    fn caps_take_the_stricter_of_client_and_grant() {
        let grant = Entitlements {
            symbols: vec![SymbolPattern::new("spot:*")],
            max_rate_hz: Some(5.0),
            max_subscriptions: Some(3),
        };
        assert_eq!(grant.rate_cap(None), Some(5.0));
        assert_eq!(grant.rate_cap(Some(2.0)), Some(2.0));
        assert_eq!(grant.rate_cap(Some(50.0)), Some(5.0));
        assert_eq!(grant.subscription_limit(1000), 3);
        assert_eq!(grant.subscription_limit(2), 2);
        let open = Entitlements::unrestricted();
        assert_eq!(open.rate_cap(None), None);
        assert_eq!(open.subscription_limit(7), 7);
        let (allowed, denied) = grant.partition(vec!["spot:A".into(), "usdm:A".into()]);
        assert_eq!(
            (allowed, denied),
            (vec!["spot:A".into()], vec!["usdm:A".into()])
        );
    }
}
