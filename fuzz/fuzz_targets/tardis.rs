//! Tardis CSV: the first line is the header that configures the parser, every
//! further line a row.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire::normalize::tardis::TardisCsv;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let Some(header) = lines.next() else {
        return;
    };
    let Ok(csv) = TardisCsv::from_header(header) else {
        return;
    };
    for line in lines {
        let _ = csv.parse_line(line);
    }
});
