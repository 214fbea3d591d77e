//! Minting tokens, for `tickwire token` and tests: a server's operator or a
//! test signs the claims a client will present.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::entitlements::SymbolPattern;

/// The claims of a tickwire token.
#[derive(Clone, Debug, Serialize)]
pub struct TokenClaims {
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Not valid before, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Symbol patterns the holder may see.
    pub symbols: Vec<SymbolPattern>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rate_hz: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_subscriptions: Option<usize>,
}

/// The key a token is signed with.
#[derive(Clone)]
pub enum SigningKey {
    /// HS256 shared secret.
    Hs256(Vec<u8>),
    /// RS256 private key, PEM.
    Rs256Pem(Vec<u8>),
    /// EdDSA (Ed25519) private key, PEM (PKCS#8).
    EdDsaPem(Vec<u8>),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            SigningKey::Hs256(_) => "Hs256",
            SigningKey::Rs256Pem(_) => "Rs256Pem",
            SigningKey::EdDsaPem(_) => "EdDsaPem",
        };
        write!(f, "SigningKey::{kind}(..)")
    }
}

/// Signs `claims` into a compact JWT.
pub fn mint(claims: &TokenClaims, key: &SigningKey) -> Result<String, jsonwebtoken::errors::Error> {
    let (key, algorithm) = match key {
        SigningKey::Hs256(secret) => (EncodingKey::from_secret(secret), Algorithm::HS256),
        SigningKey::Rs256Pem(pem) => (EncodingKey::from_rsa_pem(pem)?, Algorithm::RS256),
        SigningKey::EdDsaPem(pem) => (EncodingKey::from_ed_pem(pem)?, Algorithm::EdDSA),
    };
    jsonwebtoken::encode(&Header::new(algorithm), claims, &key)
}
