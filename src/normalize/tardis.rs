//! Tardis.dev CSV exports: `quotes` and `trades` data types.
//!
//! Columns are located by name from the header, so column order and extra
//! columns do not matter. Tardis timestamps are microseconds since the epoch.

use super::binance::parse_digits;
use super::{decimal, BookUpdate, ParseError, Parsed};

/// Which Tardis data type a CSV holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TardisKind {
    /// `quotes`: best bid and ask.
    Quotes,
    /// `trades`: one row per trade.
    Trades,
}

// Slots a data row's fields are sorted into; the value columns depend on the kind.
const SYMBOL: usize = 0;
const TIMESTAMP: usize = 1;
const LOCAL_TIMESTAMP: usize = 2;
const BID: usize = 3;
const BID_SIZE: usize = 4;
const ASK: usize = 5;
const ASK_SIZE: usize = 6;
const PRICE: usize = 3;
const AMOUNT: usize = 4;
const SLOTS: usize = 7;

const QUOTE_COLUMNS: [&str; SLOTS] = [
    "symbol",
    "timestamp",
    "local_timestamp",
    "bid_price",
    "bid_amount",
    "ask_price",
    "ask_amount",
];
const TRADE_COLUMNS: [&str; 5] = ["symbol", "timestamp", "local_timestamp", "price", "amount"];

/// A parser for the rows of one Tardis CSV, configured from its header line.
#[derive(Clone, Debug)]
pub struct TardisCsv {
    kind: TardisKind,
    /// For each CSV column, the slot its value goes to (`None`: unused column).
    slot_of_column: Vec<Option<usize>>,
}

impl TardisCsv {
    /// Builds a parser from the header line, detecting quotes vs trades.
    pub fn from_header(header: &str) -> Result<Self, ParseError> {
        let header = header
            .trim_start_matches('\u{feff}')
            .trim_end_matches(['\r', '\n']);
        let has = |name: &str| header.split(',').any(|c| c.trim() == name);
        let (kind, names): (_, &[&str]) = if has("bid_price") && has("ask_price") {
            (TardisKind::Quotes, &QUOTE_COLUMNS)
        } else if has("price") && has("amount") {
            (TardisKind::Trades, &TRADE_COLUMNS)
        } else {
            return Err(ParseError::Line(
                "Tardis CSV header has neither quote (bid_price, ask_price) nor trade (price, amount) columns",
            ));
        };
        let mut slot_of_column: Vec<Option<usize>> = header.split(',').map(|_| None).collect();
        for (slot, name) in names.iter().enumerate() {
            let column = header
                .split(',')
                .position(|c| c.trim() == *name)
                .ok_or(ParseError::Field(name))?;
            if let Some(entry) = slot_of_column.get_mut(column) {
                *entry = Some(slot);
            }
        }
        Ok(Self {
            kind,
            slot_of_column,
        })
    }

    /// Whether this file holds quotes or trades.
    pub fn kind(&self) -> TardisKind {
        self.kind
    }

    /// Parses one data row (a trailing `\r` is ignored).
    pub fn parse_line<'a>(&self, line: &'a str) -> Result<Parsed<'a>, ParseError> {
        let line = line.trim_end_matches(['\r', '\n']);
        // Tardis never quotes a field; splitting a quoted one on commas would
        // serve its quotes as part of a symbol or refuse it as a number.
        if line.contains('"') {
            return Err(ParseError::Line("quoted CSV fields are not read"));
        }
        let mut values: [&'a str; SLOTS] = [""; SLOTS];
        let mut columns = 0;
        for (column, field) in line.split(',').enumerate() {
            if let Some(Some(slot)) = self.slot_of_column.get(column) {
                if let Some(value) = values.get_mut(*slot) {
                    *value = field;
                }
            }
            columns = column + 1;
        }
        if columns != self.slot_of_column.len() {
            return Err(ParseError::Line(
                "number of CSV columns differs from the header",
            ));
        }

        let names: &[&'static str] = match self.kind {
            TardisKind::Quotes => &QUOTE_COLUMNS,
            TardisKind::Trades => &TRADE_COLUMNS,
        };
        // Slot indices are constants within `names`, never taken from the row.
        let field = |slot: usize| -> Result<(&'static str, &'a str), ParseError> {
            match values[slot] {
                "" => Err(ParseError::Field(names[slot])),
                value => Ok((names[slot], value)),
            }
        };
        let micros = |slot: usize| -> Result<i64, ParseError> {
            let (name, text) = field(slot)?;
            parse_digits(text.as_bytes())
                .and_then(|us| us.checked_mul(1_000))
                .ok_or(ParseError::Field(name))
        };
        let dec = |slot: usize| -> Result<rust_decimal::Decimal, ParseError> {
            let (name, text) = field(slot)?;
            decimal(name, text)
        };

        let (_, symbol) = field(SYMBOL)?;
        let exchange_ts_ns = Some(micros(TIMESTAMP)?);
        let recv_ts_ns = micros(LOCAL_TIMESTAMP)?;
        let update = match self.kind {
            TardisKind::Quotes => BookUpdate::Quote {
                bid: dec(BID)?,
                bid_size: dec(BID_SIZE)?,
                ask: dec(ASK)?,
                ask_size: dec(ASK_SIZE)?,
            },
            TardisKind::Trades => BookUpdate::Trade {
                price: dec(PRICE)?,
                size: dec(AMOUNT)?,
            },
        };
        Parsed::tick(symbol, recv_ts_ns, exchange_ts_ns, update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real rows from /work/shared/data/tardis (nautilus_trader test data).
    const QUOTES_HEADER: &str =
        "exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount";
    const QUOTE_ROW: &str =
        "binance-futures,BTCUSDT,1582329603401000,1582329603522418,0.84,9682,9681.83,0.003";
    const TRADES_HEADER: &str = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount";
    const TRADE_ROW: &str =
        "binance-futures,BTCUSDT,1582329602111000,1582329602418379,42377944,buy,9682,0.132";

    #[test]
    fn quotes() {
        let csv = TardisCsv::from_header(QUOTES_HEADER).expect("quotes header");
        assert_eq!(csv.kind(), TardisKind::Quotes);
        let Ok(Parsed::Tick { symbol, tick }) = csv.parse_line(QUOTE_ROW) else {
            panic!("quote row should parse");
        };
        assert_eq!(symbol, "BTCUSDT");
        assert_eq!(tick.recv_ts_ns, 1_582_329_603_522_418_000);
        assert_eq!(tick.exchange_ts_ns, Some(1_582_329_603_401_000_000));
        let BookUpdate::Quote {
            bid,
            bid_size,
            ask,
            ask_size,
        } = tick.update
        else {
            panic!("expected a quote");
        };
        assert_eq!(
            [bid, bid_size, ask, ask_size].map(|d| d.to_string()),
            ["9681.83", "0.003", "9682", "0.84"]
        );
    }

    #[test]
    fn trades() {
        let csv = TardisCsv::from_header(TRADES_HEADER).expect("trades header");
        assert_eq!(csv.kind(), TardisKind::Trades);
        let crlf = format!("{TRADE_ROW}\r");
        let Ok(Parsed::Tick { symbol, tick }) = csv.parse_line(&crlf) else {
            panic!("trade row should parse");
        };
        assert_eq!(symbol, "BTCUSDT");
        assert_eq!(tick.recv_ts_ns, 1_582_329_602_418_379_000);
        assert_eq!(tick.exchange_ts_ns, Some(1_582_329_602_111_000_000));
        let BookUpdate::Trade { price, size } = tick.update else {
            panic!("expected a trade");
        };
        assert_eq!(price.to_string(), "9682");
        assert_eq!(size.to_string(), "0.132");
    }

    #[test]
    fn columns_found_by_name() {
        let csv = TardisCsv::from_header(
            "bid_amount,bid_price,ask_price,ask_amount,local_timestamp,timestamp,symbol",
        )
        .expect("reordered header");
        let Ok(Parsed::Tick { tick, .. }) = csv.parse_line("1,2.5,2.6,3,20,10,ETHUSDT") else {
            panic!("reordered row should parse");
        };
        assert_eq!(tick.recv_ts_ns, 20_000);
        assert_eq!(tick.exchange_ts_ns, Some(10_000));
    }

    #[test]
    fn bad_headers() {
        assert_eq!(
            TardisCsv::from_header("exchange,symbol,timestamp,price,amount").map(|c| c.kind()),
            Err(ParseError::Field("local_timestamp"))
        );
        assert!(matches!(
            TardisCsv::from_header("exchange,symbol,timestamp,local_timestamp,bids"),
            Err(ParseError::Line(_))
        ));
    }

    #[test]
    fn bad_rows_are_errors() {
        let csv = TardisCsv::from_header(QUOTES_HEADER).expect("quotes header");
        assert_eq!(
            csv.parse_line(
                "binance-futures,BTCUSDT,1582329603401000,1582329603522418,0.84,9682,,0.003"
            ),
            Err(ParseError::Field("bid_price"))
        );
        assert_eq!(
            csv.parse_line("binance-futures,,1,2,0.84,9682,1,0.003"),
            Err(ParseError::Field("symbol"))
        );
        assert_eq!(
            csv.parse_line("binance-futures,BTCUSDT,1.5,2,0.84,9682,1,0.003"),
            Err(ParseError::Field("timestamp"))
        );
        assert_eq!(
            csv.parse_line("binance-futures,BTCUSDT,1,99999999999999999,0.84,9682,1,0.003"),
            Err(ParseError::Field("local_timestamp"))
        );
        assert!(matches!(
            csv.parse_line("binance-futures,BTCUSDT,1,2,0.84,9682,1"),
            Err(ParseError::Line(_))
        ));
        assert!(matches!(csv.parse_line(""), Err(ParseError::Line(_))));
        assert_eq!(
            csv.parse_line("binance-futures,\"BTCUSDT\",1,2,0.84,9682,1,0.003"),
            Err(ParseError::Line("quoted CSV fields are not read"))
        );
        // A negative amount, and the refused forms of a decimal.
        assert_eq!(
            csv.parse_line("binance-futures,BTCUSDT,1,2,-0.84,9682,1,0.003"),
            Err(ParseError::Line("negative size"))
        );
        for price in ["1_0", "+1"] {
            let row = format!("binance-futures,BTCUSDT,1,2,0.84,{price},1,0.003");
            assert!(
                matches!(csv.parse_line(&row), Err(ParseError::Decimal { .. })),
                "{price}"
            );
        }
        // A size of zero (even written `-0`) is a size.
        assert!(csv
            .parse_line("binance-futures,BTCUSDT,1,2,-0,9682,1,0")
            .is_ok());
        assert_eq!(
            csv.parse_line("binance-futures,BTCUSDT,1,2,0.84,96x82,1,0.003"),
            Err(ParseError::Decimal {
                field: "ask_price",
                value: "96x82".into()
            })
        );
    }
}
