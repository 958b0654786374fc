//! The primary's log of recent changes, bounded in entries and in bytes, so
//! that a follower that reconnects can continue from it instead of loading
//! a checkpoint, while the primary never holds more than its limits.

use std::collections::VecDeque;

use crate::ids::Lsn;
use crate::router::state::ITEM_OVERHEAD;
use crate::router::Change;

/// Recent changes, oldest first.
#[derive(Debug)]
pub(super) struct Log {
    entries: VecDeque<(Lsn, Change)>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

/// What a change weighs in the log: its text plus a fixed overhead.
fn weight(change: &Change) -> usize {
    match change {
        Change::Accepted { body, recipients, .. } => ITEM_OVERHEAD + body.len() + 64 * recipients.len(),
        _ => ITEM_OVERHEAD,
    }
}

impl Log {
    /// An empty log that keeps at most `max_entries` changes and
    /// `max_bytes` of their weight (but always the newest one).
    pub(super) fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    /// Appends a change, forgetting the oldest ones beyond the limits.
    pub(super) fn push(&mut self, lsn: Lsn, change: Change) {
        self.bytes += weight(&change);
        self.entries.push_back((lsn, change));
        while self.entries.len() > 1 && (self.entries.len() > self.max_entries || self.bytes > self.max_bytes)
        {
            if let Some((_, old)) = self.entries.pop_front() {
                self.bytes -= weight(&old);
            }
        }
    }

    /// Forgets everything.
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The oldest change kept.
    pub(super) fn front(&self) -> Option<&(Lsn, Change)> {
        self.entries.front()
    }

    /// Every change kept, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &(Lsn, Change)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ids::{PeerId, Seq, Target};

    fn message(bytes: usize) -> Change {
        Change::Accepted {
            from: PeerId::new("a").unwrap(),
            seq: Seq(1),
            to: Target::new("b").unwrap(),
            recipients: vec![PeerId::new("b").unwrap()],
            body: Arc::from("x".repeat(bytes)),
        }
    }

    #[test]
    fn the_log_is_bounded_in_bytes_as_well_as_entries() {
        let mut log = Log::new(1_000, 10_000);
        for n in 1..=100 {
            log.push(Lsn(n), message(1_000));
        }
        let kept: Vec<u64> = log.iter().map(|(l, _)| l.0).collect();
        assert!(kept.len() < 10, "{} changes of 1 kB kept in 10 kB", kept.len());
        assert_eq!(kept.last(), Some(&100), "the newest is kept");
        assert!(log.bytes <= 10_000);
        let mut log = Log::new(3, usize::MAX);
        for n in 1..=5 {
            log.push(Lsn(n), message(1));
        }
        assert_eq!(log.front().map(|(l, _)| l.0), Some(3));
        // One change larger than the budget is still kept, alone.
        let mut log = Log::new(10, 100);
        log.push(Lsn(1), message(1));
        log.push(Lsn(2), message(1_000));
        assert_eq!(log.iter().count(), 1);
        log.clear();
        assert_eq!((log.iter().count(), log.bytes), (0, 0));
    }
}
