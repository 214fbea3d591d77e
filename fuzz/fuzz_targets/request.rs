//! Client control messages: any text a client sends as a request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire::protocol::{parse_request, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // The frame decoder refuses non-UTF-8 text first.
    };
    if let Ok(Request::Subscribe {
        max_rate_hz: Some(rate),
        ..
    }) = parse_request(text)
    {
        assert!(rate.is_finite() && rate > 0.0);
    }
});
