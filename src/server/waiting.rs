//! A server-wide bound on sockets waiting for a request head.
//!
//! Until its request head is in, a socket is only a file descriptor that
//! says nothing. `--max-connections-per-ip` bounds them per address, but many
//! addresses, each under that limit, could still open sockets that never send
//! a byte and hold every descriptor for the head timeout; then nobody is even
//! accepted. So at most [`ServerConfig::max_waiting`](super::ServerConfig)
//! wait at once, and as many more as `--max-connections` has room for beside
//! the clients admitted at the time (their descriptors are free); when one
//! more begins to wait, the one that has waited longest is closed unread to
//! make room. A client that sends its request at
//! once is through long before it could be the oldest; silent sockets are not.
//!
//! A socket waits from accept (a TLS handshake included) until hyper hands
//! its first request to the service, and again, on a keep-alive connection,
//! from when its response has been written to the socket in full (a slow
//! reader still taking one is not waiting: the stall bound is for it) until
//! the next request. The second is counted as well because otherwise one request would
//! buy each socket a place outside the bound for as long again (hyper's head
//! timeout applies to a next request too, but only bounds how long). A
//! WebSocket upgrade or an SSE stream does not wait again: it has its own
//! limits (`--max-connections`, pings, the stall bound).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use axum::http::{Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::metrics::Metrics;

/// The sockets waiting for a request head, oldest first, at most `bound`
/// and the room for clients not taken.
#[derive(Debug)]
pub(crate) struct Waiting {
    bound: usize,
    /// `--max-connections`: those not admitted leave their descriptors to
    /// waiting sockets.
    clients: usize,
    queue: Mutex<Queue>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Queue {
    /// By ticket, which rises with every wait begun: the first entry has
    /// waited longest. Each entry closes its socket when cancelled.
    oldest_first: BTreeMap<u64, CancellationToken>,
    last_ticket: u64,
}

impl Waiting {
    /// At most `bound` waiting (at least one), and as many more as there is
    /// room for beside the clients admitted (`metrics.connections`) out of
    /// `clients`.
    pub fn new(bound: usize, clients: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            bound: bound.max(1),
            clients,
            queue: Mutex::default(),
            metrics,
        }
    }

    /// How many may wait now.
    fn bound_now(&self) -> usize {
        let admitted = usize::try_from(self.metrics.connections.load(Relaxed)).unwrap_or(0);
        self.bound
            .saturating_add(self.clients.saturating_sub(admitted))
    }

    /// A socket just accepted, waiting from now on, and whether another
    /// was evicted to make room.
    pub fn admit(self: &Arc<Self>) -> (Arc<WaitingSlot>, bool) {
        let slot = Arc::new(WaitingSlot {
            waiting: self.clone(),
            evict: CancellationToken::new(),
            ticket: AtomicU64::new(0),
            unsent: AtomicBool::new(false),
        });
        let evicted = slot.wait();
        (slot, evicted)
    }

    /// Sockets waiting now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().oldest_first.len()
    }

    /// Publishes how many wait (`tickwire_http_waiting`), under the lock
    /// that changed it, so the gauge is never left behind a later change.
    fn report(&self, queue: &Queue) {
        let waiting = i64::try_from(queue.oldest_first.len()).unwrap_or(i64::MAX);
        self.metrics.http_waiting.store(waiting, Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Every critical section leaves the queue consistent, even on panic.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection's place in [`Waiting`], while it waits; it leaves on drop.
#[derive(Debug)]
pub(crate) struct WaitingSlot {
    waiting: Arc<Waiting>,
    /// Cancelled when the connection is to be closed to make room.
    evict: CancellationToken,
    /// Its key in the queue while it waits, 0 when not; changed only with
    /// the queue locked. Still set after an eviction, which only drops the
    /// connection sooner.
    ticket: AtomicU64,
    /// Its response is done, but perhaps not all written yet: it waits
    /// again once it is ([`Self::sent`]).
    unsent: AtomicBool,
}

impl WaitingSlot {
    /// Begins to wait, as the newest; when that makes too many (fewer may
    /// wait once more clients are admitted), the connections that have
    /// waited longest are closed, and true returned. No effect while it
    /// already waits, or once it was evicted.
    pub fn wait(&self) -> bool {
        let bound = self.waiting.bound_now();
        let mut oldest = Vec::new();
        {
            let mut queue = self.waiting.lock();
            if self.ticket.load(Relaxed) != 0 || self.evict.is_cancelled() {
                return false;
            }
            queue.last_ticket += 1;
            let ticket = queue.last_ticket;
            queue.oldest_first.insert(ticket, self.evict.clone());
            self.ticket.store(ticket, Relaxed);
            // The bound is at least one, so the newest stays.
            while queue.oldest_first.len() > bound {
                oldest.extend(queue.oldest_first.pop_first());
            }
            self.waiting.report(&queue);
        }
        self.waiting
            .metrics
            .http_waiting_evicted
            .fetch_add(oldest.len() as u64, Relaxed);
        for (_, evict) in &oldest {
            evict.cancel();
        }
        !oldest.is_empty()
    }

    /// Its request head is in: it stops waiting.
    pub fn stop(&self) {
        let mut queue = self.waiting.lock();
        self.unsent.store(false, Relaxed);
        let ticket = self.ticket.swap(0, Relaxed);
        if ticket != 0 {
            queue.oldest_first.remove(&ticket);
            self.waiting.report(&queue);
        }
    }

    /// Its response is done: it waits again once all of it is written.
    pub fn wait_once_sent(&self) {
        self.unsent.store(true, Relaxed);
    }

    /// Everything written to the connection so far is sent (a flush is
    /// through): after a response, it waits from now on.
    pub fn sent(&self) {
        // Loaded first: a stream's flushes are many, its responses done few.
        if self.unsent.load(Relaxed) && self.unsent.swap(false, Relaxed) {
            self.wait();
        }
    }

    /// Resolves once the connection is to be closed to make room.
    pub fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.evict.cancelled()
    }
}

impl Drop for WaitingSlot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `response`, whose connection waits for its next request once hyper is
/// done with the body (all of it taken, or the connection gone) and has
/// written it out ([`WaitingSlot::sent`]). Not after a
/// `101`: the socket then belongs to a WebSocket session.
pub(crate) fn waits_after<B>(
    response: Response<B>,
    slot: Arc<WaitingSlot>,
) -> Response<WaitAfter<B>> {
    let slot = (response.status() != StatusCode::SWITCHING_PROTOCOLS).then_some(slot);
    response.map(|body| WaitAfter { body, slot })
}

/// A response body that puts its connection back among the waiting once
/// dropped and sent; see [`waits_after`].
pub(crate) struct WaitAfter<B> {
    body: B,
    slot: Option<Arc<WaitingSlot>>,
}

impl<B: Body + Unpin> Body for WaitAfter<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for WaitAfter<B> {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            slot.wait_once_sent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(bound: usize) -> (Arc<Waiting>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        (Arc::new(Waiting::new(bound, 0, metrics.clone())), metrics)
    }

    fn evicted(slot: &WaitingSlot) -> bool {
        slot.evict.is_cancelled()
    }

    #[test]
    fn the_longest_waiting_makes_room_and_is_counted() {
        let (waiting, metrics) = waiting(2);
        let (first, _) = waiting.admit();
        let (second, _) = waiting.admit();
        assert_eq!(waiting.len(), 2);
        let (third, made_room) = waiting.admit();
        assert!(made_room);
        assert!(evicted(&first) && !evicted(&second) && !evicted(&third));
        assert_eq!(waiting.len(), 2);
        assert_eq!(metrics.http_waiting_evicted.load(Relaxed), 1);
        assert_eq!(metrics.http_waiting.load(Relaxed), 2);
        // An evicted slot does not come back, and leaving twice is harmless.
        assert!(!first.wait());
        first.stop();
        drop(first);
        assert_eq!(waiting.len(), 2);
        assert!(!evicted(&second) && !evicted(&third));
    }

    #[test]
    fn clients_not_admitted_leave_their_room_to_waiting_sockets() {
        let metrics = Arc::new(Metrics::default());
        let waiting = Arc::new(Waiting::new(1, 2, metrics.clone()));
        // One client of two admitted: room for one more socket to wait.
        metrics.connections.store(1, Relaxed);
        let (first, _) = waiting.admit();
        let (second, made_room) = waiting.admit();
        assert!(!made_room);
        assert_eq!(waiting.len(), 2);
        // Both admitted: the bound alone.
        metrics.connections.store(2, Relaxed);
        let (third, made_room) = waiting.admit();
        assert!(made_room);
        assert!(evicted(&first) && evicted(&second) && !evicted(&third));
        assert_eq!(waiting.len(), 1);
    }

    #[test]
    fn a_request_ends_the_wait_and_the_next_wait_is_the_newest() {
        let (waiting, metrics) = waiting(2);
        let (served, _) = waiting.admit();
        let (silent, _) = waiting.admit();
        served.stop();
        assert_eq!(waiting.len(), 1);
        let (another, made_room) = waiting.admit();
        assert!(!made_room);
        assert_eq!(metrics.http_waiting_evicted.load(Relaxed), 0);
        // Back to waiting after its response: the newest, so the silent
        // socket, older, makes room for it.
        assert!(served.wait());
        assert!(!served.wait());
        assert!(evicted(&silent) && !evicted(&another) && !evicted(&served));
        assert_eq!(waiting.len(), 2);
        drop((served, another));
        assert_eq!(waiting.len(), 0);
        assert_eq!(metrics.http_waiting.load(Relaxed), 0);
    }

    #[test]
    fn a_body_puts_its_connection_back_when_done_and_sent_unless_upgraded() {
        let (waiting, _) = waiting(4);
        let (slot, _) = waiting.admit();
        slot.stop();
        let upgraded = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .body(axum::body::Body::empty())
            .expect("response");
        drop(waits_after(upgraded, slot.clone()));
        assert_eq!(waiting.len(), 0);
        drop(waits_after(
            Response::new(axum::body::Body::empty()),
            slot.clone(),
        ));
        // Not before it is written out.
        assert_eq!(waiting.len(), 0);
        slot.sent();
        assert_eq!(waiting.len(), 1);
        slot.sent();
        assert_eq!(waiting.len(), 1);
        drop(slot);
        assert_eq!(waiting.len(), 0);
    }
}
