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
//! The storage keeps a log, and asks now and then for a checkpoint so it
//! can drop the log behind it ([`RouterInput::CheckpointWanted`]): the
//! router answers with a [`Record::Checkpoint`] of its own state, numbered
//! like every record, so the storage never keeps a second copy of the state.
//!
//! So everything a client was told rests on records that survive a crash
//! of any number of routers. A router started from what its storage
//! recovered ([`Recovered`], [`Router::recover`]) holds everything it ever
//! acknowledged.
//!
//! [`RouterOutput::Persist`]: super::RouterOutput::Persist
//! [`RouterInput::Persisted`]: super::RouterInput::Persisted
//! [`RouterInput::CheckpointWanted`]: super::RouterInput::CheckpointWanted
//! [`Router::recover`]: super::Router::recover

use std::collections::VecDeque;

use super::{Change, Inconsistent, State};
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
    /// The router's own state after the record before it, whose epoch and
    /// LSN it repeats: what the storage needs to drop the records before
    /// it. Unlike [`Record::State`], it starts no new history.
    Checkpoint {
        /// The epoch of the record before it.
        epoch: Epoch,
        /// The LSN of the record before it: the last change it includes.
        lsn: Lsn,
        /// The state.
        state: Box<State>,
    },
}

impl Record {
    /// The epoch and LSN the record leaves the state at.
    pub fn position(&self) -> (Epoch, Lsn) {
        match self {
            Record::Change { epoch, lsn, .. }
            | Record::State { epoch, lsn, .. }
            | Record::Checkpoint { epoch, lsn, .. } => (*epoch, *lsn),
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
    /// in order does: a change is applied, a state or a checkpoint
    /// replaces it all. A change that does not follow from the state is
    /// refused, and nothing moves: the records do not belong together.
    pub fn apply(&mut self, record: Record) -> Result<(), Inconsistent> {
        match record {
            Record::Change { epoch, lsn, change } => {
                self.state.apply_checked(&change)?;
                (self.epoch, self.lsn) = (epoch, lsn);
            }
            Record::State { epoch, lsn, state } | Record::Checkpoint { epoch, lsn, state } => {
                self.state = *state;
                (self.epoch, self.lsn) = (epoch, lsn);
            }
        }
        Ok(())
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
    /// The epoch and LSN of the last record numbered (or recovered).
    last: (Epoch, Lsn),
}

impl Durability {
    /// Starts from a state recovered at `epoch` and `lsn`: durable by
    /// definition.
    pub(super) fn recovered(epoch: Epoch, lsn: Lsn) -> Self {
        Self {
            durable: lsn,
            last: (epoch, lsn),
            ..Self::default()
        }
    }

    /// The last change of the current history known to be on stable
    /// storage.
    pub(super) fn durable(&self) -> Lsn {
        self.durable
    }

    /// Numbers a record that makes change `lsn` of `epoch`'s stream
    /// durable once written.
    pub(super) fn change(&mut self, epoch: Epoch, lsn: Lsn) -> u64 {
        self.last = (epoch, lsn);
        self.last_ticket += 1;
        self.pending.push_back((self.last_ticket, Some(lsn)));
        self.last_ticket
    }

    /// Numbers a record that replaces the state with one at `lsn` from
    /// `epoch`'s stream: nothing of the new history is durable until it is
    /// written, and records of the old one no longer count.
    pub(super) fn state(&mut self, epoch: Epoch, lsn: Lsn) -> u64 {
        for (_, l) in &mut self.pending {
            *l = None;
        }
        self.durable = Lsn(0);
        self.last = (epoch, lsn);
        self.last_ticket += 1;
        self.pending.push_back((self.last_ticket, Some(lsn)));
        self.last_ticket
    }

    /// Numbers a checkpoint of the current state, and says the position it
    /// repeats: that of the last record. Once written, everything up to
    /// that position is durable.
    pub(super) fn checkpoint(&mut self) -> (u64, Epoch, Lsn) {
        let (epoch, lsn) = self.last;
        self.last_ticket += 1;
        self.pending.push_back((self.last_ticket, Some(lsn)));
        (self.last_ticket, epoch, lsn)
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
        let mut d = Durability::recovered(Epoch(1), Lsn(3));
        assert_eq!(d.durable(), Lsn(3));
        let a = d.change(Epoch(1), Lsn(4));
        let b = d.change(Epoch(1), Lsn(5));
        assert!(!d.persisted(a - 1), "an old ticket moves nothing");
        assert!(d.persisted(a));
        assert_eq!(d.durable(), Lsn(4));
        assert!(d.persisted(b + 7), "a report covers every record up to it");
        assert_eq!(d.durable(), Lsn(5));
    }

    #[test]
    fn a_loaded_state_voids_the_records_of_the_history_it_replaces() {
        let mut d = Durability::default();
        let old = d.change(Epoch(1), Lsn(1));
        d.persisted(old);
        let lost = d.change(Epoch(1), Lsn(9));
        let state = d.state(Epoch(2), Lsn(4));
        assert_eq!(d.durable(), Lsn(0), "the new state is not durable yet");
        d.persisted(lost);
        assert_eq!(d.durable(), Lsn(0), "LSN 9 was another history's");
        d.persisted(state);
        assert_eq!(d.durable(), Lsn(4));
        let next = d.change(Epoch(2), Lsn(5));
        d.persisted(next);
        assert_eq!(d.durable(), Lsn(5));
    }

    #[test]
    fn a_checkpoint_repeats_the_last_position_and_makes_it_durable() {
        let mut d = Durability::recovered(Epoch(3), Lsn(7));
        let (_, epoch, lsn) = d.checkpoint();
        assert_eq!((epoch, lsn), (Epoch(3), Lsn(7)), "after recovery");
        d.change(Epoch(4), Lsn(8));
        let nine = d.change(Epoch(4), Lsn(9));
        let (ticket, epoch, lsn) = d.checkpoint();
        assert_eq!((epoch, lsn), (Epoch(4), Lsn(9)));
        assert!(ticket > nine);
        assert!(
            d.persisted(ticket),
            "one report covers the changes and the checkpoint"
        );
        assert_eq!(d.durable(), Lsn(9));
        d.state(Epoch(5), Lsn(2));
        let (_, epoch, lsn) = d.checkpoint();
        assert_eq!((epoch, lsn), (Epoch(5), Lsn(2)), "after a loaded state");
    }
}
