//! Authentication: who a client is and what it may see.
//!
//! Off by default. When enabled, every `/ws`, `/sse` and `/api/...` data
//! request presents a credential — a JWT or a static API key — as
//! `Authorization: Bearer ...`, the `token` query parameter, or (for browsers,
//! which cannot set headers on a WebSocket) a `bearer.<credential>` entry in
//! `Sec-WebSocket-Protocol`. A valid credential yields a [`Grant`]: the
//! [`Entitlements`] every data path filters by, and when it expires.
//!
//! JWTs are verified with `jsonwebtoken` (HS256 with a shared secret, or RS256 /
//! EdDSA with a public key): signature, `exp`, `nbf`, and `aud`/`iss` when
//! configured. Credentials are never logged; a [`Grant`] names the client by its
//! `sub` claim or key name only.

pub mod entitlements;
pub mod keys;
pub mod mint;

use std::path::PathBuf;

use axum::http::{header, HeaderMap};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

pub use entitlements::{Entitlements, SymbolPattern};
pub use keys::ApiKeys;

/// The `Sec-WebSocket-Protocol` entry prefix that carries a credential.
pub const SUBPROTOCOL_PREFIX: &str = "bearer.";
/// The subprotocol a server selects when the client offers it alongside a
/// credential (browsers fail a handshake that offers protocols and gets none).
pub const SUBPROTOCOL: &str = "tickwire.v1";

/// The most clock skew tolerated on `exp` and `nbf`, a day. The verifier
/// subtracts the leeway from the current time, so one of more than the
/// seconds since 1970 would refuse every token as expired (or panic).
pub const MAX_LEEWAY_SECS: u64 = 24 * 3600;

/// What an authenticated client is allowed, and until when.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    /// Who it is, for logs: `sub` of a token, `key:NAME` of an API key.
    pub subject: String,
    pub entitlements: Entitlements,
    /// Unix seconds after which the credential is no longer valid.
    pub expires_at: Option<i64>,
}

impl Grant {
    /// Everything, forever: every client's grant when authentication is off.
    pub fn unrestricted() -> Self {
        Self {
            subject: "anonymous".into(),
            entitlements: Entitlements::unrestricted(),
            expires_at: None,
        }
    }
}

/// The key JWTs are verified with. Its `Debug` names the kind, never the
/// bytes: a configuration may be logged.
#[derive(Clone)]
pub enum JwtKey {
    /// HS256 shared secret (raw bytes).
    Hs256(Vec<u8>),
    /// RS256 public key, PEM.
    Rs256Pem(Vec<u8>),
    /// EdDSA (Ed25519) public key, PEM.
    EdDsaPem(Vec<u8>),
}

/// JWT verification settings.
#[derive(Clone, Debug)]
pub struct JwtConfig {
    pub key: JwtKey,
    /// Required `aud` value, when set.
    pub audience: Option<String>,
    /// Required `iss` value, when set.
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

/// How clients authenticate; both `None` means authentication is off.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    pub jwt: Option<JwtConfig>,
    /// A TOML file of API keys (see [`keys`]).
    pub api_keys: Option<PathBuf>,
}

/// Why the authenticator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    KeyFile { path: PathBuf, message: String },
    /// jsonwebtoken's own reason (`InvalidKeyFormat`) is left out: it says
    /// less than what was expected.
    #[error("not {0} public key in PEM (-----BEGIN PUBLIC KEY-----)")]
    JwtKey(&'static str),
    #[error("the HS256 secret is empty")]
    EmptySecret,
    #[error("a JWT leeway of {0} s is more than the {MAX_LEEWAY_SECS} s allowed")]
    Leeway(u64),
}

/// Why a credential was refused. The messages never include the credential.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("credentials required: send a token (Authorization: Bearer, ?token= or Sec-WebSocket-Protocol)")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("invalid credentials: {0}")]
    Invalid(&'static str),
}

/// Checks credentials against the configured JWT key and API keys.
pub struct Authenticator {
    jwt: Option<(DecodingKey, Validation)>,
    keys: ApiKeys,
    leeway_secs: i64,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            JwtKey::Hs256(_) => "Hs256",
            JwtKey::Rs256Pem(_) => "Rs256Pem",
            JwtKey::EdDsaPem(_) => "EdDsaPem",
        };
        write!(f, "{kind}(..)")
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material stays out of debug output.
        f.debug_struct("Authenticator")
            .field("jwt", &self.jwt.as_ref().map(|(_, v)| &v.algorithms))
            .field("api_keys", &!self.keys.is_empty())
            .finish()
    }
}

/// Claims tickwire reads from a token; `exp`, `nbf`, `aud` and `iss` are
/// checked by `jsonwebtoken` itself. `exp` is required, but optional here:
/// the claims are read before they are validated, and a token without `exp`
/// should fail validation, which names the claim, rather than reading.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<i64>,
    /// Read only so that an `nbf` that is not a whole number refuses the
    /// token: `jsonwebtoken` checks the numbers and skips anything else.
    #[serde(rename = "nbf")]
    _nbf: Option<i64>,
    #[serde(default)]
    symbols: Vec<SymbolPattern>,
    max_rate_hz: Option<f64>,
    max_subscriptions: Option<usize>,
}

impl Authenticator {
    /// Authentication off: every client gets [`Grant::unrestricted`].
    pub fn disabled() -> Self {
        Self {
            jwt: None,
            keys: ApiKeys::default(),
            leeway_secs: 0,
        }
    }

    pub fn new(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        let keys = match &config.api_keys {
            Some(path) => ApiKeys::load(path)?,
            None => ApiKeys::default(),
        };
        let mut leeway_secs = 0;
        let jwt = match &config.jwt {
            None => None,
            Some(jwt) if jwt.leeway_secs > MAX_LEEWAY_SECS => {
                return Err(AuthSetupError::Leeway(jwt.leeway_secs))
            }
            Some(jwt) => {
                let (key, algorithm) = match &jwt.key {
                    JwtKey::Hs256(secret) if secret.is_empty() => {
                        return Err(AuthSetupError::EmptySecret)
                    }
                    JwtKey::Hs256(secret) => (DecodingKey::from_secret(secret), Algorithm::HS256),
                    JwtKey::Rs256Pem(pem) => (
                        DecodingKey::from_rsa_pem(pem)
                            .map_err(|_| AuthSetupError::JwtKey("an RS256"))?,
                        Algorithm::RS256,
                    ),
                    JwtKey::EdDsaPem(pem) => (
                        DecodingKey::from_ed_pem(pem)
                            .map_err(|_| AuthSetupError::JwtKey("an Ed25519"))?,
                        Algorithm::EdDSA,
                    ),
                };
                let mut validation = Validation::new(algorithm);
                validation.leeway = jwt.leeway_secs;
                validation.validate_nbf = true;
                let mut required = vec!["exp"];
                match &jwt.audience {
                    Some(audience) => {
                        validation.set_audience(&[audience]);
                        required.push("aud");
                    }
                    None => validation.validate_aud = false,
                }
                if let Some(issuer) = &jwt.issuer {
                    validation.set_issuer(&[issuer]);
                    required.push("iss");
                }
                validation.set_required_spec_claims(&required);
                leeway_secs = i64::try_from(jwt.leeway_secs).unwrap_or(i64::MAX);
                Some((key, validation))
            }
        };
        Ok(Self {
            jwt,
            keys,
            leeway_secs,
        })
    }

    /// Whether clients must present credentials.
    pub fn enabled(&self) -> bool {
        self.jwt.is_some() || !self.keys.is_empty()
    }

    /// The grant for a presented credential (none presented: `None`).
    pub fn authenticate(&self, credential: Option<&str>) -> Result<Grant, AuthError> {
        if !self.enabled() {
            return Ok(Grant::unrestricted());
        }
        let credential = credential.ok_or(AuthError::Missing)?;
        if let Some(grant) = self.keys.lookup(credential) {
            return Ok(grant);
        }
        let Some((key, validation)) = &self.jwt else {
            return Err(AuthError::Invalid("unknown API key"));
        };
        let data = jsonwebtoken::decode::<Claims>(credential, key, validation)
            .map_err(|e| classify(e.kind()))?;
        let claims = data.claims;
        if claims
            .max_rate_hz
            .is_some_and(|r| !(r.is_finite() && r > 0.0))
        {
            return Err(AuthError::Invalid("max_rate_hz must be a positive number"));
        }
        Ok(Grant {
            subject: claims.sub.unwrap_or_else(|| "token".into()),
            entitlements: Entitlements {
                symbols: claims.symbols,
                max_rate_hz: claims.max_rate_hz,
                max_subscriptions: claims.max_subscriptions,
            },
            // The leeway that admitted the token also extends its life.
            expires_at: claims.exp.map(|exp| exp.saturating_add(self.leeway_secs)),
        })
    }
}

/// A short, credential-free reason for a verification failure.
fn classify(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
        ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience"),
        ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer"),
        ErrorKind::InvalidAlgorithm => AuthError::Invalid("wrong algorithm"),
        ErrorKind::MissingRequiredClaim(claim) => AuthError::Invalid(missing(claim)),
        ErrorKind::Json(_) => AuthError::Invalid("claims are malformed"),
        _ => AuthError::Invalid("not a valid token or API key"),
    }
}

/// A missing claim by name (the reason is `'static`: never built from the token).
fn missing(claim: &str) -> &'static str {
    match claim {
        "exp" => "the token has no exp claim",
        "aud" => "the token has no aud claim",
        "iss" => "the token has no iss claim",
        _ => "a required claim is missing",
    }
}

/// The credential a request presents: `Authorization: Bearer`, then the
/// `token` query parameter, then a `bearer.` WebSocket subprotocol entry.
pub fn credential<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    // An empty one at any place is no credential, and the next place is looked at.
    let given = |c: &&str| !c.is_empty();
    bearer
        .filter(given)
        .or(query_token.filter(given))
        .or_else(|| {
            subprotocols(headers)
                .filter_map(|p| p.strip_prefix(SUBPROTOCOL_PREFIX))
                .find(given)
        })
}

/// Every entry of the request's `Sec-WebSocket-Protocol` headers.
pub fn subprotocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn hs256(audience: Option<&str>, issuer: Option<&str>) -> Authenticator {
        let config = AuthConfig {
            jwt: Some(JwtConfig {
                key: JwtKey::Hs256(b"test secret".to_vec()),
                audience: audience.map(str::to_owned),
                issuer: issuer.map(str::to_owned),
                leeway_secs: 0,
            }),
            api_keys: None,
        };
        Authenticator::new(&config).unwrap_or_else(|_| Authenticator::disabled())
    }

    fn mint(claims: &mint::TokenClaims) -> String {
        mint::mint(claims, &mint::SigningKey::Hs256(b"test secret".to_vec())).unwrap_or_default()
    }

    fn claims(exp_from_now: i64) -> mint::TokenClaims {
        mint::TokenClaims {
            sub: "alice".into(),
            exp: crate::wall_clock_ns() / 1_000_000_000 + exp_from_now,
            nbf: None,
            aud: None,
            iss: None,
            symbols: vec![SymbolPattern::new("spot:*")],
            max_rate_hz: Some(2.0),
            max_subscriptions: None,
        }
    }

    #[test]
    fn a_valid_token_grants_its_claims() {
        let auth = hs256(None, None);
        assert!(auth.enabled());
        let grant = auth.authenticate(Some(&mint(&claims(60))));
        let grant = grant.unwrap_or_else(|_| Grant::unrestricted());
        assert_eq!(grant.subject, "alice");
        assert!(grant.entitlements.allows("spot:BTCUSDT"));
        assert!(!grant.entitlements.allows("usdm:BTCUSDT"));
        assert_eq!(grant.entitlements.max_rate_hz, Some(2.0));
    }

    #[test]
    fn expired_immature_forged_and_misaddressed_tokens_are_refused() {
        let auth = hs256(Some("tickwire"), Some("issuer"));
        let mut good = claims(60);
        good.aud = Some("tickwire".into());
        good.iss = Some("issuer".into());
        assert!(auth.authenticate(Some(&mint(&good))).is_ok());

        let expired = mint::TokenClaims {
            exp: good.exp - 120,
            ..good.clone()
        };
        assert_eq!(
            auth.authenticate(Some(&mint(&expired))),
            Err(AuthError::Expired)
        );
        let immature = mint::TokenClaims {
            nbf: Some(good.exp),
            ..good.clone()
        };
        assert_eq!(
            auth.authenticate(Some(&mint(&immature))),
            Err(AuthError::NotYetValid)
        );
        let audience = mint::TokenClaims {
            aud: Some("other".into()),
            ..good.clone()
        };
        assert_eq!(
            auth.authenticate(Some(&mint(&audience))),
            Err(AuthError::Invalid("wrong audience"))
        );
        for (missing, claims) in [
            (
                "the token has no iss claim",
                mint::TokenClaims {
                    iss: None,
                    ..good.clone()
                },
            ),
            (
                "the token has no aud claim",
                mint::TokenClaims {
                    aud: None,
                    ..good.clone()
                },
            ),
        ] {
            assert_eq!(
                auth.authenticate(Some(&mint(&claims))),
                Err(AuthError::Invalid(missing))
            );
        }
        // No `exp` at all: signed by hand, as the minting claims always have one.
        let no_expiry = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "alice", "aud": "tickwire", "iss": "issuer"}),
            &jsonwebtoken::EncodingKey::from_secret(b"test secret"),
        )
        .unwrap_or_default();
        assert_eq!(
            auth.authenticate(Some(&no_expiry)),
            Err(AuthError::Invalid("the token has no exp claim"))
        );
        // An `nbf` that is not a whole number is not skipped.
        let exp = good.exp;
        for nbf in [
            serde_json::json!("0"),
            serde_json::json!(18446744073709551615u64),
        ] {
            let odd_nbf = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::HS256),
                &serde_json::json!({"aud": "tickwire", "iss": "issuer", "exp": exp, "nbf": nbf}),
                &jsonwebtoken::EncodingKey::from_secret(b"test secret"),
            )
            .unwrap_or_default();
            assert_eq!(
                auth.authenticate(Some(&odd_nbf)),
                Err(AuthError::Invalid("claims are malformed")),
                "{nbf}"
            );
        }
        let forged = mint::mint(&good, &mint::SigningKey::Hs256(b"other".to_vec()));
        assert_eq!(
            auth.authenticate(forged.ok().as_deref()),
            Err(AuthError::Invalid("bad signature"))
        );
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        assert!(auth.authenticate(Some("not.a.token")).is_err());
    }

    #[test]
    fn a_leeway_beyond_any_clock_skew_is_refused_at_setup() {
        let with_leeway = |leeway_secs| {
            Authenticator::new(&AuthConfig {
                jwt: Some(JwtConfig {
                    key: JwtKey::Hs256(b"test secret".to_vec()),
                    audience: None,
                    issuer: None,
                    leeway_secs,
                }),
                api_keys: None,
            })
        };
        let auth = with_leeway(MAX_LEEWAY_SECS).unwrap_or_else(|_| Authenticator::disabled());
        assert!(auth.enabled());
        assert!(auth.authenticate(Some(&mint(&claims(60)))).is_ok());
        // `now - leeway` in the verifier would go below zero: every token
        // would read as expired, or the check would panic.
        let refused = with_leeway(u64::MAX).map(|_| ()).map_err(|e| e.to_string());
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("leeway")),
            "{refused:?}"
        );
    }

    #[test]
    fn debug_output_names_keys_without_their_bytes() {
        let config = AuthConfig {
            jwt: Some(JwtConfig {
                key: JwtKey::Hs256(b"super secret".to_vec()),
                audience: None,
                issuer: None,
                leeway_secs: 0,
            }),
            api_keys: None,
        };
        let shown = format!("{config:?}");
        assert!(shown.contains("Hs256(..)"), "{shown}");
        let secret_bytes = format!("{:?}", b"super secret".to_vec());
        assert!(!shown.contains(&secret_bytes[1..10]), "{shown}");
    }

    #[test]
    fn disabled_auth_grants_everything() {
        let auth = Authenticator::disabled();
        assert!(!auth.enabled());
        assert_eq!(auth.authenticate(None), Ok(Grant::unrestricted()));
    }

    #[test]
    fn credentials_come_from_header_query_or_subprotocol() {
        let mut headers = HeaderMap::new();
        assert_eq!(credential(&headers, None), None);
        assert_eq!(credential(&headers, Some("q")), Some("q"));
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("tickwire.v1, bearer.abc.def.ghi"),
        );
        assert_eq!(credential(&headers, None), Some("abc.def.ghi"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer h"));
        assert_eq!(credential(&headers, Some("q")), Some("h"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(credential(&headers, None), Some("abc.def.ghi"));
        // An empty credential hides none behind it.
        assert_eq!(credential(&headers, Some("")), Some("abc.def.ghi"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(credential(&headers, Some("q")), Some("q"));
    }
}
