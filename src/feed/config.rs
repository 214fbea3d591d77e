//! Feed files: one TOML file per feed in `feeds/`. `kind` picks the feed:
//!
//! ```toml
//! name = "binance-sample"
//! kind = "replay"      # replay | binance | coinbase | synthetic
//! speed = 1            # a factor of recorded time (1, 0.5, "10"), or "max"
//! loop = true
//! max_gap_ms = 5000
//! max_book_levels = 10000  # per side of each depth book; the worst beyond are dropped
//!
//! [[files]]
//! path = "../replay-data/binance-spot-btcusdt-20240808.gz"
//! prefix = "spot"      # served as spot:BTCUSDT
//! ```
//!
//! ```toml
//! name = "binance-usdm"
//! kind = "binance"
//! url = "wss://fstream.binance.com/stream?streams=btcusdt@bookTicker/btcusdt@trade/btcusdt@depth@100ms"
//! prefix = "usdm"
//! stale_after_ms = 5000
//! # With `@depth` streams: where each symbol's book snapshot is fetched.
//! depth_snapshot_url = "https://fapi.binance.com/fapi/v1/depth?symbol={symbol}&limit=1000"
//! ```
//!
//! Relative paths are resolved against the directory of the TOML file, so a feed
//! file works from any working directory. Unknown keys are errors, reported with
//! the file, line and key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::live::{Backoff, LiveConfig, Venue};
use super::replay::{ReplayConfig, ReplayInput, ReplaySource, Speed};
use super::synthetic::{Mode, SyntheticConfig, SyntheticFeedConfig};
use crate::book::depth::DEFAULT_MAX_BOOK_LEVELS;

/// A feed, as a feed file describes it.
#[derive(Clone, Debug)]
pub enum FeedConfig {
    Replay(ReplayConfig),
    Live(LiveConfig),
    Synthetic(SyntheticFeedConfig),
}

impl FeedConfig {
    /// The feed's name.
    pub fn name(&self) -> &str {
        match self {
            FeedConfig::Replay(config) => &config.name,
            FeedConfig::Live(config) => &config.name,
            FeedConfig::Synthetic(config) => &config.name,
        }
    }
}

/// Why a feed file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read feed file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid feed file {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// Just the `kind`, read first so the rest is checked against that kind's
/// fields (and toml can point at the line of an unknown one).
#[derive(Debug, Deserialize)]
struct Kind {
    kind: toml::Spanned<String>,
}

/// `speed` as written: a number, or a string holding one or `max`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SpeedValue {
    Number(f64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayFile {
    name: Option<String>,
    #[allow(dead_code)] // Read by `Kind`.
    kind: String,
    speed: Option<toml::Spanned<SpeedValue>>,
    #[serde(default, rename = "loop")]
    looped: bool,
    #[serde(default = "default_max_gap_ms")]
    max_gap_ms: u64,
    #[serde(default = "default_max_book_levels")]
    max_book_levels: usize,
    files: Vec<FileEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    path: PathBuf,
    prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LiveFile {
    name: Option<String>,
    #[allow(dead_code)] // Read by `Kind`.
    kind: String,
    url: toml::Spanned<String>,
    /// Binance: derived from the URL's streams when absent.
    #[serde(default)]
    symbols: Vec<String>,
    /// Binance: where each symbol's depth snapshot is fetched (`{symbol}`
    /// stands for its name), so that the URL's `@depth` diffs keep a book.
    depth_snapshot_url: Option<toml::Spanned<String>>,
    /// Coinbase: the products to subscribe to.
    #[serde(default)]
    products: Vec<String>,
    /// Coinbase: the channels to subscribe to.
    #[serde(default = "default_coinbase_channels")]
    channels: Vec<String>,
    prefix: Option<String>,
    #[serde(default)]
    rename: HashMap<String, String>,
    #[serde(default = "default_stale_after_ms")]
    stale_after_ms: u64,
    #[serde(default = "default_backoff_initial_ms")]
    backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    backoff_max_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    connect_timeout_ms: u64,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyntheticFile {
    name: Option<String>,
    #[allow(dead_code)] // Read by `Kind`.
    kind: String,
    /// Number of symbols.
    symbols: toml::Spanned<usize>,
    /// Average updates per second over all symbols.
    rate: toml::Spanned<f64>,
    /// `steady` or `bursty`.
    #[serde(default = "default_mode")]
    mode: String,
    #[serde(default = "default_burst_period_ms")]
    burst_period_ms: u64,
    #[serde(default = "default_burst_duty")]
    burst_duty: f64,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default = "default_symbol_prefix")]
    symbol_prefix: String,
    #[serde(default = "default_trade_every")]
    trade_every: u32,
}

fn default_mode() -> String {
    "steady".into()
}

fn default_burst_period_ms() -> u64 {
    1_000
}

fn default_burst_duty() -> f64 {
    0.1
}

fn default_seed() -> u64 {
    1
}

fn default_symbol_prefix() -> String {
    "SYN".into()
}

fn default_trade_every() -> u32 {
    10
}

/// Default for the longest silence a replay plays out in full.
pub const DEFAULT_MAX_GAP: Duration = Duration::from_secs(5);

/// Default replay speed: recorded time.
pub const DEFAULT_SPEED: Speed = Speed::Factor(1.0);

fn default_max_gap_ms() -> u64 {
    DEFAULT_MAX_GAP.as_millis() as u64
}

fn default_max_book_levels() -> usize {
    DEFAULT_MAX_BOOK_LEVELS
}

fn default_coinbase_channels() -> Vec<String> {
    vec!["ticker".into(), "matches".into(), "heartbeat".into()]
}

fn default_stale_after_ms() -> u64 {
    5_000
}

fn default_backoff_initial_ms() -> u64 {
    Backoff::default().initial.as_millis() as u64
}

fn default_backoff_max_ms() -> u64 {
    Backoff::default().max.as_millis() as u64
}

fn default_connect_timeout_ms() -> u64 {
    10_000
}

/// Reads and validates a feed file.
pub fn load(path: &Path) -> Result<FeedConfig, ConfigError> {
    let text = crate::files::read_settings(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })?;
    parse(&text, path)
}

/// Parses feed-file text; `path` names it in errors and anchors relative paths.
pub fn parse(text: &str, path: &Path) -> Result<FeedConfig, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_owned(),
        message,
    };
    // toml's messages name the line, column and key at fault.
    let kind: Kind = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let default_name = || {
        path.file_stem()
            .map_or_else(|| "feed".into(), |s| s.to_string_lossy().into_owned())
    };
    // Where toml's own messages cannot help: the line a value is on.
    let line_of = |span: std::ops::Range<usize>| {
        1 + text
            .get(..span.start)
            .map_or(0, |before| before.matches('\n').count())
    };
    match kind.kind.get_ref().as_str() {
        "replay" => {
            let file: ReplayFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
            let speed = match &file.speed {
                None => DEFAULT_SPEED,
                Some(value) => match value.get_ref() {
                    // Debug keeps `1e300` short where Display writes every digit.
                    SpeedValue::Number(factor) => format!("{factor:?}"),
                    SpeedValue::Text(text) => text.clone(),
                }
                .parse()
                .map_err(|e: String| {
                    invalid(format!("line {}, field `speed`: {e}", line_of(value.span())))
                })?,
            };
            if file.max_book_levels == 0 {
                return Err(invalid(
                    "field `max_book_levels`: a book needs at least one level per side".into(),
                ));
            }
            if file.files.is_empty() {
                return Err(invalid(
                    "field `files`: a replay feed needs at least one file".into(),
                ));
            }
            let sources = file
                .files
                .into_iter()
                .map(|entry| ReplaySource {
                    prefix: entry.prefix.filter(|p| !p.is_empty()),
                    input: ReplayInput::Path(base.join(entry.path)),
                })
                .collect();
            Ok(FeedConfig::Replay(ReplayConfig {
                name: file.name.unwrap_or_else(default_name),
                sources,
                speed,
                looped: file.looped,
                max_gap: Duration::from_millis(file.max_gap_ms),
                start_paused: false,
                max_book_levels: file.max_book_levels,
            }))
        }
        "binance" | "coinbase" => {
            let file: LiveFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
            let venue = if kind.kind.get_ref() == "binance" {
                if !file.products.is_empty() {
                    return Err(invalid("field `products` is for coinbase feeds; binance streams are chosen in the URL".into()));
                }
                if let Some(template) = &file.depth_snapshot_url {
                    super::rest::check_template(template.get_ref())
                        .and_then(|()| check_depth_streams(file.url.get_ref()))
                        .map_err(|e| {
                            invalid(format!(
                                "line {}, field `depth_snapshot_url`: {e}",
                                line_of(template.span())
                            ))
                        })?;
                }
                Venue::Binance {
                    depth_snapshot_url: file.depth_snapshot_url.map(toml::Spanned::into_inner),
                }
            } else {
                if file.depth_snapshot_url.is_some() {
                    return Err(invalid("field `depth_snapshot_url` is for binance feeds; a coinbase feed gets its book's snapshot on the stream (channel `level2_batch`)".into()));
                }
                if file.products.is_empty() {
                    return Err(invalid(
                        "field `products`: a coinbase feed needs at least one product".into(),
                    ));
                }
                Venue::Coinbase {
                    products: file.products.clone(),
                    channels: file.channels.clone(),
                }
            };
            let url = file.url.get_ref();
            // Checked again when the feed starts; here the line can be named.
            if !super::live::is_websocket_url(url) {
                return Err(invalid(format!(
                    "line {}, field `url`: must start with ws:// or wss://, not {url:?}",
                    line_of(file.url.span())
                )));
            }
            let symbols = match &venue {
                Venue::Binance { .. } if file.symbols.is_empty() => binance_stream_symbols(url),
                Venue::Binance { .. } => file.symbols,
                Venue::Coinbase { products, .. } => products.clone(),
            };
            if symbols.is_empty() {
                return Err(invalid(format!(
                    "line {}, field `url`: names no streams (`.../stream?streams=btcusdt@bookTicker`), and no `symbols` are given",
                    line_of(file.url.span())
                )));
            }
            if file.stale_after_ms == 0
                || file.backoff_initial_ms == 0
                || file.backoff_max_ms < file.backoff_initial_ms
            {
                return Err(invalid(
                    "fields `stale_after_ms`, `backoff_initial_ms` must be positive and `backoff_max_ms` ≥ `backoff_initial_ms`".into(),
                ));
            }
            Ok(FeedConfig::Live(LiveConfig {
                name: file.name.unwrap_or_else(default_name),
                venue,
                url: file.url.into_inner(),
                symbols,
                prefix: file.prefix.filter(|p| !p.is_empty()),
                rename: file.rename,
                stale_after: Duration::from_millis(file.stale_after_ms),
                backoff: Backoff {
                    initial: Duration::from_millis(file.backoff_initial_ms),
                    max: Duration::from_millis(file.backoff_max_ms),
                },
                connect_timeout: Duration::from_millis(file.connect_timeout_ms.max(1)),
                ca_file: file.ca_file.map(|ca| base.join(ca)),
            }))
        }
        "synthetic" => {
            let file: SyntheticFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
            let mode = match file.mode.as_str() {
                "steady" => Mode::Steady,
                "bursty" => Mode::Bursty {
                    period_ms: file.burst_period_ms,
                    duty: file.burst_duty,
                },
                other => {
                    return Err(invalid(format!(
                        "field `mode`: {other:?} is neither \"steady\" nor \"bursty\""
                    )))
                }
            };
            let generator = SyntheticConfig {
                symbols: *file.symbols.get_ref(),
                rate_per_sec: *file.rate.get_ref(),
                mode,
                seed: file.seed,
                symbol_prefix: file.symbol_prefix,
                trade_every: file.trade_every,
                start_ns: 0,
            };
            // The rule in the file's own terms: its key, and its line where
            // the key is required (and so always written).
            generator.validate().map_err(|e| {
                let (key, line) = match e.field {
                    "symbols" => ("symbols", Some(line_of(file.symbols.span()))),
                    "rate_per_sec" => ("rate", Some(line_of(file.rate.span()))),
                    "period_ms" => ("burst_period_ms", None),
                    "duty" => ("burst_duty", None),
                    other => (other, None),
                };
                let at = line.map_or_else(String::new, |line| format!("line {line}, "));
                invalid(format!("{at}field `{key}` {}", e.rule))
            })?;
            Ok(FeedConfig::Synthetic(SyntheticFeedConfig {
                name: file.name.unwrap_or_else(default_name),
                generator,
            }))
        }
        other => Err(invalid(format!(
            "line {}, field `kind`: unknown feed kind {other:?} (expected replay, binance, coinbase or synthetic)",
            line_of(kind.kind.span())
        ))),
    }
}

/// The stream names of a Binance URL: a combined stream's
/// (`/stream?streams=a@x/b@y`) or a raw stream's (`/ws/a@x`).
fn binance_streams(url: &str) -> impl Iterator<Item = &str> {
    let streams = match url.split_once("streams=") {
        Some((_, query)) => query.split('&').next().unwrap_or(""),
        None => url.rsplit('/').next().unwrap_or(""),
    };
    streams.split('/')
}

/// That a Binance URL with a depth snapshot URL carries diff streams
/// (`<symbol>@depth` or `<symbol>@depth@100ms`) and no partial-book ones
/// (`<symbol>@depth20`: the top levels, not diffs, which would corrupt a
/// book they were applied to).
fn check_depth_streams(url: &str) -> Result<(), String> {
    let mut diffs = 0;
    for stream in binance_streams(url) {
        let Some(rest) = stream
            .split_once('@')
            .and_then(|(_, kind)| kind.strip_prefix("depth"))
        else {
            continue;
        };
        let every_ms = rest.strip_prefix('@').and_then(|s| s.strip_suffix("ms"));
        let is_number = |ms: &str| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit());
        if !(rest.is_empty() || every_ms.is_some_and(is_number)) {
            return Err(format!(
                "stream `{stream}` is not a diff stream (a partial book, its top levels only); use `<symbol>@depth@100ms` or `<symbol>@depth`"
            ));
        }
        diffs += 1;
    }
    if diffs == 0 {
        return Err("the book needs the depth diffs too: add `<symbol>@depth@100ms` (or `@depth`) to the URL's streams".into());
    }
    Ok(())
}

/// The symbols a Binance stream URL names: `...streams=btcusdt@bookTicker/ethusdt@trade`
/// or `/ws/btcusdt@bookTicker` → `BTCUSDT`, `ETHUSDT`.
pub fn binance_stream_symbols(url: &str) -> Vec<String> {
    let mut symbols: Vec<String> = Vec::new();
    for stream in binance_streams(url) {
        if let Some((symbol, _)) = stream.split_once('@') {
            let symbol = symbol.to_ascii_uppercase();
            if !symbol.is_empty() && !symbols.contains(&symbol) {
                symbols.push(symbol);
            }
        }
    }
    symbols
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_file_resolves_paths_next_to_itself() {
        let text = "kind = \"replay\"\nspeed = \"max\"\nloop = true\n\n[[files]]\npath = \"../replay-data/a.gz\"\nprefix = \"spot\"\n";
        let config = parse(text, Path::new("feeds/sample.toml")).map_err(|e| e.to_string());
        let Ok(FeedConfig::Replay(config)) = config else {
            panic!("{config:?}");
        };
        assert_eq!(
            (config.name.as_str(), config.speed, config.looped),
            ("sample", Speed::Max, true)
        );
        assert_eq!(config.max_book_levels, DEFAULT_MAX_BOOK_LEVELS);
        let Some(ReplaySource {
            input: ReplayInput::Path(path),
            ..
        }) = config.sources.first()
        else {
            panic!("one file");
        };
        assert_eq!(path, Path::new("feeds/../replay-data/a.gz"));
    }

    #[test]
    fn live_feeds_take_their_symbols_from_the_url_or_the_products() {
        let text = "kind = \"binance\"\nurl = \"wss://h/stream?streams=btcusdt@bookTicker/ethusdt@trade/btcusdt@trade\"\nprefix = \"usdm\"\n";
        let Ok(FeedConfig::Live(config)) = parse(text, Path::new("feeds/b.toml")) else {
            panic!("binance feed");
        };
        assert_eq!(config.symbols, ["BTCUSDT", "ETHUSDT"]);
        assert_eq!(config.served_name("BTCUSDT"), "usdm:BTCUSDT");

        let text = "kind = \"coinbase\"\nurl = \"wss://h\"\nproducts = [\"BTC-USD\"]\n";
        let Ok(FeedConfig::Live(config)) = parse(text, Path::new("c.toml")) else {
            panic!("coinbase feed");
        };
        assert_eq!(config.symbols, ["BTC-USD"]);
        assert!(matches!(config.venue, Venue::Coinbase { .. }));

        let text = "kind = \"coinbase\"\nurl = \"wss://h\"\n";
        let message = parse(text, Path::new("c.toml"))
            .map(|_| ())
            .err()
            .map(|e| e.to_string());
        assert!(message.unwrap_or_default().contains("`products`"));
        let text = "kind = \"kafka\"\n";
        let message = parse(text, Path::new("k.toml"))
            .map(|_| ())
            .err()
            .map(|e| e.to_string());
        assert!(message.unwrap_or_default().contains("unknown feed kind"));
    }

    #[test]
    fn a_binance_depth_snapshot_url_names_the_symbol_and_comes_with_the_diffs() {
        let file = |url: &str, snapshot: &str| {
            format!("kind = \"binance\"\nurl = \"{url}\"\ndepth_snapshot_url = \"{snapshot}\"\n")
        };
        let streams = "wss://h/stream?streams=btcusdt@bookTicker/btcusdt@depth@100ms";
        let rest = "https://api.binance.com/api/v3/depth?symbol={symbol}&limit=1000";
        let parsed = parse(&file(streams, rest), Path::new("b.toml"));
        let Ok(FeedConfig::Live(config)) = parsed else {
            panic!("binance feed with depth");
        };
        assert_eq!(
            config.venue,
            Venue::Binance {
                depth_snapshot_url: Some(rest.into())
            }
        );
        let error = |text: &str| {
            parse(text, Path::new("b.toml"))
                .map(|_| ())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let no_diffs = error(&file("wss://h/stream?streams=btcusdt@bookTicker", rest));
        assert!(
            no_diffs.contains("line 3") && no_diffs.contains("@depth"),
            "{no_diffs}"
        );
        let partial = error(&file(
            "wss://h/stream?streams=btcusdt@depth@100ms/ethusdt@depth20@100ms",
            rest,
        ));
        assert!(partial.contains("`ethusdt@depth20@100ms`"), "{partial}");
        for good in [
            "wss://h/ws/btcusdt@depth",
            "wss://h/stream?streams=a@depth@250ms/b@trade",
        ] {
            assert_eq!(error(&file(good, rest)), "", "{good}");
        }
        let no_symbol = error(&file(streams, "https://h/depth?symbol=BTCUSDT"));
        assert!(no_symbol.contains("{symbol}"), "{no_symbol}");
        let not_http = error(&file(streams, "ftp://h/{symbol}"));
        assert!(not_http.contains("http://"), "{not_http}");
        let coinbase = error(&format!(
            "kind = \"coinbase\"\nurl = \"wss://h\"\nproducts = [\"BTC-USD\"]\ndepth_snapshot_url = \"{rest}\"\n"
        ));
        assert!(coinbase.contains("level2_batch"), "{coinbase}");
    }

    #[test]
    fn speed_is_a_number_or_a_string() {
        let speed = |value: &str| {
            let text = format!("kind = \"replay\"\nspeed = {value}\n[[files]]\npath = \"a\"\n");
            match parse(&text, Path::new("x.toml")) {
                Ok(FeedConfig::Replay(config)) => Some(config.speed),
                _ => None,
            }
        };
        assert_eq!(speed("10"), Some(Speed::Factor(10.0)));
        assert_eq!(speed("0.5"), Some(Speed::Factor(0.5)));
        assert_eq!(speed("\"10\""), Some(Speed::Factor(10.0)));
        assert_eq!(speed("\"max\""), Some(Speed::Max));
        assert_eq!(speed("0"), None);
        assert_eq!(speed("true"), None);
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let text = "kind = \"replay\"\nsped = \"max\"\n[[files]]\npath = \"a\"\n";
        let error = parse(text, Path::new("feeds/bad.toml"))
            .map(|_| ())
            .map_err(|e| e.to_string());
        let message = error.err().unwrap_or_default();
        assert!(message.contains("feeds/bad.toml"), "{message}");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("sped"), "{message}");

        // Rules checked after toml has read the file, in the file's own terms.
        let files = "[[files]]\npath = \"a\"\n";
        for (text, expected) in [
            (format!("kind = \"replay\"\nspeed = \"fast\"\n{files}"), "line 2, field `speed`"),
            ("name = \"k\"\nkind = \"kafka\"\n".into(), "line 2, field `kind`"),
            (format!("kind = \"replay\"\nmax_book_levels = 0\n{files}"), "field `max_book_levels`"),
            ("kind = \"synthetic\"\nsymbols = 3\nrate = -1.0\n".into(), "line 3, field `rate` must be"),
            ("kind = \"synthetic\"\nsymbols = 0\nrate = 1.0\n".into(), "line 2, field `symbols` must be"),
            (
                "kind = \"synthetic\"\nsymbols = 1\nrate = 1.0\nmode = \"bursty\"\nburst_duty = 2.0\n".into(),
                "field `burst_duty` must be in (0, 1]",
            ),
            (
                "kind = \"binance\"\nurl = \"http://x/ws/btcusdt@bookTicker\"\n".into(),
                "line 2, field `url`: must start with ws://",
            ),
            (
                "kind = \"binance\"\nurl = \"wss://x/ws\"\n".into(),
                "line 2, field `url`: names no streams",
            ),
        ] {
            let message = parse(&text, Path::new("f.toml"))
                .map(|_| ())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(message.starts_with("invalid feed file f.toml: "), "{message}");
            assert!(message.contains(expected), "{message}");
        }
    }
}
