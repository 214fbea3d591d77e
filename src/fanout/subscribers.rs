//! The slots subscribed to one channel.
//!
//! Publishers read the list on every version, lock-free; subscribing and
//! unsubscribing replace it under a lock (copy on write). Copying one flat list
//! would cost a reference-count increment and decrement per subscriber — a
//! cache miss each, since every slot is its own allocation — so a popular
//! symbol's ten-thousandth subscriber would pay for all the others, and
//! connecting many clients would be quadratic. The list is therefore kept in
//! chunks of [`CHUNK`] slots: a change copies the chunk table (one pointer per
//! chunk) and the one or two chunks it touches.

use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::Slot;

/// Slots per chunk: a change copies about `len / CHUNK + 2 * CHUNK` pointers.
const CHUNK: usize = 64;
// `queue_all` notes a chunk's positions in bytes.
const _: () = assert!(CHUNK <= 256);

type Chunk = Arc<Vec<Arc<Slot>>>;

#[derive(Debug)]
pub(super) struct Subscribers {
    /// Every chunk is full except the last, which is never empty.
    chunks: ArcSwap<Vec<Chunk>>,
    len: AtomicUsize,
    edit: Mutex<()>,
}

impl Default for Subscribers {
    fn default() -> Self {
        Self {
            chunks: ArcSwap::from_pointee(Vec::new()),
            len: AtomicUsize::new(0),
            edit: Mutex::new(()),
        }
    }
}

impl Subscribers {
    pub(super) fn add(&self, slot: Arc<Slot>) {
        let _edit = self.edit.lock().unwrap_or_else(|e| e.into_inner());
        let mut chunks: Vec<Chunk> = self.chunks.load().as_ref().clone();
        match chunks.last_mut() {
            Some(last) if last.len() < CHUNK => Arc::make_mut(last).push(slot),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(slot);
                chunks.push(Arc::new(chunk));
            }
        }
        self.len.fetch_add(1, Ordering::Relaxed);
        self.chunks.store(Arc::new(chunks));
    }

    /// Removes `slot` if it is in the list; the last slot takes its place.
    pub(super) fn remove(&self, slot: &Arc<Slot>) {
        let _edit = self.edit.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.chunks.load();
        let found = current.iter().enumerate().find_map(|(c, chunk)| {
            let i = chunk.iter().position(|s| Arc::ptr_eq(s, slot))?;
            Some((c, i))
        });
        let Some((c, i)) = found else {
            return;
        };
        let mut chunks: Vec<Chunk> = current.as_ref().clone();
        drop(current);
        let last_chunk = chunks.len() - 1;
        let Some(moved) = Arc::make_mut(&mut chunks[last_chunk]).pop() else {
            return; // Unreachable: no chunk is empty.
        };
        if c == last_chunk && i == chunks[c].len() {
            // `slot` was the last one and is already gone.
        } else {
            Arc::make_mut(&mut chunks[c])[i] = moved;
        }
        if chunks[last_chunk].is_empty() {
            chunks.pop();
        }
        self.len.fetch_sub(1, Ordering::Relaxed);
        self.chunks.store(Arc::new(chunks));
    }

    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Queues every slot after a change their sessions must see (a new
    /// version, a new status), and hands the wake-ups a thread off the
    /// runtime collected to its relay ([`super::WakeRelay`]). The fence
    /// pairs with the one in [`Slot::clear`]: it orders the change before
    /// the flag loads in `Slot::mark`.
    pub(super) fn queue_all(&self) {
        fence(Ordering::SeqCst);
        for chunk in self.chunks.load().iter() {
            // Look at every flag of the chunk first, then queue the clear
            // ones: a queueing swap stalls until earlier loads are done, so
            // interleaved, each slot's cache miss would wait for the last.
            let mut clear = [0u8; CHUNK];
            let mut found = 0;
            for (i, slot) in chunk.iter().enumerate() {
                clear[found] = i as u8;
                found += usize::from(!slot.is_queued());
            }
            for &i in &clear[..found] {
                chunk[usize::from(i)].mark();
            }
        }
        super::relay::hand_over();
    }

    #[cfg(test)]
    fn slots(&self) -> Vec<Arc<Slot>> {
        self.chunks
            .load()
            .iter()
            .flat_map(|c| c.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::Mailbox;

    #[test]
    fn adds_and_removes_keep_exactly_the_subscribed_slots() {
        let mailbox = Arc::new(Mailbox::default());
        let subscribers = Subscribers::default();
        let slots: Vec<Arc<Slot>> = (0..300)
            .map(|i| Arc::new(Slot::new(mailbox.clone(), i)))
            .collect();
        for slot in &slots {
            subscribers.add(slot.clone());
        }
        // From the middle, the first chunk, the very last, and one twice.
        let mut kept: Vec<u32> = (0..300).collect();
        for gone in [150, 0, 299, 64, 63, 150, 200, 128] {
            subscribers.remove(&slots[gone as usize]);
            kept.retain(|&i| i != gone);
            let mut now: Vec<u32> = subscribers.slots().iter().map(|s| s.index).collect();
            now.sort_unstable();
            assert_eq!(now, kept);
            assert_eq!(subscribers.len(), kept.len());
            let chunks = subscribers.chunks.load();
            let (last, full) = chunks.split_last().expect("chunks");
            assert!(full.iter().all(|c| c.len() == CHUNK) && !last.is_empty());
        }
        for &i in &kept {
            subscribers.remove(&slots[i as usize]);
        }
        assert_eq!(subscribers.len(), 0);
        assert!(subscribers.chunks.load().is_empty());
        // Nothing else holds the slots: the list dropped every reference it took.
        assert!(slots.iter().all(|s| Arc::strong_count(s) == 1));
    }

    #[test]
    fn queue_all_reaches_every_chunk() {
        let mailbox = Arc::new(Mailbox::default());
        let subscribers = Subscribers::default();
        for i in 0..(CHUNK as u32 * 2 + 5) {
            subscribers.add(Arc::new(Slot::new(mailbox.clone(), i)));
        }
        subscribers.queue_all();
        let mut ready = Vec::new();
        mailbox.take_ready(&mut ready);
        ready.sort_unstable();
        assert_eq!(ready, (0..(CHUNK as u32 * 2 + 5)).collect::<Vec<_>>());
    }
}
