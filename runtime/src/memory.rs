//! The edge's memory budget: its own resident set size, read from
//! `/proc/self/status`, against `[proxy] memory_budget`. Over budget, the
//! proxy relays without recording and turns new client connections away
//! (503 with `Retry-After`) until RSS falls back under 90 % of the budget,
//! so a burst of clients or a huge answer never grows the process without
//! bound. The fixed bounds (SQLite page cache and heap limit, the record
//! buffer, per-connection buffers) keep it there in normal operation; this
//! is the backstop.

use log::{info, warn};
use std::cell::Cell;
use std::time::Duration;

/// How often RSS is read.
const SAMPLE: Duration = Duration::from_millis(250);

/// The budget and what was last measured against it.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    rss: Cell<u64>,
    over: Cell<bool>,
    refused: Cell<u64>,
}

impl Budget {
    /// A budget of `limit` bytes of RSS; 0 means none.
    pub fn new(limit: u64) -> Budget {
        Budget {
            limit,
            rss: Cell::new(0),
            over: Cell::new(false),
            refused: Cell::new(0),
        }
    }

    /// The budget in bytes (0: none).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// RSS in bytes at the last sample.
    pub fn rss(&self) -> u64 {
        self.rss.get()
    }

    /// Whether the process is over its budget: shed load.
    pub fn over(&self) -> bool {
        self.over.get()
    }

    /// Counts a connection turned away for being over budget.
    pub fn note_refused(&self) {
        self.refused.set(self.refused.get() + 1);
    }

    /// Connections turned away so far.
    pub fn refused(&self) -> u64 {
        self.refused.get()
    }

    /// Takes a measurement of `rss` bytes: over the budget, the process is
    /// over it until RSS is back under 90 % (so it does not flap). Logs
    /// each crossing once.
    pub fn update(&self, rss: u64) {
        self.rss.set(rss);
        if self.limit == 0 {
            return;
        }
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        if !self.over.get() && rss > self.limit {
            self.over.set(true);
            warn!(
                "memory: RSS {:.1} MiB is over the budget of {:.1} MiB: relaying without recording and turning new connections away",
                mib(rss),
                mib(self.limit)
            );
        } else if self.over.get() && rss < self.limit / 10 * 9 {
            self.over.set(false);
            info!(
                "memory: RSS {:.1} MiB is back under the budget of {:.1} MiB",
                mib(rss),
                mib(self.limit)
            );
        }
    }
}

/// This process's resident set size in bytes, if `/proc` says.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Measures RSS against `budget` forever.
pub async fn watch(budget: std::rc::Rc<Budget>) {
    loop {
        if let Some(rss) = resident_bytes() {
            budget.update(rss);
        }
        async_io::Timer::after(SAMPLE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_until_well_under() {
        let b = Budget::new(100 << 20);
        b.update(50 << 20);
        assert!(!b.over());
        b.update(101 << 20);
        assert!(b.over());
        // Just under the budget is not enough to stop shedding.
        b.update(95 << 20);
        assert!(b.over());
        b.update(80 << 20);
        assert!(!b.over());
        assert_eq!(b.rss(), 80 << 20);
        // No budget: never over.
        let none = Budget::new(0);
        none.update(u64::MAX);
        assert!(!none.over());
    }

    #[test]
    fn reads_its_own_rss() {
        let rss = resident_bytes().expect("/proc/self/statm");
        assert!(rss > 1 << 20, "{rss}");
    }
}
