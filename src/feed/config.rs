//! Feed files: one TOML file per feed in `feeds/`, e.g.
//!
//! ```toml
//! name = "binance-sample"
//! kind = "replay"
//! speed = "1"          # a factor, or "max"
//! loop = true
//! max_gap_ms = 5000
//!
//! [[files]]
//! path = "../replay-data/binance-spot-btcusdt-20240808.gz"
//! prefix = "spot"      # served as spot:BTCUSDT
//! ```
//!
//! Relative paths are resolved against the directory of the TOML file, so a feed
//! file works from any working directory. Unknown keys are errors, reported with
//! the file, line and key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::replay::{ReplayConfig, ReplayInput, ReplaySource, Speed};

/// Why a feed file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read feed file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid feed file {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedFile {
    name: Option<String>,
    kind: FeedKind,
    #[serde(default = "default_speed")]
    speed: String,
    #[serde(default, rename = "loop")]
    looped: bool,
    #[serde(default = "default_max_gap_ms")]
    max_gap_ms: u64,
    files: Vec<FileEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FeedKind {
    Replay,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    path: PathBuf,
    prefix: Option<String>,
}

fn default_speed() -> String {
    "1".into()
}

/// Default for the longest silence a replay plays out in full.
pub const DEFAULT_MAX_GAP: Duration = Duration::from_secs(5);

fn default_max_gap_ms() -> u64 {
    DEFAULT_MAX_GAP.as_millis() as u64
}

/// Reads and validates a feed file.
pub fn load(path: &Path) -> Result<ReplayConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses feed-file text; `path` names it in errors and anchors relative paths.
pub fn parse(text: &str, path: &Path) -> Result<ReplayConfig, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_owned(),
        message,
    };
    // toml's message names the line, column and key at fault.
    let file: FeedFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let FeedKind::Replay = file.kind;
    let speed: Speed = file
        .speed
        .parse()
        .map_err(|e: String| invalid(format!("field `speed`: {e}")))?;
    if file.files.is_empty() {
        return Err(invalid(
            "field `files`: a replay feed needs at least one file".into(),
        ));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let sources = file
        .files
        .into_iter()
        .map(|entry| ReplaySource {
            prefix: entry.prefix.filter(|p| !p.is_empty()),
            input: ReplayInput::Path(base.join(entry.path)),
        })
        .collect();
    let name = file.name.unwrap_or_else(|| {
        path.file_stem()
            .map_or_else(|| "feed".into(), |s| s.to_string_lossy().into_owned())
    });
    Ok(ReplayConfig {
        name,
        sources,
        speed,
        looped: file.looped,
        max_gap: Duration::from_millis(file.max_gap_ms),
        start_paused: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_file_resolves_paths_next_to_itself() {
        let text = "kind = \"replay\"\nspeed = \"max\"\nloop = true\n\n[[files]]\npath = \"../replay-data/a.gz\"\nprefix = \"spot\"\n";
        let config = parse(text, Path::new("feeds/sample.toml")).map_err(|e| e.to_string());
        let config = config
            .as_ref()
            .map(|c| (c.name.as_str(), c.speed, c.looped));
        assert_eq!(config, Ok(("sample", Speed::Max, true)));
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

        let text = "kind = \"replay\"\nspeed = \"fast\"\n[[files]]\npath = \"a\"\n";
        let message = parse(text, Path::new("x.toml"))
            .map(|_| ())
            .err()
            .map(|e| e.to_string());
        assert!(message.unwrap_or_default().contains("`speed`"));
    }
}
