//! Shared set-up for the benches: the real Binance USD-M capture in `replay-data/`.
//!
//! Each bench binary includes this module and uses only part of it.
#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;

/// The recorded capture (hftbacktest format: `<recv ns> <raw message>` per line).
pub const CAPTURE: &str = "replay-data/binance-usdm-btcusdt-20240808.gz";

fn capture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(CAPTURE)
}

/// The capture file as stored (gzip).
pub fn capture_gz() -> Vec<u8> {
    std::fs::read(capture_path()).expect("read the replay capture")
}

/// The capture, decompressed.
pub fn capture_plain() -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(capture_gz().as_slice())
        .read_to_end(&mut out)
        .expect("decompress the replay capture");
    out
}

/// Every non-empty line of the decompressed capture, without its newline.
pub fn capture_lines() -> Vec<Vec<u8>> {
    capture_plain()
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// The first capture line whose event type is `kind`, split into its receive
/// time and the raw JSON message.
pub fn first_message(kind: &str) -> (i64, Vec<u8>) {
    let needle = format!(r#""e":"{kind}""#);
    let line = capture_lines()
        .into_iter()
        .find(|line| {
            line.windows(needle.len())
                .any(|window| window == needle.as_bytes())
        })
        .unwrap_or_else(|| panic!("no {kind} line in {CAPTURE}"));
    let space = line
        .iter()
        .position(|&b| b == b' ')
        .expect("capture line has a timestamp");
    let ts = std::str::from_utf8(&line[..space])
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("capture timestamp is an integer");
    (ts, line[space + 1..].to_vec())
}
