//! Command-line flags for authentication, limits and TLS on `tickwire serve`,
//! and `tickwire token`, which mints a token for local testing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use crate::auth::mint::{self, SigningKey, TokenClaims};
use crate::auth::{AuthConfig, AuthSetupError, Authenticator, JwtConfig, JwtKey, SymbolPattern};
use crate::limits::{LimitsConfig, RateConfig};
use crate::server::ServerConfig;
use crate::session::SessionConfig;

/// Public-key JWT algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyAlgorithm {
    Rs256,
    Eddsa,
}

/// Authentication and abuse limits of `tickwire serve`.
#[derive(Debug, Args)]
pub struct SecurityArgs {
    /// Require JWTs signed with this HS256 secret (the file's bytes; one
    /// trailing newline is ignored).
    #[arg(long, value_name = "FILE", conflicts_with = "jwt_public_key")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Require JWTs signed by this public key (PEM; see --jwt-algorithm).
    #[arg(long, value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// Algorithm of --jwt-public-key.
    #[arg(long, value_enum, default_value = "rs256")]
    pub jwt_algorithm: KeyAlgorithm,
    /// Tokens must carry this `aud`.
    #[arg(long)]
    pub jwt_audience: Option<String>,
    /// Tokens must carry this `iss`.
    #[arg(long)]
    pub jwt_issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, seconds (at most a day).
    #[arg(long, default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=crate::auth::MAX_LEEWAY_SECS))]
    pub jwt_leeway_secs: u64,
    /// Accept the static API keys of this TOML file (SHA-256 digests with entitlements).
    #[arg(long, value_name = "FILE")]
    pub api_keys: Option<PathBuf>,
    /// Most WebSocket and SSE connections from one IP address (0: no limit);
    /// also, apart, its sockets not yet handed to a WebSocket session.
    #[arg(long, default_value_t = LimitsConfig::default().max_connections_per_ip)]
    pub max_connections_per_ip: usize,
    /// Browser origins allowed to connect (repeat), each as a browser sends
    /// it: SCHEME://HOST or SCHEME://HOST:PORT, no path; default: any.
    #[arg(long = "allowed-origin", value_name = "ORIGIN", value_parser = crate::limits::parse_origin)]
    pub allowed_origins: Vec<String>,
    /// Sustained client messages per second per connection.
    #[arg(long, default_value_t = RateConfig::default().per_second,
          value_parser = super::positive_number)]
    pub max_messages_per_sec: f64,
    /// Client messages allowed in one burst (at least 1).
    #[arg(long, default_value_t = RateConfig::default().burst,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub message_burst: u32,
    /// Messages refused with `rate_limited` before closing with 1008.
    #[arg(long, default_value_t = RateConfig::default().max_strikes)]
    pub rate_limit_strikes: u32,
    /// Close a connection that has had no subscription for this many seconds.
    #[arg(long, default_value_t = SessionConfig::default().idle_timeout.as_secs(),
          value_parser = super::timeout_secs())]
    pub idle_timeout_secs: u64,
    /// Seconds a client has to send its complete request head (slowloris).
    #[arg(long, default_value_t = ServerConfig::default().header_timeout.as_secs(),
          value_parser = super::timeout_secs())]
    pub handshake_timeout_secs: u64,
    /// Largest request head in bytes, from 8,192 (the HTTP parser's
    /// smallest buffer) to 1,048,576.
    #[arg(long, default_value_t = ServerConfig::default().max_header_bytes,
          value_parser = header_bytes())]
    pub max_header_bytes: usize,
    /// Serve https:// and wss:// with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// `--max-header-bytes`: hyper's HTTP/1 parser needs a buffer of at least
/// 8 KiB, so a smaller limit cannot be kept and is refused, not raised.
fn header_bytes() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(8 * 1024..=1024 * 1024)
}

impl SecurityArgs {
    /// Applies the flags to a server configuration.
    pub fn apply(&self, config: &mut ServerConfig) -> anyhow::Result<()> {
        let key = match (&self.jwt_secret_file, &self.jwt_public_key) {
            (Some(path), _) => Some(JwtKey::Hs256(read_secret(path)?)),
            (None, Some(path)) => {
                let pem = read_settings_file(path)?;
                Some(match self.jwt_algorithm {
                    KeyAlgorithm::Rs256 => JwtKey::Rs256Pem(pem),
                    KeyAlgorithm::Eddsa => JwtKey::EdDsaPem(pem),
                })
            }
            (None, None) => None,
        };
        let auth = AuthConfig {
            jwt: key.map(|key| JwtConfig {
                key,
                audience: self.jwt_audience.clone(),
                issuer: self.jwt_issuer.clone(),
                leeway_secs: self.jwt_leeway_secs,
            }),
            api_keys: self.api_keys.clone(),
        };
        let authenticator =
            Authenticator::new(&auth).map_err(|e| match (&e, &self.jwt_public_key) {
                (AuthSetupError::JwtKey(_), Some(path)) => {
                    anyhow::anyhow!("{}: {e}", path.display())
                }
                _ => e.into(),
            })?;
        config.auth = Arc::new(authenticator);
        if auth.api_keys.is_some() && !config.auth.enabled() {
            anyhow::bail!("the API key file lists no keys");
        }
        config.limits = LimitsConfig {
            max_connections_per_ip: self.max_connections_per_ip,
            allowed_origins: self.allowed_origins.clone(),
        };
        config.session.message_rate = RateConfig {
            per_second: self.max_messages_per_sec,
            burst: self.message_burst,
            max_strikes: self.rate_limit_strikes,
        };
        config.session.idle_timeout = Duration::from_secs(self.idle_timeout_secs);
        config.header_timeout = Duration::from_secs(self.handshake_timeout_secs);
        config.max_header_bytes = self.max_header_bytes;
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.tls = Some(crate::server::tls::server_config(cert, key)?);
        }
        Ok(())
    }
}

/// `tickwire token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Sign with this HS256 secret (the file's bytes; one trailing newline is ignored).
    #[arg(long, value_name = "FILE", required_unless_present = "private_key")]
    pub secret_file: Option<PathBuf>,
    /// Sign with this private key (PEM; RS256 or Ed25519 PKCS#8, see --algorithm).
    #[arg(long, value_name = "FILE", conflicts_with = "secret_file")]
    pub private_key: Option<PathBuf>,
    /// Algorithm of --private-key.
    #[arg(long, value_enum, default_value = "rs256")]
    pub algorithm: KeyAlgorithm,
    /// The `sub` claim: who the token is for.
    #[arg(long, default_value = "local")]
    pub sub: String,
    /// Symbol patterns the holder may see, comma-separated (`spot:*`, `usdm:BTCUSDT`, `*`).
    #[arg(long, value_delimiter = ',', required = true,
          value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub symbols: Vec<String>,
    /// Seconds until the token expires (at least 1: a token that is expired
    /// when minted is of no use).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl_secs: u64,
    /// Audience (`aud`), for a server started with `--jwt-audience`.
    #[arg(long)]
    pub aud: Option<String>,
    /// Issuer (`iss`), for a server started with `--jwt-issuer`.
    #[arg(long)]
    pub iss: Option<String>,
    /// Cap on updates per second per symbol.
    #[arg(long, value_parser = super::positive_number)]
    pub max_rate_hz: Option<f64>,
    /// Cap on subscriptions at once.
    #[arg(long)]
    pub max_subscriptions: Option<usize>,
}

/// Prints a token signed as `args` say.
pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    let key = match (&args.secret_file, &args.private_key) {
        (Some(path), _) => SigningKey::Hs256(read_secret(path)?),
        (None, Some(path)) => {
            let pem = read_settings_file(path)?;
            match args.algorithm {
                KeyAlgorithm::Rs256 => SigningKey::Rs256Pem(pem),
                KeyAlgorithm::Eddsa => SigningKey::EdDsaPem(pem),
            }
        }
        (None, None) => anyhow::bail!("give --secret-file or --private-key"),
    };
    let now = crate::wall_clock_ns() / 1_000_000_000;
    let claims = TokenClaims {
        sub: args.sub,
        exp: now.saturating_add(i64::try_from(args.ttl_secs).unwrap_or(i64::MAX)),
        nbf: None,
        aud: args.aud,
        iss: args.iss,
        symbols: args.symbols.into_iter().map(SymbolPattern::new).collect(),
        max_rate_hz: args.max_rate_hz,
        max_subscriptions: args.max_subscriptions,
    };
    let token = mint::mint(&claims, &key).map_err(|e| match (&args.private_key, &key) {
        // jsonwebtoken names only the kind (`InvalidKeyFormat`): say what was expected.
        (Some(path), SigningKey::Rs256Pem(_)) => anyhow::anyhow!(
            "{}: not an RS256 private key in PEM (-----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)",
            path.display()
        ),
        (Some(path), _) => anyhow::anyhow!(
            "{}: not an Ed25519 private key in PEM (-----BEGIN PRIVATE KEY-----)",
            path.display()
        ),
        (None, _) => anyhow::anyhow!("cannot sign the token: {e}"),
    })?;
    println!("{token}");
    Ok(())
}

/// The bytes of a key or secret file.
fn read_settings_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    crate::files::read_settings_bytes(path)
        .with_context(|| format!("cannot read {}", path.display()))
}

/// A secret file's bytes without the newline an editor or `echo` leaves.
fn read_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut secret = read_settings_file(path)?;
    if secret.last() == Some(&b'\n') {
        secret.pop();
        if secret.last() == Some(&b'\r') {
            secret.pop();
        }
    }
    anyhow::ensure!(!secret.is_empty(), "{} is empty", path.display());
    if secret.len() < MIN_HS256_SECRET_BYTES {
        // Refusing it would lock out deployments that work; a short shared
        // secret can be guessed offline from any one token, though.
        tracing::warn!(
            "{} holds {} bytes: an HS256 secret shorter than {MIN_HS256_SECRET_BYTES} \
             (RFC 7518, section 3.2) can be found from a single token by trying \
             secrets offline; e.g. `head -c 32 /dev/urandom | base64 > FILE`",
            path.display(),
            secret.len()
        );
    }
    Ok(secret)
}

/// The size of HS256's hash, the least RFC 7518 allows for its key.
const MIN_HS256_SECRET_BYTES: usize = 32;
