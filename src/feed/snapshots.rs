//! The REST depth snapshots a live feed's books wait for (Binance's), and
//! how often the feed may ask for them.
//!
//! A book asks when a diff finds it waiting for a snapshot (at the start,
//! and after a gap or a lost connection). A venue counts every request
//! against a budget (Binance spot weighs `limit=1000` at 50 of 6,000 a
//! minute), and answers a feed that overspends with `429`, then an IP ban
//! (`418`). So, for the whole feed and across its connections:
//!
//! - at most [`MAX_IN_FLIGHT`] requests are out at once, and one starts at
//!   most every [`SPACING`] (at `limit=1000`, half of Binance's budget for
//!   an IP, spot or USD-M): a reconnect that finds a hundred books waiting
//!   asks for them over 100 s, not at once;
//! - a book still waiting after an answer (refused, too old to bridge the
//!   diffs held, or cut off by a lost connection) asks again after
//!   [`RETRY`], doubling with each such miss up to [`MAX_RETRY`], whether
//!   or not more diffs come; so does a book that loses sync again within
//!   [`STEADY`] of the last snapshot;
//! - a `429` or `418` holds every request back for its `Retry-After`
//!   ([`FetchError::back_off`]).
//!
//! The pace is the feed's own: two feeds on one IP each keep theirs.
//!
//! The requests run as tasks of their own and parse what they fetch, so a
//! large snapshot never holds up the feed's reading of its stream.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::rest::{self, FetchError};
use crate::normalize::depth::DepthMessage;
use crate::normalize::{binance, Parsed, Recognised};
use crate::wall_clock_ns;

/// Requests out at once, per feed.
pub const MAX_IN_FLIGHT: usize = 2;
/// The least time between the starts of two requests, per feed.
pub const SPACING: Duration = Duration::from_secs(1);
/// The first wait before a book that is still waiting asks again.
pub const RETRY: Duration = Duration::from_secs(1);
/// The longest such wait.
pub const MAX_RETRY: Duration = Duration::from_secs(30);
/// A book in sync this long has its misses forgotten.
pub const STEADY: Duration = Duration::from_secs(30);

/// How a snapshot request ended, for the book that asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The book is in sync.
    Synced,
    /// The book still waits: the snapshot was older than the diffs held,
    /// or there was none (refused, timed out, not a snapshot).
    StillWaiting,
}

/// One symbol's requests.
#[derive(Debug, Default)]
struct Requests {
    state: State,
    /// Answers in a row that left the book waiting.
    misses: u32,
    /// Not asked again before this.
    not_before: Option<Instant>,
    /// When its last snapshot brought the book in sync.
    synced_at: Option<Instant>,
}

impl Requests {
    /// One more miss: the next request waits longer.
    fn missed(&mut self, now: Instant) {
        self.misses = self.misses.saturating_add(1);
        let wait = RETRY
            .saturating_mul(1 << (self.misses - 1).min(8))
            .min(MAX_RETRY);
        self.not_before = Some(now + wait);
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Idle,
    /// Waiting for its turn.
    Queued,
    InFlight,
}

/// A live feed's snapshot requests; see the module docs.
pub struct DepthSnapshots {
    /// The URL with `{symbol}`; `None` for a feed that fetches none.
    template: Option<String>,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    requests: JoinSet<Result<DepthMessage, FetchError>>,
    /// The symbol each request out is for.
    request_symbols: HashMap<tokio::task::Id, String>,
    symbols: HashMap<String, Requests>,
    /// Symbols waiting for their turn, in the order they asked.
    queue: VecDeque<String>,
    /// No request starts before this.
    next_start: Instant,
}

impl DepthSnapshots {
    /// Requests to `template` (`None`: the feed fetches none), each with
    /// `timeout` for the whole answer.
    pub fn new(
        template: Option<String>,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Self {
        Self {
            template,
            tls,
            timeout,
            requests: JoinSet::new(),
            request_symbols: HashMap::new(),
            symbols: HashMap::new(),
            queue: VecDeque::new(),
            next_start: Instant::now(),
        }
    }

    /// `symbol`'s book waits for a snapshot: it is asked for in its turn,
    /// unless it already is.
    pub fn want(&mut self, symbol: &str) {
        if self.template.is_none() {
            return;
        }
        if !self.symbols.contains_key(symbol) {
            self.symbols.insert(symbol.to_owned(), Requests::default());
        }
        let Some(requests) = self.symbols.get_mut(symbol) else {
            return;
        };
        if requests.state == State::Idle {
            // Out of sync again: soon after the last snapshot, a miss.
            if let Some(synced_at) = requests.synced_at.take() {
                let now = Instant::now();
                if now.duration_since(synced_at) < STEADY {
                    requests.missed(now);
                } else {
                    requests.misses = 0;
                }
            }
            requests.state = State::Queued;
            self.queue.push_back(symbol.to_owned());
        }
        self.start_due();
    }

    /// When the next queued request may start, if any may: the caller
    /// calls [`Self::start_due`] then.
    pub fn next_due(&self) -> Option<Instant> {
        if self.requests.len() >= MAX_IN_FLIGHT {
            return None;
        }
        let ready = self
            .queue
            .iter()
            .filter_map(|symbol| self.symbols.get(symbol))
            .map(|requests| requests.not_before.unwrap_or(self.next_start))
            .min()?;
        Some(ready.max(self.next_start))
    }

    /// Starts the queued requests whose turn has come.
    pub fn start_due(&mut self) {
        let Some(template) = self.template.as_deref() else {
            return;
        };
        let now = Instant::now();
        while self.requests.len() < MAX_IN_FLIGHT && now >= self.next_start {
            let symbols = &self.symbols;
            let ready = self.queue.iter().position(|symbol| {
                symbols
                    .get(symbol)
                    .is_some_and(|r| r.not_before.is_none_or(|t| t <= now))
            });
            let Some(symbol) = ready.and_then(|at| self.queue.remove(at)) else {
                return;
            };
            if let Some(requests) = self.symbols.get_mut(&symbol) {
                requests.state = State::InFlight;
            }
            // Binance's REST API names symbols in upper case, its streams
            // in lower.
            let url = rest::snapshot_url(template, &symbol.to_ascii_uppercase());
            let (tls, timeout) = (self.tls.clone(), self.timeout);
            let request = self.requests.spawn(async move {
                let body = rest::get(&url, &tls, timeout).await?;
                parse_snapshot(body.to_vec())
            });
            self.request_symbols.insert(request.id(), symbol);
            self.next_start = now + SPACING;
        }
    }

    /// Whether a request is out.
    pub fn awaited(&self) -> bool {
        !self.requests.is_empty()
    }

    /// The next answer, and whom it is for; pending for ever when no
    /// request is out.
    pub async fn next_answer(&mut self) -> (String, Result<DepthMessage, FetchError>) {
        loop {
            let (id, answer) = match self.requests.join_next_with_id().await {
                Some(Ok((id, answer))) => (id, answer),
                // Only a bug in the client would panic a request; its book
                // asks again, as after any failure.
                Some(Err(error)) => (
                    error.id(),
                    Err(FetchError::Failed(format!("the request failed: {error}"))),
                ),
                None => std::future::pending().await,
            };
            if let Some(symbol) = self.request_symbols.remove(&id) {
                return (symbol, answer);
            }
        }
    }

    /// Notes how `symbol`'s request ended for its book. A book still
    /// waiting is queued again, to start after its wait; one in sync asks
    /// again at once should it lose sync later (a gap).
    pub fn answered(&mut self, symbol: &str, answer: Answer) {
        let Some(requests) = self.symbols.get_mut(symbol) else {
            return;
        };
        requests.state = State::Idle;
        match answer {
            Answer::Synced => {
                requests.not_before = None;
                requests.synced_at = Some(Instant::now());
            }
            Answer::StillWaiting => {
                requests.missed(Instant::now());
                requests.state = State::Queued;
                self.queue.push_back(symbol.to_owned());
            }
        }
        self.start_due();
    }

    /// Holds every request back for `wait`: the venue asked the feed to
    /// slow down.
    pub fn back_off(&mut self, wait: Duration) {
        self.next_start = self.next_start.max(Instant::now() + wait);
    }

    /// The connection is lost, and with it the books: requests out are
    /// dropped (each a miss: the venue counted it) and nothing is asked for
    /// until the next connection's diffs ask again. Waits and holds stay, so
    /// a flapping connection does not make the feed ask more often.
    pub fn connection_lost(&mut self) {
        self.requests = JoinSet::new();
        self.request_symbols.clear();
        self.queue.clear();
        let now = Instant::now();
        for requests in self.symbols.values_mut() {
            if requests.state == State::InFlight {
                requests.missed(now);
            }
            requests.state = State::Idle;
            requests.synced_at = None;
        }
    }
}

/// A REST depth snapshot from its body.
fn parse_snapshot(mut body: Vec<u8>) -> Result<DepthMessage, FetchError> {
    let mut depth = DepthMessage::default();
    match binance::parse_message_with_depth(&mut body, wall_clock_ns(), &mut depth) {
        Ok(Parsed::Recognised(Recognised::DepthSnapshot)) if depth.has_negative_size() => Err(
            FetchError::Failed("the snapshot has a negative size".into()),
        ),
        Ok(Parsed::Recognised(Recognised::DepthSnapshot)) => Ok(depth),
        Ok(_) => Err(FetchError::Failed(
            "the answer is not a depth snapshot".into(),
        )),
        Err(error) => Err(FetchError::Failed(format!(
            "the answer does not parse: {error}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests to a port nothing listens on: each fails at once.
    fn snapshots() -> DepthSnapshots {
        let tls = crate::client::tls_client_config(None).expect("web roots");
        let template = "http://127.0.0.1:9/depth?symbol={symbol}".to_owned();
        DepthSnapshots::new(Some(template), tls, Duration::from_secs(5))
    }

    #[tokio::test]
    async fn requests_are_spaced_and_at_most_two_are_out() {
        let mut snapshots = snapshots();
        let asked = Instant::now();
        snapshots.want("AAA");
        assert_eq!(snapshots.requests.len(), 1, "the first starts at once");
        snapshots.want("AAA");
        snapshots.want("BBB");
        assert_eq!(snapshots.requests.len(), 1, "the next waits its turn");
        let due = snapshots.next_due().expect("BBB is queued");
        assert!(due >= asked + SPACING, "{:?}", due - asked);
        snapshots.want("CCC");
        snapshots.next_start = Instant::now();
        snapshots.start_due();
        assert_eq!(snapshots.requests.len(), MAX_IN_FLIGHT);
        assert_eq!(snapshots.next_due(), None, "none starts while two are out");
        assert_eq!(snapshots.queue, ["CCC"]);
    }

    #[tokio::test]
    async fn a_book_still_waiting_asks_again_later_and_longer_each_time() {
        let mut snapshots = snapshots();
        snapshots.want("AAA");
        let (symbol, answer) = snapshots.next_answer().await;
        assert_eq!(symbol, "AAA");
        assert!(answer.is_err(), "nothing listens there");
        let answered = Instant::now();
        snapshots.answered("AAA", Answer::StillWaiting);
        let first = snapshots.next_due().expect("asked again without a diff");
        assert!(first >= answered + RETRY);
        snapshots.symbols.get_mut("AAA").expect("known").not_before = Some(Instant::now());
        snapshots.next_start = Instant::now();
        snapshots.start_due();
        let _ = snapshots.next_answer().await;
        let answered = Instant::now();
        snapshots.answered("AAA", Answer::StillWaiting);
        let second = snapshots.next_due().expect("asked again");
        assert!(second >= answered + 2 * RETRY, "the wait doubled");

        // A lost connection keeps the wait, so a flapping one asks no sooner.
        snapshots.connection_lost();
        assert_eq!(
            snapshots.next_due(),
            None,
            "nothing asked until a diff asks"
        );
        snapshots.want("AAA");
        assert_eq!(snapshots.next_due(), Some(second));

        // A request cut off by a lost connection is a miss too.
        snapshots.symbols.get_mut("AAA").expect("known").not_before = Some(Instant::now());
        snapshots.next_start = Instant::now();
        snapshots.start_due();
        assert_eq!(snapshots.requests.len(), 1);
        let lost = Instant::now();
        snapshots.connection_lost();
        snapshots.want("AAA");
        let third = snapshots.next_due().expect("queued");
        assert!(third >= lost + 4 * RETRY, "the wait doubled again");
    }

    #[tokio::test]
    async fn a_book_that_loses_sync_soon_after_a_snapshot_waits_longer_each_time() {
        let mut snapshots = snapshots();
        snapshots.want("AAA");
        let _ = snapshots.next_answer().await;
        snapshots.answered("AAA", Answer::Synced);
        // Long in sync: a gap asks at once.
        let requests = snapshots.symbols.get_mut("AAA").expect("known");
        requests.synced_at = Some(Instant::now() - STEADY);
        requests.misses = 3;
        snapshots.next_start = Instant::now();
        snapshots.want("AAA");
        assert_eq!(snapshots.requests.len(), 1, "asked at once");
        assert_eq!(snapshots.symbols["AAA"].misses, 0, "misses forgotten");
        let _ = snapshots.next_answer().await;
        // In sync, then out again at once: a miss, and a wait.
        snapshots.answered("AAA", Answer::Synced);
        let gap = Instant::now();
        snapshots.next_start = gap;
        snapshots.want("AAA");
        assert!(snapshots.requests.is_empty(), "not at once");
        assert!(snapshots.next_due().expect("queued") >= gap + RETRY);
    }

    #[tokio::test]
    async fn a_venue_that_says_slow_down_holds_every_request() {
        let mut snapshots = snapshots();
        let refused = FetchError::Refused {
            status: 429,
            retry_after: None,
        };
        let wait = refused.back_off().expect("429 asks to back off");
        assert_eq!(wait, rest::DEFAULT_BACK_OFF);
        let told = FetchError::Refused {
            status: 418,
            retry_after: Some(Duration::from_secs(120)),
        };
        assert_eq!(told.back_off(), Some(Duration::from_secs(120)));
        let busy = FetchError::Refused {
            status: 503,
            retry_after: Some(Duration::from_secs(5)),
        };
        assert_eq!(busy.back_off(), None, "only 429 and 418 hold the feed");
        let held = Instant::now();
        snapshots.back_off(wait);
        snapshots.want("AAA");
        assert!(snapshots.requests.is_empty());
        let due = snapshots.next_due().expect("queued");
        assert!(due >= held + wait);
    }

    #[test]
    fn an_answer_is_a_snapshot_or_a_failure_that_says_why() {
        let parsed = |body: &str| parse_snapshot(body.as_bytes().to_vec());
        let snapshot = parsed(r#"{"lastUpdateId":10,"bids":[["99","1"]],"asks":[["101","2"]]}"#)
            .expect("a REST snapshot");
        assert_eq!(snapshot.last_update_id, Some(10));
        assert_eq!((snapshot.bids.len(), snapshot.asks.len()), (1, 1));
        for (body, says) in [
            ("<html>busy</html>", "does not parse"),
            (
                r#"{"code":-1121,"msg":"Invalid symbol."}"#,
                "does not parse",
            ),
            (
                r#"{"e":"depthUpdate","s":"X","U":1,"u":1,"b":[],"a":[]}"#,
                "not a depth snapshot",
            ),
            (
                r#"{"lastUpdateId":10,"bids":[["99","-1"]],"asks":[]}"#,
                "negative size",
            ),
        ] {
            let error = parsed(body).expect_err(body).to_string();
            assert!(error.contains(says), "{body}: {error}");
        }
    }

    #[test]
    fn a_feed_without_a_snapshot_url_asks_for_nothing() {
        let tls = crate::client::tls_client_config(None).expect("web roots");
        let mut snapshots = DepthSnapshots::new(None, tls, Duration::from_secs(1));
        snapshots.want("AAA");
        assert!(snapshots.queue.is_empty());
        assert_eq!(snapshots.next_due(), None);
    }
}
