//! Binance messages, live (one WebSocket message) and captured (one line
//! of a recording).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire::normalize::binance;

fuzz_target!(|data: &[u8]| {
    // simd-json parses in place, so each parser gets its own copy.
    let _ = binance::parse_message(&mut data.to_vec(), 0);
    let _ = binance::parse_capture_line(&mut data.to_vec());
});
