//! One replay file: format and compression detected from content, read line by
//! line into normalized ticks.
//!
//! The reader reuses one line buffer and interns symbols per file, so a tick is a
//! `Copy` value with a symbol index and steady-state reading allocates nothing
//! per line.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::book::TopRule;
use crate::normalize::depth::DepthMessage;
use crate::normalize::tardis::TardisCsv;
use crate::normalize::{binance, coinbase, native, ParseError, Parsed, Recognised, Tick};

/// Longest line accepted; longer ones are skipped unread, never buffered whole.
pub const MAX_LINE: usize = 4 << 20;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const READ_BUFFER: usize = 256 << 10;
const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// The content format of a replay file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `<receive time ns> <raw Binance message>` per line (hftbacktest captures).
    BinanceCapture,
    /// A Tardis.dev `quotes` or `trades` CSV export.
    TardisCsv,
    /// tickwire's own NDJSON (see [`crate::normalize::native`]).
    Native,
    /// A cryptofeed capture of the Coinbase WebSocket feed:
    /// `<receive time s>: <raw message>` lines, plus `wss://...` lines for
    /// connection events and sent messages (see [`crate::normalize::coinbase`]).
    CoinbaseCapture,
}

/// Why a replay file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be opened or its first line read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file (or the name given to [`ReplayFile::from_reader`]).
        path: PathBuf,
        /// The underlying error (in the message, not chained: shown once).
        error: io::Error,
    },
    /// The first line matches none of the supported formats.
    #[error("{name}: unrecognised replay format (expected a Binance capture `<ns> <json>`, a Coinbase capture `<s.frac>: <json>`, a Tardis CSV with a `local_timestamp` column, or tickwire NDJSON)")]
    UnknownFormat {
        /// The file's name.
        name: String,
    },
    /// A tickwire NDJSON file whose header names a version this build cannot read.
    #[error("{name}: {reason}")]
    UnsupportedVersion {
        /// The file's name.
        name: String,
        /// The header's version.
        reason: String,
    },
    /// The file holds no non-blank line.
    #[error("{name}: replay file is empty")]
    Empty {
        /// The file's name.
        name: String,
    },
    /// A Tardis CSV header that lacks the columns a quotes or trades file needs.
    #[error("{name}: unsupported Tardis CSV header: {error}")]
    TardisHeader {
        /// The file's name.
        name: String,
        /// What is missing.
        error: ParseError,
    },
}

/// One thing read from a replay file.
#[derive(Debug)]
pub enum Item {
    /// A tick for `symbol`, an index into [`ReplayFile::symbols`].
    Tick {
        /// Index into the file's symbol table.
        symbol: u32,
        /// The normalized tick.
        tick: Tick,
    },
    /// A depth snapshot or diff, decoded into [`ReplayFile::depth`] until the
    /// next item is read. `symbol` indexes [`ReplayFile::symbols`]; `None`
    /// for a Binance REST snapshot, which names no symbol.
    Depth {
        /// Index into the file's symbol table, when the message names one.
        symbol: Option<u32>,
    },
    /// A well-formed line that changes no top of book.
    Recognised(Recognised),
    /// A line that could not be parsed (1-based line number); reading goes on.
    Malformed {
        /// 1-based line number in the (decompressed) file.
        line: u64,
        /// Why it was rejected.
        error: ParseError,
    },
    /// Reading failed (e.g. a truncated gzip stream): the file ends here.
    Failed(io::Error),
}

enum Parser {
    Binance,
    Coinbase,
    Tardis(TardisCsv),
    Native,
}

enum LineRead {
    Line,
    TooLong,
    Eof,
    Failed(io::Error),
}

/// A replay file being read, one [`Item`] at a time.
pub struct ReplayFile {
    name: String,
    parser: Parser,
    reader: Box<dyn BufRead + Send>,
    line: Vec<u8>,
    line_no: u64,
    /// The first data line was read during format detection and awaits parsing.
    pending: bool,
    done: bool,
    symbols: SymbolTable,
    /// The last depth message read (see [`Item::Depth`]).
    depth: DepthMessage,
    /// Which source of a best bid and ask wins for the file's symbols.
    top_rule: TopRule,
}

impl fmt::Debug for ReplayFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayFile")
            .field("name", &self.name)
            .field("format", &self.format())
            .field("line", &self.line_no)
            .field("symbols", &self.symbols.names)
            .finish_non_exhaustive()
    }
}

impl ReplayFile {
    /// Opens `path`, decompressing gzip transparently and detecting the format.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let file = crate::files::open_regular(path).map_err(|error| SourceError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_reader(path.display().to_string(), file)
    }

    /// Reads a replay from any byte stream (e.g. a sample embedded with
    /// `include_bytes!`); `name` labels it in errors and logs.
    pub fn from_reader(
        name: impl Into<String>,
        mut reader: impl Read + Send + 'static,
    ) -> Result<Self, SourceError> {
        let name = name.into();
        let mut magic = [0u8; 2];
        let got = read_prefix(&mut reader, &mut magic).map_err(|error| SourceError::Io {
            path: PathBuf::from(&name),
            error,
        })?;
        let is_gzip = got == magic.len() && magic == GZIP_MAGIC;
        // Put the sniffed bytes back in front of the rest of the stream.
        let whole = io::Cursor::new(magic).take(got as u64).chain(reader);
        let buffered: Box<dyn BufRead + Send> = if is_gzip {
            Box::new(BufReader::with_capacity(
                READ_BUFFER,
                MultiGzDecoder::new(whole),
            ))
        } else {
            Box::new(BufReader::with_capacity(READ_BUFFER, whole))
        };
        Self::detect(name, buffered)
    }

    fn detect(name: String, reader: Box<dyn BufRead + Send>) -> Result<Self, SourceError> {
        let mut file = Self {
            name,
            parser: Parser::Native,
            reader,
            line: Vec::with_capacity(4096),
            line_no: 0,
            pending: false,
            done: false,
            symbols: SymbolTable::default(),
            depth: DepthMessage::default(),
            top_rule: TopRule::QuotesFirst,
        };
        loop {
            match file.read_line() {
                LineRead::Line => {}
                LineRead::Eof => return Err(SourceError::Empty { name: file.name }),
                LineRead::TooLong => return Err(SourceError::UnknownFormat { name: file.name }),
                LineRead::Failed(error) => {
                    return Err(SourceError::Io {
                        path: PathBuf::from(file.name),
                        error,
                    })
                }
            }
            if file.line_no == 1 && file.line.starts_with(UTF8_BOM) {
                file.line.drain(..UTF8_BOM.len());
            }
            if !is_blank(&file.line) {
                break;
            }
        }

        let first = file.line.as_slice();
        let digits = first.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 && first.get(digits) == Some(&b' ') {
            file.parser = Parser::Binance;
            file.pending = true;
        } else if is_coinbase_capture(first) {
            file.parser = Parser::Coinbase;
            file.top_rule = TopRule::BookFirst;
            file.pending = true;
        } else if first.trim_ascii_start().starts_with(b"{") {
            file.top_rule = match native::read_header(first) {
                Ok(top_rule) => top_rule,
                Err(reason) => {
                    return Err(SourceError::UnsupportedVersion {
                        name: file.name,
                        reason,
                    })
                }
            };
            file.parser = Parser::Native;
            file.pending = true;
        } else {
            let header = std::str::from_utf8(first)
                .ok()
                .filter(|h| h.split(',').any(|c| c.trim() == "local_timestamp"));
            let Some(header) = header else {
                return Err(SourceError::UnknownFormat { name: file.name });
            };
            match TardisCsv::from_header(header) {
                Ok(csv) => file.parser = Parser::Tardis(csv),
                Err(error) => {
                    return Err(SourceError::TardisHeader {
                        name: file.name,
                        error,
                    })
                }
            }
        }
        Ok(file)
    }

    /// The name given at open (the path for [`ReplayFile::open`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The detected content format.
    pub fn format(&self) -> Format {
        match self.parser {
            Parser::Binance => Format::BinanceCapture,
            Parser::Coinbase => Format::CoinbaseCapture,
            Parser::Tardis(_) => Format::TardisCsv,
            Parser::Native => Format::Native,
        }
    }

    /// Which source of a best bid and ask wins for the file's symbols: the
    /// book for a Coinbase capture (its tickers come with trades, if they
    /// have sizes at all), and for a recording whose header says so.
    pub fn top_rule(&self) -> TopRule {
        self.top_rule
    }

    /// Symbols seen so far, indexed by [`Item::Tick`]'s `symbol`.
    pub fn symbols(&self) -> &[Box<str>] {
        &self.symbols.names
    }

    /// Reads the next item; `None` once the file is exhausted or has failed.
    pub fn next_item(&mut self) -> Option<Item> {
        loop {
            if self.done {
                return None;
            }
            if self.pending {
                self.pending = false;
            } else {
                match self.read_line() {
                    LineRead::Line => {}
                    LineRead::Eof => {
                        self.done = true;
                        return None;
                    }
                    LineRead::Failed(e) => {
                        self.done = true;
                        return Some(Item::Failed(e));
                    }
                    LineRead::TooLong => {
                        return Some(Item::Malformed {
                            line: self.line_no,
                            error: ParseError::Line("line longer than 4 MiB"),
                        })
                    }
                }
                if is_blank(&self.line) {
                    continue;
                }
            }
            return Some(self.parse_line());
        }
    }

    /// The depth message of the last [`Item::Depth`].
    pub fn depth(&self) -> &DepthMessage {
        &self.depth
    }

    fn parse_line(&mut self) -> Item {
        let parsed = match &self.parser {
            Parser::Binance => {
                binance::parse_capture_line_with_depth(&mut self.line, &mut self.depth)
            }
            Parser::Coinbase => {
                coinbase::parse_capture_line_with_depth(&mut self.line, &mut self.depth)
            }
            Parser::Native => native::parse_line_with_depth(&mut self.line, &mut self.depth),
            Parser::Tardis(csv) => match std::str::from_utf8(&self.line) {
                Ok(text) => csv.parse_line(text),
                Err(_) => Err(ParseError::Line("not valid UTF-8")),
            },
        };
        match parsed {
            Ok(Parsed::Tick { symbol, tick }) => match self.symbols.intern(symbol) {
                Ok(symbol) => Item::Tick { symbol, tick },
                Err(reason) => Item::Malformed {
                    line: self.line_no,
                    error: ParseError::Line(reason),
                },
            },
            // Every parser that recognises a depth message has decoded it.
            Ok(Parsed::Recognised(Recognised::DepthUpdate | Recognised::DepthSnapshot)) => {
                if self.depth.has_negative_size() {
                    return Item::Malformed {
                        line: self.line_no,
                        error: ParseError::Line("negative size"),
                    };
                }
                if self.depth.symbol.is_empty() {
                    return Item::Depth { symbol: None };
                }
                match self.symbols.intern(&self.depth.symbol) {
                    Ok(symbol) => Item::Depth {
                        symbol: Some(symbol),
                    },
                    Err(reason) => Item::Malformed {
                        line: self.line_no,
                        error: ParseError::Line(reason),
                    },
                }
            }
            Ok(Parsed::Recognised(r)) => Item::Recognised(r),
            Err(error) => Item::Malformed {
                line: self.line_no,
                error,
            },
        }
    }

    /// Reads the next physical line into `self.line`, without its `\n` or `\r\n`.
    fn read_line(&mut self) -> LineRead {
        self.line.clear();
        let mut too_long = false;
        let mut any = false;
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return LineRead::Failed(e),
            };
            if buf.is_empty() {
                if !any {
                    return LineRead::Eof;
                }
                // The last line had no terminating newline.
                break;
            }
            any = true;
            let newline = memchr::memchr(b'\n', buf);
            let chunk = newline.unwrap_or(buf.len());
            if !too_long {
                if self.line.len() + chunk > MAX_LINE {
                    too_long = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(&buf[..chunk]);
                }
            }
            match newline {
                Some(at) => {
                    self.reader.consume(at + 1);
                    break;
                }
                None => self.reader.consume(chunk),
            }
        }
        self.line_no += 1;
        if too_long {
            return LineRead::TooLong;
        }
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        LineRead::Line
    }
}

/// A cryptofeed Coinbase capture starts with a `wss://` connection line or with
/// `<digits>.<digits>: {`.
fn is_coinbase_capture(first: &[u8]) -> bool {
    if coinbase::is_endpoint_line(first) {
        return true;
    }
    let int = first.iter().take_while(|b| b.is_ascii_digit()).count();
    let Some(rest) = first.get(int..).and_then(|r| r.strip_prefix(b".")) else {
        return false;
    };
    let frac = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    int > 0
        && frac > 0
        && rest
            .get(frac..)
            .and_then(|r| r.strip_prefix(b":"))
            .is_some_and(|r| r.trim_ascii_start().starts_with(b"{"))
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Reads until `buf` is full or the stream ends; a short stream is not an error.
fn read_prefix(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Distinct symbols one file may name; lines naming more are malformed.
/// Every symbol is served, with a book of its own.
const MAX_SYMBOLS_PER_FILE: usize = 100_000;
/// The longest symbol name a file may use; lines naming a longer one are
/// malformed. Venue names are a few dozen bytes at most (options included),
/// and every name is kept, served and listed by `/api/symbols`.
pub const MAX_SYMBOL_BYTES: usize = 64;

#[derive(Default)]
struct SymbolTable {
    names: Vec<Box<str>>,
    ids: HashMap<Box<str>, u32>,
    /// Consecutive lines nearly always repeat the symbol; checked before hashing.
    last: u32,
}

impl SymbolTable {
    /// The symbol's id in this file, or why a line naming it is malformed.
    fn intern(&mut self, symbol: &str) -> Result<u32, &'static str> {
        if self
            .names
            .get(self.last as usize)
            .is_some_and(|n| **n == *symbol)
        {
            return Ok(self.last);
        }
        let id = match self.ids.get(symbol) {
            Some(&id) => id,
            None => {
                if symbol.len() > MAX_SYMBOL_BYTES {
                    return Err("symbol name longer than 64 bytes");
                }
                let too_many = "too many distinct symbols in one file";
                if self.names.len() >= MAX_SYMBOLS_PER_FILE {
                    return Err(too_many);
                }
                let id = u32::try_from(self.names.len()).map_err(|_| too_many)?;
                self.names.push(symbol.into());
                self.ids.insert(symbol.into(), id);
                id
            }
        };
        self.last = id;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::BookUpdate;
    use std::io::Write as _;

    const SPOT_BOOK: &str = r#"1723161254087891268 {"stream":"btcusdt@bookTicker","data":{"u":50093239212,"s":"BTCUSDT","b":"61837.63000000","B":"3.78826000","a":"61837.64000000","A":"1.54698000"}}"#;
    const USDM_TRADE: &str = r#"1723161255088176367 {"stream":"btcusdt@trade","data":{"e":"trade","E":1723161256322,"T":1723161256322,"s":"BTCUSDT","t":5266583935,"p":"61800.30","q":"0.006","X":"MARKET","m":false}}"#;
    const SPOT_DEPTH: &str = r#"1723161254036059768 {"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1723161255308,"s":"BTCUSDT","U":50093239203,"u":50093239207,"b":[["55653.87000000","0.00000000"]],"a":[["61838.04000000","0.32332000"]]}}"#;

    fn memory(name: &str, bytes: impl Into<Vec<u8>>) -> Result<ReplayFile, SourceError> {
        ReplayFile::from_reader(name, io::Cursor::new(bytes.into()))
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).expect("write to memory");
        enc.finish().expect("finish gzip")
    }

    #[derive(Debug, Default, PartialEq, Eq)]
    struct Counts {
        ticks: u64,
        quotes: u64,
        trades: u64,
        recognised: u64,
        malformed: u64,
        failed: u64,
    }

    fn drain(file: &mut ReplayFile) -> Counts {
        let mut c = Counts::default();
        while let Some(item) = file.next_item() {
            match item {
                Item::Tick { tick, .. } => {
                    c.ticks += 1;
                    match tick.update {
                        BookUpdate::Quote { .. } => c.quotes += 1,
                        BookUpdate::Trade { .. } => c.trades += 1,
                    }
                }
                Item::Recognised(_) | Item::Depth { .. } => c.recognised += 1,
                Item::Malformed { line, error } => {
                    eprintln!("{}:{line}: {error}", file.name());
                    c.malformed += 1;
                }
                Item::Failed(_) => c.failed += 1,
            }
        }
        c
    }

    #[test]
    fn a_tickwire_file_of_another_version_is_refused_whole() {
        for header in [r#"{"tickwire_replay":2}"#, r#"{"tickwire_replay":"1"}"#] {
            let text = format!("{header}\n{{\"recv_ts_ns\":1,\"symbol\":\"X\",\"type\":\"trade\",\"price\":\"1\",\"size\":\"1\"}}\n");
            let error = memory("v", text).expect_err(header).to_string();
            assert!(error.starts_with("v: tickwire_replay"), "{error}");
        }
        let error = memory("v2", "{\"tickwire_replay\":2}\n")
            .expect_err("v2")
            .to_string();
        assert!(
            error.contains("version 2 (this build reads version 1)"),
            "{error}"
        );
        assert!(memory("v1", "{\"tickwire_replay\":1}\n").is_ok());
    }

    #[test]
    fn detects_formats() {
        let binance = memory("b", format!("{SPOT_BOOK}\n")).expect("binance");
        assert_eq!(binance.format(), Format::BinanceCapture);
        let native = memory("n", "\n{\"tickwire_replay\":1,\"source\":\"x\"}\n").expect("native");
        assert_eq!(native.format(), Format::Native);
        assert_eq!(native.top_rule(), TopRule::QuotesFirst);
        let book_first = "{\"tickwire_replay\":1,\"source\":\"x\",\"top_of_book\":\"book\"}\n";
        let book_first = memory("n", book_first).expect("native");
        assert_eq!(book_first.top_rule(), TopRule::BookFirst);
        let mut header = Vec::new();
        native::encode_header(&mut header, "coinbase", TopRule::BookFirst);
        let written = memory("n", String::from_utf8_lossy(&header).into_owned()).expect("native");
        assert_eq!(
            written.top_rule(),
            TopRule::BookFirst,
            "what a recording writes"
        );
        assert_eq!(binance.top_rule(), TopRule::QuotesFirst);
        let tardis = memory(
            "t",
            "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\r\n",
        )
        .expect("tardis");
        assert_eq!(tardis.format(), Format::TardisCsv);
        let bom = memory("bom", format!("\u{feff}{SPOT_BOOK}\n")).expect("bom");
        assert_eq!(bom.format(), Format::BinanceCapture);

        assert!(matches!(
            memory("garbage.txt", "hello world\n"),
            Err(SourceError::UnknownFormat { name }) if name == "garbage.txt"
        ));
        assert!(matches!(
            memory("nospace", "12345\n"),
            Err(SourceError::UnknownFormat { .. })
        ));
        assert!(matches!(
            memory(
                "book.csv",
                "exchange,symbol,timestamp,local_timestamp,asks[0].price\n"
            ),
            Err(SourceError::TardisHeader { .. })
        ));
        assert!(matches!(
            memory("empty", " \n\r\n\n"),
            Err(SourceError::Empty { .. })
        ));
        assert!(matches!(memory("zero", ""), Err(SourceError::Empty { .. })));
        assert!(matches!(
            ReplayFile::open(Path::new("/nonexistent/tickwire/replay.gz")),
            Err(SourceError::Io { .. })
        ));
    }

    #[test]
    fn reads_lines_blank_crlf_and_unterminated() {
        let text = format!("{SPOT_BOOK}\r\n\r\n  \n{SPOT_DEPTH}\nnot a line\n{USDM_TRADE}");
        let mut file = memory("mixed", text).expect("opens");
        let Some(Item::Tick { symbol: 0, tick }) = file.next_item() else {
            panic!("first line is a tick");
        };
        assert_eq!(tick.recv_ts_ns, 1_723_161_254_087_891_268);
        assert!(matches!(
            file.next_item(),
            Some(Item::Depth { symbol: Some(0) })
        ));
        assert_eq!(file.depth().asks.len(), 1, "the diff's levels are decoded");
        assert!(matches!(
            file.next_item(),
            Some(Item::Malformed { line: 5, .. })
        ));
        assert!(matches!(
            file.next_item(),
            Some(Item::Tick { symbol: 0, .. })
        ));
        assert!(file.next_item().is_none());
        assert!(file.next_item().is_none());
        assert_eq!(file.symbols(), &["BTCUSDT".into()]);
    }

    #[test]
    fn interns_symbols() {
        let text = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n\
                    x,AAA,1,1,1,buy,1,1\nx,BBB,2,2,2,buy,1,1\nx,AAA,3,3,3,buy,1,1\n";
        let mut file = memory("t", text).expect("opens");
        let ids: Vec<u32> = std::iter::from_fn(|| file.next_item())
            .map(|item| match item {
                Item::Tick { symbol, .. } => symbol,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(ids, [0, 1, 0]);
        assert_eq!(file.symbols(), &["AAA".into(), "BBB".into()]);
    }

    #[test]
    fn a_file_names_a_bounded_number_of_symbols_of_bounded_length() {
        let mut table = SymbolTable::default();
        let longest = "L".repeat(MAX_SYMBOL_BYTES);
        assert_eq!(table.intern(&longest), Ok(0));
        let too_long = table.intern(&format!("{longest}L"));
        assert_eq!(too_long, Err("symbol name longer than 64 bytes"));
        for i in 1..MAX_SYMBOLS_PER_FILE {
            assert!(table.intern(&format!("S{i}")).is_ok());
        }
        let one_more = table.intern("ONE-MORE");
        assert_eq!(one_more, Err("too many distinct symbols in one file"));
        assert_eq!(table.intern("S7"), Ok(7), "known symbols still resolve");
    }

    #[test]
    fn negative_sizes_make_a_line_malformed() {
        let negative_level = SPOT_DEPTH.replace("\"0.32332000\"", "\"-0.32332000\"");
        let negative_bid = SPOT_BOOK.replace("\"3.78826000\"", "\"-3.78826000\"");
        let negative_trade = USDM_TRADE.replace("\"0.006\"", "\"-0.006\"");
        for line in [&negative_level, &negative_bid, &negative_trade] {
            assert_ne!(line, SPOT_DEPTH);
            let mut file = memory("negative", format!("{line}\n")).expect("opens");
            match file.next_item() {
                Some(Item::Malformed { error, .. }) => {
                    assert_eq!(error, ParseError::Line("negative size"), "{line}");
                }
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn gzip_detected_by_magic_not_name() {
        let text = format!("{SPOT_BOOK}\n{USDM_TRADE}\n");
        // Two concatenated gzip members, as `cat a.gz b.gz` produces.
        let mut gz = gzip(SPOT_BOOK.as_bytes());
        gz.extend(gzip(format!("\n{USDM_TRADE}\n").as_bytes()));
        let mut file = memory("plain-name.txt", gz).expect("opens gzip");
        assert_eq!(file.format(), Format::BinanceCapture);
        let counts = drain(&mut file);
        assert_eq!((counts.ticks, counts.malformed, counts.failed), (2, 0, 0));

        let mut plain = memory("looks.gz", text).expect("opens plain text");
        assert_eq!(drain(&mut plain).ticks, 2);
    }

    #[test]
    fn truncated_gzip_fails_without_panicking() {
        let mut text = String::new();
        for _ in 0..2000 {
            text.push_str(SPOT_BOOK);
            text.push('\n');
        }
        let gz = gzip(text.as_bytes());
        let cut = gz[..gz.len() * 2 / 3].to_vec();
        let mut file = memory("cut.gz", cut).expect("first line is intact");
        let counts = drain(&mut file);
        assert_eq!(counts.failed, 1);
        assert!(counts.ticks > 0 && counts.ticks < 2000);
        assert!(file.next_item().is_none());
    }

    #[test]
    fn over_long_line_is_skipped_not_buffered() {
        let mut text = format!("{SPOT_BOOK}\n");
        text.push_str("1 ");
        text.extend(std::iter::repeat_n('x', 3 * MAX_LINE));
        text.push('\n');
        text.push_str(USDM_TRADE);
        text.push('\n');
        let mut file = memory("long", text).expect("opens");
        assert!(matches!(file.next_item(), Some(Item::Tick { .. })));
        let Some(Item::Malformed { line: 2, error }) = file.next_item() else {
            panic!("expected the long line to be malformed");
        };
        assert_eq!(error, ParseError::Line("line longer than 4 MiB"));
        // Growth stopped at the limit instead of following the 12 MiB line.
        assert!(file.line.capacity() <= 2 * MAX_LINE);
        assert!(matches!(file.next_item(), Some(Item::Tick { .. })));
        assert!(file.next_item().is_none());
    }

    fn sample(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("replay-data")
            .join(name)
    }

    // Expected counts computed with zcat | grep -c over the bundled samples
    // (see replay-data/README.md).
    #[test]
    fn bundled_binance_spot_sample() {
        let mut file =
            ReplayFile::open(&sample("binance-spot-btcusdt-20240808.gz")).expect("sample opens");
        assert_eq!(file.format(), Format::BinanceCapture);
        let counts = drain(&mut file);
        assert_eq!(
            counts,
            Counts {
                ticks: 6741,
                quotes: 5360,
                trades: 1381,
                recognised: 600,
                malformed: 0,
                failed: 0,
            }
        );
        assert_eq!(file.symbols(), &["BTCUSDT".into()]);
    }

    #[test]
    fn bundled_binance_usdm_sample() {
        let mut file =
            ReplayFile::open(&sample("binance-usdm-btcusdt-20240808.gz")).expect("sample opens");
        let counts = drain(&mut file);
        assert_eq!(
            counts,
            Counts {
                ticks: 14589,
                quotes: 12088,
                trades: 2501,
                recognised: 1149,
                malformed: 0,
                failed: 0,
            }
        );
    }

    #[test]
    fn bundled_tardis_samples() {
        for (name, quotes, trades) in [
            ("tardis-binance-futures-btcusdt-quotes-sample.csv", 500, 0),
            ("tardis-binance-futures-btcusdt-trades-sample.csv", 0, 500),
        ] {
            let mut file = ReplayFile::open(&sample(name)).expect("sample opens");
            assert_eq!(file.format(), Format::TardisCsv);
            let counts = drain(&mut file);
            assert_eq!(
                counts,
                Counts {
                    ticks: quotes + trades,
                    quotes,
                    trades,
                    ..Counts::default()
                },
                "{name}"
            );
        }
    }

    // Real lines from the Coinbase capture (cryptofeed sample data, 2021-04-17).
    const CB_CONNECT: &str = "wss://ws-feed.pro.coinbase.com <-> 1618677816.8434298";
    const CB_SENT: &str = r#"wss://ws-feed.pro.coinbase.com <- 1618677817.0208309: {"type":"subscribe","product_ids":["SKL-USD","SKL-BTC","BAND-GBP","NMR-EUR","BAND-BTC","YFI-BTC","DASH-BTC","NU-GBP","CRV-EUR","SKL-GBP"],"channels":["matches"]}"#;
    const CB_SUBSCRIPTIONS: &str = r#"1618677817.061845: {"type":"subscriptions","channels":[{"name":"level2","product_ids":["BAND-GBP","BAND-BTC","YFI-BTC","NU-GBP","CRV-EUR","SKL-GBP","SKL-USD","SKL-BTC","NMR-EUR","DASH-BTC"]}]}"#;
    const CB_TICKER: &str = r#"1618677817.079736: {"type":"ticker","sequence":27883326,"product_id":"SKL-GBP","price":"0.5752","open_24h":"0.5102","volume_24h":"3479861.10000000","low_24h":"0.5","high_24h":"0.588","volume_30d":"76123674.10000000","best_bid":"0.5752","best_ask":"0.5771","side":"sell","time":"2021-04-17T16:43:29.571587Z","trade_id":82007,"last_size":"1008.2"}"#;
    const CB_LAST_MATCH: &str = r#"1618677817.07979: {"type":"last_match","trade_id":82007,"maker_order_id":"9d2861bd-1703-47f2-a7f4-7723565a7f5c","taker_order_id":"dd068ce5-f175-4396-bae1-a1db56d209f5","side":"buy","size":"1008.2","price":"0.5752","product_id":"SKL-GBP","sequence":27883326,"time":"2021-04-17T16:43:29.571587Z"}"#;
    const CB_MATCH: &str = r#"1618677817.1299179: {"type":"match","trade_id":1568268,"maker_order_id":"cac01d6d-8009-4c33-8e0d-f7f853d7c1bc","taker_order_id":"3dec64e4-f6ad-4ca8-ad3f-e5b1a0eb0d06","side":"sell","size":"450","price":"0.791","product_id":"SKL-USD","sequence":201390075,"time":"2021-04-17T16:43:37.121358Z"}"#;
    const CB_L2UPDATE: &str = r#"1618677817.118808: {"type":"l2update","product_id":"SKL-GBP","changes":[["sell","0.5762","335.0"]],"time":"2021-04-17T16:43:37.078325Z"}"#;

    #[test]
    fn detects_coinbase_captures() {
        for first in [CB_CONNECT, CB_SENT, CB_SUBSCRIPTIONS, CB_MATCH, "1.5:{}"] {
            let file = memory("cb", format!("\n{first}\n")).expect("coinbase capture");
            assert_eq!(file.format(), Format::CoinbaseCapture, "{first}");
        }
        for not in [
            "1618677817.061845 {}",
            "1618677817: {}",
            "1618677817.: {}",
            ".5: {}",
            "12.5: hello",
            "https://api.pro.coinbase.com -> 1.5: {}",
        ] {
            assert!(
                matches!(memory("x", not), Err(SourceError::UnknownFormat { .. })),
                "{not}"
            );
        }
    }

    #[test]
    fn reads_coinbase_capture_lines() {
        let text = [
            CB_CONNECT,
            CB_SENT,
            CB_SUBSCRIPTIONS,
            CB_TICKER,
            CB_LAST_MATCH,
            CB_L2UPDATE,
            "wss://ws-feed.pro.coinbase.com ?? 1",
            CB_MATCH,
        ]
        .join("\n");
        let mut file = memory("cb", text).expect("opens");
        assert_eq!(file.format(), Format::CoinbaseCapture);
        for want in [
            Recognised::ConnectionEvent,
            Recognised::ConnectionEvent,
            Recognised::Subscriptions,
            Recognised::TickerWithoutSizes,
        ] {
            assert!(
                matches!(file.next_item(), Some(Item::Recognised(r)) if r == want),
                "{want:?}"
            );
        }
        let Some(Item::Tick { symbol: 0, tick }) = file.next_item() else {
            panic!("last_match is a tick");
        };
        assert_eq!(tick.recv_ts_ns, 1_618_677_817_079_790_000);
        assert_eq!(tick.exchange_ts_ns, Some(1_618_677_809_571_587_000));
        assert!(matches!(
            tick.update,
            BookUpdate::Trade { price, size }
                if price.to_string() == "0.5752" && size.to_string() == "1008.2"
        ));
        assert!(matches!(
            file.next_item(),
            Some(Item::Depth { symbol: Some(_) })
        ));
        assert_eq!(file.depth().symbol, "SKL-GBP");
        assert!(matches!(
            file.next_item(),
            Some(Item::Malformed {
                line: 7,
                error: ParseError::Line(_)
            })
        ));
        let Some(Item::Tick { symbol: 1, tick }) = file.next_item() else {
            panic!("match is a tick");
        };
        assert_eq!(tick.recv_ts_ns, 1_618_677_817_129_917_900);
        assert!(file.next_item().is_none());
        assert_eq!(file.symbols(), &["SKL-GBP".into(), "SKL-USD".into()]);
    }

    // Counted with zcat | grep over the sample: 4 `wss://` lines, 3
    // subscriptions, 10 snapshot, 739 l2update, 22 ticker (no sizes), 12 match
    // and 10 last_match.
    #[test]
    fn bundled_coinbase_sample() {
        let mut file = ReplayFile::open(&sample("coinbase-sample.ws.gz")).expect("sample opens");
        assert_eq!(
            file.top_rule(),
            TopRule::BookFirst,
            "Coinbase's book gives the top"
        );
        assert_eq!(file.format(), Format::CoinbaseCapture);
        let Some(Item::Recognised(Recognised::ConnectionEvent)) = file.next_item() else {
            panic!("the capture starts with the connection");
        };
        let counts = drain(&mut file);
        assert_eq!(
            counts,
            Counts {
                ticks: 22,
                quotes: 0,
                trades: 22,
                recognised: 777,
                malformed: 0,
                failed: 0,
            }
        );
        let symbols: Vec<&str> = file.symbols().iter().map(|s| &**s).collect();
        assert_eq!(
            symbols,
            [
                "BAND-GBP", "SKL-GBP", "NU-GBP", "YFI-BTC", "SKL-BTC", "CRV-EUR", "BAND-BTC",
                "DASH-BTC", "NMR-EUR", "SKL-USD"
            ]
        );
    }

    #[test]
    fn full_coinbase_capture_if_present() {
        let path = Path::new("/work/shared/data/coinbase/COINBASE.ws.28.0");
        if !path.exists() {
            eprintln!("skipping: {} is absent", path.display());
            return;
        }
        let mut file = ReplayFile::open(path).expect("capture opens");
        let counts = drain(&mut file);
        // Counted with grep: 9,952 lines = 4 `wss://` + 2 blank + 9,946 messages
        // (97 match + 10 last_match = 107 trades; 107 ticker, 9,719 l2update,
        // 10 snapshot, 3 subscriptions recognised).
        assert_eq!(
            counts,
            Counts {
                ticks: 107,
                quotes: 0,
                trades: 107,
                recognised: 4 + 107 + 9_719 + 10 + 3,
                malformed: 0,
                failed: 0,
            }
        );
        assert_eq!(file.symbols().len(), 10);
    }

    #[test]
    fn full_spot_capture_if_present() {
        let path = Path::new("/work/shared/data/binance/spot_btcusdt_20240808.gz");
        if !path.exists() {
            eprintln!("skipping: {} is absent", path.display());
            return;
        }
        let mut file = ReplayFile::open(path).expect("capture opens");
        let counts = drain(&mut file);
        // Counted with zcat | grep: 28,040 bookTicker + 9,757 trade, 3,451
        // depthUpdate + 1 snapshot = 41,249 lines. (The data README's 28,041
        // bookTicker does not add up to its own 41,249 line total.)
        assert_eq!((counts.quotes, counts.trades), (28_040, 9_757));
        assert_eq!(
            (counts.recognised, counts.malformed, counts.failed),
            (3_452, 0, 0)
        );
    }
}
