//! Feed: where ticks come from — the replay of recorded files ([`replay`],
//! read by [`source`] and merged across files by [`merge`]) or a live exchange
//! upstream ([`live`], whose Binance books start from a REST snapshot fetched
//! by [`rest`]), which [`record`] can also write to a replay file, or
//! made-up random-walk quotes at a set rate ([`synthetic`]).
//! [`config`] reads the `feeds/*.toml` files that describe a feed, and
//! [`spawn`] starts one of any kind.

pub mod config;
pub mod live;
pub mod merge;
pub mod record;
pub mod replay;
pub mod rest;
pub mod snapshots;
pub mod source;
pub mod synthetic;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::fanout::Hub;
use crate::metrics::FeedStats;

/// A running feed of any kind.
#[derive(Debug)]
pub enum FeedHandle {
    Replay(replay::ReplayHandle),
    Live(live::LiveHandle),
    Synthetic(synthetic::SyntheticHandle),
}

impl FeedHandle {
    /// The feed's counters.
    pub fn stats(&self) -> &Arc<FeedStats> {
        match self {
            FeedHandle::Replay(handle) => handle.stats(),
            FeedHandle::Live(handle) => handle.stats(),
            FeedHandle::Synthetic(handle) => handle.stats(),
        }
    }
}

/// Why a feed could not start.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Replay(#[from] replay::ReplayError),
    #[error(transparent)]
    Live(#[from] live::LiveError),
    #[error(transparent)]
    Synthetic(#[from] synthetic::InvalidConfig),
}

/// Starts a feed into `hub`; it stops when `shutdown` is cancelled.
pub fn spawn(
    hub: Arc<Hub>,
    config: config::FeedConfig,
    shutdown: CancellationToken,
) -> Result<FeedHandle, FeedError> {
    Ok(match config {
        config::FeedConfig::Replay(config) => {
            FeedHandle::Replay(replay::spawn(hub, config, shutdown)?)
        }
        config::FeedConfig::Live(config) => FeedHandle::Live(live::spawn(hub, config, shutdown)?),
        config::FeedConfig::Synthetic(config) => {
            FeedHandle::Synthetic(synthetic::spawn(hub, config, shutdown)?)
        }
    })
}

/// The name a feed's symbol is served under: `PREFIX:SYMBOL` with a prefix,
/// so two venues' `BTCUSDT` never merge, or the source's own name without.
pub fn served_name(prefix: Option<&str>, symbol: &str) -> String {
    match prefix {
        Some(prefix) => format!("{prefix}:{symbol}"),
        None => symbol.to_owned(),
    }
}

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
