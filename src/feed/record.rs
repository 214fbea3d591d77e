//! Recording: a live feed written to tickwire's NDJSON replay format (see
//! `replay-data/README.md`), gzip-compressed, with receive timestamps, so the
//! recording replays to the same book as the live session that produced it:
//! its ticks, and the depth snapshots and diffs of a feed that keeps books
//! (a Binance feed's REST snapshots included, which the recorder has the
//! feed fetch as a server would).
//!
//! Lines are written whole into the compressor and the gzip stream is finished
//! on every exit path (Ctrl-C, `--duration`, rotation), so a file never ends
//! mid-line. Optional rotation starts `NAME-1.ndjson.gz`, `NAME-2...` once a
//! file holds the configured number of uncompressed bytes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use tokio_util::sync::CancellationToken;

use super::live::{self, LiveConfig, LiveError, Sink};
use crate::book::depth::DepthBook;
use crate::book::TopRule;
use crate::metrics::Metrics;
use crate::normalize::depth::DepthMessage;
use crate::normalize::{native, Tick};

/// How to record.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// The first file; later ones (with rotation) get `-1`, `-2`, ... before
    /// the extensions.
    pub out: PathBuf,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Start a new file after this many uncompressed bytes.
    pub rotate_bytes: Option<u64>,
}

/// What a recording wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordSummary {
    pub ticks: u64,
    /// Depth snapshots and diffs.
    pub depth_messages: u64,
    /// Uncompressed bytes, all files.
    pub bytes: u64,
    pub files: Vec<PathBuf>,
}

/// Why a recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Feed(#[from] LiveError),
    #[error("cannot write {}: {error}", path.display())]
    Write { path: PathBuf, error: io::Error },
}

/// Counters the progress display reads while recording.
#[derive(Debug, Default)]
pub struct Progress {
    pub ticks: AtomicU64,
    pub depth_messages: AtomicU64,
    pub bytes: AtomicU64,
}

/// Records `config`'s feed until `shutdown`, the duration, or a write error.
pub async fn record(
    config: LiveConfig,
    options: RecordOptions,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
) -> Result<RecordSummary, RecordError> {
    let stop = shutdown.child_token();
    if let Some(duration) = options.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.cancel();
        });
    }
    // A feed that cannot start fails before the output file is created: an
    // earlier recording at that path is not truncated for nothing.
    live::prepare(&config)?;
    let source = format!("{} {}", config.name, config.url);
    let top_rule = config.venue.top_rule();
    let mut recorder = Recorder::create(options, source, top_rule, progress, stop.clone())?;
    let stats = Metrics::default().register_feed(&config.name, config.venue.kind());
    let fed = live::run_into(config, stats, &mut recorder, stop).await;
    let summary = recorder.finish()?;
    fed?;
    Ok(summary)
}

struct Recorder {
    options: RecordOptions,
    source: String,
    /// Written in each file's header, so a replay takes the feed's rule.
    top_rule: TopRule,
    writer: Option<GzEncoder<BufWriter<File>>>,
    line: Vec<u8>,
    file_bytes: u64,
    summary: RecordSummary,
    progress: Arc<Progress>,
    /// The first write error; recording stops at it.
    failed: Option<RecordError>,
    stop: CancellationToken,
    /// Each symbol's book, kept only to know when it waits for a snapshot
    /// (which a Binance feed then fetches, and the recording holds).
    books: HashMap<String, DepthBook>,
}

impl Recorder {
    fn create(
        options: RecordOptions,
        source: String,
        top_rule: TopRule,
        progress: Arc<Progress>,
        stop: CancellationToken,
    ) -> Result<Self, RecordError> {
        let mut recorder = Self {
            options,
            source,
            top_rule,
            writer: None,
            line: Vec::with_capacity(256),
            file_bytes: 0,
            summary: RecordSummary::default(),
            progress,
            failed: None,
            stop,
            books: HashMap::new(),
        };
        recorder.open_next()?;
        Ok(recorder)
    }

    fn open_next(&mut self) -> Result<(), RecordError> {
        self.close_current()?;
        let path = numbered(&self.options.out, self.summary.files.len());
        let file = File::create(&path).map_err(|error| RecordError::Write {
            path: path.clone(),
            error,
        })?;
        let mut writer = GzEncoder::new(BufWriter::new(file), Compression::default());
        self.line.clear();
        native::encode_header(&mut self.line, &self.source, self.top_rule);
        writer
            .write_all(&self.line)
            .map_err(|error| RecordError::Write {
                path: path.clone(),
                error,
            })?;
        self.file_bytes = self.line.len() as u64;
        self.writer = Some(writer);
        self.summary.files.push(path);
        Ok(())
    }

    fn current_path(&self) -> PathBuf {
        self.summary.files.last().cloned().unwrap_or_default()
    }

    fn close_current(&mut self) -> Result<(), RecordError> {
        if let Some(writer) = self.writer.take() {
            let path = self.current_path();
            writer
                .finish()
                .and_then(|mut inner| inner.flush())
                .map_err(|error| RecordError::Write { path, error })?;
        }
        Ok(())
    }

    fn write_tick(&mut self, symbol: &str, tick: &Tick) -> Result<(), RecordError> {
        self.line.clear();
        native::encode_tick(&mut self.line, symbol, tick);
        self.write_line()?;
        self.summary.ticks += 1;
        self.progress.ticks.fetch_add(1, Relaxed);
        Ok(())
    }

    fn write_depth(&mut self, symbol: &str, message: &DepthMessage) -> Result<(), RecordError> {
        self.line.clear();
        native::encode_depth(&mut self.line, symbol, message);
        self.write_line()?;
        self.summary.depth_messages += 1;
        self.progress.depth_messages.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Writes `self.line`, and starts the next file once this one is full.
    fn write_line(&mut self) -> Result<(), RecordError> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        writer
            .write_all(&self.line)
            .map_err(|error| RecordError::Write {
                path: self.summary.files.last().cloned().unwrap_or_default(),
                error,
            })?;
        let written = self.line.len() as u64;
        self.file_bytes += written;
        self.summary.bytes += written;
        self.progress.bytes.fetch_add(written, Relaxed);
        if self
            .options
            .rotate_bytes
            .is_some_and(|limit| self.file_bytes >= limit)
        {
            self.open_next()?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<RecordSummary, RecordError> {
        if let Some(error) = self.failed.take() {
            let _ = self.close_current();
            return Err(error);
        }
        self.close_current()?;
        Ok(self.summary)
    }

    /// Keeps the first write error and stops the recording at it.
    fn fail(&mut self, error: RecordError) {
        tracing::error!(%error, "recording stops");
        self.failed = Some(error);
        self.stop.cancel();
    }
}

impl Sink for Recorder {
    fn tick(&mut self, symbol: &str, tick: &Tick) {
        if self.failed.is_some() {
            return;
        }
        if let Err(error) = self.write_tick(symbol, tick) {
            self.fail(error);
        }
    }

    fn depth(&mut self, symbol: &str, message: &DepthMessage) -> bool {
        if self.failed.is_some() {
            return false;
        }
        if let Err(error) = self.write_depth(symbol, message) {
            self.fail(error);
            return false;
        }
        if !self.books.contains_key(symbol) {
            self.books.insert(symbol.to_owned(), DepthBook::default());
        }
        let Some(book) = self.books.get_mut(symbol) else {
            return false;
        };
        book.apply(message);
        !book.is_synced()
    }

    fn down(&mut self, reason: &str) {
        // The next connection starts from a snapshot of its own; a replay
        // of the recording drops its books here too.
        self.books.clear();
        if self.failed.is_none() {
            self.line.clear();
            native::encode_disconnect(&mut self.line, crate::wall_clock_ns(), reason);
            if let Err(error) = self.write_line() {
                self.fail(error);
            }
        }
        // The feed warns of it itself, with its retry; this only adds what
        // becomes of the recording.
        tracing::info!(%reason, "recorded feed is down; the recording continues after it reconnects");
    }
}

/// `x.ndjson.gz` → `x.ndjson.gz`, `x-1.ndjson.gz`, `x-2.ndjson.gz`, ...
fn numbered(path: &Path, index: usize) -> PathBuf {
    if index == 0 {
        return path.to_owned();
    }
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let (stem, extensions) = match name.find('.') {
        Some(dot) => name.split_at(dot),
        None => (name.as_str(), ""),
    };
    path.with_file_name(format!("{stem}-{index}{extensions}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_files_are_numbered_before_the_extensions() {
        let base = Path::new("replay-data/btc.ndjson.gz");
        assert_eq!(numbered(base, 0), base);
        assert_eq!(numbered(base, 2), Path::new("replay-data/btc-2.ndjson.gz"));
        assert_eq!(numbered(Path::new("plain"), 1), Path::new("plain-1"));
    }
}
