//! Lines of tickwire's own NDJSON replay format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire::normalize::native;

fuzz_target!(|data: &[u8]| {
    let _ = native::parse_line(&mut data.to_vec());
});
