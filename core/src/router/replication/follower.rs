//! The follower's side of replication: applying what the primary ships,
//! strictly in order, and acknowledging it.

use std::time::Instant;

use super::{Incoming, Link, LinkStatus, Role};
use crate::ids::{Epoch, Lsn};
use crate::router::checkpoint::StateBuilder;
use crate::router::{Record, Router, RouterOutput};
use crate::wire::cluster::{FollowerFrame, PrimaryFrame};

impl Router {
    /// A primary's frame, on a follower.
    pub(in crate::router) fn handle_primary_frame(&mut self, now: Instant, frame: PrimaryFrame) {
        let old_epochs = self.accepts_old_epoch();
        let accepts_regression = self.restarted_primary_keeps_role();
        let Some(r) = self.replication.as_mut() else {
            return;
        };
        let following = matches!(r.role, Role::Follower { .. });
        if !(following || old_epochs) || r.primary.status != LinkStatus::Up {
            return;
        }
        r.primary.heard = now;
        let my_epoch = if old_epochs { Epoch(0) } else { r.epoch() };
        match frame {
            PrimaryFrame::CheckpointStart { epoch, lsn } => {
                if epoch < my_epoch || !following {
                    return self.restart_link(Link::Primary, now);
                }
                let regresses = epoch == r.stream_epoch && lsn < self.outbox.applied;
                if regresses && !accepts_regression {
                    // Only a primary that lost its state offers less than it
                    // already shipped in the same epoch: refuse, and ask
                    // again later (by then the RM has withdrawn its role).
                    let retry_at = now + r.config.retry_interval;
                    return self.restart_link(Link::Primary, retry_at);
                }
                r.incoming = Some(Incoming {
                    epoch,
                    lsn,
                    builder: StateBuilder::default(),
                });
            }
            PrimaryFrame::CheckpointPart { epoch, n, part } => {
                let Some(incoming) = r
                    .incoming
                    .as_mut()
                    .filter(|i| epoch >= my_epoch && i.epoch == epoch && i.builder.parts() == n)
                else {
                    return self.restart_link(Link::Primary, now);
                };
                if incoming.builder.add(part).is_err() {
                    return self.restart_link(Link::Primary, now);
                }
                let parts = incoming.builder.parts();
                self.received(epoch, parts);
            }
            PrimaryFrame::CheckpointEnd { epoch, lsn, parts } => {
                let Some(incoming) = r.incoming.take().filter(|i| {
                    epoch >= my_epoch && i.epoch == epoch && i.lsn == lsn && i.builder.parts() == parts
                }) else {
                    return self.restart_link(Link::Primary, now);
                };
                let Ok(state) = incoming.builder.finish() else {
                    return self.restart_link(Link::Primary, now);
                };
                r.stream_epoch = epoch;
                let ticket = self.durability.state(epoch, lsn);
                let record = Record::State {
                    epoch,
                    lsn,
                    state: Box::new(state.clone()),
                };
                self.outbox.emit_now(RouterOutput::Persist { ticket, record });
                self.state = state;
                self.outbox.applied = lsn;
                self.outbox.committed = lsn;
                // Acknowledged once durable.
            }
            PrimaryFrame::Entry { epoch, lsn, change } => {
                if epoch < my_epoch || r.incoming.is_some() {
                    return self.restart_link(Link::Primary, now);
                }
                if lsn <= self.outbox.applied {
                    return;
                }
                if lsn != self.outbox.applied.next() {
                    // A gap: resync from a checkpoint.
                    return self.restart_link(Link::Primary, now);
                }
                if self.state.apply_checked(&change).is_err() {
                    // Not a change of the state this follower has: resync
                    // from a checkpoint rather than keep a corrupt copy.
                    return self.restart_link(Link::Primary, now);
                }
                r.stream_epoch = epoch;
                self.outbox.applied = lsn;
                if following {
                    self.outbox.committed = lsn;
                }
                self.persist_change(epoch, lsn, change);
                // Acknowledged once durable (unless the planted bug).
                if self.acks_before_durable() {
                    self.acknowledge(now, epoch, lsn);
                }
            }
            PrimaryFrame::Alive { epoch, .. } => {
                if epoch < my_epoch {
                    return self.restart_link(Link::Primary, now);
                }
                // Mid-checkpoint, the state it has is not the primary's:
                // it reports progress, never its old position.
                if let Some(parts) = r.incoming.as_ref().map(|i| i.builder.parts()) {
                    return self.received(epoch, parts);
                }
                let durable = self.durable_lsn();
                self.acknowledge(now, epoch, durable);
            }
            PrimaryFrame::NotPrimary { .. } => {
                let retry_at = now + r.config.retry_interval;
                self.restart_link(Link::Primary, retry_at);
            }
        }
    }

    /// Tells the primary how many checkpoint parts have arrived.
    fn received(&mut self, epoch: Epoch, parts: u64) {
        let frame = FollowerFrame::CheckpointReceived { epoch, parts };
        // Cumulative too: the newest count replaces one not yet written.
        if let Some(RouterOutput::ToPrimary(last @ FollowerFrame::CheckpointReceived { .. })) =
            self.outbox.ready.back_mut()
        {
            *last = frame;
            return;
        }
        self.outbox.emit_now(RouterOutput::ToPrimary(frame));
    }

    /// Acknowledges what is durable now, to the primary being followed,
    /// unless a checkpoint is on its way (its parts are reported instead).
    pub(in crate::router) fn acknowledge_durable(&mut self, now: Instant) {
        let Some(r) = self.replication.as_ref() else {
            return;
        };
        let following = matches!(r.role, Role::Follower { .. });
        if !following || r.primary.status != LinkStatus::Up || r.incoming.is_some() {
            return;
        }
        let epoch = r.stream_epoch;
        let durable = self.durable_lsn();
        self.acknowledge(now, epoch, durable);
    }

    /// Whether the planted bug `ack_before_durable` is on (never, in
    /// production builds).
    fn acks_before_durable(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.config.bugs.ack_before_durable;
        #[cfg(not(feature = "planted-bugs"))]
        false
    }

    pub(in crate::router) fn acknowledge(&mut self, now: Instant, epoch: Epoch, lsn: Lsn) {
        let rm_live = self.replication.as_ref().is_some_and(|r| r.rm_live(now));
        let frame = FollowerFrame::Applied { epoch, lsn, rm_live };
        // Acknowledgements are cumulative: one of the same epoch not yet
        // taken by the driver is superseded rather than followed.
        if let Some(RouterOutput::ToPrimary(last @ FollowerFrame::Applied { .. })) =
            self.outbox.ready.back_mut()
        {
            if matches!(last, FollowerFrame::Applied { epoch: e, .. } if *e == epoch) {
                *last = frame;
                return;
            }
        }
        self.outbox.emit_now(RouterOutput::ToPrimary(frame));
    }
}
