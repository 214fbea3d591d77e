//! Static API keys for server-to-server clients, read from a TOML file that
//! holds each key's SHA-256 digest rather than the key itself:
//!
//! ```toml
//! [[key]]
//! name = "backoffice"          # shown in logs instead of the key
//! sha256 = "9f86d081884c7d65…"  # `printf %s "$KEY" | sha256sum`
//! symbols = ["spot:*"]
//! max_rate_hz = 10             # optional
//! max_subscriptions = 100      # optional
//! ```
//!
//! Looking a presented key up by its digest compares digests, never the key,
//! so the lookup leaks nothing useful through timing.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::entitlements::{Entitlements, SymbolPattern};
use super::{AuthSetupError, Grant};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    sha256: String,
    symbols: Vec<SymbolPattern>,
    max_rate_hz: Option<f64>,
    max_subscriptions: Option<usize>,
}

/// The keys a server accepts, by the SHA-256 digest of the key.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], (String, Entitlements)>,
}

impl ApiKeys {
    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self, AuthSetupError> {
        let text = crate::files::read_settings(path).map_err(|e| AuthSetupError::Read {
            path: path.to_owned(),
            error: e,
        })?;
        Self::parse(&text).map_err(|message| AuthSetupError::KeyFile {
            path: path.to_owned(),
            message,
        })
    }

    fn parse(text: &str) -> Result<Self, String> {
        let file: KeyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_digest = HashMap::new();
        for entry in file.key {
            let digest = parse_digest(&entry.sha256)
                .ok_or_else(|| format!("key `{}`: sha256 must be 64 hex digits", entry.name))?;
            if entry
                .max_rate_hz
                .is_some_and(|r| !(r.is_finite() && r > 0.0))
            {
                return Err(format!(
                    "key `{}`: max_rate_hz must be positive",
                    entry.name
                ));
            }
            let entitlements = Entitlements {
                symbols: entry.symbols,
                max_rate_hz: entry.max_rate_hz,
                max_subscriptions: entry.max_subscriptions,
            };
            if by_digest
                .insert(digest, (entry.name.clone(), entitlements))
                .is_some()
            {
                return Err(format!(
                    "key `{}`: the same key is listed twice",
                    entry.name
                ));
            }
        }
        Ok(Self { by_digest })
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The grant of a presented key, if it is one of ours.
    pub fn lookup(&self, key: &str) -> Option<Grant> {
        let digest = sha256(key.as_bytes());
        self.by_digest
            .get(&digest)
            .map(|(name, entitlements)| Grant {
                subject: format!("key:{name}"),
                entitlements: entitlements.clone(),
                expires_at: None,
            })
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_digest_and_carry_their_entitlements() {
        // printf %s test | sha256sum
        let file = r#"
            [[key]]
            name = "backoffice"
            sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            symbols = ["spot:*"]
            max_subscriptions = 2
        "#;
        let keys = ApiKeys::parse(file).unwrap_or_default();
        let grant = keys.lookup("test");
        assert_eq!(
            grant.as_ref().map(|g| g.subject.as_str()),
            Some("key:backoffice")
        );
        let entitlements = grant.map(|g| g.entitlements);
        assert_eq!(
            entitlements.as_ref().and_then(|e| e.max_subscriptions),
            Some(2)
        );
        assert!(entitlements.is_some_and(|e| e.allows("spot:BTCUSDT") && !e.allows("usdm:BTCUSDT")));
        assert!(keys.lookup("tesT").is_none());
    }

    #[test]
    fn bad_files_are_refused_with_the_entry_named() {
        let short = "[[key]]\nname = \"a\"\nsha256 = \"abcd\"\nsymbols = []\n";
        assert!(ApiKeys::parse(short).is_err_and(|e| e.contains("`a`")));
        let unknown = "[[key]]\nname = \"a\"\nsecret = \"x\"\n";
        assert!(ApiKeys::parse(unknown).is_err());
        let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let twice = format!(
            "[[key]]\nname = \"a\"\nsha256 = \"{digest}\"\nsymbols = []\n\
             [[key]]\nname = \"b\"\nsha256 = \"{digest}\"\nsymbols = []\n"
        );
        assert!(ApiKeys::parse(&twice).is_err_and(|e| e.contains("twice")));
    }
}
