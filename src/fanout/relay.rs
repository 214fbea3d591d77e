//! Wake-ups from publishers that run off the runtime, handed over in batches.
//!
//! A replay plays on a thread of its own, so every session it wakes is woken
//! from outside the runtime, and a current-thread runtime (the server's with
//! one worker) writes to its `eventfd` for each such wake-up: a system call
//! per session. A thread that has entered a [`WakeRelay`] instead collects
//! the wakers one publish reaches and hands them over at once to a task on
//! the runtime, which wakes them there, where a wake-up is a push onto the
//! local queue. A publish then costs at most one cross-thread wake-up (none
//! while the relaying task is already due to run), however many sessions it
//! reaches. A multi-thread runtime keeps its own way: it makes a system call
//! only to rouse an idle worker, and a task waking hundreds of others there
//! would overflow its worker's local queue.
//!
//! The hand-over happens at the end of every [`Subscribers::queue_all`], the
//! one place publishers queue slots, so a wake-up is never held past the
//! publish that made it. A session's waker is taken when it is collected and
//! is back only once the session has been polled again, so the list holds
//! about one waker per session woken since the relaying task last ran.
//!
//! [`Subscribers::queue_all`]: super::subscribers::Subscribers::queue_all

use std::cell::RefCell;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use futures_util::task::AtomicWaker;

/// The runtime side of a relay: a task that wakes, on the runtime, the
/// sessions a publisher on another thread found.
#[derive(Debug)]
pub struct WakeRelay {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    handed_over: Mutex<Vec<Waker>>,
    relaying_task: AtomicWaker,
    closed: AtomicBool,
    /// Set once the relaying task has ended or was dropped with its runtime:
    /// from then on wake-ups go straight to their tasks.
    gone: AtomicBool,
}

thread_local! {
    /// Set while this thread publishes through a relay.
    static RELAYED: RefCell<Option<Relayed>> = const { RefCell::new(None) };
}

#[derive(Debug)]
struct Relayed {
    shared: Arc<Shared>,
    collected: Vec<Waker>,
}

impl WakeRelay {
    /// Starts the relaying task on the current runtime if that is a
    /// current-thread one. Otherwise (`None`) wake-ups go straight to their
    /// tasks: outside a runtime there is nothing to relay to, and a
    /// multi-thread runtime is better left to place them itself.
    pub fn start() -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
            return None;
        }
        let shared = Arc::new(Shared::default());
        runtime.spawn(relay(shared.clone()));
        Some(Self { shared })
    }

    /// Routes this thread's wake-ups through the relay until the guard,
    /// which cannot outlive the relay, is dropped. One relay per thread.
    pub fn enter(&self) -> RelayGuard<'_> {
        RELAYED.with(|relayed| {
            let mut relayed = relayed.borrow_mut();
            debug_assert!(relayed.is_none(), "this thread already relays");
            *relayed = Some(Relayed {
                shared: self.shared.clone(),
                collected: Vec::new(),
            });
        });
        RelayGuard {
            _relay: std::marker::PhantomData,
        }
    }
}

impl Drop for WakeRelay {
    /// The relaying task wakes what it still holds, then ends.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.relaying_task.wake();
    }
}

/// Keeps the thread that made it publishing through a relay; dropping it
/// hands over anything collected and ends that.
#[derive(Debug)]
pub struct RelayGuard<'relay> {
    /// Borrows the relay, and is not `Send`: the setting belongs to the
    /// thread that entered.
    _relay: std::marker::PhantomData<(&'relay WakeRelay, *const ())>,
}

impl Drop for RelayGuard<'_> {
    fn drop(&mut self) {
        hand_over();
        let _ = RELAYED.try_with(|relayed| {
            if let Ok(mut relayed) = relayed.try_borrow_mut() {
                relayed.take();
            }
        });
    }
}

/// Takes `waker`'s waker for the relay if this thread publishes through one
/// (true), else leaves it to be woken at once (false).
pub(super) fn collect(waker: &AtomicWaker) -> bool {
    let collected = RELAYED.try_with(|relayed| {
        let Ok(mut relayed) = relayed.try_borrow_mut() else {
            return false;
        };
        let Some(relayed) = relayed.as_mut() else {
            return false;
        };
        if relayed.shared.gone.load(Ordering::Acquire) {
            return false;
        }
        if let Some(waker) = waker.take() {
            relayed.collected.push(waker);
        }
        true
    });
    collected.unwrap_or(false)
}

/// Hands what this thread collected to the relaying task, waking that task
/// if it had nothing pending (else it is already due to run).
pub(super) fn hand_over() {
    let _ = RELAYED.try_with(|relayed| {
        let Ok(mut relayed) = relayed.try_borrow_mut() else {
            return;
        };
        let Some(relayed) = relayed.as_mut() else {
            return;
        };
        if relayed.collected.is_empty() {
            return;
        }
        let shared = &relayed.shared;
        let was_idle = {
            let mut handed_over = shared.handed_over.lock().unwrap_or_else(|e| e.into_inner());
            let was_idle = handed_over.is_empty();
            handed_over.append(&mut relayed.collected);
            was_idle
        };
        if shared.gone.load(Ordering::Acquire) {
            // Nobody will take them: wake them here, as without a relay.
            let orphans =
                std::mem::take(&mut *shared.handed_over.lock().unwrap_or_else(|e| e.into_inner()));
            orphans.into_iter().for_each(Waker::wake);
        } else if was_idle {
            shared.relaying_task.wake();
        }
    });
}

/// Marks the relay gone when its task ends, or is dropped with its runtime.
struct MarkGone(Arc<Shared>);

impl Drop for MarkGone {
    fn drop(&mut self) {
        self.0.gone.store(true, Ordering::Release);
    }
}

/// Wakes what is handed over until the relay is closed. It does not yield
/// between batches: on a current-thread runtime none of the sessions it woke
/// can wait again (and be collected again) before it does.
async fn relay(shared: Arc<Shared>) {
    let _gone = MarkGone(shared.clone());
    // Swapped with the shared list, so both keep their storage.
    let mut taken = Vec::new();
    loop {
        let closed = poll_fn(|cx| {
            // Register first, then look: a hand-over in between wakes us.
            shared.relaying_task.register(cx.waker());
            {
                let mut handed_over = shared.handed_over.lock().unwrap_or_else(|e| e.into_inner());
                std::mem::swap(&mut *handed_over, &mut taken);
            }
            if !taken.is_empty() {
                Poll::Ready(false)
            } else if shared.closed.load(Ordering::Acquire) {
                Poll::Ready(true)
            } else {
                Poll::Pending
            }
        })
        .await;
        if closed {
            return;
        }
        for waker in taken.drain(..) {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Wake};

    use super::*;
    use crate::fanout::subscribers::Subscribers;
    use crate::fanout::{Mailbox, Slot};

    /// A session that waits on its mailbox, as far as wake-ups go.
    struct Session {
        mailbox: Arc<Mailbox>,
        wakes: Arc<CountWakes>,
    }

    #[derive(Default)]
    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Session {
        fn waiting() -> Self {
            let session = Self {
                mailbox: Arc::new(Mailbox::default()),
                wakes: Arc::default(),
            };
            let waker = Waker::from(session.wakes.clone());
            let polled = session
                .mailbox
                .poll_notified(&mut Context::from_waker(&waker));
            assert!(polled.is_pending());
            session
        }

        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::SeqCst)
        }
    }

    /// A current-thread runtime and a relay started on it.
    fn runtime_with_relay() -> (tokio::runtime::Runtime, WakeRelay) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
        let relay = {
            let _inside = runtime.enter();
            WakeRelay::start().expect("started inside a runtime")
        };
        (runtime, relay)
    }

    /// Gives the runtime's tasks (the relaying one) their turns.
    fn run_tasks(runtime: &tokio::runtime::Runtime) {
        runtime.block_on(async {
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
        });
    }

    #[test]
    fn a_publish_off_the_runtime_wakes_its_sessions_on_the_runtime() {
        let (runtime, relay) = runtime_with_relay();
        // Waiting for a hand-over, as it does between publishes.
        run_tasks(&runtime);
        let sessions: Vec<Session> = (0..100).map(|_| Session::waiting()).collect();
        let subscribers = Subscribers::default();
        for session in &sessions {
            subscribers.add(Arc::new(Slot::new(session.mailbox.clone(), 0)));
        }
        let (published, publish_done) = std::sync::mpsc::channel();
        let (checked, check_done) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let (relay, subscribers, sessions) = (&relay, &subscribers, &sessions);
            scope.spawn(move || {
                let _relayed = relay.enter();
                subscribers.queue_all();
                // Handed over, not woken from here.
                assert!(sessions.iter().all(|s| s.wakes() == 0));
                published.send(()).expect("the test waits");
                // Still relaying: the publish itself handed its wake-ups over.
                check_done.recv().expect("the test answers");
            });
            publish_done.recv().expect("the publisher reports");
            run_tasks(&runtime);
            let woken = sessions.iter().all(|s| s.wakes() == 1);
            let notified = sessions
                .iter()
                .all(|s| s.mailbox.pending.load(Ordering::SeqCst));
            checked.send(()).expect("the publisher waits");
            assert!(woken && notified);
        });
    }

    #[test]
    fn without_a_relay_a_publish_wakes_at_once() {
        let session = Session::waiting();
        let subscribers = Subscribers::default();
        subscribers.add(Arc::new(Slot::new(session.mailbox.clone(), 0)));
        subscribers.queue_all();
        assert_eq!(session.wakes(), 1);
        assert!(WakeRelay::start().is_none(), "no runtime to relay to");
    }

    #[test]
    fn a_multi_thread_runtime_places_its_wake_ups_itself() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("a multi-thread runtime");
        let _inside = runtime.enter();
        assert!(WakeRelay::start().is_none());
    }

    #[test]
    fn once_its_runtime_is_gone_a_relay_lets_wake_ups_through() {
        let (runtime, relay) = runtime_with_relay();
        run_tasks(&runtime);
        // Shutting the runtime down drops the relaying task unfinished.
        drop(runtime);
        let session = Session::waiting();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _relayed = relay.enter();
                session.mailbox.notify();
            });
        });
        assert_eq!(session.wakes(), 1);
    }

    #[test]
    fn leaving_the_relay_hands_over_what_it_holds_and_closing_it_ends_its_task() {
        let (runtime, relay) = runtime_with_relay();
        let session = Session::waiting();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let relayed = relay.enter();
                session.mailbox.notify();
                assert_eq!(session.wakes(), 0);
                drop(relayed);
                // This thread wakes directly again.
                let other = Session::waiting();
                other.mailbox.notify();
                assert_eq!(other.wakes(), 1);
            });
        });
        run_tasks(&runtime);
        assert_eq!(session.wakes(), 1);
        assert_eq!(runtime.metrics().num_alive_tasks(), 1);
        drop(relay);
        run_tasks(&runtime);
        assert_eq!(runtime.metrics().num_alive_tasks(), 0);
    }
}
