//! What the router asks to have on stable storage, and what it knows is
//! there.
//!
//! Every change the router applies — as a primary, a standalone router or a
//! follower — and every state a follower loads from a checkpoint goes to the
//! driver as a [`Record`] in a numbered [`RouterOutput::Persist`]. The driver
//! writes records in order and reports, with [`RouterInput::Persisted`], the
//! number up to which everything is on stable storage (group commit: one
//! report may cover many records). The router then knows its *durable* LSN,
//! and:
//! - a primary or a standalone router commits only changes that are durable
//!   on itself (and, for a primary, on every backup counted for the commit);
//! - a follower acknowledges only changes that are durable on itself.
//!
//! So everything a client was told rests on records that survive a crash
//! of any number of routers. A router started from what its storage
//! recovered ([`Recovered`], [`Router::recover`]) holds everything it ever
//! acknowledged.
//!
//! [`RouterOutput::Persist`]: super::RouterOutput::Persist
//! [`RouterInput::Persisted`]: super::RouterInput::Persisted
//! [`Router::recover`]: super::Router::recover

use std::collections::VecDeque;

use super::{Change, State};
use crate::ids::{Epoch, Lsn};

/// Something the router needs on stable storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Change `lsn`, the next after every record before it.
    Change {
        /// The epoch of the primary that made it (the stream epoch a
        /// follower resumes from).
        epoch: Epoch,
        /// Its position.
        lsn: Lsn,
        /// The change.
        change: Change,
    },
    /// The whole state as of `lsn`, loaded from a primary's checkpoint. It
    /// replaces every record before it: changes after `lsn` persisted
    /// earlier belonged to another history.
    State {
        /// The epoch of the primary that sent it.
        epoch: Epoch,
        /// The last change it includes.
        lsn: Lsn,
        /// The state.
        state: Box<State>,
    },
}

impl Record {
    /// The epoch and LSN the record leaves the state at.
    pub fn position(&self) -> (Epoch, Lsn) {
        match self {
            Record::Change { epoch, lsn, .. } | Record::State { epoch, lsn, .. } => (*epoch, *lsn),
        }
    }
}

/// What a router's storage recovered: the state it persisted last, to start
/// a router from ([`Router::recover`](super::Router::recover)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The state.
    pub state: State,
    /// The last change it includes.
    pub lsn: Lsn,
    /// The epoch of the last record: for a follower, the epoch of the
    /// primary whose stream the state came from.
    pub epoch: Epoch,
}

impl Recovered {
    /// Moves the state on by `record`, as a storage replaying its records
    /// in order does: a change is applied, a state replaces it all.
    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Change { epoch, lsn, change } => {
                self.state.apply(&change);
                (self.epoch, self.lsn) = (epoch, lsn);
            }
            Record::State { epoch, lsn, state } => {
                self.state = *state;
                (self.epoch, self.lsn) = (epoch, lsn);
            }
        }
    }
}

/// The records asked for and not yet reported durable, and the durable LSN.
#[derive(Debug, Default)]
pub(super) struct Durability {
    last_ticket: u64,
    /// Outstanding tickets, oldest first, with the LSN each makes durable
    /// (`None`: a record of a history a later state replaced).
    pending: VecDeque<(u64, Option<Lsn>)>,
    durable: Lsn,
}

impl Durability {
    /// Starts from a state recovered at `lsn`: durable by definition.
    pub(super) fn recovered(lsn: Lsn) -> Self {
        Self {
            durable: lsn,
            ..Self::default()
        }
    }

    /// The last change of the current history known to be on stable
    /// storage.
    pub(super) fn durable(&self) -> Lsn {
        self.durable
    }

    /// Numbers a record that makes change `lsn` durable once written.
    pub(super) fn change(&mut self, lsn: Lsn) -> u64 {
        self.last_ticket += 1;
        self.pending.push_back((self.last_ticket, Some(lsn)));
        self.last_ticket
    }

    /// Numbers a record that replaces the state with one at `lsn`: nothing
    /// of the new history is durable until it is written, and records of
    /// the old one no longer count.
    pub(super) fn state(&mut self, lsn: Lsn) -> u64 {
        for (_, l) in &mut self.pending {
            *l = None;
        }
        self.durable = Lsn(0);
        self.last_ticket += 1;
        self.pending.push_back((self.last_ticket, Some(lsn)));
        self.last_ticket
    }

    /// Every record up to `ticket` is on stable storage. Returns whether
    /// the durable LSN moved.
    pub(super) fn persisted(&mut self, ticket: u64) -> bool {
        let before = self.durable;
        while let Some(&(t, lsn)) = self.pending.front() {
            if t > ticket {
                break;
            }
            self.pending.pop_front();
            if let Some(lsn) = lsn {
                self.durable = lsn;
            }
        }
        self.durable != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_durable_lsn_follows_reports_in_order() {
        let mut d = Durability::recovered(Lsn(3));
        assert_eq!(d.durable(), Lsn(3));
        let a = d.change(Lsn(4));
        let b = d.change(Lsn(5));
        assert!(!d.persisted(a - 1), "an old ticket moves nothing");
        assert!(d.persisted(a));
        assert_eq!(d.durable(), Lsn(4));
        assert!(d.persisted(b + 7), "a report covers every record up to it");
        assert_eq!(d.durable(), Lsn(5));
    }

    #[test]
    fn a_loaded_state_voids_the_records_of_the_history_it_replaces() {
        let mut d = Durability::default();
        let old = d.change(Lsn(1));
        d.persisted(old);
        let lost = d.change(Lsn(9));
        let state = d.state(Lsn(4));
        assert_eq!(d.durable(), Lsn(0), "the new state is not durable yet");
        d.persisted(lost);
        assert_eq!(d.durable(), Lsn(0), "LSN 9 was another history's");
        d.persisted(state);
        assert_eq!(d.durable(), Lsn(4));
        let next = d.change(Lsn(5));
        d.persisted(next);
        assert_eq!(d.durable(), Lsn(5));
    }
}
