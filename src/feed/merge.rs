//! Several replay files merged into one stream in receive-time order.
//!
//! A k-way merge: each file contributes its next timed item (a tick or a
//! depth message) to a min-heap keyed by `(recv_ts_ns, file index)`. A file
//! holds at most one heap entry at a time, so equal times come out by file
//! index and each file's own order is kept. Recorders write sources slightly
//! out of order; the merge does not reorder within a file, it only
//! interleaves files by each one's next timed item.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::source::{Item, ReplayFile};
use crate::normalize::Tick;

/// A file's next timed item, waiting for its turn.
#[derive(Clone, Copy, Debug)]
enum Head {
    Tick {
        symbol: u32,
        tick: Tick,
    },
    /// The message stays decoded in its file, which is not read further
    /// until this comes out.
    Depth {
        symbol: Option<u32>,
    },
}

/// Items from several [`ReplayFile`]s, merged by receive time.
#[derive(Debug)]
pub struct Merge {
    files: Vec<ReplayFile>,
    /// Each file's next timed item, waiting for its turn in `heap`.
    heads: Vec<Option<Head>>,
    heap: BinaryHeap<Reverse<(i64, usize)>>,
    /// Files whose head was taken and must be advanced before the next pick;
    /// initially all of them.
    stale: Vec<usize>,
}

impl Merge {
    /// Merges `files`; an item's file index is its position in this vector.
    pub fn new(files: Vec<ReplayFile>) -> Self {
        let count = files.len();
        Self {
            files,
            heads: vec![None; count],
            heap: BinaryHeap::with_capacity(count),
            stale: (0..count).rev().collect(),
        }
    }

    /// The merged files, for mapping each file's symbol indices to names.
    pub fn files(&self) -> &[ReplayFile] {
        &self.files
    }

    /// The next item and the index of the file it came from.
    ///
    /// Ticks and depth messages come out in `recv_ts_ns` order across files.
    /// Items without a time (recognised, malformed, failed) are passed on as
    /// soon as they are read, right after the preceding timed item of their
    /// file.
    pub fn next_item(&mut self) -> Option<(usize, Item)> {
        // Every file's head must be known before the earliest can be chosen.
        while let Some(&index) = self.stale.last() {
            let Some(file) = self.files.get_mut(index) else {
                self.stale.pop();
                continue;
            };
            let (head, recv_ts_ns) = match file.next_item() {
                Some(Item::Tick { symbol, tick }) => (Head::Tick { symbol, tick }, tick.recv_ts_ns),
                Some(Item::Depth { symbol }) => (Head::Depth { symbol }, file.depth().recv_ts_ns),
                // The file stays stale: its next timed item is still unknown.
                Some(other) => return Some((index, other)),
                None => {
                    self.stale.pop();
                    continue;
                }
            };
            self.stale.pop();
            if let Some(slot) = self.heads.get_mut(index) {
                *slot = Some(head);
                self.heap.push(Reverse((recv_ts_ns, index)));
            }
        }
        let Reverse((_, index)) = self.heap.pop()?;
        let head = self.heads.get_mut(index)?.take()?;
        self.stale.push(index);
        let item = match head {
            Head::Tick { symbol, tick } => Item::Tick { symbol, tick },
            Head::Depth { symbol } => Item::Depth { symbol },
        };
        Some((index, item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::Recognised;
    use std::io::Cursor;

    fn native_file(name: &str, lines: &[String]) -> ReplayFile {
        let mut text = String::from("{\"tickwire_replay\":1,\"source\":\"test\"}\n");
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        ReplayFile::from_reader(name, Cursor::new(text.into_bytes())).expect("test file opens")
    }

    fn trade(ts: i64, symbol: &str, price: &str) -> String {
        format!(
            r#"{{"recv_ts_ns":{ts},"symbol":"{symbol}","type":"trade","price":"{price}","size":"1"}}"#
        )
    }

    /// `(file, recv_ts_ns, price)` per tick, `(file, -1, kind)` otherwise.
    fn drain(merge: &mut Merge) -> Vec<(usize, i64, String)> {
        std::iter::from_fn(|| merge.next_item())
            .map(|(file, item)| match item {
                Item::Tick { tick, .. } => {
                    let crate::normalize::BookUpdate::Trade { price, .. } = tick.update else {
                        panic!("test files hold trades");
                    };
                    (file, tick.recv_ts_ns, price.to_string())
                }
                Item::Recognised(Recognised::Header) => (file, -1, "header".into()),
                Item::Recognised(_) | Item::Depth { .. } => (file, -1, "recognised".into()),
                Item::Malformed { .. } => (file, -1, "malformed".into()),
                Item::Failed(_) => (file, -1, "failed".into()),
            })
            .collect()
    }

    #[test]
    fn merges_by_receive_time_with_stable_ties() {
        let a = native_file(
            "a",
            &[
                trade(10, "AAA", "1.0"),
                trade(30, "AAA", "1.1"),
                "garbage".into(),
                trade(30, "AAA", "1.2"),
                trade(50, "AAA", "1.3"),
            ],
        );
        let b = native_file(
            "b",
            &[
                trade(20, "BBB", "2.0"),
                trade(30, "BBB", "2.1"),
                // Out of order within the file: kept where the recorder wrote it.
                trade(25, "BBB", "2.2"),
                trade(60, "BBB", "2.3"),
            ],
        );
        let mut merge = Merge::new(vec![a, b]);
        let got = drain(&mut merge);
        let want: Vec<(usize, i64, String)> = [
            (0, -1, "header"),
            (1, -1, "header"),
            (0, 10, "1.0"),
            (1, 20, "2.0"),
            (0, 30, "1.1"),
            (0, -1, "malformed"),
            (0, 30, "1.2"),
            (1, 30, "2.1"),
            (1, 25, "2.2"),
            (0, 50, "1.3"),
            (1, 60, "2.3"),
        ]
        .into_iter()
        .map(|(f, t, p)| (f, t, p.to_string()))
        .collect();
        assert_eq!(got, want);
        assert!(merge.next_item().is_none());
        assert_eq!(merge.files()[1].symbols(), &["BBB".into()]);
    }

    #[test]
    fn empty_and_single_inputs() {
        assert!(Merge::new(Vec::new()).next_item().is_none());
        let only = native_file("only", &[trade(2, "X", "9"), trade(1, "X", "8")]);
        let got = drain(&mut Merge::new(vec![only]));
        assert_eq!(
            got.iter().map(|(_, t, _)| *t).collect::<Vec<_>>(),
            [-1, 2, 1]
        );
    }

    #[test]
    fn depth_messages_take_their_turn_by_receive_time() {
        let capture = |name: &str, lines: &[(i64, &str)]| {
            let text: String = lines
                .iter()
                .map(|(ts, line)| format!("{ts} {line}\n"))
                .collect();
            ReplayFile::from_reader(name, Cursor::new(text.into_bytes())).expect("capture opens")
        };
        let ticker = r#"{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":"1.0","B":"1","a":"2.0","A":"1"}}"#;
        let diff = r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[["1.0","1"]],"a":[]}}"#;
        let a = capture("a", &[(10, ticker), (40, diff), (50, ticker)]);
        let b = capture("b", &[(20, ticker), (30, diff), (60, ticker)]);
        let mut merge = Merge::new(vec![a, b]);
        let mut order = Vec::new();
        while let Some((file, item)) = merge.next_item() {
            let ts = match item {
                Item::Tick { tick, .. } => tick.recv_ts_ns,
                Item::Depth { .. } => merge.files()[file].depth().recv_ts_ns,
                _ => continue,
            };
            order.push((file, ts, matches!(item, Item::Depth { .. })));
        }
        assert_eq!(
            order,
            [
                (0, 10, false),
                (1, 20, false),
                (1, 30, true),
                (0, 40, true),
                (0, 50, false),
                (1, 60, false),
            ]
        );
    }
}
