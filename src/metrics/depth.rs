//! Counters of what depth messages did to the books.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::book::depth::Outcome;

/// What one depth message did (`tickwire_depth_messages_total{outcome}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DepthEvent {
    Updated,
    Buffered,
    Outdated,
    Gap,
    Crossed,
    PriceOutOfRange,
    CutShort,
    /// A snapshot that names no symbol, read before any diff told which
    /// symbol its file carries.
    Unattributed,
}

impl DepthEvent {
    /// Every event, in label order.
    pub const ALL: [DepthEvent; 8] = [
        DepthEvent::Updated,
        DepthEvent::Buffered,
        DepthEvent::Outdated,
        DepthEvent::Gap,
        DepthEvent::Crossed,
        DepthEvent::PriceOutOfRange,
        DepthEvent::CutShort,
        DepthEvent::Unattributed,
    ];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            DepthEvent::Updated => "updated",
            DepthEvent::Buffered => "buffered",
            DepthEvent::Outdated => "outdated",
            DepthEvent::Gap => "gap",
            DepthEvent::Crossed => "crossed",
            DepthEvent::PriceOutOfRange => "price_out_of_range",
            DepthEvent::CutShort => "cut_short",
            DepthEvent::Unattributed => "unattributed",
        }
    }
}

impl From<Outcome> for DepthEvent {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Updated => DepthEvent::Updated,
            Outcome::Buffered => DepthEvent::Buffered,
            Outcome::Outdated => DepthEvent::Outdated,
            Outcome::Gap => DepthEvent::Gap,
            Outcome::Crossed => DepthEvent::Crossed,
            Outcome::PriceOutOfRange => DepthEvent::PriceOutOfRange,
            Outcome::CutShort => DepthEvent::CutShort,
        }
    }
}

/// Depth message counters by outcome.
#[derive(Debug, Default)]
pub struct DepthMetrics {
    events: [AtomicU64; DepthEvent::ALL.len()],
    /// Levels dropped at the far ends of books past their cap, and changes
    /// refused beyond the cut.
    levels_dropped: AtomicU64,
}

impl DepthMetrics {
    /// Counts one message.
    pub fn count(&self, event: DepthEvent) {
        self.events[event as usize].fetch_add(1, Relaxed);
    }

    /// Messages counted with `event` so far.
    pub fn get(&self, event: DepthEvent) -> u64 {
        self.events[event as usize].load(Relaxed)
    }

    /// Counts levels a book dropped past its cap.
    pub fn count_dropped_levels(&self, levels: u64) {
        if levels > 0 {
            self.levels_dropped.fetch_add(levels, Relaxed);
        }
    }

    /// Levels dropped past book caps so far.
    pub fn dropped_levels(&self) -> u64 {
        self.levels_dropped.load(Relaxed)
    }

    /// Appends the Prometheus text of these counters.
    pub fn render(&self, out: &mut String) {
        let name = "tickwire_depth_messages_total";
        let _ = writeln!(
            out,
            "# HELP {name} Depth snapshots and diffs applied to books, by outcome.\n# TYPE {name} counter"
        );
        for event in DepthEvent::ALL {
            let _ = writeln!(
                out,
                "{name}{{outcome=\"{}\"}} {}",
                event.label(),
                self.get(event)
            );
        }
        let name = "tickwire_depth_levels_dropped_total";
        let _ = writeln!(
            out,
            "# HELP {name} Levels dropped at the far ends of books past their level cap, and level changes refused beyond the cut.\n# TYPE {name} counter\n{name} {}",
            self.dropped_levels()
        );
    }
}
