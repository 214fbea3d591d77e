//! Feed: where ticks come from. Today that is the replay of recorded files
//! ([`replay`]), read by [`source`] and merged across files by [`merge`].
//! [`config`] reads the `feeds/*.toml` files that describe a feed.

pub mod config;
pub mod merge;
pub mod replay;
pub mod source;

/// A sample of real Binance captures compiled into the binary, so `tickwire
/// serve` with no arguments has something to serve (see `replay-data/README.md`).
pub fn bundled_sample() -> Vec<replay::ReplaySource> {
    use replay::{ReplayInput, ReplaySource};
    vec![
        ReplaySource {
            prefix: Some("spot".into()),
            input: ReplayInput::Bundled {
                name: "binance-spot-btcusdt-20240808.gz (bundled)",
                bytes: include_bytes!("../../replay-data/binance-spot-btcusdt-20240808.gz"),
            },
        },
        ReplaySource {
            prefix: Some("usdm".into()),
            input: ReplayInput::Bundled {
                name: "binance-usdm-btcusdt-20240808.gz (bundled)",
                bytes: include_bytes!("../../replay-data/binance-usdm-btcusdt-20240808.gz"),
            },
        },
    ]
}
