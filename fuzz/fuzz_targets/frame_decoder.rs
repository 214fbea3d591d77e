//! The RFC 6455 frame decoder, fed arbitrary bytes in arbitrary pieces, as a
//! socket would deliver them.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tickwire::session::codec::{Decoder, Inbound};

/// Small, so the fuzzer reaches the size check with short inputs.
const MAX_MESSAGE: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    // The first byte picks the size of the pieces the rest arrives in.
    let piece = usize::from(split % 64) + 1;
    let mut decoder = Decoder::new(MAX_MESSAGE);
    let mut buf = BytesMut::new();
    for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Inbound::Text(text))) => assert!(text.len() <= MAX_MESSAGE),
                Ok(Some(_)) => {}
                Ok(None) => break,
                // A session closes on any error: nothing more is decoded.
                Err(_) => return,
            }
        }
    }
});
